//! A UDP relay between a gateway and central on loopback. It can cut the
//! link (drop every datagram both ways) and, when the link comes back,
//! forward from a new source port, as a clinic's NAT does after an outage.
//! It can also shape the upstream direction like a thin uplink: a token
//! bucket at a fixed rate in front of a bounded queue (tail drop when the
//! queue holds more than its delay limit), which QUIC's congestion control
//! sees as a real bottleneck.

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

/// An upstream bottleneck (and, when `down_bytes_per_sec` is set, a
/// downstream one with the same queue limit).
#[derive(Debug, Clone, Copy)]
pub struct Shaping {
    pub bytes_per_sec: u64,
    /// Most queueing delay before datagrams are dropped.
    pub queue: std::time::Duration,
    /// Central → gateway rate; unshaped when `None`.
    pub down_bytes_per_sec: Option<u64>,
}

/// A pacer: each datagram leaves when the link has serialised the ones
/// before it; one that would wait longer than the queue limit is dropped.
struct Pacer<T> {
    rate: u64,
    queue: std::time::Duration,
    free_at: tokio::time::Instant,
    tx: tokio::sync::mpsc::UnboundedSender<(tokio::time::Instant, T)>,
    _task: AbortOnDrop,
}

impl<T: Send + 'static> Pacer<T> {
    /// What is offered goes out through `send` at its time.
    fn new<F, Fut>(rate: u64, queue: std::time::Duration, send: F) -> Self
    where
        F: Fn(T) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, T)>();
        let task = tokio::spawn(async move {
            while let Some((due, item)) = rx.recv().await {
                tokio::time::sleep_until(due).await;
                send(item).await;
            }
        });
        Self {
            rate,
            queue,
            free_at: tokio::time::Instant::now(),
            tx,
            _task: AbortOnDrop(task),
        }
    }

    /// Queues `item` of `len` bytes, or drops it when the queue is full.
    fn offer(&mut self, len: usize, item: T) {
        let now = tokio::time::Instant::now();
        let start = self.free_at.max(now);
        if start.duration_since(now) > self.queue {
            return; // queue full: tail drop
        }
        self.free_at = start + std::time::Duration::from_secs_f64(len as f64 / self.rate as f64);
        let _ = self.tx.send((self.free_at, item));
    }
}

impl Relay {
    /// Relays datagrams arriving at a new loopback port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        Self::start_shaped(upstream, None).await
    }

    /// Like [`Relay::start`], with the gateway → central direction shaped.
    pub async fn start_shaped(
        upstream: SocketAddr,
        shaping: Option<Shaping>,
    ) -> std::io::Result<Self> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = front.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicU64::new(0));
        let (c, g) = (cut.clone(), generation.clone());
        let task = tokio::spawn(async move {
            let _ = run(front, upstream, c, g, shaping).await;
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
    shaping: Option<Shaping>,
) -> std::io::Result<()> {
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    // Shaped datagrams wait in a FIFO served by a pacer at the link rate.
    let mut up = shaping.map(|sh| {
        Pacer::new(
            sh.bytes_per_sec,
            sh.queue,
            |(sock, data): (Arc<UdpSocket>, Vec<u8>)| async move {
                let _ = sock.send(&data).await;
            },
        )
    });
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
            let down = shaping.and_then(|sh| {
                let rate = sh.down_bytes_per_sec?;
                let (f, c) = (front.clone(), client.clone());
                Some(Pacer::new(rate, sh.queue, move |data: Vec<u8>| {
                    let (f, c) = (f.clone(), c.clone());
                    async move {
                        if let Some(to) = *c.lock().await {
                            let _ = f.send_to(&data, to).await;
                        }
                    }
                }))
            });
            let t = tokio::spawn(async move {
                let mut down = down;
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = match s.recv(&mut buf).await {
                        Ok(n) => n,
                        // Central not listening (yet, or while it
                        // restarts): the kernel reports the ICMP refusal
                        // on this connected socket; keep relaying.
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                        Err(_) => break,
                    };
                    if cutflag.load(Ordering::SeqCst) {
                        continue;
                    }
                    if let Some(p) = down.as_mut() {
                        p.offer(n, buf[..n].to_vec());
                    } else if let Some(to) = *c.lock().await {
                        let _ = f.send_to(&buf[..n], to).await;
                    }
                }
            });
            back = Some((sock, t));
            current_gen = g;
        }
        if let Some((s, _)) = &back {
            match up.as_mut() {
                None => {
                    let _ = s.send(&buf[..n]).await;
                }
                Some(p) => p.offer(n, (s.clone(), buf[..n].to_vec())),
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
