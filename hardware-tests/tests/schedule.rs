#![allow(clippy::expect_used, clippy::unwrap_used)]
//! Bandwidth schedules on the emulated link: the gateway keeps to the cap
//! of the window in force (in the clinic's clock), shows it as a metric,
//! and a STAT ECG still goes at once on its urgent allowance.

use std::time::{Duration, Instant};

use time::OffsetDateTime;
use yilian_rig::clinic::Clinic;
use yilian_rig::wan::Profile;

/// A daily window around the present minute in +08:00, so the test runs
/// in office hours whenever it runs.
fn window_around_now(rate: &str) -> String {
    let local = OffsetDateTime::now_utc().to_offset(time::UtcOffset::from_hms(8, 0, 0).unwrap());
    let now = i32::from(local.hour()) * 60 + i32::from(local.minute());
    let hhmm = |m: i32| {
        let m = m.rem_euclid(1440);
        format!("{:02}:{:02}", m / 60, m % 60)
    };
    format!(
        "\n[[uplink.schedule]]\ndays = \"daily\"\nfrom = \"{}\"\nto = \"{}\"\nrate = \"{rate}\"\n",
        hhmm(now - 60),
        hhmm(now + 120)
    )
}

#[test]
fn the_gateway_keeps_to_the_scheduled_cap_and_stat_items_go_beyond_it() {
    let tmp = tempfile::Builder::new()
        .prefix("yilian-schedule-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    // A 50 Mbit/s line, so the cap and not the link sets the pace.
    let profile = Profile::parse(
        "office",
        "[up]\nrate_kbit = 50000\ndelay_ms = 20\n[down]\nrate_kbit = 50000\ndelay_ms = 20\n",
    )
    .unwrap();
    let clinic = Clinic::start(
        tmp.path(),
        profile,
        &format!(
            "utc_offset = \"+08:00\"\nurgent_allowance = \"5 MB\"\n{}",
            window_around_now("4 Mbit/s")
        ),
    )
    .unwrap();
    assert_eq!(
        clinic.gateway_metric("yilian_uplink_rate_cap_bytes_per_second", &[]),
        Some(500_000.0)
    );

    clinic
        .drop_file(&clinic.bulk, "CT-SERIES.BIN", 40_000_000)
        .unwrap();
    // Measure the wire rate over ten seconds once the upload runs.
    let deadline = Instant::now() + Duration::from_secs(30);
    while clinic.central_received() < 1_000_000.0 {
        assert!(Instant::now() < deadline, "the upload did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (b0, t0) = (
        clinic
            .wan
            .up()
            .bytes_out
            .load(std::sync::atomic::Ordering::Relaxed),
        Instant::now(),
    );
    let r0 = clinic.central_received();
    std::thread::sleep(Duration::from_secs(10));
    let secs = t0.elapsed().as_secs_f64();
    let wire = (clinic
        .wan
        .up()
        .bytes_out
        .load(std::sync::atomic::Ordering::Relaxed)
        - b0) as f64
        * 8.0
        / secs;
    let goodput = (clinic.central_received() - r0) * 8.0 / secs;
    eprintln!("under a 4 Mbit/s cap: payload {goodput:.0} bit/s, wire {wire:.0} bit/s");
    assert!(
        goodput > 4e6 * 0.9 && goodput < 4e6 * 1.05,
        "payload {goodput}"
    );
    // Headers of QUIC, UDP and IP on top of the payload.
    assert!(wire < 4e6 * 1.1, "wire {wire}");
    assert!(
        clinic
            .gateway_metric("yilian_uplink_throttled_seconds_total", &[])
            .unwrap()
            > 1.0
    );

    // A STAT ECG while the cap is saturated: committed in well under the
    // time its 300 kB would take at the cap behind the queue (0.6 s alone).
    let ecg: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    clinic
        .drop_bytes(&clinic.urgent, "STAT-ECG.SCP", &ecg)
        .unwrap();
    let row = clinic
        .wait_committed("STAT-ECG.SCP", Duration::from_secs(30))
        .unwrap();
    eprintln!(
        "STAT ECG committed {} ms after the gateway took it",
        row.end_to_end_ms
    );
    assert_eq!(row.lane, "urgent");
    assert!(row.end_to_end_ms < 1500, "{} ms", row.end_to_end_ms);
    // The gauge is refreshed every second.
    std::thread::sleep(Duration::from_millis(1500));
    let left = clinic
        .gateway_metric("yilian_uplink_urgent_allowance_bytes", &[])
        .unwrap();
    assert!(
        left < 5e6 - 250_000.0 && left > 4e6,
        "allowance left {left}"
    );
}
