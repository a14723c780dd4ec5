//! E1381 frames: `STX FN text ETB|ETX C1 C2 CR LF`.
//!
//! The checksum is the sum of the bytes from FN through ETB/ETX, modulo
//! 256, written as two uppercase hex digits (lowercase accepted on input).
//! Frames are bytes: the text is decoded only once a whole message is in.

use super::{CR, ETB, ETX, LF, STX};

/// Text bytes per frame when sending (the standard's limit).
pub const MAX_SEND_TEXT: usize = 240;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame number {0:?} is not a digit 0-7")]
    BadFrameNumber(u8),
    #[error("checksum {got:?} does not match the computed {expected:02X}")]
    BadChecksum { expected: u8, got: [u8; 2] },
    #[error("frame longer than {max} bytes")]
    TooLong { max: usize },
    #[error("restricted character 0x{0:02X} inside frame text")]
    Restricted(u8),
}

/// A complete frame as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedFrame {
    pub number: u8,
    pub text: Vec<u8>,
    /// ETX (last frame of a record or message) rather than ETB.
    pub last: bool,
}

/// Sum of `bytes` modulo 256.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Looks for one complete frame at the start of `buf` (which must begin
/// with STX). Returns the frame (or why it is bad) and how many bytes it
/// used, or `None` when more bytes are needed.
pub fn parse_frame(buf: &[u8], max_len: usize) -> Option<(Result<ParsedFrame, FrameError>, usize)> {
    debug_assert!(buf.first() == Some(&STX));
    let end = match buf.iter().skip(1).position(|&b| b == ETX || b == ETB) {
        Some(i) => i + 1,
        None => {
            if buf.len() > max_len {
                // Skip past this STX: the caller resynchronises on the next.
                return Some((Err(FrameError::TooLong { max: max_len }), buf.len()));
            }
            return None;
        }
    };
    // end: index of ETX/ETB. Need two checksum characters after it.
    if buf.len() < end + 3 {
        return None;
    }
    let mut used = end + 3;
    // CR LF, or only one of them (some analyzers). A terminator arriving in
    // a later read is skipped by the link as bytes outside a frame.
    while used < buf.len() && used < end + 5 && (buf[used] == CR || buf[used] == LF) {
        used += 1;
    }
    if end > max_len {
        return Some((Err(FrameError::TooLong { max: max_len }), used));
    }
    let fn_byte = buf[1];
    let body = &buf[1..=end];
    let (c1, c2) = (buf[end + 1], buf[end + 2]);
    let got = [c1, c2];
    let expected = checksum(body);
    let result = match (hex_value(c1), hex_value(c2)) {
        (Some(h), Some(l)) if (h << 4 | l) == expected => {
            if !(b'0'..=b'7').contains(&fn_byte) {
                Err(FrameError::BadFrameNumber(fn_byte))
            } else {
                Ok(ParsedFrame {
                    number: fn_byte - b'0',
                    text: buf[2..end].to_vec(),
                    last: buf[end] == ETX,
                })
            }
        }
        _ => Err(FrameError::BadChecksum { expected, got }),
    };
    Some((result, used))
}

fn encode_frame(number: u8, text: &[u8], last: bool) -> Vec<u8> {
    let mut f = Vec::with_capacity(text.len() + 7);
    f.push(STX);
    f.push(b'0' + (number % 8));
    f.extend_from_slice(text);
    f.push(if last { ETX } else { ETB });
    let sum = checksum(&f[1..]);
    f.extend_from_slice(format!("{sum:02X}").as_bytes());
    f.push(CR);
    f.push(LF);
    f
}

/// Splits a message (records, each ending with CR) into frames of at most
/// [`MAX_SEND_TEXT`] text bytes, numbered from `first_number`: a record
/// longer than that continues over ETB frames, the frame that ends a record
/// ends with ETX.
pub fn encode_frames(records: &[Vec<u8>], first_number: u8) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut n = first_number % 8;
    for rec in records {
        let mut rec = rec.clone();
        if rec.last() != Some(&CR) {
            rec.push(CR);
        }
        let chunks: Vec<&[u8]> = rec.chunks(MAX_SEND_TEXT).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            frames.push(encode_frame(n, chunk, i + 1 == chunks.len()));
            n = (n + 1) % 8;
        }
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_vectors() {
        // "5L|1|N<CR><ETX>": the Meril manual prints 06; 08 is correct.
        let f = encode_frame(5, b"L|1|N\r", true);
        assert_eq!(&f[f.len() - 4..f.len() - 2], b"08");
        let (parsed, used) = parse_frame(&f, 64 * 1024).expect("complete");
        assert_eq!(used, f.len());
        assert_eq!(
            parsed.expect("valid"),
            ParsedFrame {
                number: 5,
                text: b"L|1|N\r".to_vec(),
                last: true
            }
        );
    }

    #[test]
    fn lowercase_checksum_and_lone_terminators_accepted() {
        let mut f = encode_frame(1, b"H|\\^&\r", true);
        let n = f.len();
        f[n - 4..n - 2].make_ascii_lowercase();
        assert!(parse_frame(&f, 1024).expect("complete").0.is_ok());
        let only_cr = &f[..n - 1];
        assert!(parse_frame(only_cr, 1024).expect("complete").0.is_ok());
    }

    #[test]
    fn bad_checksum_and_frame_number() {
        let mut f = encode_frame(2, b"P|1\r", true);
        let n = f.len();
        f[n - 3] = b'0';
        f[n - 4] = b'0';
        assert!(matches!(
            parse_frame(&f, 1024).expect("complete").0,
            Err(FrameError::BadChecksum { .. })
        ));
    }

    #[test]
    fn long_records_split_over_etb_frames() {
        let rec = vec![b'R'; 600];
        let frames = encode_frames(&[rec, b"L|1|N".to_vec()], 1);
        assert_eq!(frames.len(), 4);
        let parsed: Vec<ParsedFrame> = frames
            .iter()
            .map(|f| parse_frame(f, 1024).expect("complete").0.expect("valid"))
            .collect();
        assert_eq!(
            parsed.iter().map(|p| p.number).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert_eq!(
            parsed.iter().map(|p| p.last).collect::<Vec<_>>(),
            [false, false, true, true]
        );
        assert_eq!(parsed.iter().map(|p| p.text.len()).sum::<usize>(), 601 + 6);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(mut data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..500)) {
            data.insert(0, STX);
            let _ = parse_frame(&data, 128);
        }
    }
}
