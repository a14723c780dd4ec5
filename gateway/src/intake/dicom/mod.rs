//! The DICOM node modalities store to: C-ECHO and C-STORE SCP over
//! dicom-ul's async associations.
//!
//! Each instance streams from its P-DATA fragments into a spool writer
//! behind a Part 10 header (memory stays at one batch per association,
//! whatever the instance's size), and is answered Success only after the
//! spool commit; Out of Resources (0xA700) when the spool refuses, so the
//! modality keeps the image and retries; Cannot Understand (0xC000) when a
//! data set that arrived whole does not parse. Metadata for the upload and
//! the status views (patient, study/series/SOP UIDs, modality, dates) comes
//! from the first part of the data set, never from pixel data. A caller
//! not on a configured allow-list is rejected at association time with
//! "calling AE title not recognized".

pub mod commitment;
pub mod dimse;
pub mod echo;
pub mod find;
pub mod scu;
pub mod sop_classes;

use std::net::SocketAddr;
use std::sync::Arc;

use dicom_ul::Pdu;
use dicom_ul::association::server::{AccessControl, ServerAssociationOptions};
use dicom_ul::pdu::{AssociationRJServiceUserReason, PDataValue, PDataValueType, UserIdentity};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use yilian_spool::{Lane, SpoolWriter};

use crate::config::DicomSection;
use crate::content::{Description, Profile, describe_dicom_head};
use crate::governor::{AcceptErrors, Governor, Ticket};
use crate::intake::source::{Intake, Shared, Source, Starting};
use dimse::status;
use yilian_codecs::dicom::{self, Command, command};

/// Bytes of each data set kept to read its metadata from (headers sit well
/// within it; pixel data that follows is never looked at).
const METADATA_PREFIX: usize = 256 * 1024;
/// Data gathered before one hand-over to the blocking spool writer; small
/// enough that a typical image (0.5 MB) is mostly hashed and copied out
/// while the rest of it still arrives.
const WRITE_BATCH: usize = 256 * 1024;

/// A worklist query's identifier is a handful of keys: 64 KiB is far more
/// than any console sends, and keeps a 15 MiB patient name from costing
/// a hundred megabytes to parse.
const MAX_FIND_IDENTIFIER: usize = 64 * 1024;
/// A commitment request lists instances by UID (~130 bytes each): room for
/// tens of thousands.
const MAX_ACTION_DATA_SET: usize = 8 * 1024 * 1024;

/// A worklist query or storage commitment request whose data set is
/// arriving.
struct Action {
    request: Command,
    context_id: u8,
    transfer_syntax: String,
    data: Vec<u8>,
    /// Over its limit: the rest is read and dropped, and the answer is a
    /// failure status.
    too_large: bool,
}

impl Action {
    fn limit(&self) -> usize {
        if self.request.field == command::C_FIND_RQ {
            MAX_FIND_IDENTIFIER
        } else {
            MAX_ACTION_DATA_SET
        }
    }
}

/// A configured DICOM node, before it starts.
pub struct DicomNode {
    config: DicomSection,
    worklist: crate::worklist::WorklistCache,
    intake: Intake,
    spool_dir: std::path::PathBuf,
    settled: crate::settled::Settled,
}

/// A DICOM node that is serving.
struct DicomAdapter {
    config: DicomSection,
    /// Where storage commitment requests wait for their answer.
    ledger: commitment::Ledger,
    /// What modality worklist queries are answered from.
    worklist: crate::worklist::WorklistCache,
    intake: Intake,
    /// Keeps a misbehaving caller from flooding the log.
    warn_limit: crate::intake::warn_limit::WarnLimit,
}

impl DicomNode {
    pub fn new(config: DicomSection, shared: &Shared) -> Self {
        let intake = Intake::new(
            "dicom",
            &config.name,
            "answered 0xA700 so the modality keeps the instance and sends it again",
            shared,
        )
        .quiet();
        Self {
            config,
            worklist: shared.worklist.clone(),
            intake,
            spool_dir: shared.spool_dir.clone(),
            settled: shared.settled.clone(),
        }
    }
}

