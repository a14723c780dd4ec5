//! Both ends of an upload in one thread over a simulated link with virtual
//! time, latency, cuts and power loss at central.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The simulated store's proof of a commit.
struct SimProof;
impl yilian_proof::Durable for SimProof {
    fn durable_id(&self) -> &str {
        "sim"
    }
}

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use super::*;
use crate::messages::{Chunk, Envelope, Lane, Offer, RejectReason, envelope::Body};

const CHUNK: usize = 16 * 1024;
const WINDOW_CHUNKS: usize = 8;

fn offer_for(payload: &[u8]) -> Offer {
    Offer {
        upload_id: "u-1".into(),
        sha256: Sha256::digest(payload).to_vec(),
        size: payload.len() as u64,
        kind: "file".into(),
        lane: Lane::Bulk as i32,
        ..Default::default()
    }
}

/// Central's storage: a partial file that survives process restarts (page
/// cache) but may lose its tail on power loss, and the committed store.
#[derive(Default)]
struct CentralStore {
    partial: Vec<u8>,
    committed: Option<Vec<u8>>,
    commits: u32,
}

struct Stats {
    attempts: u32,
    bytes_sent: u64,
    cuts: u32,
    power_losses: u32,
}

fn run_scenario(seed: u64, size: usize, cut_probability: f64) -> Stats {
    run_eager_scenario(seed, size, cut_probability, 0)
}

/// As [`run_scenario`], each attempt sending up to `eager` bytes ahead of
/// central's Accept (protocol version 2).
fn run_eager_scenario(seed: u64, size: usize, cut_probability: f64, eager: u64) -> Stats {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut payload = vec![0u8; size];
    rng.fill(&mut payload[..]);
    let offer = offer_for(&payload);
    let mut store = CentralStore::default();
    let mut now = Instant::now();
    let latency = Duration::from_millis(rng.random_range(1..80));
    let mut stats = Stats {
        attempts: 0,
        bytes_sent: 0,
        cuts: 0,
        power_losses: 0,
    };

    'attempts: loop {
        stats.attempts += 1;
        assert!(stats.attempts < 500, "seed {seed}: no progress");
        let mut tx =
            UploadSender::new(offer.clone(), CHUNK, Duration::from_secs(30), now).expect("valid");
        tx.send_eagerly(eager);
        let mut rx = UploadReceiver::new(u64::MAX, Duration::from_secs(30), now);
        // In-order, reliable queues per direction: (deliver_at, message).
        let mut up: VecDeque<(Instant, Envelope)> = VecDeque::new();
        let mut down: VecDeque<(Instant, Envelope)> = VecDeque::new();

        loop {
            // Sender: fill the window.
            while up.len() < WINDOW_CHUNKS {
                let Some(t) = tx.poll_transmit() else { break };
                let env = match t {
                    SenderTransmit::Message(env) => env,
                    SenderTransmit::Chunk { offset, len } => {
                        stats.bytes_sent += len as u64;
                        let o = offset as usize;
                        Envelope::new(Body::Chunk(Chunk {
                            offset,
                            data: Bytes::copy_from_slice(&payload[o..o + len]),
                        }))
                    }
                };
                up.push_back((now + latency, env));
            }
            while let Some(env) = rx.poll_transmit() {
                down.push_back((now + latency, env));
            }

            if let Some(outcome) = tx.outcome() {
                match outcome {
                    UploadOutcome::Committed => break 'attempts,
                    UploadOutcome::Rejected {
                        retryable: true, ..
                    }
                    | UploadOutcome::TimedOut => {
                        now += Duration::from_secs(1);
                        continue 'attempts;
                    }
                    other => panic!("seed {seed}: unexpected outcome {other:?}"),
                }
            }

            // Next event in virtual time.
            let next = [
                up.front().map(|(t, _)| *t),
                down.front().map(|(t, _)| *t),
                tx.poll_timeout(),
                rx.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min()
            .expect("something is always pending");
            now = now.max(next);

            if rng.random_bool(cut_probability) {
                stats.cuts += 1;
                if rng.random_bool(0.2) {
                    // Power loss at central: the unsynced tail is lost or torn.
                    stats.power_losses += 1;
                    let keep = rng.random_range(0..=store.partial.len());
                    store.partial.truncate(keep);
                    if let Some(b) = store.partial.last_mut() {
                        *b ^= 0x5a;
                    }
                }
                now += Duration::from_millis(rng.random_range(10..2000));
                continue 'attempts;
            }

            if up.front().is_some_and(|(t, _)| *t <= now) {
                let (_, env) = up.pop_front().expect("checked");
                rx.handle_message(env, now)
                    .expect("sender speaks the protocol");
                while let Some(ev) = rx.poll_event() {
                    match ev {
                        ReceiverEvent::Offered(o) => {
                            let held = if store.committed.is_some() {
                                HeldState::Committed(&SimProof)
                            } else {
                                HeldState::Partial(store.partial.len() as u64)
                            };
                            assert_eq!(o.upload_id, offer.upload_id);
                            rx.held(held).expect("in lookup");
                        }
                        ReceiverEvent::Data { offset, data } => {
                            assert_eq!(offset as usize, store.partial.len(), "seed {seed}");
                            store.partial.extend_from_slice(&data);
                        }
                        ReceiverEvent::Complete => {
                            if Sha256::digest(&store.partial).as_slice() == offer.sha256.as_slice()
                            {
                                store.committed = Some(std::mem::take(&mut store.partial));
                                store.commits += 1;
                                rx.committed(&SimProof).expect("verifying");
                            } else {
                                store.partial.clear();
                                rx.reject(RejectReason::HashMismatch, "torn partial", true);
                            }
                        }
                    }
                }
            }
            if down.front().is_some_and(|(t, _)| *t <= now) {
                let (_, env) = down.pop_front().expect("checked");
                tx.handle_message(env, now)
                    .expect("receiver speaks the protocol");
            }
            tx.handle_timeout(now);
            rx.handle_timeout(now);
        }
    }

    assert_eq!(
        store.committed.as_deref(),
        Some(&payload[..]),
        "seed {seed}"
    );
    assert_eq!(store.commits, 1, "seed {seed}: committed more than once");
    let resent = stats.bytes_sent - size as u64;
    let in_flight_bound = (WINDOW_CHUNKS * CHUNK) as u64;
    // A cut costs what was in flight. A power loss at central additionally
    // costs the torn tail (at most the whole payload) and, once the final hash
    // check fails, one full restart.
    // Sending ahead of the Accept costs up to `eager` per attempt that
    // resumed.
    let bound = u64::from(stats.cuts) * in_flight_bound
        + u64::from(stats.power_losses) * 2 * size as u64
        + u64::from(stats.attempts) * eager;
    assert!(
        resent <= bound,
        "seed {seed}: resent {resent} bytes over {} cuts ({} power losses), bound {bound}",
        stats.cuts,
        stats.power_losses
    );
    stats
}

