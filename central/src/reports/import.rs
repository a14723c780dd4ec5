//! An import folder for reading systems that export files instead of
//! sending HL7: a PDF or XML report, a DICOM SR or Encapsulated PDF (or an
//! HL7 message saved to a file),
//! recognised by content, never by its name. A file is taken once its size
//! and time have settled, kept as a report like any other (a PDF or XML
//! wrapped as an MDM^T02 document whose MSH-10 derives from the file's
//! hash, so the same file taken twice is one report), and moved into
//! `imported/` only after that commit; a file that is not a report is
//! moved into `rejected/` with a `.why` note. Nothing is deleted.
//!
//! Its clinic is found from the file name: an ECG reading system keeps the
//! name central gave the ECG it read (`…_<upload id>`), so its report
//! finds the upload it answers; the patient ID is the name's second part
//! in that same layout.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use yilian_codecs::hl7::report::read_report;
use yilian_codecs::hl7::{Message, decode};

use super::listener::ReportIntake;

/// A file whose size and time have not changed for this long is whole.
const SETTLE: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(500);
/// Larger is not a report.
const MAX_FILE: u64 = 64 * 1024 * 1024;

pub struct ImportFolder {
    pub dir: PathBuf,
    pub intake: ReportIntake,
}

/// What a file holds.
enum Found {
    /// An HL7 report as a file: taken as it is.
    Hl7(Vec<u8>),
    /// A document to wrap: its MIME subtype and bytes.
    Document(&'static str, Vec<u8>),
    /// A DICOM SR or Encapsulated PDF, already read into its ORU.
    Dicom(String),
}

fn recognise(bytes: Vec<u8>) -> Result<Found, String> {
    if bytes.get(128..132) == Some(&b"DICM"[..]) {
        let r = yilian_codecs::dicom_report::read_report_file(&bytes)?;
        return Ok(Found::Dicom(r.to_oru("IMPORT", &hl7_now())));
    }
    if bytes.starts_with(b"%PDF") {
        return Ok(Found::Document("pdf", bytes));
    }
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
    let head = head.trim_start_matches(['\u{feff}', ' ', '\r', '\n', '\t', '\x0b']);
    if head.starts_with("MSH") {
        return Ok(Found::Hl7(bytes));
    }
    if head.starts_with("<?xml") || head.starts_with('<') {
        return Ok(Found::Document("xml", bytes));
    }
    Err("neither a PDF, an XML document, a DICOM report nor an HL7 message".into())
}

/// Now, as an HL7 timestamp.
pub fn hl7_now() -> String {
    hl7_ts(SystemTime::now())
}

fn hl7_ts(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .chars()
        .filter(char::is_ascii_digit)
        .take(14)
        .collect()
}

/// A field value safe between HL7 delimiters.
fn field(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '|' | '^' | '~' | '\\' | '&' | '\r' | '\n'))
        .take(64)
        .collect()
}

