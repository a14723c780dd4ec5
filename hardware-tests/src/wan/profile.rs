//! Link profiles: a small TOML file per kind of clinic uplink. The named
//! ones ship with the bench (`hardware-tests/profiles/`); any other file
//! can be given by path.

use std::path::Path;

use serde::Deserialize;

use super::model::{DirectionSpec, OutageSpec};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(skip)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Largest IP packet; also the MTU of both ends' interfaces.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Clinic → hub.
    #[serde(default)]
    pub up: DirectionSpec,
    /// Hub → clinic.
    #[serde(default)]
    pub down: DirectionSpec,
    #[serde(default)]
    pub outage: Option<OutageSpec>,
}

fn default_mtu() -> u16 {
    1500
}

const NAMED: [(&str, &str); 6] = [
    ("adsl", include_str!("../../profiles/adsl.toml")),
    ("4g", include_str!("../../profiles/4g.toml")),
    ("satellite", include_str!("../../profiles/satellite.toml")),
    ("flaky", include_str!("../../profiles/flaky.toml")),
    ("fibre", include_str!("../../profiles/fibre.toml")),
    ("lan", include_str!("../../profiles/lan.toml")),
];

impl Profile {
    pub fn names() -> impl Iterator<Item = &'static str> {
        NAMED.iter().map(|(n, _)| *n)
    }

    /// A named profile, or a TOML file if `name_or_path` names none.
    pub fn load(name_or_path: &str) -> anyhow::Result<Self> {
        if let Some((name, text)) = NAMED.iter().find(|(n, _)| *n == name_or_path) {
            return Self::parse(name, text);
        }
        let path = Path::new(name_or_path);
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!(
                "{name_or_path}: not a named profile ({}) nor a readable file: {e}",
                Self::names().collect::<Vec<_>>().join(", ")
            )
        })?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Self::parse(&name, &text)
    }

    pub fn parse(name: &str, text: &str) -> anyhow::Result<Self> {
        let mut p: Profile =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("profile {name}: {e}"))?;
        p.name = name.to_owned();
        for (dir, spec) in [("up", &p.up), ("down", &p.down)] {
            spec.check()
                .map_err(|e| anyhow::anyhow!("profile {name}, [{dir}]: {e}"))?;
        }
        anyhow::ensure!(
            p.mtu >= 1280,
            "profile {name}: mtu {} is below IPv6's 1280 and QUIC's floor",
            p.mtu
        );
        Ok(p)
    }

    /// Round trip without queueing, in milliseconds.
    pub fn base_rtt_ms(&self) -> f64 {
        self.up.delay_ms + self.down.delay_ms
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_named_profile_parses() {
        for name in Profile::names() {
            let p = Profile::load(name).unwrap();
            assert!(!p.description.is_empty(), "{name}");
        }
        assert_eq!(Profile::load("4g").unwrap().up.rate_kbit, Some(20_000));
        assert!(Profile::load("flaky").unwrap().outage.is_some());
    }

    #[test]
    fn a_bad_profile_says_what_is_wrong() {
        let e = Profile::parse("x", "[up]\nloss = 1.5\n").unwrap_err();
        assert!(e.to_string().contains("[up]: loss 1.5"), "{e}");
        let e = Profile::parse("x", "[up]\nrate = 3\n").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = Profile::load("no-such").unwrap_err();
        assert!(e.to_string().contains("adsl, 4g"), "{e}");
    }
}
