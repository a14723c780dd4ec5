//! Times as people read them: RFC 3339 in the clinic's (or the hub's) zone,
//! with the offset (China Standard Time by default), never epoch
//! milliseconds or bare UTC. The box takes its zone from `[uplink]
//! utc_offset`, central from `[server] utc_offset`.

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// The clinic's clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clock {
    offset: UtcOffset,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new(crate::units::Offset::default().0)
    }
}

impl Clock {
    pub fn new(offset: UtcOffset) -> Self {
        Self { offset }
    }

    /// The zone a box's configuration names (its `utc_offset`).
    pub fn of(config: &crate::GatewayConfig) -> Self {
        Self::new(config.uplink.utc_offset.0)
    }

    /// Reads an RFC 3339 time (as central's JSON gives them) into this
    /// zone; text that is not one is returned as it is.
    pub fn reformat(&self, rfc3339: &str) -> String {
        OffsetDateTime::parse(rfc3339, &Rfc3339)
            .map(|t| self.format_ms((t.unix_timestamp_nanos() / 1_000_000) as i64))
            .unwrap_or_else(|_| rfc3339.to_owned())
    }

    /// The default zone, for a box with no configuration yet.
    pub fn system() -> Self {
        Self::default()
    }

    /// `ms` since the epoch as `2026-12-03T16:30:17+08:00`.
    pub fn format_ms(&self, ms: i64) -> String {
        let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
            .replace_millisecond(0)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
            .to_offset(self.offset);
        t.format(&Rfc3339).unwrap_or_else(|_| ms.to_string())
    }

    /// The zone's offset as people write it: `+08:00`.
    pub fn offset_text(&self) -> String {
        let (h, m, _) = self.offset.as_hms();
        let sign = if self.offset.is_negative() { '-' } else { '+' };
        format!("{sign}{:02}:{:02}", h.unsigned_abs(), m.unsigned_abs())
    }

    /// Seconds since the epoch, as [`Clock::format_ms`].
    pub fn format_secs(&self, secs: i64) -> String {
        self.format_ms(secs.saturating_mul(1000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_in_the_clinics_zone_with_the_offset() {
        let c = Clock::default();
        // 2026-12-03T08:30:17.456Z
        assert_eq!(c.format_ms(1_796_286_617_456), "2026-12-03T16:30:17+08:00");
        let utc = Clock::new(UtcOffset::UTC);
        assert_eq!(utc.format_ms(1_796_286_617_456), "2026-12-03T08:30:17Z");
        assert_eq!(c.format_secs(0), "1970-01-01T08:00:00+08:00");
        assert_eq!(
            c.reformat("2026-12-03T08:30:17.456Z"),
            "2026-12-03T16:30:17+08:00"
        );
        assert_eq!(c.reformat("never"), "never");
        assert_eq!(c.offset_text(), "+08:00");
        assert_eq!(utc.offset_text(), "+00:00");
    }
}
