//! Reading a configuration file, for the box and for central alike: one
//! error type that names the file and the line, serde's messages in a
//! technician's words, and the `[metrics]` section both have.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}{}: {key}: {message}", path.display(), line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        /// Where `key` is in the file, when it is there at all.
        line: Option<usize>,
        key: String,
        message: String,
    },
}

/// Reads a configuration file.
pub fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses a configuration text; the error names the key, the line and the
/// column in plain words.
pub fn from_toml<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: humanize(&e.to_string()),
    })
}

/// Makes `p` relative to the configuration file's directory (`base`), not
/// to the working directory.
pub fn relative_to(base: &Path, p: &mut PathBuf) {
    if p.is_relative() {
        *p = base.join(&*p);
    }
}

/// Says serde's and the standard library's messages in a technician's
/// words: what is expected, with an example, instead of Rust type names.
pub fn humanize(message: &str) -> String {
    const PLAIN: &[(&str, &str)] = &[
        (
            "invalid socket address syntax",
            "not an address: write IP:PORT, e.g. \"0.0.0.0:2575\" (ports run from 1 to 65535)",
        ),
        (
            "invalid IP address syntax",
            "not an IP address, e.g. \"192.0.2.15\"",
        ),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number"),
        ("expected u8", "expected a small whole number"),
        ("expected usize", "expected a whole number"),
        ("expected f64", "expected a number such as 0.95"),
        ("expected a boolean", "expected true or false"),
        ("expected a string", "expected text in quotes"),
        (
            "expected a sequence",
            "expected a list in [brackets], or [[double brackets]] for sections",
        ),
        ("invalid value: integer", "number out of range: integer"),
    ];
    let mut m = message.to_owned();
    for (rust, plain) in PLAIN {
        m = m.replace(rust, plain);
    }
    m
}

/// `[metrics]`: where `/metrics` (and the box's `/status`) listen;
/// loopback on `PORT` unless exposed on purpose.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection<const PORT: u16> {
    #[serde(default = "default_metrics::<PORT>")]
    pub listen: SocketAddr,
}

impl<const PORT: u16> Default for MetricsSection<PORT> {
    fn default() -> Self {
        Self {
            listen: default_metrics::<PORT>(),
        }
    }
}

fn default_metrics<const PORT: u16>() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], PORT))
}
