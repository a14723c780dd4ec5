//! Reports from the hospital on their way down to the clinics: each one
//! kept as received (its message a content-addressed blob), correlated
//! with the clinic and the item it reports on, and queued for that
//! clinic's box until the box says it holds it; then the receipts of its
//! delivery at the clinic.
//!
//! A report is never guessed into a clinic. The keys are tried in order
//! of how surely they name one item: accession number (of an item central
//! received, or of an order central pushed down), Study Instance UID,
//! placer order number, the upload id in the ECG import file's name, the
//! receiving facility when it names a known clinic, and last the patient
//! ID when exactly one clinic has sent that patient's data. A report that
//! matches nothing, or a patient seen at several clinics, is parked
//! (`yilian-central reports --unmatched`) until someone assigns it.

use std::collections::BTreeMap;

use crate::store::sql::{self, params};
use serde::Serialize;
use sha2::{Digest, Sha256};
use yilian_codecs::hl7::report::{Report, ReportKeys};

use super::{Store, StoreError, Stored, now_ms, rfc3339};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS reports(
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    control_id TEXT NOT NULL,
    message_type TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    urgent INTEGER NOT NULL,
    accession TEXT NOT NULL,
    placer TEXT NOT NULL,
    filler TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    title TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    acquired_ms INTEGER,
    gateway TEXT,
    matched_by TEXT,
    unmatched_reason TEXT,
    replaces TEXT,
    -- What the box needs besides the message (an application ACK's
    -- sender), as JSON.
    extra TEXT NOT NULL DEFAULT '{}',
    UNIQUE(source, control_id)
);
CREATE INDEX IF NOT EXISTS reports_unmatched ON reports(gateway) WHERE gateway IS NULL;
CREATE TABLE IF NOT EXISTS report_downlink(
    report_id TEXT NOT NULL,
    gateway TEXT NOT NULL,
    urgent INTEGER NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_ms INTEGER NOT NULL,
    at_box_ms INTEGER,
    PRIMARY KEY(report_id, gateway)
);
CREATE INDEX IF NOT EXISTS report_downlink_ready ON report_downlink(gateway, state, urgent DESC, created_ms);
CREATE TABLE IF NOT EXISTS report_receipts(
    report_id TEXT NOT NULL,
    gateway TEXT NOT NULL,
    sink TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    recorded_ms INTEGER NOT NULL,
    PRIMARY KEY(report_id, sink)
);
CREATE TABLE IF NOT EXISTS order_clinics(
    accession TEXT PRIMARY KEY,
    clinic TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS items_by_accession ON items(json_extract(metadata, '$.accession'));
CREATE INDEX IF NOT EXISTS items_by_study ON items(json_extract(metadata, '$.study_uid'));
CREATE INDEX IF NOT EXISTS items_by_placer ON items(json_extract(metadata, '$.placer_order'));
CREATE INDEX IF NOT EXISTS items_by_patient ON items(json_extract(metadata, '$.patient_id'));
";

/// Downlink states.
const WAITING: i64 = 0;
const AT_BOX: i64 = 1;

/// A report as central holds it.
#[derive(Debug, Clone, Serialize)]
pub struct ReportRow {
    pub id: String,
    pub source: String,
    pub control_id: String,
    pub message_type: String,
    pub kind: String,
    pub status: String,
    pub urgent: bool,
    pub accession: String,
    pub placer: String,
    pub patient_id: String,
    pub title: String,
    pub sha256: String,
    pub size: u64,
    pub received_ms: i64,
    pub received_at: String,
    /// When the device acquired the item the report answers (or, when its
    /// clock cannot be believed, when the item reached central).
    pub acquired_ms: Option<i64>,
    /// The box it goes to; none while it is parked.
    pub gateway: Option<String>,
    pub matched_by: Option<String>,
    pub unmatched_reason: Option<String>,
    /// The earlier version of the same report this one replaces.
    pub replaces: Option<String>,
    /// When the box said it holds it.
    pub at_box_ms: Option<i64>,
    /// `sink: outcome` for each receipt from the clinic.
    pub receipts: Vec<String>,
    /// Sent to the box with the report (an application ACK's sender).
    pub extra: BTreeMap<String, String>,
    pub study_uid: String,
}

/// One report waiting for its box.
#[derive(Debug, Clone)]
pub struct DownlinkRow {
    pub report: ReportRow,
    pub attempts: u32,
}

/// Where a report goes and why.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Correlation {
    gateway: String,
    matched_by: &'static str,
    acquired_ms: Option<i64>,
    item_kind: Option<String>,
}

