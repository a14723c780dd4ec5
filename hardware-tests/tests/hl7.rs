#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers may panic on setup failure
//! HL7 v2 over MLLP against a sender nobody here wrote: the python `hl7`
//! package's `mllp_send`, with the NIST and synthetic messages in the shared
//! samples (CR- and LF-separated, UTF-8 and GB18030, enhanced mode); and
//! the gateway killed between a message's arrival and its ACK.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use yilian_rig::configs::{CentralSetup, GatewaySetup, free_tcp_port, free_udp_port};
use yilian_rig::fleet::Fleet;
use yilian_rig::hub::HubSpec;
use yilian_rig::procs::Proc;

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/samples")
}

fn mllp_send() -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", "command -v mllp_send"])
        .output()
        .expect("sh");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        !path.is_empty(),
        "mllp_send is missing: python3 -m pip install hl7 (./scripts/test-all does)"
    );
    PathBuf::from(path)
}

/// Sends a file with `mllp_send --loose` and returns what it printed (the ACK).
fn send_file(port: u16, file: &Path) -> String {
    let out = Command::new(mllp_send())
        .args(["--loose", "-p", &port.to_string(), "-f"])
        .arg(file)
        .arg("127.0.0.1")
        .output()
        .expect("mllp_send");
    assert!(
        out.status.success(),
        "mllp_send {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).replace('\r', "\n")
}

/// The MSA line a sample must be answered with once stored: AA in original
/// mode, CA in enhanced mode, with its MSH-10.
fn expected_msa(file: &Path) -> String {
    let bytes = std::fs::read(file).expect("read");
    let d = yilian_codecs::hl7::decode(&bytes, None);
    let m = yilian_codecs::hl7::Message::parse(&d.text).expect("sample parses");
    let code = match yilian_codecs::hl7::AckMode::of(&m) {
        yilian_codecs::hl7::AckMode::Original => "AA",
        yilian_codecs::hl7::AckMode::Enhanced { .. } => "CA",
    };
    format!("MSA|{code}|{}", m.control_id())
}

struct Bench {
    _tmp: tempfile::TempDir,
    central: yilian_central::Running,
    hl7_port: u16,
}

async fn bench(extra_peer: &str) -> (Bench, yilian_gateway::Running) {
    let tmp = tempfile::Builder::new()
        .prefix("yilian-hl7-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tmp");
    let dir = tmp.path().to_owned();
    let hl7 = free_tcp_port().expect("port");
    let hub = yilian_rig::hub::Hub::start_with(
        &dir,
        HubSpec {
            gateway: "test/clinic/box-1",
            gateway_extra: format!(
                "\n[[hl7]]\nname = \"lab-lis\"\nlisten = \"{hl7}\"\n{extra_peer}"
            ),
            ..HubSpec::default()
        },
    )
    .await
    .expect("hub");
    let (central, gateway) = (hub.central, hub.gateway);
    (
        Bench {
            _tmp: tmp,
            central,
            hl7_port: hl7.port(),
        },
        gateway,
    )
}

async fn wait_items(
    central: &yilian_central::Running,
    n: usize,
) -> Vec<yilian_central::store::ItemRow> {
    yilian_rig::hub::wait_items(central, n, Duration::from_secs(60), Duration::ZERO)
        .await
        .expect("items at central")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mllp_send_samples_are_acknowledged_after_commit_and_arrive_once() {
    let (b, gateway) = bench("").await;
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in ["hl7/nist", "hl7/misc"] {
        if let Ok(rd) = std::fs::read_dir(samples().join(dir)) {
            files.extend(rd.flatten().map(|e| e.path()));
        }
    }
    for name in [
        "ORU_R01_utf8.hl7",
        "ORU_R01_gb18030.hl7",
        "ORU_R01_gb18030_trailbyte_pipe.hl7",
        "ORU_R01_escapes.hl7",
        "ADT_A04_utf8.hl7",
        "OML_O21_utf8.hl7",
        "ORM_O01_utf8.hl7",
    ] {
        files.push(samples().join("synthetic/hl7").join(name));
    }
    files.retain(|f| f.exists());
    files.sort();
    assert!(
        files.len() >= 10,
        "the shared samples are missing: {files:?}"
    );

    let port = b.hl7_port;
    for f in &files {
        let f = f.clone();
        let ack = tokio::task::spawn_blocking(move || send_file(port, &f))
            .await
            .expect("join");
        assert!(ack.contains("MSA|AA|") || ack.contains("MSA|CA|"), "{ack}");
    }
    for f in &files {
        let f2 = f.clone();
        let ack = tokio::task::spawn_blocking(move || send_file(port, &f2))
            .await
            .expect("join");
        assert!(ack.contains(&expected_msa(f)), "{}: {ack}", f.display());
    }
    // Enhanced mode (MSH-15 AL): a commit ACK.
    let enhanced = samples().join("synthetic/hl7/ORU_R01_enhanced_AL_NE.hl7");
    if enhanced.exists() {
        let ack = tokio::task::spawn_blocking(move || send_file(port, &enhanced))
            .await
            .expect("join");
        assert!(ack.contains("MSA|CA|MSG00003"), "{ack}");
        files.push(samples().join("synthetic/hl7/ORU_R01_enhanced_AL_NE.hl7"));
    }

    // Every message was sent twice (once more above); each is stored once.
    let items = wait_items(&b.central, files.len()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let items_after = b.central.store.items(None, None).expect("items");
    assert_eq!(
        items_after.len(),
        files.len(),
        "duplicates must be stored once: {items:?}"
    );
    for i in &items_after {
        assert_eq!(i.kind, "hl7");
        assert_eq!(i.source, "hl7:lab-lis");
    }
    let gb = items_after
        .iter()
        .find(|i| i.metadata["charset"] == "GB 18030-2000")
        .expect("the GB18030 sample was recognised");
    assert_eq!(gb.lane, "clinical");
    gateway.shutdown().await;
    b.central.shutdown().await;
}

fn raw_send(port: u16, message: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(&yilian_codecs::mllp::encode(message.as_bytes()))
        .expect("write");
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.ends_with(&[0x1c, 0x0d]) {
        let n = s.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).replace('\r', "\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_messages_get_ae_with_err_and_critical_results_go_urgent() {
    let (b, gateway) = bench("").await;
    let port = b.hl7_port;
    let replies = tokio::task::spawn_blocking(move || {
        (
            raw_send(port, "HELLO THERE"),
            raw_send(port, "MSH|^~\\&|LIS|C|HIS|H|20240101||ORU^R01||P|2.5.1\rPID|1\r"),
            raw_send(port, "MSH|^~\\&|LIS|C|HIS|H|20240101||ORU^R01|CRIT1|P|2.5.1\rPID|1||P9\rOBX|1|NM|K^Potassium||7.2|mmol/L|3.5-5.3|HH|||F\r"),
        )
    })
    .await
    .expect("join");
    assert!(
        replies.0.contains("MSA|AR|") && replies.0.contains("ERR||MSH^1|100^"),
        "{}",
        replies.0
    );
    assert!(
        replies.1.contains("MSA|AE|")
            && replies
                .1
                .contains("|101^required field MSH-10 is empty^HL70357|E"),
        "{}",
        replies.1
    );
    assert!(replies.2.contains("MSA|AA|CRIT1"), "{}", replies.2);
    let items = wait_items(&b.central, 1).await;
    assert_eq!(items.len(), 1, "only the valid message is stored");
    assert_eq!(
        items[0].lane, "urgent",
        "a critical potassium goes on the urgent lane"
    );
    assert_eq!(items[0].metadata["patient_id"], "P9");
    gateway.shutdown().await;
    b.central.shutdown().await;
}

/// The real gateway process is killed while a message is between arrival
/// and ACK (its spool blocked by another process holding the index's write
/// lock); the sender, seeing no ACK, sends again to the restarted gateway.
/// And once more after a lost ACK. Exactly one item arrives.
#[test]
fn killed_between_arrival_and_ack_the_retry_yields_exactly_one_item() {
    let tmp = tempfile::Builder::new()
        .prefix("yilian-hl7-kill-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tmp");
    let dir = tmp.path();
    let fleet = Fleet::create(dir).expect("fleet");
    let cs = CentralSetup {
        listen: free_udp_port().expect("port"),
        metrics: free_tcp_port().expect("port"),
        data_dir: dir.join("central-data"),
        tls: fleet.central("localhost").expect("cert"),
    };
    std::fs::write(dir.join("central.toml"), cs.toml()).expect("write");
    let hl7: SocketAddr = free_tcp_port().expect("port");
    let gs = GatewaySetup {
        central: cs.listen.to_string(),
        server_name: "localhost".into(),
        spool_dir: dir.join("spool"),
        metrics: free_tcp_port().expect("port"),
        tls: fleet.gateway("test/clinic/box-1").expect("cert"),
        folders: vec![],
        idle_timeout_ms: None,
        reconnect_max_ms: 1000,
        quota_bytes: None,
        extra: format!("\n[[hl7]]\nname = \"lab-lis\"\nlisten = \"{hl7}\"\n"),
    };
    std::fs::write(dir.join("gateway.toml"), gs.toml()).expect("write");
    let log = dir.join("processes.log");
    let central_args = [
        "serve",
        "--config",
        dir.join("central.toml").to_str().expect("utf8"),
    ]
    .map(str::to_owned);
    let gateway_args = [
        "run",
        "--config",
        dir.join("gateway.toml").to_str().expect("utf8"),
    ]
    .map(str::to_owned);
    let spawn = |bin: &str, args: &[String]| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        Proc::spawn(bin, &a, &log).expect("spawn")
    };
    let _central = spawn("yilian-central", &central_args);
    let mut gateway = spawn("yilian-gateway", &gateway_args);
    let wait_port = |addr: SocketAddr| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "nothing listens on {addr}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_port(hl7);

    let msg = "MSH|^~\\&|LIS|CLINIC01|HIS|HOSP|20240101121000||ORU^R01^ORU_R01|KILL0001|P|2.5.1\rPID|1||PID777\rOBX|1|NM|GLU||5.6|mmol/L|3.9-6.1|N|||F\r";

    // 1. Arrival, then the gateway dies before it could commit and ACK.
    let index = dir.join("spool").join("index.sqlite");
    let db = rusqlite::Connection::open(&index).expect("index");
    db.execute_batch("BEGIN IMMEDIATE").expect("write lock");
    let mut s = TcpStream::connect(hl7).expect("connect");
    s.write_all(&yilian_codecs::mllp::encode(msg.as_bytes()))
        .expect("send");
    std::thread::sleep(Duration::from_millis(500));
    gateway.kill9();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(
        !String::from_utf8_lossy(&rest).contains("MSA|AA"),
        "no ACK may come from a message never stored"
    );
    db.execute_batch("COMMIT").expect("release");
    drop(db);

    // The sender retries against the restarted gateway.
    let mut gateway = spawn("yilian-gateway", &gateway_args);
    wait_port(hl7);
    assert!(raw_send(hl7.port(), msg).contains("MSA|AA|KILL0001"));

    // 2. The ACK is lost (the sender hangs up without reading it), the
    // gateway is killed and restarted, and the sender retries again.
    let mut s = TcpStream::connect(hl7).expect("connect");
    s.write_all(&yilian_codecs::mllp::encode(msg.as_bytes()))
        .expect("send");
    drop(s);
    std::thread::sleep(Duration::from_millis(300));
    gateway.kill9();
    let _gateway = spawn("yilian-gateway", &gateway_args);
    wait_port(hl7);
    assert!(raw_send(hl7.port(), msg).contains("MSA|AA|KILL0001"));

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let items = yilian_central::store::Store::open_read_only(&dir.join("central-data"))
            .and_then(|s| s.items(None, None))
            .unwrap_or_default();
        if !items.is_empty() {
            std::thread::sleep(Duration::from_secs(2));
            let items = yilian_central::store::Store::open_read_only(&dir.join("central-data"))
                .and_then(|s| s.items(None, None))
                .expect("items");
            assert_eq!(items.len(), 1, "exactly one item at central: {items:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the message never reached central; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