impl Source for DicomNode {
    fn intake(&self) -> &Intake {
        &self.intake
    }

    /// Opens the storage commitment ledger and binds the listener (both
    /// before readiness); serves associations and sends the commitment
    /// reports.
    fn start(self: Box<Self>, stop: watch::Receiver<bool>) -> Starting {
        Box::pin(async move {
            let dir = self.spool_dir.join("commitments").join(&self.config.name);
            let ledger = commitment::Ledger::open(&dir).map_err(|e| {
                anyhow::anyhow!(
                    "opening the storage commitment ledger in {}: {e}",
                    dir.display()
                )
            })?;
            let notifier = commitment::Notifier {
                config: self.config.clone(),
                ledger: ledger.clone(),
                spool_dir: self.spool_dir.clone(),
                settled: self.settled.watch(),
            };
            let listener = TcpListener::bind(self.config.listen).await.map_err(|e| {
                anyhow::anyhow!(
                    "binding the DICOM listener {:?} on {}: {e}",
                    self.config.name,
                    self.config.listen
                )
            })?;
            tracing::info!(device = %self.config.name, addr = %self.config.listen, ae_title = %self.config.ae_title,
                "DICOM listener bound");
            self.intake
                .metrics
                .device_up("dicom", &self.config.name, true);
            let adapter = DicomAdapter {
                config: self.config,
                ledger,
                worklist: self.worklist,
                intake: self.intake,
                warn_limit: Default::default(),
            };
            let serve = Arc::new(adapter).serve(listener, stop.clone());
            Ok(Box::pin(async move {
                tokio::join!(serve, notifier.run(stop));
            }) as _)
        })
    }
}

/// The allow-list check, run by dicom-ul before it accepts an association.
struct AllowList(Vec<String>);

impl AccessControl for AllowList {
    fn check_access(
        &self,
        _this_ae_title: &str,
        calling_ae_title: &str,
        _called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        let calling = calling_ae_title.trim();
        if self.0.is_empty() || self.0.iter().any(|a| a == calling) {
            Ok(())
        } else {
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        }
    }
}

/// Where an instance's bytes go. A refusal always carries its reason, so
/// the 0xA700 answer and its log line can never be left without one.
enum Sink {
    Writing(Box<SpoolWriter>),
    /// The spool refused: the rest of the data set is read and dropped, and
    /// the answer is 0xA700.
    Refused {
        /// The spool's reason label, for the refusal counter.
        reason: &'static str,
        /// What went wrong, for the operator.
        why: String,
    },
    /// A batch being written (and hashed) on a blocking thread while the
    /// next one arrives from the network.
    Pending(tokio::task::JoinHandle<BatchWritten>),
    /// Between two of the states above, for a moment; never seen by the
    /// commit.
    InFlight,
}

/// What a batch write gives back: the writer, the emptied buffer for reuse,
/// how the write went, and the instance's description when this batch was
/// its head.
type BatchWritten = (
    Box<SpoolWriter>,
    Vec<u8>,
    Result<(), yilian_spool::SpoolError>,
    Option<(Description, bool)>,
);

/// One instance being received.
struct Instance {
    request: Command,
    context_id: u8,
    /// Where the data set goes, or why it goes nowhere.
    sink: Sink,
    /// The bytes gathered for the next write; the first batch starts with
    /// the Part 10 header, so that it is also the head the metadata is read
    /// from (no copy of it kept aside).
    batch: Vec<u8>,
    /// The buffer of the batch being written, back for reuse.
    spare: Vec<u8>,
    /// What the head says, once the first batch went to the writer, and
    /// whether the head was the whole data set.
    described: Option<(Description, bool)>,
    received: u64,
}

