//! `[[report_sink]]`: where reports from the hospital go at the clinic —
//! a folder the clinic's PC opens, a printer, the clinic's HIS over HL7.
//! Each sink gets every report (or the kinds it names) exactly once.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkType {
    /// The report's PDF (or its text) and a JSON sidecar, written
    /// atomically into `dir`.
    Folder,
    /// Printed through CUPS (`lp`) on `printer`, or the default printer.
    Printer,
    /// Sent to the clinic's HIS over MLLP at `address`, as received.
    Hl7,
    /// Stored at the clinic's DICOM viewer (`address`, `ae_title`) by
    /// C-STORE: a PDF as Encapsulated PDF, text as a Basic Text SR.
    Dicom,
}

impl SinkType {
    pub fn name(self) -> &'static str {
        match self {
            SinkType::Folder => "folder",
            SinkType::Printer => "printer",
            SinkType::Hl7 => "hl7",
            SinkType::Dicom => "dicom",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSinkSection {
    /// For the page, metrics and receipts, e.g. "reports-folder".
    pub name: String,
    #[serde(rename = "type")]
    pub sink_type: SinkType,
    /// `folder`: where the files go.
    pub dir: Option<PathBuf>,
    /// `printer`: the CUPS queue; the default printer when absent.
    pub printer: Option<String>,
    /// `printer`: the CUPS server (`host[:port]` or a socket path) when
    /// the printer is shared from another machine; this box's CUPS
    /// otherwise.
    pub server: Option<String>,
    /// `hl7`: `host:port` of the HIS's MLLP listener; `dicom`: of the
    /// viewer's DICOM listener.
    pub address: Option<String>,
    /// `dicom`: the viewer's AE title.
    pub ae_title: Option<String>,
    /// `dicom`: ours, as the viewer knows it (`YILIAN_GW` by default).
    pub calling_ae_title: Option<String>,
    /// `hl7`: resend (same MSH-10) when no ACK came within this; `dicom`:
    /// how long the viewer may take to answer.
    #[serde(default = "default_ack_timeout", with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// Only reports of these kinds (`imaging`, `ecg`, `lab`, `document`);
    /// all when empty.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// `hl7`: MSH-5 and MSH-6 as the clinic's HIS expects them (as the
    /// hospital sent them when absent).
    pub receiving_application: Option<String>,
    pub receiving_facility: Option<String>,
    /// `hl7`: the character set the HIS reads (`utf-8`, `gb18030`); the
    /// hospital's when absent.
    pub charset: Option<String>,
    /// `hl7`: keep an embedded PDF (OBX of type ED) in the message; a HIS
    /// that stores text only is sent the text.
    #[serde(default = "keep_pdf")]
    pub embed_pdf: bool,
}

fn keep_pdf() -> bool {
    true
}

fn default_ack_timeout() -> Duration {
    Duration::from_secs(30)
}

pub const REPORT_KINDS: &[&str] = &["imaging", "ecg", "lab", "document"];

impl ReportSinkSection {
    /// What is wrong with the section, as (key, message).
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Some((
                "name",
                format!(
                    "{:?}: use letters, digits, '-' and '_' (it names the sink in receipts)",
                    self.name
                ),
            ));
        }
        match self.sink_type {
            SinkType::Folder if self.dir.is_none() => {
                return Some(("dir", "required with type = \"folder\"".into()));
            }
            SinkType::Hl7 | SinkType::Dicom => match &self.address {
                None => {
                    return Some((
                        "address",
                        format!("required with type = \"{}\"", self.sink_type.name()),
                    ));
                }
                Some(a) if a.rsplit_once(':').is_none() => {
                    return Some(("address", format!("{a:?} is not HOST:PORT")));
                }
                _ if self.sink_type == SinkType::Dicom
                    && self
                        .ae_title
                        .as_deref()
                        .is_none_or(|t| t.trim().is_empty() || t.len() > 16) =>
                {
                    return Some((
                        "ae_title",
                        "the viewer's AE title (1 to 16 characters) is required with type = \"dicom\"".into(),
                    ));
                }
                _ => {}
            },
            _ => {}
        }
        if let Some(cs) = &self.charset
            && yilian_codecs::hl7::Charset::from_label(cs).is_none()
        {
            return Some((
                "charset",
                format!("unknown charset {cs:?}: use utf-8 or gb18030"),
            ));
        }
        if self.sink_type != SinkType::Hl7
            && (self.charset.is_some()
                || self.receiving_application.is_some()
                || self.receiving_facility.is_some()
                || !self.embed_pdf)
        {
            return Some((
                "charset",
                "charset, receiving_application, receiving_facility and embed_pdf apply to type = \"hl7\" only".into(),
            ));
        }
        if let Some(k) = self
            .kinds
            .iter()
            .find(|k| !REPORT_KINDS.contains(&k.as_str()))
        {
            return Some((
                "kinds",
                format!(
                    "{k:?} is not a report kind (use {})",
                    REPORT_KINDS.join(", ")
                ),
            ));
        }
        None
    }

    /// How an `hl7` sink rebuilds each message for the clinic's HIS.
    pub fn rebuild(&self) -> yilian_codecs::hl7::rebuild::Rebuild {
        yilian_codecs::hl7::rebuild::Rebuild {
            receiving_application: self.receiving_application.clone(),
            receiving_facility: self.receiving_facility.clone(),
            charset: self
                .charset
                .as_deref()
                .and_then(yilian_codecs::hl7::Charset::from_label),
            drop_embedded: !self.embed_pdf,
        }
    }

    /// Whether this sink takes reports of `kind`.
    pub fn takes(&self, kind: &str) -> bool {
        self.kinds.is_empty() || self.kinds.iter().any(|k| k == kind)
    }
}
