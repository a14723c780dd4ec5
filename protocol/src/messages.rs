//! The wire schema.
//!
//! Written as prost derives instead of generated from a `.proto` file so that
//! building needs no `protoc`; the encoding is plain protobuf and the tags
//! below are the contract. Rules for evolving it: never reuse or renumber a
//! tag, add new fields as optional, add new messages as new `Body` variants.
//! Old peers skip unknown fields, and an [`Envelope`] whose body they do not
//! know decodes with `body == None`, which receivers ignore.

use std::collections::BTreeMap;

/// One message on any stream of the link.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Envelope {
    #[prost(
        oneof = "envelope::Body",
        tags = "1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 20, 21, 22, 23, 24"
    )]
    pub body: Option<envelope::Body>,
}

pub mod envelope {
    use super::*;

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Body {
        #[prost(message, tag = "1")]
        Hello(Hello),
        #[prost(message, tag = "2")]
        HelloAck(HelloAck),
        #[prost(message, tag = "3")]
        Heartbeat(Heartbeat),
        #[prost(message, tag = "4")]
        HeartbeatAck(HeartbeatAck),
        #[prost(message, tag = "5")]
        Goodbye(Goodbye),
        #[prost(message, tag = "10")]
        Offer(Offer),
        #[prost(message, tag = "11")]
        Accept(Accept),
        #[prost(message, tag = "12")]
        Chunk(Chunk),
        #[prost(message, tag = "13")]
        Committed(Committed),
        #[prost(message, tag = "14")]
        Rejected(Rejected),
        #[prost(message, tag = "20")]
        EnrollRequest(EnrollRequest),
        #[prost(message, tag = "21")]
        CertificateResponse(CertificateResponse),
        #[prost(message, tag = "22")]
        RenewRequest(RenewRequest),
        #[prost(message, tag = "23")]
        AdminRequest(AdminRequest),
        #[prost(message, tag = "24")]
        AdminResponse(AdminResponse),
    }
}

impl Envelope {
    pub fn new(body: envelope::Body) -> Self {
        Self { body: Some(body) }
    }
}

/// First message of the control stream, gateway → central. Identity is not
/// in here on purpose: central takes it from the certificate.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Hello {
    #[prost(uint32, tag = "1")]
    pub protocol_min: u32,
    #[prost(uint32, tag = "2")]
    pub protocol_max: u32,
    #[prost(string, tag = "3")]
    pub software_version: String,
    #[prost(int64, tag = "4")]
    pub sent_unix_ms: i64,
    /// The box takes reports on streams central opens: the upload
    /// exchange mirrored ([`Offer`] of kind `report` from central, the box
    /// answers [`Committed`] only once the report is on its own stable
    /// storage). An older box does not, and central keeps its reports.
    #[prost(bool, tag = "5")]
    pub takes_reports: bool,
}

/// Central's answer to [`Hello`]: the version both sides will speak.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloAck {
    #[prost(uint32, tag = "1")]
    pub protocol_version: u32,
    #[prost(string, tag = "2")]
    pub central_version: String,
    #[prost(int64, tag = "3")]
    pub central_unix_ms: i64,
    /// The identity central read from the certificate, echoed for the
    /// gateway's logs and status page.
    #[prost(string, tag = "4")]
    pub identity: String,
}

