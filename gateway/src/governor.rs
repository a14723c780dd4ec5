//! Keeping every listener bounded when the clinic LAN misbehaves: a
//! scanner opening thousands of connections, a broken device holding idle
//! sockets, a sender streaming garbage. One peer must never lock out the
//! others, and no listener may take the process's descriptors, memory or
//! log with it.
//!
//! - [`raise_descriptor_limit`]: the soft `RLIMIT_NOFILE` goes up to the hard
//!   limit at start (1,024 is easy to exhaust).
//! - [`AcceptErrors`]: an accept loop that fails (EMFILE, ENFILE, ENOBUFS)
//!   backs off and says so once per interval, with a count, instead of
//!   spinning and logging megabytes a second.
//! - [`Governor`]: connections per listener and per peer address are
//!   capped. When the listener is full, a peer the configuration names (the
//!   LIS, a modality with an address) gets a slot by closing the most idle
//!   connection of an unknown peer; an unknown peer gets one only by
//!   closing an unknown connection idle for a while. Idle and slow senders
//!   go first.
//! - [`Governed`]: a stream that holds its slot, notes activity, and ends
//!   after an idle timeout (for HTTP, whose server has none of its own).

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// Raises the soft descriptor limit to the hard one. Returns the limit in
/// force.
pub fn raise_descriptor_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    if let Some(hard) = l.maximum
        && l.current.is_some_and(|c| c < hard)
    {
        let before = l.current;
        l.current = Some(hard);
        match setrlimit(Resource::Nofile, l) {
            Ok(()) => tracing::debug!(?before, after = hard, "raised the descriptor limit"),
            Err(e) => tracing::warn!(error = %e, "cannot raise the descriptor limit"),
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Backoff and bounded logging for a failing accept loop.
#[derive(Debug)]
pub struct AcceptErrors {
    listener: String,
    last_log: Option<Instant>,
    since_log: u64,
    streak: u32,
}

/// One log line per this much time while accepts keep failing.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl AcceptErrors {
    pub fn new(listener: &str) -> Self {
        Self {
            listener: listener.to_owned(),
            last_log: None,
            since_log: 0,
            streak: 0,
        }
    }

    /// Accept worked: the next failure starts with a short pause again.
    pub fn ok(&mut self) {
        self.streak = 0;
    }

    /// Accept failed: logs (at most once per interval, with how many
    /// failed since) and returns how long to wait before trying again.
    pub fn failed(&mut self, e: &io::Error) -> Duration {
        self.since_log += 1;
        self.streak = self.streak.saturating_add(1);
        let now = Instant::now();
        if self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= ACCEPT_LOG_INTERVAL)
        {
            let out_of_descriptors = matches!(e.raw_os_error(), Some(23 | 24));
            tracing::warn!(listener = %self.listener, error = %e, failures = self.since_log,
                out_of_descriptors,
                "accepting connections fails; backing off (a flood of connections from the clinic LAN?)");
            self.last_log = Some(now);
            self.since_log = 0;
        }
        // 10 ms doubling to 1 s: fast recovery from a blip, no spinning.
        Duration::from_millis(10u64 << self.streak.min(7)).min(Duration::from_secs(1))
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{peer} already has {limit} connections to this listener")]
    PeerFull { peer: IpAddr, limit: usize },
    #[error("the listener is full ({limit} connections) and none is idle enough to close")]
    Full { limit: usize },
}

struct Entry {
    id: u64,
    peer: IpAddr,
    trusted: bool,
    last_active: Arc<AtomicU64>,
    kick: Arc<Notify>,
}

/// The connections of one listener.
pub struct Governor {
    name: String,
    max_total: usize,
    max_per_peer: usize,
    /// Addresses the configuration names: never locked out by others.
    trusted: HashSet<IpAddr>,
    /// An unknown peer may take the slot of an unknown connection idle
    /// this long.
    evict_idle_after: Duration,
    start: Instant,
    next_id: AtomicU64,
    entries: Mutex<Vec<Entry>>,
}

impl std::fmt::Debug for Governor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Governor")
            .field("name", &self.name)
            .finish()
    }
}

