#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers may panic on setup failure
//! ECG carts end to end: raw SCP-ECG records on a serial line (socat pty
//! pair) with noise and a cable pulled mid-record; files sent by lrzsz
//! `sx` (XMODEM) and `sb` (YMODEM); the aECG, DICOM ECG and SCP-ECG samples
//! and damaged files through a drop folder; and delivery into the reading
//! system's import directory at central, quarantined items apart; and a
//! STAT ECG overtaking a 1 GB study on a saturated, rate-limited uplink.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use yilian_central::store::ItemRow;
use yilian_gateway::GatewayConfig;
use yilian_rig::cable::{Cable, open_device_end};
use yilian_rig::cart::{CartRecord, lrzsz_send};
use yilian_rig::hub::HubSpec;
use yilian_rig::relay::{Relay, Shaping};

fn sample(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/samples")
        .join(rel);
    assert!(
        p.exists(),
        "{} is missing: the conformance samples sit beside the repository",
        p.display()
    );
    p
}

struct Hub {
    central: yilian_central::Running,
    gateway: yilian_gateway::Running,
    import: PathBuf,
    _relay: Option<Relay>,
}

async fn hub(dir: &Path, gateway_toml: &str) -> Hub {
    hub_via(dir, gateway_toml, None, "").await
}

/// Central, and a gateway reaching it through a shaped relay if asked;
/// central's `[store]` and `[blobs]` as `store_toml` says (embedded when
/// empty).
async fn hub_via(
    dir: &Path,
    gateway_toml: &str,
    shaping: Option<Shaping>,
    store_toml: &str,
) -> Hub {
    let import = dir.join("ecg-import");
    let hub = yilian_rig::hub::Hub::start_with(
        dir,
        HubSpec {
            gateway: "lingshan/xiacun/box-1",
            central_extra: format!(
                "[ecg]\ndirectory = {:?}\nretry_base = \"200ms\"\n\n{store_toml}",
                import.display().to_string()
            ),
            gateway_extra: gateway_toml.to_owned(),
            relay: shaping.map(Some),
            ..HubSpec::default()
        },
    )
    .await
    .expect("hub");
    Hub {
        central: hub.central,
        gateway: hub.gateway,
        import,
        _relay: hub.relay,
    }
}

async fn wait_items(central: &yilian_central::Running, n: usize) -> Vec<ItemRow> {
    yilian_rig::hub::wait_items(
        central,
        n,
        Duration::from_secs(60),
        Duration::from_millis(500),
    )
    .await
    .expect("items at central")
}

fn meta<'a>(i: &'a ItemRow, k: &str) -> Option<&'a str> {
    i.metadata.get(k).and_then(|v| v.as_str())
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Files in `dir` with this extension (hidden temporaries excluded).
fn files_with(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| {
        p.is_file()
            && p.extension().is_some_and(|e| e == ext)
            && !p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
    });
    v.sort();
    v
}

