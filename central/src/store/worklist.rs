//! The clinics' scheduled procedures, as RIS orders set them and the
//! boxes' modality worklists serve them.

use crate::store::sql::params;

use super::{Store, StoreError, Stored, now_ms};

impl Store {
    /// Adds or replaces scheduled steps of a clinic (`COUNTY/CLINIC`) and
    /// removes the completed or cancelled ones, in one transaction.
    pub fn worklist_update(
        &self,
        clinic: &str,
        upserts: &[yilian_protocol::messages::WorklistEntry],
        removals: &[String],
    ) -> Result<Stored<()>, StoreError> {
        let now = now_ms();
        let mut db = self.db();
        let mut tx = db.transaction()?;
        for e in upserts {
            let json = serde_json::to_string(e).unwrap_or_else(|_| "{}".into());
            tx.execute(
                "INSERT INTO worklist(clinic, accession, entry, updated_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(clinic, accession) DO UPDATE SET entry = ?3, updated_ms = ?4",
                params![clinic, e.accession_number, json, now],
            )?;
            Store::remember_order(&mut tx, clinic, &e.accession_number)?;
        }
        for a in removals {
            tx.execute(
                "DELETE FROM worklist WHERE clinic = ?1 AND accession = ?2",
                params![clinic, a],
            )?;
        }
        tx.commit()?;
        Ok(Stored::new(format!("worklist:{clinic}:{now}"), ()))
    }

    /// A clinic's worklist and its version (a hash of the entries, so any
    /// change, including a removal, gives a new one).
    pub fn worklist(
        &self,
        clinic: &str,
    ) -> Result<(String, Vec<yilian_protocol::messages::WorklistEntry>), StoreError> {
        use sha2::Digest;
        let rows: Vec<String> = self.db().query(
            "SELECT entry FROM worklist WHERE clinic = ?1 ORDER BY accession",
            params![clinic],
            |r| r.get(0),
        )?;
        let mut h = sha2::Sha256::new();
        for r in &rows {
            h.update(r.as_bytes());
            h.update(b"\n");
        }
        let version = hex::encode(&h.finalize()[..8]);
        let entries = rows
            .iter()
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect();
        Ok((version, entries))
    }
}
