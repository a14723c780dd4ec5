//! Which character set an HL7 message is in, and decoding it.
//!
//! Resolution order: a recognised MSH-18, then the per-peer override, then
//! strict UTF-8, then GB18030 (a superset of GBK and GB2312). MSH-18 is read
//! from a probe decoding (UTF-8 when the bytes are valid UTF-8, else the
//! override or GB18030): both keep delimiters intact, and MSH-18's own value
//! is ASCII. A declaration the bytes contradict (MSH-18 says UTF-8, the
//! bytes are not) loses to the bytes, and the result says so.

use encoding_rs::{GB18030, WINDOWS_1252};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    Utf8,
    Gb18030,
    /// ISO 8859-1 (decoded as its superset windows-1252).
    Latin1,
}

impl Charset {
    /// The HL7 table 0211 code to put in MSH-18.
    pub fn hl7_code(self) -> &'static str {
        match self {
            Charset::Utf8 => "UNICODE UTF-8",
            Charset::Gb18030 => "GB 18030-2000",
            Charset::Latin1 => "8859/1",
        }
    }

    /// Reads an MSH-18 value (or a configuration string). Includes the
    /// non-standard values devices are known to send.
    pub fn from_label(label: &str) -> Option<Charset> {
        let l = label
            .trim()
            .to_ascii_uppercase()
            .replace(['-', '_', ' '], "");
        match l.as_str() {
            "UNICODEUTF8" | "UTF8" | "UNICODE" | "ISOIR192" => Some(Charset::Utf8),
            "GB180302000" | "GB18030" | "GBK" | "GB2312" | "CHINESE" | "ISOIR58" => {
                Some(Charset::Gb18030)
            }
            "8859/1" | "88591" | "ISO88591" | "ISOIR100" | "LATIN1" => Some(Charset::Latin1),
            _ => None,
        }
    }
}

/// How the charset was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CharsetSource {
    /// MSH-18 declared it (and the bytes agree).
    Declared,
    /// The per-peer configuration said so.
    Override,
    /// Neither: the bytes decided.
    Detected,
    /// MSH-18 declared a charset the bytes are not in; the bytes decided.
    DeclarationContradicted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub text: String,
    pub charset: Charset,
    pub source: CharsetSource,
    /// Some bytes could not be decoded and were replaced.
    pub lossy: bool,
}

fn decode_with(bytes: &[u8], cs: Charset) -> (String, bool) {
    match cs {
        Charset::Utf8 => match std::str::from_utf8(bytes) {
            Ok(s) => (s.to_owned(), false),
            Err(_) => (String::from_utf8_lossy(bytes).into_owned(), true),
        },
        Charset::Gb18030 => {
            let (s, _, lossy) = GB18030.decode(bytes);
            (s.into_owned(), lossy)
        }
        Charset::Latin1 => {
            let (s, _, lossy) = WINDOWS_1252.decode(bytes);
            (s.into_owned(), lossy)
        }
    }
}

/// MSH-18 from decoded text, without a full parse.
fn msh18(text: &str) -> Option<String> {
    let first = text.split(['\r', '\n']).next()?;
    let rest = first.strip_prefix("MSH")?;
    let sep = rest.chars().next()?;
    // MSH-1 is the separator itself, so MSH-n is split item n-1.
    let value = rest.split(sep).nth(17)?;
    let rep = rest.chars().nth(2).unwrap_or('~');
    let first_rep = value.split(rep).next().unwrap_or("");
    (!first_rep.is_empty()).then(|| first_rep.to_owned())
}

