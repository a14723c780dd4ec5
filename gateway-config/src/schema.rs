//! `gateway.toml`: the sections, their defaults, and the checks that make
//! a parsed file a valid configuration.

use crate::loading::{ConfigError, MetricsSection, from_toml, read_file};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::serial::{FlowControl, Parity, SerialSettings};
use crate::units::{ByteSize, Offset, Rate, Window};
use yilian_spool::{Lane, SpoolConfig};

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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolSection {
    #[serde(default = "default_spool_dir")]
    pub dir: PathBuf,
    /// What the spool may hold, e.g. "20 GiB" (`quota_bytes`, a number of
    /// bytes, is read too). Capped at run time by what the spool's
    /// filesystem can hold.
    #[serde(default = "default_quota", alias = "quota_bytes")]
    pub quota: ByteSize,
    /// Space kept in a reserve file and released when the disk runs out,
    /// so the box can still open its spool and deliver its backlog.
    #[serde(default = "default_reserve")]
    pub reserve: ByteSize,
    #[serde(default = "default_high")]
    pub high_watermark: f64,
    #[serde(default = "default_low")]
    pub low_watermark: f64,
    /// How long delivered items are kept, e.g. "7d".
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
    /// Rejections by central before an item is set aside for an operator.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

impl Default for SpoolSection {
    fn default() -> Self {
        Self {
            dir: default_spool_dir(),
            quota: default_quota(),
            reserve: default_reserve(),
            high_watermark: default_high(),
            low_watermark: default_low(),
            retention: default_retention(),
            max_attempts: default_max_attempts(),
        }
    }
}

fn default_spool_dir() -> PathBuf {
    Path::new(STATE_DIR).join("spool")
}

/// The box's identity: its private key, certificate chain and the fleet
/// CA, written by `enroll` and replaced by every renewal. It belongs in
/// the state directory (the configuration directory is read-only to the
/// service), owned by the service user.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySection {
    #[serde(default = "default_identity_dir")]
    pub dir: PathBuf,
}

impl Default for IdentitySection {
    fn default() -> Self {
        Self {
            dir: default_identity_dir(),
        }
    }
}

fn default_identity_dir() -> PathBuf {
    Path::new(STATE_DIR).join("identity")
}

fn default_quota() -> ByteSize {
    ByteSize(20 * 1024 * 1024 * 1024)
}
fn default_reserve() -> ByteSize {
    ByteSize(32 * 1024 * 1024)
}
fn default_high() -> f64 {
    0.95
}
fn default_low() -> f64 {
    0.85
}
fn default_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_max_attempts() -> u32 {
    8
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkSection {
    /// `host:port` of central; resolved again at every reconnect. Empty in
    /// the file: the address `enroll` recorded with the box's identity.
    #[serde(default)]
    pub central: String,
    /// Name in central's certificate; defaults to the host part of `central`.
    pub server_name: Option<String>,
    /// Fixed TLS files (a bench or a lab). Without them the box uses the
    /// identity that `enroll` wrote and renewals replace.
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Uploads in flight at once (urgent items get two more slots).
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    #[serde(
        default = "default_chunk",
        deserialize_with = "crate::units::de_size_usize"
    )]
    pub chunk_size: usize,
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Declare the link dead after this much silence (QUIC idle timeout).
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// Longest wait between reconnect attempts.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Congestion controller for uploads: `bbr` (default) or `cubic`.
    #[serde(default)]
    pub congestion: crate::Congestion,
    /// Cap outside every schedule window (see the gateway's bandwidth schedules).
    #[serde(default = "unlimited")]
    pub rate_limit: Rate,
    #[serde(default)]
    pub schedule: Vec<Window>,
    /// The clinic's clock, for the schedule.
    #[serde(default)]
    pub utc_offset: Offset,
    /// Bytes per hour urgent items may send beyond the cap.
    #[serde(default = "default_urgent_allowance")]
    pub urgent_allowance: ByteSize,
}