/// Periodic liveness and state report, gateway → central.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Heartbeat {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(int64, tag = "2")]
    pub sent_unix_ms: i64,
    #[prost(message, repeated, tag = "3")]
    pub backlog: Vec<LaneBacklog>,
    /// The gateway's own metrics as OpenMetrics text (see
    /// [`crate::exposition`]); central re-exposes them with identity labels
    /// taken from the certificate.
    #[prost(string, tag = "4")]
    pub metrics_text: String,
    /// SHA-256 (hex) of the configuration the gateway runs.
    #[prost(string, tag = "5")]
    pub config_version: String,
    /// Expiry of the gateway's certificate, seconds since the epoch.
    #[prost(int64, tag = "6")]
    pub certificate_not_after: i64,
    /// Version of the modality worklist the gateway holds ("" for none).
    #[prost(string, tag = "7")]
    pub worklist_version: String,
    /// Version of the centrally published configuration the gateway runs
    /// ("" for none).
    #[prost(string, tag = "8")]
    pub pushed_config_version: String,
    /// The last published configuration the gateway refused, as
    /// `VERSION: reason` ("" when none was refused).
    #[prost(string, tag = "9")]
    pub pushed_config_error: String,
    /// Where reports reached the clinic (or failed to), until central
    /// answers that it recorded them.
    #[prost(message, repeated, tag = "10")]
    pub receipts: Vec<ReportReceipt>,
}

/// What became of a report at one of the clinic's sinks, gateway → central.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReportReceipt {
    #[prost(string, tag = "1")]
    pub report_id: String,
    /// The sink's name in the box's `[[report_sink]]`.
    #[prost(string, tag = "2")]
    pub sink: String,
    #[prost(int64, tag = "3")]
    pub at_unix_ms: i64,
    /// `delivered`, or `failed` (refused by the sink for good).
    #[prost(string, tag = "4")]
    pub outcome: String,
    #[prost(string, tag = "5")]
    pub detail: String,
}

impl ReportReceipt {
    /// The key central answers with in [`HeartbeatAck::receipts_recorded`].
    pub fn key(&self) -> String {
        format!("{}/{}", self.report_id, self.sink)
    }
}

/// Backlog of one lane at the time of a heartbeat.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LaneBacklog {
    #[prost(enumeration = "Lane", tag = "1")]
    pub lane: i32,
    #[prost(uint64, tag = "2")]
    pub items: u64,
    #[prost(uint64, tag = "3")]
    pub bytes: u64,
    #[prost(double, tag = "4")]
    pub oldest_age_seconds: f64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HeartbeatAck {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// The clinic's whole worklist, sent when the gateway's version is not
    /// central's: the gateway replaces its copy and answers modalities
    /// from it, also while the link is down.
    #[prost(message, optional, tag = "2")]
    pub worklist: Option<WorklistSnapshot>,
    /// Configuration published for this box at central, sent when the
    /// gateway neither runs nor has refused this version.
    #[prost(message, optional, tag = "3")]
    pub config: Option<ConfigPush>,
    /// Central's clock when it answered (ms since the epoch; 0 from an
    /// older central): the box compares its own, on which its certificates
    /// depend.
    #[prost(int64, tag = "4")]
    pub central_unix_ms: i64,
    /// Receipts of the heartbeat central recorded durably
    /// ([`ReportReceipt::key`]); the box stops sending those.
    #[prost(string, repeated, tag = "5")]
    pub receipts_recorded: Vec<String>,
}

/// Gateway configuration published centrally: a TOML fragment holding the
/// device sections and uplink tuning, which the box lays over its local
/// file after validating the result.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfigPush {
    #[prost(string, tag = "1")]
    pub version: String,
    #[prost(string, tag = "2")]
    pub toml: String,
}

/// First message of an enrollment stream, on a connection without a client
/// certificate: the single-use token and a CSR for the key the box made.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EnrollRequest {
    #[prost(string, tag = "1")]
    pub token: String,
    #[prost(string, tag = "2")]
    pub csr_pem: String,
}

/// Renewal of a box certificate. On a mutually authenticated connection the
/// identity is the connection's; on a connection without a certificate
/// (the box's certificate expired while it was offline) `expired_chain_pem`
/// is the old chain, and the CSR must be signed by its key.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RenewRequest {
    #[prost(string, tag = "1")]
    pub csr_pem: String,
    #[prost(string, tag = "2")]
    pub expired_chain_pem: String,
}

