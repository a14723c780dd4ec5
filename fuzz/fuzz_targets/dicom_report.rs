//! Network and file input: a report data set from a hospital PACS (C-STORE
//! at central) or a Part 10 file in the import folder, read as a report
//! and written out as the ORU central keeps.
#![no_main]

use libfuzzer_sys::fuzz_target;
use yilian_codecs::dicom_report::{read_dataset, read_report, read_report_file};
use yilian_codecs::hl7::Message;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the path: a network data set in one of the two
    // transfer syntaxes a PACS proposes, or a Part 10 file.
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let report = match pick % 3 {
        0 => read_dataset(rest, "1.2.840.10008.1.2.1")
            .ok()
            .and_then(|o| read_report(&o, "", "").ok()),
        1 => read_dataset(rest, "1.2.840.10008.1.2")
            .ok()
            .and_then(|o| read_report(&o, "1.2.840.10008.5.1.4.1.1.88.11", "1.2").ok()),
        _ => {
            let mut f = vec![0u8; 128];
            f.extend_from_slice(b"DICM");
            f.extend_from_slice(rest);
            read_report_file(&f).ok()
        }
    };
    if let Some(r) = report {
        // What we write must read back as one message.
        let oru = r.to_oru("PACS", "20261203");
        assert!(Message::parse(&oru).is_ok());
    }
});
