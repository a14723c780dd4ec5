//! Delivery of lab results to the hospital LIS over MLLP, from the durable
//! outbox.
//!
//! One message in flight per connection. HL7 items go as received (bytes
//! and charset unchanged); ASTM items are converted to an ORU^R01 whose
//! MSH-10 derives from the item, so every resend carries the same control
//! id and the LIS can de-duplicate. AA/CA: delivered. AR/CR or no answer:
//! retried with backoff (a timeout also resends on a new connection).
//! AE/CE: parked with the LIS's reason for an operator; it never blocks the
//! queue, and `yilian-central outbox --requeue ID` puts it back.

use std::time::Duration;
use yilian_protocol::ItemKind;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use yilian_codecs::astm::AstmMessage;
use yilian_codecs::astm::to_hl7::{OruHeader, to_oru};
use yilian_codecs::hl7::{Charset, Message, decode};
use yilian_codecs::mllp::{self, MllpDecoder};

use crate::config::LisSection;
use crate::outbox::{Destination, Verdict};
use crate::store::{OutboxRow, Store};

pub const DESTINATION: &str = "lis";

pub struct LisDelivery {
    config: LisSection,
    store: Store,
    conn: Option<TcpStream>,
}

impl Destination for LisDelivery {
    fn name(&self) -> &'static str {
        DESTINATION
    }

    fn ordered(&self) -> bool {
        true
    }

    async fn deliver(&mut self, row: &OutboxRow) -> Verdict {
        let mut conn = self.conn.take();
        let v = self.send(row, &mut conn).await;
        self.conn = conn;
        // The clinic's sender asked for the LIS's answer: it goes down to
        // the box before the delivery counts as done, or the delivery is
        // made again (the LIS de-duplicates on MSH-10) so the answer is
        // never lost.
        if let Err(e) = self.pass_answer_back(row, &v).await {
            tracing::error!(upload = %row.upload_id, error = %e,
                "cannot queue the LIS's answer for the clinic's sender; the delivery is made again");
            return Verdict::Retry(format!("queueing the application ACK: {e}"));
        }
        v
    }
}

impl LisDelivery {
    pub fn new(config: LisSection, store: Store) -> Self {
        Self {
            config,
            store,
            conn: None,
        }
    }

    /// The message to send for an outbox row.
    fn message(&self, row: &OutboxRow, blob: &[u8]) -> Result<Option<Vec<u8>>, String> {
        match ItemKind::parse(&row.kind) {
            Some(ItemKind::Hl7) => Ok(Some(blob.to_vec())),
            Some(ItemKind::Astm) => {
                let charset = row.metadata[yilian_protocol::kind::keys::CHARSET]
                    .as_str()
                    .and_then(Charset::from_label)
                    .unwrap_or(Charset::Utf8);
                let m = AstmMessage::parse(blob, charset)
                    .map_err(|e| format!("ASTM message does not parse: {e}"))?;
                let clinic = row
                    .gateway
                    .rsplit_once('/')
                    .map_or(row.gateway.as_str(), |(c, _)| c);
                let control_id = format!("YL{}", &row.upload_id[..row.upload_id.len().min(18)]);
                let now =
                    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
                let ts: String = now.chars().filter(char::is_ascii_digit).collect();
                let header = OruHeader {
                    sending_application: "YILIAN",
                    sending_facility: clinic,
                    receiving_application: &self.config.receiving_application,
                    receiving_facility: &self.config.receiving_facility,
                    timestamp: &ts,
                    control_id: &control_id,
                };
                Ok(to_oru(&m, &header).map(String::into_bytes))
            }
            _ => Err(format!("items of kind {} do not go to the LIS", row.kind)),
        }
    }

