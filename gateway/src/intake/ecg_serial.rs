//! ECG carts on a serial line: bare SCP-ECG records (framed by their own
//! length, junk between them skipped), or files sent by XMODEM/YMODEM.
//!
//! Raw records get no answer (the protocol has none): a record is stored
//! as soon as it is complete, and a record cut short (cable pulled, cart
//! switched off) is stored quarantined once the line has been quiet for the
//! profile's `quiet_time` or the port has gone, rather than dropped. XMODEM
//! and YMODEM senders get the ACK of their final EOT only after the spool
//! commit; a refusal cancels the transfer so the cart shows a failed export.

use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use yilian_codecs::ecg::{ModemMode, ModemReceiver, ScpFramer, TransferEvent, read_scp};
use yilian_spool::{Committed, Lane};

use super::serial;
use super::source::{Intake, Shared, Source, Starting};
use crate::config::{EcgSerialProtocol, EcgSerialSection};
use crate::content::{Profile, describe_bytes};

pub struct EcgSerialAdapter {
    config: EcgSerialSection,
    intake: Intake,
}

impl Source for EcgSerialAdapter {
    fn intake(&self) -> &Intake {
        &self.intake
    }

    /// Nothing to bind: the port is opened (and reopened after an unplug)
    /// by the serving task, so a cart that is not plugged in yet does not
    /// keep the box from starting.
    fn start(self: Box<Self>, stop: watch::Receiver<bool>) -> Starting {
        Box::pin(async move {
            self.intake.metrics.register_ecg_source(&self.config.name);
            Ok(Box::pin(self.run(stop)) as _)
        })
    }
}

impl EcgSerialAdapter {
    pub fn new(config: EcgSerialSection, shared: &Shared) -> Self {
        let intake = Intake::new(
            "serial",
            &config.name,
            "a file transfer is cancelled so the cart reports it; a raw record is lost to the line",
            shared,
        );
        Self { config, intake }
    }

    async fn run(self, stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let me = this.clone();
        serial::run_port(
            &this.intake.metrics,
            "serial",
            &this.config.name,
            &this.config.port,
            this.config.serial(),
            stop,
            move |mut port, mut stop| {
                let me = me.clone();
                async move { me.session(&mut port, &mut stop).await }
            },
        )
        .await;
    }

