//! The gateway's metrics as they travel in heartbeats: the OpenMetrics text
//! its registry renders, parsed at central into families so central can
//! re-expose them with the box's identity labels.
//!
//! The parser faces the network: it never panics, bounds what it keeps, and
//! drops (rather than fails on) lines it does not understand, so a newer
//! gateway's output never breaks an older central.

use std::collections::BTreeMap;

/// Most bytes of exposition text accepted in one heartbeat.
pub const MAX_TEXT_LEN: usize = 512 * 1024;
/// Most samples kept from one gateway.
pub const MAX_SAMPLES: usize = 4000;

#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    /// `counter`, `gauge`, `info`, `histogram`, ... as the TYPE line said.
    pub kind: String,
    pub help: String,
    pub unit: String,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The full sample name (`yilian_uplink_items_total`).
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses exposition text; keeps only families whose name starts with
/// `prefix`. Returns families in the order first seen.
pub fn parse(text: &str, prefix: &str) -> Vec<Family> {
    let text = if text.len() > MAX_TEXT_LEN {
        // Cut at a line boundary below the limit.
        let cut = text
            .char_indices()
            .take_while(|(i, _)| *i < MAX_TEXT_LEN)
            .last()
            .map_or(0, |(i, _)| i);
        &text[..text[..cut].rfind('\n').unwrap_or(0)]
    } else {
        text
    };
    let mut families: Vec<Family> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut samples = 0usize;
    let family_of =
        |families: &mut Vec<Family>, index: &mut BTreeMap<String, usize>, name: &str| -> usize {
            if let Some(&i) = index.get(name) {
                return i;
            }
            families.push(Family {
                name: name.to_owned(),
                kind: "unknown".into(),
                help: String::new(),
                unit: String::new(),
                samples: Vec::new(),
            });
            index.insert(name.to_owned(), families.len() - 1);
            families.len() - 1
        };
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (Some(keyword), Some(name)) = (parts.next(), parts.next()) else {
                continue;
            };
            let value = parts.next().unwrap_or("");
            if !valid_name(name) || !name.starts_with(prefix) {
                continue;
            }
            let i = family_of(&mut families, &mut index, name);
            match keyword {
                "TYPE" => families[i].kind = value.to_owned(),
                "HELP" => families[i].help = value.to_owned(),
                "UNIT" => families[i].unit = value.to_owned(),
                _ => {}
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') || samples >= MAX_SAMPLES {
            continue;
        }
        let Some(sample) = parse_sample(line) else {
            continue;
        };
        if !sample.name.starts_with(prefix) {
            continue;
        }
        // The family is the longest declared name the sample extends.
        let family = index
            .keys()
            .filter(|f| {
                sample.name == **f
                    || sample
                        .name
                        .strip_prefix(f.as_str())
                        .is_some_and(|s| s.starts_with('_'))
            })
            .max_by_key(|f| f.len())
            .cloned()
            .unwrap_or_else(|| sample.name.clone());
        let i = family_of(&mut families, &mut index, &family);
        families[i].samples.push(sample);
        samples += 1;
    }
    families.retain(|f| !f.samples.is_empty());
    families
}

/// `name{a="x",b="y"} value [timestamp]`
fn parse_sample(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => (&line[..i], &line[i..]),
        None => return None,
    };
    if !valid_name(name) {
        return None;
    }
    let (labels, rest) = if let Some(body) = rest.strip_prefix('{') {
        parse_labels(body)?
    } else {
        (Vec::new(), rest)
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `a="x",b="y"}` and returns the labels and what follows the brace.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim();
        if !valid_name(key) || labels.len() >= 32 {
            return None;
        }
        s = s[eq + 1..].strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.push((key.to_owned(), value));
        s = &s[end + 1..];
    }
}

/// The content type of [`to_prometheus_text`]'s output.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The content type of OpenMetrics text.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether an HTTP `Accept` header asks for OpenMetrics (as Prometheus does).
pub fn wants_openmetrics(accept: &str) -> bool {
    accept.contains("application/openmetrics-text")
}

