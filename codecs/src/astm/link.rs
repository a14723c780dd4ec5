//! The E1381 link layer as a sans-IO state machine, for both roles.
//!
//! Inputs: [`AstmLink::handle_input`] (bytes from the line), the clock via
//! [`AstmLink::handle_timeout`], [`AstmLink::send`] (a message to send, e.g.
//! a host-query answer) and [`AstmLink::commit`] (the upper layer stored a
//! received message). Outputs: [`AstmLink::poll_transmit`] (bytes for the
//! line), [`AstmLink::poll_event`], [`AstmLink::poll_timeout`].
//!
//! Receiving, the gateway acknowledges frames as the protocol requires, with
//! one exception that carries the acknowledgement contract down to the
//! wire: the frame that completes the terminator (`L`) record is answered
//! only after [`AstmLink::commit`] — ACK when the message is on stable
//! storage, NAK when it could not be stored (the analyzer retransmits, and
//! after six attempts gives up and sends the message again later). A frame
//! repeated after a lost ACK is acknowledged and discarded, never appended
//! twice. Messages without an `L` record are handed up at EOT.
//!
//! Timers: a receiver discards an incomplete message after 30 s of silence;
//! a sender gives up after 15 s without an answer, retries a frame at most
//! six times, and waits 10 s after a NAK to its ENQ. On contention (both
//! sides sent ENQ) the gateway, as the computer system, yields.

use std::collections::VecDeque;
use std::time::{Duration, Instant};
use yilian_proof::Durable;

use super::frame::{FrameError, parse_frame};
use super::{ACK, CR, ENQ, EOT, NAK, STX, encode_frames};

/// What to do when the receiver answers a frame with EOT (receiver
/// interrupt: "please stop, I want to send").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnInterrupt {
    /// Treat it as ACK and carry on (what many implementations do).
    TreatAsAck,
    /// Finish this message, then stay quiet for `interrupt_hold`.
    FinishThenHold,
}

#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Longest frame accepted (real analyzers send far more than 247 bytes).
    pub max_frame_len: usize,
    /// Longest message accepted.
    pub max_message_len: usize,
    pub receive_timeout: Duration,
    pub send_timeout: Duration,
    pub busy_retry: Duration,
    pub max_retries: u32,
    pub on_interrupt: OnInterrupt,
    pub interrupt_hold: Duration,
    /// Wait after yielding on contention before trying to send again.
    pub contention_hold: Duration,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            max_frame_len: 64 * 1024,
            max_message_len: 16 * 1024 * 1024,
            receive_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(15),
            busy_retry: Duration::from_secs(10),
            max_retries: 6,
            on_interrupt: OnInterrupt::TreatAsAck,
            interrupt_hold: Duration::from_secs(15),
            contention_hold: Duration::from_secs(20),
        }
    }
}

