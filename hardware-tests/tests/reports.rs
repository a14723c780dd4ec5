#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers may panic on setup failure
//! Reports back down to the clinic (报告回传), with peers nobody here
//! wrote: a CT study from dcmtk `storescu` and a lab order from python
//! `hl7`'s `mllp_send` go up; the hospital's reading systems answer with
//! ORU^R01 and MDM^T02 sent by `mllp_send` to central; the clinic's HIS is
//! python `hl7`'s asyncio MLLP server. Each report must reach the box's
//! folder (PDF or text, and a sidecar) and the HIS (same MSH-10) once, the
//! receipts must reach central, a correction must be marked as one, a
//! report for nobody must stay parked until assigned, and a report missing
//! a field must be refused with an ERR naming it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use yilian_rig::configs::free_tcp_port;
use yilian_rig::hub::{Hub, HubSpec};
use yilian_rig::modality::{CtStudy, storescu};

/// The clinic HIS: the python peer, logging what it receives.
struct His {
    child: Child,
    log: PathBuf,
    addr: SocketAddr,
}

impl His {
    fn start(dir: &Path, refuse: &[&str]) -> Self {
        Self::start_reading(dir, refuse, "utf-8")
    }

    /// A HIS that reads `encoding` (python's codec name).
    fn start_reading(dir: &Path, refuse: &[&str], encoding: &str) -> Self {
        let addr = free_tcp_port().expect("port");
        std::fs::create_dir_all(dir).expect("mkdir");
        let log = dir.join("his.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/his_server.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script)
            .args(["--port", &addr.port().to_string()])
            .arg("--log")
            .arg(&log)
            .args(["--encoding", encoding])
            .stdout(Stdio::piped());
        for r in refuse {
            cmd.args(["--refuse", r]);
        }
        let mut child = cmd.spawn().expect("python3 his_server.py");
        let mut out = child.stdout.take().expect("stdout");
        let mut line = [0u8; 6];
        std::io::Read::read_exact(&mut out, &mut line).expect("the HIS says ready");
        Self { child, log, addr }
    }

    /// Control ids received, in order (resends included).
    fn received(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| v["control_id"].as_str().unwrap_or("").to_owned())
            .collect()
    }
}

impl His {
    /// When each message arrived (seconds since the epoch), by control id,
    /// first arrival only.
    fn arrivals(&self) -> std::collections::HashMap<String, f64> {
        let mut out = std::collections::HashMap::new();
        for v in std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        {
            let id = v["control_id"].as_str().unwrap_or("").to_owned();
            out.entry(id).or_insert(v["at"].as_f64().unwrap_or(0.0));
        }
        out
    }
}