/// Central's answer to an enrollment or renewal.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CertificateResponse {
    /// The box certificate followed by the issuing CA ("" when refused).
    #[prost(string, tag = "1")]
    pub chain_pem: String,
    /// The fleet root CA.
    #[prost(string, tag = "2")]
    pub ca_pem: String,
    /// Why it was refused ("" when issued).
    #[prost(string, tag = "3")]
    pub error: String,
    /// The identity the certificate carries.
    #[prost(string, tag = "4")]
    pub identity: String,
}

/// A fleet administration command from `yilian-provision`, on a connection
/// authenticated by an admin certificate.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AdminRequest {
    /// e.g. `token.create`, `fleet.list`, `revoke`, `config.set`.
    #[prost(string, tag = "1")]
    pub command: String,
    /// The command's arguments as a JSON object.
    #[prost(string, tag = "2")]
    pub args_json: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AdminResponse {
    /// The result as JSON ("" when refused).
    #[prost(string, tag = "1")]
    pub result_json: String,
    #[prost(string, tag = "2")]
    pub error: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WorklistSnapshot {
    #[prost(string, tag = "1")]
    pub version: String,
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<WorklistEntry>,
}

/// One scheduled procedure step, with the attributes modalities query.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct WorklistEntry {
    #[prost(string, tag = "1")]
    pub accession_number: String,
    #[prost(string, tag = "2")]
    pub patient_id: String,
    /// DICOM PN (`Family^Given`, ideographic after `=`).
    #[prost(string, tag = "3")]
    pub patient_name: String,
    /// YYYYMMDD.
    #[prost(string, tag = "4")]
    pub patient_birth_date: String,
    #[prost(string, tag = "5")]
    pub patient_sex: String,
    #[prost(string, tag = "6")]
    pub requested_procedure_id: String,
    #[prost(string, tag = "7")]
    pub requested_procedure_description: String,
    #[prost(string, tag = "8")]
    pub study_instance_uid: String,
    #[prost(string, tag = "9")]
    pub modality: String,
    #[prost(string, tag = "10")]
    pub scheduled_station_ae_title: String,
    /// YYYYMMDD.
    #[prost(string, tag = "11")]
    pub scheduled_start_date: String,
    /// HHMMSS.
    #[prost(string, tag = "12")]
    pub scheduled_start_time: String,
    #[prost(string, tag = "13")]
    pub scheduled_procedure_step_id: String,
    #[prost(string, tag = "14")]
    pub scheduled_procedure_step_description: String,
    #[prost(string, tag = "15")]
    pub referring_physician: String,
}

/// Either side closes the control stream with a reason.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Goodbye {
    #[prost(string, tag = "1")]
    pub reason: String,
}

/// Opens an upload stream, gateway → central.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Offer {
    /// Stable for the life of the item on the gateway: the idempotency key
    /// together with the gateway identity.
    #[prost(string, tag = "1")]
    pub upload_id: String,
    /// SHA-256 of the whole payload.
    #[prost(bytes = "vec", tag = "2")]
    pub sha256: Vec<u8>,
    #[prost(uint64, tag = "3")]
    pub size: u64,
    /// What the payload is (`file`, `dicom`, `hl7`, `astm`, `scp-ecg`, ...).
    #[prost(string, tag = "4")]
    pub kind: String,
    #[prost(enumeration = "Lane", tag = "5")]
    pub lane: i32,
    #[prost(btree_map = "string, string", tag = "6")]
    pub metadata: BTreeMap<String, String>,
    /// When the gateway accepted the item from the device.
    #[prost(int64, tag = "7")]
    pub received_unix_ms: i64,
    /// Adapter and device that produced it, e.g. `folder:ecg-share`.
    #[prost(string, tag = "8")]
    pub source: String,
}

/// Central's answer to an [`Offer`]: it already holds `offset` bytes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Accept {
    #[prost(uint64, tag = "1")]
    pub offset: u64,
}

