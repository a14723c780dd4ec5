//! Acknowledgements: which ones a message asks for (original or enhanced
//! mode, MSH-15/16) and building them.
//!
//! An ACK swaps sender and receiver (MSH-3/4 ← incoming MSH-5/6 and back),
//! carries `ACK^<trigger>^ACK`, a new control id, the incoming MSH-11, -12
//! and -18, and MSA-2 = the incoming MSH-10. Errors go in an ERR segment
//! (v2.5 and later: ERR-2 location, ERR-3 code from table 0357, ERR-4
//! severity; earlier versions: ERR-1).
//!
//! A positive acknowledgement (AA, or CA in enhanced mode) can only be
//! built from a [`Durable`] proof that the message is on stable storage:
//!
//! ```compile_fail
//! use yilian_codecs::hl7::{Message, Verdict, build_ack};
//! let m = Message::parse("MSH|^~\\&|A|B|C|D|1||ORU^R01|X|P|2.5.1\r").unwrap();
//! // `true` is not a proof that anything was stored.
//! let ack = build_ack(&m, Verdict::Stored(&true), "ACK1", "20260101");
//! ```

use yilian_proof::Durable;

use super::escape::escape;
use super::message::Message;

/// MSA-1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// Original mode: accepted.
    AA,
    /// Original mode: error in the message; the sender should fix it.
    AE,
    /// Original mode: rejected (unsupported or temporarily unable); the
    /// sender may retry.
    AR,
    /// Enhanced mode commit: stored safely.
    CA,
    /// Enhanced mode commit: error in the message.
    CE,
    /// Enhanced mode commit: rejected, may retry.
    CR,
}

impl AckCode {
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::AA => "AA",
            AckCode::AE => "AE",
            AckCode::AR => "AR",
            AckCode::CA => "CA",
            AckCode::CE => "CE",
            AckCode::CR => "CR",
        }
    }
}

/// MSH-15 / MSH-16 values (HL7 table 0155).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCondition {
    Always,
    Never,
    OnError,
    OnSuccess,
}

impl AckCondition {
    fn parse(v: &str) -> Option<AckCondition> {
        match v.trim() {
            "AL" => Some(AckCondition::Always),
            "NE" => Some(AckCondition::Never),
            "ER" => Some(AckCondition::OnError),
            "SU" => Some(AckCondition::OnSuccess),
            _ => None,
        }
    }

    /// Whether an acknowledgement is due for this outcome.
    pub fn sends(self, success: bool) -> bool {
        match self {
            AckCondition::Always => true,
            AckCondition::Never => false,
            AckCondition::OnError => !success,
            AckCondition::OnSuccess => success,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// MSH-15 and MSH-16 empty: one ACK, AA/AE/AR.
    Original,
    /// Commit ACK (CA/CE/CR) per `accept`, application ACK per `application`.
    Enhanced {
        accept: AckCondition,
        application: AckCondition,
    },
}

impl AckMode {
    /// The mode a message asks for. An unrecognised or empty MSH-15 in
    /// enhanced mode means "always", the safe reading.
    pub fn of(m: &Message) -> AckMode {
        let accept = m.get("MSH", 15, 1);
        let application = m.get("MSH", 16, 1);
        if accept.trim().is_empty() && application.trim().is_empty() {
            return AckMode::Original;
        }
        AckMode::Enhanced {
            accept: AckCondition::parse(accept).unwrap_or(AckCondition::Always),
            application: AckCondition::parse(application).unwrap_or(AckCondition::Always),
        }
    }
}

/// What went wrong, for the ERR segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorInfo {
    /// ERR-2 location, e.g. `MSH^1^12` or `OBX^1^5` (segment^sequence^field).
    pub location: String,
    /// Table 0357: 100 segment sequence error, 101 required field missing,
    /// 102 data type error, 200 unsupported message type, 201 unsupported
    /// event code, 202 unsupported processing id, 203 unsupported version id,
    /// 206 application record locked, 207 application internal error.
    pub code: u16,
    pub text: String,
    /// `E` error, `W` warning, `I` information.
    pub severity: char,
}

/// True for versions that carry errors in ERR-2..4 (2.5 and later).
fn modern_err(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    major > 2 || (major == 2 && minor >= 5)
}

/// What an acknowledgement says about a message.
#[derive(Clone, Copy)]
pub enum Verdict<'a> {
    /// On stable storage: AA (CA in enhanced mode). Only a durable store's
    /// proof makes this answer.
    Stored(&'a dyn Durable),
    /// The message is wrong and will stay wrong: AE (CE).
    Malformed(&'a ErrorInfo),
    /// Not taken now, or not supported: AR (CR); the sender may retry.
    Refused(&'a ErrorInfo),
}

impl std::fmt::Debug for Verdict<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Stored(p) => write!(f, "Stored({})", p.durable_id()),
            Verdict::Malformed(e) => write!(f, "Malformed({e:?})"),
            Verdict::Refused(e) => write!(f, "Refused({e:?})"),
        }
    }
}

impl Verdict<'_> {
    /// MSA-1 for a message in `mode`.
    pub fn code(&self, mode: AckMode) -> AckCode {
        let enhanced = matches!(mode, AckMode::Enhanced { .. });
        match (self, enhanced) {
            (Verdict::Stored(_), false) => AckCode::AA,
            (Verdict::Stored(_), true) => AckCode::CA,
            (Verdict::Malformed(_), false) => AckCode::AE,
            (Verdict::Malformed(_), true) => AckCode::CE,
            (Verdict::Refused(_), false) => AckCode::AR,
            (Verdict::Refused(_), true) => AckCode::CR,
        }
    }

    fn error(&self) -> Option<&ErrorInfo> {
        match self {
            Verdict::Stored(_) => None,
            Verdict::Malformed(e) | Verdict::Refused(e) => Some(e),
        }
    }
}

