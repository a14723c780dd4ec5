//! What every device adapter is to the rest of the box.
//!
//! A [`Source`] is one configured device: the box starts every source the
//! same way, in one loop, and counts it in the metrics from the start. An
//! [`Intake`] is that device's one way into the spool: append (or commit a
//! streamed payload), then the same tail for every family — count the item,
//! wake the uplink, log it, or count and log the refusal. The spool's
//! [`Committed`] proof it returns is what the adapter's success answer to
//! the device is built from.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{Notify, watch};
use yilian_protocol::ItemKind;
use yilian_spool::{Committed, Lane, NewItem, Spool, SpoolError, SpoolWriter};

use crate::metrics::GatewayMetrics;
use crate::worklist::WorklistCache;

/// The task serving one device until the box stops.
pub type Serving = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What [`Source::start`] returns: the serving task once everything the
/// box must have before it says "ready" (a bound port, an opened ledger)
/// is in place.
pub type Starting = Pin<Box<dyn Future<Output = anyhow::Result<Serving>> + Send>>;

/// One configured device.
pub trait Source: Send {
    /// The device's way into the spool, which also names it.
    fn intake(&self) -> &Intake;
    /// Binds what must be bound before the box is ready; an error names
    /// the device and what could not be done.
    fn start(self: Box<Self>, stop: watch::Receiver<bool>) -> Starting;
}

/// What the box hands every source.
#[derive(Clone, Debug)]
pub struct Shared {
    pub spool: Spool,
    pub metrics: GatewayMetrics,
    /// Wakes the uplink when there is something new to send.
    pub wake: Arc<Notify>,
    /// What modality worklist queries are answered from.
    pub worklist: WorklistCache,
    /// The spool's directory, for the state a source keeps beside it.
    pub spool_dir: std::path::PathBuf,
    /// Told when the uplink settles an item for good.
    pub settled: crate::settled::Settled,
    /// What each device did lately, for the box's page.
    pub board: crate::board::DeviceBoard,
    /// HL7 senders' open connections, for their application ACKs.
    pub open_senders: Arc<crate::intake::open_senders::OpenSenders>,
}

/// Why an item was not stored. The adapter answers its device with the
/// protocol's "not stored, send again" (AR, NAK, 0xA700, the file stays).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Spool(#[from] SpoolError),
    /// The store task itself failed (a panic in it, or the runtime
    /// stopping).
    #[error("store task failed: {0}")]
    Task(String),
}

impl Refusal {
    /// The metric label: why the spool refused.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Spool(e) => e.reason(),
            Refusal::Task(_) => "internal",
        }
    }
}

/// One device's way into the spool.
#[derive(Clone, Debug)]
pub struct Intake {
    family: &'static str,
    device: Arc<str>,
    /// What the device is told when the spool refuses, for the log line.
    on_refusal: &'static str,
    /// Families that log a summary per connection log each item at debug.
    per_item_info: bool,
    pub(crate) spool: Spool,
    pub(crate) metrics: GatewayMetrics,
    wake: Arc<Notify>,
    board: crate::board::DeviceBoard,
}

impl Intake {
    /// `on_refusal` finishes the sentence "the spool refused an item; …"
    /// with what the device hears, so an operator knows what happens next.
    pub fn new(
        family: &'static str,
        device: &str,
        on_refusal: &'static str,
        shared: &Shared,
    ) -> Self {
        Self {
            family,
            device: device.into(),
            on_refusal,
            per_item_info: true,
            spool: shared.spool.clone(),
            metrics: shared.metrics.clone(),
            wake: shared.wake.clone(),
            board: shared.board.clone(),
        }
    }

    /// Logs each stored item at debug level only (the family logs one
    /// line per connection instead).
    pub fn quiet(mut self) -> Self {
        self.per_item_info = false;
        self
    }

