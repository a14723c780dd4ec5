#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers may panic on setup failure
//! Central's store answers the same on its two engines: the embedded
//! SQLite and a real PostgreSQL server (Debian's, started by the test).
//! One scenario — items committed and resent, deliveries retried, parked
//! and requeued, a worklist, studies, a report correlated and taken down,
//! tokens, revocations, published configurations — runs on each. Then two
//! stores on one PostgreSQL database stand for two central instances:
//! racing commits of the same uploads, deliveries to the LIS, the same
//! report and the same enrollment token each end with exactly one winner,
//! and a delivery held by an instance that died is taken over once its
//! lease runs out.

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};

use sha2::{Digest, Sha256};
use yilian_central::registry::TokenUse;
use yilian_central::store::{Held, LEASE_MS, Store, now_ms};
use yilian_codecs::hl7::message::Message;
use yilian_codecs::hl7::report::read_report;
use yilian_protocol::BoxIdentity;
use yilian_protocol::messages::{Offer, WorklistEntry};
use yilian_rig::garage::Garage;
use yilian_rig::postgres::Postgres;

const ORU: &str = "MSH|^~\\&|RIS|COUNTY|YILIAN|lingshan/xiacun|20261203101500||ORU^R01|R100|P|2.5\r\
PID|1||P2001^^^H||Chen^Jing||19800202|F\r\
ORC|RE|PL1|ACC2001\r\
OBR|1|PL1|ACC2001|CHEST^胸部正位|||20261203100000|||||||||||ACC2001||||20261203101400|||F\r\
OBX|1|TX|REPORT^Impression||两肺纹理清晰。||||||F\r";

fn offer(n: u32, payload: &[u8], kind: &str, metadata: &[(&str, &str)]) -> Offer {
    Offer {
        upload_id: format!("0193a1b2c3d4-{n:04}"),
        sha256: Sha256::digest(payload).to_vec(),
        size: payload.len() as u64,
        kind: kind.into(),
        lane: 1,
        metadata: metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        received_unix_ms: 1_796_000_000_000,
        source: "test".into(),
    }
}

/// Uploads and commits one item as the upload path does: partial file,
/// bytes, verify, commit.
fn upload(store: &Store, gw: &BoxIdentity, o: &Offer, payload: &[u8], dest: &[&str]) -> bool {
    match store.held(gw, o, dest).expect("held") {
        Held::Committed(_) => false,
        Held::Partial(at) => {
            let mut p = store.open_partial(gw, o, at).expect("open partial");
            p.append(&payload[at as usize..]).expect("append");
            store.commit(gw, o, p, dest).expect("commit");
            true
        }
    }
}

