//! The box's own page for the clinic's technician, in Chinese by default
//! and English on request: is my device connected, did what it sent
//! arrive, did it reach the county hospital, and if not, what to do.
//!
//! - [`view`] — the facts, gathered from the running box;
//! - [`render`] — the HTML, every text from the catalogues ([`crate::i18n`]).
//!
//! Read-only: it changes nothing, shows patient IDs masked and puts none in
//! a URL. Served on `[page] listen` (loopback unless the configuration
//! opens it to the clinic LAN), behind the same connection limits as the
//! metrics listener.

pub mod render;
pub mod view;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;
use yilian_spool::Spool;

use crate::board::DeviceBoard;
use crate::clock::Clock;
use crate::config::GatewayConfig;
use crate::i18n::Language;
use crate::metrics::GatewayMetrics;
use crate::uplink::LinkStatus;

/// What the page reads.
#[derive(Clone)]
pub struct PageState {
    pub config: Arc<GatewayConfig>,
    pub spool: Spool,
    pub metrics: GatewayMetrics,
    pub link: watch::Receiver<LinkStatus>,
    pub board: DeviceBoard,
}

#[derive(serde::Deserialize)]
struct PageQuery {
    lang: Option<String>,
}

async fn page(State(s): State<PageState>, Query(q): Query<PageQuery>) -> impl IntoResponse {
    let lang = q
        .lang
        .as_deref()
        .and_then(Language::from_tag)
        .unwrap_or(s.config.page.language);
    let clock = Clock::of(&s.config);
    let link = s.link.borrow().clone();
    let body = tokio::task::spawn_blocking(move || {
        let now = crate::now_ms();
        let v = view::gather(&s.config, &s.spool, &s.metrics, link, &s.board, now);
        render::page(&v, lang, &clock, now)
    })
    .await
    .unwrap_or_else(|e| format!("<!DOCTYPE html><p>internal error: {e}</p>"));
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // What the page shows is about patients: not kept by browsers
            // or proxies, not framed, no scripts or outside resources.
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
            ),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

/// Binds the page's listener; the future serves it.
pub async fn bind(
    addr: SocketAddr,
    state: PageState,
) -> std::io::Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>>,
)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new().route("/", get(page)).with_state(state);
    let listener = crate::governor::HttpListener::new(listener);
    Ok((local, async move { axum::serve(listener, app).await }))
}