impl Governor {
    pub fn new(
        name: &str,
        max_total: usize,
        max_per_peer: usize,
        trusted: impl IntoIterator<Item = IpAddr>,
    ) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_owned(),
            max_total: max_total.max(1),
            max_per_peer: max_per_peer.max(1),
            trusted: trusted.into_iter().collect(),
            evict_idle_after: Duration::from_secs(10),
            start: Instant::now(),
            next_id: AtomicU64::new(1),
            entries: Mutex::new(Vec::new()),
        })
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Connections held now.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Admits a connection from `peer`, closing an idle one to make room
    /// when the rules allow; the ticket holds the slot until dropped.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Ticket, Refusal> {
        let trusted = self.trusted.contains(&peer);
        let now = self.now_ms();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let from_peer = entries.iter().filter(|e| e.peer == peer).count();
        if from_peer >= self.max_per_peer {
            // Its own most idle connection makes room (a device that
            // reconnects after a glitch leaves half-open ones behind).
            let idle = entries
                .iter()
                .filter(|e| e.peer == peer)
                .min_by_key(|e| e.last_active.load(Ordering::Relaxed));
            match idle {
                Some(e)
                    if now.saturating_sub(e.last_active.load(Ordering::Relaxed))
                        >= self.evict_idle_after.as_millis() as u64 =>
                {
                    e.kick.notify_one();
                    let id = e.id;
                    entries.retain(|x| x.id != id);
                }
                _ => {
                    return Err(Refusal::PeerFull {
                        peer,
                        limit: self.max_per_peer,
                    });
                }
            }
        } else if entries.len() >= self.max_total {
            let min_idle = if trusted {
                0
            } else {
                self.evict_idle_after.as_millis() as u64
            };
            let victim = entries
                .iter()
                .filter(|e| !e.trusted)
                .filter(|e| now.saturating_sub(e.last_active.load(Ordering::Relaxed)) >= min_idle)
                .min_by_key(|e| e.last_active.load(Ordering::Relaxed))
                .map(|e| (e.id, e.peer, e.kick.clone()));
            match victim {
                Some((id, victim_peer, kick)) => {
                    tracing::info!(listener = %self.name, %victim_peer, for_peer = %peer, trusted,
                        "listener full: closed its most idle connection from an unknown peer to make room");
                    kick.notify_one();
                    entries.retain(|x| x.id != id);
                }
                None => {
                    return Err(Refusal::Full {
                        limit: self.max_total,
                    });
                }
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let last_active = Arc::new(AtomicU64::new(now));
        let kick = Arc::new(Notify::new());
        entries.push(Entry {
            id,
            peer,
            trusted,
            last_active: last_active.clone(),
            kick: kick.clone(),
        });
        Ok(Ticket {
            governor: self.clone(),
            id,
            last_active,
            kick,
        })
    }
}

/// A slot in a listener, released when dropped.
pub struct Ticket {
    governor: Arc<Governor>,
    id: u64,
    last_active: Arc<AtomicU64>,
    kick: Arc<Notify>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").field("id", &self.id).finish()
    }
}

impl Ticket {
    /// The connection did something: it is not idle.
    pub fn touch(&self) {
        self.last_active
            .store(self.governor.now_ms(), Ordering::Relaxed);
    }

    /// Completes when the governor closed this connection to make room.
    pub fn kicked(&self) -> impl Future<Output = ()> + Send + 'static {
        let kick = self.kick.clone();
        async move { kick.notified().await }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.governor
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|e| e.id != self.id);
    }
}

