//! Device input: bytes from an analyzer on a serial line or TCP, through the
//! E1381 link layer in both roles.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use yilian_codecs::astm::{AstmLink, LinkConfig, LinkEvent};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut link = AstmLink::new(LinkConfig { max_frame_len: 4096, ..LinkConfig::default() });
    if data.first().is_some_and(|b| b & 1 == 1) {
        link.send(vec![b"H|\\^&".to_vec(), b"L|1|N".to_vec()], now);
    }
    for (i, chunk) in data.chunks(5).enumerate() {
        link.handle_input(chunk, now);
        while let Some(ev) = link.poll_event() {
            if let LinkEvent::Message { needs_commit: true, .. } = ev {
                if i % 3 != 0 {
                    link.stored(&FuzzProof, now);
                } else {
                    link.not_stored(now);
                }
            }
        }
        while link.poll_transmit().is_some() {}
    }
    link.handle_timeout(now + Duration::from_secs(60));
});

/// The fuzzer plays the store.
struct FuzzProof;
impl yilian_proof::Durable for FuzzProof {
    fn durable_id(&self) -> &str {
        "fuzz"
    }
}
