#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers may panic on setup failure
//! Mutual TLS over real quinn endpoints on loopback.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use time::OffsetDateTime;
use yilian_link::{
    MessageReader, TlsFiles, bind_udp, client_config, peer_identity, server_config, write_message,
};
use yilian_pki::FleetCa;
use yilian_pki::ca::write_cert_files;
use yilian_protocol::BoxIdentity;
use yilian_protocol::messages::{Accept, Envelope, envelope::Body};

const DAY: Duration = Duration::from_secs(86400);

fn fleet(dir: &Path, name: &str) -> FleetCa {
    FleetCa::init(&dir.join(name), name, DAY * 365).expect("ca")
}

fn files(dir: &Path, name: &str) -> TlsFiles {
    TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    }
}

async fn server(dir: &Path, ca: &FleetCa) -> (quinn::Endpoint, SocketAddr) {
    let out = dir.join("central");
    write_cert_files(
        &out,
        "central",
        &ca.issue_central("localhost", DAY).expect("cert"),
        ca.cert_pem(),
    )
    .expect("write");
    let config = server_config(&files(&out, "central"), yilian_link::Revocations::default())
        .expect("server config");
    let socket = bind_udp("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let ep = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        quinn::default_runtime().expect("runtime"),
    )
    .expect("endpoint");
    let addr = ep.local_addr().expect("addr");
    let accept = ep.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accept.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                let id = peer_identity(&conn).expect("verified identity");
                let Ok((mut send, recv)) = conn.accept_bi().await else {
                    return;
                };
                let mut reader = MessageReader::new(recv);
                let _ = reader.next().await;
                let _ = write_message(
                    &mut send,
                    &Envelope::new(Body::Accept(Accept {
                        offset: id.to_string().len() as u64,
                    })),
                )
                .await;
                let _ = send.finish();
                conn.closed().await;
            });
        }
    });
    (ep, addr)
}

/// Connects and does the first exchange, which is where TLS 1.3 client
/// authentication failures surface.
async fn first_exchange(client_files: &TlsFiles, addr: SocketAddr) -> Result<u64, String> {
    let config = client_config(client_files).map_err(|e| e.to_string())?;
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
    ep.set_default_client_config(config);
    let conn = ep
        .connect(addr, "localhost")
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    write_message(&mut send, &Envelope::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut reader = MessageReader::new(recv);
    let reply = tokio::time::timeout(Duration::from_secs(5), reader.next())
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    match reply.and_then(|e| e.body) {
        Some(Body::Accept(a)) => Ok(a.offset),
        other => Err(format!("unexpected {other:?}")),
    }
}

fn gateway_files(
    dir: &Path,
    ca: &FleetCa,
    id: &str,
    not_before: OffsetDateTime,
    life: Duration,
    trust: &str,
) -> TlsFiles {
    let out = dir.join(id.replace('/', "_"));
    let issued = ca
        .issue_gateway(&BoxIdentity::parse(id).expect("id"), not_before, life)
        .expect("issue");
    write_cert_files(&out, "gateway", &issued, trust).expect("write");
    files(&out, "gateway")
}

#[tokio::test]
async fn fleet_certificate_is_accepted_and_identity_comes_from_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let ca = fleet(dir.path(), "fleet");
    let (_ep, addr) = server(dir.path(), &ca).await;
    let good = gateway_files(
        dir.path(),
        &ca,
        "anxi/hutou/box-1",
        OffsetDateTime::now_utc(),
        DAY,
        ca.cert_pem(),
    );
    assert_eq!(
        first_exchange(&good, addr).await,
        Ok("anxi/hutou/box-1".len() as u64)
    );
}

#[tokio::test]
async fn foreign_expired_and_identityless_certificates_cannot_talk() {
    let dir = tempfile::tempdir().expect("tmp");
    let ca = fleet(dir.path(), "fleet");
    let other = fleet(dir.path(), "other");
    let (_ep, addr) = server(dir.path(), &ca).await;

    // Signed by another CA (but trusting ours, so the server is verified).
    let foreign = gateway_files(
        dir.path(),
        &other,
        "anxi/hutou/rogue",
        OffsetDateTime::now_utc(),
        DAY,
        ca.cert_pem(),
    );
    assert!(first_exchange(&foreign, addr).await.is_err());

    // Ours, but expired yesterday.
    let expired = gateway_files(
        dir.path(),
        &ca,
        "anxi/hutou/old",
        OffsetDateTime::now_utc() - DAY * 10,
        DAY,
        ca.cert_pem(),
    );
    assert!(first_exchange(&expired, addr).await.is_err());

    // The central certificate of the same fleet is not a gateway.
    let out = dir.path().join("central-as-client");
    write_cert_files(
        &out,
        "central",
        &ca.issue_central("localhost", DAY).expect("cert"),
        ca.cert_pem(),
    )
    .expect("write");
    assert!(first_exchange(&files(&out, "central"), addr).await.is_err());
}

#[tokio::test]
async fn gateway_refuses_a_central_from_another_ca() {
    let dir = tempfile::tempdir().expect("tmp");
    let ca = fleet(dir.path(), "fleet");
    let impostor = fleet(dir.path(), "impostor");
    let (_ep, addr) = server(dir.path(), &impostor).await;
    let good = gateway_files(
        dir.path(),
        &ca,
        "anxi/hutou/box-1",
        OffsetDateTime::now_utc(),
        DAY,
        ca.cert_pem(),
    );
    let err = first_exchange(&good, addr)
        .await
        .expect_err("impostor central");
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );
}
