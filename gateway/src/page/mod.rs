//! The box's own page for the clinic's technician, in Chinese by default
//! and English on request: is my device connected, did what it sent
//! arrive, did it reach the county hospital, and if not, what to do.
//!
//! - [`view`] — the facts, gathered from the running box;
//! - [`render`] — the HTML, every text from the catalogues ([`crate::i18n`]).
//!
//! Without a PIN it is read-only; with `[page] pin` set, [`actions`]
//! offers diagnostics and a support bundle behind it. It shows patient IDs
//! masked and puts none in a URL. Served on `[page] listen` (loopback
//! unless the configuration opens it to the clinic LAN), behind the same
//! connection limits as the metrics listener.

pub mod actions;
pub mod render;
pub mod reports;
pub mod view;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Router, http::HeaderValue};
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
    pub sessions: actions::Sessions,
    /// Reports from the hospital held on the box.
    pub reports: crate::reports::ReportStore,
}

#[derive(serde::Deserialize)]
struct PageQuery {
    lang: Option<String>,
    /// A catalogue key saying how a login went (`login-wrong`, ...).
    msg: Option<String>,
}

fn language(s: &PageState, tag: Option<&str>) -> Language {
    tag.and_then(Language::from_tag)
        .unwrap_or(s.config.page.language)
}

/// The headers every answer of the page carries.
fn hardened(mut r: Response) -> Response {
    let h = r.headers_mut();
    // What the page shows is about patients: not kept by browsers or
    // proxies, not framed, no scripts or outside resources.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn set_cookie(r: &mut Response, name: &str, value: &str, max_age: Option<u64>) {
    let age = max_age
        .map(|a| format!("; Max-Age={a}"))
        .unwrap_or_default();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict{age}"
    )) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

async fn page(
    State(s): State<PageState>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    let lang = language(&s, q.lang.as_deref());
    let clock = Clock::of(&s.config);
    let link = s.link.borrow().clone();
    let existing = actions::cookie(&headers, actions::CSRF_COOKIE).filter(|c| c.len() == 32);
    let csrf = existing.clone().unwrap_or_else(actions::token);
    let diag = render::Diagnostics {
        pin_set: s.config.page.pin.is_some(),
        logged_in: s.sessions.valid(&headers),
        csrf: csrf.clone(),
        flash: s.sessions.take_flash(&headers),
        notice: None,
        folders: s.config.folder.iter().map(|f| f.name.clone()).collect(),
        modalities: s
            .config
            .dicom
            .iter()
            .flat_map(|n| {
                n.allowed
                    .iter()
                    .filter(|p| p.address.is_some())
                    .map(|p| (n.name.clone(), p.ae_title.clone()))
            })
            .collect(),
    };
    let body = tokio::task::spawn_blocking(move || {
        let now = crate::now_ms();
        let v = view::gather(
            &s.config, &s.spool, &s.reports, &s.metrics, link, &s.board, now,
        );
        render::page(&v, lang, &clock, now, &diag)
    })
    .await
    .unwrap_or_else(|e| format!("<!DOCTYPE html><p>internal error: {e}</p>"));
    let mut r = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
    if existing.is_none() {
        set_cookie(&mut r, actions::CSRF_COOKIE, &csrf, None);
    }
    hardened(r)
}

async fn login_page(
    State(s): State<PageState>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    let lang = language(&s, q.lang.as_deref());
    let existing = actions::cookie(&headers, actions::CSRF_COOKIE).filter(|c| c.len() == 32);
    let csrf = existing.clone().unwrap_or_else(actions::token);
    let notice = q
        .msg
        .filter(|m| matches!(m.as_str(), "login-wrong" | "login-locked" | "login-no-pin"));
    let mut r = (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        render::login_page(lang, &csrf, notice.as_deref()),
    )
        .into_response();
    if existing.is_none() {
        set_cookie(&mut r, actions::CSRF_COOKIE, &csrf, None);
    }
    hardened(r)
}

#[derive(serde::Deserialize)]
struct LoginForm {
    csrf: String,
    pin: String,
    lang: Option<String>,
}

