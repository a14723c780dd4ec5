//! What the gateway and central both do as services under systemd, written
//! once: log to journald when stderr is the journal; say `READY=1` once the
//! caller is ready, `STATUS=` with a one-line summary, feed the watchdog
//! only while a health check passes, `STOPPING=1` on the way out; and serve
//! Prometheus metrics in the format the scraper asks for. Without systemd
//! the notifications are no-ops.

#![forbid(unsafe_code)]

use std::future::Future;
use std::time::Duration;

use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use sd_notify::NotifyState;
use tokio::task::JoinHandle;

/// How often the health check runs when systemd set no watchdog.
const DEFAULT_PERIOD: Duration = Duration::from_secs(10);

/// Logging to journald (with the unit's identifier) when systemd connected
/// stderr to the journal, else human-readable lines on stderr. Warnings
/// and errors are also kept in memory ([`recent_problems`]) for a support
/// bundle.
pub fn init_logging(default_filter: &str) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    if std::env::var_os("JOURNAL_STREAM").is_some()
        && let Ok(journald) = tracing_journald::layer()
    {
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(journald)
            .with(Recent)
            .try_init();
        return;
    }
    // Colour only on a terminal: a log file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(ansi)
                .with_writer(std::io::stderr),
        )
        .with(Recent)
        .try_init();
}

/// Warnings and errors kept for the support bundle.
const RECENT_LINES: usize = 200;

static RECENT: std::sync::Mutex<std::collections::VecDeque<(i64, String)>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());

/// The last warnings and errors this process logged, oldest first, with
/// when (ms since the epoch, for the caller to show in its zone). Our log
/// lines carry no patient data: file names and IDs are debug only.
pub fn recent_problems() -> Vec<(i64, String)> {
    RECENT
        .lock()
        .map(|r| r.iter().cloned().collect())
        .unwrap_or_default()
}

/// Keeps warnings and errors in [`RECENT`].
struct Recent;

struct Line(String);

impl tracing::field::Visit for Line {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        use std::fmt::Write;
        if field.name() == "message" {
            let _ = write!(self.0, " {value}");
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Recent {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let level = *event.metadata().level();
        if level > tracing::Level::WARN {
            return;
        }
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut line = Line(format!("{level} {}:", event.metadata().target()));
        event.record(&mut line);
        if let Ok(mut r) = RECENT.lock() {
            if r.len() >= RECENT_LINES {
                r.pop_front();
            }
            r.push_back((ms, line.0));
        }
    }
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "cannot notify the service manager");
    }
}

/// Tells systemd the service is ready, then runs `check` every half
/// watchdog period (or every 10 s) and feeds the watchdog only when it
/// answers with its one-line status in time, until `shutdown` completes.
///
/// `check` starts the health check on a blocking thread; it should go
/// through the store's write path, so that a hung disk or a wedged
/// database stops the pings and systemd restarts the service. A check that
/// does not answer is waited for, not started again. `subject` names what
/// is checked in the log ("the spool", "the store").
pub async fn supervise<E: std::fmt::Display + Send + 'static>(
    subject: &str,
    mut check: impl FnMut() -> JoinHandle<Result<String, E>>,
    shutdown: impl Future<Output = ()>,
) {
    let watchdog = sd_notify::watchdog_enabled();
    let period = watchdog.map_or(DEFAULT_PERIOD, |d| d / 2);
    notify(&[NotifyState::Ready, NotifyState::Status("started")]);
    tracing::info!(watchdog = ?watchdog, "ready");
    tokio::pin!(shutdown);
    let mut pending: Option<JoinHandle<Result<String, E>>> = None;
    loop {
        let mut running = pending.take().unwrap_or_else(&mut check);
        let verdict = tokio::select! {
            _ = &mut shutdown => break,
            r = tokio::time::timeout(period, &mut running) => r,
        };
        match verdict {
            Ok(Ok(Ok(line))) => {
                if watchdog.is_some() {
                    notify(&[NotifyState::Watchdog, NotifyState::Status(&line)]);
                } else {
                    notify(&[NotifyState::Status(&line)]);
                }
            }
            Ok(Ok(Err(e))) => {
                tracing::error!(error = %e, "health check: {subject} cannot be used; not feeding the watchdog")
            }
            Ok(Err(e)) => tracing::error!(error = %e, "health check task failed"),
            Err(_) => {
                tracing::error!(waited = ?period, "health check: {subject} did not answer; not feeding the watchdog");
                // Keep waiting for the same check rather than piling up more.
                pending = Some(running);
                continue;
            }
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(period) => {}
        }
    }
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// The `/metrics` answer: OpenMetrics for scrapers that ask for it
/// (Prometheus does), the classic text format for everything else (curl,
/// promtool, older scrapers).
pub fn metrics_response(headers: &HeaderMap, openmetrics: String) -> Response {
    use yilian_protocol::exposition::{
        OPENMETRICS_TEXT, PROMETHEUS_TEXT, to_prometheus_text, wants_openmetrics,
    };
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if wants_openmetrics(accept) {
        ([(header::CONTENT_TYPE, OPENMETRICS_TEXT)], openmetrics).into_response()
    } else {
        (
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
            to_prometheus_text(&openmetrics),
        )
            .into_response()
    }
}
