//! Bandwidth schedules: how much of the clinic's uplink the gateway may
//! use, by time of day. A clinic shares its line with the HIS and video
//! consultations, so the county sets a cap for office hours and lets the
//! backlog drain at night:
//!
//! ```toml
//! [uplink]
//! rate_limit = "unlimited"       # outside every window (default)
//! utc_offset = "+08:00"          # the clinic's clock (default)
//! urgent_allowance = "50 MB"     # per hour, beyond the cap (default)
//!
//! [[uplink.schedule]]
//! days = "mon-fri"
//! from = "08:00"
//! to = "18:00"
//! rate = "2 Mbit/s"
//! ```
//!
//! The cap counts upload payload bytes; QUIC, UDP and IP headers add a few
//! percent on the wire. Urgent items (STAT ECGs) may exceed it by the
//! allowance, which refills evenly over the hour; beyond it they share the
//! cap, still ahead of everything else. Overlapping windows: the lowest
//! rate applies. A window whose `to` is before its `from` runs past
//! midnight into the next day.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

pub use yilian_gateway_config::units::{ByteSize, Days, Offset, Rate, TimeOfDay, Window};

/// The configured policy; a pure function of the clinic's clock.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub default: Rate,
    pub windows: Vec<Window>,
    pub offset: Offset,
    pub urgent_allowance: u64,
}

