//! `yilian-rig bench`: figures, not pass/fail. Each figure is printed beside
//! an anchor measured in the same run on the same machine.
//!
//! - spool append of 4 KiB and 1 MiB items with durable commits, beside the
//!   machine's raw `write + fdatasync` rate (group commit should let many
//!   concurrent writers beat it);
//! - HL7 over MLLP from 1 and 16 connections, with the link up and with
//!   central stopped, beside the same fsync rate, with the CPU each
//!   message costs;
//! - bulk upload over loopback QUIC through the real gateway and central,
//!   beside one raw quinn stream with the same TLS and transport settings;
//! - DICOM ingest of CT studies (400 images a round, `--ingest-images`)
//!   sent by dcmtk `storescu` into the gateway (durable: every instance
//!   fsynced and indexed before Success),
//!   beside dcmtk `storescp` (writes files, no fsync) and Orthanc on the
//!   same files.

pub use crate::report::Report;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use yilian_central::CentralConfig;
use yilian_gateway::GatewayConfig;
use yilian_link::{bind_udp, client_config, server_config};
use yilian_spool::{Lane, NewItem, Spool, SpoolConfig};

use crate::configs::{CentralSetup, GatewaySetup};
use crate::fleet::Fleet;

pub struct BenchOptions {
    pub upload_mib: u64,
    pub file_mib: u64,
    /// CT images per round of the DICOM ingest benchmark.
    pub ingest_images: usize,
    /// Groups to run; empty runs all.
    pub only: Vec<String>,
    pub link: crate::bench_link::LinkOptions,
}

/// The benchmark groups, in the order they run.
pub const GROUPS: [&str; 6] = ["spool", "hl7", "upload", "dicom", "large", "link"];

pub async fn run(opts: BenchOptions) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let dir = tempfile::Builder::new()
        .prefix("yilian-bench-")
        .tempdir_in(bench_dir())?;
    println!("{:<52} {:<28} anchor", "benchmark", "figure");
    for g in &opts.only {
        anyhow::ensure!(
            GROUPS.contains(&g.as_str()),
            "unknown benchmark group {g:?} (groups: {})",
            GROUPS.join(", ")
        );
    }
    let on = |g: &str| opts.only.is_empty() || opts.only.iter().any(|o| o == g);
    if on("spool") {
        spool_benches(dir.path(), &mut report).await?;
    }
    if on("hl7") {
        hl7_benches(dir.path(), &mut report).await?;
    }
    if on("upload") {
        upload_benches(dir.path(), &opts, &mut report).await?;
    }
    if on("dicom") {
        dicom_benches(dir.path(), opts.ingest_images.max(1), &mut report).await?;
    }
    if on("large") {
        large_instance_bench(dir.path(), &mut report).await?;
        memory_bench(dir.path(), &mut report).await?;
    }
    if on("link") {
        let path = dir.path().to_owned();
        let link = opts.link;
        report = tokio::task::spawn_blocking(move || {
            crate::bench_link::run(&path, &link, &mut report).map(|()| report)
        })
        .await??;
    }
    Ok(report)
}

/// Benchmarks write real files on a real disk: `target/` of the checkout
/// by default (a tmpfs under /tmp would make fsync free and the figures
/// meaningless), or `YILIAN_BENCH_DIR`.
fn bench_dir() -> std::path::PathBuf {
    if let Some(d) = std::env::var_os("YILIAN_BENCH_DIR") {
        return d.into();
    }
    let target = std::path::PathBuf::from("target");
    if target.is_dir() { target } else { ".".into() }
}

/// The disk's single-fsync rate: one over the median time of `n` 4 KiB
/// appends each followed by `fdatasync` (the median, because this shared
/// VM's disk stalls now and then, and a mean moved the anchor twofold from
/// one run to the next).
fn fsync_rate(dir: &std::path::Path, n: u32) -> anyhow::Result<f64> {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let block = [0x5au8; 4096];
    let mut times = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        times.push(t.elapsed());
    }
    times.sort();
    let median = times.get(times.len() / 2).copied().unwrap_or_default();
    drop(f);
    std::fs::remove_file(path)?;
    Ok(1.0 / median.as_secs_f64().max(1e-6))
}

