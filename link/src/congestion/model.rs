//! The path model behind [`super::Bounded`]: bottleneck bandwidth from
//! delivery-rate samples, the propagation round trip from the smallest
//! recent RTT, and a congestion window of about one bandwidth-delay
//! product built from them.
//!
//! Free of quinn's types (its RTT estimator cannot be built outside
//! quinn), so a simulated link on a virtual clock can drive it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// While yielding, the path's own delay is the smallest RTT of this long
/// (LEDBAT's ten minutes): another flow that keeps the router's queue
/// full for minutes must not become the baseline.
const BASE_PERIODS: usize = 120;

/// Rounds the bandwidth filter remembers: long enough to ride out a few
/// rounds of radio fading, short enough to follow a rate that dropped.
const BW_ROUNDS: usize = 10;
/// The propagation delay is the smallest RTT of the last two periods of
/// this length; the drain round of every cycle empties the queue so that
/// it is refreshed, and a longer path (a new route) is adopted within two.
const MIN_RTT_PERIOD: Duration = Duration::from_secs(5);
/// Window gains over the bandwidth-delay product, one round each: probe
/// for more bandwidth, drain what the probe queued (and refresh the
/// minimum RTT), then cruise.
const CYCLE: [Phase; 8] = [
    Phase::Up,
    Phase::Down,
    Phase::Cruise,
    Phase::Cruise,
    Phase::Cruise,
    Phase::Cruise,
    Phase::Cruise,
    Phase::Cruise,
];
/// A round losing more than this share of its packets, while its RTT
/// shows a full queue, means the queue overflowed, not radio noise (the
/// `4g` profile loses 1 % at random, in bursts).
const LOSS_THRESHOLD: f64 = 0.05;
/// Beyond this share, whatever the RTT says (a router queue shorter than
/// the model's headroom).
const LOSS_THRESHOLD_ALONE: f64 = 0.20;
/// Either way at least this many packets, so one burst on a thin round is
/// not read as a full queue.
const LOSS_MIN_PACKETS: u64 = 3;
/// Startup ends when the bandwidth grew less than this over three rounds.
const STARTUP_GROWTH: f64 = 1.25;
/// Sends remembered for delivery-rate samples (about 180 MB of full-size
/// packets): beyond that, the oldest are forgotten and their acks give no
/// sample.
const MAX_SENDS: usize = 1 << 17;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Up,
    Down,
    Cruise,
}

