//! HL7 v2 over MLLP: a TCP listener for the clinic LIS and analyzers.
//!
//! Per connection one message is in flight: it is decoded (charset from
//! MSH-18, the peer's setting, or the bytes), checked, appended to the spool,
//! and only with the spool's `Committed` proof in hand acknowledged (AA, or
//! CA in enhanced mode). A message that cannot be parsed gets AE (CE) with
//! an ERR segment saying what is wrong; a spool that cannot take it gets AR
//! (CR), which senders retry. A message sent again after a lost ACK (same
//! MSH-3, MSH-4, MSH-10) is acknowledged again and stored once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use yilian_codecs::hl7::escape::unescape;
use yilian_codecs::hl7::{
    AckMode, Charset, ErrorInfo, Message, Verdict, build_ack, decode, encode,
};
use yilian_codecs::mllp::{self, MllpDecoder, MllpError};
use yilian_spool::{Committed, Lane, SpoolError};

use crate::config::{Hl7Peer, Hl7Section};
use crate::governor::{AcceptErrors, Governor, Ticket};
use crate::intake::source::{Intake, Refusal, Shared, Source, Starting};

pub struct MllpListener {
    config: Hl7Section,
    intake: Intake,
    /// Keeps a garbage-streaming sender from flooding the log.
    warn_limit: crate::intake::warn_limit::WarnLimit,
    /// Where this listener's connections register for application ACKs.
    open_senders: Arc<crate::intake::open_senders::OpenSenders>,
}

/// What happened to one message, for its acknowledgement.
enum Outcome {
    /// On stable storage: the spool's proof, which the ACK needs.
    Stored(Committed),
    Malformed(ErrorInfo),
    Refused(ErrorInfo),
}

impl Source for MllpListener {
    fn intake(&self) -> &Intake {
        &self.intake
    }

    /// Binds the listener (so readiness covers it).
    fn start(self: Box<Self>, stop: watch::Receiver<bool>) -> Starting {
        Box::pin(async move {
            let listener = TcpListener::bind(self.config.listen).await.map_err(|e| {
                anyhow::anyhow!(
                    "binding the HL7 listener {:?} on {}: {e}",
                    self.config.name,
                    self.config.listen
                )
            })?;
            tracing::info!(listener = %self.config.name, addr = %self.config.listen, "HL7 MLLP listener bound");
            self.intake
                .metrics
                .device_up("hl7", &self.config.name, true);
            Ok(Box::pin(self.serve(listener, stop)) as _)
        })
    }
}

impl MllpListener {
    pub fn new(config: Hl7Section, shared: &Shared) -> Self {
        let intake = Intake::new(
            "hl7",
            &config.name,
            "answered AR (retryable) so the sender keeps the message and sends it again",
            shared,
        );
        Self {
            config,
            intake,
            warn_limit: Default::default(),
            open_senders: shared.open_senders.clone(),
        }
    }