/// A stream holding its listener slot: reads and writes count as
/// activity; silence for `idle` ends it, and so does being made room for.
pub struct Governed<S> {
    inner: S,
    ticket: Ticket,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    kicked: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl<S> Governed<S> {
    pub fn new(inner: S, ticket: Ticket, idle: Duration) -> Self {
        let kicked = Box::pin(ticket.kicked());
        Self {
            inner,
            ticket,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            kicked,
        }
    }

    fn active(&mut self) {
        self.ticket.touch();
        self.timer
            .as_mut()
            .reset(tokio::time::Instant::now() + self.idle);
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if self.kicked.as_mut().poll(cx).is_ready() {
            return Some(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed to make room for another peer",
            ));
        }
        self.timer
            .as_mut()
            .poll(cx)
            .is_ready()
            .then(|| io::Error::new(io::ErrorKind::TimedOut, "idle connection closed"))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Governed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.active();
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Governed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                self.active();
                Poll::Ready(Ok(n))
            }
            Poll::Pending => match self.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A TCP listener for the box's HTTP server (`/metrics`, `/status`, the
/// page): connections capped in all and per address, each closed after
/// `idle` of silence, accept failures backed off.
pub struct HttpListener {
    listener: tokio::net::TcpListener,
    governor: Arc<Governor>,
    errors: AcceptErrors,
    refusals: crate::intake::warn_limit::WarnLimit,
    idle: Duration,
}

/// HTTP connections at once, in all and from one address. Scrapers and a
/// technician's browser need a handful.
const HTTP_MAX: usize = 64;
const HTTP_PER_PEER: usize = 16;
/// A browser keeps a connection alive between page refreshes; a scanner
/// that opens connections and says nothing is let go.
const HTTP_IDLE: Duration = Duration::from_secs(30);

impl HttpListener {
    pub fn new(listener: tokio::net::TcpListener) -> Self {
        Self {
            listener,
            governor: Governor::new("http", HTTP_MAX, HTTP_PER_PEER, []),
            errors: AcceptErrors::new("http"),
            refusals: Default::default(),
            idle: HTTP_IDLE,
        }
    }
}

impl axum::serve::Listener for HttpListener {
    type Io = Governed<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    self.errors.ok();
                    match self.governor.admit(peer.ip()) {
                        Ok(ticket) => {
                            let _ = stream.set_nodelay(true);
                            return (Governed::new(stream, ticket, self.idle), peer);
                        }
                        Err(why) => {
                            if let Some(held) = self.refusals.admit(peer.ip()) {
                                tracing::warn!(%peer, reason = %why, held_back = held, "HTTP connection refused");
                            }
                        }
                    }
                }
                Err(e) => {
                    let wait = self.errors.failed(&e);
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        [192, 0, 2, last].into()
    }

    #[test]
    fn one_peer_cannot_take_every_slot() {
        let g = Governor::new("t", 64, 8, [ip(15)]);
        let held: Vec<Ticket> = (0..8).map(|_| g.admit(ip(66)).expect("admitted")).collect();
        assert!(matches!(g.admit(ip(66)), Err(Refusal::PeerFull { .. })));
        assert!(g.admit(ip(15)).is_ok(), "the LIS still gets in");
        drop(held);
    }

    #[test]
    fn a_trusted_peer_takes_the_slot_of_the_most_idle_unknown_one() {
        let g = Governor::new("t", 4, 4, [ip(15)]);
        let held: Vec<Ticket> = (0..4)
            .map(|i| g.admit(ip(100 + i)).expect("admitted"))
            .collect();
        // Unknown peers may not push out connections that are not idle.
        assert!(matches!(g.admit(ip(200)), Err(Refusal::Full { .. })));
        let kicked = held[2].kicked();
        std::thread::sleep(Duration::from_millis(5));
        held[0].touch();
        held[1].touch();
        held[3].touch();
        let lis = g.admit(ip(15)).expect("the LIS gets a slot");
        assert_eq!(g.len(), 4);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("rt");
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(1), kicked)
                .await
                .expect("the most idle unknown connection was told to close");
        });
        drop(lis);
        drop(held);
        assert!(g.is_empty());
    }

    #[test]
    fn failing_accepts_back_off_and_log_once_per_interval() {
        let mut a = AcceptErrors::new("t");
        let e = io::Error::from_raw_os_error(24);
        let waits: Vec<Duration> = (0..20).map(|_| a.failed(&e)).collect();
        assert_eq!(waits[0], Duration::from_millis(20));
        assert_eq!(*waits.last().expect("some"), Duration::from_secs(1));
        assert_eq!(a.since_log, 19, "one line logged, the rest counted");
        a.ok();
        assert_eq!(a.failed(&e), Duration::from_millis(20));
    }
}
