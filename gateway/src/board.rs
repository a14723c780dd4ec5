//! What each device did lately, for the box's page: its last item and
//! when, how many items today (in the clinic's day), and its last problem.
//! Kept in memory from start-up; the spool holds the items themselves.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device's recent history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceRecord {
    pub last_item_ms: Option<i64>,
    /// Items since the clinic's midnight (`day`).
    pub items_today: u64,
    /// The clinic's day `items_today` counts (days since the epoch in the
    /// clinic's zone).
    pub day: i64,
    /// The last problem: a catalogue key (`spool-full`, ...) and when.
    pub last_problem: Option<(String, i64)>,
}

/// Every device's record, by adapter family and name.
#[derive(Debug, Clone, Default)]
pub struct DeviceBoard {
    inner: Arc<Mutex<BTreeMap<(String, String), DeviceRecord>>>,
    /// The clinic's offset from UTC, in seconds, for "today".
    offset_secs: i64,
}

impl DeviceBoard {
    pub fn new(offset_secs: i64) -> Self {
        Self {
            inner: Arc::default(),
            offset_secs,
        }
    }

    fn day_of(&self, ms: i64) -> i64 {
        (ms / 1000 + self.offset_secs).div_euclid(86_400)
    }

    fn with(&self, family: &str, device: &str, f: impl FnOnce(&mut DeviceRecord)) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(map
            .entry((family.to_owned(), device.to_owned()))
            .or_default());
    }

    /// A new item from the device, stored at `ms`.
    pub fn item(&self, family: &str, device: &str, ms: i64) {
        let day = self.day_of(ms);
        self.with(family, device, |r| {
            if r.day != day {
                r.day = day;
                r.items_today = 0;
            }
            r.items_today += 1;
            r.last_item_ms = Some(ms);
        });
    }

    /// A problem with the device, by its catalogue key.
    pub fn problem(&self, family: &str, device: &str, key: &str, ms: i64) {
        self.with(family, device, |r| {
            r.last_problem = Some((key.to_owned(), ms))
        });
    }

    /// The device's record as of `now_ms` (today's count is zero on a new
    /// day).
    pub fn get(&self, family: &str, device: &str, now_ms: i64) -> DeviceRecord {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut r = map
            .get(&(family.to_owned(), device.to_owned()))
            .cloned()
            .unwrap_or_default();
        if r.day != self.day_of(now_ms) {
            r.items_today = 0;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn today_is_the_clinics_day() {
        // UTC+8: 2026-12-03T15:59:59Z is 23:59:59 local; a second later is
        // the next day there.
        let b = DeviceBoard::new(8 * 3600);
        let before_midnight = 1_796_313_599_000;
        b.item("hl7", "lis", before_midnight);
        b.item("hl7", "lis", before_midnight);
        assert_eq!(b.get("hl7", "lis", before_midnight).items_today, 2);
        let after = before_midnight + 1000;
        assert_eq!(b.get("hl7", "lis", after).items_today, 0);
        b.item("hl7", "lis", after);
        let r = b.get("hl7", "lis", after);
        assert_eq!((r.items_today, r.last_item_ms), (1, Some(after)));
        b.problem("hl7", "lis", "spool-full", after);
        assert_eq!(
            b.get("hl7", "lis", after).last_problem,
            Some(("spool-full".to_owned(), after))
        );
    }
}
