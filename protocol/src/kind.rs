//! What an item is, as the box names it in its offer and central routes
//! and files it: one type on both sides instead of strings compared in
//! several crates. The wire keeps the name (a newer box may send a kind an
//! older central does not know; that item is stored and listed, and goes
//! to no downstream system).

use std::fmt;

/// The kind of an item's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ItemKind {
    /// A DICOM Part 10 file (images, DICOM ECG waveforms, SR, PDF).
    Dicom,
    /// An SCP-ECG record (EN 1064).
    ScpEcg,
    /// An HL7 aECG XML document.
    Aecg,
    /// A PDF document (ECG reports from carts that print to a folder).
    Pdf,
    /// An HL7 v2 message.
    Hl7,
    /// An ASTM E1394 message from an analyzer.
    Astm,
    /// Anything else a drop folder or serial cart delivered.
    #[default]
    File,
}

impl ItemKind {
    pub const ALL: [ItemKind; 7] = [
        ItemKind::Dicom,
        ItemKind::ScpEcg,
        ItemKind::Aecg,
        ItemKind::Pdf,
        ItemKind::Hl7,
        ItemKind::Astm,
        ItemKind::File,
    ];

    /// The name in offers, the spool and listings.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Dicom => "dicom",
            ItemKind::ScpEcg => "scp-ecg",
            ItemKind::Aecg => "aecg",
            ItemKind::Pdf => "pdf",
            ItemKind::Hl7 => "hl7",
            ItemKind::Astm => "astm",
            ItemKind::File => "file",
        }
    }

    /// The kind a name stands for; `None` for a name this version does not
    /// know.
    pub fn parse(name: &str) -> Option<ItemKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// A laboratory message, for the LIS.
    pub fn is_lab_message(self) -> bool {
        matches!(self, ItemKind::Hl7 | ItemKind::Astm)
    }

    /// The file name extension an item of this kind is exported with.
    pub fn extension(self) -> &'static str {
        match self {
            ItemKind::Dicom => "dcm",
            ItemKind::ScpEcg => "scp",
            ItemKind::Aecg => "xml",
            ItemKind::Pdf => "pdf",
            ItemKind::Hl7 => "hl7",
            ItemKind::Astm => "astm",
            ItemKind::File => "bin",
        }
    }
}

impl fmt::Display for ItemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<ItemKind> for String {
    fn from(k: ItemKind) -> String {
        k.as_str().to_owned()
    }
}

/// Metadata keys the box writes and central reads.
pub mod keys {
    /// Set when the payload is an ECG (or needs the ECG reading system's
    /// review).
    pub const ECG: &str = "ecg";
    pub const SOP_INSTANCE_UID: &str = "sop_instance_uid";
    pub const CHARSET: &str = "charset";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_parses_back_from_its_name() {
        for k in ItemKind::ALL {
            assert_eq!(ItemKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(ItemKind::parse("hologram"), None);
    }
}