impl Drop for His {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `message` with python `hl7`'s `mllp_send`; returns the ACK text.
fn mllp_send(dir: &Path, addr: SocketAddr, message: &str) -> String {
    let file = dir.join(format!("msg-{}.hl7", rand_suffix()));
    std::fs::write(&file, message.replace('\r', "\n")).expect("write");
    let out = Command::new("mllp_send")
        .args(["--loose", "-p", &addr.port().to_string(), "-f"])
        .arg(&file)
        .arg(addr.ip().to_string())
        .output()
        .expect("mllp_send (pip install hl7)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// An ORU^R01 report; `obx` is the content.
fn oru(
    control: &str,
    accession: &str,
    placer: &str,
    patient: &str,
    status: &str,
    obx: &str,
) -> String {
    format!(
        "MSH|^~\\&|RIS|COUNTY_HOSP|YILIAN|HUB|20261203101500||ORU^R01|{control}|P|2.5|||AL|NE||UNICODE UTF-8\r\
         PID|1||{patient}^^^H||Zhang^San~张^三||19700101|M\r\
         ORC|RE|{placer}|{accession}\r\
         OBR|1|{placer}|{accession}|CT^胸部CT平扫|||20261203100000|||||||||||{accession}||||20261203101400|||{status}\r\
         {obx}\r"
    )
}

/// A clinic LIS's result asking for application ACKs (MSH-15/16 AL/AL).
fn clinic_result(control: &str) -> String {
    format!(
        "MSH|^~\\&|CLINLIS|XIACUN|LIS|COUNTY|20261203101500||ORU^R01^ORU_R01|{control}|P|2.5.1|||AL|AL\r\
         PID|1||P{control}||Wang^Fang\r\
         OBR|1||S{control}|GLU^Glucose^L\r\
         OBX|1|NM|GLU^Glucose^L||5.4|mmol/L|3.9-6.1|N|||F\r"
    )
}

/// Until the box has connected to central once.
async fn box_known(store: &yilian_central::store::Store) {
    wait_for("the box known at central", Duration::from_secs(30), || {
        (!store.gateways().ok()?.is_empty()).then_some(())
    })
    .await;
}

fn text_obx(text: &str) -> String {
    format!("OBX|1|TX|IMP^印象||{text}||||||F")
}

async fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn files_in(dir: &Path, ext: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(ext))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reports_come_back_down_to_the_clinic() {
    reports_come_back(String::new()).await;
}

/// The same with central's index on a real PostgreSQL server and the
/// payloads (the reports' messages) in a real S3 bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reports_come_back_down_with_the_index_on_postgresql() {
    let city = yilian_rig::garage::CityStore::start("reports").expect("PostgreSQL and Garage");
    reports_come_back(city.toml()).await;
}

async fn reports_come_back(store_toml: String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let his = His::start(dir.path(), &["REFUSED1"]);
    let reports_port = free_tcp_port().expect("port");
    let dicom = free_tcp_port().expect("port");
    let lab = free_tcp_port().expect("port");
    let folder = dir.path().join("clinic-reports");
    let hub = Hub::start_with(
        dir.path(),
        HubSpec {
            central_extra: format!("[reports]\nhl7_listen = \"{reports_port}\"\n\n{store_toml}"),
            gateway_extra: format!(
                "\n[[dicom]]\nname = \"ct\"\nlisten = \"{dicom}\"\nae_title = \"YILIAN_GW\"\n\
                 \n[[hl7]]\nname = \"clinic-his-orders\"\nlisten = \"{lab}\"\n\
                 \n[[report_sink]]\nname = \"reports-folder\"\ntype = \"folder\"\ndir = \"{}\"\n\
                 \n[[report_sink]]\nname = \"his\"\ntype = \"hl7\"\naddress = \"{}\"\nack_timeout = \"5s\"\n",
                folder.display(),
                his.addr
            ),
            ..HubSpec::default()
        },
    )
    .await
    .expect("hub");

    // Up: a CT study (accession ACC0001) and a lab order (placer PL7001).
    let study = CtStudy::new(7, 2);
    let files = study.write(&dir.path().join("ct")).expect("write study");
    let out = storescu(dicom, "YILIAN_GW", "CT_ROOM", &files).expect("storescu");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let order = "MSH|^~\\&|HIS|XIACUN|LIS|COUNTY|20261203090000||ORM^O01|CLIN0001|P|2.5\r\
                 PID|1||P7001^^^H||Li^Si||19800101|F\r\
                 ORC|NW|PL7001\r\
                 OBR|1|PL7001||CBC^血常规\r";
    let ack = mllp_send(dir.path(), lab, order);
    assert!(
        ack.contains("MSA|AA|CLIN0001") || ack.contains("MSA|CA|CLIN0001"),
        "{ack}"
    );
    hub.wait_items(3, Duration::from_secs(30))
        .await
        .expect("items at central");

    // Down: the radiologist's report, by accession, with a PDF.
    let pdf = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n";
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(pdf)
    };
    let ct_report = oru(
        "RAD0001",
        "ACC0001",
        "",
        &study.patient_id,
        "F",
        &format!(
            "{}\rOBX|2|ED|PDF^报告||^application^pdf^Base64^{b64}||||||F",
            text_obx("两肺未见明显异常。")
        ),
    );
    let ack = mllp_send(dir.path(), reports_port, &ct_report);
    assert!(
        ack.contains("MSA|CA|RAD0001"),
        "the RIS gets CA after the durable commit: {ack}"
    );
    // The lab's result, by the clinic's placer order number, urgent
    // (a critical value).
    let lab_report = oru(
        "LAB0001",
        "",
        "PL7001",
        "P7001",
        "F",
        "OBX|1|TX|K^钾||6.9 mmol/L 危急值|||HH|||F",
    );
    assert!(mllp_send(dir.path(), reports_port, &lab_report).contains("MSA|CA|LAB0001"));
    // An ECG reading system's document by patient ID alone (one clinic
    // has sent this patient's data).
    let ecg_doc = format!(
        "MSH|^~\\&|ECGSYS|COUNTY_HOSP|YILIAN|HUB|20261203102000||MDM^T02|ECG0001|P|2.5\r\
         PID|1||{}\r\
         TXA|1|ECG^心电图报告|TX|20261203102000|||||||||DOC1||||AU\r\
         OBX|1|TX|ECG^心电图||窦性心律，正常心电图。||||||F\r",
        study.patient_id
    );
    // Original mode (no MSH-15/16): AA.
    let ack = mllp_send(dir.path(), reports_port, &ecg_doc);
    assert!(ack.contains("MSA|AA|ECG0001"), "{ack}");

    // A report missing its result status is refused, naming the field.
    let bad = oru(
        "BAD0001",
        "ACC0001",
        "",
        &study.patient_id,
        "",
        &text_obx("x"),
    );
    let ack = mllp_send(dir.path(), reports_port, &bad);
    assert!(
        ack.contains("MSA|CE|BAD0001") && ack.contains("OBR^1^25"),
        "{ack}"
    );

    // A report for a patient nobody sent stays parked.
    let stray = oru("STRAY001", "NOSUCH", "", "P9999", "F", &text_obx("无"));
    assert!(mllp_send(dir.path(), reports_port, &stray).contains("MSA|CA|STRAY001"));

    // Each delivered report reaches the folder and the HIS once.
    let store = hub.central.store.clone();
    wait_for(
        "three reports delivered to both sinks",
        Duration::from_secs(30),
        || {
            let rows = store.reports(false, 100).ok()?;
            let done = rows.iter().filter(|r| r.receipts.len() == 2).count();
            (done == 3).then_some(())
        },
    )
    .await;
    let rows = store.reports(false, 100).expect("reports");
    let by = |c: &str| rows.iter().find(|r| r.control_id == c).expect("report row");
    assert_eq!(by("RAD0001").matched_by.as_deref(), Some("accession"));
    assert_eq!(by("LAB0001").matched_by.as_deref(), Some("placer_order"));
    assert!(by("LAB0001").urgent);
    assert_eq!(by("ECG0001").matched_by.as_deref(), Some("patient_id"));
    assert!(by("STRAY001").gateway.is_none());
    assert!(
        store
            .reports(true, 10)
            .expect("unmatched")
            .iter()
            .any(|r| r.control_id == "STRAY001")
    );

    let pdfs = files_in(&folder, ".pdf");
    assert_eq!(pdfs.len(), 1, "{pdfs:?}");
    assert_eq!(std::fs::read(folder.join(&pdfs[0])).expect("pdf"), pdf);
    assert!(
        pdfs[0].contains("ACC0001") && pdfs[0].contains("_final_"),
        "{pdfs:?}"
    );
    let texts = files_in(&folder, ".txt");
    assert_eq!(texts.len(), 2, "{texts:?}");
    let lab_text = texts
        .iter()
        .map(|t| std::fs::read_to_string(folder.join(t)).expect("text"))
        .find(|t| t.contains("6.9 mmol/L"))
        .expect("the lab report's text");
    assert!(lab_text.contains("CRITICAL / STAT"), "{lab_text}");
    assert_eq!(files_in(&folder, ".json").len(), 3);
    let mut his_got = his.received();
    his_got.sort();
    his_got.dedup();
    assert_eq!(his_got, ["ECG0001", "LAB0001", "RAD0001"]);

    // A correction replaces the report visibly.
    let corrected = oru(
        "RAD0002",
        "ACC0001",
        "",
        &study.patient_id,
        "C",
        &text_obx("更正：右肺上叶小结节。"),
    );
    assert!(mllp_send(dir.path(), reports_port, &corrected).contains("MSA|CA|RAD0002"));
    let name = wait_for(
        "the corrected report in the folder",
        Duration::from_secs(30),
        || {
            // The sidecar is written after the document: wait for both.
            files_in(&folder, ".txt").into_iter().find(|n| {
                n.contains("_CORRECTED_") && folder.join(n.replace(".txt", ".json")).exists()
            })
        },
    )
    .await;
    let text = std::fs::read_to_string(folder.join(&name)).expect("text");
    assert!(
        text.contains("CORRECTED REPORT") && text.contains("右肺上叶"),
        "{text}"
    );
    let sidecar: serde_json::Value = serde_json::from_slice(
        &std::fs::read(folder.join(name.replace(".txt", ".json"))).expect("sidecar"),
    )
    .expect("json");
    assert_eq!(sidecar["replaces"], by("RAD0001").id.as_str(), "{sidecar}");

    // The stray report, assigned by hand, goes to the box.
    let stray_id = by("STRAY001").id.clone();
    assert!(
        store
            .report_assign(&stray_id, "bench/clinic/box-1", "test")
            .expect("assign")
    );
    wait_for(
        "the assigned report at the HIS",
        Duration::from_secs(30),
        || his.received().iter().any(|c| c == "STRAY001").then_some(()),
    )
    .await;

    // A refusal by the HIS comes back as a failed receipt.
    let refused = oru(
        "REFUSED1",
        "ACC0001",
        "",
        &study.patient_id,
        "F",
        &text_obx("x"),
    );
    assert!(mllp_send(dir.path(), reports_port, &refused).contains("MSA|CA|REFUSED1"));
    wait_for(
        "the HIS's refusal recorded at central",
        Duration::from_secs(30),
        || {
            let rows = store.reports(false, 100).ok()?;
            let r = rows.iter().find(|r| r.control_id == "REFUSED1")?;
            r.receipts.iter().any(|s| s == "his: failed").then_some(())
        },
    )
    .await;

    // The box's page lists them, in Chinese, patient IDs masked, the
    // correction and the HIS's refusal in words.
    let page = hub.gateway.page_addr.expect("page");
    let html = tokio::task::spawn_blocking(move || yilian_rig::scrape::http_get(page, "/"))
        .await
        .expect("join")
        .expect("page");
    assert!(html.contains("上级医院回传的报告"), "{html}");
    assert!(
        html.contains("更正报告") && html.contains("危急值/急诊"),
        "{html}"
    );
    assert!(
        html.contains("被拒收") && html.contains("HIS 拒收了这份报告（AE"),
        "{html}"
    );
    assert!(
        !html.contains(&study.patient_id),
        "patient IDs are masked: {html}"
    );

    // Turnaround is measured once per report at its first delivery.
    let addr = hub.central.metrics_addr;
    let text = tokio::task::spawn_blocking(move || yilian_rig::scrape::http_get(addr, "/metrics"))
        .await
        .expect("join")
        .expect("metrics");
    let count = |kind: &str, priority: &str| {
        yilian_rig::scrape::sum(
            &text,
            "yilian_central_report_downlink_seconds_count",
            &[
                &format!("kind=\"{kind}\""),
                &format!("priority=\"{priority}\""),
            ],
        )
    };
    assert_eq!(count("lab", "urgent"), 1.0, "{text}");
    assert!(count("imaging", "routine") >= 1.0, "{text}");
    assert!(
        yilian_rig::scrape::sum(&text, "yilian_central_report_turnaround_seconds_count", &[])
            >= 3.0,
        "{text}"
    );
    hub.shutdown().await;
}

/// Sends `message` over MLLP until the receiver accepts it (AA or CA), as
/// a hospital system does while central restarts.
fn send_until_accepted(addr: SocketAddr, message: &str, control: &str) {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let attempt = || -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(&yilian_codecs::mllp::encode(message.as_bytes()))?;
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        };
        if let Ok(ack) = attempt()
            && (ack.contains(&format!("MSA|AA|{control}"))
                || ack.contains(&format!("MSA|CA|{control}")))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "central never accepted {control}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Reports flow down while the box is SIGKILLed five times, central twice
/// and the link is cut twice: afterwards every report is at the HIS (by
/// its MSH-10) and in the folder (one document under one name, byte-exact)
/// exactly once, and central holds both receipts of each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reports_survive_kills_and_link_cuts() {
    use rand::{Rng, SeedableRng};
    use yilian_rig::configs::{CentralSetup, GatewaySetup, free_udp_port};
    use yilian_rig::fleet::Fleet;
    use yilian_rig::procs::Proc;
    use yilian_rig::relay::Relay;

