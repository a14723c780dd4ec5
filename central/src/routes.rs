//! Where a committed item goes: the downstream systems this central feeds,
//! chosen by the item's kind and the box's marks on it. Each destination
//! drains its own outbox ([`crate::outbox`]).

use yilian_protocol::ItemKind;
use yilian_protocol::kind::keys;

/// Which downstream systems this central feeds, and so where a committed
/// item goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Routes {
    /// Lab messages (HL7, ASTM) to the hospital LIS.
    pub lis: bool,
    /// ECGs to the ECG reading system.
    pub ecg: bool,
    /// DICOM instances to the hospital PACS.
    pub pacs: bool,
}

impl Routes {
    /// The destinations of an item of `kind` (by its offered name) with
    /// this metadata. A kind this version does not know is stored and
    /// listed but sent nowhere.
    pub fn destinations<'a>(
        &self,
        kind: &str,
        mut metadata_keys: impl Iterator<Item = &'a String>,
    ) -> Vec<&'static str> {
        let kind = ItemKind::parse(kind);
        let mut d = Vec::new();
        if self.lis && kind.is_some_and(ItemKind::is_lab_message) {
            d.push(crate::lis::DESTINATION);
        }
        // Gateways mark ECG records, ECG reports and whatever an ECG
        // source sent that needs review.
        if self.ecg && metadata_keys.any(|k| k == keys::ECG) {
            d.push(crate::ecg::DESTINATION);
        }
        // DICOM ECGs go to the PACS as well as to the ECG system.
        if self.pacs && kind == Some(ItemKind::Dicom) {
            d.push(crate::pacs::DESTINATION);
        }
        d
    }
}
