//! Device input: any file head and length must be classified, not panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let total = data.len() as u64 + u64::from(data.first().copied().unwrap_or(0)) * 1000;
    let _ = yilian_codecs::sniff(data, total);
});
