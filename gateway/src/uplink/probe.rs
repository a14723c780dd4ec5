//! The link's round-trip time, for the metrics and the status page.

use std::time::Duration;

use tokio::sync::watch;

use super::LinkStatus;
use crate::metrics::GatewayMetrics;

/// Samples quinn's RTT estimate every two seconds while the connection
/// lives.
pub(super) fn spawn_rtt_probe(
    conn: quinn::Connection,
    metrics: GatewayMetrics,
    status: watch::Sender<LinkStatus>,
) {
    tokio::spawn(async move {
        loop {
            let rtt = conn.rtt().as_secs_f64();
            metrics.link_rtt.set(rtt);
            status.send_modify(|s| s.rtt_ms = Some(rtt * 1000.0));
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = conn.closed() => return,
            }
        }
    });
}
