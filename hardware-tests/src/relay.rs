//! A UDP relay between a gateway and central on loopback. It can cut the
//! link (drop every datagram both ways) and, when the link comes back,
//! forward from a new source port, as a clinic's NAT does after an outage.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::net::UdpSocket;
use tokio::sync::Mutex;

pub struct Relay {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Relays datagrams arriving at a new loopback port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = front.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicU64::new(0));
        let (c, g) = (cut.clone(), generation.clone());
        let task = tokio::spawn(async move {
            let _ = run(front, upstream, c, g).await;
        });
        Ok(Self {
            addr,
            cut,
            generation,
            task,
        })
    }

    /// Drops all traffic until [`Relay::restore`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Forwards again, from a new upstream source port.
    pub fn restore(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    front: Arc<UdpSocket>,
    upstream: SocketAddr,
    cut: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let mut buf = vec![0u8; 65536];
    let mut current_gen = u64::MAX;
    let mut back: Option<(Arc<UdpSocket>, tokio::task::JoinHandle<()>)> = None;
    loop {
        let (n, from) = front.recv_from(&mut buf).await?;
        if cut.load(Ordering::SeqCst) {
            continue;
        }
        *client.lock().await = Some(from);
        let g = generation.load(Ordering::SeqCst);
        if g != current_gen || back.is_none() {
            if let Some((_, t)) = back.take() {
                t.abort();
            }
            let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
            sock.connect(upstream).await?;
            let (s, f, c, cutflag) = (sock.clone(), front.clone(), client.clone(), cut.clone());
            let t = tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = s.recv(&mut buf).await {
                    if cutflag.load(Ordering::SeqCst) {
                        continue;
                    }
                    if let Some(to) = *c.lock().await {
                        let _ = f.send_to(&buf[..n], to).await;
                    }
                }
            });
            back = Some((sock, t));
            current_gen = g;
        }
        if let Some((s, _)) = &back {
            let _ = s.send(&buf[..n]).await;
        }
    }
}