#[test]
fn clean_link_sends_each_byte_once() {
    let s = run_scenario(1, 1_000_000, 0.0);
    assert_eq!(s.attempts, 1);
    assert_eq!(s.bytes_sent, 1_000_000);
}

#[test]
fn lossy_link_commits_exactly_once_and_resends_little() {
    let mut total_cuts = 0;
    for seed in 0..200 {
        let size = (seed as usize * 7919) % 200_000;
        let s = run_scenario(seed, size, 0.05);
        total_cuts += s.cuts;
    }
    assert!(total_cuts > 50, "the simulation must actually cut links");
}

#[test]
fn sending_ahead_of_the_accept_commits_exactly_once_whatever_central_holds() {
    // Eager spans below, across and beyond a chunk, over payloads that
    // fit in them or not, with cuts and power losses leaving central with
    // prefixes shorter and longer than what is sent ahead.
    let mut total_cuts = 0;
    for seed in 0..300u64 {
        let size = (seed as usize * 7919) % 150_000;
        let eager = [1, CHUNK as u64 - 1, CHUNK as u64, 3 * CHUNK as u64 + 17][seed as usize % 4];
        let s = run_eager_scenario(seed, size, 0.05, eager);
        total_cuts += s.cuts;
    }
    assert!(total_cuts > 50, "the simulation must actually cut links");
    // On a clean link, an item that fits is sent once, in one attempt.
    let s = run_eager_scenario(3, 40_000, 0.0, 64 * 1024);
    assert_eq!((s.attempts, s.bytes_sent), (1, 40_000));
}

#[test]
fn empty_payload_commits() {
    run_scenario(7, 0, 0.0);
}

#[test]
fn retry_after_lost_committed_is_answered_from_the_store() {
    let now = Instant::now();
    let offer = offer_for(b"hello");
    let mut tx =
        UploadSender::new(offer.clone(), CHUNK, Duration::from_secs(5), now).expect("valid");
    let mut rx = UploadReceiver::new(1 << 20, Duration::from_secs(5), now);
    let Some(SenderTransmit::Message(env)) = tx.poll_transmit() else {
        panic!("offer first")
    };
    rx.handle_message(env, now).expect("ok");
    assert!(matches!(rx.poll_event(), Some(ReceiverEvent::Offered(_))));
    rx.held(HeldState::Committed(&SimProof)).expect("lookup");
    let reply = rx.poll_transmit().expect("committed");
    tx.handle_message(reply, now).expect("ok");
    assert_eq!(tx.outcome(), Some(&UploadOutcome::Committed));
    assert_eq!(tx.bytes_sent(), 0);
}

