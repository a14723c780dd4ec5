//! Network and USB-stick input to the fleet's certificates: an enrollment
//! token (typed or read from a bundle, verified by central), a CSR from an
//! anonymous peer, a client certificate's names. None may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = yilian_pki::token::peek(&text);
    let key = yilian_pki::token::TokenKey::from_bytes(&[7u8; 32]);
    let _ = key.verify(&text);
    let _ = yilian_pki::csr::requested_identity(&text);
    let der = CertificateDer::from(data);
    let _ = yilian_pki::identity::peer_from_certificate(&der);
    let _ = yilian_pki::identity::certificate_validity(&der);
});