fn scenario(engine: &str, store: &Store) {
    let gw = BoxIdentity::parse("lingshan/xiacun/box-1").expect("identity");
    store.touch_gateway(&gw, Some("1.2.3")).expect("touch");
    store.touch_gateway(&gw, None).expect("touch again");
    let gws = store.gateways().expect("gateways");
    assert_eq!(gws.len(), 1, "{engine}");
    assert_eq!(gws[0].software_version, "1.2.3", "{engine}");

    // Items, one of them resent after its COMMITTED was lost.
    let lab = b"MSH|^~\\&|LAB|X|||20261203||ORU^R01|L1|P|2.5\r".to_vec();
    let img = vec![7u8; 300_000];
    let o1 = offer(1, &lab, "hl7", &[("message_type", "ORU^R01")]);
    let o2 = offer(
        2,
        &img,
        "dicom",
        &[
            ("study_uid", "1.2.3.4"),
            ("series_uid", "1.2.3.4.1"),
            ("patient_id", "P2001"),
            ("patient_name", "Chen^Jing"),
            ("modality", "CT"),
            ("accession", "ACC2001"),
        ],
    );
    assert!(upload(store, &gw, &o1, &lab, &["lis"]), "{engine}");
    assert!(upload(store, &gw, &o2, &img, &["pacs"]), "{engine}");
    assert!(
        !upload(store, &gw, &o2, &img, &["pacs"]),
        "{engine}: a resend is held"
    );
    let items = store.items(None, None).expect("items");
    assert_eq!(items.len(), 2, "{engine}");
    assert_eq!(items[1].size, 300_000, "{engine}");
    assert_eq!(items[1].metadata["study_uid"], "1.2.3.4", "{engine}");
    assert_eq!(
        store
            .items(Some("other/clinic/box"), Some(5))
            .expect("items")
            .len(),
        0
    );
    assert_eq!(
        store.items(None, Some(1)).expect("items").len(),
        1,
        "{engine}"
    );

    // The LIS outbox: retried, parked, requeued, delivered.
    let next = store
        .outbox_next("lis", i64::MAX)
        .expect("next")
        .expect("a delivery");
    assert_eq!(next.upload_id, o1.upload_id, "{engine}");
    assert_eq!(next.metadata["message_type"], "ORU^R01", "{engine}");
    store
        .outbox_retry(next.id, 60_000, "LIS down")
        .expect("retry");
    assert!(
        store.outbox_next("lis", now_ms()).expect("next").is_none(),
        "{engine}"
    );
    store
        .outbox_park(next.id, "AR: unknown patient")
        .expect("park");
    let stats = store.outbox_stats("lis").expect("stats");
    assert_eq!((stats.pending, stats.parked), (0, 1), "{engine}");
    assert!(store.outbox_requeue(next.id).expect("requeue"), "{engine}");
    assert!(
        !store.outbox_requeue(next.id).expect("requeue"),
        "{engine}: not parked any more"
    );
    let again = store
        .outbox_next("lis", i64::MAX)
        .expect("next")
        .expect("back in line");
    assert_eq!(again.attempts, 2, "{engine}");
    store.outbox_delivered(again.id).expect("delivered");
    let stats = store.outbox_stats("lis").expect("stats");
    assert_eq!(
        (stats.pending, stats.delivered, stats.parked),
        (0, 1, 0),
        "{engine}"
    );
    assert_eq!(
        store.outbox_list(Some("pacs")).expect("list").len(),
        1,
        "{engine}"
    );
    assert_eq!(store.outbox_list(None).expect("list").len(), 2, "{engine}");

    // Studies, from the DICOM item's metadata.
    let studies = store.studies(None, 0).expect("studies");
    assert_eq!(studies.len(), 1, "{engine}");
    let s = &studies[0];
    assert_eq!(
        (
            s.study_uid.as_str(),
            s.patient_id.as_str(),
            s.modalities.as_str(),
            s.accession.as_str()
        ),
        ("1.2.3.4", "P2001", "CT", "ACC2001"),
        "{engine}"
    );
    assert_eq!(
        (s.series, s.instances, s.bytes),
        (1, 1, 300_000),
        "{engine}"
    );

    // A worklist, changed and versioned.
    let entry = |acc: &str| WorklistEntry {
        accession_number: acc.into(),
        patient_id: "P2001".into(),
        patient_name: "Chen^Jing=陈^静".into(),
        ..Default::default()
    };
    store
        .worklist_update(
            "lingshan/xiacun",
            &[entry("ACC2001"), entry("ACC2002")],
            &[],
        )
        .expect("worklist");
    let (v1, list) = store.worklist("lingshan/xiacun").expect("worklist");
    assert_eq!(list.len(), 2, "{engine}");
    assert_eq!(list[0].patient_name, "Chen^Jing=陈^静", "{engine}");
    store
        .worklist_update("lingshan/xiacun", &[], &["ACC2002".into()])
        .expect("worklist");
    let (v2, list) = store.worklist("lingshan/xiacun").expect("worklist");
    assert_eq!(list.len(), 1, "{engine}");
    assert_ne!(v1, v2, "{engine}");

    // A report finds its clinic by accession and goes down to the box.
    let report = read_report(&Message::parse(ORU).expect("ORU")).expect("report");
    let offset = time::UtcOffset::from_hms(8, 0, 0).expect("offset");
    let kept = store
        .report_commit(&report, "RIS", ORU.as_bytes(), &BTreeMap::new(), offset)
        .expect("report");
    assert_eq!(
        kept.value.gateway.as_deref(),
        Some("lingshan/xiacun/box-1"),
        "{engine}"
    );
    assert_eq!(
        kept.value.matched_by.as_deref(),
        Some("accession"),
        "{engine}"
    );
    let again = store
        .report_commit(&report, "RIS", ORU.as_bytes(), &BTreeMap::new(), offset)
        .expect("report again");
    assert_eq!(again.value.id, kept.value.id, "{engine}");
    let down = store
        .report_downlink_next("lingshan/xiacun/box-1", 10)
        .expect("downlink");
    assert_eq!(down.len(), 1, "{engine}");
    store
        .report_at_box(&kept.value.id, "lingshan/xiacun/box-1")
        .expect("at box");
    assert!(
        store
            .report_downlink_next("lingshan/xiacun/box-1", 10)
            .expect("downlink")
            .is_empty()
    );
    let stats = store.report_stats().expect("stats");
    assert_eq!((stats.waiting, stats.unmatched), (0, 0), "{engine}");
    assert_eq!(
        store.reports(false, 10).expect("reports").len(),
        1,
        "{engine}"
    );

    // The registry: tokens, revocations, retirements, configurations.
    store
        .token_created("tok-1", "lingshan/xiacun/box-2", i64::MAX, "admin")
        .expect("token");
    assert!(matches!(
        store.consume_token("tok-1", "10.0.0.2").expect("use"),
        TokenUse::Consumed
    ));
    assert!(matches!(
        store.consume_token("tok-1", "10.0.0.3").expect("use"),
        TokenUse::AlreadyUsed { .. }
    ));
    assert!(matches!(
        store.consume_token("tok-x", "10.0.0.3").expect("use"),
        TokenUse::Unknown
    ));
    assert!(
        store
            .revoke("lingshan/xiacun/box-9", "admin", "stolen")
            .expect("revoke")
    );
    assert!(
        !store
            .revoke("lingshan/xiacun/box-9", "admin", "stolen")
            .expect("revoke")
    );
    assert!(
        store
            .retire("lingshan/xiacun/box-1", "admin", "closed", false)
            .expect("retire")
    );
    assert!(
        store
            .retire("lingshan/xiacun/box-1", "admin", "closed again", false)
            .expect("retire")
    );
    let unwatched = store.unwatched_identities().expect("unwatched");
    assert_eq!(unwatched.len(), 2, "{engine}");
    store
        .publish_config("lingshan", "v1", "[uplink]\n", "admin")
        .expect("publish");
    store
        .publish_config("lingshan/xiacun", "v2", "[uplink]\n", "admin")
        .expect("publish");
    store
        .publish_config("lingshan/xiacun", "v3", "[uplink]\n", "admin")
        .expect("publish");
    let configs = store.configs().expect("configs");
    assert_eq!(
        configs
            .iter()
            .map(|c| c.version.as_str())
            .collect::<Vec<_>>(),
        ["v1", "v3"],
        "{engine}: the broadest scope first"
    );
    let mine = store
        .config_for("lingshan", "xiacun", "lingshan/xiacun/box-1")
        .expect("config")
        .expect("one applies");
    assert_eq!(mine.version, "v3", "{engine}");
    assert!(store.audit_log(100).expect("audit").len() >= 7, "{engine}");
    assert_eq!(store.fleet().expect("fleet").len(), 1, "{engine}");
    store.health().expect("health");
}