    const REPORTS: usize = 40;
    let tmp = tempfile::Builder::new()
        .prefix("yilian-reports-crash-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir");
    let dir = tmp.path();
    let his = His::start(dir, &[]);
    let fleet = Fleet::create(dir).expect("fleet");
    let central_data = dir.join("central-data");
    let reports_port = free_tcp_port().expect("port");
    let central = CentralSetup {
        listen: free_udp_port().expect("port"),
        metrics: free_tcp_port().expect("port"),
        data_dir: central_data.clone(),
        tls: fleet.central("localhost").expect("central tls"),
    };
    let relay = Relay::start(central.listen).await.expect("relay");
    let folder = dir.join("clinic-reports");
    let gateway = GatewaySetup {
        central: relay.addr.to_string(),
        server_name: "localhost".into(),
        spool_dir: dir.join("spool"),
        metrics: free_tcp_port().expect("port"),
        tls: fleet.gateway("test/clinic/box-1").expect("gateway tls"),
        folders: Vec::new(),
        idle_timeout_ms: Some(3000),
        reconnect_max_ms: 1000,
        quota_bytes: None,
        extra: format!(
            "\n[[report_sink]]\nname = \"reports-folder\"\ntype = \"folder\"\ndir = \"{}\"\n\
             \n[[report_sink]]\nname = \"his\"\ntype = \"hl7\"\naddress = \"{}\"\nack_timeout = \"3s\"\n",
            folder.display(),
            his.addr
        ),
    };
    let (central_toml, gateway_toml) = (dir.join("central.toml"), dir.join("gateway.toml"));
    std::fs::write(
        &central_toml,
        format!(
            "{}\n[reports]\nhl7_listen = \"{reports_port}\"\n",
            central.toml()
        ),
    )
    .expect("write");
    std::fs::write(&gateway_toml, gateway.toml()).expect("write");
    let log = dir.join("processes.log");
    let central_args = ["serve", "--config", central_toml.to_str().unwrap_or("")];
    let gateway_args = ["run", "--config", gateway_toml.to_str().unwrap_or("")];
    let mut central = Proc::spawn("yilian-central", &central_args, &log).expect("central");
    let mut box_ = Proc::spawn("yilian-gateway", &gateway_args, &log).expect("gateway");
    // Central learns of the box at its first connection; reports are
    // addressed to its clinic (MSH-6).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let known = yilian_central::store::Store::open_read_only(&central_data)
            .and_then(|s| s.gateways())
            .is_ok_and(|g| !g.is_empty());
        if known {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the box never reached central:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The hospital sends; a quarter of the reports carry a 3 MB PDF, so
    // kills land in the middle of their streams.
    let mut pdfs = std::collections::HashMap::new();
    let mut messages = Vec::new();
    for i in 0..REPORTS {
        let control = format!("KR{i:04}");
        let accession = format!("KA{i:04}");
        let obx = if i % 4 == 0 {
            let mut pdf = b"%PDF-1.4\n".to_vec();
            let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
            pdf.extend((0..3_000_000).map(|_| rng.random_range(b'a'..=b'z')));
            let b64 = {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.encode(&pdf)
            };
            pdfs.insert(accession.clone(), pdf);
            format!("OBX|1|ED|PDF^报告||^application^pdf^Base64^{b64}||||||F")
        } else {
            text_obx(&format!("报告 {i}"))
        };
        let message = oru(&control, &accession, "", &format!("KP{i:04}"), "F", &obx)
            .replace("|YILIAN|HUB|", "|YILIAN|test/clinic|");
        messages.push((control, message));
    }
    let sender = std::thread::spawn(move || {
        for (control, message) in messages {
            send_until_accepted(reports_port, &message, &control);
        }
    });

    let mut rng = rand::rngs::StdRng::seed_from_u64(0x4e90);
    for round in 0..5 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(800..2500))).await;
        box_.kill9();
        eprintln!("killed the box ({})", round + 1);
        if round == 1 || round == 3 {
            central.kill9();
            eprintln!("killed central");
            tokio::time::sleep(Duration::from_millis(rng.random_range(100..800))).await;
            central = Proc::spawn("yilian-central", &central_args, &log).expect("central");
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..600))).await;
        box_ = Proc::spawn("yilian-gateway", &gateway_args, &log).expect("gateway");
        if round == 2 || round == 4 {
            tokio::time::sleep(Duration::from_millis(rng.random_range(500..1500))).await;
            relay.cut();
            eprintln!("cut the link");
            tokio::time::sleep(Duration::from_secs(2)).await;
            relay.restore();
        }
    }
    tokio::task::spawn_blocking(move || sender.join())
        .await
        .expect("join")
        .expect("the hospital's sender");

    let data = central_data.clone();
    wait_for(
        "every report's two receipts at central",
        Duration::from_secs(240),
        || {
            let store = yilian_central::store::Store::open_read_only(&data).ok()?;
            let rows = store.reports(false, 1000).ok()?;
            let done = rows.iter().filter(|r| r.receipts.len() == 2).count();
            (rows.len() == REPORTS && done == REPORTS).then_some(())
        },
    )
    .await;
    box_.kill9();
    central.kill9();

    let store = yilian_central::store::Store::open_read_only(&central_data).expect("store");
    for r in store.reports(false, 1000).expect("reports") {
        assert_eq!(r.matched_by.as_deref(), Some("facility"), "{r:?}");
        let mut sinks = r.receipts.clone();
        sinks.sort();
        assert_eq!(
            sinks,
            ["his: delivered", "reports-folder: delivered"],
            "{r:?}"
        );
    }
    let mut at_his = his.received();
    let resent = at_his.len() - {
        at_his.sort();
        at_his.dedup();
        at_his.len()
    };
    assert_eq!(at_his.len(), REPORTS, "every MSH-10 at the HIS");
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!(
        "the HIS saw {resent} resends (same MSH-10) of {REPORTS} reports; the box resumed {} reports mid-stream and was offered {} it held already",
        logged.matches("resuming a report").count(),
        logged.matches("report held already").count()
    );
    let docs: Vec<String> = files_in(&folder, "")
        .into_iter()
        .filter(|n| n.ends_with(".pdf") || n.ends_with(".txt"))
        .collect();
    assert_eq!(docs.len(), REPORTS, "one document per report: {docs:?}");
    assert_eq!(files_in(&folder, ".json").len(), REPORTS);
    for (accession, pdf) in &pdfs {
        let name = docs
            .iter()
            .find(|d| d.contains(accession.as_str()))
            .expect("the report's document");
        assert_eq!(
            &std::fs::read(folder.join(name)).expect("read"),
            pdf,
            "{name}"
        );
    }
    // Nothing half-written is left behind.
    assert!(
        files_in(&folder, "").iter().all(|n| !n.starts_with('.')),
        "{:?}",
        files_in(&folder, "")
    );
}

