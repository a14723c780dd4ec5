//! `yilian-rig demo`: a central and a gateway on loopback with embedded
//! defaults and fresh certificates; sample files go through the drop folder
//! and the listing of what arrived at central is printed.

mod text;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use yilian_central::CentralConfig;
use yilian_gateway::GatewayConfig;

use crate::configs::{CentralSetup, FolderSetup, GatewaySetup};
use crate::fleet::Fleet;
use text::Say;

pub struct DemoOptions {
    /// Where to keep everything; a temporary directory when `None`.
    pub dir: Option<PathBuf>,
    /// Exit after the samples arrived instead of running until Ctrl-C.
    pub exit: bool,
}

/// Sample payloads written by this project (no patient data): an HL7 lab
/// result, a PDF ECG report, a DICOM Part-10 file and a bulk export.
fn samples() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let hl7 =
        "MSH|^~\\&|LAB|DEMO-CLINIC|LIS|COUNTY|20261123093000||ORU^R01^ORU_R01|MSG00001|P|2.5.1\r\
               PID|1||DEMO0001^^^DEMO||DEMO^PATIENT\r\
               OBR|1||ORD1|718-7^Hemoglobin^LN\r\
               OBX|1|NM|718-7^Hemoglobin^LN||135|g/L|130-175|N|||F\r"
            .as_bytes()
            .to_vec();
    let pdf = b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Count 0/Kids[]>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n".to_vec();
    let mut dicom = vec![0u8; 128];
    dicom.extend_from_slice(b"DICM");
    // (0002,0010) Transfer Syntax UID, explicit VR: Explicit VR Little Endian.
    let ts = b"1.2.840.10008.1.2.1\0";
    dicom.extend_from_slice(&[0x02, 0x00, 0x10, 0x00, b'U', b'I', ts.len() as u8, 0]);
    dicom.extend_from_slice(ts);
    let bulk: Vec<u8> = (0..20 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let routine = crate::cart::CartRecord {
        patient_id: "DEMO0002",
        last_name: "DEMO",
        stat_code: 0,
        waveform_bytes: 30_000,
    }
    .encode();
    let stat = crate::cart::CartRecord {
        patient_id: "DEMO0003",
        last_name: "DEMO",
        stat_code: 9,
        waveform_bytes: 30_000,
    }
    .encode();
    vec![
        ("ecg", "ecg-report-0001.pdf", pdf),
        ("ecg", "00001.SCP", routine),
        ("ecg", "00002.SCP", stat),
        ("lab", "oru-0001.hl7", hl7),
        ("imaging", "CT0001.dcm", dicom),
        ("imaging", "export-0001.bin", bulk),
    ]
}

pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let say = Say::from_env();
    let tmp;
    let tmp_used = opts.dir.is_none();
    let dir: PathBuf = match opts.dir {
        Some(d) => {
            std::fs::create_dir_all(&d)
                .with_context(|| say.t("demo-err-dir", &[("path", &d.display().to_string())]))?;
            d
        }
        None => {
            tmp = tempfile::Builder::new()
                .prefix("yilian-demo-")
                .tempdir()
                .with_context(|| say.t("demo-err-tmp", &[]))?;
            tmp.path().to_owned()
        }
    };
    if opts.exit && tmp_used {
        println!("{}", say.t("demo-title-temporary", &[]));
    } else {
        println!(
            "{}",
            say.t("demo-title", &[("dir", &dir.display().to_string())])
        );
    }
    let fleet = Fleet::create(&dir)
        .with_context(|| say.t("demo-err-fleet", &[("path", &dir.display().to_string())]))?;
    let identity = "demo-county/demo-clinic/box-1";

    // Real ports, written into the files: the `status` command printed
    // below reads the gateway's address from its configuration.
    let central_setup = CentralSetup {
        listen: "127.0.0.1:0".parse()?,
        metrics: crate::configs::free_tcp_port()?,
        data_dir: dir.join("central-data"),
        tls: fleet.central("localhost")?,
    };
    let central_toml = dir.join("central.toml");
    let ecg_import = dir.join("ecg-import");
    // The reading system exports its reports as files into this folder;
    // the box files them into the clinic's report folder.
    let report_import = dir.join("report-import");
    let clinic_reports = dir.join("clinic-reports");
    std::fs::write(
        &central_toml,
        format!(
            "{}\n[ecg]\ndirectory = {:?}\n\n[reports]\nimport_dir = {:?}\n",
            central_setup.toml(),
            ecg_import.display().to_string(),
            report_import.display().to_string()
        ),
    )
    .with_context(|| {
        say.t(
            "demo-err-write",
            &[("path", &central_toml.display().to_string())],
        )
    })?;
    let central = yilian_central::start(CentralConfig::load(&central_toml)?)
        .await
        .with_context(|| say.t("demo-err-central", &[]))?;

    let drop_root = dir.join("drop");
    let folder = |name: &str, lane| FolderSetup {
        name: name.to_owned(),
        path: drop_root.join(name),
        lane,
        settle_ms: 1000,
    };
    let gateway_setup = GatewaySetup {
        central: central.quic_addr.to_string(),
        server_name: "localhost".into(),
        spool_dir: dir.join("gateway-spool"),
        metrics: crate::configs::free_tcp_port()?,
        tls: fleet.gateway(identity)?,
        folders: vec![folder("lab", "clinical"), folder("imaging", "bulk")],
        idle_timeout_ms: None,
        reconnect_max_ms: 5000,
        quota_bytes: None,
        // The ECG cart's folder: content recognised, STAT ECGs on the
        // urgent lane, anything unreadable quarantined.
        // The box's page where a technician would open it (any free port
        // if 8080 is taken).
        extra: format!(
            "\n[page]\nlisten = \"{}\"\n\n[[folder]]\nname = \"ecg\"\npath = {:?}\nprofile = \"ecg\"\nsettle = \"1s\"\n\
             \n[[report_sink]]\nname = \"clinic-reports\"\ntype = \"folder\"\ndir = {:?}\n",
            if std::net::TcpListener::bind("127.0.0.1:8080").is_ok() {
                "127.0.0.1:8080"
            } else {
                "127.0.0.1:0"
            },
            drop_root.join("ecg").display().to_string(),
            clinic_reports.display().to_string()
        ),
    };
    let gateway_toml = dir.join("gateway.toml");
    std::fs::write(&gateway_toml, gateway_setup.toml()).with_context(|| {
        say.t(
            "demo-err-write",
            &[("path", &gateway_toml.display().to_string())],
        )
    })?;
    // The devices' folders are there before the box starts, as at a
    // clinic (a missing one is logged as a fault to fix).
    for name in ["ecg", "lab", "imaging"] {
        let path = drop_root.join(name);
        std::fs::create_dir_all(&path)
            .with_context(|| say.t("demo-err-folder", &[("path", &path.display().to_string())]))?;
    }
    let gateway = yilian_gateway::start(GatewayConfig::load(&gateway_toml)?)
        .await
        .with_context(|| say.t("demo-err-gateway", &[]))?;

    let samples = samples();
    for (folder, name, data) in &samples {
        let path = drop_root.join(folder).join(name);
        std::fs::write(&path, data)
            .with_context(|| say.t("demo-err-drop", &[("path", &path.display().to_string())]))?;
        println!(
            "  {}",
            say.t(
                "demo-dropped",
                &[
                    ("name", &format!("{name:<18}")),
                    ("folder", &format!("{folder:<8}")),
                    ("bytes", &data.len().to_string()),
                ]
            )
        );
    }

    let started = Instant::now();
    let store = central.store.clone();
    let mut seen = std::collections::HashSet::new();
    println!("\n{}", say.t("demo-arriving", &[]));
    while seen.len() < samples.len() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            say.t(
                "demo-err-missing",
                &[
                    ("got", &seen.len().to_string()),
                    ("total", &samples.len().to_string())
                ]
            )
        );
        print_arrivals(say, &store, &mut seen, started).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "{}",
        say.t(
            "demo-all-arrived",
            &[
                ("count", &samples.len().to_string()),
                ("secs", &format!("{:.1}", started.elapsed().as_secs_f64()))
            ]
        )
    );
    // The county hospital reads the ECG: its reading system exports the
    // report under the ECG's name, and the report comes back down to the
    // clinic's folder. Central hands the ECG to the reading system after
    // committing it, so it may not be there yet.
    let ecg_file = first_file_in(&ecg_import, ".scp", started, Duration::from_secs(120))
        .await
        .with_context(|| {
            say.t(
                "demo-err-ecg",
                &[("path", &ecg_import.display().to_string())],
            )
        })?;
    let stem = ecg_file.trim_end_matches(".scp");
    let read_at = Instant::now();
    let report = report_import.join(format!("{stem}.pdf"));
    std::fs::create_dir_all(&report_import)
        .and_then(|()| {
            std::fs::write(
                &report,
                crate::printer::simple_pdf(&["ECG report", "Sinus rhythm. Normal ECG."]),
            )
        })
        .with_context(|| {
            say.t(
                "demo-err-export",
                &[("path", &report.display().to_string())],
            )
        })?;
    println!(
        "\n{}",
        say.t(
            "demo-report-going-back",
            &[("file", &format!("{stem}.pdf"))]
        )
    );
    let back = first_file_in(&clinic_reports, ".pdf", read_at, Duration::from_secs(60))
        .await
        .with_context(|| {
            say.t(
                "demo-err-report",
                &[("path", &clinic_reports.display().to_string())],
            )
        })?;
    println!(
        "  {}",
        say.t(
            "demo-report-back",
            &[
                ("secs", &format!("{:.1}", read_at.elapsed().as_secs_f64())),
                ("path", &clinic_reports.join(&back).display().to_string())
            ]
        )
    );
    if opts.exit {
        // Everything below would name servers that stop now.
        gateway.shutdown().await;
        central.shutdown().await;
        return Ok(());
    }
    let bin = |name: &str| exe_hint(name);
    if let Some(page) = gateway.page_addr {
        println!(
            "\n{}",
            say.t(
                "demo-page",
                &[
                    ("url", &format!("http://{page}/")),
                    ("url_en", &format!("http://{page}/?lang=en"))
                ]
            )
        );
    }
    println!(
        "\n{}",
        say.t(
            "demo-metrics",
            &[
                (
                    "gateway",
                    &format!("http://{}/metrics", gateway.metrics_addr)
                ),
                (
                    "central",
                    &format!("http://{}/metrics", central.metrics_addr)
                )
            ]
        )
    );
    let gateway_toml = gateway_toml.display().to_string();
    let central_toml = central_toml.display().to_string();
    let ecg_import = ecg_import.display().to_string();
    let command = |binary: &str, rest: &str, config: &str| {
        format!("{} {rest} --config {config}", bin(binary))
    };
    let lines = [
        (
            "demo-status",
            command("yilian-gateway", "status", &gateway_toml),
            None,
        ),
        (
            "demo-ecgs",
            format!(
                "{} --ecg",
                command("yilian-central", "items", &central_toml)
            ),
            Some(ecg_import.clone()),
        ),
        (
            "demo-items",
            format!(
                "{} --json",
                command("yilian-central", "items", &central_toml)
            ),
            None,
        ),
        (
            "demo-reports",
            command("yilian-central", "reports", &central_toml),
            Some(clinic_reports.display().to_string()),
        ),
    ];
    for (id, command, dir) in &lines {
        let mut args = vec![("command", command.as_str())];
        if let Some(dir) = dir {
            args.push(("dir", dir.as_str()));
        }
        println!("{}", say.t(id, &args));
    }

    println!(
        "\n{}",
        say.t(
            "demo-more",
            &[
                (
                    "dir",
                    &format!("{}/{{ecg,lab,imaging}}", drop_root.display())
                ),
                ("ecg", &ecg_import)
            ]
        )
    );
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                print_arrivals(say, &store, &mut seen, started).await?;
            }
        }
    }
    gateway.shutdown().await;
    central.shutdown().await;
    Ok(())
}

