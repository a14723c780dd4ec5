//! PostgreSQL behind the store's synchronous calls: one connection on a
//! thread of its own, which runs each statement to completion on a
//! one-thread runtime and reconnects when the server went away.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use bytes::BytesMut;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, Statement};

use super::{DbError, Row, Value};

/// `[store]` for `backend = "postgres"`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSettings {
    /// A connection string, as libpq takes it (`host=db.example user=yilian
    /// dbname=yilian` or `postgresql://yilian@db.example/yilian`), without
    /// the password.
    pub url: String,
    /// A file holding the password (a systemd credential, or a file only the
    /// service user reads): never in the TOML itself.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The CA certificate (PEM) the server's certificate is checked against;
    /// with it set, the connection must be TLS.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How long to wait for the server when connecting.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Connections this instance keeps open: statements of different
    /// uploads and deliveries run side by side, so that one slow statement
    /// or a distant server does not queue every other behind it.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_pool_size() -> usize {
    4
}

/// Bounds on `pool_size`: one connection at least; a few dozen at most
/// (each is a server process at PostgreSQL, times the instances).
pub const POOL_SIZE: std::ops::RangeInclusive<usize> = 1..=64;

type Reply<T> = mpsc::SyncSender<Result<T, DbError>>;

enum Request {
    Execute(String, Vec<Value>, Reply<u64>),
    Query(String, Vec<Value>, Reply<Vec<Row>>),
    Batch(String, Reply<()>),
}

pub(super) struct Session {
    requests: mpsc::Sender<Request>,
}

impl Session {
    pub(super) fn connect(settings: &PostgresSettings) -> Result<Self, DbError> {
        let mut config: tokio_postgres::Config = settings
            .url
            .parse()
            .map_err(|e| DbError::Postgres(format!("the connection string: {e}")))?;
        config.connect_timeout(settings.connect_timeout);
        // A server that vanished without a reset (a cut cable, a crashed
        // host) must fail the statement in seconds, not after the kernel's
        // retransmissions give up (a quarter of an hour): every commit waits
        // on this connection. Unless the connection string says otherwise.
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(Duration::from_secs(30));
            config.keepalives_idle(Duration::from_secs(15));
            config.keepalives_interval(Duration::from_secs(5));
            config.keepalives_retries(3);
        }
        if config.get_application_name().is_none() {
            config.application_name("yilian-central");
        }
        if let Some(file) = &settings.password_file {
            let password = std::fs::read_to_string(file).map_err(|e| {
                DbError::Postgres(format!("reading the password from {}: {e}", file.display()))
            })?;
            config.password(password.trim_end_matches(['\n', '\r']));
        }
        let tls = match &settings.ca_file {
            Some(ca) => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                Some(tls_connector(ca)?)
            }
            None => None,
        };
        let (requests, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("postgres".into())
            .spawn(move || serve(config, tls, rx, ready_tx))
            .map_err(|e| DbError::Postgres(format!("starting the connection thread: {e}")))?;
        ready_rx
            .recv()
            .map_err(|_| DbError::Postgres("the connection thread stopped".into()))??;
        Ok(Self { requests })
    }

    fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, DbError> {
        let (tx, rx) = mpsc::sync_channel(1);
        let stopped = || DbError::Postgres("the connection thread stopped".into());
        self.requests.send(make(tx)).map_err(|_| stopped())?;
        rx.recv().map_err(|_| stopped())?
    }

    pub(super) fn execute(&self, sql: String, params: Vec<Value>) -> Result<u64, DbError> {
        self.call(|r| Request::Execute(sql, params, r))
    }

    pub(super) fn query(&self, sql: String, params: Vec<Value>) -> Result<Vec<Row>, DbError> {
        self.call(|r| Request::Query(sql, params, r))
    }

    pub(super) fn batch(&self, sql: String) -> Result<(), DbError> {
        self.call(|r| Request::Batch(sql, r))
    }
}

fn tls_connector(
    ca: &std::path::Path,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, DbError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .map_err(|e| DbError::Postgres(format!("reading {}: {e}", ca.display())))?;
    for cert in certs {
        let cert = cert.map_err(|e| DbError::Postgres(format!("reading {}: {e}", ca.display())))?;
        roots
            .add(cert)
            .map_err(|e| DbError::Postgres(format!("CA certificate in {}: {e}", ca.display())))?;
    }
    // The one crypto provider the whole program is built with.
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| DbError::Postgres(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The connection thread: one request at a time, in the order sent (a
/// transaction's BEGIN, statements and COMMIT arrive as a run under the
/// store's lock).
fn serve(
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    requests: mpsc::Receiver<Request>,
    ready: mpsc::SyncSender<Result<(), DbError>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(DbError::Postgres(format!("runtime: {e}"))));
            return;
        }
    };
    let mut client = match rt.block_on(connect(&config, tls.as_ref())) {
        Ok(c) => {
            let _ = ready.send(Ok(()));
            c
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut statements: HashMap<String, Statement> = HashMap::new();
    while let Ok(request) = requests.recv() {
        if client.is_closed() {
            // The server restarted or the network dropped us: an open
            // transaction is gone with the old connection (the server
            // rolled it back), and the caller learns it from this error or
            // the next statement's.
            match rt.block_on(connect(&config, tls.as_ref())) {
                Ok(c) => {
                    tracing::info!("reconnected to PostgreSQL");
                    client = c;
                    statements.clear();
                }
                Err(e) => {
                    reply_error(request, e);
                    continue;
                }
            }
        }
        match request {
            Request::Execute(sql, params, reply) => {
                let r = rt.block_on(async {
                    let stmt = prepared(&client, &mut statements, &sql).await?;
                    client.execute(&stmt, &refs(&params)).await.map_err(pg)
                });
                let _ = reply.send(r);
            }
            Request::Query(sql, params, reply) => {
                let r = rt.block_on(async {
                    let stmt = prepared(&client, &mut statements, &sql).await?;
                    let rows = client.query(&stmt, &refs(&params)).await.map_err(pg)?;
                    rows.iter().map(row).collect()
                });
                let _ = reply.send(r);
            }
            Request::Batch(sql, reply) => {
                let r = rt.block_on(client.batch_execute(&sql)).map_err(pg);
                let _ = reply.send(r);
            }
        }
    }
}

fn reply_error(request: Request, e: DbError) {
    match request {
        Request::Execute(_, _, r) => {
            let _ = r.send(Err(e));
        }
        Request::Query(_, _, r) => {
            let _ = r.send(Err(e));
        }
        Request::Batch(_, r) => {
            let _ = r.send(Err(e));
        }
    }
}

async fn connect(
    config: &tokio_postgres::Config,
    tls: Option<&tokio_postgres_rustls::MakeRustlsConnect>,
) -> Result<Client, DbError> {
    let client = match tls {
        Some(tls) => {
            let (client, conn) = config.connect(tls.clone()).await.map_err(pg)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::warn!(error = %pg(e), "PostgreSQL connection ended");
                }
            });
            client
        }
        None => {
            let (client, conn) = config.connect(tokio_postgres::NoTls).await.map_err(pg)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::warn!(error = %pg(e), "PostgreSQL connection ended");
                }
            });
            client
        }
    };
    Ok(client)
}

