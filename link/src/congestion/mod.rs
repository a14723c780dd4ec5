//! A congestion controller for clinic uplinks that keeps about one
//! bandwidth-delay product in flight.
//!
//! quinn's two controllers both fail a clinic's 4G line (20 Mbit/s, 80 ms,
//! 1 % loss in bursts, a 150 ms tail-drop queue in the router): its BBR
//! fills the router's queue until it overflows and puts about twice the
//! payload on the wire, which a metered line bills; Cubic reads each random
//! loss as congestion and reaches about a tenth of the link. This one takes
//! the bottleneck bandwidth from delivery-rate samples and the propagation
//! delay from the smallest recent RTT, and holds in flight about their
//! product: the queue stays short, so it neither overflows nor delays an
//! urgent ECG behind a study, and random loss does not move the window.
//! Only a round that loses more than noise caps in-flight data, as BBRv2
//! and v3 do.

mod model;

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use quinn::congestion::{Controller, ControllerFactory};
use quinn_proto::RttEstimator;

pub use model::Model;

/// Whether the box's uploads yield the clinic's line to its other traffic,
/// shared between the uplink (which knows what it is sending) and the
/// connection's controller.
#[derive(Debug, Default)]
pub struct LineSharing {
    share: AtomicBool,
    priority_uploads: AtomicUsize,
}

impl LineSharing {
    pub fn new(share: bool) -> Arc<Self> {
        Arc::new(Self {
            share: AtomicBool::new(share),
            priority_uploads: AtomicUsize::new(0),
        })
    }

    /// Marks an urgent or clinical upload in flight until the guard is
    /// dropped: the link does not yield while one is.
    pub fn priority_upload(self: &Arc<Self>) -> PriorityUpload {
        self.priority_uploads.fetch_add(1, Ordering::Relaxed);
        PriorityUpload(self.clone())
    }

    /// Bulk data only, and the box shares its line.
    pub fn yielding(&self) -> bool {
        self.share.load(Ordering::Relaxed) && self.priority_uploads.load(Ordering::Relaxed) == 0
    }
}

/// See [`LineSharing::priority_upload`].
#[derive(Debug)]
pub struct PriorityUpload(Arc<LineSharing>);

impl Drop for PriorityUpload {
    fn drop(&mut self) {
        self.0.priority_uploads.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Builds a [`Bounded`] controller per connection.
#[derive(Debug, Clone, Default)]
pub struct BoundedConfig {
    /// Without it the controller never yields (central's downlink).
    pub sharing: Option<Arc<LineSharing>>,
}

impl ControllerFactory for BoundedConfig {
    fn build(self: Arc<Self>, now: std::time::Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Bounded {
            model: Model::new(now, current_mtu),
            sharing: self.sharing.clone(),
        })
    }
}

/// quinn's controller interface over the [`Model`].
#[derive(Debug, Clone)]
pub struct Bounded {
    model: Model,
    sharing: Option<Arc<LineSharing>>,
}

impl Bounded {
    /// The model's state, for the box's metrics (read from a copy quinn
    /// hands out: `Connection::congestion_state`).
    pub fn model(&self) -> &Model {
        &self.model
    }
}

impl Controller for Bounded {
    fn on_sent(&mut self, now: std::time::Instant, bytes: u64, _last_packet_number: u64) {
        if let Some(s) = &self.sharing {
            self.model.set_yielding(s.yielding());
        }
        self.model.on_sent(now, bytes);
    }

    fn on_ack(
        &mut self,
        now: std::time::Instant,
        sent: std::time::Instant,
        bytes: u64,
        app_limited: bool,
        _rtt: &RttEstimator,
    ) {
        self.model.on_ack(now, sent, bytes, app_limited);
    }

    fn on_congestion_event(
        &mut self,
        now: std::time::Instant,
        _sent: std::time::Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.model
            .on_loss(now, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.model.set_mtu(new_mtu);
    }

    fn window(&self) -> u64 {
        self.model.window()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        self.model.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}