    async fn serve(self, listener: TcpListener, mut stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let governor = Governor::new(
            &this.config.name,
            this.config.max_connections,
            this.config.max_connections_per_peer,
            this.config.peer.iter().map(|p| p.address),
        );
        let mut accept_errors = AcceptErrors::new(&this.config.name);
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.changed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(a) => {
                    accept_errors.ok();
                    a
                }
                Err(e) => {
                    let wait = accept_errors.failed(&e);
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            let ticket = match governor.admit(peer.ip()) {
                Ok(t) => t,
                Err(why) => {
                    if let Some(held) = this.warn_limit.admit(peer.ip()) {
                        tracing::warn!(listener = %this.config.name, %peer, reason = %why, held_back = held,
                            "HL7 connection refused");
                    }
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let me = this.clone();
            let stop = stop.clone();
            let counted = me.intake.metrics.connection("hl7", &me.config.name);
            tokio::spawn(async move {
                let _counted = counted;
                if let Err(e) = me.connection(stream, peer, stop, ticket).await {
                    tracing::debug!(listener = %me.config.name, %peer, error = %e, "HL7 connection ended");
                }
            });
        }
    }

    fn peer_settings(&self, peer: &SocketAddr) -> Option<&Hl7Peer> {
        self.config.peer.iter().find(|p| p.address == peer.ip())
    }

    async fn connection(
        &self,
        mut stream: TcpStream,
        peer: SocketAddr,
        mut stop: watch::Receiver<bool>,
        ticket: Ticket,
    ) -> std::io::Result<()> {
        let mut decoder = MllpDecoder::new(self.config.max_message_bytes);
        let mut buf = vec![0u8; 64 * 1024];
        let kicked = ticket.kicked();
        tokio::pin!(kicked);
        // Application ACKs for this sender come back on this connection
        // while it is open, and only while no message of its is half
        // read: a sender is then not waiting for an accept ACK we owe it.
        let mut registration = self.open_senders.register(&self.config.name, peer.ip());
        let ended = loop {
            let between_messages = decoder.pending() == 0;
            let n = tokio::select! {
                Some(out) = registration.outgoing.recv(), if between_messages => {
                    let written = stream.write_all(&out.bytes).await;
                    let failed = written.as_ref().err().map(std::io::Error::kind);
                    let _ = out.written.send(written);
                    match failed {
                        Some(kind) => break Err(kind.into()),
                        None => continue,
                    }
                }
                r = tokio::time::timeout(self.config.idle_timeout, stream.read(&mut buf)) => match r {
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) => break Err(e),
                    Err(_) => break Ok("idle"),
                },
                _ = &mut kicked => break Ok("closed to make room for another sender"),
                _ = stop.changed() => break Ok("stopping"),
            };
            ticket.touch();
            if n == 0 {
                break Ok("closed by the sender");
            }
            for frame in decoder.push(&buf[..n]) {
                match frame {
                    Ok(bytes) => {
                        if let Some(ack) = self.handle(&bytes, &peer).await {
                            stream.write_all(&ack).await?;
                        }
                    }
                    Err(MllpError::TooLong { max, head }) => {
                        self.intake.metrics.refused("too_long");
                        if let Some(held) = self.warn_limit.admit(peer.ip()) {
                            tracing::warn!(listener = %self.config.name, %peer, max_bytes = max, held_back = held,
                                "HL7 message over the size limit refused; raise max_message_bytes if this sender's messages really are that large");
                        }
                        if let Some(ack) = too_long_ack(&head, max) {
                            stream.write_all(&ack).await?;
                        }
                    }
                    Err(MllpError::Abandoned { bytes }) => {
                        if let Some(held) = self.warn_limit.admit(peer.ip()) {
                            tracing::warn!(listener = %self.config.name, %peer, bytes_dropped = bytes, held_back = held,
                                "an unfinished HL7 message was dropped: the sender started a new one before ending it (it got no ACK for it)");
                        }
                    }
                }
            }
        };
        // A message the stream ended inside was never acknowledged: the
        // sender resends it; say so, it is often a network fault.
        if decoder.pending() > 0 {
            let why = match &ended {
                Ok(why) => (*why).to_owned(),
                Err(e) => e.to_string(),
            };
            tracing::warn!(listener = %self.config.name, %peer, bytes_dropped = decoder.pending(), reason = %why,
                "connection ended in the middle of an HL7 message; it was not stored and not acknowledged, so the sender should resend it");
        }
        ended.map(|_| ())
    }

    /// Stores one message and returns the framed ACK to send, if any.
    async fn handle(&self, bytes: &[u8], peer: &SocketAddr) -> Option<Vec<u8>> {
        let settings = self.peer_settings(peer);
        let override_cs = settings
            .and_then(|p| p.charset.as_deref())
            .and_then(Charset::from_label);
        let decoded = decode(bytes, override_cs);
        let message = match Message::parse(&decoded.text) {
            Ok(m) => m,
            Err(e) => {
                self.intake.metrics.refused("malformed");
                if let Some(held) = self.warn_limit.admit(peer.ip()) {
                    tracing::warn!(listener = %self.config.name, %peer, error = %e, held_back = held,
                        "message is not HL7 v2; answered AR; check the sender's configuration");
                }
                let ack = unparsable_ack(&e.to_string());
                return Some(mllp::encode(&encode(&ack, decoded.charset)));
            }
        };
        // An answer to an application ACK we sent on this connection: the
        // sender's acknowledgement, not a result to store or answer.
        if message.message_type().0 == "ACK" {
            tracing::debug!(listener = %self.config.name, %peer, answered = message.get("MSA", 2, 1),
                "the sender acknowledged an application ACK");
            return None;
        }
        let mode = AckMode::of(&message);
        let outcome = match message.require_header() {
            Err(e) => Outcome::Malformed(ErrorInfo {
                location: match e {
                    yilian_codecs::hl7::Hl7Error::Missing(f) => f.replace('-', "^1^"),
                    _ => "MSH^1".into(),
                },
                code: 101,
                text: e.to_string(),
                severity: 'E',
            }),
            Ok(()) if !message.version().starts_with("2.") => Outcome::Malformed(ErrorInfo {
                location: "MSH^1^12".into(),
                code: 203,
                text: format!("unsupported version {}", message.version()),
                severity: 'E',
            }),
            Ok(()) => self.store(bytes, &message, &decoded, settings, peer).await,
        };
        let verdict = match &outcome {
            Outcome::Stored(proof) => Verdict::Stored(proof),
            Outcome::Malformed(e) => Verdict::Malformed(e),
            Outcome::Refused(e) => Verdict::Refused(e),
        };
        if let Outcome::Malformed(e) = &outcome {
            self.intake.metrics.refused("malformed");
            if let Some(held) = self.warn_limit.admit(peer.ip()) {
                tracing::warn!(listener = %self.config.name, %peer, code = e.code, reason = %e.text, held_back = held,
                    "HL7 message refused as malformed");
            }
        }
        let success = matches!(outcome, Outcome::Stored(_));
        let send = match mode {
            AckMode::Original => true,
            AckMode::Enhanced { accept, .. } => {
                accept.sends(success) || settings.is_some_and(|p| p.force_ack)
            }
        };
        if !send {
            return None;
        }
        let ack = build_ack(&message, verdict, &ack_control_id(), &timestamp());
        Some(mllp::encode(&encode(&ack, decoded.charset)))
    }

    async fn store(
        &self,
        bytes: &[u8],
        m: &Message,
        decoded: &yilian_codecs::hl7::Decoded,
        settings: Option<&Hl7Peer>,
        peer: &SocketAddr,
    ) -> Outcome {
        let (code, trigger, _) = m.message_type();
        let lane = if self.config.urgent_on_critical && has_critical_result(m) {
            Lane::Urgent
        } else {
            settings.and_then(|p| p.lane).unwrap_or(self.config.lane)
        };
        let mut metadata = BTreeMap::new();
        metadata.insert("message_type".to_owned(), format!("{code}^{trigger}"));
        metadata.insert("version".to_owned(), m.version().to_owned());
        metadata.insert(
            "sending_application".to_owned(),
            unescape(m.get("MSH", 3, 1), &m.delimiters),
        );
        metadata.insert(
            "sending_facility".to_owned(),
            unescape(m.get("MSH", 4, 1), &m.delimiters),
        );
        metadata.insert(
            yilian_protocol::kind::keys::CHARSET.to_owned(),
            decoded.charset.hl7_code().to_owned(),
        );
        let patient_id = unescape(m.get("PID", 3, 1), &m.delimiters);
        if !patient_id.is_empty() {
            metadata.insert("patient_id".to_owned(), patient_id);
        }
        // The clinic's order number: the hospital's report names it, and
        // central finds the clinic by it.
        let placer = [("ORC", 2), ("OBR", 2)]
            .iter()
            .map(|(s, f)| unescape(m.get(s, *f, 1), &m.delimiters))
            .find(|v| !v.trim().is_empty());
        if let Some(p) = placer {
            metadata.insert("placer_order".to_owned(), p.trim().to_owned());
        }
        // A sender asking for the receiving application's answer (MSH-16):
        // central sends the LIS's back down, and this box passes it on.
        let app_ack = m.get("MSH", 16, 1);
        if matches!(app_ack, "AL" | "ER" | "SU") {
            metadata.insert("app_ack".to_owned(), app_ack.to_owned());
            metadata.insert("control_id".to_owned(), m.control_id().to_owned());
            metadata.insert("peer_address".to_owned(), peer.ip().to_string());
            metadata.insert("listener".to_owned(), self.config.name.clone());
        }
        let mut item = self.intake.item(lane, yilian_protocol::ItemKind::Hl7);
        item.metadata = metadata;
        // Receivers de-duplicate on MSH-3, MSH-4 and MSH-10.
        item.dedup_key = Some(format!(
            "hl7:{}|{}|{}",
            m.get("MSH", 3, 1),
            m.get("MSH", 4, 1),
            m.control_id()
        ));
        match self.intake.spool_item(item, bytes.to_vec()).await {
            Ok(committed) => {
                tracing::debug!(listener = %self.config.name, message_type = %format!("{code}^{trigger}"),
                    upload = committed.upload_id(), "HL7 message type");
                Outcome::Stored(committed)
            }
            Err(e) => Outcome::Refused(refusal(&e)),
        }
    }
}

fn refusal(e: &Refusal) -> ErrorInfo {
    ErrorInfo {
        location: String::new(),
        code: 207,
        text: match e {
            Refusal::Spool(SpoolError::Full { .. }) => {
                "gateway storage is full; retry later".to_owned()
            }
            Refusal::Task(_) => format!("internal error: {e}"),
            _ => "gateway storage unavailable; retry later".to_owned(),
        },
        severity: 'E',
    }
}

/// OBX-8 abnormal flags that mean a critical value (HL7 table 0078).
fn has_critical_result(m: &Message) -> bool {
    m.segments
        .iter()
        .filter(|s| s.id() == "OBX")
        .flat_map(|s| s.field(8).split(m.delimiters.repetition))
        .any(|flag| matches!(flag.trim(), "HH" | "LL" | "AA"))
}

/// An answer for bytes that are not HL7 at all: there is no MSH to echo.
fn unparsable_ack(why: &str) -> String {
    format!(
        "MSH|^~\\&|YILIAN|GATEWAY|||{}||ACK|{}|P|2.5.1\rMSA|AR|\rERR||MSH^1|100^{}^HL70357|E\r",
        timestamp(),
        ack_control_id(),
        why.replace(['|', '^', '~', '\\', '&', '\r', '\n'], " ")
    )
}

fn ack_control_id() -> String {
    let b: [u8; 8] = rand::random();
    format!("YL{}", hex::encode(b).to_uppercase())
}

fn timestamp() -> String {
    let now = std::time::SystemTime::now();
    let s = humantime::format_rfc3339_seconds(now).to_string();
    // 2026-11-23T16:42:08Z → 20261123164208
    s.chars().filter(char::is_ascii_digit).collect()
}

/// The answer to a message over the size limit: AR (CR in enhanced mode)
/// with an ERR saying so, built from the message's own MSH (kept from the
/// head of the block) so the sender can match it; `None` when not even
/// the MSH could be read.
fn too_long_ack(head: &[u8], max: usize) -> Option<Vec<u8>> {
    let decoded = decode(head, None);
    let msh = decoded.text.split(['\r', '\n']).next()?;
    let message = Message::parse(msh).ok()?;
    message.require_header().ok()?;
    let error = ErrorInfo {
        location: "MSH".into(),
        code: 207,
        text: format!(
            "message larger than this box accepts ({max} bytes): split it, or ask for max_message_bytes to be raised"
        ),
        severity: 'E',
    };
    let ack = build_ack(
        &message,
        Verdict::Refused(&error),
        &ack_control_id(),
        &timestamp(),
    );
    Some(mllp::encode(&encode(&ack, decoded.charset)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn critical_flags_are_found() {
        let m = Message::parse(
            "MSH|^~\\&|A|B|C|D|1||ORU^R01|1|P|2.5.1\rOBX|1|NM|K||7.1|mmol/L|3.5-5.3|HH|||F\r",
        )
        .expect("parses");
        assert!(has_critical_result(&m));
        let m = Message::parse(
            "MSH|^~\\&|A|B|C|D|1||ORU^R01|1|P|2.5.1\rOBX|1|NM|K||4.1|mmol/L|3.5-5.3|N|||F\r",
        )
        .expect("parses");
        assert!(!has_critical_result(&m));
    }

    #[test]
    fn timestamps_are_hl7_dtm() {
        let t = timestamp();
        assert_eq!(t.len(), 14, "{t}");
    }
}
