#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers may panic on setup failure
//! The gateway as a modality's storage destination, driven by dcmtk's
//! `echoscu` and `storescu`: a CT series and the conformance samples
//! arrive at central byte for byte (data set unchanged, Part 10 header
//! added), an unknown calling AE is refused when an allow-list is set, and
//! a full spool answers 0xA700 until space frees, when the modality's retry
//! succeeds; a malformed data set (sent raw by pynetdicom) is answered
//! 0xC000 without the gateway allocating what its headers claim, between
//! two good instances that are stored; and a 400-image CT study reaches Orthanc, the hospital PACS,
//! with the same SOP Instance UIDs and pixel data; and a storage
//! commitment request from pynetdicom answered only once central has the
//! instances, on a new association, with the unknown instance as failed;
//! and dcmtk `findscu` getting the clinic's worklist, imported at central
//! with `yilian-central worklist`, from the gateway while central is
//! unreachable, and an ORM^O01 from the RIS (sent by the python `hl7`
//! package's `mllp_send`) reaching that worklist.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use yilian_central::store::ItemRow;
use yilian_rig::configs::free_tcp_port;
use yilian_rig::hub::HubSpec;
use yilian_rig::modality::{CtStudy, dataset_bytes, echoscu, storescu, write_malformed};
use yilian_rig::orthanc::Orthanc;
use yilian_rig::relay::Relay;

fn sample(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/samples")
        .join(rel);
    assert!(p.exists(), "{} is missing", p.display());
    p
}

struct Hub {
    central: yilian_central::Running,
    gateway: yilian_gateway::Running,
    relay: Relay,
    dicom: std::net::SocketAddr,
}

async fn hub(dir: &Path, dicom_extra: &str, quota_bytes: Option<u64>) -> Hub {
    hub_with(dir, dicom_extra, quota_bytes, "").await
}

async fn hub_with(
    dir: &Path,
    dicom_extra: &str,
    quota_bytes: Option<u64>,
    central_extra: &str,
) -> Hub {
    let dicom = free_tcp_port().expect("a free port");
    let hub = yilian_rig::hub::Hub::start_with(
        dir,
        HubSpec {
            gateway: "lingshan/xiacun/box-1",
            central_extra: format!(
                "[ecg]\ndirectory = {:?}\n{central_extra}",
                dir.join("ecg-import").display().to_string()
            ),
            gateway_extra: format!(
                "\n[[dicom]]\nname = \"modalities\"\nlisten = \"{dicom}\"\nae_title = \"YILIAN_GW\"\n{dicom_extra}"
            ),
            quota_bytes,
            idle_timeout_ms: Some(3000),
            reconnect_max_ms: 500,
            relay: Some(None),
            ..HubSpec::default()
        },
    )
    .await
    .expect("hub");
    Hub {
        central: hub.central,
        gateway: hub.gateway,
        relay: hub.relay.expect("relay"),
        dicom,
    }
}

async fn wait_items(central: &yilian_central::Running, n: usize, secs: u64) -> Vec<ItemRow> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let items = central.store.items(None, None).expect("items");
        if items.len() >= n {
            return items;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} items at central",
            items.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn meta<'a>(i: &'a ItemRow, k: &str) -> Option<&'a str> {
    i.metadata.get(k).and_then(|v| v.as_str())
}

/// The files storescu's verbose log says were refused.
fn refused_files(log: &str) -> Vec<PathBuf> {
    let mut current = None;
    let mut refused = Vec::new();
    for line in log.lines() {
        if let Some(f) = line.strip_prefix("I: Sending file: ") {
            current = Some(PathBuf::from(f.trim()));
        } else if line.contains("Received Store Response (Refused")
            && let Some(f) = current.take()
        {
            refused.push(f);
        }
    }
    refused
}

/// dcmtk's storescp, bit-preserving, as the reference receiver.
struct Storescp {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    dir: PathBuf,
}

