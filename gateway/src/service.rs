//! Running under systemd (see `yilian-service`): `READY=1` once the spool
//! is open and listeners are bound, `STATUS=` with the link and the
//! backlog, watchdog pings only while the spool answers.

use std::future::Future;

use yilian_spool::{Lane, SpoolStats};

use crate::Running;

pub use yilian_service::init_logging;

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
    let check = || {
        let spool = running.spool.clone();
        let link = running.link.clone();
        tokio::task::spawn_blocking(move || {
            spool
                .stats()
                .map(|stats| summary(&stats, &link.borrow(), crate::now_ms()))
        })
    };
    yilian_service::supervise("the spool", check, shutdown).await;
}
