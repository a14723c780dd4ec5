//! Device input: bytes from an ECG cart exporting files by XMODEM/YMODEM.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use yilian_codecs::ecg::{ModemMode, ModemReceiver};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mode = if data.first().is_some_and(|b| b & 1 == 1) { ModemMode::Ymodem } else { ModemMode::Xmodem };
    let mut r = ModemReceiver::new(mode, 64 * 1024, now);
    for chunk in data.chunks(133) {
        r.handle_input(chunk, now);
        while r.poll_transmit().is_some() {}
        while r.poll_event().is_some() {}
        if r.awaiting_commit() {
            if chunk.len() % 2 == 0 {
                r.stored(&FuzzProof, now);
            } else {
                r.not_stored(now);
            }
        }
    }
    r.handle_timeout(now + Duration::from_secs(30));
});

/// The fuzzer plays the store.
struct FuzzProof;
impl yilian_proof::Durable for FuzzProof {
    fn durable_id(&self) -> &str {
        "fuzz"
    }
}
