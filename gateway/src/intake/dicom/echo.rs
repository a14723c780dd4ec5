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

/// Sends one C-ECHO from `calling` to `called` at `address`; the round
/// trip on success, what went wrong in words otherwise.
pub async fn echo(
    calling: &str,
    called: &str,
    address: &str,
    timeout: Duration,
) -> Result<Duration, String> {
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
        .map_err(|e| format!("no association with {address}: {e}"))?;
    let Some((assoc, pc, _)) = super::scu::accepted_context(assoc).await else {
        return Err("the modality does not accept verification (C-ECHO)".into());
    };
    let rq = Command {
        field: command::C_ECHO_RQ,
        affected_sop_class: VERIFICATION.into(),
        message_id: 1,
        data_set_type: NO_DATASET,
        ..Command::default()
    };
    let rsp = super::scu::request(assoc, pc, &rq, None).await?;
    match (rsp.field, rsp.status) {
        (command::C_ECHO_RSP, Some(0)) => Ok(started.elapsed()),
        (_, s) => Err(format!("the modality answered status {s:?}")),
    }
}