/// The first name (in sorted order) ending in `suffix` in `dir`, waited
/// for until `since` is `limit` old (`None` then); the directory may not
/// exist yet.
async fn first_file_in(
    dir: &std::path::Path,
    suffix: &str,
    since: Instant,
    limit: Duration,
) -> Option<String> {
    loop {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(suffix))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        if let Some(first) = names.into_iter().next() {
            return Some(first);
        }
        if since.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prints the items central holds that were not printed yet.
async fn print_arrivals(
    say: Say,
    store: &yilian_central::store::Store,
    seen: &mut std::collections::HashSet<String>,
    started: Instant,
) -> anyhow::Result<()> {
    let s = store.clone();
    let mut items = tokio::task::spawn_blocking(move || s.items(None, None)).await??;
    items.sort_by_key(|i| i.received_at.clone());
    for item in items {
        if seen.insert(item.upload_id.clone()) {
            let name = item
                .metadata
                .get("filename")
                .and_then(|v| v.as_str())
                .unwrap_or("-")
                .to_owned();
            println!(
                "  {}",
                say.t(
                    "demo-arrival",
                    &[
                        ("secs", &format!("{:>5.1}", started.elapsed().as_secs_f64())),
                        ("name", &format!("{name:<20}")),
                        ("kind", &format!("{:<8}", item.kind)),
                        ("lane", &format!("{:<9}", item.lane)),
                        ("size", &format!("{:>9}", item.size)),
                        ("source", &item.source),
                        ("gateway", &item.gateway)
                    ]
                )
            );
        }
    }
    Ok(())
}

fn exe_hint(name: &str) -> String {
    crate::procs::binary(name)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| format!("cargo run --release -p {name} --"))
}
