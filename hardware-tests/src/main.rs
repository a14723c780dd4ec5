//! `yilian-rig`: the bench's command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "yilian-rig", version, about = "Yilian bench: demo, benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Central + gateway on loopback with fresh certificates; sample files
    /// through the drop folder; prints what arrived and where the metrics are.
    Demo {
        /// Keep everything here instead of a temporary directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Exit once the samples arrived instead of running until Ctrl-C.
        #[arg(long)]
        exit: bool,
    },
    /// Run the benchmarks and print a table of figures beside their anchors.
    Bench {
        /// Total MiB for the upload benchmark.
        #[arg(long, default_value_t = 1024)]
        upload_mib: u64,
        /// Size of each uploaded item in MiB.
        #[arg(long, default_value_t = 64)]
        file_mib: u64,
        /// CT images per round in the DICOM ingest benchmark, shared among
        /// the associations.
        #[arg(long, default_value_t = 400)]
        ingest_images: usize,
        /// Also write the table as Markdown here.
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// Write the report (bench.md and SVG charts) into this directory.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Run only these groups (spool, hl7, upload, dicom, large, link).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Shorter link scenarios (30 s outage in a 256 MiB backlog, 10 s
        /// goodput runs on two profiles) instead of the full ones (5 min
        /// outage in 2 GiB, 30 s runs on three profiles).
        #[arg(long)]
        quick: bool,
        /// Link profiles for the goodput comparison (named or TOML files).
        #[arg(long, value_delimiter = ',')]
        profiles: Vec<String>,
        /// Link scenarios to run: goodput, urgent, sharing, reports, outage.
        #[arg(long, value_delimiter = ',')]
        scenarios: Vec<String>,
    },
    /// Many simulated boxes (real QUIC, mutual TLS, the real upload
    /// protocol) against real central processes: ingest on the embedded
    /// backend and on PostgreSQL + Garage, and the failover of every box
    /// of a SIGKILLed instance.
    Swarm {
        /// Boxes connected.
        #[arg(long, default_value_t = 1000)]
        boxes: usize,
        /// Of them, how many upload at once.
        #[arg(long, default_value_t = 100)]
        uploading: usize,
        /// Items each uploading box sends.
        #[arg(long, default_value_t = 4)]
        items: usize,
        /// Size of each item in MiB.
        #[arg(long, default_value_t = 4)]
        item_mib: usize,
        /// Also write the table as Markdown here.
        #[arg(long)]
        markdown: Option<PathBuf>,
    },
    /// One end of a plain flow that measures an emulated link (run inside
    /// its namespaces by the bench; prints one JSON line).
    Probe {
        #[command(subcommand)]
        probe: Probe,
    },
}

#[derive(Subcommand)]
enum Probe {
    /// Accept one TCP connection, read it to the end, answer the count.
    TcpSink {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Send this many bytes over TCP; print goodput once the sink confirms.
    TcpSend {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        bytes: u64,
    },
    /// Count and echo datagrams until killed.
    UdpSink {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Send numbered datagrams; print loss, round trips and received rate.
    UdpSend {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 1200)]
        size: usize,
        /// Datagrams per second; 0 floods.
        #[arg(long, default_value_t = 0.0)]
        pps: f64,
    },
}

fn run_probe(probe: Probe) -> anyhow::Result<()> {
    use yilian_rig::wan::probe;
    match probe {
        Probe::TcpSink { listen } => probe::tcp_sink(listen),
        Probe::TcpSend { to, bytes } => {
            println!("{}", serde_json::to_string(&probe::tcp_send(to, bytes)?)?);
            Ok(())
        }
        Probe::UdpSink { listen } => probe::udp_sink(listen),
        Probe::UdpSend {
            to,
            count,
            size,
            pps,
        } => {
            println!(
                "{}",
                serde_json::to_string(&probe::udp_send(to, count, size, pps)?)?
            );
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Probe { probe } = cli.command {
        // Plain blocking sockets: no runtime, nothing else in the process.
        return match run_probe(probe) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("yilian-rig probe: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if !matches!(cli.command, Command::Bench { .. }) || std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_writer(std::io::stderr)
            .init();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("yilian-rig: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Demo { dir, exit } => {
                yilian_rig::demo::run(yilian_rig::demo::DemoOptions { dir, exit }).await
            }
            Command::Bench {
                upload_mib,
                file_mib,
                ingest_images,
                markdown,
                report: report_dir,
                only,
                quick,
                profiles,
                scenarios,
            } => {
                let mut link = if quick {
                    yilian_rig::bench_link::LinkOptions::quick()
                } else {
                    yilian_rig::bench_link::LinkOptions::full()
                };
                if !profiles.is_empty() {
                    link.profiles = profiles;
                }
                if !scenarios.is_empty() {
                    link.scenarios = scenarios;
                }
                let report = yilian_rig::bench::run(yilian_rig::bench::BenchOptions {
                    upload_mib,
                    file_mib,
                    ingest_images,
                    only,
                    link,
                })
                .await?;
                if let Some(path) = markdown {
                    std::fs::write(path, report.markdown())?;
                }
                if let Some(dir) = report_dir {
                    yilian_rig::bench_link::write_report(&report, &dir)?;
                }
                Ok(())
            }
            Command::Swarm {
                boxes,
                uploading,
                items,
                item_mib,
                markdown,
            } => {
                let dir = tempfile::Builder::new().prefix("yilian-swarm-").tempdir()?;
                let report = yilian_rig::swarm::run(
                    dir.path(),
                    yilian_rig::swarm::SwarmOptions {
                        boxes,
                        uploading: uploading.min(boxes),
                        items,
                        item_bytes: item_mib * 1024 * 1024,
                    },
                )
                .await?;
                print!("{}", report.markdown());
                if let Some(path) = markdown {
                    std::fs::write(path, report.markdown())?;
                }
                Ok(())
            }
            Command::Probe { .. } => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("yilian-rig: {e:#}");
            ExitCode::FAILURE
        }
    }
}
