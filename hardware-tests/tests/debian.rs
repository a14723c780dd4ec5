#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers may panic on setup failure
//! The Debian packages, installed with apt on a Debian 12 machine that
//! boots systemd as PID 1 (systemd-nspawn), run by systemd under the unit
//! and sandbox we ship; central runs on the host.
//!
//! In order, on one machine: the packages install, enable but do not start
//! an unenrolled gateway, and pass `systemd-analyze security` at 1.5 or
//! better with private state directories; the admin enrolls as root and
//! starts the service, which is ready only once its listeners are bound,
//! reports its state in `systemctl status` and feeds the watchdog; a drop
//! folder shared with the clinic's PC (a user in the service's group) and
//! a serial cart on a pty passed in with `--bind` both deliver; 15-second
//! certificates renew five times under the sandbox and the box restarts
//! with the newest; SIGKILL during uploads loses nothing; a stuck spool
//! writer gets the service restarted by the watchdog; an upgrade with items
//! waiting keeps the configuration and delivers everything. Then a second,
//! fresh machine installs, enrolls and starts from a USB stick made by
//! `yilian-provision bundle --package`, fetching nothing from a package
//! mirror.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use yilian_rig::fleet_admin::{Bench, ok, s, wait_for, wait_tcp};
use yilian_rig::nspawn::Machine;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds the packages of the binaries already built, as revision `rev`.
fn build_debs(out: &Path, rev: u32) -> Vec<PathBuf> {
    let status = Command::new(repo().join("packaging/build-debs"))
        .env("SKIP_BUILD", "1")
        .env("DEB_REVISION", rev.to_string())
        .env("DEB_OUT", out)
        .current_dir(repo())
        .status()
        .expect("packaging/build-debs");
    assert!(status.success());
    let mut debs: Vec<PathBuf> = std::fs::read_dir(out)
        .expect("ls")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    debs.sort();
    debs
}

fn prop(m: &Machine, unit: &str, p: &str) -> String {
    m.ok(&format!("systemctl show -p {p} --value {unit}"))
        .expect("systemctl show")
        .trim()
        .to_owned()
}

/// Drops `n` files of `size` bytes into the shared folder as the clinic's
/// PC would: written by its own user under a temporary name, then renamed.
fn drop_files(m: &Machine, tag: &str, n: usize, size: usize) -> Vec<String> {
    let names: Vec<String> = (0..n).map(|i| format!("{tag}-{i:02}.bin")).collect();
    for name in &names {
        m.ok(&format!(
            "runuser -u clinicpc -- sh -c 'head -c {size} /dev/urandom > /srv/yilian/drop/ecg/.{name} && mv /srv/yilian/drop/ecg/.{name} /srv/yilian/drop/ecg/{name}'"
        ))
        .expect("drop");
    }
    names
}

fn wait_delivered_once(bench: &Bench, names: &[String], secs: u64) {
    wait_for("every file at central", secs, || {
        let at = bench.delivered_files();
        names.iter().all(|n| at.contains(n))
    });
    let at = bench.delivered_files();
    for n in names {
        assert_eq!(
            at.iter().filter(|a| *a == n).count(),
            1,
            "{n} at central exactly once"
        );
    }
}

