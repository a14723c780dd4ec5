//! A decoded HL7 v2 message: delimiters from MSH-1/2, segments, and access
//! to fields, repetitions and components (raw, still escaped; see
//! [`super::escape`]).
//!
//! Segment separators CR, LF and CRLF are all accepted (senders differ);
//! the parsed message keeps its original text for storage and forwarding.

/// The separators a message declares in MSH-1 and MSH-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    pub field: char,
    pub component: char,
    pub repetition: char,
    pub escape: Option<char>,
    pub subcomponent: char,
}

impl Default for Delimiters {
    fn default() -> Self {
        Self {
            field: '|',
            component: '^',
            repetition: '~',
            escape: Some('\\'),
            subcomponent: '&',
        }
    }
}

impl Delimiters {
    /// MSH-2 as it should be written back.
    pub fn encoding_characters(&self) -> String {
        let mut s = String::new();
        s.push(self.component);
        s.push(self.repetition);
        if let Some(e) = self.escape {
            s.push(e);
        }
        s.push(self.subcomponent);
        s
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Hl7Error {
    #[error("not an HL7 v2 message: it does not start with MSH")]
    NoMsh,
    #[error("MSH-1/MSH-2 do not declare usable delimiters")]
    BadDelimiters,
    #[error("required field {0} is empty")]
    Missing(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// `fields[0]` is the segment id. For MSH, `fields[1]` is MSH-1 (the
    /// field separator) and `fields[2]` MSH-2, so `fields[n]` is always
    /// field n.
    pub fields: Vec<String>,
}

impl Segment {
    pub fn id(&self) -> &str {
        self.fields.first().map_or("", String::as_str)
    }

    /// Field `n` (1-based), raw.
    pub fn field(&self, n: usize) -> &str {
        self.fields.get(n).map_or("", String::as_str)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub delimiters: Delimiters,
    pub segments: Vec<Segment>,
}

/// Most segments kept from one message; beyond is truncation, not a crash.
const MAX_SEGMENTS: usize = 100_000;

impl Message {
    pub fn parse(text: &str) -> Result<Message, Hl7Error> {
        let text = text.trim_start_matches(['\u{feff}', '\r', '\n', ' ', '\t']);
        let rest = text.strip_prefix("MSH").ok_or(Hl7Error::NoMsh)?;
        let mut chars = rest.chars();
        let field = chars.next().ok_or(Hl7Error::BadDelimiters)?;
        let enc: String = chars.take_while(|c| *c != field).collect();
        let enc: Vec<char> = enc.chars().collect();
        if field.is_alphanumeric() || field == '\r' || field == '\n' || enc.len() < 3 {
            return Err(Hl7Error::BadDelimiters);
        }
        let delimiters = if enc.len() >= 4 {
            Delimiters {
                field,
                component: enc[0],
                repetition: enc[1],
                escape: Some(enc[2]),
                subcomponent: enc[3],
            }
        } else {
            // Three characters: no escape character declared.
            Delimiters {
                field,
                component: enc[0],
                repetition: enc[1],
                escape: None,
                subcomponent: enc[2],
            }
        };
        let mut segments = Vec::new();
        for line in text
            .split(['\r', '\n'])
            .filter(|l| !l.trim().is_empty())
            .take(MAX_SEGMENTS)
        {
            let mut fields: Vec<String> = line.split(field).map(str::to_owned).collect();
            if fields.first().is_some_and(|id| id == "MSH") {
                // Re-number so that fields[1] is MSH-1 (the separator).
                fields.insert(1, field.to_string());
            }
            segments.push(Segment { fields });
        }
        Ok(Message {
            delimiters,
            segments,
        })
    }

    pub fn msh(&self) -> &Segment {
        // parse() guarantees the first segment is MSH.
        &self.segments[0]
    }

    /// The first segment with this id.
    pub fn segment(&self, id: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.id() == id)
    }

    /// Component `c` (1-based) of the first repetition of field `f` of the
    /// first segment `seg`, raw.
    pub fn get(&self, seg: &str, f: usize, c: usize) -> &str {
        let Some(s) = self.segment(seg) else {
            return "";
        };
        let field = s.field(f);
        let rep = field.split(self.delimiters.repetition).next().unwrap_or("");
        if seg == "MSH" && f <= 2 {
            return field;
        }
        rep.split(self.delimiters.component)
            .nth(c.saturating_sub(1))
            .unwrap_or("")
    }

    /// MSH-9 parts: (message code, trigger event, structure).
    pub fn message_type(&self) -> (&str, &str, &str) {
        (
            self.get("MSH", 9, 1),
            self.get("MSH", 9, 2),
            self.get("MSH", 9, 3),
        )
    }

    pub fn control_id(&self) -> &str {
        self.get("MSH", 10, 1)
    }

    pub fn version(&self) -> &str {
        self.get("MSH", 12, 1)
    }

    /// Checks the fields a receiver needs to answer at all.
    pub fn require_header(&self) -> Result<(), Hl7Error> {
        if self.message_type().0.is_empty() {
            return Err(Hl7Error::Missing("MSH-9"));
        }
        if self.control_id().is_empty() {
            return Err(Hl7Error::Missing("MSH-10"));
        }
        if self.version().is_empty() {
            return Err(Hl7Error::Missing("MSH-12"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORU: &str = "MSH|^~\\&|LIS|CLINIC01|HIS|HOSP|20240101121000||ORU^R01^ORU_R01|MSG00001|P|2.5.1|||AL|NE|CHN|UNICODE UTF-8\rPID|1||PID123^^^CLINIC01^MR||张^三||19800101|M\rOBX|1|NM|GLU^葡萄糖^L||5.6|mmol/L\r";

    #[test]
    fn fields_components_and_msh_numbering() {
        let m = Message::parse(ORU).expect("parses");
        assert_eq!(m.get("MSH", 1, 1), "|");
        assert_eq!(m.get("MSH", 2, 1), "^~\\&");
        assert_eq!(m.get("MSH", 3, 1), "LIS");
        assert_eq!(m.message_type(), ("ORU", "R01", "ORU_R01"));
        assert_eq!(m.control_id(), "MSG00001");
        assert_eq!(m.version(), "2.5.1");
        assert_eq!(m.get("MSH", 15, 1), "AL");
        assert_eq!(m.get("MSH", 18, 1), "UNICODE UTF-8");
        assert_eq!(m.get("PID", 5, 1), "张");
        assert_eq!(m.get("PID", 3, 4), "CLINIC01");
        assert_eq!(m.get("OBX", 3, 2), "葡萄糖");
        assert!(m.require_header().is_ok());
    }

    #[test]
    fn lf_and_crlf_separators_and_other_delimiters() {
        let lf = ORU.replace('\r', "\n");
        assert_eq!(Message::parse(&lf).expect("lf").segments.len(), 3);
        let crlf = ORU.replace('\r', "\r\n");
        assert_eq!(Message::parse(&crlf).expect("crlf").segments.len(), 3);
        let other = "MSH#$*@%#A#B\rPID#1##X$Y\r";
        let m = Message::parse(other).expect("custom delimiters");
        assert_eq!(m.delimiters.component, '$');
        assert_eq!(m.get("PID", 3, 2), "Y");
    }

    #[test]
    fn refuses_what_is_not_hl7() {
        assert_eq!(Message::parse("PID|1"), Err(Hl7Error::NoMsh));
        assert_eq!(Message::parse("MSH"), Err(Hl7Error::BadDelimiters));
        assert_eq!(Message::parse("MSH|^"), Err(Hl7Error::BadDelimiters));
        let m = Message::parse("MSH|^~\\&|A|B\r").expect("parses");
        assert_eq!(m.require_header(), Err(Hl7Error::Missing("MSH-9")));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,300}") {
            if let Ok(m) = Message::parse(&s) {
                let _ = m.message_type();
                let _ = m.get("PID", 5, 2);
                let _ = m.require_header();
            }
            let _ = Message::parse(&format!("MSH{s}"));
        }
    }
}
