//! Configuration files for bench processes, written as a county admin
//! would write them.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use yilian_link::TlsFiles;

fn q(p: &Path) -> String {
    // TOML basic strings: escape backslashes and quotes.
    p.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
}

pub struct CentralSetup {
    pub listen: SocketAddr,
    pub metrics: SocketAddr,
    pub data_dir: PathBuf,
    pub tls: TlsFiles,
}

impl CentralSetup {
    pub fn toml(&self) -> String {
        format!(
            "[server]\nlisten = \"{}\"\ndata_dir = \"{}\"\n\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\n[metrics]\nlisten = \"{}\"\n",
            self.listen,
            q(&self.data_dir),
            q(&self.tls.ca),
            q(&self.tls.cert),
            q(&self.tls.key),
            self.metrics
        )
    }
}

pub struct FolderSetup {
    pub name: String,
    pub path: PathBuf,
    pub lane: &'static str,
    pub settle_ms: u64,
}

pub struct GatewaySetup {
    pub central: String,
    pub server_name: String,
    pub spool_dir: PathBuf,
    pub metrics: SocketAddr,
    pub tls: TlsFiles,
    pub folders: Vec<FolderSetup>,
    pub idle_timeout_ms: Option<u64>,
    pub reconnect_max_ms: u64,
    pub quota_bytes: Option<u64>,
    /// More TOML appended as is (device adapters, peers).
    pub extra: String,
}

impl GatewaySetup {
    pub fn toml(&self) -> String {
        self.toml_with_uplink("")
    }

    /// With more keys for `[uplink]` (a rate limit, a schedule).
    pub fn toml_with_uplink(&self, uplink_extra: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "[spool]\ndir = \"{}\"", q(&self.spool_dir));
        if let Some(quota) = self.quota_bytes {
            let _ = writeln!(s, "quota_bytes = {quota}");
        }
        let _ = writeln!(
            s,
            "\n[uplink]\ncentral = \"{}\"\nserver_name = \"{}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nheartbeat_interval = \"2s\"\nreconnect_max = \"{}ms\"",
            self.central,
            self.server_name,
            q(&self.tls.ca),
            q(&self.tls.cert),
            q(&self.tls.key),
            self.reconnect_max_ms
        );
        if let Some(ms) = self.idle_timeout_ms {
            let _ = writeln!(s, "idle_timeout = \"{ms}ms\"");
        }
        s.push_str(uplink_extra);
        let _ = writeln!(s, "\n[metrics]\nlisten = \"{}\"", self.metrics);
        // Tests run many boxes at once: each page on a port of its own.
        if !self.extra.contains("[page]") {
            let _ = writeln!(s, "\n[page]\nlisten = \"127.0.0.1:0\"");
        }
        s.push_str(&self.extra);
        for f in &self.folders {
            let _ = writeln!(
                s,
                "\n[[folder]]\nname = \"{}\"\npath = \"{}\"\nlane = \"{}\"\nsettle = \"{}ms\"\npoll_interval = \"200ms\"",
                f.name,
                q(&f.path),
                f.lane,
                f.settle_ms
            );
        }
        s
    }
}

/// A free TCP port on loopback (for metrics listeners of child processes).
pub fn free_tcp_port() -> std::io::Result<SocketAddr> {
    free_port(|a| std::net::TcpListener::bind(a).map(drop))
}

/// A free UDP port on loopback (for central's QUIC listener).
pub fn free_udp_port() -> std::io::Result<SocketAddr> {
    free_port(|a| std::net::UdpSocket::bind(a).map(drop))
}

/// Ports below the kernel's ephemeral range (32768 and up): a port handed
/// out here stays free until the process it is meant for binds it, since
/// no socket bound to port 0 (every client endpoint of the tests) can be
/// given it meanwhile. Handed out in turn from a random start, so the
/// tests of one process never share one.
fn free_port(try_bind: impl Fn(SocketAddr) -> std::io::Result<()>) -> std::io::Result<SocketAddr> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let _ = NEXT.compare_exchange(
        0,
        1 + (std::process::id().wrapping_mul(2_654_435_761) ^ rand::random::<u32>()) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = u16::try_from(FIRST + n % SPAN).unwrap_or(20_000);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if try_bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no free port between 20000 and 32000",
    ))
}
