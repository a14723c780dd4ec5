//! A modality on the bench: CT series written as Part 10 files, and
//! dcmtk's `storescu`/`echoscu` (called by their `/usr/bin` paths: pynetdicom
//! installs scripts of the same names) to send them, as a real CT or DR
//! console would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

pub const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

/// A CT study: `images` slices of `rows`×`cols` 16-bit pixels, one series.
#[derive(Debug, Clone)]
pub struct CtStudy {
    pub patient_id: String,
    pub patient_name: String,
    pub study_uid: String,
    pub series_uid: String,
    pub images: usize,
    pub rows: u16,
    pub cols: u16,
    /// Acquisition date and time (`YYYYMMDD`, `HHMMSS`) in the
    /// modality's local time, when set.
    pub acquired: Option<(String, String)>,
}

impl CtStudy {
    /// A study whose UIDs derive from `seed`.
    pub fn new(seed: u32, images: usize) -> Self {
        let root = "1.2.826.0.1.3680043.10.1431.9";
        Self {
            patient_id: format!("CT{seed:05}"),
            patient_name: "Zhang^San=张^三".into(),
            study_uid: format!("{root}.{seed}.1"),
            series_uid: format!("{root}.{seed}.2"),
            images,
            rows: 512,
            cols: 512,
            acquired: None,
        }
    }

    pub fn sop_instance_uid(&self, i: usize) -> String {
        format!("{}.{}", self.series_uid, i + 1)
    }

    /// Writes the slices into `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let mut paths = Vec::with_capacity(self.images);
        for i in 0..self.images {
            let path = dir.join(format!("CT{:04}.dcm", i + 1));
            self.slice(i)?
                .write_to_file(&path)
                .map_err(std::io::Error::other)?;
            paths.push(path);
        }
        Ok(paths)
    }

    fn slice(&self, i: usize) -> std::io::Result<dicom_object::DefaultDicomObject> {
        let sop = self.sop_instance_uid(i);
        let mut o = InMemDicomObject::new_empty();
        let s = |tag, vr, v: &str| DataElement::new(tag, vr, PrimitiveValue::from(v));
        o.put(s(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"));
        o.put(s(tags::SOP_CLASS_UID, VR::UI, CT_IMAGE_STORAGE));
        o.put(s(tags::SOP_INSTANCE_UID, VR::UI, &sop));
        o.put(s(tags::STUDY_DATE, VR::DA, "20261123"));
        if let Some((day, time)) = &self.acquired {
            o.put(s(tags::CONTENT_DATE, VR::DA, day));
            o.put(s(tags::CONTENT_TIME, VR::TM, time));
        }
        o.put(s(tags::ACCESSION_NUMBER, VR::SH, "ACC0001"));
        o.put(s(tags::MODALITY, VR::CS, "CT"));
        o.put(s(tags::PATIENT_NAME, VR::PN, &self.patient_name));
        o.put(s(tags::PATIENT_ID, VR::LO, &self.patient_id));
        o.put(s(tags::STUDY_INSTANCE_UID, VR::UI, &self.study_uid));
        o.put(s(tags::SERIES_INSTANCE_UID, VR::UI, &self.series_uid));
        o.put(DataElement::new(
            tags::INSTANCE_NUMBER,
            VR::IS,
            PrimitiveValue::from((i + 1).to_string()),
        ));
        put_monochrome_16(&mut o, self.rows, self.cols, 12);
        let n = usize::from(self.rows) * usize::from(self.cols);
        // A deterministic pattern that differs per slice.
        let pixels: Vec<u8> = (0..n)
            .flat_map(|p| {
                let v = ((p.wrapping_mul(31) ^ i.wrapping_mul(2_654_435_761)) & 0x0FFF) as u16;
                v.to_le_bytes()
            })
            .collect();
        o.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::from(pixels),
        ));
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(CT_IMAGE_STORAGE)
            .media_storage_sop_instance_uid(&sop)
            .transfer_syntax(EXPLICIT_VR_LE);
        o.with_meta(meta).map_err(std::io::Error::other)
    }
}

/// The Image Pixel attributes of a grayscale image, 16 bits allocated.
fn put_monochrome_16(o: &mut InMemDicomObject, rows: u16, cols: u16, bits_stored: u16) {
    let us = |tag, v: u16| DataElement::new(tag, VR::US, PrimitiveValue::from(v));
    o.put(us(tags::SAMPLES_PER_PIXEL, 1));
    o.put(DataElement::new(
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        PrimitiveValue::from("MONOCHROME2"),
    ));
    o.put(us(tags::ROWS, rows));
    o.put(us(tags::COLUMNS, cols));
    o.put(us(tags::BITS_ALLOCATED, 16));
    o.put(us(tags::BITS_STORED, bits_stored));
    o.put(us(tags::HIGH_BIT, bits_stored - 1));
    o.put(us(tags::PIXEL_REPRESENTATION, 0));
}

