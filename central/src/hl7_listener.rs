//! An MLLP listener for the hospital systems that send central HL7: the
//! RIS's orders ([`crate::orders`]) and the reading systems' reports
//! ([`crate::reports`]). One message answered at a time per connection,
//! as MLLP requires; connections are capped and idle ones closed, so a
//! misbehaving sender cannot exhaust central's descriptors.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use yilian_codecs::mllp::MllpDecoder;

/// Largest message taken (a report with an embedded PDF of several MB,
/// base64, fits).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// Connections served at once; more wait in the kernel's backlog. The
/// senders are the hospital's few systems (RIS, LIS, ECG reading), and
/// this bounds what they can hold in memory: 16 × 16 MiB at the worst.
const MAX_CONNECTIONS: usize = 16;
/// A connection silent this long is closed.
const IDLE: Duration = Duration::from_secs(600);

/// What a listener does with each message: the framed answer, or `None`
/// when the message is unreadable and no ACK can be built.
pub trait Hl7Service: Send + Sync + 'static {
    /// Who sends, for log lines ("RIS orders").
    fn what(&self) -> &'static str;
    fn handle(
        &self,
        bytes: &[u8],
        peer: SocketAddr,
    ) -> impl Future<Output = Option<Vec<u8>>> + Send;
}

/// Binds `addr` and returns the future that serves `service` until `stop`.
pub async fn bind<S: Hl7Service>(
    service: S,
    addr: SocketAddr,
    stop: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, impl Future<Output = ()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "listening for {} (HL7 over MLLP)", service.what());
    Ok((local, serve(Arc::new(service), listener, stop)))
}

async fn serve<S: Hl7Service>(
    service: Arc<S>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (socket, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    // Out of descriptors or a reset during the handshake:
                    // pause instead of spinning on the error.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let service = service.clone();
        tokio::spawn(async move {
            connection(&*service, socket, peer).await;
            drop(permit);
        });
    }
}

async fn connection<S: Hl7Service>(service: &S, mut socket: TcpStream, peer: SocketAddr) {
    let mut decoder = MllpDecoder::new(MAX_MESSAGE);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match tokio::time::timeout(IDLE, socket.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => return,
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "{} connection failed", service.what());
                return;
            }
        };
        for frame in decoder.push(&buf[..n]) {
            let Ok(bytes) = frame else {
                tracing::warn!(%peer, "malformed MLLP frame from the {} sender skipped", service.what());
                continue;
            };
            if let Some(ack) = service.handle(&bytes, peer).await
                && socket.write_all(&ack).await.is_err()
            {
                return;
            }
        }
    }
}
