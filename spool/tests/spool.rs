#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers may panic on setup failure
use std::io::Write;
use std::time::Duration;

use yilian_spool::{Lane, NackOutcome, NewItem, Spool, SpoolConfig, SpoolError};

/// Payload files holding bytes (the spool also keeps a few empty ones
/// created ahead of need).
fn payload_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("payload"))
        .expect("ls")
        .filter(|e| {
            e.as_ref()
                .ok()
                .and_then(|e| e.metadata().ok())
                .is_some_and(|m| m.len() > 0)
        })
        .count()
}

fn config(dir: &std::path::Path) -> SpoolConfig {
    let mut c = SpoolConfig::new(dir);
    c.retry_base = Duration::from_millis(0);
    c
}

fn item(lane: Lane) -> NewItem {
    NewItem::new(lane, "file", "test:device")
}

fn read_all(spool: &Spool, lease: &yilian_spool::Lease) -> Vec<u8> {
    let p = spool.payload(lease).expect("payload");
    let mut buf = vec![0u8; lease.size as usize];
    p.read_exact_at(&mut buf, 0).expect("read");
    buf
}

#[test]
fn append_lease_ack_inline_and_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let spool = Spool::open(config(dir.path())).expect("open");
    let small = b"MSH|^~\\&|small".to_vec();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let c1 = spool.append(item(Lane::Clinical), &small).expect("append");
    let c2 = spool.append(item(Lane::Clinical), &big).expect("append");
    assert!(!c1.is_duplicate());
    assert_eq!(c2.size(), big.len() as u64);
    assert!(dir.path().join("payload").join(c2.upload_id()).exists());
    assert!(
        !dir.path().join("payload").join(c1.upload_id()).exists(),
        "small payloads are inline"
    );

    let l1 = spool.lease(&Lane::ALL).expect("lease").expect("item");
    assert_eq!(l1.upload_id, c1.upload_id(), "FIFO within a lane");
    assert_eq!(read_all(&spool, &l1), small);
    let l2 = spool.lease(&Lane::ALL).expect("lease").expect("item");
    assert_eq!(read_all(&spool, &l2), big);
    assert_eq!(&l2.sha256, c2.sha256());
    assert!(
        spool.lease(&Lane::ALL).expect("lease").is_none(),
        "leased items are not handed out twice"
    );
    spool.ack(l1).expect("ack");
    spool.ack(l2).expect("ack");
    let s = spool.stats().expect("stats");
    assert_eq!(s.lanes.iter().map(|l| l.items).sum::<u64>(), 0);
    assert_eq!(s.delivered_kept, 2);
}

#[test]
fn urgent_overtakes_bulk_and_clinical() {
    let dir = tempfile::tempdir().expect("tmp");
    let spool = Spool::open(config(dir.path())).expect("open");
    spool.append(item(Lane::Bulk), b"b1").expect("append");
    spool.append(item(Lane::Clinical), b"c1").expect("append");
    spool.append(item(Lane::Urgent), b"u1").expect("append");
    spool.append(item(Lane::Bulk), b"b2").expect("append");
    let order: Vec<Lane> = std::iter::from_fn(|| spool.lease(&Lane::ALL).expect("lease"))
        .map(|l| l.lane)
        .collect();
    assert_eq!(
        order,
        [Lane::Urgent, Lane::Clinical, Lane::Bulk, Lane::Bulk]
    );
}

#[test]
fn concurrent_appends_all_commit() {
    let dir = tempfile::tempdir().expect("tmp");
    let spool = Spool::open(config(dir.path())).expect("open");
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let spool = spool.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let body = format!("thread {t} item {i}");
                    spool
                        .append(item(Lane::Clinical), body.as_bytes())
                        .expect("append");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert_eq!(
        spool.stats().expect("stats").lanes[Lane::Clinical as usize].items,
        400
    );
}

#[test]
fn dedup_key_stores_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let spool = Spool::open(config(dir.path())).expect("open");
    let mut it = item(Lane::Clinical);
    it.dedup_key = Some("hl7:LAB|CLINIC|MSG0001".into());
    let first = spool
        .append(it.clone(), &vec![7u8; 100_000])
        .expect("append");
    let second = spool.append(it, &vec![7u8; 100_000]).expect("append");
    assert!(second.is_duplicate());
    assert_eq!(first.upload_id(), second.upload_id());
    assert_eq!(payload_files(dir.path()), 1);
}

