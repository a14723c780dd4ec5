//! How `fleet list` prints for a human.

use std::fmt::Write;

fn age(secs: i64) -> String {
    match secs {
        s if s < 0 => "-".into(),
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// One line per box: identity, link, last seen, software, certificate
/// expiry, published configuration applied (or refused), backlog per lane.
pub fn fleet_table(rows: &serde_json::Value, now: i64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<32} {:<8} {:>9} {:<9} {:>9} {:<18} BACKLOG (urgent/clinical/bulk items)",
        "BOX", "LINK", "SEEN AGO", "VERSION", "CERT LEFT", "CONFIG"
    );
    for r in rows.as_array().into_iter().flatten() {
        let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
        let link = if !r["revoked"].is_null() {
            "REVOKED"
        } else if r["link_up"].as_bool() == Some(true) {
            "up"
        } else {
            "down"
        };
        let seen = now - r["last_seen_ms"].as_i64().unwrap_or(0) / 1000;
        let cert = r["certificate_not_after"].as_i64().unwrap_or(0);
        let cert_left = if cert == 0 {
            "-".into()
        } else {
            age(cert - now)
        };
        let config = match (s("pushed_config_version"), s("pushed_config_error")) {
            (v, e) if !e.is_empty() => {
                format!("{}! refused", if v.is_empty() { "-".into() } else { v })
            }
            (v, _) if !v.is_empty() => v,
            _ => "local".into(),
        };
        let backlog = r["backlog"]
            .as_array()
            .map(|lanes| {
                lanes
                    .iter()
                    .map(|l| l["items"].as_u64().unwrap_or(0).to_string())
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<32} {:<8} {:>9} {:<9} {:>9} {:<18} {}",
            s("identity"),
            link,
            age(seen),
            s("software_version"),
            cert_left,
            config,
            backlog
        );
    }
    out
}
