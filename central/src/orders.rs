//! Imaging orders from the hospital RIS, HL7 ORM^O01 or OMI^O23 over MLLP,
//! into the worklists central pushes to clinic gateways.
//!
//! The clinic is MSH-6 (receiving facility): `COUNTY/CLINIC` as is, or a
//! facility code mapped in `[worklist] facilities`. ORC-1 NW/XO/SC add or
//! update the scheduled step, CA/DC/OC/CR (and SC with ORC-5 CM, CA or DC)
//! remove it. Fields: accession IPC-1, else OBR-18, else OBR-3/ORC-3;
//! patient PID-3/5/7/8; procedure OBR-4 (text), OBR-19 or IPC-2; study UID
//! IPC-3; step IPC-4 or OBR-20; modality IPC-5 or OBR-24; station AE IPC-8
//! or OBR-21; start TQ1-7, else OBR-27.4, else ORC-7.4, else OBR-7;
//! referring physician OBR-16. The ACK (AA) goes after the database commit;
//! AE with an ERR segment says what is missing; AR when the store fails.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use yilian_codecs::hl7::{AckCode, ErrorInfo, Message, build_ack, decode, encode};
use yilian_codecs::mllp::{self, MllpDecoder};
use yilian_protocol::messages::WorklistEntry;

use crate::config::WorklistSection;
use crate::store::Store;

/// What one order message does to a clinic's worklist.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderUpdate {
    pub clinic: String,
    pub upsert: Option<WorklistEntry>,
    pub remove: Option<String>,
}

fn error(location: &str, code: u16, text: impl Into<String>) -> ErrorInfo {
    ErrorInfo {
        location: location.to_owned(),
        code,
        text: text.into(),
        severity: 'E',
    }
}

fn first<'a>(m: &'a Message, candidates: &[(&str, usize, usize)]) -> &'a str {
    candidates
        .iter()
        .map(|(s, f, c)| m.get(s, *f, *c))
        .find(|v| !v.is_empty())
        .unwrap_or("")
}

/// Interprets an ORM^O01 or OMI^O23.
pub fn order_update(
    m: &Message,
    facilities: &BTreeMap<String, String>,
) -> Result<OrderUpdate, ErrorInfo> {
    let (code, trigger, _) = m.message_type();
    if !matches!((code, trigger), ("ORM", "O01") | ("OMI", "O23")) {
        return Err(error(
            "MSH^1^9",
            200,
            format!("{code}^{trigger} is not an imaging order"),
        ));
    }
    let facility = m.get("MSH", 6, 1);
    let clinic = if facility.contains('/') {
        facility.to_owned()
    } else {
        facilities.get(facility).cloned().ok_or_else(|| {
            error(
                "MSH^1^6",
                101,
                format!("receiving facility {facility:?} is not a known clinic"),
            )
        })?
    };
    let accession = first(
        m,
        &[("IPC", 1, 1), ("OBR", 18, 1), ("OBR", 3, 1), ("ORC", 3, 1)],
    )
    .to_owned();
    if accession.is_empty() {
        return Err(error(
            "OBR^1^18",
            101,
            "no accession number (IPC-1, OBR-18, OBR-3 or ORC-3)",
        ));
    }
    let control = m.get("ORC", 1, 1);
    let status = m.get("ORC", 5, 1);
    let removes = matches!(control, "CA" | "DC" | "OC" | "CR")
        || (control == "SC" && matches!(status, "CM" | "CA" | "DC"));
    if removes {
        return Ok(OrderUpdate {
            clinic,
            upsert: None,
            remove: Some(accession),
        });
    }
    if !matches!(control, "NW" | "XO" | "SC") {
        return Err(error(
            "ORC^1^1",
            201,
            format!("order control {control:?} is not handled"),
        ));
    }
    let patient_id = m.get("PID", 3, 1).to_owned();
    if patient_id.is_empty() {
        return Err(error("PID^1^3", 101, "no patient identifier"));
    }
    let name = |seg: &str, f: usize, family: usize| {
        let (fam, given) = (m.get(seg, f, family), m.get(seg, f, family + 1));
        if given.is_empty() {
            fam.to_owned()
        } else {
            format!("{fam}^{given}")
        }
    };
    let start = first(
        m,
        &[("TQ1", 7, 1), ("OBR", 27, 4), ("ORC", 7, 4), ("OBR", 7, 1)],
    );
    let digits: String = start.chars().filter(char::is_ascii_digit).collect();
    let entry = WorklistEntry {
        accession_number: accession,
        patient_id,
        patient_name: name("PID", 5, 1),
        patient_birth_date: m.get("PID", 7, 1).chars().take(8).collect(),
        patient_sex: m.get("PID", 8, 1).to_owned(),
        requested_procedure_id: first(m, &[("IPC", 2, 1), ("OBR", 19, 1)]).to_owned(),
        requested_procedure_description: first(m, &[("OBR", 4, 2), ("OBR", 4, 1)]).to_owned(),
        study_instance_uid: m.get("IPC", 3, 1).to_owned(),
        modality: first(m, &[("IPC", 5, 1), ("OBR", 24, 1)]).to_owned(),
        scheduled_station_ae_title: first(m, &[("IPC", 8, 1), ("OBR", 21, 1)]).to_owned(),
        scheduled_start_date: digits.chars().take(8).collect(),
        scheduled_start_time: digits.chars().skip(8).take(6).collect(),
        scheduled_procedure_step_id: first(m, &[("IPC", 4, 1), ("OBR", 20, 1)]).to_owned(),
        scheduled_procedure_step_description: first(m, &[("OBR", 4, 2), ("OBR", 4, 1)]).to_owned(),
        referring_physician: name("OBR", 16, 2),
    };
    Ok(OrderUpdate {
        clinic,
        upsert: Some(entry),
        remove: None,
    })
}

