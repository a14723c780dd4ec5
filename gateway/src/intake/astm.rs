//! Laboratory analyzers speaking ASTM E1381/E1394, on a serial port or TCP.
//!
//! With E1381 framing the codec's link state machine answers frames; the
//! frame that completes the terminator record is answered only after the
//! message is committed to the spool (ACK), or refused (NAK: the analyzer
//! retransmits). Bare-record analyzers get no answers (the protocol has
//! none); their messages are spooled at the `L` record.
//!
//! Serial ports are opened by their stable path and reopened after an
//! unplug; TCP runs as server or client per device profile.

use crate::governor::{AcceptErrors, Governed, Governor};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use yilian_codecs::astm::{AstmLink, AstmMessage, LinkConfig, LinkEvent, OnInterrupt};
use yilian_codecs::hl7::Charset;
use yilian_spool::{Committed, Lane};

use super::serial;
use super::source::{Intake, Shared, Source, Starting};
use crate::config::{AstmFraming, AstmSection, AstmTransport};

pub struct AstmAdapter {
    config: AstmSection,
    intake: Intake,
}

const RECONNECT: Duration = serial::REOPEN;
/// A TCP session with no bytes for this long is closed (analyzers that
/// keep their connection open send at least a result or a query a day;
/// a dead peer is found sooner by keepalive, or by its replacement).
const SESSION_IDLE: Duration = Duration::from_secs(6 * 3600);

impl Source for AstmAdapter {
    fn intake(&self) -> &Intake {
        &self.intake
    }

    /// Binds what must be bound before readiness (a TCP listener).
    fn start(self: Box<Self>, stop: watch::Receiver<bool>) -> Starting {
        Box::pin(async move {
            let name = self.config.name.clone();
            (*self)
                .bind(stop)
                .await
                .map_err(|e| anyhow::anyhow!("starting the ASTM device {name:?}: {e}"))
        })
    }
}

impl AstmAdapter {
    pub fn new(config: AstmSection, shared: &Shared) -> Self {
        let intake = Intake::new(
            "astm",
            &config.name,
            "the final frame is NAKed, so the analyzer sends the message again",
            shared,
        );
        Self { config, intake }
    }

    fn charset(&self) -> Charset {
        Charset::from_label(&self.config.charset).unwrap_or(Charset::Utf8)
    }

    fn link_config(&self) -> LinkConfig {
        LinkConfig {
            max_frame_len: self.config.max_frame_bytes,
            on_interrupt: if self.config.on_interrupt == "finish" {
                OnInterrupt::FinishThenHold
            } else {
                OnInterrupt::TreatAsAck
            },
            ..LinkConfig::default()
        }
    }

    async fn bind(
        self,
        stop: watch::Receiver<bool>,
    ) -> std::io::Result<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> {
        let this = Arc::new(self);
        match this.config.transport {
            AstmTransport::TcpServer => {
                let addr = this
                    .config
                    .listen
                    .ok_or_else(|| std::io::Error::other("no listen address"))?;
                let listener = tokio::net::TcpListener::bind(addr).await?;
                tracing::info!(device = %this.config.name, %addr, "ASTM listener bound");
                this.intake
                    .metrics
                    .device_up("astm", &this.config.name, true);
                Ok(Box::pin(this.serve_tcp(listener, stop)))
            }
            AstmTransport::TcpClient => Ok(Box::pin(this.connect_tcp(stop))),
            AstmTransport::Serial => Ok(Box::pin(this.serve_serial(stop))),
        }
    }

