//! The gateway's configuration, as a library of its own: `gateway.toml`
//! parsed once into a validated type, with every error naming the file,
//! the line and the key in words a technician understands.
//!
//! The box reads it at start-up; the county admin's tool and central read
//! it too, to check a published fragment before it is sent to a box
//! (`yilian-provision config set`), so all three share one parser. No I/O
//! beyond reading the file and the enrollment record; no runtime.
//!
//! - [`schema`] — the sections, their defaults and checks.
//! - [`units`] — sizes, rates, offsets and schedule windows.
//! - [`serial`] — serial line settings.
//! - [`fragment`] — published fragments laid over the box's own file.
//! - [`locate`] — the line of a key, for errors found after parsing.
//! - [`record`] — the enrollment record beside the identity.
//! - [`clock`] — times as people read them, in the configured zone.

#![forbid(unsafe_code)]

pub mod clock;
pub mod fragment;
pub mod loading;
pub mod locate;
pub mod record;
pub mod schema;
pub mod serial;
pub mod units;

use std::path::PathBuf;

pub use loading::{ConfigError, MetricsSection, humanize};
pub use schema::*;
pub use serial::{FlowControl, Parity, SerialSettings};

/// How a source treats what it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Any file; ECGs among them are still recognised and described.
    #[default]
    Files,
    /// An ECG source: anything that is not a readable ECG (or an ECG
    /// report) is quarantined.
    Ecg,
}

/// Congestion control for uploads: `bounded` (default) keeps about one
/// bandwidth-delay product in flight, so random radio loss does not slow
/// it and the router's queue neither overflows nor delays urgent items;
/// quinn's `bbr` and `cubic` remain for comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    #[default]
    Bounded,
    Bbr,
    Cubic,
}

/// The box's TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}
