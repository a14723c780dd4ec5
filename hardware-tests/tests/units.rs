#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers may panic on setup failure
//! The shipped systemd units: `systemd-analyze verify` has nothing to say
//! and the offline security analysis rates them at an exposure of 1.5 or
//! lower.

use std::path::{Path, PathBuf};

use yilian_rig::procs::binary;
use yilian_rig::units::check_unit;

/// Writes `unit` into `dir` with its ExecStart pointed at the binary built
/// here (verify needs the binary to exist).
fn staged(unit_text: &str, name: &str, dir: &Path) -> PathBuf {
    let bin = binary(name).expect("built binary");
    let text = unit_text.replace(&format!("/usr/bin/{name}"), bin.to_str().expect("utf8"));
    assert_ne!(text, unit_text, "{name}.service must start /usr/bin/{name}");
    let path = dir.join(format!("{name}.service"));
    std::fs::write(&path, text).expect("write");
    path
}

#[test]
fn shipped_units_verify_cleanly_and_are_hardened() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tmp = tempfile::tempdir().expect("tmp");
    for (name, max) in [("yilian-gateway", 1.5), ("yilian-central", 1.5)] {
        let text =
            std::fs::read_to_string(repo.join("ops/systemd").join(format!("{name}.service")))
                .expect("unit");
        assert!(text.contains("Type=notify"), "{name} must be Type=notify");
        assert!(text.contains("WatchdogSec="), "{name} must have a watchdog");
        let exposure = check_unit(&staged(&text, name, tmp.path()), max).expect("unit check");
        eprintln!("{name}.service: exposure {exposure}");
    }
    let gw =
        std::fs::read_to_string(repo.join("ops/systemd/yilian-gateway.service")).expect("unit");
    for needed in [
        "DevicePolicy=closed",
        "DeviceAllow=char-ttyUSB rw",
        "SupplementaryGroups=dialout",
        "StateDirectory=",
    ] {
        assert!(gw.contains(needed), "the gateway unit needs {needed}");
    }
    assert!(
        !gw.contains("PrivateDevices=yes"),
        "PrivateDevices would hide the serial ports"
    );
}
