#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers may panic on setup failure
//! Fleet monitoring against real tools: promtool checks the metric names,
//! the dashboards only query series that exist, and a real Prometheus server
//! scraping central sees every gateway's series and raises the silent-box
//! alert when a gateway stops.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use yilian_rig::configs::{FolderSetup, free_tcp_port};
use yilian_rig::hub::HubSpec;
use yilian_rig::scrape::{http_get, sum};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tool(name: &str) -> PathBuf {
    let path = PathBuf::from("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{name} is missing: apt-get install prometheus (./scripts/test-all does)"
    );
    path
}

struct Hub {
    central: yilian_central::Running,
    gateway: Option<yilian_gateway::Running>,
    _tmp: tempfile::TempDir,
}

async fn hub() -> Hub {
    let tmp = tempfile::Builder::new()
        .prefix("yilian-ops-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tmp");
    let dir = tmp.path();
    // With a LIS configured, as a hub has: its outbox series exist. Nothing
    // listens there, and nothing is sent to it either.
    let lis = free_tcp_port().expect("port");
    let drop = dir.join("drop");
    std::fs::create_dir_all(&drop).expect("mkdir");
    std::fs::write(drop.join("REPORT.PDF"), b"%PDF-1.4 ops test").expect("write");
    let hub = yilian_rig::hub::Hub::start_with(
        dir,
        HubSpec {
            gateway: "ops/clinic/box-1",
            central_extra: format!("[lis]\naddress = \"{lis}\"\n"),
            folders: vec![FolderSetup {
                name: "ecg-share".into(),
                path: drop,
                lane: "clinical",
                settle_ms: 200,
            }],
            // An ECG cart's folder, so that the ECG series exist from the start.
            // And a report folder, so that the report sink series exist.
            gateway_extra: format!(
                "\n[[folder]]\nname = \"ecg-cart\"\npath = {:?}\nprofile = \"ecg\"\n\
                 \n[[report_sink]]\nname = \"reports-folder\"\ntype = \"folder\"\ndir = {:?}\n",
                dir.join("ecg-cart").display().to_string(),
                dir.join("reports").display().to_string()
            ),
            ..HubSpec::default()
        },
    )
    .await
    .expect("hub");
    let (central, gateway) = (hub.central, hub.gateway);
    // Wait for the file to arrive and a heartbeat to carry the counters.
    let addr = central.metrics_addr;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text =
            tokio::task::spawn_blocking(move || http_get(addr, "/metrics").unwrap_or_default())
                .await
                .expect("join");
        if sum(&text, "yilian_intake_items_total", &["gateway=\"box-1\""]) >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gateway series never reached central:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Hub {
        central,
        gateway: Some(gateway),
        _tmp: tmp,
    }
}