#[test]
fn the_store_answers_the_same_on_sqlite_and_postgresql() {
    let tmp = tempfile::tempdir().expect("tmp");
    let sqlite = Store::open(&tmp.path().join("sqlite")).expect("sqlite store");
    scenario("sqlite", &sqlite);

    let pg = Postgres::start("scenario").expect("PostgreSQL");
    let store = Store::open_postgres(&tmp.path().join("pg"), &pg.settings("yilian"))
        .expect("postgres store");
    scenario("postgres", &store);
    // Opening again (a restart, a second instance) finds the schema made.
    let again =
        Store::open_postgres(&tmp.path().join("pg"), &pg.settings("yilian")).expect("reopen");
    assert_eq!(again.items(None, None).expect("items").len(), 2);
}

#[test]
fn two_instances_on_one_postgresql_commit_each_upload_once() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pg = Postgres::start("instances").expect("PostgreSQL");
    // Two instances migrating at the same moment: the advisory lock
    // serialises the schema.
    let open = |name: &str| {
        let dir = tmp.path().join(name);
        let settings = pg.settings("yilian");
        std::thread::spawn(move || Store::open_postgres(&dir, &settings).expect("open"))
    };
    let (a, b) = (open("a"), open("b"));
    let stores = [a.join().expect("a"), b.join().expect("b")];

    // The token key: the first instance's stands, the second gets it (a
    // token made at one is good at the other).
    let first = stores[0]
        .shared_secret("token_key", &[1; 32])
        .expect("secret");
    let second = stores[1]
        .shared_secret("token_key", &[2; 32])
        .expect("secret");
    assert_eq!(first, vec![1; 32]);
    assert_eq!(second, first, "one key for every instance");

    // Every upload offered to both at once (a box that failed over while
    // its first COMMITTED was in flight).
    let gw = BoxIdentity::parse("lingshan/xiacun/box-1").expect("identity");
    let uploads = 40;
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = stores
        .iter()
        .cloned()
        .map(|store| {
            let (gw, barrier) = (gw.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut won = 0;
                for n in 0..uploads {
                    let payload = format!("payload {n}").repeat(100 + n as usize);
                    let o = offer(n, payload.as_bytes(), "file", &[]);
                    barrier.wait();
                    if upload(&store, &gw, &o, payload.as_bytes(), &["lis"]) {
                        won += 1;
                    }
                }
                won
            })
        })
        .collect();
    let committed: u32 = handles
        .into_iter()
        .map(|h| h.join().expect("instance"))
        .sum();
    assert!(
        committed >= uploads,
        "every upload committed by at least one instance"
    );
    let items = stores[0].items(None, None).expect("items");
    assert_eq!(items.len() as u32, uploads, "each upload once in the index");
    let stats = stores[1].outbox_stats("lis").expect("stats");
    assert_eq!(
        stats.pending,
        u64::from(uploads),
        "each delivery queued once"
    );

    // Both instances deliver to the LIS at once: each delivery is taken by
    // one of them.
    let handles: Vec<_> = stores
        .iter()
        .cloned()
        .map(|store| {
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                let mut idle = 0;
                while idle < 20 {
                    match store.outbox_next("lis", now_ms()).expect("next") {
                        Some(row) => {
                            idle = 0;
                            mine.push(row.id);
                            store.outbox_delivered(row.id).expect("delivered");
                        }
                        None => {
                            idle += 1;
                            std::thread::sleep(std::time::Duration::from_millis(5));
                        }
                    }
                }
                mine
            })
        })
        .collect();
    let taken: Vec<Vec<i64>> = handles
        .into_iter()
        .map(|h| h.join().expect("worker"))
        .collect();
    let mut all: Vec<i64> = taken.concat();
    all.sort_unstable();
    let before = all.len();
    all.dedup();
    assert_eq!(before, all.len(), "no delivery taken twice: {taken:?}");
    assert_eq!(all.len() as u32, uploads, "every delivery taken");
    eprintln!(
        "deliveries taken: {} by one instance, {} by the other",
        taken[0].len(),
        taken[1].len()
    );

    // An instance dies holding a delivery: the other passes it by until
    // the lease runs out, then takes it.
    let gw2 = BoxIdentity::parse("lingshan/xiacun/box-2").expect("identity");
    let payload = b"one more".to_vec();
    upload(
        &stores[0],
        &gw2,
        &offer(999, &payload, "file", &[]),
        &payload,
        &["lis"],
    );
    let now = now_ms();
    let held = stores[0]
        .outbox_next("lis", now)
        .expect("next")
        .expect("claimed");
    assert!(stores[1].outbox_next("lis", now).expect("next").is_none());
    let later = now + LEASE_MS + 1;
    let taken_over = stores[1]
        .outbox_next("lis", later)
        .expect("next")
        .expect("taken over");
    assert_eq!(taken_over.id, held.id);

    // The LIS takes one ordered connection: one instance delivers to it
    // fleet-wide, the other stands by until the first is gone.
    assert!(stores[0].claim_destination("lis").expect("claim"));
    assert!(stores[0].claim_destination("lis").expect("claim again"));
    assert!(!stores[1].claim_destination("lis").expect("claim"));
    assert!(
        stores[1]
            .claim_destination("pacs")
            .expect("another destination")
    );
    {
        let third =
            Store::open_postgres(&tmp.path().join("c"), &pg.settings("yilian")).expect("open");
        assert!(!third.claim_destination("lis").expect("claim"));
    }

    // The same report from the hospital reaching both instances.
    let report = read_report(&Message::parse(ORU).expect("ORU")).expect("report");
    let offset = time::UtcOffset::from_hms(8, 0, 0).expect("offset");
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = stores
        .iter()
        .cloned()
        .map(|store| {
            let (report, barrier) = (report.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                store
                    .report_commit(&report, "RIS", ORU.as_bytes(), &BTreeMap::new(), offset)
                    .expect("report")
                    .value
                    .id
            })
        })
        .collect();
    let ids: Vec<String> = handles
        .into_iter()
        .map(|h| h.join().expect("report"))
        .collect();
    assert_eq!(ids[0], ids[1]);
    assert_eq!(stores[0].reports(false, 10).expect("reports").len(), 1);

    // One enrollment token, two boxes racing through two instances.
    stores[0]
        .token_created("tok-race", "lingshan/xiacun/box-2", i64::MAX, "admin")
        .expect("token");
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = stores
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, store)| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                store
                    .consume_token("tok-race", &format!("10.0.0.{i}"))
                    .expect("use")
            })
        })
        .collect();
    let outcomes: Vec<TokenUse> = handles
        .into_iter()
        .map(|h| h.join().expect("use"))
        .collect();
    let consumed = outcomes
        .iter()
        .filter(|o| matches!(o, TokenUse::Consumed))
        .count();
    assert_eq!(
        consumed, 1,
        "exactly one box enrolls with one token: {outcomes:?}"
    );
}

