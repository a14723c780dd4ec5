//! `yilian-provision`: the county admin's command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;
use time::OffsetDateTime;
use yilian_link::TlsFiles;
use yilian_pki::FleetCa;
use yilian_pki::ca::write_cert_files;
use yilian_protocol::BoxIdentity;

#[derive(Parser)]
#[command(
    name = "yilian-provision",
    version,
    about = "Fleet CA, enrollment tokens and fleet management for Yilian"
)]
struct Cli {
    /// `host:port` of central, for fleet commands.
    #[arg(long, global = true, env = "YILIAN_CENTRAL")]
    central: Option<String>,
    /// Directory with this administrator's admin.pem, admin.key and the
    /// fleet ca.pem (`cert issue --admin-name NAME --out DIR`).
    #[arg(
        long,
        global = true,
        env = "YILIAN_ADMIN",
        default_value = "/etc/yilian/admin"
    )]
    admin: PathBuf,
    /// Name in central's certificate; defaults to the host of --central.
    #[arg(long, global = true)]
    server_name: Option<String>,
    /// The zone times are shown in (`+08:00`, China Standard Time, unless
    /// told otherwise).
    #[arg(
        long,
        global = true,
        env = "YILIAN_UTC_OFFSET",
        default_value = "+08:00"
    )]
    utc_offset: String,
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
    /// Certificates for gateways, central and administrators.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Single-use enrollment tokens (minted by central).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// An offline enrollment bundle for a USB stick: token, fleet CA and
    /// optionally the box's initial gateway.toml, in DIR/yilian-bundle.
    Bundle {
        #[arg(long)]
        gateway: String,
        #[arg(long)]
        out: PathBuf,
        /// The box's initial configuration.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The gateway's Debian package, for a clinic with no usable
        /// internet: the stick that enrolls the box installs it too.
        #[arg(long)]
        package: Option<PathBuf>,
        #[arg(long, default_value = "30days", value_parser = humantime::parse_duration)]
        expires: Duration,
        /// The PIN (4 to 12 digits) that unlocks the actions on the box's
        /// page; the box keeps it with its identity at enrollment.
        #[arg(long)]
        pin: Option<String>,
    },
    /// Every box central knows.
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// Cut a box off at once: central refuses its handshakes and uploads.
    Revoke {
        gateway: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Take a box out of service on purpose (clinic closed, box stored
    /// away): it is no longer watched, so it does not page as silent. It
    /// keeps its certificate and may still connect to drain. `--undo`
    /// watches it again.
    Retire {
        gateway: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long)]
        undo: bool,
    },
    /// Gateway configuration published centrally.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Who changed what in the fleet, and when.
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint a token bound to COUNTY/CLINIC/BOX.
    Create {
        #[arg(long)]
        gateway: String,
        #[arg(long, default_value = "72h", value_parser = humantime::parse_duration)]
        expires: Duration,
        /// Also print it as a QR code, for a phone.
        #[arg(long)]
        qr: bool,
    },
}

