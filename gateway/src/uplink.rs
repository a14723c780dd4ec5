//! The uplink: one QUIC connection to central, re-established with
//! exponential backoff and jitter; a control stream (hello, heartbeats);
//! and one stream per upload, several in flight, urgent lanes first.
//!
//! Every leased item is settled exactly once by the task that uploads it:
//! `ack` only on COMMITTED, `release` when the link failed, `defer` when
//! central is temporarily unable, `nack` or `dead_letter` when central
//! refused the item itself.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use yilian_link::{LinkError, MessageReader, TlsFiles, write_message};
use yilian_protocol::messages::{
    Chunk, Envelope, Heartbeat, HeartbeatAck, Hello, LaneBacklog, Offer, envelope::Body,
};
use yilian_protocol::upload::{
    DEFAULT_IDLE_TIMEOUT, SenderTransmit, UploadError, UploadOutcome, UploadSender,
};
use yilian_protocol::{RejectReason, SUPPORTED_VERSIONS};
use yilian_spool::{Lane, Lease, Payload, Spool, SpoolError};

use crate::bandwidth::Limiter;
use crate::config::UplinkSection;
use crate::metrics::{GatewayMetrics, LaneLabels};

/// What `status` and `/status` show about the link.
#[derive(Debug, Clone, Serialize)]
pub struct LinkStatus {
    pub state: &'static str,
    pub central: String,
    pub since_ms: i64,
    pub identity: Option<String>,
    pub last_error: Option<String>,
    pub rtt_ms: Option<f64>,
}

impl LinkStatus {
    pub fn new(central: &str) -> Self {
        Self {
            state: "connecting",
            central: central.to_owned(),
            since_ms: crate::now_ms(),
            identity: None,
            last_error: None,
            rtt_ms: None,
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
/// Extra upload slots only urgent items may use, so that a STAT ECG never
/// waits behind bulk uploads for a free slot.
const URGENT_EXTRA_SLOTS: usize = 2;
/// How long an item waits when central says it cannot store right now.
const UNAVAILABLE_DELAY: Duration = Duration::from_secs(30);

pub struct Uplink {
    pub config: UplinkSection,
    pub server_name: String,
    /// Read again at every connection, so a renewed certificate is used.
    pub tls: TlsFiles,
    pub spool: Spool,
    pub metrics: GatewayMetrics,
    pub wake: Arc<Notify>,
    pub status: watch::Sender<LinkStatus>,
    pub config_version: String,
    /// Replaced when central sends the clinic's worklist.
    pub worklist: crate::worklist::WorklistCache,
    /// Configuration published at central, and where to validate it.
    pub pushed: crate::pushed::Pushed,
    pub config_source: PathBuf,
    /// Asks the supervisor to restart the gateway with a new configuration.
    pub reload: Arc<Notify>,
}

/// What each heartbeat reports besides the backlog.
#[derive(Clone)]
struct HeartbeatSource {
    spool: Spool,
    metrics: GatewayMetrics,
    config_version: String,
    interval: Duration,
    worklist: crate::worklist::WorklistCache,
    pushed: crate::pushed::Pushed,
    config_source: PathBuf,
    reload: Arc<Notify>,
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

fn lane_priority(lane: Lane) -> i32 {
    match lane {
        Lane::Urgent => 2,
        Lane::Clinical => 1,
        Lane::Bulk => 0,
    }
}

fn wire_lane(lane: Lane) -> yilian_protocol::Lane {
    match lane {
        Lane::Urgent => yilian_protocol::Lane::Urgent,
        Lane::Clinical => yilian_protocol::Lane::Clinical,
        Lane::Bulk => yilian_protocol::Lane::Bulk,
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
        let this = Running {
            uplink: self,
            limiter,
        };
        this.run(stop).await
    }
}

/// The uplink with what lives as long as it runs.
struct Running {
    uplink: Uplink,
    limiter: Arc<Limiter>,
}

impl std::ops::Deref for Running {
    type Target = Uplink;
    fn deref(&self) -> &Uplink {
        &self.uplink
    }
}

/// Publishes the cap in force and the urgent allowance left.
async fn report_bandwidth(
    limiter: Arc<Limiter>,
    metrics: GatewayMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let mut last: Option<Option<f64>> = None;
    loop {
        let cap = limiter.current_cap();
        if last != Some(cap) {
            let shown = crate::bandwidth::Rate(cap);
            tracing::info!(cap = %shown, "upload cap now");
            last = Some(cap);
        }
        metrics.rate_cap.set(cap.map_or(0.0, |bits| bits / 8.0));
        metrics
            .urgent_allowance
            .set(limiter.allowance_left().min(i64::MAX as u64) as i64);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

impl Running {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_millis(500), self.config.reconnect_max);
        let mut endpoint: Option<quinn::Endpoint> = None;
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
                    s.rtt_ms = None;
                });
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
            self.metrics.revoked.set(0);
            let result = self.session(&mut endpoint, &mut stop, &mut backoff).await;
            self.metrics.link_up.set(0);
            let revoked = result
                .as_ref()
                .err()
                .and_then(connection_error)
                .and_then(crate::revocation::notice_of);
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
                    tracing::warn!(central = %self.config.central, error = %msg, "link to central down");
                    self.status.send_modify(|s| {
                        if s.state != "down" {
                            s.since_ms = crate::now_ms();
                        }
                        s.state = "down";
                        s.last_error = Some(msg);
                        s.rtt_ms = None;
                    });
                }
            }
            let wait = backoff.next();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
    }

