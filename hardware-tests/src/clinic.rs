//! A clinic on an emulated uplink: central in the hub namespace, the
//! gateway in the clinic namespace, both the real binaries, joined only by
//! the [emulated link](crate::wan). The bench reaches their metrics through
//! the namespaces' management links and reads central's index directly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use yilian_central::store::{ItemRow, Store};

use crate::configs::{FolderSetup, GatewaySetup};
use crate::fleet::Fleet;
use crate::procs::Proc;
use crate::wan::{HUB_ADDR, Profile, Wan};

/// Central's name in its certificate; the gateway dials the hub address.
pub const HUB_NAME: &str = "yilian-hub";
pub const QUIC_PORT: u16 = 4433;

pub struct Clinic {
    pub dir: PathBuf,
    pub fleet: Fleet,
    pub central_data: PathBuf,
    pub central_metrics: SocketAddr,
    pub gateway_metrics: SocketAddr,
    /// Drop folders: bulk imaging and urgent (STAT) items.
    pub bulk: PathBuf,
    pub urgent: PathBuf,
    pub central: Proc,
    pub gateway: Proc,
    // Last: the processes die before their namespaces go.
    pub wan: Wan,
}

impl Clinic {
    /// Starts the link, central and a gateway whose `[uplink]` gets
    /// `uplink_extra` (a rate limit or schedule).
    pub fn start(dir: &Path, profile: Profile, uplink_extra: &str) -> anyhow::Result<Self> {
        Self::start_with(dir, profile, uplink_extra, "", "")
    }

    /// As [`Clinic::start`], with more TOML appended to central's and the
    /// gateway's configuration (report listeners, sinks).
    pub fn start_with(
        dir: &Path,
        profile: Profile,
        uplink_extra: &str,
        central_extra: &str,
        gateway_extra: &str,
    ) -> anyhow::Result<Self> {
        let wan = Wan::start(profile)?;
        let fleet = Fleet::create(dir)?;
        let central_data = dir.join("central-data");
        let central_metrics = SocketAddr::from((wan.hub_mgmt, 9465));
        let tls = fleet.central(HUB_NAME)?;
        let central_toml = dir.join("central.toml");
        std::fs::write(
            &central_toml,
            crate::configs::CentralSetup {
                listen: SocketAddr::from((HUB_ADDR, QUIC_PORT)),
                metrics: central_metrics,
                data_dir: central_data.clone(),
                tls,
            }
            .toml()
                + central_extra,
        )?;
        let central = Proc::spawn_in(
            Some(&wan.hub),
            "yilian-central",
            &["serve", "--config", &central_toml.display().to_string()],
            &dir.join("central.log"),
        )?;
        let (bulk, urgent) = (dir.join("imaging"), dir.join("stat"));
        for d in [&bulk, &urgent] {
            std::fs::create_dir_all(d)?;
        }
        let gateway_metrics = SocketAddr::from((wan.clinic_mgmt, 9464));
        let setup = GatewaySetup {
            central: format!("{HUB_ADDR}:{QUIC_PORT}"),
            server_name: HUB_NAME.into(),
            spool_dir: dir.join("spool"),
            metrics: gateway_metrics,
            tls: fleet.gateway("bench/clinic/box-1")?,
            folders: vec![
                FolderSetup {
                    name: "imaging".into(),
                    path: bulk.clone(),
                    lane: "bulk",
                    settle_ms: 200,
                },
                FolderSetup {
                    name: "stat".into(),
                    path: urgent.clone(),
                    lane: "urgent",
                    settle_ms: 100,
                },
            ],
            idle_timeout_ms: None,
            reconnect_max_ms: 5_000,
            quota_bytes: None,
            extra: gateway_extra.to_owned(),
        };
        let gateway_toml = dir.join("gateway.toml");
        std::fs::write(&gateway_toml, setup.toml_with_uplink(uplink_extra))?;
        let gateway = Proc::spawn_in(
            Some(&wan.clinic),
            "yilian-gateway",
            &["run", "--config", &gateway_toml.display().to_string()],
            &dir.join("gateway.log"),
        )?;
        let clinic = Self {
            dir: dir.to_owned(),
            fleet,
            central_data,
            central_metrics,
            gateway_metrics,
            bulk,
            urgent,
            central,
            gateway,
            wan,
        };
        clinic.wait_connected(Duration::from_secs(60))?;
        Ok(clinic)
    }

    /// Until the gateway reports its link up.
    pub fn wait_connected(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.gateway_metric("yilian_uplink_up", &[]) == Some(1.0) {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the gateway did not connect to central over the emulated link\n\
                 gateway log:\n{}\ncentral log:\n{}",
                self.log_tail("gateway.log"),
                self.log_tail("central.log")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of a process's log, for a failure message.
    pub fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    pub fn gateway_metric(&self, name: &str, labels: &[&str]) -> Option<f64> {
        let text = crate::scrape::http_get(self.gateway_metrics, "/metrics").ok()?;
        Some(crate::scrape::sum(&text, name, labels))
    }

    pub fn central_metric(&self, name: &str, labels: &[&str]) -> Option<f64> {
        let text = crate::scrape::http_get(self.central_metrics, "/metrics").ok()?;
        Some(crate::scrape::sum(&text, name, labels))
    }

    /// Payload bytes central has received (resent bytes included).
    pub fn central_received(&self) -> f64 {
        self.central_metric("yilian_central_received_bytes_total", &[])
            .unwrap_or(0.0)
    }

    /// Items central has committed.
    pub fn committed(&self) -> anyhow::Result<Vec<ItemRow>> {
        if !self.central_data.join("central.sqlite").exists() {
            return Ok(Vec::new());
        }
        Ok(Store::open_read_only(&self.central_data)?.items(None, None)?)
    }

    /// Waits for the item from the dropped file `name` to be committed.
    pub fn wait_committed(&self, name: &str, timeout: Duration) -> anyhow::Result<ItemRow> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(row) = self
                .committed()?
                .into_iter()
                .find(|i| i.metadata.get("filename").and_then(|v| v.as_str()) == Some(name))
            {
                return Ok(row);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{name} was not committed within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Drops a file of `size` bytes (sparse: costs no disk at the source)
    /// into a folder, renamed into place as a modality would.
    pub fn drop_file(&self, folder: &Path, name: &str, size: u64) -> anyhow::Result<()> {
        let staging = self.dir.join(format!("{name}.part"));
        std::fs::File::create(&staging)?.set_len(size)?;
        std::fs::rename(&staging, folder.join(name))?;
        Ok(())
    }

    /// Drops a small file with distinct content (sparse files of one size
    /// would all have the same hash).
    pub fn drop_bytes(&self, folder: &Path, name: &str, data: &[u8]) -> anyhow::Result<()> {
        let staging = self.dir.join(format!("{name}.part"));
        std::fs::write(&staging, data)?;
        std::fs::rename(&staging, folder.join(name))?;
        Ok(())
    }
}
