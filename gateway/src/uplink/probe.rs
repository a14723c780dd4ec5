//! The link's round-trip time, for the metrics and the status page, and
//! the congestion controller's estimates, for the metrics.

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
            // Our controller's view of the line (`congestion = "bounded"`);
            // under quinn's controllers the gauges stay at zero.
            if let Ok(c) = conn
                .congestion_state()
                .into_any()
                .downcast::<yilian_link::Bounded>()
            {
                let m = c.model();
                metrics.link_bandwidth.set(m.bandwidth());
                metrics.link_window.set(m.window() as i64);
                metrics.link_giving_way.set(i64::from(m.is_yielding()));
            }
            status.send_modify(|s| s.rtt_ms = Some(rtt * 1000.0));
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = conn.closed() => return,
            }
        }
    });
}