    async fn resolve(&self) -> Result<SocketAddr, UplinkError> {
        let central = &self.config.central;
        let mut addrs = tokio::net::lookup_host(central.as_str())
            .await
            .map_err(|e| UplinkError::Resolve(central.clone(), e.to_string()))?;
        addrs
            .next()
            .ok_or_else(|| UplinkError::Resolve(central.clone(), "no address".into()))
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
    ) -> Result<(), UplinkError> {
        self.renew_if_expired().await;
        let mut client = yilian_link::client_config(&self.tls)?;
        client.transport_config(yilian_link::transport_config_for(
            self.config
                .idle_timeout
                .unwrap_or(yilian_link::IDLE_TIMEOUT),
            crate::config::congestion(self.config.congestion),
        ));
        let addr = self.resolve().await?;
        let ep = self.endpoint_for(endpoint, addr)?;
        let connecting = ep
            .connect_with(client, addr, &self.server_name)
            .map_err(LinkError::from)?;
        let conn = tokio::select! {
            c = connecting => c?,
            _ = stop.changed() => return Ok(()),
        };
        let identity = self.hello(&conn).await?;
        backoff.reset();
        self.metrics.link_up.set(1);
        self.metrics.link_connects.inc();
        tracing::info!(central = %self.config.central, %addr, identity = %identity, "link to central up");
        self.status.send_modify(|s| {
            s.state = "up";
            s.since_ms = crate::now_ms();
            s.identity = Some(identity.clone());
            s.last_error = None;
        });
        spawn_renewal(conn.clone(), self.tls.clone(), self.metrics.clone());
        let result = self.serve(&conn, stop).await;
        conn.close(0u32.into(), b"gateway closing");
        result
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
        match crate::certificate::renew_expired(&self.tls, &self.config.central, &self.server_name)
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
    async fn hello(&self, conn: &quinn::Connection) -> Result<String, UplinkError> {
        let exchange = async {
            let (mut send, recv) = conn.open_bi().await.map_err(LinkError::from)?;
            let hello = Envelope::new(Body::Hello(Hello {
                protocol_min: *SUPPORTED_VERSIONS.start(),
                protocol_max: *SUPPORTED_VERSIONS.end(),
                software_version: env!("CARGO_PKG_VERSION").to_owned(),
                sent_unix_ms: crate::now_ms(),
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
                            },
                        );
                        tokio::spawn(async move {
                            if let Err(e) = hb.await {
                                tracing::debug!(error = %e, "heartbeat loop ended");
                            }
                        });
                        spawn_rtt_probe(conn.clone(), self.metrics.clone(), self.status.clone());
                        return Ok(id);
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
    ) -> Result<(), UplinkError> {
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
                tasks.spawn(upload_task(
                    conn.clone(),
                    self.spool.clone(),
                    lease,
                    self.config.chunk_size,
                    self.metrics.clone(),
                    self.limiter.clone(),
                ));
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

async fn heartbeat_loop(
    mut send: quinn::SendStream,
    mut reader: MessageReader,
    source: HeartbeatSource,
) -> Result<(), UplinkError> {
    let mut seq = 0u64;
    let spool = source.spool.clone();
    let mut tick = tokio::time::interval(source.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                seq += 1;
                let s = spool.clone();
                let stats = tokio::task::spawn_blocking(move || s.stats()).await.ok().and_then(Result::ok);
                let now = crate::now_ms();
                let backlog = stats.map(|st| {
                    Lane::ALL.iter().map(|&lane| {
                        let l = &st.lanes[lane as usize];
                        LaneBacklog {
                            lane: wire_lane(lane) as i32,
                            items: l.items,
                            bytes: l.bytes,
                            oldest_age_seconds: l.oldest_received_ms.map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0),
                        }
                    }).collect()
                }).unwrap_or_default();
                let hb = Envelope::new(Body::Heartbeat(Heartbeat {
                    seq,
                    sent_unix_ms: now,
                    backlog,
                    metrics_text: source.metrics.encode(),
                    config_version: source.config_version.clone(),
                    certificate_not_after: source.metrics.certificate_expiry.get(),
                    worklist_version: source.worklist.version(),
                    pushed_config_version: source.pushed.version(),
                    pushed_config_error: source.pushed.error(),
                }));
                write_message(&mut send, &hb).await?;
            }
            msg = reader.next() => match msg? {
                Some(Envelope { body: Some(Body::HeartbeatAck(HeartbeatAck { worklist, config, .. })), .. }) => {
                    if let Some(w) = worklist {
                        let (cache, n) = (source.worklist.clone(), w.entries.len());
                        let version = w.version.clone();
                        match tokio::task::spawn_blocking(move || cache.replace(w.version, w.entries)).await {
                            Ok(Ok(())) => tracing::info!(version = %version, entries = n, "worklist updated from central"),
                            _ => tracing::error!("cannot store the worklist central sent; the old one stays in use"),
                        }
                    }
                    if let Some(c) = config {
                        apply_pushed(&source, c).await;
                    }
                }
                Some(_) => {}
                None => return Ok(()),
            }
        }
    }
}

/// Validates configuration published at central; keeps it and asks for a
/// restart with it, or records the refusal that the next heartbeats report.
async fn apply_pushed(source: &HeartbeatSource, push: yilian_protocol::messages::ConfigPush) {
    let pushed = source.pushed.clone();
    let path = source.config_source.clone();
    let version = push.version.clone();
    if version.is_empty() {
        // Withdrawn at central: back to the box's own file.
        let r = tokio::task::spawn_blocking(move || pushed.withdraw()).await;
        if matches!(r, Ok(true)) {
            tracing::info!(
                "the published configuration was withdrawn at central; running with this box's own file"
            );
            source.reload.notify_one();
        }
        return;
    }
    let r =
        tokio::task::spawn_blocking(move || pushed.offer(&path, &push.version, &push.toml)).await;
    match r {
        Ok(Ok(())) => {
            tracing::info!(version = %version, "applying the configuration published at central");
            source.reload.notify_one();
        }
        Ok(Err(reason)) => tracing::error!(version = %version, %reason,
            "refused the configuration published at central; the current one stays in use"),
        Err(_) => {}
    }
}

/// Renews the certificate over this connection once two thirds of its life
/// have passed. The connection keeps its handshake; the next one uses the
/// new certificate.
fn spawn_renewal(conn: quinn::Connection, tls: TlsFiles, metrics: GatewayMetrics) {
    use crate::certificate::{Renewal, renew_online, renewal, validity};
    tokio::spawn(async move {
        loop {
            // Re-read the dates every time: the clock may have jumped.
            let wait = match validity(&tls.cert) {
                None => Duration::from_secs(60),
                Some((nb, na)) => match renewal(nb, na, crate::now_ms() / 1000) {
                    Renewal::NotYet { renew_at } => {
                        Duration::from_secs((renew_at - crate::now_ms() / 1000).clamp(1, 60) as u64)
                    }
                    Renewal::Due | Renewal::Expired => match renew_online(&conn, &tls).await {
                        Ok(i) => {
                            metrics.certificate_expiry.set(i.not_after);
                            tracing::info!(not_after = i.not_after, "box certificate renewed");
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "certificate renewal failed; trying again");
                            Duration::from_secs(((na - nb) / 30).clamp(1, 300) as u64)
                        }
                    },
                },
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = conn.closed() => return,
            }
        }
    });
}

fn spawn_rtt_probe(
    conn: quinn::Connection,
    metrics: GatewayMetrics,
    status: watch::Sender<LinkStatus>,
) {
    tokio::spawn(async move {
        loop {
            let rtt = conn.rtt().as_secs_f64();
            metrics.link_rtt.set(rtt);
            status.send_modify(|s| s.rtt_ms = Some(rtt * 1000.0));
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = conn.closed() => return,
            }
        }
    });
}

