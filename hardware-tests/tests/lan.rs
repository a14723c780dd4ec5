#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers may panic on setup failure
//! A clinic LAN that misbehaves: floods, idle sockets, garbage. Every
//! listener stays bounded in memory, descriptors and log volume, and one
//! peer never locks out the others.
//!
//! Peers come from different loopback addresses (127.0.0.x) as they would
//! from different machines: the LIS is 127.0.0.2, the CT console
//! 127.0.0.5, the floods come from elsewhere. Figures (the LIS's ACK
//! latency with and without the flood) are printed.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use yilian_rig::configs::free_tcp_port;
use yilian_rig::hub::Hub;
use yilian_rig::logs::LogCapture;

fn ip(last: u8) -> IpAddr {
    [127, 0, 0, last].into()
}

/// A TCP connection from `from` (a loopback address of its own).
async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(from, 0))?;
    s.connect(to).await
}

fn oru(control_id: &str) -> String {
    format!(
        "MSH|^~\\&|LIS|XIACUN|YILIAN|HUB|20261203101500||ORU^R01^ORU_R01|{control_id}|P|2.5.1\rPID|1||P{control_id}||Wang^Fang\rOBR|1||S{control_id}|GLU^Glucose^L\rOBX|1|NM|GLU^Glucose^L||5.4|mmol/L|3.9-6.1|N|||F\r"
    )
}

/// Sends one framed message and reads the framed answer.
async fn exchange(s: &mut TcpStream, message: &[u8]) -> std::io::Result<String> {
    let mut framed = vec![0x0b];
    framed.extend_from_slice(message);
    framed.extend_from_slice(&[0x1c, 0x0d]);
    s.write_all(&framed).await?;
    read_block(s).await
}

async fn read_block(s: &mut TcpStream) -> std::io::Result<String> {
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
            .await
            .map_err(|_| std::io::Error::other("no answer within 10 s"))??;
        if n == 0 {
            return Err(std::io::Error::other("closed without an answer"));
        }
        got.extend_from_slice(&b[..n]);
        if got.ends_with(&[0x1c, 0x0d]) {
            return Ok(String::from_utf8_lossy(&got[1..got.len() - 2]).into_owned());
        }
    }
}

