//! Forwarding DICOM instances to the hospital PACS (C-STORE SCU), from
//! the durable outbox.
//!
//! Each instance goes in the transfer syntax it arrived in, its data set
//! bytes exactly as stored: the association proposes that one syntax, and
//! a PACS that will not take it parks the delivery with the reason rather
//! than having the hub transcode. One association is kept while instances
//! of the same SOP class and syntax follow each other (a CT series), and
//! re-opened once at once if the PACS dropped it while idle. Statuses:
//! success and warnings (0xB000, 0xB006, 0xB007) deliver; out of resources
//! (0xA7xx) and connection trouble retry with backoff; refusals (0xA9xx,
//! 0xCxxx, unknown) park for an operator.

use std::time::Duration;

use dicom_ul::ClientAssociationOptions;
use dicom_ul::Pdu;
use dicom_ul::association::AsyncClientAssociation;
use dicom_ul::pdu::{PDataValue, PDataValueType, PresentationContextResultReason};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpStream;
use yilian_codecs::dicom::{Command, MAX_COMMAND_SET, command, read_part10};

use crate::config::PacsSection;
use crate::outbox::{Destination, Verdict};
use crate::store::{OutboxRow, Store};

pub const DESTINATION: &str = "pacs";

/// Bytes read to find the end of the file meta group.
const HEADER_PROBE: usize = 64 * 1024;

struct Open {
    assoc: AsyncClientAssociation<TcpStream>,
    sop_class: String,
    transfer_syntax: String,
    context_id: u8,
}

pub struct PacsDelivery {
    config: PacsSection,
    store: Store,
    open: Option<Open>,
    message_id: u16,
}

enum Attempt {
    Done(Verdict),
    /// The cached association failed before an answer: try a fresh one.
    Stale(String),
}

impl PacsDelivery {
    pub fn new(config: PacsSection, store: Store) -> Self {
        Self {
            config,
            store,
            open: None,
            message_id: 0,
        }
    }

    async fn close(&mut self) {
        if let Some(o) = self.open.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), o.assoc.release()).await;
        }
    }

    async fn connect(&mut self, sop_class: &str, ts: &str) -> Result<(), Verdict> {
        self.close().await;
        let options = ClientAssociationOptions::new()
            .calling_ae_title(self.config.calling_ae_title.clone())
            .called_ae_title(self.config.ae_title.clone())
            .with_presentation_context(sop_class.to_owned(), vec![ts.to_owned()])
            .connection_timeout(self.config.timeout)
            .read_timeout(self.config.timeout)
            .write_timeout(self.config.timeout);
        let assoc = options
            .establish_async(self.config.address.as_str())
            .await
            .map_err(|e| {
                Verdict::Retry(format!(
                    "cannot open an association with the PACS at {}: {e}",
                    self.config.address
                ))
            })?;
        let Some(pc) = assoc
            .presentation_contexts()
            .iter()
            .find(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        else {
            let _ = assoc.release().await;
            return Err(Verdict::Park(format!(
                "the PACS does not accept SOP class {sop_class} in transfer syntax {ts}; forward it by hand or enable that syntax on the PACS"
            )));
        };
        let context_id = pc.id;
        self.open = Some(Open {
            assoc,
            sop_class: sop_class.to_owned(),
            transfer_syntax: ts.to_owned(),
            context_id,
        });
        Ok(())
    }

    async fn send(
        &mut self,
        row: &OutboxRow,
        path: &std::path::Path,
        offset: usize,
        rq: &Command,
    ) -> Attempt {
        let Some(open) = self.open.as_mut() else {
            return Attempt::Stale("no association".into());
        };
        let max_pdu = match open.assoc.acceptor_max_pdu_length() {
            0 => 64 * 1024,
            n => n.min(1024 * 1024),
        } as usize;
        let chunk = max_pdu.saturating_sub(6).max(1024);
        let pdu = Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: open.context_id,
                value_type: PDataValueType::Command,
                is_last: true,
                data: rq.encode(),
            }],
        };
        if let Err(e) = open.assoc.send(&pdu).await {
            return Attempt::Stale(e.to_string());
        }
        let mut file = match tokio::fs::File::open(path).await {
            Ok(f) => f,
            Err(e) => {
                return Attempt::Done(Verdict::Retry(format!(
                    "cannot read the stored instance: {e}"
                )));
            }
        };
        let size = match file.metadata().await {
            Ok(m) => m.len() as usize,
            Err(e) => return Attempt::Done(Verdict::Retry(e.to_string())),
        };
        if let Err(e) = file.seek(std::io::SeekFrom::Start(offset as u64)).await {
            return Attempt::Done(Verdict::Retry(e.to_string()));
        }
        let mut left = size.saturating_sub(offset);
        let mut buf = vec![0u8; chunk];
        loop {
            let n = left.min(chunk);
            if let Err(e) = file.read_exact(&mut buf[..n]).await {
                return Attempt::Done(Verdict::Retry(format!(
                    "cannot read the stored instance: {e}"
                )));
            }
            left -= n;
            let pdu = Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: open.context_id,
                    value_type: PDataValueType::Data,
                    is_last: left == 0,
                    data: buf[..n].to_vec(),
                }],
            };
            if let Err(e) = open.assoc.send(&pdu).await {
                self.open = None;
                return Attempt::Done(Verdict::Retry(format!(
                    "PACS connection lost while sending: {e}"
                )));
            }
            if left == 0 {
                break;
            }
        }
        // The answer: C-STORE-RSP, possibly in several command fragments.
        let mut answer = Vec::new();
        loop {
            match open.assoc.receive().await {
                Ok(Pdu::PData { data }) => {
                    let mut last = false;
                    for v in data {
                        if v.value_type == PDataValueType::Command {
                            if answer.len() + v.data.len() > MAX_COMMAND_SET {
                                self.open = None;
                                return Attempt::Done(Verdict::Retry(
                                    "the PACS sent an oversized answer".into(),
                                ));
                            }
                            answer.extend_from_slice(&v.data);
                            last |= v.is_last;
                        }
                    }
                    if last {
                        break;
                    }
                }
                Ok(Pdu::AbortRQ { source }) => {
                    self.open = None;
                    return Attempt::Done(Verdict::Retry(format!(
                        "the PACS aborted the association: {source:?}"
                    )));
                }
                Ok(other) => {
                    self.open = None;
                    return Attempt::Done(Verdict::Retry(format!(
                        "unexpected answer from the PACS: {}",
                        other.short_description()
                    )));
                }
                Err(e) => {
                    self.open = None;
                    return Attempt::Done(Verdict::Retry(format!("no answer from the PACS: {e}")));
                }
            }
        }
        let rsp = match Command::parse(&answer) {
            Ok(r) if r.field == command::C_STORE_RSP => r,
            Ok(r) => {
                return Attempt::Done(Verdict::Retry(format!(
                    "the PACS answered command {:#06x}",
                    r.field
                )));
            }
            Err(e) => {
                return Attempt::Done(Verdict::Retry(format!(
                    "unreadable answer from the PACS: {e}"
                )));
            }
        };
        let status = rsp.status.unwrap_or(0xFFFF);
        let comment = rsp.error_comment.unwrap_or_default();
        Attempt::Done(match status {
            0x0000 => {
                tracing::debug!(upload = %row.upload_id, "forwarded to the PACS");
                Verdict::Delivered
            }
            0xB000 | 0xB006 | 0xB007 => {
                tracing::info!(upload = %row.upload_id, status = format!("{status:#06x}"), comment = %comment,
                    "forwarded to the PACS with a warning");
                Verdict::Delivered
            }
            s if s & 0xFF00 == 0xA700 => {
                Verdict::Retry(format!("the PACS is out of resources ({s:#06x}) {comment}"))
            }
            s => {
                tracing::error!(upload = %row.upload_id, status = format!("{s:#06x}"), comment = %comment,
                    "the PACS refused an instance; parked for an operator");
                Verdict::Park(format!(
                    "the PACS refused it with status {s:#06x} {comment}"
                ))
            }
        })
    }
}

