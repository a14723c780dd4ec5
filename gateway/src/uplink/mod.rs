//! The uplink: one QUIC connection to central, re-established with
//! exponential backoff and jitter; a control stream (hello, heartbeats);
//! and one stream per upload, several in flight, urgent lanes first.
//!
//! One module per stream or task on the connection:
//!
//! - this one: connecting, hello, and leasing items into upload tasks;
//! - [`control`] — the control stream: heartbeats out, worklists and
//!   published configuration in;
//! - [`upload`] — one stream per item, paced by the bandwidth cap;
//! - [`renewal`] — certificate renewal over the live connection;
//! - [`probe`] — the round-trip time shown in metrics and status;
//! - reports down, on streams central opens ([`crate::reports::downlink`]).

mod control;
mod probe;
mod renewal;
mod upload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use yilian_link::{LinkError, MessageReader, TlsFiles, write_message};
use yilian_protocol::SUPPORTED_VERSIONS;
use yilian_protocol::messages::{Envelope, Hello, envelope::Body};
use yilian_spool::{Lane, Spool, SpoolError};

use crate::bandwidth::Limiter;
use crate::config::UplinkSection;
use crate::metrics::GatewayMetrics;
use control::{HeartbeatSource, heartbeat_loop};
use probe::spawn_rtt_probe;
use renewal::spawn_renewal;
use upload::{report_bandwidth, upload_task};

/// What `status` and `/status` show about the link.
#[derive(Debug, Clone, Serialize)]
pub struct LinkStatus {
    pub state: &'static str,
    pub central: String,
    pub since_ms: i64,
    pub identity: Option<String>,
    pub last_error: Option<String>,
    /// What the last error means for a person: a catalogue key
    /// (`link-why-…`) saying what to check.
    pub last_error_key: Option<&'static str>,
    pub rtt_ms: Option<f64>,
    /// This box's clock minus central's, from the last heartbeat answered.
    pub clock_offset_ms: Option<i64>,
}

impl LinkStatus {
    pub fn new(central: &str) -> Self {
        Self {
            state: "connecting",
            central: central.to_owned(),
            since_ms: crate::now_ms(),
            identity: None,
            last_error: None,
            last_error_key: None,
            rtt_ms: None,
            clock_offset_ms: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, String),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("central did not answer hello within {0:?}")]
    HelloTimeout(Duration),
    #[error("central closed the control stream during hello")]
    HelloClosed,
    #[error("central refused the session: {0}")]
    Goodbye(String),
    #[error("connection lost: {0}")]
    Lost(#[from] quinn::ConnectionError),
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
}

const HELLO_TIMEOUT: Duration = Duration::from_secs(15);
/// While central does not answer, a new try every second: each is one
/// QUIC Initial (about 1.2 kB), and the link is found within a second or
/// two of its return instead of after a doubling retransmission timer or
/// backoff. After ten minutes of silence, every five seconds, so a long
/// outage on a metered line costs about 1 kB/s at most.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_EVERY_LONG_DOWN: Duration = Duration::from_secs(5);
const LONG_DOWN: Duration = Duration::from_secs(600);
/// A try not answered within this is dropped; newer ones are on the way.
const TRY_LIFE: Duration = Duration::from_secs(4);
/// Silence this long is reported as the link being down (status, log).
const REPORT_SILENCE: Duration = Duration::from_secs(30);
/// Extra upload slots only urgent items may use, so that a STAT ECG never
/// waits behind bulk uploads for a free slot.
const URGENT_EXTRA_SLOTS: usize = 2;

pub struct Uplink {
    pub config: UplinkSection,
    pub server_name: String,
    /// Read again at every connection, so a renewed certificate is used.
    pub tls: TlsFiles,
    pub spool: Spool,
    pub metrics: GatewayMetrics,
    pub wake: Arc<Notify>,
    /// Told when an item is delivered or set aside.
    pub settled: crate::settled::Settled,
    pub status: watch::Sender<LinkStatus>,
    pub config_version: String,
    /// Replaced when central sends the clinic's worklist.
    pub worklist: crate::worklist::WorklistCache,
    /// Configuration published at central, and where to validate it.
    pub pushed: crate::pushed::Pushed,
    pub config_source: PathBuf,
    /// Asks the supervisor to restart the gateway with a new configuration.
    pub reload: Arc<Notify>,
    /// Takes the reports central sends down.
    pub downlink: crate::reports::Downlink,
}

/// Exponential backoff with full jitter between half and all of the step.
struct Backoff {
    step: Duration,
    base: Duration,
    max: Duration,
}

impl Backoff {
    fn new(base: Duration, max: Duration) -> Self {
        Self {
            step: base,
            base,
            max,
        }
    }