    async fn serve_tcp(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        mut stop: watch::Receiver<bool>,
    ) {
        // One analyzer per profile, one session at a time; but a session
        // that has gone silent (a half-open connection after a network
        // glitch, or something else on the LAN that connected and says
        // nothing) is replaced by a new connection, so the real analyzer
        // is never locked out.
        let governor = Governor::new(&self.config.name, 1, 1, []);
        let mut accept_errors = AcceptErrors::new(&self.config.name);
        // A session may have seen the stop signal already: check the flag,
        // not only for changes.
        while !*stop.borrow() {
            let (stream, peer) = tokio::select! {
                a = listener.accept() => match a {
                    Ok(a) => {
                        accept_errors.ok();
                        a
                    }
                    Err(e) => {
                        let wait = accept_errors.failed(&e);
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                },
                _ = stop.changed() => return,
            };
            let ticket = match governor.admit(peer.ip()) {
                Ok(t) => t,
                Err(why) => {
                    tracing::warn!(device = %self.config.name, %peer, reason = %why,
                        "a second connection while the analyzer's session is busy; closed");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            // Half-open connections are found by the kernel too.
            let keepalive = socket2::TcpKeepalive::new()
                .with_time(Duration::from_secs(60))
                .with_interval(Duration::from_secs(10));
            let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
            tracing::info!(device = %self.config.name, %peer, "analyzer connected");
            let me = self.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let _counted = me.intake.metrics.connection("astm", &me.config.name);
                let mut stream = Governed::new(stream, ticket, SESSION_IDLE);
                let why = me.session(&mut stream, &mut stop).await;
                tracing::info!(device = %me.config.name, %peer, reason = %why, "analyzer disconnected");
            });
        }
    }

    async fn connect_tcp(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let target = self.config.connect.clone().unwrap_or_default();
        while !*stop.borrow() {
            match tokio::net::TcpStream::connect(&target).await {
                Ok(mut stream) => {
                    let _ = stream.set_nodelay(true);
                    tracing::info!(device = %self.config.name, %target, "connected to analyzer");
                    self.intake
                        .metrics
                        .device_up("astm", &self.config.name, true);
                    let _counted = self.intake.metrics.connection("astm", &self.config.name);
                    let why = self.session(&mut stream, &mut stop).await;
                    self.intake
                        .metrics
                        .device_up("astm", &self.config.name, false);
                    tracing::info!(device = %self.config.name, reason = %why, "analyzer connection ended");
                }
                Err(e) => {
                    tracing::debug!(device = %self.config.name, %target, error = %e, "cannot reach analyzer")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(RECONNECT) => {}
                _ = stop.changed() => return,
            }
        }
    }

    async fn serve_serial(self: Arc<Self>, stop: watch::Receiver<bool>) {
        let Some(path) = self.config.port.clone() else {
            return;
        };
        let this = self.clone();
        serial::run_port(
            &self.intake.metrics,
            "astm",
            &self.config.name,
            &path,
            self.config.serial(),
            stop,
            move |mut port, mut stop| {
                let this = this.clone();
                async move { this.session(&mut port, &mut stop).await }
            },
        )
        .await;
    }

    /// Serves one connection (or one period of an open serial port) until
    /// it ends; returns why.
    async fn session<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        stop: &mut watch::Receiver<bool>,
    ) -> String {
        match self.config.framing {
            AstmFraming::E1381 => self.e1381_session(stream, stop).await,
            AstmFraming::Bare => self.bare_session(stream, stop).await,
        }
    }

    async fn e1381_session<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        stop: &mut watch::Receiver<bool>,
    ) -> String {
        let mut link = AstmLink::new(self.link_config());
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            // Answers first, then wait for bytes or the link's timer.
            while let Some(out) = link.poll_transmit() {
                if let Err(e) = AsyncWriteExt::write_all(stream, &out).await {
                    return format!("write failed: {e}");
                }
            }
            while let Some(ev) = link.poll_event() {
                match ev {
                    LinkEvent::Message { data, needs_commit } => {
                        let stored = self.store(data).await;
                        match (stored, needs_commit) {
                            (Some(proof), true) => link.stored(&proof, Instant::now()),
                            (None, true) => link.not_stored(Instant::now()),
                            (Some(_), false) => {}
                            // E1381 acknowledges every frame of a session
                            // that ends without an L record before the
                            // message is known to be complete: the protocol
                            // leaves nothing to withhold.
                            (None, false) => tracing::error!(device = %self.config.name,
                                "a message without an L record could not be stored, and its frames were already acknowledged"),
                        }
                    }
                    LinkEvent::FrameRejected(e) => {
                        tracing::info!(device = %self.config.name, error = %e, "frame refused with NAK; the analyzer will retransmit");
                    }
                    LinkEvent::Discarded { reason, bytes } => {
                        tracing::warn!(device = %self.config.name, reason, bytes, "incomplete message discarded; the analyzer will send it again");
                    }
                    LinkEvent::Sent | LinkEvent::SendFailed { .. } => {}
                }
            }
            if link.poll_transmit_pending() {
                continue;
            }
            let timer = link.poll_timeout();
            let read = async {
                match timer {
                    Some(t) => {
                        tokio::time::timeout_at(t.into(), AsyncReadExt::read(stream, &mut buf))
                            .await
                            .ok()
                    }
                    None => Some(AsyncReadExt::read(stream, &mut buf).await),
                }
            };
            let got = tokio::select! {
                r = read => r,
                _ = stop.changed() => return "stopping".into(),
            };
            match got {
                None => link.handle_timeout(Instant::now()),
                Some(Ok(0)) => return "end of stream".into(),
                Some(Ok(n)) => link.handle_input(&buf[..n], Instant::now()),
                Some(Err(e)) => return format!("read failed: {e}"),
            }
        }
    }

    async fn bare_session<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        stop: &mut watch::Receiver<bool>,
    ) -> String {
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = tokio::select! {
                r = AsyncReadExt::read(stream, &mut buf) => match r {
                    Ok(0) => return "end of stream".into(),
                    Ok(n) => n,
                    Err(e) => return format!("read failed: {e}"),
                },
                _ = stop.changed() => return "stopping".into(),
            };
            pending.extend_from_slice(&buf[..n]);
            if pending.len() > self.config.max_frame_bytes * 64 {
                tracing::warn!(device = %self.config.name, bytes = pending.len(), "no L record in a very long input; discarded");
                pending.clear();
            }
            // A message ends with the L record's CR (or LF).
            while let Some(end) = find_terminator_end(&pending) {
                let msg: Vec<u8> = pending.drain(..end).collect();
                let start = msg.iter().position(|&b| b == b'H').unwrap_or(0);
                // Bare records have no acknowledgement at all: nothing to
                // answer, only to log.
                if self.store(msg[start..].to_vec()).await.is_none() {
                    tracing::error!(device = %self.config.name, "a bare-record message could not be stored");
                }
            }
        }
    }

    /// Appends one complete message; the spool's proof once it is durable.
    async fn store(&self, data: Vec<u8>) -> Option<Committed> {
        let charset = self.charset();
        let parsed = AstmMessage::parse(&data, charset);
        let mut metadata = BTreeMap::new();
        let mut lane = self.config.lane;
        match &parsed {
            Ok(m) => {
                let d = &m.delimiters;
                let h = m.records.iter().find(|r| r.kind == 'H');
                if let Some(h) = h {
                    metadata.insert("analyzer".to_owned(), h.component(d, 5, 1).to_owned());
                }
                if let Some(p) = m.records.iter().find(|r| r.kind == 'P') {
                    let id = if p.field(3).is_empty() {
                        p.field(4)
                    } else {
                        p.field(3)
                    };
                    if !id.is_empty() {
                        metadata.insert("patient_id".to_owned(), id.to_owned());
                    }
                }
                if let Some(o) = m.records.iter().find(|r| r.kind == 'O') {
                    metadata.insert("specimen_id".to_owned(), o.field(3).to_owned());
                }
                let results = m.records.iter().filter(|r| r.kind == 'R').count();
                metadata.insert("results".to_owned(), results.to_string());
                if let Some(code) = m.termination_code() {
                    metadata.insert("termination".to_owned(), code.to_owned());
                }
                let stat = m.records.iter().any(|r| r.kind == 'O' && r.field(6) == "S");
                let critical = m.records.iter().any(|r| {
                    r.kind == 'R' && matches!(r.field(7), "HH" | "LL" | "AA" | "CH" | "CL")
                });
                if stat || critical {
                    lane = Lane::Urgent;
                }
                if let Err(e) = m.check_hierarchy() {
                    metadata.insert("hierarchy_warning".to_owned(), e.to_string());
                }
            }
            Err(e) => {
                // Kept anyway: a result the analyzer sent must not vanish
                // because we cannot read its header.
                tracing::warn!(device = %self.config.name, error = %e, "ASTM message does not parse; stored as received");
                metadata.insert("parse_error".to_owned(), e.to_string());
            }
        }
        metadata.insert(
            yilian_protocol::kind::keys::CHARSET.to_owned(),
            charset.hl7_code().to_owned(),
        );
        let mut item = self.intake.item(lane, yilian_protocol::ItemKind::Astm);
        item.metadata = metadata;
        // A message sent again after a lost ACK or a refused final frame is
        // byte for byte the same: store it once.
        item.dedup_key = Some(format!("astm:{}:{}", self.config.name, hex_sha256(&data)));
        self.intake.spool_item(item, data).await.ok()
    }
}

fn hex_sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// End (exclusive) of the first complete message in bare records: the
/// line terminator after an `L` record.
fn find_terminator_end(buf: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\r' || b == b'\n' {
            let line = &buf[line_start..i];
            let line = line
                .iter()
                .skip_while(|c| c.is_ascii_digit())
                .copied()
                .collect::<Vec<u8>>();
            if line.first() == Some(&b'L')
                && line.get(1).is_some_and(|c| !c.is_ascii_alphanumeric())
            {
                let mut end = i + 1;
                if b == b'\r' && buf.get(end) == Some(&b'\n') {
                    end += 1;
                }
                return Some(end);
            }
            line_start = i + 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_messages_end_at_the_l_record() {
        assert_eq!(find_terminator_end(b"H|\\^&\rP|1\rL|1|N\rH|"), Some(16));
        assert_eq!(find_terminator_end(b"H|\\^&\rP|1\r"), None);
        // "LOT" is not the L record; the CR LF after "L|1" ends the message.
        assert_eq!(find_terminator_end(b"H|\\^&\nLOT|x\nL|1\r\n"), Some(17));
    }
}
