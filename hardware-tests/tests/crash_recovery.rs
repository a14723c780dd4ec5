#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers may panic on setup failure
//! Nothing acknowledged is lost: 200 files of 1 KB to 50 MB go through the
//! drop folder while the real gateway process is SIGKILLed at random
//! moments and central twice. Afterwards every file is at central exactly
//! once with the right SHA-256, the spool holds nothing undelivered, and at
//! every kill no file had left the drop folder without being committed in
//! the spool (or at central). The same with central's index on a real
//! PostgreSQL server, which is itself SIGKILLed once mid-run.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use yilian_central::store::{Backend, Store};
use yilian_rig::configs::{CentralSetup, FolderSetup, GatewaySetup, free_tcp_port, free_udp_port};
use yilian_rig::files::write_seeded;
use yilian_rig::fleet::Fleet;
use yilian_rig::postgres::Postgres;
use yilian_rig::procs::Proc;
use yilian_spool::Spool;

const FILES: u64 = 200;

fn sizes(rng: &mut StdRng) -> Vec<u64> {
    // Log-uniform between 1 KB and 50 MB, with both ends present.
    let mut v: Vec<u64> = (0..FILES - 2)
        .map(|_| {
            let e = rng.random_range((1_000f64).ln()..(50_000_000f64).ln());
            e.exp() as u64
        })
        .collect();
    v.push(1_000);
    v.push(50_000_000);
    v
}

struct Setup {
    dir: PathBuf,
    drop: PathBuf,
    central_toml: PathBuf,
    gateway_toml: PathBuf,
    central_data: PathBuf,
    backend: Backend,
    spool_dir: PathBuf,
}

fn setup(dir: &Path, pg: Option<&Postgres>) -> anyhow::Result<Setup> {
    let fleet = Fleet::create(dir)?;
    let central_data = dir.join("central-data");
    let central = CentralSetup {
        listen: free_udp_port()?,
        metrics: free_tcp_port()?,
        data_dir: central_data.clone(),
        tls: fleet.central("localhost")?,
    };
    let drop = dir.join("drop");
    std::fs::create_dir_all(&drop)?;
    let spool_dir = dir.join("spool");
    let gateway = GatewaySetup {
        central: central.listen.to_string(),
        server_name: "localhost".into(),
        spool_dir: spool_dir.clone(),
        metrics: free_tcp_port()?,
        tls: fleet.gateway("test/clinic/box-1")?,
        folders: vec![FolderSetup {
            name: "share".into(),
            path: drop.clone(),
            lane: "bulk",
            settle_ms: 700,
        }],
        idle_timeout_ms: Some(3000),
        reconnect_max_ms: 1000,
        quota_bytes: None,
        extra: String::new(),
    };
    let central_toml = dir.join("central.toml");
    let gateway_toml = dir.join("gateway.toml");
    let store_toml = pg.map(|p| p.store_toml("yilian")).unwrap_or_default();
    std::fs::write(&central_toml, format!("{}\n{store_toml}", central.toml()))?;
    std::fs::write(&gateway_toml, gateway.toml())?;
    Ok(Setup {
        dir: dir.to_owned(),
        drop,
        central_toml,
        gateway_toml,
        central_data,
        backend: pg.map_or(Backend::Sqlite, |p| Backend::Postgres(p.settings("yilian"))),
        spool_dir,
    })
}

fn central_store(s: &Setup) -> anyhow::Result<Store> {
    Ok(Store::open_read_only_backend(&s.central_data, &s.backend)?)
}

fn central_items(s: &Setup) -> Vec<(String, u64)> {
    let Ok(store) = central_store(s) else {
        return Vec::new();
    };
    store
        .items(None, None)
        .map(|v| v.into_iter().map(|i| (i.sha256, i.size)).collect())
        .unwrap_or_default()
}

/// With the gateway dead: every finished file that is gone from the drop
/// folder must be committed in the spool or at central.
fn check_nothing_removed_before_commit(s: &Setup, written: &Mutex<HashMap<String, String>>) {
    // The device keeps writing while the gateway is dead: take the list of
    // finished files before looking at the folder, or a file finished after
    // the look would count as gone.
    let written = written.lock().expect("lock").clone();
    let present: HashSet<String> = std::fs::read_dir(&s.drop)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    // An index that cannot be read is a failure to report, not an empty
    // spool.
    let spooled: HashSet<String> = Spool::inspect(&s.spool_dir, u32::MAX)
        .map(|(_, items)| items.into_iter().map(|i| i.sha256).collect())
        .expect("reading the spool's index after the kill");
    let at_central: HashSet<String> = central_items(s).into_iter().map(|(sha, _)| sha).collect();
    let mut missing: Vec<&String> = written
        .iter()
        .filter(|(name, sha)| {
            !present.contains(*name) && !spooled.contains(*sha) && !at_central.contains(*sha)
        })
        .map(|(name, _)| name)
        .collect();
    if !missing.is_empty() {
        missing.sort();
        // The temporary directory goes with the panic: keep what tells a
        // lost row from a stale view of the index.
        let kept = s.dir.with_extension("failed");
        let _ = std::fs::create_dir_all(&kept);
        for f in ["index.sqlite", "index.sqlite-wal", "index.sqlite-shm"] {
            let _ = std::fs::copy(s.spool_dir.join(f), kept.join(f));
        }
        let _ = std::fs::copy(s.dir.join("processes.log"), kept.join("processes.log"));
        panic!(
            "{} files left the drop folder but are neither in the spool ({} items) nor at central ({} items): {missing:?}; {} still in the folder; index and log kept in {}",
            missing.len(),
            spooled.len(),
            at_central.len(),
            present.len(),
            kept.display()
        );
    }
}

