//! The gateway registry, and what the CLI and the admin API list: items,
//! studies, gateways.

use crate::store::sql::params;
use yilian_protocol::BoxIdentity;

use super::{Store, StoreError, now_ms, rfc3339};

#[derive(Debug, Clone, serde::Serialize)]
pub struct ItemRow {
    pub gateway: String,
    pub upload_id: String,
    pub kind: String,
    pub lane: String,
    pub source: String,
    pub metadata: serde_json::Value,
    pub size: u64,
    pub sha256: String,
    /// When the gateway received the item from the device (RFC 3339).
    pub received_at: String,
    /// When central committed it (RFC 3339).
    pub committed_at: String,
    /// From the gateway's receipt to central's commit, in milliseconds
    /// (two machines' clocks).
    pub end_to_end_ms: i64,
    pub path: String,
}

/// A DICOM study as central holds it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StudyRow {
    pub gateway: String,
    pub study_uid: String,
    pub accession: String,
    pub patient_id: String,
    pub patient_name: String,
    pub modalities: String,
    pub series: u64,
    pub instances: u64,
    pub bytes: u64,
    pub first_at: String,
    pub last_at: String,
    /// Instances the PACS has taken.
    pub forwarded: u64,
    /// Instances the PACS refused (parked in the outbox).
    pub refused_by_pacs: u64,
    /// Nothing new for the quiet period.
    pub complete: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct GatewayRow {
    pub identity: String,
    pub county: String,
    pub clinic: String,
    #[serde(rename = "box")]
    pub box_name: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub software_version: String,
}

impl Store {
    /// DICOM studies received, newest first: instances and series counted,
    /// forwarded to the PACS or not, and complete once nothing has arrived
    /// for `quiet_ms`.
    pub fn studies(
        &self,
        gateway: Option<&str>,
        quiet_ms: i64,
    ) -> Result<Vec<StudyRow>, StoreError> {
        let now = now_ms();
        let rows = self.db().query(
            "SELECT i.gateway,
                    json_extract(i.metadata, '$.study_uid') AS study,
                    MAX(json_extract(i.metadata, '$.patient_id')),
                    MAX(json_extract(i.metadata, '$.patient_name')),
                    GROUP_CONCAT(DISTINCT json_extract(i.metadata, '$.modality')),
                    COUNT(DISTINCT json_extract(i.metadata, '$.series_uid')),
                    COUNT(*), CAST(SUM(i.size) AS BIGINT), MIN(i.committed_ms), MAX(i.committed_ms),
                    CAST(SUM(CASE WHEN o.state = 1 THEN 1 ELSE 0 END) AS BIGINT),
                    CAST(SUM(CASE WHEN o.state = 2 THEN 1 ELSE 0 END) AS BIGINT),
                    MAX(json_extract(i.metadata, '$.accession'))
             FROM items i
             LEFT JOIN outbox o ON o.gateway = i.gateway AND o.upload_id = i.upload_id AND o.destination = 'pacs'
             WHERE i.kind = 'dicom' AND json_extract(i.metadata, '$.study_uid') IS NOT NULL AND (CAST(?1 AS TEXT) IS NULL OR i.gateway = ?1)
             GROUP BY i.gateway, study
             ORDER BY MAX(i.committed_ms) DESC",
            params![gateway],
            |r| {
            let last: i64 = r.get(9)?;
            Ok(StudyRow {
                gateway: r.get(0)?,
                study_uid: r.get(1)?,
                patient_id: r.get::<Option<String>>(2)?.unwrap_or_default(),
                patient_name: r.get::<Option<String>>(3)?.unwrap_or_default(),
                modalities: r.get::<Option<String>>(4)?.unwrap_or_default(),
                series: r.get::<i64>(5)? as u64,
                instances: r.get::<i64>(6)? as u64,
                bytes: r.get::<i64>(7)? as u64,
                first_at: rfc3339(r.get(8)?),
                last_at: rfc3339(last),
                forwarded: r.get::<i64>(10)? as u64,
                refused_by_pacs: r.get::<i64>(11)? as u64,
                accession: r.get::<Option<String>>(12)?.unwrap_or_default(),
                complete: now - last >= quiet_ms,
            })
        })?;
        Ok(rows)
    }

    /// Whether the index takes a write transaction (the watchdog's check).
    pub fn health(&self) -> Result<(), StoreError> {
        self.db().health()?;
        Ok(())
    }

    /// Records that a gateway said hello or sent a heartbeat.
    pub fn touch_gateway(
        &self,
        gateway: &BoxIdentity,
        software_version: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        self.db().execute(
            "INSERT INTO gateways(identity, county, clinic, box, first_seen_ms, last_seen_ms, software_version)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, COALESCE(?6, ''))
             ON CONFLICT(identity) DO UPDATE SET last_seen_ms = ?5,
                software_version = COALESCE(?6, gateways.software_version)",
            params![
                gateway.to_string(),
                gateway.county(),
                gateway.clinic(),
                gateway.box_name(),
                now,
                software_version
            ],
        )?;
        Ok(())
    }

    pub fn gateways(&self) -> Result<Vec<GatewayRow>, StoreError> {
        let rows = self.db().query(
            "SELECT identity, county, clinic, box, first_seen_ms, last_seen_ms, software_version FROM gateways ORDER BY identity",
            params![],
            |r| {
            Ok(GatewayRow {
                identity: r.get(0)?,
                county: r.get(1)?,
                clinic: r.get(2)?,
                box_name: r.get(3)?,
                first_seen_ms: r.get(4)?,
                last_seen_ms: r.get(5)?,
                software_version: r.get(6)?,
            })
        })?;
        Ok(rows)
    }

    /// Committed items, oldest first, optionally of one gateway.
    pub fn items(
        &self,
        gateway: Option<&str>,
        limit: Option<u64>,
    ) -> Result<Vec<ItemRow>, StoreError> {
        // No limit is the largest one: PostgreSQL refuses SQLite's -1.
        let limit = limit.map_or(i64::MAX, |l| i64::try_from(l).unwrap_or(i64::MAX));
        let rows = self.db().query(
            "SELECT gateway, upload_id, kind, lane, source, metadata, size, sha256, received_ms, committed_ms
             FROM items WHERE (CAST(?1 AS TEXT) IS NULL OR gateway = ?1) ORDER BY id LIMIT ?2",
            params![gateway, limit],
            |r| {
            let sha: String = r.get(7)?;
            Ok(ItemRow {
                gateway: r.get(0)?,
                upload_id: r.get(1)?,
                kind: r.get(2)?,
                lane: r.get(3)?,
                source: r.get(4)?,
                metadata: serde_json::from_str(&r.get::<String>(5)?).unwrap_or_default(),
                size: r.get::<i64>(6)? as u64,
                path: self.blob_location(&sha),
                sha256: sha,
                received_at: rfc3339(r.get(8)?),
                committed_at: rfc3339(r.get(9)?),
                end_to_end_ms: r.get::<i64>(9)? - r.get::<i64>(8)?,
            })
        })?;
        Ok(rows)
    }
}
