//! Real devices on the bench, named by environment variables. Scenario
//! tests use them when set and report themselves skipped otherwise, with
//! the variable to set (see `hardware-tests/README.md` for the wiring).

use std::path::PathBuf;
use std::time::Duration;

/// A serial ECG cart: `YILIAN_HW_SERIAL_ECG=/dev/serial/by-id/...`, with
/// `YILIAN_HW_SERIAL_ECG_PROTOCOL` (raw, xmodem, ymodem; raw by default)
/// and `YILIAN_HW_SERIAL_ECG_BAUD` (9600 by default).
pub struct SerialEcg {
    pub port: PathBuf,
    pub protocol: String,
    pub baud: u32,
}

/// A lab analyzer speaking ASTM on a serial line: `YILIAN_HW_ASTM=...`,
/// `YILIAN_HW_ASTM_BAUD` (9600 by default).
pub struct Astm {
    pub port: PathBuf,
    pub baud: u32,
}

/// A modality (or a PC running a modality simulator):
/// `YILIAN_HW_MODALITY=host:port:AET`.
pub struct Modality {
    pub host: String,
    pub port: u16,
    pub ae_title: String,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Prints why a hardware test did nothing.
pub fn skipped(variable: &str, example: &str) {
    eprintln!(
        "skipped: no device attached; set {variable}={example} to run this scenario against it"
    );
}

/// How long to wait for a person at the device (pressing "send").
pub fn operator_timeout() -> Duration {
    Duration::from_secs(
        var("YILIAN_HW_TIMEOUT")
            .and_then(|v| v.parse().ok())
            .unwrap_or(300),
    )
}

impl SerialEcg {
    pub fn from_env() -> Option<Self> {
        Some(Self {
            port: var("YILIAN_HW_SERIAL_ECG")?.into(),
            protocol: var("YILIAN_HW_SERIAL_ECG_PROTOCOL").unwrap_or_else(|| "raw".into()),
            baud: var("YILIAN_HW_SERIAL_ECG_BAUD")
                .and_then(|v| v.parse().ok())
                .unwrap_or(9600),
        })
    }

    pub fn gateway_toml(&self) -> String {
        format!(
            "\n[[ecg_serial]]\nname = \"cart\"\nport = {:?}\nprotocol = {:?}\nbaud = {}\n",
            self.port.display().to_string(),
            self.protocol,
            self.baud
        )
    }
}

impl Astm {
    pub fn from_env() -> Option<Self> {
        Some(Self {
            port: var("YILIAN_HW_ASTM")?.into(),
            baud: var("YILIAN_HW_ASTM_BAUD")
                .and_then(|v| v.parse().ok())
                .unwrap_or(9600),
        })
    }

    pub fn gateway_toml(&self) -> String {
        format!(
            "\n[[astm]]\nname = \"analyzer\"\ntransport = \"serial\"\nport = {:?}\nbaud = {}\n",
            self.port.display().to_string(),
            self.baud
        )
    }
}

impl Modality {
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        let Some(v) = var("YILIAN_HW_MODALITY") else {
            return Ok(None);
        };
        let mut parts = v.rsplitn(3, ':');
        let (Some(aet), Some(port), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
            anyhow::bail!("YILIAN_HW_MODALITY={v}: expected host:port:AET");
        };
        Ok(Some(Self {
            host: host.to_owned(),
            port: port
                .parse()
                .map_err(|_| anyhow::anyhow!("YILIAN_HW_MODALITY={v}: bad port {port:?}"))?,
            ae_title: aet.to_owned(),
        }))
    }
}
