#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers may panic on setup failure
//! Enrollment as a county admin does it, with the real binaries.
//!
//! - A box with nothing but a token (no configuration file, an empty state
//!   directory) enrolls with one command, gets a minimal configuration
//!   naming the central from the token, runs, takes its devices from
//!   central's published configuration and delivers.
//! - Run as root, `enroll` leaves the identity to the service user, who can
//!   read and replace it; the gateway, run as that user with its
//!   configuration directory mounted read-only (as `ProtectSystem=strict`
//!   leaves `/etc`), renews 15-second certificates through five cycles,
//!   and after a restart connects with the newest one.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use yilian_rig::fleet_admin::{Bench, ok, run, s, text, wait_for};
use yilian_rig::procs::Proc;

const NOBODY: u32 = 65534;
const NOGROUP: u32 = 65534;

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A directory bind-mounted read-only over itself, as a sandbox sees
/// `/etc`; unmounted on drop.
struct ReadOnly(PathBuf);

impl ReadOnly {
    fn mount(dir: &Path) -> ReadOnly {
        for args in [
            vec!["--bind", s(dir), s(dir)],
            vec!["-o", "remount,bind,ro", s(dir)],
        ] {
            let out = Command::new("mount").args(&args).output().expect("mount");
            assert!(
                out.status.success(),
                "this test bind-mounts a directory read-only and needs root: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        ReadOnly(dir.to_owned())
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_box_with_nothing_but_a_token_enrolls_and_runs_with_devices_from_central() {
    let tmp = tempfile::tempdir().expect("tmp");
    let bench = Bench::start_as(tmp.path(), "7d", "127.0.0.1");
    let token = bench.token("anxi/hutou/box-7", "1h");
    let config = tmp.path().join("box/etc/yilian/gateway.toml");
    let state = tmp.path().join("box/var/lib/yilian");
    assert!(!config.exists() && !state.exists(), "an empty box");

    let out = ok(run(
        "yilian-gateway",
        &[
            "enroll",
            "--config",
            s(&config),
            "--token",
            &token,
            "--state-dir",
            s(&state),
            "--pin",
            "246810",
        ],
    ));
    // In the technician's language: Chinese by default, English with LANG=en.
    assert!(
        out.contains("enrolled as anxi/hutou/box-7") || out.contains("已注册为 anxi/hutou/box-7"),
        "{out}"
    );
    assert!(
        out.contains("configuration written to") || out.contains("已写入配置文件"),
        "{out}"
    );
    // The page's PIN, given at enrollment, is kept with the identity (the
    // configuration may be read-only or published), for the service only.
    let pin = state.join("identity").join("page-pin");
    assert_eq!(
        std::fs::read_to_string(&pin).expect("the PIN is kept"),
        "246810"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&pin).expect("pin").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert!(out.contains("PIN"), "{out}");
    let written = std::fs::read_to_string(&config).expect("a configuration was written");
    assert!(
        written.contains(&format!("central = \"127.0.0.1:{}\"", bench.quic.port())),
        "central comes from the token:\n{written}"
    );
    for f in ["gateway.key", "gateway.pem", "ca.pem", "enrollment.json"] {
        assert!(state.join("identity").join(f).exists(), "identity/{f}");
    }
    let check = run("yilian-gateway", &["check-config", "--config", s(&config)]);
    assert!(check.status.success(), "{}", text(&check));

    let mut gw = Proc::spawn(
        "yilian-gateway",
        &["run", "--config", s(&config)],
        &tmp.path().join("box.log"),
    )
    .expect("gateway");
    wait_for("the box up at central", 30, || {
        bench.show("anxi/hutou/box-7")["link_up"] == true
    });

    // Its devices arrive from central.
    let drop = tmp.path().join("box/srv/drop");
    std::fs::create_dir_all(&drop).expect("mkdir");
    let devices = tmp.path().join("devices.toml");
    std::fs::write(
        &devices,
        format!(
            "[[folder]]\nname = \"ecg-share\"\npath = \"{}\"\nsettle = \"300ms\"\npoll_interval = \"200ms\"\n",
            s(&drop)
        ),
    )
    .expect("write");
    let said = ok(bench.admin(&["config", "set", "anxi/hutou/box-7", s(&devices)]));
    let version = said.split_whitespace().nth(2).expect("version").to_owned();
    wait_for("the published devices applied", 60, || {
        bench.show("anxi/hutou/box-7")["pushed_config_version"] == version.as_str()
    });
    std::fs::write(drop.join("result-1.txt"), b"from a box enrolled by token").expect("drop");
    wait_for("the file at central", 30, || {
        bench.delivered_files().iter().any(|f| f == "result-1.txt")
    });

    // A typo is refused by the admin's tool itself, with file and line.
    let typo = tmp.path().join("typo.toml");
    std::fs::write(
        &typo,
        "[[dicom]]\nname = \"dr\"\nlisten = \"0.0.0.0:11112\"\nae_titel = \"DR\"\n",
    )
    .expect("write");
    let refused = bench.admin(&["config", "set", "anxi/hutou/box-7", s(&typo)]);
    assert!(!refused.status.success());
    let said = text(&refused);
    assert!(
        said.contains("typo.toml") && said.contains("line 4") && said.contains("ae_titel"),
        "{said}"
    );
    let listed = ok(bench.admin(&["config", "list"]));
    assert!(
        listed.contains("anxi/hutou/box-7") && listed.contains(&version),
        "{listed}"
    );
    let got = ok(bench.admin(&["config", "get", "anxi/hutou/box-7"]));
    assert!(got.contains("ecg-share"), "{got}");

    // A fragment that validates but that the box cannot start with (its
    // HL7 port is held by another program): refused with the reason, and
    // the box goes back to the devices that ran.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = squatter.local_addr().expect("addr");
    let v2 = tmp.path().join("v2.toml");
    std::fs::write(
        &v2,
        format!(
            "[[hl7]]\nname = \"lab\"\nlisten = \"{taken}\"\n\n[[folder]]\nname = \"ecg-share\"\npath = \"{}\"\nsettle = \"300ms\"\npoll_interval = \"200ms\"\n",
            s(&drop)
        ),
    )
    .expect("write");
    let said = ok(bench.admin(&["config", "set", "anxi/hutou/box-7", s(&v2)]));
    let v2_version = said.split_whitespace().nth(2).expect("version").to_owned();
    wait_for("the box refusing v2", 60, || {
        bench.show("anxi/hutou/box-7")["pushed_config_error"]
            .as_str()
            .is_some_and(|e| e.starts_with(&v2_version))
    });
    wait_for("the box back on v1", 30, || {
        bench.show("anxi/hutou/box-7")["pushed_config_version"] == version.as_str()
    });
    let table = ok(bench.admin(&["fleet", "list"]));
    assert!(
        table.contains("refused 1") && table.contains("could not start"),
        "the refusal and its reason in the fleet list:\n{table}"
    );
    std::fs::write(drop.join("result-2.txt"), b"v1's folder still runs").expect("drop");
    wait_for("a file through v1's folder", 30, || {
        bench.delivered_files().iter().any(|f| f == "result-2.txt")
    });
    std::mem::drop(squatter);

    // Withdrawn: the box runs with its own file again.
    ok(bench.admin(&["config", "unset", "anxi/hutou/box-7"]));
    wait_for("the box back on its own file", 60, || {
        bench.show("anxi/hutou/box-7")["pushed_config_version"] == ""
    });
    gw.kill9();
}

#[test]
fn renewals_persist_under_a_read_only_configuration_as_the_service_user() {
    let tmp = tempfile::tempdir().expect("tmp");
    chmod(tmp.path(), 0o755);
    // Renewal at two thirds: every 10 s.
    let bench = Bench::start_as(tmp.path(), "15s", "127.0.0.1");
    let etc = tmp.path().join("box/etc");
    let state = tmp.path().join("box/state");
    std::fs::create_dir_all(&etc).expect("mkdir");
    std::fs::create_dir_all(&state).expect("mkdir");
    chmod(&tmp.path().join("box"), 0o755);
    chmod(&etc, 0o755);
    // The state directory belongs to the service user, as the package's
    // tmpfiles entry (or systemd's StateDirectory=) leaves it.
    std::os::unix::fs::chown(&state, Some(NOBODY), Some(NOGROUP)).expect("chown");
    chmod(&state, 0o700);

    // The admin enrolls as root.
    let config = etc.join("gateway.toml");
    ok(run(
        "yilian-gateway",
        &[
            "enroll",
            "--config",
            s(&config),
            "--token",
            &bench.token("anxi/hutou/box-8", "1h"),
            "--state-dir",
            s(&state),
        ],
    ));
    // The admin gives the metrics listener its own port (two boxes share
    // this machine) before the directory becomes read-only.
    let mut written = std::fs::read_to_string(&config).expect("config");
    written.push_str(&format!(
        "\n[metrics]\nlisten = \"{}\"\n",
        yilian_rig::configs::free_tcp_port().expect("port")
    ));
    std::fs::write(&config, written).expect("write");
    let identity = state.join("identity");
    for f in [
        "",
        "gateway.key",
        "gateway.pem",
        "ca.pem",
        "enrollment.json",
    ] {
        let m = std::fs::metadata(identity.join(f)).expect("stat");
        assert_eq!(
            (m.uid(), m.gid()),
            (NOBODY, NOGROUP),
            "identity/{f} belongs to the service user"
        );
    }
    let key_mode = std::fs::metadata(identity.join("gateway.key"))
        .expect("stat")
        .mode();
    assert_eq!(key_mode & 0o077, 0, "the key stays private");
    let replaced = Command::new("runuser")
        .args(["-u", "nobody", "--", "sh", "-c"])
        .arg(format!(
            "cd {} && cat gateway.key >/dev/null && cp gateway.pem gateway.pem.x && mv gateway.pem.x gateway.pem",
            s(&identity)
        ))
        .output()
        .expect("runuser");
    assert!(
        replaced.status.success(),
        "the service user reads and replaces its identity: {}",
        text(&replaced)
    );

    // The configuration directory is read-only to the service.
    let _ro = ReadOnly::mount(&etc);
    assert!(
        std::fs::write(etc.join("probe"), b"x").is_err(),
        "the bind mount is read-only"
    );
    let log = tmp.path().join("box.log");
    let cert = identity.join("gateway.pem");
    let mut gw = Proc::spawn_as(
        NOBODY,
        NOGROUP,
        "yilian-gateway",
        &["run", "--config", s(&config)],
        &log,
    )
    .expect("gateway");
    let mut seen = vec![std::fs::read_to_string(&cert).expect("cert")];
    let deadline = Instant::now() + Duration::from_secs(90);
    while seen.len() < 6 {
        assert!(
            Instant::now() < deadline,
            "{} renewal(s) in 90 s; log:\n{}",
            seen.len() - 1,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
        if let Ok(c) = std::fs::read_to_string(&cert)
            && seen.last() != Some(&c)
        {
            seen.push(c);
        }
    }
    let m = std::fs::metadata(&cert).expect("stat");
    assert_eq!(m.uid(), NOBODY, "renewed by the service user");

    // Restarted, it comes back with the newest certificate.
    gw.kill9();
    let (_, not_after) = yilian_gateway::certificate::validity(&cert).expect("validity");
    let _gw = Proc::spawn_as(
        NOBODY,
        NOGROUP,
        "yilian-gateway",
        &["run", "--config", s(&config)],
        &log,
    )
    .expect("gateway");
    wait_for(
        "the restarted box up with its newest certificate",
        30,
        || {
            let row = bench.show("anxi/hutou/box-8");
            row["link_up"] == true
                && row["certificate_not_after"].as_i64().unwrap_or(0) >= not_after
        },
    );
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !logged.contains("Read-only file system"),
        "nothing tried to write the configuration directory:\n{logged}"
    );
}

#[test]
fn a_cloned_box_is_alerted_and_a_retired_box_is_not_watched() {
    let tmp = tempfile::tempdir().expect("tmp");
    let bench = Bench::start(tmp.path(), "7d");
    let original = bench.box_dir("original", bench.quic, "");
    ok(yilian_rig::fleet_admin::enroll(
        &original,
        &bench.token("anxi/hutou/box-1", "1h"),
        None,
    ));
    // A copied disk: the same key and certificate in a second box.
    let clone = bench.box_dir("clone", bench.quic, "");
    std::fs::create_dir_all(clone.join("tls")).expect("mkdir");
    for f in ["ca.pem", "gateway.pem", "gateway.key"] {
        std::fs::copy(original.join("tls").join(f), clone.join("tls").join(f)).expect("copy");
    }
    let mut a = Proc::spawn(
        "yilian-gateway",
        &["run", "--config", s(&original.join("gateway.toml"))],
        &original.join("gateway.log"),
    )
    .expect("gateway");
    let mut b = Proc::spawn(
        "yilian-gateway",
        &["run", "--config", s(&clone.join("gateway.toml"))],
        &clone.join("gateway.log"),
    )
    .expect("gateway");
    wait_for("central to see two boxes with one identity", 60, || {
        let m = yilian_rig::scrape::http_get(bench.metrics, "/metrics").unwrap_or_default();
        yilian_rig::scrape::sum(
            &m,
            "yilian_central_identity_conflicts_total",
            &["gateway=\"box-1\""],
        ) > 0.0
    });
    let log = std::fs::read_to_string(tmp.path().join("central.log")).expect("log");
    assert!(log.contains("two boxes present the same identity"), "{log}");
    b.kill9();
    a.kill9();

    // Out of service on purpose: retired, it is neither up nor silent.
    let m = yilian_rig::scrape::http_get(bench.metrics, "/metrics").expect("metrics");
    assert!(
        m.contains("yilian_gateway_last_seen_timestamp_seconds{"),
        "{m}"
    );
    let said = ok(bench.admin(&["retire", "anxi/hutou/box-1", "--reason", "clinic closed"]));
    assert!(said.contains("retired"), "{said}");
    let m = yilian_rig::scrape::http_get(bench.metrics, "/metrics").expect("metrics");
    assert!(
        !m.lines().any(
            |l| l.starts_with("yilian_gateway_last_seen_timestamp_seconds{")
                && l.contains("gateway=\"box-1\"")
        ),
        "a retired box has no last-seen series to page on:\n{m}"
    );
    let table = ok(bench.admin(&["fleet", "list"]));
    assert!(table.contains("retired"), "{table}");
    let audit = ok(bench.admin(&["audit"]));
    assert!(
        audit.contains("retire") && audit.contains("clinic closed"),
        "{audit}"
    );

    // Revoked while it was switched off: when it comes back its handshake
    // is refused, it learns it was revoked, and it stops calling.
    ok(bench.admin(&["revoke", "anxi/hutou/box-1", "--reason", "cloned"]));
    let refusals = || {
        std::fs::read_to_string(tmp.path().join("central.log"))
            .unwrap_or_default()
            .matches("refused a revoked box")
            .count()
    };
    let before = refusals();
    let mut a = Proc::spawn(
        "yilian-gateway",
        &["run", "--config", s(&original.join("gateway.toml"))],
        &original.join("gateway.log"),
    )
    .expect("gateway");
    wait_for("its handshake refused", 30, || refusals() > before);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(original.join("tls/revoked.json"))
        .is_ok_and(|r| r.contains("revoked"))
    {
        assert!(
            Instant::now() < deadline,
            "the box never learned it was revoked; its log:\n{}",
            std::fs::read_to_string(original.join("gateway.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let seen = refusals();
    std::thread::sleep(Duration::from_secs(10));
    assert!(
        refusals() - seen <= 1,
        "a box that knows it is revoked stops calling"
    );
    a.kill9();
}
