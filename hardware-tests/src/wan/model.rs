//! What one direction of an emulated uplink does to each IP packet:
//! outage, MTU, a rate-limited queue with a delay limit (tail drop), loss
//! on the wire (Gilbert–Elliott bursts), propagation delay with jitter, and
//! occasional reordering.
//!
//! The model is pure: the caller passes the time, so it is tested with a
//! virtual clock and the emulator drives it with the real one.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

/// One direction of a link profile (`[up]` or `[down]` in its TOML).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DirectionSpec {
    /// Bottleneck rate; absent means as fast as the emulator can forward.
    #[serde(default)]
    pub rate_kbit: Option<u64>,
    /// Longest queueing delay before the bottleneck drops (tail drop): the
    /// modem's buffer, expressed as time at `rate_kbit`.
    #[serde(default = "default_queue_ms")]
    pub queue_ms: u64,
    /// One-way propagation delay.
    #[serde(default)]
    pub delay_ms: f64,
    /// Delay varies uniformly within ±`jitter_ms` (never below zero);
    /// packets still leave in order unless `reorder` says otherwise.
    #[serde(default)]
    pub jitter_ms: f64,
    /// Long-run fraction of packets lost on the wire.
    #[serde(default)]
    pub loss: f64,
    /// Mean number of packets in a loss burst; 1 or less is independent
    /// loss, more follows the Gilbert–Elliott two-state model.
    #[serde(default = "one")]
    pub loss_burst: f64,
    /// Fraction of packets held back `reorder_ms` so later ones overtake.
    #[serde(default)]
    pub reorder: f64,
    #[serde(default = "default_reorder_ms")]
    pub reorder_ms: f64,
}

fn default_queue_ms() -> u64 {
    100
}
fn one() -> f64 {
    1.0
}
fn default_reorder_ms() -> f64 {
    10.0
}

impl Default for DirectionSpec {
    fn default() -> Self {
        Self {
            rate_kbit: None,
            queue_ms: default_queue_ms(),
            delay_ms: 0.0,
            jitter_ms: 0.0,
            loss: 0.0,
            loss_burst: 1.0,
            reorder: 0.0,
            reorder_ms: default_reorder_ms(),
        }
    }
}

impl DirectionSpec {
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..1.0).contains(&self.loss) {
            return Err(format!("loss {} is not in [0, 1)", self.loss));
        }
        if !(0.0..=1.0).contains(&self.reorder) {
            return Err(format!("reorder {} is not in [0, 1]", self.reorder));
        }
        if self.delay_ms < 0.0 || self.jitter_ms < 0.0 || self.reorder_ms < 0.0 {
            return Err("delays must not be negative".into());
        }
        if self.rate_kbit == Some(0) {
            return Err("rate_kbit 0 would never deliver; use an outage".into());
        }
        Ok(())
    }
}

/// Why a packet was dropped; counted per cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    Outage,
    Mtu,
    Queue,
    Loss,
}

impl DropCause {
    pub const ALL: [DropCause; 4] = [
        DropCause::Outage,
        DropCause::Mtu,
        DropCause::Queue,
        DropCause::Loss,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            DropCause::Outage => "outage",
            DropCause::Mtu => "mtu",
            DropCause::Queue => "queue",
            DropCause::Loss => "loss",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Hand the packet to the far side at this time.
    Deliver(Duration),
    Drop(DropCause),
}

/// The state of one direction.
pub struct Direction {
    spec: DirectionSpec,
    mtu: usize,
    rng: StdRng,
    /// Gilbert–Elliott: in the bad state every packet is lost.
    bad: bool,
    /// When the bottleneck finishes sending what it already holds.
    busy_until: Duration,
    /// Delivery time of the last in-order packet; jitter never reorders.
    last_delivery: Duration,
}

impl Direction {
    pub fn new(spec: DirectionSpec, mtu: usize, seed: u64) -> Self {
        Self {
            spec,
            mtu,
            rng: StdRng::seed_from_u64(seed),
            bad: false,
            busy_until: Duration::ZERO,
            last_delivery: Duration::ZERO,
        }
    }

    pub fn spec(&self) -> &DirectionSpec {
        &self.spec
    }

    /// How long a packet arriving at `now` would wait in the queue.
    pub fn queue_delay(&self, now: Duration) -> Duration {
        self.busy_until.saturating_sub(now)
    }

