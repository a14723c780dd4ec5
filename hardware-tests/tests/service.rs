#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers may panic on setup failure
//! The systemd notify protocol, without systemd: the test plays the service
//! manager on a unix datagram socket.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use yilian_rig::configs::{CentralSetup, FolderSetup, GatewaySetup, free_tcp_port, free_udp_port};
use yilian_rig::fleet::Fleet;
use yilian_rig::procs::binary;

/// Messages received until `until` elapses (each datagram may hold several
/// newline-separated assignments).
fn collect(sock: &UnixDatagram, until: Duration) -> Vec<String> {
    let deadline = Instant::now() + until;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("timeout");
        match sock.recv(&mut buf) {
            Ok(n) => out.extend(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(str::to_owned),
            ),
            Err(_) => break,
        }
    }
    out
}

fn count(msgs: &[String], what: &str) -> usize {
    msgs.iter().filter(|m| m.as_str() == what).count()
}

#[test]
fn ready_after_listeners_watchdog_follows_health_and_sigterm_stops_cleanly() {
    let tmp = tempfile::Builder::new()
        .prefix("yilian-notify-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tmp");
    let dir = tmp.path();
    let fleet = Fleet::create(dir).expect("fleet");
    // Central is not started: readiness must not depend on the uplink.
    let central = CentralSetup {
        listen: free_udp_port().expect("port"),
        metrics: free_tcp_port().expect("port"),
        data_dir: dir.join("central"),
        tls: fleet.central("localhost").expect("cert"),
    };
    let metrics = free_tcp_port().expect("port");
    let spool = dir.join("spool");
    let gw = GatewaySetup {
        central: central.listen.to_string(),
        server_name: "localhost".into(),
        spool_dir: spool.clone(),
        metrics,
        tls: fleet.gateway("test/clinic/box-1").expect("cert"),
        folders: vec![FolderSetup {
            name: "share".into(),
            path: dir.join("drop"),
            lane: "bulk",
            settle_ms: 500,
        }],
        idle_timeout_ms: None,
        reconnect_max_ms: 1000,
        quota_bytes: None,
        extra: String::new(),
    };
    std::fs::write(dir.join("gateway.toml"), gw.toml()).expect("write");

    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind");
    let mut child = Command::new(binary("yilian-gateway").expect("binary"))
        .args([
            "run",
            "--config",
            dir.join("gateway.toml").to_str().expect("utf8"),
        ])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(dir.join("gateway.log")).expect("log"))
        .spawn()
        .expect("spawn");

    // READY=1, and by then the listener accepts and the spool exists.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let msgs = collect(&sock, Duration::from_millis(200));
        if msgs.iter().any(|m| m == "READY=1") {
            break;
        }
        assert!(Instant::now() < deadline, "no READY=1 within 20 s");
    }
    std::net::TcpStream::connect_timeout(&metrics, Duration::from_secs(1))
        .expect("the metrics listener accepts once READY=1 was sent");
    assert!(
        spool.join("index.sqlite").exists(),
        "the spool is open once READY=1 was sent"
    );

    // Healthy: pings every half watchdog period, with a status line.
    let msgs = collect(&sock, Duration::from_secs(3));
    assert!(
        count(&msgs, "WATCHDOG=1") >= 3,
        "pings while healthy: {msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("STATUS=link ") && m.contains("waiting")),
        "a one-line status: {msgs:?}"
    );

    // Stuck: another process holds the spool index's write lock, so the
    // spool's writer (and with it every append) cannot proceed.
    let db = rusqlite::Connection::open(spool.join("index.sqlite")).expect("open index");
    db.execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    let _ = collect(&sock, Duration::from_millis(1500)); // a check already under way may still pass
    let stuck = collect(&sock, Duration::from_secs(4));
    assert_eq!(
        count(&stuck, "WATCHDOG=1"),
        0,
        "no pings while the spool is stuck: {stuck:?}"
    );
    db.execute_batch("COMMIT").expect("release");
    drop(db);
    let after = collect(&sock, Duration::from_secs(14));
    assert!(
        count(&after, "WATCHDOG=1") >= 1,
        "pings resume once the spool answers: {after:?}"
    );

    // SIGTERM: STOPPING=1 and a clean exit.
    let pid = child.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut stopping = false;
    let status = loop {
        stopping |= collect(&sock, Duration::from_millis(200))
            .iter()
            .any(|m| m == "STOPPING=1");
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not stop within 15 s of SIGTERM"
        );
    };
    stopping |= collect(&sock, Duration::from_millis(200))
        .iter()
        .any(|m| m == "STOPPING=1");
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
    assert!(stopping, "STOPPING=1 sent");
    let log = std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default();
    assert!(
        log.contains("did not answer") || log.contains("cannot be used"),
        "the stuck spool is logged: {}",
        Path::new(&dir.join("gateway.log")).display()
    );
}
