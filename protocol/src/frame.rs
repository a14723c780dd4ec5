//! Length-prefixed framing: a 4-byte big-endian length, then one protobuf
//! [`Envelope`]. The decoder is pure: push bytes in, take frames out; it
//! checks the length limit before buffering so a hostile peer cannot make us
//! allocate more than one maximum frame.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

use crate::messages::Envelope;

/// Largest frame accepted: a chunk of up to 1 MiB plus headers.
pub const MAX_FRAME_LEN: usize = 1024 * 1024 + 4096;

const HEADER_LEN: usize = 4;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("frame does not decode as a message: {0}")]
    Malformed(String),
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
}

/// Encodes one message as a frame.
pub fn encode_frame(env: &Envelope) -> Bytes {
    let len = env.encoded_len();
    let mut buf = BytesMut::with_capacity(HEADER_LEN + len);
    buf.put_u32(len as u32);
    // Encoding into a buffer with enough capacity cannot fail.
    env.encode_raw(&mut buf);
    buf.freeze()
}

/// Incremental frame decoder.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_len: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(MAX_FRAME_LEN)
    }
}

impl FrameDecoder {
    pub fn new(max_len: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_len,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Envelope>, FrameError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > self.max_len {
            return Err(FrameError::TooLong {
                len,
                max: self.max_len,
            });
        }
        if self.buf.len() < HEADER_LEN + len {
            self.buf.reserve(HEADER_LEN + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        let body = self.buf.split_to(len).freeze();
        Envelope::decode(body)
            .map(Some)
            .map_err(|e| FrameError::Malformed(e.to_string()))
    }

    /// Call at end of stream: an error if a partial frame is left.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated {
                buffered: self.buf.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{Accept, Chunk, envelope::Body};
    use proptest::prelude::*;

    fn sample() -> Vec<Envelope> {
        vec![
            Envelope::new(Body::Accept(Accept { offset: 7 })),
            Envelope::new(Body::Chunk(Chunk {
                offset: 7,
                data: Bytes::from(vec![0xAB; 3000]),
            })),
            Envelope::default(),
        ]
    }

    #[test]
    fn split_at_every_byte() {
        let wire: Vec<u8> = sample()
            .iter()
            .flat_map(|e| encode_frame(e).to_vec())
            .collect();
        for split in 0..=wire.len() {
            let mut dec = FrameDecoder::default();
            let mut out = Vec::new();
            for part in [&wire[..split], &wire[split..]] {
                dec.push(part);
                while let Some(f) = dec.next_frame().expect("valid") {
                    out.push(f);
                }
            }
            assert_eq!(out, sample(), "split at {split}");
            dec.finish().expect("nothing left");
        }
    }

    #[test]
    fn rejects_oversized_before_buffering() {
        let mut dec = FrameDecoder::new(100);
        dec.push(&1000u32.to_be_bytes());
        assert_eq!(
            dec.next_frame(),
            Err(FrameError::TooLong {
                len: 1000,
                max: 100
            })
        );
    }

    #[test]
    fn truncated_stream_is_reported() {
        let wire = encode_frame(&sample()[1]);
        let mut dec = FrameDecoder::default();
        dec.push(&wire[..10]);
        assert_eq!(dec.next_frame(), Ok(None));
        assert!(matches!(dec.finish(), Err(FrameError::Truncated { .. })));
    }

    proptest! {
        #[test]
        fn never_panics_on_garbage(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut dec = FrameDecoder::new(1024);
            dec.push(&data);
            for _ in 0..64 {
                match dec.next_frame() {
                    Ok(Some(_)) => continue,
                    _ => break,
                }
            }
        }
    }
}
