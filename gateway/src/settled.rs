//! Word from the uplink that an item reached its end (delivered, or set
//! aside for an operator), for whoever waits on a delivery: storage
//! commitment reports to the modality when central has the instances, told
//! rather than polling the spool.

use tokio::sync::watch;

/// A counter the uplink bumps; watchers see "something was settled" and
/// never miss one (a watch keeps the latest value), however many settle
/// while they work.
#[derive(Clone, Debug)]
pub struct Settled(watch::Sender<u64>);

impl Default for Settled {
    fn default() -> Self {
        Self(watch::channel(0).0)
    }
}

impl Settled {
    /// The uplink settled an item for good.
    pub fn tell(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver whose `changed()` wakes after the next [`Settled::tell`].
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}
