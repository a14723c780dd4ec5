//! The modality worklist from dcmtk `findscu`: answered by the box while
//! central is unreachable, and a RIS order over MLLP reaching it.

use super::*;

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
