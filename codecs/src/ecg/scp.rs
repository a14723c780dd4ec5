//! SCP-ECG (EN 1064 / ISO 11073-91064) record reader: record and section
//! CRCs, section 0 pointers, and the section 1 header tags, without
//! decoding any waveform.
//!
//! All integers are little-endian. The CRC is CRC-16/CCITT-FALSE (poly
//! 0x1021, init 0xFFFF); the record CRC covers bytes 2..length, a section's
//! CRC its bytes from 2 to its end. Section 0 pointers are 10 bytes (id,
//! length, 1-based index).
//!
//! Readers in the field meet records that break the rules (handheld
//! devices: 0-based indexes, the record length with its 16-bit words
//! swapped, CRC-16/XMODEM, big-endian years, files padded to a block size,
//! XMODEM's 0x1A padding). The standard reading is tried first, then the
//! known deviations; each one applied is recorded, and the record is
//! marked non-conformant rather than rejected. A record whose CRC matches
//! no known variant is returned with [`ScpRecord::trusted`] false: the
//! caller quarantines it and alerts, it never drops it.

/// A rule the record breaks, and how it was read anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deviation {
    /// Section indexes in section 0 count from 0.
    ZeroBasedIndexes,
    /// The record length's two 16-bit words are swapped.
    SwappedRecordLength,
    /// The record CRC is CRC-16/XMODEM (init 0) rather than CCITT-FALSE.
    XmodemCrc,
    /// The record CRC is stored big-endian.
    BigEndianCrc,
    /// Years are stored big-endian.
    BigEndianYear,
    /// Bytes follow the record (block-size or XMODEM padding): trimmed.
    Padded,
    /// The record CRC matches no known variant.
    BadRecordCrc,
    /// A section's CRC is wrong (its id).
    BadSectionCrc(u16),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScpError {
    #[error("too short for an SCP-ECG record ({0} bytes)")]
    TooShort(usize),
    #[error("record length {declared} does not fit the {actual} bytes present")]
    BadLength { declared: u32, actual: usize },
    #[error("section 0 is missing or malformed")]
    NoSection0,
}

/// Section 1 (patient and acquisition) fields, decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScpHeader {
    pub last_name: Option<String>,
    pub first_name: Option<String>,
    pub patient_id: Option<String>,
    /// (year, month, day)
    pub birth_date: Option<(u16, u8, u8)>,
    /// 0 not known, 1 male, 2 female, 9 unspecified.
    pub sex: Option<u8>,
    pub acquisition_date: Option<(u16, u8, u8)>,
    pub acquisition_time: Option<(u8, u8, u8)>,
    /// Offset from UTC in minutes (tag 34), when given.
    pub utc_offset_minutes: Option<i16>,
    /// Model description of the acquiring device (tag 14).
    pub device_model: Option<String>,
    pub institution: Option<String>,
    pub department: Option<String>,
    pub technician: Option<String>,
    /// Tag 24: 0 routine, 1–10 increasing urgency (STAT).
    pub stat_code: Option<u8>,
    pub free_text: Option<String>,
    /// Language support code (tag 14, byte 16).
    pub language: u8,
}

impl ScpHeader {
    /// A STAT ECG: the stat code says it is urgent.
    pub fn is_stat(&self) -> bool {
        self.stat_code.is_some_and(|c| c > 0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScpRecord {
    /// The record's own length (bytes after it were padding).
    pub length: usize,
    /// (id, length, offset) of each present section.
    pub sections: Vec<(u16, u32, usize)>,
    pub header: ScpHeader,
    pub deviations: Vec<Deviation>,
}

impl ScpRecord {
    /// Read by the standard, with no deviation.
    pub fn conformant(&self) -> bool {
        self.deviations.is_empty()
    }

    /// The record's integrity can be established (its CRC matches under
    /// the standard or a known variant, and every section's CRC is right).
    pub fn trusted(&self) -> bool {
        !self
            .deviations
            .iter()
            .any(|d| matches!(d, Deviation::BadRecordCrc | Deviation::BadSectionCrc(_)))
    }
}

pub use crate::crc::ccitt_false as crc_ccitt;
use crate::crc::xmodem as crc_xmodem;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        *b.get(at + 3)?,
    ]))
}

