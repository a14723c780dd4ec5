//! The small parts of DICOM both ends handle without a DICOM library:
//! DIMSE command sets (always Implicit VR Little Endian, a handful of
//! elements) and the Part 10 file meta header in front of a stored data
//! set. Data sets themselves are never re-encoded: bytes received are
//! bytes stored are bytes forwarded.

use yilian_proof::Durable;

/// Command Field values.
pub mod command {
    pub const C_STORE_RQ: u16 = 0x0001;
    pub const C_STORE_RSP: u16 = 0x8001;
    pub const C_FIND_RQ: u16 = 0x0020;
    pub const C_FIND_RSP: u16 = 0x8020;
    pub const C_ECHO_RQ: u16 = 0x0030;
    pub const C_ECHO_RSP: u16 = 0x8030;
    pub const C_CANCEL_RQ: u16 = 0x0FFF;
    pub const N_EVENT_REPORT_RQ: u16 = 0x0100;
    pub const N_EVENT_REPORT_RSP: u16 = 0x8100;
    pub const N_ACTION_RQ: u16 = 0x0130;
    pub const N_ACTION_RSP: u16 = 0x8130;
}

/// Largest command set accepted from a peer, all fragments together. Real
/// ones are a few hundred bytes; the bound keeps a peer that never sends
/// the last fragment from growing the buffer without end.
pub const MAX_COMMAND_SET: usize = 64 * 1024;

/// Command Data Set Type meaning "no data set follows".
pub const NO_DATASET: u16 = 0x0101;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DicomError {
    #[error("command set truncated at byte {0}")]
    Truncated(usize),
    #[error("command set lacks {0}")]
    Missing(&'static str),
    #[error("not a Part 10 file (no DICM at byte 128)")]
    NotPart10,
    #[error("file meta group malformed at byte {0}")]
    BadMeta(usize),
}

/// A DIMSE command set: the elements this project reads or writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Command {
    pub field: u16,
    pub affected_sop_class: String,
    pub affected_sop_instance: String,
    pub message_id: u16,
    pub message_id_responded: u16,
    pub priority: u16,
    pub data_set_type: u16,
    pub status: Option<u16>,
    pub error_comment: Option<String>,
    /// N-services: the SOP the request addresses.
    pub requested_sop_class: String,
    pub requested_sop_instance: String,
    /// N-EVENT-REPORT's Event Type ID.
    pub event_type: Option<u16>,
    /// N-ACTION's Action Type ID.
    pub action_type: Option<u16>,
}

const AFFECTED_SOP_CLASS: u32 = 0x0000_0002;
const REQUESTED_SOP_CLASS: u32 = 0x0000_0003;
const COMMAND_FIELD: u32 = 0x0000_0100;
const MESSAGE_ID: u32 = 0x0000_0110;
const MESSAGE_ID_RESPONDED: u32 = 0x0000_0120;
const PRIORITY: u32 = 0x0000_0700;
const DATA_SET_TYPE: u32 = 0x0000_0800;
const STATUS: u32 = 0x0000_0900;
const ERROR_COMMENT: u32 = 0x0000_0902;
const AFFECTED_SOP_INSTANCE: u32 = 0x0000_1000;
const REQUESTED_SOP_INSTANCE: u32 = 0x0000_1001;
const EVENT_TYPE: u32 = 0x0000_1002;
const ACTION_TYPE: u32 = 0x0000_1008;

/// Longest value accepted in a command set (UIDs are 64, comments 64).
const MAX_VALUE: usize = 1024;

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v)
        .trim_end_matches(['\0', ' '])
        .to_owned()
}

fn u16_of(v: &[u8]) -> Option<u16> {
    Some(u16::from_le_bytes([*v.first()?, *v.get(1)?]))
}

impl Command {
    pub fn has_dataset(&self) -> bool {
        self.data_set_type != NO_DATASET
    }

