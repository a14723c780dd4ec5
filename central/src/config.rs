//! `central.toml`, parsed once at start-up into a validated type.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use yilian_gateway_config::MetricsSection;
use yilian_gateway_config::loading::{from_toml, read_file, relative_to};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CentralConfig {
    pub server: ServerSection,
    pub tls: TlsSection,
    /// Where the index lives (SQLite in `data_dir` unless told otherwise).
    #[serde(default)]
    pub store: crate::store::Backend,
    /// Where payloads live (`data_dir/blobs` unless told otherwise).
    #[serde(default)]
    pub blobs: crate::store::BlobBackend,
    #[serde(default)]
    pub metrics: MetricsSection<9465>,
    /// The hospital LIS that lab results (HL7 and ASTM items) go to.
    pub lis: Option<LisSection>,
    /// The ECG reading system's import directory.
    pub ecg: Option<EcgSection>,
    /// The hospital PACS that DICOM instances are forwarded to.
    pub pacs: Option<PacsSection>,
    /// Orders from the hospital RIS for the clinics' worklists.
    pub worklist: Option<WorklistSection>,
    /// Reports from the hospital's reading systems, back to the clinics.
    pub reports: Option<ReportsSection>,
    /// Enrollment and renewal of box certificates by central's issuing CA.
    pub enrollment: Option<EnrollmentSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentSection {
    /// The issuing CA (certificate and key) below the fleet root; the root
    /// key itself stays offline.
    pub issuing_cert: PathBuf,
    pub issuing_key: PathBuf,
    /// Lifetime of box certificates; boxes renew at two thirds of it.
    #[serde(default = "default_cert_lifetime", with = "humantime_serde")]
    pub certificate_lifetime: std::time::Duration,
    /// How long after expiry a box that was offline may still renew by
    /// proving its old key, instead of needing a new token.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub grace: std::time::Duration,
    /// The `host:port` boxes reach central at, written into tokens.
    pub public_address: Option<String>,
}

fn default_cert_lifetime() -> std::time::Duration {
    std::time::Duration::from_secs(7 * 24 * 3600)
}
fn default_grace() -> std::time::Duration {
    std::time::Duration::from_secs(30 * 24 * 3600)
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorklistSection {
    /// Where the RIS sends ORM^O01 / OMI^O23 over MLLP.
    pub hl7_listen: Option<SocketAddr>,
    /// RIS facility codes (MSH-6) to clinics, `CODE = "COUNTY/CLINIC"`.
    #[serde(default)]
    pub facilities: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportsSection {
    /// Where the RIS, LIS and ECG reading system send ORU^R01 / MDM^T02
    /// over MLLP.
    pub hl7_listen: Option<SocketAddr>,
    /// Facility codes (MSH-6) to clinics, `CODE = "COUNTY/CLINIC"`, for
    /// reports addressed to a clinic rather than to an item.
    #[serde(default)]
    pub facilities: std::collections::BTreeMap<String, String>,
    /// A folder reading systems export PDF or XML reports into.
    pub import_dir: Option<std::path::PathBuf>,
    /// Where the hospital PACS stores Structured Reports and Encapsulated
    /// PDF by C-STORE.
    pub dicom_listen: Option<SocketAddr>,
    /// Our AE title as the PACS calls it.
    #[serde(default = "default_calling_ae")]
    pub dicom_ae_title: String,
    /// Calling AE titles accepted at `dicom_listen`; empty accepts any.
    #[serde(default)]
    pub dicom_allowed: Vec<String>,
    /// The clinics' clock (`+08:00` by default), for a device acquisition
    /// time that came without its offset: the turnaround starts there.
    #[serde(default)]
    pub clinic_utc_offset: yilian_gateway_config::units::Offset,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PacsSection {
    /// `host:port` of the PACS's DICOM listener.
    pub address: String,
    /// The PACS's AE title.
    pub ae_title: String,
    /// Ours, as the PACS knows it.
    #[serde(default = "default_calling_ae")]
    pub calling_ae_title: String,
    #[serde(default = "default_pacs_timeout", with = "humantime_serde")]
    pub timeout: std::time::Duration,
    #[serde(default = "default_retry_base", with = "humantime_serde")]
    pub retry_base: std::time::Duration,
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub retry_max: std::time::Duration,
}

fn default_calling_ae() -> String {
    "YILIAN_HUB".into()
}
fn default_pacs_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(60)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcgSection {
    /// Where ECG files are written for the reading system to import.
    pub directory: PathBuf,
    /// Where quarantined items go; `<directory>/quarantine` by default.
    pub quarantine_directory: Option<PathBuf>,
    #[serde(default = "default_retry_base", with = "humantime_serde")]
    pub retry_base: std::time::Duration,
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub retry_max: std::time::Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LisSection {
    /// `host:port` of the LIS's MLLP listener.
    pub address: String,
    /// Resend (same MSH-10) when no ACK came within this.
    #[serde(default = "default_ack_timeout", with = "humantime_serde")]
    pub ack_timeout: std::time::Duration,
    /// First retry delay after AR/CR or a failed connection; doubles.
    #[serde(default = "default_retry_base", with = "humantime_serde")]
    pub retry_base: std::time::Duration,
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub retry_max: std::time::Duration,
    /// MSH-5/MSH-6 of messages converted from ASTM.
    #[serde(default = "default_lis_app")]
    pub receiving_application: String,
    #[serde(default)]
    pub receiving_facility: String,
}

fn default_ack_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(30)
}
fn default_retry_base() -> std::time::Duration {
    std::time::Duration::from_secs(5)
}
fn default_retry_max() -> std::time::Duration {
    std::time::Duration::from_secs(600)
}
fn default_lis_app() -> String {
    "LIS".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// UDP address of the QUIC listener.
    pub listen: SocketAddr,
    /// Where the index and the blobs live.
    pub data_dir: PathBuf,
    /// The hub's clock, for times in human listings.
    #[serde(default)]
    pub utc_offset: yilian_gateway_config::units::Offset,
    /// Largest single item accepted.
    #[serde(
        default = "default_max_upload",
        deserialize_with = "yilian_gateway_config::units::de_size_u64"
    )]
    pub max_upload_bytes: u64,
    /// An upload no box has added to for this long is dropped (a box
    /// reinstalled or retired mid-upload); a box that comes back later
    /// sends it again from the start.
    #[serde(default = "default_abandon", with = "humantime_serde")]
    pub abandon_partial_after: std::time::Duration,
}

fn default_abandon() -> std::time::Duration {
    std::time::Duration::from_secs(7 * 24 * 3600)
}

fn default_max_upload() -> u64 {
    8 * 1024 * 1024 * 1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The fleet CA certificate gateways chain to.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub use yilian_gateway_config::ConfigError;

impl CentralConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&read_file(path)?, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut config: CentralConfig = from_toml(text, path)?;
        // Relative paths are relative to the file, not the working directory.
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.server.data_dir,
            &mut config.tls.ca,
            &mut config.tls.cert,
            &mut config.tls.key,
        ] {
            relative_to(base, p);
        }
        if let Some(e) = &mut config.enrollment {
            relative_to(base, &mut e.issuing_cert);
            relative_to(base, &mut e.issuing_key);
        }
        if let Some(d) = config.reports.as_mut().and_then(|r| r.import_dir.as_mut()) {
            relative_to(base, d);
        }
        Ok(config)
    }

    /// The files the configuration names that are not there (certificate,
    /// key, issuing CA): each would stop central at start. For
    /// `check-config`, with the file, key and line.
    pub fn check_files(&self, path: &Path) -> Vec<ConfigError> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut files = vec![
            ("tls.ca", &self.tls.ca),
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
        ];
        if let Some(e) = &self.enrollment {
            files.push(("enrollment.issuing_cert", &e.issuing_cert));
            files.push(("enrollment.issuing_key", &e.issuing_key));
        }
        files
            .into_iter()
            .filter(|(_, p)| !p.exists())
            .map(|(key, p)| ConfigError::Invalid {
                path: path.to_owned(),
                line: yilian_gateway_config::locate::line_of(&text, key),
                key: key.to_owned(),
                message: format!(
                    "{} does not exist{}",
                    p.display(),
                    if key.starts_with("enrollment") {
                        " (make it with `yilian-provision ca issuing`)"
                    } else {
                        ""
                    }
                ),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = "[server]\nlisten = \"127.0.0.1:4433\"\ndata_dir = \"d\"\nlisen = 1\n[tls]\nca=\"a\"\ncert=\"b\"\nkey=\"c\"\n";
        let err = CentralConfig::parse(text, Path::new("/etc/yilian/central.toml"))
            .expect_err("unknown key");
        let msg = err.to_string();
        assert!(msg.contains("central.toml"), "{msg}");
        assert!(msg.contains("lisen"), "{msg}");
        assert!(msg.contains("line 4"), "{msg}");
    }

    #[test]
    fn relative_paths_follow_the_file() {
        let text = "[server]\nlisten = \"127.0.0.1:4433\"\ndata_dir = \"data\"\n[tls]\nca=\"ca.pem\"\ncert=\"/abs/c.pem\"\nkey=\"k\"\n";
        let c = CentralConfig::parse(text, Path::new("/srv/yc/central.toml")).expect("valid");
        assert_eq!(c.server.data_dir, Path::new("/srv/yc/data"));
        assert_eq!(c.tls.cert, Path::new("/abs/c.pem"));
    }

    #[test]
    fn check_config_names_a_missing_issuing_key_with_its_line() {
        let dir = tempfile::tempdir().expect("tmp");
        for f in ["ca.pem", "c.pem", "k", "issuing.pem"] {
            std::fs::write(dir.path().join(f), "x").expect("write");
        }
        let text = "[server]\nlisten = \"127.0.0.1:4433\"\ndata_dir = \"d\"\n[tls]\nca=\"ca.pem\"\ncert=\"c.pem\"\nkey=\"k\"\n[enrollment]\nissuing_cert = \"issuing.pem\"\nissuing_key = \"issuing.key\"\n";
        let path = dir.path().join("central.toml");
        std::fs::write(&path, text).expect("write");
        let c = CentralConfig::load(&path).expect("parses");
        let problems: Vec<String> = c
            .check_files(&path)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("line 10: enrollment.issuing_key")
                && problems[0].contains("ca issuing"),
            "{problems:?}"
        );
    }
}
