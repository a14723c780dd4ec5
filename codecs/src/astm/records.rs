//! E1394 (LIS2) records: delimiters from the H record, fields, repeats,
//! components, escapes, the record hierarchy and the L termination code.
//!
//! Delimiters are whatever the H record declares in its first bytes
//! (`H|\^&` by default, but `H|@^\` and others exist): never assume them.
//! Messages are decoded to text before splitting, because GBK/GB18030 trail
//! bytes include `|`, `\`, `^` and `~`.

use crate::escapes::{Replacement, unescape_with};
use crate::hl7::Charset;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AstmDelimiters {
    pub field: char,
    pub repeat: char,
    pub component: char,
    pub escape: char,
}

impl Default for AstmDelimiters {
    fn default() -> Self {
        Self {
            field: '|',
            repeat: '\\',
            component: '^',
            escape: '&',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("the message does not start with an H record")]
    NoHeader,
    #[error("the H record does not declare four delimiters")]
    BadDelimiters,
    #[error("record {index} ({kind:?}) is out of place: {why}")]
    Hierarchy {
        index: usize,
        kind: char,
        why: &'static str,
    },
}

/// One record: its type letter and its fields (`fields[0]` is the type
/// field, so `fields[n]` is field n+1 in the standard's numbering... see
/// [`Record::field`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: char,
    pub fields: Vec<String>,
}

impl Record {
    /// Field `n` in the standard's 1-based numbering (field 1 is the type).
    pub fn field(&self, n: usize) -> &str {
        self.fields
            .get(n.saturating_sub(1))
            .map_or("", String::as_str)
    }

