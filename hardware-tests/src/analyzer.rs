//! An analyzer emulator: replays the records of a real ASTM capture as an
//! analyzer sends them (ENQ, numbered frames with checksums, EOT), with
//! faults on demand: a corrupted checksum, an ACK "lost" on the way back,
//! or the cable pulled in the middle of a message.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use yilian_codecs::astm::frame::parse_frame;
use yilian_codecs::astm::{ACK, ENQ, EOT, NAK, STX, encode_frames};

/// The records (each ending with CR) carried by the frames of a capture.
pub fn records_from_capture(capture: &[u8]) -> Vec<Vec<u8>> {
    let mut text = Vec::new();
    let mut i = 0;
    while let Some(start) = capture[i..].iter().position(|&b| b == STX) {
        let at = i + start;
        match parse_frame(&capture[at..], 1 << 20) {
            Some((Ok(frame), used)) => {
                text.extend_from_slice(&frame.text);
                i = at + used;
            }
            Some((Err(_), used)) => i = at + used.max(1),
            None => break,
        }
    }
    text.split(|&b| b == b'\r')
        .filter(|r| !r.is_empty() && r.iter().any(|c| !c.is_ascii_whitespace()))
        .map(|r| {
            let mut v = r.to_vec();
            v.push(b'\r');
            v
        })
        .collect()
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Faults {
    /// Send this frame (0-based) with a wrong checksum first.
    pub corrupt_frame: Option<usize>,
    /// Behave as if the ACK of this frame was lost: send the frame again.
    pub lose_ack_of: Option<usize>,
    /// Stop after sending this many frames (the cable is pulled).
    pub stop_after: Option<usize>,
}

#[derive(Debug, Default)]
pub struct SendReport {
    pub frames: usize,
    pub naks: usize,
    pub retransmissions: usize,
    pub completed: bool,
}

async fn reply<S: AsyncRead + Unpin>(s: &mut S) -> anyhow::Result<u8> {
    let mut b = [0u8; 1];
    loop {
        tokio::time::timeout(Duration::from_secs(15), AsyncReadExt::read_exact(s, &mut b))
            .await??;
        if matches!(b[0], ACK | NAK | EOT) {
            return Ok(b[0]);
        }
    }
}

/// Sends one message of `records` as the analyzer (sender) side.
pub async fn send_message<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    records: &[Vec<u8>],
    faults: Faults,
) -> anyhow::Result<SendReport> {
    let mut report = SendReport::default();
    AsyncWriteExt::write_all(s, &[ENQ]).await?;
    anyhow::ensure!(reply(s).await? == ACK, "the gateway did not accept ENQ");
    let frames = encode_frames(records, 1);
    for (i, frame) in frames.iter().enumerate() {
        if faults.stop_after == Some(i) {
            return Ok(report);
        }
        if faults.corrupt_frame == Some(i) {
            let mut bad = frame.clone();
            let n = bad.len();
            bad[n - 4] = if bad[n - 4] == b'0' { b'1' } else { b'0' };
            AsyncWriteExt::write_all(s, &bad).await?;
            if reply(s).await? == NAK {
                report.naks += 1;
            }
        }
        let mut attempts = 0;
        loop {
            AsyncWriteExt::write_all(s, frame).await?;
            let r = reply(s).await?;
            if r == ACK || r == EOT {
                break;
            }
            report.naks += 1;
            attempts += 1;
            anyhow::ensure!(attempts < 6, "frame {i} refused six times");
            report.retransmissions += 1;
        }
        if faults.lose_ack_of == Some(i) {
            // Our side never saw that ACK: the same frame goes again.
            AsyncWriteExt::write_all(s, frame).await?;
            anyhow::ensure!(
                reply(s).await? == ACK,
                "a repeated frame must be acknowledged"
            );
            report.retransmissions += 1;
        }
        report.frames += 1;
    }
    AsyncWriteExt::write_all(s, &[EOT]).await?;
    report.completed = true;
    Ok(report)
}