#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("central closed the upload stream without a verdict")]
    NoVerdict,
    #[error("upload protocol: {0}")]
    Protocol(#[from] UploadError),
    #[error("local payload: {0}")]
    Payload(String),
}

/// Uploads one leased item and settles the lease.
async fn upload_task(
    conn: quinn::Connection,
    spool: Spool,
    lease: Lease,
    chunk_size: usize,
    metrics: GatewayMetrics,
    limiter: Arc<Limiter>,
) -> Lane {
    let lane = lease.lane;
    let upload_id = lease.upload_id.clone();
    let started = Instant::now();
    let result = attempt(&conn, &spool, &lease, chunk_size, &metrics, &limiter).await;
    let settle = move || -> Result<(), SpoolError> {
        match result {
            Ok(UploadOutcome::Committed) => {
                let size = lease.size;
                spool.ack(lease)?;
                metrics
                    .uploaded_items
                    .get_or_create(&LaneLabels {
                        lane: lane.name().to_owned(),
                    })
                    .inc();
                tracing::debug!(upload = %upload_id, lane = %lane, size, seconds = started.elapsed().as_secs_f64(), "delivered");
            }
            Ok(UploadOutcome::Rejected {
                reason,
                detail,
                retryable,
            }) => {
                metrics.retry(&format!("rejected_{reason:?}").to_lowercase());
                match reason {
                    RejectReason::Unavailable | RejectReason::Forbidden => {
                        tracing::warn!(upload = %upload_id, ?reason, %detail, "central cannot take the item now; retrying later");
                        spool.defer(lease, UNAVAILABLE_DELAY, &detail)?;
                    }
                    RejectReason::TooLarge | RejectReason::InvalidOffer => {
                        tracing::error!(upload = %upload_id, ?reason, %detail, "central refused the item; set aside for an operator");
                        spool.dead_letter(lease, &format!("{reason:?}: {detail}"))?;
                    }
                    _ if retryable || reason == RejectReason::HashMismatch => {
                        tracing::warn!(upload = %upload_id, ?reason, %detail, "upload rejected; will retry");
                        spool.nack(lease, &format!("{reason:?}: {detail}"))?;
                    }
                    _ => {
                        spool.dead_letter(lease, &format!("{reason:?}: {detail}"))?;
                    }
                }
            }
            Ok(UploadOutcome::TimedOut) => {
                metrics.retry("timeout");
                spool.release(lease)?;
            }
            Err(AttemptError::Link(e)) => {
                metrics.retry("link");
                tracing::debug!(upload = %upload_id, error = %e, "upload interrupted; will resume");
                spool.release(lease)?;
            }
            Err(AttemptError::NoVerdict) => {
                metrics.retry("no_verdict");
                spool.release(lease)?;
            }
            Err(AttemptError::Protocol(e)) => {
                metrics.retry("protocol");
                tracing::warn!(upload = %upload_id, error = %e, "upload protocol error");
                spool.nack(lease, &e.to_string())?;
            }
            Err(AttemptError::Payload(e)) => {
                metrics.retry("payload");
                tracing::error!(upload = %upload_id, error = %e, "spooled payload unreadable; set aside for an operator");
                spool.dead_letter(lease, &e)?;
            }
        }
        Ok(())
    };
    match tokio::task::spawn_blocking(settle).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot record upload result; the item will be retried")
        }
        Err(e) => tracing::error!(error = %e, "upload settlement panicked"),
    }
    lane
}