#[test]
fn a_county_hub_moves_to_postgresql_with_nothing_lost() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hub = tmp.path().join("hub");
    let sqlite = Store::open(&hub).expect("sqlite store");
    scenario("sqlite", &sqlite);
    let pg = Postgres::start("migrate").expect("PostgreSQL");
    let settings = pg.settings("yilian");

    let mut tables_seen = std::collections::BTreeSet::new();
    let first = yilian_central::store::migrate::to_postgres(
        &hub,
        &settings,
        &Default::default(),
        |t, _, _| {
            tables_seen.insert(t.to_owned());
        },
    )
    .expect("migrate");
    let rows: u64 = first.tables.iter().map(|(_, n)| n).sum();
    assert_eq!(first.inserted, rows, "every row copied");
    assert_eq!(first.blobs, 3, "two items and one report message");
    assert!(tables_seen.contains("items") && tables_seen.contains("report_downlink"));
    // A second run (finishing one cut short) changes nothing.
    let second = yilian_central::store::migrate::to_postgres(
        &hub,
        &settings,
        &Default::default(),
        |_, _, _| {},
    )
    .expect("migrate again");
    assert_eq!(second.inserted, 0);
    assert_eq!(second.tables, first.tables);

    let moved = Store::open_postgres(&hub, &settings).expect("postgres store");
    let items = |s: &Store| -> Vec<(String, String, u64)> {
        s.items(None, None)
            .expect("items")
            .into_iter()
            .map(|i| (i.upload_id, i.sha256, i.size))
            .collect()
    };
    assert_eq!(items(&moved), items(&sqlite));
    let outbox = |s: &Store| -> Vec<(i64, &'static str, u32)> {
        s.outbox_list(None)
            .expect("outbox")
            .into_iter()
            .map(|o| (o.id, o.state, o.attempts))
            .collect()
    };
    assert_eq!(outbox(&moved), outbox(&sqlite));
    assert_eq!(
        moved.worklist("lingshan/xiacun").expect("worklist").0,
        sqlite.worklist("lingshan/xiacun").expect("worklist").0
    );
    let reports = |s: &Store| -> Vec<(String, Option<String>)> {
        s.reports(false, 10)
            .expect("reports")
            .into_iter()
            .map(|r| (r.id, r.gateway))
            .collect()
    };
    assert_eq!(reports(&moved), reports(&sqlite));
    assert_eq!(
        moved.audit_log(100).expect("audit").len(),
        sqlite.audit_log(100).expect("audit").len()
    );
    assert_eq!(
        moved.unwatched_identities().expect("unwatched"),
        sqlite.unwatched_identities().expect("unwatched")
    );

    // The hub goes on at PostgreSQL: new rows take new ids (an id the
    // hub had used would collide and the item would not be kept).
    let gw = BoxIdentity::parse("lingshan/xiacun/box-1").expect("identity");
    let payload = b"after the move".to_vec();
    assert!(upload(
        &moved,
        &gw,
        &offer(77, &payload, "hl7", &[]),
        &payload,
        &["lis"]
    ));
    assert_eq!(items(&moved).len(), 3, "the new item is kept");
    assert_eq!(moved.outbox_list(Some("lis")).expect("outbox").len(), 2);
    moved
        .audit("admin", "test", "after", "")
        .expect("audit after the move");
}

