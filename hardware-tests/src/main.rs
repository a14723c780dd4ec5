//! `yilian-rig`: the bench's command line.

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
        /// Also write the table as Markdown here.
        #[arg(long)]
        markdown: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Bench { .. }) || std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
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
                markdown,
            } => {
                let report = yilian_rig::bench::run(yilian_rig::bench::BenchOptions {
                    upload_mib,
                    file_mib,
                })
                .await?;
                if let Some(path) = markdown {
                    std::fs::write(path, report.markdown())?;
                }
                Ok(())
            }
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