/// Paper: reports printed through a real CUPS scheduler on the
/// `printer-driver-cups-pdf` virtual printer; the printed pages, rendered
/// by `pdftoppm`, carry ink, and central records the printer's receipts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reports_are_printed_through_cups() {
    use yilian_rig::printer::{Cups, ink, simple_pdf};
    let dir = tempfile::tempdir().expect("tempdir");
    let cups = Cups::start(dir.path()).expect("cups");
    let reports_port = free_tcp_port().expect("port");
    let hub = Hub::start_with(
        dir.path(),
        HubSpec {
            central_extra: format!("[reports]\nhl7_listen = \"{reports_port}\"\n"),
            gateway_extra: format!(
                "\n[[report_sink]]\nname = \"paper\"\ntype = \"printer\"\nprinter = \"{}\"\nserver = \"{}\"\n",
                cups.queue,
                cups.socket.display()
            ),
            ..HubSpec::default()
        },
    )
    .await
    .expect("hub");
    let store = hub.central.store.clone();
    box_known(&store).await;

    // Control ids of this run only: the virtual printer's output folder
    // outlives the test, and report ids derive from them.
    let run = rand_suffix() % 1_000_000_000;
    let (first, second) = (format!("PRN{run}A"), format!("PRN{run}B"));
    let pdf = simple_pdf(&[
        "County hospital - CT report",
        "Patient P5001",
        "No abnormality.",
    ]);
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&pdf)
    };
    let with_pdf = oru(
        &first,
        "KA5001",
        "",
        "P5001",
        "F",
        &format!("OBX|1|ED|PDF^Report||^application^pdf^Base64^{b64}||||||F"),
    )
    .replace("|YILIAN|HUB|", "|YILIAN|bench/clinic|");
    assert!(mllp_send(dir.path(), reports_port, &with_pdf).contains(&format!("MSA|CA|{first}")));
    let text_only = oru(
        &second,
        "KA5002",
        "",
        "P5002",
        "C",
        &text_obx("Corrected: small nodule, right upper lobe."),
    )
    .replace("|YILIAN|HUB|", "|YILIAN|bench/clinic|");
    assert!(mllp_send(dir.path(), reports_port, &text_only).contains(&format!("MSA|CA|{second}")));

    wait_for(
        "both printed, receipts at central",
        Duration::from_secs(60),
        || {
            let rows = store.reports(false, 10).ok()?;
            (rows.len() == 2 && rows.iter().all(|r| r.receipts == ["paper: delivered"]))
                .then_some(())
        },
    )
    .await;
    for r in store.reports(false, 10).expect("reports") {
        let printed = cups
            .printed(&r.id, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("no page printed for {}", r.id));
        let ink = ink(&printed).expect("render");
        assert!(
            ink > 0.001,
            "the page printed for {} is blank ({ink})",
            r.id
        );
        eprintln!(
            "{} printed as {} ({:.2} % ink)",
            r.control_id,
            printed.display(),
            ink * 100.0
        );
        let _ = std::fs::remove_file(printed);
    }
    hub.shutdown().await;
}

