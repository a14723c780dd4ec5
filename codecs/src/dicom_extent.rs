//! How much of a Part 10 stream a DICOM library may be handed safely.
//!
//! A parser allocates each value at the length its header declares, before
//! reading it: one element claiming 4 GB in the head of a data set costs
//! 4 GB of memory however short the input is. The gateway reads metadata
//! from the first part of an instance (whose rest may be gigabytes of pixel
//! data still on the wire), so before any library sees those bytes this walk
//! checks every element header, nested ones included, and finds where the
//! parsable part ends: before the first top-level element at or past the
//! tag where reading stops, or before the first one that does not fit in
//! the bytes at hand. Every allocation a parser then makes is bounded by the
//! input's length.

use crate::dicom::{DicomError, read_part10};

/// Where the parsable part of a Part 10 stream ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// Bytes from the start (preamble, file meta, data set elements).
    pub len: usize,
    /// The element the walk stopped before, when it stopped because that
    /// element does not fit or is malformed rather than at the stop tag or
    /// the end of the input. In a complete data set this means it is
    /// malformed; in a prefix, usually only that it was cut short.
    pub short: Option<String>,
}

/// Transfer syntax properties that decide how element headers read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Syntax {
    explicit: bool,
    big_endian: bool,
}

const IMPLICIT_LE: Syntax = Syntax {
    explicit: false,
    big_endian: false,
};

impl Syntax {
    /// `None` for deflated syntaxes, whose data set cannot be walked without
    /// inflating it.
    fn of(uid: &str) -> Option<Syntax> {
        match uid {
            "1.2.840.10008.1.2" => Some(IMPLICIT_LE),
            "1.2.840.10008.1.2.2" => Some(Syntax {
                explicit: true,
                big_endian: true,
            }),
            "1.2.840.10008.1.2.1.99" | "1.2.840.10008.1.2.4.95" => None,
            // Explicit VR Little Endian and every encapsulated (compressed)
            // syntax, including private ones.
            _ => Some(Syntax {
                explicit: true,
                big_endian: false,
            }),
        }
    }

    fn u16_at(self, b: &[u8], at: usize) -> Option<u16> {
        let v = [*b.get(at)?, *b.get(at + 1)?];
        Some(if self.big_endian {
            u16::from_be_bytes(v)
        } else {
            u16::from_le_bytes(v)
        })
    }

    fn u32_at(self, b: &[u8], at: usize) -> Option<u32> {
        let v = [
            *b.get(at)?,
            *b.get(at + 1)?,
            *b.get(at + 2)?,
            *b.get(at + 3)?,
        ];
        Some(if self.big_endian {
            u32::from_be_bytes(v)
        } else {
            u32::from_le_bytes(v)
        })
    }
}

const UNDEFINED: u32 = 0xFFFF_FFFF;
const ITEM: u32 = 0xFFFE_E000;
const ITEM_END: u32 = 0xFFFE_E00D;
const SEQUENCE_END: u32 = 0xFFFE_E0DD;
const PIXEL_DATA: u32 = 0x7FE0_0010;
/// Deeper nesting than any real data set; a bound for the recursion.
const MAX_DEPTH: usize = 24;

/// One element header.
struct Header {
    tag: u32,
    vr: Option<[u8; 2]>,
    len: u32,
    /// Where the value starts.
    value: usize,
}

struct Walk<'a> {
    data: &'a [u8],
}

/// Why a nested walk failed: the element and what was wrong, for the log.
type Bad = String;

