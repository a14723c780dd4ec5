//! Finding SCP-ECG records in a serial byte stream, as carts that "print"
//! their record to the port send them: no envelope, just the record, whose
//! own length field frames it and whose CRC checks it. Bytes between
//! records (line noise, a banner, XMODEM's 0x1A padding) are skipped and
//! counted.
//!
//! A record start is recognised by its section 0 header at offset 6 (id 0,
//! a plausible length and, since EN 1064:2005, the reserved bytes
//! "SCPECG", or else a first pointer to section 0 itself). With the marker, a complete record is handed out even when
//! its CRC is wrong: it is the device's data and the caller quarantines it.
//! Without the marker (older records), the CRC has to match, otherwise the
//! start was a coincidence and scanning moves on by one byte.
//!
//! A record cut short (the cable pulled, the cart switched off) stays
//! buffered until the caller calls [`ScpFramer::flush`] after the line has
//! gone quiet; a marked fragment comes back so it can be quarantined rather
//! than dropped.

use super::scp::crc_ccitt;

/// Bytes needed to recognise a record start: CRC, length, section 0 header
/// and its first pointer (to section 0 itself).
const HEAD: usize = 6 + 16 + 10;
const MARKER: &[u8] = b"SCPECG";

#[derive(Debug)]
pub struct ScpFramer {
    buf: Vec<u8>,
    max_record: usize,
    skipped: u64,
}