/// Wraps a document as an MDM^T02 (TXA, then an ED OBX), keyed by the
/// file's name; returns the message.
pub fn wrap(stem: &str, subtype: &str, bytes: &[u8], modified: SystemTime) -> String {
    // The name and the bytes: the same file taken twice is one report,
    // while two reports that happen to be byte-identical (a template
    // "normal ECG" page) under two names stay two.
    let mut h = Sha256::new();
    h.update(stem.as_bytes());
    h.update(b"\n");
    h.update(bytes);
    let sha = hex::encode(h.finalize());
    let control = format!("F{}", &sha[..19]);
    let parts: Vec<&str> = stem.split('_').collect();
    let patient = parts.get(1).copied().unwrap_or("");
    let ts = hl7_ts(modified);
    let (mime, title) = match subtype {
        "pdf" => ("application", "Report (PDF)"),
        _ => ("text", "Report (XML)"),
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    format!(
        "MSH|^~\\&|IMPORT|READING|YILIAN|HUB|{ts}||MDM^T02|{control}|P|2.5\r\
         PID|1||{patient}\r\
         TXA|1|REPORT^{title}|{subtype_up}|{ts}||||||||{stem}|{stem}||||AU||{ts}\r\
         OBX|1|ED|REPORT^{title}||^{mime}^{subtype_up}^Base64^{b64}||||||F\r",
        patient = field(patient),
        stem = field(stem),
        subtype_up = subtype.to_ascii_uppercase(),
    )
}

impl ImportFolder {
    /// Watches the folder until `stop`.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        for sub in ["imported", "rejected"] {
            if let Err(e) = std::fs::create_dir_all(self.dir.join(sub)) {
                tracing::error!(dir = %self.dir.display(), error = %e, "cannot prepare the report import folder");
            }
        }
        tracing::info!(dir = %self.dir.display(), "watching the report import folder");
        let mut seen: HashMap<PathBuf, (u64, SystemTime, std::time::Instant)> = HashMap::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = stop.changed() => return,
            }
            let dir = self.dir.clone();
            let listed = tokio::task::spawn_blocking(move || list(&dir)).await;
            let Ok(files) = listed else { return };
            seen.retain(|p, _| files.iter().any(|(f, _, _)| f == p));
            for (path, len, modified) in files {
                let now = std::time::Instant::now();
                let entry = seen.entry(path.clone()).or_insert((len, modified, now));
                if (entry.0, entry.1) != (len, modified) {
                    *entry = (len, modified, now);
                    continue;
                }
                if now.duration_since(entry.2) < SETTLE {
                    continue;
                }
                self.take(&path, len, modified).await;
                seen.remove(&path);
            }
        }
    }

    async fn take(&self, path: &Path, len: u64, modified: SystemTime) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stem = name
            .rsplit_once('.')
            .map_or(name.as_str(), |(s, _)| s)
            .to_owned();
        if len > MAX_FILE {
            self.set_aside(
                path,
                &name,
                &format!("{len} bytes is larger than a report ({MAX_FILE} at most)"),
            )
            .await;
            return;
        }
        let p = path.to_owned();
        // Reading a DICOM report is CPU work too: both off the runtime.
        let Ok(Ok(found)) =
            tokio::task::spawn_blocking(move || std::fs::read(&p).map(recognise)).await
        else {
            return; // gone or unreadable now: looked at again next time
        };
        let (message, source) = match found {
            Ok(Found::Hl7(b)) => (b, None),
            Ok(Found::Dicom(oru)) => (oru.into_bytes(), Some(super::dicom_scp::SOURCE)),
            Ok(Found::Document(subtype, b)) => (
                wrap(&stem, subtype, &b, modified).into_bytes(),
                Some("IMPORT^READING"),
            ),
            Err(why) => {
                self.set_aside(path, &name, &why).await;
                return;
            }
        };
        let decoded = decode(&message, None);
        let report = Message::parse(&decoded.text)
            .map_err(|e| e.to_string())
            .and_then(|m| {
                let source = source
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("{}^{}", m.get("MSH", 3, 1), m.get("MSH", 4, 1)));
                read_report(&m)
                    .map(|r| (r, source))
                    .map_err(|e| e.to_string())
            });
        let (mut report, source) = match report {
            Ok(r) => r,
            Err(why) => {
                self.set_aside(path, &name, &why).await;
                return;
            }
        };
        // The file's name is the key a reading system keeps.
        if report.keys.filler.is_empty() {
            report.keys.filler = stem.clone();
        }
        // A failed commit is logged by the intake; the file stays and is
        // taken again next time.
        if self
            .intake
            .take(report, &source, message, &format!("import:{name}"))
            .await
            .is_ok()
        {
            let (from, to) = (path.to_owned(), self.dir.join("imported").join(&name));
            let dir = self.dir.clone();
            let moved = tokio::task::spawn_blocking(move || {
                std::fs::rename(&from, &to)?;
                yilian_proof::disk::sync_dir(&dir)
            })
            .await;
            if !matches!(moved, Ok(Ok(()))) {
                // Taken again next time: the same report, answered from
                // what is held.
                tracing::warn!(file = %name, "imported report could not be moved to imported/");
            }
        }
    }

    async fn set_aside(&self, path: &Path, name: &str, why: &str) {
        tracing::warn!(file = %name, reason = %why, "a file in the report import folder is not a report; moved to rejected/");
        let rejected = self.dir.join("rejected");
        let (from, to) = (path.to_owned(), rejected.join(name));
        let note = rejected.join(format!("{name}.why"));
        let why = why.to_owned();
        let _ = tokio::task::spawn_blocking(move || {
            std::fs::write(&note, format!("{why}\n"))?;
            std::fs::rename(&from, &to)
        })
        .await;
    }
}

/// Regular, visible files directly in `dir`: path, size, modification time.
fn list(dir: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            m.is_file().then(|| {
                (
                    e.path(),
                    m.len(),
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pdf_is_wrapped_as_a_document_that_reads_back() {
        let stem = "20261203101500_P1_lingshan-xiacun_0193a1b2c3d4";
        let text = wrap(stem, "pdf", b"%PDF-1.4 x", SystemTime::UNIX_EPOCH);
        let m = Message::parse(&text).expect("parses");
        let r = read_report(&m).expect("a report");
        assert_eq!(r.pdf.as_deref(), Some(&b"%PDF-1.4 x"[..]));
        assert_eq!(r.keys.patient_id, "P1");
        assert_eq!(r.keys.filler, stem);
        // The same file gives the same control id: one report; the same
        // bytes under another name are another report.
        let again = |stem: &str| {
            read_report(
                &Message::parse(&wrap(stem, "pdf", b"%PDF-1.4 x", SystemTime::now()))
                    .expect("parses"),
            )
            .expect("a report")
            .control_id
        };
        assert_eq!(r.control_id, again(stem));
        assert_ne!(
            r.control_id,
            again("20261203101500_P2_lingshan-xiacun_0193a1b2c3d5")
        );
    }
}
