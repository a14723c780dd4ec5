//! Yilian gateway: the clinic box.
//!
//! - [`config`] — `gateway.toml`.
//! - [`content`] — what a payload is: kind, metadata, STAT, quarantine.
//! - [`intake`] — device adapters feeding the spool.
//! - [`uplink`] — the QUIC link to central and the upload loop.
//! - [`metrics`], [`http`]: Prometheus metrics and local status.
//! - [`reports`] — reports from the hospital, delivered at the clinic.
//! - [`pushed`] — configuration published at central, laid over the box's file.
//! - [`certificate`] — enrollment and renewal of the box certificate.
//! - [`enrollment`] — `enroll`, and first boot from an offline bundle.
//! - [`service`] — systemd readiness, status, watchdog, journald.
//! - [`status`] — what `yilian-gateway status` prints.

#![forbid(unsafe_code)]

pub mod bandwidth;
pub mod board;
pub mod certificate;
pub use yilian_gateway_config::clock;
pub mod config;
pub mod content;
pub mod enrollment;
pub mod governor;
pub mod http;
pub mod i18n;
pub mod intake;
pub mod metrics;
pub mod page;
pub mod pushed;
pub mod reports;
pub mod revocation;
pub mod service;
pub mod settled;
pub mod status;
pub mod uplink;
pub mod worklist;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{Notify, watch};
use yilian_link::client_config;
use yilian_spool::Spool;

pub use config::GatewayConfig;
use metrics::GatewayMetrics;
use uplink::{LinkStatus, Uplink};

/// The box cannot run until a person does something: enroll it, or fix its
/// configuration. `run` exits with EX_CONFIG (78), which the unit does not
/// restart on.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotConfigured(pub String);

/// The exit status for [`NotConfigured`] and configuration errors.
pub const EX_CONFIG: u8 = 78;

/// Whether `e` is something only a person can fix (a restart will not).
pub fn needs_a_person(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<NotConfigured>().is_some()
            || c.downcast_ref::<config::ConfigError>().is_some()
    })
}

pub use yilian_proof::disk::now_ms;