impl Policy {
    /// Bits per second allowed at `now`; `None` is unlimited.
    pub fn cap_at(&self, now: OffsetDateTime) -> Option<f64> {
        let local = now.to_offset(self.offset.0);
        let minute = u16::from(local.hour()) * 60 + u16::from(local.minute());
        let today = local.weekday();
        let yesterday = today.previous();
        let mut cap = self.default.0;
        for w in &self.windows {
            let (from, to) = (w.from.0, w.to.0);
            let active = if from < to {
                w.days.contains(today) && (from..to).contains(&minute)
            } else if from > to {
                (w.days.contains(today) && minute >= from)
                    || (w.days.contains(yesterday) && minute < to)
            } else {
                w.days.contains(today)
            };
            if active {
                cap = match (cap, w.rate.0) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
        cap
    }

    pub fn is_unlimited(&self) -> bool {
        self.default.0.is_none() && self.windows.iter().all(|w| w.rate.0.is_none())
    }
}

/// The running limiter shared by every upload. A token bucket kept as a
/// debt: each caller takes its bytes at once and sleeps until the bucket
/// has paid them back, so concurrent uploads queue behind each other and
/// together never exceed the cap.
pub struct Limiter {
    policy: Policy,
    state: Mutex<State>,
}

struct State {
    /// Bytes that may be sent now; negative while callers wait.
    tokens: f64,
    allowance: f64,
    last: Instant,
}

/// A short burst at the cap: enough for one write, not enough to flood a
/// thin line.
const BURST: Duration = Duration::from_millis(50);

impl Limiter {
    pub fn new(policy: Policy) -> Self {
        let allowance = policy.urgent_allowance as f64;
        Self {
            policy,
            state: Mutex::new(State {
                tokens: 0.0,
                allowance,
                last: Instant::now(),
            }),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The cap now, in bits per second; `None` when unlimited.
    pub fn current_cap(&self) -> Option<f64> {
        self.policy.cap_at(OffsetDateTime::now_utc())
    }

    /// Urgent allowance left, in bytes.
    pub fn allowance_left(&self) -> u64 {
        self.state
            .lock()
            .map(|s| s.allowance.max(0.0) as u64)
            .unwrap_or(0)
    }

    /// How long the caller must wait before sending `bytes`, having taken
    /// them from the bucket; zero when it may send at once.
    pub fn take(
        &self,
        bytes: usize,
        urgent: bool,
        now: Instant,
        cap_bits: Option<f64>,
    ) -> Duration {
        let Ok(mut s) = self.state.lock() else {
            return Duration::ZERO;
        };
        let elapsed = now.saturating_duration_since(s.last).as_secs_f64();
        s.last = s.last.max(now);
        let max_allowance = self.policy.urgent_allowance as f64;
        s.allowance = (s.allowance + elapsed * max_allowance / 3600.0).min(max_allowance);
        let Some(bits) = cap_bits else {
            s.tokens = 0.0;
            return Duration::ZERO;
        };
        let rate = bits / 8.0;
        s.tokens = (s.tokens + elapsed * rate).min(rate * BURST.as_secs_f64());
        let n = bytes as f64;
        if urgent && s.allowance >= n {
            s.allowance -= n;
            return Duration::ZERO;
        }
        s.tokens -= n;
        if s.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-s.tokens / rate)
        }
    }

    /// Waits until `bytes` may be sent under the cap in force now.
    pub async fn acquire(&self, bytes: usize, urgent: bool) -> Duration {
        let wait = self.take(bytes, urgent, Instant::now(), self.current_cap());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use time::macros::datetime;

    fn policy(toml_text: &str) -> Policy {
        #[derive(serde::Deserialize)]
        struct T {
            #[serde(default = "unlimited")]
            rate_limit: Rate,
            #[serde(default)]
            schedule: Vec<Window>,
            #[serde(default)]
            utc_offset: Offset,
        }
        fn unlimited() -> Rate {
            Rate(None)
        }
        let t: T = toml::from_str(toml_text).unwrap();
        Policy {
            default: t.rate_limit,
            windows: t.schedule,
            offset: t.utc_offset,
            urgent_allowance: 1_000_000,
        }
    }

    const OFFICE: &str = r#"
        [[schedule]]
        days = "mon-fri"
        from = "08:00"
        to = "18:00"
        rate = "2 Mbit/s"
    "#;

    #[test]
    fn office_hours_are_capped_in_the_clinics_time_and_nights_are_free() {
        let p = policy(OFFICE);
        // 2026-11-23 is a Monday. 00:30 UTC is 08:30 in Beijing.
        assert_eq!(p.cap_at(datetime!(2026-11-23 00:30 UTC)), Some(2e6));
        assert_eq!(p.cap_at(datetime!(2026-11-22 23:59 UTC)), None);
        assert_eq!(p.cap_at(datetime!(2026-11-23 09:59 UTC)), Some(2e6));
        assert_eq!(p.cap_at(datetime!(2026-11-23 10:00 UTC)), None);
        // Saturday office hours are free.
        assert_eq!(p.cap_at(datetime!(2026-11-28 02:00 UTC)), None);
        let utc = policy(&format!("utc_offset = \"+00:00\"\n{OFFICE}"));
        assert_eq!(utc.cap_at(datetime!(2026-11-23 00:30 UTC)), None);
    }

    #[test]
    fn a_night_window_runs_past_midnight_and_the_lowest_rate_wins() {
        let p = policy(
            r#"
            rate_limit = "20 Mbit/s"
            [[schedule]]
            days = "fri"
            from = "22:00"
            to = "06:00"
            rate = "unlimited"
            [[schedule]]
            days = "daily"
            from = "12:00"
            to = "13:00"
            rate = "1 Mbit/s"
            [[schedule]]
            days = "sat,sun"
            from = "00:00"
            to = "24:00"
            rate = "5 Mbit/s"
            "#,
        );
        // Friday 23:00 local; Saturday 05:00 local (window from Friday,
        // and the weekend's 5 Mbit/s is lower than unlimited).
        assert_eq!(p.cap_at(datetime!(2026-11-27 15:00 UTC)), Some(20e6));
        assert_eq!(p.cap_at(datetime!(2026-11-27 21:00 UTC)), Some(5e6));
        // Thursday night: default.
        assert_eq!(p.cap_at(datetime!(2026-11-26 15:00 UTC)), Some(20e6));
        // Lunch hour on Sunday: 1 Mbit/s beats 5.
        assert_eq!(p.cap_at(datetime!(2026-11-29 04:30 UTC)), Some(1e6));
    }

    #[test]
    fn bad_schedules_name_the_field_and_the_fix() {
        let e = |s: &str| toml::from_str::<Window>(s).unwrap_err().to_string();
        let ok = "days = \"mon-fri\"\nfrom = \"08:00\"\nto = \"18:00\"\nrate = \"2 Mbit/s\"\n";
        assert!(toml::from_str::<Window>(ok).is_ok());
        assert!(e(&ok.replace("mon-fri", "weekdays")).contains("unknown day"));
        assert!(e(&ok.replace("18:00", "25:00")).contains("HH:MM"));
        assert!(e(&ok.replace("2 Mbit/s", "2 Mbps")).contains("unknown unit"));
        assert!(e(&ok.replace("2 Mbit/s", "10 kbit/s")).contains("below 64 kbit/s"));
        assert_eq!(
            Days::try_from("fri-mon".to_owned()).unwrap(),
            Days(0b111_0001)
        );
        assert!(Offset::try_from("8".to_owned()).is_err());
        assert_eq!(
            ByteSize::try_from("50 MB".to_owned()).unwrap().0,
            50_000_000
        );
    }

    #[test]
    fn the_limiter_holds_the_cap_and_urgent_items_spend_their_allowance_first() {
        let mut p = policy("");
        p.urgent_allowance = 300_000;
        let l = Limiter::new(p);
        let t0 = Instant::now();
        let cap = Some(8e6); // 1 MB/s
        // Ten 100 kB writes at once: the last may go after ~1 s.
        let mut waits = Vec::new();
        for _ in 0..10 {
            waits.push(l.take(100_000, false, t0, cap));
        }
        let last = waits.last().unwrap().as_secs_f64();
        assert!((0.99..1.01).contains(&last), "{last}");
        // An urgent 100 kB item goes now, on the allowance, three times.
        for _ in 0..3 {
            assert_eq!(l.take(100_000, true, t0, cap), Duration::ZERO);
        }
        // The fourth waits behind the bulk debt like everything else.
        let w = l.take(100_000, true, t0, cap).as_secs_f64();
        assert!((1.09..1.11).contains(&w), "{w}");
        // Unlimited: nothing waits, and the debt is forgiven.
        assert_eq!(l.take(10_000_000, false, t0, None), Duration::ZERO);
        // The allowance refills over the hour.
        assert_eq!(l.allowance_left(), 0);
        l.take(1, false, t0 + Duration::from_secs(1800), None);
        assert_eq!(l.allowance_left(), 150_000);
    }
}