/// Reads a record (possibly followed by padding).
pub fn read_scp(bytes: &[u8]) -> Result<ScpRecord, ScpError> {
    if bytes.len() < 6 + 16 {
        return Err(ScpError::TooShort(bytes.len()));
    }
    let mut deviations = Vec::new();
    let declared = u32_at(bytes, 2).ok_or(ScpError::TooShort(bytes.len()))?;
    let swapped = declared.rotate_left(16);
    let fits = |l: u32| (22..=bytes.len() as u64).contains(&u64::from(l));
    let length = if fits(declared) {
        declared as usize
    } else if fits(swapped) {
        deviations.push(Deviation::SwappedRecordLength);
        swapped as usize
    } else {
        return Err(ScpError::BadLength {
            declared,
            actual: bytes.len(),
        });
    };
    if bytes.len() > length {
        deviations.push(Deviation::Padded);
    }
    let rec = &bytes[..length];

    let stored_le = u16_at(rec, 0).unwrap_or(0);
    let stored_be = stored_le.swap_bytes();
    let body = &rec[2..];
    let ccitt = crc_ccitt(body);
    let xmodem = crc_xmodem(body);
    if ccitt == stored_le {
    } else if ccitt == stored_be {
        deviations.push(Deviation::BigEndianCrc);
    } else if xmodem == stored_le {
        deviations.push(Deviation::XmodemCrc);
    } else if xmodem == stored_be {
        deviations.push(Deviation::XmodemCrc);
        deviations.push(Deviation::BigEndianCrc);
    } else {
        deviations.push(Deviation::BadRecordCrc);
    }
    let xmodem_sections = deviations.contains(&Deviation::XmodemCrc);

    // Section 0 at offset 6.
    if u16_at(rec, 6 + 2) != Some(0) {
        return Err(ScpError::NoSection0);
    }
    let s0_len = u32_at(rec, 6 + 4).ok_or(ScpError::NoSection0)? as usize;
    if s0_len < 16 || 6 + s0_len > rec.len() {
        return Err(ScpError::NoSection0);
    }
    let mut pointers = Vec::new();
    let mut at = 6 + 16;
    while at + 10 <= 6 + s0_len && pointers.len() < 64 {
        let (Some(id), Some(len), Some(index)) =
            (u16_at(rec, at), u32_at(rec, at + 2), u32_at(rec, at + 6))
        else {
            break;
        };
        pointers.push((id, len, index));
        at += 10;
    }
    // 1-based by the standard; some devices count from 0. Decide by where
    // section headers actually are.
    let header_at = |offset: usize, id: u16| u16_at(rec, offset + 2) == Some(id);
    let one_based_ok = pointers
        .iter()
        .filter(|(_, len, _)| *len > 0)
        .all(|(id, _, index)| *index >= 1 && header_at(*index as usize - 1, *id));
    let zero_based_ok = pointers
        .iter()
        .filter(|(_, len, _)| *len > 0)
        .all(|(id, _, index)| header_at(*index as usize, *id));
    let zero_based = !one_based_ok && zero_based_ok;
    if zero_based {
        deviations.push(Deviation::ZeroBasedIndexes);
    }
    let mut sections = Vec::new();
    for (id, len, index) in pointers {
        if len == 0 {
            continue;
        }
        let offset = if zero_based {
            index as usize
        } else {
            (index as usize).saturating_sub(1)
        };
        let end = offset.saturating_add(len as usize);
        if offset < 6 || end > rec.len() || len < 16 {
            continue;
        }
        let sec = &rec[offset..end];
        let stored = u16_at(sec, 0).unwrap_or(0);
        let crc = if xmodem_sections {
            crc_xmodem(&sec[2..])
        } else {
            crc_ccitt(&sec[2..])
        };
        if crc != stored && crc.swap_bytes() != stored {
            deviations.push(Deviation::BadSectionCrc(id));
        }
        sections.push((id, len, offset));
    }
    let mut header = ScpHeader::default();
    if let Some(&(_, len, offset)) = sections.iter().find(|s| s.0 == 1) {
        read_section1(
            &rec[offset + 16..offset + len as usize],
            &mut header,
            &mut deviations,
        );
    }
    Ok(ScpRecord {
        length,
        sections,
        header,
        deviations,
    })
}

