//! `yilian-gateway enroll`, and enrollment at first boot from an offline
//! bundle on a USB stick (`yilian-provision bundle`).
//!
//! A bundle is a directory named `yilian-bundle` holding `token` (the
//! enrollment token), `ca.pem` (the fleet CA, for a human to check against
//! the token's fingerprint) and optionally `gateway.toml` (the box's
//! initial configuration, used when the box has none yet) and the gateway
//! package to install.
//!
//! What enrollment leaves behind, in the identity directory
//! (`/var/lib/yilian/identity` unless `[identity] dir` says otherwise):
//!
//! ```text
//! gateway.key       the box's private key (0600), made here, never sent
//! gateway.pem       its certificate chain, replaced by every renewal
//! ca.pem            the fleet CA
//! enrollment.json   identity, central's address, when
//! ```
//!
//! The directory belongs to the service user, so renewals under the
//! service's sandbox (read-only `/etc`) persist. A box enrolled without a
//! configuration file gets a minimal one: central comes from the token,
//! devices are published from central.

use std::path::{Path, PathBuf};

use anyhow::Context;
use yilian_pki::token;

use crate::config::{GatewayConfig, IdentitySection, STATE_DIR};

/// Where a mounted USB stick's bundle is looked for at first boot.
const BUNDLE_GLOBS: &[&str] = &[
    "/media/*/yilian-bundle",
    "/media/*/*/yilian-bundle",
    "/run/media/*/*/yilian-bundle",
    "/mnt/yilian-bundle",
    "/mnt/*/yilian-bundle",
];

/// The service user the packages and the NixOS module create; the
/// identity is handed to it when `enroll` runs as root.
pub const SERVICE_USER: &str = "yilian-gateway";

pub use crate::config::record::{RECORD_FILE, Record};

/// Where `enroll` puts things when there is no configuration yet.
#[derive(Debug, Clone)]
pub struct EnrollOptions<'a> {
    pub config_path: &'a Path,
    pub central: Option<&'a str>,
    /// The state directory for a box without a configuration file
    /// (default `/var/lib/yilian`): the identity and spool go under it.
    pub state_dir: Option<&'a Path>,
    /// The PIN that unlocks the box page's actions, kept with the
    /// identity (the configuration file may be read-only, or published).
    pub pin: Option<&'a str>,
}

/// Where a PIN given at enrollment is kept, in the identity directory.
const PIN_FILE: &str = "page-pin";

/// The page PIN a county admin put on the stick (`yilian-provision
/// bundle --pin`).
fn bundle_pin(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(PIN_FILE))
        .ok()
        .map(|p| p.trim().to_owned())
}

/// The page PIN set at enrollment, if one was.
pub fn stored_pin(identity_dir: &Path) -> Option<String> {
    let pin = std::fs::read_to_string(identity_dir.join(PIN_FILE)).ok()?;
    let pin = pin.trim().to_owned();
    let section = yilian_gateway_config::schema::PageSection {
        pin: Some(pin.clone()),
        ..Default::default()
    };
    section.pin_problem().is_none().then_some(pin)
}

/// What `enroll` did, for the person at the box.
#[derive(Debug)]
pub struct Enrolled {
    pub installed: crate::certificate::Installed,
    pub identity_dir: PathBuf,
    /// The configuration file written, when the box had none.
    pub wrote_config: Option<PathBuf>,
    pub central: String,
    /// A page PIN was kept.
    pub pin_set: bool,
}

pub async fn enroll_command(
    opts: EnrollOptions<'_>,
    token_text: Option<&str>,
    bundle: Option<&Path>,
) -> anyhow::Result<Enrolled> {
    let token_text = match (token_text, bundle) {
        (Some(t), _) => t.trim().to_owned(),
        (None, Some(dir)) => adopt_bundle(dir, opts.config_path)?,
        (None, None) => anyhow::bail!("give --token TOKEN or --bundle DIR"),
    };
    let bundle_pin = bundle.and_then(bundle_pin);
    let opts = EnrollOptions {
        pin: opts.pin.or(bundle_pin.as_deref()),
        ..opts
    };
    enroll(&opts, &token_text).await
}

async fn enroll(opts: &EnrollOptions<'_>, token_text: &str) -> anyhow::Result<Enrolled> {
    if let Some(pin) = opts.pin {
        let section = yilian_gateway_config::schema::PageSection {
            pin: Some(pin.to_owned()),
            ..Default::default()
        };
        if let Some(problem) = section.pin_problem() {
            anyhow::bail!("--pin: {problem}");
        }
    }
    let claims = token::peek(token_text).context("reading the enrollment token")?;
    let config = if opts.config_path.exists() {
        Some(GatewayConfig::load(opts.config_path)?)
    } else {
        None
    };
    let central = opts
        .central
        .map(str::to_owned)
        .or(claims.central.clone())
        .or_else(|| {
            config
                .as_ref()
                .map(|c| c.uplink.central.clone())
                .filter(|c| !c.is_empty())
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the token names no central and no configuration does: give --central HOST:PORT"
            )
        })?;
    let state_dir = opts
        .state_dir
        .map_or_else(|| PathBuf::from(STATE_DIR), Path::to_owned);
    let (files, identity_dir, server_name) = match &config {
        Some(c) => (
            crate::config::tls_files(c),
            c.identity_dir(),
            c.uplink.server_name.clone(),
        ),
        None => {
            let identity = IdentitySection {
                dir: state_dir.join("identity"),
            };
            let files = yilian_link::TlsFiles {
                ca: identity.dir.join("ca.pem"),
                cert: identity.dir.join("gateway.pem"),
                key: identity.dir.join("gateway.key"),
            };
            (files, identity.dir, None)
        }
    };
    let installed =
        crate::certificate::enroll(&files, &central, server_name.as_deref(), token_text)
            .await
            .with_context(|| format!("enrolling as {} at {central}", claims.gateway))?;
    let record = Record {
        identity: installed.identity.clone(),
        central: central.clone(),
        enrolled_ms: crate::now_ms(),
        ca_sha256: claims.ca_sha256.clone(),
    };
    write_file(
        &identity_dir.join(RECORD_FILE),
        &serde_json::to_string_pretty(&record)?,
        0o644,
    )?;
    let wrote_config = match config {
        Some(_) => None,
        None => {
            write_minimal_config(opts.config_path, &record, opts.state_dir)?;
            Some(opts.config_path.to_owned())
        }
    };
    if let Some(pin) = opts.pin {
        write_file(&identity_dir.join(PIN_FILE), pin, 0o600)?;
    }
    hand_to_service_user(&identity_dir)?;
    Ok(Enrolled {
        installed,
        identity_dir,
        wrote_config,
        central,
        pin_set: opts.pin.is_some(),
    })
}

