//! MLLP framing (HL7 v2 over TCP): `0x0B` message `0x1C 0x0D`.
//!
//! The decoder is pure: push bytes in, take whole messages out. It skips
//! anything between blocks (some senders emit stray CR/LF or noise), starts
//! over when a new start byte arrives inside a block (the sender gave up on
//! the previous one), accepts a block end of `0x1C` not followed by `0x0D`
//! from sloppy senders, and refuses blocks longer than its limit without
//! buffering them.

/// Start of block.
pub const SB: u8 = 0x0B;
/// End of block.
pub const EB: u8 = 0x1C;
/// Carriage return after the end of block.
pub const CR: u8 = 0x0D;

/// Default largest message accepted (lab results with embedded PDFs can be
/// several MB).
pub const DEFAULT_MAX_LEN: usize = 16 * 1024 * 1024;

/// Bytes of a too-long block kept, so that its MSH can still be answered.
pub const HEAD_KEPT: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MllpError {
    /// The block passed the limit; its first bytes are kept (`head`) so
    /// the sender can be told, with its own MSH-10, that it is too large.
    #[error("MLLP block longer than {max} bytes; discarded")]
    TooLong { max: usize, head: Vec<u8> },
    /// A new block started before the current one ended: the sender gave
    /// up on it (or sent garbage); `bytes` were dropped.
    #[error("a new MLLP block started before the end of the previous one; {bytes} bytes dropped")]
    Abandoned { bytes: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Outside a block: skipping until a start byte.
    Between,
    /// Inside a block.
    Inside,
    /// Saw the end byte; a CR may follow.
    AfterEnd,
    /// Inside a block that is too long: skipping to its end.
    Discarding,
}

/// Incremental MLLP decoder.
#[derive(Debug)]
pub struct MllpDecoder {
    state: State,
    buf: Vec<u8>,
    max_len: usize,
    /// Bytes skipped outside blocks since the last message (for logs).
    skipped: usize,
}

impl Default for MllpDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LEN)
    }
}

impl MllpDecoder {
    pub fn new(max_len: usize) -> Self {
        Self {
            state: State::Between,
            buf: Vec::new(),
            max_len,
            skipped: 0,
        }
    }

    /// Bytes skipped outside blocks since the last complete message.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// Bytes of the block in progress (dropped if the stream ends now).
    pub fn pending(&self) -> usize {
        match self.state {
            State::Inside | State::AfterEnd => self.buf.len() + 1,
            _ => 0,
        }
    }

    /// Whether a block has started and not yet ended.
    pub fn in_block(&self) -> bool {
        matches!(
            self.state,
            State::Inside | State::AfterEnd | State::Discarding
        )
    }

    /// Feeds bytes; returns the messages completed by them, in order, and
    /// an error for each block that was too long.
    pub fn push(&mut self, data: &[u8]) -> Vec<Result<Vec<u8>, MllpError>> {
        let mut out = Vec::new();
        for &b in data {
            match self.state {
                State::Between => {
                    if b == SB {
                        self.state = State::Inside;
                        self.buf.clear();
                    } else {
                        self.skipped += 1;
                    }
                }
                State::Inside => match b {
                    EB => self.state = State::AfterEnd,
                    SB => {
                        // A new block before the end: the sender abandoned
                        // the previous one.
                        out.push(Err(MllpError::Abandoned {
                            bytes: self.buf.len() + 1,
                        }));
                        self.skipped += self.buf.len();
                        self.buf.clear();
                    }
                    _ if self.buf.len() >= self.max_len => {
                        let mut head = std::mem::take(&mut self.buf);
                        head.truncate(HEAD_KEPT);
                        self.state = State::Discarding;
                        out.push(Err(MllpError::TooLong {
                            max: self.max_len,
                            head,
                        }));
                    }
                    _ => self.buf.push(b),
                },
                State::AfterEnd => {
                    out.push(Ok(std::mem::take(&mut self.buf)));
                    self.skipped = 0;
                    self.state = State::Between;
                    if b == SB {
                        self.state = State::Inside;
                    } else if b != CR {
                        self.skipped += 1;
                    }
                }
                State::Discarding => {
                    if b == EB {
                        self.state = State::Between;
                    } else if b == SB {
                        self.state = State::Inside;
                        self.buf.clear();
                    }
                }
            }
        }
        out
    }

    /// Completes a block whose end byte arrived without its CR when no
    /// more bytes will come (end of stream).
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        if self.state == State::AfterEnd {
            self.state = State::Between;
            return Some(std::mem::take(&mut self.buf));
        }
        None
    }
}

/// Wraps a message in an MLLP block.
pub fn encode(message: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(message.len() + 3);
    v.push(SB);
    v.extend_from_slice(message);
    v.push(EB);
    v.push(CR);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(v: Vec<Result<Vec<u8>, MllpError>>) -> Vec<Vec<u8>> {
        v.into_iter().filter_map(Result::ok).collect()
    }

    #[test]
    fn split_at_every_byte() {
        let mut wire = b"\r\n junk".to_vec();
        wire.extend(encode(b"MSH|^~\\&|A\rPID|1\r"));
        wire.extend(b"\n");
        wire.extend(encode(b"MSH|^~\\&|B\r"));
        for split in 0..=wire.len() {
            let mut d = MllpDecoder::default();
            let mut got = ok(d.push(&wire[..split]));
            got.extend(ok(d.push(&wire[split..])));
            assert_eq!(
                got,
                vec![b"MSH|^~\\&|A\rPID|1\r".to_vec(), b"MSH|^~\\&|B\r".to_vec()],
                "split {split}"
            );
        }
    }

    #[test]
    fn restart_inside_block_and_missing_cr() {
        let mut d = MllpDecoder::default();
        let all = d.push(b"\x0bMSH|half\x0bMSH|whole\x1c\x0bMSH|next\x1c");
        assert_eq!(all[0], Err(MllpError::Abandoned { bytes: 9 }), "{all:?}");
        assert_eq!(ok(all), vec![b"MSH|whole".to_vec()]);
        assert_eq!(d.finish(), Some(b"MSH|next".to_vec()));
    }

    #[test]
    fn too_long_is_refused_without_buffering_and_recovers() {
        let mut d = MllpDecoder::new(10);
        let mut wire = vec![SB];
        wire.extend(vec![b'x'; 1000]);
        wire.extend([EB, CR]);
        wire.extend(encode(b"MSH|ok"));
        let got = d.push(&wire);
        assert_eq!(
            got,
            vec![
                Err(MllpError::TooLong {
                    max: 10,
                    head: vec![b'x'; 10]
                }),
                Ok(b"MSH|ok".to_vec())
            ]
        );
        assert_eq!(d.pending(), 0);
        d.push(b"\x0bMSH|cut");
        assert_eq!(d.pending(), 8, "a block the stream may end inside");
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_respects_the_limit(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000)) {
            let mut d = MllpDecoder::new(64);
            for m in d.push(&data).into_iter().flatten() {
                proptest::prop_assert!(m.len() <= 64);
            }
        }
    }
}