/// An ECG reading system that exports files: an ECG from the clinic's cart
/// folder lands in central's ECG import directory; the reading system's
/// PDF report, saved under the same name into central's report import
/// folder, finds that ECG's clinic by the upload id in the name and
/// reaches the clinic's folder, while a file that is no report is set
/// aside with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exported_ecg_report_finds_its_clinic_by_file_name() {
    use yilian_rig::printer::simple_pdf;
    let dir = tempfile::tempdir().expect("tempdir");
    let cart = dir.path().join("ecg-cart");
    std::fs::create_dir_all(&cart).expect("mkdir");
    let (ecg_dir, import) = (
        dir.path().join("ecg-import"),
        dir.path().join("report-import"),
    );
    let folder = dir.path().join("clinic-reports");
    let hub = Hub::start_with(
        dir.path(),
        HubSpec {
            central_extra: format!(
                "[ecg]\ndirectory = \"{}\"\n[reports]\nimport_dir = \"{}\"\n",
                ecg_dir.display(),
                import.display()
            ),
            gateway_extra: format!(
                "\n[[folder]]\nname = \"ecg-cart\"\npath = \"{}\"\nprofile = \"ecg\"\nsettle = \"200ms\"\npoll_interval = \"200ms\"\n\
                 \n[[report_sink]]\nname = \"reports-folder\"\ntype = \"folder\"\ndir = \"{}\"\n",
                cart.display(),
                folder.display()
            ),
            ..HubSpec::default()
        },
    )
    .await
    .expect("hub");
    std::fs::write(
        cart.join("ECG0001.PDF"),
        simple_pdf(&["12-lead ECG", "Patient P8001"]),
    )
    .expect("write");
    let exported = wait_for(
        "the ECG in the reading system's import directory",
        Duration::from_secs(30),
        || files_in(&ecg_dir, ".pdf").into_iter().next(),
    )
    .await;
    let stem = exported.trim_end_matches(".pdf").to_owned();

    // The reading system's report, under the ECG's name.
    let report = simple_pdf(&["ECG report", "Sinus rhythm. Normal ECG."]);
    std::fs::write(import.join(format!("{stem}.pdf")), &report).expect("write");
    std::fs::write(import.join("notes.txt"), b"not a report").expect("write");

    let delivered = wait_for(
        "the report in the clinic's folder",
        Duration::from_secs(30),
        || files_in(&folder, ".pdf").into_iter().next(),
    )
    .await;
    assert_eq!(
        std::fs::read(folder.join(&delivered)).expect("read"),
        report
    );
    let rows = hub.central.store.reports(false, 10).expect("reports");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].matched_by.as_deref(), Some("upload_id"), "{rows:?}");
    assert_eq!(rows[0].kind, "ecg", "{rows:?}");
    wait_for(
        "the imported file moved aside",
        Duration::from_secs(10),
        || {
            (files_in(&import.join("imported"), ".pdf").len() == 1
                && import.join("rejected/notes.txt.why").exists())
            .then_some(())
        },
    )
    .await;
    hub.shutdown().await;
}

/// The LIS's answer back to the clinic's sender: a clinic LIS sends two
/// results asking for application ACKs (MSH-15/16 AL/AL) and gets CA from
/// the box at once; the hospital LIS (python `hl7`'s MLLP server) takes
/// one and refuses the other with AE; each answer comes back down and
/// reaches the sender's own MLLP listener (`app_ack_address`) as AA and
/// AE with the LIS's reason, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hospital_lis_answer_reaches_the_clinic_sender() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lis = His::start(&dir.path().join("lis"), &["CLINBAD1"]);
    let sender_acks = His::start(&dir.path().join("sender"), &[]);
    let lab = free_tcp_port().expect("port");
    let hub = Hub::start_with(
        dir.path(),
        HubSpec {
            central_extra: format!(
                "[lis]\naddress = \"{}\"\nack_timeout = \"5s\"\nretry_base = \"1s\"\n",
                lis.addr
            ),
            gateway_extra: format!(
                "\n[[hl7]]\nname = \"clinic-lis\"\nlisten = \"{lab}\"\n\n[[hl7.peer]]\naddress = \"127.0.0.1\"\napp_ack_address = \"{}\"\n",
                sender_acks.addr
            ),
            ..HubSpec::default()
        },
    )
    .await
    .expect("hub");
    let result = clinic_result;
    for control in ["CLINOK1", "CLINBAD1"] {
        let ack = mllp_send(dir.path(), lab, &result(control));
        assert!(
            ack.contains(&format!("MSA|CA|{control}")),
            "commit accept at once: {ack}"
        );
    }
    let texts = || -> Vec<String> {
        std::fs::read_to_string(&sender_acks.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| v["text"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    let got = wait_for(
        "both answers at the sender",
        Duration::from_secs(60),
        || {
            let t = texts();
            (t.len() >= 2).then_some(t)
        },
    )
    .await;
    let find = |id: &str| {
        got.iter()
            .find(|t| t.contains(&format!("|{id}")))
            .unwrap_or_else(|| panic!("no answer for {id}: {got:?}"))
            .clone()
    };
    assert!(find("CLINOK1").contains("MSA|AA|CLINOK1"), "{got:?}");
    let refused = find("CLINBAD1");
    assert!(
        refused.contains("MSA|AE|CLINBAD1") && refused.contains("ERR"),
        "{refused}"
    );
    // Once each.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(texts().len(), 2, "{:?}", texts());
    hub.shutdown().await;
}

/// The clinic's DICOM viewer (dcmtk `storescp`) as a report sink: a PDF
/// report arrives as Encapsulated PDF whose document `dcm2pdf` gets back
/// byte for byte, a text report as a Basic Text SR whose text `dsrdump`
/// shows; each under the SOP Instance UID derived from the report's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reports_reach_the_clinic_viewer_as_dicom() {
    use yilian_gateway::reports::sinks::dicom::instance_uid;
    use yilian_rig::modality::dcmtk;
    use yilian_rig::printer::simple_pdf;
    let dir = tempfile::tempdir().expect("tempdir");
    let viewer_port = free_tcp_port().expect("port");
    let received = dir.path().join("viewer");
    std::fs::create_dir_all(&received).expect("mkdir");
    let mut storescp = dcmtk("storescp")
        .args(["-aet", "VIEWER", "-od"])
        .arg(&received)
        .arg(viewer_port.port().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("storescp (dcmtk)");
    let reports_port = free_tcp_port().expect("port");
    let hub = Hub::start_with(
        dir.path(),
        HubSpec {
            central_extra: format!("[reports]\nhl7_listen = \"{reports_port}\"\n"),
            gateway_extra: format!(
                "\n[[report_sink]]\nname = \"viewer\"\ntype = \"dicom\"\naddress = \"{viewer_port}\"\nae_title = \"VIEWER\"\n"
            ),
            ..HubSpec::default()
        },
    )
    .await
    .expect("hub");
    let store = hub.central.store.clone();
    box_known(&store).await;
    // Large and of odd length: many PDUs at storescp's 16 KiB, and the
    // pad byte DICOM adds.
    let mut pdf = simple_pdf(&["CT chest report", "No abnormality."]);
    pdf.extend(b"%");
    pdf.extend(std::iter::repeat_n(b'x', 200_000));
    pdf.extend(b"\n");
    assert_eq!(pdf.len() % 2, 1);
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&pdf)
    };
    let with_pdf = oru(
        "DCM0001",
        "KA6001",
        "",
        "P6001",
        "F",
        &format!("OBX|1|ED|PDF^Report||^application^pdf^Base64^{b64}||||||F"),
    )
    .replace("|YILIAN|HUB|", "|YILIAN|bench/clinic|");
    assert!(mllp_send(dir.path(), reports_port, &with_pdf).contains("MSA|CA|DCM0001"));
    let text = oru(
        "DCM0002",
        "KA6002",
        "",
        "P6002",
        "F",
        &text_obx("两肺纹理清晰，未见明显异常。"),
    )
    .replace("|YILIAN|HUB|", "|YILIAN|bench/clinic|");
    assert!(mllp_send(dir.path(), reports_port, &text).contains("MSA|CA|DCM0002"));
    wait_for("both stored at the viewer", Duration::from_secs(60), || {
        let rows = store.reports(false, 10).ok()?;
        (rows.len() == 2 && rows.iter().all(|r| r.receipts == ["viewer: delivered"])).then_some(())
    })
    .await;
    let rows = store.reports(false, 10).expect("reports");
    let by = |c: &str| {
        rows.iter()
            .find(|r| r.control_id == c)
            .expect("row")
            .id
            .clone()
    };
    let file_of = |report: &str| {
        let uid = instance_uid(report);
        files_in(&received, "")
            .into_iter()
            .find(|n| n.ends_with(&uid))
            .map(|n| received.join(n))
            .unwrap_or_else(|| {
                panic!(
                    "no instance {uid} at the viewer: {:?}",
                    files_in(&received, "")
                )
            })
    };
    let doc = file_of(&by("DCM0001"));
    let out = dir.path().join("back.pdf");
    let said = dcmtk("dcm2pdf")
        .arg(&doc)
        .arg(&out)
        .output()
        .expect("dcm2pdf");
    assert!(
        said.status.success(),
        "{}",
        String::from_utf8_lossy(&said.stderr)
    );
    let back = std::fs::read(&out).expect("pdf");
    // DICOM pads the document to an even length.
    assert_eq!(&back[..pdf.len()], &pdf[..]);
    let sr = file_of(&by("DCM0002"));
    let dump = dcmtk("dsrdump").arg(&sr).output().expect("dsrdump");
    let dump = String::from_utf8_lossy(&dump.stdout).to_string();
    assert!(
        dump.contains("两肺纹理清晰") && dump.contains("P6002"),
        "{dump}"
    );
    let _ = storescp.kill();
    let _ = storescp.wait();
    hub.shutdown().await;
}

