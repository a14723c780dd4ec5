//! Many boxes from one process against real central processes: each box
//! with its own certificate (real QUIC, mutual TLS), the real control
//! stream (Hello) and the real upload protocol ([`UploadSender`]). Central
//! ingest with most boxes idle and some uploading, on the embedded backend
//! (SQLite + blob directory) and on PostgreSQL + a Garage bucket, beside the
//! bare cost of the same bytes through a QUIC stream and SHA-256; then the
//! time for every box of a SIGKILLed instance to be back at the other.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use yilian_link::{MessageReader, bind_udp, write_message};
use yilian_protocol::messages::envelope::Body;
use yilian_protocol::messages::{Chunk, Envelope, Hello, Offer};
use yilian_protocol::upload::{SenderTransmit, UploadOutcome, UploadSender};

use crate::bench_link::cpu_seconds;
use crate::configs::{CentralSetup, free_tcp_port, free_udp_port};
use crate::fleet::Fleet;
use crate::garage::Garage;
use crate::postgres::Postgres;
use crate::procs::Proc;
use crate::report::Report;

#[derive(Debug, Clone)]
pub struct SwarmOptions {
    /// Boxes connected.
    pub boxes: usize,
    /// Of them, how many upload at once.
    pub uploading: usize,
    /// Items each uploading box sends.
    pub items: usize,
    /// Size of each item.
    pub item_bytes: usize,
}

/// Client sockets the boxes share (connections are told apart by their
/// connection IDs, as behind a clinic's NAT).
const ENDPOINTS: usize = 16;
const CHUNK: usize = 256 * 1024;
/// The boxes' idle timeout: how soon a box notices a dead instance.
const BOX_IDLE: Duration = Duration::from_secs(3);

struct SimBox {
    identity: String,
    config: quinn::ClientConfig,
}

/// A connected box: its connection and the control stream kept open.
struct Connected {
    conn: quinn::Connection,
    at: SocketAddr,
    _control: quinn::SendStream,
}

