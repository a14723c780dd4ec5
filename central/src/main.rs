//! `yilian-central`: serve the hub, list what arrived.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use yilian_gateway_config::clock::Clock;

use anyhow::Context;
use clap::{Parser, Subcommand};
use yilian_central::CentralConfig;
use yilian_central::store::Store;

#[derive(Parser)]
#[command(
    name = "yilian-central",
    version,
    about = "The Yilian hub: receives what clinic gateways upload"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the listing commands read: the data directory the configuration
/// names, or one given directly (a copy, or a machine without central's
/// configuration).
#[derive(clap::Args)]
struct StoreArgs {
    #[arg(
        long,
        default_value = "/etc/yilian/central.toml",
        conflicts_with = "data_dir"
    )]
    config: PathBuf,
    /// Read this data directory instead of the one in the configuration.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub.
    Serve {
        #[arg(long, default_value = "/etc/yilian/central.toml")]
        config: PathBuf,
    },
    /// Move this hub's index from its SQLite file to the PostgreSQL
    /// server `[store]` names in the configuration, and verify it (row
    /// counts and digests per table, every payload present). Run it again
    /// to finish a run that was cut short; a second run changes nothing.
    /// Stop `serve` first for a final pass.
    Migrate {
        #[arg(long, default_value = "/etc/yilian/central.toml")]
        config: PathBuf,
        /// The data directory whose `central.sqlite` to move (the
        /// configuration's by default).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Check a configuration file and exit.
    CheckConfig {
        #[arg(long, default_value = "/etc/yilian/central.toml")]
        config: PathBuf,
        /// Check the file only, not this machine (certificate and key
        /// files): for a configuration written for another box
        /// or rendered into an image.
        #[arg(long)]
        file_only: bool,
    },
    /// List received items.
    Items {
        #[command(flatten)]
        store: StoreArgs,
        /// Only items of this gateway (COUNTY/CLINIC/BOX).
        #[arg(long)]
        gateway: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Only ECGs (and what ECG sources sent for review), with patient,
        /// acquisition time, device and end-to-end time.
        #[arg(long)]
        ecg: bool,
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Deliveries to downstream systems (the LIS): pending, delivered,
    /// parked with the reason.
    Outbox {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
        /// Put a parked delivery back in line.
        #[arg(long)]
        requeue: Option<i64>,
    },
    /// A clinic's modality worklist: `import FILE` adds or replaces
    /// scheduled steps (a JSON array; entries with `"status": "completed"`
    /// or `"cancelled"` are removed); without a file, lists it. Gateways of
    /// the clinic get the new list with their next heartbeat.
    Worklist {
        #[command(flatten)]
        store: StoreArgs,
        /// COUNTY/CLINIC
        #[arg(long)]
        clinic: String,
        /// JSON file to import.
        #[arg(long)]
        import: Option<PathBuf>,
    },
    /// DICOM studies received, by study: patient, modalities, series and
    /// instances, how many the PACS has, and whether the study is complete
    /// (nothing new for the quiet period).
    Studies {
        #[command(flatten)]
        store: StoreArgs,
        /// Only studies from this gateway (COUNTY/CLINIC/BOX).
        #[arg(long)]
        gateway: Option<String>,
        /// A study with nothing new for this long is complete.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        quiet: std::time::Duration,
        #[arg(long)]
        json: bool,
    },
    /// Reports from the hospital on their way to the clinics: where each
    /// goes and how it was matched, whether the box holds it, and where
    /// the clinic filed, printed or forwarded it. `--assign ID --gateway
    /// COUNTY/CLINIC/BOX` sends a parked report (or one again) by hand.
    Reports {
        #[command(flatten)]
        store: StoreArgs,
        /// Only reports that matched no clinic and wait for a person.
        #[arg(long)]
        unmatched: bool,
        #[arg(long)]
        assign: Option<String>,
        #[arg(long, requires = "assign")]
        gateway: Option<String>,
        #[arg(long, default_value_t = 200)]
        limit: u64,
        #[arg(long)]
        json: bool,
    },
    /// List the gateways central has heard from.
    Gateways {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    yilian_central::service::init_logging("info,quinn=warn");
    raise_descriptor_limit();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // `items | head` closing the pipe early is not an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("yilian-central: {e:#}");
            // A configuration only a person can fix: EX_CONFIG, which the
            // unit does not restart on.
            if e.chain().any(|c| {
                c.downcast_ref::<yilian_central::CentralConfigError>()
                    .is_some()
            }) {
                ExitCode::from(78)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The soft descriptor limit up to the hard one: a county's worth of
/// HL7 connections and outbox sockets must not meet 1,024.
fn raise_descriptor_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    if let Some(hard) = l.maximum
        && l.current.is_some_and(|c| c < hard)
    {
        l.current = Some(hard);
        let _ = setrlimit(Resource::Nofile, l);
    }
}

/// Where the store is: `--data-dir` names an embedded (SQLite) hub's
/// directory; otherwise the configuration says, with its `[store]`.
struct Place {
    dir: PathBuf,
    backend: yilian_central::store::Backend,
    blobs: yilian_central::store::BlobBackend,
}

impl Place {
    fn open(&self) -> anyhow::Result<Store> {
        Ok(Store::open_with(&self.dir, &self.backend, &self.blobs)?)
    }

    fn open_read_only(&self) -> anyhow::Result<Store> {
        Ok(Store::open_read_only_with(
            &self.dir,
            &self.backend,
            &self.blobs,
        )?)
    }
}

fn data_dir(config: &std::path::Path, data_dir: Option<PathBuf>) -> anyhow::Result<Place> {
    match data_dir {
        Some(dir) => Ok(Place {
            dir,
            backend: Default::default(),
            blobs: Default::default(),
        }),
        None => {
            let c = CentralConfig::load(config)?;
            Ok(Place {
                dir: c.server.data_dir,
                backend: c.store,
                blobs: c.blobs,
            })
        }
    }
}

/// What the human listings need from the configuration, when it can be
/// read (a `--data-dir` listing may run without one): the hub's clock,
/// and which downstream systems are configured.
struct Site {
    clock: Clock,
    config: Option<CentralConfig>,
}

impl Site {
    fn of(config: &std::path::Path) -> Self {
        let config = CentralConfig::load(config).ok();
        let clock = config
            .as_ref()
            .map(|c| Clock::new(c.server.utc_offset.0))
            .unwrap_or_default();
        Self { clock, config }
    }

    fn has_pacs(&self) -> Option<bool> {
        self.config.as_ref().map(|c| c.pacs.is_some())
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let config = CentralConfig::load(&config)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let running = yilian_central::start(config).await?;
                yilian_central::service::supervise(&running, shutdown_signal()).await;
                tracing::info!("shutting down");
                running.shutdown().await;
                anyhow::Ok(())
            })
        }
        Command::Migrate { config, data_dir } => {
            let c = CentralConfig::load(&config)?;
            let yilian_central::store::Backend::Postgres(target) = &c.store else {
                anyhow::bail!(
                    "{} keeps the index in SQLite: set [store] backend = \"postgres\" with the server's url first",
                    config.display()
                );
            };
            let dir = data_dir.unwrap_or_else(|| c.server.data_dir.clone());
            let mut shown = String::new();
            let done = yilian_central::store::migrate::to_postgres(
                &dir,
                target,
                &c.blobs,
                |table, n, total| {
                    if table != shown || n == total {
                        eprintln!("{table}: {n} of {total} rows");
                        shown = table.to_owned();
                    }
                },
            )
            .with_context(|| format!("migrating {}", dir.join("central.sqlite").display()))?;
            let rows: u64 = done.tables.iter().map(|(_, n)| n).sum();
            let place = match &c.blobs {
                yilian_central::store::BlobBackend::Dir => dir.join("blobs").display().to_string(),
                yilian_central::store::BlobBackend::S3(s3) => format!(
                    "s3://{}/ ({} copied this run)",
                    s3.bucket, done.blobs_copied
                ),
            };
            println!(
                "moved {rows} rows in {} tables ({} new this run) to PostgreSQL; every table verified; {} payloads present in {place}",
                done.tables.len(),
                done.inserted,
                done.blobs,
            );
            println!("next: keep [store] backend = \"postgres\" (and [blobs]) and start serve");
            Ok(())
        }
        Command::CheckConfig { config, file_only } => {
            let c = CentralConfig::load(&config)?;
            let problems = if file_only {
                Vec::new()
            } else {
                c.check_files(&config)
            };
            if !problems.is_empty() {
                for p in &problems {
                    eprintln!("{p}");
                }
                anyhow::bail!("{} problem(s) in {}", problems.len(), config.display());
            }
            println!(
                "{}: valid (listening on {})",
                config.display(),
                c.server.listen
            );
            Ok(())
        }
        Command::Items {
            store: StoreArgs {
                config,
                data_dir: dir,
            },
            gateway,
            json,
            ecg,
            limit,
        } => {
            let site = Site::of(&config);
            let dir = data_dir(&config, dir)?;
            let store = dir
                .open_read_only()
                .with_context(|| format!("opening {}", dir.dir.display()))?;
            let mut items = store.items(gateway.as_deref(), limit)?;
            if ecg {
                items.retain(|i| i.metadata.get(yilian_protocol::kind::keys::ECG).is_some());
            }
            let mut out = std::io::stdout().lock();
            if ecg && !json {
                let meta = |i: &yilian_central::store::ItemRow, k: &str| {
                    i.metadata
                        .get(k)
                        .and_then(|v| v.as_str())
                        .unwrap_or("-")
                        .to_owned()
                };
                writeln!(
                    out,
                    "{:<25} {:<24} {:<8} {:<8} {:<16} {:<25} {:<14} {:>9}  STATE",
                    "RECEIVED",
                    "GATEWAY",
                    "KIND",
                    "LANE",
                    "PATIENT ID",
                    "ACQUIRED",
                    "DEVICE",
                    "E2E"
                )?;
                for i in items {
                    let state = match i.metadata.get("quarantine").and_then(|v| v.as_str()) {
                        Some(q) => format!("QUARANTINED: {q}"),
                        None => meta(&i, yilian_protocol::kind::keys::ECG),
                    };
                    writeln!(
                        out,
                        "{:<25} {:<24} {:<8} {:<8} {:<16} {:<25} {:<14} {:>8.1}s  {}",
                        site.clock.reformat(&i.received_at),
                        i.gateway,
                        i.kind,
                        i.lane,
                        meta(&i, "patient_id"),
                        meta(&i, "acquired"),
                        meta(&i, "device"),
                        i.end_to_end_ms.max(0) as f64 / 1000.0,
                        state
                    )?;
                }
            } else if json {
                for item in items {
                    writeln!(out, "{}", serde_json::to_string(&item)?)?;
                }
            } else {
                writeln!(
                    out,
                    "{:<24} {:<8} {:<9} {:>12}  {:<16}  {:<24} RECEIVED",
                    "GATEWAY", "KIND", "LANE", "SIZE", "SHA256", "SOURCE"
                )?;
                for i in items {
                    writeln!(
                        out,
                        "{:<24} {:<8} {:<9} {:>12}  {:<16}  {:<24} {}",
                        i.gateway,
                        i.kind,
                        i.lane,
                        i.size,
                        &i.sha256[..16.min(i.sha256.len())],
                        i.source,
                        site.clock.reformat(&i.received_at)
                    )?;
                }
            }
            Ok(())
        }
        Command::Outbox {
            store: StoreArgs {
                config,
                data_dir: dir,
            },
            json,
            requeue,
        } => {
            let dir = data_dir(&config, dir)?;
            if let Some(id) = requeue {
                let store = dir.open()?;
                anyhow::ensure!(store.outbox_requeue(id)?, "delivery {id} is not parked");
                println!("delivery {id} is back in line");
                return Ok(());
            }
            let store = dir.open_read_only()?;
            let mut out = std::io::stdout().lock();
            let rows = store.outbox_list(None)?;
            if !json && rows.is_empty() {
                let configured = CentralConfig::load(&config).ok().map(|c| {
                    [
                        c.lis.as_ref().map(|_| "LIS"),
                        c.pacs.as_ref().map(|_| "PACS"),
                        c.ecg.as_ref().map(|_| "ECG import directory"),
                    ]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                });
                match configured {
                    Some(d) if d.is_empty() => writeln!(
                        out,
                        "no downstream system is configured ([lis], [pacs] or [ecg] in {}): central keeps what it receives and forwards nothing",
                        config.display()
                    )?,
                    Some(d) => writeln!(out, "nothing waiting for the {}", d.join(", "))?,
                    None => writeln!(out, "nothing waiting")?,
                }
                return Ok(());
            }
            for row in rows {
                if json {
                    writeln!(out, "{}", serde_json::to_string(&row)?)?;
                } else {
                    writeln!(
                        out,
                        "{:>6}  {:<5} {:<24} {:<6} {:<9} attempts {:>3}  {}",
                        row.id,
                        row.destination,
                        row.gateway,
                        row.kind,
                        row.state,
                        row.attempts,
                        row.last_error.as_deref().unwrap_or("")
                    )?;
                }
            }
            Ok(())
        }
        Command::Worklist {
            store: StoreArgs {
                config,
                data_dir: dir,
            },
            clinic,
            import,
        } => {
            let dir = data_dir(&config, dir)?;
            anyhow::ensure!(
                clinic.split('/').count() == 2 && !clinic.split('/').any(str::is_empty),
                "--clinic is COUNTY/CLINIC, got {clinic:?}"
            );
            let mut out = std::io::stdout().lock();
            if let Some(file) = import {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let values: Vec<serde_json::Value> =
                    serde_json::from_str(&text).with_context(|| {
                        format!("{} is not a JSON array of entries", file.display())
                    })?;
                let (mut upserts, mut removals) = (Vec::new(), Vec::new());
                for (i, v) in values.into_iter().enumerate() {
                    let status = v["status"].as_str().unwrap_or("scheduled").to_owned();
                    let entry: yilian_protocol::messages::WorklistEntry =
                        serde_json::from_value(v).with_context(|| format!("entry {i}"))?;
                    anyhow::ensure!(
                        !entry.accession_number.is_empty(),
                        "entry {i} has no accession_number"
                    );
                    match status.as_str() {
                        "completed" | "cancelled" | "discontinued" => {
                            removals.push(entry.accession_number)
                        }
                        _ => upserts.push(entry),
                    }
                }
                let store = dir.open()?;
                store.worklist_update(&clinic, &upserts, &removals)?;
                writeln!(
                    out,
                    "{clinic}: {} scheduled step(s) added or updated, {} removed",
                    upserts.len(),
                    removals.len()
                )?;
            }
            let store = dir.open_read_only()?;
            let (version, entries) = store.worklist(&clinic)?;
            writeln!(
                out,
                "{clinic} worklist version {version}, {} entr(ies)",
                entries.len()
            )?;
            for e in entries {
                writeln!(
                    out,
                    "  {:<16} {:<16} {:<24} {:<4} {} {}",
                    e.accession_number,
                    e.patient_id,
                    e.patient_name,
                    e.modality,
                    e.scheduled_start_date,
                    e.scheduled_station_ae_title
                )?;
            }
            Ok(())
        }
        Command::Studies {
            store: StoreArgs {
                config,
                data_dir: dir,
            },
            gateway,
            quiet,
            json,
        } => {
            let site = Site::of(&config);
            let dir = data_dir(&config, dir)?;
            let store = dir.open_read_only()?;
            let studies = store.studies(gateway.as_deref(), quiet.as_millis() as i64)?;
            let pacs = site.has_pacs().unwrap_or(true);
            let mut out = std::io::stdout().lock();
            if json {
                for s in studies {
                    writeln!(out, "{}", serde_json::to_string(&s)?)?;
                }
                return Ok(());
            }
            writeln!(
                out,
                "{:<24} {:<14} {:<14} {:<8} {:>6} {:>9} {:>9}  {:<25} STATE",
                "GATEWAY",
                "ACCESSION",
                "PATIENT ID",
                "MODALITY",
                "SERIES",
                "INSTANCES",
                "IN PACS",
                "LAST RECEIVED"
            )?;
            for s in studies {
                let state = match (s.complete, s.refused_by_pacs) {
                    (_, n) if n > 0 => format!("{n} REFUSED by the PACS (yilian-central outbox)"),
                    (true, _) if pacs && s.forwarded == s.instances => {
                        "complete, in the PACS".to_owned()
                    }
                    (true, _) if pacs => "complete, forwarding to the PACS".to_owned(),
                    (true, _) => "complete (no PACS configured)".to_owned(),
                    (false, _) => "receiving".to_owned(),
                };
                let in_pacs = if pacs {
                    s.forwarded.to_string()
                } else {
                    "-".to_owned()
                };
                writeln!(
                    out,
                    "{:<24} {:<14} {:<14} {:<8} {:>6} {:>9} {:>9}  {:<25} {}",
                    s.gateway,
                    s.accession,
                    s.patient_id,
                    s.modalities,
                    s.series,
                    s.instances,
                    in_pacs,
                    site.clock.reformat(&s.last_at),
                    state
                )?;
            }
            Ok(())
        }
        Command::Reports {
            store: StoreArgs {
                config,
                data_dir: dir,
            },
            unmatched,
            assign,
            gateway,
            limit,
            json,
        } => {
            let site = Site::of(&config);
            let dir = data_dir(&config, dir)?;
            if let Some(id) = assign {
                let Some(gateway) = gateway else {
                    anyhow::bail!("say which box gets report {id}: --gateway COUNTY/CLINIC/BOX");
                };
                yilian_protocol::BoxIdentity::parse(&gateway)
                    .map_err(|e| anyhow::anyhow!("{gateway:?} is not a box identity: {e}"))?;
                let store = dir.open()?;
                let actor = std::env::var("SUDO_USER")
                    .or_else(|_| std::env::var("USER"))
                    .unwrap_or_else(|_| "operator".into());
                anyhow::ensure!(
                    store.report_assign(&id, &gateway, &actor)?,
                    "there is no report {id} (see `yilian-central reports`)"
                );
                println!("report {id} goes to {gateway} with its next connection");
                return Ok(());
            }
            let store = dir.open_read_only()?;
            let rows = store.reports(unmatched, limit)?;
            let mut out = std::io::stdout().lock();
            if json {
                for r in rows {
                    writeln!(out, "{}", serde_json::to_string(&r)?)?;
                }
                return Ok(());
            }
            if rows.is_empty() {
                writeln!(
                    out,
                    "{}",
                    if unmatched {
                        "no report is waiting to be assigned"
                    } else {
                        "no reports yet"
                    }
                )?;
                return Ok(());
            }
            writeln!(
                out,
                "{:<26} {:<25} {:<9} {:<10} {:<14} {:<28} STATE",
                "REPORT", "RECEIVED", "STATUS", "KIND", "PATIENT ID", "CLINIC BOX"
            )?;
            for r in rows {
                let status = match (r.status.as_str(), r.urgent) {
                    ("C", _) => "corrected",
                    ("P", _) => "prelim",
                    (_, true) => "final STAT",
                    _ => "final",
                };
                let state = match (&r.gateway, r.at_box_ms, r.receipts.is_empty()) {
                    (None, _, _) => format!(
                        "UNMATCHED: {} (assign with --assign {} --gateway COUNTY/CLINIC/BOX)",
                        r.unmatched_reason.as_deref().unwrap_or(""),
                        r.id
                    ),
                    (Some(_), None, _) => "waiting for the box".to_owned(),
                    (Some(_), Some(at), true) => {
                        format!("at the box since {}", site.clock.format_ms(at))
                    }
                    (Some(_), Some(_), false) => r.receipts.join(", "),
                };
                writeln!(
                    out,
                    "{:<26} {:<25} {:<9} {:<10} {:<14} {:<28} {}",
                    r.id,
                    site.clock.format_ms(r.received_ms),
                    status,
                    r.kind,
                    r.patient_id,
                    r.gateway.as_deref().unwrap_or("-"),
                    state
                )?;
            }
            Ok(())
        }
        Command::Gateways {
            store: StoreArgs {
                config,
                data_dir: dir,
            },
            json,
        } => {
            let site = Site::of(&config);
            let dir = data_dir(&config, dir)?;
            let store = dir.open_read_only()?;
            let mut out = std::io::stdout().lock();
            for g in store.gateways()? {
                if json {
                    writeln!(out, "{}", serde_json::to_string(&g)?)?;
                } else {
                    writeln!(
                        out,
                        "{:<32} last seen {}, software {}",
                        g.identity,
                        site.clock.format_ms(g.last_seen_ms),
                        g.software_version
                    )?;
                }
            }
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
}
