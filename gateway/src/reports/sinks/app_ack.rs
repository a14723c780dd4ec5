//! Application ACKs back to the clinic's HL7 senders. A sender that asked
//! (MSH-16 AL, ER or SU) to hear what the receiving application made of
//! its result gets the hospital LIS's answer when central sends it down:
//! AA, or AE with the LIS's reason. It goes on the connection the sender
//! keeps open to the box (HL7's enhanced mode), else to the
//! `app_ack_address` configured for that sender (`[[hl7.peer]]`) over
//! MLLP, retried until the sender acknowledges it. A sender with neither
//! is waited for a few minutes (it may connect again with its next
//! result), then recorded as refused, with what to configure, on the page
//! and at central.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use yilian_codecs::hl7::{Message, decode};
use yilian_gateway_config::schema::Hl7Section;

use super::{SinkVerdict, Why};
use crate::reports::store::{HeldReport, ReportStore};

/// The deliveries of application ACKs, beside the configured sinks.
pub const SINK: &str = "app-ack";

pub struct AppAcks {
    pub hl7: Vec<Hl7Section>,
    pub open: Arc<crate::intake::open_senders::OpenSenders>,
    pub store: ReportStore,
    pub metrics: crate::metrics::GatewayMetrics,
    pub arrived: Arc<Notify>,
    pub stop: watch::Receiver<bool>,
}

/// Attempts (about eight minutes with the sinks' backoff) a sender with no
/// address is waited for to open a connection.
const WAIT_FOR_CONNECTION: u32 = 8;

/// Where each sender takes its answers.
struct Senders {
    hl7: Vec<Hl7Section>,
    open: Arc<crate::intake::open_senders::OpenSenders>,
}

impl Senders {
    /// Where the sender of `held` takes its application ACKs.
    fn address(&self, held: &HeldReport) -> Result<String, Why> {
        let listener = held.meta("listener");
        let peer: Option<IpAddr> = held.meta("peer_address").parse().ok();
        self.hl7
            .iter()
            .find(|h| h.name == listener)
            .and_then(|h| h.peer.iter().find(|p| Some(p.address) == peer))
            .and_then(|p| p.app_ack_address.clone())
            .ok_or_else(|| {
                Why::new(
                    "why-ack-no-address",
                    format!("{listener} {}", held.meta("peer_address")),
                )
            })
    }

    async fn send(&self, held: &HeldReport, bytes: &[u8], attempts: u32) -> SinkVerdict {
        let listener = held.meta("listener");
        if let Ok(peer) = held.meta("peer_address").parse::<IpAddr>() {
            let framed = yilian_codecs::mllp::encode(bytes);
            // A connection that broke as it was written: its address, if
            // any, or the next connection.
            if let Some(Ok(())) = self.open.send(listener, peer, framed).await {
                return SinkVerdict::Delivered(format!("on the open connection from {peer}"));
            }
        }
        let address = match self.address(held) {
            Ok(a) => a,
            Err(why) if attempts < WAIT_FOR_CONNECTION => {
                return SinkVerdict::Retry(Why::new("why-ack-no-connection", why.detail));
            }
            Err(why) => return SinkVerdict::Failed(why),
        };
        let attempt = async {
            let mut s = TcpStream::connect(&address).await?;
            super::hl7::exchange(&mut s, bytes).await
        };
        let answer = match tokio::time::timeout(Duration::from_secs(30), attempt).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                return SinkVerdict::Retry(Why::new(
                    "why-ack-unreachable",
                    format!("{address}: {e}"),
                ));
            }
            Err(_) => {
                return SinkVerdict::Retry(Why::new(
                    "why-ack-unreachable",
                    format!("{address}: no answer"),
                ));
            }
        };
        let d = decode(&answer, None);
        let code = Message::parse(&d.text)
            .map(|m| m.get("MSA", 1, 1).to_owned())
            .unwrap_or_default();
        match code.as_str() {
            "CA" | "AA" => SinkVerdict::Delivered(format!("{code} from {address}")),
            "CE" | "AE" => SinkVerdict::Failed(Why::new(
                "why-ack-refused",
                format!("{code} from {address}"),
            )),
            other => SinkVerdict::Retry(Why::new(
                "why-ack-unreachable",
                format!("{address} answered {other:?}"),
            )),
        }
    }
}

impl AppAcks {
    /// Passes application ACKs on until `stop`.
    pub async fn run(mut self) {
        let senders = Senders {
            hl7: std::mem::take(&mut self.hl7),
            open: self.open.clone(),
        };
        self.metrics.register_report_sink(SINK);
        loop {
            let woken = self.arrived.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let s = self.store.clone();
            let due = match tokio::task::spawn_blocking(move || s.due(SINK, 16)).await {
                Ok(Ok(d)) => d,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot read the application ACKs to pass on");
                    Vec::new()
                }
                Err(_) => return,
            };
            let idle = due.is_empty();
            for d in due {
                let (s, h) = (self.store.clone(), d.report.clone());
                let verdict = match tokio::task::spawn_blocking(move || s.read(&h)).await {
                    Ok(Ok(bytes)) => tokio::select! {
                        v = senders.send(&d.report, &bytes, d.attempts) => v,
                        _ = self.stop.changed() => return,
                    },
                    Ok(Err(e)) => SinkVerdict::Retry(Why::new("why-box-disk", e)),
                    Err(e) => SinkVerdict::Retry(Why::new("why-box-disk", e)),
                };
                super::record(
                    &self.store,
                    &self.metrics,
                    SINK,
                    &d.report.id,
                    d.attempts,
                    verdict,
                )
                .await;
            }
            if idle {
                tokio::select! {
                    _ = &mut woken => {}
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = self.stop.changed() => return,
                }
            }
        }
    }
}