/// A Basic Text SR as a hospital's reading system writes it, in the XML
/// dcmtk's `xml2dsr` reads.
fn sr_xml(study: &CtStudy, instance: &str, flag: &str, finding: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<report type="Basic Text SR">
<sopclass uid="1.2.840.10008.5.1.4.1.1.88.11">BasicTextSRStorage</sopclass>
<charset>ISO_IR 192</charset>
<modality>SR</modality>
<patient><id>{pid}</id><name><first>San</first><last>Zhang</last></name></patient>
<study uid="{study_uid}"><accession><number>ACC0001</number></accession></study>
<series uid="{instance}.9"><number>99</number></series>
<instance uid="{instance}"><number>1</number></instance>
<document>
<completion flag="{flag}"/>
<verification flag="UNVERIFIED"/>
<content>
<date>2026-12-03</date><time>10:14:00</time>
<container flag="SEPARATE">
<concept><value>18748-4</value><scheme><designator>LN</designator></scheme><meaning>Diagnostic Imaging Report</meaning></concept>
<container flag="SEPARATE">
<relationship>CONTAINS</relationship>
<concept><value>121070</value><scheme><designator>DCM</designator></scheme><meaning>Findings</meaning></concept>
<text>
<relationship>CONTAINS</relationship>
<concept><value>121071</value><scheme><designator>DCM</designator></scheme><meaning>Finding</meaning></concept>
<value>{finding}</value>
</text>
</container>
</container>
</content>
</document>
</report>
"#,
        pid = study.patient_id,
        study_uid = study.study_uid,
    )
}