#[derive(Subcommand)]
enum FleetCommand {
    /// One line per box.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Everything about one box, with its history.
    Show {
        gateway: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Publish FILE (device sections, uplink tuning) for a county, a clinic
    /// or a box; the most specific one applies.
    Set { scope: String, file: PathBuf },
    /// Print what is published for exactly SCOPE.
    Get { scope: String },
    /// Every published configuration: scope, version, when and by whom.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Withdraw what is published for SCOPE; its boxes fall back to the
    /// next broader scope's configuration, or to their own file.
    Unset { scope: String },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create an issuing CA (issuing.pem, issuing.key) signed by the root
    /// in --root, for central's [enrollment]; the root key can then go back
    /// offline.
    Issuing {
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "Yilian issuing CA")]
        name: String,
        #[arg(long, default_value = "2years", value_parser = humantime::parse_duration)]
        lifetime: Duration,
    },
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
    /// Issue a certificate for one subject: a box (--gateway), central
    /// (--central-host) or an administrator (--admin-name).
    #[command(group(clap::ArgGroup::new("subject").required(true)))]
    Issue {
        /// Directory holding the fleet CA.
        #[arg(long)]
        ca: PathBuf,
        /// A box's fixed certificate, COUNTY/CLINIC/BOX (boxes normally
        /// enroll with a token instead).
        #[arg(long, group = "subject")]
        gateway: Option<String>,
        /// Central's certificate, for this host name or IP address.
        #[arg(long = "central-host", group = "subject")]
        central_host: Option<String>,
        /// An administrator's certificate (`yilian-admin://NAME`) for fleet
        /// commands.
        #[arg(long = "admin-name", group = "subject")]
        admin_name: Option<String>,
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
    let clock = yilian_gateway_config::units::Offset::try_from(cli.utc_offset.clone())
        .map(|o| yilian_gateway_config::clock::Clock::new(o.0))
        .map_err(|e| anyhow::anyhow!("--utc-offset: {e}"))?;
    let session = Session {
        central: cli.central.clone(),
        admin: cli.admin.clone(),
        server_name: cli.server_name.clone(),
    };
    match cli.command {
        Command::Ca {
            command:
                CaCommand::Issuing {
                    root,
                    out,
                    name,
                    lifetime,
                },
        } => {
            let root_ca = FleetCa::load(&root)?;
            let issued = root_ca.issue_issuing_ca(&name, lifetime)?;
            write_cert_files(&out, "issuing", &issued, root_ca.cert_pem())?;
            println!(
                "wrote {0}/issuing.pem and {0}/issuing.key for central's [enrollment]; \
                 the root key in {1} can go back offline",
                out.display(),
                root.display()
            );
        }
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
                    central_host,
                    admin_name,
                    out,
                    lifetime,
                },
        } => {
            let ca = FleetCa::load(&ca)?;
            let (name, mut issued) = match (gateway, central_host, admin_name) {
                (Some(id), _, _) => {
                    let id = BoxIdentity::parse(&id)?;
                    (
                        "gateway",
                        ca.issue_gateway(&id, OffsetDateTime::now_utc(), lifetime)?,
                    )
                }
                (None, Some(host), _) => ("central", ca.issue_central(&host, lifetime)?),
                (None, None, Some(admin)) => ("admin", ca.issue_admin(&admin, lifetime)?),
                (None, None, None) => anyhow::bail!(
                    "give --gateway COUNTY/CLINIC/BOX, --central-host HOSTNAME or --admin-name NAME"
                ),
            };
            if name == "central" {
                // Central presents the fleet CA too: a box enrolling has
                // only the CA's fingerprint from its token to check it by.
                issued.cert_pem.push_str(ca.cert_pem());
            }
            write_cert_files(&out, name, &issued, ca.cert_pem())?;
            println!(
                "wrote {0}/{name}.pem, {0}/{name}.key and {0}/ca.pem",
                out.display()
            );
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    gateway,
                    expires,
                    qr,
                },
        } => {
            let v = session.call(
                "token.create",
                json!({ "gateway": gateway, "expires_seconds": expires.as_secs(), "central": session.central }),
            )?;
            let token = v["token"].as_str().unwrap_or_default();
            println!("{token}");
            eprintln!(
                "for {}, single use, expires {}; fleet CA SHA-256 {}",
                v["gateway"].as_str().unwrap_or_default(),
                v["expires"].as_str().unwrap_or_default(),
                v["ca_sha256"].as_str().unwrap_or_default()
            );
            eprintln!("on the box: yilian-gateway enroll --token {token}");
            if qr {
                let code = qrcode::QrCode::new(token.as_bytes())?;
                println!(
                    "{}",
                    code.render::<qrcode::render::unicode::Dense1x2>()
                        .quiet_zone(true)
                        .build()
                );
            }
        }
        Command::Bundle {
            gateway,
            out,
            config,
            package,
            expires,
            pin,
        } => {
            // Checked before a token is spent on a stick that cannot work.
            let page = yilian_gateway_config::schema::PageSection {
                pin: pin.clone(),
                ..Default::default()
            };
            if let Some(problem) = page.pin_problem() {
                anyhow::bail!("--pin: {problem}");
            }
            let package = package
                .map(|p| -> anyhow::Result<(PathBuf, String)> {
                    let name = p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .filter(|n| n.starts_with("yilian-gateway_") && n.ends_with(".deb"))
                        .ok_or_else(|| {
                            anyhow::anyhow!("{} is not a yilian-gateway_*.deb package", p.display())
                        })?;
                    anyhow::ensure!(p.is_file(), "{} does not exist", p.display());
                    Ok((p, name))
                })
                .transpose()?;
            let initial = config
                .map(|p| {
                    std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
                })
                .transpose()?;
            let v = session.call(
                "token.create",
                json!({ "gateway": gateway, "expires_seconds": expires.as_secs(), "central": session.central }),
            )?;
            let dir = out.join("yilian-bundle");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let ca = std::fs::read_to_string(session.admin.join("ca.pem"))
                .context("reading the fleet CA beside the admin certificate")?;
            std::fs::write(dir.join("token"), v["token"].as_str().unwrap_or_default())?;
            std::fs::write(dir.join("ca.pem"), ca)?;
            if let Some(text) = initial {
                std::fs::write(dir.join("gateway.toml"), text)?;
            }
            if let Some(p) = &pin {
                std::fs::write(dir.join("page-pin"), p)?;
                std::fs::set_permissions(
                    dir.join("page-pin"),
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )?;
            }
            if let Some((p, name)) = &package {
                std::fs::copy(p, dir.join(name))
                    .with_context(|| format!("copying {} onto the stick", p.display()))?;
                let install = format!(
                    "#!/bin/sh\n# Installs the gateway from this stick and enrolls the box; run as root.\nset -e\ncd \"$(dirname \"$0\")\"\napt-get install -y ./{name}\nyilian-gateway enroll --bundle \"$PWD\"\nsystemctl start yilian-gateway\nsystemctl --no-pager status yilian-gateway | head -n 5\n"
                );
                std::fs::write(dir.join("install.sh"), install)?;
                std::fs::set_permissions(
                    dir.join("install.sh"),
                    std::os::unix::fs::PermissionsExt::from_mode(0o755),
                )?;
            }
            println!(
                "wrote {} for {} (expires {}); the box enrolls from it at first boot, \
                 or with `yilian-gateway enroll --bundle DIR`",
                dir.display(),
                v["gateway"].as_str().unwrap_or_default(),
                v["expires"].as_str().unwrap_or_default()
            );
            if package.is_some() {
                println!(
                    "with the gateway package: on the box, as root, `sh {}/install.sh` installs, enrolls and starts it",
                    dir.display()
                );
            }
        }
        Command::Fleet {
            command: FleetCommand::List { json },
        } => {
            let v = session.call("fleet.list", json!({}))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", yilian_provision::render::fleet_table(&v, now_secs()));
            }
        }
        Command::Fleet {
            command: FleetCommand::Show { gateway, json },
        } => {
            let v = session.call("fleet.show", json!({ "gateway": gateway }))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!(
                    "{}",
                    yilian_provision::render::fleet_show(&v, &clock, now_secs())
                );
            }
        }
        Command::Revoke { gateway, reason } => {
            let v = session.call("revoke", json!({ "gateway": gateway, "reason": reason }))?;
            println!(
                "{} revoked{}",
                v["gateway"].as_str().unwrap_or_default(),
                if v["was_connected"].as_bool() == Some(true) {
                    "; its connection was closed"
                } else {
                    ""
                }
            );
        }
        Command::Retire {
            gateway,
            reason,
            undo,
        } => {
            let v = session.call(
                "retire",
                json!({ "gateway": gateway, "reason": reason, "undo": undo }),
            )?;
            if undo {
                println!(
                    "{} is watched again",
                    v["gateway"].as_str().unwrap_or_default()
                );
            } else {
                println!(
                    "{} retired: no longer watched or alerted on; it may still connect and drain",
                    v["gateway"].as_str().unwrap_or_default()
                );
            }
        }
        Command::Config {
            command: ConfigCommand::Set { scope, file },
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            // The box's own checks, here first: a typo is named with its
            // line before anything goes anywhere.
            let name = file.display().to_string();
            yilian_gateway_config::fragment::check(&text, &name)?;
            let v = session.call(
                "config.set",
                json!({ "scope": scope, "toml": text, "name": name }),
            )?;
            println!(
                "published version {} for {}; boxes apply it at their next heartbeat and report it in `fleet list`",
                v["version"].as_str().unwrap_or_default(),
                v["scope"].as_str().unwrap_or_default()
            );
        }
        Command::Config {
            command: ConfigCommand::Get { scope },
        } => {
            let v = session.call("config.get", json!({ "scope": scope }))?;
            println!(
                "# {} version {}, set {} by {}",
                v["scope"].as_str().unwrap_or_default(),
                v["version"].as_str().unwrap_or_default(),
                v["set_at"].as_str().unwrap_or_default(),
                v["set_by"].as_str().unwrap_or_default()
            );
            print!("{}", v["toml"].as_str().unwrap_or_default());
        }
        Command::Config {
            command: ConfigCommand::List { json },
        } => {
            let v = session.call("config.list", json!({}))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{:<28} {:<18} {:<27} SET BY", "SCOPE", "VERSION", "SET AT");
                for c in v.as_array().into_iter().flatten() {
                    println!(
                        "{:<28} {:<18} {:<27} {}",
                        c["scope"].as_str().unwrap_or_default(),
                        c["version"].as_str().unwrap_or_default(),
                        c["set_at"].as_str().unwrap_or_default(),
                        c["set_by"].as_str().unwrap_or_default()
                    );
                }
            }
        }
        Command::Config {
            command: ConfigCommand::Unset { scope },
        } => {
            let v = session.call("config.unset", json!({ "scope": scope }))?;
            println!(
                "withdrew version {} for {}; its boxes go back to the next broader configuration, or their own file",
                v["version"].as_str().unwrap_or_default(),
                v["scope"].as_str().unwrap_or_default()
            );
        }
        Command::Audit { limit, json } => {
            let v = session.call("audit", json!({ "limit": limit }))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for a in v.as_array().into_iter().flatten() {
                    println!(
                        "{}  {:<24} {:<14} {:<28} {}",
                        clock.reformat(a["at"].as_str().unwrap_or_default()),
                        a["actor"].as_str().unwrap_or_default(),
                        a["action"].as_str().unwrap_or_default(),
                        a["target"].as_str().unwrap_or_default(),
                        a["detail"].as_str().unwrap_or_default()
                    );
                }
            }
        }
    }
    Ok(())
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Where and as whom fleet commands go.
struct Session {
    central: Option<String>,
    admin: PathBuf,
    server_name: Option<String>,
}

impl Session {
    fn call(&self, command: &str, args: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        let central = self
            .central
            .clone()
            .context("give --central HOST:PORT (or set YILIAN_CENTRAL)")?;
        let files = TlsFiles {
            ca: self.admin.join("ca.pem"),
            cert: self.admin.join("admin.pem"),
            key: self.admin.join("admin.key"),
        };
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| yilian_link::request::host_of(&central));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(yilian_link::request::admin(
            &central, &name, &files, command, args,
        ))
        .with_context(|| format!("{command} at {central}"))
    }
}
