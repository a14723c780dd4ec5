//! Hospital input: a report message (ORU/MDM) as central takes it and the
//! box files it, through charset resolution, parsing and the report
//! reader (text, embedded PDF, correlation keys).
#![no_main]

use libfuzzer_sys::fuzz_target;
use yilian_codecs::hl7::report::read_report;
use yilian_codecs::hl7::{Message, decode};

fuzz_target!(|data: &[u8]| {
    let d = decode(data, None);
    if let Ok(m) = Message::parse(&d.text) {
        let _ = read_report(&m);
    }
});
