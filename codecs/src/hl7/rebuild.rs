//! A report rebuilt for a clinic HIS that cannot take the hospital's
//! message as it is: addressed to the HIS (MSH-5/MSH-6, which many HIS
//! check), in the character set it reads (older HIS take only GBK), and
//! without the embedded PDF for a HIS that stores text only. MSH-10 and
//! everything else stay, so the HIS still de-duplicates a resend and the
//! ACK still names the message.
//!
//! The message is decoded before it is split (GB18030 bytes can look like
//! delimiters), and re-encoded whole.

use super::charset::{Charset, decode, encode};

/// What to change; `None` and `false` leave the message as received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rebuild {
    pub receiving_application: Option<String>,
    pub receiving_facility: Option<String>,
    pub charset: Option<Charset>,
    /// Drop OBX segments of type ED (an embedded PDF), renumbering the rest.
    pub drop_embedded: bool,
}

impl Rebuild {
    /// Whether it changes anything.
    pub fn is_identity(&self) -> bool {
        *self == Rebuild::default()
    }
}

/// Rebuilds `bytes` (an HL7 message in any charset we read).
pub fn rebuild(bytes: &[u8], r: &Rebuild) -> Result<Vec<u8>, String> {
    if r.is_identity() {
        return Ok(bytes.to_vec());
    }
    let decoded = decode(bytes, None);
    let text = decoded.text.trim_start_matches('\u{feff}');
    let sep = text
        .strip_prefix("MSH")
        .and_then(|t| t.chars().next())
        .ok_or("not an HL7 message (no MSH segment first)")?;
    let target = r.charset.unwrap_or(decoded.charset);
    let mut out: Vec<String> = Vec::new();
    let mut obx = 0u32;
    for segment in text.split(['\r', '\n']).filter(|s| !s.is_empty()) {
        let mut fields: Vec<String> = segment.split(sep).map(str::to_owned).collect();
        match fields.first().map(String::as_str) {
            Some("MSH") => {
                // fields[n] is MSH-(n+1): the separator itself is MSH-1.
                let mut set = |n: usize, v: &str| {
                    if fields.len() < n {
                        fields.resize(n, String::new());
                    }
                    fields[n - 1] = v.to_owned();
                };
                if let Some(a) = &r.receiving_application {
                    set(5, a);
                }
                if let Some(f) = &r.receiving_facility {
                    set(6, f);
                }
                if r.charset.is_some() {
                    set(18, target.hl7_code());
                }
            }
            Some("OBX") => {
                if r.drop_embedded && fields.get(2).map(String::as_str) == Some("ED") {
                    continue;
                }
                obx += 1;
                if fields.len() > 1 {
                    fields[1] = obx.to_string();
                }
            }
            _ => {}
        }
        out.push(fields.join(&sep.to_string()));
    }
    let mut text = out.join("\r");
    text.push('\r');
    Ok(encode(&text, target))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hl7::Message;

    const ORU: &str = "MSH|^~\\&|RIS|COUNTY|YILIAN|lingshan/xiacun|20261203101500||ORU^R01|R100|P|2.5\r\
PID|1||P2001||陈^静\r\
OBR|1|PL1|ACC2001|CHEST^胸部正位|||20261203100000||||||||||||||||||F\r\
OBX|1|ED|PDF^Report||^application^pdf^Base64^JVBERi0=||||||F\r\
OBX|2|TX|REPORT^Impression||两肺纹理清晰。||||||F\r";

    #[test]
    fn addressed_re_encoded_and_without_the_pdf() {
        let r = Rebuild {
            receiving_application: Some("HIS".into()),
            receiving_facility: Some("XIACUN".into()),
            charset: Some(Charset::Gb18030),
            drop_embedded: true,
        };
        let bytes = rebuild(ORU.as_bytes(), &r).expect("rebuilt");
        assert!(std::str::from_utf8(&bytes).is_err(), "GB18030, not UTF-8");
        let (text, _, bad) = encoding_rs::GB18030.decode(&bytes);
        assert!(!bad);
        let m = Message::parse(&text).expect("parses");
        assert_eq!(m.get("MSH", 5, 1), "HIS");
        assert_eq!(m.get("MSH", 6, 1), "XIACUN");
        assert_eq!(m.get("MSH", 10, 1), "R100");
        assert_eq!(m.get("MSH", 18, 1), "GB 18030-2000");
        assert_eq!(m.get("PID", 5, 1), "陈");
        let obx: Vec<_> = m.segments.iter().filter(|s| s.id() == "OBX").collect();
        assert_eq!(obx.len(), 1);
        assert_eq!((obx[0].field(1), obx[0].field(2)), ("1", "TX"));
    }

    #[test]
    fn nothing_asked_is_the_same_bytes() {
        let bytes = rebuild(ORU.as_bytes(), &Rebuild::default()).expect("same");
        assert_eq!(bytes, ORU.as_bytes());
        assert!(
            rebuild(
                b"garbage",
                &Rebuild {
                    drop_embedded: true,
                    ..Rebuild::default()
                }
            )
            .is_err()
        );
    }
}
