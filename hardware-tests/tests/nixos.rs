#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers may panic on setup failure
//! What can be checked of the NixOS files without nixpkgs: every `.nix`
//! file parses; the modules evaluate (against the stand-in module system in
//! `nixos/tests/stub-eval.nix`); the settings they render are accepted by
//! the binaries; and the units they render pass the same systemd-analyze
//! checks as the Debian units. `nix flake check` on a machine with nixpkgs
//! covers the rest (see the README).

use std::path::{Path, PathBuf};
use std::process::Command;

use yilian_rig::procs::binary;
use yilian_rig::units::{check_unit, render_nixos_unit};

const STORE_PACKAGE: &str = "/nix/store/11111111111111111111111111111111-yilian";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn nix_instantiate() -> PathBuf {
    let p = PathBuf::from("/usr/bin/nix-instantiate");
    assert!(
        p.exists(),
        "nix-instantiate is missing: apt-get install nix-bin (./scripts/test-all does)"
    );
    p
}

fn nix_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("list").flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() && !name.starts_with('.') && name != "target" {
            nix_files(&path, out);
        } else if name.ends_with(".nix") {
            out.push(path);
        }
    }
}

#[test]
fn every_nix_file_parses() {
    let mut files = Vec::new();
    nix_files(&repo(), &mut files);
    assert!(
        files.len() >= 6,
        "expected the flake, modules, appliance and tests: {files:?}"
    );
    for f in files {
        let out = Command::new(nix_instantiate())
            .arg("--parse")
            .arg(&f)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn evaluate(module: &str, service: &str, user_config: &str, attr: &str) -> serde_json::Value {
    let out = Command::new(nix_instantiate())
        .current_dir(repo())
        .args([
            "--eval",
            "--strict",
            "--json",
            "nixos/tests/stub-eval.nix",
            "--arg",
            "module",
        ])
        .arg(format!("./nixos/modules/{module}"))
        .args(["--arg", "serviceName"])
        .arg(format!("\"{service}\""))
        .args(["--arg", "userConfig", user_config, "-A", attr])
        .output()
        .expect("nix-instantiate");
    assert!(
        out.status.success(),
        "evaluating {module}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// Writes the rendered settings as TOML and has the binary check them
/// (the file only: the paths it names are the NixOS machine's, not this
/// one's).
fn binary_accepts(bin: &str, settings: &serde_json::Value, dir: &Path) {
    let toml_value: toml::Value =
        serde_json::from_value(settings.clone()).expect("settings map to TOML");
    let path = dir.join(format!("{bin}.toml"));
    std::fs::write(&path, toml::to_string(&toml_value).expect("toml")).expect("write");
    let out = Command::new(binary(bin).expect("binary"))
        .args(["check-config", "--file-only", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{bin} refuses the settings the NixOS module renders: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn unit_passes(bin: &str, unit: &serde_json::Value, dir: &Path) -> f64 {
    let text = render_nixos_unit(unit);
    let release = binary(bin).expect("binary");
    let bindir = release.parent().expect("dir").to_str().expect("utf8");
    let text = text.replace(&format!("{STORE_PACKAGE}/bin"), bindir);
    assert!(
        text.contains("Type=notify") && text.contains("WatchdogSec=30s"),
        "{text}"
    );
    let path = dir.join(format!("{bin}.service"));
    std::fs::write(&path, &text).expect("write");
    check_unit(&path, 1.5).expect("unit check")
}

#[test]
fn gateway_module_renders_a_valid_config_and_a_hardened_unit() {
    let tmp = tempfile::tempdir().expect("tmp");
    let user = format!(
        r#"{{ services.yilian-gateway = {{ enable = true; package = {{ outPath = "{STORE_PACKAGE}"; }};
            central = "hub.county.example:4433";
            settings.spool.quota = "10 GiB";
            settings.folder = [ {{ name = "ecg-share"; path = "/srv/yilian/drop/ecg"; lane = "clinical"; }} ]; }}; }}"#
    );
    let etc = evaluate("gateway.nix", "yilian-gateway", &user, "etc");
    let settings = &etc["yilian/gateway.toml"];
    // The identity is the service's to renew: in its state directory,
    // never a read-only credential.
    assert_eq!(settings["identity"]["dir"], "/var/lib/yilian/identity");
    assert!(settings["uplink"].get("key").is_none(), "{settings}");
    assert_eq!(settings["uplink"]["central"], "hub.county.example:4433");
    assert_eq!(settings["spool"]["quota"], "10 GiB");
    binary_accepts("yilian-gateway", settings, tmp.path());

    let config = evaluate("gateway.nix", "yilian-gateway", &user, "config");
    let service = &config["systemd"]["services"]["yilian-gateway"]["serviceConfig"];
    assert!(
        service.get("LoadCredential").is_none(),
        "no read-only credential for what renewal replaces: {service}"
    );
    assert_eq!(service["StateDirectory"], "yilian");
    assert!(
        !config.to_string().contains("BEGIN PRIVATE KEY"),
        "no secret in the rendered configuration"
    );

    // Without `central`: the address comes from the enrollment token.
    let bare = format!(
        r#"{{ services.yilian-gateway = {{ enable = true; package = {{ outPath = "{STORE_PACKAGE}"; }}; }}; }}"#
    );
    let etc = evaluate("gateway.nix", "yilian-gateway", &bare, "etc");
    assert!(
        etc["yilian/gateway.toml"].get("uplink").is_none(),
        "{}",
        etc["yilian/gateway.toml"]
    );
    binary_accepts("yilian-gateway", &etc["yilian/gateway.toml"], tmp.path());
    assert_eq!(
        config["boot"]["kernel"]["sysctl"]["net.core.rmem_max"],
        16777216
    );
    assert!(
        config["services"]["udev"]["extraRules"]
            .as_str()
            .unwrap_or("")
            .contains("ID_MM_DEVICE_IGNORE")
    );

    let unit = evaluate("gateway.nix", "yilian-gateway", &user, "unit");
    let exposure = unit_passes("yilian-gateway", &unit, tmp.path());
    eprintln!("NixOS yilian-gateway unit: exposure {exposure}");

    // Disabled: the module contributes nothing.
    let off = evaluate("gateway.nix", "yilian-gateway", "{ }", "config");
    assert_eq!(off, serde_json::json!({}));
}

#[test]
fn central_module_renders_a_valid_config_and_a_hardened_unit() {
    let tmp = tempfile::tempdir().expect("tmp");
    let user = format!(
        r#"{{ services.yilian-central = {{ enable = true; package = {{ outPath = "{STORE_PACKAGE}"; }};
            caFile = "/var/lib/secrets/ca.pem"; certFile = "/var/lib/secrets/central.pem";
            keyFile = "/var/lib/secrets/central.key"; openFirewall = true; }}; }}"#
    );
    let etc = evaluate("central.nix", "yilian-central", &user, "etc");
    binary_accepts("yilian-central", &etc["yilian/central.toml"], tmp.path());
    let config = evaluate("central.nix", "yilian-central", &user, "config");
    assert_eq!(
        config["networking"]["firewall"]["allowedUDPPorts"],
        serde_json::json!([4433])
    );
    let unit = evaluate("central.nix", "yilian-central", &user, "unit");
    let exposure = unit_passes("yilian-central", &unit, tmp.path());
    eprintln!("NixOS yilian-central unit: exposure {exposure}");
}