impl Default for UplinkSection {
    fn default() -> Self {
        Self {
            central: String::new(),
            server_name: None,
            ca: None,
            cert: None,
            key: None,
            max_in_flight: default_in_flight(),
            chunk_size: default_chunk(),
            heartbeat_interval: default_heartbeat(),
            idle_timeout: None,
            reconnect_max: default_backoff_max(),
            congestion: crate::Congestion::default(),
            rate_limit: unlimited(),
            schedule: Vec::new(),
            utc_offset: Offset::default(),
            urgent_allowance: default_urgent_allowance(),
        }
    }
}

fn unlimited() -> Rate {
    Rate(None)
}
fn default_urgent_allowance() -> ByteSize {
    // A few hundred STAT ECGs an hour; a CT study marked urgent would
    // spend it and fall back under the cap.
    ByteSize(50_000_000)
}

fn default_in_flight() -> usize {
    4
}
fn default_chunk() -> usize {
    yilian_protocol::upload::DEFAULT_CHUNK_SIZE
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(15)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(60)
}

/// What happens to a file once it is safely in the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AfterIntake {
    Delete,
    Archive,
}

/// A drop folder that clinic equipment writes files into.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FolderSection {
    /// Device name for metrics and listings, e.g. "ecg-share".
    pub name: String,
    pub path: PathBuf,
    /// Lane for routine items; STAT ECGs always go on `urgent`. Defaults to
    /// `clinical` for an ECG folder and `bulk` otherwise.
    #[serde(default, deserialize_with = "de_lane_opt")]
    pub lane: Option<Lane>,
    /// `ecg`: an ECG cart's folder, where anything that is not a readable
    /// ECG or ECG report is quarantined. `files` (default): anything.
    #[serde(default)]
    pub profile: crate::Profile,
    /// A file is taken once its size and mtime have not changed for this long.
    #[serde(default = "default_settle", with = "humantime_serde")]
    pub settle: Duration,
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    #[serde(default = "default_after")]
    pub after: AfterIntake,
    /// Required with `after = "archive"`.
    pub archive_dir: Option<PathBuf>,
    /// Make the folder when it is missing. Off by default: a folder that
    /// does not exist is usually a typo, and a folder made for it would be
    /// watched while the device writes somewhere else.
    #[serde(default)]
    pub create: bool,
}

impl FolderSection {
    /// The lane for routine items from this folder.
    pub fn lane(&self) -> Lane {
        self.lane.unwrap_or(match self.profile {
            crate::Profile::Ecg => Lane::Clinical,
            crate::Profile::Files => Lane::Bulk,
        })
    }
}

/// An HL7 v2 listener (MLLP over TCP) for a clinic LIS or analyzers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hl7Section {
    /// Device name in metrics and listings, e.g. "lab-lis".
    pub name: String,
    pub listen: SocketAddr,
    #[serde(default = "default_clinical", deserialize_with = "de_lane")]
    pub lane: Lane,
    /// Results with a critical abnormal flag (OBX-8 HH, LL or AA) go on the
    /// urgent lane.
    #[serde(default = "default_true")]
    pub urgent_on_critical: bool,
    #[serde(
        default = "default_max_message",
        deserialize_with = "crate::units::de_size_usize"
    )]
    pub max_message_bytes: usize,
    /// Connections served at once.
    #[serde(default = "default_connections")]
    pub max_connections: usize,
    /// Connections from one address at once; the senders in `[[hl7.peer]]`
    /// are never locked out by others.
    #[serde(default = "default_per_peer")]
    pub max_connections_per_peer: usize,
    /// Close a connection silent for this long.
    #[serde(default = "default_idle", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Settings for particular senders, by IP address.
    #[serde(default)]
    pub peer: Vec<Hl7Peer>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hl7Peer {
    pub address: std::net::IpAddr,
    /// Charset when MSH-18 is empty: "utf-8", "gb18030" (also GBK) or "8859/1".
    pub charset: Option<String>,
    /// Send a commit ACK even when MSH-15/16 say NE/NE (senders that block
    /// waiting for one anyway).
    #[serde(default)]
    pub force_ack: bool,
    #[serde(default, deserialize_with = "de_opt_lane")]
    pub lane: Option<Lane>,
}

