//! `[spool]` and `[identity]`: where the box keeps what it was given, how
//! much, and its certificates.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::units::ByteSize;

use super::STATE_DIR;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolSection {
    #[serde(default = "default_spool_dir")]
    pub dir: PathBuf,
    /// What the spool may hold, e.g. "20 GiB" (`quota_bytes`, a number of
    /// bytes, is read too). Capped at run time by what the spool's
    /// filesystem can hold.
    #[serde(default = "default_quota", alias = "quota_bytes")]
    pub quota: ByteSize,
    /// Space kept in a reserve file and released when the disk runs out,
    /// so the box can still open its spool and deliver its backlog.
    #[serde(default = "default_reserve")]
    pub reserve: ByteSize,
    #[serde(default = "default_high")]
    pub high_watermark: f64,
    #[serde(default = "default_low")]
    pub low_watermark: f64,
    /// How long delivered items are kept, e.g. "7d".
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub retention: Duration,
    /// Rejections by central before an item is set aside for an operator.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
}

impl Default for SpoolSection {
    fn default() -> Self {
        Self {
            dir: default_spool_dir(),
            quota: default_quota(),
            reserve: default_reserve(),
            high_watermark: default_high(),
            low_watermark: default_low(),
            retention: default_retention(),
            max_attempts: default_max_attempts(),
        }
    }
}

fn default_spool_dir() -> PathBuf {
    Path::new(STATE_DIR).join("spool")
}

/// The box's identity: its private key, certificate chain and the fleet
/// CA, written by `enroll` and replaced by every renewal. It belongs in
/// the state directory (the configuration directory is read-only to the
/// service), owned by the service user.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySection {
    #[serde(default = "default_identity_dir")]
    pub dir: PathBuf,
}

impl Default for IdentitySection {
    fn default() -> Self {
        Self {
            dir: default_identity_dir(),
        }
    }
}

fn default_identity_dir() -> PathBuf {
    Path::new(STATE_DIR).join("identity")
}

fn default_quota() -> ByteSize {
    ByteSize(20 * 1024 * 1024 * 1024)
}
fn default_reserve() -> ByteSize {
    ByteSize(32 * 1024 * 1024)
}
fn default_high() -> f64 {
    0.95
}
fn default_low() -> f64 {
    0.85
}
fn default_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_max_attempts() -> u32 {
    8
}
