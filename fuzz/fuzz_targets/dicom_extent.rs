//! Network input: the head of a data set from a modality, walked before a
//! DICOM library may parse it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use yilian_codecs::dicom_extent::parsable_extent;

fuzz_target!(|data: &[u8]| {
    // Part 10 preamble and magic, then the fuzzer's file meta and data set.
    let mut f = vec![0u8; 128];
    f.extend_from_slice(b"DICM");
    f.extend_from_slice(data);
    if let Ok(e) = parsable_extent(&f, 0x5400_0100) {
        assert!(e.len <= f.len());
    }
});