/// Payload bytes starting at `offset`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Chunk {
    #[prost(uint64, tag = "1")]
    pub offset: u64,
    #[prost(bytes = "bytes", tag = "2")]
    pub data: bytes::Bytes,
}

/// Central holds the item durably. Sent only after the blob and its index
/// row are on stable storage.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Committed {
    #[prost(string, tag = "1")]
    pub upload_id: String,
    #[prost(bytes = "vec", tag = "2")]
    pub sha256: Vec<u8>,
}

/// Central will not commit this upload.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Rejected {
    #[prost(string, tag = "1")]
    pub upload_id: String,
    #[prost(enumeration = "RejectReason", tag = "2")]
    pub reason: i32,
    #[prost(string, tag = "3")]
    pub detail: String,
    /// Whether sending the item again may succeed (e.g. after a hash
    /// mismatch caused by a torn partial file at central).
    #[prost(bool, tag = "4")]
    pub retryable: bool,
}

/// Priority lane of an item. Lower numeric value is more urgent on the wire
/// too, so that sorting by the raw value gives priority order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Lane {
    /// STAT ECGs, critical lab values.
    Urgent = 0,
    /// Routine ECG and lab.
    Clinical = 1,
    /// Imaging and everything large.
    Bulk = 2,
}

impl Lane {
    pub const ALL: [Lane; 3] = [Lane::Urgent, Lane::Clinical, Lane::Bulk];

    pub fn name(self) -> &'static str {
        match self {
            Lane::Urgent => "urgent",
            Lane::Clinical => "clinical",
            Lane::Bulk => "bulk",
        }
    }

    pub fn parse(s: &str) -> Option<Lane> {
        match s {
            "urgent" => Some(Lane::Urgent),
            "clinical" => Some(Lane::Clinical),
            "bulk" => Some(Lane::Bulk),
            _ => None,
        }
    }
}

impl std::fmt::Display for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, prost::Enumeration)]
#[repr(i32)]
pub enum RejectReason {
    Unspecified = 0,
    /// The received bytes do not hash to the offered SHA-256.
    HashMismatch = 1,
    /// The offer is malformed (bad hash length, zero-length id, ...).
    InvalidOffer = 2,
    /// Larger than central accepts.
    TooLarge = 3,
    /// Central cannot store right now (disk, database); try later.
    Unavailable = 4,
    /// The box is revoked or not allowed to upload.
    Forbidden = 5,
    /// The stream broke the upload protocol.
    ProtocolViolation = 6,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn unknown_body_decodes_as_none() {
        // Field 99, wire type 2 (length-delimited), 3 bytes: what a newer
        // peer's message we don't know looks like.
        let bytes = [0x9a, 0x06, 0x03, 1, 2, 3];
        let env = Envelope::decode(&bytes[..]).expect("unknown fields are skipped");
        assert_eq!(env.body, None);
    }

    #[test]
    fn unknown_field_inside_known_message_is_skipped() {
        let mut bytes =
            Envelope::new(envelope::Body::Accept(Accept { offset: 42 })).encode_to_vec();
        // Append, inside the Accept, an unknown varint field 9 = 1 by
        // rewriting the nested length.
        let mut inner = Accept { offset: 42 }.encode_to_vec();
        inner.extend_from_slice(&[0x48, 0x01]);
        bytes.clear();
        bytes.push(0x5a); // field 11, wire type 2
        bytes.push(inner.len() as u8);
        bytes.extend_from_slice(&inner);
        let env = Envelope::decode(&bytes[..]).expect("decodes");
        assert_eq!(
            env.body,
            Some(envelope::Body::Accept(Accept { offset: 42 }))
        );
    }

    #[test]
    fn lane_order_is_priority_order() {
        let mut lanes = vec![Lane::Bulk, Lane::Urgent, Lane::Clinical];
        lanes.sort();
        assert_eq!(lanes, Lane::ALL);
        for lane in Lane::ALL {
            assert_eq!(Lane::parse(lane.name()), Some(lane));
        }
    }
}
