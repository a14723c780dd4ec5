//! Configuration published at central: a TOML fragment of device sections
//! and uplink tuning (see `yilian_protocol::pushed` for what may be in it),
//! laid over each box's own file.
//!
//! The same checks run three times: in `yilian-provision config set`
//! before anything is sent, at central before it is stored, and at the box
//! against its own file. Errors name the fragment's file and its line.

use std::path::Path;

use crate::loading::ConfigError;
use crate::schema::GatewayConfig;

/// Checks a fragment on its own: only publishable tables and keys, every
/// section as the box would parse it. `name` is the file it came from.
pub fn check(fragment: &str, name: &str) -> Result<(), ConfigError> {
    let path = Path::new(name);
    let table: toml::Table = toml::from_str(fragment).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: crate::loading::humanize(&e.to_string()),
    })?;
    for (key, value) in &table {
        let refuse = |message: String, key: &str| ConfigError::Invalid {
            path: path.to_owned(),
            line: crate::locate::line_of(fragment, key),
            key: key.to_owned(),
            message,
        };
        yilian_protocol::pushed::check_key(key, None).map_err(|m| refuse(m, key))?;
        if key == "uplink"
            && let Some(t) = value.as_table()
        {
            for k in t.keys() {
                yilian_protocol::pushed::check_key(key, Some(k))
                    .map_err(|m| refuse(m, &format!("uplink.{k}")))?;
            }
        }
    }
    // Every section of a fragment is optional in a configuration too, so
    // the fragment parses as one: unknown keys, types and checks with its
    // own lines.
    GatewayConfig::parse(fragment, path).map(|_| ())
}

/// Lays `fragment` over `base`: each table the fragment holds replaces the
/// base's, except `[uplink]`, whose keys are replaced one by one.
pub fn overlay(base: &str, fragment: &str) -> Result<String, String> {
    let mut merged: toml::Table =
        toml::from_str(base).map_err(|e| format!("the box's own configuration: {e}"))?;
    let fragment: toml::Table =
        toml::from_str(fragment).map_err(|e| format!("published configuration: {e}"))?;
    for (key, value) in fragment {
        yilian_protocol::pushed::check_key(&key, None)?;
        if key == "uplink" {
            let toml::Value::Table(tuning) = value else {
                return Err("published [uplink] must be a table".into());
            };
            let toml::Value::Table(uplink) = merged
                .entry("uplink")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            else {
                return Err("the box's own [uplink] is not a table".into());
            };
            for (k, v) in tuning {
                yilian_protocol::pushed::check_key("uplink", Some(&k))?;
                uplink.insert(k, v);
            }
        } else {
            merged.insert(key, value);
        }
    }
    toml::to_string(&merged).map_err(|e| format!("cannot write the merged configuration: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typo_is_refused_with_the_file_and_its_line() {
        let text = "[[dicom]]\nname = \"dr\"\nlisten = \"0.0.0.0:11112\"\nae_titel = \"DR\"\n";
        let m = check(text, "devices.toml").expect_err("typo").to_string();
        assert!(
            m.contains("devices.toml") && m.contains("line 4") && m.contains("ae_titel"),
            "{m}"
        );
    }

    #[test]
    fn what_cannot_be_published_is_named() {
        let m = check("[spool]\ndir = \"/tmp\"\n", "f.toml")
            .expect_err("spool")
            .to_string();
        assert!(
            m.contains("f.toml") && m.contains("line 1") && m.contains("spool"),
            "{m}"
        );
        let m = check("[uplink]\ncentral = \"evil:1\"\n", "f.toml")
            .expect_err("central")
            .to_string();
        assert!(m.contains("uplink.central") && m.contains("line 2"), "{m}");
    }

    #[test]
    fn semantic_errors_name_the_fragments_line() {
        let text = "[[hl7]]\nname = \"lab\"\nlisten = \"0.0.0.0:2575\"\n\n[[dicom]]\nname = \"dr\"\nlisten = \"0.0.0.0:11112\"\nae_title = \"MUCH_TOO_LONG_AE_TITLE\"\n";
        let m = check(text, "devices.toml").expect_err("ae").to_string();
        assert!(
            m.contains("line 8") && m.contains("dicom[0].ae_title"),
            "{m}"
        );
        assert!(
            check(
                "[[hl7]]\nname = \"lab\"\nlisten = \"0.0.0.0:2575\"\n",
                "ok.toml"
            )
            .is_ok()
        );
    }
}