/// What sits at the start of the buffer.
enum Start {
    /// A record start of this length; `marked` if it carries "SCPECG".
    Record {
        length: usize,
        marked: bool,
    },
    No,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl ScpFramer {
    /// `max_record` bounds the memory one record may take.
    pub fn new(max_record: usize) -> Self {
        Self {
            buf: Vec::new(),
            max_record: max_record.max(HEAD),
            skipped: 0,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Junk bytes skipped so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Bytes held: a record in progress, or fewer than a record start.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    fn start_at(&self, i: usize) -> Start {
        let b = &self.buf[i..i + HEAD];
        let s0_len = u32_at(b, 10) as usize;
        if b[8] != 0 || b[9] != 0 || s0_len < 16 || s0_len > self.max_record {
            return Start::No;
        }
        let marked = &b[16..22] == MARKER;
        // Section 0's first pointer is to itself: id 0, its own length, at
        // byte 7 (6 where indexes count from 0). Without the marker this is
        // what tells a record from a run of zeros.
        let points_to_itself = b[22] == 0
            && b[23] == 0
            && u32_at(b, 24) as usize == s0_len
            && matches!(u32_at(b, 28), 6 | 7);
        if !marked && !points_to_itself {
            return Start::No;
        }
        let declared = u32_at(b, 2);
        let plausible = |l: u32| (l as usize) >= 6 + s0_len && (l as usize) <= self.max_record;
        let length = if plausible(declared) {
            declared
        } else if plausible(declared.rotate_left(16)) {
            declared.rotate_left(16)
        } else {
            return Start::No;
        };
        Start::Record {
            length: length as usize,
            marked,
        }
    }

    fn crc_matches(rec: &[u8]) -> bool {
        let stored = u16::from_le_bytes([rec[0], rec[1]]);
        let body = &rec[2..];
        let ccitt = crc_ccitt(body);
        let xmodem = crate::crc::xmodem(body);
        [ccitt, xmodem]
            .iter()
            .any(|&c| c == stored || c.swap_bytes() == stored)
    }

    fn skip(&mut self, n: usize) {
        self.buf.drain(..n);
        self.skipped += n as u64;
    }

    /// The next complete record, if one is buffered.
    pub fn next_record(&mut self) -> Option<Vec<u8>> {
        loop {
            if self.buf.len() < HEAD {
                return None;
            }
            let found = (0..=self.buf.len() - HEAD)
                .find(|&i| matches!(self.start_at(i), Start::Record { .. }));
            let Some(i) = found else {
                // Keep a possible start's first bytes.
                let n = self.buf.len() - (HEAD - 1);
                self.skip(n);
                return None;
            };
            if i > 0 {
                self.skip(i);
            }
            let Start::Record { length, marked } = self.start_at(0) else {
                return None;
            };
            if self.buf.len() < length {
                return None;
            }
            if marked || Self::crc_matches(&self.buf[..length]) {
                return Some(self.buf.drain(..length).collect());
            }
            self.skip(1);
        }
    }

    /// After the line has gone quiet or closed: a marked record cut short,
    /// for quarantine. Anything else buffered counts as skipped.
    pub fn flush(&mut self) -> Option<Vec<u8>> {
        let fragment = (self.buf.len() >= HEAD
            && matches!(self.start_at(0), Start::Record { marked: true, .. }))
        .then(|| std::mem::take(&mut self.buf));
        self.skipped += self.buf.len() as u64;
        self.buf.clear();
        fragment
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal well-formed record: section 0 pointing at nothing else.
    fn record(marked: bool, fill: u8) -> Vec<u8> {
        let mut s0 = vec![0u8; 16];
        s0[2..4].copy_from_slice(&0u16.to_le_bytes());
        let s0_len = 16 + 10 + 20;
        s0[4..8].copy_from_slice(&(s0_len as u32).to_le_bytes());
        s0[8] = 20;
        s0[9] = 20;
        if marked {
            s0[10..16].copy_from_slice(MARKER);
        }
        s0.extend_from_slice(&0u16.to_le_bytes());
        s0.extend_from_slice(&(s0_len as u32).to_le_bytes());
        s0.extend_from_slice(&7u32.to_le_bytes());
        s0.extend(std::iter::repeat_n(fill, 20));
        let crc = crc_ccitt(&s0[2..]);
        s0[0..2].copy_from_slice(&crc.to_le_bytes());
        let len = 6 + s0.len();
        let mut rec = vec![0, 0];
        rec.extend_from_slice(&(len as u32).to_le_bytes());
        rec.extend_from_slice(&s0);
        let crc = crc_ccitt(&rec[2..]);
        rec[0..2].copy_from_slice(&crc.to_le_bytes());
        rec
    }

    #[test]
    fn records_between_junk_and_split_across_reads() {
        let a = record(true, 1);
        let b = record(false, 2);
        let mut line = b"\r\nCART READY\r\n".to_vec();
        line.extend_from_slice(&a);
        line.extend_from_slice(&[0x1A; 40]);
        line.extend_from_slice(&b);
        let mut f = ScpFramer::new(1 << 20);
        let mut out = Vec::new();
        for chunk in line.chunks(7) {
            f.push(chunk);
            while let Some(r) = f.next_record() {
                out.push(r);
            }
        }
        assert_eq!(out, vec![a, b]);
        assert_eq!(f.skipped(), 14 + 40);
        assert_eq!(f.flush(), None);
    }

    #[test]
    fn unmarked_start_with_a_bad_crc_is_skipped_marked_one_is_kept() {
        let mut bad = record(false, 3);
        let n = bad.len();
        bad[n - 1] ^= 0xFF;
        let good = record(false, 4);
        let mut f = ScpFramer::new(1 << 20);
        f.push(&bad);
        f.push(&good);
        assert_eq!(f.next_record(), Some(good));
        let mut damaged = record(true, 5);
        damaged[30] ^= 0xFF;
        f.push(&damaged);
        assert_eq!(f.next_record(), Some(damaged), "the caller quarantines it");
    }

    #[test]
    fn a_record_cut_short_comes_back_on_flush() {
        let a = record(true, 6);
        let mut f = ScpFramer::new(1 << 20);
        f.push(&a[..a.len() - 5]);
        assert_eq!(f.next_record(), None);
        assert_eq!(f.flush().map(|v| v.len()), Some(a.len() - 5));
        f.push(&a);
        assert_eq!(f.next_record(), Some(a));
    }

    #[test]
    fn conformance_sample_between_noise() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/samples/scp-ecg/ecgtoolkit_Example.scp");
        let Ok(rec) = std::fs::read(&path) else {
            eprintln!("skipped: {} is absent", path.display());
            return;
        };
        let mut line = vec![0u8; 100];
        line.extend_from_slice(&rec);
        line.extend_from_slice(&[0x1A; 32]);
        line.extend_from_slice(&rec);
        let mut f = ScpFramer::new(1 << 20);
        let mut out = Vec::new();
        for c in line.chunks(61) {
            f.push(c);
            while let Some(r) = f.next_record() {
                out.push(r);
            }
        }
        assert_eq!(out, vec![rec.clone(), rec]);
        assert_eq!(f.skipped(), 132);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000), cut in 1usize..64) {
            let mut f = ScpFramer::new(4096);
            for c in data.chunks(cut) {
                f.push(c);
                while f.next_record().is_some() {}
                proptest::prop_assert!(f.pending() <= 4096 + cut);
            }
            let _ = f.flush();
        }
    }
}
