//! Running under systemd: `READY=1` once the spool is open and listeners
//! are bound, `STATUS=` with a one-line summary, watchdog pings only while
//! the health check passes, `STOPPING=1` on the way out; logs to journald
//! when stderr is connected to it. Without systemd these are no-ops.

use std::future::Future;
use std::time::Duration;

use sd_notify::NotifyState;
use yilian_spool::{Lane, SpoolError, SpoolStats};

use crate::Running;

/// How often the health check runs when systemd set no watchdog.
const DEFAULT_PERIOD: Duration = Duration::from_secs(10);

/// Logging to journald (with the unit's identifier) when systemd connected
/// stderr to the journal, else human-readable lines on stderr.
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

/// One line for `systemctl status`.
pub fn summary(stats: &SpoolStats, link: &crate::uplink::LinkStatus, now_ms: i64) -> String {
    let lanes: Vec<String> = Lane::ALL
        .iter()
        .map(|&l| format!("{} {}", stats.lanes[l as usize].items, l.name()))
        .collect();
    let oldest = stats
        .lanes
        .iter()
        .filter_map(|l| l.oldest_received_ms)
        .min()
        .map(|t| format!(", oldest {}s", ((now_ms - t).max(0)) / 1000))
        .unwrap_or_default();
    format!(
        "link {} to {}; waiting {}{}",
        link.state,
        link.central,
        lanes.join(", "),
        oldest
    )
}

/// Tells systemd the gateway is ready, then keeps the watchdog fed while
/// the health check passes, until `shutdown` completes.
///
/// The health check goes through the spool's writer thread, which needs
/// the index's write lock: a hung disk, a wedged database or a stuck writer
/// thread stops the pings, and systemd restarts the service.
pub async fn supervise(running: &Running, shutdown: impl Future<Output = ()>) {
    let watchdog = sd_notify::watchdog_enabled();
    let period = watchdog.map_or(DEFAULT_PERIOD, |d| d / 2);
    notify(&[NotifyState::Ready, NotifyState::Status("started")]);
    tracing::info!(watchdog = ?watchdog, "ready");
    tokio::pin!(shutdown);
    let mut pending: Option<tokio::task::JoinHandle<Result<SpoolStats, SpoolError>>> = None;
    loop {
        let mut check = pending.take().unwrap_or_else(|| {
            let spool = running.spool.clone();
            tokio::task::spawn_blocking(move || spool.stats())
        });
        let verdict = tokio::select! {
            _ = &mut shutdown => break,
            r = tokio::time::timeout(period, &mut check) => r,
        };
        match verdict {
            Ok(Ok(Ok(stats))) => {
                let line = summary(&stats, &running.link.borrow(), crate::now_ms());
                if watchdog.is_some() {
                    notify(&[NotifyState::Watchdog, NotifyState::Status(&line)]);
                } else {
                    notify(&[NotifyState::Status(&line)]);
                }
            }
            Ok(Ok(Err(e))) => {
                tracing::error!(error = %e, "health check: the spool cannot be used; not feeding the watchdog")
            }
            Ok(Err(e)) => tracing::error!(error = %e, "health check task failed"),
            Err(_) => {
                tracing::error!(
                    waited = ?period,
                    "health check: the spool did not answer; not feeding the watchdog"
                );
                // Keep waiting for the same check rather than piling up more.
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