    /// Reads a command set.
    pub fn parse(bytes: &[u8]) -> Result<Self, DicomError> {
        let mut c = Command::default();
        let mut seen_field = false;
        let mut seen_type = false;
        let mut at = 0;
        while at < bytes.len() {
            let head = bytes.get(at..at + 8).ok_or(DicomError::Truncated(at))?;
            let group = u16::from_le_bytes([head[0], head[1]]);
            let element = u16::from_le_bytes([head[2], head[3]]);
            let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
            let tag = (u32::from(group) << 16) | u32::from(element);
            let start = at + 8;
            let end = start.checked_add(len).ok_or(DicomError::Truncated(at))?;
            let v = bytes.get(start..end).ok_or(DicomError::Truncated(at))?;
            if group != 0 {
                break; // not part of a command set
            }
            if len <= MAX_VALUE {
                match tag {
                    AFFECTED_SOP_CLASS => c.affected_sop_class = text(v),
                    COMMAND_FIELD => {
                        c.field = u16_of(v).ok_or(DicomError::Missing("Command Field"))?;
                        seen_field = true;
                    }
                    MESSAGE_ID => c.message_id = u16_of(v).unwrap_or(0),
                    MESSAGE_ID_RESPONDED => c.message_id_responded = u16_of(v).unwrap_or(0),
                    PRIORITY => c.priority = u16_of(v).unwrap_or(0),
                    DATA_SET_TYPE => {
                        c.data_set_type =
                            u16_of(v).ok_or(DicomError::Missing("Command Data Set Type"))?;
                        seen_type = true;
                    }
                    STATUS => c.status = u16_of(v),
                    ERROR_COMMENT => c.error_comment = Some(text(v)),
                    AFFECTED_SOP_INSTANCE => c.affected_sop_instance = text(v),
                    REQUESTED_SOP_CLASS => c.requested_sop_class = text(v),
                    REQUESTED_SOP_INSTANCE => c.requested_sop_instance = text(v),
                    EVENT_TYPE => c.event_type = u16_of(v),
                    ACTION_TYPE => c.action_type = u16_of(v),
                    _ => {}
                }
            }
            at = end;
        }
        if !seen_field {
            return Err(DicomError::Missing("Command Field"));
        }
        if !seen_type {
            return Err(DicomError::Missing("Command Data Set Type"));
        }
        Ok(c)
    }

    /// Writes the command set, group length first, elements in tag order.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(256);
        let mut put = |tag: u32, value: &[u8]| {
            body.extend_from_slice(&((tag >> 16) as u16).to_le_bytes());
            body.extend_from_slice(&(tag as u16).to_le_bytes());
            body.extend_from_slice(&(value.len() as u32).to_le_bytes());
            body.extend_from_slice(value);
        };
        // UIs pad with NUL, other strings with a space, to even length.
        let padded = |s: &str, pad: u8| {
            let mut v = s.as_bytes().to_vec();
            if v.len() % 2 == 1 {
                v.push(pad);
            }
            v
        };
        if !self.affected_sop_class.is_empty() {
            put(AFFECTED_SOP_CLASS, &padded(&self.affected_sop_class, 0));
        }
        if !self.requested_sop_class.is_empty() {
            put(REQUESTED_SOP_CLASS, &padded(&self.requested_sop_class, 0));
        }
        put(COMMAND_FIELD, &self.field.to_le_bytes());
        if self.field & 0x8000 == 0 {
            put(MESSAGE_ID, &self.message_id.to_le_bytes());
        } else {
            put(
                MESSAGE_ID_RESPONDED,
                &self.message_id_responded.to_le_bytes(),
            );
        }
        if self.field == command::C_STORE_RQ || self.field == command::C_FIND_RQ {
            put(PRIORITY, &self.priority.to_le_bytes());
        }
        put(DATA_SET_TYPE, &self.data_set_type.to_le_bytes());
        if let Some(s) = self.status {
            put(STATUS, &s.to_le_bytes());
        }
        if let Some(c) = &self.error_comment {
            let c: String = c.chars().filter(char::is_ascii).take(64).collect();
            put(ERROR_COMMENT, &padded(&c, b' '));
        }
        if !self.affected_sop_instance.is_empty() {
            put(
                AFFECTED_SOP_INSTANCE,
                &padded(&self.affected_sop_instance, 0),
            );
        }
        if !self.requested_sop_instance.is_empty() {
            put(
                REQUESTED_SOP_INSTANCE,
                &padded(&self.requested_sop_instance, 0),
            );
        }
        if let Some(e) = self.event_type {
            put(EVENT_TYPE, &e.to_le_bytes());
        }
        if let Some(a) = self.action_type {
            put(ACTION_TYPE, &a.to_le_bytes());
        }
        let mut out = Vec::with_capacity(body.len() + 12);
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&4u32.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// The Success answer to a C-STORE, which only a durable store's proof
    /// can build: the instance is on stable storage.
    ///
    /// ```compile_fail
    /// # use yilian_codecs::dicom::Command;
    /// # fn f(request: &Command) {
    /// request.stored_response(&0x0000u16); // a status is no proof
    /// # }
    /// ```
    pub fn stored_response(&self, _proof: &impl Durable) -> Command {
        self.respond(0x0000, None)
    }

    /// A response to `self` with `status`. A C-STORE is told Success only
    /// through [`Command::stored_response`]: asked for it here, it gets Out
    /// of Resources (0xA700), which a modality retries, and never a false
    /// success.
    pub fn response(&self, status: u16, comment: Option<&str>) -> Command {
        if self.field == command::C_STORE_RQ && status == 0x0000 {
            return self.respond(0xA700, Some("gateway could not confirm storage"));
        }
        self.respond(status, comment)
    }