/// How an analyzer is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AstmTransport {
    Serial,
    /// The gateway listens; the analyzer connects.
    TcpServer,
    /// The analyzer listens; the gateway connects.
    TcpClient,
}

/// Whether the analyzer runs the E1381 low-level protocol (ENQ, frames,
/// ACK, EOT) or sends bare E1394 records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AstmFraming {
    E1381,
    Bare,
}

/// A laboratory analyzer speaking ASTM E1381/E1394.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AstmSection {
    pub name: String,
    pub transport: AstmTransport,
    #[serde(default = "default_framing")]
    pub framing: AstmFraming,
    /// Serial: the port, preferably `/dev/serial/by-id/...`.
    pub port: Option<PathBuf>,
    #[serde(default = "default_baud")]
    pub baud: u32,
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    #[serde(default = "default_parity")]
    pub parity: Parity,
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    #[serde(default = "default_flow")]
    pub flow_control: FlowControl,
    /// TCP server: where to listen.
    pub listen: Option<SocketAddr>,
    /// TCP client: the analyzer's address.
    pub connect: Option<String>,
    #[serde(default = "default_clinical", deserialize_with = "de_lane")]
    pub lane: Lane,
    /// Charset of the records: "utf-8", "gb18030" (GBK) or "8859/1".
    #[serde(default = "default_astm_charset")]
    pub charset: String,
    #[serde(
        default = "default_max_frame",
        deserialize_with = "crate::units::de_size_usize"
    )]
    pub max_frame_bytes: usize,
    /// Receiver interrupt (EOT instead of ACK): "ack" treats it as ACK,
    /// "finish" completes the message and then holds off.
    #[serde(default = "default_interrupt")]
    pub on_interrupt: String,
}

impl AstmSection {
    pub fn serial(&self) -> SerialSettings {
        SerialSettings {
            baud: self.baud,
            data_bits: self.data_bits,
            parity: self.parity,
            stop_bits: self.stop_bits,
            flow_control: self.flow_control,
        }
    }
}

/// A DICOM node the clinic's modalities store to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DicomSection {
    /// Device name in metrics and listings.
    pub name: String,
    pub listen: SocketAddr,
    /// Our AE title; modalities are configured to call it.
    #[serde(default = "default_ae_title")]
    pub ae_title: String,
    /// Largest PDU we accept (the modality may send smaller ones).
    #[serde(default = "default_max_pdu")]
    pub max_pdu: u32,
    #[serde(default = "default_max_associations")]
    pub max_associations: usize,
    /// Associations from one address at once. Modalities listed with an
    /// `address` are never locked out by unknown callers.
    #[serde(default = "default_associations_per_peer")]
    pub max_associations_per_peer: usize,
    /// An association silent this long is aborted.
    #[serde(default = "default_dicom_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Lane for instances from callers without their own.
    #[serde(default = "default_bulk", deserialize_with = "de_lane")]
    pub lane: Lane,
    /// Calling AE titles allowed; empty: any caller. A caller not listed
    /// is rejected with "calling AE title not recognized".
    #[serde(default)]
    pub allowed: Vec<DicomPeer>,
}

/// A modality allowed to call, with its own lane (an ECG cart: clinical).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DicomPeer {
    pub ae_title: String,
    #[serde(default, deserialize_with = "de_lane_opt")]
    pub lane: Option<Lane>,
    /// `host:port` where the modality listens, for storage commitment
    /// results sent after it has released its association.
    pub address: Option<String>,
}

fn default_ae_title() -> String {
    "YILIAN".into()
}
fn default_max_pdu() -> u32 {
    65536
}
fn default_max_associations() -> usize {
    8
}
fn default_associations_per_peer() -> usize {
    4
}
fn default_dicom_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_bulk() -> Lane {
    Lane::Bulk
}

/// How an ECG cart sends over its serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EcgSerialProtocol {
    /// Bare SCP-ECG records, framed by their own length.
    Raw,
    /// Files by XMODEM (128 or 1K blocks, CRC or checksum).
    Xmodem,
    /// Files by YMODEM batch.
    Ymodem,
}