fn text(value: &[u8], language: u8) -> Option<String> {
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    let raw = &value[..end];
    if raw.is_empty() {
        return None;
    }
    let s = match language {
        0x01 => encoding_rs::WINDOWS_1252.decode(raw).0.into_owned(),
        // GB2312 (0x27 per ECG Toolkit), read with its superset GB18030.
        0x27 => encoding_rs::GB18030.decode(raw).0.into_owned(),
        _ => match std::str::from_utf8(raw) {
            Ok(s) => s.to_owned(),
            Err(_) => encoding_rs::GB18030.decode(raw).0.into_owned(),
        },
    };
    let s = s.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

fn date(value: &[u8], deviations: &mut Vec<Deviation>) -> Option<(u16, u8, u8)> {
    let year = u16_at(value, 0)?;
    let (month, day) = (*value.get(2)?, *value.get(3)?);
    let plausible = |y: u16| (1850..=2200).contains(&y);
    let year = if plausible(year) {
        year
    } else if plausible(year.swap_bytes()) {
        if !deviations.contains(&Deviation::BigEndianYear) {
            deviations.push(Deviation::BigEndianYear);
        }
        year.swap_bytes()
    } else {
        return None;
    };
    ((1..=12).contains(&month) && (1..=31).contains(&day)).then_some((year, month, day))
}

fn read_section1(data: &[u8], h: &mut ScpHeader, deviations: &mut Vec<Deviation>) {
    // The language byte (tag 14, byte 16) decides how strings decode, and
    // tag 14 may come after the names: find it first.
    let mut tags = Vec::new();
    let mut at = 0;
    while at + 3 <= data.len() {
        let tag = data[at];
        let len = u16::from_le_bytes([data[at + 1], data[at + 2]]) as usize;
        if tag == 255 {
            break;
        }
        let Some(value) = data.get(at + 3..at + 3 + len) else {
            break;
        };
        tags.push((tag, value));
        at += 3 + len;
    }
    if let Some((_, dev)) = tags.iter().find(|(t, _)| *t == 14) {
        h.language = dev.get(16).copied().unwrap_or(0);
        h.device_model = dev.get(8..14).and_then(|m| text(m, 0));
    }
    let lang = h.language;
    for (tag, value) in tags {
        match tag {
            0 => h.last_name = text(value, lang),
            1 => h.first_name = text(value, lang),
            2 => h.patient_id = text(value, lang),
            5 => h.birth_date = date(value, deviations),
            8 => h.sex = value.first().copied(),
            16 => h.institution = text(value, lang),
            18 => h.department = text(value, lang),
            22 => h.technician = text(value, lang),
            24 => h.stat_code = value.first().copied(),
            25 => h.acquisition_date = date(value, deviations),
            26 => {
                if let [hh, mm, ss, ..] = value {
                    h.acquisition_time = Some((*hh, *mm, *ss));
                }
            }
            30 => h.free_text = text(value, lang),
            34 => h.utc_offset_minutes = u16_at(value, 0).map(|v| v as i16),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a small record: section 0 and section 1 with `tags`.
    fn build(tags: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut s1 = vec![0u8; 16];
        for (t, v) in tags {
            s1.push(*t);
            s1.extend_from_slice(&(v.len() as u16).to_le_bytes());
            s1.extend_from_slice(v);
        }
        s1.extend_from_slice(&[255, 0, 0]);
        let s0_len = 16 + 2 * 10;
        let s1_offset = 6 + s0_len;
        let mut s0 = vec![0u8; 16];
        for (id, len, index) in [
            (0u16, s0_len as u32, 7u32),
            (1, s1.len() as u32, s1_offset as u32 + 1),
        ] {
            s0.extend_from_slice(&id.to_le_bytes());
            s0.extend_from_slice(&len.to_le_bytes());
            s0.extend_from_slice(&index.to_le_bytes());
        }
        let mut rec = vec![0u8; 6];
        let fix = |sec: &mut Vec<u8>, id: u16| {
            let len = sec.len() as u32;
            sec[2..4].copy_from_slice(&id.to_le_bytes());
            sec[4..8].copy_from_slice(&len.to_le_bytes());
            sec[8] = 20;
            sec[9] = 20;
            if id == 0 {
                sec[10..16].copy_from_slice(b"SCPECG");
            }
            let crc = crc_ccitt(&sec[2..]);
            sec[0..2].copy_from_slice(&crc.to_le_bytes());
        };
        fix(&mut s0, 0);
        fix(&mut s1, 1);
        rec.extend(s0);
        rec.extend(s1);
        let len = rec.len() as u32;
        rec[2..6].copy_from_slice(&len.to_le_bytes());
        let crc = crc_ccitt(&rec[2..]);
        rec[0..2].copy_from_slice(&crc.to_le_bytes());
        rec
    }

    fn device(language: u8) -> Vec<u8> {
        let mut d = vec![0u8; 40];
        d[8..14].copy_from_slice(b"ELI250");
        d[16] = language;
        d
    }

    fn sample_tags(language: u8, last: &[u8]) -> Vec<(u8, Vec<u8>)> {
        vec![
            (0, [last, b"\0"].concat()),
            (2, b"PAT42\0".to_vec()),
            (5, [1980u16.to_le_bytes().to_vec(), vec![6, 15]].concat()),
            (8, vec![1]),
            (14, device(language)),
            (24, vec![2]),
            (25, [2026u16.to_le_bytes().to_vec(), vec![11, 23]].concat()),
            (26, vec![9, 30, 5]),
        ]
    }

    #[test]
    fn conformant_record_reads_fully() {
        let rec = build(&sample_tags(0, b"Doe"));
        let r = read_scp(&rec).expect("reads");
        assert!(r.conformant(), "{:?}", r.deviations);
        assert!(r.trusted());
        assert_eq!(r.header.last_name.as_deref(), Some("Doe"));
        assert_eq!(r.header.patient_id.as_deref(), Some("PAT42"));
        assert_eq!(r.header.birth_date, Some((1980, 6, 15)));
        assert_eq!(r.header.acquisition_date, Some((2026, 11, 23)));
        assert_eq!(r.header.acquisition_time, Some((9, 30, 5)));
        assert_eq!(r.header.device_model.as_deref(), Some("ELI250"));
        assert!(r.header.is_stat());
    }

    #[test]
    fn gb2312_names_by_the_language_byte() {
        let (name, _, _) = encoding_rs::GB18030.encode("张三");
        let rec = build(&sample_tags(0x27, &name));
        let r = read_scp(&rec).expect("reads");
        assert_eq!(r.header.last_name.as_deref(), Some("张三"));
    }

    #[test]
    fn known_deviations_are_read_and_marked() {
        let good = build(&sample_tags(0, b"Doe"));
        // Padded to a block with XMODEM's 0x1A.
        let mut padded = good.clone();
        padded.resize(good.len().div_ceil(128) * 128, 0x1A);
        let r = read_scp(&padded).expect("reads");
        assert_eq!(r.deviations, vec![Deviation::Padded]);
        assert_eq!(r.length, good.len());
        // Swapped record length words (then the record CRC no longer
        // matches the bytes either, as on the devices that do this).
        let mut swapped = good.clone();
        let len = u32::from_le_bytes([good[2], good[3], good[4], good[5]]).rotate_left(16);
        swapped[2..6].copy_from_slice(&len.to_le_bytes());
        let r = read_scp(&swapped).expect("reads");
        assert!(r.deviations.contains(&Deviation::SwappedRecordLength));
        // CRC-16/XMODEM, stored big-endian.
        let mut xm = good.clone();
        let crc = crc_xmodem(&xm[2..]);
        xm[0..2].copy_from_slice(&crc.to_be_bytes());
        let r = read_scp(&xm).expect("reads");
        assert!(
            r.deviations.contains(&Deviation::XmodemCrc)
                && r.deviations.contains(&Deviation::BigEndianCrc)
        );
        // A damaged byte: read, but not trusted.
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 5] ^= 0xFF;
        let r = read_scp(&bad).expect("reads");
        assert!(!r.trusted());
    }

    #[test]
    fn big_endian_years_and_zero_based_indexes() {
        let mut tags = sample_tags(0, b"Doe");
        tags[2].1 = [1980u16.to_be_bytes().to_vec(), vec![6, 15]].concat();
        let mut rec = build(&tags);
        // Rewrite section 0's pointers to be 0-based and fix the CRCs.
        for p in 0..2 {
            let at = 6 + 16 + p * 10 + 6;
            let idx = u32::from_le_bytes([rec[at], rec[at + 1], rec[at + 2], rec[at + 3]]) - 1;
            rec[at..at + 4].copy_from_slice(&idx.to_le_bytes());
        }
        let s0_end = 6 + 16 + 20;
        let crc = crc_ccitt(&rec[8..s0_end]);
        rec[6..8].copy_from_slice(&crc.to_le_bytes());
        let crc = crc_ccitt(&rec[2..]);
        rec[0..2].copy_from_slice(&crc.to_le_bytes());
        let r = read_scp(&rec).expect("reads");
        assert!(
            r.deviations.contains(&Deviation::ZeroBasedIndexes),
            "{:?}",
            r.deviations
        );
        assert!(r.deviations.contains(&Deviation::BigEndianYear));
        assert_eq!(r.header.birth_date, Some((1980, 6, 15)));
        assert!(r.trusted());
    }

    #[test]
    fn conformance_sample_when_present() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/samples/scp-ecg/ecgtoolkit_Example.scp");
        let Ok(bytes) = std::fs::read(path) else {
            return;
        };
        let r = read_scp(&bytes).expect("reads");
        assert!(r.trusted(), "{:?}", r.deviations);
        assert!(r.conformant(), "{:?}", r.deviations);
        assert_eq!(r.header.device_model.as_deref(), Some("ELI250"));
        assert!(r.sections.iter().any(|s| s.0 == 1));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(read_scp(b"short").is_err());
        assert!(read_scp(&[0xFF; 100]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = read_scp(&data);
        }

        #[test]
        fn never_panics_on_damaged_records(flips in proptest::collection::vec((0usize..200, proptest::prelude::any::<u8>()), 1..8)) {
            let mut rec = build(&sample_tags(0, b"Doe"));
            for (at, v) in flips {
                let n = rec.len();
                rec[at % n] = v;
            }
            let _ = read_scp(&rec);
        }
    }
}
