//! Checks of systemd units with `systemd-analyze`, shared by the tests of
//! the Debian units and of the units the NixOS modules render.

use std::path::{Path, PathBuf};
use std::process::Command;

fn analyze() -> anyhow::Result<PathBuf> {
    let p = PathBuf::from("/usr/bin/systemd-analyze");
    anyhow::ensure!(
        p.exists(),
        "systemd-analyze is missing: apt-get install systemd (./scripts/test-all does)"
    );
    Ok(p)
}

/// `systemd-analyze verify` must print nothing (it exits 0 even when it
/// has complaints); returns the offline security exposure, which must not
/// exceed `max_exposure`.
pub fn check_unit(path: &Path, max_exposure: f64) -> anyhow::Result<f64> {
    let verify = Command::new(analyze()?)
        .args(["verify", "--man=no"])
        .arg(path)
        .output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    anyhow::ensure!(
        said.trim().is_empty() && verify.status.success(),
        "systemd-analyze verify {}:\n{said}",
        path.display()
    );
    let security = Command::new(analyze()?)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(path)
        .output()?;
    let out = String::from_utf8_lossy(&security.stdout).into_owned();
    let exposure: f64 = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .and_then(|l| l.split(": ").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no exposure level in:\n{out}"))?;
    anyhow::ensure!(
        exposure <= max_exposure,
        "{} exposure {exposure} > {max_exposure}:\n{out}",
        path.display()
    );
    Ok(exposure)
}

/// Renders a unit the way NixOS does from `systemd.services.<name>`:
/// booleans as yes/no, lists as repeated assignments.
pub fn render_nixos_unit(unit: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let list = |v: &serde_json::Value| -> String {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    let mut s = String::from("[Unit]\n");
    if let Some(d) = unit["description"].as_str() {
        let _ = writeln!(s, "Description={d}");
    }
    for (key, field) in [("After", "after"), ("Wants", "wants")] {
        let v = list(&unit[field]);
        if !v.is_empty() {
            let _ = writeln!(s, "{key}={v}");
        }
    }
    s.push_str("\n[Service]\n");
    if let Some(map) = unit["serviceConfig"].as_object() {
        for (k, v) in map {
            match v {
                serde_json::Value::Bool(b) => {
                    let _ = writeln!(s, "{k}={}", if *b { "yes" } else { "no" });
                }
                serde_json::Value::Array(items) => {
                    for i in items {
                        let _ = writeln!(
                            s,
                            "{k}={}",
                            i.as_str()
                                .map(str::to_owned)
                                .unwrap_or_else(|| i.to_string())
                        );
                    }
                }
                serde_json::Value::String(v) => {
                    let _ = writeln!(s, "{k}={v}");
                }
                other => {
                    let _ = writeln!(s, "{k}={other}");
                }
            }
        }
    }
    let wanted = list(&unit["wantedBy"]);
    if !wanted.is_empty() {
        let _ = write!(s, "\n[Install]\nWantedBy={wanted}\n");
    }
    s
}