    /// The device's name from the configuration.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The adapter family, as the metrics label it (`hl7`, `astm`,
    /// `dicom`, `folder`, `serial`).
    pub fn family(&self) -> &'static str {
        self.family
    }

    /// The source label every item of this device carries (`hl7:lis`).
    pub fn source_label(&self) -> String {
        format!("{}:{}", self.family, self.device)
    }

    /// A new item from this device.
    pub fn item(&self, lane: Lane, kind: ItemKind) -> NewItem {
        NewItem::new(lane, kind, self.source_label())
    }

    /// Appends a whole payload. The proof once it is durable; otherwise
    /// the refusal, already counted and logged.
    pub async fn spool_item(&self, item: NewItem, data: Vec<u8>) -> Result<Committed, Refusal> {
        let spool = self.spool.clone();
        let (kind, lane) = (item.kind.clone(), item.lane);
        // A message or a result fits in the index: handed to its writer
        // thread straight from here, one thread hop fewer per message.
        if data.len() <= spool.config().inline_threshold {
            let r = match spool.append_small(item, data) {
                Ok(committing) => committing.await.map_err(Refusal::from),
                Err(e) => Err(Refusal::from(e)),
            };
            return self.settle(&kind, lane, r);
        }
        let r = tokio::task::spawn_blocking(move || spool.append(item, &data))
            .await
            .map_err(|e| Refusal::Task(e.to_string()))
            .and_then(|r| r.map_err(Refusal::from));
        self.settle(&kind, lane, r)
    }

    /// Commits a payload streamed into `writer` (fsync off the runtime).
    pub async fn commit(&self, writer: SpoolWriter) -> Result<Committed, Refusal> {
        let (kind, lane) = (writer.item().kind.clone(), writer.item().lane);
        let r = tokio::task::spawn_blocking(move || writer.commit())
            .await
            .map_err(|e| Refusal::Task(e.to_string()))
            .and_then(|r| r.map_err(Refusal::from));
        self.settle(&kind, lane, r)
    }

    /// [`Intake::commit`] for a caller already on a blocking thread.
    pub fn commit_blocking(&self, writer: SpoolWriter) -> Result<Committed, Refusal> {
        let (kind, lane) = (writer.item().kind.clone(), writer.item().lane);
        let r = writer.commit().map_err(Refusal::from);
        self.settle(&kind, lane, r)
    }

    /// Counts and logs a refusal that happened before the commit (opening
    /// a writer, writing to it).
    pub fn refused(&self, e: &Refusal) {
        self.metrics.refused(e.reason());
        if e.reason() == "busy" {
            // Two senders with the same item at once; nothing is wrong
            // with the box, so nothing for the technician's page.
            tracing::warn!(adapter = self.family, device = %self.device, error = %e,
                "the same item arrived twice at once; the second sender was asked to retry");
            return;
        }
        let key = match e.reason() {
            "disk_full" | "full" => "problem-spool-full",
            _ => "problem-spool-failing",
        };
        self.board
            .problem(self.family, &self.device, key, crate::now_ms());
        tracing::error!(adapter = self.family, device = %self.device, reason = e.reason(), error = %e,
            "the spool refused an item; {}", self.on_refusal);
    }

    /// The tail every family shares.
    fn settle(
        &self,
        kind: &str,
        lane: Lane,
        r: Result<Committed, Refusal>,
    ) -> Result<Committed, Refusal> {
        match &r {
            Ok(c) => {
                if !c.is_duplicate() {
                    self.metrics.accepted(self.family, &self.device, c.size());
                    self.board.item(self.family, &self.device, crate::now_ms());
                    self.wake.notify_one();
                }
                if self.per_item_info {
                    tracing::info!(adapter = self.family, device = %self.device, kind, %lane, size = c.size(),
                        duplicate = c.is_duplicate(), upload = c.upload_id(), "item spooled");
                } else {
                    tracing::debug!(adapter = self.family, device = %self.device, kind, %lane, size = c.size(),
                        duplicate = c.is_duplicate(), upload = c.upload_id(), "item spooled");
                }
            }
            Err(e) => self.refused(e),
        }
        r
    }
}
