//! A county hub's index moved from its SQLite file to PostgreSQL, so a
//! growing alliance can put several instances on it without losing what
//! one machine held.
//!
//! Every table is copied row by row with its own ids (the identity
//! counters moved past them), each row inserted only if absent: a run cut
//! short (a lost connection, Ctrl-C) is finished by running it again, and
//! a second run changes nothing. Then each table is verified: the same
//! number of rows and the same order-independent digest of their values
//! on both sides. Payloads stay in the data directory, or, with `[blobs]`
//! in a bucket, are copied there (each file re-hashed against its name
//! first, skipped when the bucket has it already); either way each item's
//! and report's payload is checked to be there with its size.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::blobs::{BlobBackend, Blobs};
use super::sql::{self, Db, Value};
use super::{SCHEMA, StoreError, reports};

/// What was moved and checked, per table.
#[derive(Debug, Clone, Default)]
pub struct Migrated {
    /// Rows in each table at the source, in the order copied.
    pub tables: Vec<(String, u64)>,
    /// Rows this run inserted (0 on a second run).
    pub inserted: u64,
    /// Blobs referenced and found with their size.
    pub blobs: u64,
    /// Blobs this run copied into the bucket.
    pub blobs_copied: u64,
}

/// The tables that hold the hub's state, in an order where nothing
/// refers to a row not yet copied. Leases are not state: a lease of the
/// old hub means nothing to the new index.
const TABLES: &[&str] = &[
    "gateways",
    "gateway_state",
    "tokens",
    "revocations",
    "retirements",
    "configs",
    "audit",
    "items",
    "outbox",
    "worklist",
    "order_clinics",
    "reports",
    "report_downlink",
    "report_receipts",
];

/// Tables whose `id` is an identity column at PostgreSQL.
const IDENTITIES: &[&str] = &["items", "outbox", "audit"];

const BATCH: i64 = 1000;

