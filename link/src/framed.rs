//! Framed [`Envelope`] I/O on QUIC streams.

use bytes::Bytes;
use yilian_protocol::{Envelope, FrameDecoder, encode_chunk_frame, encode_frame};

use crate::LinkError;

/// Writes one message.
pub async fn write_message(send: &mut quinn::SendStream, env: &Envelope) -> Result<(), LinkError> {
    send.write_chunk(encode_frame(env)).await?;
    Ok(())
}

/// Writes one [`Chunk`](yilian_protocol::messages::Chunk) message, its
/// data handed to the stream as it is (not copied into a frame first).
pub async fn write_chunk_message(
    send: &mut quinn::SendStream,
    offset: u64,
    data: Bytes,
) -> Result<(), LinkError> {
    send.write_all_chunks(&mut encode_chunk_frame(offset, data))
        .await?;
    Ok(())
}

/// Reads messages from a receive stream.
#[derive(Debug)]
pub struct MessageReader {
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    finished: bool,
}

impl MessageReader {
    pub fn new(recv: quinn::RecvStream) -> Self {
        Self {
            recv,
            decoder: FrameDecoder::default(),
            finished: false,
        }
    }

    /// The next message; `Ok(None)` when the peer finished the stream cleanly.
    pub async fn next(&mut self) -> Result<Option<Envelope>, LinkError> {
        loop {
            if let Some(env) = self.decoder.next_frame()? {
                return Ok(Some(env));
            }
            if self.finished {
                self.decoder.finish()?;
                return Ok(None);
            }
            match self.recv.read_chunk(256 * 1024, true).await? {
                Some(chunk) => self.push(chunk.bytes),
                None => self.finished = true,
            }
        }
    }

    fn push(&mut self, bytes: Bytes) {
        self.decoder.push(&bytes);
    }

    pub fn into_inner(self) -> quinn::RecvStream {
        self.recv
    }
}
