//! HL7 escape sequences (`\F\`, `\S\`, `\T\`, `\R\`, `\E\`, `\Xhh..\`,
//! `\.br\`, ...), with the escape character the message declares.
//! Unknown and charset-switching sequences (`\C..\`, `\M..\`, `\Z..\`) are
//! kept verbatim: the raw message is what is stored and forwarded; this is
//! only for reading values (metadata, display).

use super::message::Delimiters;
use crate::escapes::{Replacement, unescape_with};

/// Unescapes a field value. `\.br\` becomes a newline; the highlighting
/// sequences `\H\` and `\N\` are dropped.
pub fn unescape(s: &str, d: &Delimiters) -> String {
    let Some(esc) = d.escape else {
        return s.to_owned();
    };
    unescape_with(s, esc, |seq| match seq {
        "F" => Some(Replacement::Char(d.field)),
        "S" => Some(Replacement::Char(d.component)),
        "T" => Some(Replacement::Char(d.subcomponent)),
        "R" => Some(Replacement::Char(d.repetition)),
        "E" => Some(Replacement::Char(esc)),
        ".br" => Some(Replacement::Text("\n")),
        "H" | "N" => Some(Replacement::Nothing),
        _ => None,
    })
}

/// Escapes text for use as a field value.
pub fn escape(s: &str, d: &Delimiters) -> String {
    let Some(esc) = d.escape else {
        return s.to_owned();
    };
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let seq = match c {
            _ if c == esc => "E",
            _ if c == d.field => "F",
            _ if c == d.component => "S",
            _ if c == d.subcomponent => "T",
            _ if c == d.repetition => "R",
            '\r' | '\n' => ".br",
            _ => {
                out.push(c);
                continue;
            }
        };
        out.push(esc);
        out.push_str(seq);
        out.push(esc);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_known_and_keeps_unknown() {
        let d = Delimiters::default();
        assert_eq!(
            unescape(
                "field\\F\\comp\\S\\sub\\T\\rep\\R\\esc\\E\\hex\\X0D0A\\line1\\.br\\line2",
                &d
            ),
            "field|comp^sub&rep~esc\\hex\r\nline1\nline2"
        );
        assert_eq!(
            unescape("a\\Zvendor\\b\\C2842\\c", &d),
            "a\\Zvendor\\b\\C2842\\c"
        );
        assert_eq!(unescape("bold \\H\\x\\N\\ end \\", &d), "bold x end \\");
    }

    #[test]
    fn escape_round_trips() {
        let d = Delimiters::default();
        let s = "a|b^c&d~e\\f\ng";
        assert_eq!(unescape(&escape(s, &d), &d), s);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,200}") {
            let d = Delimiters::default();
            let _ = unescape(&s, &d);
            let e = escape(&s, &d);
            let back = unescape(&e, &d).replace('\n', "\r");
            proptest::prop_assert_eq!(back, s.replace('\n', "\r"));
        }
    }
}
