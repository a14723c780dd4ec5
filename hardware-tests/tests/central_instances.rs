#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers may panic on setup failure
//! Two central instances on one PostgreSQL index (a real server), their
//! payloads either in one shared directory or in a real S3 bucket (Garage)
//! with each instance's data directory its own; the box lists both in
//! `uplink.central`. The instance the box chose is SIGKILLed in the middle
//! of an upload: the box moves to the other within its idle timeout and a
//! second, the half-sent upload resumes there from the bytes already held
//! (in the bucket: from the last part the dead instance stored), and every
//! file ends at central exactly once with the right SHA-256.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use yilian_central::store::{Backend, BlobBackend, Store};
use yilian_rig::configs::{CentralSetup, FolderSetup, GatewaySetup, free_tcp_port, free_udp_port};
use yilian_rig::files::write_seeded;
use yilian_rig::fleet::Fleet;
use yilian_rig::garage::Garage;
use yilian_rig::postgres::Postgres;
use yilian_rig::procs::Proc;

const FILES: u64 = 6;
const SIZE: u64 = 30_000_000;

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The bytes of uploads under way in the shared partial directory.
fn partial_bytes(data: &Path) -> u64 {
    fn walk(p: &Path, total: &mut u64) {
        let Ok(dir) = std::fs::read_dir(p) else {
            return;
        };
        for e in dir.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => walk(&e.path(), total),
                Ok(_) => *total += e.metadata().map(|m| m.len()).unwrap_or(0),
                Err(_) => {}
            }
        }
    }
    let mut total = 0;
    walk(&data.join("partial"), &mut total);
    total
}

/// A temporary directory for one test, under the target directory.
fn temp_dir(prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))?)
}

/// A `yilian-central` process with `toml` as `dir/NAME.toml`, logging to
/// `dir/NAME.log`.
fn spawn_central(dir: &Path, name: &str, toml: String) -> anyhow::Result<Proc> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml)?;
    Proc::spawn(
        "yilian-central",
        &["serve", "--config", path.to_str().unwrap()],
        &dir.join(format!("{name}.log")),
    )
}

/// A box (`test/clinic/box-1`) with a watched folder `dir/drop`, its
/// uplink to `central` with `uplink_extra`, running; its log is
/// `dir/gateway.log`, and it is up once this returns.
fn start_box(
    dir: &Path,
    fleet: &Fleet,
    central: String,
    idle_timeout_ms: Option<u64>,
    uplink_extra: &str,
) -> anyhow::Result<(Proc, std::path::PathBuf)> {
    let drop = dir.join("drop");
    std::fs::create_dir_all(&drop)?;
    let gateway = GatewaySetup {
        central,
        server_name: "localhost".into(),
        spool_dir: dir.join("spool"),
        metrics: free_tcp_port()?,
        tls: fleet.gateway("test/clinic/box-1")?,
        folders: vec![FolderSetup {
            name: "share".into(),
            path: drop.clone(),
            lane: "bulk",
            settle_ms: 300,
        }],
        idle_timeout_ms,
        reconnect_max_ms: 1000,
        quota_bytes: None,
        extra: String::new(),
    };
    let gateway_toml = dir.join("gateway.toml");
    std::fs::write(&gateway_toml, gateway.toml_with_uplink(uplink_extra))?;
    let gateway_log = dir.join("gateway.log");
    let gw = Proc::spawn(
        "yilian-gateway",
        &["run", "--config", gateway_toml.to_str().unwrap()],
        &gateway_log,
    )?;
    wait_for("the link up", 60, || {
        read(&gateway_log).contains("link to central up")
    });
    Ok((gw, drop))
}

/// Every sample of `family` for `gateway` across the instances' metrics,
/// as (instance, value): one per box when the fleet's series come out once.
fn samples(metrics: &[std::net::SocketAddr], family: &str, gateway: &str) -> Vec<(usize, f64)> {
    let mut found = Vec::new();
    for (i, addr) in metrics.iter().enumerate() {
        let Ok(text) = yilian_rig::scrape::http_get(*addr, "/metrics") else {
            continue;
        };
        for line in text.lines() {
            if line.starts_with(&format!("{family}{{"))
                && line.contains(&format!("gateway=\"{gateway}\""))
                && let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse().ok())
            {
                found.push((i, v));
            }
        }
    }
    found
}

