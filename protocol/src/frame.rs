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

/// A [`Chunk`](crate::messages::Chunk)'s frame as two buffers: its head
/// (the frame length, the envelope's and the chunk's keys, the offset and
/// the data's length) and the data itself, so that the data goes to the
/// stream without being copied into a frame. Together they are byte for
/// byte what [`encode_frame`] makes of the same chunk.
pub fn encode_chunk_frame(offset: u64, data: Bytes) -> [Bytes; 2] {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
    const ENVELOPE_TAG: u32 = 12;
    const OFFSET_TAG: u32 = 1;
    const DATA_TAG: u32 = 2;
    // proto3 leaves fields holding their default value out.
    let offset_len = if offset == 0 {
        0
    } else {
        key_len(OFFSET_TAG) + encoded_len_varint(offset)
    };
    let data_head_len = if data.is_empty() {
        0
    } else {
        key_len(DATA_TAG) + encoded_len_varint(data.len() as u64)
    };
    let chunk_len = offset_len + data_head_len + data.len();
    let envelope_len = key_len(ENVELOPE_TAG) + encoded_len_varint(chunk_len as u64) + chunk_len;
    let mut head = BytesMut::with_capacity(HEADER_LEN + envelope_len - data.len());
    head.put_u32(envelope_len as u32);
    encode_key(ENVELOPE_TAG, WireType::LengthDelimited, &mut head);
    encode_varint(chunk_len as u64, &mut head);
    if offset != 0 {
        encode_key(OFFSET_TAG, WireType::Varint, &mut head);
        encode_varint(offset, &mut head);
    }
    if !data.is_empty() {
        encode_key(DATA_TAG, WireType::LengthDelimited, &mut head);
        encode_varint(data.len() as u64, &mut head);
    }
    [head.freeze(), data]
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

    fn chunk_frame_matches(offset: u64, len: usize) {
        let data = Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        let whole = encode_frame(&Envelope::new(Body::Chunk(Chunk {
            offset,
            data: data.clone(),
        })));
        let [head, tail] = encode_chunk_frame(offset, data);
        assert_eq!(
            [head.as_ref(), tail.as_ref()].concat(),
            whole.as_ref(),
            "offset {offset}, {len} bytes"
        );
    }

    /// Every varint width of the offset and of the three lengths.
    #[test]
    fn chunk_frame_is_the_frame_of_the_chunk() {
        let offsets = [0, 1, 127, 128, 16_383, 16_384, 1 << 21, 1 << 35, u64::MAX];
        let lens = [
            0,
            1,
            100,
            120,
            127,
            128,
            16_370,
            16_383,
            16_384,
            65_536,
            262_144,
            1 << 20,
        ];
        for offset in offsets {
            for len in lens {
                chunk_frame_matches(offset, len);
            }
        }
    }

    proptest! {
        #[test]
        fn chunk_frame_any(offset in any::<u64>(), len in 0usize..300_000) {
            chunk_frame_matches(offset, len);
        }

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