/// The instance an association is receiving, if any, and the buffers its
/// instances reuse.
#[derive(Default)]
struct Storing {
    current: Option<Instance>,
    buffers: Buffers,
}

/// Batch buffers an association keeps between its instances, so that each
/// image does not allocate (and fault in) half a megabyte afresh.
#[derive(Default)]
struct Buffers(Vec<Vec<u8>>);

impl Buffers {
    fn take(&mut self) -> Vec<u8> {
        self.0
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(WRITE_BATCH))
    }

    fn give(&mut self, mut buffer: Vec<u8>) {
        // Two per association: the batch gathering and the one being written.
        if self.0.len() < 2 && buffer.capacity() <= 2 * WRITE_BATCH {
            buffer.clear();
            self.0.push(buffer);
        }
    }
}

impl DicomAdapter {
    async fn serve(self: Arc<Self>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
        // Modalities with a known address are never locked out by callers
        // the configuration does not name.
        let trusted: Vec<std::net::IpAddr> = self
            .config
            .allowed
            .iter()
            .filter_map(|p| p.address.as_deref())
            .filter_map(|a| a.parse::<SocketAddr>().ok())
            .map(|a| a.ip())
            .collect();
        let governor = Governor::new(
            &self.config.name,
            self.config.max_associations,
            self.config.max_associations_per_peer,
            trusted,
        );
        let mut accept_errors = AcceptErrors::new(&self.config.name);
        loop {
            let (socket, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => {
                        accept_errors.ok();
                        x
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
                    // The modality retries; a slot frees when an association ends.
                    if let Some(held) = self.warn_limit.admit(peer.ip()) {
                        tracing::warn!(device = %self.config.name, %peer, reason = %why, held_back = held,
                            "DICOM connection refused (raise max_associations if a modality meets this)");
                    }
                    continue;
                }
            };
            let me = self.clone();
            let mut stop = stop.clone();
            let counted = me.intake.metrics.connection("dicom", &me.config.name);
            tokio::spawn(async move {
                let _counted = counted;
                let kicked = ticket.kicked();
                tokio::select! {
                    _ = me.association(socket, peer, &ticket) => {}
                    _ = kicked => {
                        tracing::info!(device = %me.config.name, %peer, "idle association closed to make room for a modality");
                    }
                    _ = stop.changed() => {}
                }
            });
        }
    }

    fn options(
        &self,
    ) -> ServerAssociationOptions<
        'static,
        AllowList,
        dicom_ul::association::server::DefaultNegotiation,
    > {
        let allowed = self
            .config
            .allowed
            .iter()
            .map(|p| p.ae_title.trim().to_owned())
            .collect();
        let mut o = ServerAssociationOptions::new()
            .ae_access_control(AllowList(allowed))
            .ae_title(self.config.ae_title.clone())
            .max_pdu_length(self.config.max_pdu)
            // A PDU is held whole in memory until it has arrived: only the
            // negotiated maximum bounds that (a peer declaring a 1 GiB PDU
            // would otherwise get 1 GiB). A modality sending over what it
            // negotiated is refused with a log line saying to raise max_pdu.
            .strict(true)
            .read_timeout(self.config.timeout)
            .write_timeout(self.config.timeout)
            .with_abstract_syntax(sop_classes::VERIFICATION)
            .with_abstract_syntax(commitment::STORAGE_COMMITMENT)
            .with_abstract_syntax(find::MWL_FIND);
        for uid in sop_classes::STORAGE {
            o = o.with_abstract_syntax(*uid);
        }
        o
    }

    fn lane_for(&self, calling: &str) -> Lane {
        self.config
            .allowed
            .iter()
            .find(|p| p.ae_title.trim() == calling)
            .and_then(|p| p.lane)
            .unwrap_or(self.config.lane)
    }