/// The hospital PACS sends reports as DICOM: a Structured Report made by
/// dcmtk `xml2dsr` and an Encapsulated PDF made by `pdf2dcm` from one of
/// the study's own images, both stored by `storescu` at central. Each is
/// answered Success only once stored, finds the clinic by the study's
/// accession, and reaches the clinic's folder (the SR as text, the PDF
/// byte for byte); the same SR stored again is one report; an SR without
/// a patient ID is refused (0xC000) with the reason, and a PACS whose AE
/// title is not listed is refused at the association.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reports_from_the_hospital_pacs_arrive_as_dicom() {
    use yilian_rig::modality::dcmtk;
    use yilian_rig::printer::simple_pdf;
    let dir = tempfile::tempdir().expect("tempdir");
    let dicom = free_tcp_port().expect("port");
    let pacs_in = free_tcp_port().expect("port");
    let folder = dir.path().join("clinic-reports");
    let import = dir.path().join("report-import");
    let hub = Hub::start_with(
        dir.path(),
        HubSpec {
            central_extra: format!(
                "[reports]\ndicom_listen = \"{pacs_in}\"\ndicom_allowed = [\"HOSP_PACS\"]\nimport_dir = \"{}\"\n",
                import.display()
            ),
            gateway_extra: format!(
                "\n[[dicom]]\nname = \"ct\"\nlisten = \"{dicom}\"\nae_title = \"YILIAN_GW\"\n\
                 \n[[report_sink]]\nname = \"reports-folder\"\ntype = \"folder\"\ndir = \"{}\"\n",
                folder.display(),
            ),
            ..HubSpec::default()
        },
    )
    .await
    .expect("hub");
    // Acquired an hour ago, China Standard Time: the turnaround starts
    // there, not when the box received the images.
    let mut study = CtStudy::new(31, 2);
    let hour_ago = time::OffsetDateTime::now_utc()
        .to_offset(time::UtcOffset::from_hms(8, 0, 0).expect("offset"))
        - time::Duration::hours(1);
    study.acquired = Some((
        format!(
            "{:04}{:02}{:02}",
            hour_ago.year(),
            hour_ago.month() as u8,
            hour_ago.day()
        ),
        format!(
            "{:02}{:02}{:02}",
            hour_ago.hour(),
            hour_ago.minute(),
            hour_ago.second()
        ),
    ));
    let files = study.write(&dir.path().join("ct")).expect("write study");
    let out = storescu(dicom, "YILIAN_GW", "CT_ROOM", &files).expect("storescu");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    hub.wait_items(2, Duration::from_secs(30))
        .await
        .expect("the study at central");

    let made = dir.path().join("pacs");
    std::fs::create_dir_all(&made).expect("mkdir");
    let run = |c: &mut Command| {
        let out = c.output().expect("dcmtk");
        assert!(
            out.status.success(),
            "{c:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let xml = made.join("sr.xml");
    std::fs::write(
        &xml,
        sr_xml(
            &study,
            "1.2.826.0.1.3680043.10.1431.9.31.77.1",
            "COMPLETE",
            "两肺纹理清晰，未见明显异常。",
        ),
    )
    .expect("write");
    let sr = made.join("sr.dcm");
    run(dcmtk("xml2dsr").arg(&xml).arg(&sr));
    let pdf = simple_pdf(&["CT chest report", "No abnormality."]);
    std::fs::write(made.join("report.pdf"), &pdf).expect("write");
    let encapsulated = made.join("pdf.dcm");
    run(dcmtk("pdf2dcm")
        .args(["+t", "CT 胸部报告", "+st"])
        .arg(&files[0])
        .arg(made.join("report.pdf"))
        .arg(&encapsulated));
    // Not listed: refused at the association.
    let out = storescu(
        pacs_in,
        "YILIAN_HUB",
        "OTHER_PACS",
        std::slice::from_ref(&sr),
    )
    .expect("storescu");
    assert!(!out.status.success(), "an AE title not listed is refused");

    let out = storescu(
        pacs_in,
        "YILIAN_HUB",
        "HOSP_PACS",
        &[sr.clone(), encapsulated.clone(), sr.clone()],
    )
    .expect("storescu");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    assert_eq!(
        log.matches("Received Store Response (Success)").count(),
        3,
        "{log}"
    );

    // An SR without a patient ID cannot be placed: refused, saying why.
    let anonymous = sr_xml(
        &study,
        "1.2.826.0.1.3680043.10.1431.9.31.77.2",
        "COMPLETE",
        "x",
    )
    .replace(&format!("<id>{}</id>", study.patient_id), "");
    std::fs::write(&xml, anonymous).expect("write");
    let bad = made.join("bad.dcm");
    run(dcmtk("xml2dsr").arg(&xml).arg(&bad));
    let out = storescu(pacs_in, "YILIAN_HUB", "HOSP_PACS", &[bad]).expect("storescu");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(log.contains("Error: CannotUnderstand"), "{log}");

    // The same SR exported as a file into the import folder: recognised
    // by content, and still the one report.
    std::fs::create_dir_all(&import).expect("mkdir");
    std::fs::copy(&sr, import.join("export-0001.dcm")).expect("copy");
    wait_for("the DICOM file imported", Duration::from_secs(15), || {
        (files_in(&import.join("imported"), ".dcm").len() == 1).then_some(())
    })
    .await;

    let delivered = wait_for(
        "the SR's text and the PDF in the clinic's folder",
        Duration::from_secs(30),
        || {
            let pdfs = files_in(&folder, ".pdf");
            let texts = files_in(&folder, ".txt");
            (pdfs.len() == 1 && texts.len() == 1).then_some((pdfs, texts))
        },
    )
    .await;
    assert_eq!(
        std::fs::read(folder.join(&delivered.0[0])).expect("read"),
        pdf,
        "the PDF reaches the clinic byte for byte"
    );
    let text = std::fs::read_to_string(folder.join(&delivered.1[0])).expect("read");
    assert!(text.contains("两肺纹理清晰，未见明显异常。"), "{text}");
    let rows = hub.central.store.reports(false, 10).expect("reports");
    assert_eq!(rows.len(), 2, "the SR stored twice is one report: {rows:?}");
    // The SR carries the accession; pdf2dcm copies the study but not its
    // accession, so the PDF finds the clinic by the Study Instance UID.
    let sr_row = rows.iter().find(|r| r.title == "Diagnostic Imaging Report");
    let sr_row = sr_row.unwrap_or_else(|| panic!("the SR: {rows:?}"));
    assert_eq!(
        (
            sr_row.accession.as_str(),
            sr_row.matched_by.as_deref(),
            sr_row.status.as_str()
        ),
        ("ACC0001", Some("accession"), "P"),
        "an unverified SR is preliminary: {sr_row:?}"
    );
    let pdf_row = rows.iter().find(|r| r.title == "CT 胸部报告");
    let pdf_row =
        pdf_row.unwrap_or_else(|| panic!("the PDF, its Chinese title read as such: {rows:?}"));
    assert_eq!(pdf_row.matched_by.as_deref(), Some("study_uid"));
    assert_eq!(pdf_row.study_uid, study.study_uid);
    for r in &rows {
        assert_eq!(r.gateway.as_deref(), Some("bench/clinic/box-1"), "{r:?}");
        let from_acquisition = r.received_ms - r.acquired_ms.expect("acquired");
        assert!(
            (3_540_000..3_660_000).contains(&from_acquisition),
            "the turnaround starts at the CT's acquisition an hour ago: {from_acquisition} ms; {r:?}"
        );
    }
    hub.shutdown().await;
}

fn epoch_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A critical value (危急值) overtakes routine reports already queued for
/// the clinic: the downlink is shaped to 100 kB/s, six routine reports
/// with 150 kB PDFs (about 12 s of link) are committed first, then a
/// potassium of 6.9 flagged HH. It must reach the clinic's HIS within a
/// few seconds of its commit, ahead of the routine reports still queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_critical_value_overtakes_routine_reports() {
    use yilian_rig::relay::Shaping;
    let dir = tempfile::tempdir().expect("tempdir");
    let his = His::start(dir.path(), &[]);
    let reports_port = free_tcp_port().expect("port");
    let hub = Hub::start_with(
        dir.path(),
        HubSpec {
            central_extra: format!("[reports]\nhl7_listen = \"{reports_port}\"\n"),
            gateway_extra: format!(
                "\n[[report_sink]]\nname = \"his\"\ntype = \"hl7\"\naddress = \"{}\"\nack_timeout = \"5s\"\n",
                his.addr
            ),
            relay: Some(Some(Shaping {
                bytes_per_sec: 2_000_000,
                queue: Duration::from_millis(300),
                down_bytes_per_sec: Some(100_000),
            })),
            ..HubSpec::default()
        },
    )
    .await
    .expect("hub");
    let store = hub.central.store.clone();
    box_known(&store).await;
    let to_clinic = |m: String| m.replace("|YILIAN|HUB|", "|YILIAN|bench/clinic|");
    let mut committed = std::collections::HashMap::new();
    for i in 0..6u32 {
        let pdf: Vec<u8> = b"%PDF-1.4\n"
            .iter()
            .copied()
            .chain(
                (0..150_000u32).map(|b| (b.wrapping_mul(131).wrapping_add(i * 7919) % 251) as u8),
            )
            .collect();
        let b64 = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(&pdf)
        };
        let control = format!("ROUTINE{i}");
        let m = to_clinic(oru(
            &control,
            &format!("KR{i}"),
            "",
            &format!("P70{i}"),
            "F",
            &format!("OBX|1|ED|PDF^Report||^application^pdf^Base64^{b64}||||||F"),
        ));
        assert!(mllp_send(dir.path(), reports_port, &m).contains(&format!("MSA|CA|{control}")));
        committed.insert(control, epoch_s());
    }
    let critical = to_clinic(oru(
        "CRIT0001",
        "KC1",
        "",
        "P7100",
        "F",
        "OBX|1|TX|K^钾||6.9 mmol/L 危急值|||HH|||F",
    ));
    assert!(mllp_send(dir.path(), reports_port, &critical).contains("MSA|CA|CRIT0001"));
    let critical_at = epoch_s();
    wait_for("every report at the HIS", Duration::from_secs(60), || {
        (his.arrivals().len() == 7).then_some(())
    })
    .await;
    let arrived = his.arrivals();
    let took = arrived["CRIT0001"] - critical_at;
    let routine_after: Vec<&String> = committed
        .keys()
        .filter(|c| arrived[*c] > arrived["CRIT0001"])
        .collect();
    let last_routine = committed
        .keys()
        .map(|c| arrived[c])
        .fold(f64::MIN, f64::max);
    println!(
        "critical value at the HIS {:.0} ms after its commit; routine reports still to come: {}; last routine {:.1} s after the critical commit",
        took * 1000.0,
        routine_after.len(),
        last_routine - critical_at
    );
    assert!(
        took < 4.0,
        "the critical value took {took:.1} s behind routine reports"
    );
    assert!(
        routine_after.len() >= 2,
        "the critical value overtook routine reports queued before it: {arrived:?}"
    );
    hub.shutdown().await;
}

