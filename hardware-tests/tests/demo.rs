#![allow(clippy::expect_used, clippy::unwrap_used)]
//! The README's first command, as a newcomer runs it: central, a box and
//! the sample devices on this machine, every sample at central, the ECG
//! read at the county hospital and its report back in the clinic's folder,
//! and nothing logged as a fault on the way.

use std::process::Command;

#[test]
fn the_demo_runs_end_to_end_and_logs_no_fault() {
    // Several runs: the steps race each other (central hands the ECG on
    // after committing it, the box watches folders from its start).
    for run in 0..3 {
        let out = Command::new(env!("CARGO_BIN_EXE_yilian-rig"))
            .args(["demo", "--exit"])
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let all = format!("{stdout}\n{stderr}");
        assert!(out.status.success(), "run {run}:\n{all}");
        assert!(
            all.contains("All 6 samples at central"),
            "run {run}:\n{all}"
        );
        assert!(
            all.contains("in the clinic's folder after"),
            "run {run}:\n{all}"
        );
        assert!(
            !all.contains(" ERROR ") && !all.contains(" WARN "),
            "run {run} logged a fault:\n{all}"
        );
    }
}
