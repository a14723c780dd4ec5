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

/// As [`transport_config`], with another idle timeout (keep-alive stays at
/// most a third of it). The effective idle timeout of a connection is the
/// smaller of the two ends' values.
pub fn transport_config_with_idle(idle: Duration) -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE.min(idle / 3)));
    if let Ok(idle) = IdleTimeout::try_from(idle) {
        t.max_idle_timeout(Some(idle));
    }
    t.stream_receive_window(VarInt::from_u32(16 * 1024 * 1024));
    t.receive_window(VarInt::from_u32(64 * 1024 * 1024));
    t.send_window(64 * 1024 * 1024);
    t.max_concurrent_bidi_streams(VarInt::from_u32(64));
    t.max_concurrent_uni_streams(VarInt::from_u32(16));
    t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    Arc::new(t)
}