    async fn association(&self, socket: TcpStream, peer: SocketAddr, ticket: &Ticket) {
        let _ = socket.set_nodelay(true);
        let mut assoc = match self.options().establish_async(socket).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(device = %self.config.name, %peer, error = %e,
                    "DICOM association refused (an unknown calling AE title is refused when an allow-list is set)");
                return;
            }
        };
        let calling = dicom_ul::association::Association::peer_ae_title(&assoc)
            .trim()
            .to_owned();
        tracing::info!(device = %self.config.name, %peer, calling_ae = %calling, "DICOM association accepted");
        let mut command: Vec<u8> = Vec::new();
        let mut storing = Storing::default();
        let mut action: Option<Action> = None;
        let mut stored = 0u64;
        loop {
            let pdu = match assoc.receive().await {
                Ok(p) => {
                    ticket.touch();
                    p
                }
                Err(e) => {
                    if e.to_string().contains("too large")
                        || format!("{e:?}").contains("PduTooLarge")
                    {
                        tracing::warn!(device = %self.config.name, calling_ae = %calling, error = %e, max_pdu = self.config.max_pdu,
                            "the modality sent a PDU larger than it negotiated; association ended. If this modality does it always, raise max_pdu in its [[dicom]] section");
                        return;
                    }
                    if storing.current.is_some() {
                        tracing::warn!(device = %self.config.name, calling_ae = %calling, error = %e,
                            "association lost mid-instance; that instance was not acknowledged and the modality will resend it");
                    } else {
                        tracing::info!(device = %self.config.name, calling_ae = %calling, error = %e, "association ended");
                    }
                    return;
                }
            };
            match pdu {
                Pdu::PData { data } => {
                    for value in data {
                        let mut extra: Vec<PDataValue> = Vec::new();
                        let reply = match value.value_type {
                            PDataValueType::Command => {
                                if command.len() + value.data.len() > dicom::MAX_COMMAND_SET {
                                    tracing::warn!(device = %self.config.name, calling_ae = %calling,
                                        "DIMSE command set over 64 KiB; association aborted");
                                    let _ = assoc.abort().await;
                                    return;
                                }
                                command.extend_from_slice(&value.data);
                                if !value.is_last {
                                    continue;
                                }
                                let bytes = std::mem::take(&mut command);
                                self.on_command(
                                    &bytes,
                                    value.presentation_context_id,
                                    &mut storing,
                                    &mut action,
                                    &assoc,
                                    &calling,
                                )
                            }
                            PDataValueType::Data if action.is_some() => {
                                let Some(a) = action.as_mut() else { continue };
                                if !a.too_large && a.data.len() + value.data.len() > a.limit() {
                                    if let Some(held) = self.warn_limit.admit(peer.ip()) {
                                        tracing::warn!(device = %self.config.name, calling_ae = %calling,
                                            limit_bytes = a.limit(), held_back = held,
                                            "DIMSE request data set over its limit; refused with a failure status");
                                    }
                                    a.too_large = true;
                                    a.data = Vec::new();
                                }
                                if !a.too_large {
                                    a.data.extend_from_slice(&value.data);
                                }
                                if !value.is_last {
                                    continue;
                                }
                                let Some(a) = action.take() else { continue };
                                if a.too_large {
                                    let (status, comment) = if a.request.field == command::C_FIND_RQ
                                    {
                                        (0xC000, "query identifier larger than 64 KiB")
                                    } else {
                                        (0x0110, "request data set larger than 8 MiB")
                                    };
                                    Some((
                                        a.context_id,
                                        a.request.response(status, Some(comment)).encode(),
                                    ))
                                } else if a.request.field == command::C_FIND_RQ {
                                    extra = self.on_find(a, &calling);
                                    None
                                } else {
                                    Some(self.on_action(a, &calling).await)
                                }
                            }
                            PDataValueType::Data => {
                                let Some(inst) = storing.current.as_mut() else {
                                    tracing::warn!(device = %self.config.name, calling_ae = %calling,
                                        "data without a C-STORE request; ignored");
                                    continue;
                                };
                                self.on_data(inst, value.data).await;
                                if !value.is_last {
                                    continue;
                                }
                                let Some(inst) = storing.current.take() else {
                                    continue;
                                };
                                let (reply, ok) =
                                    self.finish(inst, &calling, &mut storing.buffers).await;
                                stored += u64::from(ok);
                                Some(reply)
                            }
                        };
                        if let Some((context_id, bytes)) = reply {
                            extra.push(PDataValue {
                                presentation_context_id: context_id,
                                value_type: PDataValueType::Command,
                                is_last: true,
                                data: bytes,
                            });
                        }
                        for v in extra {
                            if let Err(e) = assoc.send(&Pdu::PData { data: vec![v] }).await {
                                tracing::warn!(device = %self.config.name, calling_ae = %calling, error = %e,
                                    "cannot answer the modality; it will resend what it has no answer for");
                                return;
                            }
                        }
                    }
                }
                Pdu::ReleaseRQ => {
                    let _ = assoc.send(&Pdu::ReleaseRP).await;
                    tracing::info!(device = %self.config.name, calling_ae = %calling, stored, "association released");
                    return;
                }
                Pdu::AbortRQ { source } => {
                    tracing::warn!(device = %self.config.name, calling_ae = %calling, ?source,
                        "association aborted by the modality; an instance in progress was not acknowledged");
                    return;
                }
                other => {
                    tracing::debug!(device = %self.config.name, pdu = %other.short_description(), "unexpected PDU ignored");
                }
            }
        }
    }

    /// Handles a complete command set; returns an immediate reply, if any.
    fn on_command(
        &self,
        bytes: &[u8],
        context_id: u8,
        storing: &mut Storing,
        action: &mut Option<Action>,
        assoc: &dicom_ul::association::AsyncServerAssociation<TcpStream>,
        calling: &str,
    ) -> Option<(u8, Vec<u8>)> {
        let transfer_syntax = |id: u8| {
            assoc
                .presentation_contexts()
                .iter()
                .find(|pc| pc.id == id)
                .map(|pc| pc.transfer_syntax.trim_end_matches('\0').to_owned())
                .unwrap_or_default()
        };
        let request = match Command::parse(bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(device = %self.config.name, calling_ae = %calling, error = %e, "unreadable DIMSE command ignored");
                return None;
            }
        };
        match request.field {
            command::C_ECHO_RQ => {
                Some((context_id, request.response(status::SUCCESS, None).encode()))
            }
            command::C_STORE_RQ => {
                let ts = transfer_syntax(context_id);
                storing.current =
                    Some(self.begin(request, context_id, &ts, calling, &mut storing.buffers));
                None
            }
            // Matches are all sent at once; a cancel arriving after them has
            // nothing left to stop and gets no answer.
            command::C_CANCEL_RQ => None,
            command::C_FIND_RQ
                if request.affected_sop_class == find::MWL_FIND && request.has_dataset() =>
            {
                *action = Some(Action {
                    transfer_syntax: transfer_syntax(context_id),
                    request,
                    context_id,
                    data: Vec::new(),
                    too_large: false,
                });
                None
            }
            command::N_ACTION_RQ
                if request.requested_sop_class == commitment::STORAGE_COMMITMENT
                    && request.has_dataset() =>
            {
                *action = Some(Action {
                    transfer_syntax: transfer_syntax(context_id),
                    request,
                    context_id,
                    data: Vec::new(),
                    too_large: false,
                });
                None
            }
            other => {
                tracing::info!(device = %self.config.name, calling_ae = %calling, command = format!("{other:#06x}"), sop_class = %request.affected_sop_class, data_set_type = request.data_set_type,
                    "DIMSE operation not offered here");
                (!request.has_dataset()).then(|| {
                    let rsp = request.response(
                        status::UNRECOGNIZED_OPERATION,
                        Some("operation not supported by this node"),
                    );
                    (context_id, rsp.encode())
                })
            }
        }
    }

    /// A worklist query: one pending response with a data set per match,
    /// then the final one.
    fn on_find(&self, a: Action, calling: &str) -> Vec<PDataValue> {
        let pdv = |kind, data| PDataValue {
            presentation_context_id: a.context_id,
            value_type: kind,
            is_last: true,
            data,
        };
        let query = match find::parse_query(&a.data, &a.transfer_syntax) {
            Ok(q) => q,
            Err(e) => {
                tracing::warn!(device = %self.config.name, calling_ae = %calling, error = %e, "unreadable worklist query");
                let rsp = a
                    .request
                    .response(0xC000, Some("identifier does not parse"));
                return vec![pdv(PDataValueType::Command, rsp.encode())];
            }
        };
        let entries = self.worklist.entries();
        let mut out = Vec::new();
        let mut matched = 0;
        for e in entries.iter().filter(|e| query.matches(e)) {
            match find::response_dataset(e, &a.transfer_syntax) {
                Ok(data) => {
                    let mut rsp = a.request.response(0xFF00, None);
                    rsp.data_set_type = 0;
                    out.push(pdv(PDataValueType::Command, rsp.encode()));
                    out.push(pdv(PDataValueType::Data, data));
                    matched += 1;
                }
                Err(e) => {
                    tracing::warn!(device = %self.config.name, error = %e, "cannot encode a worklist entry")
                }
            }
        }
        tracing::info!(device = %self.config.name, calling_ae = %calling, matched, of = entries.len(),
            worklist = %self.worklist.version(), "worklist query answered");
        out.push(pdv(
            PDataValueType::Command,
            a.request.response(status::SUCCESS, None).encode(),
        ));
        out
    }

    /// A complete storage commitment request: kept on disk, then accepted.
    async fn on_action(&self, a: Action, calling: &str) -> (u8, Vec<u8>) {
        let parsed = commitment::parse_action(&a.data, &a.transfer_syntax, calling);
        let status = match parsed {
            Err(e) => {
                tracing::warn!(device = %self.config.name, calling_ae = %calling, error = %e,
                    "unreadable storage commitment request refused");
                0x0110
            }
            Ok(r) => {
                let ledger = self.ledger.clone();
                let (tx, n) = (r.transaction_uid.clone(), r.references.len());
                match tokio::task::spawn_blocking(move || ledger.save(&r)).await {
                    Ok(Ok(())) => {
                        tracing::info!(device = %self.config.name, calling_ae = %calling, transaction = %tx, instances = n,
                            "storage commitment requested; the result follows once central has the instances");
                        status::SUCCESS
                    }
                    _ => {
                        tracing::error!(device = %self.config.name, calling_ae = %calling,
                            "cannot record a storage commitment request; refused");
                        0x0110
                    }
                }
            }
        };
        (a.context_id, a.request.response(status, None).encode())
    }

    fn begin(
        &self,
        request: Command,
        context_id: u8,
        ts: &str,
        calling: &str,
        buffers: &mut Buffers,
    ) -> Instance {
        let mut item = self
            .intake
            .item(self.lane_for(calling), yilian_protocol::ItemKind::Dicom);
        item.metadata
            .insert("calling_ae".into(), calling.to_owned());
        let mut batch = buffers.take();
        let sink = match dimse::part10_header(
            &request.affected_sop_class,
            &request.affected_sop_instance,
            ts,
            calling,
        ) {
            Err(e) => {
                // Only a command without the UIDs gets here.
                Sink::Refused {
                    reason: "io",
                    why: format!("cannot build the Part 10 header: {e}"),
                }
            }
            Ok(header) => match self.intake.spool.writer(item) {
                Ok(w) => {
                    batch.extend_from_slice(&header);
                    Sink::Writing(Box::new(w))
                }
                Err(e) => Sink::Refused {
                    reason: e.reason(),
                    why: e.to_string(),
                },
            },
        };
        Instance {
            request,
            context_id,
            sink,
            batch,
            spare: buffers.take(),
            described: None,
            received: 0,
        }
    }

    async fn on_data(&self, inst: &mut Instance, data: Vec<u8>) {
        inst.received += data.len() as u64;
        if matches!(inst.sink, Sink::Refused { .. }) {
            return;
        }
        inst.batch.extend_from_slice(&data);
        if inst.batch.len() >= WRITE_BATCH {
            self.flush(inst, false).await;
        }
    }

    /// Hands the gathered bytes to the spool writer on a blocking thread and
    /// returns without waiting, so the next batch is received while this
    /// one is written and hashed; at most one batch is in the writer's
    /// hands at a time (memory per instance stays two batches). The first
    /// batch is also the instance's head: the same thread reads its
    /// metadata, off the path to the answer unless the data set is that
    /// short. `last` when the data set is complete.
    async fn flush(&self, inst: &mut Instance, last: bool) {
        self.settle(inst).await;
        let head = inst.described.is_none();
        // Nothing gathered (the data set ended exactly on a batch boundary):
        // the writer stays where it is.
        if inst.batch.is_empty() && !head {
            return;
        }
        let w = match std::mem::replace(&mut inst.sink, Sink::InFlight) {
            Sink::Writing(w) => w,
            other => {
                inst.sink = other;
                return;
            }
        };
        let batch = std::mem::replace(&mut inst.batch, std::mem::take(&mut inst.spare));
        // A head that ends before the prefix does is the whole data set, so
        // an element running past its end is malformed, not cut.
        let whole = last && batch.len() <= METADATA_PREFIX;
        inst.sink = Sink::Pending(tokio::task::spawn_blocking(move || {
            let described = head.then(|| {
                let head = &batch[..batch.len().min(METADATA_PREFIX)];
                (describe_dicom_head(head, whole, Profile::Files), whole)
            });
            let mut w = w;
            let r = w.write_bytes(&batch);
            (w, batch, r, described)
        }));
    }

    /// Waits for the batch being written, if any.
    async fn settle(&self, inst: &mut Instance) {
        let handle = match std::mem::replace(&mut inst.sink, Sink::InFlight) {
            Sink::Pending(handle) => handle,
            other => {
                inst.sink = other;
                return;
            }
        };
        match handle.await {
            Ok((w, mut batch, Ok(()), described)) => {
                batch.clear();
                inst.spare = batch;
                inst.described = inst.described.take().or(described);
                inst.sink = Sink::Writing(w);
            }
            Ok((_, _, Err(e), _)) => {
                inst.sink = Sink::Refused {
                    reason: e.reason(),
                    why: e.to_string(),
                }
            }
            Err(e) => {
                inst.sink = Sink::Refused {
                    reason: "io",
                    why: format!("the spool's write task failed: {e}"),
                }
            }
        }
    }

    /// The data set is complete: commit and answer.
    async fn finish(
        &self,
        mut inst: Instance,
        calling: &str,
        buffers: &mut Buffers,
    ) -> ((u8, Vec<u8>), bool) {
        self.flush(&mut inst, true).await;
        self.settle(&mut inst).await;
        buffers.give(std::mem::take(&mut inst.batch));
        buffers.give(std::mem::take(&mut inst.spare));
        let writer = match std::mem::replace(&mut inst.sink, Sink::InFlight) {
            Sink::Writing(w) => *w,
            Sink::Refused { reason, why } => {
                self.intake.metrics.refused(reason);
                tracing::error!(device = %self.config.name, calling_ae = %calling,
                    sop_instance = %inst.request.affected_sop_instance, reason, error = %why,
                    "spool refused a DICOM instance; answered 0xA700 so the modality keeps it and retries");
                let rsp = inst.request.response(
                    status::OUT_OF_RESOURCES,
                    Some("gateway storage full or failing"),
                );
                return ((inst.context_id, rsp.encode()), false);
            }
            Sink::InFlight | Sink::Pending(_) => {
                // Unreachable by construction (every hand-over puts the
                // writer or a refusal back), but if it ever happens the
                // modality must hear "retry", and the log must say why.
                self.intake.metrics.refused("io");
                tracing::error!(device = %self.config.name, calling_ae = %calling,
                    sop_instance = %inst.request.affected_sop_instance,
                    "the spool writer of a DICOM instance was lost between two writes (a bug: please report it); answered 0xA700");
                let rsp = inst
                    .request
                    .response(status::OUT_OF_RESOURCES, Some("gateway storage failing"));
                return ((inst.context_id, rsp.encode()), false);
            }
        };
        let r = &inst.request;
        let answer = |status: u16, comment: Option<&str>| {
            (inst.context_id, r.response(status, comment).encode())
        };
        if inst.received == 0 {
            // Nothing to store: a console bug, never an image. Dropping the
            // writer discards the Part 10 header already written.
            drop(writer);
            tracing::warn!(device = %self.config.name, calling_ae = %calling, sop_instance = %r.affected_sop_instance,
                "C-STORE with an empty data set refused with 0xC000");
            return (
                answer(status::CANNOT_UNDERSTAND, Some("empty data set")),
                false,
            );
        }
        let Some((d, whole)) = inst.described.take() else {
            // Every first hand-over describes the head; as above.
            self.intake.metrics.refused("io");
            tracing::error!(device = %self.config.name, calling_ae = %calling, sop_instance = %r.affected_sop_instance,
                "a DICOM instance's head was not read (a bug: please report it); answered 0xA700");
            return (
                answer(status::OUT_OF_RESOURCES, Some("gateway storage failing")),
                false,
            );
        };
        let mut writer = writer;
        // Whole data sets that do not parse are refused; a prefix that does
        // not parse is only noted (the rest may be fine).
        if whole && d.metadata.contains_key("parse_error") {
            tracing::warn!(device = %self.config.name, calling_ae = %calling, sop_instance = %r.affected_sop_instance,
                error = d.metadata.get("parse_error").map(String::as_str).unwrap_or(""),
                "malformed DICOM data set refused with 0xC000; the modality keeps it");
            return (
                answer(status::CANNOT_UNDERSTAND, Some("data set does not parse")),
                false,
            );
        }
        let item = writer.item_mut();
        item.metadata.extend(d.metadata.clone());
        item.metadata
            .entry("sop_class".into())
            .or_insert_with(|| r.affected_sop_class.clone());
        item.metadata
            .entry(yilian_protocol::kind::keys::SOP_INSTANCE_UID.into())
            .or_insert_with(|| r.affected_sop_instance.clone());
        if d.stat {
            item.lane = Lane::Urgent;
        }
        let lane = item.lane;
        // A modality resending after a lost response sends the same bytes
        // under the same UID: stored once.
        let sha = hex::encode(writer.sha256_so_far());
        writer.item_mut().dedup_key = Some(format!(
            "dicom:{}:{}:{sha}",
            self.config.name, r.affected_sop_instance
        ));
        match self.intake.commit(writer).await {
            Ok(c) => {
                if !c.is_duplicate() {
                    self.intake.metrics.ecg(&self.config.name, lane, &d);
                }
                ((inst.context_id, r.stored_response(&c).encode()), true)
            }
            // Counted and logged by the intake.
            Err(e) => {
                let why = if e.reason() == "busy" {
                    "the same image is being stored from another association; retry"
                } else {
                    "gateway storage full or failing"
                };
                (answer(status::OUT_OF_RESOURCES, Some(why)), false)
            }
        }
    }
}
