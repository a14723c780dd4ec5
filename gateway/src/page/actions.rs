//! What the page lets a technician do, behind the PIN set in `[page] pin`:
//! check the link to central, check that a drop folder is writable, and
//! download a support bundle (configuration without secrets, metrics,
//! spool and device state; no patient data, keys never).
//!
//! Every form carries a CSRF token that must match the `yl_csrf` cookie
//! (double submit, cookies `SameSite=Strict`), so a page elsewhere on the
//! clinic LAN cannot make a browser act here. Sessions live in memory for
//! 30 minutes; after five wrong PINs, logging in is refused for five
//! minutes, whoever tries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;

/// How long a login lasts.
const SESSION_FOR: Duration = Duration::from_secs(30 * 60);
/// Wrong PINs before logging in is refused for [`LOCKOUT`].
const MAX_FAILURES: u32 = 5;
const LOCKOUT: Duration = Duration::from_secs(5 * 60);
/// Sessions kept at once; the oldest goes first.
const MAX_SESSIONS: usize = 16;

pub const CSRF_COOKIE: &str = "yl_csrf";
pub const SESSION_COOKIE: &str = "yl_session";

/// A random token for a cookie or a form (128 bits, hex).
pub fn token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// A cookie's value from the request.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// Whether a form's CSRF token matches the cookie (and both are there).
pub fn csrf_ok(headers: &HeaderMap, form_token: &str) -> bool {
    match cookie(headers, CSRF_COOKIE) {
        Some(c) if c.len() == 32 && form_token.len() == 32 => {
            // Compare every byte whatever the first difference.
            c.bytes()
                .zip(form_token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
        }
        _ => false,
    }
}

/// What a login attempt got.
#[derive(Debug, PartialEq, Eq)]
pub enum Login {
    /// The new session's token.
    In(String),
    WrongPin,
    /// Too many wrong PINs lately.
    Locked,
    /// No PIN is configured: nothing can be done from the page.
    NoPin,
}

struct Session {
    expires: Instant,
    /// The result of the last action, shown once.
    flash: Option<String>,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, Session>,
    failures: u32,
    locked_until: Option<Instant>,
}

/// Logins and their sessions.
#[derive(Clone, Default)]
pub struct Sessions {
    inner: Arc<Mutex<Inner>>,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks `pin` against the configured one.
    pub fn login(&self, configured: Option<&str>, pin: &str) -> Login {
        let Some(expected) = configured.filter(|p| !p.is_empty()) else {
            return Login::NoPin;
        };
        let mut g = self.lock();
        let now = Instant::now();
        if g.locked_until.is_some_and(|t| now < t) {
            return Login::Locked;
        }
        let same = expected.len() == pin.len()
            && expected
                .bytes()
                .zip(pin.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            g.failures += 1;
            if g.failures >= MAX_FAILURES {
                g.failures = 0;
                g.locked_until = Some(now + LOCKOUT);
                return Login::Locked;
            }
            return Login::WrongPin;
        }
        g.failures = 0;
        g.sessions.retain(|_, s| s.expires > now);
        if g.sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = g
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            g.sessions.remove(&oldest);
        }
        let t = token();
        g.sessions.insert(
            t.clone(),
            Session {
                expires: now + SESSION_FOR,
                flash: None,
            },
        );
        Login::In(t)
    }

    /// Whether the request carries a live session.
    pub fn valid(&self, headers: &HeaderMap) -> bool {
        let Some(t) = cookie(headers, SESSION_COOKIE) else {
            return false;
        };
        self.lock()
            .sessions
            .get(&t)
            .is_some_and(|s| s.expires > Instant::now())
    }

    pub fn logout(&self, headers: &HeaderMap) {
        if let Some(t) = cookie(headers, SESSION_COOKIE) {
            self.lock().sessions.remove(&t);
        }
    }

    /// Keeps an action's result for the session's next page.
    pub fn set_flash(&self, headers: &HeaderMap, text: String) {
        if let Some(t) = cookie(headers, SESSION_COOKIE)
            && let Some(s) = self.lock().sessions.get_mut(&t)
        {
            s.flash = Some(text);
        }
    }

    /// The last action's result, once.
    pub fn take_flash(&self, headers: &HeaderMap) -> Option<String> {
        let t = cookie(headers, SESSION_COOKIE)?;
        self.lock().sessions.get_mut(&t)?.flash.take()
    }
}

/// Writes, syncs and removes a probe file in `dir`: whether the device's
/// files can land there and be taken.
pub fn check_folder(dir: &std::path::Path) -> Result<(), std::io::Error> {
    use std::io::Write;
    let probe = dir.join(format!(".yilian-probe-{}", token()));
    let r = std::fs::File::create(&probe)
        .and_then(|mut f| f.write_all(b"probe").and_then(|()| f.sync_all()));
    let removed = std::fs::remove_file(&probe);
    r.and(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(cookies: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(axum::http::header::COOKIE, cookies.parse().expect("header"));
        h
    }

    #[test]
    fn the_pin_opens_a_session_and_guessing_locks_out() {
        let s = Sessions::default();
        assert_eq!(s.login(None, "1234"), Login::NoPin);
        for _ in 0..MAX_FAILURES - 1 {
            assert_eq!(s.login(Some("246810"), "000000"), Login::WrongPin);
        }
        assert_eq!(s.login(Some("246810"), "000000"), Login::Locked);
        // Locked even for the right PIN, for a while.
        assert_eq!(s.login(Some("246810"), "246810"), Login::Locked);
        let s = Sessions::default();
        let Login::In(t) = s.login(Some("246810"), "246810") else {
            panic!("no session")
        };
        let h = headers(&format!("a=b; {SESSION_COOKIE}={t}"));
        assert!(s.valid(&h));
        s.set_flash(&h, "done".into());
        assert_eq!(s.take_flash(&h).as_deref(), Some("done"));
        assert_eq!(s.take_flash(&h), None);
        s.logout(&h);
        assert!(!s.valid(&h));
    }

    #[test]
    fn csrf_needs_the_cookie_and_the_same_token() {
        let t = token();
        assert!(csrf_ok(&headers(&format!("{CSRF_COOKIE}={t}")), &t));
        assert!(!csrf_ok(&headers(&format!("{CSRF_COOKIE}={t}")), &token()));
        assert!(!csrf_ok(&HeaderMap::new(), &t));
        assert!(!csrf_ok(&headers(&format!("{CSRF_COOKIE}=")), ""));
    }
}