async fn wait_files(dir: &Path, ext: &str, n: usize) -> Vec<PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let f = files_with(dir, ext);
        if f.len() >= n {
            return f;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} .{ext} files in {}",
            f.len(),
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raw_records_between_noise_stat_first_and_a_cable_pulled_mid_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gw_end = dir.path().join("serial-by-id-cart");
    let cart_end = dir.path().join("cart-tty");
    let cable = Cable::plug(&gw_end, &cart_end).expect("socat pty pair");
    let toml = format!(
        "[[ecg_serial]]\nname = \"cart-raw\"\nport = {:?}\nprotocol = \"raw\"\nquiet_time = \"1s\"\n",
        gw_end.display().to_string()
    );
    let hub = hub(dir.path(), &toml).await;

    let example = std::fs::read(sample("scp-ecg/ecgtoolkit_Example.scp")).expect("sample");
    let stat = CartRecord {
        patient_id: "STAT-001",
        last_name: "Zhang",
        stat_code: 5,
        waveform_bytes: 20_000,
    }
    .encode();
    let routine = CartRecord {
        patient_id: "RT-002",
        last_name: "Li",
        stat_code: 0,
        waveform_bytes: 30_000,
    }
    .encode();

    let mut port = open_device_end(&cart_end).await.expect("device end");
    // A banner, the sample, line noise, a STAT record, all in odd-sized writes.
    let mut line = b"\r\nECG CART v2.1 READY\r\n".to_vec();
    line.extend_from_slice(&example);
    line.extend_from_slice(&[0x00, 0xFF, 0x1A, 0x1A, 0x55]);
    line.extend_from_slice(&stat);
    for chunk in line.chunks(997) {
        AsyncWriteExt::write_all(&mut port, chunk)
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Half of the routine record, then the cable is pulled.
    AsyncWriteExt::write_all(&mut port, &routine[..routine.len() / 2])
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(port);
    cable.unplug();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Plugged back in; the technician sends the ECG again.
    let _cable = Cable::plug(&gw_end, &cart_end).expect("socat pty pair");
    let mut port = open_device_end(&cart_end).await.expect("device end");
    // The gateway reopens the port within its reopen interval.
    tokio::time::sleep(Duration::from_secs(3)).await;
    AsyncWriteExt::write_all(&mut port, &routine)
        .await
        .expect("write");

    let items = wait_items(&hub.central, 4).await;
    assert_eq!(items.len(), 4, "{items:#?}");
    let by_sha = |data: &[u8]| {
        let sha = sha256(data);
        items
            .iter()
            .find(|i| i.sha256 == sha)
            .unwrap_or_else(|| panic!("record {sha} missing: {items:#?}"))
    };
    let ex = by_sha(&example);
    assert_eq!(
        (ex.kind.as_str(), ex.lane.as_str()),
        ("scp-ecg", "clinical")
    );
    assert_eq!(meta(ex, "device"), Some("ELI250"));
    assert_eq!(meta(ex, "quarantine"), None);
    let st = by_sha(&stat);
    assert_eq!(st.lane, "urgent", "a STAT ECG goes on the urgent lane");
    assert_eq!(meta(st, "patient_id"), Some("STAT-001"));
    assert_eq!(meta(st, "stat"), Some("1"));
    let rt = by_sha(&routine);
    assert_eq!(meta(rt, "quarantine"), None);
    let fragment = items
        .iter()
        .find(|i| meta(i, "quarantine").is_some())
        .expect("the half record is kept, quarantined");
    assert_eq!(fragment.size as usize, routine.len() / 2);
    assert_eq!(meta(fragment, "ecg"), Some("record"));

    // Delivered: three readable ECGs for the reading system, the fragment
    // for review.
    let scp = wait_files(&hub.import, "scp", 3).await;
    assert_eq!(scp.len(), 3);
    assert!(
        scp.iter()
            .any(|p| p.to_string_lossy().contains("_STAT-001_lingshan-xiacun_"))
    );
    let q = wait_files(&hub.import.join("quarantine"), "scp", 1).await;
    assert_eq!(std::fs::read(&q[0]).expect("read").len(), routine.len() / 2);
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(q[0].with_extension("json")).expect("sidecar"))
            .expect("json");
    assert!(sidecar["metadata"]["quarantine"].is_string());

    let m = hub.gateway.metrics.encode();
    assert!(
        m.contains(r#"yilian_gateway_ecg_received_total{device="cart-raw",lane="urgent"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(
            r#"yilian_gateway_ecg_quarantined_total{device="cart-raw",reason="unreadable"} 1"#
        ),
        "{m}"
    );
    hub.gateway.shutdown().await;
    hub.central.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lrzsz_xmodem_and_ymodem_exports_arrive_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (x_gw, x_cart) = (dir.path().join("by-id-x"), dir.path().join("cart-x"));
    let (y_gw, y_cart) = (dir.path().join("by-id-y"), dir.path().join("cart-y"));
    let _x = Cable::plug(&x_gw, &x_cart).expect("socat pty pair");
    let _y = Cable::plug(&y_gw, &y_cart).expect("socat pty pair");
    let toml = format!(
        "[[ecg_serial]]\nname = \"cart-x\"\nport = {:?}\nprotocol = \"xmodem\"\n\n\
         [[ecg_serial]]\nname = \"cart-y\"\nport = {:?}\nprotocol = \"ymodem\"\n",
        x_gw.display().to_string(),
        y_gw.display().to_string()
    );
    let hub = hub(dir.path(), &toml).await;
    // Let the gateway open both ports.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let scp = sample("scp-ecg/ecgtoolkit_Example.scp");
    let aecg = sample("aecg/ecgtoolkit_Example_aECG.xml");
    let stat_path = dir.path().join("STAT0001.SCP");
    let stat = CartRecord {
        patient_id: "Y-STAT",
        last_name: "Wang",
        stat_code: 3,
        waveform_bytes: 5000,
    }
    .encode();
    std::fs::write(&stat_path, &stat).expect("write");

    let (xc, s1) = (x_cart.clone(), scp.clone());
    let x = tokio::task::spawn_blocking(move || lrzsz_send(false, &xc, &[&s1], 60).expect("sx"));
    let (yc, s2, a2, st2) = (y_cart.clone(), scp.clone(), aecg.clone(), stat_path.clone());
    let y = tokio::task::spawn_blocking(move || {
        lrzsz_send(true, &yc, &[&a2, &st2, &s2], 90).expect("sb")
    });
    let (x, y) = (x.await.expect("sx"), y.await.expect("sb"));
    assert!(
        x.success(),
        "sx reports failure ({x}): the final ACK comes after the commit"
    );
    assert!(y.success(), "sb reports failure ({y})");

    let items = wait_items(&hub.central, 4).await;
    assert_eq!(items.len(), 4, "{items:#?}");
    let scp_bytes = std::fs::read(&scp).expect("read");
    let scp_items: Vec<&ItemRow> = items
        .iter()
        .filter(|i| i.sha256 == sha256(&scp_bytes))
        .collect();
    assert_eq!(
        scp_items.len(),
        2,
        "XMODEM's 0x1A padding trimmed by the record length; YMODEM exact: {items:#?}"
    );
    let xml = std::fs::read(&aecg).expect("read");
    let a = items
        .iter()
        .find(|i| i.sha256 == sha256(&xml))
        .expect("the aECG, exact");
    assert_eq!(a.kind, "aecg");
    assert_eq!(meta(a, "filename"), Some("ecgtoolkit_Example_aECG.xml"));
    assert_eq!(meta(a, "patient_id"), Some("SBJ-123"));
    let s = items
        .iter()
        .find(|i| i.sha256 == sha256(&stat))
        .expect("the STAT record");
    assert_eq!(s.lane, "urgent");
    wait_files(&hub.import, "scp", 3).await;
    wait_files(&hub.import, "xml", 1).await;
    hub.gateway.shutdown().await;
    hub.central.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn folder_intake_samples_reports_and_damaged_files() {
    folder_intake(String::new()).await;
}

