//! The gateway as a DIMSE client, for what it asks of a modality (storage
//! commitment reports, C-ECHO) and what it stores at the clinic's viewer
//! (reports as Encapsulated PDF): one request and its response on an
//! association the caller opened.

use dicom_ul::Pdu;
use dicom_ul::association::client::AsyncClientAssociation;
use dicom_ul::pdu::{PDataValue, PDataValueType, PresentationContextResultReason};
use yilian_codecs::dicom::Command;

pub type Association = AsyncClientAssociation<tokio::net::TcpStream>;

/// The association with the first presentation context the modality
/// accepted and its transfer syntax; `None` (after releasing) when it
/// accepted none.
pub async fn accepted_context(assoc: Association) -> Option<(Association, u8, String)> {
    let pc = assoc
        .presentation_contexts()
        .iter()
        .find(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .map(|pc| (pc.id, pc.transfer_syntax.trim_end_matches('\0').to_owned()));
    match pc {
        Some((id, ts)) => Some((assoc, id, ts)),
        None => {
            let _ = assoc.release().await;
            None
        }
    }
}

/// Sends `rq` (and its data set) on context `pc`, waits for the response,
/// releases the association and returns the response's command set.
pub async fn request(
    mut assoc: Association,
    pc: u8,
    rq: &Command,
    data: Option<Vec<u8>>,
) -> Result<Command, String> {
    // The data set in fragments the peer's PDU length admits (a report's
    // PDF is far larger than one PDU).
    let max = match assoc.acceptor_max_pdu_length() {
        0 => 64 * 1024,
        n => n.min(1024 * 1024),
    } as usize;
    let piece = max.saturating_sub(6).max(1024);
    let mut fragments = vec![(PDataValueType::Command, rq.encode(), true)];
    if let Some(d) = data {
        let n = d.len().div_ceil(piece).max(1);
        for (i, chunk) in d.chunks(piece).enumerate() {
            fragments.push((PDataValueType::Data, chunk.to_vec(), i + 1 == n));
        }
    }
    for (kind, bytes, is_last) in fragments {
        let pdu = Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc,
                value_type: kind,
                is_last,
                data: bytes,
            }],
        };
        assoc.send(&pdu).await.map_err(|e| e.to_string())?;
    }
    let answer = match assoc.receive().await.map_err(|e| e.to_string())? {
        Pdu::PData { data } => data
            .into_iter()
            .filter(|v| v.value_type == PDataValueType::Command)
            .flat_map(|v| v.data)
            .collect::<Vec<u8>>(),
        other => {
            return Err(format!("unexpected answer: {}", other.short_description()));
        }
    };
    let _ = assoc.release().await;
    Command::parse(&answer).map_err(|e| e.to_string())
}