    /// Decides the fate of a packet of `len` bytes arriving at `now`.
    pub fn admit(&mut self, now: Duration, len: usize, outage: bool) -> Verdict {
        if outage {
            return Verdict::Drop(DropCause::Outage);
        }
        if len > self.mtu {
            return Verdict::Drop(DropCause::Mtu);
        }
        let departure = match self.spec.rate_kbit {
            Some(kbit) => {
                let start = now.max(self.busy_until);
                if start - now > Duration::from_millis(self.spec.queue_ms) {
                    return Verdict::Drop(DropCause::Queue);
                }
                let serialise = Duration::from_secs_f64(len as f64 * 8.0 / (kbit as f64 * 1000.0));
                self.busy_until = start + serialise;
                self.busy_until
            }
            None => now,
        };
        // Lost on the wire after the bottleneck: a lost packet still used
        // its share of the rate, as on a radio link.
        if self.lost() {
            return Verdict::Drop(DropCause::Loss);
        }
        let mut delay = self.spec.delay_ms;
        if self.spec.jitter_ms > 0.0 {
            delay += self
                .rng
                .random_range(-self.spec.jitter_ms..=self.spec.jitter_ms);
        }
        let at = departure + Duration::from_secs_f64(delay.max(0.0) / 1000.0);
        if self.spec.reorder > 0.0 && self.rng.random_bool(self.spec.reorder) {
            return Verdict::Deliver(at + Duration::from_secs_f64(self.spec.reorder_ms / 1000.0));
        }
        let at = at.max(self.last_delivery);
        self.last_delivery = at;
        Verdict::Deliver(at)
    }

    fn lost(&mut self) -> bool {
        let (loss, burst) = (self.spec.loss, self.spec.loss_burst);
        if loss <= 0.0 {
            return false;
        }
        if burst <= 1.0 {
            return self.rng.random_bool(loss);
        }
        // Two states; the stationary share of the bad state equals `loss`
        // and a stay in it lasts `burst` packets on average.
        let leave_bad = 1.0 / burst;
        let enter_bad = (loss * leave_bad / (1.0 - loss)).min(1.0);
        self.bad = if self.bad {
            !self.rng.random_bool(leave_bad)
        } else {
            self.rng.random_bool(enter_bad)
        };
        self.bad
    }
}

/// Scheduled outages: the first at `first_s`, then every `every_s` (0: only
/// once), each lasting `duration_s`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutageSpec {
    pub first_s: f64,
    #[serde(default)]
    pub every_s: f64,
    pub duration_s: f64,
}

