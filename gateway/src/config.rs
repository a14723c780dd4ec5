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

/// What the file cannot show and the machine can: folders, serial ports
/// and certificate files that are not there. Each problem names the file,
/// the key and its line. Run by `check-config`; at run time the same
/// things show as a device fault.
pub fn check_environment(config: &GatewayConfig) -> Vec<ConfigError> {
    let text = std::fs::read_to_string(&config.source).unwrap_or_default();
    let problem = |key: String, message: String| ConfigError::Invalid {
        path: config.source.clone(),
        line: yilian_gateway_config::locate::line_of(&text, &key),
        key,
        message,
    };
    let mut out = Vec::new();
    for (i, f) in config.folder.iter().enumerate() {
        if f.create {
            continue;
        }
        if !f.path.exists() {
            out.push(problem(
                format!("folder[{i}].path"),
                format!(
                    "{} does not exist: check where the device writes its files (or add `create = true` to make it)",
                    f.path.display()
                ),
            ));
        } else if !f.path.is_dir() {
            out.push(problem(
                format!("folder[{i}].path"),
                format!("{} is not a folder", f.path.display()),
            ));
        }
    }
    let port_missing = |port: &std::path::Path| {
        format!(
            "serial port {} does not exist: is the device plugged in? `ls /dev/serial/by-id/` lists the ports there are",
            port.display()
        )
    };
    for (i, e) in config.ecg_serial.iter().enumerate() {
        if !e.port.exists() {
            out.push(problem(
                format!("ecg_serial[{i}].port"),
                port_missing(&e.port),
            ));
        }
    }
    for (i, a) in config.astm.iter().enumerate() {
        if let Some(port) = a.port.as_ref().filter(|p| !p.exists()) {
            out.push(problem(format!("astm[{i}].port"), port_missing(port)));
        }
    }
    for (key, path) in [
        ("uplink.ca", &config.uplink.ca),
        ("uplink.cert", &config.uplink.cert),
        ("uplink.key", &config.uplink.key),
    ] {
        if let Some(p) = path.as_ref().filter(|p| !p.exists()) {
            out.push(problem(
                key.to_owned(),
                format!("{} does not exist", p.display()),
            ));
        }
    }
    out
}