    /// Component `c` (1-based) of the first repeat of field `n`.
    pub fn component(&self, d: &AstmDelimiters, n: usize, c: usize) -> &str {
        let rep = self.field(n).split(d.repeat).next().unwrap_or("");
        rep.split(d.component)
            .nth(c.saturating_sub(1))
            .unwrap_or("")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AstmMessage {
    pub delimiters: AstmDelimiters,
    pub records: Vec<Record>,
}

/// Records kept from one message at most.
const MAX_RECORDS: usize = 100_000;

impl AstmMessage {
    /// Decodes record bytes (each record ending with CR; LF tolerated) in
    /// `charset` and splits them.
    pub fn parse(bytes: &[u8], charset: Charset) -> Result<AstmMessage, RecordError> {
        let (text, _) = match charset {
            Charset::Utf8 => (String::from_utf8_lossy(bytes).into_owned(), false),
            Charset::Gb18030 => {
                let (t, _, lossy) = encoding_rs::GB18030.decode(bytes);
                (t.into_owned(), lossy)
            }
            Charset::Latin1 => {
                let (t, _, lossy) = encoding_rs::WINDOWS_1252.decode(bytes);
                (t.into_owned(), lossy)
            }
        };
        Self::parse_text(&text)
    }

    pub fn parse_text(text: &str) -> Result<AstmMessage, RecordError> {
        let text = text.trim_start_matches(['\r', '\n', ' ']);
        // Some analyzers put the frame number in front of each record when
        // sending bare records over TCP; the H must come first either way.
        let h = text.strip_prefix('H').ok_or(RecordError::NoHeader)?;
        let mut chars = h.chars();
        let (Some(field), Some(repeat), Some(component), Some(escape)) =
            (chars.next(), chars.next(), chars.next(), chars.next())
        else {
            return Err(RecordError::BadDelimiters);
        };
        let set = [field, repeat, component, escape];
        if set
            .iter()
            .any(|c| c.is_alphanumeric() || *c == '\r' || *c == '\n')
            || (1..4).any(|i| set[..i].contains(&set[i]))
        {
            return Err(RecordError::BadDelimiters);
        }
        let delimiters = AstmDelimiters {
            field,
            repeat,
            component,
            escape,
        };
        let records = text
            .split(['\r', '\n'])
            .filter(|l| !l.trim().is_empty())
            .take(MAX_RECORDS)
            .map(|line| {
                let mut fields: Vec<String> = line.split(field).map(str::to_owned).collect();
                let kind = line.chars().next().unwrap_or(' ');
                if kind == 'H' {
                    // H's second field is the delimiter definition itself.
                    fields = std::iter::once("H".to_owned())
                        .chain(std::iter::once(line[1..].chars().skip(1).take(3).collect()))
                        .chain(line.split(field).skip(2).map(str::to_owned))
                        .collect();
                }
                Record { kind, fields }
            })
            .collect();
        Ok(AstmMessage {
            delimiters,
            records,
        })
    }

    /// The L record's termination code (field 3), if any.
    pub fn termination_code(&self) -> Option<&str> {
        self.records
            .iter()
            .rev()
            .find(|r| r.kind == 'L')
            .map(|r| r.field(3))
    }

    /// Checks the record hierarchy H → P → O → R (C and M anywhere after
    /// H, Q inside H…L, S allowed), ending with L.
    pub fn check_hierarchy(&self) -> Result<(), RecordError> {
        let mut level = 0u8; // 0 before H, 1 H, 2 P, 3 O, 4 R
        let mut ended = false;
        for (index, r) in self.records.iter().enumerate() {
            let bad = |why| RecordError::Hierarchy {
                index,
                kind: r.kind,
                why,
            };
            if ended {
                return Err(bad("a record after the L record"));
            }
            match r.kind {
                'H' if index == 0 => level = 1,
                'H' => return Err(bad("a second H record")),
                _ if level == 0 => return Err(bad("before the H record")),
                'P' => level = 2,
                'O' if level >= 2 => level = 3,
                'O' => return Err(bad("an order without a patient")),
                'R' if level >= 3 => level = 4,
                'R' => return Err(bad("a result without an order")),
                'C' | 'M' | 'Q' | 'S' => {}
                'L' => ended = true,
                _ => return Err(bad("an unknown record type")),
            }
        }
        if !ended {
            return Err(RecordError::Hierarchy {
                index: self.records.len(),
                kind: 'L',
                why: "the L record is missing",
            });
        }
        Ok(())
    }
}

/// Unescapes a field value with the message's escape character: `&F&`
/// field, `&S&` component, `&R&` repeat, `&E&` escape, `&Xhhhh&` hex;
/// anything else (`&Z…&`, `&H&`, unknown) passes through unchanged.
pub fn unescape(s: &str, d: &AstmDelimiters) -> String {
    unescape_with(s, d.escape, |seq| match seq {
        "F" => Some(Replacement::Char(d.field)),
        "S" => Some(Replacement::Char(d.component)),
        "R" => Some(Replacement::Char(d.repeat)),
        "E" => Some(Replacement::Char(d.escape)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &str = "H|\\^&|||XN-550^00-21^12345|||||||P|1|20240101\rP|1||PAT1||张^三\rO|1|SID001||^^^WBC\\^^^RBC|R\rR|1|^^^WBC|6.5|10*3/uL|4.0-10.0|N||F\rR|2|^^^RBC|4.8|10*6/uL||N||F\rC|1|I|remark&F&with&S&delims|G\rL|1|N\r";

    #[test]
    fn default_delimiters_and_fields() {
        let m = AstmMessage::parse_text(MSG).expect("parses");
        assert_eq!(m.delimiters, AstmDelimiters::default());
        assert_eq!(m.records.len(), 7);
        assert_eq!(m.records[0].field(2), "\\^&");
        assert_eq!(m.records[0].component(&m.delimiters, 5, 1), "XN-550");
        assert_eq!(m.records[1].component(&m.delimiters, 6, 2), "三");
        assert_eq!(m.records[3].component(&m.delimiters, 3, 4), "WBC");
        assert_eq!(m.records[3].field(4), "6.5");
        assert_eq!(
            unescape(m.records[5].field(4), &m.delimiters),
            "remark|with^delims"
        );
        assert_eq!(m.termination_code(), Some("N"));
        m.check_hierarchy().expect("valid hierarchy");
    }

    #[test]
    fn other_delimiters_from_the_h_record() {
        // GeneXpert style: repeat '@', escape '\'.
        let m = AstmMessage::parse_text("H|@^\\|||GeneXpert\rP|1\rO|1|S1||^^^FLU@^^^RSV\rL|1|F\r")
            .expect("parses");
        assert_eq!(m.delimiters.repeat, '@');
        assert_eq!(m.delimiters.escape, '\\');
        assert_eq!(m.records[2].component(&m.delimiters, 5, 4), "FLU");
        assert_eq!(m.termination_code(), Some("F"));
    }

    #[test]
    fn gb18030_names_with_pipe_trail_bytes() {
        let text = "H|\\^&\rP|1||P1||億^三\rL|1|N\r";
        let (bytes, _, _) = encoding_rs::GB18030.encode(text);
        assert!(bytes.windows(2).any(|w| w == [0x83, 0x7C]));
        let m = AstmMessage::parse(&bytes, Charset::Gb18030).expect("parses");
        assert_eq!(m.records[1].component(&m.delimiters, 6, 1), "億");
    }

    #[test]
    fn hierarchy_errors() {
        let m = AstmMessage::parse_text("H|\\^&\rR|1|^^^X|1\rL|1|N\r").expect("parses");
        assert!(matches!(
            m.check_hierarchy(),
            Err(RecordError::Hierarchy { kind: 'R', .. })
        ));
        let m = AstmMessage::parse_text("H|\\^&\rP|1\r").expect("parses");
        assert!(m.check_hierarchy().is_err());
        assert_eq!(AstmMessage::parse_text("P|1\r"), Err(RecordError::NoHeader));
        assert_eq!(
            AstmMessage::parse_text("H||||\r"),
            Err(RecordError::BadDelimiters)
        );
    }

    #[test]
    fn query_record_inside_the_message() {
        let m = AstmMessage::parse_text("H|\\^&\rQ|1|^SID001||^^^ALL||||||||O\rL|1|N\r")
            .expect("parses");
        m.check_hierarchy().expect("Q inside H…L");
        assert_eq!(m.records[1].component(&m.delimiters, 3, 2), "SID001");
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,300}") {
            if let Ok(m) = AstmMessage::parse_text(&format!("H{s}")) {
                let _ = m.check_hierarchy();
                let _ = m.termination_code();
                for r in &m.records {
                    let _ = r.component(&m.delimiters, 3, 2);
                    let _ = unescape(r.field(4), &m.delimiters);
                }
            }
        }
    }
}
