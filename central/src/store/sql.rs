//! Where central's SQL meets an engine: SQLite embedded (a county hub) or
//! PostgreSQL (an alliance with several central instances).
//!
//! The store's statements are written once, in the SQL both engines speak
//! (`ON CONFLICT`, `COALESCE`, `CAST(SUM(..) AS BIGINT)`), with SQLite's
//! `?N` placeholders; [`postgres_dialect`] rewrites the few spellings that
//! differ (placeholders, `json_extract`, `group_concat`) and
//! [`postgres_schema`] the column types. Values cross as [`Value`], so the
//! store's code does not know which engine answers.
//!
//! PostgreSQL is driven by `tokio-postgres` on a thread of its own with a
//! one-thread runtime: the store is called from blocking threads and, in a
//! few places, from async tasks, where a nested runtime would panic.

use std::collections::HashMap;

mod postgres;

pub use postgres::{POOL_SIZE, PostgresSettings};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    #[error("column {column}: expected {expected}, the database gave {got}")]
    Type {
        column: usize,
        expected: &'static str,
        got: &'static str,
    },
    #[error("the query returned no row")]
    NoRow,
}

/// One value of a parameter or a column.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "an integer",
            Value::Real(_) => "a real",
            Value::Text(_) => "text",
            Value::Blob(_) => "a blob",
        }
    }
}

/// A Rust value that can be a statement's parameter.
pub trait ToValue {
    fn to_value(&self) -> Value;
}

macro_rules! int_to_value {
    ($($t:ty),*) => {$(
        impl ToValue for $t {
            fn to_value(&self) -> Value {
                // Counts and sizes above i64::MAX do not occur; saturate
                // rather than wrap if one ever did.
                Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
            }
        }
    )*};
}
int_to_value!(i64, i32, u32, u64, usize, u16, u8);

impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl ToValue for f64 {
    fn to_value(&self) -> Value {
        Value::Real(*self)
    }
}
impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_owned())
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl ToValue for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}
impl ToValue for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}
impl ToValue for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}
impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}
impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToValue::to_value)
    }
}

/// A statement's parameters, as `rusqlite::params!` spells them.
macro_rules! params {
    ($($p:expr),* $(,)?) => {
        &[$(&$p as &dyn $crate::store::sql::ToValue),*][..]
    };
}
pub(crate) use params;

/// A column value read back into Rust.
pub trait FromValue: Sized {
    const EXPECTED: &'static str;
    fn from_value(v: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    const EXPECTED: &'static str = "an integer";
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}
impl FromValue for bool {
    const EXPECTED: &'static str = "a boolean";
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Int(i) => Some(*i != 0),
            _ => None,
        }
    }
}
impl FromValue for f64 {
    const EXPECTED: &'static str = "a real";
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Real(r) => Some(*r),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
}
impl FromValue for String {
    const EXPECTED: &'static str = "text";
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Text(s) => Some(s.clone()),
            // SQLite hands back what was stored; a number in a text column
            // (a JSON field that held one) reads as its text.
            Value::Int(i) => Some(i.to_string()),
            Value::Real(r) => Some(r.to_string()),
            _ => None,
        }
    }
}
impl FromValue for Vec<u8> {
    const EXPECTED: &'static str = "a blob";
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Blob(b) => Some(b.clone()),
            Value::Text(s) => Some(s.as_bytes().to_vec()),
            _ => None,
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    const EXPECTED: &'static str = T::EXPECTED;
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Null => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// One row of a result.
#[derive(Debug)]
pub struct Row(Vec<Value>);

impl Row {
    /// A column's value as the engine gave it.
    pub fn value(&self, column: usize) -> Value {
        self.0.get(column).cloned().unwrap_or(Value::Null)
    }

    pub fn get<T: FromValue>(&self, column: usize) -> Result<T, DbError> {
        let v = self.0.get(column).unwrap_or(&Value::Null);
        T::from_value(v).ok_or(DbError::Type {
            column,
            expected: T::EXPECTED,
            got: v.kind(),
        })
    }
}

enum Engine {
    Sqlite(rusqlite::Connection),
    Postgres(postgres::Session),
}

/// A connection to whichever engine holds central's index.
pub struct Db {
    engine: Engine,
    /// Statements as PostgreSQL spells them, rewritten once each.
    dialect: HashMap<String, String>,
}

impl Db {
    pub fn sqlite(conn: rusqlite::Connection) -> Self {
        Self {
            engine: Engine::Sqlite(conn),
            dialect: HashMap::new(),
        }
    }

    /// Connects, and brings the schema up to date under an advisory lock
    /// so that two instances starting together cannot race.
    pub fn postgres(settings: &PostgresSettings, schema: &str) -> Result<Self, DbError> {
        let mut db = Self::postgres_connection(settings)?;
        // The lock is released at COMMIT, once the tables are visible to
        // the instance waiting for it (whose statements then see them).
        db.batch(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({MIGRATION_LOCK}); {} COMMIT;",
            postgres_schema(schema)
        ))?;
        Ok(db)
    }

