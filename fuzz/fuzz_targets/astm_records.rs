//! Device input: E1394 records in any charset.
#![no_main]

use libfuzzer_sys::fuzz_target;
use yilian_codecs::astm::AstmMessage;
use yilian_codecs::astm::records::unescape;
use yilian_codecs::hl7::Charset;

fuzz_target!(|data: &[u8]| {
    for cs in [Charset::Utf8, Charset::Gb18030] {
        if let Ok(m) = AstmMessage::parse(data, cs) {
            let _ = m.check_hierarchy();
            let _ = m.termination_code();
            for r in &m.records {
                let _ = unescape(r.component(&m.delimiters, 3, 4), &m.delimiters);
            }
        }
    }
});
