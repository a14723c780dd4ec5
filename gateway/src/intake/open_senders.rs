//! The HL7 senders' connections that are open now, so an application ACK
//! (the hospital LIS's answer to a result, MSH-16) can go back on the
//! connection the sender keeps open, as HL7's enhanced mode has it. A
//! sender that does not keep one open gets it at its `app_ack_address`.
//!
//! Each connection registers a small channel; the connection's own task
//! writes what comes through it between the messages it reads, so an
//! application ACK never lands in the middle of an accept ACK.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

/// A message for a sender's open connection, and where to say whether it
/// was written.
#[derive(Debug)]
pub struct Outgoing {
    pub bytes: Vec<u8>,
    pub written: oneshot::Sender<std::io::Result<()>>,
}

type Key = (String, IpAddr);
/// The connections from one sender to one listener, newest last.
type Connections = Vec<(u64, mpsc::Sender<Outgoing>)>;

#[derive(Debug, Default)]
pub struct OpenSenders {
    open: Mutex<HashMap<Key, Connections>>,
    next: AtomicU64,
}

/// One connection's place in the registry; it leaves when dropped.
#[derive(Debug)]
pub struct Registration {
    senders: Arc<OpenSenders>,
    key: Key,
    id: u64,
    pub outgoing: mpsc::Receiver<Outgoing>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut open = self.senders.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = open.get_mut(&self.key) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                open.remove(&self.key);
            }
        }
    }
}

impl OpenSenders {
    /// Registers a connection from `peer` to the listener `listener`.
    pub fn register(self: &Arc<Self>, listener: &str, peer: IpAddr) -> Registration {
        let (tx, rx) = mpsc::channel(4);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let key = (listener.to_owned(), peer);
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .push((id, tx));
        Registration {
            senders: self.clone(),
            key,
            id,
            outgoing: rx,
        }
    }

    /// Writes `bytes` (already framed) on the newest open connection from
    /// `peer` to `listener`. `None` when there is none.
    pub async fn send(
        &self,
        listener: &str,
        peer: IpAddr,
        bytes: Vec<u8>,
    ) -> Option<std::io::Result<()>> {
        let tx = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(listener.to_owned(), peer))
            .and_then(|list| list.last().map(|(_, tx)| tx.clone()))?;
        let (written, done) = oneshot::channel();
        tx.send(Outgoing { bytes, written }).await.ok()?;
        done.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_newest_connection_gets_it_and_a_closed_one_leaves() {
        let s = Arc::new(OpenSenders::default());
        let ip: IpAddr = "192.168.1.30".parse().expect("ip");
        assert!(s.send("lis", ip, b"x".to_vec()).await.is_none());
        let mut old = s.register("lis", ip);
        let mut new = s.register("lis", ip);
        let sending = tokio::spawn({
            let s = s.clone();
            async move { s.send("lis", ip, b"ack".to_vec()).await }
        });
        let out = new.outgoing.recv().await.expect("to the newest");
        assert_eq!(out.bytes, b"ack");
        let _ = out.written.send(Ok(()));
        assert!(matches!(sending.await.expect("task"), Some(Ok(()))));
        assert!(old.outgoing.try_recv().is_err());
        drop(new);
        drop(old);
        assert!(s.send("lis", ip, b"x".to_vec()).await.is_none());
        assert!(s.send("other", ip, b"x".to_vec()).await.is_none());
    }
}
