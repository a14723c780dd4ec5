//! Yilian central: the hub every clinic gateway uploads to.
//!
//! - [`config`] — `central.toml`.
//! - [`store`] — the durable ingest store (SQLite + content-addressed blobs).
//! - [`server`] — the QUIC listener and the per-stream protocol drivers.
//! - [`orders`] — RIS orders (HL7 ORM/OMI) into the clinics' worklists.
//! - [`reports`] — reports from the hospital back down to the clinics.
//! - [`routes`] — which destinations a committed item goes to; [`outbox`]
//!   the delivery loop; [`lis`], [`ecg`] and [`pacs`] the destinations.
//! - [`metrics`], [`http`]: Prometheus metrics, including per-gateway series.

#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod ecg;
pub mod fleet;
pub mod hl7_listener;
pub mod http;
mod instances;
pub mod lis;
pub mod metrics;
pub mod orders;
pub mod outbox;
pub mod pacs;
pub mod registry;
pub mod reports;
pub mod routes;
pub mod server;
pub mod service;
pub mod shared;
pub mod store;

use std::net::SocketAddr;

use anyhow::Context;
use tokio::sync::watch;
use yilian_link::{TlsFiles, bind_udp, server_config};

pub use config::{CentralConfig, ConfigError as CentralConfigError};
use metrics::{CentralMetrics, GatewayLabels};
use store::Store;

/// A running central; dropping it does not stop it, call [`Running::shutdown`].
#[derive(Debug)]
pub struct Running {
    pub quic_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub store: Store,
    pub metrics: CentralMetrics,
    endpoint: quinn::Endpoint,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn shutdown(self) {
        self.endpoint
            .close(shared::close::SHUTDOWN.into(), b"central shutting down");
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.endpoint.wait_idle().await;
    }
}

/// With instances sharing the index: closes, every second, local
/// connections of boxes that have a newer one at another instance.
async fn close_superseded(shared: shared::Shared, mut stopped: watch::Receiver<bool>) {
    // Claims are stamped by the claiming instance's clock: look back far
    // enough to cover skew between instances (an epoch seen twice is
    // harmless, one missed would leave an old connection to its timeout).
    const OVERLAP_MS: i64 = 30_000;
    let mut since = store::now_ms() - OVERLAP_MS;
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stopped.changed() => return,
        }
        let started = store::now_ms();
        let s = shared.store.clone();
        let from = since - OVERLAP_MS;
        match tokio::task::spawn_blocking(move || s.connections_since(from)).await {
            Ok(Ok(claims)) => {
                for claim in &claims {
                    shared.superseded_elsewhere(claim);
                }
                since = started;
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot read the boxes' connections from the shared index")
            }
            Err(_) => {}
        }
    }
}

/// Drops abandoned partial uploads once an hour (and once at start).
async fn sweep_abandoned(
    store: Store,
    idle: std::time::Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stopped.changed() => return,
        }
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.sweep_abandoned(idle)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(dropped = n, "abandoned partial uploads dropped"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot sweep abandoned partial uploads; will retry in an hour")
            }
            Err(_) => {}
        }
    }
}

