//! Read queries shared by the writer thread and read-only inspection.

use rusqlite::{Connection, OptionalExtension, params};
use std::collections::BTreeMap;

use crate::SpoolError;
use crate::item::{ItemState, ItemSummary, Lane, LaneStats, Lease, SpoolStats};

/// Statements the writer runs for every request, prepared once and reused:
/// parsing the SQL cost about as much as running it.
pub(crate) trait Cached {
    fn run(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize>;
}

impl Cached for Connection {
    fn run(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }
}

fn sha_array(v: &[u8]) -> [u8; 32] {
    let mut a = [0u8; 32];
    if v.len() == 32 {
        a.copy_from_slice(v);
    }
    a
}

/// Takes the oldest ready item of `lane` whose retry time has come.
pub(crate) fn lease(
    conn: &Connection,
    lane: Lane,
    now_ms: i64,
) -> Result<Option<Lease>, SpoolError> {
    let row = conn
        .prepare_cached(
            "SELECT id, upload_id, kind, source, metadata, size, sha256, received_ms, attempts, inline_payload IS NOT NULL
             FROM items WHERE state = 0 AND lane = ?1 AND next_attempt_ms <= ?2 ORDER BY id LIMIT 1",
        )?
        .query_row(
            params![lane as i64, now_ms],
            |r| {
                Ok(Lease {
                    id: r.get(0)?,
                    upload_id: r.get(1)?,
                    lane,
                    kind: r.get(2)?,
                    source: r.get(3)?,
                    metadata: parse_metadata(&r.get::<_, String>(4)?),
                    size: r.get::<_, i64>(5)? as u64,
                    sha256: sha_array(&r.get::<_, Vec<u8>>(6)?),
                    received_ms: r.get(7)?,
                    attempts: r.get::<_, i64>(8)? as u32,
                    inline: r.get(9)?,
                })
            },
        )
        .optional()?;
    if let Some(l) = &row {
        conn.run("UPDATE items SET state = 1 WHERE id = ?1", params![l.id])?;
    }
    Ok(row)
}

/// Backlog per lane, dead letters, delivered items kept.
pub(crate) fn stats(conn: &Connection) -> Result<SpoolStats, SpoolError> {
    let mut s = SpoolStats::default();
    let mut stmt = conn.prepare(
        "SELECT lane, COUNT(*), COALESCE(SUM(size), 0), MIN(received_ms) FROM items WHERE state IN (0, 1) GROUP BY lane",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, Option<i64>>(3)?,
        ))
    })?;
    for row in rows {
        let (lane, items, bytes, oldest) = row?;
        s.lanes[Lane::from_db(lane) as usize] = LaneStats {
            items: items as u64,
            bytes: bytes as u64,
            oldest_received_ms: oldest,
        };
    }
    s.dead = conn.query_row("SELECT COUNT(*) FROM items WHERE state = 3", [], |r| {
        r.get::<_, i64>(0)
    })? as u64;
    s.delivered_kept = conn.query_row("SELECT COUNT(*) FROM items WHERE state = 2", [], |r| {
        r.get::<_, i64>(0)
    })? as u64;
    s.used_bytes = conn.query_row("SELECT COALESCE(SUM(size), 0) FROM items", [], |r| {
        r.get::<_, i64>(0)
    })? as u64;
    Ok(s)
}

/// The newest items (or only dead letters), newest first.
/// The newest `limit` items whose metadata has `key` (a plain name).
pub(crate) fn list_with_key(
    conn: &Connection,
    key: &str,
    limit: u32,
) -> Result<Vec<ItemSummary>, SpoolError> {
    let sql = "SELECT id, upload_id, lane, kind, source, metadata, size, sha256, state, attempts, received_ms, delivered_ms, last_error
         FROM items WHERE json_extract(metadata, '$.' || ?2) IS NOT NULL ORDER BY id DESC LIMIT ?1";
    query_items(conn, sql, params![limit, key])
}

/// Items whose metadata `key` (a plain name) is one of `values`.
pub(crate) fn list_by_metadata(
    conn: &Connection,
    key: &str,
    values: &[String],
) -> Result<Vec<ItemSummary>, SpoolError> {
    let sql = "SELECT id, upload_id, lane, kind, source, metadata, size, sha256, state, attempts, received_ms, delivered_ms, last_error
         FROM items WHERE json_extract(metadata, '$.' || ?1) IN (SELECT value FROM json_each(?2)) ORDER BY id";
    let list = serde_json::to_string(values).unwrap_or_else(|_| "[]".into());
    query_items(conn, sql, params![key, list])
}

pub(crate) fn list(
    conn: &Connection,
    dead_only: bool,
    limit: u32,
) -> Result<Vec<ItemSummary>, SpoolError> {
    let sql = if dead_only {
        "SELECT id, upload_id, lane, kind, source, metadata, size, sha256, state, attempts, received_ms, delivered_ms, last_error
         FROM items WHERE state = 3 ORDER BY id DESC LIMIT ?1"
    } else {
        "SELECT id, upload_id, lane, kind, source, metadata, size, sha256, state, attempts, received_ms, delivered_ms, last_error
         FROM items ORDER BY id DESC LIMIT ?1"
    };
    query_items(conn, sql, params![limit])
}

fn query_items(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<ItemSummary>, SpoolError> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map(params, |r| {
        Ok(ItemSummary {
            id: r.get(0)?,
            upload_id: r.get(1)?,
            lane: Lane::from_db(r.get(2)?).name(),
            kind: r.get(3)?,
            source: r.get(4)?,
            metadata: parse_metadata(&r.get::<_, String>(5)?),
            size: r.get::<_, i64>(6)? as u64,
            sha256: hex::encode(r.get::<_, Vec<u8>>(7)?),
            state: ItemState::from_db(r.get(8)?).name(),
            attempts: r.get::<_, i64>(9)? as u32,
            received_ms: r.get(10)?,
            delivered_ms: r.get(11)?,
            last_error: r.get(12)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn parse_metadata(json: &str) -> BTreeMap<String, String> {
    serde_json::from_str(json).unwrap_or_default()
}
