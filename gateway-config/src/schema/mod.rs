//! `gateway.toml`: the sections, their defaults, and the checks that make
//! a parsed file a valid configuration.

//!
//! - [`spool`] — `[spool]` and `[identity]`: the box's disk;
//! - [`uplink`] — `[uplink]`: the link to central and its bandwidth;
//! - [`page`] — `[page]`: the box's own page for the technician;
//! - [`reports`] — `[[report_sink]]`: where reports from the hospital go;
//! - [`devices`] — the device sections: drop folders, HL7, ASTM, DICOM,
//!   serial ECG carts.

mod devices;
mod page;
mod reports;
mod spool;
mod uplink;

pub use devices::*;
pub use page::*;
pub use reports::*;
pub use spool::*;
pub use uplink::*;

use crate::loading::{ConfigError, MetricsSection, from_toml, read_file};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use yilian_spool::SpoolConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    #[serde(default)]
    pub spool: SpoolSection,
    #[serde(default)]
    pub uplink: UplinkSection,
    /// Where the box's key, certificate and fleet CA live.
    #[serde(default)]
    pub identity: IdentitySection,
    #[serde(default)]
    pub metrics: MetricsSection<9464>,
    /// The box's own page.
    #[serde(default)]
    pub page: PageSection,
    #[serde(default)]
    pub folder: Vec<FolderSection>,
    #[serde(default)]
    pub hl7: Vec<Hl7Section>,
    #[serde(default)]
    pub astm: Vec<AstmSection>,
    /// ECG carts on serial lines.
    #[serde(default)]
    pub ecg_serial: Vec<EcgSerialSection>,
    /// DICOM listeners for modalities (storage SCP).
    #[serde(default)]
    pub dicom: Vec<DicomSection>,
    /// Where reports from the hospital are delivered at the clinic.
    #[serde(default)]
    pub report_sink: Vec<ReportSinkSection>,
    /// The configuration's version, as metrics, `fleet list` and `fleet
    /// show` all show it: the first 12 hex digits of the SHA-256 of the
    /// text in force (the box's file with any published fragment).
    #[serde(skip)]
    pub version: String,
    /// The box's own file this was read from (published configuration is
    /// validated against it).
    #[serde(skip)]
    pub source: PathBuf,
}

/// The service's state directory: spool, identity, worklist and ledgers
/// live under it, writable by the service under its sandbox.
pub const STATE_DIR: &str = "/var/lib/yilian";

/// The version identifier of a configuration text (see
/// [`GatewayConfig::version`]); published fragments are named the same way.
pub fn version_of(text: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(text.as_bytes())[..6])
}