    async fn send(&self, row: &OutboxRow, conn: &mut Option<TcpStream>) -> Verdict {
        let store = self.store.clone();
        let sha = row.sha256.clone();
        let blob = match tokio::task::spawn_blocking(move || store.read_blob(&sha)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return Verdict::Retry(format!("cannot read the stored item: {e}")),
            Err(e) => return Verdict::Retry(e.to_string()),
        };
        let message = match self.message(row, &blob) {
            Ok(Some(m)) => m,
            // A query or a message without results: nothing for the LIS.
            Ok(None) => return Verdict::Delivered,
            Err(e) => return Verdict::Park(e),
        };
        let sent_id = {
            let d = decode(&message, None);
            Message::parse(&d.text)
                .map(|m| m.control_id().to_owned())
                .unwrap_or_default()
        };
        if conn.is_none() {
            match tokio::time::timeout(
                Duration::from_secs(10),
                TcpStream::connect(&self.config.address),
            )
            .await
            {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    *conn = Some(s);
                }
                Ok(Err(e)) => {
                    return Verdict::Retry(format!(
                        "cannot connect to the LIS at {}: {e}",
                        self.config.address
                    ));
                }
                Err(_) => {
                    return Verdict::Retry(format!(
                        "connecting to the LIS at {} timed out",
                        self.config.address
                    ));
                }
            }
        }
        let Some(stream) = conn.as_mut() else {
            return Verdict::Retry("no connection".into());
        };
        let answer =
            tokio::time::timeout(self.config.ack_timeout, exchange(stream, &message)).await;
        let ack = match answer {
            Ok(Ok(ack)) => ack,
            Ok(Err(e)) => {
                *conn = None;
                return Verdict::Retry(format!("LIS connection failed: {e}"));
            }
            Err(_) => {
                // The same message (same MSH-10) goes again on a new
                // connection; the LIS de-duplicates.
                *conn = None;
                tracing::warn!(upload = %row.upload_id, "no ACK from the LIS in time; will resend");
                return Verdict::Retry("no ACK within the timeout".into());
            }
        };
        let d = decode(&ack, None);
        let Ok(m) = Message::parse(&d.text) else {
            *conn = None;
            return Verdict::Retry("the LIS answered something that is not an HL7 ACK".into());
        };
        let code = m.get("MSA", 1, 1).to_owned();
        let answered = m.get("MSA", 2, 1);
        if !sent_id.is_empty() && answered != sent_id {
            *conn = None;
            return Verdict::Retry(format!("ACK for {answered:?}, expected {sent_id:?}"));
        }
        let reason = || {
            let err = m.get("ERR", 3, 2);
            let text = if err.is_empty() {
                m.get("MSA", 3, 1)
            } else {
                err
            };
            format!("LIS answered {code}: {text}")
        };
        match code.as_str() {
            "AA" | "CA" => {
                tracing::info!(upload = %row.upload_id, kind = %row.kind, "delivered to the LIS");
                Verdict::Delivered
            }
            "AE" | "CE" => {
                let why = reason();
                tracing::error!(upload = %row.upload_id, reason = %why, "the LIS refused a message; parked for an operator");
                Verdict::Park(why)
            }
            _ => {
                let why = reason();
                tracing::warn!(upload = %row.upload_id, reason = %why, "the LIS cannot take the message now; retrying later");
                Verdict::Retry(why)
            }
        }
    }
}

impl LisDelivery {
    /// Queues the application ACK (MSH-16 AL, ER or SU) for the sender of
    /// an HL7 item, built from the LIS's answer.
    async fn pass_answer_back(&self, row: &OutboxRow, verdict: &Verdict) -> Result<(), String> {
        let meta = |k: &str| row.metadata.get(k).and_then(|v| v.as_str()).unwrap_or("");
        let mode = meta("app_ack");
        let (code, reason) = match verdict {
            Verdict::Delivered => ("AA", None),
            Verdict::Park(why) => ("AE", Some(why.as_str())),
            Verdict::Retry(_) => return Ok(()),
        };
        let wanted = match mode {
            "AL" => true,
            "ER" => code != "AA",
            "SU" => code == "AA",
            _ => false,
        };
        if !wanted {
            return Ok(());
        }
        let store = self.store.clone();
        let sha = row.sha256.clone();
        let original = tokio::task::spawn_blocking(move || store.read_blob(&sha))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let ack = application_ack(&original, code, reason, &row.upload_id)
            .ok_or("the item is no longer a readable HL7 message")?;
        let extra: std::collections::BTreeMap<String, String> =
            ["app_ack", "control_id", "peer_address", "listener"]
                .iter()
                .map(|k| ((*k).to_owned(), meta(k).to_owned()))
                .collect();
        let (store, gateway, upload) = (
            self.store.clone(),
            row.gateway.clone(),
            row.upload_id.clone(),
        );
        tokio::task::spawn_blocking(move || {
            store.ack_event_commit(&gateway, &upload, &ack, &extra)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        tracing::info!(upload = %row.upload_id, code, "the LIS's answer queued for the clinic's sender");
        Ok(())
    }
}

/// An application ACK to the sender of `original`, as the LIS answered
/// (`AA`, or `AE` with the LIS's reason in ERR and MSA-3); in the
/// original's charset, its control id derived from the item.
pub fn application_ack(
    original: &[u8],
    code: &str,
    reason: Option<&str>,
    upload_id: &str,
) -> Option<Vec<u8>> {
    let d = decode(original, None);
    let m = Message::parse(&d.text).ok()?;
    let clean = |s: &str| -> String {
        s.chars()
            .filter(|c| !matches!(c, '|' | '^' | '~' | '\\' | '&' | '\r' | '\n'))
            .take(200)
            .collect()
    };
    let ts: String = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let (_, trigger, _) = m.message_type();
    let control = format!("YLA{}", &upload_id[..upload_id.len().min(17)]);
    let mut text = format!(
        "MSH|^~\\&|{}|{}|{}|{}|{ts}||ACK^{trigger}^ACK|{control}|P|{}\rMSA|{code}|{}",
        m.get("MSH", 5, 1),
        m.get("MSH", 6, 1),
        m.get("MSH", 3, 1),
        m.get("MSH", 4, 1),
        m.version(),
        m.control_id()
    );
    if let Some(r) = reason {
        let r = clean(r);
        text.push_str(&format!("|{r}\rERR||||E||||{r}"));
    }
    text.push('\r');
    Some(yilian_codecs::hl7::encode(&text, d.charset))
}

/// Sends one framed message and reads one framed answer.
async fn exchange(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(&mllp::encode(message)).await?;
    let mut dec = MllpDecoder::new(1024 * 1024);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the LIS closed the connection",
            ));
        }
        if let Some(Ok(frame)) = dec.push(&buf[..n]).into_iter().next() {
            return Ok(frame);
        }
    }
}