/// Seconds one `write` + `fdatasync` of a new file of `size` bytes takes in
/// `dir` (the mean of `n`): the flush every durable image must wait for.
fn image_fsync_secs(dir: &std::path::Path, size: usize, n: u32) -> anyhow::Result<f64> {
    let probe = dir.join("image-fsync-probe");
    std::fs::create_dir_all(&probe)?;
    let body = vec![0x5au8; size];
    let t = Instant::now();
    for i in 0..n {
        let mut f = std::fs::File::create(probe.join(i.to_string()))?;
        f.write_all(&body)?;
        f.sync_data()?;
    }
    let secs = t.elapsed().as_secs_f64() / f64::from(n.max(1));
    std::fs::remove_dir_all(&probe)?;
    Ok(secs)
}

async fn spool_benches(dir: &std::path::Path, report: &mut Report) -> anyhow::Result<()> {
    let dir = dir.to_owned();
    let rows =
        tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(String, String, String)>> {
            let mut report_rows = Vec::new();
            let fsyncs = fsync_rate(&dir, 300)?;
            let anchor = format!("raw write+fdatasync: {fsyncs:.0}/s");

            let spool = Spool::open(SpoolConfig::new(dir.join("spool-4k-1")))?;
            let body = vec![0x42u8; 4096];
            let n = 500;
            let t = Instant::now();
            for _ in 0..n {
                spool.append(NewItem::new(Lane::Clinical, "bench", "bench"), &body)?;
            }
            let rate = f64::from(n) / t.elapsed().as_secs_f64();
            report_rows.push((
                "spool append 4 KiB, 1 writer".to_owned(),
                format!("{rate:.0} items/s"),
                anchor.clone(),
            ));

            let spool = Spool::open(SpoolConfig::new(dir.join("spool-4k-16")))?;
            let per = 200;
            let t = Instant::now();
            let threads: Vec<_> = (0..16)
                .map(|_| {
                    let spool = spool.clone();
                    let body = body.clone();
                    std::thread::spawn(move || -> Result<(), yilian_spool::SpoolError> {
                        for _ in 0..per {
                            spool.append(NewItem::new(Lane::Clinical, "bench", "bench"), &body)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for t in threads {
                t.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
            }
            let rate = f64::from(16 * per) / t.elapsed().as_secs_f64();
            report_rows.push((
                "spool append 4 KiB, 16 writers (group commit)".to_owned(),
                format!("{rate:.0} items/s"),
                anchor.clone(),
            ));

            let spool = Spool::open(SpoolConfig::new(dir.join("spool-1m")))?;
            let body = vec![0x42u8; 1024 * 1024];
            let n = 100;
            let t = Instant::now();
            for _ in 0..n {
                spool.append(NewItem::new(Lane::Bulk, "bench", "bench"), &body)?;
            }
            let secs = t.elapsed().as_secs_f64();
            report_rows.push((
                "spool append 1 MiB, 1 writer".to_owned(),
                format!(
                    "{:.0} items/s, {:.0} MB/s",
                    f64::from(n) / secs,
                    f64::from(n) * 1.048_576 / secs
                ),
                anchor,
            ));
            Ok(report_rows)
        })
        .await??;
    for (a, b, c) in rows {
        report.row(&a, b, c);
    }
    Ok(())
}

/// Sends `files` with storescu; returns the wall time.
/// `files` sent by `associations` storescu processes at once, each with its
/// share in one association, as a console with several send queues does.
async fn timed_storescu(
    addr: std::net::SocketAddr,
    called: &'static str,
    files: Vec<std::path::PathBuf>,
    associations: usize,
) -> anyhow::Result<Duration> {
    let share = files.len().div_ceil(associations.max(1)).max(1);
    let started = Instant::now();
    let senders: Vec<_> = files
        .chunks(share)
        .map(|chunk| {
            let chunk = chunk.to_vec();
            tokio::task::spawn_blocking(move || {
                crate::modality::storescu(addr, called, "BENCH_CT", &chunk)
            })
        })
        .collect();
    let mut outs = Vec::with_capacity(senders.len());
    for s in senders {
        outs.push(s.await??);
    }
    let took = started.elapsed();
    for out in outs {
        let said = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        anyhow::ensure!(
            out.status.success() && !said.contains("Refused") && !said.contains("Failed"),
            "storescu to {called} failed: {}",
            said.lines()
                .filter(|l| l.starts_with("E:") || l.contains("Refused"))
                .take(3)
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    Ok(took)
}

/// How many associations send at once in the ingest benchmarks.
const INGEST_ASSOCIATIONS: [usize; 2] = [1, 4];

/// Rounds of each ingest benchmark; the figures are their medians.
const INGEST_ROUNDS: usize = 3;

async fn dicom_benches(
    dir: &std::path::Path,
    images: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    // A study per round: a receiver given the same instances again may
    // take a shortcut (the gateway and Orthanc both recognise a resend).
    // The gateway and storescp take turns, round after round, and each
    // figure is the median of its rounds: this VM's disk and CPU change
    // from one minute to the next, and one pass of each compared moments,
    // not receivers.
    let mut rounds: Vec<Vec<Vec<std::path::PathBuf>>> = Vec::new();
    for round in 0..INGEST_ROUNDS {
        let mut studies = Vec::new();
        for (i, _) in INGEST_ASSOCIATIONS.iter().enumerate() {
            let seed = 42 + (round * INGEST_ASSOCIATIONS.len() + i) as u32;
            let study = crate::modality::CtStudy::new(seed, images);
            let d = dir.join(format!("ct-study-{round}-{i}"));
            studies.push(tokio::task::spawn_blocking(move || study.write(&d)).await??);
        }
        rounds.push(studies);
    }
    let files = rounds[0][0].clone();
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    let figure = |t: Duration| {
        format!(
            "{:.0} images/s, {:.0} MB/s",
            files.len() as f64 / t.as_secs_f64(),
            bytes as f64 / 1e6 / t.as_secs_f64()
        )
    };

    // The gateway alone: its uplink points nowhere, so ingest is measured
    // without the upload competing for the two cores.
    let fleet = Fleet::create(&dir.join("dicom-fleet"))?;
    let spool_dir = dir.join("dicom-spool");
    std::fs::create_dir_all(&spool_dir)?;
    let image_size = (bytes / files.len().max(1) as u64) as usize;
    let listen = crate::configs::free_tcp_port()?;
    let nowhere = crate::configs::free_udp_port()?;
    let gw_setup = GatewaySetup {
        central: nowhere.to_string(),
        server_name: "localhost".into(),
        spool_dir: spool_dir.clone(),
        metrics: "127.0.0.1:0".parse()?,
        tls: fleet.gateway("bench/bench/box-1")?,
        folders: vec![],
        idle_timeout_ms: None,
        reconnect_max_ms: 60_000,
        quota_bytes: None,
        extra: format!(
            "\n[[dicom]]\nname = \"bench\"\nlisten = \"{listen}\"\nae_title = \"YILIAN_GW\"\nmax_pdu = 131072\n"
        ),
    };
    let gt = dir.join("dicom-gateway.toml");
    std::fs::write(&gt, gw_setup.toml())?;
    let gateway = yilian_gateway::start(GatewayConfig::load(&gt)?).await?;

    // dcmtk storescp: files written, never fsynced; a process per
    // association (`--fork`) so that it too takes several at once.
    let scp_dir = dir.join("storescp");
    std::fs::create_dir_all(&scp_dir)?;
    let scp_addr = crate::configs::free_tcp_port()?;
    let mut scp = crate::modality::dcmtk("storescp")
        .args(["--fork", "-aet", "STORESCP", "-od"])
        .arg(&scp_dir)
        .arg(scp_addr.port().to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("storescp (apt-get install dcmtk)")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(scp_addr).is_err() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let modes = INGEST_ASSOCIATIONS.len();
    let (mut ours, mut theirs, mut fsyncs) =
        (vec![Vec::new(); modes], vec![Vec::new(); modes], Vec::new());
    let mut failed = None;
    for studies in &rounds {
        let d = spool_dir.clone();
        fsyncs.push(
            tokio::task::spawn_blocking(move || image_fsync_secs(&d, image_size, 100)).await??,
        );
        for (i, n) in INGEST_ASSOCIATIONS.into_iter().enumerate() {
            ours[i].push(timed_storescu(listen, "YILIAN_GW", studies[i].clone(), n).await?);
            match timed_storescu(scp_addr, "STORESCP", studies[i].clone(), n).await {
                Ok(t) => theirs[i].push(t),
                Err(e) => failed = Some(e),
            }
            // What storescp wrote is not needed again: keep the disk free.
            let _ = std::fs::remove_dir_all(&scp_dir);
            std::fs::create_dir_all(&scp_dir)?;
        }
    }
    gateway.shutdown().await;
    let _ = scp.kill();
    let _ = scp.wait();
    if let Some(e) = failed {
        return Err(e);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let ours: Vec<Duration> = ours.iter_mut().map(median).collect();
    let theirs: Vec<Duration> = theirs.iter_mut().map(median).collect();
    fsyncs.sort_by(f64::total_cmp);
    let fsync = fsyncs[fsyncs.len() / 2];

    // Orthanc, as a PACS would be installed: one round, a far anchor.
    let orthanc = {
        let d = dir.join("orthanc");
        tokio::task::spawn_blocking(move || crate::orthanc::Orthanc::start(&d)).await??
    };
    let mut pacs = Vec::new();
    for (i, n) in INGEST_ASSOCIATIONS.into_iter().enumerate() {
        pacs.push(timed_storescu(orthanc.dicom, "ORTHANC", rounds[0][i].clone(), n).await?);
    }
    drop(orthanc);

    // The limits: one association can do no better than receiving each
    // image (storescp's time, which writes without syncing) plus one flush
    // of it; several can hide the flushes behind each other's receiving,
    // so their limit is the receiving alone.
    for (i, n) in INGEST_ASSOCIATIONS.iter().enumerate() {
        let per_image = theirs[i].as_secs_f64() / files.len() as f64;
        let limit = if *n == 1 {
            1.0 / (per_image + fsync)
        } else {
            1.0 / per_image
        };
        let rate = files.len() as f64 / ours[i].as_secs_f64();
        let how = if *n == 1 {
            format!(
                "limit {limit:.0} images/s = receive {:.2} ms (storescp) + fdatasync of an image {:.2} ms",
                per_image * 1e3,
                fsync * 1e3
            )
        } else {
            "limit = storescp's receive".to_owned()
        };
        report.row(
            &format!(
                "DICOM ingest, {images} CT images (0.5 MB), storescu → gateway, durable, {n} association{}",
                if *n == 1 { "" } else { "s at once" }
            ),
            format!("{} ({:.0} % of the limit)", figure(ours[i]), rate / limit * 100.0),
            format!(
                "{how}; storescp (no fsync): {}; Orthanc: {}",
                figure(theirs[i]),
                figure(pacs[i])
            ),
        );
    }
    Ok(())
}

/// A 2 GiB multi-frame instance streamed into the real gateway process:
/// its peak RSS shows that memory does not grow with the instance.
async fn large_instance_bench(dir: &std::path::Path, report: &mut Report) -> anyhow::Result<()> {
    let file = dir.join("multiframe-2gib.dcm");
    let size = {
        let f = file.clone();
        tokio::task::spawn_blocking(move || crate::modality::write_large_multiframe(&f, 1000))
            .await??
    };
    let fleet = Fleet::create(&dir.join("large-fleet"))?;
    let listen = crate::configs::free_tcp_port()?;
    let gw_setup = GatewaySetup {
        central: crate::configs::free_udp_port()?.to_string(),
        server_name: "localhost".into(),
        spool_dir: dir.join("large-spool"),
        metrics: crate::configs::free_tcp_port()?,
        tls: fleet.gateway("bench/bench/box-1")?,
        folders: vec![],
        idle_timeout_ms: None,
        reconnect_max_ms: 60_000,
        quota_bytes: Some(8 << 30),
        extra: format!(
            "\n[[dicom]]\nname = \"bench\"\nlisten = \"{listen}\"\nae_title = \"YILIAN_GW\"\n"
        ),
    };
    let gt = dir.join("large-gateway.toml");
    std::fs::write(&gt, gw_setup.toml())?;
    let gt_arg = gt.to_string_lossy().into_owned();
    let gateway = crate::procs::Proc::spawn(
        "yilian-gateway",
        &["run", "--config", &gt_arg],
        &dir.join("large-gateway.log"),
    )?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(listen).is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the gateway did not start; see large-gateway.log"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let idle = crate::procs::peak_rss_of(gateway.id()).unwrap_or(0);
    let took = timed_storescu(listen, "YILIAN_GW", vec![file.clone()], 1).await?;
    let peak = crate::procs::peak_rss_of(gateway.id()).unwrap_or(0);
    drop(gateway);
    let _ = std::fs::remove_file(&file);
    report.row(
        "2 GiB multi-frame instance, storescu → gateway process",
        format!(
            "peak RSS {:.0} MiB ({:.0} MiB at start), {:.0} MB/s",
            peak as f64 / 1048576.0,
            idle as f64 / 1048576.0,
            size as f64 / 1e6 / took.as_secs_f64()
        ),
        format!("instance size: {:.0} MiB", size as f64 / 1048576.0),
    );
    Ok(())
}

/// Items queued before the memory benchmark's instance streams in.
const QUEUED_ITEMS: u64 = 10_000;

/// The gateway process's memory with everything at once: 10,000 items
/// queued, a 2 GiB instance streaming in, and the backlog uploading to a
/// real central (rate-limited so that it is still uploading throughout).
async fn memory_bench(dir: &std::path::Path, report: &mut Report) -> anyhow::Result<()> {
    let file = dir.join("multiframe-2gib-memory.dcm");
    let size = {
        let f = file.clone();
        tokio::task::spawn_blocking(move || crate::modality::write_large_multiframe(&f, 1000))
            .await??
    };
    let fleet = Fleet::create(&dir.join("memory-fleet"))?;
    let central_setup = CentralSetup {
        listen: "127.0.0.1:0".parse()?,
        metrics: "127.0.0.1:0".parse()?,
        data_dir: dir.join("memory-central"),
        tls: fleet.central("localhost")?,
    };
    let ct = dir.join("memory-central.toml");
    std::fs::write(&ct, central_setup.toml())?;
    let central = yilian_central::start(CentralConfig::load(&ct)?).await?;

    // The backlog: files of 96 KiB (above the inline limit, so each is a
    // payload file and an index row), written by 16 threads.
    let spool_dir = dir.join("memory-spool");
    {
        let spool_dir = spool_dir.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let spool = Spool::open(SpoolConfig::new(&spool_dir))?;
            let threads: Vec<_> = (0..16u64)
                .map(|t| {
                    let spool = spool.clone();
                    std::thread::spawn(move || -> Result<(), yilian_spool::SpoolError> {
                        let mut body = vec![0x42u8; 96 * 1024];
                        for i in 0..QUEUED_ITEMS / 16 {
                            body[..16]
                                .copy_from_slice(&[t.to_le_bytes(), i.to_le_bytes()].concat());
                            spool.append(NewItem::new(Lane::Bulk, "bench", "bench"), &body)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for t in threads {
                t.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
            }
            Ok(())
        })
        .await??;
    }
    let listen = crate::configs::free_tcp_port()?;
    let gw_setup = GatewaySetup {
        central: central.quic_addr.to_string(),
        server_name: "localhost".into(),
        spool_dir,
        metrics: crate::configs::free_tcp_port()?,
        tls: fleet.gateway("bench/bench/box-1")?,
        folders: vec![],
        idle_timeout_ms: None,
        reconnect_max_ms: 2000,
        quota_bytes: Some(8 << 30),
        extra: format!(
            "\n[[dicom]]\nname = \"bench\"\nlisten = \"{listen}\"\nae_title = \"YILIAN_GW\"\n"
        ),
    };
    let gt = dir.join("memory-gateway.toml");
    // 960 MB at 200 Mbit/s: still uploading when the instance is in.
    std::fs::write(
        &gt,
        gw_setup.toml_with_uplink("rate_limit = \"200 Mbit/s\"\n"),
    )?;
    let gt_arg = gt.to_string_lossy().into_owned();
    let gateway = crate::procs::Proc::spawn(
        "yilian-gateway",
        &["run", "--config", &gt_arg],
        &dir.join("memory-gateway.log"),
    )?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(listen).is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the gateway did not start; see memory-gateway.log"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let store = central.store.clone();
    let uploaded = move || {
        let s = store.clone();
        async move {
            tokio::task::spawn_blocking(move || s.items(None, None))
                .await
                .map(|r| r.map(|v| v.len()).unwrap_or(0))
                .unwrap_or(0)
        }
    };
    let at_start = uploaded().await;
    let took = timed_storescu(listen, "YILIAN_GW", vec![file.clone()], 1).await?;
    let meanwhile = uploaded().await.saturating_sub(at_start);
    let peak = crate::procs::peak_rss_of(gateway.id()).unwrap_or(0);
    drop(gateway);
    central.shutdown().await;
    let _ = std::fs::remove_file(&file);
    report.row(
        &format!(
            "gateway process: {QUEUED_ITEMS} items queued, a 2 GiB instance streaming in, the backlog uploading"
        ),
        format!(
            "peak RSS {:.0} MiB; instance in at {:.0} MB/s while {meanwhile} queued items went up",
            peak as f64 / 1048576.0,
            size as f64 / 1e6 / took.as_secs_f64()
        ),
        "target: 64 MiB".to_owned(),
    );
    Ok(())
}

/// HL7 ORU^R01 over MLLP into a real gateway (durable commits, uploads to
/// a real central running alongside, then with central stopped): messages
/// per second and the time from the last byte sent to the ACK received.
async fn hl7_benches(dir: &std::path::Path, report: &mut Report) -> anyhow::Result<()> {
    let fsyncs = {
        let d = dir.to_owned();
        tokio::task::spawn_blocking(move || fsync_rate(&d, 300)).await??
    };
    let fleet = Fleet::create(&dir.join("hl7-fleet"))?;
    let central_setup = CentralSetup {
        listen: "127.0.0.1:0".parse()?,
        metrics: "127.0.0.1:0".parse()?,
        data_dir: dir.join("hl7-central"),
        tls: fleet.central("localhost")?,
    };
    let ct = dir.join("hl7-central.toml");
    std::fs::write(&ct, central_setup.toml())?;
    let central = yilian_central::start(CentralConfig::load(&ct)?).await?;
    let listen = crate::configs::free_tcp_port()?;
    let gw_setup = GatewaySetup {
        central: central.quic_addr.to_string(),
        server_name: "localhost".into(),
        spool_dir: dir.join("hl7-spool"),
        metrics: "127.0.0.1:0".parse()?,
        tls: fleet.gateway("bench/bench/box-1")?,
        folders: vec![],
        idle_timeout_ms: None,
        reconnect_max_ms: 2000,
        quota_bytes: None,
        // Sixteen clients from one address: a LIS feeding several queues.
        // Room for more: the gateway may not yet have seen the previous
        // round's connections close when the next round's open.
        extra: format!(
            "\n[[hl7]]\nname = \"bench\"\nlisten = \"{listen}\"\nmax_connections_per_peer = 32\n"
        ),
    };
    let gt = dir.join("hl7-gateway.toml");
    std::fs::write(&gt, gw_setup.toml())?;
    let gateway = yilian_gateway::start(GatewayConfig::load(&gt)?).await?;
    // The last rounds run with central stopped: what the box takes in
    // during an outage, its two cores not shared with the upload (nor, as
    // here, with a central running on the same machine).
    let rounds = [
        (1usize, 2000, true),
        (16, 1000, true),
        (16, 1000, false),
        (1, 2000, false),
    ];
    let mut central = Some(central);
    for (round, (connections, per_connection, link_up)) in rounds.into_iter().enumerate() {
        if !link_up && let Some(c) = central.take() {
            c.shutdown().await;
        }
        let me = std::process::id();
        let cpu_before = crate::bench_link::cpu_seconds(me);
        let started = Instant::now();
        let tasks: Vec<_> = (0..connections)
            // Control ids differ from round to round: none is a resend.
            .map(|c| tokio::spawn(hl7_client(listen, round * 100 + c, per_connection)))
            .collect();
        let mut latencies = Vec::new();
        for t in tasks {
            latencies.extend(t.await??);
        }
        let secs = started.elapsed().as_secs_f64();
        // Everything in this process: the clients, the gateway and (while
        // it runs) central.
        let cpu = crate::bench_link::cpu_seconds(me) - cpu_before;
        latencies.sort();
        let pct =
            |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0;
        let rate = latencies.len() as f64 / secs;
        let cpu_per_message = cpu / latencies.len() as f64 * 1e6;
        // The limits: one connection's ACK can wait for no less than the
        // commit's flush (two at worst: a request arriving just after a
        // group began waits for that group and its own); many connections
        // share each flush.
        let limit = if connections == 1 {
            format!(
                "; p99 limit, two flushes + 1 ms: {:.1} ms",
                2000.0 / fsyncs + 1.0
            )
        } else {
            String::new()
        };
        let link = if link_up { "" } else { ", link down" };
        report.row(
            &format!("HL7 ORU^R01 over MLLP, {connections} connection(s){link}, durable ACK"),
            format!(
                "{rate:.0} msg/s ({:.1}× the fsync rate), ACK p50 {:.1} ms, p99 {:.1} ms; CPU {cpu_per_message:.0} µs per message, {:.1} cores busy",
                rate / fsyncs,
                pct(0.50),
                pct(0.99),
                cpu / secs
            ),
            format!("raw write+fdatasync: {fsyncs:.0}/s{limit}"),
        );
    }
    gateway.shutdown().await;
    if let Some(c) = central {
        c.shutdown().await;
    }
    Ok(())
}

/// Sends `n` distinct ORU^R01 messages one at a time, each waiting for its
/// ACK; returns the latency of each from the last byte sent.
async fn hl7_client(
    addr: std::net::SocketAddr,
    client: usize,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let msg = format!(
            "MSH|^~\\&|LAB|CLINIC|LIS|COUNTY|20240101120000||ORU^R01^ORU_R01|B{client}X{i}|P|2.5.1\rPID|1||P{i}^^^CLINIC^MR||DOE^JOHN||19800101|M\rOBR|1|O{i}|S{i}|CBC^Blood count^L|||20240101110000\rOBX|1|NM|WBC^White cells^L||6.5|10*9/L|4.0-10.0|N|||F\rOBX|2|NM|HGB^Hemoglobin^L||135|g/L|130-175|N|||F\r"
        );
        s.write_all(&yilian_codecs::mllp::encode(msg.as_bytes()))
            .await?;
        let sent = Instant::now();
        let mut got = Vec::new();
        while !got.ends_with(&[0x1c, 0x0d]) {
            let k = s.read(&mut buf).await?;
            anyhow::ensure!(k > 0, "the gateway closed the connection");
            got.extend_from_slice(&buf[..k]);
        }
        out.push(sent.elapsed());
        anyhow::ensure!(
            String::from_utf8_lossy(&got).contains("MSA|AA|"),
            "not accepted: {}",
            String::from_utf8_lossy(&got)
        );
    }
    Ok(out)
}

async fn upload_benches(
    dir: &std::path::Path,
    opts: &BenchOptions,
    report: &mut Report,
) -> anyhow::Result<()> {
    let fleet = Fleet::create(&dir.join("fleet"))?;
    let ctls = fleet.central("localhost")?;
    let gtls = fleet.gateway("bench/bench/box-1")?;
    let total = opts.upload_mib * 1024 * 1024;

    // Anchor: one raw quinn stream, same TLS and transport settings. Both
    // ends run in this process, so its CPU time is the whole cost.
    let me = std::process::id();
    let cpu = move || crate::bench_link::cpu_seconds(me);
    let before = cpu();
    let raw = raw_quinn(&ctls, &gtls, total).await?;
    let raw_mbs = total as f64 / 1e6 / raw.as_secs_f64();
    let raw_cpu = (cpu() - before) / (total as f64 / 1e9);

    // The product: items already in the gateway's spool, uploaded to a real
    // central that verifies and stores them durably.
    let spool_dir = dir.join("gateway-spool");
    let files = (opts.upload_mib / opts.file_mib).max(1);
    let file_mib = opts.file_mib;
    let file_bytes = file_mib * 1024 * 1024;
    {
        let spool_dir = spool_dir.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let spool = Spool::open(SpoolConfig::new(&spool_dir))?;
            let block: Vec<u8> = (0..1024 * 1024u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect();
            for f in 0..files {
                let mut w = spool.writer(NewItem::new(Lane::Bulk, "bench", "bench"))?;
                for b in 0..file_mib {
                    // Vary content per file so every item has its own hash.
                    let mut blk = block.clone();
                    blk[..8].copy_from_slice(&(f * 1_000_000 + b).to_le_bytes());
                    w.write_bytes(&blk)?;
                }
                w.commit()?;
            }
            Ok(())
        })
        .await??;
    }
    let central_setup = CentralSetup {
        listen: "127.0.0.1:0".parse()?,
        metrics: "127.0.0.1:0".parse()?,
        data_dir: dir.join("central-data"),
        tls: ctls,
    };
    let ct = dir.join("central.toml");
    std::fs::write(&ct, central_setup.toml())?;
    let central = yilian_central::start(CentralConfig::load(&ct)?).await?;
    let gw_setup = GatewaySetup {
        central: central.quic_addr.to_string(),
        server_name: "localhost".into(),
        spool_dir,
        metrics: "127.0.0.1:0".parse()?,
        tls: gtls,
        folders: vec![],
        idle_timeout_ms: None,
        reconnect_max_ms: 2000,
        quota_bytes: None,
        extra: String::new(),
    };
    let gt = dir.join("gateway.toml");
    std::fs::write(&gt, gw_setup.toml())?;
    let gateway = yilian_gateway::start(GatewayConfig::load(&gt)?).await?;
    // Timed from the link's coming up, as the raw stream is timed from its
    // connection: the box's start and the handshake are not the upload.
    let mut link = gateway.link.clone();
    tokio::time::timeout(Duration::from_secs(60), link.wait_for(|s| s.state == "up"))
        .await
        .context("the gateway's link did not come up")??;
    let t = Instant::now();
    let before = cpu();
    let store = central.store.clone();
    loop {
        let s = store.clone();
        let n = tokio::task::spawn_blocking(move || s.items(None, None))
            .await??
            .len() as u64;
        if n >= files {
            break;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(600),
            "upload benchmark stalled at {n} of {files} items"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    let gb = (files * file_bytes) as f64 / 1e9;
    let up_cpu = (cpu() - before) / gb;
    let mbs = (files * file_bytes) as f64 / 1e6 / secs;
    gateway.shutdown().await;
    central.shutdown().await;
    // What the durable path must add to the raw stream, measured alone on
    // this machine: hashing every byte (central verifies the item's
    // SHA-256) and writing every byte into the page cache and to the disk.
    let (hash_cpu, write_cpu) = {
        let d = dir.to_owned();
        tokio::task::spawn_blocking(move || durable_costs(&d, cpu)).await??
    };
    report.row(
        &format!(
            "bulk upload, {files} × {} MiB, loopback, durable",
            opts.file_mib
        ),
        format!(
            "{mbs:.0} MB/s ({secs:.1} s, {:.0} % of the raw stream), CPU {up_cpu:.2} s per GB",
            mbs / raw_mbs * 100.0
        ),
        format!(
            "raw quinn stream, same TLS: {raw_mbs:.0} MB/s, CPU {raw_cpu:.2} s per GB; alone on this machine, SHA-256 {hash_cpu:.2} and write + fdatasync {write_cpu:.2} s per GB"
        ),
    );
    Ok(())
}

/// CPU seconds per GB of SHA-256, and of writing a file and syncing it,
/// each measured alone over 256 MiB.
pub(crate) fn durable_costs(
    dir: &std::path::Path,
    cpu: impl Fn() -> f64,
) -> anyhow::Result<(f64, f64)> {
    use sha2::Digest;
    let block: Vec<u8> = (0..1024 * 1024u32).map(|i| (i >> 3) as u8).collect();
    let n = 256;
    let gb = n as f64 * block.len() as f64 / 1e9;
    let before = cpu();
    let mut h = sha2::Sha256::new();
    for _ in 0..n {
        h.update(&block);
    }
    std::hint::black_box(h.finalize());
    let hash = (cpu() - before) / gb;
    let path = dir.join("write-cost-probe");
    let before = cpu();
    {
        let mut f = std::fs::File::create(&path)?;
        for _ in 0..n {
            f.write_all(&block)?;
        }
        f.sync_all()?;
    }
    let write = (cpu() - before) / gb;
    std::fs::remove_file(&path)?;
    Ok((hash, write))
}

/// Sends `total` bytes over one quinn stream and waits for the receiver to
/// have read them all.
pub(crate) async fn raw_quinn(
    ctls: &yilian_link::TlsFiles,
    gtls: &yilian_link::TlsFiles,
    total: u64,
) -> anyhow::Result<Duration> {
    let server = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server_config(ctls, yilian_link::Revocations::default())?),
        bind_udp("127.0.0.1:0".parse()?)?,
        quinn::default_runtime().context("runtime")?,
    )?;
    let addr = server.local_addr()?;
    let recv_task = tokio::spawn(async move {
        let conn = server.accept().await.context("no connection")?.await?;
        let (mut send, mut recv) = conn.accept_bi().await?;
        let mut n = 0u64;
        while let Some(chunk) = recv.read_chunk(1 << 20, true).await? {
            n += chunk.bytes.len() as u64;
        }
        send.write_all(&n.to_be_bytes()).await?;
        send.finish()?;
        conn.closed().await;
        anyhow::Ok(n)
    });
    let mut client = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        bind_udp("127.0.0.1:0".parse()?)?,
        quinn::default_runtime().context("runtime")?,
    )?;
    client.set_default_client_config(client_config(gtls)?);
    let conn = client.connect(addr, "localhost")?.await?;
    let block = bytes::Bytes::from(vec![0x42u8; 256 * 1024]);
    let t = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut left = total;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        send.write_chunk(block.slice(..n)).await?;
        left -= n as u64;
    }
    send.finish()?;
    let mut ack = [0u8; 8];
    recv.read_exact(&mut ack).await?;
    let elapsed = t.elapsed();
    conn.close(0u32.into(), b"done");
    let received = recv_task.await??;
    anyhow::ensure!(
        received == total,
        "raw stream delivered {received} of {total} bytes"
    );
    Ok(elapsed)
}
