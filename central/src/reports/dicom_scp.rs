//! Reports from the hospital PACS over DICOM: a C-STORE SCP for
//! Structured Reports and Encapsulated PDF (and C-ECHO). Each instance is
//! read into the ORU central keeps (`yilian_codecs::dicom_report`) and
//! taken like a report over MLLP: Success only with the store's proof of
//! the commit; Out of Resources (0xA700) when the store cannot take it, so
//! the PACS sends it again; Cannot Understand (0xC000) with the reason when
//! it is not a report we can read (no patient ID, no text, not a PDF).
//!
//! Reports are small (an SR is kilobytes, a PDF a few megabytes): each is
//! gathered in memory up to [`MAX_INSTANCE`]. Associations are bounded
//! ([`MAX_ASSOCIATIONS`]), PDUs are held to the negotiated maximum, and a
//! silent peer is dropped after the timeout, so a misbehaving sender costs
//! a bounded amount and never holds the PACS out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dicom_ul::Pdu;
use dicom_ul::association::server::{AccessControl, ServerAssociationOptions};
use dicom_ul::pdu::{AssociationRJServiceUserReason, PDataValue, PDataValueType, UserIdentity};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use yilian_codecs::dicom::{Command, MAX_COMMAND_SET, command};
use yilian_codecs::dicom_report::{REPORT_SOP_CLASSES, read_dataset, read_report};
use yilian_codecs::hl7::Message;
use yilian_codecs::hl7::report::read_report as read_hl7_report;

use super::listener::ReportIntake;

/// A report larger than this is not a report.
pub const MAX_INSTANCE: usize = 64 * 1024 * 1024;
/// Associations served at once; more wait in the kernel's backlog.
pub const MAX_ASSOCIATIONS: usize = 16;
const VERIFICATION: &str = "1.2.840.10008.1.1";
const MAX_PDU: u32 = 64 * 1024;
/// Every report that arrives by DICOM is one source: the same instance
/// sent again, from any AE title or through the import folder, is one
/// report.
pub const SOURCE: &str = "DICOM^PACS";

mod status {
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
    pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
    pub const SUCCESS: u16 = 0x0000;
}

/// The DICOM listener's settings.
#[derive(Debug, Clone)]
pub struct ScpSettings {
    pub listen: SocketAddr,
    pub ae_title: String,
    /// Calling AE titles accepted; empty accepts any.
    pub allowed: Vec<String>,
    pub timeout: Duration,
}

pub struct ReportScp {
    settings: ScpSettings,
    intake: ReportIntake,
    /// A flood of refused associations is logged once per ten seconds,
    /// with how many were held back.
    refused_log: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

struct AllowList(Vec<String>);

impl AccessControl for AllowList {
    fn check_access(
        &self,
        _this: &str,
        calling: &str,
        _called: &str,
        _identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        let calling = calling.trim();
        if self.0.is_empty() || self.0.iter().any(|a| a == calling) {
            Ok(())
        } else {
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        }
    }
}

/// An instance being received.
struct Instance {
    request: Command,
    context_id: u8,
    transfer_syntax: String,
    data: Vec<u8>,
    too_large: bool,
}

/// What one received instance came to.
enum Outcome {
    Stored(Box<crate::store::Stored<crate::store::ReportRow>>),
    Unreadable(String),
    NotStored(String),
}

impl ReportScp {
    pub fn new(settings: ScpSettings, intake: ReportIntake) -> Self {
        Self {
            settings,
            intake,
            refused_log: std::sync::Mutex::new((None, 0)),
        }
    }

