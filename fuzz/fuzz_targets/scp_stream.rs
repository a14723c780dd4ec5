//! Device input: a serial line from an ECG cart sending raw SCP-ECG records.
#![no_main]

use libfuzzer_sys::fuzz_target;
use yilian_codecs::ecg::{ScpFramer, read_scp};

fuzz_target!(|data: &[u8]| {
    let mut f = ScpFramer::new(64 * 1024);
    let cut = usize::from(data.first().copied().unwrap_or(1)).max(1);
    for chunk in data.chunks(cut) {
        f.push(chunk);
        while let Some(r) = f.next_record() {
            let _ = read_scp(&r);
        }
    }
    if let Some(r) = f.flush() {
        let _ = read_scp(&r);
    }
});
