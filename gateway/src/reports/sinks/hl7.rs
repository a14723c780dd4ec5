//! The clinic's HIS over MLLP: each report as the hospital sent it (same
//! bytes, charset and MSH-10, so the HIS de-duplicates a resend), or
//! rebuilt for a HIS that needs it (addressed to it, in its charset,
//! without the PDF; MSH-10 kept), one in flight per connection. AA/CA: delivered. AR/CR, a wrong or missing ACK:
//! sent again later on a new connection. AE/CE: refused, with the HIS's
//! reason on the box's page and at central.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use yilian_codecs::hl7::rebuild::{Rebuild, rebuild};
use yilian_codecs::hl7::{Message, decode};
use yilian_codecs::mllp::{self, MllpDecoder};
use yilian_gateway_config::schema::ReportSinkSection;

use super::{Ready, Sink, SinkVerdict, Why};

pub struct HisSink {
    address: String,
    ack_timeout: Duration,
    rebuild: Rebuild,
    conn: Option<TcpStream>,
}

impl HisSink {
    pub fn new(section: &ReportSinkSection) -> Self {
        Self {
            address: section.address.clone().unwrap_or_default(),
            ack_timeout: section.ack_timeout,
            rebuild: section.rebuild(),
            conn: None,
        }
    }

    async fn connect(&mut self) -> Result<&mut TcpStream, Why> {
        if self.conn.is_none() {
            let s =
                tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&self.address))
                    .await
                    .map_err(|_| {
                        Why::new(
                            "why-his-unreachable",
                            format!("{}: timed out", self.address),
                        )
                    })?
                    .map_err(|e| {
                        Why::new("why-his-unreachable", format!("{}: {e}", self.address))
                    })?;
            let _ = s.set_nodelay(true);
            self.conn = Some(s);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| Why::new("why-his-unreachable", &self.address))
    }
}

/// Sends one framed message and reads one framed answer.
pub(super) async fn exchange(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(&mllp::encode(message)).await?;
    let mut dec = MllpDecoder::new(1024 * 1024);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the HIS closed the connection",
            ));
        }
        if let Some(Ok(frame)) = dec.push(&buf[..n]).into_iter().next() {
            return Ok(frame);
        }
    }
}

impl Sink for HisSink {
    async fn deliver(&mut self, ready: &Ready<'_>) -> SinkVerdict {
        let timeout = self.ack_timeout;
        let message = match rebuild(ready.bytes, &self.rebuild) {
            Ok(m) => m,
            Err(e) => return SinkVerdict::Failed(Why::new("why-his-rebuild", e)),
        };
        let stream = match self.connect().await {
            Ok(s) => s,
            Err(e) => return SinkVerdict::Retry(e),
        };
        let ack = match tokio::time::timeout(timeout, exchange(stream, &message)).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                self.conn = None;
                return SinkVerdict::Retry(Why::new("why-his-unreachable", e));
            }
            Err(_) => {
                self.conn = None;
                return SinkVerdict::Retry(Why::new(
                    "why-his-no-ack",
                    humantime::format_duration(timeout),
                ));
            }
        };
        let d = decode(&ack, None);
        let Ok(m) = Message::parse(&d.text) else {
            self.conn = None;
            return SinkVerdict::Retry(Why::new("why-his-bad-ack", "not an HL7 ACK"));
        };
        let code = m.get("MSA", 1, 1).to_owned();
        let answered = m.get("MSA", 2, 1);
        if answered != ready.report.control_id {
            self.conn = None;
            return SinkVerdict::Retry(Why::new(
                "why-his-bad-ack",
                format!("ACK for {answered:?}, sent {:?}", ready.report.control_id),
            ));
        }
        let reason = || {
            let err = m.get("ERR", 3, 2);
            let text = if err.is_empty() {
                m.get("MSA", 3, 1)
            } else {
                err
            };
            format!("{code} {text}")
        };
        match code.as_str() {
            "AA" | "CA" => SinkVerdict::Delivered(format!("{code} from {}", self.address)),
            "AE" | "CE" => SinkVerdict::Failed(Why::new("why-his-refused", reason())),
            _ => SinkVerdict::Retry(Why::new("why-his-busy", reason())),
        }
    }
}
