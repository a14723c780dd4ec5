#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers may panic on setup failure
//! Configured devices as a technician and central ops see them before
//! they send anything.
//!
//! `check-config` names, with file and line, what would only fail at run
//! time: a drop folder that does not exist, a serial port that is not
//! there. The running gateway exports every configured device at zero from
//! the start, with whether the box can reach it: a missing folder or port
//! reads 0 (and is not quietly created), a bound listener 1, and a device
//! that connects is counted with the time it connected.

use std::time::{Duration, Instant};

use yilian_rig::configs::free_tcp_port;
use yilian_rig::hub::Hub;
use yilian_rig::procs::binary;

fn metric(text: &str, name: &str, device: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(&format!("device=\"{device}\"")))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn wait_metric(hub: &Hub, name: &str, device: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = hub.gateway.metrics.encode();
        if metric(&m, name, device) == Some(want) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{{device={device}}} never reached {want}:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_devices_are_visible_and_checked_before_they_send() {
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = dir.path().join("drop/ecg");
    let port = dir.path().join("dev/serial/by-id/usb-cart-1");
    let hl7 = free_tcp_port().expect("port");
    let devices = format!(
        "\n[[folder]]\nname = \"ecg-share\"\npath = \"{}\"\npoll_interval = \"200ms\"\n\n[[ecg_serial]]\nname = \"cart-1\"\nport = \"{}\"\nprotocol = \"raw\"\n\n[[hl7]]\nname = \"lab\"\nlisten = \"{hl7}\"\n",
        folder.display(),
        port.display()
    );
    let hub = Hub::start(dir.path(), &devices).await.expect("hub");
    let config = dir.path().join("gateway.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    let line_of = |needle: &str| {
        text.lines()
            .position(|l| l.contains(needle))
            .map(|i| i + 1)
            .expect("in the file")
    };

    // check-config names both problems, each with its line, in English
    // with LANG=en...
    let check = |lang: &str| {
        let out = std::process::Command::new(binary("yilian-gateway").expect("bin"))
            .args(["check-config", "--config"])
            .arg(&config)
            .env("LANG", lang)
            .output()
            .expect("run");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let said = check("en_US.UTF-8");
    assert!(
        said.contains(&format!("line {}: folder[0].path", line_of("drop/ecg")))
            && said.contains("does not exist"),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "line {}: ecg_serial[0].port",
            line_of("usb-cart-1")
        )) && said.contains("plugged in"),
        "{said}"
    );
    // ...and in Chinese, the box's default, for the clinic's technician.
    let said = check("zh_CN.UTF-8");
    assert!(
        said.contains(&format!("第 {} 行：folder[0].path", line_of("drop/ecg")))
            && said.contains("不存在"),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "第 {} 行：ecg_serial[0].port",
            line_of("usb-cart-1")
        )) && said.contains("设备插好了吗"),
        "{said}"
    );

    // Every device has its series at zero; the box can reach the listener
    // only, and did not make the missing folder.
    let m = wait_metric(&hub, "yilian_device_up", "lab", 1.0).await;
    for device in ["ecg-share", "cart-1", "lab"] {
        assert_eq!(
            metric(&m, "yilian_intake_items_total", device),
            Some(0.0),
            "{device}:\n{m}"
        );
    }
    let m = wait_metric(&hub, "yilian_device_up", "ecg-share", 0.0).await;
    assert_eq!(metric(&m, "yilian_device_up", "cart-1"), Some(0.0), "{m}");
    assert!(!folder.exists(), "a missing drop folder is not made");

    // The folder appears: the device comes up without a restart.
    std::fs::create_dir_all(&folder).expect("mkdir");
    wait_metric(&hub, "yilian_device_up", "ecg-share", 1.0).await;

    // An LIS connects: counted, with when.
    let before = yilian_gateway::now_ms() / 1000;
    let conn = tokio::net::TcpStream::connect(hl7).await.expect("connect");
    let m = wait_metric(&hub, "yilian_device_connections", "lab", 1.0).await;
    let at = metric(&m, "yilian_device_last_connection_timestamp_seconds", "lab").unwrap_or(0.0);
    assert!(
        at >= before as f64,
        "last connection {at}, test began {before}"
    );
    drop(conn);
    wait_metric(&hub, "yilian_device_connections", "lab", 0.0).await;
    hub.shutdown().await;
}
