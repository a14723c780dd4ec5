//! Network input: any sequence of decodable messages fed to central's
//! upload state machine must end in a transmit, an event or an error,
//! never a panic.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use yilian_protocol::FrameDecoder;
use yilian_protocol::upload::{HeldState, ReceiverEvent, UploadReceiver};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut rx = UploadReceiver::new(1 << 20, Duration::from_secs(5), now);
    let mut dec = FrameDecoder::new(64 * 1024);
    dec.push(data);
    while let Ok(Some(env)) = dec.next_frame() {
        if rx.handle_message(env, now).is_err() {
            return;
        }
        while let Some(ev) = rx.poll_event() {
            match ev {
                ReceiverEvent::Offered(o) => {
                    let _ = rx.held(HeldState::Partial(o.size / 2));
                }
                ReceiverEvent::Data { .. } => {}
                ReceiverEvent::Complete => {
                    let _ = rx.committed(&FuzzProof);
                }
            }
        }
        while rx.poll_transmit().is_some() {}
    }
    rx.handle_timeout(now + Duration::from_secs(10));
});

/// The fuzzer plays the store.
struct FuzzProof;
impl yilian_proof::Durable for FuzzProof {
    fn durable_id(&self) -> &str {
        "fuzz"
    }
}
