//! The central end of an upload.

use std::collections::VecDeque;
use std::time::{Duration, Instant};
use yilian_proof::Durable;

use bytes::Bytes;

use super::{UploadError, body_name, validate_offer};
use crate::messages::{Accept, Committed, Envelope, Offer, RejectReason, Rejected, envelope::Body};

/// What central already holds for an offered upload, as the driver found it.
#[derive(Clone, Copy)]
pub enum HeldState<'a> {
    /// Nothing or a prefix of `offset` bytes.
    Partial(u64),
    /// This upload is already committed (a retry after a lost COMMITTED),
    /// with the store's proof of it.
    Committed(&'a dyn Durable),
}

impl std::fmt::Debug for HeldState<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeldState::Partial(n) => write!(f, "Partial({n})"),
            HeldState::Committed(p) => write!(f, "Committed({})", p.durable_id()),
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum ReceiverEvent {
    /// An offer arrived: look up what is held and call [`UploadReceiver::held`].
    Offered(Offer),
    /// Append these bytes at `offset` (always the end of what is held).
    Data { offset: u64, data: Bytes },
    /// All bytes received: verify the hash, store durably, then call
    /// [`UploadReceiver::committed`] or [`UploadReceiver::reject`].
    Complete,
}

#[derive(Debug)]
enum State {
    AwaitOffer,
    Lookup,
    Receiving { expected: u64 },
    Verifying,
    Done,
}

#[derive(Debug)]
pub struct UploadReceiver {
    state: State,
    offer: Option<Offer>,
    max_size: u64,
    idle_timeout: Duration,
    last_activity: Instant,
    events: VecDeque<ReceiverEvent>,
    transmits: VecDeque<Envelope>,
    timed_out: bool,
}

impl UploadReceiver {
    pub fn new(max_size: u64, idle_timeout: Duration, now: Instant) -> Self {
        Self {
            state: State::AwaitOffer,
            offer: None,
            max_size,
            idle_timeout,
            last_activity: now,
            events: VecDeque::new(),
            transmits: VecDeque::new(),
            timed_out: false,
        }
    }