    /// One more connection to a server whose schema is up to date.
    pub fn postgres_connection(settings: &PostgresSettings) -> Result<Self, DbError> {
        Ok(Self {
            engine: Engine::Postgres(postgres::Session::connect(settings)?),
            dialect: HashMap::new(),
        })
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.engine, Engine::Postgres(_))
    }

    fn spelled(&mut self, sql: &str) -> String {
        if let Some(s) = self.dialect.get(sql) {
            return s.clone();
        }
        let s = postgres_dialect(sql);
        self.dialect.insert(sql.to_owned(), s.clone());
        s
    }

    /// Runs one statement; the number of rows it changed.
    pub fn execute(&mut self, sql: &str, params: &[&dyn ToValue]) -> Result<usize, DbError> {
        let values: Vec<Value> = params.iter().map(|p| p.to_value()).collect();
        match &mut self.engine {
            Engine::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                Ok(stmt.execute(rusqlite::params_from_iter(values.iter()))?)
            }
            Engine::Postgres(_) => {
                let sql = self.spelled(sql);
                let Engine::Postgres(s) = &mut self.engine else {
                    unreachable!("matched above")
                };
                let n = s.execute(sql, values)?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            }
        }
    }

    /// Runs a query and maps every row.
    pub fn query<T>(
        &mut self,
        sql: &str,
        params: &[&dyn ToValue],
        mut f: impl FnMut(&Row) -> Result<T, DbError>,
    ) -> Result<Vec<T>, DbError> {
        let values: Vec<Value> = params.iter().map(|p| p.to_value()).collect();
        let rows = match &mut self.engine {
            Engine::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let columns = stmt.column_count();
                let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    let mut row = Vec::with_capacity(columns);
                    for i in 0..columns {
                        row.push(sqlite_value(r.get_ref(i)?));
                    }
                    out.push(Row(row));
                }
                out
            }
            Engine::Postgres(_) => {
                let sql = self.spelled(sql);
                let Engine::Postgres(s) = &mut self.engine else {
                    unreachable!("matched above")
                };
                s.query(sql, values)?
            }
        };
        rows.iter().map(&mut f).collect()
    }

    /// The first row, if there is one.
    pub fn query_row<T>(
        &mut self,
        sql: &str,
        params: &[&dyn ToValue],
        f: impl FnMut(&Row) -> Result<T, DbError>,
    ) -> Result<Option<T>, DbError> {
        Ok(self.query(sql, params, f)?.into_iter().next())
    }

    /// The first row of a query that always returns one (a count).
    pub fn query_one<T>(
        &mut self,
        sql: &str,
        params: &[&dyn ToValue],
        f: impl FnMut(&Row) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        self.query_row(sql, params, f)?.ok_or(DbError::NoRow)
    }

    /// Statements without parameters, separated by semicolons.
    pub fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        match &mut self.engine {
            Engine::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Engine::Postgres(s) => s.batch(sql.to_owned()),
        }
    }

    /// Begins a transaction; it rolls back unless committed.
    pub fn transaction(&mut self) -> Result<Tx<'_>, DbError> {
        self.batch("BEGIN")?;
        Ok(Tx {
            db: self,
            open: true,
        })
    }

    /// Whether the index takes writes now (a full disk, a lost server).
    pub fn health(&mut self) -> Result<(), DbError> {
        match &mut self.engine {
            // A write lock is what an ingest needs; taking it proves the
            // file is writable and not wedged.
            Engine::Sqlite(c) => Ok(c.execute_batch("BEGIN IMMEDIATE; COMMIT")?),
            Engine::Postgres(s) => s.batch("SELECT 1".into()),
        }
    }
}

/// An advisory lock key for schema changes ("YILI").
const MIGRATION_LOCK: i64 = 0x5949_4c49;

/// A transaction; derefs to the connection it runs on.
pub struct Tx<'a> {
    db: &'a mut Db,
    open: bool,
}

impl Tx<'_> {
    pub fn commit(mut self) -> Result<(), DbError> {
        self.open = false;
        self.db.batch("COMMIT")
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Db;
    fn deref(&self) -> &Db {
        self.db
    }
}

impl std::ops::DerefMut for Tx<'_> {
    fn deref_mut(&mut self) -> &mut Db {
        self.db
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if self.open {
            // An error or a panic left the transaction open: nothing of it
            // may stay. A failed rollback leaves a connection the engine
            // rolls back itself when it ends.
            let _ = self.db.batch("ROLLBACK");
        }
    }
}

