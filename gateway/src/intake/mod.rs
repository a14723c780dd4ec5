//! Device adapters that feed the spool. Each one acknowledges its device
//! (or, for a folder, removes the file) only with a spool `Committed` proof.
//!
//! Every adapter is a [`Source`]: [`sources`] makes one per configured
//! device and the box starts them all in one loop. A new device family is
//! one module implementing [`Source`], storing through
//! [`source::Intake::spool_item`], and one line in [`sources`].

pub mod astm;
pub mod dicom;
pub mod ecg_serial;
pub mod folder;
pub mod mllp;
pub mod open_senders;
pub mod serial;
pub mod source;
pub mod warn_limit;

pub use source::{Shared, Source};

use crate::config::GatewayConfig;

/// One source per configured device, in the configuration's order.
pub fn sources(config: &GatewayConfig, shared: &Shared) -> Vec<Box<dyn Source>> {
    let mut all: Vec<Box<dyn Source>> = Vec::new();
    for c in &config.folder {
        all.push(Box::new(folder::FolderIntake::new(c.clone(), shared)));
    }
    for c in &config.hl7 {
        all.push(Box::new(mllp::MllpListener::new(c.clone(), shared)));
    }
    for c in &config.astm {
        all.push(Box::new(astm::AstmAdapter::new(c.clone(), shared)));
    }
    for c in &config.dicom {
        all.push(Box::new(dicom::DicomNode::new(c.clone(), shared)));
    }
    for c in &config.ecg_serial {
        all.push(Box::new(ecg_serial::EcgSerialAdapter::new(
            c.clone(),
            shared,
        )));
    }
    all
}