/// What a first delivery at the clinic tells the turnaround histograms.
#[derive(Debug, Clone)]
pub struct Turnaround {
    pub kind: String,
    pub urgent: bool,
    /// From the item's acquisition by the device (else its arrival) to
    /// the report delivered at the clinic (two machines' clocks).
    pub total_ms: Option<i64>,
    /// From the item's acquisition (else its arrival) to the report at
    /// central: the reading time at the hospital, plus the way up.
    pub reading_ms: Option<i64>,
    /// From the report at central to its delivery at the clinic.
    pub down_ms: i64,
}

/// Statistics for the metrics.
#[derive(Debug, Clone, Default)]
pub struct DownlinkStats {
    pub waiting: u64,
    pub unmatched: u64,
    pub oldest_waiting_ms: Option<i64>,
}

fn report_id(source: &str, control_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(source.as_bytes());
    h.update(b"\n");
    h.update(control_id.as_bytes());
    format!("R{}", &hex::encode(h.finalize())[..24])
}

const ROW_COLUMNS: &str = "r.id, r.source, r.control_id, r.message_type, r.kind, r.status, r.urgent, r.accession, r.placer, \
     r.patient_id, r.title, r.sha256, r.size, r.received_ms, r.acquired_ms, r.gateway, r.matched_by, \
     r.unmatched_reason, r.replaces, \
     (SELECT MAX(d.at_box_ms) FROM report_downlink d WHERE d.report_id = r.id), \
     (SELECT group_concat(t.sink || ': ' || t.outcome, ', ') FROM report_receipts t WHERE t.report_id = r.id), \
     r.extra, r.study_uid";

fn row(r: &sql::Row) -> Result<ReportRow, sql::DbError> {
    let received_ms: i64 = r.get(13)?;
    let receipts: Option<String> = r.get(20)?;
    Ok(ReportRow {
        id: r.get(0)?,
        source: r.get(1)?,
        control_id: r.get(2)?,
        message_type: r.get(3)?,
        kind: r.get(4)?,
        status: r.get(5)?,
        urgent: r.get::<i64>(6)? != 0,
        accession: r.get(7)?,
        placer: r.get(8)?,
        patient_id: r.get(9)?,
        title: r.get(10)?,
        sha256: r.get(11)?,
        size: r.get::<i64>(12)? as u64,
        received_ms,
        received_at: rfc3339(received_ms),
        acquired_ms: r.get(14)?,
        gateway: r.get(15)?,
        matched_by: r.get(16)?,
        unmatched_reason: r.get(17)?,
        replaces: r.get(18)?,
        at_box_ms: r.get(19)?,
        receipts: receipts
            .map(|s| s.split(", ").map(str::to_owned).collect())
            .unwrap_or_default(),
        extra: serde_json::from_str(&r.get::<String>(21)?).unwrap_or_default(),
        study_uid: r.get(22)?,
    })
}

/// An item a report answers: its box, when central received it, its kind
/// and the device's acquisition time as the box described it.
type ItemHit = (String, i64, String, Option<String>);

/// The columns of an [`ItemHit`].
const HIT: &str = "gateway, received_ms, kind, json_extract(metadata, '$.acquired')";

fn hit(r: &sql::Row) -> Result<ItemHit, sql::DbError> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