/// Decodes a message's bytes to text, choosing the charset as described in
/// the module documentation.
pub fn decode(bytes: &[u8], peer_override: Option<Charset>) -> Decoded {
    let utf8_ok = std::str::from_utf8(bytes).is_ok();
    let probe = if utf8_ok {
        Charset::Utf8
    } else {
        peer_override
            .filter(|c| *c != Charset::Utf8)
            .unwrap_or(Charset::Gb18030)
    };
    let (probe_text, _) = decode_with(bytes, probe);
    let declared = msh18(&probe_text).and_then(|v| Charset::from_label(&v));

    let (charset, source) = match declared {
        Some(Charset::Utf8) if !utf8_ok => (
            peer_override
                .filter(|c| *c != Charset::Utf8)
                .unwrap_or(Charset::Gb18030),
            CharsetSource::DeclarationContradicted,
        ),
        Some(cs) => (cs, CharsetSource::Declared),
        None => match peer_override {
            Some(cs) => (cs, CharsetSource::Override),
            None if utf8_ok => (Charset::Utf8, CharsetSource::Detected),
            None => (Charset::Gb18030, CharsetSource::Detected),
        },
    };
    let (text, lossy) = if charset == probe {
        decode_with(bytes, probe)
    } else {
        decode_with(bytes, charset)
    };
    Decoded {
        text,
        charset,
        source,
        lossy,
    }
}

/// Encodes text (an ACK) in the charset of the message it answers.
pub fn encode(text: &str, charset: Charset) -> Vec<u8> {
    match charset {
        Charset::Utf8 => text.as_bytes().to_vec(),
        Charset::Gb18030 => GB18030.encode(text).0.into_owned(),
        Charset::Latin1 => WINDOWS_1252.encode(text).0.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(msh18: &str, name: &str) -> String {
        format!(
            "MSH|^~\\&|LIS|C|HIS|H|20240101||ORU^R01|M1|P|2.5.1|||||CHN|{msh18}\rPID|1||P1||{name}\r"
        )
    }

    #[test]
    fn gb18030_trail_bytes_do_not_split_fields() {
        // 億 is 0x83 0x7C in GB18030: its trail byte is '|'.
        let text = msg("", "億^三");
        let bytes = encode(&text, Charset::Gb18030);
        assert!(
            bytes.windows(2).any(|w| w == [0x83, 0x7C]),
            "the vector needs the pipe trail byte"
        );
        let d = decode(&bytes, None);
        assert_eq!(d.charset, Charset::Gb18030);
        assert_eq!(d.source, CharsetSource::Detected);
        assert_eq!(d.text, text);
        assert!(!d.lossy);
    }

    #[test]
    fn declared_and_override_and_contradicted() {
        let t = msg("UNICODE UTF-8", "张^三");
        assert_eq!(decode(t.as_bytes(), None).source, CharsetSource::Declared);
        let gbk_declared = encode(&msg("GB 18030-2000", "张^三"), Charset::Gb18030);
        let d = decode(&gbk_declared, None);
        assert_eq!(
            (d.charset, d.source),
            (Charset::Gb18030, CharsetSource::Declared)
        );
        // MSH-18 says UNICODE (as some analyzers do) but the bytes are GBK.
        let liar = encode(&msg("UNICODE", "张^三"), Charset::Gb18030);
        let d = decode(&liar, None);
        assert_eq!(
            (d.charset, d.source),
            (Charset::Gb18030, CharsetSource::DeclarationContradicted)
        );
        assert!(d.text.contains("张^三"));
        // Empty MSH-18 and a peer configured as Latin-1.
        let latin = encode(&msg("", "Müller^Ä"), Charset::Latin1);
        let d = decode(&latin, Some(Charset::Latin1));
        assert_eq!(
            (d.charset, d.source),
            (Charset::Latin1, CharsetSource::Override)
        );
        assert!(d.text.contains("Müller"));
    }

    #[test]
    fn conformance_samples_when_present() {
        let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/samples/synthetic/hl7");
        for (file, cs) in [
            ("ORU_R01_gb18030.hl7", Charset::Gb18030),
            ("ORU_R01_gb18030_trailbyte_pipe.hl7", Charset::Gb18030),
            ("ORU_R01_utf8.hl7", Charset::Utf8),
        ] {
            let Ok(bytes) = std::fs::read(base.join(file)) else {
                continue;
            };
            let d = decode(&bytes, None);
            assert_eq!(d.charset, cs, "{file}");
            assert!(!d.lossy, "{file}");
        }
    }
}