#[test]
fn the_index_over_tls_checks_the_servers_certificate() {
    let tmp = tempfile::tempdir().expect("tmp");
    let fleet = yilian_rig::fleet::Fleet::create(&tmp.path().join("fleet")).expect("fleet");
    let server = fleet.central("localhost").expect("server certificate");
    let pg = Postgres::start_tls("tls", &server.cert, &server.key).expect("PostgreSQL with TLS");
    let mut settings = pg.settings("yilian");
    settings.url = settings.url.replace("host=127.0.0.1", "host=localhost");
    settings.ca_file = Some(server.ca.clone());
    let store = Store::open_postgres(&tmp.path().join("data"), &settings).expect("open over TLS");
    scenario("postgres over TLS", &store);
    assert!(
        pg.tls_connections().expect("pg_stat_ssl") >= 1,
        "the store's connection is TLS"
    );

    // A server whose certificate another CA signed is refused.
    let other = yilian_rig::fleet::Fleet::create(&tmp.path().join("other")).expect("fleet");
    let foreign = other.central("localhost").expect("certificate");
    settings.ca_file = Some(foreign.ca.clone());
    let refused = Store::open_postgres(&tmp.path().join("data2"), &settings)
        .expect_err("a server the CA did not sign");
    let said = refused.to_string();
    assert!(said.contains("invalid peer certificate"), "{said}");
    eprintln!("refused: {said}");
}