pub async fn run(dir: &Path, opts: SwarmOptions) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let fleet = Fleet::create(&dir.join("fleet"))?;
    let started = Instant::now();
    let boxes = Arc::new(make_boxes(&fleet, opts.boxes)?);
    eprintln!(
        "{} box certificates in {:.1} s",
        boxes.len(),
        started.elapsed().as_secs_f64()
    );
    let payload = Payload::new(opts.item_bytes);
    let bytes = (opts.uploading * opts.items * opts.item_bytes) as f64;

    // Anchor: the same bytes through one QUIC stream (both ends in this
    // process: decryption and encryption) and SHA-256 alone.
    let ctls = fleet.central("localhost")?;
    let gtls = fleet.gateway("swarm/anchor/box")?;
    let me = std::process::id();
    let before = cpu_seconds(me);
    let anchor_bytes = 512 * 1024 * 1024;
    crate::bench::raw_quinn(&ctls, &gtls, anchor_bytes).await?;
    let quic_cpu = (cpu_seconds(me) - before) / (anchor_bytes as f64 / 1e9);
    let (hash_cpu, _) = {
        let d = dir.to_owned();
        tokio::task::spawn_blocking(move || {
            crate::bench::durable_costs(&d, move || cpu_seconds(me))
        })
        .await??
    };
    let anchor = format!(
        "QUIC stream, same TLS, both ends: {quic_cpu:.2} s per GB; SHA-256 alone: {hash_cpu:.2} s per GB"
    );

    for backend in ["sqlite + blob directory", "PostgreSQL + Garage"] {
        let engines = if backend.starts_with("PostgreSQL") {
            Some((Postgres::start("swarm")?, Garage::start("swarm")?))
        } else {
            None
        };
        let store_toml = engines
            .as_ref()
            .map(|(pg, g)| format!("{}\n{}", pg.store_toml("yilian"), g.blobs_toml()))
            .unwrap_or_default();
        let work = dir.join(backend.split_whitespace().next().unwrap_or("x"));
        let mut central = start_central(&work, &fleet, 0, &store_toml)?;
        let addrs = vec![central.1];
        let t = Instant::now();
        let conns = connect_all(&boxes, &addrs, &endpoints()?).await?;
        let connected_in = t.elapsed().as_secs_f64();
        let pid = central.0.pid();
        let engine_pids = engines
            .as_ref()
            .map(|(_, g)| {
                let mut pids = postgres_pids();
                pids.push(g.pid());
                pids
            })
            .unwrap_or_default();
        let cpu_before = cpu_seconds(pid);
        let engines_before: f64 = engine_pids.iter().map(|p| cpu_seconds(*p)).sum();
        let t = Instant::now();
        let uploads = upload_all(&conns[..opts.uploading], &opts, &payload, backend).await?;
        let secs = t.elapsed().as_secs_f64();
        let central_cpu = (cpu_seconds(pid) - cpu_before) / (bytes / 1e9);
        let engines_cpu = (engine_pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>()
            - engines_before)
            / (bytes / 1e9);
        anyhow::ensure!(
            uploads == opts.uploading * opts.items,
            "{uploads} uploads committed"
        );
        let engines_note = if engines.is_some() {
            format!(", PostgreSQL + Garage {engines_cpu:.2} s per GB more")
        } else {
            String::new()
        };
        report.row(
            &format!(
                "central ingest, {} boxes connected ({connected_in:.1} s to connect all), {} uploading {} × {} MiB each, {backend}",
                opts.boxes,
                opts.uploading,
                opts.items,
                opts.item_bytes / (1024 * 1024)
            ),
            format!(
                "{:.0} MB/s ({secs:.1} s), central CPU {central_cpu:.2} s per GB{engines_note}",
                bytes / 1e6 / secs
            ),
            anchor.clone(),
        );
        for c in &conns {
            c.conn.close(0u32.into(), b"done");
        }
        central.0.kill9();
        drop(engines);
    }

    // Failover: two instances on PostgreSQL + Garage, every box listing
    // both and preferring one by rendezvous hashing, as the real box does.
    let pg = Postgres::start("swarm-failover")?;
    let garage = Garage::start("swarm-failover")?;
    let store_toml = format!("{}\n{}", pg.store_toml("yilian"), garage.blobs_toml());
    let work = dir.join("failover");
    let mut a = start_central(&work, &fleet, 0, &store_toml)?;
    let b = start_central(&work, &fleet, 1, &store_toml)?;
    let addrs = vec![a.1, b.1];
    let eps = endpoints()?;
    let conns = connect_all(&boxes, &addrs, &eps).await?;
    let on_a: Vec<usize> = (0..conns.len()).filter(|i| conns[*i].at == a.1).collect();
    let killed = Instant::now();
    a.0.kill9();
    // Each box of the dead instance notices it by its idle timeout and
    // goes to its next choice.
    let sem = Arc::new(Semaphore::new(256));
    let mut tasks = Vec::new();
    for i in on_a.iter().copied() {
        let boxes = boxes.clone();
        let conn = conns[i].conn.clone();
        let addrs = addrs.clone();
        let ep = eps[i % eps.len()].clone();
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            conn.closed().await;
            let _permit = sem.acquire_owned().await?;
            let others: Vec<SocketAddr> = preference(&boxes[i].identity, &addrs)
                .into_iter()
                .filter(|x| *x != addrs[0])
                .collect();
            let c = connect_one(&boxes[i], &others, &ep).await?;
            anyhow::Ok((killed.elapsed(), c))
        }));
    }
    let mut times = Vec::new();
    let mut moved = Vec::new();
    for t in tasks {
        let (elapsed, c) = t.await??;
        times.push(elapsed.as_secs_f64());
        moved.push(c);
    }
    times.sort_by(f64::total_cmp);
    let all = times.last().copied().unwrap_or(0.0);
    let median = times.get(times.len() / 2).copied().unwrap_or(0.0);
    report.row(
        &format!(
            "failover: SIGKILL of the instance holding {} of {} boxes (PostgreSQL + Garage)",
            on_a.len(),
            opts.boxes
        ),
        format!("all back at the other instance {all:.1} s after the kill (median {median:.1} s)"),
        format!("the boxes' idle timeout: {:.0} s", BOX_IDLE.as_secs_f64()),
    );
    for c in conns.iter().chain(moved.iter()) {
        c.conn.close(0u32.into(), b"done");
    }
    drop(b);
    Ok(report)
}

