#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers may panic on setup failure
//! A full disk must not brick the box.
//!
//! The spool sits on a small tmpfs (a 16 GB card, scaled down) with the
//! default 20 GiB quota, far more than the filesystem holds. With the link
//! down a modality sends more than fits: devices are refused with 0xA700
//! before the filesystem is full; then another program takes every byte
//! that is left, and the gateway is restarted on the full disk. It must
//! open its spool (the disk reserve gives SQLite the room it needs), keep
//! running, upload its backlog once the link returns, evict what central
//! committed, and accept the modality's resends again without a restart:
//! every acknowledged instance reaches central, once.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use yilian_central::CentralConfig;
use yilian_gateway::GatewayConfig;
use yilian_rig::configs::{CentralSetup, GatewaySetup, free_tcp_port};
use yilian_rig::fleet::Fleet;
use yilian_rig::modality::{CtStudy, storescu};
use yilian_rig::relay::Relay;

/// A tmpfs mounted for the test, unmounted on drop.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(path).expect("mkdir");
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "this test mounts a tmpfs and needs root (./scripts/test-all runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk {
            path: path.to_owned(),
        }
    }

    /// Writes a file until the filesystem refuses: another program that
    /// took what was left. Returns the bytes it took.
    fn fill(&self) -> u64 {
        let mut f = std::fs::File::create(self.path.join("filler")).expect("filler");
        let block = vec![0x55u8; 64 * 1024];
        let mut n = 0u64;
        loop {
            match f.write(&block) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k as u64,
            }
        }
        let _ = f.flush();
        n
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// storescu's verdict per file: the ones refused.
fn refused(log: &str) -> Vec<PathBuf> {
    let mut current = None;
    let mut out = Vec::new();
    for line in log.lines() {
        if let Some(f) = line.strip_prefix("I: Sending file: ") {
            current = Some(PathBuf::from(f.trim()));
        } else if line.contains("Received Store Response")
            && !line.contains("(Success")
            && let Some(f) = current.take()
        {
            out.push(f);
        }
    }
    out
}

async fn send(addr: std::net::SocketAddr, files: Vec<PathBuf>) -> String {
    tokio::task::spawn_blocking(move || {
        let out = storescu(addr, "YILIAN_GW", "CT_ROOM", &files).expect("storescu");
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
    })
    .await
    .expect("join")
}

