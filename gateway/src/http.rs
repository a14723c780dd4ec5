//! Local HTTP: `/metrics` for Prometheus (when reachable) and `/status`
//! (link state as JSON) for `yilian-gateway status`.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;

use crate::metrics::GatewayMetrics;
use crate::uplink::LinkStatus;

#[derive(Clone)]
struct AppState {
    metrics: GatewayMetrics,
    link: watch::Receiver<LinkStatus>,
}

async fn serve_metrics(State(s): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    yilian_service::metrics_response(&headers, s.metrics.encode())
}

async fn status(State(s): State<AppState>) -> impl IntoResponse {
    let link = s.link.borrow().clone();
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&link).unwrap_or_else(|_| "{}".into()),
    )
}

pub async fn bind(
    addr: SocketAddr,
    metrics: GatewayMetrics,
    link: watch::Receiver<LinkStatus>,
) -> std::io::Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>>,
)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/status", get(status))
        .with_state(AppState { metrics, link });
    let listener = crate::governor::HttpListener::new(listener);
    Ok((local, async move { axum::serve(listener, app).await }))
}