impl Storescp {
    fn start(dir: &Path) -> Storescp {
        std::fs::create_dir_all(dir).expect("mkdir");
        let addr = free_tcp_port().expect("port");
        let child = yilian_rig::modality::dcmtk("storescp")
            .args(["-B", "-aet", "STORESCP", "-od"])
            .arg(dir)
            .arg(addr.port().to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("dcmtk is missing: apt-get install dcmtk (./scripts/test-all does)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "storescp did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Storescp {
            child,
            addr,
            dir: dir.to_owned(),
        }
    }

    /// The files it stored, once there are `n`.
    fn files(&self, n: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v: Vec<Vec<u8>> = std::fs::read_dir(&self.dir)
                .expect("ls")
                .flatten()
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect();
            if v.len() >= n {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "storescp stored {} of {n}",
                v.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Storescp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storescu_series_and_samples_arrive_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = hub(dir.path(), "", None).await;
    let addr = hub.dicom;
    let echo = run(move || echoscu(addr, "YILIAN_GW", "CT_ROOM"))
        .await
        .expect("echoscu");
    assert!(
        echo.status.success(),
        "echoscu: {}",
        String::from_utf8_lossy(&echo.stderr)
    );

    let study = CtStudy::new(1, 20);
    let files = study.write(&dir.path().join("ct")).expect("write study");
    let mut all = files.clone();
    all.push(sample("dicom-charset/chrX1.dcm"));
    all.push(sample("dicom-ecg/ecgtoolkit_Example_12lead.dcm"));
    let to_send = all.clone();
    let out = run(move || storescu(addr, "YILIAN_GW", "CT_ROOM", &to_send))
        .await
        .expect("storescu");
    assert!(
        out.status.success(),
        "storescu: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let items = wait_items(&hub.central, all.len(), 60).await;
    assert_eq!(items.len(), all.len());
    // What storescu sends is its own re-encoding of each file; dcmtk's
    // storescp in bit-preserving mode, sent the same files, stores exactly
    // the bytes on the wire: ours must be the same.
    let anchor_dir = dir.path().join("storescp");
    let anchor = Storescp::start(&anchor_dir);
    let (a, to_send) = (anchor.addr, all.clone());
    let out = run(move || storescu(a, "STORESCP", "CT_ROOM", &to_send))
        .await
        .expect("storescu");
    assert!(out.status.success());
    let anchored = anchor.files(all.len());
    for item in &items {
        assert_eq!(item.kind, "dicom");
        assert_eq!(meta(item, "calling_ae"), Some("CT_ROOM"));
        let stored = std::fs::read(&item.path).expect("blob");
        let ours = dataset_bytes(&stored).expect("a Part 10 file at central");
        assert!(
            anchored.iter().any(|a| dataset_bytes(a) == Some(ours)),
            "{:?} differs from what storescp -B received",
            meta(item, "sop_instance_uid")
        );
    }
    // Our own CT files go out as written, so their data sets match too.
    for path in &files {
        let original = std::fs::read(path).expect("read");
        let sent = dataset_bytes(&original).expect("a Part 10 file");
        assert!(
            items
                .iter()
                .any(|i| { dataset_bytes(&std::fs::read(&i.path).expect("blob")) == Some(sent) }),
            "{} not at central unchanged",
            path.display()
        );
    }
    let ct = items
        .iter()
        .find(|i| meta(i, "sop_instance_uid") == Some(study.sop_instance_uid(0).as_str()))
        .expect("first slice");
    assert_eq!(meta(ct, "patient_name"), Some("Zhang^San=张^三"));
    assert_eq!(meta(ct, "study_uid"), Some(study.study_uid.as_str()));
    assert_eq!(meta(ct, "modality"), Some("CT"));
    assert_eq!(ct.lane, "bulk");
    let chinese = items
        .iter()
        .find(|i| meta(i, "patient_id") == Some("X1EXAMPLE"))
        .expect("chrX1");
    assert_eq!(
        meta(chinese, "patient_name"),
        Some("Wang^XiaoDong=王^小東=")
    );
    let ecg = items
        .iter()
        .find(|i| meta(i, "ecg") == Some("record"))
        .expect("the DICOM ECG");
    assert!(meta(ecg, "sop_class").is_some_and(|c| c.starts_with("1.2.840.10008.5.1.4.1.1.9.1")));

    // Sent again (a modality that lost our answers): stored once.
    let again = files[..3].to_vec();
    let out = run(move || storescu(addr, "YILIAN_GW", "CT_ROOM", &again))
        .await
        .expect("storescu");
    assert!(out.status.success());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        hub.central.store.items(None, None).expect("items").len(),
        all.len()
    );
    hub.gateway.shutdown().await;
    hub.central.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allow_list_refuses_unknown_callers_and_sets_their_lane() {
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = "[[dicom.allowed]]\nae_title = \"DR_ROOM\"\n\n[[dicom.allowed]]\nae_title = \"ECG_CART\"\nlane = \"clinical\"\n";
    let hub = hub(dir.path(), extra, None).await;
    let addr = hub.dicom;
    let refused = run(move || echoscu(addr, "YILIAN_GW", "INTRUDER"))
        .await
        .expect("echoscu");
    assert!(
        !refused.status.success(),
        "an unknown caller must be refused"
    );
    let text = String::from_utf8_lossy(&refused.stderr).to_lowercase()
        + &String::from_utf8_lossy(&refused.stdout).to_lowercase();
    assert!(text.contains("calling ae title not recognized"), "{text}");
    let ok = run(move || echoscu(addr, "YILIAN_GW", "DR_ROOM"))
        .await
        .expect("echoscu");
    assert!(ok.status.success());

    let ecg = vec![sample("dicom-ecg/ecgtoolkit_Example_12lead.dcm")];
    let out = run(move || storescu(addr, "YILIAN_GW", "ECG_CART", &ecg))
        .await
        .expect("storescu");
    assert!(out.status.success());
    let items = wait_items(&hub.central, 1, 30).await;
    assert_eq!(items[0].lane, "clinical", "the ECG cart's own lane");
    hub.gateway.shutdown().await;
    hub.central.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_spool_answers_a700_and_the_retry_succeeds_once_space_frees() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Room for about four 512 KiB slices below the high watermark.
    let hub = hub(dir.path(), "", Some(2_400_000)).await;
    hub.relay.cut();
    let addr = hub.dicom;
    let study = CtStudy::new(2, 10);
    let files = study.write(&dir.path().join("ct")).expect("write study");
    let to_send = files.clone();
    let out = run(move || storescu(addr, "YILIAN_GW", "CT_ROOM", &to_send))
        .await
        .expect("storescu");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("Refused: OutOfResources"), "{said}");
    assert!(said.contains("Received Store Response (Success)"), "{said}");
    let m = hub.gateway.metrics.encode();
    assert!(
        m.contains("yilian_spool_refusals_total{reason=\"full\"}"),
        "{m}"
    );

    // The link returns, the backlog drains, delivered items make room; the
    // modality sends again what was refused, as a console's queue does.
    hub.relay.restore();
    let mut pending = refused_files(&said);
    assert_eq!(pending.len() + 4, files.len(), "{said}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() {
        assert!(Instant::now() < deadline, "still refused: {pending:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let to_send = pending.clone();
        let out = run(move || storescu(addr, "YILIAN_GW", "CT_ROOM", &to_send))
            .await
            .expect("storescu");
        let said = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        pending = refused_files(&said);
    }
    let items = wait_items(&hub.central, files.len(), 60).await;
    let mut uids: Vec<&str> = items
        .iter()
        .filter_map(|i| meta(i, "sop_instance_uid"))
        .collect();
    uids.sort_unstable();
    uids.dedup();
    assert_eq!(uids.len(), files.len(), "every slice at central");
    assert_eq!(items.len(), files.len(), "and each once");
    hub.gateway.shutdown().await;
    hub.central.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_malformed_data_set_gets_c000_and_the_good_ones_around_it_are_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = yilian_rig::logs::LogCapture::install();
    let hub = hub(dir.path(), "", None).await;
    let study = CtStudy::new(66, 2);
    let good = study.write(&dir.path().join("ct")).expect("write study");
    let bad = dir.path().join("forged.dcm");
    let bad_uid = write_malformed(&bad, 1).expect("write malformed");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/store_raw_scu.py");
    let before = yilian_rig::procs::peak_rss();
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(["--port", &hub.dicom.port().to_string()])
        .args(["--called", "YILIAN_GW", "--calling", "CT_ROOM"])
        .arg(&good[0])
        .arg(&bad)
        .arg(&good[1])
        .output()
        .expect("python3 with pynetdicom (./scripts/test-all installs it)");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let statuses: Vec<Option<u64>> = said
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["status"].as_u64())
        .collect();
    assert_eq!(statuses, [Some(0), Some(0xC000), Some(0)], "{said}");
    // The forged element claims 2 GiB; the gateway (in this process) must
    // not have allocated it to find out.
    let grew = yilian_rig::procs::peak_rss().saturating_sub(before);
    assert!(grew < 512 << 20, "peak RSS grew by {grew} bytes");
    let items = wait_items(&hub.central, 2, 30).await;
    let mut uids: Vec<&str> = items
        .iter()
        .filter_map(|i| meta(i, "sop_instance_uid"))
        .collect();
    uids.sort_unstable();
    assert_eq!(
        uids,
        [study.sop_instance_uid(0), study.sop_instance_uid(1)],
        "the good instances, and not {bad_uid}"
    );
    let log = logs.text();
    assert!(
        log.contains("malformed DICOM data set refused") && log.contains("(0029,1010)"),
        "the operator is told which element: {log}"
    );
    hub.gateway.shutdown().await;
    hub.central.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_400_image_ct_study_reaches_orthanc_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let orthanc = Orthanc::start(&dir.path().join("orthanc")).expect("Orthanc");
    let pacs = format!(
        "\n[pacs]\naddress = \"{}\"\nae_title = \"{}\"\nretry_base = \"200ms\"\n",
        orthanc.dicom, orthanc.ae_title
    );
    let hub = hub_with(dir.path(), "", None, &pacs).await;
    let study = CtStudy::new(3, 400);
    let files = study.write(&dir.path().join("ct")).expect("write study");
    let addr = hub.dicom;
    let started = Instant::now();
    let to_send = files.clone();
    let out = run(move || storescu(addr, "YILIAN_GW", "CT_ROOM", &to_send))
        .await
        .expect("storescu");
    assert!(out.status.success());
    let sent = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let n = orthanc.instance_count().expect("Orthanc statistics");
        if n >= 400 {
            break;
        }
        assert!(Instant::now() < deadline, "{n} of 400 instances in Orthanc");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "400 CT images (512x512x16 bit): storescu done in {:.1} s, all in Orthanc after {:.1} s",
        sent.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    // Every 40th slice fetched back: same UID, same pixel data.
    for i in (0..400).step_by(40) {
        let uid = study.sop_instance_uid(i);
        let theirs = orthanc.instance_file(&uid).expect("in Orthanc");
        let ours = std::fs::read(&files[i]).expect("read");
        let pixels = |bytes: &[u8]| {
            let o = dicom_object::OpenFileOptions::new()
                .from_reader(std::io::Cursor::new(bytes.to_vec()))
                .expect("parses");
            let sop = o
                .element(dicom_dictionary_std::tags::SOP_INSTANCE_UID)
                .expect("uid")
                .to_str()
                .expect("str")
                .trim_end_matches('\0')
                .to_owned();
            let px = o
                .element(dicom_dictionary_std::tags::PIXEL_DATA)
                .expect("pixels")
                .to_bytes()
                .expect("bytes")
                .to_vec();
            (sop, px)
        };
        assert_eq!(pixels(&theirs), pixels(&ours), "slice {i}");
    }
    let m = hub.central.metrics.encode();
    assert!(
        m.contains(r#"yilian_central_outbox_items{destination="pacs",state="delivered"} 400"#),
        "{m}"
    );
    // Indexed by study: one study, one series, all 400 in the PACS; still
    // receiving within the quiet period, complete after it.
    let studies = hub.central.store.studies(None, 60_000).expect("studies");
    assert_eq!(studies.len(), 1);
    let s = &studies[0];
    assert_eq!(
        (s.study_uid.as_str(), s.series, s.instances, s.forwarded),
        (study.study_uid.as_str(), 1, 400, 400)
    );
    assert_eq!(
        (s.patient_id.as_str(), s.modalities.as_str()),
        (study.patient_id.as_str(), "CT")
    );
    // Complete or not by the quiet period alone, whatever the time the
    // forwarding took on a loaded machine.
    assert!(!hub.central.store.studies(None, 3_600_000).expect("studies")[0].complete);
    assert!(hub.central.store.studies(None, 0).expect("studies")[0].complete);
    hub.gateway.shutdown().await;
    hub.central.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storage_commitment_is_reported_only_after_central_has_the_instances() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = free_tcp_port().expect("port");
    let extra = format!("[[dicom.allowed]]\nae_title = \"CT_ROOM\"\naddress = \"{listen}\"\n");
    let hub = hub(dir.path(), &extra, None).await;
    // The link is down: the instances stay in the spool.
    hub.relay.cut();
    let addr = hub.dicom;
    let study = CtStudy::new(4, 3);
    let files = study.write(&dir.path().join("ct")).expect("write study");
    let to_send = files.clone();
    let out = run(move || storescu(addr, "YILIAN_GW", "CT_ROOM", &to_send))
        .await
        .expect("storescu");
    assert!(out.status.success());

    let events = dir.path().join("modality-events.jsonl");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/commitment_scu.py");
    let mut args: Vec<String> = vec![
        script.display().to_string(),
        "--port".into(),
        addr.port().to_string(),
        "--called".into(),
        "YILIAN_GW".into(),
        "--calling".into(),
        "CT_ROOM".into(),
        "--listen".into(),
        listen.port().to_string(),
        "--transaction".into(),
        "1.2.826.0.1.3680043.10.1431.9.99.1".into(),
        "--out".into(),
        events.display().to_string(),
    ];
    for i in 0..3 {
        args.push(format!(
            "{}:{}",
            yilian_rig::modality::CT_IMAGE_STORAGE,
            study.sop_instance_uid(i)
        ));
    }
    let never_sent = "1.2.826.0.1.3680043.10.1431.9.99.404";
    args.push(format!(
        "{}:{never_sent}",
        yilian_rig::modality::CT_IMAGE_STORAGE
    ));
    let mut modality = std::process::Command::new("python3")
        .args(&args)
        .spawn()
        .expect("python3 with pynetdicom (./scripts/test-all installs it)");
    let read_events = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&events)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    // The N-ACTION is accepted at once...
    let deadline = Instant::now() + Duration::from_secs(30);
    while !read_events().iter().any(|e| e["event"] == "n-action") {
        assert!(Instant::now() < deadline, "no N-ACTION answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let action = read_events()
        .into_iter()
        .find(|e| e["event"] == "n-action")
        .expect("n-action");
    assert_eq!(action["status"], 0, "{action}");
    // ...but no result while central does not have the instances.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !read_events().iter().any(|e| e["event"] == "report"),
        "reported before central had the instances"
    );
    assert_eq!(hub.central.store.items(None, None).expect("items").len(), 0);

    let restored = std::time::SystemTime::now();
    hub.relay.restore();
    let deadline = Instant::now() + Duration::from_secs(60);
    let report = loop {
        if let Some(r) = read_events().into_iter().find(|e| e["event"] == "report") {
            break r;
        }
        assert!(Instant::now() < deadline, "no storage commitment result");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let status = modality.wait().expect("modality");
    assert!(status.success());
    let items = hub.central.store.items(None, None).expect("items");
    assert_eq!(
        items.len(),
        3,
        "central has the three by the time of the report"
    );
    let reported_at = report["time"].as_f64().expect("time");
    let restored_at = restored
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(reported_at > restored_at);
    let mut ok: Vec<String> = report["ok"]
        .as_array()
        .expect("ok")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    ok.sort();
    let mut expected: Vec<String> = (0..3).map(|i| study.sop_instance_uid(i)).collect();
    expected.sort();
    assert_eq!(ok, expected);
    assert_eq!(report["failed"], serde_json::json!([[never_sent, 0x0112]]));
    assert_eq!(report["event_type"], 2, "some failed");
    assert_eq!(report["transaction"], "1.2.826.0.1.3680043.10.1431.9.99.1");
    hub.gateway.shutdown().await;
    hub.central.shutdown().await;
}

/// `findscu -W` against the gateway; returns the matches' data sets.
fn findscu(
    addr: std::net::SocketAddr,
    keys: &[&str],
    out: &Path,
) -> Vec<dicom_object::InMemDicomObject> {
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).expect("mkdir");
    let mut cmd = yilian_rig::modality::dcmtk("findscu");
    cmd.args(["-W", "-X", "-od"])
        .arg(out)
        .args(["-aet", "DR_ROOM", "-aec", "YILIAN_GW"]);
    for k in keys {
        cmd.args(["-k", k]);
    }
    let o = cmd
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .output()
        .expect("findscu");
    assert!(
        o.status.success(),
        "findscu: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(out)
        .expect("ls")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            let bytes = std::fs::read(f).expect("read");
            // findscu -X writes bare data sets in Explicit VR Little Endian.
            let ts = dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased();
            match dicom_object::OpenFileOptions::new()
                .from_reader(std::io::Cursor::new(bytes.clone()))
            {
                Ok(o) => o.into_inner(),
                Err(_) => dicom_object::InMemDicomObject::read_dataset_with_ts(&bytes[..], &ts)
                    .expect("dataset"),
            }
        })
        .collect()
}

fn text(o: &dicom_object::InMemDicomObject, tag: dicom_core::Tag) -> String {
    o.element(tag)
        .ok()
        .and_then(|e| {
            e.to_str()
                .ok()
                .map(|s| s.trim_end_matches(['\0', ' ']).to_owned())
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worklist_answers_from_the_box_while_central_is_unreachable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = hub(dir.path(), "", None).await;
    let orders = serde_json::json!([
        {"accession_number": "ACC1001", "patient_id": "P1001", "patient_name": "Wang^Xiaoming=王^小明",
         "patient_sex": "M", "patient_birth_date": "19700101", "modality": "DX",
         "scheduled_station_ae_title": "DR_ROOM", "scheduled_start_date": "20261123", "scheduled_start_time": "090000",
         "scheduled_procedure_step_id": "SPS1", "requested_procedure_id": "RP1",
         "study_instance_uid": "1.2.826.0.1.3680043.10.1431.9.50.1", "requested_procedure_description": "Chest PA"},
        {"accession_number": "ACC1002", "patient_id": "P1002", "patient_name": "Li^Hua=李^华",
         "modality": "DX", "scheduled_station_ae_title": "DR_ROOM", "scheduled_start_date": "20261124"},
        {"accession_number": "ACC1003", "patient_id": "P1003", "patient_name": "Zhao^Lei",
         "modality": "US", "scheduled_station_ae_title": "US_ROOM", "scheduled_start_date": "20261123"}
    ]);
    let file = dir.path().join("orders.json");
    std::fs::write(&file, orders.to_string()).expect("write");
    let central_cli = yilian_rig::procs::binary("yilian-central").expect("yilian-central built");
    let import = |f: &Path| {
        let o = std::process::Command::new(&central_cli)
            .args(["worklist", "--data-dir"])
            .arg(dir.path().join("central-data"))
            .args(["--clinic", "lingshan/xiacun", "--import"])
            .arg(f)
            .output()
            .expect("yilian-central worklist");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let said = import(&file);
    assert!(said.contains("3 scheduled step(s) added"), "{said}");
    let version = |s: &str| {
        s.split("version ")
            .nth(1)
            .and_then(|v| v.split(',').next())
            .map(str::to_owned)
    };
    let v1 = version(&said).expect("version");
    let wait_version = |v: String| {
        let gw_dir = dir.path().join("spool").join("worklist.json");
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let held = yilian_gateway::worklist::WorklistCache::load(&gw_dir).version();
                if held == v {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "gateway holds worklist {held:?}, not {v}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    wait_version(v1).await;

    // Central unreachable from here on.
    hub.relay.cut();
    let addr = hub.dicom;
    let out = dir.path().join("find");
    let all_dx = run({
        let o = out.clone();
        move || {
            findscu(
                addr,
                &[
                    "PatientName",
                    "PatientID",
                    "AccessionNumber",
                    "ScheduledProcedureStepSequence[0].Modality=DX",
                    "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate",
                ],
                &o,
            )
        }
    })
    .await;
    let mut accessions: Vec<String> = all_dx
        .iter()
        .map(|o| text(o, dicom_dictionary_std::tags::ACCESSION_NUMBER))
        .collect();
    accessions.sort();
    assert_eq!(accessions, ["ACC1001", "ACC1002"]);
    let wang = run({
        let o = out.clone();
        move || findscu(addr, &["PatientName=wang*", "PatientID", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20261120-20261123"], &o)
    })
    .await;
    assert_eq!(wang.len(), 1);
    assert_eq!(
        text(&wang[0], dicom_dictionary_std::tags::PATIENT_ID),
        "P1001"
    );
    assert_eq!(
        text(&wang[0], dicom_dictionary_std::tags::PATIENT_NAME),
        "Wang^Xiaoming=王^小明"
    );
    let none = run({
        let o = out.clone();
        move || findscu(addr, &["PatientID=P9*"], &o)
    })
    .await;
    assert!(none.is_empty());

    // The link returns; ACC1001 is done and leaves the box's list.
    hub.relay.restore();
    let done = dir.path().join("done.json");
    std::fs::write(
        &done,
        r#"[{"accession_number": "ACC1001", "status": "completed"}]"#,
    )
    .expect("write");
    let said = import(&done);
    wait_version(version(&said).expect("version")).await;
    let left = run({
        let o = out.clone();
        move || findscu(addr, &["AccessionNumber"], &o)
    })
    .await;
    let mut accessions: Vec<String> = left
        .iter()
        .map(|o| text(o, dicom_dictionary_std::tags::ACCESSION_NUMBER))
        .collect();
    accessions.sort();
    assert_eq!(accessions, ["ACC1002", "ACC1003"]);
    hub.gateway.shutdown().await;
    hub.central.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ris_order_over_mllp_reaches_the_modality_worklist() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ris = free_tcp_port().expect("port");
    let central_extra = format!(
        "\n[worklist]\nhl7_listen = \"{ris}\"\nfacilities = {{ XIACUN = \"lingshan/xiacun\" }}\n"
    );
    let hub = hub_with(dir.path(), "", None, &central_extra).await;
    let obr: Vec<String> = (0..=24)
        .map(|i| match i {
            0 => "OBR".into(),
            1 => "1".into(),
            3 => "FL9".into(),
            4 => "CHEST^Chest PA".into(),
            18 => "ACC3001".into(),
            21 => "DR_ROOM".into(),
            24 => "DX".into(),
            _ => String::new(),
        })
        .collect();
    let order = format!(
        "MSH|^~\\&|RIS|COUNTY|YILIAN|XIACUN|20261123090000||ORM^O01|ORD0001|P|2.3|||AL|NE||UNICODE UTF-8\r\
         PID|1||P3001^^^H||Sun^Li^^^^^L~孙^丽||19900303|F\r\
         ORC|NW|PL9|FL9||SC||^^^20261123100000\r{}\r",
        obr.join("|")
    );
    let file = dir.path().join("orm.hl7");
    std::fs::write(&file, order.replace('\r', "\n")).expect("write");
    let sender = std::process::Command::new("sh")
        .args(["-c", "command -v mllp_send"])
        .output()
        .expect("sh");
    let sender = String::from_utf8_lossy(&sender.stdout).trim().to_owned();
    assert!(!sender.is_empty(), "mllp_send missing (pip install hl7)");
    let out = std::process::Command::new(&sender)
        .args(["--loose", "-p", &ris.port().to_string(), "-f"])
        .arg(&file)
        .arg("127.0.0.1")
        .output()
        .expect("mllp_send");
    let ack = String::from_utf8_lossy(&out.stdout).to_string();
    // The RIS asked for enhanced mode (MSH-15 AL, MSH-16 NE): the accept
    // acknowledgement after the durable commit is CA.
    assert!(ack.contains("MSA|CA|ORD0001"), "{ack}");

    let addr = hub.dicom;
    let out_dir = dir.path().join("find");
    let deadline = Instant::now() + Duration::from_secs(30);
    let found = loop {
        let o = out_dir.clone();
        let r = run(move || {
            findscu(
                addr,
                &["AccessionNumber=ACC3001", "PatientName", "PatientID"],
                &o,
            )
        })
        .await;
        if !r.is_empty() {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the order never reached the gateway's worklist"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        text(&found[0], dicom_dictionary_std::tags::PATIENT_ID),
        "P3001"
    );
    // The pinyin and the characters, sent as two repetitions of PID-5,
    // are the two component groups of the DICOM name...
    assert_eq!(
        text(&found[0], dicom_dictionary_std::tags::PATIENT_NAME),
        "Sun^Li=孙^丽"
    );
    // ...and a console searching by the characters finds the order.
    let o = dir.path().join("find-ideographic");
    let by_characters = run(move || {
        findscu(
            addr,
            &[
                "SpecificCharacterSet=ISO_IR 192",
                "PatientName=孙*",
                "AccessionNumber",
            ],
            &o,
        )
    })
    .await;
    assert_eq!(by_characters.len(), 1);
    assert_eq!(
        text(
            &by_characters[0],
            dicom_dictionary_std::tags::ACCESSION_NUMBER
        ),
        "ACC3001"
    );
    hub.gateway.shutdown().await;
    hub.central.shutdown().await;
}