async fn attempt(
    conn: &quinn::Connection,
    spool: &Spool,
    lease: &Lease,
    chunk_size: usize,
    metrics: &GatewayMetrics,
    limiter: &Limiter,
) -> Result<UploadOutcome, AttemptError> {
    let payload = {
        let spool = spool.clone();
        let at = lease.payload_ref();
        tokio::task::spawn_blocking(move || spool.open_payload(&at))
            .await
            .map_err(|e| AttemptError::Payload(e.to_string()))?
            .map_err(|e| AttemptError::Payload(e.to_string()))?
    };
    let payload = Arc::new(payload);
    let offer = Offer {
        upload_id: lease.upload_id.clone(),
        sha256: lease.sha256.to_vec(),
        size: lease.size,
        kind: lease.kind.clone(),
        lane: wire_lane(lease.lane) as i32,
        metadata: lease.metadata.clone(),
        received_unix_ms: lease.received_ms,
        source: lease.source.clone(),
    };
    let mut tx = UploadSender::new(offer, chunk_size, DEFAULT_IDLE_TIMEOUT, Instant::now())?;
    let (mut send, recv) = conn.open_bi().await.map_err(LinkError::from)?;
    let _ = send.set_priority(lane_priority(lease.lane));
    let mut reader = MessageReader::new(recv);
    loop {
        if let Some(outcome) = tx.outcome() {
            let _ = send.finish();
            return Ok(outcome.clone());
        }
        let written = match tx.poll_transmit() {
            Some(SenderTransmit::Message(env)) => write_message(&mut send, &env).await,
            Some(SenderTransmit::Chunk { offset, len }) => {
                let data = read_chunk(payload.clone(), offset, len).await?;
                let env = Envelope::new(Body::Chunk(Chunk { offset, data }));
                let urgent = lease.lane == Lane::Urgent;
                let r = write_paced(&mut send, &env, limiter, urgent, metrics).await;
                if r.is_ok() {
                    metrics.uploaded_bytes.inc_by(len as u64);
                }
                r
            }
            None => {
                let next = match tx.poll_timeout() {
                    Some(deadline) => {
                        match tokio::time::timeout_at(deadline.into(), reader.next()).await {
                            Ok(r) => r?,
                            Err(_) => {
                                tx.handle_timeout(Instant::now());
                                continue;
                            }
                        }
                    }
                    None => reader.next().await?,
                };
                match next {
                    Some(env) => tx.handle_message(env, Instant::now())?,
                    None => return Err(AttemptError::NoVerdict),
                }
                continue;
            }
        };
        if let Err(e) = written {
            // Central may have stopped the stream after rejecting: its
            // verdict would be waiting on the receive side.
            if let Ok(Ok(Some(env))) =
                tokio::time::timeout(Duration::from_secs(2), reader.next()).await
            {
                tx.handle_message(env, Instant::now())?;
                if tx.outcome().is_some() {
                    continue;
                }
            }
            return Err(AttemptError::Link(e));
        }
    }
}

