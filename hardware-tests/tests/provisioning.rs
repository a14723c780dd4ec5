#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers may panic on setup failure
//! Fleet provisioning with the real binaries: `yilian-provision` minting
//! tokens, publishing configuration and revoking at a running
//! `yilian-central`, and `yilian-gateway enroll` / `run` on the box side.

use std::process::Command;
use std::time::Duration;

use yilian_rig::configs::free_tcp_port;
use yilian_rig::fleet_admin::{Bench, enroll, ok, run, s, text, wait_for, wait_tcp};
use yilian_rig::procs::{Proc, binary};

/// Flips one character in the middle of a token part.
fn tamper(token: &str, part: usize) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let p = &mut parts[part];
    let mid = p.len() / 2;
    let c = if &p[mid..=mid] == "A" { "B" } else { "A" };
    p.replace_range(mid..=mid, c);
    parts.join(".")
}

#[test]
fn tokens_enroll_once_for_their_box_and_only_at_the_fleets_central() {
    let tmp = tempfile::tempdir().expect("tmp");
    let bench = Bench::start(tmp.path(), "7d");

    // The happy path: a token, a box that makes its own key.
    let t1 = bench.token("anxi/hutou/box-1", "72h");
    let b1 = bench.box_dir("box-1", bench.quic, "");
    let out = ok(enroll(&b1, &t1, None));
    // In the technician's language: Chinese by default, English with LANG=en.
    assert!(
        out.contains("enrolled as anxi/hutou/box-1") || out.contains("已注册为 anxi/hutou/box-1"),
        "{out}"
    );
    let key = std::fs::read_to_string(b1.join("tls/gateway.key")).expect("key");
    assert!(key.contains("PRIVATE KEY"));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(b1.join("tls/gateway.key"))
            .expect("stat")
            .permissions(),
    );
    assert_eq!(mode & 0o077, 0, "the box key is private");

    // Reuse, by the same or another box.
    let b2 = bench.box_dir("box-2", bench.quic, "");
    let used = enroll(&b2, &t1, None);
    assert!(!used.status.success());
    assert!(
        text(&used).contains("token already used"),
        "{}",
        text(&used)
    );

    // Expired.
    let short = bench.token("anxi/hutou/box-2", "1s");
    std::thread::sleep(Duration::from_secs(2));
    let expired = enroll(&b2, &short, None);
    assert!(
        text(&expired).contains("token expired"),
        "{}",
        text(&expired)
    );

    // Forged: the MAC does not match the claims.
    let t2 = bench.token("anxi/hutou/box-2", "72h");
    let forged = enroll(&b2, &tamper(&t2, 2), None);
    assert!(!forged.status.success());
    assert!(
        text(&forged).contains("signature invalid"),
        "{}",
        text(&forged)
    );

    // A token for one box, a request for another.
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let claims = yilian_pki::token::peek(&t2).expect("claims");
    let key = yilian_pki::csr::generate_key().expect("key");
    let other = yilian_protocol::BoxIdentity::parse("anxi/hutou/box-9").expect("id");
    let csr = yilian_pki::csr::request(&key, &other).expect("csr");
    let r = rt.block_on(yilian_link::request::enroll(
        &bench.quic.to_string(),
        "localhost",
        &claims.ca_sha256,
        &t2,
        &csr,
    ));
    let e = r.expect_err("another identity").to_string();
    assert!(e.contains("the token is for anxi/hutou/box-2"), "{e}");

    // An impostor central with a certificate from another CA: the box
    // refuses it before sending the token, which stays good.
    let other_dir = tmp.path().join("impostor");
    std::fs::create_dir_all(&other_dir).expect("mkdir");
    let impostor = Bench::start(&other_dir, "7d");
    let refused = enroll(&b2, &t2, Some(impostor.quic));
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("does not hold the fleet CA"),
        "{}",
        text(&refused)
    );
    // And a token whose fleet CA fingerprint was changed (here: the MAC
    // breaks too, but the box refuses central first).
    let mut c = claims.clone();
    c.ca_sha256 = "00".repeat(32);
    let json = serde_json::to_vec(&c).expect("json");
    let body = data_encoding::BASE64URL_NOPAD.encode(&json);
    let mac = t2.rsplit('.').next().expect("mac");
    let wrong_pin = enroll(&b2, &format!("yl1.{body}.{mac}"), None);
    assert!(
        text(&wrong_pin).contains("does not hold the fleet CA"),
        "{}",
        text(&wrong_pin)
    );
    let out = ok(enroll(&b2, &t2, None));
    // In the technician's language: Chinese by default, English with LANG=en.
    assert!(
        out.contains("enrolled as anxi/hutou/box-2") || out.contains("已注册为 anxi/hutou/box-2"),
        "{out}"
    );

    // An offline bundle for a USB stick, with the box's initial
    // configuration: a box with no configuration yet takes both.
    let stick = tmp.path().join("usb");
    let initial = bench.box_dir("box-3-template", bench.quic, "");
    ok(bench.admin(&[
        "bundle",
        "--gateway",
        "anxi/hutou/box-3",
        "--out",
        s(&stick),
        "--config",
        s(&initial.join("gateway.toml")),
    ]));
    let b3_config = tmp.path().join("box-3/etc/gateway.toml");
    let out = ok(run(
        "yilian-gateway",
        &[
            "enroll",
            "--config",
            s(&b3_config),
            "--bundle",
            s(&stick.join("yilian-bundle")),
        ],
    ));
    // In the technician's language: Chinese by default, English with LANG=en.
    assert!(
        out.contains("enrolled as anxi/hutou/box-3") || out.contains("已注册为 anxi/hutou/box-3"),
        "{out}"
    );
    assert!(
        b3_config.exists(),
        "the bundle's gateway.toml was installed"
    );

    // The enrolled box runs and uploads without further input.
    let _gw = Proc::spawn(
        "yilian-gateway",
        &["run", "--config", s(&b1.join("gateway.toml"))],
        &b1.join("gateway.log"),
    )
    .expect("gateway");
    std::fs::write(b1.join("drop/ecg.txt"), b"hello central").expect("drop");
    wait_for("box-1 up with its upload delivered", 30, || {
        let f = bench.fleet();
        f.as_array().into_iter().flatten().any(|r| {
            r["identity"] == "anxi/hutou/box-1"
                && r["link_up"] == true
                && r["backlog"]
                    .as_array()
                    .is_some_and(|l| l.iter().all(|x| x["items"] == 0))
                && r["certificate_not_after"].as_i64().unwrap_or(0) > 0
        })
    });
    let audit = ok(bench.admin(&["audit"]));
    for line in [
        "token.create",
        "admin:alice",
        "enroll",
        "gateway:anxi/hutou/box-1",
    ] {
        assert!(audit.contains(line), "{audit}");
    }
    let table = ok(bench.admin(&["fleet", "list"]));
    assert!(
        table.contains("anxi/hutou/box-1") && table.contains("up"),
        "{table}"
    );
    let _ = bench.metrics;
}

