//! A bulk transfer through a link profile on a virtual clock, with the
//! uplink's congestion model deciding what is in flight: minutes of a
//! 4G or satellite line run in a fraction of a second, the same seeds give
//! the same figures, and the controller is judged against the same link
//! model the emulator applies to real packets.
//!
//! The sender is a sketch of QUIC's recovery (RFC 9002): packet numbers
//! never reused, a packet declared lost three packets or 9/8 of an RTT
//! behind the newest acknowledged one, a probe timeout, and quinn's pacer
//! (1.25 windows per smoothed RTT). The receiver acknowledges every second
//! packet and repeats its last ranges, so a lost acknowledgement costs
//! nothing but time.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::{Duration, Instant};

use yilian_link::CongestionModel;

use super::model::{Direction, Verdict};
use super::profile::Profile;

/// A packet's overhead on the wire: IP and UDP headers, QUIC's short
/// header, a stream frame's header and the AEAD tag.
pub const OVERHEAD: u64 = 65;
/// quinn's largest UDP payload on a 1,500-byte path is 1,452 bytes.
const IP_UDP: u64 = 28;
const ACK_WIRE: usize = 60;

/// What one simulated transfer measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Payload bytes over the time to the last acknowledgement, bit/s.
    pub goodput_bps: f64,
    /// The bottleneck's rate, bit/s.
    pub link_bps: f64,
    /// Bytes put on the wire over payload bytes.
    pub wire_ratio: f64,
    /// Packets the bottleneck queue dropped (as opposed to the radio).
    pub queue_drops: u64,
    /// Median and worst time a packet waited in the bottleneck queue.
    pub queue_p50: Duration,
    pub queue_max: Duration,
    /// The model's bandwidth (bit/s) and minimum RTT at the end.
    pub model_bps: f64,
    pub model_min_rtt: Duration,
    /// Share of the transfer's time the bottleneck had nothing to send.
    pub link_idle: f64,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A data packet reaches the receiver.
    Arrive(u64),
    /// An acknowledgement reaches the sender, carrying packet numbers.
    Ack(Vec<u64>),
    /// The sender looks again (pacing, probe timeout).
    Wake,
}

struct Sent {
    at: Duration,
}

