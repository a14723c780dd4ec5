//! Storage Commitment (push model), SCP side.
//!
//! A modality asks, by N-ACTION, whether the gateway takes responsibility
//! for a list of instances. The request is written to disk (so a restart
//! does not forget it) and accepted at once. The answer, an N-EVENT-REPORT,
//! goes only when the answer is known for every instance: success once
//! central has COMMITTED it (the spool marks it delivered), failure when it
//! was never received (0x0112) or central rejected it for good (0x0110).
//! Modalities release their association after the N-ACTION, so the report
//! goes on a new association to the address configured for that AE, the
//! gateway in the SCP role; it is retried until the modality takes it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN;
use dicom_ul::ClientAssociationOptions;
use tokio::sync::watch;
use yilian_codecs::dicom::{Command, command};
use yilian_protocol::kind::keys;
use yilian_spool::Spool;

use crate::config::DicomSection;

pub const STORAGE_COMMITMENT: &str = "1.2.840.10008.1.20.1";
pub const STORAGE_COMMITMENT_INSTANCE: &str = "1.2.840.10008.1.20.1.1";

/// Failure reasons (0008,1197).
const NO_SUCH_INSTANCE: u16 = 0x0112;
const PROCESSING_FAILURE: u16 = 0x0110;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reference {
    pub sop_class: String,
    pub sop_instance: String,
}

/// One commitment request, as kept on disk until it is answered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Request {
    pub transaction_uid: String,
    pub calling_ae: String,
    pub references: Vec<Reference>,
    pub received_ms: i64,
}

fn text_of(o: &InMemDicomObject, tag: dicom_core::Tag) -> Option<String> {
    o.element_opt(tag).ok().flatten().and_then(|e| {
        e.to_str()
            .ok()
            .map(|s| s.trim_end_matches(['\0', ' ']).to_owned())
    })
}

/// Reads an N-ACTION data set (Transaction UID, Referenced SOP Sequence).
pub fn parse_action(
    data: &[u8],
    transfer_syntax: &str,
    calling_ae: &str,
) -> Result<Request, String> {
    let o = super::dimse::read_request_dataset(data, transfer_syntax)?;
    let transaction_uid = text_of(&o, tags::TRANSACTION_UID).ok_or("no Transaction UID")?;
    let items = o
        .element_opt(tags::REFERENCED_SOP_SEQUENCE)
        .ok()
        .flatten()
        .and_then(|e| e.items().map(<[InMemDicomObject]>::to_vec))
        .ok_or("no Referenced SOP Sequence")?;
    let references = items
        .iter()
        .filter_map(|i| {
            Some(Reference {
                sop_class: text_of(i, tags::REFERENCED_SOP_CLASS_UID)?,
                sop_instance: text_of(i, tags::REFERENCED_SOP_INSTANCE_UID)?,
            })
        })
        .collect();
    Ok(Request {
        transaction_uid,
        calling_ae: calling_ae.to_owned(),
        references,
        received_ms: crate::now_ms(),
    })
}

/// Where requests wait for their answer: one JSON file each, written
/// through a temporary name, fsynced and renamed.
#[derive(Debug, Clone)]
pub struct Ledger {
    dir: PathBuf,
    /// Tells the notifier a request was added (its instances may all be
    /// delivered already).
    saved: Arc<tokio::sync::Notify>,
}