pub struct OrderListener {
    pub config: WorklistSection,
    pub store: Store,
}

impl OrderListener {
    pub async fn bind(
        self,
        addr: SocketAddr,
        stop: watch::Receiver<bool>,
    ) -> std::io::Result<impl std::future::Future<Output = ()>> {
        let listener = TcpListener::bind(addr).await?;
        tracing::info!(%addr, "listening for RIS orders (HL7 ORM/OMI over MLLP)");
        Ok(self.serve(listener, stop))
    }

    async fn serve(self, listener: TcpListener, mut stop: watch::Receiver<bool>) {
        let this = std::sync::Arc::new(self);
        loop {
            let (socket, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(_) => continue,
                },
                _ = stop.changed() => return,
            };
            let me = this.clone();
            tokio::spawn(async move { me.connection(socket, peer).await });
        }
    }

    async fn connection(&self, mut socket: TcpStream, peer: SocketAddr) {
        let mut decoder = MllpDecoder::new(1024 * 1024);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match tokio::time::timeout(
                std::time::Duration::from_secs(600),
                socket.read(&mut buf),
            )
            .await
            {
                Ok(Ok(0)) | Err(_) => return,
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "RIS connection failed");
                    return;
                }
            };
            for frame in decoder.push(&buf[..n]) {
                let Ok(bytes) = frame else {
                    tracing::warn!(%peer, "malformed MLLP frame from the RIS skipped");
                    continue;
                };
                if let Some(ack) = self.handle(&bytes, peer).await
                    && socket.write_all(&ack).await.is_err()
                {
                    return;
                }
            }
        }
    }

    async fn handle(&self, bytes: &[u8], peer: SocketAddr) -> Option<Vec<u8>> {
        let decoded = decode(bytes, None);
        let m = match Message::parse(&decoded.text) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "unreadable message from the RIS; no ACK possible");
                return None;
            }
        };
        let (code, err) = match order_update(&m, &self.config.facilities) {
            Err(e) => {
                tracing::warn!(%peer, control = m.control_id(), reason = %e.text, "RIS order refused (AE)");
                (AckCode::AE, Some(e))
            }
            Ok(update) => {
                let store = self.store.clone();
                let u = update.clone();
                let r = tokio::task::spawn_blocking(move || {
                    let upserts: Vec<WorklistEntry> = u.upsert.into_iter().collect();
                    let removals: Vec<String> = u.remove.into_iter().collect();
                    store.worklist_update(&u.clinic, &upserts, &removals)
                })
                .await;
                match r {
                    Ok(Ok(())) => {
                        tracing::info!(%peer, clinic = %update.clinic, control = m.control_id(),
                            removed = update.remove.is_some(), "RIS order applied to the clinic's worklist");
                        (AckCode::AA, None)
                    }
                    _ => (
                        AckCode::AR,
                        Some(error(
                            "",
                            207,
                            "worklist store unavailable; send again later",
                        )),
                    ),
                }
            }
        };
        let ts: String = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            .to_string()
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        let control = format!("YLO{}", &ts);
        let ack = build_ack(&m, code, err.as_ref(), &control, &ts);
        Some(mllp::encode(&encode(&ack, decoded.charset)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Message {
        Message::parse(&s.replace('\n', "\r")).expect("parses")
    }

    /// A segment from (field number, value) pairs.
    fn seg(id: &str, fields: &[(usize, &str)]) -> String {
        let n = fields.iter().map(|f| f.0).max().unwrap_or(0);
        let mut v = vec![""; n + 1];
        v[0] = id;
        for (i, val) in fields {
            v[*i] = val;
        }
        v.join("|")
    }

    #[test]
    fn orm_new_order_and_cancel() {
        let facilities = BTreeMap::from([("XIACUN".to_owned(), "lingshan/xiacun".to_owned())]);
        let obr = seg(
            "OBR",
            &[
                (1, "1"),
                (2, "PL1"),
                (3, "FL1"),
                (4, "CHEST^Chest PA"),
                (18, "ACC2001"),
                (19, "RP2001"),
                (20, "SPS2001"),
                (21, "DR_ROOM"),
                (24, "DX"),
            ],
        );
        let text = format!(
            "MSH|^~\\&|RIS|COUNTY|YILIAN|XIACUN|20261123090000||ORM^O01|M1|P|2.3\n\
             PID|1||P2001^^^H||Chen^Jing||19800202|F\n\
             ORC|NW|PL1|FL1||SC||^^^20261124083000\n{obr}"
        );
        let u = order_update(&parse(&text), &facilities).expect("an order");
        assert_eq!(u.clinic, "lingshan/xiacun");
        let e = u.upsert.expect("upsert");
        assert_eq!(e.accession_number, "ACC2001");
        assert_eq!(e.patient_name, "Chen^Jing");
        assert_eq!(e.modality, "DX");
        assert_eq!(e.scheduled_station_ae_title, "DR_ROOM");
        assert_eq!(
            (
                e.scheduled_start_date.as_str(),
                e.scheduled_start_time.as_str()
            ),
            ("20261124", "083000")
        );
        let obr = seg("OBR", &[(1, "1"), (3, "FL1"), (18, "ACC2001")]);
        let text = format!(
            "MSH|^~\\&|RIS|COUNTY|YILIAN|lingshan/xiacun|20261123090000||ORM^O01|M2|P|2.3\n\
             ORC|CA|PL1|FL1\n{obr}"
        );
        let u = order_update(&parse(&text), &facilities).expect("a cancel");
        assert_eq!(u.remove.as_deref(), Some("ACC2001"));
    }

    #[test]
    fn unknown_facility_and_missing_accession_are_errors() {
        let m =
            parse("MSH|^~\\&|RIS|COUNTY|YILIAN|NOWHERE|20261123||ORM^O01|M3|P|2.3\nORC|NW\nOBR|1");
        assert_eq!(
            order_update(&m, &BTreeMap::new())
                .map(|_| ())
                .unwrap_err()
                .code,
            101
        );
        let m = parse("MSH|^~\\&|RIS|COUNTY|YILIAN|a/b|20261123||ORU^R01|M4|P|2.3");
        assert_eq!(
            order_update(&m, &BTreeMap::new())
                .map(|_| ())
                .unwrap_err()
                .code,
            200
        );
    }
}
