//! Deliveries waiting for (or done by) the LIS, the PACS and the ECG
//! reading system.

use crate::store::sql::{self, params};

use super::{Store, StoreError, now_ms};

/// How long an instance holds a delivery it took: longer than any one
/// delivery (a LIS answer within its timeout, a large image to the PACS),
/// short enough that a dead instance's deliveries resume soon.
pub const LEASE_MS: i64 = 5 * 60 * 1000;

/// A delivery waiting in (or done by) an outbox.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OutboxRow {
    pub id: i64,
    pub gateway: String,
    pub upload_id: String,
    pub destination: String,
    pub kind: String,
    pub sha256: String,
    pub state: &'static str,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub created_ms: i64,
    pub delivered_ms: Option<i64>,
    /// The item's metadata (charset, message type, ...).
    pub metadata: serde_json::Value,
}

/// The `state` column of the outbox table.
const OUTBOX_PENDING: i64 = 0;
const OUTBOX_DELIVERED: i64 = 1;
const OUTBOX_PARKED: i64 = 2;

fn outbox_state(v: i64) -> &'static str {
    match v {
        OUTBOX_PENDING => "pending",
        OUTBOX_DELIVERED => "delivered",
        OUTBOX_PARKED => "parked",
        _ => "unknown",
    }
}

const OUTBOX_SELECT: &str =
    "SELECT o.id, o.gateway, o.upload_id, o.destination, o.kind, o.sha256, o.state, o.attempts,
        o.last_error, o.created_ms, o.delivered_ms, COALESCE(i.metadata, '{}')
     FROM outbox o LEFT JOIN items i ON i.gateway = o.gateway AND i.upload_id = o.upload_id";

fn outbox_row(r: &sql::Row) -> Result<OutboxRow, sql::DbError> {
    Ok(OutboxRow {
        id: r.get(0)?,
        gateway: r.get(1)?,
        upload_id: r.get(2)?,
        destination: r.get(3)?,
        kind: r.get(4)?,
        sha256: r.get(5)?,
        state: outbox_state(r.get(6)?),
        attempts: r.get::<i64>(7)? as u32,
        last_error: r.get(8)?,
        created_ms: r.get(9)?,
        delivered_ms: r.get(10)?,
        metadata: serde_json::from_str(&r.get::<String>(11)?).unwrap_or_default(),
    })
}

/// Counts of one destination's outbox.
#[derive(Debug, Clone, Default)]
pub struct OutboxStats {
    pub pending: u64,
    pub delivered: u64,
    pub parked: u64,
    pub oldest_pending_ms: Option<i64>,
}

impl Store {
    /// The next delivery due for `destination`, oldest first. With the
    /// index on PostgreSQL it is leased to this instance for [`LEASE_MS`]:
    /// its next attempt moves to the lease's end, so another instance
    /// passes it by until the outcome is recorded or the lease runs out
    /// (this instance died mid-delivery; or sooner, when another instance
    /// finds it dead: see `instances`). The claim is an UPDATE that
    /// re-checks the row as it is when the claim runs, so a row another
    /// instance delivered or claimed since our look is not taken. An
    /// embedded index has one instance, with one worker per destination:
    /// nothing to claim, and no write (and flush) per delivery for it.
    pub fn outbox_next(
        &self,
        destination: &str,
        now_ms: i64,
    ) -> Result<Option<OutboxRow>, StoreError> {
        let sql = format!(
            "{OUTBOX_SELECT} WHERE o.destination = ?1 AND o.state = 0 AND o.next_attempt_ms <= ?2 \
             ORDER BY o.id LIMIT 1"
        );
        // A few tries, then the caller's next round.
        for _ in 0..3 {
            let mut db = self.db();
            let Some(row) = db.query_row(&sql, params![destination, now_ms], outbox_row)? else {
                return Ok(None);
            };
            if !db.is_postgres() {
                return Ok(Some(row));
            }
            self.hold_instance_lock(&mut db)?;
            let mut tx = db.transaction()?;
            let claimed = tx.execute(
                "UPDATE outbox SET next_attempt_ms = ?3 WHERE id = ?1 AND state = 0 AND next_attempt_ms <= ?2",
                params![row.id, now_ms, now_ms.saturating_add(LEASE_MS)],
            )? == 1;
            if claimed {
                // Whose lease it is: if this instance dies, another one
                // takes the delivery over at once (`take_over_dead_leases`).
                tx.execute(
                    "INSERT INTO outbox_leases(outbox_id, instance) VALUES (?1, ?2)
                     ON CONFLICT(outbox_id) DO UPDATE SET instance = excluded.instance",
                    params![row.id, self.instance_id()],
                )?;
                tx.commit()?;
                return Ok(Some(row));
            }
        }
        Ok(None)
    }