/// Opens the store, binds the QUIC and metrics listeners, and starts
/// serving. Returns once everything is bound (the readiness point).
pub async fn start(config: CentralConfig) -> anyhow::Result<Running> {
    let data_dir = config.server.data_dir.clone();
    let backend = config.store.clone();
    let blobs = config.blobs.clone();
    let store = tokio::task::spawn_blocking(move || Store::open_with(&data_dir, &backend, &blobs))
        .await?
        .with_context(|| format!("opening the store in {}", config.server.data_dir.display()))?;
    let metrics = CentralMetrics::new();
    // With instances sharing the index, one of them shows the fleet-wide
    // series, once its first round has claimed it (`instances`).
    metrics.set_fleet_exporter(!store.shares_connections());
    // Every box central has heard of gets a last-seen series from the start,
    // so a box that stays silent after a central restart is still visible.
    let unwatched = store.unwatched_identities()?;
    // With instances sharing the index, the fleet exporter shows the boxes
    // connected nowhere (`instances`).
    let boxes = if store.shares_connections() {
        Vec::new()
    } else {
        store.gateways()?
    };
    for gw in boxes {
        // Revoked and retired boxes are not watched: no series to alert on.
        if unwatched.contains(&gw.identity) {
            continue;
        }
        if let Ok(id) = yilian_protocol::BoxIdentity::parse(&gw.identity) {
            let labels = GatewayLabels::of(&id);
            metrics
                .gateway_last_seen
                .get_or_create(&labels)
                .set(gw.last_seen_ms as f64 / 1000.0);
            metrics.gateway_link_up.get_or_create(&labels).set(0);
        }
    }
    let tls = TlsFiles {
        ca: config.tls.ca.clone(),
        cert: config.tls.cert.clone(),
        key: config.tls.key.clone(),
    };
    let fleet = fleet::Fleet::open(&config, store.clone())?;
    let server_config =
        server_config(&tls, fleet.revocations()).context("loading central's TLS files")?;
    let socket = bind_udp(config.server.listen)
        .with_context(|| format!("binding the QUIC listener on {}", config.server.listen))?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server_config),
        socket,
        quinn::default_runtime().context("no async runtime")?,
    )?;
    let quic_addr = endpoint.local_addr()?;
    let (metrics_addr, http) = http::bind(config.metrics.listen, metrics.clone())
        .await
        .with_context(|| format!("binding the metrics listener on {}", config.metrics.listen))?;

    let mut shared = shared::Shared::new(
        store.clone(),
        metrics.clone(),
        config.server.max_upload_bytes,
        fleet,
    );
    shared.load_unwatched(unwatched);
    let (stop, mut stopped) = watch::channel(false);
    if let Some(lis) = &config.lis {
        shared.routes.lis = true;
        metrics.register_destination(lis::DESTINATION);
        tokio::spawn(outbox::drive(
            lis::LisDelivery::new(lis.clone(), store.clone()),
            store.clone(),
            metrics.clone(),
            lis.retry_base,
            lis.retry_max,
            stopped.clone(),
        ));
    }
    if let Some(w) = &config.worklist
        && let Some(addr) = w.hl7_listen
    {
        let listener = orders::OrderListener {
            config: w.clone(),
            store: store.clone(),
        };
        let (_, serve) = hl7_listener::bind(listener, addr, stopped.clone())
            .await
            .with_context(|| format!("binding the RIS order listener on {addr}"))?;
        tokio::spawn(serve);
    }
    if let Some(r) = &config.reports {
        let intake = reports::listener::ReportIntake {
            store: store.clone(),
            metrics: metrics.clone(),
            facilities: r.facilities.clone(),
            clinic_offset: r.clinic_utc_offset.0,
            wake: shared.reports_wake.clone(),
        };
        if let Some(addr) = r.hl7_listen {
            let listener = reports::listener::ReportListener(intake.clone());
            let (_, serve) = hl7_listener::bind(listener, addr, stopped.clone())
                .await
                .with_context(|| format!("binding the report listener on {addr}"))?;
            tokio::spawn(serve);
        }
        if let Some(addr) = r.dicom_listen {
            let scp = reports::dicom_scp::ReportScp::new(
                reports::dicom_scp::ScpSettings {
                    listen: addr,
                    ae_title: r.dicom_ae_title.clone(),
                    allowed: r.dicom_allowed.clone(),
                    timeout: std::time::Duration::from_secs(60),
                },
                intake.clone(),
            );
            let (_, serve) = scp
                .bind(stopped.clone())
                .await
                .with_context(|| format!("binding the DICOM report listener on {addr}"))?;
            tokio::spawn(serve);
        }
        if let Some(dir) = &r.import_dir {
            let folder = reports::import::ImportFolder {
                dir: dir.clone(),
                intake,
            };
            tokio::spawn(folder.run(stopped.clone()));
        }
    }
    tokio::spawn(report_gauges(
        store.clone(),
        metrics.clone(),
        stopped.clone(),
    ));
    tokio::spawn(sweep_abandoned(
        store.clone(),
        config.server.abandon_partial_after,
        stopped.clone(),
    ));
    if store.shares_connections() {
        tokio::spawn(close_superseded(shared.clone(), stopped.clone()));
        tokio::spawn(instances::watch(shared.clone(), stopped.clone()));
    }
    if let Some(pacs) = &config.pacs {
        shared.routes.pacs = true;
        metrics.register_destination(pacs::DESTINATION);
        tokio::spawn(outbox::drive(
            pacs::PacsDelivery::new(pacs.clone(), store.clone()),
            store.clone(),
            metrics.clone(),
            pacs.retry_base,
            pacs.retry_max,
            stopped.clone(),
        ));
    }
    if let Some(ecg) = &config.ecg {
        shared.routes.ecg = true;
        metrics.register_destination(ecg::DESTINATION);
        tokio::spawn(outbox::drive(
            ecg::EcgDelivery::new(ecg.clone(), store.clone()),
            store.clone(),
            metrics.clone(),
            ecg.retry_base,
            ecg.retry_max,
            stopped.clone(),
        ));
    }
    let ep = endpoint.clone();
    let task = tokio::spawn(async move {
        tokio::select! {
            _ = server::accept_loop(ep, shared) => {}
            r = http => if let Err(e) = r { tracing::error!(error = %e, "metrics listener failed") },
            _ = stopped.changed() => {}
        }
    });
    if store.shares_connections() {
        // The id other instances name this one by (a dead one's deliveries
        // taken over are logged with it).
        tracing::info!(%quic_addr, %metrics_addr, instance = %format_args!("{:x}", store.instance_id()), "central ready");
    } else {
        tracing::info!(%quic_addr, %metrics_addr, "central ready");
    }
    Ok(Running {
        quic_addr,
        metrics_addr,
        store,
        metrics,
        endpoint,
        stop,
        task,
    })
}

/// Keeps the report queue's gauges current.
async fn report_gauges(store: Store, metrics: CentralMetrics, mut stop: watch::Receiver<bool>) {
    loop {
        let s = store.clone();
        if let Ok(Ok(stats)) = tokio::task::spawn_blocking(move || s.report_stats()).await {
            metrics.reports.set_stats(&stats, store::now_ms());
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
            _ = stop.changed() => return,
        }
    }
}
