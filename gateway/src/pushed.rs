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
//! spool_dir/pushed-config.toml       the fragment in use, with its version
//! spool_dir/pushed-config.good.toml  the last fragment the gateway ran with
//! spool_dir/pushed-config.error      the last refusal
//! ```
//!
//! A fragment that validates but that the box cannot start with (a port
//! another program holds, a device missing) is refused, and the box goes
//! back to the last fragment it ran with, not to its bare file: the
//! devices published before stay up until someone publishes a fix.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::config::{ConfigError, GatewayConfig};

const FILE: &str = "pushed-config.toml";
const ERROR_FILE: &str = "pushed-config.error";
const GOOD_FILE: &str = "pushed-config.good.toml";
const VERSION_PREFIX: &str = "# yilian published configuration version ";

pub use yilian_gateway_config::fragment::overlay;

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
        let version = version_of(&text);
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
        let name = format!("published configuration {version}");
        let checked = yilian_gateway_config::fragment::check(fragment, &name)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                std::fs::read_to_string(base_path)
                    .map_err(|e| format!("cannot read {}: {e}", base_path.display()))
                    .and_then(|base| overlay(&base, fragment))
                    .and_then(|merged| {
                        GatewayConfig::parse(&merged, base_path)
                            .map(|_| ())
                            .map_err(|e| match e {
                                // Found only with the box's own file (a port both
                                // use): the merged text's lines mean nothing to
                                // whoever wrote either file.
                                ConfigError::Invalid { key, message, .. } => format!(
                                    "with this box's own configuration ({}): {key}: {message}",
                                    base_path.display()
                                ),
                                ConfigError::Parse { message, .. } => message,
                                other => other.to_string(),
                            })
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
    /// gateway could not start with it). If it was in use, the last
    /// fragment the gateway ran with takes its place, or none.
    pub fn refuse(&self, version: &str, reason: &str) {
        let line = format!("{version}: {}", reason.replace('\n', " "));
        let _ = write_atomically(&self.dir.join(ERROR_FILE), &line);
        let mut s = self.lock();
        if s.version == version {
            let good = std::fs::read_to_string(self.dir.join(GOOD_FILE)).ok();
            let good_version = good.as_deref().map(version_of).unwrap_or_default();
            match good {
                Some(text) if !good_version.is_empty() && good_version != version => {
                    tracing::warn!(refused = %version, back_to = %good_version,
                        "going back to the last published configuration this box ran with");
                    let _ = write_atomically(&self.dir.join(FILE), &text);
                    s.version = good_version;
                }
                _ => {
                    let _ = std::fs::remove_file(self.dir.join(FILE));
                    s.version.clear();
                }
            }
        }
        s.error = line;
    }

    /// Central withdrew its configuration: the box's own file alone.
    /// Returns whether anything changed.
    pub fn withdraw(&self) -> bool {
        let mut s = self.lock();
        let had = !s.version.is_empty();
        let _ = std::fs::remove_file(self.dir.join(FILE));
        let _ = std::fs::remove_file(self.dir.join(GOOD_FILE));
        s.version.clear();
        had
    }

    /// The gateway started with the fragment in use: it becomes the one to
    /// go back to.
    pub fn mark_running(&self) {
        match std::fs::read_to_string(self.dir.join(FILE)) {
            Ok(text) => {
                let _ = write_atomically(&self.dir.join(GOOD_FILE), &text);
            }
            Err(_) => {
                let _ = std::fs::remove_file(self.dir.join(GOOD_FILE));
            }
        }
    }
}

/// The version a kept fragment's first line names.
fn version_of(text: &str) -> String {
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix(VERSION_PREFIX))
        .unwrap_or_default()
        .to_owned()
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    yilian_proof::disk::write_atomically(path, text.as_bytes(), 0o600)
}

/// The configuration to run: the box's file with the published fragment
/// laid over it. A fragment that no longer validates (the box's own file
/// changed since) is dropped with an error, and the file alone is used.
pub fn load_effective(path: &Path) -> Result<(GatewayConfig, Pushed), ConfigError> {
    let base_text = yilian_gateway_config::loading::read_file(path)?;
    let base = GatewayConfig::parse(&base_text, path)?;
    let pushed = Pushed::open(&base.spool.dir);
    // At most twice: the fragment in use, then the last good one.
    for _ in 0..2 {
        let Some(fragment) = pushed.fragment() else {
            break;
        };
        let version = pushed.version();
        match overlay(&base_text, &fragment)
            .and_then(|m| GatewayConfig::parse(&m, path).map_err(|e| e.to_string()))
        {
            Ok(merged) => return Ok((merged, pushed)),
            Err(e) => {
                tracing::error!(version = %version, error = %e,
                    "the published configuration no longer fits this box's file");
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
        let p = crate::config::bandwidth_policy(&c.uplink);
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

    #[test]
    fn a_fragment_the_box_cannot_start_with_falls_back_to_the_last_that_ran() {
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
        p.mark_running();
        // v2 validates, but (say) its port is held by another program.
        p.offer(
            &base,
            "v2",
            "[[hl7]]\nname = \"lab2\"\nlisten = \"127.0.0.1:2576\"\n",
        )
        .expect("valid");
        p.refuse("v2", "the gateway could not start with it: address in use");
        assert_eq!(p.version(), "v1", "back to the fragment that ran");
        let (c, _) = load_effective(&base).expect("effective");
        assert_eq!(c.hl7[0].name, "lab", "its devices stay up");
        assert!(p.error().starts_with("v2: the gateway could not start"));
        // Without one that ran, the box's own file.
        let q = Pushed::open(&dir.path().join("fresh"));
        std::fs::create_dir_all(dir.path().join("fresh")).expect("mkdir");
        q.refuse("v9", "nothing");
        assert_eq!(q.version(), "");
    }

    #[test]
    fn a_typo_in_a_published_fragment_names_its_line() {
        let dir = tempfile::tempdir().expect("tmp");
        let base = dir.path().join("gateway.toml");
        std::fs::write(&base, BASE).expect("write");
        let p = Pushed::open(dir.path());
        let e = p
            .offer(
                &base,
                "v3",
                "[[dicom]]\nname = \"dr\"\nlisten = \"0.0.0.0:11112\"\nae_titel = \"DR\"\n",
            )
            .expect_err("typo");
        assert!(
            e.contains("published configuration v3") && e.contains("line 4"),
            "{e}"
        );
    }
}
