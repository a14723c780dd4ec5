//! Which connection of a box is the newest, when several central instances
//! share one index: each new connection takes its box's next epoch, and an
//! instance holding an older one closes it (the box keeps one connection;
//! an older one lingering at another instance is a dead path or a clone).
//! An embedded hub is one instance: its connection map decides alone, and
//! nothing is written here.

use crate::store::sql::params;

use super::{Store, StoreError, now_ms};

/// A connection as the index records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedConnection {
    pub gateway: String,
    pub epoch: i64,
    pub remote: String,
}

impl Store {
    /// Whether connections are claimed in the index (several instances).
    pub fn shares_connections(&self) -> bool {
        self.inner.shared
    }

    /// Records a new connection of `gateway` from `remote`: the epoch it
    /// takes, and where the connection before it came from. None on an
    /// embedded hub.
    pub fn claim_connection(
        &self,
        gateway: &str,
        remote: &str,
    ) -> Result<Option<(i64, Option<String>)>, StoreError> {
        let mut db = self.db();
        if !db.is_postgres() {
            return Ok(None);
        }
        self.hold_instance_lock(&mut db)?;
        let mut tx = db.transaction()?;
        let previous: Option<String> = tx.query_row(
            "SELECT remote FROM box_connections WHERE gateway = ?1",
            params![gateway],
            |r| r.get(0),
        )?;
        // One atomic upsert: two instances claiming at once get two epochs.
        let epoch: i64 = tx.query_one(
            "INSERT INTO box_connections(gateway, epoch, remote, at_ms) VALUES (?1, 1, ?2, ?3)
             ON CONFLICT(gateway) DO UPDATE SET epoch = box_connections.epoch + 1,
                 remote = excluded.remote, at_ms = excluded.at_ms
             RETURNING epoch",
            params![gateway, remote, now_ms()],
            |r| r.get(0),
        )?;
        // Connected here (for the fleet exporter: see `instances`).
        tx.execute(
            "INSERT INTO box_presence(gateway, instance, epoch) VALUES (?1, ?2, ?3)
             ON CONFLICT(gateway) DO UPDATE SET instance = excluded.instance, epoch = excluded.epoch
             WHERE box_presence.epoch <= excluded.epoch",
            params![gateway, self.instance_id(), epoch],
        )?;
        tx.commit()?;
        Ok(Some((epoch, previous)))
    }

    /// A secret all instances sharing the index use (the token key): the
    /// one stored, or `candidate` stored and returned if there is none yet
    /// (of instances starting together, the first insert wins).
    pub fn shared_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut db = self.db();
        db.execute(
            "INSERT INTO shared_secrets(name, value) VALUES (?1, ?2) ON CONFLICT(name) DO NOTHING",
            params![name, hex::encode(candidate)],
        )?;
        let value: String = db.query_one(
            "SELECT value FROM shared_secrets WHERE name = ?1",
            params![name],
            |r| r.get(0),
        )?;
        hex::decode(value)
            .map_err(|e| StoreError::Inconsistent(format!("shared secret {name} is not hex: {e}")))
    }

    /// Connections claimed (by any instance) at or after `since_ms`.
    pub fn connections_since(&self, since_ms: i64) -> Result<Vec<ClaimedConnection>, StoreError> {
        Ok(self.db().query(
            "SELECT gateway, epoch, remote FROM box_connections WHERE at_ms >= ?1",
            params![since_ms],
            |r| {
                Ok(ClaimedConnection {
                    gateway: r.get(0)?,
                    epoch: r.get(1)?,
                    remote: r.get(2)?,
                })
            },
        )?)
    }
}