/// How many instances show an unlabelled fleet-wide `family`.
fn showing(metrics: &[std::net::SocketAddr], family: &str) -> usize {
    metrics
        .iter()
        .filter(|a| {
            yilian_rig::scrape::http_get(**a, "/metrics")
                .is_ok_and(|t| t.lines().any(|l| l.starts_with(&format!("{family} "))))
        })
        .count()
}

/// The fleet's series come out once across instances: the connected box
/// `up` at the instance it is at (`at`, when known), the box connected
/// nowhere down at exactly one instance, the counts read from the index at
/// exactly one.
fn fleet_series_once(metrics: &[std::net::SocketAddr], at: Option<usize>) -> Result<(), String> {
    let up = samples(metrics, "yilian_gateway_link_up", "box-1");
    let down = samples(metrics, "yilian_gateway_link_up", "box-2");
    let seen = samples(
        metrics,
        "yilian_gateway_last_seen_timestamp_seconds",
        "box-2",
    );
    let waiting = showing(metrics, "yilian_central_reports_waiting");
    let ok = up.len() == 1
        && up[0].1 == 1.0
        && at.is_none_or(|i| up[0].0 == i)
        && down.len() == 1
        && down[0].1 == 0.0
        && seen.len() == 1
        && waiting == 1;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "box-1 link_up {up:?}, box-2 link_up {down:?}, box-2 last_seen {seen:?}, reports_waiting at {waiting} instances"
        ))
    }
}