impl Walk<'_> {
    fn header(&self, s: Syntax, at: usize) -> Option<Header> {
        let group = s.u16_at(self.data, at)?;
        let element = s.u16_at(self.data, at + 2)?;
        let tag = (u32::from(group) << 16) | u32::from(element);
        // Items and delimiters carry no VR in any syntax.
        if !s.explicit || group == 0xFFFE {
            return Some(Header {
                tag,
                vr: None,
                len: s.u32_at(self.data, at + 4)?,
                value: at + 8,
            });
        }
        let vr = [*self.data.get(at + 4)?, *self.data.get(at + 5)?];
        // PS3.5 7.1.2: these VRs have a 2-byte length; every other one, and
        // a VR nobody knows (which parsers read as UN), has two reserved
        // bytes and a 4-byte length. The walk must read lengths exactly as
        // the library will.
        if matches!(
            &vr,
            b"AE"
                | b"AS"
                | b"AT"
                | b"CS"
                | b"DA"
                | b"DS"
                | b"DT"
                | b"FL"
                | b"FD"
                | b"IS"
                | b"LO"
                | b"LT"
                | b"PN"
                | b"SH"
                | b"SL"
                | b"SS"
                | b"ST"
                | b"TM"
                | b"UI"
                | b"UL"
                | b"US"
        ) {
            return Some(Header {
                tag,
                vr: Some(vr),
                len: u32::from(s.u16_at(self.data, at + 6)?),
                value: at + 8,
            });
        }
        let known = matches!(
            &vr,
            b"OB"
                | b"OD"
                | b"OF"
                | b"OL"
                | b"OV"
                | b"OW"
                | b"SQ"
                | b"SV"
                | b"UC"
                | b"UR"
                | b"UT"
                | b"UV"
        );
        Some(Header {
            tag,
            vr: Some(if known { vr } else { *b"UN" }),
            len: s.u32_at(self.data, at + 8)?,
            value: at + 12,
        })
    }

    /// Checks the element at `at` and everything nested in it against
    /// `end`; returns where the next element starts.
    fn element(&self, s: Syntax, at: usize, end: usize, depth: usize) -> Result<usize, Bad> {
        let h = self
            .header(s, at)
            .filter(|h| h.value <= end)
            .ok_or_else(|| format!("element header at byte {at} cut short"))?;
        let name = || format!("({:04X},{:04X})", h.tag >> 16, h.tag & 0xFFFF);
        if h.tag >> 16 == 0xFFFE {
            return Err(format!("{} out of place at byte {at}", name()));
        }
        if depth > MAX_DEPTH {
            return Err(format!("{} nested deeper than {MAX_DEPTH} levels", name()));
        }
        let fragments =
            h.tag == PIXEL_DATA || matches!(h.vr, Some(ref v) if v == b"OB" || v == b"OW");
        if h.len == UNDEFINED {
            // Encapsulated pixel data holds fragments; anything else of
            // undefined length is a sequence, whose content is implicit VR
            // little endian when its VR is UN.
            if fragments {
                return self.items(s, h.value, end, None, depth, true);
            }
            let inner = match h.vr {
                Some(ref v) if v == b"SQ" => s,
                None => s,
                Some(ref v) if v == b"UN" => IMPLICIT_LE,
                Some(v) => {
                    return Err(format!(
                        "{} has undefined length but VR {}",
                        name(),
                        String::from_utf8_lossy(&v)
                    ));
                }
            };
            return self.items(inner, h.value, end, None, depth, false);
        }
        let value_end = h
            .value
            .checked_add(h.len as usize)
            .filter(|e| *e <= end)
            .ok_or_else(|| {
                format!(
                    "{} at byte {at} declares {} bytes, more than there are",
                    name(),
                    h.len
                )
            })?;
        // A defined-length sequence: walk its items too. Implicit VR gives no
        // VR to go by, so a value that opens with an item tag is treated as
        // one (a library with a dictionary will parse it that way).
        let sequence = match h.vr {
            Some(ref v) => v == b"SQ",
            None => h.len >= 8 && self.header(s, h.value).map(|i| i.tag) == Some(ITEM),
        };
        if sequence {
            let reached = self.items(s, h.value, value_end, Some(value_end), depth, false)?;
            if reached != value_end {
                return Err(format!("{} items overrun its length", name()));
            }
        }
        Ok(value_end)
    }

    /// Walks the items of a sequence (or the fragments of encapsulated pixel
    /// data) from `at`; `defined` is its end when its length is defined.
    /// Returns where the sequence ends.
    fn items(
        &self,
        s: Syntax,
        mut at: usize,
        end: usize,
        defined: Option<usize>,
        depth: usize,
        fragments: bool,
    ) -> Result<usize, Bad> {
        loop {
            if defined == Some(at) {
                return Ok(at);
            }
            let h = self
                .header(s, at)
                .filter(|h| h.value <= end)
                .ok_or_else(|| format!("item header at byte {at} cut short"))?;
            match h.tag {
                SEQUENCE_END if defined.is_none() => return Ok(h.value),
                ITEM if h.len == UNDEFINED && !fragments => {
                    at = self.nested(s, h.value, end, depth + 1)?;
                }
                ITEM if h.len != UNDEFINED => {
                    let item_end = h
                        .value
                        .checked_add(h.len as usize)
                        .filter(|e| *e <= end)
                        .ok_or_else(|| {
                            format!(
                                "item at byte {at} declares {} bytes, more than there are",
                                h.len
                            )
                        })?;
                    if !fragments {
                        let mut inner = h.value;
                        while inner < item_end {
                            inner = self.element(s, inner, item_end, depth + 1)?;
                        }
                    }
                    at = item_end;
                }
                other => {
                    return Err(format!(
                        "({:04X},{:04X}) where an item was expected at byte {at}",
                        other >> 16,
                        other & 0xFFFF
                    ));
                }
            }
        }
    }

    /// Walks the elements of an undefined-length item up to its delimiter;
    /// returns where the item ends.
    fn nested(&self, s: Syntax, mut at: usize, end: usize, depth: usize) -> Result<usize, Bad> {
        loop {
            let h = self
                .header(s, at)
                .filter(|h| h.value <= end)
                .ok_or_else(|| format!("element header at byte {at} cut short"))?;
            if h.tag == ITEM_END {
                return Ok(h.value);
            }
            at = self.element(s, at, end, depth)?;
        }
    }
}

