//! Device input: an aECG XML file dropped by an ECG cart.
#![no_main]

use libfuzzer_sys::fuzz_target;
use yilian_codecs::ecg::read_aecg;

fuzz_target!(|data: &[u8]| {
    let _ = read_aecg(data);
});