/// The bytes of a Part 10 file after its file meta group: the data set as
/// sent over the network, to compare a stored copy with its original.
pub fn dataset_bytes(file: &[u8]) -> Option<&[u8]> {
    if file.len() < 144 || &file[128..132] != b"DICM" {
        return None;
    }
    // (0002,0000) UL, explicit VR: tag 4, VR 2, length 2, value 4.
    let group_len = u32::from_le_bytes([file[140], file[141], file[142], file[143]]) as usize;
    file.get(144 + group_len..)
}

/// A dcmtk tool. `TCP_NODELAY=1`: dcmtk on Debian leaves Nagle's
/// algorithm on unless told, which adds a delayed-ACK stall (~40 ms) to
/// every small DIMSE message; measured without it, dcmtk looks ten times
/// slower than it is.
pub fn dcmtk(program: &str) -> Command {
    let mut c = Command::new(format!("/usr/bin/{program}"));
    c.env("TCP_NODELAY", "1");
    c
}

/// `echoscu` from `calling` to `ae@addr`.
pub fn echoscu(addr: SocketAddr, called: &str, calling: &str) -> std::io::Result<Output> {
    dcmtk("echoscu")
        .args(["-aet", calling, "-aec", called])
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .output()
}

/// `storescu` sending `files` in one association, as the files are
/// encoded (`--required`: no other transfer syntax is proposed).
pub fn storescu(
    addr: SocketAddr,
    called: &str,
    calling: &str,
    files: &[PathBuf],
) -> std::io::Result<Output> {
    dcmtk("storescu")
        .args(["-v", "-aet", calling, "-aec", called, "--required", "-nh"])
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .args(files)
        .output()
}

pub const MULTIFRAME_WORD_SC: &str = "1.2.840.10008.5.1.4.1.1.7.3";

/// Writes a multi-frame secondary capture of `frames` 1024×1024 16-bit
/// frames (2 MiB each) without holding it in memory: the header through
/// dicom-rs, then the pixel data streamed. Returns the file size.
pub fn write_large_multiframe(path: &Path, frames: u32) -> std::io::Result<u64> {
    use std::io::Write;
    let sop = format!("1.2.826.0.1.3680043.10.1431.9.7.{frames}");
    let mut o = InMemDicomObject::new_empty();
    let s = |tag, vr, v: &str| DataElement::new(tag, vr, PrimitiveValue::from(v));
    o.put(s(tags::SOP_CLASS_UID, VR::UI, MULTIFRAME_WORD_SC));
    o.put(s(tags::SOP_INSTANCE_UID, VR::UI, &sop));
    o.put(s(tags::MODALITY, VR::CS, "OT"));
    o.put(s(tags::PATIENT_ID, VR::LO, "BIG0001"));
    o.put(s(
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        "1.2.826.0.1.3680043.10.1431.9.7.1",
    ));
    o.put(s(
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        "1.2.826.0.1.3680043.10.1431.9.7.2",
    ));
    o.put(DataElement::new(
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        PrimitiveValue::from(frames.to_string()),
    ));
    put_monochrome_16(&mut o, 1024, 1024, 16);
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(MULTIFRAME_WORD_SC)
        .media_storage_sop_instance_uid(&sop)
        .transfer_syntax(EXPLICIT_VR_LE)
        .build()
        .map_err(std::io::Error::other)?;
    let mut f = std::io::BufWriter::with_capacity(4 << 20, std::fs::File::create(path)?);
    f.write_all(&[0u8; 128])?;
    f.write_all(b"DICM")?;
    meta.write(&mut f).map_err(std::io::Error::other)?;
    let ts = dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased();
    o.write_dataset_with_ts(&mut f, &ts)
        .map_err(std::io::Error::other)?;
    let frame = 1024 * 1024 * 2usize;
    let len = u32::try_from(frame as u64 * u64::from(frames))
        .map_err(|_| std::io::Error::other("pixel data over 4 GiB"))?;
    // (7FE0,0010) OW, explicit VR: tag, "OW", two reserved bytes, length.
    f.write_all(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0])?;
    f.write_all(&len.to_le_bytes())?;
    let block: Vec<u8> = (0..frame).map(|i| (i % 251) as u8).collect();
    for _ in 0..frames {
        f.write_all(&block)?;
    }
    f.flush()?;
    Ok(std::fs::metadata(path)?.len())
}