#[test]
fn a_payload_lost_to_disk_damage_does_not_answer_for_the_resend() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut it = item(Lane::Clinical);
    it.dedup_key = Some("dicom:ct:1.2.3:abc".into());
    let first = {
        let spool = Spool::open(config(dir.path())).expect("open");
        spool
            .append(it.clone(), &vec![7u8; 100_000])
            .expect("append")
    };
    std::fs::remove_file(dir.path().join("payload").join(first.upload_id())).expect("damage");
    let spool = Spool::open(config(dir.path())).expect("reopen");
    let again = spool.append(it, &vec![7u8; 100_000]).expect("append");
    assert!(
        !again.is_duplicate(),
        "stored anew, not the dead item's proof"
    );
    let l = spool.lease(&Lane::ALL).expect("lease").expect("item");
    assert_eq!(l.upload_id, again.upload_id());
}

#[test]
fn poison_item_is_dead_lettered_without_blocking_the_lane() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = config(dir.path());
    c.max_attempts = 3;
    c.retry_base = Duration::from_secs(3600);
    let spool = Spool::open(c).expect("open");
    let poison = spool
        .append(item(Lane::Clinical), b"poison")
        .expect("append");
    spool.append(item(Lane::Clinical), b"good").expect("append");
    let l = spool.lease(&Lane::ALL).expect("lease").expect("item");
    assert_eq!(l.upload_id, poison.upload_id());
    assert!(
        matches!(spool.nack(l, "hash mismatch").expect("nack"), NackOutcome::RetryIn(ms) if ms == 3_600_000)
    );
    // The poisoned item waits for its retry time; the next one flows.
    let l = spool.lease(&Lane::ALL).expect("lease").expect("item");
    assert_eq!(read_all(&spool, &l), b"good");
    spool.ack(l).expect("ack");
    assert!(spool.lease(&Lane::ALL).expect("lease").is_none());
}

#[test]
fn dead_letters_can_be_listed_and_requeued() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = config(dir.path());
    c.max_attempts = 2;
    let spool = Spool::open(c).expect("open");
    spool.append(item(Lane::Bulk), b"x").expect("append");
    let l = spool.lease(&Lane::ALL).expect("lease").expect("item");
    assert_eq!(
        spool.nack(l, "rejected: too large").expect("nack"),
        NackOutcome::RetryIn(0)
    );
    let l = spool.lease(&Lane::ALL).expect("lease").expect("item");
    assert_eq!(
        spool.nack(l, "rejected: too large").expect("nack"),
        NackOutcome::DeadLettered
    );
    assert!(spool.lease(&Lane::ALL).expect("lease").is_none());
    let dead = spool.dead_letters(10).expect("list");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].last_error.as_deref(), Some("rejected: too large"));
    spool.requeue(dead[0].id).expect("requeue");
    assert!(spool.lease(&Lane::ALL).expect("lease").is_some());
    assert!(matches!(spool.requeue(999), Err(SpoolError::NotFound(999))));
}

#[test]
fn quota_refuses_above_high_mark_and_evicts_only_delivered() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = config(dir.path());
    c.quota_bytes = 1_000_000;
    c.high_watermark = 0.9;
    c.low_watermark = 0.5;
    let spool = Spool::open(c).expect("open");
    for _ in 0..4 {
        spool
            .append(item(Lane::Bulk), &vec![1u8; 200_000])
            .expect("append");
    }
    // 800 kB held, high mark 900 kB: 200 kB more must be refused, and the
    // refusal must leave what is stored untouched.
    let err = spool
        .append(item(Lane::Bulk), &vec![2u8; 200_000])
        .expect_err("full");
    assert!(matches!(err, SpoolError::Full { .. }), "{err}");
    assert_eq!(err.reason(), "full");
    assert_eq!(
        spool.stats().expect("stats").lanes[Lane::Bulk as usize].items,
        4
    );
    // Still refusing while undelivered: nothing may be evicted.
    assert!(spool.append(item(Lane::Bulk), &vec![2u8; 1000]).is_err());
    // Deliver two: they become evictable and room appears.
    for _ in 0..2 {
        let l = spool.lease(&Lane::ALL).expect("lease").expect("item");
        spool.ack(l).expect("ack");
    }
    // Hysteresis: refusing continues until usage would stay below the low
    // mark. 400 kB undelivered + 200 kB is still above 500 kB...
    assert!(spool.append(item(Lane::Bulk), &vec![3u8; 200_000]).is_err());
    // ...but the delivered items were evicted, and 50 kB fits.
    spool
        .append(item(Lane::Bulk), &vec![3u8; 50_000])
        .expect("room after eviction");
    let s = spool.stats().expect("stats");
    assert_eq!(s.delivered_kept, 0);
    assert_eq!(
        s.lanes[Lane::Bulk as usize].items,
        3,
        "two undelivered + the new one"
    );
    assert_eq!(s.used_bytes, 450_000);
    // The evicted payload files are gone; the two undelivered ones stay
    // (the 50 kB item is inline).
    assert_eq!(payload_files(dir.path()), 2);
}