/// The LIS sends `n` results one at a time on one connection; returns the
/// ACK latencies, each checked to be AA for its own control id.
async fn lis_round(addr: SocketAddr, tag: &str, n: usize) -> Vec<Duration> {
    let mut s = connect_from(ip(2), addr).await.expect("the LIS connects");
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("{tag}{i:04}");
        let t = Instant::now();
        let ack = exchange(&mut s, oru(&id).as_bytes()).await.expect("an ACK");
        took.push(t.elapsed());
        assert!(ack.contains(&format!("MSA|AA|{id}")), "{ack}");
    }
    took
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn run_python(script: &str, args: &[String]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("peers")
        .join(script);
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 with pynetdicom (./scripts/test-all installs it)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `peers/assoc_peer.py MODE` as `calling` from the address `bind`.
fn assoc_peer(mode: &str, port: u16, calling: &str, bind: &str, extra: &[&str]) -> String {
    let mut args: Vec<String> = [mode, "--port", &port.to_string(), "--called", "YILIAN_GW"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    args.extend(["--calling", calling, "--bind", bind].map(str::to_owned));
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    run_python("assoc_peer.py", &args)
}

struct Listeners {
    hl7: SocketAddr,
    dicom: SocketAddr,
    astm: SocketAddr,
}

/// The floods take thousands of ephemeral ports: these tests run one at a
/// time, so that one's flood cannot take a port another is about to bind.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start(dir: &Path) -> (Hub, Listeners) {
    let _ = LogCapture::install();
    yilian_gateway::governor::raise_descriptor_limit();
    let l = Listeners {
        hl7: free_tcp_port().expect("port"),
        dicom: free_tcp_port().expect("port"),
        astm: free_tcp_port().expect("port"),
    };
    let extra = format!(
        "\n[[hl7]]\nname = \"lab\"\nlisten = \"127.0.0.1:{}\"\nmax_message_bytes = \"64 KiB\"\n\n[[hl7.peer]]\naddress = \"127.0.0.2\"\n\n\
         [[dicom]]\nname = \"modalities\"\nlisten = \"127.0.0.1:{}\"\nae_title = \"YILIAN_GW\"\nmax_associations = 8\n\n\
         [[dicom.allowed]]\nae_title = \"CT_ROOM\"\naddress = \"127.0.0.5:11113\"\n\n[[dicom.allowed]]\nae_title = \"SCANNER\"\n\n\
         [[astm]]\nname = \"chem\"\ntransport = \"tcp-server\"\nlisten = \"127.0.0.1:{}\"\n",
        l.hl7.port(),
        l.dicom.port(),
        l.astm.port()
    );
    let hub = Hub::start(dir, &extra).await.expect("hub");
    (hub, l)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_flood_leaves_the_lis_and_the_modality_served() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tmp");
    let (hub, l) = start(dir.path()).await;
    let logs = LogCapture::install();
    let log_before = logs.text().lines().count();

    let mut calm = lis_round(l.hl7, "CALM", 50).await;

    // The flood: 1,100 connections at the metrics port from one machine,
    // 2,000 idle ones at the HL7 port from another, 1,100 at the box's
    // page, 100 slow senders dribbling a byte every half second.
    let metrics = hub.gateway.metrics_addr;
    let mut held = Vec::new();
    for _ in 0..1100 {
        if let Ok(s) = connect_from(ip(7), metrics).await {
            held.push(s);
        }
    }
    for _ in 0..2000 {
        if let Ok(s) = connect_from(ip(3), l.hl7).await {
            held.push(s);
        }
    }
    // The box's page, opened to the clinic LAN, gets 1,100 of its own.
    let page = hub.gateway.page_addr.expect("the page is served");
    for _ in 0..1100 {
        if let Ok(s) = connect_from(ip(8), page).await {
            held.push(s);
        }
    }
    let mut slow = Vec::new();
    for _ in 0..100 {
        if let Ok(s) = connect_from(ip(4), l.hl7).await {
            slow.push(s);
        }
    }
    let dribble = tokio::spawn(async move {
        for _ in 0..40 {
            for s in slow.iter_mut() {
                let _ = s.write_all(b"M").await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The configured LIS and the configured modality are served.
    let mut flooded = lis_round(l.hl7, "FLOOD", 50).await;
    let dicom = l.dicom;
    let said = tokio::task::spawn_blocking(move || {
        assoc_peer(
            "echo",
            dicom.port(),
            "CT_ROOM",
            "127.0.0.5",
            &["--count", "10"],
        )
    })
    .await
    .expect("join");
    let ok = said.lines().filter(|l| l.contains("\"status\": 0")).count();
    assert_eq!(ok, 10, "every C-ECHO of the modality answered:\n{said}");
    // The metrics endpoint answers a scraper from elsewhere.
    let mut scrape = connect_from(ip(9), metrics).await.expect("connect");
    scrape
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: box\r\n\r\n")
        .await
        .expect("write");
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(10), scrape.read_to_string(&mut body))
        .await
        .expect("scraped in time")
        .expect("read");
    assert!(body.contains("yilian_spool_backlog_items"), "{body}");
    // And the technician's browser still gets the page.
    let mut browser = connect_from(ip(10), page).await.expect("connect");
    browser
        .write_all(b"GET / HTTP/1.0\r\nHost: box\r\n\r\n")
        .await
        .expect("write");
    let mut html = String::new();
    tokio::time::timeout(Duration::from_secs(10), browser.read_to_string(&mut html))
        .await
        .expect("the page in time")
        .expect("read");
    assert!(html.contains("<html") && html.contains("section"), "{html}");

    let (calm50, calm99) = (percentile(&mut calm, 0.5), percentile(&mut calm, 0.99));
    let (flood50, flood99) = (
        percentile(&mut flooded, 0.5),
        percentile(&mut flooded, 0.99),
    );
    eprintln!(
        "LIS ACK latency: calm p50 {calm50:?} p99 {calm99:?}; under a flood of {} connections p50 {flood50:?} p99 {flood99:?}",
        held.len()
    );
    assert!(
        flood99 < Duration::from_secs(1),
        "the LIS is not starved: p99 {flood99:?}"
    );
    let lines = logs.text().lines().count() - log_before;
    assert!(
        lines < 400,
        "the flood is logged in a bounded number of lines, not {lines}"
    );
    dribble.abort();
    drop(held);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn misbehaving_hl7_senders_get_answers_and_bounded_logs() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tmp");
    let (hub, l) = start(dir.path()).await;
    let logs = LogCapture::install();

    // Over the size limit: AR with an ERR that says so, for its MSH-10;
    // the connection stays usable.
    let mut s = connect_from(ip(21), l.hl7).await.expect("connect");
    let mut big = oru("BIG0001");
    big.push_str(&format!("NTE|1|L|{}\r", "x".repeat(100 * 1024)));
    let ack = exchange(&mut s, big.as_bytes()).await.expect("an answer");
    assert!(ack.contains("MSA|AR|BIG0001"), "{ack}");
    assert!(
        ack.contains("ERR|") && ack.contains("larger than this box accepts"),
        "{ack}"
    );
    let ack = exchange(&mut s, oru("SMALL001").as_bytes())
        .await
        .expect("an answer");
    assert!(ack.contains("MSA|AA|SMALL001"), "{ack}");

    // A message cut off by the connection closing is logged, with bytes.
    let mut cut = connect_from(ip(22), l.hl7).await.expect("connect");
    cut.write_all(b"\x0bMSH|^~\\&|LIS|XIACUN|Y|H|20261203||ORU^R01|CUT1|P|2.5.1\rPID|1")
        .await
        .expect("write");
    drop(cut);

    // Garbage, 5,000 blocks on one connection: answered, logged a few
    // times only.
    let mut g = connect_from(ip(23), l.hl7).await.expect("connect");
    for i in 0..5000 {
        let ack = exchange(&mut g, format!("NOT HL7 {i}").as_bytes())
            .await
            .expect("an answer");
        assert!(ack.contains("MSA|AR"), "{ack}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = logs.text();
    assert!(
        text.lines().any(|l| l.contains("127.0.0.22")
            && l.contains("connection ended in the middle of an HL7 message")),
        "the cut-off message is logged"
    );
    let garbage_lines = text.lines().filter(|l| l.contains("127.0.0.23")).count();
    assert!(
        garbage_lines <= 6,
        "5,000 bad messages logged {garbage_lines} times"
    );
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dicom_peers_cannot_take_memory_or_every_slot() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tmp");
    let (hub, l) = start(dir.path()).await;

    // A peer declaring a 1 GiB PDU and streaming it: cut off at once.
    let before = yilian_rig::procs::peak_rss();
    let mut s = connect_from(ip(31), l.dicom).await.expect("connect");
    s.write_all(&[0x01, 0, 0x40, 0, 0, 0])
        .await
        .expect("header");
    let chunk = vec![0u8; 1 << 20];
    let mut sent = 0usize;
    for _ in 0..256 {
        match tokio::time::timeout(Duration::from_secs(5), s.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            _ => break,
        }
    }
    let grew = yilian_rig::procs::peak_rss().saturating_sub(before);
    eprintln!(
        "huge PDU: {} MiB written before the gateway closed; peak RSS grew {} MiB",
        sent >> 20,
        grew >> 20
    );
    assert!(sent < 256 << 20, "the gateway kept reading a 1 GiB PDU");
    assert!(grew < 64 << 20, "peak RSS grew by {grew} bytes");

    // A worklist query with a 1 MiB patient name: a failure status, fast.
    let dicom = l.dicom;
    let t = Instant::now();
    let said = tokio::task::spawn_blocking(move || {
        assoc_peer(
            "find",
            dicom.port(),
            "SCANNER",
            "127.0.0.35",
            &["--name-bytes", &(1 << 20).to_string()],
        )
    })
    .await
    .expect("join");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "answered in {:?}",
        t.elapsed()
    );
    assert!(
        said.contains(&format!("[{}]", 0xC000)),
        "a failure status: {said}"
    );

    // Eight silent associations from unknown machines fill the node; the
    // CT console still gets through, every time.
    let hold = |from: &'static str| {
        tokio::task::spawn_blocking(move || {
            assoc_peer(
                "hold",
                dicom.port(),
                "SCANNER",
                from,
                &["--count", "4", "--seconds", "25"],
            )
        })
    };
    let holders = [hold("127.0.0.32"), hold("127.0.0.33"), hold("127.0.0.34")];
    tokio::time::sleep(Duration::from_secs(3)).await;
    let said = tokio::task::spawn_blocking(move || {
        assoc_peer(
            "echo",
            dicom.port(),
            "CT_ROOM",
            "127.0.0.5",
            &["--count", "10"],
        )
    })
    .await
    .expect("join");
    let ok = said.lines().filter(|l| l.contains("\"status\": 0")).count();
    assert_eq!(ok, 10, "the modality was locked out:\n{said}");
    for h in holders {
        let held = h.await.expect("join");
        assert!(held.contains("\"held\""), "{held}");
    }
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_astm_session_gives_way_to_the_analyzer() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tmp");
    let (hub, l) = start(dir.path()).await;
    // Something connects to the analyzer port and says nothing (or the
    // analyzer's old connection went half-open after a glitch).
    let _silent = connect_from(ip(41), l.astm).await.expect("connect");
    tokio::time::sleep(Duration::from_secs(11)).await;
    let records: Vec<Vec<u8>> = [
        "H|\\^&|||XN-550\r",
        "P|1||LAN0001\r",
        "O|1|SIDLAN||^^^GLU\r",
        "R|1|^^^GLU|5.6|mmol/L||N||F\r",
        "L|1|N\r",
    ]
    .iter()
    .map(|r| r.as_bytes().to_vec())
    .collect();
    let mut analyzer = connect_from(ip(42), l.astm).await.expect("connect");
    let report = yilian_rig::analyzer::send_message(
        &mut analyzer,
        &records,
        yilian_rig::analyzer::Faults::default(),
    )
    .await
    .expect("the analyzer's session is served");
    assert!(report.completed);
    let items = hub
        .wait_items(1, Duration::from_secs(30))
        .await
        .expect("the result at central");
    assert_eq!(items[0].source, "astm:chem");
    hub.shutdown().await;
}
