#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers may panic on setup failure
//! A power cut at the worst moment keeps every image the gateway answered
//! success for.
//!
//! The spool lives on its own ext4 file system, in an image file attached
//! through a loop device. The loop device hands what the file system
//! writes to the image file, so a copy of the image file taken while the
//! gateway is stopped dead is the disk as a power cut at that moment would
//! leave it: whatever still sat in the page cache above the loop device
//! (written but never synced) is not in the copy. The copy is mounted (its
//! journal replayed, as at the next boot), the spool opened on it (its
//! check of payloads still syncing at the cut), and every image storescu
//! heard success for must be there byte for byte.
//!
//! The file system is mounted `data=writeback,noauto_da_alloc`: a journal
//! commit (the index's fsync) then carries no other file's data, and a
//! file truncated and rewritten is not flushed at its close, so only the
//! syncs the code asks for make data durable, as on file systems that
//! promise less than ext4's defaults. (Under the defaults, a central that
//! never synced its upload file still passed.)
//!
//! A payload's data sync runs beside its index commit (the row marked as
//! still syncing) and the answer waits for both; the sizes sent sit on both
//! sides of the block size and of the spool's write buffer, so a piece
//! that missed the sync, or a row trusted before its payload, loses an
//! acknowledged image here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use yilian_rig::configs::{GatewaySetup, free_tcp_port, free_udp_port};
use yilian_rig::fleet::Fleet;
use yilian_rig::modality::{dataset_bytes, dcmtk, write_sized};
use yilian_rig::procs::Proc;
use yilian_spool::{Lane, Spool, SpoolConfig};

/// An ext4 file system in an image file, mounted through a loop device;
/// unmounted on drop.
struct LoopDisk {
    image: PathBuf,
    mount: PathBuf,
}

impl LoopDisk {
    fn create(image: &Path, mount: &Path, size: &str) -> LoopDisk {
        run("truncate", &["-s", size, &image.to_string_lossy()]);
        run("mkfs.ext4", &["-q", "-F", &image.to_string_lossy()]);
        LoopDisk::mount(image, mount)
    }

    fn mount(image: &Path, mount: &Path) -> LoopDisk {
        std::fs::create_dir_all(mount).expect("mount point");
        run(
            "mount",
            &[
                "-o",
                "loop,data=writeback,noauto_da_alloc",
                &image.to_string_lossy(),
                &mount.to_string_lossy(),
            ],
        );
        LoopDisk {
            image: image.to_owned(),
            mount: mount.to_owned(),
        }
    }

