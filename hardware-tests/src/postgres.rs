//! A real PostgreSQL server (Debian's package) for the tests: a cluster
//! made with `initdb` in a directory of its own, run as the `postgres` user
//! (the server refuses root) on a free loopback port, with password
//! authentication over TCP so central's `password_file` is exercised.
//! Stopped (and its directory removed) when dropped.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::configs::free_tcp_port;

pub struct Postgres {
    child: Child,
    /// Serving TLS with the certificate given at start.
    ssl: bool,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    /// A file holding the password of the `yilian` role.
    pub password_file: PathBuf,
}

/// The server's binaries: Debian keeps them out of PATH, per major version.
fn bin(name: &str) -> std::io::Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")?
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no PostgreSQL {name} under /usr/lib/postgresql (apt-get install postgresql)"),
        )
    })
}

fn as_postgres(program: &Path) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(program);
    c
}

impl Postgres {
    /// Makes a cluster with a `yilian` superuser and a `yilian` database,
    /// and starts it with durable settings (fsync on, as in production).
    pub fn start(name: &str) -> std::io::Result<Postgres> {
        Self::start_with(name, None)
    }

    /// The same, serving TLS with this certificate chain and key (PEM).
    pub fn start_tls(name: &str, cert: &Path, key: &Path) -> std::io::Result<Postgres> {
        Self::start_with(name, Some((cert, key)))
    }

    fn start_with(name: &str, tls: Option<(&Path, &Path)>) -> std::io::Result<Postgres> {
        // Under /tmp: the server's user must reach its directory, which a
        // private build tree does not let it.
        let dir = std::env::temp_dir().join(format!(
            "yilian-pg-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir)?;
        let password_file = dir.join("password");
        std::fs::write(&password_file, "pg-test-secret\n")?;
        if let Some((cert, key)) = tls {
            // The server wants its key private to its own user.
            std::fs::copy(cert, dir.join("server.crt"))?;
            std::fs::copy(key, dir.join("server.key"))?;
            std::fs::set_permissions(
                dir.join("server.key"),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )?;
        }
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()?;
        if !status.success() {
            return Err(std::io::Error::other("chown to postgres failed"));
        }
        let data = dir.join("data");
        let out = as_postgres(&bin("initdb")?)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "yilian",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            ])
            .arg(format!("--pwfile={}", password_file.display()))
            .output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "initdb: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let addr = free_tcp_port()?;
        let ssl = tls.is_some();
        let child = launch(&dir, addr, ssl)?;
        let mut pg = Postgres {
            child,
            ssl,
            addr,
            dir,
            password_file,
        };
        pg.wait_ready()?;
        pg.psql("postgres", "CREATE DATABASE yilian")?;
        Ok(pg)
    }

    /// Starts the server again after [`Postgres::kill9`]: crash recovery
    /// from its WAL, same port, same data.
    pub fn restart(&mut self) -> std::io::Result<()> {
        // Killed processes leave the shared memory a moment later; a
        // server started before that refuses and exits at once.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            self.child = launch(&self.dir, self.addr, self.ssl)?;
            match self.wait_ready() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(300)),
            }
        }
    }

    fn wait_ready(&mut self) -> std::io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                // Accepting TCP before recovery is done: ask it.
                if self.psql("postgres", "SELECT 1").is_ok() {
                    return Ok(());
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(std::io::Error::other(format!(
                    "postgres exited with {status}: see {}",
                    self.dir.join("server.log").display()
                )));
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other("postgres did not start in 30 s"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs SQL through the server's Unix socket as the superuser.
    pub fn psql(&self, database: &str, sql: &str) -> std::io::Result<String> {
        let psql = bin("psql")?;
        let out = as_postgres(&psql)
            .arg("-h")
            .arg(&self.dir)
            .args([
                "-p",
                &self.addr.port().to_string(),
                "-U",
                "yilian",
                "-d",
                database,
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(std::io::Error::other(format!(
                "psql: {}",
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }

    /// Central's `[store]` for this server (password from the file).
    pub fn store_toml(&self, database: &str) -> String {
        format!(
            "[store]\nbackend = \"postgres\"\nurl = \"host=127.0.0.1 port={} user=yilian dbname={database}\"\npassword_file = \"{}\"\n",
            self.addr.port(),
            self.password_file.display()
        )
    }

    /// Connections that are TLS right now, as the server sees them.
    pub fn tls_connections(&self) -> std::io::Result<u64> {
        let n = self.psql("postgres", "SELECT count(*) FROM pg_stat_ssl WHERE ssl")?;
        n.parse()
            .map_err(|_| std::io::Error::other(format!("not a count: {n}")))
    }

    /// The same, as the store's type.
    pub fn settings(&self, database: &str) -> yilian_central::store::sql::PostgresSettings {
        yilian_central::store::sql::PostgresSettings {
            url: format!(
                "host=127.0.0.1 port={} user=yilian dbname={database}",
                self.addr.port()
            ),
            password_file: Some(self.password_file.clone()),
            ca_file: None,
            connect_timeout: Duration::from_secs(10),
            pool_size: 4,
        }
    }

    /// A fresh database on this server.
    pub fn create_database(&self, name: &str) -> std::io::Result<()> {
        self.psql("postgres", &format!("CREATE DATABASE {name}"))
            .map(|_| ())
    }

    /// Stops the server as a power cut would: SIGKILL of the postmaster
    /// and every backend.
    pub fn kill9(&mut self) {
        if let Some(pid) = self.postmaster() {
            // Stopped first: a postmaster that saw its backends die would
            // fork new ones, which would outlive it and hold its memory.
            signal("STOP", &pid);
            let _ = Command::new("pkill").args(["-KILL", "-P", &pid]).status();
            signal("KILL", &pid);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The postmaster's pid (runuser, our child, does not pass signals on).
    fn postmaster(&self) -> Option<String> {
        let pidfile = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).ok()?;
        pidfile.lines().next().map(|l| l.trim().to_owned())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // A fast shutdown (SIGINT), then whatever is left.
        if let Some(pid) = self.postmaster() {
            signal("INT", &pid);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn launch(dir: &Path, addr: SocketAddr, ssl: bool) -> std::io::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))?;
    let _ = Command::new("chown")
        .arg("postgres:postgres")
        .arg(dir.join("server.log"))
        .status();
    let mut command = as_postgres(&bin("postgres")?);
    if ssl {
        command
            .args(["-c", "ssl=on"])
            .arg("-c")
            .arg(format!(
                "ssl_cert_file={}",
                dir.join("server.crt").display()
            ))
            .arg("-c")
            .arg(format!("ssl_key_file={}", dir.join("server.key").display()));
    }
    command
        .arg("-D")
        .arg(dir.join("data"))
        .arg("-k")
        .arg(dir)
        .args(["-p", &addr.port().to_string()])
        .args(["-c", "listen_addresses=127.0.0.1"])
        .args(["-c", "fsync=on", "-c", "synchronous_commit=on"])
        .args(["-c", "max_connections=200"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
}

fn signal(name: &str, pid: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid)
        .status();
}