#[test]
fn sigkill_gateway_and_central_loses_nothing() -> anyhow::Result<()> {
    run(None)
}

#[test]
fn sigkill_gateway_central_and_postgresql_loses_nothing() -> anyhow::Result<()> {
    let pg = Postgres::start("crash")?;
    run(Some(pg))
}

fn run(mut pg: Option<Postgres>) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("yilian-crash-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let s = setup(tmp.path(), pg.as_ref())?;
    let log = s.dir.join("processes.log");
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let sizes = sizes(&mut rng);
    let total: u64 = sizes.iter().sum();
    eprintln!("{FILES} files, {:.0} MB in all", total as f64 / 1e6);

    let mut central = Proc::spawn(
        "yilian-central",
        &["serve", "--config", s.central_toml.to_str().unwrap_or("")],
        &log,
    )?;
    let mut gateway = Proc::spawn(
        "yilian-gateway",
        &["run", "--config", s.gateway_toml.to_str().unwrap_or("")],
        &log,
    )?;

    // The device: writes files in place, some slowly (growing for longer
    // than a poll interval, to tempt the intake into taking them early).
    let written: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (drop, written, done) = (s.drop.clone(), written.clone(), done.clone());
        std::thread::spawn(move || -> anyhow::Result<()> {
            for (i, size) in sizes.into_iter().enumerate() {
                let name = format!("IMG{i:05}.DAT");
                let slow = i % 7 == 0;
                let sha = write_seeded(&drop.join(&name), 1000 + i as u64, size, || {
                    if slow {
                        std::thread::sleep(Duration::from_millis(150));
                    }
                })?;
                written.lock().expect("lock").insert(name, sha);
                std::thread::sleep(Duration::from_millis(20));
            }
            done.store(true, Ordering::SeqCst);
            Ok(())
        })
    };

    // Kill the gateway at random moments, central twice.
    let mut gateway_kills = 0;
    let mut central_kills = 0;
    let started = Instant::now();
    while gateway_kills < 6 || central_kills < 2 {
        std::thread::sleep(Duration::from_millis(rng.random_range(1500..4000)));
        if central_kills < 2 && gateway_kills % 3 == 1 {
            central.kill9();
            central_kills += 1;
            eprintln!("killed central ({central_kills})");
            std::thread::sleep(Duration::from_millis(rng.random_range(100..1500)));
            central = Proc::spawn(
                "yilian-central",
                &["serve", "--config", s.central_toml.to_str().unwrap_or("")],
                &log,
            )?;
        }
        if gateway_kills == 2
            && let Some(pg) = pg.as_mut()
        {
            // The index's server dies under central: commits fail (nothing
            // is answered COMMITTED), central reconnects once it is back.
            pg.kill9();
            eprintln!("killed PostgreSQL");
            std::thread::sleep(Duration::from_millis(rng.random_range(200..1500)));
            pg.restart()?;
        }
        gateway.kill9();
        gateway_kills += 1;
        eprintln!(
            "killed gateway ({gateway_kills}) at {:.1} s",
            started.elapsed().as_secs_f64()
        );
        check_nothing_removed_before_commit(&s, &written);
        std::thread::sleep(Duration::from_millis(rng.random_range(50..800)));
        gateway = Proc::spawn(
            "yilian-gateway",
            &["run", "--config", s.gateway_toml.to_str().unwrap_or("")],
            &log,
        )?;
    }
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    assert!(done.load(Ordering::SeqCst));

    // Let everything drain.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let items = central_items(&s);
        let left = std::fs::read_dir(&s.drop)?.count();
        if items.len() as u64 >= FILES && left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 10 minutes central has {} of {FILES} items and {left} files are still in the folder; see {}",
            items.len(),
            log.display()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Wait for the gateway to record the last COMMITTED answers.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (stats, _) = Spool::inspect(&s.spool_dir, 0)?;
        let backlog: u64 = stats.lanes.iter().map(|l| l.items).sum();
        if backlog == 0 {
            assert_eq!(stats.dead, 0, "nothing may be dead-lettered");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "spool still holds {backlog} undelivered items"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    gateway.kill9();
    central.kill9();
    if pg.is_some() {
        let said = std::fs::read_to_string(&log)?;
        assert!(
            said.contains("reconnected to PostgreSQL"),
            "central went on after its index's server was killed, so it must have reconnected; see {}",
            log.display()
        );
    }

    let items = central_items(&s);
    let mut by_sha: HashMap<String, u32> = HashMap::new();
    for (sha, _) in &items {
        *by_sha.entry(sha.clone()).or_default() += 1;
    }
    let written = written.lock().expect("lock");
    for (name, sha) in written.iter() {
        assert_eq!(
            by_sha.get(sha).copied(),
            Some(1),
            "{name} must be at central exactly once"
        );
    }
    assert_eq!(items.len() as u64, FILES, "no extra items at central");
    // The stored blobs really hold the bytes.
    let store = central_store(&s)?;
    for item in store.items(None, None)? {
        let got = yilian_rig::files::sha256_file(Path::new(&item.path))?;
        assert_eq!(got, item.sha256, "blob content of {}", item.upload_id);
    }
    eprintln!(
        "all {FILES} files at central exactly once after {gateway_kills} gateway and {central_kills} central kills, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
