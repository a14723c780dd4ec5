//! `yilian-gateway enroll`, and enrollment at first boot from an offline
//! bundle on a USB stick (`yilian-provision bundle`).
//!
//! A bundle is a directory named `yilian-bundle` holding `token` (the
//! enrollment token), `ca.pem` (the fleet CA, for a human to check against
//! the token's fingerprint) and optionally `gateway.toml` (the box's
//! initial configuration, used when the box has none yet).

use std::path::{Path, PathBuf};

use anyhow::Context;
use yilian_link::TlsFiles;
use yilian_provision::token;

use crate::config::GatewayConfig;

/// Where a mounted USB stick's bundle is looked for at first boot.
const BUNDLE_GLOBS: &[&str] = &[
    "/media/*/yilian-bundle",
    "/media/*/*/yilian-bundle",
    "/run/media/*/*/yilian-bundle",
    "/mnt/yilian-bundle",
    "/mnt/*/yilian-bundle",
];

pub async fn enroll_command(
    config_path: &Path,
    central: Option<&str>,
    token_text: Option<&str>,
    bundle: Option<&Path>,
) -> anyhow::Result<()> {
    let token_text = match (token_text, bundle) {
        (Some(t), _) => t.trim().to_owned(),
        (None, Some(dir)) => adopt_bundle(dir, config_path)?,
        (None, None) => anyhow::bail!("give --token TOKEN or --bundle DIR"),
    };
    let installed = enroll(config_path, central, &token_text).await?;
    println!(
        "enrolled as {}; certificate valid until {} (renewed automatically over the link)",
        installed.identity,
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH
                + std::time::Duration::from_secs(installed.not_after.max(0) as u64)
        )
    );
    Ok(())
}

async fn enroll(
    config_path: &Path,
    central: Option<&str>,
    token_text: &str,
) -> anyhow::Result<crate::certificate::Installed> {
    let config = GatewayConfig::load(config_path)?;
    let claims = token::peek(token_text).context("reading the enrollment token")?;
    let central = central
        .map(str::to_owned)
        .or(claims.central.clone())
        .unwrap_or_else(|| config.uplink.central.clone());
    let files = TlsFiles {
        ca: config.uplink.ca.clone(),
        cert: config.uplink.cert.clone(),
        key: config.uplink.key.clone(),
    };
    let server_name = config.uplink.server_name.clone();
    crate::certificate::enroll(&files, &central, server_name.as_deref(), token_text)
        .await
        .with_context(|| format!("enrolling as {} at {central}", claims.gateway))
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

/// At `run`: a box with no certificate enrolls from a bundle on a mounted
/// USB stick, if there is one; otherwise it says what to do.
pub async fn first_boot(config_path: &Path) -> anyhow::Result<()> {
    let cert_exists = GatewayConfig::load(config_path)
        .map(|c| c.uplink.cert.exists())
        .unwrap_or(false);
    if cert_exists {
        return Ok(());
    }
    let bundle = BUNDLE_GLOBS
        .iter()
        .flat_map(|g| expand(g))
        .find(|d| d.join("token").is_file());
    let Some(dir) = bundle else {
        if config_path.exists() {
            anyhow::bail!(
                "this box has no certificate yet: run `yilian-gateway enroll --token TOKEN`, \\
                 or insert a USB stick with a yilian-bundle directory"
            );
        }
        return Ok(());
    };
    tracing::info!(bundle = %dir.display(), "enrolling from an offline bundle");
    let token_text = adopt_bundle(&dir, config_path)?;
    let i = enroll(config_path, None, &token_text).await?;
    tracing::info!(identity = %i.identity, not_after = i.not_after, "enrolled from the bundle");
    Ok(())
}
