//! QUIC transport parameters for clinic uplinks.

use std::sync::Arc;
use std::time::Duration;

use quinn::{IdleTimeout, TransportConfig, VarInt};

/// Keep-alive well below the 30 s UDP timeout of common NAT boxes.
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// A silent peer is declared gone after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(45);

/// Tuned transport: windows sized for high bandwidth-delay links (quinn's
/// 1.25 MB stream window caps one stream at ~100 Mbit/s at 100 ms RTT),
/// keep-alive below NAT timeouts, and enough concurrent streams for several
/// uploads plus the control stream.
pub fn transport_config() -> Arc<TransportConfig> {
    transport_config_with_idle(IDLE_TIMEOUT)
}

/// The sender's congestion controller.
///
/// Measured on the bench's `4g` profile (20 Mbit/s, 80 ms, 1 % loss in
/// bursts): quinn's BBR reaches ~90 % of the link but puts about twice the
/// payload on the wire (it overshoots the bottleneck queue); Cubic keeps
/// the wire within ~6 % of the payload but, reading every random loss as
/// congestion, reaches ~11 %. [`Congestion::Bounded`] is built to do both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    /// Ours: about one bandwidth-delay product in flight (see
    /// [`crate::BoundedConfig`]).
    Bounded,
    /// quinn's BBR.
    #[default]
    Bbr,
    /// quinn's Cubic.
    Cubic,
}

/// As [`transport_config`], with another idle timeout (keep-alive stays at
/// most a third of it). The effective idle timeout of a connection is the
/// smaller of the two ends' values.
pub fn transport_config_with_idle(idle: Duration) -> Arc<TransportConfig> {
    transport_config_for(idle, Congestion::default())
}

/// As [`transport_config_with_idle`], with the congestion controller named.
pub fn transport_config_for(idle: Duration, congestion: Congestion) -> Arc<TransportConfig> {
    transport_config_sending(idle, congestion, 64 * 1024 * 1024, None)
}

/// As [`transport_config_for`], holding at most `send_window` bytes sent
/// or queued and not yet acknowledged. Whatever is held when the link is
/// cut is lost and sent again after the reconnect, so an uploader keeps it
/// to about what its uploads in flight need (a chunk each), well above
/// any clinic link's bandwidth-delay product (375 kB on 5 Mbit/s
/// satellite at 600 ms). With `sharing`, our controller yields the line
/// to the clinic's other traffic while only bulk data is sent.
pub fn transport_config_sending(
    idle: Duration,
    congestion: Congestion,
    send_window: u64,
    sharing: Option<Arc<crate::LineSharing>>,
) -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE.min(idle / 3)));
    if let Ok(idle) = IdleTimeout::try_from(idle) {
        t.max_idle_timeout(Some(idle));
    }
    t.stream_receive_window(VarInt::from_u32(16 * 1024 * 1024));
    t.receive_window(VarInt::from_u32(64 * 1024 * 1024));
    t.send_window(send_window);
    t.max_concurrent_bidi_streams(VarInt::from_u32(64));
    t.max_concurrent_uni_streams(VarInt::from_u32(16));
    match congestion {
        Congestion::Bounded => {
            t.congestion_controller_factory(Arc::new(crate::BoundedConfig { sharing }))
        }
        Congestion::Bbr => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
        }
        Congestion::Cubic => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()))
        }
    };
    Arc::new(t)
}