/// Writes a small secondary capture whose private OB element (0029,1010)
/// declares 2 GiB but holds four bytes: the data set a faulty console or a
/// hostile peer would send. Returns its SOP Instance UID.
pub fn write_malformed(path: &Path, seed: u32) -> std::io::Result<String> {
    const SC: &str = "1.2.840.10008.5.1.4.1.1.7";
    let sop = format!("1.2.826.0.1.3680043.10.1431.9.66.{seed}");
    let mut o = InMemDicomObject::new_empty();
    let s = |tag, vr, v: &str| DataElement::new(tag, vr, PrimitiveValue::from(v));
    o.put(s(tags::SOP_CLASS_UID, VR::UI, SC));
    o.put(s(tags::SOP_INSTANCE_UID, VR::UI, &sop));
    o.put(s(tags::PATIENT_ID, VR::LO, "BAD0001"));
    o.put(s(tags::MODALITY, VR::CS, "OT"));
    o.put(DataElement::new(
        dicom_core::Tag(0x0029, 0x1010),
        VR::OB,
        PrimitiveValue::from(vec![1u8, 2, 3, 4]),
    ));
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(SC)
        .media_storage_sop_instance_uid(&sop)
        .transfer_syntax(EXPLICIT_VR_LE)
        .build()
        .map_err(std::io::Error::other)?;
    let mut bytes = vec![0u8; 128];
    bytes.extend_from_slice(b"DICM");
    meta.write(&mut bytes).map_err(std::io::Error::other)?;
    let ts = dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased();
    o.write_dataset_with_ts(&mut bytes, &ts)
        .map_err(std::io::Error::other)?;
    // (0029,1010) OB: tag, VR, two reserved bytes, then the length to forge.
    let header = [0x29, 0x00, 0x10, 0x10, b'O', b'B', 0, 0, 4, 0, 0, 0];
    let at = bytes
        .windows(header.len())
        .position(|w| w == header)
        .ok_or_else(|| std::io::Error::other("private element not written"))?;
    bytes[at + 8..at + 12].copy_from_slice(&0x7FFF_FFF0u32.to_le_bytes());
    std::fs::write(path, bytes)?;
    Ok(sop)
}

pub const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";

/// Writes a secondary capture whose data set (the bytes after the file
/// meta group, as they cross the network) is exactly `dataset_len` bytes:
/// a private OB element takes up whatever the identifying attributes leave.
/// Data sets have even lengths; `dataset_len` must be even and at least
/// 512. Returns the SOP Instance UID.
pub fn write_sized(path: &Path, uid_root: &str, dataset_len: usize) -> std::io::Result<String> {
    if !dataset_len.is_multiple_of(2) || dataset_len < 512 {
        return Err(std::io::Error::other("a data set length is even and ≥ 512"));
    }
    let sop = format!("{uid_root}.{dataset_len}");
    let build = |pad: usize| {
        let mut o = InMemDicomObject::new_empty();
        let s = |tag, vr, v: &str| DataElement::new(tag, vr, PrimitiveValue::from(v));
        o.put(s(tags::SOP_CLASS_UID, VR::UI, SECONDARY_CAPTURE));
        o.put(s(tags::SOP_INSTANCE_UID, VR::UI, &sop));
        o.put(s(tags::PATIENT_ID, VR::LO, "SIZE0001"));
        o.put(s(tags::MODALITY, VR::CS, "OT"));
        o.put(s(
            tags::STUDY_INSTANCE_UID,
            VR::UI,
            &format!("{uid_root}.1"),
        ));
        o.put(s(
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            &format!("{uid_root}.2"),
        ));
        // A pattern, not zeros, so a misplaced byte shows in the comparison.
        let value: Vec<u8> = (0..pad).map(|i| (i % 251) as u8).collect();
        o.put(DataElement::new(
            dicom_core::Tag(0x0029, 0x1010),
            VR::OB,
            PrimitiveValue::from(value),
        ));
        o
    };
    let ts = dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased();
    let encoded = |o: &InMemDicomObject| -> std::io::Result<Vec<u8>> {
        let mut v = Vec::new();
        o.write_dataset_with_ts(&mut v, &ts)
            .map_err(std::io::Error::other)?;
        Ok(v)
    };
    // The OB element's header is 12 bytes whatever its length, so the
    // padding is what the rest leaves.
    let base = encoded(&build(0))?.len();
    let pad = dataset_len
        .checked_sub(base)
        .ok_or_else(|| std::io::Error::other("data set too small for its attributes"))?;
    let dataset = encoded(&build(pad))?;
    debug_assert_eq!(dataset.len(), dataset_len);
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(SECONDARY_CAPTURE)
        .media_storage_sop_instance_uid(&sop)
        .transfer_syntax(EXPLICIT_VR_LE)
        .build()
        .map_err(std::io::Error::other)?;
    let mut bytes = vec![0u8; 128];
    bytes.extend_from_slice(b"DICM");
    meta.write(&mut bytes).map_err(std::io::Error::other)?;
    bytes.extend_from_slice(&dataset);
    std::fs::write(path, bytes)?;
    Ok(sop)
}
