//! The loop that drains one destination's outbox: take the oldest due
//! delivery, hand it to the destination, record the verdict. Retries back
//! off exponentially; a parked delivery waits for an operator
//! (`yilian-central outbox --requeue ID`) and never blocks the queue.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

use crate::metrics::CentralMetrics;
use crate::store::{OutboxRow, Store, now_ms};

/// What became of one delivery attempt.
pub enum Verdict {
    Delivered,
    /// Try again later (the destination is down or busy).
    Retry(String),
    /// The destination refused it for good: an operator decides.
    Park(String),
}

/// A downstream system fed from the outbox.
pub trait Destination: Send {
    /// The outbox's destination name.
    fn name(&self) -> &'static str;
    /// Whether the destination takes its deliveries over one connection in
    /// order (a LIS port): then one instance delivers to it fleet-wide.
    fn ordered(&self) -> bool {
        false
    }
    fn deliver(&mut self, row: &OutboxRow) -> impl Future<Output = Verdict> + Send;
}

/// Drains `destination`'s outbox until `stop`.
pub async fn drive<D: Destination>(
    mut destination: D,
    store: Store,
    metrics: CentralMetrics,
    retry_base: Duration,
    retry_max: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let name = destination.name();
    let ordered = destination.ordered();
    let mut failures: u32 = 0;
    let mut worker = None;
    loop {
        if *stop.borrow() {
            return;
        }
        if ordered {
            // Asked every round: the claim goes with the connection to the
            // index, and a reconnect may find another instance holding it.
            let s = store.clone();
            let mine = matches!(
                tokio::task::spawn_blocking(move || s.claim_destination(name)).await,
                Ok(Ok(true))
            );
            if worker != Some(mine) {
                if mine {
                    // Taken over (or first start): what the previous holder
                    // had leased is due now, not when its lease runs out.
                    let s = store.clone();
                    let due = tokio::task::spawn_blocking(move || s.take_over_destination(name))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or(0);
                    tracing::info!(
                        destination = name,
                        pending_made_due = due,
                        "this instance delivers to {name}"
                    );
                } else {
                    tracing::info!(
                        destination = name,
                        "another instance delivers to {name}; standing by"
                    );
                }
                worker = Some(mine);
            }
            if !mine {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
        }
        let s = store.clone();
        if let Ok(Ok(stats)) = tokio::task::spawn_blocking(move || s.outbox_stats(name)).await {
            metrics.observe_outbox(name, &stats, now_ms());
        }
        let s = store.clone();
        let next = tokio::task::spawn_blocking(move || s.outbox_next(name, now_ms())).await;
        let row = match next {
            Ok(Ok(Some(row))) => row,
            Ok(Ok(None)) => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
            Ok(Err(e)) => {
                tracing::error!(destination = name, error = %e, "cannot read the outbox");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
            Err(_) => return,
        };
        let verdict = tokio::select! {
            v = destination.deliver(&row) => v,
            _ = stop.changed() => return,
        };
        let (result, delay) = match &verdict {
            Verdict::Delivered => {
                failures = 0;
                ("delivered", 0)
            }
            Verdict::Retry(_) => {
                failures = failures.saturating_add(1);
                let delay = (retry_base.as_millis() as u64)
                    .saturating_mul(1 << failures.min(20))
                    .min(retry_max.as_millis() as u64);
                ("retry", delay as i64)
            }
            Verdict::Park(_) => ("parked", 0),
        };
        metrics.outbox_result(name, result);
        let s = store.clone();
        let id = row.id;
        let r = tokio::task::spawn_blocking(move || match verdict {
            Verdict::Delivered => s.outbox_delivered(id),
            Verdict::Retry(why) => s.outbox_retry(id, delay, &why),
            Verdict::Park(why) => s.outbox_park(id, &why),
        })
        .await;
        if let Ok(Err(e)) = r {
            tracing::error!(destination = name, error = %e, "cannot record a delivery result; it will be delivered again");
        }
    }
}
