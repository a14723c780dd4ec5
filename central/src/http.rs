//! The HTTP endpoint for Prometheus.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::CentralMetrics;

async fn metrics(State(m): State<CentralMetrics>, headers: HeaderMap) -> impl IntoResponse {
    negotiate(&headers, m.encode())
}

/// OpenMetrics for scrapers that ask for it (Prometheus does), the classic
/// text format for everything else (curl, promtool, older scrapers).
fn negotiate(headers: &HeaderMap, openmetrics: String) -> impl IntoResponse + use<> {
    use yilian_protocol::exposition::{
        OPENMETRICS_TEXT, PROMETHEUS_TEXT, to_prometheus_text, wants_openmetrics,
    };
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if wants_openmetrics(accept) {
        ([(header::CONTENT_TYPE, OPENMETRICS_TEXT)], openmetrics)
    } else {
        (
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
            to_prometheus_text(&openmetrics),
        )
    }
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
