//! Link benchmarks on the emulated uplink (`yilian-rig bench`, group
//! `link`): the real gateway in the clinic namespace, the real central in
//! the hub namespace.
//!
//! - bulk goodput per profile, beside `curl` uploading the same bytes over
//!   HTTPS to nginx on the same emulated link (what a clinic would use
//!   instead);
//! - STAT ECGs dropped while a 1 GB study saturates the 4G link: time to
//!   COMMITTED against their own transfer time and the round trip;
//! - reports back down (200 kB PDF) from central's commit to the clinic
//!   HIS's receipt, on an idle 4G link and while a study saturates its
//!   uplink, against their own transfer time and the round trip;
//! - an outage in the middle of a backlog: bytes sent twice, time to the
//!   first byte after the link returns, drain rate, goodput over time;
//! - the gateway's peak RSS and CPU seconds per GB sent.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::clinic::{Clinic, HUB_NAME};
use crate::plot::{Chart, Series};
use crate::report::Report;
use crate::wan::{HUB_ADDR, Profile};

pub struct LinkOptions {
    /// Profiles for the goodput comparison.
    pub profiles: Vec<String>,
    /// Seconds of transfer at each profile's rate.
    pub goodput_secs: u64,
    pub outage_backlog_mib: u64,
    pub outage_secs: u64,
    /// Scenarios to run: goodput, urgent, reports, outage.
    pub scenarios: Vec<String>,
}

impl LinkOptions {
    pub fn full() -> Self {
        Self {
            profiles: vec!["adsl".into(), "4g".into(), "satellite".into()],
            goodput_secs: 30,
            outage_backlog_mib: 2048,
            outage_secs: 300,
            scenarios: vec![
                "goodput".into(),
                "urgent".into(),
                "reports".into(),
                "outage".into(),
            ],
        }
    }

    pub fn quick() -> Self {
        Self {
            profiles: vec!["adsl".into(), "4g".into()],
            goodput_secs: 10,
            outage_backlog_mib: 256,
            outage_secs: 30,
            scenarios: vec![
                "goodput".into(),
                "urgent".into(),
                "sharing".into(),
                "reports".into(),
                "outage".into(),
            ],
        }
    }
}

pub fn run(dir: &Path, opts: &LinkOptions, report: &mut Report) -> anyhow::Result<()> {
    let on = |s: &str| opts.scenarios.iter().any(|o| o == s);
    if on("goodput") {
        for name in &opts.profiles {
            goodput(dir, name, opts.goodput_secs, report)
                .with_context(|| format!("goodput on {name}"))?;
        }
    }
    if on("urgent") {
        urgent_under_load(dir, report).context("STAT ECGs under load")?;
    }
    if on("sharing") {
        sharing_the_line(dir, report).context("sharing the clinic's line")?;
    }
    if on("reports") {
        reports_under_load(dir, report).context("reports down under load")?;
    }
    if on("outage") {
        outage(dir, opts, report).context("outage in a backlog")?;
    }
    Ok(())
}

fn mbit(bits_per_s: f64) -> String {
    format!("{:.2} Mbit/s", bits_per_s / 1e6)
}

/// nginx accepting HTTPS PUTs in the hub namespace, with central's
/// certificate (the same TLS identity the gateway checks).
struct Nginx {
    child: Child,
    port: u16,
}

