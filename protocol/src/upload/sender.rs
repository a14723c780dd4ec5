//! The gateway end of an upload.

use std::time::{Duration, Instant};

use super::{UploadError, body_name, validate_offer};
use crate::messages::{Envelope, Offer, RejectReason, envelope::Body};

/// What the driver must put on the stream next.
#[derive(Debug, Clone, PartialEq)]
pub enum SenderTransmit {
    /// Send this message as it is.
    Message(Envelope),
    /// Read `len` payload bytes at `offset` and send them as a `Chunk`.
    Chunk { offset: u64, len: usize },
}

/// How an upload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadOutcome {
    /// Central holds the item durably; the gateway may mark it delivered.
    Committed,
    /// Central refused it.
    Rejected {
        reason: RejectReason,
        detail: String,
        retryable: bool,
    },
    /// No answer from central within the idle timeout.
    TimedOut,
}

#[derive(Debug)]
enum State {
    /// Offer queued or sent; waiting for Accept. `next`: the first byte
    /// not yet handed out ahead of the Accept (see
    /// [`UploadSender::send_eagerly`]).
    Offering {
        offer_sent: bool,
        next: u64,
    },
    /// Sending chunks; `next` is the first byte not yet handed out.
    Sending {
        next: u64,
    },
    /// Everything handed out; waiting for the verdict.
    AwaitingVerdict,
    Done(UploadOutcome),
}

/// The sender state machine. Create one per attempt.
#[derive(Debug)]
pub struct UploadSender {
    offer: Offer,
    chunk_size: usize,
    idle_timeout: Duration,
    state: State,
    last_activity: Instant,
    resumed_from: Option<u64>,
    bytes_handed_out: u64,
    eager: u64,
}

impl UploadSender {
    pub fn new(
        offer: Offer,
        chunk_size: usize,
        idle_timeout: Duration,
        now: Instant,
    ) -> Result<Self, UploadError> {
        validate_offer(&offer)?;
        Ok(Self {
            offer,
            chunk_size: chunk_size.max(1),
            idle_timeout,
            state: State::Offering {
                offer_sent: false,
                next: 0,
            },
            last_activity: now,
            resumed_from: None,
            bytes_handed_out: 0,
            eager: 0,
        })
    }

    /// Sends up to `bytes` of the payload right behind the offer, before
    /// central's Accept says where to start (protocol version 2): an item
    /// that fits is committed one round trip sooner, which on a 600 ms
    /// satellite path is most of an urgent ECG's wait. If central already
    /// holds a prefix, it skips what it has; the cost is at most `bytes`
    /// sent twice, so the driver does this only for items that fit in one
    /// chunk.
    pub fn send_eagerly(&mut self, bytes: u64) {
        self.eager = bytes;
    }

    pub fn offer(&self) -> &Offer {
        &self.offer
    }

    /// The offset central said it already held, once known.
    pub fn resumed_from(&self) -> Option<u64> {
        self.resumed_from
    }

    /// Payload bytes handed out as chunks by this attempt.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_handed_out
    }

    pub fn outcome(&self) -> Option<&UploadOutcome> {
        match &self.state {
            State::Done(o) => Some(o),
            _ => None,
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done(_))
    }

    /// The next thing to send. Call repeatedly until `None`; the driver
    /// applies backpressure simply by not calling while the stream is full.
    pub fn poll_transmit(&mut self) -> Option<SenderTransmit> {
        match &mut self.state {
            State::Offering { offer_sent, .. } if !*offer_sent => {
                *offer_sent = true;
                Some(SenderTransmit::Message(Envelope::new(Body::Offer(
                    self.offer.clone(),
                ))))
            }
            State::Offering { next, .. } if *next < self.eager.min(self.offer.size) => {
                let offset = *next;
                let end = self.eager.min(self.offer.size);
                let len = (end - offset).min(self.chunk_size as u64) as usize;
                *next += len as u64;
                self.bytes_handed_out += len as u64;
                Some(SenderTransmit::Chunk { offset, len })
            }
            State::Sending { next } => {
                let offset = *next;
                let remaining = self.offer.size - offset;
                let len = remaining.min(self.chunk_size as u64) as usize;
                *next += len as u64;
                self.bytes_handed_out += len as u64;
                if *next >= self.offer.size {
                    self.state = State::AwaitingVerdict;
                }
                Some(SenderTransmit::Chunk { offset, len })
            }
            _ => None,
        }
    }

    /// Feeds a message received from central.
    pub fn handle_message(&mut self, env: Envelope, now: Instant) -> Result<(), UploadError> {
        self.last_activity = now;
        let state_name = self.state_name();
        match (env.body, &self.state) {
            // Unknown messages from a newer central are ignored.
            (None, _) => Ok(()),
            (_, State::Done(_)) => Ok(()),
            (
                Some(Body::Accept(a)),
                State::Offering {
                    offer_sent: true,
                    next,
                },
            ) => {
                if a.offset > self.offer.size {
                    return Err(UploadError::BadOffset {
                        offset: a.offset,
                        size: self.offer.size,
                    });
                }
                self.resumed_from = Some(a.offset);
                // Bytes sent ahead of the Accept are taken (or skipped,
                // where central held them already): go on after both.
                let from = a.offset.max(*next);
                self.state = if from >= self.offer.size {
                    State::AwaitingVerdict
                } else {
                    State::Sending { next: from }
                };
                Ok(())
            }
            (Some(Body::Committed(c)), _) => {
                if c.sha256 != self.offer.sha256 || c.upload_id != self.offer.upload_id {
                    return Err(UploadError::CommitMismatch);
                }
                self.state = State::Done(UploadOutcome::Committed);
                Ok(())
            }
            (Some(Body::Rejected(r)), _) => {
                self.state = State::Done(UploadOutcome::Rejected {
                    reason: RejectReason::try_from(r.reason).unwrap_or(RejectReason::Unspecified),
                    detail: r.detail,
                    retryable: r.retryable,
                });
                Ok(())
            }
            (body, _) => Err(UploadError::Unexpected {
                got: body_name(&body),
                state: state_name,
            }),
        }
    }

    /// When `handle_timeout` must be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Done(_) => None,
            // While sending, the driver's writes are the activity; the
            // transport's own idle timeout covers a dead peer.
            State::Sending { .. } => None,
            _ => Some(self.last_activity + self.idle_timeout),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(deadline) = self.poll_timeout()
            && now >= deadline
        {
            self.state = State::Done(UploadOutcome::TimedOut);
        }
    }

    fn state_name(&self) -> &'static str {
        match self.state {
            State::Offering { .. } => "offering",
            State::Sending { .. } => "sending",
            State::AwaitingVerdict => "awaiting the verdict",
            State::Done(_) => "done",
        }
    }
}