    /// The power cut, once the writing process is dead: the disk as the
    /// loop device has it, copied to `snapshot`; this mount goes.
    fn power_cut(self, snapshot: &Path) {
        run(
            "cp",
            &[
                "--sparse=always",
                &self.image.to_string_lossy(),
                &snapshot.to_string_lossy(),
            ],
        );
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} (this test needs root and loop devices; ./scripts/test-all runs as root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Data set sizes on both sides of the block size (4096) and of the
/// spool's write buffer and its multiples (256 KiB), and a few larger.
fn sizes() -> Vec<usize> {
    let mut out = Vec::new();
    for boundary in [4096usize, 8192, 262_144, 524_288, 786_432] {
        for delta in [-2i64, 0, 2] {
            out.push((boundary as i64 + delta) as usize & !1);
        }
    }
    out.extend([512, 1_000_000, 3_000_002]);
    out
}

/// storescu's log: the files it heard success for, in the order sent.
fn acknowledged(log: &str) -> Vec<PathBuf> {
    let mut sending = None;
    let mut out = Vec::new();
    for line in log.lines() {
        if let Some(f) = line.split("Sending file: ").nth(1) {
            sending = Some(PathBuf::from(f.trim()));
        } else if line.contains("Received Store Response (Success")
            && let Some(f) = sending.take()
        {
            out.push(f);
        }
    }
    out
}

#[test]
fn a_power_cut_keeps_every_acknowledged_image() {
    // PDUs smaller and larger than the spool's write buffer's pieces: an
    // image arrives in many small fragments or in few large ones.
    for pdu in [16_384, 131_072] {
        cut_while_storescu_sends(pdu);
    }
}

fn cut_while_storescu_sends(pdu: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("disk.img");
    let disk = LoopDisk::create(&image, &dir.path().join("disk"), "512M");

    // Instances: five rounds of every size, sent in one association.
    let sizes = sizes();
    let mut files = Vec::new();
    let mut sop_of = BTreeMap::new();
    for round in 0..5 {
        for size in &sizes {
            let f = dir.path().join(format!("files/{round}-{size}.dcm"));
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            let root = format!("1.2.826.0.1.3680043.10.1431.11.{round}");
            sop_of.insert(f.clone(), write_sized(&f, &root, *size).expect("write"));
            files.push(f);
        }
    }

    let fleet = Fleet::create(&dir.path().join("fleet")).expect("fleet");
    let listen = free_tcp_port().expect("port");
    let spool_dir = disk.mount.join("spool");
    let setup = GatewaySetup {
        central: free_udp_port().expect("port").to_string(),
        server_name: "localhost".into(),
        spool_dir: spool_dir.clone(),
        metrics: "127.0.0.1:0".parse().unwrap(),
        tls: fleet.gateway("clinic/a/box-1").expect("identity"),
        folders: vec![],
        idle_timeout_ms: None,
        reconnect_max_ms: 60_000,
        quota_bytes: None,
        extra: format!(
            "\n[[dicom]]\nname = \"ct\"\nlisten = \"{listen}\"\nae_title = \"YILIAN_GW\"\nmax_pdu = 262144\n"
        ),
    };
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, setup.toml()).unwrap();
    let mut gateway = Proc::spawn(
        "yilian-gateway",
        &["run", "--config", &config.to_string_lossy()],
        &dir.path().join("gateway.log"),
    )
    .expect("gateway");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(listen).is_err() {
        assert!(Instant::now() < deadline, "the gateway did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The cut comes while storescu is still sending: once it has heard
    // success for a third of the instances.
    let log_path = dir.path().join("storescu.log");
    let mut scu = dcmtk("storescu")
        .args(["-v", "-aet", "CT_ROOM", "-aec", "YILIAN_GW", "--required"])
        .args(["-nh", "--max-send-pdu", &pdu.to_string()])
        .arg(listen.ip().to_string())
        .arg(listen.port().to_string())
        .args(&files)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("dcmtk is missing: apt-get install dcmtk (./scripts/test-all does)");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if acknowledged(&log).len() >= files.len() / 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "storescu is not getting through:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    // The power cut: the gateway stopped dead, then the disk as the loop
    // device has it. The acknowledgements counted are those storescu had
    // heard by the cut.
    gateway.kill9();
    let log = std::fs::read_to_string(&log_path).unwrap();
    let snapshot = dir.path().join("after-the-cut.img");
    disk.power_cut(&snapshot);
    let _ = scu.kill();
    let _ = scu.wait();
    let acked = acknowledged(&log);
    assert!(
        acked.len() < files.len(),
        "the cut came after the last image; nothing was tested mid-stream"
    );

    // The next boot.
    let after = LoopDisk::mount(&snapshot, &dir.path().join("after"));
    let spool = Spool::open(SpoolConfig::new(after.mount.join("spool"))).expect("spool opens");
    let mut stored = BTreeMap::new();
    while let Some(lease) = spool
        .lease(&[Lane::Urgent, Lane::Clinical, Lane::Bulk])
        .expect("lease")
    {
        let payload = spool.payload(&lease).expect("payload");
        let mut bytes = vec![0u8; lease.size as usize];
        payload.read_exact_at(&mut bytes, 0).expect("read");
        let sop = lease
            .metadata
            .get("sop_instance_uid")
            .cloned()
            .unwrap_or_default();
        stored.insert(sop, bytes);
    }
    let mut lost = Vec::new();
    for f in &acked {
        let sop = &sop_of[f];
        let original = std::fs::read(f).unwrap();
        match stored.get(sop) {
            Some(bytes) if dataset_bytes(bytes) == dataset_bytes(&original) => {}
            Some(_) => lost.push(format!("{} stored damaged", f.display())),
            None => lost.push(format!("{} missing", f.display())),
        }
    }
    assert!(
        lost.is_empty(),
        "PDU {pdu}: {} of {} acknowledged images lost to the power cut:\n{}",
        lost.len(),
        acked.len(),
        lost.join("\n")
    );
    eprintln!(
        "PDU {pdu}: {} of {} instances acknowledged before the cut, all kept ({} in the spool)",
        acked.len(),
        files.len(),
        stored.len()
    );
}

/// The same at central: its data directory on the loop disk, a box
/// uploading files of sizes around central's direct-write chunk (1 MiB)
/// and block size, and the power cut once a third are committed. After
/// the next boot every item in central's index (which holds everything
/// it ever answered COMMITTED, and every item seen there before the cut)
/// has its blob whole: the hash and size it was committed with.
#[test]
fn a_power_cut_at_central_keeps_every_committed_upload() {
    use sha2::{Digest, Sha256};
    use yilian_central::store::{Backend, Store};
    use yilian_rig::configs::{CentralSetup, FolderSetup};

    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("disk.img");
    let disk = LoopDisk::create(&image, &dir.path().join("disk"), "1G");
    let fleet = Fleet::create(&dir.path().join("fleet")).expect("fleet");
    let central = CentralSetup {
        listen: free_udp_port().expect("port"),
        metrics: free_tcp_port().expect("port"),
        data_dir: disk.mount.join("central-data"),
        tls: fleet.central("localhost").expect("identity"),
    };
    let drop_dir = dir.path().join("drop");
    std::fs::create_dir_all(&drop_dir).unwrap();
    let gateway = GatewaySetup {
        central: central.listen.to_string(),
        server_name: "localhost".into(),
        spool_dir: dir.path().join("spool"),
        metrics: free_tcp_port().expect("port"),
        tls: fleet.gateway("clinic/a/box-1").expect("identity"),
        folders: vec![FolderSetup {
            name: "share".into(),
            path: drop_dir.clone(),
            lane: "bulk",
            settle_ms: 200,
        }],
        idle_timeout_ms: None,
        reconnect_max_ms: 1000,
        quota_bytes: None,
        extra: String::new(),
    };
    let central_toml = dir.path().join("central.toml");
    let gateway_toml = dir.path().join("gateway.toml");
    std::fs::write(&central_toml, central.toml()).unwrap();
    std::fs::write(&gateway_toml, gateway.toml()).unwrap();

    // Sizes on both sides of a block, of the direct-write chunk and of a
    // few chunks; written before the gateway starts, so uploads follow
    // each other as fast as they can.
    let mut sizes = Vec::new();
    for boundary in [4096u64, 1 << 20, 3 << 20, 8 << 20] {
        sizes.extend([boundary - 1, boundary, boundary + 1]);
    }
    sizes.extend([1000, 20_000_777, 45_000_001]);
    let mut n = 0;
    for round in 0..3 {
        for size in &sizes {
            let name = format!("F{round}-{size}.DAT");
            yilian_rig::files::write_seeded(&drop_dir.join(name), n, *size, || {}).unwrap();
            n += 1;
        }
    }
    let log = dir.path().join("processes.log");
    let mut central_proc = Proc::spawn(
        "yilian-central",
        &["serve", "--config", &central_toml.to_string_lossy()],
        &log,
    )
    .expect("central");
    let _gateway = Proc::spawn(
        "yilian-gateway",
        &["run", "--config", &gateway_toml.to_string_lossy()],
        &log,
    )
    .expect("gateway");

    let data_dir = central.data_dir.clone();
    let committed = |data: &Path| -> Vec<yilian_central::store::ItemRow> {
        Store::open_read_only_backend(data, &Backend::Sqlite)
            .and_then(|s| s.items(None, None))
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let seen = loop {
        let items = committed(&data_dir);
        if items.len() as u64 >= n / 3 {
            break items;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} files at central after 120 s; see {}",
            items.len(),
            log.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    central_proc.kill9();
    let snapshot = dir.path().join("after-the-cut.img");
    disk.power_cut(&snapshot);
    assert!(
        (seen.len() as u64) < n,
        "the cut came after the last upload; nothing was tested mid-stream"
    );

    let after = LoopDisk::mount(&snapshot, &dir.path().join("after"));
    let items = committed(&after.mount.join("central-data"));
    let mut damaged = Vec::new();
    for item in &items {
        let ok = std::fs::read(&item.path).is_ok_and(|bytes| {
            bytes.len() as u64 == item.size && hex::encode(Sha256::digest(&bytes)) == item.sha256
        });
        if !ok {
            damaged.push(format!("{} ({} bytes)", item.sha256, item.size));
        }
    }
    let after_cut: std::collections::BTreeSet<&str> =
        items.iter().map(|i| i.sha256.as_str()).collect();
    let lost: Vec<&str> = seen
        .iter()
        .map(|i| i.sha256.as_str())
        .filter(|sha| !after_cut.contains(sha))
        .collect();
    assert!(
        damaged.is_empty() && lost.is_empty(),
        "after the power cut: blobs damaged {damaged:?}, committed items gone {lost:?}"
    );
    eprintln!(
        "{} of {n} uploads committed before the cut, {} after the next boot, every blob whole",
        seen.len(),
        items.len()
    );
}