#[test]
fn receiver_rejects_out_of_order_and_oversized() {
    let now = Instant::now();
    let offer = offer_for(&[1u8; 100]);
    let mut rx = UploadReceiver::new(1 << 20, Duration::from_secs(5), now);
    rx.handle_message(Envelope::new(Body::Offer(offer.clone())), now)
        .expect("ok");
    rx.poll_event();
    rx.held(HeldState::Partial(10)).expect("ok");
    let chunk = |offset| {
        Envelope::new(Body::Chunk(Chunk {
            offset,
            data: Bytes::from_static(&[0; 50]),
        }))
    };
    assert_eq!(
        rx.handle_message(chunk(20), now),
        Err(UploadError::OutOfOrder {
            got: 20,
            expected: 10
        })
    );
    // Sent ahead of the Accept from 0: the held prefix is skipped.
    rx.handle_message(chunk(0), now)
        .expect("overlap is trimmed");
    let Some(ReceiverEvent::Data { offset, data }) = rx.poll_event() else {
        panic!("the part beyond the held prefix is data")
    };
    assert_eq!((offset, data.len()), (10, 40));
    rx.handle_message(chunk(0), now).expect("all held: ignored");
    assert!(rx.poll_event().is_none());
    let long = Envelope::new(Body::Chunk(Chunk {
        offset: 50,
        data: Bytes::from_static(&[0; 60]),
    }));
    assert_eq!(
        rx.handle_message(long, now),
        Err(UploadError::PastEnd {
            end: 110,
            size: 100
        })
    );

    let mut small = UploadReceiver::new(10, Duration::from_secs(5), now);
    small
        .handle_message(Envelope::new(Body::Offer(offer)), now)
        .expect("ok");
    let Some(Envelope {
        body: Some(Body::Rejected(r)),
    }) = small.poll_transmit()
    else {
        panic!("too large must be rejected")
    };
    assert_eq!(r.reason, RejectReason::TooLarge as i32);
    assert!(!r.retryable);
}

#[test]
fn sender_refuses_accept_past_end_and_times_out() {
    let now = Instant::now();
    let mut tx =
        UploadSender::new(offer_for(b"abc"), CHUNK, Duration::from_secs(5), now).expect("valid");
    tx.poll_transmit();
    assert!(
        tx.handle_message(
            Envelope::new(Body::Accept(crate::messages::Accept { offset: 4 })),
            now
        )
        .is_err()
    );
    let mut tx =
        UploadSender::new(offer_for(b"abc"), CHUNK, Duration::from_secs(5), now).expect("valid");
    tx.poll_transmit();
    tx.handle_timeout(now + Duration::from_secs(4));
    assert!(!tx.is_done());
    tx.handle_timeout(now + Duration::from_secs(5));
    assert_eq!(tx.outcome(), Some(&UploadOutcome::TimedOut));
}

#[test]
fn invalid_offers_are_refused_by_both_ends() {
    let now = Instant::now();
    let mut bad = offer_for(b"x");
    bad.sha256.truncate(5);
    assert!(UploadSender::new(bad.clone(), CHUNK, Duration::from_secs(1), now).is_err());
    let mut rx = UploadReceiver::new(100, Duration::from_secs(1), now);
    rx.handle_message(Envelope::new(Body::Offer(bad)), now)
        .expect("answered, not an error");
    assert!(matches!(
        rx.poll_transmit(),
        Some(Envelope {
            body: Some(Body::Rejected(_))
        })
    ));
    let mut bad = offer_for(b"x");
    bad.upload_id = "../etc".into();
    assert!(UploadSender::new(bad, CHUNK, Duration::from_secs(1), now).is_err());
}

proptest::proptest! {
    /// The receiver faces the network: any byte stream, decoded into
    /// whatever messages it holds, must never make it panic.
    #[test]
    fn receiver_survives_arbitrary_streams(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096)) {
        let now = Instant::now();
        let mut rx = UploadReceiver::new(1 << 20, Duration::from_secs(5), now);
        let mut dec = crate::FrameDecoder::new(64 * 1024);
        dec.push(&data);
        while let Ok(Some(env)) = dec.next_frame() {
            if rx.handle_message(env, now).is_err() {
                break;
            }
            while let Some(ev) = rx.poll_event() {
                match ev {
                    ReceiverEvent::Offered(o) => { let _ = rx.held(HeldState::Partial(o.size / 2)); }
                    ReceiverEvent::Data { .. } => {}
                    ReceiverEvent::Complete => { let _ = rx.committed(&SimProof); }
                }
            }
            while rx.poll_transmit().is_some() {}
        }
    }

    /// Valid offers and chunks in any order must not panic either.
    #[test]
    fn receiver_survives_arbitrary_message_sequences(ops in proptest::collection::vec((0u8..4, 0u64..2000, 0usize..600), 0..40)) {
        let now = Instant::now();
        let mut rx = UploadReceiver::new(1500, Duration::from_secs(5), now);
        for (kind, n, len) in ops {
            let env = match kind {
                0 => Envelope::new(Body::Offer(Offer { size: n, ..offer_for(b"x") })),
                1 => Envelope::new(Body::Chunk(Chunk { offset: n, data: Bytes::from(vec![0; len]) })),
                2 => Envelope::new(Body::Accept(crate::messages::Accept { offset: n })),
                _ => Envelope::default(),
            };
            let _ = rx.handle_message(env, now);
            while let Some(ev) = rx.poll_event() {
                match ev {
                    ReceiverEvent::Offered(o) => { let _ = rx.held(HeldState::Partial(n.min(o.size))); }
                    ReceiverEvent::Complete => { let _ = rx.committed(&SimProof); }
                    ReceiverEvent::Data { .. } => {}
                }
            }
            while rx.poll_transmit().is_some() {}
        }
    }
}