impl Phase {
    /// In-flight data as a multiple of the bandwidth-delay product.
    fn gain(self) -> f64 {
        match self {
            // A quarter more for one round: enough to see a faster link.
            Phase::Up => 1.25,
            // One BDP without the headroom for one round: the queue
            // empties, so the minimum RTT is measured again.
            Phase::Down => 1.0,
            // One BDP, plus the headroom of [`Model::headroom`].
            Phase::Cruise => 1.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Doubling each round until the bandwidth stops growing, the RTT
    /// rises above jitter, or a round loses more than radio noise.
    Startup,
    /// Window from the model; the index is the place in [`CYCLE`].
    Steady(usize),
}

/// What was known when a packet left: delivery-rate samples compare it
/// with what is known when its ack arrives.
#[derive(Debug, Clone, Copy)]
struct Send {
    sent: Instant,
    delivered: u64,
    delivered_at: Instant,
    first_sent: Instant,
}

/// The bottleneck bandwidth/RTT model and the window it sets.
#[derive(Debug, Clone)]
pub struct Model {
    mtu: u64,
    window: u64,
    mode: Mode,
    /// Bytes acknowledged since the start, and when the last ack came.
    delivered: u64,
    delivered_at: Option<Instant>,
    /// Send time of the packet most recently acknowledged.
    first_sent: Option<Instant>,
    sends: VecDeque<Send>,
    /// Per-round maxima of delivery rate (bytes per second), newest last.
    bw_rounds: VecDeque<f64>,
    round_bw: f64,
    /// Smallest RTT of the current period (with its start) and of the
    /// one before.
    min_rtt_now: Option<(Duration, Instant)>,
    min_rtt_before: Option<Duration>,
    /// Smallest RTT of each recent period, oldest first (see
    /// [`BASE_PERIODS`]).
    base_periods: VecDeque<Duration>,
    /// Bulk data only: back off when someone else's data queues.
    yielding: bool,
    yield_cap: Option<u64>,
    /// The round in progress: it ends with the ack of a packet sent after
    /// it began.
    round_start: Instant,
    round_delivered: u64,
    round_lost: u64,
    round_lost_packets: u64,
    round_min_rtt: Option<Duration>,
    round_max_rtt: Duration,
    round_samples: u32,
    /// Startup's plateau detection.
    full_bw: f64,
    full_bw_rounds: u32,
    /// Ack aggregation: bytes acked beyond what the bandwidth explains
    /// since `epoch_start`, and its recent maximum.
    epoch_start: Option<Instant>,
    epoch_acked: u64,
    extra_acked: VecDeque<u64>,
    round_extra: u64,
    /// A cap on in-flight data after a round lost more than noise; raised
    /// again by probing rounds that lose nothing beyond it.
    inflight_hi: Option<u64>,
}

impl Model {
    pub fn new(now: Instant, mtu: u16) -> Self {
        let mtu = u64::from(mtu).max(1200);
        Self {
            mtu,
            window: initial_window(mtu),
            mode: Mode::Startup,
            delivered: 0,
            delivered_at: None,
            first_sent: None,
            sends: VecDeque::new(),
            bw_rounds: VecDeque::with_capacity(BW_ROUNDS),
            round_bw: 0.0,
            min_rtt_now: None,
            min_rtt_before: None,
            base_periods: VecDeque::new(),
            yielding: false,
            yield_cap: None,
            round_start: now,
            round_delivered: 0,
            round_lost: 0,
            round_lost_packets: 0,
            round_min_rtt: None,
            round_max_rtt: Duration::ZERO,
            round_samples: 0,
            full_bw: 0.0,
            full_bw_rounds: 0,
            epoch_start: None,
            epoch_acked: 0,
            extra_acked: VecDeque::with_capacity(BW_ROUNDS),
            round_extra: 0,
            inflight_hi: None,
        }
    }

    /// Bytes that may be in flight.
    pub fn window(&self) -> u64 {
        self.window
    }

    pub fn initial_window(&self) -> u64 {
        initial_window(self.mtu)
    }

    /// The bottleneck bandwidth estimate, bytes per second.
    pub fn bandwidth(&self) -> f64 {
        self.bw_rounds.iter().copied().fold(self.round_bw, f64::max)
    }

    /// The propagation round trip estimate.
    pub fn min_rtt(&self) -> Option<Duration> {
        match (self.min_rtt_now, self.min_rtt_before) {
            (Some((now, _)), Some(before)) => Some(now.min(before)),
            (Some((now, _)), None) => Some(now),
            (None, before) => before,
        }
    }

    pub fn in_startup(&self) -> bool {
        self.mode == Mode::Startup
    }

    /// Whether only bulk data is being sent and the box shares its line:
    /// then the window also backs off when the RTT shows a queue that
    /// our own headroom does not explain — the clinic's HIS or a video
    /// consultation on the same line — and grows back when it drains.
    pub fn set_yielding(&mut self, yielding: bool) {
        if yielding != self.yielding {
            self.yielding = yielding;
            if !yielding {
                self.yield_cap = None;
                self.set_model_window();
            }
        }
    }

    pub fn is_yielding(&self) -> bool {
        self.yield_cap.is_some()
    }

    /// The path's delay with nobody's queue, over the long window.
    fn base_rtt(&self) -> Option<Duration> {
        let longest = self.base_periods.iter().copied().min();
        match (longest, self.min_rtt()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn adjust_yield(&mut self) {
        if !self.yielding {
            return;
        }
        let (Some(round), Some(base)) = (self.round_min_rtt, self.base_rtt()) else {
            return;
        };
        // Our own headroom queues up to its time; beyond that (and the
        // jitter the round's minimum leaves), the queue is someone else's.
        let ours = self.headroom_time() + Duration::from_millis(10);
        if round > base + ours {
            let cap = (self.window as f64 * 0.75) as u64;
            self.yield_cap = Some(cap.max(self.min_window()));
        } else if let Some(cap) = self.yield_cap {
            let step = ((self.bdp() / 8.0) as u64).max(self.mtu);
            self.yield_cap = Some(cap + step);
        }
    }

    pub fn set_mtu(&mut self, mtu: u16) {
        self.mtu = u64::from(mtu).max(1200);
        self.window = self.window.max(self.min_window());
    }

    pub fn on_sent(&mut self, now: Instant, _bytes: u64) {
        // Packets sent in one burst share the send time and the state
        // before it: one record serves them all.
        if self.sends.back().is_some_and(|s| s.sent == now) {
            return;
        }
        if self.sends.len() >= MAX_SENDS {
            self.sends.pop_front();
        }
        self.sends.push_back(Send {
            sent: now,
            delivered: self.delivered,
            delivered_at: self.delivered_at.unwrap_or(now),
            first_sent: self.first_sent.unwrap_or(now),
        });
    }

    pub fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool) {
        self.delivered += bytes;
        self.round_delivered += bytes;
        let rtt = now.saturating_duration_since(sent);
        self.observe_rtt(now, rtt);

        // The record of this packet's send: older ones are no longer
        // needed (acks come in send order, bar reordering, whose samples
        // are simply skipped).
        while self.sends.front().is_some_and(|s| s.sent < sent) {
            self.sends.pop_front();
        }
        let record = self.sends.front().copied().filter(|s| s.sent == sent);
        self.delivered_at = Some(now);
        self.first_sent = Some(sent);
        if let Some(s) = record {
            // The slower of the send and the ack intervals: acks bunched
            // by the path would otherwise show a rate the link never had.
            let interval = sent
                .saturating_duration_since(s.first_sent)
                .max(now.saturating_duration_since(s.delivered_at));
            let floor = self.min_rtt().unwrap_or(Duration::from_millis(1));
            if interval >= floor && !interval.is_zero() {
                let rate = (self.delivered - s.delivered) as f64 / interval.as_secs_f64();
                if !app_limited || rate > self.bandwidth() {
                    self.round_bw = self.round_bw.max(rate);
                }
            }
        }
        self.count_aggregation(now, bytes);

        if self.mode == Mode::Startup {
            if self.round_samples >= 8 && self.queueing() {
                // HyStart++: the queue is growing now; on a 600 ms
                // satellite path the round's end would come after the
                // window doubled into the router's tail drop.
                self.enter_steady();
            } else {
                self.window = self.window.saturating_add(bytes);
                if let Some(hi) = self.inflight_hi {
                    self.window = self.window.min(hi);
                }
            }
        }
        if sent >= self.round_start {
            self.end_round(now);
        }
    }

    /// Packets were declared lost (`lost_bytes` 0: an ECN mark).
    pub fn on_loss(&mut self, now: Instant, persistent: bool, lost_bytes: u64) {
        let lost = lost_bytes.max(self.mtu);
        self.round_lost += lost;
        self.round_lost_packets += lost.div_ceil(self.mtu);
        if persistent {
            // Nothing got through for several round trips (an outage or a
            // new path): what the model knew may no longer hold.
            let mtu = self.mtu as u16;
            *self = Self::new(now, mtu);
            self.window = self.min_window();
            return;
        }
        if self.mode == Mode::Startup && self.round_loss_excessive() {
            // A queue overflowed: no need to wait for the round's end.
            let cap = (self.round_delivered.max(self.window / 2)).max(self.min_window());
            self.inflight_hi = Some(cap);
            self.enter_steady();
        }
    }

    fn observe_rtt(&mut self, now: Instant, rtt: Duration) {
        if rtt.is_zero() {
            return;
        }
        self.round_min_rtt = Some(self.round_min_rtt.map_or(rtt, |m| m.min(rtt)));
        self.round_max_rtt = self.round_max_rtt.max(rtt);
        self.round_samples += 1;
        self.min_rtt_now = match self.min_rtt_now {
            Some((min, since)) if now.saturating_duration_since(since) > MIN_RTT_PERIOD => {
                self.min_rtt_before = Some(min);
                if self.base_periods.len() >= BASE_PERIODS {
                    self.base_periods.pop_front();
                }
                self.base_periods.push_back(min);
                Some((rtt, now))
            }
            Some((min, since)) => Some((min.min(rtt), since)),
            None => Some((rtt, now)),
        };
    }

    /// Bytes acked beyond what the estimated bandwidth would deliver since
    /// the epoch began: paths that hold acks and release them in bunches
    /// (radio schedulers, jitter, delayed acks) need that much more in
    /// flight to keep the link busy.
    fn count_aggregation(&mut self, now: Instant, bytes: u64) {
        let bw = self.bandwidth();
        let start = *self.epoch_start.get_or_insert(now);
        let expected = bw * now.saturating_duration_since(start).as_secs_f64();
        if (self.epoch_acked as f64) <= expected {
            self.epoch_start = Some(now);
            self.epoch_acked = 0;
        }
        self.epoch_acked += bytes;
        let extra = (self.epoch_acked as f64 - expected).max(0.0) as u64;
        self.round_extra = self.round_extra.max(extra);
    }

    fn extra_acked(&self) -> u64 {
        self.extra_acked
            .iter()
            .copied()
            .fold(self.round_extra, u64::max)
    }

    /// The round lost packets because a queue overflowed: more than
    /// noise, and either with RTTs that show the queue full or so many
    /// that no radio explains them.
    fn round_loss_excessive(&self) -> bool {
        let total = (self.round_delivered + self.round_lost) as f64;
        if total == 0.0 || self.round_lost_packets < LOSS_MIN_PACKETS {
            return false;
        }
        let share = self.round_lost as f64 / total;
        let full_queue = self.min_rtt().is_some_and(|min| {
            self.round_max_rtt > min + 2 * self.headroom_time() + Duration::from_millis(10)
        });
        share > LOSS_THRESHOLD_ALONE || (share > LOSS_THRESHOLD && full_queue)
    }

    fn end_round(&mut self, now: Instant) {
        let lossy = self.round_loss_excessive();
        let queueing = self.queueing();
        let before = self.bw_rounds.iter().copied().fold(0.0, f64::max);
        let grew = self.round_bw >= before * STARTUP_GROWTH;
        push_bounded(&mut self.bw_rounds, self.round_bw);
        push_bounded(&mut self.extra_acked, self.round_extra);
        self.round_bw = 0.0;
        self.round_extra = 0;

        match self.mode {
            Mode::Startup => {
                let bw = self.bandwidth();
                if bw >= self.full_bw * STARTUP_GROWTH {
                    self.full_bw = bw;
                    self.full_bw_rounds = 0;
                } else {
                    self.full_bw_rounds += 1;
                }
                if lossy {
                    let cap = self.round_delivered.max(self.min_window());
                    self.inflight_hi = Some(cap);
                }
                if lossy || queueing || self.full_bw_rounds >= 3 {
                    self.enter_steady();
                }
            }
            Mode::Steady(i) => {
                let phase = CYCLE[i];
                if lossy {
                    let cap = (self.window as f64 * 0.85) as u64;
                    self.inflight_hi = Some(cap.max(self.min_window()));
                } else if phase == Phase::Up {
                    // A probe that lost nothing beyond noise: the path
                    // takes more than the cap said.
                    self.inflight_hi = self
                        .inflight_hi
                        .map(|hi| hi + hi / 4)
                        .filter(|&hi| (hi as f64) < 2.0 * self.bdp());
                }
                // A probe that found a quarter more bandwidth probes
                // again: after a startup that ended early (a burst's
                // queue on a long path) the model doubles back to the
                // link's rate in a few rounds, not a few cycles.
                let next = if phase == Phase::Up && grew && !lossy {
                    i
                } else {
                    (i + 1) % CYCLE.len()
                };
                self.mode = Mode::Steady(next);
                self.adjust_yield();
                self.set_model_window();
            }
        }
        self.round_start = now;
        self.round_delivered = 0;
        self.round_lost = 0;
        self.round_lost_packets = 0;
        self.round_min_rtt = None;
        self.round_max_rtt = Duration::ZERO;
        self.round_samples = 0;
    }

    /// The smallest RTT of this round is above the path's by more than
    /// jitter: a queue is building.
    fn queueing(&self) -> bool {
        match (self.round_min_rtt, self.min_rtt()) {
            (Some(round), Some(min)) => round > min + hystart_threshold(min),
            _ => false,
        }
    }

    fn enter_steady(&mut self) {
        // Start with the drain: whatever startup queued goes first.
        self.mode = Mode::Steady(1);
        self.set_model_window();
    }

    fn bdp(&self) -> f64 {
        let rtt = self.min_rtt().unwrap_or(Duration::from_millis(100));
        self.bandwidth() * rtt.as_secs_f64()
    }

    fn set_model_window(&mut self) {
        let Mode::Steady(i) = self.mode else {
            return;
        };
        let phase = CYCLE[i];
        let mut window = phase.gain() * self.bdp();
        if phase != Phase::Down {
            window += self.headroom();
        }
        let mut window = (window as u64).max(self.min_window());
        if let Some(hi) = self.inflight_hi {
            window = window.min(hi.max(self.min_window()));
        }
        if let Some(cap) = self.yield_cap {
            if cap >= window {
                // Grown back to what the model allows: nobody else queues.
                self.yield_cap = None;
            } else {
                window = cap;
            }
        }
        self.window = window;
    }

    /// Bytes beyond the bandwidth-delay product that keep the bottleneck
    /// busy: the minimum RTT is the luckiest packet's, and a radio link's
    /// jitter (±8 ms each way on `4g`) holds others longer, so a window
    /// of exactly one BDP leaves the link idle about a tenth of the time.
    /// A third of the RTT, in time between 2 and 30 ms (a queue that
    /// delays an urgent ECG by no more), or what ack aggregation measured
    /// if that is more.
    fn headroom(&self) -> f64 {
        let jitter = self.bandwidth() * self.headroom_time().as_secs_f64();
        let aggregation = self.extra_acked().min(self.bdp() as u64) as f64;
        jitter.max(aggregation) + 2.0 * self.mtu as f64
    }

    fn headroom_time(&self) -> Duration {
        let rtt = self.min_rtt().unwrap_or(Duration::from_millis(100));
        (rtt / 3).clamp(Duration::from_millis(2), Duration::from_millis(30))
    }

    fn min_window(&self) -> u64 {
        4 * self.mtu
    }
}

fn initial_window(mtu: u64) -> u64 {
    // RFC 9002's: ten datagrams, at least 14,720 bytes.
    (10 * mtu).min(14_720.max(2 * mtu))
}

/// HyStart++'s: an eighth of the minimum RTT, between 4 and 16 ms: above
/// the jitter of a radio link's round trip, below a queue worth avoiding.
fn hystart_threshold(min_rtt: Duration) -> Duration {
    (min_rtt / 8).clamp(Duration::from_millis(4), Duration::from_millis(16))
}

fn push_bounded<T>(q: &mut VecDeque<T>, v: T) {
    if q.len() >= BW_ROUNDS {
        q.pop_front();
    }
    q.push_back(v);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line of `rate` bytes per second and `base` round trip, with
    /// `extra(round)` of someone else's queue on top: each round sends one
    /// window paced at the line's rate and takes its acknowledgements one
    /// round trip later. Returns the window at the end of each round.
    fn drive(
        model: &mut Model,
        rounds: std::ops::Range<usize>,
        clock: &mut Instant,
        extra: impl Fn(usize) -> Duration,
    ) -> Vec<u64> {
        let (rate, base, mtu) = (2_500_000.0, Duration::from_millis(80), 1_200u64);
        let spacing = Duration::from_secs_f64(mtu as f64 / rate);
        let mut windows = Vec::new();
        for round in rounds {
            let rtt = base + extra(round);
            let packets = (model.window() / mtu).max(1) as u32;
            let t0 = *clock;
            for i in 0..packets {
                model.on_sent(t0 + spacing * i, mtu);
            }
            for i in 0..packets {
                model.on_ack(t0 + spacing * i + rtt, t0 + spacing * i, mtu, false);
            }
            *clock = t0 + rtt.max(spacing * packets);
            windows.push(model.window());
        }
        windows
    }

    /// The most common window over the last cycle of eight rounds.
    fn cruising(windows: &[u64]) -> u64 {
        let mut last: Vec<u64> = windows[windows.len() - 8..].to_vec();
        last.sort();
        last[4]
    }

    /// The yielding rule on its own: a queue that is not ours (the RTT
    /// 60 ms above the line's) makes a yielding bulk flow back off a
    /// quarter per round, a flow carrying urgent data keeps its window,
    /// and the window grows back once the queue is gone.
    #[test]
    fn a_queue_that_is_not_ours_makes_bulk_give_way_and_urgent_keep_going() {
        let queue = |r: usize| {
            if (40..55).contains(&r) {
                Duration::from_millis(60)
            } else {
                Duration::ZERO
            }
        };
        let mut outcomes = Vec::new();
        for yielding in [true, false] {
            let mut clock = Instant::now();
            let mut model = Model::new(clock, 1200);
            model.set_yielding(yielding);
            let before = drive(&mut model, 0..40, &mut clock, queue);
            let during = drive(&mut model, 40..55, &mut clock, queue);
            let after = drive(&mut model, 55..120, &mut clock, queue);
            // The cycle's cruising window (probe and drain rounds vary it).
            let settled = cruising(&before);
            assert!(!model.in_startup());
            outcomes.push((yielding, settled, during, after));
        }
        let (_, settled, during, after) = &outcomes[0];
        // Within the bandwidth filter's ten rounds, only the rule can have
        // shrunk the window.
        assert!(
            during[5] * 3 < *settled,
            "yielding: {settled} before, {during:?} with the queue"
        );
        assert!(
            cruising(after) * 10 >= settled * 9,
            "grows back: {settled} before, {after:?} after"
        );
        let (_, settled, during, _) = &outcomes[1];
        assert!(
            cruising(&during[..8]) * 10 >= settled * 9,
            "not yielding: {settled} before, {during:?} with the queue"
        );
    }
}