impl OutageSpec {
    pub fn active(&self, t: Duration) -> bool {
        let t = t.as_secs_f64() - self.first_s;
        if t < 0.0 {
            return false;
        }
        let phase = if self.every_s > 0.0 {
            t % self.every_s
        } else {
            t
        };
        phase < self.duration_s
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const PKT: usize = 1200;

    /// Offers `offered_kbit` of `PKT`-byte packets for `secs` of virtual
    /// time; returns (delivered packets with their one-way delays, drops).
    fn offer(
        d: &mut Direction,
        offered_kbit: f64,
        secs: f64,
    ) -> (Vec<(Duration, Duration)>, [u64; 4]) {
        let gap = Duration::from_secs_f64(PKT as f64 * 8.0 / (offered_kbit * 1000.0));
        let mut now = Duration::ZERO;
        let mut out = Vec::new();
        let mut drops = [0u64; 4];
        while now.as_secs_f64() < secs {
            match d.admit(now, PKT, false) {
                Verdict::Deliver(at) => out.push((now, at)),
                Verdict::Drop(c) => drops[c.index()] += 1,
            }
            now += gap;
        }
        (out, drops)
    }

    #[test]
    fn a_saturated_bottleneck_delivers_its_rate_and_drops_the_excess() {
        let spec = DirectionSpec {
            rate_kbit: Some(20_000),
            queue_ms: 100,
            delay_ms: 40.0,
            ..Default::default()
        };
        let mut d = Direction::new(spec, 1500, 1);
        let (out, drops) = offer(&mut d, 40_000.0, 20.0);
        let last = out.iter().map(|(_, at)| *at).max().unwrap();
        let kbit = out.len() as f64 * PKT as f64 * 8.0 / last.as_secs_f64() / 1000.0;
        assert!((kbit - 20_000.0).abs() < 20_000.0 * 0.01, "{kbit} kbit/s");
        assert!(drops[DropCause::Queue.index()] > 0);
        // Standing queue: delay = propagation + at most the queue limit.
        let worst = out.iter().map(|(t, at)| *at - *t).max().unwrap();
        assert!(worst <= Duration::from_millis(141), "{worst:?}");
        assert!(worst >= Duration::from_millis(130), "{worst:?}");
    }

    #[test]
    fn below_the_rate_nothing_queues_and_the_delay_is_the_propagation_delay() {
        let spec = DirectionSpec {
            rate_kbit: Some(4_000),
            delay_ms: 30.0,
            ..Default::default()
        };
        let mut d = Direction::new(spec, 1500, 2);
        let (out, drops) = offer(&mut d, 2_000.0, 10.0);
        assert_eq!(drops, [0; 4]);
        for (t, at) in out {
            let owd = (at - t).as_secs_f64() * 1000.0;
            // 30 ms plus one packet's serialisation at 4 Mbit/s (2.4 ms).
            assert!((32.3..32.5).contains(&owd), "{owd}");
        }
    }

    #[test]
    fn loss_matches_the_profile_and_comes_in_bursts_of_the_configured_length() {
        for (loss, burst) in [(0.01, 1.0), (0.01, 3.0), (0.05, 2.0)] {
            let spec = DirectionSpec {
                loss,
                loss_burst: burst,
                ..Default::default()
            };
            let mut d = Direction::new(spec, 1500, 3);
            let n = 2_000_000u64;
            let (mut lost, mut bursts, mut in_burst) = (0u64, 0u64, false);
            for i in 0..n {
                let dropped = matches!(
                    d.admit(Duration::from_micros(i), 100, false),
                    Verdict::Drop(DropCause::Loss)
                );
                lost += dropped as u64;
                if dropped && !in_burst {
                    bursts += 1;
                }
                in_burst = dropped;
            }
            let measured = lost as f64 / n as f64;
            assert!((measured - loss).abs() < loss * 0.03, "{loss}: {measured}");
            let mean_burst = lost as f64 / bursts as f64;
            // Independent loss still has chance runs of 1/(1-p).
            let expect = if burst <= 1.0 {
                1.0 / (1.0 - loss)
            } else {
                burst
            };
            assert!(
                (mean_burst - expect).abs() < expect * 0.03,
                "{loss}/{burst}: mean burst {mean_burst}"
            );
        }
    }

    #[test]
    fn jitter_spreads_the_delay_without_reordering_and_reorder_does() {
        let spec = DirectionSpec {
            delay_ms: 40.0,
            jitter_ms: 10.0,
            ..Default::default()
        };
        // Packets 96 ms apart: jitter alone decides their delays.
        let mut d = Direction::new(spec.clone(), 1500, 4);
        let (out, _) = offer(&mut d, 100.0, 200.0);
        let delays: Vec<f64> = out
            .iter()
            .map(|(t, at)| (*at - *t).as_secs_f64() * 1000.0)
            .collect();
        let min = delays.iter().cloned().fold(f64::MAX, f64::min);
        let max = delays.iter().cloned().fold(0.0, f64::max);
        let mean = delays.iter().sum::<f64>() / delays.len() as f64;
        assert!(
            (30.0..31.0).contains(&min) && max > 49.0 && max <= 50.0,
            "{min}..{max}"
        );
        assert!((mean - 40.0).abs() < 0.5, "{mean}");
        // Dense traffic: a packet never overtakes the one before it.
        let mut d = Direction::new(spec.clone(), 1500, 4);
        let (out, _) = offer(&mut d, 10_000.0, 10.0);
        assert!(out.windows(2).all(|w| w[0].1 <= w[1].1), "jitter reordered");

        let mut d = Direction::new(
            DirectionSpec {
                jitter_ms: 0.0,
                reorder: 0.01,
                ..spec
            },
            1500,
            5,
        );
        let (out, _) = offer(&mut d, 10_000.0, 10.0);
        let overtaken = out.windows(2).filter(|w| w[0].1 > w[1].1).count();
        let share = overtaken as f64 / out.len() as f64;
        assert!((0.008..0.012).contains(&share), "{share}");
    }

    #[test]
    fn packets_over_the_mtu_and_during_an_outage_are_dropped() {
        let mut d = Direction::new(DirectionSpec::default(), 1280, 6);
        assert_eq!(
            d.admit(Duration::ZERO, 1281, false),
            Verdict::Drop(DropCause::Mtu)
        );
        assert_eq!(
            d.admit(Duration::ZERO, 1280, true),
            Verdict::Drop(DropCause::Outage)
        );
        let o = OutageSpec {
            first_s: 10.0,
            every_s: 300.0,
            duration_s: 30.0,
        };
        let at = |s: f64| o.active(Duration::from_secs_f64(s));
        assert!(!at(9.9) && at(10.0) && at(39.9) && !at(40.0));
        assert!(at(310.0) && !at(340.1) && at(610.0));
        let once = OutageSpec { every_s: 0.0, ..o };
        assert!(once.active(Duration::from_secs(20)) && !once.active(Duration::from_secs(310)));
    }
}