    fn respond(&self, status: u16, comment: Option<&str>) -> Command {
        let or = |a: &String, b: &String| if a.is_empty() { b.clone() } else { a.clone() };
        Command {
            field: self.field | 0x8000,
            // N-service responses name in "affected" what the request
            // named in "requested".
            affected_sop_class: or(&self.affected_sop_class, &self.requested_sop_class),
            affected_sop_instance: or(&self.affected_sop_instance, &self.requested_sop_instance),
            action_type: self.action_type,
            event_type: self.event_type,
            message_id_responded: self.message_id,
            data_set_type: NO_DATASET,
            status: Some(status),
            error_comment: comment.map(str::to_owned),
            ..Command::default()
        }
    }
}

/// The Part 10 header of a stored instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part10 {
    pub sop_class: String,
    pub sop_instance: String,
    pub transfer_syntax: String,
    /// Where the data set starts.
    pub dataset_offset: usize,
}

/// Reads the file meta group (explicit VR little endian) at the start of
/// `head` (at least the preamble, `DICM` and the whole group).
pub fn read_part10(head: &[u8]) -> Result<Part10, DicomError> {
    if head.get(128..132) != Some(b"DICM") {
        return Err(DicomError::NotPart10);
    }
    let mut p = Part10 {
        sop_class: String::new(),
        sop_instance: String::new(),
        transfer_syntax: String::new(),
        dataset_offset: 0,
    };
    let mut at = 132;
    while let Some(h) = head.get(at..at + 8) {
        let group = u16::from_le_bytes([h[0], h[1]]);
        if group != 0x0002 {
            break;
        }
        let element = u16::from_le_bytes([h[2], h[3]]);
        let vr = &h[4..6];
        let (len, start) = if matches!(vr, b"OB" | b"OW" | b"OF" | b"SQ" | b"UT" | b"UN") {
            let l = head.get(at + 8..at + 12).ok_or(DicomError::BadMeta(at))?;
            (
                u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize,
                at + 12,
            )
        } else {
            (usize::from(u16::from_le_bytes([h[6], h[7]])), at + 8)
        };
        let end = start.checked_add(len).ok_or(DicomError::BadMeta(at))?;
        let v = head.get(start..end).ok_or(DicomError::BadMeta(at))?;
        match element {
            0x0002 => p.sop_class = text(v),
            0x0003 => p.sop_instance = text(v),
            0x0010 => p.transfer_syntax = text(v),
            _ => {}
        }
        at = end;
    }
    if p.transfer_syntax.is_empty() {
        return Err(DicomError::Missing("Transfer Syntax UID"));
    }
    p.dataset_offset = at;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_request_round_trips() {
        let rq = Command {
            field: command::C_STORE_RQ,
            affected_sop_class: "1.2.840.10008.5.1.4.1.1.2".into(),
            affected_sop_instance: "1.2.3.45".into(),
            message_id: 9,
            data_set_type: 0,
            ..Command::default()
        };
        let back = Command::parse(&rq.encode()).expect("parses");
        assert_eq!(back, rq);
        assert!(back.has_dataset());
        let rsp = rq.response(0xA700, Some("full"));
        let back = Command::parse(&rsp.encode()).expect("parses");
        assert_eq!(back.status, Some(0xA700));
        assert_eq!(back.message_id_responded, 9);
        assert_eq!(back.error_comment.as_deref(), Some("full"));
        assert!(!back.has_dataset());
    }

    #[test]
    fn an_n_action_round_trips_and_its_response_names_the_instance() {
        let rq = Command {
            field: command::N_ACTION_RQ,
            requested_sop_class: "1.2.840.10008.1.20.1".into(),
            requested_sop_instance: "1.2.840.10008.1.20.1.1".into(),
            message_id: 3,
            action_type: Some(1),
            data_set_type: 0,
            ..Command::default()
        };
        let back = Command::parse(&rq.encode()).expect("parses");
        assert_eq!(back, rq);
        let rsp = Command::parse(&back.response(0, None).encode()).expect("parses");
        assert_eq!(rsp.affected_sop_instance, "1.2.840.10008.1.20.1.1");
        assert_eq!(rsp.action_type, Some(1));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Command::parse(b"\x00\x00\x00\x01\xff\xff\xff\xff").is_err());
        assert!(Command::parse(b"").is_err());
        assert_eq!(read_part10(&[0u8; 200]), Err(DicomError::NotPart10));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = Command::parse(&data);
            let mut f = vec![0u8; 128];
            f.extend_from_slice(b"DICM\x02\x00");
            f.extend_from_slice(&data);
            let _ = read_part10(&f);
        }
    }
}
