#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers may panic on setup failure
//! The link: a cut in the middle of a 1 GB upload resumes from central's
//! offset, and boxes with bad certificates cannot upload.

use std::path::Path;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use yilian_central::CentralConfig;
use yilian_gateway::GatewayConfig;
use yilian_rig::configs::{CentralSetup, FolderSetup, GatewaySetup};
use yilian_rig::fleet::{DAY, Fleet};
use yilian_rig::logs::LogCapture;
use yilian_rig::relay::Relay;

const CHUNK: u64 = yilian_protocol::upload::DEFAULT_CHUNK_SIZE as u64;

async fn start_central(dir: &Path, fleet: &Fleet) -> anyhow::Result<yilian_central::Running> {
    let setup = CentralSetup {
        listen: "127.0.0.1:0".parse()?,
        metrics: "127.0.0.1:0".parse()?,
        data_dir: dir.join("central-data"),
        tls: fleet.central("localhost")?,
    };
    let path = dir.join("central.toml");
    std::fs::write(&path, setup.toml())?;
    yilian_central::start(CentralConfig::load(&path)?).await
}

fn gateway_config(
    dir: &Path,
    name: &str,
    central: &str,
    tls: yilian_link::TlsFiles,
    idle_ms: Option<u64>,
) -> anyhow::Result<GatewayConfig> {
    let setup = GatewaySetup {
        central: central.to_owned(),
        server_name: "localhost".into(),
        spool_dir: dir.join(format!("{name}-spool")),
        metrics: "127.0.0.1:0".parse()?,
        tls,
        folders: vec![FolderSetup {
            name: "share".into(),
            path: dir.join(format!("{name}-drop")),
            lane: "bulk",
            settle_ms: 300,
        }],
        idle_timeout_ms: idle_ms,
        reconnect_max_ms: 500,
        quota_bytes: None,
        extra: String::new(),
    };
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, setup.toml())?;
    Ok(GatewayConfig::load(&path)?)
}

async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn link_cut_mid_upload_resumes_from_centrals_offset() -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("yilian-cut-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let dir = tmp.path();
    let fleet = Fleet::create(dir)?;
    let central = start_central(dir, &fleet).await?;
    let relay = Relay::start(central.quic_addr).await?;
    let config = gateway_config(
        dir,
        "gw",
        &relay.addr.to_string(),
        fleet.gateway("test/clinic/box-1")?,
        Some(1500),
    )?;
    let drop = config.folder[0].path.clone();
    let gateway = yilian_gateway::start(config).await?;

    const SIZE: u64 = 1024 * 1024 * 1024;
    std::fs::create_dir_all(&drop)?;
    let sha = tokio::task::spawn_blocking(move || {
        yilian_rig::files::write_seeded(&drop.join("STUDY.BIN"), 7, SIZE, || ())
    })
    .await??;

    // Cut the link once central holds a good part of the upload.
    let m = central.metrics.clone();
    wait_for("400 MB at central", Duration::from_secs(300), || {
        m.bytes_received.get() > 400_000_000
    })
    .await;
    // The controller's own view of the line is exported while it runs: a
    // bandwidth estimate in bytes per second (the relay on loopback carries
    // far more than 10 MB/s) and a window of at least a few packets.
    let gm = gateway.metrics.clone();
    wait_for("the controller's gauges", Duration::from_secs(10), || {
        gm.link_bandwidth.get() > 10e6 && gm.link_window.get() >= 4 * 1200
    })
    .await;
    relay.cut();
    let at_cut = central.metrics.bytes_received.get();
    let gw_link = gateway.link.clone();
    wait_for(
        "the gateway to see the link down",
        Duration::from_secs(30),
        || gw_link.borrow().state == "down",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    relay.restore();

    let store = central.store.clone();
    wait_for(
        "the upload to be committed",
        Duration::from_secs(300),
        || store.items(None, None).map(|v| v.len()).unwrap_or(0) == 1,
    )
    .await;
    let items = central.store.items(None, None)?;
    assert_eq!(items[0].sha256, sha);
    assert_eq!(items[0].size, SIZE);

    let received = central.metrics.bytes_received.get();
    let sent = gateway.metrics.uploaded_bytes.get();
    let received_twice = received - SIZE;
    eprintln!(
        "cut at {:.0} MB received; central received {received_twice} bytes twice ({:.2} chunks); \
         the gateway handed {} bytes more than the item to QUIC (lost in flight at the cut)",
        at_cut as f64 / 1e6,
        received_twice as f64 / CHUNK as f64,
        sent.saturating_sub(SIZE)
    );
    assert!(
        received_twice < 2 * CHUNK,
        "resume must start at central's offset, not earlier"
    );
    assert!(
        gateway.metrics.link_connects.get() >= 2,
        "the gateway must have reconnected"
    );
    gateway.shutdown().await;
    central.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn foreign_and_expired_certificates_cannot_upload_and_central_says_why() -> anyhow::Result<()>
{
    let logs = LogCapture::install();
    let tmp = tempfile::Builder::new()
        .prefix("yilian-certs-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let dir = tmp.path();
    let fleet = Fleet::create(dir)?;
    let other = Fleet::create(&dir.join("other"))?;
    let central = start_central(dir, &fleet).await?;

    // A box certificate from another CA (trusting our CA, so it can verify
    // central), and one of ours that expired days ago.
    let mut foreign_tls = other.gateway("test/clinic/rogue")?;
    foreign_tls.ca = fleet.dir.join("ca").join("ca.pem");
    let expired_tls =
        fleet.gateway_at("test/clinic/old", OffsetDateTime::now_utc() - DAY * 10, DAY)?;
    let good_tls = fleet.gateway("test/clinic/good")?;

    let mut running = Vec::new();
    for (name, tls) in [
        ("rogue", foreign_tls),
        ("old", expired_tls),
        ("good", good_tls),
    ] {
        let config = gateway_config(dir, name, &central.quic_addr.to_string(), tls, None)?;
        std::fs::create_dir_all(&config.folder[0].path)?;
        std::fs::write(
            config.folder[0].path.join("ECG.PDF"),
            format!("%PDF-1.4 from {name}"),
        )?;
        running.push((name, yilian_gateway::start(config).await?));
    }

    let store = central.store.clone();
    wait_for("the good box's upload", Duration::from_secs(30), || {
        store.items(None, None).map(|v| v.len()).unwrap_or(0) >= 1
    })
    .await;
    // Give the refused boxes time for several attempts.
    let m = central.metrics.clone();
    wait_for("refused handshakes", Duration::from_secs(30), || {
        m.handshake_failures.get() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let items = central.store.items(None, None)?;
    assert_eq!(items.len(), 1, "only the good box may upload: {items:?}");
    assert_eq!(items[0].gateway, "test/clinic/good");

    let text = logs.text();
    assert!(
        text.contains("refused gateway certificate") && text.contains("test/clinic/rogue"),
        "central must log the foreign certificate and why"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("test/clinic/old") && l.to_lowercase().contains("expired")),
        "central must log that the certificate is expired"
    );
    for (name, gw) in &running {
        let state = gw.link.borrow().clone();
        if *name == "good" {
            assert_eq!(state.state, "up");
        } else {
            assert_ne!(state.state, "up", "{name} must not be connected");
            let (stats, _) = yilian_spool::Spool::inspect(&dir.join(format!("{name}-spool")), 0)?;
            assert_eq!(
                stats.lanes[2].items, 1,
                "{name}'s file must stay safely in its spool"
            );
        }
    }
    for (_, gw) in running {
        gw.shutdown().await;
    }
    central.shutdown().await;
    Ok(())
}
