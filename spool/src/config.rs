use std::path::PathBuf;
use std::time::Duration;

/// How a spool is opened.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// Bytes of payload the spool may hold in all. Capped at run time by
    /// what the spool's filesystem can hold (see `capacity`).
    pub quota_bytes: u64,
    /// Bytes kept in a reserve file, released when the filesystem runs out
    /// so the index can still open, record deliveries and evict.
    pub reserve_bytes: u64,
    /// Fraction of the quota above which appends are refused.
    pub high_watermark: f64,
    /// Fraction of the quota below which appends are accepted again, and to
    /// which delivered items are evicted early when the high mark is reached.
    pub low_watermark: f64,
    /// How long delivered items are kept before their payload is removed.
    pub retention: Duration,
    /// Payloads up to this size live inline in the index.
    pub inline_threshold: usize,
    /// Failed attempts (rejections by central) before an item is dead-lettered.
    pub max_attempts: u32,
    /// First retry delay after a failed attempt; doubles per attempt.
    pub retry_base: Duration,
    /// Cap on the retry delay.
    pub retry_max: Duration,
}

impl SpoolConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            quota_bytes: 20 * 1024 * 1024 * 1024,
            reserve_bytes: 32 * 1024 * 1024,
            high_watermark: 0.95,
            low_watermark: 0.85,
            retention: Duration::from_secs(7 * 24 * 3600),
            inline_threshold: 64 * 1024,
            max_attempts: 8,
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(3600),
        }
    }

    /// The high and low marks of a quota of `quota` bytes.
    pub(crate) fn marks(&self, quota: u64) -> (u64, u64) {
        (
            (quota as f64 * self.high_watermark) as u64,
            (quota as f64 * self.low_watermark) as u64,
        )
    }

    /// Checks the settings; the message says which one is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.high_watermark) || !(0.0..=1.0).contains(&self.low_watermark)
        {
            return Err("watermarks must be fractions between 0 and 1".into());
        }
        if self.low_watermark > self.high_watermark {
            return Err("the low watermark must not be above the high watermark".into());
        }
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        Ok(())
    }
}