/// An ECG cart on a serial line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EcgSerialSection {
    pub name: String,
    /// Preferably `/dev/serial/by-id/...`.
    pub port: PathBuf,
    pub protocol: EcgSerialProtocol,
    #[serde(default = "default_baud")]
    pub baud: u32,
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    #[serde(default = "default_parity")]
    pub parity: Parity,
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    #[serde(default = "default_flow")]
    pub flow_control: FlowControl,
    /// Lane for routine ECGs; STAT ones always go on `urgent`.
    #[serde(default = "default_clinical", deserialize_with = "de_lane")]
    pub lane: Lane,
    /// Raw protocol: a record still incomplete after the line has been
    /// quiet this long is given up (and quarantined).
    #[serde(default = "default_quiet", with = "humantime_serde")]
    pub quiet_time: Duration,
    #[serde(
        default = "default_max_record",
        deserialize_with = "crate::units::de_size_usize"
    )]
    pub max_record_bytes: usize,
}

impl EcgSerialSection {
    pub fn serial(&self) -> SerialSettings {
        SerialSettings {
            baud: self.baud,
            data_bits: self.data_bits,
            parity: self.parity,
            stop_bits: self.stop_bits,
            flow_control: self.flow_control,
        }
    }
}

fn default_quiet() -> Duration {
    Duration::from_secs(3)
}
fn default_max_record() -> usize {
    16 * 1024 * 1024
}

fn default_framing() -> AstmFraming {
    AstmFraming::E1381
}
fn default_baud() -> u32 {
    9600
}
fn default_data_bits() -> u8 {
    8
}
fn default_parity() -> Parity {
    Parity::None
}
fn default_stop_bits() -> u8 {
    1
}
fn default_flow() -> FlowControl {
    FlowControl::None
}
fn default_astm_charset() -> String {
    "utf-8".into()
}
fn default_max_frame() -> usize {
    64 * 1024
}
fn default_interrupt() -> String {
    "ack".into()
}

fn default_clinical() -> Lane {
    Lane::Clinical
}
fn default_true() -> bool {
    true
}
fn default_max_message() -> usize {
    16 * 1024 * 1024
}
fn default_connections() -> usize {
    64
}
fn default_per_peer() -> usize {
    8
}
fn default_idle() -> Duration {
    Duration::from_secs(600)
}

fn de_opt_lane<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Lane>, D::Error> {
    de_lane(d).map(Some)
}

fn default_settle() -> Duration {
    Duration::from_secs(2)
}
fn default_poll() -> Duration {
    Duration::from_millis(500)
}
fn default_after() -> AfterIntake {
    AfterIntake::Delete
}

fn de_lane<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Lane, D::Error> {
    let s = String::deserialize(d)?;
    parse_lane(&s).ok_or_else(|| {
        serde::de::Error::custom(format!("unknown lane {s:?}: use urgent, clinical or bulk"))
    })
}

fn check_serial(s: &SerialSettings) -> Result<(), (&'static str, String)> {
    if !(5..=8).contains(&s.data_bits) {
        return Err(("data_bits", "must be 5 to 8".into()));
    }
    if !(1..=2).contains(&s.stop_bits) {
        return Err(("stop_bits", "must be 1 or 2".into()));
    }
    if s.baud == 0 {
        return Err(("baud", "must be positive".into()));
    }
    Ok(())
}

fn de_lane_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Lane>, D::Error> {
    de_lane(d).map(Some)
}

pub fn parse_lane(s: &str) -> Option<Lane> {
    match s {
        "urgent" => Some(Lane::Urgent),
        "clinical" => Some(Lane::Clinical),
        "bulk" => Some(Lane::Bulk),
        _ => None,
    }
}

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
        // Two of the box's own listeners on one port: the second would fail
        // to bind at start; say so now, naming both.
        let mut listeners: Vec<(String, SocketAddr)> =
            vec![("metrics.listen".to_owned(), c.metrics.listen)];
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
            if let Some((other, _)) = listeners[..j].iter().find(|(_, a)| {
                a.port() == addr.port()
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
