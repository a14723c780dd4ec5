//! The HTTP endpoint for Prometheus.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::CentralMetrics;

async fn metrics(State(m): State<CentralMetrics>, headers: HeaderMap) -> impl IntoResponse {
    yilian_service::metrics_response(&headers, m.encode())
}

/// Binds the metrics listener; the returned future serves until `shutdown`.
pub async fn bind(
    addr: SocketAddr,
    m: CentralMetrics,
) -> std::io::Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>>,
)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new().route("/metrics", get(metrics)).with_state(m);
    Ok((local, async move { axum::serve(listener, app).await }))
}