fn wait_fleet_series_once(metrics: &[std::net::SocketAddr], at: Option<usize>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match fleet_series_once(metrics, at) {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => {
                panic!("the fleet's series once across instances, within 20 s: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
fn a_box_fails_over_to_the_other_instance_and_resumes_its_upload() -> anyhow::Result<()> {
    failover(None)
}

#[test]
fn with_payloads_in_a_bucket_the_upload_resumes_from_the_dead_instances_last_part()
-> anyhow::Result<()> {
    let garage = Garage::start("instances-e2e")?;
    failover(Some(&garage))
}

fn failover(garage: Option<&Garage>) -> anyhow::Result<()> {
    let tmp = temp_dir("yilian-instances-")?;
    let dir = tmp.path();
    let pg = Postgres::start("instances-e2e")?;
    let fleet = Fleet::create(dir)?;
    // One shared payload directory, or with a bucket none: each instance's
    // data directory is its own and holds nothing the other needs.
    let data_of = |i: usize| match garage {
        Some(_) => dir.join(format!("central-data-{i}")),
        None => dir.join("central-data"),
    };
    let blobs = garage.map(|g| g.settings()).unwrap_or(BlobBackend::Dir);
    let blobs_toml = garage.map(|g| g.blobs_toml()).unwrap_or_default();
    let tls = fleet.central("localhost")?;
    let instances: Vec<CentralSetup> = (0..2)
        .map(|i| -> anyhow::Result<CentralSetup> {
            Ok(CentralSetup {
                listen: free_udp_port()?,
                metrics: free_tcp_port()?,
                data_dir: data_of(i),
                tls: tls.clone(),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let mut centrals = Vec::new();
    for (i, c) in instances.iter().enumerate() {
        centrals.push(Some(spawn_central(
            dir,
            &format!("central-{i}"),
            format!("{}\n{}\n{blobs_toml}", c.toml(), pg.store_toml("yilian")),
        )?));
    }

    // A second box central knows of, connected nowhere.
    {
        let s = Store::open_backend(&data_of(0), &Backend::Postgres(pg.settings("yilian")))?;
        s.touch_gateway(
            &yilian_protocol::BoxIdentity::parse("test/clinic/box-2")?,
            Some("0.1.0"),
        )?;
    }
    let metrics: Vec<std::net::SocketAddr> = instances.iter().map(|c| c.metrics).collect();

    // 80 Mbit/s: each 30 MB file takes about three seconds, so the kill
    // lands in the middle of one.
    let (mut gw, drop) = start_box(
        dir,
        &fleet,
        format!("{}, {}", instances[0].listen, instances[1].listen),
        Some(3000),
        "rate_limit = \"80 Mbit/s\"\n",
    )?;
    let gateway_log = dir.join("gateway.log");
    let mut written = HashMap::new();
    for i in 0..FILES {
        let name = format!("STUDY{i:02}.DAT");
        let sha = write_seeded(&drop.join(&name), 7000 + i, SIZE, || {})?;
        written.insert(name, sha);
    }

    // Kill the chosen instance with an upload half-way: bytes in the
    // partial file, or parts in the bucket.
    let held = || match garage {
        // One directory both instances share.
        None => partial_bytes(&data_of(0)),
        Some(_) => pg
            .psql("yilian", "SELECT COALESCE(SUM(size), 0) FROM upload_parts")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
    };
    wait_for("an upload under way", 60, || held() > SIZE / 3);
    // The instance the box is connected to now: the last "link up" line
    // names it (under load the box's first tries may have reached both).
    let up = read(&gateway_log)
        .lines()
        .rev()
        .find(|l| l.contains("link to central up"))
        .unwrap_or_default()
        .to_owned();
    let chosen = instances
        .iter()
        .position(|c| {
            up.contains(&format!("addr={} ", c.listen))
                || up.ends_with(&format!("addr={}", c.listen))
        })
        .expect("the box names the instance it connected to");
    let other = 1 - chosen;
    eprintln!(
        "the box is at instance {chosen} ({})",
        instances[chosen].listen
    );
    wait_fleet_series_once(&metrics, Some(chosen));
    let held_at_kill = held();
    centrals[chosen].take().expect("running").kill9();
    let killed = Instant::now();
    eprintln!(
        "killed instance {chosen} with {:.1} MB of an upload held",
        held_at_kill as f64 / 1e6
    );

    let other_log = dir.join(format!("central-{other}.log"));
    let before = read(&other_log).len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !read(&other_log)
        .get(before..)
        .is_some_and(|new| new.contains("gateway said hello"))
    {
        if Instant::now() > deadline {
            let tail = |p: &Path| {
                let t = read(p);
                let lines: Vec<&str> = t.lines().collect();
                lines[lines.len().saturating_sub(40)..].join("\n")
            };
            panic!(
                "the box at the other instance: not within 60 s\n--- instance {other}:\n{}\n--- box:\n{}",
                tail(&other_log),
                tail(&gateway_log)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "the box reached instance {other} {:.1} s after the kill (idle timeout 3 s)",
        killed.elapsed().as_secs_f64()
    );
    // The survivor shows the whole fleet, whichever instance exported it.
    wait_fleet_series_once(&metrics, Some(other));

    let backend = Backend::Postgres(pg.settings("yilian"));
    let data = data_of(other);
    let items = || -> Vec<(String, u64)> {
        Store::open_read_only_backend(&data, &backend)
            .and_then(|s| s.items(None, None))
            .map(|v| v.into_iter().map(|i| (i.sha256, i.size)).collect())
            .unwrap_or_default()
    };
    wait_for("every file at central", 180, || {
        items().len() as u64 >= FILES
    });
    let resumed = read(&other_log);
    assert!(
        resumed.contains("resuming upload"),
        "the upload cut by the kill resumes from the bytes held, not from zero: see {}",
        other_log.display()
    );
    if let Some(line) = resumed.lines().find(|l| l.contains("resuming upload")) {
        eprintln!("instance {other}: {}", line.trim());
    }
    let items = items();
    assert_eq!(items.len() as u64, FILES, "no item twice");
    for (name, sha) in &written {
        assert_eq!(
            items.iter().filter(|(s, _)| s == sha).count(),
            1,
            "{name} at central exactly once"
        );
    }
    let store = Store::open_read_only_with(&data, &backend, &blobs)?;
    for item in store.items(None, None)? {
        let got = match garage {
            None => yilian_rig::files::sha256_file(Path::new(&item.path))?,
            Some(_) => {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(store.read_blob(&item.sha256)?))
            }
        };
        assert_eq!(got, item.sha256, "blob content of {}", item.upload_id);
    }
    if let Some(g) = garage {
        assert_eq!(
            g.wait_multipart_uploads(0)?,
            0,
            "no multipart upload left open in the bucket"
        );
        for i in 0..2 {
            assert_eq!(
                partial_bytes(&data_of(i)),
                0,
                "nothing of an upload on instance {i}'s disk"
            );
        }
    }
    gw.kill9();
    Ok(())
}

/// A box's disk copied into a second box, each clone reaching a different
/// instance: the newest connection wins across instances too (each
/// instance closes its connection when the box has a newer one at the
/// other), so the clones keep taking the connection from each other and
/// the conflict is counted and logged, as on one hub. Without the epoch in
/// the shared index each instance would keep its clone connected and
/// nobody would notice.
#[test]
fn a_box_cloned_across_two_instances_is_caught() -> anyhow::Result<()> {
    let tmp = temp_dir("yilian-instances-clone-")?;
    let dir = tmp.path();
    let pg = Postgres::start("instances-clone")?;
    let fleet = Fleet::create(dir)?;
    let tls = fleet.central("localhost")?;
    let mut instances = Vec::new();
    let mut centrals = Vec::new();
    for i in 0..2 {
        let c = CentralSetup {
            listen: free_udp_port()?,
            metrics: free_tcp_port()?,
            data_dir: dir.join("central-data"),
            tls: tls.clone(),
        };
        centrals.push(spawn_central(
            dir,
            &format!("central-{i}"),
            format!("{}\n{}", c.toml(), pg.store_toml("yilian")),
        )?);
        instances.push(c);
    }
    let identity = fleet.gateway("test/clinic/box-1")?;
    let mut boxes = Vec::new();
    for (i, c) in instances.iter().enumerate() {
        let drop = dir.join(format!("drop-{i}"));
        std::fs::create_dir_all(&drop)?;
        let setup = GatewaySetup {
            central: c.listen.to_string(),
            server_name: "localhost".into(),
            spool_dir: dir.join(format!("spool-{i}")),
            metrics: free_tcp_port()?,
            tls: identity.clone(),
            folders: vec![FolderSetup {
                name: "share".into(),
                path: drop,
                lane: "bulk",
                settle_ms: 300,
            }],
            idle_timeout_ms: Some(3000),
            reconnect_max_ms: 1000,
            quota_bytes: None,
            extra: String::new(),
        };
        let toml = dir.join(format!("gateway-{i}.toml"));
        std::fs::write(&toml, setup.toml())?;
        boxes.push(Proc::spawn(
            "yilian-gateway",
            &["run", "--config", toml.to_str().unwrap()],
            &dir.join(format!("gateway-{i}.log")),
        )?);
    }
    let conflicts = || -> f64 {
        instances
            .iter()
            .map(|c| {
                let m = yilian_rig::scrape::http_get(c.metrics, "/metrics").unwrap_or_default();
                yilian_rig::scrape::sum(
                    &m,
                    "yilian_central_identity_conflicts_total",
                    &["gateway=\"box-1\""],
                )
            })
            .sum()
    };
    let started = Instant::now();
    wait_for("the clone caught across the instances", 60, || {
        conflicts() > 0.0
    });
    eprintln!(
        "clones at two instances caught after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let logs: String = (0..2)
        .map(|i| read(&dir.join(format!("central-{i}.log"))))
        .collect();
    assert!(
        logs.contains("has a newer connection at another central instance"),
        "an instance closed its connection for the other's newer one"
    );
    assert!(logs.contains("two boxes present the same identity"));

    // The operator revokes the identity; the index records it (as a
    // revocation through either instance does). Both instances learn it
    // within their round: each clone is cut off with the notice, and
    // neither is let in again at either instance.
    let store = Store::open_backend(
        &dir.join("test-data"),
        &Backend::Postgres(pg.settings("yilian")),
    )?;
    store.revoke("test/clinic/box-1", "admin", "cloned disk")?;
    let revoked_at = Instant::now();
    wait_for("both clones told they are revoked", 30, || {
        (0..2).all(|i| {
            read(&dir.join(format!("gateway-{i}.log"))).contains("this box was revoked by central")
        })
    });
    eprintln!(
        "revoked in the index: both clones cut off {:.1} s later",
        revoked_at.elapsed().as_secs_f64()
    );
    let hellos = || {
        (0..2)
            .map(|i| {
                read(&dir.join(format!("central-{i}.log")))
                    .matches("gateway said hello")
                    .count()
            })
            .sum::<usize>()
    };
    let after = hellos();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        hellos(),
        after,
        "a revoked box is let in at neither instance"
    );
    for mut b in boxes {
        b.kill9();
    }
    for mut c in centrals {
        c.kill9();
    }
    Ok(())
}

/// A scripted LIS: reads MLLP frames, records each message's MSH-10 as it
/// arrives and answers AA `delay` later (a LIS that takes its time: an
/// instance killed right after a message arrived dies with that delivery
/// in flight, unacknowledged).
fn scripted_lis(
    delay: Duration,
) -> anyhow::Result<(
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
)> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let record = record.clone();
            std::thread::spawn(move || {
                let mut s = stream;
                let mut dec = yilian_codecs::mllp::MllpDecoder::default();
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    for frame in dec.push(&buf[..n]).into_iter().flatten() {
                        let text = String::from_utf8_lossy(&frame).into_owned();
                        let id = text
                            .split('\r')
                            .next()
                            .and_then(|msh| msh.split('|').nth(9))
                            .unwrap_or_default()
                            .to_owned();
                        record.lock().unwrap().push(id.clone());
                        std::thread::sleep(delay);
                        let ack = format!(
                            "MSH|^~\\&|LIS|H|YILIAN|C|20261204120000||ACK|A{id}|P|2.5\rMSA|AA|{id}\r"
                        );
                        if s.write_all(&yilian_codecs::mllp::encode(ack.as_bytes()))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    Ok((addr, seen))
}

/// Two instances on one PostgreSQL, the LIS (one ordered connection)
/// delivered to by one of them; that one is SIGKILLed with deliveries in
/// flight. The other takes the LIS over within its claim round and sends
/// what the dead one held at once (not after its lease): the LIS sees
/// every MSH-10, and at most the one in flight at the kill twice.
#[test]
fn the_lis_is_taken_over_when_its_instance_dies() -> anyhow::Result<()> {
    use yilian_protocol::BoxIdentity;
    use yilian_protocol::messages::Offer;
    let tmp = temp_dir("yilian-instances-lis-")?;
    let dir = tmp.path();
    let pg = Postgres::start("instances-lis")?;
    let fleet = Fleet::create(dir)?;
    let tls = fleet.central("localhost")?;
    let (lis, seen) = scripted_lis(Duration::from_millis(500))?;
    let data = dir.join("central-data");
    let mut centrals = Vec::new();
    for i in 0..2 {
        let c = CentralSetup {
            listen: free_udp_port()?,
            metrics: free_tcp_port()?,
            data_dir: data.clone(),
            tls: tls.clone(),
        };
        let toml = format!(
            "{}\n[lis]\naddress = \"{lis}\"\nack_timeout = \"5s\"\nretry_base = \"200ms\"\n\n{}",
            c.toml(),
            pg.store_toml("yilian")
        );
        centrals.push(Some(spawn_central(dir, &format!("central-{i}"), toml)?));
    }
    let log = |i: usize| read(&dir.join(format!("central-{i}.log")));
    wait_for("one instance delivering to the LIS", 30, || {
        (0..2).any(|i| log(i).contains("this instance delivers to lis"))
    });
    let holder = (0..2)
        .find(|i| log(*i).contains("this instance delivers to lis"))
        .unwrap_or(0);
    let other = 1 - holder;

    // Results committed at central (the index both instances share).
    let store = Store::open_backend(&data, &Backend::Postgres(pg.settings("yilian")))?;
    let gw = BoxIdentity::parse("lingshan/xiacun/box-1")?;
    let n = 30;
    for k in 0..n {
        let msg =
            format!("MSH|^~\\&|LAB|XIACUN|||20261204||ORU^R01|CTRL{k:03}|P|2.5\rPID|1||P{k}\r");
        let sha = {
            use sha2::Digest;
            sha2::Sha256::digest(msg.as_bytes()).to_vec()
        };
        let offer = Offer {
            upload_id: format!("{:032x}", 0x1a5_0000 + k),
            sha256: sha,
            size: msg.len() as u64,
            kind: "hl7".into(),
            lane: yilian_protocol::Lane::Bulk as i32,
            metadata: Default::default(),
            received_unix_ms: yilian_proof::disk::now_ms(),
            source: "test".into(),
        };
        let mut p = store.open_partial(&gw, &offer, 0)?;
        p.append(msg.as_bytes())?;
        store.commit(&gw, &offer, p, &["lis"])?;
    }

    // Killed within the LIS's 500 ms before its ACK: the last message it
    // received is in flight, unacknowledged, leased to the dying instance.
    wait_for("a quarter sent", 60, || seen.lock().unwrap().len() >= n / 4);
    centrals[holder].take().expect("running").kill9();
    let killed = Instant::now();
    let at_kill = seen.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().len() <= at_kill + 1 {
        assert!(
            Instant::now() < deadline,
            "the other instance delivering: not within 30 s; instance {other}:\n{}",
            log(other)
                .lines()
                .filter(|l| !l.contains("NOTICE"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let resumed = killed.elapsed().as_secs_f64();
    wait_for("every result at the LIS", 120, || {
        let s = seen.lock().unwrap();
        (0..n).all(|k| s.contains(&format!("CTRL{k:03}")))
    });
    let s = seen.lock().unwrap().clone();
    let twice: Vec<&String> = (0..n)
        .map(|k| format!("CTRL{k:03}"))
        .filter_map(|id| {
            let c = s.iter().filter(|x| **x == id).count();
            (c > 1).then(|| s.iter().find(|x| **x == id)).flatten()
        })
        .collect();
    eprintln!(
        "LIS held by instance {holder}, killed after {at_kill} messages; instance {other} delivering {resumed:.1} s later; {} messages, sent twice: {twice:?}",
        s.len()
    );
    assert!(
        twice.len() <= 1,
        "only the message in flight at the kill may reach the LIS twice: {twice:?}"
    );
    assert_eq!(
        s.iter().filter(|x| **x == s[at_kill - 1]).count(),
        2,
        "the message in flight at the kill is sent again by the other instance, with its MSH-10"
    );
    assert!(
        resumed < 15.0,
        "the dead instance's leased deliveries are taken over at once, not after their lease"
    );
    assert!(log(other).contains("this instance delivers to lis"));
    Ok(())
}

/// A TCP relay to `to` that forwards until `stall` is set, then holds
/// everything sent through it (a PACS that stopped answering mid-image).
fn stalling_relay(
    to: std::net::SocketAddr,
    stall: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<std::net::SocketAddr> {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = std::net::TcpStream::connect(to) else {
                continue;
            };
            for (mut from, mut into) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                let stall = stall.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = from.read(&mut buf) {
                        while stall.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        if n == 0 || into.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    Ok(addr)
}

/// Two instances deliver a study to Orthanc (the PACS takes deliveries in
/// any order: both instances send). Instance 0's PACS stops answering in
/// the middle of an image, and instance 0 is SIGKILLed holding that
/// delivery's lease. The other instance finds it dead (its liveness lock
/// in PostgreSQL is free) and sends the image within seconds, not after
/// the 5-minute lease: Orthanc ends with every instance, the outbox with
/// every delivery done, no lease left.
#[test]
fn the_pacs_deliveries_of_a_dead_instance_are_taken_over() -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use yilian_protocol::BoxIdentity;
    use yilian_protocol::messages::Offer;
    let tmp = temp_dir("yilian-instances-pacs-")?;
    let dir = tmp.path();
    let pg = Postgres::start("instances-pacs")?;
    let garage = Garage::start("instances-pacs")?;
    let orthanc = yilian_rig::orthanc::Orthanc::start(&dir.join("orthanc"))?;
    let stall = Arc::new(AtomicBool::new(false));
    let relay = stalling_relay(orthanc.dicom, stall.clone())?;
    let fleet = Fleet::create(dir)?;
    let tls = fleet.central("localhost")?;
    let mut centrals = Vec::new();
    for (i, pacs) in [relay, orthanc.dicom].iter().enumerate() {
        let c = CentralSetup {
            listen: free_udp_port()?,
            metrics: free_tcp_port()?,
            data_dir: dir.join(format!("central-data-{i}")),
            tls: tls.clone(),
        };
        let toml = format!(
            "{}\n[pacs]\naddress = \"{pacs}\"\nae_title = \"{}\"\nretry_base = \"200ms\"\n\n{}\n{}",
            c.toml(),
            orthanc.ae_title,
            pg.store_toml("yilian"),
            garage.blobs_toml()
        );
        centrals.push(Some(spawn_central(dir, &format!("central-{i}"), toml)?));
    }
    let log = |i: usize| read(&dir.join(format!("central-{i}.log")));
    wait_for("both instances ready", 30, || {
        (0..2).all(|i| log(i).contains("central ready"))
    });
    let id0 = log(0)
        .lines()
        .find(|l| l.contains("central ready"))
        .and_then(|l| l.split("instance=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .map(|v| i64::from_str_radix(v, 16))
        .transpose()?
        .expect("instance 0 logs its id");

    // The study committed at central (the index and bucket both share).
    let study = yilian_rig::modality::CtStudy::new(11, 60);
    let files = study.write(&dir.join("ct"))?;
    let store = Store::open_with(
        &dir.join("test-data"),
        &Backend::Postgres(pg.settings("yilian")),
        &garage.settings(),
    )?;
    let gw = BoxIdentity::parse("lingshan/xiacun/box-1")?;
    for (k, f) in files.iter().enumerate() {
        let bytes = std::fs::read(f)?;
        let sha = {
            use sha2::Digest;
            sha2::Sha256::digest(&bytes).to_vec()
        };
        let offer = Offer {
            upload_id: format!("{:032x}", 0xd1c0_0000u64 + k as u64),
            sha256: sha,
            size: bytes.len() as u64,
            kind: "dicom".into(),
            lane: yilian_protocol::Lane::Bulk as i32,
            metadata: Default::default(),
            received_unix_ms: yilian_proof::disk::now_ms(),
            source: "test".into(),
        };
        let mut p = store.open_partial(&gw, &offer, 0)?;
        p.append(&bytes)?;
        store.commit(&gw, &offer, p, &["pacs"])?;
    }

    // Instance 0's PACS stops answering once the study is under way; it is
    // killed while it holds the delivery it was making.
    let n = files.len() as u64;
    wait_for("a quarter of the study in Orthanc", 60, || {
        orthanc.instance_count().unwrap_or(0) >= n / 4
    });
    stall.store(true, Ordering::Relaxed);
    let leased = || {
        pg.psql(
            "yilian",
            &format!("SELECT COUNT(*) FROM outbox_leases WHERE instance = {id0}"),
        )
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
    };
    wait_for("instance 0 stuck in a delivery", 60, || leased() == 1);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        leased(),
        1,
        "instance 0 still holds the delivery it is stuck in"
    );
    centrals[0].take().expect("running").kill9();
    // The relay stays stalled: what the dead instance had sent of its
    // image never reaches Orthanc, so only the takeover can complete it.
    let killed = Instant::now();

    let deadline = Instant::now() + Duration::from_secs(30);
    while orthanc.instance_count().unwrap_or(0) < n {
        assert!(
            Instant::now() < deadline,
            "the whole study in Orthanc within 30 s of the kill: {} of {n}; instance 1:\n{}",
            orthanc.instance_count().unwrap_or(0),
            log(1)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = killed.elapsed().as_secs_f64();
    wait_for("every delivery recorded", 30, || {
        pg.psql("yilian", "SELECT COUNT(*) FROM outbox WHERE state = 1")
            .is_ok_and(|v| v == n.to_string())
    });
    assert_eq!(
        pg.psql("yilian", "SELECT COUNT(*) FROM outbox_leases")?,
        "0",
        "no lease left"
    );
    assert!(
        log(1).contains("a central instance died with deliveries under way"),
        "instance 1 says it took the dead instance's delivery over"
    );
    eprintln!(
        "instance 0 killed holding a PACS delivery; the study complete in Orthanc {took:.1} s later"
    );
    assert_eq!(orthanc.instance_count()?, n, "each image once in the PACS");
    Ok(())
}

/// Payloads in a bucket: each upload in progress gathers up to a part in
/// memory, and the instance's budget for that (`[blobs] buffer_mib`)
/// bounds them all. A box sending six 12 MB files at once to an instance
/// with room for two 5 MiB parts: uploads wait their turn (held back by
/// flow control, not refused), every file arrives whole and once, and the
/// budget is all given back.
#[test]
fn uploads_into_a_bucket_share_a_bounded_memory_budget() -> anyhow::Result<()> {
    let tmp = temp_dir("yilian-instances-budget-")?;
    let dir = tmp.path();
    let pg = Postgres::start("instances-budget")?;
    let garage = Garage::start("instances-budget")?;
    let fleet = Fleet::create(dir)?;
    let c = CentralSetup {
        listen: free_udp_port()?,
        metrics: free_tcp_port()?,
        data_dir: dir.join("central-data"),
        tls: fleet.central("localhost")?,
    };
    let blobs = garage
        .blobs_toml()
        .replace("[blobs]\n", "[blobs]\nbuffer_mib = 10\n");
    let mut central = spawn_central(
        dir,
        "central",
        format!("{}\n{}\n{blobs}", c.toml(), pg.store_toml("yilian")),
    )?;
    let (mut gw, drop) = start_box(
        dir,
        &fleet,
        c.listen.to_string(),
        None,
        "max_in_flight = 6\n",
    )?;
    let mut written = Vec::new();
    for i in 0..6u64 {
        written.push(write_seeded(
            &drop.join(format!("SERIES{i}.DAT")),
            9100 + i,
            12_000_000,
            || {},
        )?);
    }
    let backend = Backend::Postgres(pg.settings("yilian"));
    let store = Store::open_read_only_with(&c.data_dir, &backend, &garage.settings())?;
    wait_for("every file at central", 180, || {
        store.items(None, None).map(|v| v.len()).unwrap_or(0) >= written.len()
    });
    let items = store.items(None, None)?;
    assert_eq!(items.len(), written.len(), "each file once");
    for sha in &written {
        let item = items
            .iter()
            .find(|i| &i.sha256 == sha)
            .expect("every file at central");
        use sha2::Digest;
        assert_eq!(
            &hex::encode(sha2::Sha256::digest(store.read_blob(&item.sha256)?)),
            sha
        );
    }
    let metrics = yilian_rig::scrape::http_get(c.metrics, "/metrics")?;
    let waits = yilian_rig::scrape::sum(&metrics, "yilian_central_upload_buffer_waits_total", &[]);
    let held = yilian_rig::scrape::sum(&metrics, "yilian_central_upload_buffer_bytes", &[]);
    let peak = yilian_rig::procs::peak_rss_of(central.pid()).unwrap_or(0);
    eprintln!(
        "6 uploads of 12 MB, budget 10 MiB (two 5 MiB parts): {waits} waited for memory; central's peak RSS {:.0} MiB",
        peak as f64 / 1048576.0
    );
    assert!(waits >= 1.0, "uploads beyond the budget wait their turn");
    assert_eq!(held, 0.0, "the budget is all given back");
    gw.kill9();
    central.kill9();
    Ok(())
}
