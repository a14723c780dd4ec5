//! The device sections: drop folders, HL7 listeners, ASTM analyzers, DICOM
//! nodes and serial ECG carts, with their defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::serial::{FlowControl, Parity, SerialSettings};
use yilian_spool::Lane;

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
    /// `host:port` where this sender takes application ACKs (MSH-16 AL,
    /// ER or SU): the hospital LIS's answer to each of its results, sent
    /// when it comes back down from central.
    pub app_ack_address: Option<String>,
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

pub(super) fn check_serial(s: &SerialSettings) -> Result<(), (&'static str, String)> {
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
