#![allow(clippy::expect_used, clippy::unwrap_used)] // test support: a failed setup step panics, naming it
//! A fleet driven by the admin's tool: `yilian-provision` making the CAs
//! and certificates, a real `yilian-central` process with enrollment, and
//! helpers to run the binaries and wait for what they do.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use yilian_link::TlsFiles;

use crate::configs::{CentralSetup, FolderSetup, GatewaySetup, free_tcp_port, free_udp_port};
use crate::procs::{Proc, binary};

pub fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(binary(bin).expect("binary"))
        .args(args)
        .output()
        .expect("spawn")
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

/// A fleet made with the admin's tool: offline root, issuing CA for
/// central, central's certificate, an administrator's certificate.
pub struct Bench {
    pub dir: PathBuf,
    pub quic: SocketAddr,
    pub metrics: SocketAddr,
    /// The name in central's certificate, and the host of the address
    /// written into tokens.
    pub host: String,
    /// Where central takes reports (ORU^R01, MDM^T02) over MLLP.
    pub reports: SocketAddr,
    pub central: Proc,
}

impl Bench {
    pub fn start(dir: &Path, lifetime: &str) -> Self {
        Self::start_as(dir, lifetime, "localhost")
    }

    /// With central's certificate for `host` (a name or an IP address) and
    /// tokens naming `host:port`, so a box with nothing but a token finds
    /// central.
    pub fn start_as(dir: &Path, lifetime: &str, host: &str) -> Self {
        let root = dir.join("root");
        ok(run("yilian-provision", &["ca", "init", "--dir", s(&root)]));
        ok(run(
            "yilian-provision",
            &[
                "ca",
                "issuing",
                "--root",
                s(&root),
                "--out",
                s(&dir.join("issuing")),
            ],
        ));
        ok(run(
            "yilian-provision",
            &[
                "cert",
                "issue",
                "--ca",
                s(&root),
                "--central-host",
                host,
                "--out",
                s(&dir.join("central")),
            ],
        ));
        ok(run(
            "yilian-provision",
            &[
                "cert",
                "issue",
                "--ca",
                s(&root),
                "--admin-name",
                "alice",
                "--out",
                s(&dir.join("admin")),
            ],
        ));
        let quic = free_udp_port().expect("port");
        let metrics = free_tcp_port().expect("port");
        let reports = free_tcp_port().expect("port");
        let setup = CentralSetup {
            listen: quic,
            metrics,
            data_dir: dir.join("central-data"),
            tls: TlsFiles {
                ca: dir.join("central/ca.pem"),
                cert: dir.join("central/central.pem"),
                key: dir.join("central/central.key"),
            },
        };
        let public = if host == "localhost" {
            quic.to_string()
        } else {
            format!("{host}:{}", quic.port())
        };
        let toml = format!(
            "{}\n[reports]\nhl7_listen = \"{reports}\"\n\n[enrollment]\nissuing_cert = \"{}\"\nissuing_key = \"{}\"\ncertificate_lifetime = \"{lifetime}\"\ngrace = \"1h\"\npublic_address = \"{public}\"\n",
            setup.toml(),
            s(&dir.join("issuing/issuing.pem")),
            s(&dir.join("issuing/issuing.key")),
        );
        std::fs::write(dir.join("central.toml"), toml).expect("write");
        let central = Proc::spawn(
            "yilian-central",
            &["serve", "--config", s(&dir.join("central.toml"))],
            &dir.join("central.log"),
        )
        .expect("central");
        wait_tcp(metrics);
        Self {
            dir: dir.to_owned(),
            quic,
            metrics,
            host: host.to_owned(),
            reports,
            central,
        }
    }

    /// Every item central holds, as `yilian-central items --json` lists
    /// them.
    pub fn items(&self) -> Vec<serde_json::Value> {
        let out = Command::new(binary("yilian-central").expect("bin"))
            .args([
                "items",
                "--config",
                s(&self.dir.join("central.toml")),
                "--json",
            ])
            .output()
            .expect("items");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The file names of the items central holds (drop-folder items).
    pub fn delivered_files(&self) -> Vec<String> {
        self.items()
            .iter()
            .filter_map(|v| v["metadata"]["filename"].as_str().map(str::to_owned))
            .collect()
    }

    /// Stops central (SIGKILL, as a crash would).
    pub fn stop_central(&mut self) {
        self.central.kill9();
    }

    /// Starts central again with the same configuration and data.
    pub fn start_central(&mut self) {
        self.central = Proc::spawn(
            "yilian-central",
            &["serve", "--config", s(&self.dir.join("central.toml"))],
            &self.dir.join("central.log"),
        )
        .expect("central");
        wait_tcp(self.metrics);
    }

    pub fn admin(&self, args: &[&str]) -> Output {
        let central = self.quic.to_string();
        let admin = self.dir.join("admin");
        let mut all = vec![
            "--central",
            &central,
            "--admin",
            s(&admin),
            "--server-name",
            &self.host,
        ];
        all.extend_from_slice(args);
        run("yilian-provision", &all)
    }

    pub fn token(&self, gateway: &str, expires: &str) -> String {
        ok(self.admin(&[
            "token",
            "create",
            "--gateway",
            gateway,
            "--expires",
            expires,
        ]))
    }

    /// A box directory with a gateway.toml pointing at `central` and no
    /// certificate yet.
    pub fn box_dir(&self, name: &str, central: SocketAddr, extra: &str) -> PathBuf {
        let dir = self.dir.join(name);
        let gw = GatewaySetup {
            central: central.to_string(),
            server_name: self.host.clone(),
            spool_dir: dir.join("spool"),
            metrics: free_tcp_port().expect("port"),
            tls: TlsFiles {
                ca: dir.join("tls/ca.pem"),
                cert: dir.join("tls/gateway.pem"),
                key: dir.join("tls/gateway.key"),
            },
            folders: vec![FolderSetup {
                name: "share".into(),
                path: dir.join("drop"),
                lane: "bulk",
                settle_ms: 300,
            }],
            idle_timeout_ms: None,
            reconnect_max_ms: 1000,
            quota_bytes: None,
            extra: extra.to_owned(),
        };
        std::fs::create_dir_all(dir.join("drop")).expect("mkdir");
        std::fs::write(dir.join("gateway.toml"), gw.toml()).expect("write");
        dir
    }

    pub fn fleet(&self) -> serde_json::Value {
        serde_json::from_str(&ok(self.admin(&["fleet", "list", "--json"]))).expect("json")
    }

    pub fn show(&self, gateway: &str) -> serde_json::Value {
        serde_json::from_str(&ok(self.admin(&["fleet", "show", gateway, "--json"]))).expect("json")
    }
}

pub fn enroll(box_dir: &Path, token: &str, central: Option<SocketAddr>) -> Output {
    let config = box_dir.join("gateway.toml");
    let central = central.map(|c| c.to_string());
    let mut args = vec!["enroll", "--config", s(&config), "--token", token];
    if let Some(c) = &central {
        args.extend_from_slice(&["--central", c]);
    }
    run("yilian-gateway", &args)
}

pub fn wait_tcp(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "{addr} never listened");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}
