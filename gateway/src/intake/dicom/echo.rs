//! C-ECHO as an SCU: "can the box reach this modality?", the first thing a
//! technician tries after plugging a DR or an ultrasound in (the box's
//! page offers it for every allowed modality with an address).

use std::time::{Duration, Instant};

use dicom_ul::ClientAssociationOptions;
use yilian_codecs::dicom::{Command, NO_DATASET, command};

/// The Verification SOP class.
pub const VERIFICATION: &str = "1.2.840.10008.1.1";
const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

/// Why a C-ECHO failed: a catalogue key (`echo-why-…`, saying what to
/// check) and the technical detail.
pub type EchoFailure = (&'static str, String);

/// Sends one C-ECHO from `calling` to `called` at `address`; the round
/// trip on success, what went wrong otherwise.
pub async fn echo(
    calling: &str,
    called: &str,
    address: &str,
    timeout: Duration,
) -> Result<Duration, EchoFailure> {
    let started = Instant::now();
    let assoc = ClientAssociationOptions::new()
        .calling_ae_title(calling.to_owned())
        .called_ae_title(called.to_owned())
        .with_presentation_context(
            VERIFICATION.to_owned(),
            vec![EXPLICIT_VR_LE.to_owned(), IMPLICIT_VR_LE.to_owned()],
        )
        .connection_timeout(timeout)
        .read_timeout(timeout)
        .write_timeout(timeout)
        .establish_async(address)
        .await
        .map_err(|e| {
            let detail = format!("{address}: {e}");
            // dicom-ul says "rejected" when the modality answered
            // A-ASSOCIATE-RJ: it was reached, and refused this box.
            if detail.to_ascii_lowercase().contains("reject") {
                ("echo-why-rejected", detail)
            } else {
                ("echo-why-unreachable", detail)
            }
        })?;
    let Some((assoc, pc, _)) = super::scu::accepted_context(assoc).await else {
        return Err(("echo-why-no-verification", String::new()));
    };
    let rq = Command {
        field: command::C_ECHO_RQ,
        affected_sop_class: VERIFICATION.into(),
        message_id: 1,
        data_set_type: NO_DATASET,
        ..Command::default()
    };
    let rsp = super::scu::request(assoc, pc, &rq, None)
        .await
        .map_err(|e| ("echo-why-broken", e))?;
    match (rsp.field, rsp.status) {
        (command::C_ECHO_RSP, Some(0)) => Ok(started.elapsed()),
        (_, s) => Err(("echo-why-status", format!("{s:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_modality_that_is_off_is_unreachable_not_an_error_text() {
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(9);
        let r = echo(
            "YILIAN_GW",
            "DR_ROOM",
            &format!("127.0.0.1:{port}"),
            Duration::from_secs(2),
        )
        .await;
        assert!(matches!(r, Err(("echo-why-unreachable", _))), "{r:?}");
    }
}
