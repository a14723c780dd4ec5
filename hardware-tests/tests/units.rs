#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers may panic on setup failure
//! The shipped systemd units: `systemd-analyze verify` has nothing to say
//! and the offline security analysis rates them at an exposure of 1.5 or
//! lower.

use std::path::{Path, PathBuf};
use std::process::Command;

use yilian_rig::procs::binary;

fn analyze() -> PathBuf {
    let p = PathBuf::from("/usr/bin/systemd-analyze");
    assert!(p.exists(), "systemd-analyze is missing: apt-get install systemd (./scripts/test-all does)");
    p
}

/// Writes `unit` into `dir` with its ExecStart pointed at the binary built
/// here (verify needs the binary to exist).
pub fn staged(unit_text: &str, name: &str, dir: &Path) -> PathBuf {
    let bin = binary(name).expect("built binary");
    let text = unit_text.replace(&format!("/usr/bin/{name}"), bin.to_str().expect("utf8"));
    assert_ne!(text, unit_text, "{name}.service must start /usr/bin/{name}");
    let path = dir.join(format!("{name}.service"));
    std::fs::write(&path, text).expect("write");
    path
}

pub fn check_unit(path: &Path, max_exposure: f64) -> f64 {
    let verify = Command::new(analyze())
        .args(["verify", "--man=no"])
        .arg(path)
        .output()
        .expect("systemd-analyze verify");
    let said = format!("{}{}", String::from_utf8_lossy(&verify.stdout), String::from_utf8_lossy(&verify.stderr));
    assert!(said.trim().is_empty() && verify.status.success(), "systemd-analyze verify {}:\n{said}", path.display());

    let security = Command::new(analyze())
        .args(["security", "--offline=true", "--no-pager"])
        .arg(path)
        .output()
        .expect("systemd-analyze security");
    let out = String::from_utf8_lossy(&security.stdout).into_owned();
    let exposure: f64 = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .and_then(|l| l.split(": ").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure in:\n{out}"));
    assert!(exposure <= max_exposure, "{} exposure {exposure} > {max_exposure}:\n{out}", path.display());
    exposure
}

#[test]
fn shipped_units_verify_cleanly_and_are_hardened() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tmp = tempfile::tempdir().expect("tmp");
    for (name, max) in [("yilian-gateway", 1.5), ("yilian-central", 1.5)] {
        let text = std::fs::read_to_string(repo.join("ops/systemd").join(format!("{name}.service"))).expect("unit");
        assert!(text.contains("Type=notify"), "{name} must be Type=notify");
        assert!(text.contains("WatchdogSec="), "{name} must have a watchdog");
        let exposure = check_unit(&staged(&text, name, tmp.path()), max);
        eprintln!("{name}.service: exposure {exposure}");
    }
    let gw = std::fs::read_to_string(repo.join("ops/systemd/yilian-gateway.service")).expect("unit");
    for needed in ["DevicePolicy=closed", "DeviceAllow=char-ttyUSB rw", "SupplementaryGroups=dialout", "StateDirectory="] {
        assert!(gw.contains(needed), "the gateway unit needs {needed}");
    }
    assert!(!gw.contains("PrivateDevices=yes"), "PrivateDevices would hide the serial ports");
}
