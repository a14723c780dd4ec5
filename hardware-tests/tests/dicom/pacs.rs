//! A 400-image CT study reaching Orthanc, the hospital PACS, unchanged.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_400_image_ct_study_reaches_orthanc_unchanged() {
    ct_study_to_orthanc(String::new()).await;
}

/// The same with central's index on PostgreSQL and its payloads in a real
/// S3 bucket: each instance fetched from the bucket to be sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_400_image_ct_study_reaches_orthanc_from_a_bucket() {
    let city = yilian_rig::garage::CityStore::start("pacs").expect("PostgreSQL and Garage");
    ct_study_to_orthanc(city.toml()).await;
}

async fn ct_study_to_orthanc(store_toml: String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let orthanc = Orthanc::start(&dir.path().join("orthanc")).expect("Orthanc");
    let pacs = format!(
        "\n[pacs]\naddress = \"{}\"\nae_title = \"{}\"\nretry_base = \"200ms\"\n\n{store_toml}",
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