#[test]
fn renewal_published_configuration_and_revocation_mid_upload() {
    let tmp = tempfile::tempdir().expect("tmp");
    // Short-lived certificates: renewal at two thirds, 10 s in.
    let bench = Bench::start(tmp.path(), "15s");
    let relay = tokio::runtime::Runtime::new().expect("rt");
    let shaped = relay
        .block_on(yilian_rig::relay::Relay::start_shaped(
            bench.quic,
            Some(yilian_rig::relay::Shaping {
                bytes_per_sec: 2_000_000,
                queue: Duration::from_millis(50),
                down_bytes_per_sec: None,
            }),
        ))
        .expect("relay");
    let b = bench.box_dir("box-1", shaped.addr, "");
    ok(enroll(
        &b,
        &bench.token("anxi/hutou/box-1", "1h"),
        Some(bench.quic),
    ));
    let cert = b.join("tls/gateway.pem");
    let first = std::fs::read_to_string(&cert).expect("cert");
    let mut gw = Proc::spawn(
        "yilian-gateway",
        &["run", "--config", s(&b.join("gateway.toml"))],
        &b.join("gateway.log"),
    )
    .expect("gateway");

    // Published configuration: a valid one is applied (a new HL7
    // listener appears), an invalid one is refused and reported while
    // the valid one keeps running.
    let hl7 = free_tcp_port().expect("port");
    let good = tmp.path().join("good.toml");
    std::fs::write(
        &good,
        format!("[uplink]\nmax_in_flight = 2\n\n[[hl7]]\nname = \"lab\"\nlisten = \"{hl7}\"\n"),
    )
    .expect("write");
    let said = ok(bench.admin(&["config", "set", "anxi/hutou/box-1", s(&good)]));
    let good_version = said.split_whitespace().nth(2).expect("version").to_owned();
    wait_for("the published configuration applied", 60, || {
        bench.show("anxi/hutou/box-1")["pushed_config_version"] == good_version.as_str()
    });
    wait_tcp(hl7);
    // Invalid on its own: refused by `config set` before it goes anywhere.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[hl7]]\nname = \"lab\"\nlisten = \"not an address\"\n",
    )
    .expect("write");
    let refused = bench.admin(&["config", "set", "anxi/hutou/box-1", s(&bad)]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("bad.toml") && text(&refused).contains("line 3"),
        "{}",
        text(&refused)
    );
    // Valid on its own but not with this box's file (its metrics port):
    // the box refuses it and reports why.
    let own = std::fs::read_to_string(b.join("gateway.toml")).expect("config");
    let metrics_port = own
        .lines()
        .skip_while(|l| !l.starts_with("[metrics]"))
        .find_map(|l| l.strip_prefix("listen = "))
        .expect("the box's metrics address")
        .trim_matches('"')
        .to_owned();
    std::fs::write(
        &bad,
        format!("[[hl7]]\nname = \"lab\"\nlisten = \"{metrics_port}\"\n"),
    )
    .expect("write");
    let said = ok(bench.admin(&["config", "set", "anxi/hutou/box-1", s(&bad)]));
    let bad_version = said.split_whitespace().nth(2).expect("version").to_owned();
    wait_for("the invalid configuration reported", 60, || {
        bench.show("anxi/hutou/box-1")["pushed_config_error"]
            .as_str()
            .is_some_and(|e| e.starts_with(&bad_version))
    });
    assert_eq!(
        bench.show("anxi/hutou/box-1")["pushed_config_version"],
        good_version.as_str()
    );
    std::net::TcpStream::connect_timeout(&hl7, Duration::from_secs(1))
        .expect("the valid configuration still runs");
    let refused = bench.admin(&[
        "config",
        "set",
        "anxi/hutou",
        s(&tmp.path().join("central.toml")),
    ]);
    assert!(
        !refused.status.success(),
        "central's own file is not a gateway fragment"
    );

    // Renewal over the link at two thirds of the certificate's life.
    wait_for("the certificate renewed", 30, || {
        std::fs::read_to_string(&cert).is_ok_and(|c| c != first)
    });
    let audit = ok(bench.admin(&["audit"]));
    assert!(audit.contains("renew"), "{audit}");

    // Offline across expiry: the box comes back with an expired
    // certificate and renews by proving its old key.
    gw.kill9();
    let (_, not_after) = yilian_gateway::certificate::validity(&cert).expect("validity");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    std::thread::sleep(Duration::from_secs((not_after - now + 1).max(0) as u64));
    let expired = std::fs::read_to_string(&cert).expect("cert");
    let mut gw = Proc::spawn(
        "yilian-gateway",
        &["run", "--config", s(&b.join("gateway.toml"))],
        &b.join("gateway.log"),
    )
    .expect("gateway");
    wait_for("renewal after expiry and the link back up", 60, || {
        std::fs::read_to_string(&cert).is_ok_and(|c| c != expired)
            && bench
                .fleet()
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["link_up"] == true)
    });
    let audit = ok(bench.admin(&["audit"]));
    assert!(audit.contains("renew.expired"), "{audit}");

    // Revoked mid-upload: a 20 MB file on a 2 MB/s link.
    std::fs::write(b.join("drop/study.bin"), vec![7u8; 20_000_000]).expect("drop");
    std::thread::sleep(Duration::from_secs(4));
    let out = ok(bench.admin(&["revoke", "anxi/hutou/box-1", "--reason", "stolen"]));
    assert!(out.contains("its connection was closed"), "{out}");
    std::thread::sleep(Duration::from_secs(5));
    let row = bench.show("anxi/hutou/box-1");
    assert_eq!(row["link_up"], false, "{row}");
    assert!(
        row["revoked"]
            .as_str()
            .is_some_and(|r| r.contains("admin:alice")),
        "{row}"
    );
    let items = Command::new(binary("yilian-central").expect("bin"))
        .args([
            "items",
            "--config",
            s(&tmp.path().join("central.toml")),
            "--json",
        ])
        .output()
        .expect("items");
    assert!(
        !String::from_utf8_lossy(&items.stdout).contains("study.bin"),
        "the interrupted upload was not committed"
    );
    // Central forgets the box's series at once: not up, not silent.
    let exposed = yilian_rig::scrape::http_get(bench.metrics, "/metrics").expect("metrics");
    for series in [
        "yilian_gateway_link_up{",
        "yilian_gateway_last_seen_timestamp_seconds{",
    ] {
        assert!(
            !exposed
                .lines()
                .any(|l| l.starts_with(series) && l.contains("gateway=\"box-1\"")),
            "{series} still exported for a revoked box:\n{exposed}"
        );
    }
    // The box knows who revoked it and why, and stops calling.
    wait_for("the box showing it was revoked", 30, || {
        let out = Command::new(binary("yilian-gateway").expect("bin"))
            .args(["status", "--config", s(&b.join("gateway.toml"))])
            .output()
            .expect("status");
        let st = String::from_utf8_lossy(&out.stdout);
        st.contains("revoked") && st.contains("admin:alice") && st.contains("stolen")
    });
    let refusals = |log: &str| log.matches("refused a revoked box").count();
    let central_log = || std::fs::read_to_string(tmp.path().join("central.log")).expect("log");
    let before = refusals(&central_log());
    std::thread::sleep(Duration::from_secs(10));
    let after = refusals(&central_log());
    assert!(
        after - before <= 1,
        "a revoked box stops calling: {} refusals in 10 s",
        after - before
    );

    // The box keeps the item: nothing acknowledged to a device is dropped
    // by a revocation (an admin may re-enroll it under a new identity).
    let status = Command::new(binary("yilian-gateway").expect("bin"))
        .args(["status", "--config", s(&b.join("gateway.toml")), "--json"])
        .output()
        .expect("status");
    let st = String::from_utf8_lossy(&status.stdout);
    assert!(
        st.contains("study.bin") || st.contains("\"items\": 1"),
        "{st}"
    );
    // A revoked identity gets no new token.
    let again = bench.admin(&["token", "create", "--gateway", "anxi/hutou/box-1"]);
    assert!(text(&again).contains("is revoked"), "{}", text(&again));
    gw.kill9();
}

