//! Configuration published at central, laid over the box's own file.
//!
//! Central sends a TOML fragment (device sections, uplink tuning; see
//! `yilian_protocol::pushed`). The box merges it with its own
//! `gateway.toml` and validates the whole result exactly as at start-up
//! before keeping it; a fragment that does not validate is refused, the
//! running configuration stays, and the refusal (`VERSION: reason`) is
//! reported to central in every heartbeat until a new version comes.
//!
//! ```text
//! spool_dir/pushed-config.toml    the fragment in use, with its version
//! spool_dir/pushed-config.error   the last refusal
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::config::{ConfigError, GatewayConfig};

const FILE: &str = "pushed-config.toml";
const ERROR_FILE: &str = "pushed-config.error";
const VERSION_PREFIX: &str = "# yilian published configuration version ";

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

/// The published configuration state of a box: the version in use and the
/// last refusal, shared by the uplink (which reports and updates it) and
/// start-up (which applies it).
#[derive(Debug, Clone)]
pub struct Pushed {
    dir: PathBuf,
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default, Clone)]
struct State {
    version: String,
    error: String,
}

impl Pushed {
    pub fn open(spool_dir: &Path) -> Self {
        let text = std::fs::read_to_string(spool_dir.join(FILE)).unwrap_or_default();
        let version = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix(VERSION_PREFIX))
            .unwrap_or_default()
            .to_owned();
        let error = std::fs::read_to_string(spool_dir.join(ERROR_FILE)).unwrap_or_default();
        Self {
            dir: spool_dir.to_owned(),
            state: Arc::new(Mutex::new(State { version, error })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn version(&self) -> String {
        self.lock().version.clone()
    }

    pub fn error(&self) -> String {
        self.lock().error.clone()
    }

    /// The fragment in use, if any.
    pub fn fragment(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join(FILE)).ok()
    }

    /// Validates `fragment` over the box's file at `base_path`; keeps it
    /// (durably) when valid, records the refusal when not. Returns whether
    /// it was kept.
    pub fn offer(&self, base_path: &Path, version: &str, fragment: &str) -> Result<(), String> {
        let checked = std::fs::read_to_string(base_path)
            .map_err(|e| format!("cannot read {}: {e}", base_path.display()))
            .and_then(|base| overlay(&base, fragment))
            .and_then(|merged| {
                GatewayConfig::parse(&merged, base_path)
                    .map(|_| ())
                    .map_err(|e| match e {
                        ConfigError::Parse { message, .. } => message,
                        other => other.to_string(),
                    })
            });
        match checked {
            Ok(()) => {
                let text = format!("{VERSION_PREFIX}{version}\n{fragment}");
                write_atomically(&self.dir.join(FILE), &text)
                    .map_err(|e| format!("cannot keep the published configuration: {e}"))?;
                let _ = std::fs::remove_file(self.dir.join(ERROR_FILE));
                let mut s = self.lock();
                s.version = version.to_owned();
                s.error.clear();
                Ok(())
            }
            Err(reason) => {
                self.refuse(version, &reason);
                Err(reason)
            }
        }
    }

    /// Records that `version` was refused (also when it validated but the
    /// gateway could not start with it) and drops it if it was in use.
    pub fn refuse(&self, version: &str, reason: &str) {
        let line = format!("{version}: {}", reason.replace('\n', " "));
        let _ = write_atomically(&self.dir.join(ERROR_FILE), &line);
        let mut s = self.lock();
        if s.version == version {
            let _ = std::fs::remove_file(self.dir.join(FILE));
            s.version.clear();
        }
        s.error = line;
    }
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The configuration to run: the box's file with the published fragment
/// laid over it. A fragment that no longer validates (the box's own file
/// changed since) is dropped with an error, and the file alone is used.
pub fn load_effective(path: &Path) -> Result<(GatewayConfig, Pushed), ConfigError> {
    let base_text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let base = GatewayConfig::parse(&base_text, path)?;
    let pushed = Pushed::open(&base.spool.dir);
    if let Some(fragment) = pushed.fragment() {
        let version = pushed.version();
        match overlay(&base_text, &fragment)
            .and_then(|m| GatewayConfig::parse(&m, path).map_err(|e| e.to_string()))
        {
            Ok(merged) => return Ok((merged, pushed)),
            Err(e) => {
                tracing::error!(version = %version, error = %e,
                    "the published configuration no longer fits this box's file; running without it");
                pushed.refuse(&version, &e);
            }
        }
    }
    Ok((base, pushed))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[spool]
dir = "spool"

[uplink]
central = "hub.example:4433"
ca = "ca.pem"
cert = "gateway.pem"
key = "gateway.key"
max_in_flight = 2

[[folder]]
name = "old"
path = "/srv/old"
"#;

    #[test]
    fn fragment_replaces_device_tables_and_tunes_the_uplink() {
        let fragment =
            "[uplink]\nmax_in_flight = 8\n\n[[hl7]]\nname = \"lab\"\nlisten = \"127.0.0.1:2575\"\n";
        let merged = overlay(BASE, fragment).expect("merge");
        let c =
            GatewayConfig::parse(&merged, Path::new("/etc/yilian/gateway.toml")).expect("valid");
        assert_eq!(c.uplink.max_in_flight, 8);
        assert_eq!(c.uplink.central, "hub.example:4433", "not publishable");
        assert_eq!(c.hl7.len(), 1);
        assert_eq!(c.folder.len(), 1, "tables the fragment lacks stay");
    }

    #[test]
    fn central_can_publish_a_bandwidth_schedule() {
        let fragment = "[uplink]\nrate_limit = \"20 Mbit/s\"\nurgent_allowance = \"10 MB\"\n\n\
                        [[uplink.schedule]]\ndays = \"mon-fri\"\nfrom = \"08:00\"\nto = \"18:00\"\nrate = \"2 Mbit/s\"\n";
        let merged = overlay(BASE, fragment).expect("merge");
        let c =
            GatewayConfig::parse(&merged, Path::new("/etc/yilian/gateway.toml")).expect("valid");
        let p = c.uplink.bandwidth_policy();
        assert_eq!(p.default.0, Some(20e6));
        assert_eq!(p.windows.len(), 1);
        assert_eq!(p.urgent_allowance, 10_000_000);
        // A schedule with a typo is refused like any invalid fragment.
        let bad = fragment.replace("mon-fri", "weekdays");
        let merged = overlay(BASE, &bad).expect("merge");
        let e = GatewayConfig::parse(&merged, Path::new("/etc/yilian/gateway.toml")).unwrap_err();
        assert!(e.to_string().contains("unknown day"), "{e}");
    }

    #[test]
    fn fragments_may_not_touch_the_link_or_the_spool() {
        for bad in [
            "[spool]\ndir = \"/tmp\"\n",
            "[uplink]\ncentral = \"evil:4433\"\n",
            "[uplink]\ncert = \"/tmp/x\"\n",
        ] {
            assert!(overlay(BASE, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_invalid_fragment_is_refused_and_remembered() {
        let dir = tempfile::tempdir().expect("tmp");
        let base = dir.path().join("gateway.toml");
        std::fs::write(&base, BASE).expect("write");
        let spool = dir.path().join("spool");
        std::fs::create_dir_all(&spool).expect("mkdir");
        let p = Pushed::open(&spool);
        p.offer(
            &base,
            "v1",
            "[[hl7]]\nname = \"lab\"\nlisten = \"127.0.0.1:2575\"\n",
        )
        .expect("valid");
        assert_eq!(p.version(), "v1");
        let e = p
            .offer(
                &base,
                "v2",
                "[[hl7]]\nname = \"lab\"\nlisten = \"not an address\"\n",
            )
            .expect_err("invalid");
        assert!(e.contains("listen"), "{e}");
        // v1 stays in use, v2's refusal is reported, across a restart too.
        let again = Pushed::open(&spool);
        assert_eq!(again.version(), "v1");
        assert!(again.error().starts_with("v2: "), "{}", again.error());
        let (c, _) = load_effective(&base).expect("effective");
        assert_eq!(c.hl7.len(), 1);
    }
}
