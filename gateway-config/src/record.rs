//! What enrollment recorded beside the box's identity
//! (`enrollment.json`): who the box is and where central is, so a
//! configuration need not repeat central's address.

use std::path::Path;

use serde::{Deserialize, Serialize};

pub const RECORD_FILE: &str = "enrollment.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// `COUNTY/CLINIC/BOX`.
    pub identity: String,
    /// `host:port` of central, from the token or `--central`.
    pub central: String,
    /// Milliseconds since the epoch.
    pub enrolled_ms: i64,
    /// SHA-256 of the fleet CA the token named.
    pub ca_sha256: String,
}

impl Record {
    pub fn read(identity_dir: &Path) -> Option<Record> {
        let text = std::fs::read_to_string(identity_dir.join(RECORD_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }
}