/// Piece of a chunk written at a time under a cap: small enough that a
/// thin line is not flooded in one burst.
const PACED_PIECE: usize = 16 * 1024;

/// Writes one message, in pieces paced by the bandwidth cap when one is
/// in force.
async fn write_paced(
    send: &mut quinn::SendStream,
    env: &Envelope,
    limiter: &Limiter,
    urgent: bool,
    metrics: &GatewayMetrics,
) -> Result<(), LinkError> {
    if limiter.current_cap().is_none() {
        return write_message(send, env).await;
    }
    let mut frame = yilian_protocol::encode_frame(env);
    while !frame.is_empty() {
        let piece = frame.split_to(frame.len().min(PACED_PIECE));
        let waited = limiter.acquire(piece.len(), urgent).await;
        metrics.throttled.inc_by(waited.as_secs_f64());
        send.write_chunk(piece).await.map_err(LinkError::from)?;
    }
    Ok(())
}

async fn read_chunk(payload: Arc<Payload>, offset: u64, len: usize) -> Result<Bytes, AttemptError> {
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len];
        payload
            .read_exact_at(&mut buf, offset)
            .map(|_| Bytes::from(buf))
            .map_err(|e| AttemptError::Payload(format!("read at {offset}: {e}")))
    })
    .await
    .map_err(|e| AttemptError::Payload(e.to_string()))?
}