impl Destination for PacsDelivery {
    fn name(&self) -> &'static str {
        DESTINATION
    }

    async fn deliver(&mut self, row: &OutboxRow) -> Verdict {
        let store = self.store.clone();
        let sha = row.sha256.clone();
        // The stored file itself, or a copy fetched from the bucket (gone
        // again when `blob` drops at the end of this delivery).
        let blob = match tokio::task::spawn_blocking(move || store.local_blob(&sha)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return Verdict::Retry(format!("cannot fetch the stored instance: {e}")),
            Err(e) => return Verdict::Retry(format!("cannot fetch the stored instance: {e}")),
        };
        let path = blob.path();
        let head = match read_head(path).await {
            Ok(h) => h,
            Err(e) => return Verdict::Retry(format!("cannot read the stored instance: {e}")),
        };
        let meta = match read_part10(&head) {
            Ok(m) => m,
            Err(e) => {
                return Verdict::Park(format!(
                    "the stored item is not a readable Part 10 file: {e}"
                ));
            }
        };
        self.message_id = self.message_id.wrapping_add(1).max(1);
        let rq = Command {
            field: command::C_STORE_RQ,
            affected_sop_class: meta.sop_class.clone(),
            affected_sop_instance: meta.sop_instance.clone(),
            message_id: self.message_id,
            priority: 0,
            data_set_type: 0,
            ..Command::default()
        };
        for fresh in [false, true] {
            let reusable = self.open.as_ref().is_some_and(|o| {
                o.sop_class == meta.sop_class && o.transfer_syntax == meta.transfer_syntax
            });
            if (fresh || !reusable)
                && let Err(v) = self.connect(&meta.sop_class, &meta.transfer_syntax).await
            {
                return v;
            }
            match self.send(row, path, meta.dataset_offset, &rq).await {
                Attempt::Done(v) => return v,
                Attempt::Stale(why) if !fresh => {
                    tracing::debug!(reason = %why, "PACS association went stale; opening a new one");
                    self.open = None;
                }
                Attempt::Stale(why) => return Verdict::Retry(why),
            }
        }
        Verdict::Retry("no association".into())
    }
}

async fn read_head(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let mut f = tokio::fs::File::open(path).await?;
    let mut head = vec![0u8; HEADER_PROBE];
    let mut n = 0;
    while n < head.len() {
        let r = f.read(&mut head[n..]).await?;
        if r == 0 {
            break;
        }
        n += r;
    }
    head.truncate(n);
    Ok(head)
}
