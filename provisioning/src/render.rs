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
    let mut refusals: Vec<(String, String, String)> = Vec::new();
    for r in rows.as_array().into_iter().flatten() {
        let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
        let link = if !r["revoked"].is_null() {
            "REVOKED"
        } else if !r["retired"].is_null() {
            "retired"
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
                let refused = e.split(':').next().unwrap_or_default().to_owned();
                refusals.push((
                    s("identity"),
                    refused,
                    e.split_once(": ").map(|(_, r)| r.to_owned()).unwrap_or(e),
                ));
                format!(
                    "{} (refused {})",
                    if v.is_empty() { "local".into() } else { v },
                    refusals.len()
                )
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
    // Refused configurations, numbered as in the CONFIG column, with the
    // start of the reason (`fleet show BOX` has all of it).
    for (i, (identity, version, reason)) in refusals.iter().enumerate() {
        let short: String = reason.chars().take(110).collect();
        let more = if reason.chars().count() > 110 {
            "…"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  ({}) {identity} refused published {version}: {short}{more}",
            i + 1
        );
    }
    out
}
