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
        Congestion::Bounded => yilian_link::Congestion::Bounded,
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
pub fn check_environment(config: &GatewayConfig, lang: crate::i18n::Language) -> Vec<ConfigError> {
    use fluent_bundle::FluentValue;
    let text = std::fs::read_to_string(&config.source).unwrap_or_default();
    let c = crate::i18n::Catalog::get();
    let say = |id: &str, args: &[(&str, FluentValue<'_>)]| c.t_args(lang, id, args);
    let problem = |key: String, message: String| ConfigError::Invalid {
        path: config.source.clone(),
        line: yilian_gateway_config::locate::line_of(&text, &key),
        key,
        message,
    };
    let shown = |p: &std::path::Path| FluentValue::from(p.display().to_string());
    let mut out = Vec::new();
    for (i, f) in config.folder.iter().enumerate() {
        if f.create {
            continue;
        }
        if !f.path.exists() {
            out.push(problem(
                format!("folder[{i}].path"),
                say("check-folder-missing", &[("path", shown(&f.path))]),
            ));
        } else if !f.path.is_dir() {
            out.push(problem(
                format!("folder[{i}].path"),
                say("check-not-a-folder", &[("path", shown(&f.path))]),
            ));
        }
    }
    for (i, r) in config.report_sink.iter().enumerate() {
        if let Some(d) = r.dir.as_ref().filter(|d| d.exists() && !d.is_dir()) {
            out.push(problem(
                format!("report_sink[{i}].dir"),
                say("check-not-a-folder", &[("path", shown(d))]),
            ));
        }
    }
    for (i, e) in config.ecg_serial.iter().enumerate() {
        if !e.port.exists() {
            out.push(problem(
                format!("ecg_serial[{i}].port"),
                say("check-port-missing", &[("port", shown(&e.port))]),
            ));
        }
    }
    for (i, a) in config.astm.iter().enumerate() {
        if let Some(port) = a.port.as_ref().filter(|p| !p.exists()) {
            out.push(problem(
                format!("astm[{i}].port"),
                say("check-port-missing", &[("port", shown(port))]),
            ));
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
                say("check-file-missing", &[("path", shown(p))]),
            ));
        }
    }
    out
}

/// A configuration problem for a person, in `lang`: the file, the line
/// and the key say where, the message what to do.
pub fn describe_problem(e: &ConfigError, lang: crate::i18n::Language) -> String {
    let c = crate::i18n::Catalog::get();
    match e {
        ConfigError::Invalid {
            path,
            line: Some(line),
            key,
            message,
        } => c.t_args(
            lang,
            "check-problem-at",
            &[
                ("path", path.display().to_string().into()),
                ("line", (*line as i64).into()),
                ("key", key.as_str().into()),
                ("message", message.as_str().into()),
            ],
        ),
        ConfigError::Invalid {
            path, key, message, ..
        } => c.t_args(
            lang,
            "check-problem",
            &[
                ("path", path.display().to_string().into()),
                ("key", key.as_str().into()),
                ("message", message.as_str().into()),
            ],
        ),
        other => other.to_string(),
    }
}