/// A running gateway.
#[derive(Debug)]
pub struct Running {
    pub metrics_addr: SocketAddr,
    /// Where the box's page listens, when it is enabled.
    pub page_addr: Option<SocketAddr>,
    pub spool: Spool,
    /// Reports from the hospital held on this box.
    pub reports: reports::ReportStore,
    pub metrics: GatewayMetrics,
    pub link: watch::Receiver<LinkStatus>,
    /// Notified when configuration published at central was accepted and
    /// the gateway should restart with it.
    pub reload: Arc<Notify>,
    stop: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Running {
    /// Stops intake first, then the uplink; in-flight spool commits finish
    /// (they run on blocking threads the runtime waits for).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Opens the spool (running its recovery), binds the local listeners and
/// starts the intake adapters and the uplink. Returns once all are bound:
/// the point at which the service is ready.
pub async fn start(mut config: GatewayConfig) -> anyhow::Result<Running> {
    // A PIN given at enrollment, when the configuration sets none.
    if config.page.pin.is_none() {
        config.page.pin = enrollment::stored_pin(&config.identity_dir());
    }
    if config.uplink.central.is_empty() {
        return Err(NotConfigured(format!(
            "this box is not enrolled yet ({} names no central, and {} holds no enrollment): \
             run `yilian-gateway enroll --token TOKEN`, or insert the USB stick with its yilian-bundle and start again",
            config.source.display(),
            config.identity.dir.display()
        ))
        .into());
    }
    let tls = config::tls_files(&config);
    if config.uplink.cert.is_none() && !tls.cert.exists() {
        return Err(NotConfigured(format!(
            "this box is not enrolled yet: there is no certificate in {}; \
             run `yilian-gateway enroll --token TOKEN` (or insert the USB stick with its yilian-bundle)",
            config.identity_dir().display()
        ))
        .into());
    }
    let spool_config = config.spool_config();
    let spool = tokio::task::spawn_blocking(move || Spool::open(spool_config))
        .await?
        .with_context(|| format!("opening the spool in {}", config.spool.dir.display()))?;
    let metrics = GatewayMetrics::new();
    // Fail at start-up on unusable files, with the file named.
    client_config(&tls).context("loading the gateway's TLS files")?;
    let not_after = yilian_link::load_cert_chain(&tls.cert)
        .ok()
        .and_then(|chain| {
            chain
                .first()
                .and_then(|c| yilian_link::certificate_not_after(c).ok())
        })
        .unwrap_or(0);
    metrics.certificate_expiry.set(not_after);
    metrics
        .config_info
        .get_or_create(&metrics::VersionLabels {
            version: config.version.chars().take(12).collect(),
        })
        .set(1);
    let (status_tx, status_rx) = watch::channel(LinkStatus::new(&config.uplink.central));
    let (metrics_addr, http) =
        http::bind(config.metrics.listen, metrics.clone(), status_rx.clone())
            .await
            .with_context(|| {
                format!("binding the metrics listener on {}", config.metrics.listen)
            })?;

    let worklist = worklist::WorklistCache::load(&config.spool.dir.join("worklist.json"));
    let (stop, stop_rx) = watch::channel(false);
    let wake = Arc::new(Notify::new());
    let mut tasks = tokio::task::JoinSet::new();

    let settled = settled::Settled::default();
    let board = board::DeviceBoard::new(i64::from(config.uplink.utc_offset.0.whole_seconds()));
    let shared = intake::Shared {
        spool: spool.clone(),
        metrics: metrics.clone(),
        wake: wake.clone(),
        worklist: worklist.clone(),
        spool_dir: config.spool.dir.clone(),
        settled: settled.clone(),
        board: board.clone(),
        open_senders: Arc::default(),
    };
    for source in intake::sources(&config, &shared) {
        // Every configured device has its series from the start, so a
        // device that never sent is visible (and can alert) before its
        // first item.
        let intake = source.intake();
        metrics.register_device(intake.family(), intake.device());
        tasks.spawn(source.start(stop_rx.clone()).await?);
    }
    let reports = {
        let dir = config.spool.dir.clone();
        tokio::task::spawn_blocking(move || reports::ReportStore::open(&dir))
            .await?
            .with_context(|| {
                format!(
                    "opening the report store in {}",
                    config.spool.dir.join("reports").display()
                )
            })?
    };
    let arrived = Arc::new(Notify::new());
    reports::sinks::spawn_all(
        &config.report_sink,
        &config.hl7,
        &shared.open_senders,
        &reports,
        &metrics,
        &arrived,
        clock::Clock::of(&config),
        &stop_rx,
        &mut tasks,
    );
    let downlink = reports::Downlink {
        store: reports.clone(),
        sinks: config.report_sink.clone(),
        metrics: metrics.clone(),
        arrived,
    };
    let reload = Arc::new(Notify::new());
    let uplink = Uplink {
        server_name: config.server_name(),
        config: config.uplink.clone(),
        tls,
        spool: spool.clone(),
        metrics: metrics.clone(),
        wake,
        settled,
        status: status_tx,
        config_version: config.version.clone(),
        worklist: worklist.clone(),
        pushed: pushed::Pushed::open(&config.spool.dir),
        config_source: config.source.clone(),
        reload: reload.clone(),
        downlink,
    };
    tasks.spawn(uplink.run(stop_rx.clone()));
    tasks.spawn(housekeeping(
        spool.clone(),
        reports.clone(),
        config.spool.retention,
        metrics.clone(),
        stop_rx.clone(),
    ));
    let page_addr = if config.page.enabled {
        let state = page::PageState {
            config: Arc::new(config.clone()),
            spool: spool.clone(),
            metrics: metrics.clone(),
            link: status_rx.clone(),
            board: board.clone(),
            sessions: Default::default(),
            reports: reports.clone(),
        };
        // The page is for people; the data does not need it. A box that
        // cannot serve it still moves every ECG and image.
        match page::bind(config.page.listen, state).await {
            Ok((addr, serve)) => {
                let mut page_stop = stop_rx.clone();
                tasks.spawn(async move {
                    tokio::select! {
                        r = serve => if let Err(e) = r { tracing::error!(error = %e, "the box's page failed") },
                        _ = page_stop.changed() => {}
                    }
                });
                tracing::info!(%addr, "the box's page is served");
                Some(addr)
            }
            Err(e) => {
                tracing::error!(addr = %config.page.listen, error = %e,
                    "cannot serve the box's page (another program holds the port?); the box works without it. Set [page] listen to a free address");
                None
            }
        }
    } else {
        None
    };
    let mut http_stop = stop_rx;
    tasks.spawn(async move {
        tokio::select! {
            r = http => if let Err(e) = r { tracing::error!(error = %e, "metrics listener failed") },
            _ = http_stop.changed() => {}
        }
    });
    tracing::info!(%metrics_addr, central = %config.uplink.central, folders = config.folder.len(), "gateway ready");
    Ok(Running {
        metrics_addr,
        page_addr,
        spool,
        reports,
        metrics,
        link: status_rx,
        reload,
        stop,
        tasks,
    })
}

/// Refreshes spool gauges and purges delivered items past retention.
async fn housekeeping(
    spool: Spool,
    reports: reports::ReportStore,
    retention: Duration,
    metrics: GatewayMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut last_purge = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let r = reports.clone();
        if let Ok(Ok((_, sinks))) = tokio::task::spawn_blocking(move || r.counts()).await {
            for (sink, c) in sinks {
                metrics
                    .reports_waiting
                    .get_or_create(&metrics::SinkLabels { sink })
                    .set(c.waiting as i64);
            }
        }
        let s = spool.clone();
        let purge = last_purge.elapsed() > Duration::from_secs(600);
        if purge {
            // Reports delivered at the clinic go after the same retention
            // as delivered items.
            let r = reports.clone();
            match tokio::task::spawn_blocking(move || r.purge(retention)).await {
                Ok(Ok(n)) if n > 0 => {
                    tracing::info!(reports = n, "delivered reports past retention removed")
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot remove delivered reports past retention")
                }
                _ => {}
            }
        }
        let r = tokio::task::spawn_blocking(move || {
            if purge {
                s.purge_expired()?;
            }
            s.stats()
        })
        .await;
        if purge {
            last_purge = std::time::Instant::now();
        }
        match r {
            Ok(Ok(stats)) => metrics.observe_spool(&stats, now_ms()),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot read spool statistics"),
            Err(_) => {}
        }
    }
}
