//! The clinic's uplink on the bench: a userspace link emulator between two
//! network namespaces (this kernel has no netem).
//!
//! - [`model`] — what one direction does to a packet (rate, queue, delay,
//!   jitter, bursty loss, reordering, MTU, outages), on a virtual clock.
//! - [`profile`] — named link profiles (`adsl`, `4g`, `satellite`, `flaky`,
//!   `fibre`, `lan`) as small TOML files.
//! - [`emulator`] — namespaces, TUN devices and the forwarding threads.
//! - [`probe`] — plain TCP and UDP flows that measure the emulator itself.
//! - [`sim`] — a bulk transfer under the uplink's congestion model through
//!   a profile's link model, on a virtual clock.

pub mod emulator;
pub mod model;
pub mod probe;
pub mod profile;
pub mod sim;

pub use emulator::{CLINIC_ADDR, HUB_ADDR, Namespace, Wan};
pub use profile::Profile;