fn make_boxes(fleet: &Fleet, n: usize) -> anyhow::Result<Vec<SimBox>> {
    (0..n)
        .map(|i| {
            let identity = format!("swarm/clinic-{:03}/box-{}", i / 10, i % 10);
            let tls = fleet.gateway(&identity)?;
            let mut config = yilian_link::client_config(&tls)?;
            config.transport_config(yilian_link::transport_config_with_idle(BOX_IDLE));
            Ok(SimBox { identity, config })
        })
        .collect()
}

fn endpoints() -> anyhow::Result<Vec<quinn::Endpoint>> {
    (0..ENDPOINTS)
        .map(|_| {
            Ok(quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                None,
                bind_udp("127.0.0.1:0".parse()?)?,
                quinn::default_runtime().context("runtime")?,
            )?)
        })
        .collect()
}

/// A central process on loopback; its process and QUIC address.
fn start_central(
    dir: &Path,
    fleet: &Fleet,
    n: usize,
    store_toml: &str,
) -> anyhow::Result<(Proc, SocketAddr)> {
    std::fs::create_dir_all(dir)?;
    let setup = CentralSetup {
        listen: free_udp_port()?,
        metrics: free_tcp_port()?,
        data_dir: dir.join(format!("central-data-{n}")),
        tls: fleet.central("localhost")?,
    };
    let toml = dir.join(format!("central-{n}.toml"));
    std::fs::write(&toml, format!("{}\n{store_toml}", setup.toml()))?;
    let log = dir.join(format!("central-{n}.log"));
    let proc = Proc::spawn(
        "yilian-central",
        &["serve", "--config", &toml.to_string_lossy()],
        &log,
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("central ready")
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "central did not start: see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((proc, setup.listen))
}

fn preference(identity: &str, addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    yilian_link::instances::by_preference(identity, addrs.to_vec())
}

async fn connect_all(
    boxes: &Arc<Vec<SimBox>>,
    addrs: &[SocketAddr],
    eps: &[quinn::Endpoint],
) -> anyhow::Result<Vec<Connected>> {
    // Handshakes in parallel, as many as a restarted hub sees at once.
    let sem = Arc::new(Semaphore::new(128));
    let mut tasks = Vec::new();
    for i in 0..boxes.len() {
        let boxes = boxes.clone();
        let order = preference(&boxes[i].identity, addrs);
        let ep = eps[i % eps.len()].clone();
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await?;
            connect_one(&boxes[i], &order, &ep).await
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

/// Connects to the first of `order` that answers, and says Hello.
async fn connect_one(
    b: &SimBox,
    order: &[SocketAddr],
    ep: &quinn::Endpoint,
) -> anyhow::Result<Connected> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for at in order {
            let Ok(connecting) = ep.connect_with(b.config.clone(), *at, "localhost") else {
                continue;
            };
            let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(5), connecting).await
            else {
                continue;
            };
            let (mut send, recv) = conn.open_bi().await?;
            let hello = Envelope::new(Body::Hello(Hello {
                protocol_min: *yilian_protocol::SUPPORTED_VERSIONS.start(),
                protocol_max: *yilian_protocol::SUPPORTED_VERSIONS.end(),
                software_version: "swarm".into(),
                sent_unix_ms: yilian_proof::disk::now_ms(),
                takes_reports: false,
            }));
            write_message(&mut send, &hello).await?;
            let mut reader = MessageReader::new(recv);
            match reader.next().await? {
                Some(Envelope {
                    body: Some(Body::HelloAck(_)),
                }) => {}
                other => anyhow::bail!("{}: no HelloAck but {other:?}", b.identity),
            }
            // Whatever central sends on the control stream later (worklists,
            // configurations) is read and dropped.
            tokio::spawn(async move { while let Ok(Some(_)) = reader.next().await {} });
            return Ok(Connected {
                conn,
                at: *at,
                _control: send,
            });
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{}: no instance answered",
            b.identity
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One item's bytes: a shared block with the item's own first bytes, so
/// that every item has its own hash without each being in memory.
struct Payload {
    block: Bytes,
}

impl Payload {
    fn new(size: usize) -> Self {
        let block: Vec<u8> = (0..size as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        Self {
            block: Bytes::from(block),
        }
    }

    fn head(&self, tag: u64) -> Bytes {
        let mut first = self.block.slice(..CHUNK.min(self.block.len())).to_vec();
        first[..8].copy_from_slice(&tag.to_le_bytes());
        Bytes::from(first)
    }

    fn sha256(&self, tag: u64) -> Vec<u8> {
        let mut h = Sha256::new();
        h.update(self.head(tag));
        h.update(&self.block[CHUNK.min(self.block.len())..]);
        h.finalize().to_vec()
    }

    fn chunk(&self, tag: u64, offset: u64, len: usize) -> Bytes {
        let offset = offset as usize;
        if offset < CHUNK {
            // Chunks are CHUNK-aligned: the first is the head.
            self.head(tag).slice(..len)
        } else {
            self.block.slice(offset..offset + len)
        }
    }
}

async fn upload_all(
    conns: &[Connected],
    opts: &SwarmOptions,
    payload: &Payload,
    run: &str,
) -> anyhow::Result<usize> {
    // Hashes first, outside the timed part's CPU of central.
    let run_tag = yilian_proof::disk::now_ms() as u64;
    let mut plans = Vec::new();
    for (b, c) in conns.iter().enumerate() {
        let mut offers = Vec::new();
        for n in 0..opts.items {
            let tag = run_tag.wrapping_mul(1_000_003) ^ ((b as u64) << 20 | n as u64);
            offers.push((
                tag,
                Offer {
                    upload_id: format!("{:032x}", tag as u128 * 7919 + 1),
                    sha256: payload.sha256(tag),
                    size: payload.block.len() as u64,
                    kind: "dicom".into(),
                    lane: yilian_protocol::Lane::Bulk as i32,
                    metadata: Default::default(),
                    received_unix_ms: yilian_proof::disk::now_ms(),
                    source: format!("swarm:{run}"),
                },
            ));
        }
        plans.push((c.conn.clone(), offers));
    }
    let payload = Arc::new(Payload {
        block: payload.block.clone(),
    });
    let mut tasks = Vec::new();
    for (conn, offers) in plans {
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            for (tag, offer) in offers {
                if upload_one(&conn, offer, tag, &payload).await? {
                    done += 1;
                }
            }
            anyhow::Ok(done)
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await??;
    }
    Ok(done)
}

/// One upload as the gateway drives it: offer, chunks, verdict.
async fn upload_one(
    conn: &quinn::Connection,
    offer: Offer,
    tag: u64,
    payload: &Payload,
) -> anyhow::Result<bool> {
    let mut tx = UploadSender::new(
        offer,
        CHUNK,
        yilian_protocol::upload::DEFAULT_IDLE_TIMEOUT,
        Instant::now(),
    )?;
    let (mut send, recv) = conn.open_bi().await?;
    let mut reader = MessageReader::new(recv);
    loop {
        if let Some(outcome) = tx.outcome() {
            let _ = send.finish();
            return match outcome {
                UploadOutcome::Committed => Ok(true),
                other => anyhow::bail!("upload ended: {other:?}"),
            };
        }
        match tx.poll_transmit() {
            Some(SenderTransmit::Message(env)) => write_message(&mut send, &env).await?,
            Some(SenderTransmit::Chunk { offset, len }) => {
                let data = payload.chunk(tag, offset, len);
                write_message(
                    &mut send,
                    &Envelope::new(Body::Chunk(Chunk { offset, data })),
                )
                .await?
            }
            None => match reader.next().await? {
                Some(env) => tx.handle_message(env, Instant::now())?,
                None => anyhow::bail!("stream closed without a verdict"),
            },
        }
    }
}

/// The processes of the PostgreSQL server the swarm started (the
/// postmaster and its backends run as `postgres`).
fn postgres_pids() -> Vec<u32> {
    let Ok(out) = std::process::Command::new("pgrep")
        .args(["-u", "postgres"])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}