#[test]
fn a_replaced_box_drains_its_backlog_before_it_is_revoked() {
    let tmp = tempfile::tempdir().expect("tmp");
    let bench = Bench::start(tmp.path(), "7d");
    let rt = tokio::runtime::Runtime::new().expect("rt");
    let relay = rt
        .block_on(yilian_rig::relay::Relay::start(bench.quic))
        .expect("relay");
    // The old box, with its link down and three items waiting.
    let old = bench.box_dir("old", relay.addr, "");
    ok(enroll(
        &old,
        &bench.token("anxi/hutou/box-1", "1h"),
        Some(bench.quic),
    ));
    relay.cut();
    let _old_gw = Proc::spawn(
        "yilian-gateway",
        &["run", "--config", s(&old.join("gateway.toml"))],
        &old.join("gateway.log"),
    )
    .expect("gateway");
    for i in 0..3 {
        std::fs::write(
            old.join(format!("drop/result-{i}.txt")),
            format!("old box {i}"),
        )
        .expect("drop");
    }
    // Its replacement arrives under its own name in the same clinic.
    let new = bench.box_dir("new", bench.quic, "");
    ok(enroll(&new, &bench.token("anxi/hutou/box-2", "1h"), None));
    let _new_gw = Proc::spawn(
        "yilian-gateway",
        &["run", "--config", s(&new.join("gateway.toml"))],
        &new.join("gateway.log"),
    )
    .expect("gateway");
    std::fs::write(new.join("drop/result-new.txt"), b"new box").expect("drop");
    // The old box still reaches central: it drains, and only then is
    // it revoked.
    std::thread::sleep(Duration::from_secs(2));
    relay.restore();
    let items = || {
        let out = Command::new(binary("yilian-central").expect("bin"))
            .args([
                "items",
                "--config",
                s(&tmp.path().join("central.toml")),
                "--json",
            ])
            .output()
            .expect("items");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    wait_for("the old box drained and the new one delivered", 60, || {
        let all = items();
        all.matches("anxi/hutou/box-1").count() >= 3 && all.contains("anxi/hutou/box-2")
    });
    wait_for("the old box reporting an empty backlog", 30, || {
        bench.show("anxi/hutou/box-1")["backlog"]
            .as_array()
            .is_some_and(|l| !l.is_empty() && l.iter().all(|x| x["items"] == 0))
    });
    ok(bench.admin(&[
        "revoke",
        "anxi/hutou/box-1",
        "--reason",
        "replaced by box-2",
    ]));
    let all = items();
    for i in 0..3 {
        assert!(all.contains(&format!("result-{i}.txt")), "{all}");
    }
    let fleet = bench.fleet();
    let rows = fleet.as_array().expect("rows");
    assert!(
        rows.iter()
            .any(|r| r["identity"] == "anxi/hutou/box-1" && !r["revoked"].is_null())
    );
    assert!(
        rows.iter()
            .any(|r| r["identity"] == "anxi/hutou/box-2" && r["revoked"].is_null())
    );
}