/// Builds the acknowledgement of `incoming` (segments joined with CR): the
/// code follows from the verdict and the ACK mode the message asked for.
pub fn build_ack(
    incoming: &Message,
    verdict: Verdict<'_>,
    control_id: &str,
    timestamp: &str,
) -> String {
    let code = verdict.code(AckMode::of(incoming));
    let error = verdict.error();
    let d = &incoming.delimiters;
    let f = d.field;
    let msh = incoming.msh();
    let trigger = incoming.get("MSH", 9, 2);
    let mut out = String::new();
    // MSH-1 and MSH-2, then fields 3..=18 (18 only when the message had one).
    out.push_str("MSH");
    out.push(f);
    out.push_str(&d.encoding_characters());
    let mut fields: Vec<String> = vec![
        msh.field(5).to_owned(),
        msh.field(6).to_owned(),
        msh.field(3).to_owned(),
        msh.field(4).to_owned(),
        timestamp.to_owned(),
        String::new(),
        format!("ACK{c}{trigger}{c}ACK", c = d.component),
        control_id.to_owned(),
        msh.field(11).to_owned(),
        msh.field(12).to_owned(),
    ];
    let charset = msh.field(18);
    if !charset.is_empty() {
        fields.extend(std::iter::repeat_n(String::new(), 5));
        fields.push(charset.to_owned());
    }
    for v in fields {
        out.push(f);
        out.push_str(&v);
    }
    out.push('\r');
    out.push_str("MSA");
    out.push(f);
    out.push_str(code.as_str());
    out.push(f);
    out.push_str(incoming.control_id());
    out.push('\r');
    if let Some(e) = error {
        let c = d.component;
        let text = escape(&e.text, d);
        if modern_err(incoming.version()) {
            out.push_str(&format!(
                "ERR{f}{f}{loc}{f}{code}{c}{text}{c}HL70357{f}{sev}\r",
                loc = e.location,
                code = e.code,
                sev = e.severity
            ));
        } else {
            out.push_str(&format!(
                "ERR{f}{loc}{c}{c}{code}{c}{text}\r",
                loc = e.location,
                code = e.code
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test plays a store.
    struct TestProof;
    impl Durable for TestProof {
        fn durable_id(&self) -> &str {
            "test"
        }
    }

    fn msg(extra_msh: &str) -> Message {
        Message::parse(&format!(
            "MSH|^~\\&|LIS|CLINIC01|HIS|HOSP|20240101121000||ORU^R01^ORU_R01|MSG00001|P|2.5.1{extra_msh}\rPID|1\r"
        ))
        .expect("parses")
    }

    #[test]
    fn original_mode_aa_matches_the_reference() {
        let m = msg("||||||UNICODE UTF-8");
        assert_eq!(AckMode::of(&m), AckMode::Original);
        let ack = build_ack(
            &m,
            Verdict::Stored(&TestProof),
            "ACK00001",
            "20240101121001",
        );
        assert_eq!(
            ack,
            "MSH|^~\\&|HIS|HOSP|LIS|CLINIC01|20240101121001||ACK^R01^ACK|ACK00001|P|2.5.1||||||UNICODE UTF-8\rMSA|AA|MSG00001\r"
        );
    }

    #[test]
    fn errors_in_err_segment_by_version() {
        let m = msg("");
        let e = ErrorInfo {
            location: "OBX^1^5".into(),
            code: 102,
            text: "Data type error".into(),
            severity: 'E',
        };
        let ack = build_ack(&m, Verdict::Malformed(&e), "A2", "20240101121001");
        assert!(
            ack.ends_with("MSA|AE|MSG00001\rERR||OBX^1^5|102^Data type error^HL70357|E\r"),
            "{ack}"
        );
        let old = Message::parse("MSH|^~\\&|A|B|C|D|20240101||ORU^R01|M9|P|2.3\r").expect("parses");
        let ack = build_ack(&old, Verdict::Refused(&e), "A3", "20240101");
        assert!(ack.ends_with("ERR|OBX^1^5^^102^Data type error\r"), "{ack}");
    }

    #[test]
    fn enhanced_mode_conditions() {
        let m = msg("|||AL|NE");
        assert_eq!(
            AckMode::of(&m),
            AckMode::Enhanced {
                accept: AckCondition::Always,
                application: AckCondition::Never
            }
        );
        assert!(AckCondition::OnError.sends(false) && !AckCondition::OnError.sends(true));
        assert!(AckCondition::OnSuccess.sends(true) && !AckCondition::OnSuccess.sends(false));
        assert!(!AckCondition::Never.sends(true));
    }

    /// The expected ACKs in the shared conformance samples, rebuilt from
    /// the messages they answer.
    #[test]
    fn conformance_acks_when_present() {
        let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/samples/synthetic/hl7");
        let Ok(expected) = std::fs::read_to_string(base.join("ACK_enhanced_CA.hl7")) else {
            return;
        };
        let Ok(incoming) = std::fs::read_to_string(base.join("ORU_R01_enhanced_AL_NE.hl7")) else {
            return;
        };
        let m = Message::parse(&incoming).expect("parses");
        let ack = build_ack(
            &m,
            Verdict::Stored(&TestProof),
            "ACK00003",
            "20240101121001",
        );
        assert_eq!(
            ack.trim_end_matches(['\r', '\n']),
            expected.trim_end_matches(['\r', '\n'])
        );
    }
}