async fn prepared(
    client: &Client,
    cache: &mut HashMap<String, Statement>,
    sql: &str,
) -> Result<Statement, DbError> {
    if let Some(s) = cache.get(sql) {
        return Ok(s.clone());
    }
    let s = client.prepare(sql).await.map_err(pg)?;
    cache.insert(sql.to_owned(), s.clone());
    Ok(s)
}

fn refs(params: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

/// The server's own words when it refused (constraint, syntax, type),
/// which `tokio_postgres::Error`'s display leaves out.
fn pg(e: tokio_postgres::Error) -> DbError {
    match e.as_db_error() {
        Some(d) => DbError::Postgres(format!("{} ({})", d.message(), d.code().code())),
        None => {
            // "error performing TLS handshake" alone does not say that the
            // server's certificate was refused: add the causes.
            let mut said = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                said.push_str(": ");
                said.push_str(&c.to_string());
                cause = c.source();
            }
            DbError::Postgres(said)
        }
    }
}

fn row(r: &tokio_postgres::Row) -> Result<Row, DbError> {
    let mut out = Vec::with_capacity(r.len());
    for (i, c) in r.columns().iter().enumerate() {
        let ty = c.type_();
        let v = if *ty == Type::INT8 {
            r.try_get::<_, Option<i64>>(i).map(|v| v.map(Value::Int))
        } else if *ty == Type::INT4 {
            r.try_get::<_, Option<i32>>(i)
                .map(|v| v.map(|v| Value::Int(v.into())))
        } else if *ty == Type::INT2 {
            r.try_get::<_, Option<i16>>(i)
                .map(|v| v.map(|v| Value::Int(v.into())))
        } else if *ty == Type::BOOL {
            r.try_get::<_, Option<bool>>(i)
                .map(|v| v.map(|v| Value::Int(v.into())))
        } else if *ty == Type::FLOAT8 {
            r.try_get::<_, Option<f64>>(i).map(|v| v.map(Value::Real))
        } else if *ty == Type::FLOAT4 {
            r.try_get::<_, Option<f32>>(i)
                .map(|v| v.map(|v| Value::Real(v.into())))
        } else if *ty == Type::BYTEA {
            r.try_get::<_, Option<Vec<u8>>>(i)
                .map(|v| v.map(Value::Blob))
        } else if [Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME].contains(ty) {
            r.try_get::<_, Option<String>>(i)
                .map(|v| v.map(Value::Text))
        } else {
            return Err(DbError::Postgres(format!(
                "column {} is of type {ty}, which the store does not read (cast it)",
                c.name()
            )));
        };
        out.push(v.map_err(pg)?.unwrap_or(Value::Null));
    }
    Ok(Row(out))
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

/// Parameters take the type the server inferred for their place: the
/// store's statements pass an i64 where SQLite's INTEGER and PostgreSQL's
/// BIGINT (or INT4, or BOOLEAN) meet.
impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => {
                if *ty == Type::INT8 {
                    v.to_sql(ty, out)
                } else if *ty == Type::INT4 {
                    i32::try_from(*v)?.to_sql(ty, out)
                } else if *ty == Type::INT2 {
                    i16::try_from(*v)?.to_sql(ty, out)
                } else if *ty == Type::BOOL {
                    (*v != 0).to_sql(ty, out)
                } else if *ty == Type::FLOAT8 {
                    (*v as f64).to_sql(ty, out)
                } else if [Type::TEXT, Type::VARCHAR, Type::BPCHAR].contains(ty) {
                    v.to_string().to_sql(ty, out)
                } else {
                    Err(format!("an integer where the statement takes {ty}").into())
                }
            }
            Value::Real(v) => {
                if *ty == Type::FLOAT4 {
                    (*v as f32).to_sql(ty, out)
                } else {
                    v.to_sql(&Type::FLOAT8, out)
                }
            }
            Value::Text(s) => s.as_str().to_sql(&Type::TEXT, out),
            Value::Blob(b) => b.as_slice().to_sql(&Type::BYTEA, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}
