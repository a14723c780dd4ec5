//! Delivery of ECGs to the reading system the way most ECG management
//! systems import: files appearing in a directory they watch.
//!
//! Each ECG becomes `<acquired>_<patient>_<county>-<clinic>_<upload>.<ext>`
//! (`scp`, `xml`, `dcm`, `pdf`) beside a `.json` sidecar with the gateway,
//! the metadata and the times. The sidecar is written first and the ECG
//! last, each to a hidden temporary name, fsynced and renamed, so an
//! importer never sees half a file. Quarantined items (damaged, unreadable,
//! not an ECG) go to the quarantine directory instead, where a person
//! looks at them; the reading system never gets them.
//!
//! Delivery is idempotent (the name derives from the item), so a redelivery
//! after a crash replaces a file with the same bytes.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use yilian_proof::disk::{write_atomically, write_atomically_with};

use crate::config::EcgSection;
use crate::outbox::{Destination, Verdict};
use crate::store::{OutboxRow, Store, rfc3339};

pub const DESTINATION: &str = "ecg";

pub struct EcgDelivery {
    config: EcgSection,
    store: Store,
}

impl EcgDelivery {
    pub fn new(config: EcgSection, store: Store) -> Self {
        Self { config, store }
    }

    fn quarantine_dir(&self) -> PathBuf {
        self.config
            .quarantine_directory
            .clone()
            .unwrap_or_else(|| self.config.directory.join("quarantine"))
    }
}

impl Destination for EcgDelivery {
    fn name(&self) -> &'static str {
        DESTINATION
    }

    async fn deliver(&mut self, row: &OutboxRow) -> Verdict {
        let quarantined = row
            .metadata
            .get("quarantine")
            .and_then(|v| v.as_str())
            .is_some();
        let dir = if quarantined {
            self.quarantine_dir()
        } else {
            self.config.directory.clone()
        };
        let store = self.store.clone();
        let row = row.clone();
        let r = tokio::task::spawn_blocking(move || {
            let blob = store
                .local_blob(&row.sha256)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            write_ecg(&dir, &row, blob.path()).map(|name| (name, row))
        })
        .await;
        match r {
            Ok(Ok((name, row))) => {
                if quarantined {
                    tracing::warn!(upload = %row.upload_id, gateway = %row.gateway, file = %name,
                        "quarantined ECG item filed for review");
                } else {
                    tracing::info!(upload = %row.upload_id, gateway = %row.gateway, file = %name,
                        "ECG delivered to the reading system's import directory");
                }
                Verdict::Delivered
            }
            Ok(Err(e)) => {
                tracing::warn!(directory = %self.config.directory.display(), error = %e,
                    "cannot write an ECG into the import directory; retrying (check the mount and permissions)");
                Verdict::Retry(e.to_string())
            }
            Err(e) => Verdict::Retry(e.to_string()),
        }
    }
}

/// Keeps ASCII letters, digits, `-` and `.`; everything else becomes `_`
/// (patient IDs can hold anything, file names on a Windows share cannot).
fn safe(s: &str, max: usize) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .take(max)
        .collect();
    if out.is_empty() {
        "unknown".into()
    } else {
        out
    }
}

fn extension(kind: &str) -> &'static str {
    yilian_protocol::ItemKind::parse(kind).map_or("bin", yilian_protocol::ItemKind::extension)
}

/// The file name (without extension) an item is delivered under.
pub fn file_stem(row: &OutboxRow) -> String {
    let meta = |k: &str| row.metadata.get(k).and_then(|v| v.as_str());
    let when: String = meta("acquired")
        .map(|a| a.chars().filter(|c| c.is_ascii_digit()).take(14).collect())
        .filter(|s: &String| s.len() >= 8)
        .unwrap_or_else(|| {
            rfc3339(row.created_ms)
                .chars()
                .filter(|c| c.is_ascii_digit())
                .take(14)
                .collect()
        });
    let patient = safe(meta("patient_id").unwrap_or(""), 32);
    let mut parts = row.gateway.split('/');
    let clinic = match (parts.next(), parts.next()) {
        (Some(county), Some(clinic)) => format!("{county}-{clinic}"),
        _ => row.gateway.clone(),
    };
    let upload = &row.upload_id[..row.upload_id.len().min(12)];
    format!(
        "{when}_{patient}_{}_{}",
        safe(&clinic, 48),
        safe(upload, 12)
    )
}

fn write_ecg(dir: &Path, row: &OutboxRow, blob: &Path) -> std::io::Result<String> {
    fs::create_dir_all(dir)?;
    let stem = file_stem(row);
    let name = format!("{stem}.{}", extension(&row.kind));
    let sidecar = serde_json::json!({
        "gateway": row.gateway,
        "upload_id": row.upload_id,
        "kind": row.kind,
        "sha256": row.sha256,
        "committed_at": rfc3339(row.created_ms),
        "metadata": row.metadata,
    });
    let text = serde_json::to_vec_pretty(&sidecar).map_err(std::io::Error::other)?;
    // The sidecar first: a reading system that sees the ECG finds its
    // description already there.
    write_atomically(&dir.join(format!("{stem}.json")), &text, 0o644)?;
    write_atomically_with(&dir.join(&name), 0o644, |f| {
        let mut src = File::open(blob)?;
        std::io::copy(&mut src, f).map(|_| ())
    })?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(meta: serde_json::Value) -> OutboxRow {
        OutboxRow {
            id: 1,
            gateway: "lingshan/xiacun/box-1".into(),
            upload_id: "0123456789abcdef0123".into(),
            destination: DESTINATION.into(),
            kind: "scp-ecg".into(),
            sha256: "00".into(),
            state: "pending",
            attempts: 0,
            last_error: None,
            created_ms: 1_795_000_000_000,
            delivered_ms: None,
            metadata: meta,
        }
    }

    #[test]
    fn names_are_safe_and_stable() {
        let r = row(
            serde_json::json!({"acquired": "2026-11-23T10:15:00+08:00", "patient_id": "P/../7 王"}),
        );
        assert_eq!(
            file_stem(&r),
            "20261123101500_P_.._7___lingshan-xiacun_0123456789ab"
        );
        let r = row(serde_json::json!({}));
        assert!(file_stem(&r).contains("_unknown_lingshan-xiacun_"));
    }
}
