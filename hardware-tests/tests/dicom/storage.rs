//! C-STORE: a CT series and the conformance samples from dcmtk `storescu`,
//! an allow-list, a full spool answered 0xA700, and a malformed data set
//! answered 0xC000 between two good ones.

use super::*;

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
