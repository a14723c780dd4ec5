//! Which central instances sharing the index are alive, and what a dead
//! one leaves behind.
//!
//! Each instance holds a PostgreSQL session advisory lock on its own
//! random id for as long as its connection to the index lives: the server
//! drops it the moment the instance dies (its socket closes, or TCP
//! keepalive gives up on a vanished host). Another instance that can take
//! that lock knows the holder is gone, without clocks or heartbeats. What
//! an instance leaves carries its id: the deliveries it leased (taken over
//! at once instead of after their lease) and the boxes connected to it
//! (whose series the fleet exporter then shows as down).
//!
//! An embedded hub is one instance: nothing here writes or asks anything.

use std::collections::{HashMap, HashSet};

use crate::store::sql::{Db, params};

use super::{Store, StoreError, now_ms};

/// The advisory lock of the instance that exports fleet-wide series.
const FLEET_EXPORTER: &str = "yilian-fleet-metrics";

/// An instance's id: random per start, above any `hashtext` key (those are
/// 32-bit) and the schema lock, so that it never names another lock.
pub(super) fn new_instance_id() -> i64 {
    ((rand::random::<u64>() >> 2) | (1 << 61)) as i64
}

/// A dead instance's deliveries, made due again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakenOver {
    pub instance: i64,
    pub deliveries: u64,
}

impl Store {
    /// This instance's id in the shared index (0 on an embedded hub).
    pub fn instance_id(&self) -> i64 {
        self.inner.instance
    }

    /// Takes this instance's liveness lock on `db` unless a connection of
    /// this instance holds it already (again after a reconnect lost it).
    /// Any of the pool's connections holding it keeps the instance alive.
    pub(super) fn hold_instance_lock(&self, db: &mut Db) -> Result<(), StoreError> {
        if db.is_postgres() {
            db.query_one(
                "SELECT pg_try_advisory_lock(?1)",
                params![self.inner.instance],
                |r| r.get::<bool>(0),
            )?;
        }
        Ok(())
    }

    /// Of `ids`, those whose instance is alive (holds its lock). This one
    /// always is.
    fn alive(&self, db: &mut Db, ids: &HashSet<i64>) -> Result<HashSet<i64>, StoreError> {
        let mut alive = HashSet::new();
        for &id in ids {
            if id == self.inner.instance {
                alive.insert(id);
                continue;
            }
            // Taken: its holder is gone. Given back at once, so that two
            // instances probing together do not hold each other's verdict.
            let free: bool =
                db.query_one("SELECT pg_try_advisory_lock(?1)", params![id], |r| r.get(0))?;
            if free {
                db.query_one("SELECT pg_advisory_unlock(?1)", params![id], |r| {
                    r.get::<bool>(0)
                })?;
            } else {
                alive.insert(id);
            }
        }
        Ok(alive)
    }

    /// Makes the deliveries leased by dead instances due now, instead of
    /// when their leases run out. One they were sending as they died may
    /// reach its destination twice (the PACS keeps one copy per SOP
    /// instance UID; the LIS checks control IDs); none is lost.
    pub fn take_over_dead_leases(&self) -> Result<Vec<TakenOver>, StoreError> {
        let mut db = self.db();
        if !db.is_postgres() {
            return Ok(Vec::new());
        }
        self.hold_instance_lock(&mut db)?;
        let holders: HashSet<i64> = db
            .query(
                "SELECT DISTINCT instance FROM outbox_leases",
                params![],
                |r| r.get(0),
            )?
            .into_iter()
            .collect();
        let alive = self.alive(&mut db, &holders)?;
        let mut taken = Vec::new();
        for dead in holders.difference(&alive) {
            let mut tx = db.transaction()?;
            let deliveries = tx.execute(
                "UPDATE outbox SET next_attempt_ms = ?2 WHERE state = 0 AND next_attempt_ms > ?2
                   AND id IN (SELECT outbox_id FROM outbox_leases WHERE instance = ?1)",
                params![*dead, now_ms()],
            )? as u64;
            tx.execute(
                "DELETE FROM outbox_leases WHERE instance = ?1",
                params![*dead],
            )?;
            tx.commit()?;
            taken.push(TakenOver {
                instance: *dead,
                deliveries,
            });
        }
        Ok(taken)
    }

    /// Records that `gateway`'s connection here ended (unless a newer one,
    /// here or elsewhere, has replaced it). Its arrival is recorded with
    /// its epoch (`claim_connection`).
    pub fn mark_absent(&self, gateway: &str, epoch: i64) -> Result<(), StoreError> {
        let mut db = self.db();
        if !db.is_postgres() {
            return Ok(());
        }
        db.execute(
            "DELETE FROM box_presence WHERE gateway = ?1 AND instance = ?2 AND epoch = ?3",
            params![gateway, self.inner.instance, epoch],
        )?;
        Ok(())
    }

    /// The boxes connected to a live instance, with that instance's id,
    /// and the instances found dead that still have boxes recorded.
    pub fn present_boxes(&self) -> Result<(HashMap<String, i64>, HashSet<i64>), StoreError> {
        let mut db = self.db();
        if !db.is_postgres() {
            return Ok(Default::default());
        }
        let rows: Vec<(String, i64)> = db.query(
            "SELECT gateway, instance FROM box_presence",
            params![],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let ids: HashSet<i64> = rows.iter().map(|(_, i)| *i).collect();
        let alive = self.alive(&mut db, &ids)?;
        let dead = ids.difference(&alive).copied().collect();
        let live = rows
            .into_iter()
            .filter(|(_, i)| alive.contains(i))
            .collect();
        Ok((live, dead))
    }

    /// Drops what an instance dead for a while recorded of its boxes (not
    /// at the first sight: an instance whose connection to the index blinked
    /// takes its lock again within a round, and its boxes count again).
    pub fn forget_instance(&self, instance: i64) -> Result<(), StoreError> {
        self.db().execute(
            "DELETE FROM box_presence WHERE instance = ?1",
            params![instance],
        )?;
        Ok(())
    }

    /// Whether this instance exports the fleet-wide series (boxes
    /// connected nowhere, outbox and report counts): one instance of those
    /// sharing the index, for as long as its connection to it lives. True
    /// on an embedded hub.
    pub fn claim_fleet_exporter(&self) -> Result<bool, StoreError> {
        self.claim_role(FLEET_EXPORTER)
    }

    /// Whether this instance holds the role `name` fleet-wide: a session
    /// advisory lock on the pool's first connection, held while that
    /// connection lives (asking again while holding it costs nothing and
    /// keeps it). Always true on an embedded hub, the only instance.
    pub(super) fn claim_role(&self, name: &str) -> Result<bool, StoreError> {
        let mut db = self.primary_db();
        if !db.is_postgres() {
            return Ok(true);
        }
        Ok(db.query_one(
            "SELECT pg_try_advisory_lock(hashtext(CAST(?1 AS TEXT)))",
            params![name],
            |r| r.get(0),
        )?)
    }
}
