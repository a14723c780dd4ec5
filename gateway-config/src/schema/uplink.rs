//! `[uplink]`: central's address, the certificates, and the bandwidth the
//! link may use.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::units::{ByteSize, Offset, Rate, Window};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkSection {
    /// `host:port` of central; resolved again at every reconnect. Empty in
    /// the file: the address `enroll` recorded with the box's identity.
    #[serde(default)]
    pub central: String,
    /// Name in central's certificate; defaults to the host part of `central`.
    pub server_name: Option<String>,
    /// Fixed TLS files (a bench or a lab). Without them the box uses the
    /// identity that `enroll` wrote and renewals replace.
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Uploads in flight at once (urgent items get two more slots).
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    #[serde(
        default = "default_chunk",
        deserialize_with = "crate::units::de_size_usize"
    )]
    pub chunk_size: usize,
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Declare the link dead after this much silence (QUIC idle timeout).
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// Longest wait between reconnect attempts.
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Congestion controller for uploads: `bounded` (default), `bbr` or
    /// `cubic`.
    #[serde(default)]
    pub congestion: crate::Congestion,
    /// While only bulk items upload, give way to the clinic's other
    /// traffic on the line (HIS, video consultations): back off when the
    /// line's queue grows beyond what the upload itself puts there.
    /// `false`: the backlog takes the whole line. Urgent and clinical
    /// items never yield. Only with the `bounded` controller.
    #[serde(default = "yes")]
    pub share_line: bool,
    /// Cap outside every schedule window (see the gateway's bandwidth schedules).
    #[serde(default = "unlimited")]
    pub rate_limit: Rate,
    #[serde(default)]
    pub schedule: Vec<Window>,
    /// The clinic's clock, for the schedule.
    #[serde(default)]
    pub utc_offset: Offset,
    /// Bytes per hour urgent items may send beyond the cap.
    #[serde(default = "default_urgent_allowance")]
    pub urgent_allowance: ByteSize,
}

impl Default for UplinkSection {
    fn default() -> Self {
        Self {
            central: String::new(),
            server_name: None,
            ca: None,
            cert: None,
            key: None,
            max_in_flight: default_in_flight(),
            chunk_size: default_chunk(),
            heartbeat_interval: default_heartbeat(),
            idle_timeout: None,
            reconnect_max: default_backoff_max(),
            congestion: crate::Congestion::default(),
            share_line: true,
            rate_limit: unlimited(),
            schedule: Vec::new(),
            utc_offset: Offset::default(),
            urgent_allowance: default_urgent_allowance(),
        }
    }
}

fn yes() -> bool {
    true
}

fn unlimited() -> Rate {
    Rate(None)
}
fn default_urgent_allowance() -> ByteSize {
    // A few hundred STAT ECGs an hour; a CT study marked urgent would
    // spend it and fall back under the cap.
    ByteSize(50_000_000)
}

fn default_in_flight() -> usize {
    4
}
fn default_chunk() -> usize {
    yilian_protocol::upload::DEFAULT_CHUNK_SIZE
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(15)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(60)
}