/// Sends `bytes` through `profile`'s uplink with `seed` for its loss and
/// jitter.
pub fn transfer(profile: &Profile, bytes: u64, seed: u64) -> Outcome {
    let mtu = usize::from(profile.mtu);
    let wire_size = (mtu as u64).min(1_452 + IP_UDP);
    let payload_size = wire_size - OVERHEAD;
    let mut up = Direction::new(profile.up.clone(), mtu, seed);
    let mut down = Direction::new(profile.down.clone(), mtu, seed ^ 0x5eed);
    let epoch = Instant::now();
    let mut model = CongestionModel::new(epoch, profile.mtu);
    let rate = profile.up.rate_kbit.unwrap_or(1_000_000) as f64 * 1000.0;

    let mut events: BinaryHeap<Reverse<(Duration, u64, Event)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |events: &mut BinaryHeap<Reverse<(Duration, u64, Event)>>, at, e| {
        seq += 1;
        events.push(Reverse((at, seq, e)));
    };

    let mut in_flight: BTreeMap<u64, Sent> = BTreeMap::new();
    let mut in_flight_bytes = 0u64;
    let mut next_pn = 0u64;
    let mut unsent = bytes.div_ceil(payload_size);
    let mut to_resend = 0u64;
    let mut acked_packets = 0u64;
    let total_packets = unsent;
    let mut wire = 0u64;
    let mut largest_acked: Option<u64> = None;
    let mut srtt: Option<Duration> = None;
    let mut tokens = 0f64;
    let mut last_refill = Duration::ZERO;
    let mut last_ack = Duration::ZERO;
    let mut next_wake: Option<Duration> = None;
    let mut queue_drops = 0u64;
    let (mut idle, mut busy_until) = (Duration::ZERO, Duration::ZERO);
    let mut queue_waits: Vec<Duration> = Vec::new();
    // The receiver: packets since its last ack, and its last ranges.
    let mut unacked_rx: Vec<u64> = Vec::new();
    let mut recent_rx: Vec<u64> = Vec::new();
    let mut now = Duration::ZERO;
    let mut finished = Duration::ZERO;

    push(&mut events, Duration::ZERO, Event::Wake);
    // A controller that stalls must fail the test, not hang it.
    let give_up = Duration::from_secs_f64(bytes as f64 * 8.0 / rate * 20.0 + 60.0);
    while let Some(Reverse((at, _, event))) = events.pop() {
        now = at;
        if now > give_up {
            break;
        }
        match event {
            Event::Arrive(pn) => {
                unacked_rx.push(pn);
                if unacked_rx.len() >= 2 {
                    recent_rx.append(&mut unacked_rx);
                    let keep = recent_rx.len().saturating_sub(12);
                    recent_rx.drain(..keep);
                    if let Verdict::Deliver(t) = down.admit(now, ACK_WIRE, false) {
                        push(&mut events, t, Event::Ack(recent_rx.clone()));
                    }
                }
            }
            Event::Ack(pns) => {
                let t = epoch + now;
                let mut newest: Option<Duration> = None;
                for pn in pns {
                    let Some(sent) = in_flight.remove(&pn) else {
                        continue;
                    };
                    in_flight_bytes -= wire_size;
                    acked_packets += 1;
                    model.on_ack(t, epoch + sent.at, wire_size, false);
                    if largest_acked.is_none_or(|l| pn > l) {
                        largest_acked = Some(pn);
                        newest = Some(now - sent.at);
                    }
                }
                if let Some(rtt) = newest {
                    srtt = Some(srtt.map_or(rtt, |s| (s * 7 + rtt) / 8));
                    last_ack = now;
                }
                // Loss detection behind the newest acknowledged packet.
                if let (Some(largest), Some(s)) = (largest_acked, srtt) {
                    let time_threshold = s * 9 / 8;
                    let lost: Vec<u64> = in_flight
                        .range(..largest)
                        .filter(|(pn, p)| largest - **pn >= 3 || now - p.at > time_threshold)
                        .map(|(pn, _)| *pn)
                        .collect();
                    if !lost.is_empty() {
                        for pn in &lost {
                            in_flight.remove(pn);
                        }
                        in_flight_bytes -= wire_size * lost.len() as u64;
                        to_resend += lost.len() as u64;
                        model.on_loss(t, false, wire_size * lost.len() as u64);
                    }
                }
                if acked_packets >= total_packets {
                    finished = now;
                    break;
                }
            }
            Event::Wake => {
                if next_wake.is_some_and(|w| w <= now) {
                    next_wake = None;
                }
            }
        }

        // Probe timeout: nothing acknowledged for a long while.
        let pto = srtt.map_or(Duration::from_secs(1), |s| s * 3) + Duration::from_millis(25);
        if !in_flight.is_empty() && now - last_ack > pto {
            let n = in_flight.len() as u64;
            in_flight.clear();
            in_flight_bytes = 0;
            to_resend += n;
            model.on_loss(epoch + now, false, wire_size * n);
            last_ack = now;
        }

        // Send what the window and the pacer allow.
        let window = model.window();
        let rtt = srtt.unwrap_or(Duration::from_millis(333));
        let elapsed = (now - last_refill).as_secs_f64();
        let capacity = (window as f64 * 0.002 / rtt.as_secs_f64())
            .clamp(10.0 * wire_size as f64, 256.0 * wire_size as f64);
        tokens = (tokens + window as f64 * 1.25 * elapsed / rtt.as_secs_f64()).min(capacity);
        last_refill = now;
        while in_flight_bytes + wire_size <= window && (to_resend > 0 || unsent > 0) {
            if tokens + 0.5 < wire_size as f64 {
                let need = (wire_size as f64 - tokens) / (window as f64 * 1.25) * rtt.as_secs_f64();
                // At least a microsecond: a wake at the same instant
                // would refill nothing.
                let at = now + Duration::from_secs_f64(need).max(Duration::from_micros(1));
                if next_wake.is_none_or(|w| at < w) {
                    push(&mut events, at, Event::Wake);
                    next_wake = Some(at);
                }
                break;
            }
            tokens -= wire_size as f64;
            if to_resend > 0 {
                to_resend -= 1;
            } else {
                unsent -= 1;
            }
            let pn = next_pn;
            next_pn += 1;
            wire += wire_size;
            model.on_sent(epoch + now, wire_size);
            in_flight.insert(pn, Sent { at: now });
            in_flight_bytes += wire_size;
            let queued_before = up.queue_delay(now);
            if queued_before.is_zero() {
                idle += now.saturating_sub(busy_until);
            }
            match up.admit(now, wire_size as usize, false) {
                Verdict::Deliver(t) => {
                    busy_until = now + up.queue_delay(now);
                    queue_waits.push(queued_before);
                    push(&mut events, t, Event::Arrive(pn));
                }
                Verdict::Drop(super::model::DropCause::Queue) => queue_drops += 1,
                Verdict::Drop(_) => {}
            }
        }
        if !in_flight.is_empty() && next_wake.is_none() {
            push(&mut events, now + pto, Event::Wake);
            next_wake = Some(now + pto);
        }
    }
    if finished.is_zero() {
        finished = now;
    }
    queue_waits.sort();
    let payload = total_packets * payload_size;
    Outcome {
        goodput_bps: payload as f64 * 8.0 / finished.as_secs_f64(),
        link_bps: rate,
        wire_ratio: wire as f64 / payload as f64,
        queue_drops,
        queue_p50: queue_waits
            .get(queue_waits.len() / 2)
            .copied()
            .unwrap_or_default(),
        queue_max: queue_waits.last().copied().unwrap_or_default(),
        model_bps: model.bandwidth() * 8.0,
        model_min_rtt: model.min_rtt().unwrap_or_default(),
        link_idle: idle.as_secs_f64() / finished.as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, secs: u64, seed: u64) -> Outcome {
        let profile = Profile::load(name).expect("named profile");
        let rate = profile.up.rate_kbit.unwrap_or(100_000) * 1000 / 8;
        transfer(&profile, rate * secs, seed)
    }

    #[test]
    fn the_bounded_model_fills_each_clinic_link_without_paying_twice() {
        // Several seeds: the loss bursts and the jitter fall differently.
        let cases = [("4g", 60), ("fibre", 30), ("satellite", 120), ("adsl", 60)];
        for ((name, secs), seed) in cases.into_iter().flat_map(|c| [7, 8, 9].map(|s| (c, s))) {
            let o = run(name, secs, seed);
            eprintln!(
                "{name} (seed {seed}): goodput {:.1} % of the link, wire {:.3}× the payload, {} queue drops, queue p50 {:?} max {:?}, model {:.2} Mbit/s {:?}, link idle {:.1} %",
                o.goodput_bps / o.link_bps * 100.0,
                o.wire_ratio,
                o.queue_drops,
                o.queue_p50,
                o.queue_max,
                o.model_bps / 1e6,
                o.model_min_rtt,
                o.link_idle * 100.0
            );
            // The wire carries headers (4.6 % here) and what radio loss
            // takes; after startup no queue overflows.
            assert!(o.goodput_bps >= 0.88 * o.link_bps, "{name}: {o:?}");
            assert!(o.wire_ratio <= 1.08, "{name}: {o:?}");
            assert!(o.queue_drops <= 200, "{name}: {o:?}");
        }
    }

    #[test]
    fn random_loss_costs_the_lost_packets_not_the_rate() {
        // Cubic and Reno halve their window at each loss: at 3 % they
        // would reach a few percent of a 4G link.
        for loss in [0.0, 0.01, 0.03] {
            let mut profile = Profile::load("4g").expect("named profile");
            profile.up.loss = loss;
            let o = transfer(&profile, 50_000_000, 11);
            eprintln!(
                "4g with {:.0} % loss: goodput {:.1} % of the link, wire {:.3}×",
                loss * 100.0,
                o.goodput_bps / o.link_bps * 100.0,
                o.wire_ratio
            );
            let lossless = 0.93 * (1.0 - loss);
            assert!(
                o.goodput_bps >= (lossless - 0.06) * o.link_bps,
                "{loss}: {o:?}"
            );
            assert!(o.wire_ratio <= 1.05 + 1.5 * loss, "{loss}: {o:?}");
        }
    }

    #[test]
    fn the_queue_stays_short_enough_for_an_urgent_ecg() {
        // A STAT ECG queues behind whatever bulk data sits in the 4G
        // router: the model keeps that to its headroom, not the router's
        // 150 ms.
        let profile = Profile::load("4g").expect("named profile");
        let o = transfer(&profile, 75_000_000, 3);
        assert!(o.queue_p50 <= Duration::from_millis(35), "{o:?}");
    }
}