    /// Binds the listener (before readiness); the future serves until
    /// `stop`.
    pub async fn bind(
        self,
        stop: watch::Receiver<bool>,
    ) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
        let listener = TcpListener::bind(self.settings.listen).await?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, ae_title = %self.settings.ae_title, "listening for DICOM reports from the PACS");
        Ok((addr, Arc::new(self).serve(listener, stop)))
    }

    async fn serve(self: Arc<Self>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(MAX_ASSOCIATIONS));
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                _ = stop.changed() => return,
            };
            let (socket, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of descriptors: wait rather than spin.
                        tracing::warn!(error = %e, "cannot accept a DICOM connection");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                },
                _ = stop.changed() => return,
            };
            let me = self.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let _permit = permit;
                tokio::select! {
                    _ = me.association(socket, peer) => {}
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
        let mut o = ServerAssociationOptions::new()
            .ae_access_control(AllowList(
                self.settings
                    .allowed
                    .iter()
                    .map(|a| a.trim().to_owned())
                    .collect(),
            ))
            .ae_title(self.settings.ae_title.clone())
            .max_pdu_length(MAX_PDU)
            .strict(true)
            .read_timeout(self.settings.timeout)
            .write_timeout(self.settings.timeout)
            .with_abstract_syntax(VERIFICATION);
        for uid in REPORT_SOP_CLASSES {
            o = o.with_abstract_syntax(*uid);
        }
        o
    }

    async fn association(&self, socket: TcpStream, peer: SocketAddr) {
        let _ = socket.set_nodelay(true);
        let mut assoc = match self.options().establish_async(socket).await {
            Ok(a) => a,
            Err(e) => {
                let held_back = {
                    let mut l = self.refused_log.lock().unwrap_or_else(|p| p.into_inner());
                    let now = std::time::Instant::now();
                    if l.0
                        .is_some_and(|t| now.duration_since(t) < Duration::from_secs(10))
                    {
                        l.1 += 1;
                        None
                    } else {
                        let held = l.1;
                        *l = (Some(now), 0);
                        Some(held)
                    }
                };
                if let Some(held_back) = held_back {
                    tracing::warn!(%peer, error = %e, held_back,
                        "DICOM association refused (a calling AE title not in [reports] dicom_allowed is refused)");
                }
                return;
            }
        };
        let calling = dicom_ul::association::Association::peer_ae_title(&assoc)
            .trim()
            .to_owned();
        tracing::info!(%peer, calling_ae = %calling, "DICOM association from the PACS accepted");
        let mut command_bytes: Vec<u8> = Vec::new();
        let mut current: Option<Instance> = None;
        loop {
            let pdu = match assoc.receive().await {
                Ok(p) => p,
                Err(e) => {
                    if current.is_some() {
                        tracing::warn!(calling_ae = %calling, error = %e,
                            "association lost mid-report; it was not acknowledged and the PACS sends it again");
                    }
                    return;
                }
            };
            let values = match pdu {
                Pdu::PData { data } => data,
                Pdu::ReleaseRQ => {
                    let _ = assoc.send(&Pdu::ReleaseRP).await;
                    return;
                }
                Pdu::AbortRQ { .. } => return,
                _ => continue,
            };
            for value in values {
                let reply = match value.value_type {
                    PDataValueType::Command => {
                        if command_bytes.len() + value.data.len() > MAX_COMMAND_SET {
                            tracing::warn!(calling_ae = %calling, "DIMSE command set over 64 KiB; association aborted");
                            let _ = assoc.abort().await;
                            return;
                        }
                        command_bytes.extend_from_slice(&value.data);
                        if !value.is_last {
                            continue;
                        }
                        let bytes = std::mem::take(&mut command_bytes);
                        let request = match Command::parse(&bytes) {
                            Ok(r) => r,
                            Err(e) => {
                                tracing::warn!(calling_ae = %calling, error = %e, "unreadable DIMSE command ignored");
                                continue;
                            }
                        };
                        let id = value.presentation_context_id;
                        match request.field {
                            command::C_ECHO_RQ => {
                                Some((id, request.response(status::SUCCESS, None)))
                            }
                            command::C_STORE_RQ => {
                                let transfer_syntax = assoc
                                    .presentation_contexts()
                                    .iter()
                                    .find(|pc| pc.id == id)
                                    .map(|pc| pc.transfer_syntax.trim_end_matches('\0').to_owned())
                                    .unwrap_or_default();
                                current = Some(Instance {
                                    request,
                                    context_id: id,
                                    transfer_syntax,
                                    data: Vec::new(),
                                    too_large: false,
                                });
                                None
                            }
                            _ => (!request.has_dataset()).then(|| {
                                (
                                    id,
                                    request.response(
                                        status::UNRECOGNIZED_OPERATION,
                                        Some("this node only stores reports"),
                                    ),
                                )
                            }),
                        }
                    }
                    PDataValueType::Data => {
                        let Some(inst) = current.as_mut() else {
                            continue;
                        };
                        if !inst.too_large && inst.data.len() + value.data.len() > MAX_INSTANCE {
                            inst.too_large = true;
                            inst.data = Vec::new();
                        }
                        if !inst.too_large {
                            inst.data.extend_from_slice(&value.data);
                        }
                        if !value.is_last {
                            continue;
                        }
                        let Some(inst) = current.take() else { continue };
                        Some(self.finish(inst, &calling).await)
                    }
                };
                if let Some((context_id, rsp)) = reply {
                    let pdv = PDataValue {
                        presentation_context_id: context_id,
                        value_type: PDataValueType::Command,
                        is_last: true,
                        data: rsp.encode(),
                    };
                    if let Err(e) = assoc.send(&Pdu::PData { data: vec![pdv] }).await {
                        tracing::warn!(calling_ae = %calling, error = %e,
                            "cannot answer the PACS; it sends again what it has no answer for");
                        return;
                    }
                }
            }
        }
    }

    /// Reads and stores one report; the answer to its C-STORE.
    async fn finish(&self, inst: Instance, calling: &str) -> (u8, Command) {
        let request = inst.request;
        let outcome = if inst.too_large {
            Outcome::Unreadable(format!(
                "larger than a report ({} MiB at most)",
                MAX_INSTANCE >> 20
            ))
        } else {
            self.store(&request, &inst.transfer_syntax, inst.data, calling)
                .await
        };
        let sop = request
            .affected_sop_instance
            .trim_end_matches('\0')
            .to_owned();
        let rsp = match &outcome {
            Outcome::Stored(proof) => request.stored_response(&**proof),
            Outcome::Unreadable(why) => {
                self.intake.metrics.reports.refused.inc();
                tracing::warn!(calling_ae = %calling, sop_instance = %sop, reason = %why,
                    "DICOM report refused (0xC000): the PACS must fix the object");
                let comment: String = why.chars().take(64).collect();
                request.response(status::CANNOT_UNDERSTAND, Some(&comment))
            }
            Outcome::NotStored(why) => {
                tracing::error!(calling_ae = %calling, sop_instance = %sop, error = %why,
                    "cannot store a DICOM report; answered 0xA700 so the PACS sends it again");
                request.response(status::OUT_OF_RESOURCES, Some("report store unavailable"))
            }
        };
        (inst.context_id, rsp)
    }

    async fn store(
        &self,
        request: &Command,
        transfer_syntax: &str,
        data: Vec<u8>,
        calling: &str,
    ) -> Outcome {
        let class = request.affected_sop_class.clone();
        let instance = request.affected_sop_instance.clone();
        let ts = transfer_syntax.to_owned();
        let sender = calling.to_owned();
        // Parsing a few megabytes is CPU work: off the runtime's threads.
        let read = tokio::task::spawn_blocking(move || {
            let o = read_dataset(&data, &ts)?;
            let r = read_report(&o, &class, &instance)?;
            let oru = r.to_oru(&sender, &crate::reports::import::hl7_now());
            let m = Message::parse(&oru).map_err(|e| e.to_string())?;
            let report = read_hl7_report(&m).map_err(|e| e.text)?;
            Ok::<_, String>((report, oru))
        })
        .await;
        let (report, oru) = match read {
            Ok(Ok(x)) => x,
            Ok(Err(why)) => return Outcome::Unreadable(why),
            Err(_) => return Outcome::NotStored("the reader stopped".into()),
        };
        match self
            .intake
            .take(
                report,
                SOURCE,
                oru.into_bytes(),
                &format!("DICOM {calling}"),
            )
            .await
        {
            Ok(proof) => Outcome::Stored(Box::new(proof)),
            Err(e) => Outcome::NotStored(e.to_string()),
        }
    }
}