#[test]
fn a_refusal_lifts_once_items_delivered_after_it_are_evicted() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = config(dir.path());
    c.quota_bytes = 1_000_000;
    c.high_watermark = 0.9;
    c.low_watermark = 0.5;
    let spool = Spool::open(c).expect("open");
    for _ in 0..4 {
        spool
            .append(item(Lane::Bulk), &vec![1u8; 200_000])
            .expect("append");
    }
    // Refused at 800 kB; then one is delivered, and the next refusal
    // evicts it: 600 kB undelivered.
    assert!(spool.append(item(Lane::Bulk), &vec![2u8; 200_000]).is_err());
    let l = spool.lease(&Lane::ALL).expect("lease").expect("item");
    spool.ack(l).expect("ack");
    assert!(spool.append(item(Lane::Bulk), &vec![2u8; 200_000]).is_err());
    assert_eq!(spool.stats().expect("stats").used_bytes, 600_000);
    // The rest is delivered. 600 kB + 200 kB is under the high mark but
    // over the low one: the spool must evict to lift its refusal rather
    // than keep refusing a device while it holds only delivered data.
    while let Some(l) = spool.lease(&Lane::ALL).expect("lease") {
        spool.ack(l).expect("ack");
    }
    spool
        .append(item(Lane::Bulk), &vec![2u8; 200_000])
        .expect("room once the delivered items go");
    // Evicted oldest first only down to the low mark less the new item.
    assert_eq!(spool.stats().expect("stats").used_bytes, 400_000);
}

#[test]
fn a_spool_of_delivered_items_at_its_high_mark_takes_the_next_item() {
    // Delivered items are kept for the retention period and count against
    // the quota; reaching the high mark with them must evict, never turn a
    // device away, whatever the payload size and however it is written.
    for (size, streamed) in [(200_000usize, false), (200_000, true), (120_001, true)] {
        let dir = tempfile::tempdir().expect("tmp");
        let mut c = config(dir.path());
        c.quota_bytes = 1_000_000;
        c.high_watermark = 0.9;
        c.low_watermark = 0.5;
        let spool = Spool::open(c).expect("open");
        let mut stored = 0;
        while spool.stats().expect("stats").used_bytes + (size as u64) <= 900_000 {
            spool
                .append(item(Lane::Bulk), &vec![1u8; size])
                .expect("append");
            stored += 1;
        }
        while let Some(l) = spool.lease(&Lane::ALL).expect("lease") {
            spool.ack(l).expect("ack");
        }
        for n in 0..3 * stored {
            let r = if streamed {
                let mut w = spool.writer(item(Lane::Bulk)).expect("writer");
                vec![2u8; size]
                    .chunks(64 * 1024)
                    .try_for_each(|c| w.write_all(c).map_err(|e| e.to_string()))
                    .and_then(|_| w.commit().map_err(|e| e.to_string()))
            } else {
                spool
                    .append(item(Lane::Bulk), &vec![2u8; size])
                    .map_err(|e| e.to_string())
            };
            r.unwrap_or_else(|e| panic!("item {n} of {size} B (streamed {streamed}): {e}"));
            let l = spool.lease(&Lane::ALL).expect("lease").expect("item");
            spool.ack(l).expect("ack");
        }
        let s = spool.stats().expect("stats");
        assert!(s.used_bytes <= 900_000, "{s:?}");
        assert!(!s.refusing);
    }
}

#[test]
fn streaming_writer_refuses_early_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = config(dir.path());
    c.quota_bytes = 1_000_000;
    let spool = Spool::open(c).expect("open");
    let mut w = spool.writer(item(Lane::Bulk)).expect("writer");
    let mut refused = false;
    for _ in 0..100 {
        if w.write_all(&[0u8; 64 * 1024]).is_err() {
            refused = true;
            break;
        }
    }
    assert!(
        refused,
        "a 6 MB payload must be refused by a 1 MB quota while streaming"
    );
    assert!(w.commit().is_err());
    assert_eq!(
        payload_files(dir.path()),
        0,
        "the refused payload's file is removed"
    );
    spool
        .append(item(Lane::Bulk), b"still works")
        .expect("append");
}

