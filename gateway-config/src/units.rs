//! Values written with units in the configuration: sizes ("20 GiB"),
//! rates ("2 Mbit/s"), the clinic's UTC offset ("+08:00"), and the days and
//! times of bandwidth schedule windows. Each parses from the text a person
//! writes and says what it expected when it cannot.

use std::fmt;

use serde::Deserialize;
use time::{UtcOffset, Weekday};

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
pub struct Days(pub u8);

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Days {
    /// Whether `d` is one of the days.
    pub fn contains(self, d: Weekday) -> bool {
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

/// A size field written as a number of bytes or with a unit ("16 MiB").
pub fn de_size_usize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let ByteSize(n) = ByteSize::deserialize(d)?;
    usize::try_from(n).map_err(|_| serde::de::Error::custom(format!("{n} bytes is too large")))
}

/// As [`de_size_usize`], for 64-bit sizes.
pub fn de_size_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    ByteSize::deserialize(d).map(|ByteSize(n)| n)
}
