#![allow(clippy::expect_used, clippy::unwrap_used)]
//! The link emulator measured by plain flows that are not ours to tune:
//! the kernel's TCP and numbered UDP datagrams between the clinic and hub
//! namespaces. Rate, delay and loss must match the profile.

use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::time::Duration;

use yilian_rig::wan::model::DropCause;
use yilian_rig::wan::probe::{TcpResult, UdpResult};
use yilian_rig::wan::{HUB_ADDR, Namespace, Profile, Wan};

fn rig() -> &'static str {
    env!("CARGO_BIN_EXE_yilian-rig")
}

struct Sink(Child);
impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sink(ns: &Namespace, kind: &str, port: u16) -> Sink {
    let mut c = ns
        .command(rig())
        .args(["probe", kind, "--listen", &format!("{HUB_ADDR}:{port}")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for its "listening" line.
    let mut out = c.stdout.take().unwrap();
    let mut byte = [0u8; 1];
    use std::io::Read;
    while out.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {}
    Sink(c)
}

fn send<T: serde::de::DeserializeOwned>(ns: &Namespace, args: &[&str]) -> T {
    let out = ns.command(rig()).arg("probe").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    eprintln!("{} → {}", args.join(" "), line.trim());
    serde_json::from_str(line.trim()).unwrap()
}

fn addr(port: u16) -> String {
    SocketAddr::from((HUB_ADDR, port)).to_string()
}

/// The emulator is a userspace process timing packets: two of them at once
/// on a two-core machine measure each other's scheduling, not the model.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn within(measured: f64, expected: f64, share: f64) -> bool {
    (measured - expected).abs() <= expected * share
}

#[test]
fn rate_delay_and_loss_of_plain_flows_match_the_profile() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let profile = Profile::parse(
        "bench-check",
        r#"
        mtu = 1500
        [up]
        rate_kbit = 8000
        queue_ms = 100
        delay_ms = 30
        loss = 0.05
        loss_burst = 2.0
        [down]
        delay_ms = 20
        "#,
    )
    .unwrap();
    let wan = Wan::start(profile).unwrap();

    // Paced well below the rate: no queue, so the round trip is the two
    // propagation delays plus one packet's serialisation (0.6 ms). 30 000
    // datagrams hold about 750 loss bursts of two (geometric lengths), so
    // the estimate's standard deviation is about 4.5 %: the check allows
    // four of them (a run at 2.8 was seen); the model's own test measures
    // the loss on two million packets.
    let _udp = sink(&wan.hub, "udp-sink", 9000);
    let r: UdpResult = send(
        &wan.clinic,
        &[
            "udp-send",
            "--to",
            &addr(9000),
            "--count",
            "30000",
            "--size",
            "572",
            "--pps",
            "1000",
        ],
    );
    // Below the rate, drops for queue room come only from the burst after
    // a stall of the machine (below); the profile's loss is the rest.
    let stall_drops = wan.up().dropped(DropCause::Queue) as f64 / r.sent as f64;
    assert!(
        within(r.loss_up - stall_drops, 0.05, 0.18),
        "loss {} ({stall_drops} for queue room)",
        r.loss_up
    );
    assert!(within(r.rtt_ms_p50, 50.6, 0.03), "rtt p50 {}", r.rtt_ms_p50);
    // The median above is the emulator's timing, and a standing queue
    // would move it (a bottleneck below the offered rate: 150.8 ms). The
    // top percent is whatever the machine does to three userspace
    // processes (sender, emulator, sink): a stall holds every packet in
    // flight, and a long one even overflows the model's queue with the
    // burst that follows. With no queue in the model, CI measured a p99
    // of 58 ms (max 87) and a local run of the suite 111 ms (max 304), each with the
    // p50 within 0.2 ms of the propagation. The 95th percentile is held
    // to 10 ms above it: breaking that takes 1.5 s of the 30 s stalled.
    assert!(r.rtt_ms_p95 < 50.6 + 10.0, "rtt p95 {}", r.rtt_ms_p95);
    assert!(r.rtt_ms_min >= 50.0, "rtt min {}", r.rtt_ms_min);
    assert_eq!(r.reordered, 0);
    let lost = wan.up().dropped(DropCause::Loss);
    assert!(lost > 0);

    // Flooding: the sink sees the bottleneck rate (wire bytes).
    let _flood = sink(&wan.hub, "udp-sink", 9003);
    let r: UdpResult = send(
        &wan.clinic,
        &[
            "udp-send",
            "--to",
            &addr(9003),
            "--count",
            "20000",
            "--size",
            "1172",
            "--pps",
            "1500",
        ],
    );
    // 5 % of the bottleneck's time goes to packets lost after it.
    let expect = 8000.0 * 0.95;
    assert!(
        within(r.sink_kbit_per_s, expect, 0.04),
        "rate {}",
        r.sink_kbit_per_s
    );
    assert!(wan.up().dropped(DropCause::Queue) > 0);
}

#[test]
fn tcp_goodput_fills_a_clean_link_and_an_outage_stops_everything() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let profile = Profile::parse(
        "bench-tcp",
        "mtu = 1500\n[up]\nrate_kbit = 10000\nqueue_ms = 100\ndelay_ms = 15\n[down]\ndelay_ms = 15\n",
    )
    .unwrap();
    let wan = Wan::start(profile).unwrap();
    let _tcp = sink(&wan.hub, "tcp-sink", 9001);
    let r: TcpResult = send(
        &wan.clinic,
        &["tcp-send", "--to", &addr(9001), "--bytes", "12000000"],
    );
    // Payload share of a 1500-byte packet with TCP timestamps: 1448/1500.
    let ceiling = 10_000.0 * 1448.0 / 1500.0;
    assert!(
        r.kbit_per_s > ceiling * 0.9 && r.kbit_per_s <= ceiling * 1.01,
        "goodput {} of {ceiling}",
        r.kbit_per_s
    );

    wan.cut();
    let _udp = sink(&wan.hub, "udp-sink", 9002);
    let out = wan
        .clinic
        .command(rig())
        .args([
            "probe",
            "udp-send",
            "--to",
            &addr(9002),
            "--count",
            "50",
            "--pps",
            "100",
        ])
        .output()
        .unwrap();
    // The sink's count never comes back through a cut link.
    assert!(!out.status.success());
    assert!(wan.up().dropped(DropCause::Outage) >= 50);
    wan.restore();
    std::thread::sleep(Duration::from_millis(100));
    let r: UdpResult = send(
        &wan.clinic,
        &[
            "udp-send",
            "--to",
            &addr(9002),
            "--count",
            "50",
            "--pps",
            "100",
        ],
    );
    assert_eq!(r.loss_up, 0.0);
}