    pub fn offer(&self) -> Option<&Offer> {
        self.offer.as_ref()
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    pub fn timed_out(&self) -> bool {
        self.timed_out
    }

    pub fn poll_event(&mut self) -> Option<ReceiverEvent> {
        self.events.pop_front()
    }

    pub fn poll_transmit(&mut self) -> Option<Envelope> {
        self.transmits.pop_front()
    }

    pub fn handle_message(&mut self, env: Envelope, now: Instant) -> Result<(), UploadError> {
        self.last_activity = now;
        match (env.body, &mut self.state) {
            (None, _) => Ok(()),
            (Some(Body::Offer(offer)), State::AwaitOffer) => {
                if let Err(e) = validate_offer(&offer) {
                    self.finish_rejected(
                        &offer.upload_id,
                        RejectReason::InvalidOffer,
                        &e.to_string(),
                        false,
                    );
                    return Ok(());
                }
                if offer.size > self.max_size {
                    let detail = format!(
                        "{} bytes exceeds the limit of {}",
                        offer.size, self.max_size
                    );
                    self.finish_rejected(&offer.upload_id, RejectReason::TooLarge, &detail, false);
                    return Ok(());
                }
                self.offer = Some(offer.clone());
                self.state = State::Lookup;
                self.events.push_back(ReceiverEvent::Offered(offer));
                Ok(())
            }
            (Some(Body::Chunk(mut chunk)), State::Receiving { expected }) => {
                let size = self.offer.as_ref().map_or(0, |o| o.size);
                if chunk.offset > *expected {
                    return Err(UploadError::OutOfOrder {
                        got: chunk.offset,
                        expected: *expected,
                    });
                }
                let end = chunk.offset + chunk.data.len() as u64;
                if end > size {
                    return Err(UploadError::PastEnd { end, size });
                }
                if end <= *expected {
                    // Sent ahead of our Accept (version 2) and already
                    // held from an earlier attempt: the final hash covers
                    // what we kept.
                    return Ok(());
                }
                // Partly held: keep the part beyond.
                let skip = (*expected - chunk.offset) as usize;
                let data = chunk.data.split_off(skip);
                *expected = end;
                if !data.is_empty() {
                    self.events.push_back(ReceiverEvent::Data {
                        offset: end - data.len() as u64,
                        data,
                    });
                }
                if end == size {
                    self.state = State::Verifying;
                    self.events.push_back(ReceiverEvent::Complete);
                }
                Ok(())
            }
            // Sent ahead of our Accept (version 2) when we held the whole
            // item already, or had answered: nothing more to take.
            (Some(Body::Chunk(_)), State::Verifying | State::Done) => Ok(()),
            (body, _) => Err(UploadError::Unexpected {
                got: body_name(&body),
                state: self.state_name(),
            }),
        }
    }

    /// The driver's answer to [`ReceiverEvent::Offered`].
    pub fn held(&mut self, held: HeldState<'_>) -> Result<(), UploadError> {
        if !matches!(self.state, State::Lookup) {
            return Err(UploadError::Unexpected {
                got: "held()",
                state: self.state_name(),
            });
        }
        let Some(offer) = &self.offer else {
            return Err(UploadError::InvalidOffer("no offer"));
        };
        match held {
            HeldState::Committed(_proof) => {
                let env = committed_envelope(offer);
                self.transmits.push_back(env);
                self.state = State::Done;
            }
            HeldState::Partial(offset) => {
                // A prefix longer than the offer cannot be ours: start over.
                let offset = if offset > offer.size { 0 } else { offset };
                self.transmits
                    .push_back(Envelope::new(Body::Accept(Accept { offset })));
                if offset == offer.size {
                    self.state = State::Verifying;
                    self.events.push_back(ReceiverEvent::Complete);
                } else {
                    self.state = State::Receiving { expected: offset };
                }
            }
        }
        Ok(())
    }

    /// The driver stored the item durably: COMMITTED, which only the
    /// store's proof can produce.
    ///
    /// ```compile_fail
    /// # use yilian_protocol::upload::UploadReceiver;
    /// # fn f(rx: &mut UploadReceiver) {
    /// rx.committed(&"stored, honest"); // a string is no proof
    /// # }
    /// ```
    pub fn committed(&mut self, _proof: &impl Durable) -> Result<(), UploadError> {
        let Some(offer) = self.verifying_offer()? else {
            return Ok(());
        };
        let env = committed_envelope(offer);
        self.transmits.push_back(env);
        self.state = State::Done;
        Ok(())
    }

    /// The driver refuses the item (hash mismatch, storage failure, ...).
    /// May be called in any state before the end.
    pub fn reject(&mut self, reason: RejectReason, detail: &str, retryable: bool) {
        let id = self
            .offer
            .as_ref()
            .map(|o| o.upload_id.clone())
            .unwrap_or_default();
        self.finish_rejected(&id, reason, detail, retryable);
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::AwaitOffer | State::Receiving { .. } => {
                Some(self.last_activity + self.idle_timeout)
            }
            _ => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(deadline) = self.poll_timeout()
            && now >= deadline
        {
            self.timed_out = true;
            self.state = State::Done;
        }
    }

    fn verifying_offer(&self) -> Result<Option<&Offer>, UploadError> {
        match self.state {
            State::Verifying => Ok(self.offer.as_ref()),
            State::Done => Ok(None),
            _ => Err(UploadError::Unexpected {
                got: "committed()",
                state: self.state_name(),
            }),
        }
    }

    fn finish_rejected(
        &mut self,
        upload_id: &str,
        reason: RejectReason,
        detail: &str,
        retryable: bool,
    ) {
        self.transmits
            .push_back(Envelope::new(Body::Rejected(Rejected {
                upload_id: upload_id.to_owned(),
                reason: reason as i32,
                detail: detail.to_owned(),
                retryable,
            })));
        self.state = State::Done;
    }

    fn state_name(&self) -> &'static str {
        match self.state {
            State::AwaitOffer => "awaiting an offer",
            State::Lookup => "looking up the offer",
            State::Receiving { .. } => "receiving",
            State::Verifying => "verifying",
            State::Done => "done",
        }
    }
}

fn committed_envelope(offer: &Offer) -> Envelope {
    Envelope::new(Body::Committed(Committed {
        upload_id: offer.upload_id.clone(),
        sha256: offer.sha256.clone(),
    }))
}