/// An older clinic HIS reads only GBK, checks that messages are addressed
/// to it, and stores text only: the sink rebuilds each report for it
/// (MSH-5/6, GB18030, no embedded PDF) and keeps MSH-10, so the HIS's ACK
/// still names the report. python `hl7`'s server decodes the bytes as
/// GB18030; a UTF-8 message would not even decode.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_his_that_reads_gbk_gets_the_report_rebuilt_for_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let his = His::start_reading(&dir.path().join("his"), &[], "gb18030");
    let reports_port = free_tcp_port().expect("port");
    let hub = Hub::start_with(
        dir.path(),
        HubSpec {
            central_extra: format!("[reports]\nhl7_listen = \"{reports_port}\"\n"),
            gateway_extra: format!(
                "\n[[report_sink]]\nname = \"his\"\ntype = \"hl7\"\naddress = \"{}\"\nack_timeout = \"5s\"\n\
                 receiving_application = \"HIS\"\nreceiving_facility = \"XIACUN\"\ncharset = \"gb18030\"\nembed_pdf = false\n",
                his.addr
            ),
            ..HubSpec::default()
        },
    )
    .await
    .expect("hub");
    let store = hub.central.store.clone();
    box_known(&store).await;
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(b"%PDF-1.4 report")
    };
    let m = oru(
        "GBK0001",
        "KG1",
        "",
        "P8801",
        "F",
        &format!(
            "OBX|1|ED|PDF^报告||^application^pdf^Base64^{b64}||||||F\r{}",
            text_obx("两肺纹理清晰，未见明显异常。").replacen("OBX|1|", "OBX|2|", 1)
        ),
    )
    .replace("|YILIAN|HUB|", "|YILIAN|bench/clinic|");
    assert!(mllp_send(dir.path(), reports_port, &m).contains("MSA|CA|GBK0001"));
    wait_for("the report at the HIS", Duration::from_secs(30), || {
        (his.received() == ["GBK0001"]).then_some(())
    })
    .await;
    let line = std::fs::read_to_string(&his.log).expect("log");
    let got: serde_json::Value =
        serde_json::from_str(line.lines().next().expect("line")).expect("json");
    let text = got["text"].as_str().expect("text").replace('\n', "\r");
    let fields = |seg: &str| -> Vec<String> {
        text.split('\r')
            .find(|s| s.starts_with(seg))
            .map(|s| s.split('|').map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let msh = fields("MSH");
    assert_eq!(
        (msh[4].as_str(), msh[5].as_str()),
        ("HIS", "XIACUN"),
        "{text}"
    );
    assert_eq!(msh[9], "GBK0001");
    assert_eq!(msh[17], "GB 18030-2000");
    assert!(text.contains("张^三"), "Chinese intact through GBK: {text}");
    assert!(text.contains("两肺纹理清晰，未见明显异常。"), "{text}");
    assert!(!text.contains("|ED|"), "no embedded PDF: {text}");
    assert_eq!(fields("OBX")[1], "1", "renumbered: {text}");
    wait_for("the receipt at central", Duration::from_secs(30), || {
        let rows = store.reports(false, 10).ok()?;
        (rows
            .first()?
            .receipts
            .iter()
            .any(|r| r.contains("delivered")))
        .then_some(())
    })
    .await;
    hub.shutdown().await;
}

/// The hospital LIS's answer on the connection the clinic's sender keeps
/// open (HL7 enhanced mode), with no `app_ack_address` configured: python
/// `hl7`'s asyncio client sends two results asking for application ACKs,
/// gets CA for each at once, stays connected, and receives AA for one and
/// AE with the LIS's reason for the other on that same connection; its own
/// CA to each is taken as an answer, never stored as a result.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lis_answer_comes_back_on_the_senders_open_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lis = His::start(&dir.path().join("lis"), &["CLINBAD2"]);
    let lab = free_tcp_port().expect("port");
    let hub = Hub::start_with(
        dir.path(),
        HubSpec {
            central_extra: format!(
                "[lis]\naddress = \"{}\"\nack_timeout = \"5s\"\nretry_base = \"1s\"\n",
                lis.addr
            ),
            gateway_extra: format!("\n[[hl7]]\nname = \"clinic-lis\"\nlisten = \"{lab}\"\n"),
            ..HubSpec::default()
        },
    )
    .await
    .expect("hub");
    let mut args: Vec<String> = Vec::new();
    for control in ["CLINOK2", "CLINBAD2"] {
        let path = dir.path().join(format!("{control}.hl7"));
        std::fs::write(&path, clinic_result(control)).expect("write");
        args.push("--message".into());
        args.push(path.display().to_string());
    }
    let log = dir.path().join("answers.jsonl");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/hl7_keepalive_sender.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .args([
            "--port",
            &lab.port().to_string(),
            "--expect",
            "2",
            "--timeout",
            "60",
            "--log",
        ])
        .arg(&log)
        .args(&args)
        .output()
        .await
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("MSA|CA|CLINOK2") && stdout.contains("MSA|CA|CLINBAD2"),
        "accepted at once: {stdout}"
    );
    let answers: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .expect("log")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let of = |id: &str| {
        answers
            .iter()
            .find(|a| a["answers"] == id)
            .unwrap_or_else(|| panic!("no answer for {id}: {answers:?}"))
    };
    assert_eq!(of("CLINOK2")["code"], "AA");
    assert_eq!(of("CLINBAD2")["code"], "AE");
    assert!(
        of("CLINBAD2")["text"]
            .as_str()
            .unwrap_or("")
            .contains("ERR")
    );
    // The sender's CA to each answer is not a result: two items, not four.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let items = hub.gateway.spool.stats().expect("stats");
    let held: u64 = items.lanes.iter().map(|l| l.items).sum::<u64>() + items.delivered_kept;
    assert_eq!(held, 2, "{items:?}");
    hub.shutdown().await;
}