/// What an I/O failure means to a technician, as a catalogue key (never
/// "os error 13").
fn io_words(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind::*;
    match e.kind() {
        PermissionDenied | ReadOnlyFilesystem => "io-permission",
        NotFound => "io-not-found",
        StorageFull | QuotaExceeded => "io-full",
        _ => "io-other",
    }
}

/// A form without the right CSRF token: refused, said plainly in both
/// languages (the form may be from a page in either).
fn forged() -> Response {
    hardened(
        (
            StatusCode::FORBIDDEN,
            "已拒绝：这个表单不是从本机的页面提交的，请重新打开页面再试。\nRefused: this form did not come from the box's own page (missing or wrong CSRF token); open the page again and retry.",
        )
            .into_response(),
    )
}

async fn login(
    State(s): State<PageState>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let lang = language(&s, f.lang.as_deref());
    if !actions::csrf_ok(&headers, &f.csrf) {
        tracing::warn!("the page refused a login form without its CSRF token");
        return forged();
    }
    let back = |msg: &str| format!("/login?lang={}{msg}", lang.tag());
    match s.sessions.login(s.config.page.pin.as_deref(), f.pin.trim()) {
        actions::Login::In(token) => {
            tracing::info!("a technician logged in to the box's page");
            let mut r = Redirect::to(&format!("/?lang={}", lang.tag())).into_response();
            set_cookie(&mut r, actions::SESSION_COOKIE, &token, Some(30 * 60));
            hardened(r)
        }
        actions::Login::WrongPin => {
            tracing::warn!("wrong PIN on the box's page");
            hardened(Redirect::to(&back("&msg=login-wrong")).into_response())
        }
        actions::Login::Locked => {
            tracing::warn!("the box's page refuses logins for five minutes after five wrong PINs");
            hardened(Redirect::to(&back("&msg=login-locked")).into_response())
        }
        actions::Login::NoPin => hardened(Redirect::to(&back("&msg=login-no-pin")).into_response()),
    }
}

#[derive(serde::Deserialize)]
struct ActionForm {
    csrf: String,
    action: String,
    #[serde(default)]
    target: String,
    lang: Option<String>,
}

async fn action(
    State(s): State<PageState>,
    headers: HeaderMap,
    Form(f): Form<ActionForm>,
) -> Response {
    let lang = language(&s, f.lang.as_deref());
    if !actions::csrf_ok(&headers, &f.csrf) {
        tracing::warn!(action = %f.action, "the page refused an action without its CSRF token");
        return forged();
    }
    if !s.sessions.valid(&headers) {
        return hardened(
            (
                StatusCode::FORBIDDEN,
                "已拒绝：请先用本机的 PIN 登录。\nRefused: log in with the box's PIN first.",
            )
                .into_response(),
        );
    }
    let c = crate::i18n::Catalog::get();
    let text = match f.action.as_str() {
        "logout" => {
            s.sessions.logout(&headers);
            return hardened(Redirect::to(&format!("/?lang={}", lang.tag())).into_response());
        }
        "check-link" => {
            let l = s.link.borrow().clone();
            if l.state == "up" {
                c.t_args(
                    lang,
                    "check-link-up",
                    &[("rtt", format!("{:.0}", l.rtt_ms.unwrap_or(0.0)).into())],
                )
            } else {
                let reason = match l.last_error_key {
                    Some(key) => {
                        format!("{} ({})", c.t(lang, key), l.last_error.unwrap_or_default())
                    }
                    None => l.last_error.unwrap_or_default(),
                };
                c.t_args(lang, "check-link-down", &[("reason", reason.into())])
            }
        }
        "check-folder" => match s.config.folder.iter().find(|d| d.name == f.target) {
            None => c.t(lang, "check-folder-unknown"),
            Some(folder) => {
                let path = folder.path.clone();
                let r = tokio::task::spawn_blocking(move || actions::check_folder(&path)).await;
                match r {
                    Ok(Ok(())) => c.t_args(
                        lang,
                        "check-folder-ok",
                        &[("folder", f.target.clone().into())],
                    ),
                    Ok(Err(e)) => c.t_args(
                        lang,
                        "check-folder-failed",
                        &[
                            ("folder", f.target.clone().into()),
                            ("error", c.t(lang, io_words(&e)).into()),
                        ],
                    ),
                    Err(e) => e.to_string(),
                }
            }
        },
        "echo" => {
            let (node, ae) = f.target.split_once('/').unwrap_or_default();
            let found = s
                .config
                .dicom
                .iter()
                .find(|n| n.name == node)
                .and_then(|n| {
                    n.allowed
                        .iter()
                        .find(|p| p.ae_title == ae)
                        .and_then(|p| p.address.clone())
                        .map(|a| (n.ae_title.clone(), a, n.timeout))
                });
            match found {
                None => c.t_args(
                    lang,
                    "echo-failed",
                    &[("ae", ae.to_owned().into()), ("error", "?".into())],
                ),
                Some((ours, address, timeout)) => {
                    match crate::intake::dicom::echo::echo(&ours, ae, &address, timeout).await {
                        Ok(rtt) => c.t_args(
                            lang,
                            "echo-ok",
                            &[
                                ("ae", ae.to_owned().into()),
                                ("ms", format!("{}", rtt.as_millis()).into()),
                            ],
                        ),
                        Err((key, detail)) => {
                            let why = c.t_args(lang, key, &[("detail", detail.into())]);
                            c.t_args(
                                lang,
                                "echo-failed",
                                &[("ae", ae.to_owned().into()), ("error", why.into())],
                            )
                        }
                    }
                }
            }
        }
        "requeue" => match f.target.parse::<i64>() {
            Err(_) => c.t_args(lang, "requeue-failed", &[("error", "?".into())]),
            Ok(id) => {
                let spool = s.spool.clone();
                match tokio::task::spawn_blocking(move || spool.requeue(id)).await {
                    Ok(Ok(())) => {
                        tracing::info!(
                            item = id,
                            "a dead letter was queued again from the box's page"
                        );
                        c.t(lang, "requeued")
                    }
                    Ok(Err(e)) => {
                        c.t_args(lang, "requeue-failed", &[("error", e.to_string().into())])
                    }
                    Err(e) => e.to_string(),
                }
            }
        },
        _ => return hardened((StatusCode::BAD_REQUEST, "unknown action").into_response()),
    };
    tracing::info!(action = %f.action, target = %f.target, "a page action ran");
    s.sessions.set_flash(&headers, text);
    hardened(Redirect::to(&format!("/?lang={}", lang.tag())).into_response())
}