impl Ledger {
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            saved: Arc::default(),
        })
    }

    fn path(&self, tx: &str) -> PathBuf {
        let safe: String = tx
            .chars()
            .map(|c| {
                if c.is_ascii_digit() || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join(format!("{safe}.json"))
    }

    pub fn save(&self, r: &Request) -> std::io::Result<()> {
        yilian_proof::disk::write_atomically(
            &self.path(&r.transaction_uid),
            &serde_json::to_vec(r).map_err(std::io::Error::other)?,
            0o600,
        )?;
        self.saved.notify_one();
        Ok(())
    }

    pub fn pending(&self) -> Vec<Request> {
        let mut v: Vec<Request> = fs::read_dir(&self.dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .filter_map(|e| fs::read(e.path()).ok())
                    .filter_map(|b| serde_json::from_slice(&b).ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by_key(|r| r.received_ms);
        v
    }

    pub fn done(&self, tx: &str) {
        let _ = fs::remove_file(self.path(tx));
        let _ = fs::File::open(&self.dir).and_then(|d| d.sync_all());
    }
}

/// The answer for a request: committed instances, and failed ones with
/// their failure reason.
struct Outcome {
    ok: Vec<Reference>,
    failed: Vec<(Reference, u16)>,
}

/// What became of each referenced instance; `None` while any is pending.
fn resolve(spool_dir: &Path, r: &Request) -> Option<Outcome> {
    let uids: Vec<String> = r
        .references
        .iter()
        .map(|x| x.sop_instance.clone())
        .collect();
    let items = Spool::inspect_by_metadata(spool_dir, keys::SOP_INSTANCE_UID, &uids).ok()?;
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for reference in &r.references {
        let states: Vec<&str> = items
            .iter()
            .filter(|i| i.metadata.get(keys::SOP_INSTANCE_UID) == Some(&reference.sop_instance))
            .map(|i| i.state)
            .collect();
        if states.contains(&"delivered") {
            ok.push(reference.clone());
        } else if states.is_empty() {
            failed.push((reference.clone(), NO_SUCH_INSTANCE));
        } else if states.iter().all(|s| *s == "dead") {
            failed.push((reference.clone(), PROCESSING_FAILURE));
        } else {
            return None;
        }
    }
    Some(Outcome { ok, failed })
}

fn event_dataset(tx: &str, ok: &[Reference], failed: &[(Reference, u16)]) -> InMemDicomObject {
    let item = |r: &Reference, reason: Option<u16>| {
        let mut i = InMemDicomObject::new_empty();
        i.put(DataElement::new(
            tags::REFERENCED_SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(r.sop_class.as_str()),
        ));
        i.put(DataElement::new(
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(r.sop_instance.as_str()),
        ));
        if let Some(f) = reason {
            i.put(DataElement::new(
                tags::FAILURE_REASON,
                VR::US,
                PrimitiveValue::from(f),
            ));
        }
        i
    };
    let mut o = InMemDicomObject::new_empty();
    o.put(DataElement::new(
        tags::TRANSACTION_UID,
        VR::UI,
        PrimitiveValue::from(tx),
    ));
    if !ok.is_empty() {
        o.put(DataElement::new(
            tags::REFERENCED_SOP_SEQUENCE,
            VR::SQ,
            dicom_core::value::DataSetSequence::from(
                ok.iter().map(|r| item(r, None)).collect::<Vec<_>>(),
            ),
        ));
    }
    if !failed.is_empty() {
        o.put(DataElement::new(
            tags::FAILED_SOP_SEQUENCE,
            VR::SQ,
            dicom_core::value::DataSetSequence::from(
                failed
                    .iter()
                    .map(|(r, f)| item(r, Some(*f)))
                    .collect::<Vec<_>>(),
            ),
        ));
    }
    o
}

/// Sends the reports of requests whose instances are all settled.
pub struct Notifier {
    pub config: DicomSection,
    pub ledger: Ledger,
    pub spool_dir: PathBuf,
    /// Bumped by the uplink when an item is delivered or set aside.
    pub settled: watch::Receiver<u64>,
}

/// How often pending requests are looked at with no word from the uplink
/// (items that leave the spool another way: evicted, removed by hand).
const UNPROMPTED: Duration = Duration::from_secs(60);

/// The wait before sending a report again to a modality that did not
/// take it: doubling from 2 s up to this.
const RETRY_MAX: Duration = Duration::from_secs(60);

impl Notifier {
    /// Looks at the pending requests at start (some may have waited
    /// through a restart), then whenever the uplink settles an item, a
    /// request is added, a retry is due, or every minute regardless.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let mut settled = this.settled.clone();
        // Per transaction: failed attempts, and when to try again.
        let mut failures: BTreeMap<String, (u32, tokio::time::Instant)> = BTreeMap::new();
        let mut first = true;
        let mut told = true;
        loop {
            let next_retry = failures.values().map(|(_, at)| *at).min();
            if !first {
                tokio::select! {
                    r = settled.changed(), if told => if r.is_err() {
                        // No uplink to tell us any more (the box is
                        // stopping): the timer alone from now on.
                        told = false;
                    },
                    _ = this.ledger.saved.notified() => {}
                    _ = tokio::time::sleep_until(next_retry.unwrap_or_else(|| tokio::time::Instant::now() + UNPROMPTED)) => {}
                    _ = stop.changed() => return,
                }
            }
            first = false;
            let me = this.clone();
            let ready = tokio::task::spawn_blocking(move || {
                me.ledger
                    .pending()
                    .into_iter()
                    .filter_map(|r| resolve(&me.spool_dir, &r).map(|o| (r, o)))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            let now = tokio::time::Instant::now();
            for (r, Outcome { ok, failed }) in ready {
                let (n, at) = failures
                    .get(&r.transaction_uid)
                    .copied()
                    .unwrap_or((0, now));
                if at > now {
                    // Back off while the modality is unreachable.
                    continue;
                }
                match this.report(&r, &ok, &failed).await {
                    Ok(()) => {
                        tracing::info!(device = %this.config.name, calling_ae = %r.calling_ae, transaction = %r.transaction_uid,
                            committed = ok.len(), failed = failed.len(), "storage commitment reported to the modality");
                        this.ledger.done(&r.transaction_uid);
                        failures.remove(&r.transaction_uid);
                    }
                    Err(e) => {
                        if n == 0 {
                            tracing::warn!(device = %this.config.name, calling_ae = %r.calling_ae, error = %e,
                                "cannot send a storage commitment result to the modality; retrying (check its address in [[dicom.allowed]])");
                        }
                        let wait =
                            (Duration::from_secs(2) * 2u32.saturating_pow(n.min(6))).min(RETRY_MAX);
                        failures.insert(r.transaction_uid.clone(), (n + 1, now + wait));
                    }
                }
            }
        }
    }

    async fn report(
        &self,
        r: &Request,
        ok: &[Reference],
        failed: &[(Reference, u16)],
    ) -> Result<(), String> {
        let address = self
            .config
            .allowed
            .iter()
            .find(|p| p.ae_title.trim() == r.calling_ae)
            .and_then(|p| p.address.clone())
            .ok_or_else(|| format!("no address configured for {}", r.calling_ae))?;
        let explicit = EXPLICIT_VR_LITTLE_ENDIAN.uid();
        let implicit = "1.2.840.10008.1.2";
        let assoc = ClientAssociationOptions::new()
            .calling_ae_title(self.config.ae_title.clone())
            .called_ae_title(r.calling_ae.clone())
            .with_presentation_context(
                STORAGE_COMMITMENT.to_owned(),
                vec![explicit.to_owned(), implicit.to_owned()],
            )
            // We send N-EVENT-REPORTs: the SCP role on this association.
            .with_role_selection(STORAGE_COMMITMENT, false, true)
            .connection_timeout(self.config.timeout)
            .read_timeout(self.config.timeout)
            .write_timeout(self.config.timeout)
            .establish_async(address.as_str())
            .await
            .map_err(|e| format!("association with {address}: {e}"))?;
        let Some((assoc, pc, ts)) = super::scu::accepted_context(assoc).await else {
            return Err("the modality did not accept storage commitment".into());
        };
        let ts = TransferSyntaxRegistry
            .get(&ts)
            .ok_or("unknown transfer syntax")?;
        let mut data = Vec::new();
        event_dataset(&r.transaction_uid, ok, failed)
            .write_dataset_with_ts(&mut data, ts)
            .map_err(|e| e.to_string())?;
        let rq = Command {
            field: command::N_EVENT_REPORT_RQ,
            affected_sop_class: STORAGE_COMMITMENT.into(),
            affected_sop_instance: STORAGE_COMMITMENT_INSTANCE.into(),
            message_id: 1,
            data_set_type: 0,
            event_type: Some(if failed.is_empty() { 1 } else { 2 }),
            ..Command::default()
        };
        let rsp = super::scu::request(assoc, pc, &rq, Some(data)).await?;
        match rsp.status {
            Some(0) => Ok(()),
            s => Err(format!("the modality answered status {s:?}")),
        }
    }
}
