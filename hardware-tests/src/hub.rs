//! Central and one gateway in this process on loopback, with fresh
//! certificates: the setting of the device scenario tests. [`HubSpec`]
//! says what differs between scenarios (device sections, central's
//! downstream systems, a relay to cut or shape the link); everything else
//! is the same everywhere.

use std::path::Path;
use std::time::{Duration, Instant};

use yilian_central::CentralConfig;
use yilian_central::store::ItemRow;
use yilian_gateway::GatewayConfig;

use crate::configs::{CentralSetup, FolderSetup, GatewaySetup};
use crate::fleet::Fleet;
use crate::relay::{Relay, Shaping};

/// What a scenario's hub has besides the defaults.
pub struct HubSpec {
    /// The box's identity.
    pub gateway: &'static str,
    /// Appended to the gateway's configuration (device sections).
    pub gateway_extra: String,
    /// Appended to central's configuration (`[lis]`, `[ecg]`, ...).
    pub central_extra: String,
    pub folders: Vec<FolderSetup>,
    pub quota_bytes: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub reconnect_max_ms: u64,
    /// Reach central through a relay (that a test can cut), shaped if
    /// asked.
    pub relay: Option<Option<Shaping>>,
}

impl Default for HubSpec {
    fn default() -> Self {
        Self {
            gateway: "bench/clinic/box-1",
            gateway_extra: String::new(),
            central_extra: String::new(),
            folders: Vec::new(),
            quota_bytes: None,
            idle_timeout_ms: None,
            reconnect_max_ms: 1000,
            relay: None,
        }
    }
}

pub struct Hub {
    pub central: yilian_central::Running,
    pub gateway: yilian_gateway::Running,
    /// The relay between them, when the spec asked for one.
    pub relay: Option<Relay>,
}

impl Hub {
    /// Central, and a gateway with `gateway_extra` (device sections)
    /// appended to its configuration.
    pub async fn start(dir: &Path, gateway_extra: &str) -> anyhow::Result<Self> {
        Self::start_with(
            dir,
            HubSpec {
                gateway_extra: gateway_extra.to_owned(),
                ..HubSpec::default()
            },
        )
        .await
    }

    /// Central, and a gateway as `spec` says.
    pub async fn start_with(dir: &Path, spec: HubSpec) -> anyhow::Result<Self> {
        let _ = crate::logs::LogCapture::install();
        let fleet = Fleet::create(dir)?;
        let cs = CentralSetup {
            listen: "127.0.0.1:0".parse()?,
            metrics: "127.0.0.1:0".parse()?,
            data_dir: dir.join("central-data"),
            tls: fleet.central("localhost")?,
        };
        std::fs::write(
            dir.join("central.toml"),
            format!("{}\n{}", cs.toml(), spec.central_extra),
        )?;
        let central =
            yilian_central::start(CentralConfig::load(&dir.join("central.toml"))?).await?;
        let relay = match spec.relay {
            Some(shaping) => Some(Relay::start_shaped(central.quic_addr, shaping).await?),
            None => None,
        };
        let gs = GatewaySetup {
            central: relay
                .as_ref()
                .map_or(central.quic_addr, |r| r.addr)
                .to_string(),
            server_name: "localhost".into(),
            spool_dir: dir.join("spool"),
            metrics: "127.0.0.1:0".parse()?,
            tls: fleet.gateway(spec.gateway)?,
            folders: spec.folders,
            idle_timeout_ms: spec.idle_timeout_ms,
            reconnect_max_ms: spec.reconnect_max_ms,
            quota_bytes: spec.quota_bytes,
            extra: spec.gateway_extra,
        };
        std::fs::write(dir.join("gateway.toml"), gs.toml())?;
        let gateway =
            yilian_gateway::start(GatewayConfig::load(&dir.join("gateway.toml"))?).await?;
        Ok(Self {
            central,
            gateway,
            relay,
        })
    }

    /// Waits until central holds at least `n` items.
    pub async fn wait_items(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<ItemRow>> {
        wait_items(&self.central, n, timeout, Duration::ZERO).await
    }

    pub async fn shutdown(self) {
        self.gateway.shutdown().await;
        self.central.shutdown().await;
    }
}

/// Waits until `central` holds at least `n` items; then `settle` longer,
/// and reads them again, so that a duplicate arriving late is counted.
pub async fn wait_items(
    central: &yilian_central::Running,
    n: usize,
    timeout: Duration,
    settle: Duration,
) -> anyhow::Result<Vec<ItemRow>> {
    let deadline = Instant::now() + timeout;
    loop {
        let items = central.store.items(None, None)?;
        if items.len() >= n {
            if settle.is_zero() {
                return Ok(items);
            }
            tokio::time::sleep(settle).await;
            return Ok(central.store.items(None, None)?);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "central has {} of {n} items after {timeout:?}: {items:#?}",
            items.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