    /// Serves an open port until it fails or the gateway stops; returns why.
    pub async fn session<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        port: &mut S,
        stop: &mut watch::Receiver<bool>,
    ) -> String {
        match self.config.protocol {
            EcgSerialProtocol::Raw => self.raw_session(port, stop).await,
            EcgSerialProtocol::Xmodem => self.modem_session(port, stop, ModemMode::Xmodem).await,
            EcgSerialProtocol::Ymodem => self.modem_session(port, stop, ModemMode::Ymodem).await,
        }
    }

    async fn raw_session<S: AsyncRead + Unpin>(
        &self,
        port: &mut S,
        stop: &mut watch::Receiver<bool>,
    ) -> String {
        let mut framer = ScpFramer::new(self.config.max_record_bytes);
        let mut buf = vec![0u8; 16 * 1024];
        let mut reported_skipped = 0;
        let why = loop {
            let read = tokio::time::timeout(self.config.quiet_time, port.read(&mut buf));
            let got = tokio::select! {
                r = read => r,
                _ = stop.changed() => break "stopping".to_owned(),
            };
            match got {
                Err(_quiet) => {
                    if framer.pending() > 0 {
                        self.give_up(&mut framer, "the line went quiet").await;
                    }
                }
                Ok(Ok(0)) => break "end of stream".to_owned(),
                Ok(Err(e)) => break format!("read failed: {e}"),
                Ok(Ok(n)) => {
                    framer.push(&buf[..n]);
                    while let Some(record) = framer.next_record() {
                        self.store(record, None).await;
                    }
                }
            }
            if framer.skipped() > reported_skipped {
                tracing::info!(device = %self.config.name, bytes = framer.skipped() - reported_skipped,
                    "bytes between records skipped (not part of an SCP-ECG record)");
                reported_skipped = framer.skipped();
            }
        };
        if framer.pending() > 0 {
            self.give_up(&mut framer, "the port closed").await;
        }
        why
    }

    /// Stores a record cut short, quarantined; junk is only counted.
    async fn give_up(&self, framer: &mut ScpFramer, why: &str) {
        if let Some(fragment) = framer.flush() {
            tracing::warn!(device = %self.config.name, bytes = fragment.len(), why,
                "an SCP-ECG record was cut short; stored quarantined. Ask the technician to send the ECG again");
            self.store(fragment, None).await;
        }
    }

    async fn modem_session<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        port: &mut S,
        stop: &mut watch::Receiver<bool>,
        mode: ModemMode,
    ) -> String {
        let max = self.config.max_record_bytes;
        let mut rx = ModemReceiver::waiting(mode, max, Instant::now());
        let mut buf = vec![0u8; 4096];
        loop {
            while let Some(out) = rx.poll_transmit() {
                if let Err(e) = AsyncWriteExt::write_all(port, &out).await {
                    return format!("write failed: {e}");
                }
            }
            let mut restart = false;
            while let Some(ev) = rx.poll_event() {
                match ev {
                    TransferEvent::File { name, data, .. } => {
                        let data = if mode == ModemMode::Xmodem {
                            trim_xmodem_padding(data)
                        } else {
                            data
                        };
                        match self.store(data, name).await {
                            Some(proof) => rx.stored(&proof, Instant::now()),
                            None => rx.not_stored(Instant::now()),
                        }
                    }
                    TransferEvent::Aborted { reason } => {
                        tracing::warn!(device = %self.config.name, reason,
                            "file transfer from the cart aborted; nothing of it was acknowledged");
                        restart = true;
                    }
                    TransferEvent::BatchEnd => restart = true,
                }
            }
            if rx.poll_transmit_pending() {
                continue;
            }
            if restart || rx.is_done() {
                rx = ModemReceiver::waiting(mode, max, Instant::now());
                continue;
            }
            let deadline = rx.poll_timeout();
            let read = async {
                match deadline {
                    Some(t) => tokio::time::timeout_at(t.into(), port.read(&mut buf))
                        .await
                        .ok(),
                    None => Some(port.read(&mut buf).await),
                }
            };
            let got = tokio::select! {
                r = read => r,
                _ = stop.changed() => return "stopping".into(),
            };
            match got {
                None => rx.handle_timeout(Instant::now()),
                Some(Ok(0)) => return "end of stream".into(),
                Some(Ok(n)) => rx.handle_input(&buf[..n], Instant::now()),
                Some(Err(e)) => return format!("read failed: {e}"),
            }
        }
    }

    /// Stores one record or file; true once it is durable.
    /// Appends one record or file; the spool's proof once it is durable.
    /// Raw records on a serial line have no acknowledgement at all, so
    /// their callers only log a failure.
    async fn store(&self, data: Vec<u8>, name: Option<String>) -> Option<Committed> {
        let d = describe_bytes(&data, Profile::Ecg);
        let lane = if d.stat {
            Lane::Urgent
        } else {
            self.config.lane
        };
        let mut item = self.intake.item(lane, d.kind);
        item.metadata = d.metadata.clone();
        if let Some(n) = name {
            item.metadata.insert("filename".into(), n);
        }
        // A cart that sends the same record again (after an unplug, say)
        // sends the same bytes: store it once.
        item.dedup_key = Some(format!("serial:{}:{}", self.config.name, hex_sha256(&data)));
        let c = self.intake.spool_item(item, data).await.ok()?;
        if !c.is_duplicate() {
            self.intake.metrics.ecg(&self.config.name, lane, &d);
        }
        tracing::info!(device = %self.config.name, kind = %d.kind, stat = d.stat, upload = c.upload_id(), "ECG received");
        if let Some(q) = &d.quarantine {
            tracing::warn!(device = %self.config.name, upload = c.upload_id(), reason = %q.reason,
                "ECG quarantined: stored and sent to central marked for review, not to the reading system");
        }
        Some(c)
    }
}

/// XMODEM pads the last block with 0x1A. An SCP-ECG record's own length
/// says where it ends; for other files a trailing run of 0x1A shorter than
/// a block is padding.
fn trim_xmodem_padding(mut data: Vec<u8>) -> Vec<u8> {
    if let Ok(r) = read_scp(&data)
        && r.length <= data.len()
        && data[r.length..].iter().all(|&b| b == 0x1A)
    {
        data.truncate(r.length);
        return data;
    }
    let pad = data.iter().rev().take_while(|&&b| b == 0x1A).count();
    if pad > 0 && pad < 128 {
        data.truncate(data.len() - pad);
    }
    data
}

fn hex_sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xmodem_padding_is_trimmed() {
        let mut d = b"%PDF-1.4 ... %%EOF\n".to_vec();
        let n = d.len();
        d.resize(128, 0x1A);
        assert_eq!(trim_xmodem_padding(d).len(), n);
        let full = vec![0x1Au8; 256];
        assert_eq!(trim_xmodem_padding(full).len(), 256, "not padding: data");
    }
}
