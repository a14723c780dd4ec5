//! `yilian-provision`: the county admin's command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use time::OffsetDateTime;
use yilian_protocol::BoxIdentity;
use yilian_provision::FleetCa;
use yilian_provision::ca::write_cert_files;

#[derive(Parser)]
#[command(
    name = "yilian-provision",
    version,
    about = "Fleet CA and box certificates for Yilian"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The fleet certificate authority.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Certificates for gateways and central.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create the fleet CA (ca.pem, ca.key) in DIR. Keep ca.key offline.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "Yilian fleet CA")]
        name: String,
        /// Lifetime, e.g. "10years".
        #[arg(long, default_value = "10years", value_parser = humantime::parse_duration)]
        lifetime: Duration,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Issue a certificate: --gateway COUNTY/CLINIC/BOX, or --central HOSTNAME.
    Issue {
        /// Directory holding the fleet CA.
        #[arg(long)]
        ca: PathBuf,
        #[arg(long, conflicts_with = "central", required_unless_present = "central")]
        gateway: Option<String>,
        #[arg(long)]
        central: Option<String>,
        /// Where to write NAME.pem, NAME.key and ca.pem.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "90days", value_parser = humantime::parse_duration)]
        lifetime: Duration,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("yilian-provision: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Ca {
            command:
                CaCommand::Init {
                    dir,
                    name,
                    lifetime,
                },
        } => {
            FleetCa::init(&dir, &name, lifetime)?;
            println!("fleet CA created in {}; keep ca.key offline", dir.display());
        }
        Command::Cert {
            command:
                CertCommand::Issue {
                    ca,
                    gateway,
                    central,
                    out,
                    lifetime,
                },
        } => {
            let ca = FleetCa::load(&ca)?;
            let (name, issued) = match (gateway, central) {
                (Some(id), _) => {
                    let id = BoxIdentity::parse(&id)?;
                    (
                        "gateway",
                        ca.issue_gateway(&id, OffsetDateTime::now_utc(), lifetime)?,
                    )
                }
                (None, Some(host)) => ("central", ca.issue_central(&host, lifetime)?),
                (None, None) => {
                    anyhow::bail!("give --gateway COUNTY/CLINIC/BOX or --central HOSTNAME")
                }
            };
            write_cert_files(&out, name, &issued, ca.cert_pem())?;
            println!(
                "wrote {0}/{name}.pem, {0}/{name}.key and {0}/ca.pem",
                out.display()
            );
        }
    }
    Ok(())
}