#[test]
fn restart_recovers_leases_and_partial_files() {
    let dir = tempfile::tempdir().expect("tmp");
    {
        let spool = Spool::open(config(dir.path())).expect("open");
        spool
            .append(item(Lane::Bulk), &vec![9u8; 200_000])
            .expect("append");
        let _leased = spool.lease(&Lane::ALL).expect("lease").expect("item");
        // A payload being written when the process died, its index commit
        // never reached:
        std::fs::write(dir.path().join("payload").join("deadbeef"), b"half").expect("write");
        // A partial payload staged the way earlier versions did:
        std::fs::create_dir_all(dir.path().join("tmp")).expect("mkdir");
        std::fs::write(dir.path().join("tmp").join("abc.part"), b"half").expect("write");
    }
    let spool = Spool::open(config(dir.path())).expect("reopen");
    assert!(!dir.path().join("tmp").exists());
    assert!(!dir.path().join("payload").join("deadbeef").exists());
    assert_eq!(payload_files(dir.path()), 1, "the committed payload stays");
    assert_eq!(
        std::fs::read_dir(dir.path().join("payload"))
            .expect("ls")
            .count(),
        1,
        "and the empty files created ahead go"
    );
    let l = spool
        .lease(&Lane::ALL)
        .expect("lease")
        .expect("lease returned to ready");
    assert_eq!(read_all(&spool, &l), vec![9u8; 200_000]);
}

#[test]
fn retention_purges_only_delivered_items() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut c = config(dir.path());
    c.retention = Duration::from_millis(0);
    let spool = Spool::open(c).expect("open");
    spool
        .append(item(Lane::Bulk), &vec![1u8; 100_000])
        .expect("append");
    spool
        .append(item(Lane::Bulk), &vec![2u8; 100_000])
        .expect("append");
    let l = spool.lease(&Lane::ALL).expect("lease").expect("item");
    spool.ack(l).expect("ack");
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(spool.purge_expired().expect("purge"), 1);
    let s = spool.stats().expect("stats");
    assert_eq!(s.delivered_kept, 0);
    assert_eq!(s.lanes[Lane::Bulk as usize].items, 1);
    assert_eq!(payload_files(dir.path()), 1);
}

#[test]
fn inspect_reads_while_open() {
    let dir = tempfile::tempdir().expect("tmp");
    let spool = Spool::open(config(dir.path())).expect("open");
    spool
        .append(item(Lane::Urgent), b"stat ecg")
        .expect("append");
    let (stats, items) = Spool::inspect(dir.path(), 10).expect("inspect");
    assert_eq!(stats.lanes[Lane::Urgent as usize].items, 1);
    assert_eq!(items[0].lane, "urgent");
    assert_eq!(items[0].state, "ready");
}

/// The index as a power cut could leave it: rows committed while their
/// payload's data sync was still running carry an `unsynced` mark.
fn mark_unsynced(dir: &std::path::Path, ids: &[i64]) {
    let conn = rusqlite::Connection::open(dir.join("index.sqlite")).expect("index");
    for id in ids {
        conn.execute("INSERT OR IGNORE INTO unsynced(id) VALUES (?1)", [id])
            .expect("mark");
    }
}

fn unsynced_marks(dir: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(dir.join("index.sqlite")).expect("index");
    conn.query_row("SELECT COUNT(*) FROM unsynced", [], |r| r.get(0))
        .expect("count")
}