/// A store on the PostgreSQL index with its payloads in the Garage bucket,
/// its `data_dir` (which must hold nothing an instance needs) its own.
fn bucket_store(dir: &std::path::Path, pg: &Postgres, garage: &Garage) -> Store {
    Store::open_with(
        dir,
        &yilian_central::store::Backend::Postgres(pg.settings("yilian")),
        &garage.settings(),
    )
    .expect("store with payloads in the bucket")
}

#[test]
fn the_store_answers_the_same_with_payloads_in_a_real_s3_bucket() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pg = Postgres::start("bucket-scenario").expect("PostgreSQL");
    let garage = Garage::start("scenario").expect("Garage");
    let store = bucket_store(&tmp.path().join("a"), &pg, &garage);
    scenario("postgres+garage", &store);
    for item in store.items(None, None).expect("items") {
        assert!(item.path.starts_with("s3://yilian/blobs/"), "{}", item.path);
        let bytes = store.read_blob(&item.sha256).expect("read from the bucket");
        assert_eq!(hex::encode(Sha256::digest(&bytes)), item.sha256);
    }
    assert!(
        !tmp.path()
            .join("a/blobs")
            .read_dir()
            .expect("dir")
            .any(|_| true),
        "no payload on the instance's own disk"
    );
}

#[test]
fn a_large_upload_resumes_on_another_instance_from_its_last_part() {
    let tmp = tempfile::tempdir().expect("tmp");
    let pg = Postgres::start("bucket-resume").expect("PostgreSQL");
    let garage = Garage::start("resume").expect("Garage");
    let a = bucket_store(&tmp.path().join("a"), &pg, &garage);
    let b = bucket_store(&tmp.path().join("b"), &pg, &garage);
    let gw = BoxIdentity::parse("lingshan/xiacun/box-1").expect("identity");
    let part = 5 * 1024 * 1024;

    // Sizes around the part boundary: below one part (one PUT), exactly
    // one, one and a bit, and several with a short tail.
    for (n, size) in [
        (1u32, part - 1),
        (2, part),
        (3, part + 1),
        (4, 4 * part + 777),
    ] {
        let payload: Vec<u8> = (0..size).map(|i| (i * 31 + n as usize) as u8).collect();
        let o = offer(100 + n, &payload, "dicom", &[]);
        // Instance a receives a little over half, in 64 KiB chunks as the
        // link delivers them, then dies (the partial dropped, no commit).
        let Held::Partial(0) = a.held(&gw, &o, &["pacs"]).expect("held") else {
            panic!("size {size}: nothing held yet")
        };
        let mut p = a.open_partial(&gw, &o, 0).expect("open");
        let cut = size / 2 + 1000;
        for chunk in payload[..cut].chunks(64 * 1024) {
            p.append(chunk).expect("append");
        }
        drop(p);
        // Instance b resumes where the last stored part ended: whole parts
        // only, so at most one part is sent again.
        let Held::Partial(at) = b.held(&gw, &o, &["pacs"]).expect("held at b") else {
            panic!("size {size}: not committed yet")
        };
        assert_eq!(at as usize, cut / part * part, "size {size}: resume offset");
        let mut p = b.open_partial(&gw, &o, at).expect("open at b");
        for chunk in payload[at as usize..].chunks(64 * 1024) {
            p.append(chunk).expect("append at b");
        }
        let stored = b.commit(&gw, &o, p, &["pacs"]).expect("commit at b");
        assert_eq!(stored.value.size, size as u64);
        // Both instances read the same object, byte for byte.
        let back = a.read_blob(&stored.value.sha256).expect("read at a");
        assert_eq!(back.len(), size, "size {size}");
        assert!(back == payload, "size {size}: the object is the payload");
        // A resend after a lost COMMITTED, at either instance, is held.
        assert!(matches!(
            a.held(&gw, &o, &["pacs"]).expect("held"),
            Held::Committed(_)
        ));
        eprintln!("{size} bytes: instance a died at {cut}, b resumed at {at}");
    }
    assert_eq!(a.items(None, None).expect("items").len(), 4);
    assert_eq!(
        garage.wait_multipart_uploads(0).expect("bucket info"),
        0,
        "no multipart upload left open"
    );

    // The same content from another box: already in the bucket under its
    // hash (put there after its hash was checked), committed at once.
    let other = BoxIdentity::parse("lingshan/dongcun/box-1").expect("identity");
    let payload: Vec<u8> = (0..part + 1).map(|i| (i * 31 + 3) as u8).collect();
    let o = offer(900, &payload, "dicom", &[]);
    assert!(matches!(
        b.held(&other, &o, &["pacs"]).expect("held"),
        Held::Committed(_)
    ));
    assert_eq!(b.outbox_list(Some("pacs")).expect("outbox").len(), 5);

    // Bytes that do not hash to the offer: refused, nothing kept, the next
    // attempt starts from zero.
    let good: Vec<u8> = (0..2 * part + 5).map(|i| (i * 7) as u8).collect();
    let mut bad = good.clone();
    bad[part + 3] ^= 1;
    let o = offer(901, &good, "dicom", &[]);
    let mut p = a.open_partial(&gw, &o, 0).expect("open");
    p.append(&bad).expect("append");
    assert!(matches!(
        a.commit(&gw, &o, p, &["pacs"]),
        Err(yilian_central::store::StoreError::HashMismatch { .. })
    ));
    assert!(matches!(
        a.held(&gw, &o, &["pacs"]).expect("held"),
        Held::Partial(0)
    ));
    assert_eq!(garage.wait_multipart_uploads(0).expect("bucket info"), 0);

    // Abandoned: an upload begun (two parts stored) and never finished is
    // dropped by the sweep of either instance, once.
    let mut p = a.open_partial(&gw, &o, 0).expect("open");
    p.append(&good[..2 * part + 1]).expect("append");
    drop(p);
    assert!(
        matches!(a.held(&gw, &o, &["pacs"]).expect("held"), Held::Partial(n) if n == 2 * part as u64)
    );
    assert_eq!(garage.wait_multipart_uploads(1).expect("bucket info"), 1);
    assert_eq!(
        b.sweep_abandoned(std::time::Duration::from_secs(3600))
            .expect("sweep"),
        0,
        "not idle yet"
    );
    std::thread::sleep(std::time::Duration::from_millis(20));
    let swept = [a.clone(), b.clone()].map(|s| {
        std::thread::spawn(move || {
            s.sweep_abandoned(std::time::Duration::from_millis(1))
                .expect("sweep")
        })
    });
    let swept: u64 = swept.into_iter().map(|h| h.join().expect("sweeper")).sum();
    assert_eq!(swept, 1, "dropped once");
    assert!(matches!(
        a.held(&gw, &o, &["pacs"]).expect("held"),
        Held::Partial(0)
    ));
    assert_eq!(garage.wait_multipart_uploads(0).expect("bucket info"), 0);

    // Swept while still in use (a box that paused past the limit): the
    // next part finds its multipart upload gone, the attempt fails, and
    // the next one starts from zero instead of sending parts to nothing.
    let mut p = a.open_partial(&gw, &o, 0).expect("open");
    p.append(&good[..part + 1]).expect("append");
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(
        b.sweep_abandoned(std::time::Duration::from_millis(1))
            .expect("sweep"),
        1
    );
    let err = p
        .append(&good[part + 1..2 * part + 2])
        .expect_err("its multipart upload is gone");
    assert!(err.to_string().contains("is gone"), "{err}");
    assert!(matches!(
        a.held(&gw, &o, &["pacs"]).expect("held"),
        Held::Partial(0)
    ));
}

