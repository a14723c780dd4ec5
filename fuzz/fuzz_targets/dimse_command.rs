//! Network input: DIMSE command sets and Part 10 headers from modalities
//! and the PACS.
#![no_main]

use libfuzzer_sys::fuzz_target;
use yilian_codecs::dicom::{Command, read_part10};

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Command::parse(data) {
        let again = Command::parse(&c.encode());
        assert!(again.is_ok());
    }
    let _ = read_part10(data);
});