/// Configuration without secrets, metrics, spool and device state: what
/// the county admin asks for on the phone. No patient data; keys never.
async fn support_bundle(State(s): State<PageState>, headers: HeaderMap) -> Response {
    if !s.sessions.valid(&headers) {
        return hardened(
            (
                StatusCode::FORBIDDEN,
                "已拒绝：请先用本机的 PIN 登录。\nRefused: log in with the box's PIN first.",
            )
                .into_response(),
        );
    }
    let mut out = String::new();
    let config_text = std::fs::read_to_string(&s.config.source).unwrap_or_default();
    out.push_str("# yilian-gateway support bundle\n");
    out.push_str(&format!(
        "software = {}\nconfiguration = {}\ngenerated = {}\n\n",
        env!("CARGO_PKG_VERSION"),
        s.config.version,
        Clock::of(&s.config).format_ms(crate::now_ms())
    ));
    out.push_str("## configuration (secrets removed)\n");
    for line in config_text.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        if matches!(key, "pin" | "token" | "key") {
            out.push_str(&format!("{key} = (removed)\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str("\n## link\n");
    out.push_str(&serde_json::to_string_pretty(&*s.link.borrow()).unwrap_or_default());
    out.push_str("\n\n## recent warnings and errors\n");
    let clock = Clock::of(&s.config);
    for (ms, line) in yilian_service::recent_problems() {
        out.push_str(&format!("{} {line}\n", clock.format_ms(ms)));
    }
    out.push_str("\n## metrics\n");
    out.push_str(&s.metrics.encode());
    tracing::info!("a support bundle was downloaded from the box's page");
    hardened(
        (
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"yilian-support.txt\"",
                ),
            ],
            out,
        )
            .into_response(),
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
    let app = Router::new()
        .route("/", get(page))
        .route("/login", get(login_page).post(login))
        .route("/action", post(action))
        .route("/support-bundle", get(support_bundle))
        .with_state(state);
    let listener = crate::governor::HttpListener::new(listener);
    Ok((local, async move { axum::serve(listener, app).await }))
}