#[test]
fn a_county_hub_moves_to_postgresql_and_a_bucket() {
    let tmp = tempfile::tempdir().expect("tmp");
    let hub = tmp.path().join("hub");
    let sqlite = Store::open(&hub).expect("sqlite store");
    scenario("sqlite", &sqlite);
    let pg = Postgres::start("migrate-bucket").expect("PostgreSQL");
    let garage = Garage::start("migrate").expect("Garage");
    let settings = pg.settings("yilian");
    let first = yilian_central::store::migrate::to_postgres(
        &hub,
        &settings,
        &garage.settings(),
        |_, _, _| {},
    )
    .expect("migrate");
    assert_eq!((first.blobs, first.blobs_copied), (3, 3));
    let second = yilian_central::store::migrate::to_postgres(
        &hub,
        &settings,
        &garage.settings(),
        |_, _, _| {},
    )
    .expect("migrate again");
    assert_eq!(
        (second.inserted, second.blobs_copied),
        (0, 0),
        "nothing twice"
    );
    // Served from the bucket by an instance with an empty data directory.
    let moved = bucket_store(&tmp.path().join("new"), &pg, &garage);
    for item in moved.items(None, None).expect("items") {
        let bytes = moved.read_blob(&item.sha256).expect("read");
        assert_eq!(hex::encode(Sha256::digest(&bytes)), item.sha256);
    }
    // A payload damaged on the old disk is refused, not carried over.
    let victim = sqlite.items(None, None).expect("items")[1].sha256.clone();
    let file = hub.join("blobs").join(&victim[..2]).join(&victim);
    let pg2 = Postgres::start("migrate-damaged").expect("PostgreSQL");
    let garage2 = Garage::start("migrate-damaged").expect("Garage");
    let mut bytes = std::fs::read(&file).expect("read");
    bytes[10] ^= 0xff;
    std::fs::write(&file, bytes).expect("damage");
    let err = yilian_central::store::migrate::to_postgres(
        &hub,
        &pg2.settings("yilian"),
        &garage2.settings(),
        |_, _, _| {},
    )
    .expect_err("a damaged payload stops the migration");
    assert!(err.to_string().contains("damaged"), "{err}");
}