async fn start_gateway(config: &Path) -> anyhow::Result<yilian_gateway::Running> {
    yilian_gateway::start(GatewayConfig::load(config)?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_refuses_devices_keeps_the_box_running_and_drains_after_a_restart() {
    let _logs = yilian_rig::logs::LogCapture::install();
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SmallDisk::mount(&dir.path().join("card"), "48m");
    let fleet = Fleet::create(dir.path()).expect("fleet");
    let cs = CentralSetup {
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("central-data"),
        tls: fleet.central("localhost").expect("cert"),
    };
    std::fs::write(dir.path().join("central.toml"), cs.toml()).expect("write");
    let central =
        yilian_central::start(CentralConfig::load(&dir.path().join("central.toml")).unwrap())
            .await
            .expect("central");
    let relay = Relay::start(central.quic_addr).await.expect("relay");
    relay.cut();
    let dicom = free_tcp_port().expect("port");
    let gs = GatewaySetup {
        central: relay.addr.to_string(),
        server_name: "localhost".into(),
        spool_dir: disk.path.join("spool"),
        metrics: "127.0.0.1:0".parse().unwrap(),
        tls: fleet.gateway("lingshan/xiacun/box-1").expect("cert"),
        folders: vec![],
        idle_timeout_ms: Some(3000),
        reconnect_max_ms: 500,
        // The default 20 GiB quota, on a 48 MiB disk.
        quota_bytes: None,
        extra: format!(
            "\n[[dicom]]\nname = \"modalities\"\nlisten = \"{dicom}\"\nae_title = \"YILIAN_GW\"\n"
        ),
    };
    let toml = gs
        .toml()
        .replacen("[spool]\n", "[spool]\nreserve = \"4 MiB\"\n", 1);
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, toml).expect("write");
    let gateway = start_gateway(&config).await.expect("gateway starts");
    assert!(
        disk.path.join("spool/reserve").exists(),
        "the disk reserve is made at start"
    );

    // 120 slices of 0.5 MB with the link down: about 60 MB for 48 MiB.
    let study = CtStudy::new(48, 120);
    let files = study.write(&dir.path().join("ct")).expect("study");
    let said = send(dicom, files.clone()).await;
    let mut pending = refused(&said);
    let accepted = files.len() - pending.len();
    assert!(
        accepted > 20 && !pending.is_empty(),
        "some accepted, the rest refused: {accepted} accepted\n{said}"
    );
    assert!(said.contains("Refused: OutOfResources"), "{said}");
    let m = gateway.metrics.encode();
    assert!(
        m.contains("yilian_spool_refusals_total{reason=\"disk_full\"}"),
        "refusals name the full disk:\n{m}"
    );

    // Another program takes the rest of the disk, then the box restarts.
    let taken = disk.fill();
    eprintln!(
        "{accepted} accepted, {} refused; filler took {taken} bytes",
        pending.len()
    );
    gateway.shutdown().await;
    let gateway = start_gateway(&config)
        .await
        .expect("the gateway opens its spool on a full disk");

    // The link returns: everything acknowledged reaches central.
    relay.restore();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let n = central.store.items(None, None).expect("items").len();
        if n >= accepted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} of {accepted} acknowledged instances at central"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Delivered items make room, and the modality's resends are taken
    // without anyone restarting the box or deleting files.
    let deadline = Instant::now() + Duration::from_secs(90);
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "still refused after the backlog drained: {} instance(s)",
            pending.len()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let said = send(dicom, pending.clone()).await;
        pending = refused(&said);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let items = loop {
        let items = central.store.items(None, None).expect("items");
        if items.len() >= files.len() || Instant::now() > deadline {
            break items;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut uids: Vec<String> = items
        .iter()
        .filter_map(|i| i.metadata.get("sop_instance_uid").and_then(|v| v.as_str()))
        .map(str::to_owned)
        .collect();
    uids.sort();
    uids.dedup();
    assert_eq!(uids.len(), files.len(), "every slice at central");
    assert_eq!(items.len(), files.len(), "and each once");
    gateway.shutdown().await;
    central.shutdown().await;
    drop(disk);
}

fn spool_on(dir: &Path, reserve: u64) -> yilian_spool::Spool {
    let mut c = yilian_spool::SpoolConfig::new(dir);
    c.reserve_bytes = reserve;
    c.inline_threshold = 1024;
    yilian_spool::Spool::open(c).expect("the spool opens")
}

fn fill_spool(spool: &yilian_spool::Spool, n: usize) -> usize {
    let payload = vec![7u8; 256 * 1024];
    (0..n)
        .filter(|_| {
            spool
                .append(
                    yilian_spool::NewItem::new(yilian_spool::Lane::Bulk, "file", "test"),
                    &payload,
                )
                .is_ok()
        })
        .count()
}

#[test]
fn the_index_opens_on_a_full_disk_and_deliveries_are_recorded_from_the_reserve() {
    // Without the reserve SQLite could not even make its shared-memory
    // file on a full disk (SQLITE_IOERR_SHMSIZE): the configuration
    // requires one.
    let dir = tempfile::tempdir().expect("tempdir");

    // With a reserve: on a disk another program filled, central's
    // COMMITTED is still recorded, and the delivered item's space comes
    // back without anyone deleting files.
    let disk = SmallDisk::mount(&dir.path().join("reserved"), "16m");
    let spool = spool_on(&disk.path.join("spool"), 1 << 20);
    let stored = fill_spool(&spool, 64);
    drop(spool);
    disk.fill();
    let spool = spool_on(&disk.path.join("spool"), 1 << 20);
    let mut delivered = 0;
    while let Some(lease) = spool.lease(&[yilian_spool::Lane::Bulk]).expect("lease") {
        spool
            .ack(lease)
            .expect("a delivery is recorded on a full disk");
        delivered += 1;
    }
    assert_eq!(delivered, stored);
    // The next look evicts the delivered items of a refusing spool.
    let s = spool.stats().expect("stats");
    let s = if s.refusing {
        spool.stats().expect("stats")
    } else {
        s
    };
    assert!(
        !s.refusing,
        "accepting again once delivered items went: {s:?}"
    );
    spool
        .append(
            yilian_spool::NewItem::new(yilian_spool::Lane::Bulk, "file", "test"),
            &vec![7u8; 256 * 1024],
        )
        .unwrap_or_else(|e| panic!("a new item is taken once the refusal lifted: {e}"));
}