/// The same with central's index on PostgreSQL and its payloads in a real
/// S3 bucket: each ECG fetched from the bucket to be written out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn folder_intake_with_the_index_on_postgresql_and_payloads_in_a_bucket() {
    let city = yilian_rig::garage::CityStore::start("ecg").expect("PostgreSQL and Garage");
    folder_intake(city.toml()).await;
}

async fn folder_intake(store_toml: String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let drop = dir.path().join("ecg-share");
    let toml = format!(
        "[[folder]]\nname = \"ecg-share\"\npath = {:?}\nprofile = \"ecg\"\nsettle = \"300ms\"\npoll_interval = \"100ms\"\n",
        drop.display().to_string()
    );
    let hub = hub_via(dir.path(), &toml, None, &store_toml).await;
    std::fs::create_dir_all(&drop).expect("mkdir");
    let scp = std::fs::read(sample("scp-ecg/ecgtoolkit_Example.scp")).expect("read");
    // Names say nothing: carts name files however they like.
    for (name, src) in [
        ("00001.DAT", "scp-ecg/ecgtoolkit_Example.scp"),
        ("00002.DAT", "aecg/ecgtoolkit_Example_aECG.xml"),
        ("00003.DAT", "dicom-ecg/ecgtoolkit_Example_12lead.dcm"),
    ] {
        std::fs::copy(sample(src), drop.join(name)).expect("copy");
    }
    std::fs::write(
        drop.join("report.bin"),
        b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n",
    )
    .expect("write");
    std::fs::write(drop.join("00004.DAT"), &scp[..scp.len() / 3]).expect("truncated");
    std::fs::write(
        drop.join("00005.DAT"),
        b"\x00\x13garbage from a confused cart",
    )
    .expect("garbage");
    let mut damaged = scp.clone();
    let n = damaged.len();
    damaged[n - 200] ^= 0x5A;
    std::fs::write(drop.join("00006.DAT"), &damaged).expect("damaged");

    let items = wait_items(&hub.central, 7).await;
    assert_eq!(items.len(), 7, "{items:#?}");
    let by_name = |n: &str| {
        items
            .iter()
            .find(|i| meta(i, "filename") == Some(n))
            .unwrap_or_else(|| panic!("{n} missing"))
    };
    let s = by_name("00001.DAT");
    assert_eq!(
        (s.kind.as_str(), meta(s, "device")),
        ("scp-ecg", Some("ELI250"))
    );
    let a = by_name("00002.DAT");
    assert_eq!(a.kind, "aecg");
    assert_eq!(meta(a, "acquired"), Some("2002-11-22T09:10:00"));
    let d = by_name("00003.DAT");
    assert_eq!(d.kind, "dicom");
    assert_eq!(meta(d, "ecg"), Some("record"));
    assert!(meta(d, "sop_instance_uid").is_some());
    let r = by_name("report.bin");
    assert_eq!((r.kind.as_str(), meta(r, "ecg")), ("pdf", Some("report")));
    for (n, class) in [
        ("00004.DAT", "unreadable SCP-ECG record"),
        ("00005.DAT", "not a recognised ECG format"),
        ("00006.DAT", "checksum"),
    ] {
        let q = meta(by_name(n), "quarantine").unwrap_or_default();
        assert!(q.contains(class), "{n}: {q:?}");
    }
    for i in &items {
        assert_eq!(i.lane, "clinical", "routine ECGs: {i:#?}");
    }

    // The reading system gets the four readable ones; review gets three.
    wait_files(&hub.import, "scp", 1).await;
    wait_files(&hub.import, "xml", 1).await;
    wait_files(&hub.import, "dcm", 1).await;
    wait_files(&hub.import, "pdf", 1).await;
    let q = hub.import.join("quarantine");
    let deadline = Instant::now() + Duration::from_secs(30);
    while files_with(&q, "json").len() < 3 {
        assert!(
            Instant::now() < deadline,
            "quarantine: {:?}",
            files_with(&q, "json")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(files_with(&hub.import, "json").len(), 4);
    assert!(
        std::fs::read_dir(&drop).expect("ls").next().is_none(),
        "folder emptied"
    );

    // The technician's view lists them, delivered, with the quarantine.
    let config = GatewayConfig::load(&dir.path().join("gateway.toml")).expect("config");
    let report = yilian_gateway::status::collect(&config, 20).expect("status");
    let text = yilian_gateway::status::render(
        &report,
        yilian_gateway::now_ms(),
        &yilian_gateway::clock::Clock::default(),
        yilian_gateway::i18n::Language::En,
    );
    assert_eq!(report.ecgs.len(), 7, "{text}");
    assert!(text.contains("ecg-share"), "{text}");
    assert!(text.contains("SBJ-123"), "{text}");
    assert!(text.contains("QUARANTINED"), "{text}");
    println!("{text}");

    let m = hub.gateway.metrics.encode();
    assert!(
        m.contains(
            r#"yilian_gateway_ecg_quarantined_total{device="ecg-share",reason="checksum"} 1"#
        ),
        "{m}"
    );
    let cm = hub.central.metrics.encode();
    assert!(
        cm.contains(r#"yilian_central_ecg_end_to_end_seconds_count{lane="clinical"} 7"#),
        "{cm}"
    );
    hub.gateway.shutdown().await;
    hub.central.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stat_ecg_overtakes_a_1gb_study_on_a_saturated_uplink() {
    const STUDY: u64 = 1 << 30;
    const RATE: u64 = 32 * 1024 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let imaging = dir.path().join("imaging");
    let ecg = dir.path().join("ecg-share");
    let toml = format!(
        "[[folder]]\nname = \"imaging\"\npath = {:?}\nsettle = \"300ms\"\npoll_interval = \"100ms\"\n\n\
         [[folder]]\nname = \"ecg-share\"\npath = {:?}\nprofile = \"ecg\"\nsettle = \"300ms\"\npoll_interval = \"100ms\"\n",
        imaging.display().to_string(),
        ecg.display().to_string()
    );
    let shaping = Shaping {
        bytes_per_sec: RATE,
        queue: Duration::from_millis(30),
        down_bytes_per_sec: None,
    };
    let hub = hub_via(dir.path(), &toml, Some(shaping), "").await;
    std::fs::create_dir_all(&imaging).expect("mkdir");
    std::fs::create_dir_all(&ecg).expect("mkdir");
    // A 1 GiB study (sparse: the source costs no disk; spool and central
    // hold real copies).
    let staging = dir.path().join("study.part");
    std::fs::File::create(&staging)
        .and_then(|f| f.set_len(STUDY))
        .expect("study");
    std::fs::rename(&staging, imaging.join("CT-STUDY.BIN")).expect("drop");

    // Wait until the study saturates the link.
    let deadline = Instant::now() + Duration::from_secs(120);
    while hub.central.metrics.bytes_received.get() < 64 * 1024 * 1024 {
        assert!(
            Instant::now() < deadline,
            "the study never started uploading"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stat = CartRecord {
        patient_id: "MI-0001",
        last_name: "Chen",
        stat_code: 9,
        waveform_bytes: 100_000,
    }
    .encode();
    let dropped = Instant::now();
    std::fs::write(ecg.join("STAT.SCP"), &stat).expect("drop the STAT ECG");
    let stat_sha = sha256(&stat);
    let stat_row = loop {
        let items = hub.central.store.items(None, None).expect("items");
        if let Some(i) = items.into_iter().find(|i| i.sha256 == stat_sha) {
            break i;
        }
        assert!(
            dropped.elapsed() < Duration::from_secs(60),
            "the STAT ECG did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stat_wall = dropped.elapsed();
    let received_when_stat_landed = hub.central.metrics.bytes_received.get();

    let deadline = Instant::now() + Duration::from_secs(600);
    let study_row = loop {
        let items = hub.central.store.items(None, None).expect("items");
        if let Some(i) = items.into_iter().find(|i| i.size == STUDY) {
            break i;
        }
        assert!(Instant::now() < deadline, "the study did not arrive");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "uplink {:.0} Mbit/s: STAT ECG ({} kB, urgent) committed {:.2} s after the gateway took it \
         ({:.2} s after the file was dropped, with {} MB of the study through); \
         the 1 GiB study took {:.1} s end to end",
        RATE as f64 * 8.0 / 1e6,
        stat.len() / 1000,
        stat_row.end_to_end_ms as f64 / 1000.0,
        stat_wall.as_secs_f64(),
        received_when_stat_landed / 1_000_000,
        study_row.end_to_end_ms as f64 / 1000.0
    );
    assert_eq!(stat_row.lane, "urgent");
    assert!(
        received_when_stat_landed < STUDY,
        "the STAT ECG must land while the study is still uploading"
    );
    assert!(
        stat_row.end_to_end_ms * 10 < study_row.end_to_end_ms,
        "STAT {} ms vs study {} ms",
        stat_row.end_to_end_ms,
        study_row.end_to_end_ms
    );
    hub.gateway.shutdown().await;
    hub.central.shutdown().await;
}
