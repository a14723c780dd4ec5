//! Running under systemd (see `yilian-service`): `READY=1` once the store
//! is open and the listeners are bound, `STATUS=` with connected gateways
//! and committed items, watchdog pings only while the store answers a
//! write transaction.

use std::future::Future;

use crate::Running;

pub use yilian_service::init_logging;

/// Tells systemd central is ready, then feeds the watchdog while the store
/// takes a write transaction, until `shutdown` completes.
pub async fn supervise(running: &Running, shutdown: impl Future<Output = ()>) {
    let check = || {
        let store = running.store.clone();
        let metrics = running.metrics.clone();
        tokio::task::spawn_blocking(move || {
            store.health().map(|()| {
                format!(
                    "{} gateway(s) connected, {} item(s) committed since start",
                    metrics.connections.get(),
                    metrics.items_committed_total()
                )
            })
        })
    };
    yilian_service::supervise("the store", check, shutdown).await;
}
