//! Life among several instances sharing one index: every two seconds,
//! take over what dead instances leased, and decide which instance shows
//! the fleet-wide series.
//!
//! A box's series come from the instance it is connected to, and from
//! nowhere else (`server` drops them when the box leaves). The fleet
//! exporter, one instance fleet-wide, shows the rest once: every watched
//! box connected to no live instance as down, with its last-seen time and
//! certificate expiry from the index, and the counts read from the index
//! (outboxes, reports waiting). Prometheus scraping every instance then
//! gets one answer per box and per count, whichever instance died.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use yilian_protocol::BoxIdentity;

use crate::metrics::GatewayLabels;
use crate::shared::{Shared, close};

const ROUND: Duration = Duration::from_secs(2);
/// How long an instance stays dead before its boxes' records are dropped.
const FORGET_DEAD_AFTER: Duration = Duration::from_secs(60);

pub(crate) async fn watch(shared: Shared, mut stopped: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(ROUND);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Boxes this instance shows as down (as the exporter).
    let mut shown_down: HashSet<BoxIdentity> = HashSet::new();
    let mut exporter = None;
    // Instances found dead, since when (their records go after a while).
    let mut dead_since: HashMap<i64, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stopped.changed() => return,
        }
        let store = shared.store.clone();
        let fleet_now = shared.fleet.clone();
        let round = tokio::task::spawn_blocking(move || {
            let taken = store.take_over_dead_leases()?;
            // Revoked since the last round (through another instance),
            // with the notice the box is told.
            let mut revoked = Vec::new();
            for who in store.revoked_identities()? {
                let Ok(id) = BoxIdentity::parse(&who) else {
                    continue;
                };
                if !fleet_now.is_revoked(&id) {
                    let notice = store.revocation_notice(&who)?;
                    revoked.push((id, notice.unwrap_or_else(|| "revoked".into())));
                }
            }
            let unwatched = store.unwatched_identities()?;
            let exporter = store.claim_fleet_exporter()?;
            let view = if exporter {
                Some((store.present_boxes()?, store.fleet()?))
            } else {
                None
            };
            Ok::<_, crate::store::StoreError>((taken, revoked, unwatched, exporter, view))
        })
        .await;
        let (taken, revoked, unwatched, is_exporter, view) = match round {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot read the other instances' state from the shared index");
                continue;
            }
            Err(_) => return,
        };
        for t in taken.iter().filter(|t| t.deliveries > 0) {
            tracing::warn!(
                instance = format!("{:x}", t.instance),
                deliveries = t.deliveries,
                "a central instance died with deliveries under way; they are due again now"
            );
        }
        follow_revocations(&shared, revoked, unwatched);
        if exporter != Some(is_exporter) {
            if is_exporter {
                tracing::info!(
                    "this instance shows the fleet-wide series (boxes connected nowhere, outbox and report counts)"
                );
            } else {
                tracing::info!("another instance shows the fleet-wide series");
            }
            shared.metrics.set_fleet_exporter(is_exporter);
            exporter = Some(is_exporter);
        }
        let Some(((present, dead), fleet)) = view else {
            for id in shown_down.drain() {
                drop_down(&shared, &id);
            }
            continue;
        };
        dead_since.retain(|id, _| dead.contains(id));
        for id in dead {
            let since = *dead_since.entry(id).or_insert_with(Instant::now);
            if since.elapsed() >= FORGET_DEAD_AFTER {
                let store = shared.store.clone();
                if let Ok(Ok(())) =
                    tokio::task::spawn_blocking(move || store.forget_instance(id)).await
                {
                    dead_since.remove(&id);
                }
            }
        }
        let mut down = HashSet::new();
        for row in fleet {
            if row.revoked.is_some() || row.retired.is_some() {
                continue;
            }
            let Ok(id) = BoxIdentity::parse(&row.identity) else {
                continue;
            };
            if present
                .get(&row.identity)
                .is_some_and(|&i| i != shared.store.instance_id())
            {
                continue;
            }
            // Under the connections lock: a box connecting here at this
            // moment sets its own series after, never before, this.
            let conns = shared.connections.lock().unwrap_or_else(|p| p.into_inner());
            if conns.contains_key(&id) {
                continue;
            }
            let labels = GatewayLabels::of(&id);
            let m = &shared.metrics;
            m.gateway_link_up.get_or_create(&labels).set(0);
            m.gateway_last_seen
                .get_or_create(&labels)
                .set(row.last_seen_ms as f64 / 1000.0);
            if row.certificate_not_after > 0 {
                m.gateway_certificate_expiry
                    .get_or_create(&labels)
                    .set(row.certificate_not_after);
            }
            drop(conns);
            down.insert(id);
        }
        // Connected somewhere now: that instance shows it (or this one, if
        // it connected here: its connection owns its series).
        for id in shown_down.difference(&down) {
            let here = shared
                .connections
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(id);
            if !here {
                drop_down(&shared, id);
            }
        }
        shown_down = down;
    }
}

fn drop_down(shared: &Shared, id: &BoxIdentity) {
    let conns = shared.connections.lock().unwrap_or_else(|p| p.into_inner());
    if !conns.contains_key(id) {
        shared.metrics.forget_gateway(id);
    }
}

/// Revocations and retirements made through another instance: a revoked
/// box is refused here too from now on, and its connection here (a box
/// that failed over, or a stolen one pointed at this instance) is closed
/// with the notice; a retired box's series go, a box watched again gets
/// them back at its next heartbeat.
fn follow_revocations(
    shared: &Shared,
    revoked: Vec<(BoxIdentity, String)>,
    unwatched: HashSet<String>,
) {
    for (id, notice) in revoked {
        shared.fleet.revocations().insert(&id.to_string());
        let was_connected = shared.disconnect(&id, close::REVOKED, notice.as_bytes());
        tracing::warn!(gateway = %id, was_connected, "box revoked through another central instance; refused here too");
    }
    for (id, watched) in shared.watch_changes(&unwatched) {
        shared.set_watched(&id, watched);
    }
}