impl GatewayConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&read_file(path)?, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut c: GatewayConfig = from_toml(text, path)?;
        c.version = version_of(text);
        c.source = path.to_owned();
        let base = path.parent().unwrap_or(Path::new(".")).to_owned();
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut c.spool.dir);
        abs(&mut c.identity.dir);
        for p in [&mut c.uplink.ca, &mut c.uplink.cert, &mut c.uplink.key]
            .into_iter()
            .flatten()
        {
            abs(p);
        }
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            line: crate::locate::line_of(text, key),
            key: key.to_owned(),
            message,
        };
        let mut names = std::collections::HashSet::new();
        for (i, f) in c.folder.iter_mut().enumerate() {
            abs(&mut f.path);
            if let Some(a) = &mut f.archive_dir {
                abs(a);
            }
            if !names.insert(f.name.clone()) {
                return Err(invalid(
                    &format!("folder[{i}].name"),
                    format!("{:?} is used twice", f.name),
                ));
            }
            if f.after == AfterIntake::Archive && f.archive_dir.is_none() {
                return Err(invalid(
                    &format!("folder[{i}].archive_dir"),
                    "required when after = \"archive\"".into(),
                ));
            }
        }
        for (i, h) in c.hl7.iter().enumerate() {
            if !names.insert(h.name.clone()) {
                return Err(invalid(
                    &format!("hl7[{i}].name"),
                    format!("{:?} is used twice", h.name),
                ));
            }
            for (j, p) in h.peer.iter().enumerate() {
                if let Some(cs) = &p.charset
                    && yilian_codecs::hl7::Charset::from_label(cs).is_none()
                {
                    return Err(invalid(
                        &format!("hl7[{i}].peer[{j}].charset"),
                        format!("unknown charset {cs:?}: use utf-8, gb18030 or 8859/1"),
                    ));
                }
            }
        }
        for (i, a) in c.astm.iter().enumerate() {
            let key = |k: &str| format!("astm[{i}].{k}");
            if !names.insert(a.name.clone()) {
                return Err(invalid(&key("name"), format!("{:?} is used twice", a.name)));
            }
            match a.transport {
                AstmTransport::Serial if a.port.is_none() => {
                    return Err(invalid(
                        &key("port"),
                        "required with transport = \"serial\"".into(),
                    ));
                }
                AstmTransport::TcpServer if a.listen.is_none() => {
                    return Err(invalid(
                        &key("listen"),
                        "required with transport = \"tcp-server\"".into(),
                    ));
                }
                AstmTransport::TcpClient if a.connect.is_none() => {
                    return Err(invalid(
                        &key("connect"),
                        "required with transport = \"tcp-client\"".into(),
                    ));
                }
                _ => {}
            }
            check_serial(&a.serial()).map_err(|(k, m)| invalid(&key(k), m))?;
            if yilian_codecs::hl7::Charset::from_label(&a.charset).is_none() {
                return Err(invalid(
                    &key("charset"),
                    format!("unknown charset {:?}", a.charset),
                ));
            }
            if !matches!(a.on_interrupt.as_str(), "ack" | "finish") {
                return Err(invalid(
                    &key("on_interrupt"),
                    "use \"ack\" or \"finish\"".into(),
                ));
            }
        }
        for (i, d) in c.dicom.iter().enumerate() {
            let key = |k: &str| format!("dicom[{i}].{k}");
            if !names.insert(d.name.clone()) {
                return Err(invalid(&key("name"), format!("{:?} is used twice", d.name)));
            }
            let ae_ok = |t: &str| {
                !t.trim().is_empty()
                    && t.len() <= 16
                    && t.chars()
                        .all(|c| c.is_ascii() && !c.is_ascii_control() && c != '\\')
            };
            if !ae_ok(&d.ae_title) {
                return Err(invalid(
                    &key("ae_title"),
                    format!(
                        "{:?} is not an AE title (1 to 16 ASCII characters, no backslash)",
                        d.ae_title
                    ),
                ));
            }
            for (j, p) in d.allowed.iter().enumerate() {
                if !ae_ok(&p.ae_title) {
                    return Err(invalid(
                        &format!("dicom[{i}].allowed[{j}].ae_title"),
                        format!("{:?} is not an AE title", p.ae_title),
                    ));
                }
            }
            if !(4096..=1024 * 1024).contains(&d.max_pdu) {
                return Err(invalid(
                    &key("max_pdu"),
                    "must be between 4096 and 1048576".into(),
                ));
            }
            if d.max_associations == 0 {
                return Err(invalid(
                    &key("max_associations"),
                    "must be at least 1".into(),
                ));
            }
        }
        for (i, e) in c.ecg_serial.iter().enumerate() {
            let key = |k: &str| format!("ecg_serial[{i}].{k}");
            if !names.insert(e.name.clone()) {
                return Err(invalid(&key("name"), format!("{:?} is used twice", e.name)));
            }
            check_serial(&e.serial()).map_err(|(k, m)| invalid(&key(k), m))?;
            if !(1024..=256 * 1024 * 1024).contains(&e.max_record_bytes) {
                return Err(invalid(
                    &key("max_record_bytes"),
                    "must be between 1024 and 268435456".into(),
                ));
            }
        }
        let mut sinks = std::collections::HashSet::new();
        for (i, r) in c.report_sink.iter_mut().enumerate() {
            if let Some(d) = &mut r.dir {
                abs(d);
            }
            if let Some((k, m)) = r.problem() {
                return Err(invalid(&format!("report_sink[{i}].{k}"), m));
            }
            if !sinks.insert(r.name.clone()) {
                return Err(invalid(
                    &format!("report_sink[{i}].name"),
                    format!("{:?} is used twice", r.name),
                ));
            }
        }
        if let Some(problem) = c.page.pin_problem() {
            return Err(invalid("page.pin", problem.to_owned()));
        }
        // Two of the box's own listeners on one port: the second would fail
        // to bind at start; say so now, naming both.
        let mut listeners: Vec<(String, SocketAddr)> =
            vec![("metrics.listen".to_owned(), c.metrics.listen)];
        if c.page.enabled {
            listeners.push(("page.listen".to_owned(), c.page.listen));
        }
        listeners.extend(
            c.hl7
                .iter()
                .enumerate()
                .map(|(i, h)| (format!("hl7[{i}].listen"), h.listen)),
        );
        listeners.extend(
            c.astm
                .iter()
                .enumerate()
                .filter_map(|(i, a)| a.listen.map(|l| (format!("astm[{i}].listen"), l))),
        );
        listeners.extend(
            c.dicom
                .iter()
                .enumerate()
                .map(|(i, d)| (format!("dicom[{i}].listen"), d.listen)),
        );
        for (j, (key, addr)) in listeners.iter().enumerate() {
            // Port 0 asks the system for a free port: never a clash.
            if let Some((other, _)) = listeners[..j].iter().find(|(_, a)| {
                addr.port() != 0
                    && a.port() == addr.port()
                    && (a.ip() == addr.ip()
                        || a.ip().is_unspecified()
                        || addr.ip().is_unspecified())
            }) {
                return Err(invalid(
                    key,
                    format!(
                        "port {} is already used by {other} on this box; give each listener its own port",
                        addr.port()
                    ),
                ));
            }
        }
        c.spool_config()
            .validate()
            .map_err(|m| invalid("spool", m))?;
        if c.spool.reserve.0 < 1 << 20 {
            return Err(invalid(
                "spool.reserve",
                "must be at least \"1 MiB\": without it a full disk stops the box from opening its spool".into(),
            ));
        }
        if c.uplink.max_in_flight == 0 {
            return Err(invalid("uplink.max_in_flight", "must be at least 1".into()));
        }
        if !(4096..=1024 * 1024).contains(&c.uplink.chunk_size) {
            return Err(invalid(
                "uplink.chunk_size",
                "must be between 4096 and 1048576".into(),
            ));
        }
        if c.uplink.central.is_empty() {
            // Not in the file: the address recorded at enrollment, if the
            // box is enrolled (`start` says what to do when it is not).
            if let Some(e) = crate::record::Record::read(&c.identity_dir()) {
                c.uplink.central = e.central;
            }
        }
        if !c.uplink.central.is_empty() && c.uplink.central.rsplit_once(':').is_none() {
            return Err(invalid(
                "uplink.central",
                format!("{:?} is not HOST:PORT", c.uplink.central),
            ));
        }
        Ok(c)
    }

    pub fn spool_config(&self) -> SpoolConfig {
        let mut s = SpoolConfig::new(&self.spool.dir);
        s.quota_bytes = self.spool.quota.0;
        s.reserve_bytes = self.spool.reserve.0;
        s.high_watermark = self.spool.high_watermark;
        s.low_watermark = self.spool.low_watermark;
        s.retention = self.spool.retention;
        s.max_attempts = self.spool.max_attempts;
        s
    }

    /// The box's TLS files: those named in `[uplink]`, else the identity
    /// in `[identity] dir`.
    pub fn tls_files(&self) -> crate::TlsPaths {
        let dir = &self.identity.dir;
        crate::TlsPaths {
            ca: self.uplink.ca.clone().unwrap_or_else(|| dir.join("ca.pem")),
            cert: self
                .uplink
                .cert
                .clone()
                .unwrap_or_else(|| dir.join("gateway.pem")),
            key: self
                .uplink
                .key
                .clone()
                .unwrap_or_else(|| dir.join("gateway.key")),
        }
    }

    /// Where the box's certificate is, and its enrollment record beside it:
    /// `[identity] dir`, or the directory of a fixed `uplink.cert`.
    pub fn identity_dir(&self) -> PathBuf {
        self.tls_files()
            .cert
            .parent()
            .map_or_else(|| self.identity.dir.clone(), Path::to_path_buf)
    }

    /// The name to verify in central's certificate.
    pub fn server_name(&self) -> String {
        if let Some(n) = &self.uplink.server_name {
            return n.clone();
        }
        let host = self
            .uplink
            .central
            .rsplit_once(':')
            .map_or(self.uplink.central.as_str(), |(h, _)| h);
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use yilian_spool::Lane;

    const MINIMAL: &str = r#"
[spool]
dir = "spool"

[uplink]
central = "hub.example:4433"
ca = "ca.pem"
cert = "gateway.pem"
key = "gateway.key"

[[folder]]
name = "ecg-share"
path = "/srv/drop"
lane = "clinical"
"#;

    #[test]
    fn two_listeners_on_one_port_clash_but_port_zero_never_does() {
        let path = Path::new("/etc/yilian/gateway.toml");
        let clash = format!("{MINIMAL}\n[metrics]\nlisten = \"127.0.0.1:8080\"\n");
        let e = GatewayConfig::parse(&clash, path).expect_err("the page's default port");
        assert!(
            e.to_string()
                .contains("page.listen: port 8080 is already used by metrics.listen"),
            "{e}"
        );
        let ephemeral = format!(
            "{MINIMAL}\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n[page]\nlisten = \"127.0.0.1:0\"\n"
        );
        GatewayConfig::parse(&ephemeral, path).expect("port 0 is the system's choice");
    }

    #[test]
    fn minimal_config_with_defaults() {
        let c =
            GatewayConfig::parse(MINIMAL, Path::new("/etc/yilian/gateway.toml")).expect("valid");
        assert_eq!(c.spool.dir, Path::new("/etc/yilian/spool"));
        assert_eq!(c.server_name(), "hub.example");
        assert_eq!(c.folder[0].lane(), Lane::Clinical);
        assert_eq!(c.folder[0].settle, Duration::from_secs(2));
        assert_eq!(c.metrics.listen.to_string(), "127.0.0.1:9464");
    }

    #[test]
    fn errors_name_file_key_and_line() {
        let bad = MINIMAL.replace("lane = \"clinical\"", "lane = \"stat\"");
        let e = GatewayConfig::parse(&bad, Path::new("/etc/yilian/gateway.toml"))
            .expect_err("bad lane");
        let m = e.to_string();
        assert!(
            m.contains("gateway.toml") && m.contains("stat") && m.contains("line 14"),
            "{m}"
        );

        let bad = MINIMAL.replace("[uplink]", "[uplink]\ncentrall = 1");
        let m = GatewayConfig::parse(&bad, Path::new("g.toml"))
            .expect_err("unknown key")
            .to_string();
        assert!(m.contains("centrall") && m.contains("line 6"), "{m}");

        let bad = MINIMAL.replace("lane = \"clinical\"", "after = \"archive\"");
        let m = GatewayConfig::parse(&bad, Path::new("g.toml"))
            .expect_err("archive dir")
            .to_string();
        assert!(m.contains("folder[0].archive_dir"), "{m}");
    }

    #[test]
    fn two_listeners_on_one_port_are_refused_with_both_named() {
        let text = format!(
            "{MINIMAL}\n[[hl7]]\nname = \"lab\"\nlisten = \"0.0.0.0:2575\"\n\n[[dicom]]\nname = \"dr\"\nlisten = \"127.0.0.1:2575\"\n"
        );
        let m = GatewayConfig::parse(&text, Path::new("g.toml"))
            .expect_err("clash")
            .to_string();
        assert!(
            m.contains("dicom[0].listen") && m.contains("hl7[0].listen") && m.contains("line 22"),
            "{m}"
        );
        let text = format!(
            "{MINIMAL}\n[metrics]\nlisten = \"127.0.0.1:9464\"\n\n[[hl7]]\nname = \"lab\"\nlisten = \"0.0.0.0:9464\"\n"
        );
        assert!(GatewayConfig::parse(&text, Path::new("g.toml")).is_err());
    }

    #[test]
    fn type_errors_speak_plainly() {
        let bad = MINIMAL.replace(
            "[[folder]]",
            "[[hl7]]\nname = \"lab\"\nlisten = \"0.0.0.0:99999\"\n\n[[folder]]",
        );
        let m = GatewayConfig::parse(&bad, Path::new("g.toml"))
            .expect_err("port")
            .to_string();
        assert!(m.contains("write IP:PORT") && m.contains("line 13"), "{m}");
        assert!(!m.contains("socket address syntax"), "{m}");
    }
}
