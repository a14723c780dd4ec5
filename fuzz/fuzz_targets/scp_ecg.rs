//! Device input: files and serial streams from ECG carts claiming to be
//! SCP-ECG records.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = yilian_codecs::ecg::read_scp(data) {
        let _ = (r.trusted(), r.conformant(), r.header.is_stat());
    }
});