fn promtool_check_metrics(text: &str) -> String {
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{said}"
    );
    said
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let dir = repo().join("ops/prometheus");
    for args in [
        vec!["check", "rules", "yilian-alerts.yml"],
        vec!["test", "rules", "yilian-alerts.test.yml"],
    ] {
        let out = Command::new(tool("promtool"))
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_pass_promtool_and_dashboards_query_real_series() {
    let hub = hub().await;
    let gw = hub.gateway.as_ref().expect("running").metrics_addr;
    let gateway_text =
        tokio::task::spawn_blocking(move || http_get(gw, "/metrics").expect("scrape"))
            .await
            .expect("join");
    let ca = hub.central.metrics_addr;
    let central_text =
        tokio::task::spawn_blocking(move || http_get(ca, "/metrics").expect("scrape"))
            .await
            .expect("join");

    for (who, text) in [("gateway", &gateway_text), ("central", &central_text)] {
        let said = promtool_check_metrics(text);
        assert!(
            said.trim().is_empty(),
            "promtool has remarks on the {who}'s metrics:\n{said}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                line.starts_with("yilian_"),
                "{who} exposes a metric without the prefix: {line}"
            );
        }
    }
    // The gateway's series at central carry the identity from the
    // certificate.
    assert!(
        central_text.contains(
            "yilian_spool_backlog_items{county=\"ops\",clinic=\"clinic\",gateway=\"box-1\",lane=\"clinical\"}"
        ),
        "{central_text}"
    );
    assert!(central_text.contains("yilian_gateway_last_seen_timestamp_seconds{county=\"ops\",clinic=\"clinic\",gateway=\"box-1\"}"));
    assert!(central_text.contains("yilian_gateway_certificate_expiry_timestamp_seconds{"));

    // Every metric a dashboard or alert queries is one central exposes:
    // a sample now, or a family declared by central or by the gateway (whose
    // families central forwards once they have samples, e.g. retries).
    let declared = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next().map(str::to_owned))
            .collect()
    };
    let mut exposed: BTreeSet<String> = central_text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_owned))
        .collect();
    exposed.extend(declared(&central_text));
    exposed.extend(declared(&gateway_text));
    let files = [
        "ops/grafana/yilian-fleet.json",
        "ops/grafana/yilian-clinic.json",
        "ops/prometheus/yilian-alerts.yml",
    ];
    for file in files {
        let text = std::fs::read_to_string(repo().join(file)).expect("read");
        if file.ends_with(".json") {
            serde_json::from_str::<serde_json::Value>(&text).expect("dashboard is valid JSON");
        }
        let mut rest = text.as_str();
        while let Some(i) = rest.find("yilian_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            if name.starts_with("yilian_central_upload_rejections")
                || name.starts_with("yilian_spool_refusals")
            {
                // Counter families appear once something was rejected.
                continue;
            }
            assert!(
                exposed.contains(&name),
                "{file} queries {name}, which central does not expose"
            );
        }
    }
    hub.gateway.expect("running").shutdown().await;
    hub.central.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_scrapes_the_fleet_and_the_silent_box_alert_goes_pending() {
    let mut hub = hub().await;
    let tmp = tempfile::Builder::new()
        .prefix("yilian-prom-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tmp");
    // The shipped rules, with the silence threshold scaled from five
    // minutes to five seconds so the test does not wait for minutes.
    let rules =
        std::fs::read_to_string(repo().join("ops/prometheus/yilian-alerts.yml")).expect("rules");
    let original = "time() - yilian_gateway_last_seen_timestamp_seconds > 300";
    assert!(
        rules.contains(original),
        "the silent-box rule changed; update this test"
    );
    let rules = rules.replace(
        original,
        "time() - yilian_gateway_last_seen_timestamp_seconds > 5",
    );
    std::fs::write(tmp.path().join("rules.yml"), rules).expect("write");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - rules.yml\nscrape_configs:\n  - job_name: yilian-central\n    static_configs:\n      - targets: ['{}']\n",
        hub.central.metrics_addr
    );
    std::fs::write(tmp.path().join("prometheus.yml"), config).expect("write");
    let check = Command::new(tool("promtool"))
        .args(["check", "config", "prometheus.yml"])
        .current_dir(tmp.path())
        .output()
        .expect("promtool");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    let web = free_tcp_port().expect("port");
    let mut prom = Command::new(tool("prometheus"))
        .arg(format!(
            "--config.file={}",
            tmp.path().join("prometheus.yml").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .arg(format!(
            "--storage.tsdb.path={}",
            tmp.path().join("tsdb").display()
        ))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("prometheus.log")).expect("log"))
        .spawn()
        .expect("prometheus");

    tokio::task::spawn_blocking(move || {
        wait_until("the gateway's series in Prometheus", 60, || {
            results(
                web,
                "yilian_spool_backlog_items{county=\"ops\",clinic=\"clinic\",gateway=\"box-1\"}",
            ) == 3
        });
        wait_until("the gateway's intake counter", 30, || {
            results(
                web,
                "yilian_intake_items_total{gateway=\"box-1\",device=\"ecg-share\"}",
            ) == 1
        });
    })
    .await
    .expect("join");

    // Silence the box.
    hub.gateway.take().expect("running").shutdown().await;
    let alerts = move || {
        http_get(web, "/api/v1/alerts")
            .ok()
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
            .and_then(|v| v["data"]["alerts"].as_array().cloned())
            .unwrap_or_default()
    };
    tokio::task::spawn_blocking(move || {
        wait_until("YilianGatewaySilent to go pending", 60, || {
            alerts().iter().any(|a| {
                a["labels"]["alertname"] == "YilianGatewaySilent"
                    && a["labels"]["gateway"] == "box-1"
                    && a["state"] == "pending"
            })
        });
    })
    .await
    .expect("join");
    let _ = prom.kill();
    let _ = prom.wait();
    hub.central.shutdown().await;
}

fn results(web: std::net::SocketAddr, q: &str) -> usize {
    let path = format!("/api/v1/query?query={}", urlencode(q));
    http_get(web, &path)
        .ok()
        .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| v["data"]["result"].as_array().map(Vec::len))
        .unwrap_or(0)
}

fn wait_until(what: &str, secs: u64, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