fn sqlite_value(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(r) => Value::Real(r),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

/// The schema as PostgreSQL spells it: 64-bit integers throughout (SQLite's
/// INTEGER is 64-bit) and identity columns for AUTOINCREMENT.
pub fn postgres_schema(schema: &str) -> String {
    // Comments go first: an apostrophe in one would read as a quote.
    let schema: String = schema
        .lines()
        .map(|l| l.split_once("--").map_or(l, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n");
    postgres_dialect(
        &schema
            .replace(
                "INTEGER PRIMARY KEY AUTOINCREMENT",
                "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
            )
            .replace("INTEGER", "BIGINT")
            .replace("BLOB", "BYTEA"),
    )
}

/// A statement as PostgreSQL spells it: `$N` for `?N`,
/// `(x::jsonb ->> 'k')` for `json_extract(x, '$.k')`, `string_agg` for
/// `group_concat`. Text inside quotes is left alone.
pub fn postgres_dialect(sql: &str) -> String {
    let sql = rewrite_calls(sql, "json_extract", |args| match args {
        [doc, path] => {
            let key = path.trim().trim_matches('\'');
            let key = key.strip_prefix("$.").unwrap_or(key);
            Some(format!("({}::jsonb ->> '{key}')", doc.trim()))
        }
        _ => None,
    });
    let sql = rewrite_calls(&sql, "group_concat", |args| match args {
        [one] => Some(format!("string_agg({}, ',')", one.trim())),
        [one, sep] => Some(format!("string_agg({}, {})", one.trim(), sep.trim())),
        _ => None,
    });
    placeholders(&sql)
}

fn placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut next = 1;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c == '?' && !quoted {
            out.push('$');
            if chars.peek().is_some_and(char::is_ascii_digit) {
                while let Some(d) = chars.next_if(char::is_ascii_digit) {
                    out.push(d);
                }
            } else {
                out.push_str(&next.to_string());
                next += 1;
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Replaces each call `name(args…)` (any case, outside quotes) with what
/// `f` makes of its top-level arguments; a call `f` declines stays.
fn rewrite_calls(sql: &str, name: &str, f: impl Fn(&[&str]) -> Option<String>) -> String {
    let lower = sql.to_ascii_lowercase();
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut at = 0;
    let mut quoted = false;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\'' {
            quoted = !quoted;
        }
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if !quoted && starts_word && lower.as_bytes()[i..].starts_with(name.as_bytes()) {
            let open = i + name.len();
            if bytes.get(open) == Some(&b'(')
                && let Some((args, close)) = split_args(sql, open + 1)
                && let Some(replacement) = f(&args)
            {
                out.push_str(&sql[at..i]);
                out.push_str(&replacement);
                at = close + 1;
                i = close + 1;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&sql[at..]);
    out
}

/// The top-level arguments of a call whose text starts at `from` (after
/// its opening parenthesis), and the index of its closing one.
fn split_args(sql: &str, from: usize) -> Option<(Vec<&str>, usize)> {
    let bytes = sql.as_bytes();
    let mut depth = 0usize;
    let mut quoted = false;
    let mut args = Vec::new();
    let mut start = from;
    for (i, &b) in bytes.iter().enumerate().skip(from) {
        match b {
            b'\'' => quoted = !quoted,
            b'(' if !quoted => depth += 1,
            b')' if !quoted => {
                if depth == 0 {
                    args.push(&sql[start..i]);
                    return Some((args, i));
                }
                depth -= 1;
            }
            b',' if !quoted && depth == 0 => {
                args.push(&sql[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_spelled_for_postgres() {
        assert_eq!(
            postgres_dialect("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND d = ?2"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND d = $2"
        );
        assert_eq!(
            postgres_dialect("SELECT json_extract(i.metadata, '$.study_uid') FROM items i"),
            "SELECT (i.metadata::jsonb ->> 'study_uid') FROM items i"
        );
        assert_eq!(
            postgres_dialect(
                "MAX(json_extract(metadata, '$.patient_id')), GROUP_CONCAT(DISTINCT json_extract(m, '$.modality'))"
            ),
            "MAX((metadata::jsonb ->> 'patient_id')), string_agg(DISTINCT (m::jsonb ->> 'modality'), ',')"
        );
        assert_eq!(
            postgres_dialect("(SELECT group_concat(t.sink || ': ' || t.outcome, ', ') FROM x)"),
            "(SELECT string_agg(t.sink || ': ' || t.outcome, ', ') FROM x)"
        );
        // A word that merely ends in the name is not a call.
        assert_eq!(
            postgres_dialect("my_json_extract(a, b)"),
            "my_json_extract(a, b)"
        );
    }

    #[test]
    fn the_schema_uses_64_bit_integers_and_identities() {
        let s = postgres_schema(
            "CREATE TABLE t(id INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER NOT NULL);\n\
             CREATE INDEX i ON t(json_extract(m, '$.k'));",
        );
        assert_eq!(
            s,
            "CREATE TABLE t(id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, n BIGINT NOT NULL);\n\
             CREATE INDEX i ON t((m::jsonb ->> 'k'));"
        );
    }
}