/// The commit overlaps the payload's data sync with the index commit, so a
/// power cut can leave an indexed row whose payload is torn. Its commit had
/// not returned, so its device was never answered: the next open removes
/// it, keeps every payload that is whole, and the device's resend is
/// stored anew.
#[test]
fn a_power_cut_during_the_payload_sync_removes_only_what_was_never_acknowledged() {
    let dir = tempfile::tempdir().expect("tmp");
    let with_key = |key: &str| {
        let mut it = item(Lane::Bulk);
        it.dedup_key = Some(key.into());
        it
    };
    let (whole, cut_short, scrambled, small) = {
        let spool = Spool::open(config(dir.path())).expect("open");
        let whole = spool
            .append(with_key("whole"), &vec![1u8; 300_000])
            .expect("append");
        let cut_short = spool
            .append(with_key("cut"), &vec![2u8; 300_000])
            .expect("append");
        let scrambled = spool
            .append(with_key("scrambled"), &vec![3u8; 300_000])
            .expect("append");
        let small = spool.append(item(Lane::Clinical), b"ORU").expect("append");
        (whole, cut_short, scrambled, small)
    };
    // A clean stop leaves no marks (the writer thread clears them as it
    // ends, just after the last handle is dropped).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while unsynced_marks(dir.path()) > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(unsynced_marks(dir.path()), 0);
    mark_unsynced(dir.path(), &[whole.id(), cut_short.id(), scrambled.id()]);
    let payload = |c: &yilian_spool::Committed| dir.path().join("payload").join(c.upload_id());
    // What reached the disk before the cut: half of one file, and the
    // other's length with stale blocks in it.
    std::fs::OpenOptions::new()
        .write(true)
        .open(payload(&cut_short))
        .and_then(|f| f.set_len(150_000))
        .expect("tear");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(payload(&scrambled))
            .expect("open");
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(200_000)).expect("seek");
        f.write_all(&[0u8; 4096]).expect("scramble");
    }

    let spool = Spool::open(config(dir.path())).expect("reopen");
    assert_eq!(unsynced_marks(dir.path()), 0, "every mark settled at open");
    assert!(!payload(&cut_short).exists() && !payload(&scrambled).exists());
    let mut held = Vec::new();
    while let Some(l) = spool.lease(&Lane::ALL).expect("lease") {
        held.push((l.upload_id.clone(), read_all(&spool, &l)));
        spool.ack(l).expect("ack");
    }
    held.sort();
    let mut expected = vec![
        (whole.upload_id().to_owned(), vec![1u8; 300_000]),
        (small.upload_id().to_owned(), b"ORU".to_vec()),
    ];
    expected.sort();
    assert_eq!(held, expected, "the whole payload and the inline item stay");
    // The device was never answered for the torn ones and sends again.
    let again = spool
        .append(with_key("cut"), &vec![2u8; 300_000])
        .expect("resend");
    assert!(
        !again.is_duplicate(),
        "stored anew, not answered by torn bytes"
    );
    let resent = spool
        .append(with_key("whole"), &vec![1u8; 300_000])
        .expect("resend");
    assert!(
        resent.is_duplicate(),
        "the whole one still answers its resend"
    );
}

/// Two senders with the same item at once: while the first copy's payload
/// may not yet be on the disk, the second is asked to retry rather than be
/// answered on the strength of the first.
#[test]
fn a_resend_while_the_first_copy_syncs_is_asked_to_retry() {
    let dir = tempfile::tempdir().expect("tmp");
    let spool = Spool::open(config(dir.path())).expect("open");
    let mut it = item(Lane::Bulk);
    it.dedup_key = Some("dicom:ct:1.2.3:abc".into());
    let first = spool
        .append(it.clone(), &vec![5u8; 200_000])
        .expect("append");
    // Its own mark goes with the next transaction; then another connection
    // marks it as a commit still syncing would have.
    spool.stats().expect("a transaction");
    assert_eq!(unsynced_marks(dir.path()), 0);
    mark_unsynced(dir.path(), &[first.id()]);
    match spool.append(it.clone(), &vec![5u8; 200_000]) {
        Err(e @ SpoolError::InFlight { .. }) => assert_eq!(e.reason(), "busy"),
        other => panic!("expected a retry, got {other:?}"),
    }
    assert_eq!(payload_files(dir.path()), 1, "the second copy is not kept");
    let conn = rusqlite::Connection::open(dir.path().join("index.sqlite")).expect("index");
    conn.execute("DELETE FROM unsynced", []).expect("synced");
    let again = spool.append(it, &vec![5u8; 200_000]).expect("append");
    assert!(again.is_duplicate());
    assert_eq!(again.upload_id(), first.upload_id());
}

