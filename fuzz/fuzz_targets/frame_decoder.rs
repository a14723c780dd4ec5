//! Network input: arbitrary bytes on a link stream, split at an arbitrary
//! point, must only ever yield frames or errors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use yilian_protocol::FrameDecoder;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| *b as usize).min(data.len());
    let mut dec = FrameDecoder::new(64 * 1024);
    for part in [&data[..split], &data[split..]] {
        dec.push(part);
        while let Ok(Some(_)) = dec.next_frame() {}
    }
    let _ = dec.finish();
});