/// Copies the SQLite index in `data_dir` into `target` (schema made if
/// missing), then verifies both.
pub fn to_postgres(
    data_dir: &Path,
    target: &sql::PostgresSettings,
    blobs: &BlobBackend,
    mut progress: impl FnMut(&str, u64, u64),
) -> Result<Migrated, StoreError> {
    let path = data_dir.join("central.sqlite");
    if !path.exists() {
        return Err(StoreError::Io {
            context: "open the index to migrate",
            path,
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    // Read-only: the hub may still be serving while a first pass runs.
    let conn = rusqlite::Connection::open_with_flags(
        &path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql::DbError::from)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(sql::DbError::from)?;
    let mut from = Db::sqlite(conn);
    let mut to = Db::postgres(target, &format!("{SCHEMA}{}", reports::SCHEMA))?;
    let mut done = Migrated::default();
    for table in TABLES {
        let columns = columns(&mut from, table)?;
        let (rows, inserted) = copy(&mut from, &mut to, table, &columns, &mut progress)?;
        if IDENTITIES.contains(table) {
            // New rows at PostgreSQL must not take ids the hub used.
            to.batch(&format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
                 COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
            ))?;
        }
        verify(&mut from, &mut to, table, &columns)?;
        done.tables.push(((*table).to_owned(), rows));
        done.inserted += inserted;
    }
    let target_blobs = Blobs::open(data_dir, blobs)?;
    (done.blobs, done.blobs_copied) =
        check_blobs(&mut from, data_dir, &target_blobs, &mut progress)?;
    Ok(done)
}

fn columns(db: &mut Db, table: &str) -> Result<Vec<String>, StoreError> {
    let cols: Vec<String> = db.query(
        &format!("SELECT name FROM pragma_table_info('{table}') ORDER BY cid"),
        sql::params![],
        |r| r.get(0),
    )?;
    if cols.is_empty() {
        return Err(StoreError::Migration(format!(
            "the source has no table {table}: not a Yilian central index"
        )));
    }
    Ok(cols)
}

/// Copies one table in batches (by SQLite's rowid); the rows it had and
/// the rows this run inserted.
fn copy(
    from: &mut Db,
    to: &mut Db,
    table: &str,
    columns: &[String],
    progress: &mut impl FnMut(&str, u64, u64),
) -> Result<(u64, u64), StoreError> {
    let list = columns.join(", ");
    let total: i64 = from.query_one(
        &format!("SELECT COUNT(*) FROM {table}"),
        sql::params![],
        |r| r.get(0),
    )?;
    let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
    let insert = format!(
        "INSERT INTO {table}({list}) VALUES ({}) ON CONFLICT DO NOTHING",
        placeholders.join(", ")
    );
    let select =
        format!("SELECT rowid, {list} FROM {table} WHERE rowid > ?1 ORDER BY rowid LIMIT ?2");
    let (mut after, mut seen, mut inserted) = (i64::MIN, 0u64, 0u64);
    loop {
        let rows: Vec<(i64, Vec<Value>)> =
            from.query(&select, sql::params![after, BATCH], |r| {
                let mut values = Vec::with_capacity(columns.len());
                for i in 0..columns.len() {
                    values.push(r.value(i + 1));
                }
                Ok((r.get(0)?, values))
            })?;
        let Some(last) = rows.last().map(|(id, _)| *id) else {
            break;
        };
        let mut tx = to.transaction()?;
        for (_, values) in &rows {
            let params: Vec<&dyn sql::ToValue> =
                values.iter().map(|v| v as &dyn sql::ToValue).collect();
            inserted += tx.execute(&insert, &params)? as u64;
        }
        tx.commit()?;
        seen += rows.len() as u64;
        after = last;
        progress(table, seen, u64::try_from(total).unwrap_or(0));
    }
    Ok((seen, inserted))
}

/// The same rows on both sides: count, and a digest of every row's values
/// that does not depend on the order the engines return them in.
fn verify(from: &mut Db, to: &mut Db, table: &str, columns: &[String]) -> Result<(), StoreError> {
    let (a_rows, a_sum) = digest(from, table, columns)?;
    let (b_rows, b_sum) = digest(to, table, columns)?;
    if a_rows != b_rows {
        return Err(StoreError::Migration(format!(
            "{table}: {a_rows} rows in SQLite, {b_rows} at PostgreSQL (rows added at PostgreSQL since? migrate into an empty database)"
        )));
    }
    if a_sum != b_sum {
        return Err(StoreError::Migration(format!(
            "{table}: the rows' values differ between SQLite and PostgreSQL"
        )));
    }
    Ok(())
}

fn digest(db: &mut Db, table: &str, columns: &[String]) -> Result<(u64, u128), StoreError> {
    let mut rows = 0u64;
    let mut sum = 0u128;
    let list = columns.join(", ");
    for row in db.query(
        &format!("SELECT {list} FROM {table}"),
        sql::params![],
        |r| {
            let mut h = Sha256::new();
            for i in 0..columns.len() {
                match r.value(i) {
                    Value::Null => h.update([0]),
                    Value::Int(v) => {
                        h.update([1]);
                        h.update(v.to_be_bytes());
                    }
                    Value::Real(v) => {
                        h.update([2]);
                        h.update(v.to_be_bytes());
                    }
                    Value::Text(s) => {
                        h.update([3]);
                        h.update((s.len() as u64).to_be_bytes());
                        h.update(s.as_bytes());
                    }
                    Value::Blob(b) => {
                        h.update([4]);
                        h.update((b.len() as u64).to_be_bytes());
                        h.update(&b);
                    }
                }
            }
            let d = h.finalize();
            let mut first = [0u8; 16];
            first.copy_from_slice(&d[..16]);
            Ok(u128::from_be_bytes(first))
        },
    )? {
        rows += 1;
        sum = sum.wrapping_add(row);
    }
    Ok((rows, sum))
}

/// Every blob the index refers to is where `[blobs]` says with its size,
/// copied there from the data directory first when it is a bucket.
fn check_blobs(
    from: &mut Db,
    data_dir: &Path,
    target: &Blobs,
    progress: &mut impl FnMut(&str, u64, u64),
) -> Result<(u64, u64), StoreError> {
    let mut wanted: BTreeMap<String, i64> = BTreeMap::new();
    for table in ["items", "reports"] {
        for (sha, size) in from.query(
            &format!("SELECT sha256, size FROM {table}"),
            sql::params![],
            |r| Ok((r.get::<String>(0)?, r.get::<i64>(1)?)),
        )? {
            wanted.insert(sha, size);
        }
    }
    let source = data_dir.join("blobs");
    let mut missing = Vec::new();
    let mut copied = 0u64;
    let total = wanted.len() as u64;
    for (n, (sha, size)) in wanted.iter().enumerate() {
        let size = u64::try_from(*size).unwrap_or(u64::MAX);
        if target.size(sha)? == Some(size) {
            continue;
        }
        let file = Blobs::dir_path(&source, sha);
        let here = std::fs::metadata(&file).map(|m| m.len()).ok();
        if target.is_dir() || here != Some(size) {
            missing.push(sha.clone());
            continue;
        }
        // The bucket keeps what it is given: a file damaged on this disk
        // must not become the hub's only copy under a hash it does not have.
        let got = hash_file(&file)?;
        if got != *sha {
            return Err(StoreError::Migration(format!(
                "{} hashes to {got}, not to its name: the payload is damaged on this disk",
                file.display()
            )));
        }
        target.copy_file(sha, &file)?;
        if target.size(sha)? != Some(size) {
            missing.push(sha.clone());
            continue;
        }
        copied += 1;
        progress("payloads", n as u64 + 1, total);
    }
    if !missing.is_empty() {
        return Err(StoreError::Migration(format!(
            "{} of {} payloads are missing or the wrong size under {} (first: {})",
            missing.len(),
            wanted.len(),
            source.display(),
            missing[0]
        )));
    }
    Ok((total, copied))
}

fn hash_file(path: &Path) -> Result<String, StoreError> {
    use std::io::Read;
    let io = |e| StoreError::Io {
        context: "read",
        path: path.to_owned(),
        source: e,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
