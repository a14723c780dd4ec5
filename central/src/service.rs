//! Running under systemd: `READY=1` once the store is open and the
//! listeners are bound, `STATUS=` with connected gateways and committed
//! items, watchdog pings only while the store answers a write transaction,
//! `STOPPING=1` on the way out; journald logging when stderr is the journal.

use std::future::Future;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::Running;
use crate::store::StoreError;

const DEFAULT_PERIOD: Duration = Duration::from_secs(10);

/// Logging to journald when systemd connected stderr to the journal, else
/// human-readable lines on stderr.
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
            .try_init();
        return;
    }
    // Colour only on a terminal: a log file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_ansi(ansi)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "cannot notify the service manager");
    }
}

/// Tells systemd central is ready, then feeds the watchdog while the store
/// takes a write transaction, until `shutdown` completes.
pub async fn supervise(running: &Running, shutdown: impl Future<Output = ()>) {
    let watchdog = sd_notify::watchdog_enabled();
    let period = watchdog.map_or(DEFAULT_PERIOD, |d| d / 2);
    notify(&[NotifyState::Ready, NotifyState::Status("started")]);
    tokio::pin!(shutdown);
    let mut pending: Option<tokio::task::JoinHandle<Result<(), StoreError>>> = None;
    loop {
        let mut check = pending.take().unwrap_or_else(|| {
            let store = running.store.clone();
            tokio::task::spawn_blocking(move || store.health())
        });
        let verdict = tokio::select! {
            _ = &mut shutdown => break,
            r = tokio::time::timeout(period, &mut check) => r,
        };
        match verdict {
            Ok(Ok(Ok(()))) => {
                let line = format!(
                    "{} gateway(s) connected, {} item(s) committed since start",
                    running.metrics.connections.get(),
                    running.metrics.items_committed_total()
                );
                if watchdog.is_some() {
                    notify(&[NotifyState::Watchdog, NotifyState::Status(&line)]);
                } else {
                    notify(&[NotifyState::Status(&line)]);
                }
            }
            Ok(Ok(Err(e))) => {
                tracing::error!(error = %e, "health check: the store cannot commit; not feeding the watchdog")
            }
            Ok(Err(e)) => tracing::error!(error = %e, "health check task failed"),
            Err(_) => {
                tracing::error!(waited = ?period, "health check: the store did not answer; not feeding the watchdog");
                pending = Some(check);
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