/// The part of `data` (a Part 10 stream, perhaps only its start) that a
/// DICOM library may parse: the file meta group and the top-level elements
/// before `stop` (a tag as `0xGGGGEEEE`) that fit in `data` with all they
/// contain. Deflated data sets end at the file meta group.
pub fn parsable_extent(data: &[u8], stop: u32) -> Result<Extent, DicomError> {
    let meta = read_part10(data)?;
    Ok(walk_from(
        data,
        meta.dataset_offset,
        &meta.transfer_syntax,
        stop,
    ))
}

/// The same for a bare data set in `transfer_syntax`, as DIMSE messages
/// carry them (a C-FIND identifier, an N-ACTION's request). With
/// `stop = u32::MAX` the whole of a complete data set is checked: a `short`
/// answer then means it is malformed.
pub fn dataset_extent(data: &[u8], transfer_syntax: &str, stop: u32) -> Extent {
    walk_from(data, 0, transfer_syntax, stop)
}

fn walk_from(data: &[u8], start: usize, transfer_syntax: &str, stop: u32) -> Extent {
    let Some(syntax) = Syntax::of(transfer_syntax) else {
        return Extent {
            len: start,
            short: None,
        };
    };
    let walk = Walk { data };
    let mut at = start;
    while at < data.len() {
        let Some(h) = walk.header(syntax, at) else {
            // A header cut short at the end of the input.
            break;
        };
        if h.tag >= stop {
            break;
        }
        match walk.element(syntax, at, data.len(), 0) {
            Ok(next) => at = next,
            Err(why) => {
                return Extent {
                    len: at,
                    short: Some(why),
                };
            }
        }
    }
    Extent {
        len: at,
        short: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Part 10 stream in Explicit VR Little Endian with `body` as its data
    /// set.
    fn part10(ts: &str, body: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 128];
        f.extend_from_slice(b"DICM");
        let mut uid = ts.as_bytes().to_vec();
        if uid.len() % 2 == 1 {
            uid.push(0);
        }
        f.extend_from_slice(&[0x02, 0x00, 0x10, 0x00, b'U', b'I']);
        f.extend_from_slice(&(uid.len() as u16).to_le_bytes());
        f.extend_from_slice(&uid);
        f.extend_from_slice(body);
        f
    }

    fn short(tag: (u16, u16), vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(&tag.0.to_le_bytes());
        e.extend_from_slice(&tag.1.to_le_bytes());
        e.extend_from_slice(vr);
        e.extend_from_slice(&(value.len() as u16).to_le_bytes());
        e.extend_from_slice(value);
        e
    }

    fn long(tag: (u16, u16), vr: &[u8; 2], len: u32, value: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(&tag.0.to_le_bytes());
        e.extend_from_slice(&tag.1.to_le_bytes());
        e.extend_from_slice(vr);
        e.extend_from_slice(&[0, 0]);
        e.extend_from_slice(&len.to_le_bytes());
        e.extend_from_slice(value);
        e
    }

    fn item(len: u32, value: &[u8]) -> Vec<u8> {
        let mut e = vec![0xFE, 0xFF, 0x00, 0xE0];
        e.extend_from_slice(&len.to_le_bytes());
        e.extend_from_slice(value);
        e
    }

    const EXPLICIT: &str = "1.2.840.10008.1.2.1";
    const WAVEFORM: u32 = 0x5400_0100;

    #[test]
    fn stops_before_pixel_data_cut_short() {
        let mut body = short((0x0010, 0x0010), b"PN", b"WANG^LI ");
        let head = body.len();
        body.extend(long((0x7FE0, 0x0010), b"OW", 524_288, &[0u8; 1000]));
        let f = part10(EXPLICIT, &body);
        let e = parsable_extent(&f, WAVEFORM).unwrap();
        assert_eq!(e.len, f.len() - body.len() + head);
        assert_eq!(e.short, None, "the stop tag is not a fault");
    }

    #[test]
    fn a_huge_declared_length_ends_the_extent_before_it() {
        let mut body = short((0x0010, 0x0020), b"LO", b"P123");
        let head = body.len();
        body.extend(long((0x0029, 0x1010), b"OB", 0xFFFF_FFF0, b"tiny"));
        body.extend(short((0x0020, 0x000D), b"UI", b"1.2.3\0"));
        let f = part10(EXPLICIT, &body);
        let e = parsable_extent(&f, WAVEFORM).unwrap();
        assert_eq!(e.len, f.len() - body.len() + head);
        assert!(e.short.unwrap().contains("(0029,1010)"));
    }

    #[test]
    fn an_unknown_vr_has_a_four_byte_length_as_parsers_read_it() {
        // VR "ZZ": a parser reads it as UN, two reserved bytes and a 4-byte
        // length, here 2 GiB.
        let mut body = short((0x0010, 0x0020), b"LO", b"P123");
        let head = body.len();
        body.extend(long((0x0011, 0x0010), b"ZZ", 0x8000_0000, b"tiny"));
        let f = part10(EXPLICIT, &body);
        let e = parsable_extent(&f, WAVEFORM).unwrap();
        assert_eq!(e.len, f.len() - body.len() + head);
        assert!(e.short.unwrap().contains("(0011,0010)"));
    }

    #[test]
    fn nested_lengths_are_checked_in_defined_and_undefined_sequences() {
        // Undefined-length sequence, undefined-length item, a lying element.
        let mut inner = short((0x0008, 0x1150), b"UI", b"1.2\0");
        inner.extend(long((0x0009, 0x0001), b"OB", 0x8000_0000, b"xx"));
        let mut seq = item(UNDEFINED, &inner);
        seq.extend([0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        seq.extend([0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        let body = long((0x0008, 0x1110), b"SQ", UNDEFINED, &seq);
        let f = part10(EXPLICIT, &body);
        let e = parsable_extent(&f, WAVEFORM).unwrap();
        assert_eq!(e.len, f.len() - body.len());
        assert!(e.short.is_some());

        // The same lie inside a defined-length item of a defined-length
        // sequence.
        let bad = long((0x0009, 0x0001), b"OB", 0x8000_0000, b"xx");
        let it = item(bad.len() as u32, &bad);
        let body = long((0x0008, 0x1110), b"SQ", it.len() as u32, &it);
        let f = part10(EXPLICIT, &body);
        assert!(parsable_extent(&f, WAVEFORM).unwrap().short.is_some());

        // And a well-formed one passes whole.
        let good = short((0x0008, 0x1150), b"UI", b"1.2\0");
        let it = item(good.len() as u32, &good);
        let mut body = long((0x0008, 0x1110), b"SQ", it.len() as u32, &it);
        body.extend(short((0x0010, 0x0010), b"PN", b"LI^NA "));
        let f = part10(EXPLICIT, &body);
        assert_eq!(
            parsable_extent(&f, WAVEFORM).unwrap(),
            Extent {
                len: f.len(),
                short: None
            }
        );
    }

    #[test]
    fn implicit_vr_sequences_are_recognised_by_their_items() {
        let mut elem = Vec::new();
        elem.extend_from_slice(&0x0009u16.to_le_bytes());
        elem.extend_from_slice(&0x0001u16.to_le_bytes());
        elem.extend_from_slice(&0x7000_0000u32.to_le_bytes());
        let it = item(elem.len() as u32, &elem);
        let mut body = Vec::new();
        body.extend_from_slice(&0x0008u16.to_le_bytes());
        body.extend_from_slice(&0x1110u16.to_le_bytes());
        body.extend_from_slice(&(it.len() as u32).to_le_bytes());
        body.extend(it);
        let f = part10("1.2.840.10008.1.2", &body);
        let e = parsable_extent(&f, WAVEFORM).unwrap();
        assert_eq!(e.len, f.len() - body.len());
        assert!(e.short.is_some());
    }

    #[test]
    fn encapsulated_fragments_are_not_walked_as_elements() {
        let mut frags = item(4, b"\0\0\0\0");
        frags.extend(item(6, b"JPEG!!"));
        frags.extend([0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        // An icon image sequence holds encapsulated pixel data.
        let pixel = long((0x7FE0, 0x0010), b"OB", UNDEFINED, &frags);
        let it = item(UNDEFINED, &pixel);
        let mut seq = it;
        seq.extend([0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
        seq.extend([0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        let body = long((0x0088, 0x0200), b"SQ", UNDEFINED, &seq);
        let f = part10("1.2.840.10008.1.2.4.50", &body);
        assert_eq!(
            parsable_extent(&f, WAVEFORM).unwrap(),
            Extent {
                len: f.len(),
                short: None
            }
        );
    }

    #[test]
    fn bare_data_sets_are_checked_whole() {
        let mut body = short((0x0008, 0x1195), b"UI", b"1.2.3\0");
        let good = dataset_extent(&body, EXPLICIT, u32::MAX);
        assert_eq!((good.len, good.short), (body.len(), None));
        body.extend(long((0x0008, 0x1199), b"SQ", 0x4000_0000, &[]));
        let bad = dataset_extent(&body, EXPLICIT, u32::MAX);
        assert!(bad.short.is_some());
    }

    #[test]
    fn deflated_data_sets_end_at_the_file_meta() {
        let body = short((0x0010, 0x0010), b"PN", b"LI^NA ");
        let f = part10("1.2.840.10008.1.2.1.99", &body);
        assert_eq!(
            parsable_extent(&f, WAVEFORM).unwrap().len,
            f.len() - body.len()
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_stays_within_the_input(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..800),
            implicit in proptest::prelude::any::<bool>(),
        ) {
            let ts = if implicit { "1.2.840.10008.1.2" } else { EXPLICIT };
            let f = part10(ts, &body);
            if let Ok(e) = parsable_extent(&f, WAVEFORM) {
                proptest::prop_assert!(e.len <= f.len());
            }
        }
    }
}
