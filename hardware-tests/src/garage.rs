//! A real S3-compatible server for the tests: Garage, single node, with its
//! metadata and data fsynced (as a hub's bucket must be), on free loopback
//! ports, with one bucket and one key made at start. Built once by
//! `./scripts/test-all` (`cargo install garage --locked`) into
//! `target/tools`. Stopped (and its directory
//! removed) when dropped.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::configs::free_tcp_port;

pub const ACCESS_KEY: &str = "GK0123456789abcdef01234567";
pub const BUCKET: &str = "yilian";

pub struct Garage {
    child: Child,
    pub s3: SocketAddr,
    pub dir: PathBuf,
    /// A file holding the secret key, as central's `[blobs]` reads it.
    pub secret_file: PathBuf,
}

/// The garage binary: `YILIAN_GARAGE`, the one `./scripts/test-all`
/// built into `target/tools`, or `garage` on PATH.
pub fn binary() -> std::io::Result<PathBuf> {
    if let Some(p) = std::env::var_os("YILIAN_GARAGE") {
        return Ok(PathBuf::from(p));
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/bin/garage");
    if built.exists() {
        return Ok(built);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("garage"))
        .find(|p| p.exists())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no garage binary (./scripts/test-all builds it; or set YILIAN_GARAGE)",
            )
        })
}

impl Garage {
    pub fn start(name: &str) -> std::io::Result<Garage> {
        let dir = std::env::temp_dir().join(format!(
            "yilian-garage-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir)?;
        let secret_file = dir.join("s3-secret");
        std::fs::write(
            &secret_file,
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n",
        )?;
        let s3 = free_tcp_port()?;
        let rpc = free_tcp_port()?;
        let config = format!(
            "metadata_dir = \"{dir}/meta\"\n\
             data_dir = \"{dir}/data\"\n\
             db_engine = \"sqlite\"\n\
             metadata_fsync = true\n\
             data_fsync = true\n\
             replication_factor = 1\n\
             rpc_bind_addr = \"{rpc}\"\n\
             rpc_public_addr = \"{rpc}\"\n\
             rpc_secret = \"{secret}\"\n\
             [s3_api]\n\
             s3_region = \"garage\"\n\
             api_bind_addr = \"{s3}\"\n",
            dir = dir.display(),
            secret = "a".repeat(64),
        );
        std::fs::write(dir.join("garage.toml"), config)?;
        let mut garage = Garage {
            child: launch(&dir)?,
            s3,
            dir,
            secret_file,
        };
        garage.wait_ready()?;
        Ok(garage)
    }

    fn wait_ready(&mut self) -> std::io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if TcpStream::connect_timeout(&self.s3, Duration::from_millis(200)).is_ok()
                && self.bucket_ready()
            {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(std::io::Error::other(format!(
                    "garage exited with {status}: see {}",
                    self.dir.join("garage.log").display()
                )));
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "garage did not serve its bucket in 60 s: see {}",
                    self.dir.join("garage.log").display()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn bucket_ready(&self) -> bool {
        self.cli(&["bucket", "info", BUCKET])
            .is_ok_and(|out| out.contains(ACCESS_KEY))
    }

    /// Runs the garage CLI against this server.
    pub fn cli(&self, args: &[&str]) -> std::io::Result<String> {
        let out = Command::new(binary()?)
            .arg("-c")
            .arg(self.dir.join("garage.toml"))
            .args(args)
            .output()?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(std::io::Error::other(format!(
                "garage {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }

    /// Central's `[blobs]` for this bucket (secret key from the file).
    pub fn blobs_toml(&self) -> String {
        format!(
            "[blobs]\nbackend = \"s3\"\nendpoint = \"http://{}\"\nbucket = \"{BUCKET}\"\naccess_key_id = \"{ACCESS_KEY}\"\nsecret_access_key_file = \"{}\"\npart_size_mib = 5\n",
            self.s3,
            self.secret_file.display()
        )
    }

    /// The same, as the store's type.
    pub fn settings(&self) -> yilian_central::store::BlobBackend {
        toml::from_str::<Wrapper>(&self.blobs_toml())
            .map(|w| w.blobs)
            .unwrap_or_default()
    }

    /// Multipart uploads begun and neither completed nor aborted, as the
    /// server counts them (through its CLI, not through the S3 client under
    /// test).
    pub fn multipart_uploads(&self) -> std::io::Result<usize> {
        let out = self.cli(&["bucket", "info", BUCKET])?;
        // "Unfinished uploads:  N multipart uploads" (Garage 2.x), absent
        // when there are none.
        Ok(out
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("Unfinished uploads:")
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0))
    }

    /// Waits (up to 10 s: the server updates its counters after the
    /// request) until the count of unfinished multipart uploads is `n`.
    pub fn wait_multipart_uploads(&self, n: usize) -> std::io::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.multipart_uploads()?;
            if now == n || Instant::now() > deadline {
                return Ok(now);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The server's process id (for its CPU time in /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server as a crash would.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.child = launch(&self.dir)?;
        self.wait_ready()
    }
}

#[derive(serde::Deserialize)]
struct Wrapper {
    blobs: yilian_central::store::BlobBackend,
}

fn launch(dir: &Path) -> std::io::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("garage.log"))?;
    Command::new(binary()?)
        .arg("-c")
        .arg(dir.join("garage.toml"))
        .args(["server", "--single-node", "--default-bucket"])
        .env("GARAGE_DEFAULT_ACCESS_KEY", ACCESS_KEY)
        .env(
            "GARAGE_DEFAULT_SECRET_KEY",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        )
        .env("GARAGE_DEFAULT_BUCKET", BUCKET)
        .env("RUST_LOG", "garage=info")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A city hub's engines for one test: a PostgreSQL server for central's
/// index and a Garage bucket for its payloads, both real and both gone
/// when this drops.
pub struct CityStore {
    pub pg: crate::postgres::Postgres,
    pub garage: Garage,
}

impl CityStore {
    pub fn start(name: &str) -> std::io::Result<Self> {
        Ok(Self {
            pg: crate::postgres::Postgres::start(name)?,
            garage: Garage::start(name)?,
        })
    }

    /// Central's `[store]` and `[blobs]` naming them.
    pub fn toml(&self) -> String {
        format!(
            "{}\n{}",
            self.pg.store_toml("yilian"),
            self.garage.blobs_toml()
        )
    }
}