/// When the device acquired the item, from the `acquired` the box wrote
/// (`YYYY-MM-DDTHH:MM[:SS][±HH:MM]`, the device's own offset when it gave
/// one, else the clinic's). A device clock that puts it after the item
/// reached central, or more than 30 days before, is not believed.
pub fn acquisition_ms(acquired: &str, received_ms: i64, clinic: time::UtcOffset) -> Option<i64> {
    let s = acquired.trim();
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u16>().ok();
    if s.get(4..5)? != "-" || s.get(7..8)? != "-" || s.get(10..11)? != "T" || s.get(13..14)? != ":"
    {
        return None;
    }
    let month = time::Month::try_from(u8::try_from(num(5..7)?).ok()?).ok()?;
    let date =
        time::Date::from_calendar_date(i32::from(num(0..4)?), month, num(8..10)? as u8).ok()?;
    let (second, zone) = match s.get(16..17) {
        Some(":") => (num(17..19)? as u8, s.get(19..)?),
        _ => (0, s.get(16..)?),
    };
    let clock = time::Time::from_hms(num(11..13)? as u8, num(14..16)? as u8, second).ok()?;
    let offset = match zone {
        "" => clinic,
        "Z" => time::UtcOffset::UTC,
        z => {
            let sign: i8 = match z.get(..1)? {
                "+" => 1,
                "-" => -1,
                _ => return None,
            };
            let h: i8 = z.get(1..3)?.parse().ok()?;
            let m: i8 = z.get(4..6)?.parse().ok()?;
            time::UtcOffset::from_hms(sign * h, sign * m, 0).ok()?
        }
    };
    let at = time::PrimitiveDateTime::new(date, clock).assume_offset(offset);
    let ms = (at.unix_timestamp_nanos() / 1_000_000) as i64;
    let month_ms = 30 * 24 * 3_600_000;
    (ms <= received_ms && received_ms - ms <= month_ms).then_some(ms)
}

#[cfg(test)]
mod acquisition_tests {
    use super::acquisition_ms;

    #[test]
    fn a_device_time_is_read_in_its_own_offset_or_the_clinics() {
        let cst = time::UtcOffset::from_hms(8, 0, 0).expect("offset");
        // 2026-12-03T10:00:00+08:00 is 02:00 UTC.
        let utc_2am = 1_796_263_200_000i64;
        let received = utc_2am + 600_000;
        assert_eq!(
            acquisition_ms("2026-12-03T10:00:00", received, cst),
            Some(utc_2am)
        );
        assert_eq!(
            acquisition_ms("2026-12-03T10:00", received, cst),
            Some(utc_2am)
        );
        assert_eq!(
            acquisition_ms("2026-12-03T02:00:00Z", received, cst),
            Some(utc_2am)
        );
        assert_eq!(
            acquisition_ms("2026-12-03T03:00:00+01:00", received, cst),
            Some(utc_2am)
        );
        // A cart whose clock runs ahead, or was never set, is not believed.
        assert_eq!(acquisition_ms("2026-12-03T10:30:00", received, cst), None);
        assert_eq!(acquisition_ms("2000-01-01T00:00:00", received, cst), None);
        // A date alone says too little; garbage says nothing.
        assert_eq!(acquisition_ms("2026-12-03", received, cst), None);
        assert_eq!(acquisition_ms("2026-13-03T10:00:00", received, cst), None);
        assert_eq!(acquisition_ms("今天上午", received, cst), None);
    }
}

fn one_item(tx: &mut sql::Db, key: &str, value: &str) -> Result<Option<ItemHit>, sql::DbError> {
    if value.is_empty() {
        return Ok(None);
    }
    tx.query_row(
        &format!(
            "SELECT {HIT} FROM items WHERE json_extract(metadata, '$.{key}') = ?1 \
             ORDER BY id DESC LIMIT 1"
        ),
        params![value],
        hit,
    )
}

/// The box most recently seen in a clinic (`COUNTY/CLINIC`).
fn clinic_gateway(tx: &mut sql::Db, clinic: &str) -> Result<Option<String>, sql::DbError> {
    let Some((county, name)) = clinic.split_once('/') else {
        return Ok(None);
    };
    tx.query_row(
        "SELECT identity FROM gateways WHERE county = ?1 AND clinic = ?2 \
         AND identity NOT IN (SELECT identity FROM revocations) ORDER BY last_seen_ms DESC LIMIT 1",
        params![county, name],
        |r| r.get(0),
    )
}

fn clinic_of(gateway: &str) -> &str {
    gateway.rsplit_once('/').map_or(gateway, |(c, _)| c)
}