    fn next(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    fn reset(&mut self) {
        self.step = self.base;
    }
}

impl Uplink {
    /// Runs until `stop` turns true.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        let limiter = Arc::new(Limiter::new(crate::config::bandwidth_policy(&self.config)));
        if !limiter.policy().is_unlimited() {
            tracing::info!(
                default = %limiter.policy().default,
                windows = limiter.policy().windows.len(),
                "bandwidth schedule in force"
            );
        }
        tokio::spawn(report_bandwidth(
            limiter.clone(),
            self.metrics.clone(),
            stop.clone(),
        ));
        let sharing = yilian_link::LineSharing::new(self.config.share_line);
        let this = Running {
            uplink: self,
            limiter,
            sharing,
        };
        this.run(stop).await
    }
}

/// The uplink with what lives as long as it runs.
struct Running {
    uplink: Uplink,
    limiter: Arc<Limiter>,
    /// Whether only bulk data is in flight, for the congestion
    /// controller's yielding (`[uplink] share_line`).
    sharing: Arc<yilian_link::LineSharing>,
}

impl std::ops::Deref for Running {
    type Target = Uplink;
    fn deref(&self) -> &Uplink {
        &self.uplink
    }
}

impl Running {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_millis(500), self.config.reconnect_max);
        let mut endpoint: Option<quinn::Endpoint> = None;
        let mut down_since = tokio::time::Instant::now();
        loop {
            if *stop.borrow() {
                return;
            }
            if let Some(r) = crate::revocation::load(&self.tls.cert) {
                // Revoked: say so, and look again only for a new identity
                // (enrolled with a new token), not at central.
                self.metrics.link_up.set(0);
                self.metrics.revoked.set(1);
                self.status.send_modify(|s| {
                    if s.state != "revoked" {
                        s.since_ms = r.at_ms;
                        tracing::error!(notice = %r.notice,
                            "this box was revoked by central; it no longer connects. Enroll it again with a new token if it should work");
                    }
                    s.state = "revoked";
                    s.last_error = Some(r.notice.clone());
                    s.last_error_key = Some("link-why-revoked");
                    s.rtt_ms = None;
                });
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
            self.metrics.revoked.set(0);
            let result = self
                .session(&mut endpoint, &mut stop, &mut backoff, down_since)
                .await;
            if self.metrics.link_up.get() == 1 {
                down_since = tokio::time::Instant::now();
            }
            self.metrics.link_up.set(0);
            let revoked = result
                .as_ref()
                .err()
                .and_then(connection_error)
                .and_then(crate::revocation::notice_of);
            let silent = matches!(
                result.as_ref().err().and_then(connection_error),
                Some(quinn::ConnectionError::TimedOut)
            );
            if let Some(notice) = revoked {
                if let Err(e) = crate::revocation::record(&self.tls.cert, &notice) {
                    tracing::warn!(error = %e, "cannot keep central's revocation notice");
                }
                continue;
            }
            match result {
                Ok(()) => return,
                Err(e) => {
                    let msg = e.to_string();
                    let key = why_key(&e);
                    tracing::warn!(central = %self.config.central, error = %msg, "link to central down");
                    self.status.send_modify(|s| {
                        if s.state != "down" {
                            s.since_ms = crate::now_ms();
                        }
                        s.state = "down";
                        s.last_error = Some(msg);
                        s.last_error_key = Some(key);
                        s.rtt_ms = None;
                    });
                }
            }
            // Silence (a cut link, or one that just died) is probed at a
            // fixed pace inside the next session; only an answer that
            // refused is backed off from.
            if silent {
                continue;
            }
            let wait = backoff.next();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Central's addresses, this box's preferred instance first (see
    /// `yilian_link::instances`): every entry of `uplink.central`, every
    /// address each name has.
    async fn candidates(&self) -> Result<Vec<SocketAddr>, UplinkError> {
        use yilian_link::instances::{by_preference, central_entries};
        let central = &self.config.central;
        let mut addrs = Vec::new();
        let mut last_error = None;
        for entry in central_entries(central) {
            match tokio::net::lookup_host(entry).await {
                Ok(found) => addrs.extend(found),
                Err(e) => last_error = Some(format!("{entry}: {e}")),
            }
        }
        if addrs.is_empty() {
            return Err(UplinkError::Resolve(
                central.clone(),
                last_error.unwrap_or_else(|| "no address".into()),
            ));
        }
        // The box's identity from its certificate; the server name if the
        // certificate cannot be read (the connection will say why).
        let key = yilian_link::load_cert_chain(&self.tls.cert)
            .ok()
            .and_then(|chain| chain.into_iter().next())
            .and_then(|der| yilian_pki::identity::identity_from_certificate(&der).ok())
            .map_or_else(|| self.server_name.clone(), |id| id.to_string());
        // One socket per session, of the family the resolver put first (as
        // with one address: a name with an AAAA record on a clinic line
        // without IPv6 routing must not be tried over IPv6); among those,
        // this box's preference.
        let v6 = addrs.first().is_some_and(SocketAddr::is_ipv6);
        addrs.retain(|a| a.is_ipv6() == v6);
        Ok(by_preference(&key, addrs))
    }

    fn endpoint_for(
        &self,
        slot: &mut Option<quinn::Endpoint>,
        remote: SocketAddr,
    ) -> Result<quinn::Endpoint, UplinkError> {
        if let Some(ep) = slot
            && ep
                .local_addr()
                .map(|a| a.is_ipv6() == remote.is_ipv6())
                .unwrap_or(false)
        {
            return Ok(ep.clone());
        }
        let local: SocketAddr = if remote.is_ipv6() {
            "[::]:0"
                .parse()
                .map_err(|_| UplinkError::Resolve("[::]:0".into(), "bad".into()))?
        } else {
            SocketAddr::from(([0, 0, 0, 0], 0))
        };
        let socket = yilian_link::bind_udp(local)?;
        let runtime = quinn::default_runtime().ok_or_else(|| {
            UplinkError::Link(LinkError::Socket(std::io::Error::other("no async runtime")))
        })?;
        let ep = quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
            .map_err(|e| UplinkError::Link(LinkError::Socket(e)))?;
        *slot = Some(ep.clone());
        Ok(ep)
    }

    /// One connection's life. `Ok` only when stopped on purpose.
    async fn session(
        &self,
        endpoint: &mut Option<quinn::Endpoint>,
        stop: &mut watch::Receiver<bool>,
        backoff: &mut Backoff,
        down_since: tokio::time::Instant,
    ) -> Result<(), UplinkError> {
        self.renew_if_expired().await;
        let mut client = yilian_link::client_config(&self.tls)?;
        // What a cut loses (and the reconnect sends again) is what is
        // unacknowledged at that moment: one chunk per upload slot, not
        // quinn's default of everything the streams will buffer. Our
        // controller keeps about one bandwidth-delay product in flight
        // (at most ~0.4 MB on the clinic links), so that is enough; quinn's
        // BBR inflates the round trip with its own queue and needs about
        // 4 MiB for its goodput (measured: 4G 92 % → 89 %, satellite
        // 80 % → 72 % at 1.5 MiB).
        let per_slot = self.config.chunk_size * (self.config.max_in_flight + URGENT_EXTRA_SLOTS);
        let send_window = match self.config.congestion {
            crate::config::Congestion::Bounded => per_slot,
            _ => per_slot.max(4 << 20),
        } as u64;
        client.transport_config(yilian_link::transport_config_sending(
            self.config
                .idle_timeout
                .unwrap_or(yilian_link::IDLE_TIMEOUT),
            crate::config::congestion(self.config.congestion),
            send_window,
            Some(self.sharing.clone()),
        ));
        let addrs = self.candidates().await?;
        let ep = self.endpoint_for(endpoint, addrs[0])?;
        let Some(conn) = self.reach(&ep, client, &addrs, stop, down_since).await? else {
            return Ok(());
        };
        let addr = conn.remote_address();
        let (identity, version) = self.hello(&conn).await?;
        backoff.reset();
        self.metrics.link_up.set(1);
        self.metrics.link_connects.inc();
        tracing::info!(central = %self.config.central, %addr, identity = %identity, "link to central up");
        self.status.send_modify(|s| {
            s.state = "up";
            s.since_ms = crate::now_ms();
            s.identity = Some(identity.clone());
            s.last_error = None;
            s.last_error_key = None;
        });
        spawn_renewal(conn.clone(), self.tls.clone(), self.metrics.clone());
        tokio::spawn(self.downlink.clone().serve(conn.clone()));
        let result = self.serve(&conn, stop, version).await;
        conn.close(0u32.into(), b"gateway closing");
        result
    }

    /// Tries central every [`PROBE_EVERY`] (several tries in flight, each
    /// dropped after [`TRY_LIFE`]) until one connects. With several
    /// instances the tries go round them, preferred first: a live
    /// preferred instance answers within a round trip, long before the
    /// next try; a dead one is passed over a second later. An answer that
    /// refuses ends it with that error; silence for [`REPORT_SILENCE`]
    /// ends it as timed out, to be reported and probed again at once.
    /// `None` when stopped.
    async fn reach(
        &self,
        ep: &quinn::Endpoint,
        client: quinn::ClientConfig,
        addrs: &[SocketAddr],
        stop: &mut watch::Receiver<bool>,
        down_since: tokio::time::Instant,
    ) -> Result<Option<quinn::Connection>, UplinkError> {
        use quinn::ConnectionError;
        let started = tokio::time::Instant::now();
        let mut tries: JoinSet<Result<quinn::Connection, ConnectionError>> = JoinSet::new();
        let mut next = started;
        let mut round = addrs.iter().cycle();
        loop {
            let now = tokio::time::Instant::now();
            if now >= next
                && let Some(&addr) = round.next()
            {
                let connecting = ep
                    .connect_with(client.clone(), addr, &self.server_name)
                    .map_err(LinkError::from)?;
                tries.spawn(async move {
                    tokio::time::timeout(TRY_LIFE, connecting)
                        .await
                        .unwrap_or(Err(ConnectionError::TimedOut))
                });
                let every = if now.duration_since(down_since) > LONG_DOWN {
                    PROBE_EVERY_LONG_DOWN
                } else {
                    PROBE_EVERY
                };
                next = now + every;
            }
            tokio::select! {
                Some(done) = tries.join_next() => match done {
                    Ok(Ok(conn)) => {
                        // Tries still under way may connect too: closed
                        // at once, so central does not hold them until its
                        // idle timeout.
                        tokio::spawn(async move {
                            while let Some(other) = tries.join_next().await {
                                if let Ok(Ok(c)) = other {
                                    c.close(0u32.into(), b"superseded by another try");
                                }
                            }
                        });
                        return Ok(Some(conn));
                    }
                    Ok(Err(ConnectionError::TimedOut)) | Err(_) => {
                        if started.elapsed() >= REPORT_SILENCE {
                            return Err(UplinkError::Lost(ConnectionError::TimedOut));
                        }
                    }
                    Ok(Err(e)) => return Err(e.into()),
                },
                _ = tokio::time::sleep_until(next) => {}
                _ = stop.changed() => return Ok(None),
            }
        }
    }

    /// A certificate that expired (while the box was offline, or because
    /// the clock jumped) cannot open the link; renew it by proving the old
    /// key, over a connection without a certificate.
    async fn renew_if_expired(&self) {
        let Some((nb, na)) = crate::certificate::validity(&self.tls.cert) else {
            return;
        };
        if crate::certificate::renewal(nb, na, crate::now_ms() / 1000)
            != crate::certificate::Renewal::Expired
        {
            return;
        }
        tracing::warn!(
            expired = na,
            "the box certificate has expired; asking central to renew it with proof of the old key"
        );
        match crate::certificate::renew_expired(
            &self.tls,
            yilian_link::instances::first_entry(&self.config.central),
            &self.server_name,
        )
        .await
        {
            Ok(i) => {
                self.metrics.certificate_expiry.set(i.not_after);
                tracing::info!(identity = %i.identity, not_after = i.not_after, "certificate renewed after expiry");
            }
            Err(e) => tracing::error!(error = %e,
                "cannot renew the expired certificate; if the grace period has passed, enroll again with a new token"),
        }
    }

    /// The hello exchange. With TLS 1.3, a client whose certificate central
    /// refuses still sees the handshake complete; this first exchange is the
    /// proof that central accepted us.
    /// The identity central read and the protocol version it chose.
    async fn hello(&self, conn: &quinn::Connection) -> Result<(String, u32), UplinkError> {
        let exchange = async {
            let (mut send, recv) = conn.open_bi().await.map_err(LinkError::from)?;
            let hello = Envelope::new(Body::Hello(Hello {
                protocol_min: *SUPPORTED_VERSIONS.start(),
                protocol_max: *SUPPORTED_VERSIONS.end(),
                software_version: env!("CARGO_PKG_VERSION").to_owned(),
                sent_unix_ms: crate::now_ms(),
                takes_reports: true,
            }));
            write_message(&mut send, &hello).await?;
            let mut reader = MessageReader::new(recv);
            loop {
                match reader.next().await? {
                    Some(Envelope {
                        body: Some(Body::HelloAck(ack)),
                    }) => {
                        // The control stream stays open for heartbeats.
                        let id = ack.identity.clone();
                        let hb = heartbeat_loop(
                            send,
                            reader,
                            HeartbeatSource {
                                spool: self.spool.clone(),
                                metrics: self.metrics.clone(),
                                config_version: self.config_version.clone(),
                                interval: self.config.heartbeat_interval,
                                worklist: self.worklist.clone(),
                                pushed: self.pushed.clone(),
                                config_source: self.config_source.clone(),
                                reload: self.reload.clone(),
                                status: self.status.clone(),
                                reports: self.downlink.store.clone(),
                            },
                        );
                        tokio::spawn(async move {
                            if let Err(e) = hb.await {
                                tracing::debug!(error = %e, "heartbeat loop ended");
                            }
                        });
                        spawn_rtt_probe(conn.clone(), self.metrics.clone(), self.status.clone());
                        return Ok((id, ack.protocol_version));
                    }
                    Some(Envelope {
                        body: Some(Body::Goodbye(bye)),
                    }) => return Err(UplinkError::Goodbye(bye.reason)),
                    Some(_) => continue,
                    // The stream ended: say why when the connection knows
                    // (a refused certificate closes it right here).
                    None => {
                        return Err(conn
                            .close_reason()
                            .map_or(UplinkError::HelloClosed, UplinkError::Lost));
                    }
                }
            }
        };
        match tokio::time::timeout(HELLO_TIMEOUT, exchange).await {
            Ok(r) => r.map_err(|e| match e {
                UplinkError::Link(LinkError::Connection(c)) | UplinkError::Lost(c) => {
                    tracing::error!(
                        central = %self.config.central, error = %c,
                        "central ended the session during hello; if this says 'certificate', this box's \
                         certificate is expired, revoked or not from the fleet CA"
                    );
                    UplinkError::Lost(c)
                }
                other => other,
            }),
            Err(_) => Err(UplinkError::HelloTimeout(HELLO_TIMEOUT)),
        }
    }

    /// Leases and uploads items until the connection ends or `stop`.
    async fn serve(
        &self,
        conn: &quinn::Connection,
        stop: &mut watch::Receiver<bool>,
        version: u32,
    ) -> Result<(), UplinkError> {
        let plan = upload::ChunkPlan {
            chunk_size: self.config.chunk_size,
            // Version 2 centrals take an item's bytes right behind its
            // offer, a round trip sooner.
            send_ahead: version >= 2,
        };
        let mut tasks: JoinSet<Lane> = JoinSet::new();
        let mut in_flight = 0usize;
        let max = self.config.max_in_flight;
        loop {
            // Fill the free slots, most urgent lane first.
            loop {
                let lanes: &[Lane] = if in_flight < max {
                    &Lane::ALL
                } else if in_flight < max + URGENT_EXTRA_SLOTS {
                    &[Lane::Urgent]
                } else {
                    break;
                };
                let spool = self.spool.clone();
                let lanes = lanes.to_vec();
                let lease = tokio::task::spawn_blocking(move || spool.lease(&lanes))
                    .await
                    .map_err(|e| SpoolError::Damaged {
                        upload_id: String::new(),
                        detail: e.to_string(),
                    })??;
                let Some(lease) = lease else { break };
                in_flight += 1;
                // Urgent and clinical items take the line as they need it.
                let priority = (lease.lane != Lane::Bulk).then(|| self.sharing.priority_upload());
                let upload = upload_task(
                    conn.clone(),
                    self.spool.clone(),
                    lease,
                    plan,
                    self.metrics.clone(),
                    self.limiter.clone(),
                    self.settled.clone(),
                );
                tasks.spawn(async move {
                    let _priority = priority;
                    upload.await
                });
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                // Items deferred or backing off become ready with time.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                Some(_) = tasks.join_next() => in_flight -= 1,
                reason = conn.closed() => {
                    // The tasks fail fast on a closed connection and
                    // release their leases; wait for that.
                    while tasks.join_next().await.is_some() {}
                    return Err(UplinkError::Lost(reason));
                }
                _ = stop.changed() => {
                    conn.close(0u32.into(), b"gateway stopping");
                    while tasks.join_next().await.is_some() {}
                    return Ok(());
                }
            }
        }
    }
}

/// What a link failure means for the technician (a catalogue key): the
/// clinic's internet, central, or this box's certificate.
fn why_key(e: &UplinkError) -> &'static str {
    use quinn::ConnectionError as C;
    match e {
        UplinkError::Resolve(..) => "link-why-resolve",
        UplinkError::HelloTimeout(_) => "link-why-timeout",
        UplinkError::Goodbye(_) => "link-why-refused",
        UplinkError::Spool(_) => "link-why-box",
        other => match connection_error(other) {
            Some(C::TimedOut) => "link-why-timeout",
            Some(C::TransportError(t)) if t.to_string().contains("certificate") => {
                "link-why-certificate"
            }
            Some(C::ConnectionClosed(c))
                if c.reason.to_ascii_lowercase().starts_with(b"certificate") =>
            {
                "link-why-certificate"
            }
            Some(C::ApplicationClosed(_) | C::ConnectionClosed(_) | C::Reset) => "link-why-closed",
            Some(_) => "link-why-network",
            None => match other {
                UplinkError::Link(LinkError::Socket(_) | LinkError::Connect(_)) => {
                    "link-why-network"
                }
                UplinkError::Link(
                    LinkError::File { .. }
                    | LinkError::Pem { .. }
                    | LinkError::Tls(_)
                    | LinkError::Verifier(_),
                ) => "link-why-certificate",
                _ => "link-why-network",
            },
        },
    }
}

/// The connection's own error inside an uplink error, wherever it surfaced:
/// the connection itself, or the first stream written to or read from
/// (TLS 1.3 client authentication fails only there).
fn connection_error(e: &UplinkError) -> Option<&quinn::ConnectionError> {
    match e {
        UplinkError::Lost(c) | UplinkError::Link(LinkError::Connection(c)) => Some(c),
        UplinkError::Link(LinkError::Write(quinn::WriteError::ConnectionLost(c))) => Some(c),
        UplinkError::Link(LinkError::Read(quinn::ReadError::ConnectionLost(c))) => Some(c),
        _ => None,
    }
}