/// Converts OpenMetrics text to the classic Prometheus text format (0.0.4)
/// for scrapers and linters that do not negotiate OpenMetrics: counter
/// families are declared under their `_total` sample name, info families
/// become gauges, and `# UNIT` and `# EOF` lines are dropped.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut renamed: BTreeMap<&str, (String, &str)> = BTreeMap::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.splitn(2, ' ');
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                match kind {
                    "counter" if !name.ends_with("_total") => {
                        renamed.insert(name, (format!("{name}_total"), "counter"));
                    }
                    "info" => {
                        renamed.insert(name, (format!("{name}_info"), "gauge"));
                    }
                    _ => {}
                }
            }
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let mut handled = false;
        for keyword in ["# HELP ", "# TYPE "] {
            if let Some(rest) = line.strip_prefix(keyword) {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if let Some((new_name, kind)) = renamed.get(name) {
                    let tail = if keyword == "# TYPE " { *kind } else { tail };
                    out.push_str(&format!("{keyword}{new_name} {tail}\n"));
                    handled = true;
                }
            }
        }
        if !handled {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Escapes a label value for the text format.
pub fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP yilian_uplink_items Items committed.\n\
# TYPE yilian_uplink_items counter\n\
yilian_uplink_items_total{lane=\"bulk\"} 3\n\
yilian_uplink_items_created{lane=\"bulk\"} 1.7e9\n\
# HELP yilian_spool_used_bytes Used.\n\
# TYPE yilian_spool_used_bytes gauge\n\
# UNIT yilian_spool_used_bytes bytes\n\
yilian_spool_used_bytes 1024\n\
# TYPE other_metric gauge\n\
other_metric 1\n\
yilian_weird{a=\"q\\\"uote\\\\\",b=\"x\"} NaN\n\
garbage line {{{\n\
# EOF\n";

    #[test]
    fn parses_families_and_filters_prefix() {
        let f = parse(TEXT, "yilian_");
        let names: Vec<_> = f.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "yilian_uplink_items",
                "yilian_spool_used_bytes",
                "yilian_weird"
            ]
        );
        assert_eq!(f[0].kind, "counter");
        assert_eq!(f[0].samples.len(), 2);
        assert_eq!(f[0].samples[0].labels, vec![("lane".into(), "bulk".into())]);
        assert_eq!(f[1].unit, "bytes");
        assert_eq!(f[1].samples[0].value, 1024.0);
        assert_eq!(f[2].samples[0].labels[0].1, "q\"uote\\");
        assert!(f[2].samples[0].value.is_nan());
    }

    #[test]
    fn bounds_are_enforced() {
        let many: String = (0..MAX_SAMPLES + 100)
            .map(|i| format!("yilian_x{{i=\"{i}\"}} 1\n"))
            .collect();
        let f = parse(&many, "yilian_");
        assert_eq!(
            f.iter().map(|f| f.samples.len()).sum::<usize>(),
            MAX_SAMPLES
        );
        let huge = "yilian_y 1\n".repeat(MAX_TEXT_LEN / 8);
        let _ = parse(&huge, "yilian_");
    }

    #[test]
    fn converts_to_prometheus_text() {
        let om = "# HELP yilian_uplink_items Items.\n# TYPE yilian_uplink_items counter\nyilian_uplink_items_total{lane=\"bulk\"} 3\n\
# HELP yilian_spool_used_bytes Used.\n# TYPE yilian_spool_used_bytes gauge\n# UNIT yilian_spool_used_bytes bytes\nyilian_spool_used_bytes 1\n# EOF\n";
        let text = to_prometheus_text(om);
        assert_eq!(
            text,
            "# HELP yilian_uplink_items_total Items.\n# TYPE yilian_uplink_items_total counter\nyilian_uplink_items_total{lane=\"bulk\"} 3\n\
# HELP yilian_spool_used_bytes Used.\n# TYPE yilian_spool_used_bytes gauge\nyilian_spool_used_bytes 1\n"
        );
        assert!(wants_openmetrics(
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        ));
        assert!(!wants_openmetrics("*/*"));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,400}") {
            let _ = parse(&s, "yilian_");
        }
    }
}