#[test]
fn debian_packages_under_a_real_systemd() {
    let tmp = tempfile::Builder::new()
        .prefix("yilian-debian-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tmp");
    let v1 = build_debs(&tmp.path().join("debs-1"), 1);
    let v2 = build_debs(&tmp.path().join("debs-2"), 2);
    let gateway_deb = |debs: &[PathBuf]| {
        debs.iter()
            .find(|p| s(p).contains("yilian-gateway_"))
            .expect("gateway package")
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned()
    };

    // Central on the host, with 15-second certificates.
    let mut bench = Bench::start_as(&tmp.path().join("hub"), "15s", "127.0.0.1");

    // A serial cart on a pseudo-terminal pair; its far end goes into the
    // machine as /dev/ttyUSB0.
    let cable = yilian_rig::cable::Cable::plug(
        &tmp.path().join("cart-gateway-end"),
        &tmp.path().join("cart-device-end"),
    )
    .expect("socat");
    let pts = std::fs::canonicalize(&cable.gateway_end).expect("pty path");
    let m = Machine::boot(
        &tmp.path().join("machine"),
        &[format!("{}:/dev/ttyUSB0", pts.display())],
    )
    .expect("a booted Debian 12 machine");
    let debs_inside = m.path("/root/debs");
    for (dir, debs) in [("1", &v1), ("2", &v2)] {
        std::fs::create_dir_all(debs_inside.join(dir)).expect("mkdir");
        for d in debs.iter() {
            std::fs::copy(d, debs_inside.join(dir).join(d.file_name().expect("name")))
                .expect("copy");
        }
    }

    // Installed with apt: enabled, not started (not enrolled yet).
    let said = m
        .ok(&format!(
            "cd /root/debs/1 && DEBIAN_FRONTEND=noninteractive apt-get install -y ./{} ./yilian-central_*.deb ./yilian-provision_*.deb 2>&1",
            gateway_deb(&v1)
        ))
        .expect("apt install");
    assert!(said.contains("Enroll this box, then start it"), "{said}");
    assert_eq!(
        m.ok("systemctl is-enabled yilian-gateway").unwrap().trim(),
        "enabled"
    );
    assert_eq!(prop(&m, "yilian-gateway", "ActiveState"), "inactive");
    assert_eq!(
        prop(&m, "yilian-central", "ActiveState"),
        "inactive",
        "central is not configured"
    );
    for (unit, dir, user) in [
        ("yilian-gateway", "/var/lib/yilian", "yilian-gateway"),
        (
            "yilian-central",
            "/var/lib/yilian-central",
            "yilian-central",
        ),
    ] {
        let sec = m
            .ok(&format!(
                "systemd-analyze security --no-pager {unit}.service 2>&1 | tail -n 1"
            ))
            .expect("security");
        let exposure: f64 = sec
            .split_whitespace()
            .find_map(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no exposure in {sec:?}"));
        eprintln!("{unit}.service installed: exposure {exposure}");
        assert!(exposure <= 1.5, "{unit}: {sec}");
        let st = m.ok(&format!("stat -c '%a %U' {dir}")).expect("stat");
        assert_eq!(st.trim(), format!("700 {user}"), "{dir}");
    }

    // The admin adds an HL7 listener, the clinic PC's folder and the cart
    // to the box's own file, then enrolls as root.
    let hl7 = yilian_rig::configs::free_tcp_port().expect("port");
    let metrics = yilian_rig::configs::free_tcp_port().expect("port");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(m.path("/etc/yilian/gateway.toml"))
        .expect("config");
    write!(
        f,
        "\n[metrics]\nlisten = \"{metrics}\"\n\n[[hl7]]\nname = \"lab\"\nlisten = \"{hl7}\"\n\n\
         [[folder]]\nname = \"ecg-share\"\npath = \"/srv/yilian/drop/ecg\"\nsettle = \"500ms\"\npoll_interval = \"200ms\"\n\n\
         [[ecg_serial]]\nname = \"cart-1\"\nport = \"/dev/ttyUSB0\"\nprotocol = \"raw\"\nquiet_time = \"1s\"\n\n\
         [[report_sink]]\nname = \"clinic-pc\"\ntype = \"folder\"\ndir = \"/srv/yilian/reports\"\n\n\
         [[report_sink]]\nname = \"outside\"\ntype = \"folder\"\ndir = \"/srv/clinic-share/reports\"\n"
    )
    .expect("append");
    drop(f);
    m.ok("install -d -m 2770 -g yilian-gateway /srv/yilian/drop/ecg && useradd -m -G yilian-gateway clinicpc")
        .expect("the clinic PC's share");
    // The pty is not a USB serial adapter: granted by path in a drop-in,
    // as an admin grants an onboard or unusual port.
    // udev makes USB serial adapters root:dialout 0660; the pty stands in.
    m.ok("chgrp dialout /dev/ttyUSB0 && chmod 0660 /dev/ttyUSB0")
        .expect("the cart's port");
    m.ok("mkdir -p /etc/systemd/system/yilian-gateway.service.d && printf '[Service]\\nDeviceAllow=/dev/ttyUSB0 rw\\n' > /etc/systemd/system/yilian-gateway.service.d/cart.conf && systemctl daemon-reload")
        .expect("drop-in");
    let token = bench.token("anxi/hutou/box-1", "1h");
    let said = m
        .ok(&format!("yilian-gateway enroll --token {token} 2>&1"))
        .expect("enroll");
    // In the technician's language: Chinese by default, English with LANG=en.
    assert!(
        said.contains("enrolled as anxi/hutou/box-1") || said.contains("已注册为 anxi/hutou/box-1"),
        "{said}"
    );
    let owner = m
        .ok("stat -c '%U %a' /var/lib/yilian/identity /var/lib/yilian/identity/gateway.key")
        .expect("stat");
    assert_eq!(
        owner.split_whitespace().collect::<Vec<_>>(),
        ["yilian-gateway", "700", "yilian-gateway", "600"]
    );

    // Started: `systemctl start` returns at READY=1, by which time the
    // listeners are bound.
    m.ok("systemctl start yilian-gateway").expect("start");
    std::net::TcpStream::connect_timeout(&hl7, Duration::from_secs(1))
        .expect("the HL7 listener is up when systemd hears READY");
    wait_for("the link up in systemctl status", 30, || {
        prop(&m, "yilian-gateway", "StatusText").contains("link up")
    });
    let status = m
        .ok("systemctl status --no-pager yilian-gateway | head -n 12")
        .expect("status");
    assert!(status.contains("Status: \"link up"), "{status}");
    let wd1: u64 = prop(&m, "yilian-gateway", "WatchdogTimestampMonotonic")
        .parse()
        .unwrap_or(0);

    // A file from the clinic PC's user, and an ECG from the cart.
    let first = drop_files(&m, "share", 1, 100_000);
    let record = yilian_rig::cart::CartRecord {
        patient_id: "DEB0001",
        last_name: "TEST",
        stat_code: 0,
        waveform_bytes: 20_000,
    }
    .encode();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cable.device_end)
        .and_then(|mut d| d.write_all(&record))
        .expect("the cart sends");
    wait_delivered_once(&bench, &first, 60);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !bench.items().iter().any(|i| i["source"] == "serial:cart-1") {
        assert!(
            Instant::now() < deadline,
            "the cart's ECG never reached central; journal:\n{}",
            m.ok("journalctl -u yilian-gateway --no-pager -o verbose | grep -e MESSAGE= -e ERROR= | grep -i -A1 serial | tail -n 6; ls -l /dev/ttyUSB0")
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // A report from the hospital comes back down: written under the
    // sandbox into the packaged reports folder, readable by the clinic
    // PC's user; a folder outside /srv/yilian is read-only to the service,
    // and `status` says so and what to do, in the technician's words.
    m.ok("mkdir -p /srv/clinic-share/reports && chmod 0777 /srv/clinic-share/reports")
        .expect("a share outside /srv/yilian");
    let report = "MSH|^~\\&|RIS|COUNTY|YILIAN|anxi/hutou|20261203101500||ORU^R01|DEBRPT01|P|2.5\r\
                  PID|1||DEB0001||Test^Patient\r\
                  OBR|1||ACC-DEB1|ECG^心电图|||20261203100000||||||||||||||||||F\r\
                  OBX|1|TX|ECG^心电图||窦性心律，正常心电图。||||||F\r";
    let ack = {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(bench.reports).expect("central's report listener");
        s.write_all(&yilian_codecs::mllp::encode(report.as_bytes()))
            .expect("send");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(&[0x1c, 0x0d]) {
            let n = s.read(&mut buf).expect("ACK");
            assert!(n > 0, "central closed without an ACK");
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    assert!(ack.contains("MSA|AA|DEBRPT01"), "{ack}");
    wait_for("the report in the clinic's folder", 60, || {
        m.ok("ls /srv/yilian/reports/*.txt 2>/dev/null")
            .is_ok_and(|l| !l.trim().is_empty())
    });
    let read = m
        .ok("su clinicpc -s /bin/sh -c 'cat /srv/yilian/reports/*.txt'")
        .expect("the clinic PC's user reads the report");
    assert!(read.contains("窦性心律"), "{read}");
    wait_for("the read-only folder explained", 60, || {
        m.ok("LANG=en_US.UTF-8 yilian-gateway status --config /etc/yilian/gateway.toml 2>&1")
            .is_ok_and(|s| s.contains("read-only to the box") && s.contains("ReadWritePaths"))
    });

    // Five renewals of 15-second certificates under the sandbox.
    let cert = m.path("/var/lib/yilian/identity/gateway.pem");
    let mut seen = vec![std::fs::read_to_string(&cert).expect("cert")];
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < 6 {
        assert!(
            Instant::now() < deadline,
            "{} renewal(s); journal:\n{}",
            seen.len() - 1,
            m.ok("journalctl -u yilian-gateway --no-pager | tail -n 40")
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
        if let Ok(c) = std::fs::read_to_string(&cert)
            && seen.last() != Some(&c)
        {
            seen.push(c);
        }
    }
    let wd2: u64 = prop(&m, "yilian-gateway", "WatchdogTimestampMonotonic")
        .parse()
        .unwrap_or(0);
    assert!(wd2 > wd1, "the watchdog is fed ({wd1} then {wd2})");
    m.ok("systemctl restart yilian-gateway").expect("restart");
    let (_, not_after) = yilian_gateway::certificate::validity(&cert).expect("validity");
    wait_for("back with its newest certificate", 60, || {
        let row = bench.show("anxi/hutou/box-1");
        row["link_up"] == true && row["certificate_not_after"].as_i64().unwrap_or(0) >= not_after
    });

    // SIGKILL in the middle of uploads: systemd restarts it, nothing that
    // left the folder is lost or doubled.
    let restarts =
        |m: &Machine| -> u32 { prop(m, "yilian-gateway", "NRestarts").parse().unwrap_or(0) };
    let before = restarts(&m);
    let batch = drop_files(&m, "killed", 12, 20_000_000);
    wait_for("uploads under way", 60, || {
        let left = std::fs::read_dir(m.path("/srv/yilian/drop/ecg"))
            .map(|d| d.count())
            .unwrap_or(0);
        left < 12
            && bench
                .delivered_files()
                .iter()
                .filter(|f| f.starts_with("killed"))
                .count()
                < 12
    });
    m.ok("systemctl kill -s KILL yilian-gateway").expect("kill");
    wait_for("systemd restarting it", 30, || {
        restarts(&m) > before && prop(&m, "yilian-gateway", "ActiveState") == "active"
    });
    wait_delivered_once(&bench, &batch, 180);

    // A spool writer that is stuck (another process holds the index's
    // write lock): no watchdog pings, so systemd restarts the service.
    let before = restarts(&m);
    let db =
        rusqlite::Connection::open(m.path("/var/lib/yilian/spool/index.sqlite")).expect("index");
    db.execute_batch("BEGIN EXCLUSIVE")
        .expect("take the write lock");
    wait_for("the watchdog restarting the service", 90, || {
        restarts(&m) > before
    });
    db.execute_batch("ROLLBACK").expect("release");
    drop(db);
    let journal = m
        .ok("journalctl -u yilian-gateway --no-pager | grep -i watchdog | tail -n 3")
        .unwrap_or_default();
    assert!(journal.to_lowercase().contains("watchdog"), "{journal}");
    wait_for("active again", 60, || {
        prop(&m, "yilian-gateway", "ActiveState") == "active"
    });

    // Upgrade while items wait (central down): the configuration stays as
    // the admin left it, and everything is delivered after.
    bench.stop_central();
    let waiting = drop_files(&m, "upgrade", 5, 1_000_000);
    wait_for("the files taken into the spool", 60, || {
        std::fs::read_dir(m.path("/srv/yilian/drop/ecg"))
            .map(|d| d.count())
            .unwrap_or(1)
            == 0
    });
    let config_before = std::fs::read(m.path("/etc/yilian/gateway.toml")).expect("config");
    let said = m
        .ok(&format!(
            "cd /root/debs/2 && DEBIAN_FRONTEND=noninteractive apt-get install -y ./{} 2>&1",
            gateway_deb(&v2)
        ))
        .expect("upgrade");
    assert!(!said.contains("conffile"), "no conffile question: {said}");
    assert_eq!(
        m.ok("dpkg-query -W -f '${Version}' yilian-gateway")
            .expect("version")
            .trim(),
        "0.1.0-2"
    );
    assert_eq!(
        std::fs::read(m.path("/etc/yilian/gateway.toml")).expect("config"),
        config_before,
        "the configuration is untouched"
    );
    assert_eq!(prop(&m, "yilian-gateway", "ActiveState"), "active");
    bench.start_central();
    wait_tcp(bench.metrics);
    wait_delivered_once(&bench, &waiting, 120);
    drop(m);

    // A clinic with no usable internet: the USB stick carries the package
    // with the token; one script installs, enrolls and starts the box.
    let stick = tmp.path().join("usb");
    let pkg = v1
        .iter()
        .find(|p| s(p).contains("yilian-gateway_"))
        .expect("gateway package");
    ok(bench.admin(&[
        "bundle",
        "--gateway",
        "anxi/hutou/box-2",
        "--out",
        s(&stick),
        "--package",
        s(pkg),
    ]));
    let fresh = Machine::boot(
        &tmp.path().join("machine-2"),
        &[format!("{}:/media/usb", stick.display())],
    )
    .expect("a second machine");
    let said = fresh
        .ok("sh /media/usb/yilian-bundle/install.sh 2>&1")
        .unwrap_or_else(|e| {
            // What the service said is what tells a slow start from a
            // refusal.
            let journal = fresh.sh("journalctl -u yilian-gateway --no-pager -n 40 2>&1");
            panic!(
                "install from the stick: {e:#}\njournal:\n{}",
                String::from_utf8_lossy(&journal.stdout)
            )
        });
    // In the technician's language: Chinese by default, English with LANG=en.
    assert!(
        said.contains("enrolled as anxi/hutou/box-2") || said.contains("已注册为 anxi/hutou/box-2"),
        "{said}"
    );
    wait_for("the second box up at central", 60, || {
        bench.show("anxi/hutou/box-2")["link_up"] == true
    });
    drop(fresh);
}
