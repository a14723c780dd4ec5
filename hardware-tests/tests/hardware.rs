#![allow(clippy::expect_used, clippy::unwrap_used)]
//! The device scenarios against real hardware on the bench. Each test
//! runs only when its `YILIAN_HW_*` variable names a device and otherwise
//! reports itself skipped with the variable to set; the emulated versions
//! of the same scenarios are in `ecg.rs`, `astm.rs` and `dicom.rs`.
//! Wiring: `hardware-tests/README.md`.

use yilian_rig::hub::Hub;
use yilian_rig::hw;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_ecg_cart_on_a_serial_line_delivers_its_ecg_to_central() {
    let Some(cart) = hw::SerialEcg::from_env() else {
        hw::skipped(
            "YILIAN_HW_SERIAL_ECG",
            "/dev/serial/by-id/usb-FTDI_...-if00-port0",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path(), &cart.gateway_toml()).await.unwrap();
    eprintln!(
        "send an ECG from the cart on {} ({}, {} baud) within {:?}",
        cart.port.display(),
        cart.protocol,
        cart.baud,
        hw::operator_timeout()
    );
    let items = hub.wait_items(1, hw::operator_timeout()).await.unwrap();
    let ecg = &items[0];
    eprintln!("received: {} bytes, metadata {}", ecg.size, ecg.metadata);
    assert!(
        ecg.metadata.get("ecg").is_some(),
        "the cart's record was not recognised as an ECG (quarantined?): {}",
        ecg.metadata
    );
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_analyzer_sends_results_over_astm() {
    let Some(analyzer) = hw::Astm::from_env() else {
        hw::skipped(
            "YILIAN_HW_ASTM",
            "/dev/serial/by-id/usb-Prolific_...-if00-port0",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path(), &analyzer.gateway_toml())
        .await
        .unwrap();
    eprintln!(
        "send a result (or re-send the last run) from the analyzer on {} within {:?}",
        analyzer.port.display(),
        hw::operator_timeout()
    );
    let items = hub.wait_items(1, hw::operator_timeout()).await.unwrap();
    eprintln!("received: kind {}, {} bytes", items[0].kind, items[0].size);
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_modality_answers_echo_and_stores_to_the_gateway() {
    let Some(modality) = hw::Modality::from_env().unwrap() else {
        hw::skipped("YILIAN_HW_MODALITY", "192.168.10.20:104:CT_ROOM1");
        return;
    };
    let port: u16 = std::env::var("YILIAN_HW_GATEWAY_DICOM_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(11112);
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(
        dir.path(),
        &format!(
            "\n[[dicom]]\nname = \"modality\"\nlisten = \"0.0.0.0:{port}\"\nae_title = \"YILIAN_GW\"\n"
        ),
    )
    .await
    .unwrap();
    // The wiring first: the modality answers a C-ECHO from this machine.
    let echo = std::process::Command::new("/usr/bin/echoscu")
        .args(["-aet", "YILIAN_GW", "-aec", &modality.ae_title])
        .arg(&modality.host)
        .arg(modality.port.to_string())
        .status()
        .expect("dcmtk echoscu");
    assert!(
        echo.success(),
        "{} at {}:{} did not answer C-ECHO",
        modality.ae_title,
        modality.host,
        modality.port
    );
    eprintln!(
        "send a study from {} to AE YILIAN_GW at this machine, port {port}, within {:?}",
        modality.ae_title,
        hw::operator_timeout()
    );
    let items = hub.wait_items(1, hw::operator_timeout()).await.unwrap();
    eprintln!("received: {} ({} bytes)", items[0].metadata, items[0].size);
    assert_eq!(items[0].kind, "dicom");
    hub.shutdown().await;
}
