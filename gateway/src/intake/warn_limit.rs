//! Bounded logging for what a misbehaving peer makes us say. A sender
//! streaming garbage would otherwise get a warning per message (thousands
//! a second, gigabytes of log); each peer gets a few lines a minute, and
//! the first line after a quiet spell says how many were held back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Warnings logged per peer per window.
const PER_WINDOW: u32 = 5;
const WINDOW: Duration = Duration::from_secs(60);
/// Peers remembered; past it the oldest windows are forgotten.
const MAX_PEERS: usize = 1024;

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    logged: u32,
    held_back: u64,
}

/// Per-peer warning budget, shared by a listener's connections.
#[derive(Debug, Default)]
pub struct WarnLimit {
    peers: Mutex<HashMap<IpAddr, Window>>,
}

impl WarnLimit {
    /// Whether a warning about `peer` may be logged now; when it may,
    /// `Some(n)` with the warnings held back since the last one logged.
    pub fn admit(&self, peer: IpAddr) -> Option<u64> {
        self.admit_at(peer, Instant::now())
    }

    fn admit_at(&self, peer: IpAddr, now: Instant) -> Option<u64> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if peers.len() >= MAX_PEERS && !peers.contains_key(&peer) {
            peers.retain(|_, w| now.duration_since(w.start) < WINDOW);
            if peers.len() >= MAX_PEERS {
                peers.clear();
            }
        }
        let w = peers.entry(peer).or_insert(Window {
            start: now,
            logged: 0,
            held_back: 0,
        });
        if now.duration_since(w.start) >= WINDOW {
            w.start = now;
            w.logged = 0;
        }
        if w.logged < PER_WINDOW {
            w.logged += 1;
            let held = w.held_back;
            w.held_back = 0;
            Some(held)
        } else {
            w.held_back += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_logged_a_few_times_a_minute_with_a_count() {
        let l = WarnLimit::default();
        let peer: IpAddr = [192, 0, 2, 9].into();
        let other: IpAddr = [192, 0, 2, 10].into();
        let t0 = Instant::now();
        let logged = (0..10_000)
            .filter(|_| l.admit_at(peer, t0).is_some())
            .count();
        assert_eq!(logged, PER_WINDOW as usize);
        assert_eq!(
            l.admit_at(other, t0),
            Some(0),
            "another peer has its own budget"
        );
        assert_eq!(
            l.admit_at(peer, t0 + WINDOW),
            Some(10_000 - u64::from(PER_WINDOW)),
            "the next window says how many were held back"
        );
    }
}
