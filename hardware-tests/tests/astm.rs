#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers may panic on setup failure
//! ASTM analyzers on a serial line (socat pseudo-terminal pairs) and TCP:
//! the real captures in the shared samples replayed by the analyzer
//! emulator, with a corrupted checksum, a lost ACK, and the cable pulled
//! mid-message.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use yilian_rig::analyzer::{Faults, records_from_capture, send_message};
use yilian_rig::cable::{Cable, open_device_end};
use yilian_rig::configs::free_tcp_port;
use yilian_rig::hub::{Hub, HubSpec};

fn captures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/samples/astm");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

async fn hub(dir: &Path, astm_toml: &str) -> (yilian_central::Running, yilian_gateway::Running) {
    let hub = Hub::start_with(
        dir,
        HubSpec {
            gateway: "test/clinic/box-1",
            gateway_extra: astm_toml.to_owned(),
            ..HubSpec::default()
        },
    )
    .await
    .expect("hub");
    (hub.central, hub.gateway)
}

async fn wait_items(
    central: &yilian_central::Running,
    n: usize,
) -> Vec<yilian_central::store::ItemRow> {
    yilian_rig::hub::wait_items(
        central,
        n,
        Duration::from_secs(60),
        Duration::from_millis(500),
    )
    .await
    .expect("items at central")
}

fn sha(records: &[Vec<u8>]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(records.concat()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn captures_over_a_serial_line_with_a_bad_checksum_and_a_lost_ack() {
    let caps = captures();
    assert!(caps.len() >= 4, "the shared ASTM captures are missing");
    let tmp = tempfile::Builder::new()
        .prefix("yilian-astm-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tmp");
    let dir = tmp.path();
    let (gw_end, an_end) = (dir.join("ttyGW"), dir.join("ttyAN"));
    let _cable = Cable::plug(&gw_end, &an_end).expect("socat pty pair");
    let toml = format!(
        "\n[[astm]]\nname = \"lab-analyzer\"\ntransport = \"serial\"\nport = \"{}\"\nbaud = 9600\n",
        gw_end.display()
    );
    let (central, gateway) = hub(dir, &toml).await;
    let mut port = open_device_end(&an_end).await.expect("device end");
    let mut expected = Vec::new();
    for (i, cap) in caps.iter().enumerate() {
        let records = records_from_capture(&std::fs::read(cap).expect("read"));
        assert!(records.len() >= 2, "{}: no records", cap.display());
        let faults = match i {
            0 => Faults {
                corrupt_frame: Some(0),
                ..Faults::default()
            },
            1 => Faults {
                lose_ack_of: Some(0),
                ..Faults::default()
            },
            _ => Faults::default(),
        };
        let report = send_message(&mut port, &records, faults)
            .await
            .expect("delivered");
        assert!(report.completed);
        if i == 0 {
            assert!(report.naks >= 1, "the corrupted frame must be NAKed");
        }
        expected.push(sha(&records));
    }
    let items = wait_items(&central, caps.len()).await;
    assert_eq!(
        items.len(),
        caps.len(),
        "one item per message, no duplicates: {items:?}"
    );
    for sha in &expected {
        assert!(
            items.iter().any(|i| &i.sha256 == sha),
            "a message arrived changed or not at all"
        );
    }
    for i in &items {
        assert_eq!(i.kind, "astm");
        assert_eq!(i.source, "astm:lab-analyzer");
        assert!(i.metadata.get("analyzer").is_some());
    }
    gateway.shutdown().await;
    central.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unplug_mid_message_and_replug_yields_the_message_once() {
    let caps = captures();
    let Some(cap) = caps.first() else {
        panic!("the shared ASTM captures are missing")
    };
    let records = records_from_capture(&std::fs::read(cap).expect("read"));
    let tmp = tempfile::Builder::new()
        .prefix("yilian-astm-plug-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tmp");
    let dir = tmp.path();
    let (gw_end, an_end) = (dir.join("ttyGW"), dir.join("ttyAN"));
    let cable = Cable::plug(&gw_end, &an_end).expect("socat pty pair");
    let toml = format!(
        "\n[[astm]]\nname = \"xn\"\ntransport = \"serial\"\nport = \"{}\"\n",
        gw_end.display()
    );
    let (central, gateway) = hub(dir, &toml).await;

    let mut port = open_device_end(&an_end).await.expect("device end");
    let half = Faults {
        stop_after: Some(records.len().max(2) / 2),
        ..Faults::default()
    };
    let report = send_message(&mut port, &records, half)
        .await
        .expect("first half");
    assert!(!report.completed);
    drop(port);
    cable.unplug();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _cable = Cable::plug(&gw_end, &an_end).expect("socat pty pair");
    // The analyzer starts over once the line is back.
    let mut port = open_device_end(&an_end).await.expect("device end");
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        match send_message(&mut port, &records, Faults::default()).await {
            Ok(r) => break r,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the gateway never reopened the port: {e}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
                port = open_device_end(&an_end).await.expect("device end");
            }
        }
    };
    assert!(report.completed);
    let items = wait_items(&central, 1).await;
    assert_eq!(
        items.len(),
        1,
        "the half message is discarded, the whole one stored once"
    );
    assert_eq!(items[0].sha256, sha(&records));
    gateway.shutdown().await;
    central.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tcp_analyzer_with_framing_and_one_with_bare_records() {
    let caps = captures();
    let Some(cap) = caps.last() else {
        panic!("the shared ASTM captures are missing")
    };
    let records = records_from_capture(&std::fs::read(cap).expect("read"));
    let tmp = tempfile::Builder::new()
        .prefix("yilian-astm-tcp-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tmp");
    let framed = free_tcp_port().expect("port");
    let bare = free_tcp_port().expect("port");
    let toml = format!(
        "\n[[astm]]\nname = \"chem\"\ntransport = \"tcp-server\"\nlisten = \"{framed}\"\n\n[[astm]]\nname = \"hba1c\"\ntransport = \"tcp-server\"\nframing = \"bare\"\nlisten = \"{bare}\"\n"
    );
    let (central, gateway) = hub(tmp.path(), &toml).await;
    let mut s = tokio::net::TcpStream::connect(framed)
        .await
        .expect("connect");
    assert!(
        send_message(&mut s, &records, Faults::default())
            .await
            .expect("sent")
            .completed
    );
    let mut b = tokio::net::TcpStream::connect(bare).await.expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut b, &records.concat())
        .await
        .expect("write");
    let items = wait_items(&central, 2).await;
    assert_eq!(items.len(), 2);
    let sources: Vec<&str> = items.iter().map(|i| i.source.as_str()).collect();
    assert!(
        sources.contains(&"astm:chem") && sources.contains(&"astm:hba1c"),
        "{sources:?}"
    );
    for i in &items {
        assert_eq!(i.sha256, sha(&records));
    }
    gateway.shutdown().await;
    central.shutdown().await;
}