/// The ECG import file's name ends with the first 12 characters of the
/// upload id (see `crate::ecg::file_stem`); a reading system that keeps
/// the name sends it back as the filler order number.
fn upload_prefix(value: &str) -> Option<&str> {
    let stem = value.rsplit('/').next().unwrap_or(value);
    let stem = stem.split('.').next().unwrap_or(stem);
    let tail = stem.rsplit('_').next().unwrap_or(stem);
    (tail.len() == 12 && tail.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .then_some(tail)
}

fn correlate(
    tx: &mut sql::Db,
    keys: &ReportKeys,
    facilities: &BTreeMap<String, String>,
    clinic_offset: time::UtcOffset,
) -> Result<Result<Correlation, String>, StoreError> {
    // The turnaround runs from the device's acquisition when its clock
    // can be believed, else from the item's arrival.
    let item = |(gateway, received, kind, acquired): ItemHit, by| Correlation {
        gateway,
        matched_by: by,
        acquired_ms: Some(
            acquired
                .and_then(|a| acquisition_ms(&a, received, clinic_offset))
                .unwrap_or(received),
        ),
        item_kind: Some(kind),
    };
    if let Some(i) = one_item(tx, "accession", &keys.accession)? {
        return Ok(Ok(item(i, "accession")));
    }
    if !keys.accession.is_empty() {
        let clinic: Option<String> = tx.query_row(
            "SELECT clinic FROM order_clinics WHERE accession = ?1",
            params![keys.accession],
            |r| r.get(0),
        )?;
        if let Some(gateway) = clinic.and_then(|c| clinic_gateway(tx, &c).transpose()) {
            return Ok(Ok(Correlation {
                gateway: gateway?,
                matched_by: "order",
                acquired_ms: None,
                item_kind: None,
            }));
        }
    }
    if let Some(i) = one_item(tx, "study_uid", &keys.study_uid)? {
        return Ok(Ok(item(i, "study_uid")));
    }
    if let Some(i) = one_item(tx, "placer_order", &keys.placer)? {
        return Ok(Ok(item(i, "placer_order")));
    }
    for candidate in [&keys.filler, &keys.accession] {
        if let Some(prefix) = upload_prefix(candidate) {
            let found = tx.query_row(
                &format!(
                    "SELECT {HIT} FROM items WHERE substr(upload_id, 1, 12) = ?1 \
                         ORDER BY id DESC LIMIT 1"
                ),
                params![prefix],
                hit,
            )?;
            if let Some(i) = found {
                return Ok(Ok(item(i, "upload_id")));
            }
        }
    }
    let facility = facilities
        .get(&keys.facility)
        .map_or(keys.facility.as_str(), String::as_str);
    if facility.contains('/')
        && let Some(gateway) = clinic_gateway(tx, facility)?
    {
        return Ok(Ok(Correlation {
            gateway,
            matched_by: "facility",
            acquired_ms: None,
            item_kind: None,
        }));
    }
    if keys.patient_id.is_empty() {
        return Ok(Err("no key to correlate on".into()));
    }
    let seen: Vec<ItemHit> = tx.query(
        &format!(
            "SELECT {HIT} FROM items WHERE json_extract(metadata, '$.patient_id') = ?1 \
             ORDER BY id DESC"
        ),
        params![keys.patient_id],
        hit,
    )?;
    let mut clinics: Vec<String> = seen.iter().map(|s| clinic_of(&s.0).to_owned()).collect();
    clinics.sort_unstable();
    clinics.dedup();
    match (clinics.len(), seen.into_iter().next()) {
        (1, Some(newest)) => Ok(Ok(item(newest, "patient_id"))),
        (0, _) | (_, None) => Ok(Err(format!(
            "nothing from any clinic matches accession {:?}, study {:?}, placer order {:?} or patient {:?}",
            keys.accession, keys.study_uid, keys.placer, keys.patient_id
        ))),
        (n, _) => Ok(Err(format!(
            "patient {:?} has data from {n} clinics ({}); assign it by hand",
            keys.patient_id,
            clinics.join(", ")
        ))),
    }
}

/// A report's kind for the histograms: what the item it reports on was,
/// when it matched one; else what the message says.
fn kind_of(report: &Report, item_kind: Option<&str>) -> String {
    use yilian_protocol::ItemKind;
    match item_kind.and_then(ItemKind::parse) {
        Some(ItemKind::Dicom) => "imaging".into(),
        Some(ItemKind::Hl7 | ItemKind::Astm) => "lab".into(),
        Some(ItemKind::ScpEcg | ItemKind::Aecg | ItemKind::Pdf) => "ecg".into(),
        Some(ItemKind::File) | None => report.kind.to_owned(),
    }
}

impl Store {
    /// Keeps a report durably (its message as a blob, its row, and its
    /// place in the box's downlink, in one transaction) and returns the
    /// proof the hospital's AA is built from. The same message again
    /// (same sender and MSH-10) is answered from what is held.
    pub fn report_commit(
        &self,
        report: &Report,
        source: &str,
        message: &[u8],
        facilities: &BTreeMap<String, String>,
        clinic_offset: time::UtcOffset,
    ) -> Result<Stored<ReportRow>, StoreError> {
        let id = report_id(source, &report.control_id);
        let sha = hex::encode(Sha256::digest(message));
        self.put_blob(&sha, message)?;
        let now = now_ms();
        {
            let mut db = self.db();
            let mut tx = db.transaction()?;
            let held: bool = tx
                .query_row("SELECT 1 FROM reports WHERE id = ?1", params![id], |_| {
                    Ok(())
                })?
                .is_some();
            if !held {
                let found = correlate(&mut tx, &report.keys, facilities, clinic_offset)?;
                let (gateway, by, reason, acquired, kind) = match &found {
                    Ok(c) => (
                        Some(c.gateway.as_str()),
                        Some(c.matched_by),
                        None,
                        c.acquired_ms,
                        kind_of(report, c.item_kind.as_deref()),
                    ),
                    Err(why) => (None, None, Some(why.as_str()), None, report.kind.to_owned()),
                };
                let replaces: Option<String> = match gateway {
                    Some(g) => tx
                        .query_row(
                            "SELECT id FROM reports WHERE gateway = ?1 AND ( \
                               (accession <> '' AND accession = ?2) OR (filler <> '' AND filler = ?3) \
                               OR (placer <> '' AND placer = ?4)) \
                             ORDER BY received_ms DESC LIMIT 1",
                            params![g, report.keys.accession, report.keys.filler, report.keys.placer],
                            |r| r.get(0),
                        )?,
                    None => None,
                };
                // Another central instance may have kept the same message a
                // moment ago (the sender retried on it): one row either way.
                let inserted = tx.execute(
                    "INSERT INTO reports(id, source, control_id, message_type, kind, status, urgent, accession, placer, filler, \
                       study_uid, patient_id, title, sha256, size, received_ms, acquired_ms, gateway, matched_by, unmatched_reason, replaces) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21) \
                     ON CONFLICT DO NOTHING",
                    params![
                        id, source, report.control_id, report.message_type, kind, report.status.code(),
                        report.urgent as i64, report.keys.accession, report.keys.placer, report.keys.filler,
                        report.keys.study_uid, report.keys.patient_id, report.title, sha, message.len() as i64,
                        now, acquired, gateway, by, reason, replaces
                    ],
                )? == 1;
                if let Some(g) = gateway.filter(|_| inserted) {
                    tx.execute(
                        "INSERT INTO report_downlink(report_id, gateway, urgent, created_ms) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                        params![id, g, report.urgent as i64, now],
                    )?;
                }
            }
            tx.commit()?;
        }
        let row = self
            .report(&id)?
            .ok_or_else(|| StoreError::Db(sql::DbError::NoRow))?;
        Ok(Stored::new(format!("report:{id}"), row))
    }

    /// Queues an application ACK for the clinic's sender of an item (the
    /// LIS's answer to a result the sender asked to hear about, MSH-16),
    /// as a downlink entry to the item's box; the same item's answer is
    /// queued once.
    pub fn ack_event_commit(
        &self,
        gateway: &str,
        upload_id: &str,
        message: &[u8],
        extra: &BTreeMap<String, String>,
    ) -> Result<Stored<()>, StoreError> {
        let source = "ACK^CENTRAL";
        let control = format!("A{upload_id}");
        let id = report_id(source, &control);
        let sha = hex::encode(Sha256::digest(message));
        self.put_blob(&sha, message)?;
        let now = now_ms();
        let extra = serde_json::to_string(extra).unwrap_or_else(|_| "{}".into());
        let mut db = self.db();
        let mut tx = db.transaction()?;
        let inserted = tx.execute(
            "INSERT INTO reports(id, source, control_id, message_type, kind, status, urgent, accession, placer, filler, \
               study_uid, patient_id, title, sha256, size, received_ms, gateway, matched_by, extra) \
             VALUES (?1, ?2, ?3, 'ACK', 'ack', 'F', 0, '', '', '', '', '', 'application ACK', ?4, ?5, ?6, ?7, 'item', ?8) ON CONFLICT DO NOTHING",
            params![id, source, control, sha, message.len() as i64, now, gateway, extra],
        )?;
        if inserted > 0 {
            tx.execute(
                "INSERT INTO report_downlink(report_id, gateway, urgent, created_ms) VALUES (?1, ?2, 0, ?3) ON CONFLICT DO NOTHING",
                params![id, gateway, now],
            )?;
        }
        tx.commit()?;
        Ok(Stored::new(format!("ack:{id}"), ()))
    }

    /// Writes a blob by its hash, durably, unless it is there already.
    fn put_blob(&self, sha: &str, bytes: &[u8]) -> Result<(), StoreError> {
        Ok(self.inner.blobs.put(sha, bytes)?)
    }

    pub fn report(&self, id: &str) -> Result<Option<ReportRow>, StoreError> {
        let mut db = self.db();
        Ok(db.query_row(
            &format!("SELECT {ROW_COLUMNS} FROM reports r WHERE r.id = ?1"),
            params![id],
            row,
        )?)
    }

    /// Reports, newest first: all, or only those parked unmatched.
    pub fn reports(&self, unmatched: bool, limit: u64) -> Result<Vec<ReportRow>, StoreError> {
        let filter = if unmatched {
            "WHERE r.gateway IS NULL"
        } else {
            ""
        };
        Ok(self.db().query(
            &format!(
                "SELECT {ROW_COLUMNS} FROM reports r {filter} ORDER BY r.received_ms DESC, r.id LIMIT ?1"
            ),
            params![limit as i64],
            row,
        )?)
    }

    /// Assigns a parked report (or sends one again) to a box by hand.
    pub fn report_assign(&self, id: &str, gateway: &str, actor: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut db = self.db();
        let mut tx = db.transaction()?;
        let urgent: Option<i64> = tx.query_row(
            "SELECT urgent FROM reports WHERE id = ?1",
            params![id],
            |r| r.get(0),
        )?;
        let Some(urgent) = urgent else {
            return Ok(false);
        };
        tx.execute(
            "UPDATE reports SET gateway = ?2, matched_by = 'hand', unmatched_reason = NULL WHERE id = ?1",
            params![id, gateway],
        )?;
        tx.execute(
            "INSERT INTO report_downlink(report_id, gateway, urgent, created_ms) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT(report_id, gateway) DO UPDATE SET state = 0, next_attempt_ms = 0",
            params![id, gateway, urgent, now],
        )?;
        tx.execute(
            "INSERT INTO audit(at_ms, actor, action, target, detail) VALUES (?1, ?2, 'report.assign', ?3, ?4)",
            params![now, actor, id, gateway],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Reports waiting for `gateway`, urgent first, then oldest.
    pub fn report_downlink_next(
        &self,
        gateway: &str,
        limit: usize,
    ) -> Result<Vec<DownlinkRow>, StoreError> {
        let rows = self.db().query(
            &format!(
            "SELECT {ROW_COLUMNS}, d.attempts FROM report_downlink d JOIN reports r ON r.id = d.report_id \
             WHERE d.gateway = ?1 AND d.state = {WAITING} AND d.next_attempt_ms <= ?2 \
             ORDER BY d.urgent DESC, d.created_ms, d.report_id LIMIT ?3"
        ),
            params![gateway, now_ms(), limit as i64],
            |r| {
            Ok(DownlinkRow {
                report: row(r)?,
                attempts: r.get::<i64>(23)? as u32,
            })
        })?;
        Ok(rows)
    }

    /// The box holds the report durably: central's part is done.
    pub fn report_at_box(&self, id: &str, gateway: &str) -> Result<(), StoreError> {
        self.db().execute(
            &format!(
                "UPDATE report_downlink SET state = {AT_BOX}, at_box_ms = ?3, last_error = NULL \
                 WHERE report_id = ?1 AND gateway = ?2"
            ),
            params![id, gateway, now_ms()],
        )?;
        Ok(())
    }

    pub fn report_downlink_retry(
        &self,
        id: &str,
        gateway: &str,
        delay_ms: i64,
        why: &str,
    ) -> Result<(), StoreError> {
        self.db().execute(
            "UPDATE report_downlink SET attempts = attempts + 1, next_attempt_ms = ?3, last_error = ?4 \
             WHERE report_id = ?1 AND gateway = ?2",
            params![id, gateway, now_ms() + delay_ms, why],
        )?;
        Ok(())
    }

    /// Records a receipt from the clinic (once; a repeat changes nothing).
    /// Returns the turnaround when this is the report's first delivery.
    pub fn report_receipt(
        &self,
        gateway: &str,
        receipt: &yilian_protocol::messages::ReportReceipt,
    ) -> Result<Option<Turnaround>, StoreError> {
        let mut db = self.db();
        let mut tx = db.transaction()?;
        let known: Option<(String, i64, i64, Option<i64>)> = tx.query_row(
            "SELECT kind, urgent, received_ms, acquired_ms FROM reports WHERE id = ?1",
            params![receipt.report_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
        let Some((kind, urgent, received_ms, acquired_ms)) = known else {
            // Not ours (a box restored from another hub's backup): recorded
            // as done so the box stops sending it.
            return Ok(None);
        };
        let delivered_before: bool = tx
            .query_row(
                "SELECT 1 FROM report_receipts WHERE report_id = ?1 AND outcome = 'delivered' LIMIT 1",
                params![receipt.report_id],
                |_| Ok(()),
            )?
            .is_some();
        let inserted = tx.execute(
            "INSERT INTO report_receipts(report_id, gateway, sink, outcome, detail, at_ms, recorded_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
            params![
                receipt.report_id, gateway, receipt.sink, receipt.outcome, receipt.detail,
                receipt.at_unix_ms, now_ms()
            ],
        )?;
        tx.commit()?;
        // An application ACK is not a report: no turnaround.
        if inserted == 0 || delivered_before || receipt.outcome != "delivered" || kind == "ack" {
            return Ok(None);
        }
        Ok(Some(Turnaround {
            kind,
            urgent: urgent != 0,
            total_ms: acquired_ms.map(|a| receipt.at_unix_ms - a),
            reading_ms: acquired_ms.map(|a| received_ms - a),
            down_ms: receipt.at_unix_ms - received_ms,
        }))
    }

    /// Reports not yet at their box, and parked ones.
    pub fn report_stats(&self) -> Result<DownlinkStats, StoreError> {
        let mut db = self.db();
        let (waiting, oldest): (i64, Option<i64>) = db.query_one(
            &format!(
                "SELECT COUNT(*), MIN(created_ms) FROM report_downlink WHERE state = {WAITING}"
            ),
            params![],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let unmatched: i64 = db.query_one(
            "SELECT COUNT(*) FROM reports WHERE gateway IS NULL",
            params![],
            |r| r.get(0),
        )?;
        Ok(DownlinkStats {
            waiting: waiting as u64,
            unmatched: unmatched as u64,
            oldest_waiting_ms: oldest,
        })
    }

    /// Remembers which clinic an accession number was ordered for, so a
    /// report finds its clinic after the order left the worklist.
    pub(super) fn remember_order(
        tx: &mut sql::Db,
        clinic: &str,
        accession: &str,
    ) -> Result<(), StoreError> {
        tx.execute(
            "INSERT INTO order_clinics(accession, clinic, updated_ms) VALUES (?1, ?2, ?3) \
             ON CONFLICT(accession) DO UPDATE SET clinic = ?2, updated_ms = ?3",
            params![accession, clinic, now_ms()],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_prefix_from_an_ecg_file_name() {
        assert_eq!(
            upload_prefix("20261203101500_P1_lingshan-xiacun_0193a1b2c3d4.xml"),
            Some("0193a1b2c3d4")
        );
        assert_eq!(upload_prefix("ACC2001"), None);
    }
}
