//! Storage commitment from pynetdicom: reported only once central has the
//! instances, on a new association, the unknown instance as failed.

use super::*;

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