/// Payloads of every size around the buffer and writeback boundaries come
/// back byte for byte, streamed in pieces of several sizes.
#[test]
fn streamed_payloads_of_every_size_around_the_buffers_come_back_whole() {
    let dir = tempfile::tempdir().expect("tmp");
    let spool = Spool::open(config(dir.path())).expect("open");
    let k = 1024;
    let sizes = [
        0,
        1,
        8 * k - 1,
        8 * k,
        64 * k - 1,
        64 * k,
        64 * k + 1,
        256 * k - 1,
        256 * k,
        256 * k + 1,
        512 * k + 13,
        1024 * k + 7,
        3 * 1024 * k + 5,
    ];
    let pieces = [1_000, 64 * k, 131_066, 256 * k, 1024 * k];
    let mut sent = std::collections::HashMap::new();
    for (i, size) in sizes.iter().enumerate() {
        let piece = pieces[i % pieces.len()];
        let body: Vec<u8> = (0..*size).map(|b| (b * 7 + i) as u8).collect();
        let mut w = spool.writer(item(Lane::Bulk)).expect("writer");
        for chunk in body.chunks(piece) {
            w.write_bytes(chunk).expect("write");
        }
        let c = w.commit().expect("commit");
        sent.insert(c.upload_id().to_owned(), body);
    }
    let mut seen = 0;
    while let Some(l) = spool.lease(&Lane::ALL).expect("lease") {
        let body = sent.get(&l.upload_id).expect("known");
        assert_eq!(&read_all(&spool, &l), body, "size {}", body.len());
        spool.ack(l).expect("ack");
        seen += 1;
    }
    assert_eq!(seen, sizes.len());
}

/// The uplink may lease an item the moment its row commits, while the
/// appender is still syncing: every payload it reads must already be
/// whole. Appenders write in pieces the write buffer holds back, so a
/// row committed before the buffer's flush would show a short file.
#[test]
fn an_item_leased_while_its_payload_syncs_reads_whole() {
    use sha2::Digest;
    let dir = tempfile::tempdir().expect("tmp");
    let spool = Spool::open(config(dir.path())).expect("open");
    let appenders: Vec<_> = (0..4u8)
        .map(|t| {
            let spool = spool.clone();
            std::thread::spawn(move || {
                for i in 0..50u32 {
                    let size = 200_000 + (i as usize * 7_919) % 300_000;
                    let body: Vec<u8> = (0..size).map(|b| (b as u32 ^ i) as u8 ^ t).collect();
                    let mut w = spool.writer(item(Lane::Bulk)).expect("writer");
                    for piece in body.chunks(100_000) {
                        w.write_bytes(piece).expect("write");
                    }
                    w.commit().expect("commit");
                }
            })
        })
        .collect();
    let mut read = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while read < 200 && std::time::Instant::now() < deadline {
        let Some(l) = spool.lease(&Lane::ALL).expect("lease") else {
            std::thread::yield_now();
            continue;
        };
        let body = read_all(&spool, &l);
        assert_eq!(
            sha2::Sha256::digest(&body).as_slice(),
            l.sha256.as_slice(),
            "item {} read before its payload was whole",
            l.id
        );
        spool.ack(l).expect("ack");
        read += 1;
    }
    for a in appenders {
        a.join().expect("appender");
    }
    assert_eq!(read, 200);
}

/// The uplink's reads: every piece of an inline and of a file payload,
/// in chunk sizes on both sides of the inline limit and of a page, read
/// in order, out of order and past the end.
#[test]
fn payload_pieces_read_back_exactly() {
    let dir = tempfile::tempdir().expect("tmp");
    let spool = Spool::open(config(dir.path())).expect("open");
    let small: Vec<u8> = (0..40_000u32).map(|i| (i % 253) as u8).collect();
    let big: Vec<u8> = (0..300_001u32).map(|i| (i % 251) as u8).collect();
    for data in [&small, &big] {
        spool.append(item(Lane::Clinical), data).expect("append");
        let lease = spool.lease(&Lane::ALL).expect("lease").expect("item");
        let p = spool.payload(&lease).expect("payload");
        for chunk in [1usize, 4095, 4096, 4097, 65_536, 262_144] {
            let mut got = Vec::new();
            let mut offset = 0;
            while offset < data.len() {
                let len = chunk.min(data.len() - offset);
                got.extend(p.read_vec_at(offset as u64, len).expect("piece"));
                offset += len;
            }
            assert_eq!(&got, data, "chunks of {chunk}");
        }
        let mid = data.len() / 3;
        assert_eq!(
            p.read_vec_at(mid as u64, 10).expect("piece"),
            data[mid..mid + 10]
        );
        assert_eq!(p.read_vec_at(0, 7).expect("piece"), data[..7]);
        assert!(
            p.read_vec_at(data.len() as u64 - 3, 4).is_err(),
            "past the end"
        );
        assert!(
            p.read_vec_at(data.len() as u64 + 10, 1).is_err(),
            "beyond the end"
        );
        assert_eq!(p.read_vec_at(data.len() as u64, 0).expect("empty"), b"");
        spool.ack(lease).expect("ack");
    }
}
