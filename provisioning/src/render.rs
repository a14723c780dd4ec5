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
        "{:<32} {:<8} {:>9} {:<9} {:>9} {:<12} {:<24} BACKLOG (urgent/clinical/bulk items)",
        "BOX", "LINK", "SEEN AGO", "VERSION", "CERT LEFT", "CONFIG", "PUBLISHED"
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
        // The configuration in force, and the published fragment in it.
        let running: String = s("config_version").chars().take(12).collect();
        let running = if running.is_empty() {
            "-".to_owned()
        } else {
            running
        };
        let published = match (s("pushed_config_version"), s("pushed_config_error")) {
            (v, e) if !e.is_empty() => {
                let refused = e.split(':').next().unwrap_or_default().to_owned();
                refusals.push((
                    s("identity"),
                    refused,
                    e.split_once(": ").map(|(_, r)| r.to_owned()).unwrap_or(e),
                ));
                format!(
                    "{} (refused {})",
                    if v.is_empty() { "none".into() } else { v },
                    refusals.len()
                )
            }
            (v, _) if !v.is_empty() => v,
            _ => "none".into(),
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
            "{:<32} {:<8} {:>9} {:<9} {:>9} {:<12} {:<24} {}",
            s("identity"),
            link,
            age(seen),
            s("software_version"),
            cert_left,
            running,
            published,
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

/// `fleet show` for a person: who the box is, where it stands, its
/// configuration and certificate, its backlog and what happened to it.
/// Times are in `clock`'s zone.
pub fn fleet_show(
    v: &serde_json::Value,
    clock: &yilian_gateway_config::clock::Clock,
    now: i64,
) -> String {
    let mut out = String::new();
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let at = |k: &str| {
        let t = s(k);
        if t.is_empty() {
            "-".to_owned()
        } else {
            clock.reformat(&t)
        }
    };
    let link = if let Some(r) = v["revoked"].as_str() {
        format!("REVOKED {}", r)
    } else if let Some(r) = v["retired"].as_str() {
        format!("retired {}", r)
    } else if v["link_up"].as_bool() == Some(true) {
        "up".to_owned()
    } else {
        "down".to_owned()
    };
    let _ = writeln!(out, "box:           {}", s("identity"));
    let _ = writeln!(out, "link:          {link}");
    let _ = writeln!(out, "last seen:     {}", at("last_seen"));
    let _ = writeln!(out, "first seen:    {}", at("first_seen"));
    let _ = writeln!(out, "software:      {}", s("software_version"));
    let config: String = s("config_version").chars().take(12).collect();
    let _ = writeln!(
        out,
        "configuration: {}",
        if config.is_empty() {
            "-".into()
        } else {
            config
        }
    );
    let pushed = s("pushed_config_version");
    let _ = writeln!(
        out,
        "published:     {}",
        if pushed.is_empty() {
            "none applied".into()
        } else {
            pushed
        }
    );
    let refused = s("pushed_config_error");
    if !refused.is_empty() {
        let _ = writeln!(out, "refused:       {refused}");
    }
    let cert = v["certificate_not_after"].as_i64().unwrap_or(0);
    if cert > 0 {
        let _ = writeln!(
            out,
            "certificate:   valid until {} ({} left)",
            clock.format_secs(cert),
            age(cert - now)
        );
    }
    if let Some(lanes) = v["backlog"].as_array() {
        for l in lanes {
            let _ = writeln!(
                out,
                "backlog:       {:<9} {:>6} item(s), oldest {}",
                l["lane"].as_str().unwrap_or("?"),
                l["items"].as_u64().unwrap_or(0),
                age(l["oldest_age_seconds"].as_f64().unwrap_or(0.0) as i64)
            );
        }
    }
    if let Some(history) = v["history"].as_array().filter(|h| !h.is_empty()) {
        let _ = writeln!(out, "history:");
        for h in history {
            let _ = writeln!(
                out,
                "  {}  {:<24} {:<14} {}",
                clock.reformat(h["at"].as_str().unwrap_or_default()),
                h["actor"].as_str().unwrap_or_default(),
                h["action"].as_str().unwrap_or_default(),
                h["detail"].as_str().unwrap_or_default()
            );
        }
    }
    out
}
