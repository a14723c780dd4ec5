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

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;
use time::{OffsetDateTime, UtcOffset, Weekday};

/// A rate in bits per second; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "String")]
pub struct Rate(pub Option<f64>);

impl TryFrom<String> for Rate {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("unlimited") {
            return Ok(Rate(None));
        }
        let (n, unit) = number_and_unit(t)
            .ok_or_else(|| format!("rate {s:?}: expected e.g. \"2 Mbit/s\" or \"unlimited\""))?;
        let scale = match unit {
            "bit/s" => 1.0,
            "kbit/s" => 1e3,
            "Mbit/s" => 1e6,
            "Gbit/s" => 1e9,
            other => {
                return Err(format!(
                    "rate {s:?}: unknown unit {other:?} (bit/s, kbit/s, Mbit/s, Gbit/s)"
                ));
            }
        };
        // Below 64 kbit/s a 256 KiB chunk would take more than half a minute.
        if n * scale < 64e3 {
            return Err(format!("rate {s:?} is below 64 kbit/s"));
        }
        Ok(Rate(Some(n * scale)))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("unlimited"),
            Some(b) if b >= 1e6 => write!(f, "{} Mbit/s", b / 1e6),
            Some(b) => write!(f, "{} kbit/s", b / 1e3),
        }
    }
}

/// "2.5 Mbit/s" → (2.5, "Mbit/s"); `None` without a leading number.
fn number_and_unit(t: &str) -> Option<(f64, &str)> {
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    Some((num.parse().ok()?, unit.trim()))
}

/// A byte count such as "50 MB", "512 KiB", "20 GiB", or a plain number
/// of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SizeText")]
pub struct ByteSize(pub u64);

/// What a size may be written as in TOML.
#[derive(Deserialize)]
#[serde(untagged)]
enum SizeText {
    Bytes(u64),
    Text(String),
}

impl TryFrom<SizeText> for ByteSize {
    type Error = String;
    fn try_from(s: SizeText) -> Result<Self, String> {
        match s {
            SizeText::Bytes(n) => Ok(ByteSize(n)),
            SizeText::Text(t) => ByteSize::try_from(t),
        }
    }
}

impl TryFrom<String> for ByteSize {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let t = s.trim();
        let (n, unit) =
            number_and_unit(t).ok_or_else(|| format!("size {s:?}: expected e.g. \"50 MB\""))?;
        let scale = match unit {
            "" | "B" => 1u64,
            "kB" | "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            other => {
                return Err(format!(
                    "size {s:?}: unknown unit {other:?} (B, kB, MB, GB, KiB, MiB, GiB)"
                ));
            }
        };
        Ok(ByteSize((n * scale as f64) as u64))
    }
}

/// The clinic's offset from UTC, "+08:00".
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "String")]
pub struct Offset(pub UtcOffset);

impl TryFrom<String> for Offset {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let bad = || format!("utc_offset {s:?}: expected \"+HH:MM\" or \"-HH:MM\"");
        let (sign, rest) = match s.trim().split_at_checked(1) {
            Some(("+", r)) => (1i8, r),
            Some(("-", r)) => (-1i8, r),
            _ => return Err(bad()),
        };
        let (h, m) = rest.split_once(':').ok_or_else(bad)?;
        let h: i8 = h.parse().map_err(|_| bad())?;
        let m: i8 = m.parse().map_err(|_| bad())?;
        UtcOffset::from_hms(sign * h, sign * m, 0)
            .map(Offset)
            .map_err(|_| bad())
    }
}

impl Default for Offset {
    fn default() -> Self {
        // The alliance's clinics are all on China Standard Time.
        Offset(UtcOffset::from_whole_seconds(8 * 3600).unwrap_or(UtcOffset::UTC))
    }
}

/// One window of the schedule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub days: Days,
    pub from: TimeOfDay,
    pub to: TimeOfDay,
    pub rate: Rate,
}

/// Minutes after midnight, from "HH:MM".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct TimeOfDay(pub u16);

impl TryFrom<String> for TimeOfDay {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let bad = || format!("time {s:?}: expected \"HH:MM\" (00:00 to 24:00)");
        let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
        let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if m > 59 || h > 24 || (h == 24 && m != 0) {
            return Err(bad());
        }
        Ok(TimeOfDay(h * 60 + m))
    }
}

/// A set of weekdays: "mon-fri", "sat,sun", "daily".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Days(u8);

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Days {
    fn contains(self, d: Weekday) -> bool {
        self.0 & (1 << d.number_days_from_monday()) != 0
    }
}

impl TryFrom<String> for Days {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        if t == "daily" {
            return Ok(Days(0x7f));
        }
        let day = |name: &str| {
            DAY_NAMES
                .iter()
                .position(|d| *d == name.trim())
                .ok_or_else(|| format!("days {s:?}: unknown day {name:?} (mon..sun, or daily)"))
        };
        let mut set = 0u8;
        for part in t.split(',') {
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (day(a)?, day(b)?);
                    // "fri-mon" wraps over the weekend.
                    let mut i = a;
                    loop {
                        set |= 1 << i;
                        if i == b {
                            break;
                        }
                        i = (i + 1) % 7;
                    }
                }
                None => set |= 1 << day(part)?,
            }
        }
        Ok(Days(set))
    }
}

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
        #[derive(Deserialize)]
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
