//! Central and one gateway in this process on loopback, with fresh
//! certificates: the setting of the device scenario tests.

use std::path::Path;
use std::time::{Duration, Instant};

use yilian_central::CentralConfig;
use yilian_central::store::ItemRow;
use yilian_gateway::GatewayConfig;

use crate::configs::{CentralSetup, GatewaySetup};
use crate::fleet::Fleet;

pub struct Hub {
    pub central: yilian_central::Running,
    pub gateway: yilian_gateway::Running,
}

impl Hub {
    /// Central, and a gateway with `gateway_extra` (device sections)
    /// appended to its configuration.
    pub async fn start(dir: &Path, gateway_extra: &str) -> anyhow::Result<Self> {
        let fleet = Fleet::create(dir)?;
        let cs = CentralSetup {
            listen: "127.0.0.1:0".parse()?,
            metrics: "127.0.0.1:0".parse()?,
            data_dir: dir.join("central-data"),
            tls: fleet.central("localhost")?,
        };
        std::fs::write(dir.join("central.toml"), cs.toml())?;
        let central =
            yilian_central::start(CentralConfig::load(&dir.join("central.toml"))?).await?;
        let gs = GatewaySetup {
            central: central.quic_addr.to_string(),
            server_name: "localhost".into(),
            spool_dir: dir.join("spool"),
            metrics: "127.0.0.1:0".parse()?,
            tls: fleet.gateway("bench/clinic/box-1")?,
            folders: vec![],
            idle_timeout_ms: None,
            reconnect_max_ms: 1000,
            quota_bytes: None,
            extra: gateway_extra.to_owned(),
        };
        std::fs::write(dir.join("gateway.toml"), gs.toml())?;
        let gateway =
            yilian_gateway::start(GatewayConfig::load(&dir.join("gateway.toml"))?).await?;
        Ok(Self { central, gateway })
    }

    /// Waits until central holds at least `n` items.
    pub async fn wait_items(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<ItemRow>> {
        let deadline = Instant::now() + timeout;
        loop {
            let items = self.central.store.items(None, None)?;
            if items.len() >= n {
                return Ok(items);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "central has {} of {n} items after {timeout:?}",
                items.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn shutdown(self) {
        self.gateway.shutdown().await;
        self.central.shutdown().await;
    }
}