impl Nginx {
    fn start(clinic: &Clinic, dir: &Path) -> anyhow::Result<Self> {
        let root = dir.join("nginx");
        let store = root.join("store");
        std::fs::create_dir_all(store.join("upload"))?;
        std::fs::create_dir_all(root.join("tmp"))?;
        let tls = clinic.fleet.dir.join("central");
        let port = 8443;
        let conf = format!(
            "user root;\nworker_processes 1;\npid {r}/nginx.pid;\nerror_log {r}/error.log warn;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {r}/tmp;\n  proxy_temp_path {r}/tmp;\n  \
             fastcgi_temp_path {r}/tmp;\n  uwsgi_temp_path {r}/tmp;\n  scgi_temp_path {r}/tmp;\n  \
             server {{\n    listen {HUB_ADDR}:{port} ssl;\n    ssl_certificate {c}/central.pem;\n    \
             ssl_certificate_key {c}/central.key;\n    ssl_protocols TLSv1.3;\n    \
             client_max_body_size 0;\n    location /upload/ {{\n      root {s};\n      \
             dav_methods PUT;\n      create_full_put_path on;\n    }}\n  }}\n}}\n",
            r = root.display(),
            c = tls.display(),
            s = store.display(),
        );
        let conf_path = root.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let child = clinic
            .wan
            .hub
            .command("nginx")
            .args(["-c", &conf_path.display().to_string(), "-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx (Debian package nginx-light)")?;
        std::thread::sleep(Duration::from_millis(500));
        Ok(Self { child, port })
    }

    /// Uploads `file` with curl from the clinic; returns seconds.
    fn upload(&self, clinic: &Clinic, file: &Path) -> anyhow::Result<f64> {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let out = clinic
            .wan
            .clinic
            .command("curl")
            .args([
                "-sS",
                "--fail",
                "--cacert",
                &clinic
                    .fleet
                    .dir
                    .join("central/ca.pem")
                    .display()
                    .to_string(),
                "--resolve",
                &format!("{HUB_NAME}:{}:{HUB_ADDR}", self.port),
                "-T",
                &file.display().to_string(),
                &format!("https://{HUB_NAME}:{}/upload/{name}", self.port),
                "-o",
                "/dev/null",
                "-w",
                "%{time_total}",
            ])
            .output()
            .context("running curl")?;
        anyhow::ensure!(
            out.status.success(),
            "curl: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) of a process; Linux's USER_HZ is 100.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// The uplink's congestion controllers the link rows compare: ours (the
/// default) and quinn's BBR, the previous default, in the same run.
const CONTROLLERS: [(&str, &str); 2] = [("bounded", ""), ("quinn BBR", "congestion = \"bbr\"\n")];

fn goodput(dir: &Path, name: &str, secs: u64, report: &mut Report) -> anyhow::Result<()> {
    let profile = Profile::load(name)?;
    let rate = profile.up.rate_kbit.unwrap_or(1_000_000) as f64 * 1000.0;
    let size = (rate / 8.0 * secs as f64) as u64;
    let mut theirs = None;
    for (controller, uplink) in CONTROLLERS {
        let dir = dir.join(format!("goodput-{name}-{}", controller.replace(' ', "-")));
        std::fs::create_dir_all(&dir)?;
        let clinic = Clinic::start(&dir, profile.clone(), uplink)?;

        let cpu0 = cpu_seconds(clinic.gateway.id());
        let wire0 = clinic
            .wan
            .up()
            .bytes_in
            .load(std::sync::atomic::Ordering::Relaxed);
        let file = format!("BULK-{name}.BIN");
        clinic.drop_file(&clinic.bulk, &file, size)?;
        let row = clinic.wait_committed(&file, Duration::from_secs(secs * 20 + 120))?;
        let ours = size as f64 * 8.0 / (row.end_to_end_ms as f64 / 1000.0);
        let cpu = cpu_seconds(clinic.gateway.id()) - cpu0;
        let wire = clinic
            .wan
            .up()
            .bytes_in
            .load(std::sync::atomic::Ordering::Relaxed)
            - wire0;

        if theirs.is_none() {
            let nginx = Nginx::start(&clinic, &dir)?;
            let source = dir.join(format!("curl-{name}.bin"));
            std::fs::File::create(&source)?.set_len(size)?;
            let t = nginx.upload(&clinic, &source)?;
            theirs = Some(size as f64 * 8.0 / t);
        }
        let theirs = theirs.unwrap_or_default();
        report.row(
            &format!(
                "bulk goodput, {name} ({}, {:.0} ms RTT), {} MB, {controller}",
                mbit(rate),
                profile.base_rtt_ms(),
                size / 1_000_000
            ),
            format!(
                "{} ({:.0} % of link; on the wire {:.2}× the payload)",
                mbit(ours),
                ours / rate * 100.0,
                wire as f64 / size as f64
            ),
            format!(
                "curl → nginx HTTPS {} ({:.0} %)",
                mbit(theirs),
                theirs / rate * 100.0
            ),
        );
        report.row(
            &format!("gateway CPU while sending, {name}, {controller}"),
            format!(
                "{:.1} % of one core",
                cpu / (row.end_to_end_ms as f64 / 1000.0) * 100.0
            ),
            "-".into(),
        );
    }
    Ok(())
}

fn urgent_under_load(dir: &Path, report: &mut Report) -> anyhow::Result<()> {
    let mut series = Vec::new();
    for (controller, uplink) in CONTROLLERS {
        series.push(urgent_with(dir, controller, uplink, report)?);
    }
    let profile = Profile::load("4g")?;
    let rate = profile.up.rate_kbit.unwrap_or(20_000) as f64 * 1000.0;
    let rtt = profile.base_rtt_ms();
    let own = URGENT_ECG as f64 * 8.0 / rate * 1000.0;
    report.chart(
        "urgent-latency.svg",
        Chart {
            title: "STAT ECG (100 kB) to COMMITTED while a 1 GB study saturates 4G".into(),
            x_label: "seconds into the study's upload".into(),
            y_label: "ms, gateway took it → central committed".into(),
            series,
            bands: vec![],
            levels: vec![
                (own + rtt, "own transfer + RTT".into()),
                (rtt, "RTT".into()),
            ],
        },
    );
    Ok(())
}

const URGENT_ECG: usize = 100_000;

fn urgent_with(
    dir: &Path,
    controller: &str,
    uplink: &str,
    report: &mut Report,
) -> anyhow::Result<Series> {
    let profile = Profile::load("4g")?;
    let rate = profile.up.rate_kbit.unwrap_or(20_000) as f64 * 1000.0;
    let rtt = profile.base_rtt_ms();
    let dir = dir.join(format!("urgent-{}", controller.replace(' ', "-")));
    std::fs::create_dir_all(&dir)?;
    let clinic = Clinic::start(&dir, profile, uplink)?;
    clinic.drop_file(&clinic.bulk, "CT-STUDY-1GB.BIN", 1 << 30)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while clinic.central_received() < 5e6 {
        anyhow::ensure!(Instant::now() < deadline, "the study did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    const ECG: usize = URGENT_ECG;
    let started = Instant::now();
    let mut points = Vec::new();
    for i in 0..10u32 {
        let ecg: Vec<u8> = (0..ECG as u32)
            .map(|b| (b.wrapping_mul(31).wrapping_add(i * 97) % 251) as u8)
            .collect();
        let name = format!("STAT-{i:02}.SCP");
        let at = started.elapsed().as_secs_f64();
        clinic.drop_bytes(&clinic.urgent, &name, &ecg)?;
        let row = clinic.wait_committed(&name, Duration::from_secs(60))?;
        points.push((at, row.end_to_end_ms as f64));
        std::thread::sleep(Duration::from_secs(2));
    }
    let mut ms: Vec<f64> = points.iter().map(|p| p.1).collect();
    ms.sort_by(f64::total_cmp);
    let own = ECG as f64 * 8.0 / rate * 1000.0;
    report.row(
        &format!("STAT ECG 100 kB during a 1 GB study, 4g (10 ECGs), {controller}"),
        format!(
            "median {:.0} ms, max {:.0} ms to COMMITTED",
            ms[ms.len() / 2],
            ms[ms.len() - 1]
        ),
        format!("own transfer {own:.0} ms + RTT {rtt:.0} ms"),
    );
    Ok(Series {
        name: format!("STAT ECG, {controller}"),
        points,
        markers: true,
    })
}

/// The clinic's other traffic on its 4G line while a backlog drains: a
/// TCP bulk flow (the HIS syncing, a video consultation's upload) and a
/// 20-per-second UDP ping beside it, first alone, then beside a 1 GB
/// study uploading with the line shared (the default) and with
/// `share_line = false`.
fn sharing_the_line(dir: &Path, report: &mut Report) -> anyhow::Result<()> {
    let profile = Profile::load("4g")?;
    let rate = profile.up.rate_kbit.unwrap_or(20_000) as f64 * 1000.0;
    // TCP's payload share of a 1,500-byte packet with timestamps.
    let tcp_ceiling = rate * 1448.0 / 1500.0;
    let secs = 20.0;
    let bytes = (tcp_ceiling / 8.0 * secs) as u64;
    let mut alone: Option<(f64, f64)> = None;
    for (case, uplink) in [
        ("alone", None),
        ("beside a backlog, line shared", Some("")),
        (
            "beside a backlog, share_line = false",
            Some("share_line = false\n"),
        ),
    ] {
        let dir = dir.join(format!("sharing-{}", case.replace([' ', ',', '='], "-")));
        std::fs::create_dir_all(&dir)?;
        let clinic = Clinic::start(&dir, profile.clone(), uplink.unwrap_or(""))?;
        if uplink.is_some() {
            clinic.drop_file(&clinic.bulk, "CT-STUDY-1GB.BIN", 1 << 30)?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while clinic.central_received() < 10e6 {
                anyhow::ensure!(Instant::now() < deadline, "the study did not start");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let received0 = clinic.central_received();
        let (tcp, ping) = other_traffic(&clinic, bytes, secs)?;
        let ours = (clinic.central_received() - received0) * 8.0 / tcp.seconds;
        let share = tcp.kbit_per_s * 1000.0 / tcp_ceiling;
        let (anchor, figure) = match alone {
            None => {
                alone = Some((share, ping.rtt_ms_p50));
                (
                    format!("the link: {} for TCP's payload", mbit(tcp_ceiling)),
                    format!(
                        "TCP {} ({:.0} % of what it can carry), ping RTT p50 {:.0} ms, p99 {:.0} ms",
                        mbit(tcp.kbit_per_s * 1000.0),
                        share * 100.0,
                        ping.rtt_ms_p50,
                        ping.rtt_ms_p99
                    ),
                )
            }
            Some((alone_share, alone_rtt)) => (
                format!(
                    "TCP alone: {:.0} %, ping RTT p50 {alone_rtt:.0} ms",
                    alone_share * 100.0
                ),
                format!(
                    "TCP {} ({:.0} %), ping RTT p50 {:.0} ms ({:+.0} ms), p99 {:.0} ms; the backlog {}",
                    mbit(tcp.kbit_per_s * 1000.0),
                    share * 100.0,
                    ping.rtt_ms_p50,
                    ping.rtt_ms_p50 - alone_rtt,
                    ping.rtt_ms_p99,
                    mbit(ours)
                ),
            ),
        };
        report.row(
            &format!("the clinic's TCP flow on 4g, {case}"),
            figure,
            anchor,
        );
    }
    Ok(())
}

/// A TCP flow of `bytes` and a ping for `secs` from the clinic to the hub.
fn other_traffic(
    clinic: &Clinic,
    bytes: u64,
    secs: f64,
) -> anyhow::Result<(crate::wan::probe::TcpResult, crate::wan::probe::UdpResult)> {
    let rig = std::env::current_exe()?;
    let hub = crate::wan::HUB_ADDR;
    let mut sinks = Vec::new();
    for (kind, port) in [("tcp-sink", 9101u16), ("udp-sink", 9102)] {
        sinks.push(KillOnDrop(
            clinic
                .wan
                .hub
                .command(&rig)
                .args(["probe", kind, "--listen", &format!("0.0.0.0:{port}")])
                .stdout(std::process::Stdio::null())
                .spawn()?,
        ));
    }
    std::thread::sleep(Duration::from_millis(300));
    let pings = (secs * 20.0) as u64;
    let ping = clinic
        .wan
        .clinic
        .command(&rig)
        .args(["probe", "udp-send", "--to", &format!("{hub}:9102")])
        .args(["--count", &pings.to_string(), "--size", "64", "--pps", "20"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let tcp = clinic
        .wan
        .clinic
        .command(&rig)
        .args(["probe", "tcp-send", "--to", &format!("{hub}:9101")])
        .args(["--bytes", &bytes.to_string()])
        .output()?;
    let ping = ping.wait_with_output()?;
    anyhow::ensure!(
        tcp.status.success() && ping.status.success(),
        "a probe failed"
    );
    Ok((
        serde_json::from_slice(&tcp.stdout)?,
        serde_json::from_slice(&ping.stdout)?,
    ))
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The clinic's HIS inside the clinic namespace: python `hl7`'s MLLP
/// server, logging each message with the time it arrived.
struct NamespacedHis {
    child: Child,
    log: std::path::PathBuf,
}

impl NamespacedHis {
    fn start(clinic: &Clinic, port: u16) -> anyhow::Result<Self> {
        let log = clinic.dir.join("his.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/his_server.py");
        let mut child = clinic
            .wan
            .clinic
            .command("python3")
            .arg(script)
            .args(["--port", &port.to_string(), "--log"])
            .arg(&log)
            .stdout(Stdio::piped())
            .spawn()
            .context("python3 his_server.py (pip package hl7)")?;
        let mut out = child.stdout.take().context("stdout")?;
        let mut ready = [0u8; 6];
        std::io::Read::read_exact(&mut out, &mut ready).context("the HIS did not start")?;
        Ok(Self { child, log })
    }

    /// When the message with `control` arrived, in seconds since the epoch.
    fn arrived(&self, control: &str) -> Option<f64> {
        std::fs::read_to_string(&self.log)
            .ok()?
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["control_id"].as_str() == Some(control))
            .and_then(|v| v["at"].as_f64())
    }
}

impl Drop for NamespacedHis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one message over MLLP and waits for its ACK.
fn mllp_exchange(addr: std::net::SocketAddr, message: &[u8]) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(&yilian_codecs::mllp::encode(message))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(&[0x1c, 0x0d]) {
        let k = s.read(&mut buf)?;
        anyhow::ensure!(k > 0, "central closed the connection");
        got.extend_from_slice(&buf[..k]);
    }
    Ok(String::from_utf8_lossy(&got).into_owned())
}

fn reports_under_load(dir: &Path, report: &mut Report) -> anyhow::Result<()> {
    use base64::Engine;
    const HL7_PORT: u16 = 2577;
    const HIS_PORT: u16 = 2590;
    const PDF: usize = 200_000;
    let profile = Profile::load("4g")?;
    let down = profile.down.rate_kbit.unwrap_or(20_000) as f64 * 1000.0;
    let rtt = profile.base_rtt_ms();
    let dir = dir.join("reports");
    std::fs::create_dir_all(&dir)?;
    let clinic = Clinic::start_with(
        &dir,
        profile,
        "",
        &format!("\n[reports]\nhl7_listen = \"0.0.0.0:{HL7_PORT}\"\n"),
        &format!(
            "\n[[report_sink]]\nname = \"his\"\ntype = \"hl7\"\naddress = \"127.0.0.1:{HIS_PORT}\"\nack_timeout = \"30s\"\n"
        ),
    )?;
    let his = NamespacedHis::start(&clinic, HIS_PORT)?;
    let central = std::net::SocketAddr::from((clinic.wan.hub_mgmt, HL7_PORT));
    // One report: committed at central (its ACK back), then received by
    // the clinic's HIS; returns the milliseconds in between.
    let send = |i: u32| -> anyhow::Result<f64> {
        let mut pdf = b"%PDF-1.4\n".to_vec();
        pdf.extend(
            (0..PDF as u32).map(|b| (b.wrapping_mul(131).wrapping_add(i * 7919) % 251) as u8),
        );
        pdf.extend(b"\n%%EOF\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(&pdf);
        let control = format!("BENCHRPT{i:04}");
        let message = format!(
            "MSH|^~\\&|RIS|COUNTY|YILIAN|bench/clinic|20261203101500||ORU^R01|{control}|P|2.5\r\
             PID|1||P{i:05}\r\
             OBR|1||ACC-B{i}|CHEST^Chest X-ray|||20261203100000|||||||||||ACC-B{i}||||20261203101400|||F\r\
             OBX|1|ED|PDF^Report||^application^pdf^Base64^{b64}||||||F\r"
        );
        let ack = mllp_exchange(central, message.as_bytes())?;
        let committed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs_f64();
        anyhow::ensure!(ack.contains(&format!("|{control}")), "central: {ack}");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(at) = his.arrived(&control) {
                return Ok((at - committed) * 1000.0);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{control} did not reach the clinic's HIS\ngateway log:\n{}",
                clinic.log_tail("gateway.log")
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let percentiles = |mut ms: Vec<f64>| {
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        format!("p50 {:.0} ms, p99 {:.0} ms", at(0.5), at(0.99))
    };
    let idle: Vec<f64> = (0..8)
        .map(|i| {
            let ms = send(i);
            std::thread::sleep(Duration::from_millis(500));
            ms
        })
        .collect::<anyhow::Result<_>>()?;
    clinic.drop_file(&clinic.bulk, "CT-STUDY-1GB.BIN", 1 << 30)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while clinic.central_received() < 5e6 {
        anyhow::ensure!(Instant::now() < deadline, "the study did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let loaded: Vec<f64> = (100..120)
        .map(|i| {
            let ms = send(i);
            std::thread::sleep(Duration::from_secs(1));
            ms
        })
        .collect::<anyhow::Result<_>>()?;
    let own = PDF as f64 * 4.0 / 3.0 * 8.0 / down * 1000.0;
    let anchor = format!("own transfer {own:.0} ms + RTT {rtt:.0} ms");
    report.row(
        "report 200 kB PDF, central commit → clinic HIS, 4g idle (8)",
        percentiles(idle),
        anchor.clone(),
    );
    report.row(
        "report 200 kB PDF, central commit → clinic HIS, 4g uplink saturated by a 1 GB study (20)",
        percentiles(loaded),
        anchor,
    );
    Ok(())
}

fn outage(dir: &Path, opts: &LinkOptions, report: &mut Report) -> anyhow::Result<()> {
    let profile = Profile::load("fibre")?;
    let rate = profile.up.rate_kbit.unwrap_or(100_000) as f64 * 1000.0;
    let dir = dir.join("outage");
    std::fs::create_dir_all(&dir)?;
    let clinic = Clinic::start(&dir, profile, "")?;
    // The backlog as 64 MiB files, a day of a busy clinic's imaging.
    const FILE: u64 = 64 << 20;
    let files = (opts.outage_backlog_mib << 20).div_ceil(FILE);
    let total = files * FILE;
    let started = Instant::now();
    for i in 0..files {
        clinic.drop_file(&clinic.bulk, &format!("SERIES-{i:03}.BIN"), FILE)?;
    }
    let mut samples: Vec<(f64, f64)> = Vec::new();
    let sample = |samples: &mut Vec<(f64, f64)>| {
        let r = clinic.central_received();
        samples.push((started.elapsed().as_secs_f64(), r));
        r
    };
    let mut cut_at = None;
    let mut restored_at = None;
    let mut first_byte_after = None;
    let mut received_at_restore = 0.0;
    let deadline = Instant::now() + Duration::from_secs(opts.outage_secs + 3600);
    loop {
        let r = sample(&mut samples);
        let now = started.elapsed().as_secs_f64();
        if cut_at.is_none() && r >= total as f64 * 0.4 {
            clinic.wan.cut();
            cut_at = Some(now);
        }
        if let Some(c) = cut_at
            && restored_at.is_none()
            && now - c >= opts.outage_secs as f64
        {
            clinic.wan.restore();
            restored_at = Some(now);
            received_at_restore = r;
        }
        if restored_at.is_some() && first_byte_after.is_none() && r > received_at_restore {
            first_byte_after = Some(now);
        }
        if restored_at.is_some() && clinic.committed()?.len() as u64 == files {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the backlog did not drain");
        std::thread::sleep(Duration::from_millis(250));
    }
    let done = started.elapsed().as_secs_f64();
    let sent = clinic
        .gateway_metric("yilian_uplink_sent_bytes_total", &[])
        .unwrap_or(0.0);
    let received = clinic.central_received();
    let wire = clinic
        .wan
        .up()
        .bytes_in
        .load(std::sync::atomic::Ordering::Relaxed) as f64;
    let rss = crate::procs::peak_rss_of(clinic.gateway.id()).unwrap_or(0);
    let cpu = cpu_seconds(clinic.gateway.id());
    let (c, r, fb) = (
        cut_at.unwrap_or(0.0),
        restored_at.unwrap_or(0.0),
        first_byte_after.unwrap_or(0.0),
    );
    let drain = (total as f64 - received_at_restore).max(0.0) * 8.0 / (done - fb).max(0.001);
    report.row(
        &format!(
            "{} s outage in a {} MiB backlog, fibre ({})",
            opts.outage_secs,
            total >> 20,
            mbit(rate)
        ),
        format!(
            "first byte {:.1} s after the link returned; drain {}",
            fb - r,
            mbit(drain)
        ),
        format!(
            "resent: {:.1} MB by the gateway, {:.1} MB received twice at central; \
             on the wire {:.1} % above the payload",
            (sent - total as f64).max(0.0) / 1e6,
            (received - total as f64).max(0.0) / 1e6,
            (wire / total as f64 - 1.0) * 100.0
        ),
    );
    report.row(
        "gateway peak RSS / CPU per GB, backlog drain",
        format!(
            "{} MiB / {:.1} s per GB",
            rss >> 20,
            cpu / (total as f64 / 1e9)
        ),
        "-".into(),
    );
    // Goodput over a one-second window (four samples).
    let per_second: Vec<(f64, f64)> = samples
        .iter()
        .zip(samples.iter().skip(4))
        .map(|(a, b)| (b.0, (b.1 - a.1) * 8.0 / (b.0 - a.0).max(1e-3) / 1e6))
        .collect();
    report.chart(
        "goodput-outage.svg",
        Chart {
            title: format!(
                "Backlog of {} MiB over fibre with a {} s outage",
                total >> 20,
                opts.outage_secs
            ),
            x_label: "seconds".into(),
            y_label: "Mbit/s received by central (1 s window)".into(),
            series: vec![Series {
                name: "gateway → central goodput".into(),
                points: per_second,
                markers: false,
            }],
            bands: vec![(c, r, "link down".into())],
            levels: vec![(rate / 1e6, "link rate".into())],
        },
    );
    Ok(())
}

/// Where `bench --report` writes the table and charts.
pub fn write_report(report: &Report, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("bench.md"), report.markdown())?;
    for (file, chart) in report.charts() {
        std::fs::write(dir.join(file), chart.svg())?;
    }
    Ok(())
}
