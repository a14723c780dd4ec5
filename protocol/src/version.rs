//! Protocol version negotiation.
//!
//! The gateway announces the range it speaks; central picks the highest
//! version both support. Gateways in the field lag behind central, so central
//! keeps old versions for as long as boxes run them.

use std::ops::RangeInclusive;

/// The newest version this build speaks.
///
/// - 1: the first.
/// - 2: an upload's bytes may follow its offer before central's Accept;
///   central skips any it already holds (see
///   [`crate::upload::UploadSender::send_eagerly`]).
pub const PROTOCOL_VERSION: u32 = 2;

/// Every version this build can speak.
pub const SUPPORTED_VERSIONS: RangeInclusive<u32> = 1..=PROTOCOL_VERSION;

/// The highest version in both ranges, if any.
pub fn negotiate(ours: RangeInclusive<u32>, theirs: RangeInclusive<u32>) -> Option<u32> {
    let hi = (*ours.end()).min(*theirs.end());
    let lo = (*ours.start()).max(*theirs.start());
    (lo <= hi).then_some(hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_highest_common() {
        assert_eq!(negotiate(1..=3, 2..=5), Some(3));
        assert_eq!(negotiate(1..=1, 1..=1), Some(1));
        assert_eq!(negotiate(1..=2, 3..=4), None);
        assert_eq!(negotiate(3..=4, 1..=2), None);
    }
}
