//! `yilian-gateway`: run the box, show its status, handle dead letters.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use yilian_gateway::GatewayConfig;

#[derive(Parser)]
#[command(name = "yilian-gateway", version, about = "The Yilian clinic gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        #[arg(long, default_value = "/etc/yilian/gateway.toml")]
        config: PathBuf,
    },
    /// Enroll this box: make its key, get its certificate from central with
    /// a token from the county admin (or from an offline bundle).
    Enroll {
        #[arg(long, default_value = "/etc/yilian/gateway.toml")]
        config: PathBuf,
        /// `host:port` of central; defaults to the token's, then the
        /// configuration's.
        #[arg(long)]
        central: Option<String>,
        #[arg(long, required_unless_present = "bundle", conflicts_with = "bundle")]
        token: Option<String>,
        /// A directory written by `yilian-provision bundle` (a USB stick).
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// For a box without a configuration file: the state directory the
        /// identity and spool go under (default /var/lib/yilian).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// The PIN (4 to 12 digits) that unlocks the actions on the box's
        /// page, when the configuration sets none.
        #[arg(long)]
        pin: Option<String>,
    },
    /// Check a configuration file and exit.
    CheckConfig {
        #[arg(long, default_value = "/etc/yilian/gateway.toml")]
        config: PathBuf,
        /// Check the file only, not this machine (folders, serial ports,
        /// certificate files): for a configuration written for another box
        /// or rendered into an image.
        #[arg(long)]
        file_only: bool,
    },
    /// Link state, backlog per lane, recent items.
    Status {
        #[arg(long, default_value = "/etc/yilian/gateway.toml")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
        /// How many recent items to list.
        #[arg(long, default_value_t = 10)]
        recent: u32,
    },
    /// Items set aside after repeated rejection by central.
    DeadLetters {
        #[arg(long, default_value = "/etc/yilian/gateway.toml")]
        config: PathBuf,
        /// Put this item back in its lane.
        #[arg(long)]
        requeue: Option<i64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    yilian_gateway::service::init_logging("info,quinn=warn");
    // A flood of connections from the clinic LAN must not take the
    // process's last descriptors.
    yilian_gateway::governor::raise_descriptor_limit();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("yilian-gateway: {e:#}");
            if yilian_gateway::needs_a_person(&e) {
                ExitCode::from(yilian_gateway::EX_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(run_gateway(config))
        }
        Command::Enroll {
            config,
            central,
            token,
            bundle,
            state_dir,
            pin,
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let e = rt.block_on(yilian_gateway::enrollment::enroll_command(
                yilian_gateway::enrollment::EnrollOptions {
                    config_path: &config,
                    central: central.as_deref(),
                    state_dir: state_dir.as_deref(),
                    pin: pin.as_deref(),
                },
                token.as_deref(),
                bundle.as_deref(),
            ))?;
            let loaded = GatewayConfig::load(&config).ok();
            let clock = loaded
                .as_ref()
                .map(yilian_gateway::clock::Clock::of)
                .unwrap_or_default();
            let lang = yilian_gateway::i18n::cli_language(
                loaded.map(|c| c.page.language).unwrap_or_default(),
            );
            let c = yilian_gateway::i18n::Catalog::get();
            println!(
                "{}",
                c.t_args(
                    lang,
                    "enroll-done",
                    &[
                        ("identity", e.installed.identity.as_str().into()),
                        ("central", e.central.as_str().into()),
                        ("until", clock.format_secs(e.installed.not_after).into()),
                    ]
                )
            );
            println!(
                "{}",
                c.t_args(
                    lang,
                    "enroll-identity",
                    &[("dir", e.identity_dir.display().to_string().into())]
                )
            );
            if let Some(path) = e.wrote_config {
                println!(
                    "{}",
                    c.t_args(
                        lang,
                        "enroll-wrote-config",
                        &[("path", path.display().to_string().into())]
                    )
                );
            }
            if e.pin_set {
                println!("{}", c.t(lang, "enroll-pin-set"));
            }
            println!("{}", c.t(lang, "enroll-next"));
            Ok(())
        }
        Command::CheckConfig { config, file_only } => {
            let c = GatewayConfig::load(&config)?;
            let lang = yilian_gateway::i18n::cli_language(c.page.language);
            let cat = yilian_gateway::i18n::Catalog::get();
            let problems = if file_only {
                Vec::new()
            } else {
                yilian_gateway::config::check_environment(&c, lang)
            };
            if !problems.is_empty() {
                for p in &problems {
                    eprintln!("{}", yilian_gateway::config::describe_problem(p, lang));
                }
                anyhow::bail!(
                    "{}",
                    cat.t_args(
                        lang,
                        "check-problems",
                        &[
                            ("count", (problems.len() as i64).into()),
                            ("path", config.display().to_string().into()),
                        ]
                    )
                );
            }
            let central = if c.uplink.central.is_empty() {
                cat.t(lang, "check-not-enrolled")
            } else {
                cat.t_args(
                    lang,
                    "check-central",
                    &[("central", c.uplink.central.as_str().into())],
                )
            };
            let devices =
                c.folder.len() + c.hl7.len() + c.astm.len() + c.dicom.len() + c.ecg_serial.len();
            println!(
                "{}",
                cat.t_args(
                    lang,
                    "check-valid",
                    &[
                        ("path", config.display().to_string().into()),
                        ("devices", (devices as i64).into()),
                        ("sinks", (c.report_sink.len() as i64).into()),
                        ("central", central.into()),
                    ]
                )
            );
            Ok(())
        }
        Command::Status {
            config,
            json,
            recent,
        } => {
            let config = GatewayConfig::load(&config)?;
            let report = yilian_gateway::status::collect(&config, recent)
                .with_context(|| format!("reading the spool in {}", config.spool.dir.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!(
                    "{}",
                    yilian_gateway::status::render(
                        &report,
                        yilian_gateway::now_ms(),
                        &yilian_gateway::clock::Clock::of(&config),
                        yilian_gateway::i18n::cli_language(config.page.language),
                    )
                );
            }
            Ok(())
        }
        Command::DeadLetters { config, requeue } => {
            let config = GatewayConfig::load(&config)?;
            if let Some(id) = requeue {
                if yilian_spool::requeue_in(&config.spool.dir, id)? {
                    println!("item {id} is back in its lane");
                } else {
                    anyhow::bail!("item {id} is not a dead letter");
                }
                return Ok(());
            }
            let (_, items) = yilian_spool::Spool::inspect(&config.spool.dir, u32::MAX)?;
            for i in items.iter().filter(|i| i.state == "dead") {
                println!(
                    "{:>6}  {:<22} {:<8} {:>10}  {}",
                    i.id,
                    i.source,
                    i.kind,
                    i.size,
                    i.last_error.as_deref().unwrap_or("")
                );
            }
            Ok(())
        }
    }
}

/// Runs until a shutdown signal, restarting with the new configuration when
/// central publishes one the box accepted. If the gateway cannot start with
/// it (a port taken, a device missing), the published part is refused and
/// the box's own configuration runs again.
async fn run_gateway(path: PathBuf) -> anyhow::Result<()> {
    yilian_gateway::enrollment::first_boot(&path).await?;
    if !path.exists() {
        return Err(yilian_gateway::NotConfigured(format!(
            "there is no configuration at {}: enroll this box first with `yilian-gateway enroll --token TOKEN` \
             (it writes one), or insert the USB stick with its yilian-bundle",
            path.display()
        ))
        .into());
    }
    let mut shutdown = Box::pin(shutdown_signal());
    loop {
        let (config, pushed) = yilian_gateway::pushed::load_effective(&path)?;
        let version = pushed.version();
        let running = match yilian_gateway::start(config).await {
            Ok(r) => r,
            Err(e) if !version.is_empty() => {
                tracing::error!(version = %version, error = %format!("{e:#}"),
                    "cannot start with the published configuration; going back to the box's own");
                pushed.refuse(
                    &version,
                    &format!("the gateway could not start with it: {e:#}"),
                );
                continue;
            }
            Err(e) => return Err(e),
        };
        pushed.mark_running();
        let reload = running.reload.clone();
        let reloading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = reloading.clone();
        yilian_gateway::service::supervise(&running, async {
            tokio::select! {
                _ = &mut shutdown => {}
                _ = reload.notified() => flag.store(true, std::sync::atomic::Ordering::SeqCst),
            }
        })
        .await;
        if reloading.load(std::sync::atomic::Ordering::SeqCst) {
            tracing::info!("restarting with the published configuration");
            running.shutdown().await;
            continue;
        }
        tracing::info!("shutting down");
        running.shutdown().await;
        return Ok(());
    }
}

async fn shutdown_signal() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
