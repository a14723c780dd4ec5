//! Talking to central: one request, one answer, on a stream of a QUIC
//! connection. Administrators authenticate with their `yilian-admin://`
//! certificate; a box enrolling has only its token (and pins the fleet CA
//! the token names); a box whose certificate expired offline proves its old
//! key.

use std::net::SocketAddr;
use std::time::Duration;

use crate::{LinkError, MessageReader, write_message};
use yilian_protocol::Envelope;
use yilian_protocol::messages::{
    AdminRequest, CertificateResponse, EnrollRequest, RenewRequest, envelope::Body,
};

/// How long one request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, String),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("central did not answer within {0:?}")]
    Timeout(Duration),
    #[error("central closed the stream without an answer")]
    NoAnswer,
    #[error("central refused: {0}")]
    Refused(String),
    #[error("central's answer: {0}")]
    Answer(String),
}

/// The host part of `HOST:PORT`, brackets removed: the name to verify in
/// central's certificate.
pub fn host_of(central: &str) -> String {
    let central = crate::instances::first_entry(central);
    let host = central.rsplit_once(':').map_or(central, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned()
}

/// One-off requests go to the first of several instances.
async fn resolve(central: &str) -> Result<SocketAddr, RequestError> {
    let central = crate::instances::first_entry(central);
    tokio::net::lookup_host(central)
        .await
        .map_err(|e| RequestError::Resolve(central.to_owned(), e.to_string()))?
        .next()
        .ok_or_else(|| RequestError::Resolve(central.to_owned(), "no address".into()))
}

/// Connects with `config`, sends `request` on a new stream and returns the
/// first answer.
pub async fn exchange(
    central: &str,
    server_name: &str,
    config: quinn::ClientConfig,
    request: Body,
) -> Result<Envelope, RequestError> {
    let work = async {
        let addr = resolve(central).await?;
        let local = if addr.is_ipv6() {
            SocketAddr::from(([0u16; 8], 0))
        } else {
            SocketAddr::from(([0, 0, 0, 0], 0))
        };
        let socket = crate::bind_udp(local)?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| LinkError::Socket(std::io::Error::other("no async runtime")))?;
        let endpoint =
            quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
                .map_err(LinkError::Socket)?;
        let conn = endpoint
            .connect_with(config, addr, server_name)
            .map_err(LinkError::from)?
            .await
            .map_err(LinkError::from)?;
        let answer = on_connection(&conn, request).await;
        conn.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
        answer
    };
    tokio::time::timeout(REQUEST_TIMEOUT, work)
        .await
        .map_err(|_| RequestError::Timeout(REQUEST_TIMEOUT))?
}

/// Sends `request` on a new stream of an open connection and returns the
/// first answer.
pub async fn on_connection(
    conn: &quinn::Connection,
    request: Body,
) -> Result<Envelope, RequestError> {
    let (mut send, recv) = conn.open_bi().await.map_err(LinkError::from)?;
    write_message(&mut send, &Envelope::new(request)).await?;
    let _ = send.finish();
    let mut reader = MessageReader::new(recv);
    match reader.next().await {
        Ok(Some(env)) => Ok(env),
        Ok(None) => Err(RequestError::NoAnswer),
        Err(LinkError::Connection(c))
        | Err(LinkError::Read(quinn::ReadError::ConnectionLost(c))) => {
            // TLS 1.3: a refused client certificate shows up here, after
            // the handshake seemed to succeed.
            Err(RequestError::Refused(c.to_string()))
        }
        Err(e) => Err(e.into()),
    }
}

/// A certificate answer, or the refusal it carries.
pub fn certificate(env: Envelope) -> Result<CertificateResponse, RequestError> {
    match env.body {
        Some(Body::CertificateResponse(r)) if r.error.is_empty() => Ok(r),
        Some(Body::CertificateResponse(r)) => Err(RequestError::Refused(r.error)),
        _ => Err(RequestError::Answer("not a certificate response".into())),
    }
}

/// Enrollment: the token and a CSR, over a connection pinned to the fleet CA
/// whose fingerprint the token carries.
pub async fn enroll(
    central: &str,
    server_name: &str,
    ca_sha256: &str,
    token: &str,
    csr_pem: &str,
) -> Result<CertificateResponse, RequestError> {
    let config = crate::pinned_client_config(ca_sha256)?;
    let env = exchange(
        central,
        server_name,
        config,
        Body::EnrollRequest(EnrollRequest {
            token: token.to_owned(),
            csr_pem: csr_pem.to_owned(),
        }),
    )
    .await?;
    certificate(env)
}

/// Renewal for a box whose certificate expired: no client certificate, the
/// old chain and a CSR signed by the same key.
pub async fn renew_expired(
    central: &str,
    server_name: &str,
    ca: &std::path::Path,
    expired_chain_pem: &str,
    csr_pem: &str,
) -> Result<CertificateResponse, RequestError> {
    let config = crate::anonymous_client_config(ca)?;
    let env = exchange(
        central,
        server_name,
        config,
        Body::RenewRequest(RenewRequest {
            csr_pem: csr_pem.to_owned(),
            expired_chain_pem: expired_chain_pem.to_owned(),
        }),
    )
    .await?;
    certificate(env)
}

/// One fleet command, authenticated by the administrator's certificate.
pub async fn admin(
    central: &str,
    server_name: &str,
    files: &crate::TlsFiles,
    command: &str,
    args: serde_json::Value,
) -> Result<serde_json::Value, RequestError> {
    let config = crate::client_config(files)?;
    let env = exchange(
        central,
        server_name,
        config,
        Body::AdminRequest(AdminRequest {
            command: command.to_owned(),
            args_json: args.to_string(),
        }),
    )
    .await?;
    match env.body {
        Some(Body::AdminResponse(r)) if r.error.is_empty() => serde_json::from_str(&r.result_json)
            .map_err(|e| RequestError::Answer(format!("unreadable result: {e}"))),
        Some(Body::AdminResponse(r)) => Err(RequestError::Refused(r.error)),
        _ => Err(RequestError::Answer("not an admin response".into())),
    }
}