/// What the link reports to the upper layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A complete message (record bytes, each record ending with CR).
    /// When `needs_commit`, the final frame waits for [`AstmLink::commit`].
    Message { data: Vec<u8>, needs_commit: bool },
    /// An incomplete message was discarded (timeout, abort, too long).
    Discarded { reason: &'static str, bytes: usize },
    /// A frame was refused with NAK (bad checksum, wrong number, ...).
    FrameRejected(FrameError),
    /// A message queued with `send` was delivered (every frame ACKed).
    Sent,
    /// A message queued with `send` could not be delivered.
    SendFailed { reason: &'static str },
}

#[derive(Debug)]
enum State {
    Neutral,
    Receiving {
        expected: u8,
        last_accepted: Option<u8>,
        message: Vec<u8>,
        /// Where the record under assembly starts (to spot the `L` record).
        record_start: usize,
        deadline: Instant,
        /// The final frame (its number, and where its text starts in
        /// `message`) waits for the upper layer's commit.
        awaiting_commit: Option<(u8, usize)>,
        /// A terminator was seen in this session: never hand up a partial
        /// message at EOT.
        saw_terminator: bool,
    },
    Establishing {
        deadline: Instant,
    },
    Sending {
        frames: Vec<Vec<u8>>,
        next: usize,
        retries: u32,
        deadline: Instant,
        interrupted: bool,
    },
    /// Before retrying ENQ (receiver busy, contention, interrupt).
    Waiting {
        until: Instant,
    },
}

#[derive(Debug)]
pub struct AstmLink {
    config: LinkConfig,
    state: State,
    rx: Vec<u8>,
    /// Messages waiting to be sent, as frames.
    pending_frames: VecDeque<Vec<Vec<u8>>>,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<LinkEvent>,
}

impl AstmLink {
    pub fn new(config: LinkConfig) -> Self {
        Self {
            config,
            state: State::Neutral,
            rx: Vec::new(),
            pending_frames: VecDeque::new(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn is_neutral(&self) -> bool {
        matches!(self.state, State::Neutral)
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    /// Whether bytes are waiting in [`AstmLink::poll_transmit`].
    pub fn poll_transmit_pending(&self) -> bool {
        !self.transmit.is_empty()
    }

    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Neutral => None,
            State::Receiving {
                deadline,
                awaiting_commit,
                ..
            } => awaiting_commit.is_none().then_some(*deadline),
            State::Establishing { deadline } | State::Sending { deadline, .. } => Some(*deadline),
            State::Waiting { until } => Some(*until),
        }
    }

    /// Queues a message (records without trailing CR are given one) to send
    /// when the line is free.
    pub fn send(&mut self, records: Vec<Vec<u8>>, now: Instant) {
        self.pending_frames.push_back(encode_frames(&records, 1));
        self.try_start_sending(now);
    }

    /// The message handed up with `needs_commit` is on stable storage: the
    /// final frame is ACKed. Only a durable store's proof says so:
    ///
    /// ```compile_fail
    /// # use yilian_codecs::astm::{AstmLink, LinkConfig};
    /// let mut link = AstmLink::new(LinkConfig::default());
    /// link.stored(&true, std::time::Instant::now()); // a bool is no proof
    /// ```
    ///
    /// The frames before the final one are ACKed as they arrive, as E1381
    /// requires; that is the protocol's exception, and the reason the
    /// final frame waits for the commit.
    pub fn stored(&mut self, _proof: &impl Durable, now: Instant) {
        self.answer_commit(true, now);
    }

    /// The message could not be stored: the final frame is NAKed and the
    /// analyzer retransmits it.
    pub fn not_stored(&mut self, now: Instant) {
        self.answer_commit(false, now);
    }

    fn answer_commit(&mut self, stored: bool, now: Instant) {
        if let State::Receiving {
            awaiting_commit,
            last_accepted,
            expected,
            deadline,
            message,
            record_start,
            ..
        } = &mut self.state
            && let Some((n, frame_start)) = awaiting_commit.take()
        {
            if stored {
                *last_accepted = Some(n);
                *expected = (n + 1) % 8;
                message.clear();
                *record_start = 0;
                self.transmit.push_back(vec![ACK]);
            } else {
                // Drop the final frame's text; the analyzer retransmits the
                // frame and the message is handed up again.
                message.truncate(frame_start);
                self.transmit.push_back(vec![NAK]);
            }
            *deadline = now + self.config.receive_timeout;
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match &self.state {
            State::Receiving {
                deadline,
                message,
                awaiting_commit: None,
                ..
            } if now >= *deadline => {
                if !message.is_empty() {
                    self.events.push_back(LinkEvent::Discarded {
                        reason: "receive timeout",
                        bytes: message.len(),
                    });
                }
                self.state = State::Neutral;
                self.try_start_sending(now);
            }
            State::Establishing { deadline } | State::Sending { deadline, .. }
                if now >= *deadline =>
            {
                self.transmit.push_back(vec![EOT]);
                self.fail_send("no answer within the sender timeout");
                self.state = State::Neutral;
                self.try_start_sending(now);
            }
            State::Waiting { until } if now >= *until => {
                self.state = State::Neutral;
                self.try_start_sending(now);
            }
            _ => {}
        }
    }

    pub fn handle_input(&mut self, data: &[u8], now: Instant) {
        for &b in data {
            self.handle_byte(b, now);
        }
    }

    fn handle_byte(&mut self, b: u8, now: Instant) {
        match &mut self.state {
            State::Neutral | State::Waiting { .. } => {
                if b == ENQ {
                    self.start_receiving(now);
                }
                // Anything else outside a session is noise.
            }
            State::Establishing { .. } => match b {
                ACK => self.begin_frames(now),
                NAK => {
                    // Receiver busy: try again later.
                    self.state = State::Waiting {
                        until: now + self.config.busy_retry,
                    };
                }
                ENQ => {
                    // Contention: the computer system yields.
                    self.state = State::Waiting {
                        until: now + self.config.contention_hold,
                    };
                    self.start_receiving(now);
                }
                _ => {}
            },
            State::Sending { .. } => self.sender_reply(b, now),
            State::Receiving { .. } => self.receiver_byte(b, now),
        }
    }

    fn start_receiving(&mut self, now: Instant) {
        self.rx.clear();
        self.state = State::Receiving {
            expected: 1,
            last_accepted: None,
            message: Vec::new(),
            record_start: 0,
            deadline: now + self.config.receive_timeout,
            awaiting_commit: None,
            saw_terminator: false,
        };
        self.transmit.push_back(vec![ACK]);
    }

    fn receiver_byte(&mut self, b: u8, now: Instant) {
        let State::Receiving {
            expected,
            last_accepted,
            message,
            record_start,
            deadline,
            awaiting_commit,
            saw_terminator,
        } = &mut self.state
        else {
            return;
        };
        if self.rx.is_empty() {
            match b {
                STX => self.rx.push(b),
                EOT => {
                    if !message.is_empty() {
                        if *saw_terminator || awaiting_commit.is_some() {
                            // The message was handed up (and its commit
                            // failed or is still running); the analyzer will
                            // send it again. Never hand up a part of it.
                            self.events.push_back(LinkEvent::Discarded {
                                reason: "session ended before the message was stored",
                                bytes: message.len(),
                            });
                        } else {
                            // No L record: hand it up now, without control
                            // over the already acknowledged frames.
                            self.events.push_back(LinkEvent::Message {
                                data: std::mem::take(message),
                                needs_commit: false,
                            });
                        }
                    }
                    self.state = State::Neutral;
                    self.try_start_sending(now);
                }
                ENQ if awaiting_commit.is_none() => {
                    // A new session without EOT: the sender restarted.
                    if !message.is_empty() {
                        self.events.push_back(LinkEvent::Discarded {
                            reason: "sender restarted the session",
                            bytes: message.len(),
                        });
                    }
                    self.start_receiving(now);
                }
                _ => {} // bytes between frames (stray CR/LF) are ignored
            }
            return;
        }
        self.rx.push(b);
        let Some((result, used)) = parse_frame(&self.rx, self.config.max_frame_len) else {
            return;
        };
        self.rx.drain(..used.min(self.rx.len()));
        // A new STX inside the remainder starts the next frame.
        if let Some(i) = self.rx.iter().position(|&x| x == STX) {
            self.rx.drain(..i);
        } else {
            self.rx.clear();
        }
        *deadline = now + self.config.receive_timeout;
        if awaiting_commit.is_some() {
            // The sender must wait for our answer to the final frame;
            // anything now is that frame again: the answer comes with the
            // commit.
            return;
        }
        match result {
            Ok(frame) if Some(frame.number) == *last_accepted => {
                // Our ACK was lost: acknowledge again, keep nothing.
                self.transmit.push_back(vec![ACK]);
            }
            Ok(frame) if frame.number == *expected => {
                if message.len() + frame.text.len() > self.config.max_message_len {
                    self.events.push_back(LinkEvent::Discarded {
                        reason: "message too long",
                        bytes: message.len(),
                    });
                    message.clear();
                    *record_start = 0;
                    self.transmit.push_back(vec![NAK]);
                    return;
                }
                let frame_start = message.len();
                message.extend_from_slice(&frame.text);
                let record_ends = frame.last || frame.text.last() == Some(&CR);
                // The message is complete when the last record in it is the
                // terminator (frames may carry one record or several).
                let is_terminator = frame.last && {
                    let body = message.strip_suffix(&[CR]).unwrap_or(message);
                    let start = body.iter().rposition(|&c| c == CR).map_or(0, |i| i + 1);
                    body.get(start) == Some(&b'L')
                };
                if is_terminator {
                    *saw_terminator = true;
                    *awaiting_commit = Some((frame.number, frame_start));
                    self.events.push_back(LinkEvent::Message {
                        data: message.clone(),
                        needs_commit: true,
                    });
                    return;
                }
                if record_ends {
                    *record_start = message.len();
                }
                *last_accepted = Some(frame.number);
                *expected = (frame.number + 1) % 8;
                self.transmit.push_back(vec![ACK]);
            }
            Ok(frame) => {
                self.events
                    .push_back(LinkEvent::FrameRejected(FrameError::BadFrameNumber(
                        b'0' + frame.number,
                    )));
                self.transmit.push_back(vec![NAK]);
            }
            Err(e) => {
                self.events.push_back(LinkEvent::FrameRejected(e));
                self.transmit.push_back(vec![NAK]);
            }
        }
    }

    fn try_start_sending(&mut self, now: Instant) {
        if matches!(self.state, State::Neutral) && !self.pending_frames.is_empty() {
            self.transmit.push_back(vec![ENQ]);
            self.state = State::Establishing {
                deadline: now + self.config.send_timeout,
            };
        }
    }

    fn begin_frames(&mut self, now: Instant) {
        let Some(frames) = self.pending_frames.front().cloned() else {
            self.transmit.push_back(vec![EOT]);
            self.state = State::Neutral;
            return;
        };
        self.transmit.push_back(frames[0].clone());
        self.state = State::Sending {
            frames,
            next: 0,
            retries: 0,
            deadline: now + self.config.send_timeout,
            interrupted: false,
        };
    }

    fn sender_reply(&mut self, b: u8, now: Instant) {
        let on_interrupt = self.config.on_interrupt;
        let max_retries = self.config.max_retries;
        let State::Sending {
            frames,
            next,
            retries,
            deadline,
            interrupted,
        } = &mut self.state
        else {
            return;
        };
        let acked = match b {
            ACK => true,
            EOT => {
                // Receiver interrupt.
                if on_interrupt == OnInterrupt::FinishThenHold {
                    *interrupted = true;
                }
                true
            }
            _ => false,
        };
        if acked {
            *next += 1;
            *retries = 0;
            if *next >= frames.len() {
                self.pending_frames.pop_front();
                self.events.push_back(LinkEvent::Sent);
                self.transmit.push_back(vec![EOT]);
                let hold = *interrupted;
                self.state = if hold {
                    State::Waiting {
                        until: now + self.config.interrupt_hold,
                    }
                } else {
                    State::Neutral
                };
                self.try_start_sending(now);
                return;
            }
            self.transmit.push_back(frames[*next].clone());
        } else {
            *retries += 1;
            if *retries >= max_retries {
                self.transmit.push_back(vec![EOT]);
                self.fail_send("frame refused six times");
                self.state = State::Neutral;
                return;
            }
            self.transmit.push_back(frames[*next].clone());
        }
        *deadline = now + self.config.send_timeout;
    }

    fn fail_send(&mut self, reason: &'static str) {
        if self.pending_frames.pop_front().is_some() {
            self.events.push_back(LinkEvent::SendFailed { reason });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test plays the store.
    struct TestProof;
    impl Durable for TestProof {
        fn durable_id(&self) -> &str {
            "test"
        }
    }
    use crate::astm::{ACK, ENQ, EOT, NAK};

    fn frames(records: &[&str]) -> Vec<Vec<u8>> {
        let recs: Vec<Vec<u8>> = records.iter().map(|r| r.as_bytes().to_vec()).collect();
        encode_frames(&recs, 1)
    }

    fn drain(link: &mut AstmLink) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(t) = link.poll_transmit() {
            out.extend(t);
        }
        out
    }

    fn events(link: &mut AstmLink) -> Vec<LinkEvent> {
        std::iter::from_fn(|| link.poll_event()).collect()
    }

    const MSG: [&str; 4] = ["H|\\^&|||XN-550", "P|1||PAT1", "R|1|^^^WBC|6.5", "L|1|N"];

    #[test]
    fn receives_and_acks_the_final_frame_only_after_commit() {
        let now = Instant::now();
        let mut link = AstmLink::new(LinkConfig::default());
        link.handle_input(&[ENQ], now);
        assert_eq!(drain(&mut link), [ACK]);
        let fr = frames(&MSG);
        for f in &fr[..3] {
            link.handle_input(f, now);
            assert_eq!(drain(&mut link), [ACK]);
        }
        link.handle_input(&fr[3], now);
        assert_eq!(
            drain(&mut link),
            Vec::<u8>::new(),
            "no ACK before the commit"
        );
        let ev = events(&mut link);
        assert_eq!(
            ev,
            vec![LinkEvent::Message {
                data: b"H|\\^&|||XN-550\rP|1||PAT1\rR|1|^^^WBC|6.5\rL|1|N\r".to_vec(),
                needs_commit: true
            }]
        );
        link.stored(&TestProof, now);
        assert_eq!(drain(&mut link), [ACK]);
        link.handle_input(&[EOT], now);
        assert!(link.is_neutral());
        assert!(events(&mut link).is_empty(), "nothing handed up twice");
    }

    #[test]
    fn failed_commit_naks_and_the_retransmission_completes_the_message() {
        let now = Instant::now();
        let mut link = AstmLink::new(LinkConfig::default());
        link.handle_input(&[ENQ], now);
        let fr = frames(&MSG);
        for f in &fr {
            link.handle_input(f, now);
        }
        let first = events(&mut link);
        drain(&mut link);
        link.not_stored(now);
        assert_eq!(drain(&mut link), [NAK]);
        link.handle_input(&fr[3], now);
        let again = events(&mut link);
        assert_eq!(first, again, "the whole message is handed up again");
        link.stored(&TestProof, now);
        assert_eq!(drain(&mut link), [ACK]);
    }

    #[test]
    fn bad_checksum_naks_and_a_repeated_frame_is_not_appended_twice() {
        let now = Instant::now();
        let mut link = AstmLink::new(LinkConfig::default());
        link.handle_input(&[ENQ], now);
        drain(&mut link);
        let fr = frames(&MSG);
        let mut bad = fr[0].clone();
        let n = bad.len();
        bad[n - 4] = if bad[n - 4] == b'0' { b'1' } else { b'0' };
        link.handle_input(&bad, now);
        assert_eq!(drain(&mut link), [NAK]);
        assert!(matches!(
            events(&mut link)[..],
            [LinkEvent::FrameRejected(FrameError::BadChecksum { .. })]
        ));
        link.handle_input(&fr[0], now);
        link.handle_input(&fr[1], now);
        // Our ACK to frame 2 was lost: the analyzer sends it again.
        link.handle_input(&fr[1], now);
        assert_eq!(drain(&mut link), [ACK, ACK, ACK]);
        link.handle_input(&fr[2], now);
        link.handle_input(&fr[3], now);
        let ev = events(&mut link);
        let [LinkEvent::Message { data, .. }] = &ev[..] else {
            panic!("{ev:?}")
        };
        let text = String::from_utf8_lossy(data);
        assert_eq!(
            text.matches("P|1||PAT1").count(),
            1,
            "frame 2 kept once: {text:?}"
        );
        // A frame with the wrong number is refused.
        let mut link = AstmLink::new(LinkConfig::default());
        link.handle_input(&[ENQ], now);
        drain(&mut link);
        link.handle_input(&fr[1], now);
        assert_eq!(drain(&mut link), [NAK]);
    }

    #[test]
    fn split_at_every_byte() {
        let mut wire = vec![ENQ];
        for f in frames(&MSG) {
            wire.extend(f);
        }
        let expected = b"H|\\^&|||XN-550\rP|1||PAT1\rR|1|^^^WBC|6.5\rL|1|N\r".to_vec();
        for split in 0..=wire.len() {
            let now = Instant::now();
            let mut link = AstmLink::new(LinkConfig::default());
            link.handle_input(&wire[..split], now);
            link.handle_input(&wire[split..], now);
            let ev = events(&mut link);
            assert_eq!(
                ev,
                vec![LinkEvent::Message {
                    data: expected.clone(),
                    needs_commit: true
                }],
                "split {split}"
            );
        }
    }

    #[test]
    fn receive_timeout_discards_and_a_message_without_l_goes_up_at_eot() {
        let now = Instant::now();
        let mut link = AstmLink::new(LinkConfig::default());
        link.handle_input(&[ENQ], now);
        link.handle_input(&frames(&MSG[..2])[0], now);
        let t = link.poll_timeout().expect("timer");
        assert_eq!(t, now + Duration::from_secs(30));
        link.handle_timeout(t);
        assert!(matches!(
            events(&mut link)[..],
            [LinkEvent::Discarded {
                reason: "receive timeout",
                ..
            }]
        ));
        assert!(link.is_neutral());

        link.handle_input(&[ENQ], now);
        for f in frames(&MSG[..3]) {
            link.handle_input(&f, now);
        }
        link.handle_input(&[EOT], now);
        assert!(matches!(
            &events(&mut link)[..],
            [LinkEvent::Message {
                needs_commit: false,
                ..
            }]
        ));
    }

    #[test]
    fn sender_retries_gives_up_and_handles_busy_and_contention() {
        let now = Instant::now();
        let mut link = AstmLink::new(LinkConfig::default());
        link.send(vec![b"H|\\^&".to_vec(), b"L|1|N".to_vec()], now);
        assert_eq!(drain(&mut link), [ENQ]);
        link.handle_input(&[ACK], now);
        let f1 = drain(&mut link);
        assert_eq!(f1[0], STX);
        link.handle_input(&[NAK], now);
        assert_eq!(
            drain(&mut link),
            f1,
            "the same frame, same number, after a NAK"
        );
        link.handle_input(&[ACK], now);
        drain(&mut link);
        link.handle_input(&[ACK], now);
        assert_eq!(drain(&mut link), [EOT]);
        assert_eq!(events(&mut link), vec![LinkEvent::Sent]);

        // Six refusals: abort with EOT.
        link.send(vec![b"H|\\^&".to_vec()], now);
        link.handle_input(&[ACK], now);
        drain(&mut link);
        for _ in 0..6 {
            link.handle_input(&[NAK], now);
        }
        assert_eq!(drain(&mut link).last(), Some(&EOT));
        assert!(matches!(
            events(&mut link)[..],
            [LinkEvent::SendFailed { .. }]
        ));

        // Busy receiver: NAK to our ENQ, ENQ again 10 s later.
        link.send(vec![b"H|\\^&".to_vec()], now);
        assert_eq!(drain(&mut link), [ENQ]);
        link.handle_input(&[NAK], now);
        assert_eq!(link.poll_timeout(), Some(now + Duration::from_secs(10)));
        link.handle_timeout(now + Duration::from_secs(10));
        assert_eq!(drain(&mut link), [ENQ]);

        // Contention: the analyzer's ENQ crosses ours; we yield and receive.
        link.handle_input(&[ENQ], now);
        assert_eq!(drain(&mut link), [ACK]);
        for f in frames(&MSG) {
            link.handle_input(&f, now);
        }
        link.stored(&TestProof, now);
        link.handle_input(&[EOT], now);
        let ev = events(&mut link);
        assert!(matches!(ev[..], [LinkEvent::Message { .. }]), "{ev:?}");
        // Our message is still queued and goes out next.
        assert_eq!(drain(&mut link).last(), Some(&ENQ));
    }

    /// Real analyzer captures: every frame's checksum validates and the
    /// message comes out whole, with its records in order.
    #[test]
    fn conformance_captures_when_present() {
        let base =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/samples/astm");
        let Ok(dir) = std::fs::read_dir(&base) else {
            return;
        };
        for entry in dir.flatten() {
            let bytes = std::fs::read(entry.path()).expect("read");
            let now = Instant::now();
            let mut link = AstmLink::new(LinkConfig::default());
            let mut wire = Vec::new();
            if bytes.first() != Some(&ENQ) {
                wire.push(ENQ);
            }
            wire.extend(&bytes);
            let mut messages = Vec::new();
            for b in wire {
                link.handle_input(&[b], now);
                for ev in events(&mut link) {
                    match ev {
                        LinkEvent::Message { data, needs_commit } => {
                            if needs_commit {
                                link.stored(&TestProof, now);
                            }
                            messages.push(data);
                        }
                        LinkEvent::FrameRejected(e) => panic!("{}: {e}", entry.path().display()),
                        _ => {}
                    }
                }
            }
            link.handle_input(&[EOT], now);
            for ev in events(&mut link) {
                if let LinkEvent::Message { data, .. } = ev {
                    messages.push(data);
                }
            }
            assert!(
                !messages.is_empty(),
                "{}: no message",
                entry.path().display()
            );
            for m in messages {
                let parsed = crate::astm::AstmMessage::parse(&m, crate::hl7::Charset::Utf8)
                    .expect("records");
                assert_eq!(parsed.records[0].kind, 'H', "{}", entry.path().display());
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1500), commit in proptest::prelude::any::<bool>()) {
            let now = Instant::now();
            let mut link = AstmLink::new(LinkConfig { max_frame_len: 256, ..LinkConfig::default() });
            link.send(vec![b"H|\\^&".to_vec()], now);
            for chunk in data.chunks(7) {
                link.handle_input(chunk, now);
                while let Some(ev) = link.poll_event() {
                    if let LinkEvent::Message { needs_commit: true, .. } = ev {
                        if commit { link.stored(&TestProof, now) } else { link.not_stored(now) };
                    }
                }
                while link.poll_transmit().is_some() {}
            }
            link.handle_timeout(now + Duration::from_secs(100));
        }
    }
}
