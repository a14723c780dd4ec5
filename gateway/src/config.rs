//! `gateway.toml`: the schema and its checks are the `yilian-gateway-config`
//! crate (shared with the admin's tool and central); this adds what only
//! the running box needs.

pub use yilian_gateway_config::*;

/// The box's TLS files, as the link wants them.
pub fn tls_files(config: &GatewayConfig) -> yilian_link::TlsFiles {
    let p = config.tls_files();
    yilian_link::TlsFiles {
        ca: p.ca,
        cert: p.cert,
        key: p.key,
    }
}

/// The configured congestion controller, as the link names it.
pub fn congestion(c: Congestion) -> yilian_link::Congestion {
    match c {
        Congestion::Bbr => yilian_link::Congestion::Bbr,
        Congestion::Cubic => yilian_link::Congestion::Cubic,
    }
}

/// The uplink's bandwidth policy.
pub fn bandwidth_policy(u: &UplinkSection) -> crate::bandwidth::Policy {
    crate::bandwidth::Policy {
        default: u.rate_limit,
        windows: u.schedule.clone(),
        offset: u.utc_offset,
        urgent_allowance: u.urgent_allowance.0,
    }
}
