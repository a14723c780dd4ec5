//! The escape-sequence scanner HL7 v2 and ASTM E1394 share: sequences are
//! delimited by the message's escape character; each protocol maps the
//! names it knows, `X` followed by hex digits is literal bytes in both, and
//! anything unknown passes through unchanged.

/// What a protocol makes of one escape sequence's name.
pub(crate) enum Replacement {
    Char(char),
    Text(&'static str),
    Nothing,
}

/// Unescapes `s`; `known` maps a sequence name (the text between two
/// escape characters) to its replacement.
pub(crate) fn unescape_with(
    s: &str,
    esc: char,
    known: impl Fn(&str) -> Option<Replacement>,
) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find(esc) {
        out.push_str(&rest[..start]);
        let after = &rest[start + esc.len_utf8()..];
        let Some(end) = after.find(esc) else {
            // A lone escape character: keep it.
            out.push_str(&rest[start..]);
            return out;
        };
        let seq = &after[..end];
        match known(seq) {
            Some(Replacement::Char(c)) => out.push(c),
            Some(Replacement::Text(t)) => out.push_str(t),
            Some(Replacement::Nothing) => {}
            None if is_hex(seq) => {
                let bytes: Vec<u8> = (1..seq.len())
                    .step_by(2)
                    .filter_map(|i| u8::from_str_radix(&seq[i..i + 2], 16).ok())
                    .collect();
                out.push_str(&String::from_utf8_lossy(&bytes));
            }
            None => {
                out.push(esc);
                out.push_str(seq);
                out.push(esc);
            }
        }
        rest = &after[end + esc.len_utf8()..];
    }
    out.push_str(rest);
    out
}

/// `Xhhhh…`: an even number of hex digits after the X.
fn is_hex(seq: &str) -> bool {
    seq.len() > 1
        && seq.starts_with('X')
        && seq.len() % 2 == 1
        && seq[1..].chars().all(|c| c.is_ascii_hexdigit())
}
