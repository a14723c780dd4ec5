//! Device input: bytes from an MLLP peer, through framing, charset
//! resolution, parsing, unescaping and ACK building.
#![no_main]

use libfuzzer_sys::fuzz_target;
use yilian_codecs::hl7::{ErrorInfo, Message, Verdict, build_ack, decode, escape::unescape};
use yilian_codecs::mllp::MllpDecoder;

fuzz_target!(|data: &[u8]| {
    let mut dec = MllpDecoder::new(64 * 1024);
    let mut frames: Vec<Vec<u8>> = dec.push(data).into_iter().flatten().collect();
    frames.extend(dec.finish());
    frames.push(data.to_vec());
    for f in frames {
        let d = decode(&f, None);
        if let Ok(m) = Message::parse(&d.text) {
            let _ = m.require_header();
            let _ = unescape(m.get("PID", 5, 1), &m.delimiters);
            let e = ErrorInfo {
                location: "MSH".into(),
                code: 207,
                text: "fuzz".into(),
                severity: 'E',
            };
            let _ = build_ack(&m, Verdict::Refused(&e), "X", "20260101");
        }
    }
});