    /// Whether this instance is the one that delivers to `destination`
    /// fleet-wide. An embedded index has one instance; at PostgreSQL it is
    /// a session advisory lock, held while this instance's connection
    /// lives (taken again at no cost when held).
    pub fn claim_destination(&self, destination: &str) -> Result<bool, StoreError> {
        self.claim_role(&format!("yilian-outbox:{destination}"))
    }

    /// Makes every pending delivery of `destination` due now: called by
    /// the instance that has just claimed an ordered destination, whose
    /// previous holder is gone (it lost its connection to the index, so
    /// its lock) and whose leased rows would otherwise wait out their
    /// lease. A row it was sending as it died may reach the destination
    /// twice, with the same control ID (the LIS's duplicate check); none is
    /// lost. Backed-off rows are tried again at once too. Returns how many
    /// rows were made due.
    pub fn take_over_destination(&self, destination: &str) -> Result<u64, StoreError> {
        let mut db = self.db();
        if !db.is_postgres() {
            return Ok(0);
        }
        let now = now_ms();
        Ok(db.execute(
            "UPDATE outbox SET next_attempt_ms = ?2 WHERE destination = ?1 AND state = 0 AND next_attempt_ms > ?2",
            params![destination, now],
        )? as u64)
    }

    pub fn outbox_delivered(&self, id: i64) -> Result<(), StoreError> {
        self.outbox_outcome(
            id,
            "UPDATE outbox SET state = 1, delivered_ms = ?2, last_error = NULL WHERE id = ?1",
            params![id, now_ms()],
        )
    }

    pub fn outbox_retry(&self, id: i64, delay_ms: i64, error: &str) -> Result<(), StoreError> {
        self.outbox_outcome(
            id,
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_ms = ?2, last_error = ?3 WHERE id = ?1",
            params![id, now_ms() + delay_ms, error],
        )
    }

    /// Set aside for an operator: the destination refused the content.
    pub fn outbox_park(&self, id: i64, error: &str) -> Result<(), StoreError> {
        self.outbox_outcome(
            id,
            "UPDATE outbox SET state = 2, attempts = attempts + 1, last_error = ?2 WHERE id = ?1",
            params![id, error],
        )
    }

    /// Records a delivery's outcome, and ends its lease with it when
    /// instances share the index (an embedded hub writes one statement).
    fn outbox_outcome(
        &self,
        id: i64,
        sql: &str,
        params: &[&dyn sql::ToValue],
    ) -> Result<(), StoreError> {
        let mut db = self.db();
        if !db.is_postgres() {
            db.execute(sql, params)?;
            return Ok(());
        }
        let mut tx = db.transaction()?;
        tx.execute(sql, params)?;
        tx.execute(
            "DELETE FROM outbox_leases WHERE outbox_id = ?1",
            params![id],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Puts a parked delivery back in line.
    pub fn outbox_requeue(&self, id: i64) -> Result<bool, StoreError> {
        let n = self.db().execute(
            "UPDATE outbox SET state = 0, next_attempt_ms = 0 WHERE id = ?1 AND state = 2",
            params![id],
        )?;
        Ok(n == 1)
    }

    pub fn outbox_list(&self, destination: Option<&str>) -> Result<Vec<OutboxRow>, StoreError> {
        let sql = format!(
            "{OUTBOX_SELECT} WHERE (CAST(?1 AS TEXT) IS NULL OR o.destination = ?1) ORDER BY o.id"
        );
        Ok(self.db().query(&sql, params![destination], outbox_row)?)
    }

    pub fn outbox_stats(&self, destination: &str) -> Result<OutboxStats, StoreError> {
        let mut s = OutboxStats::default();
        let rows = self.db().query("SELECT state, COUNT(*), MIN(created_ms) FROM outbox WHERE destination = ?1 GROUP BY state", params![destination], |r| {
            Ok((
                r.get::<i64>(0)?,
                r.get::<i64>(1)?,
                r.get::<Option<i64>>(2)?,
            ))
        })?;
        for (state, n, oldest) in rows {
            match state {
                OUTBOX_PENDING => {
                    s.pending = n as u64;
                    s.oldest_pending_ms = oldest;
                }
                OUTBOX_DELIVERED => s.delivered = n as u64,
                _ => s.parked = n as u64,
            }
        }
        Ok(s)
    }
}