/// The configuration of a box that has nothing else: where central is;
/// devices come from central's published configuration.
fn write_minimal_config(
    path: &Path,
    record: &Record,
    state_dir: Option<&Path>,
) -> anyhow::Result<()> {
    let mut text = format!(
        "# Written by `yilian-gateway enroll` for {} on {}.\n\
         # Devices are published from central (`yilian-provision config set`);\n\
         # sections added here are kept under what central publishes.\n\
         # The box's key and certificate live in the state directory, not here.\n\n\
         [uplink]\ncentral = \"{}\"\n",
        record.identity,
        crate::clock::Clock::system().format_ms(record.enrolled_ms),
        record.central
    );
    if let Some(dir) = state_dir {
        let dir = dir
            .display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\"");
        text.push_str(&format!(
            "\n[spool]\ndir = \"{dir}/spool\"\n\n[identity]\ndir = \"{dir}/identity\"\n"
        ));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    write_file(path, &text, 0o644)
}

fn write_file(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    yilian_proof::disk::write_atomically(path, text.as_bytes(), mode)
        .with_context(|| format!("writing {}", path.display()))
}

/// Run as root (as a county admin does), enrollment leaves files the
/// service must be able to read and replace at every renewal: they go to
/// the owner of the state directory, or else to the service user.
fn hand_to_service_user(identity_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if rustix::process::geteuid().as_raw() != 0 {
        return Ok(());
    }
    let parent_owner = identity_dir
        .parent()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| (m.uid(), m.gid()))
        .filter(|(uid, _)| *uid != 0);
    let Some((uid, gid)) = parent_owner.or_else(|| lookup_user(SERVICE_USER)) else {
        return Ok(());
    };
    let mut paths = vec![identity_dir.to_owned()];
    for e in std::fs::read_dir(identity_dir)
        .with_context(|| format!("listing {}", identity_dir.display()))?
        .flatten()
    {
        paths.push(e.path());
    }
    for p in paths {
        std::os::unix::fs::chown(&p, Some(uid), Some(gid))
            .with_context(|| format!("handing {} to the service user", p.display()))?;
    }
    Ok(())
}

/// A user's uid and gid from `/etc/passwd` (the service user is a local
/// system user made by sysusers; no name service needed).
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        let _pw = f.next()?;
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    })
}

/// Reads a bundle's token; installs its `gateway.toml` when the box has
/// no configuration yet.
fn adopt_bundle(dir: &Path, config_path: &Path) -> anyhow::Result<String> {
    let token_path = dir.join("token");
    let token_text = std::fs::read_to_string(&token_path)
        .with_context(|| format!("reading {}", token_path.display()))?;
    let bundled = dir.join("gateway.toml");
    if !config_path.exists() && bundled.exists() {
        if let Some(parent) = config_path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::copy(&bundled, config_path).with_context(|| {
            format!(
                "installing {} as {}",
                bundled.display(),
                config_path.display()
            )
        })?;
    }
    Ok(token_text.trim().to_owned())
}

fn expand(pattern: &str) -> Vec<PathBuf> {
    let mut found = vec![PathBuf::from("/")];
    for part in pattern.trim_start_matches('/').split('/') {
        let mut next = Vec::new();
        for base in found {
            if part == "*" {
                if let Ok(rd) = std::fs::read_dir(&base) {
                    next.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
                }
            } else {
                let p = base.join(part);
                if p.exists() {
                    next.push(p);
                }
            }
        }
        found = next;
    }
    found
}

/// A bundle on a mounted USB stick, if there is one.
pub fn find_bundle() -> Option<PathBuf> {
    BUNDLE_GLOBS
        .iter()
        .flat_map(|g| expand(g))
        .find(|d| d.join("token").is_file())
}

/// At `run`: a box with no identity enrolls from a bundle on a mounted
/// USB stick, if there is one; otherwise it says what to do.
pub async fn first_boot(config_path: &Path) -> anyhow::Result<()> {
    let config = GatewayConfig::load(config_path).ok();
    if config.as_ref().is_some_and(|c| c.tls_files().cert.exists()) {
        return Ok(());
    }
    let Some(dir) = find_bundle() else {
        // `start` explains what is missing, with the file named.
        return Ok(());
    };
    tracing::info!(bundle = %dir.display(), "enrolling from an offline bundle");
    let token_text = adopt_bundle(&dir, config_path)?;
    let pin = bundle_pin(&dir);
    let e = enroll(
        &EnrollOptions {
            config_path,
            central: None,
            state_dir: None,
            pin: pin.as_deref(),
        },
        &token_text,
    )
    .await?;
    tracing::info!(identity = %e.installed.identity, not_after = e.installed.not_after, "enrolled from the bundle");
    Ok(())
}
