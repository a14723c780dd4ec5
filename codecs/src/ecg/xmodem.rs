//! XMODEM (128-byte and 1K blocks, CRC or checksum) and YMODEM batch
//! receivers as one sans-IO state machine, for ECG carts that export files
//! over a serial line.
//!
//! The receiver starts the transfer (`C` asks for CRC mode; after three
//! unanswered tries it falls back to NAK, checksum mode), acknowledges each
//! good block, acknowledges and drops a repeated block (its ACK was lost),
//! NAKs a damaged one, and gives up with CAN CAN after ten errors in a row.
//! XMODEM pads the last block with 0x1A: the file's own length (an SCP-ECG
//! record length, say) is what trims it. YMODEM's block 0 carries the name
//! and size, so its files come out exact; a block 0 with an empty name ends
//! the batch. YMODEM senders expect the first EOT of a file to be NAKed and
//! the second ACKed.
//!
//! The ACK of a file's final EOT is the sender's only proof of delivery, so
//! it is held back: the receiver hands out the file and waits for
//! [`ModemReceiver::commit`]. Stored, it ACKs (and YMODEM asks for the next
//! file); not stored, it cancels, so the cart reports a failed export rather
//! than a lost ECG. EOTs the sender repeats meanwhile are ignored.

use std::collections::VecDeque;
use std::time::{Duration, Instant};
use yilian_proof::Durable;

const SOH: u8 = 0x01;
const STX: u8 = 0x02;
const EOT: u8 = 0x04;
const ACK: u8 = 0x06;
const NAK: u8 = 0x15;
const CAN: u8 = 0x18;
const CRC_REQUEST: u8 = b'C';

/// Most errors in a row before the transfer is cancelled.
const MAX_ERRORS: u32 = 10;
const START_RETRY: Duration = Duration::from_secs(3);
const BLOCK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Xmodem,
    Ymodem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferEvent {
    /// A whole file. XMODEM: padded to the block size; YMODEM: exact.
    File {
        name: Option<String>,
        size: Option<u64>,
        data: Vec<u8>,
    },
    /// The sender cancelled or we gave up.
    Aborted { reason: &'static str },
    /// YMODEM: the batch is over.
    BatchEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Asking the sender to start.
    Starting,
    Receiving,
    /// YMODEM: the first EOT was NAKed; the second is ACKed.
    EotOnce,
    /// A whole file was handed out; its EOT waits for [`ModemReceiver::commit`].
    Committing,
    Done,
}

#[derive(Debug)]
pub struct ModemReceiver {
    mode: Mode,
    state: State,
    crc: bool,
    start_tries: u32,
    errors: u32,
    expected: u8,
    /// YMODEM: expecting block 0 (the file header) next.
    want_header: bool,
    name: Option<String>,
    size: Option<u64>,
    data: Vec<u8>,
    buf: Vec<u8>,
    deadline: Instant,
    max_file: usize,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<TransferEvent>,
    /// Waiting for a sender that may start at any time (a cart's export
    /// button): never give up starting, alternate C and NAK.
    patient: bool,
}

use crate::crc::xmodem as crc16_xmodem;

impl ModemReceiver {
    /// Starts a receiver; it immediately asks the sender to begin.
    pub fn new(mode: Mode, max_file: usize, now: Instant) -> Self {
        let mut r = Self {
            mode,
            state: State::Starting,
            crc: true,
            start_tries: 1,
            errors: 0,
            expected: if mode == Mode::Ymodem { 0 } else { 1 },
            want_header: mode == Mode::Ymodem,
            name: None,
            size: None,
            data: Vec::new(),
            buf: Vec::new(),
            deadline: now + START_RETRY,
            max_file,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            patient: false,
        };
        r.transmit.push_back(vec![CRC_REQUEST]);
        r
    }

    /// A receiver that waits indefinitely for a sender to start, asking
    /// with `C` (CRC) and `NAK` (checksum) in turns of three, so that both
    /// kinds of sender find it whenever they begin.
    pub fn waiting(mode: Mode, max_file: usize, now: Instant) -> Self {
        let mut r = Self::new(mode, max_file, now);
        r.patient = true;
        r
    }

    /// Whether bytes wait in [`Self::poll_transmit`].
    pub fn poll_transmit_pending(&self) -> bool {
        !self.transmit.is_empty()
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<TransferEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        (!matches!(self.state, State::Done | State::Committing)).then_some(self.deadline)
    }

    /// Whether a file was handed out and waits for [`Self::commit`].
    pub fn awaiting_commit(&self) -> bool {
        self.state == State::Committing
    }

    /// The file last handed out is on stable storage: its final EOT is
    /// ACKed. Only a durable store's proof says so.
    pub fn stored(&mut self, _proof: &impl Durable, now: Instant) {
        self.answer_commit(true, now);
    }

    /// The file could not be stored: the transfer is cancelled, so the cart
    /// shows a failed export and sends again.
    pub fn not_stored(&mut self, now: Instant) {
        self.answer_commit(false, now);
    }

    fn answer_commit(&mut self, stored: bool, now: Instant) {
        if self.state != State::Committing {
            return;
        }
        if !stored {
            self.abort("the file could not be stored", now);
            return;
        }
        self.transmit.push_back(vec![ACK]);
        match self.mode {
            Mode::Xmodem => self.state = State::Done,
            Mode::Ymodem => {
                // Next file header (or the end of the batch).
                self.state = State::Starting;
                self.want_header = true;
                self.expected = 0;
                self.errors = 0;
                self.start_tries = 1;
                self.transmit.push_back(vec![CRC_REQUEST]);
                self.deadline = now + START_RETRY;
            }
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if matches!(self.state, State::Done | State::Committing) || now < self.deadline {
            return;
        }
        match self.state {
            State::Starting if self.patient => {
                self.start_tries += 1;
                self.crc = ((self.start_tries - 1) / 3).is_multiple_of(2);
                self.transmit
                    .push_back(vec![if self.crc { CRC_REQUEST } else { NAK }]);
                self.deadline = now + START_RETRY;
            }
            State::Starting => {
                self.start_tries += 1;
                if self.start_tries > 3 {
                    // No answer to C: the sender may only know checksums.
                    self.crc = false;
                }
                if self.start_tries > 3 + MAX_ERRORS {
                    self.abort("the sender never started", now);
                    return;
                }
                self.transmit
                    .push_back(vec![if self.crc { CRC_REQUEST } else { NAK }]);
                self.deadline = now + START_RETRY;
            }
            _ => {
                self.buf.clear();
                self.error(now);
            }
        }
    }

    fn error(&mut self, now: Instant) {
        self.errors += 1;
        if self.errors >= MAX_ERRORS {
            self.abort("too many errors", now);
        } else {
            self.transmit.push_back(vec![NAK]);
            self.deadline = now + BLOCK_TIMEOUT;
        }
    }

    fn abort(&mut self, reason: &'static str, _now: Instant) {
        self.transmit.push_back(vec![CAN, CAN]);
        self.events.push_back(TransferEvent::Aborted { reason });
        self.state = State::Done;
    }

    pub fn handle_input(&mut self, data: &[u8], now: Instant) {
        for &b in data {
            if self.state == State::Done {
                return;
            }
            if self.state == State::Committing {
                // Repeated EOTs while the file is being stored.
                continue;
            }
            self.byte(b, now);
        }
    }

    fn block_len(&self) -> Option<usize> {
        let data = match *self.buf.first()? {
            SOH => 128,
            STX => 1024,
            _ => return None,
        };
        Some(3 + data + if self.crc { 2 } else { 1 })
    }

    fn byte(&mut self, b: u8, now: Instant) {
        if self.buf.is_empty() {
            match b {
                SOH | STX => {
                    if self.state == State::Starting {
                        self.state = State::Receiving;
                    }
                    self.buf.push(b);
                }
                EOT if self.state == State::Receiving || self.state == State::EotOnce => {
                    self.eot(now)
                }
                CAN => {
                    self.events.push_back(TransferEvent::Aborted {
                        reason: "cancelled by the sender",
                    });
                    self.state = State::Done;
                }
                _ => {} // line noise between blocks
            }
            return;
        }
        self.buf.push(b);
        let Some(len) = self.block_len() else {
            self.buf.clear();
            return;
        };
        if self.buf.len() < len {
            return;
        }
        let block = std::mem::take(&mut self.buf);
        self.deadline = now + BLOCK_TIMEOUT;
        let (n, inv) = (block[1], block[2]);
        let data = &block[3..len - if self.crc { 2 } else { 1 }];
        let ok = if self.crc {
            let stored = u16::from_be_bytes([block[len - 2], block[len - 1]]);
            crc16_xmodem(data) == stored
        } else {
            data.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == block[len - 1]
        };
        if !ok || n != !inv {
            self.error(now);
            return;
        }
        if n == self.expected.wrapping_sub(1) && !(self.want_header && n == 0) {
            // Our ACK was lost: acknowledge again, keep nothing.
            self.transmit.push_back(vec![ACK]);
            return;
        }
        if n != self.expected {
            self.abort("block out of sequence", now);
            return;
        }
        self.errors = 0;
        if self.want_header {
            self.header(data, now);
            return;
        }
        if self.data.len() + data.len() > self.max_file {
            self.abort("file larger than allowed", now);
            return;
        }
        self.data.extend_from_slice(data);
        self.expected = self.expected.wrapping_add(1);
        self.transmit.push_back(vec![ACK]);
    }

    /// YMODEM block 0: `name NUL size [mtime ...] NUL...`.
    fn header(&mut self, data: &[u8], now: Instant) {
        let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
        if end == 0 {
            self.transmit.push_back(vec![ACK]);
            self.events.push_back(TransferEvent::BatchEnd);
            self.state = State::Done;
            return;
        }
        self.name = Some(String::from_utf8_lossy(&data[..end]).into_owned());
        let rest = &data[(end + 1).min(data.len())..];
        let size_text: String = rest
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .map(|&b| b as char)
            .collect();
        self.size = size_text.parse().ok();
        if self.size.is_some_and(|s| s > self.max_file as u64) {
            self.abort("file larger than allowed", now);
            return;
        }
        self.want_header = false;
        self.expected = 1;
        self.transmit.push_back(vec![ACK]);
        // Ask for the file's data blocks.
        self.transmit.push_back(vec![CRC_REQUEST]);
    }

    fn eot(&mut self, now: Instant) {
        if self.mode == Mode::Ymodem && self.state == State::Receiving {
            self.state = State::EotOnce;
            self.transmit.push_back(vec![NAK]);
            self.deadline = now + BLOCK_TIMEOUT;
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        if let Some(size) = self.size {
            data.truncate(size as usize);
        }
        self.events.push_back(TransferEvent::File {
            name: self.name.take(),
            size: self.size.take(),
            data,
        });
        self.state = State::Committing;
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

    fn block(n: u8, data: &[u8], one_k: bool, crc: bool) -> Vec<u8> {
        let size = if one_k { 1024 } else { 128 };
        let mut d = data.to_vec();
        // Data blocks are padded with SUB (0x1A); YMODEM's block 0 with NUL.
        d.resize(size, if n == 0 { 0 } else { 0x1A });
        let mut b = vec![if one_k { STX } else { SOH }, n, !n];
        b.extend_from_slice(&d);
        if crc {
            b.extend_from_slice(&crc16_xmodem(&d).to_be_bytes());
        } else {
            b.push(d.iter().fold(0u8, |a, x| a.wrapping_add(*x)));
        }
        b
    }

    fn drain(r: &mut ModemReceiver) -> Vec<u8> {
        std::iter::from_fn(|| r.poll_transmit()).flatten().collect()
    }

    #[test]
    fn xmodem_crc_with_a_damaged_and_a_repeated_block() {
        let now = Instant::now();
        let file: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let mut r = ModemReceiver::new(Mode::Xmodem, 1 << 20, now);
        assert_eq!(drain(&mut r), [b'C']);
        let b1 = block(1, &file[..128], false, true);
        let mut bad = b1.clone();
        bad[10] ^= 1;
        r.handle_input(&bad, now);
        assert_eq!(drain(&mut r), [NAK]);
        r.handle_input(&b1, now);
        r.handle_input(&b1, now); // the sender missed our ACK
        r.handle_input(&block(2, &file[128..256], false, true), now);
        r.handle_input(&block(3, &file[256..], false, true), now);
        assert_eq!(drain(&mut r), [ACK, ACK, ACK, ACK]);
        r.handle_input(&[EOT], now);
        assert_eq!(drain(&mut r), [] as [u8; 0], "EOT waits for the commit");
        let Some(TransferEvent::File { data, .. }) = r.poll_event() else {
            panic!("a file")
        };
        r.handle_input(&[EOT], now); // the sender repeats it meanwhile
        assert_eq!(drain(&mut r), [] as [u8; 0]);
        r.stored(&TestProof, now);
        assert_eq!(drain(&mut r), [ACK]);
        assert!(r.is_done());
        assert_eq!(data.len(), 384, "XMODEM pads to the block size");
        assert_eq!(&data[..300], &file[..]);
        assert!(data[300..].iter().all(|&b| b == 0x1A));
    }

    #[test]
    fn checksum_fallback_after_unanswered_c() {
        let now = Instant::now();
        let mut r = ModemReceiver::new(Mode::Xmodem, 1 << 20, now);
        drain(&mut r);
        for i in 1..=3 {
            r.handle_timeout(now + START_RETRY * i);
        }
        assert_eq!(drain(&mut r), [b'C', b'C', NAK]);
        r.handle_input(&block(1, b"hello", true, false), now);
        r.handle_input(&[EOT], now);
        assert_eq!(drain(&mut r), [ACK]);
        assert!(matches!(r.poll_event(), Some(TransferEvent::File { .. })));
        r.not_stored(now);
        assert_eq!(
            drain(&mut r),
            [CAN, CAN],
            "not stored: the cart must not think it was"
        );
        assert!(r.is_done());
    }

    #[test]
    fn ymodem_batch_with_exact_sizes() {
        let now = Instant::now();
        let mut r = ModemReceiver::new(Mode::Ymodem, 1 << 20, now);
        drain(&mut r);
        let file = vec![7u8; 1500];
        r.handle_input(&block(0, b"ECG0001.SCP\x001500 0 0", false, true), now);
        assert_eq!(drain(&mut r), [ACK, b'C']);
        r.handle_input(&block(1, &file[..1024], true, true), now);
        r.handle_input(&block(2, &file[1024..], true, true), now);
        assert_eq!(drain(&mut r), [ACK, ACK]);
        r.handle_input(&[EOT], now);
        assert_eq!(drain(&mut r), [NAK]);
        r.handle_input(&[EOT], now);
        assert_eq!(drain(&mut r), [] as [u8; 0]);
        r.stored(&TestProof, now);
        assert_eq!(drain(&mut r), [ACK, b'C']);
        assert_eq!(
            r.poll_event(),
            Some(TransferEvent::File {
                name: Some("ECG0001.SCP".into()),
                size: Some(1500),
                data: file
            })
        );
        r.handle_input(&block(0, b"", false, true), now);
        assert_eq!(drain(&mut r), [ACK]);
        assert_eq!(r.poll_event(), Some(TransferEvent::BatchEnd));
        assert!(r.is_done());
    }

    #[test]
    fn gives_up_after_ten_errors_and_honours_cancel() {
        let now = Instant::now();
        let mut r = ModemReceiver::new(Mode::Xmodem, 1 << 20, now);
        r.handle_input(&block(1, b"x", false, true), now);
        for i in 1..=10 {
            r.handle_timeout(now + BLOCK_TIMEOUT * i);
        }
        assert!(r.is_done());
        assert!(drain(&mut r).ends_with(&[CAN, CAN]));
        let mut r = ModemReceiver::new(Mode::Xmodem, 1 << 20, now);
        r.handle_input(&[CAN], now);
        assert_eq!(
            r.poll_event(),
            Some(TransferEvent::Aborted {
                reason: "cancelled by the sender"
            })
        );
    }

    #[test]
    fn a_waiting_receiver_alternates_and_never_gives_up() {
        let now = Instant::now();
        let mut r = ModemReceiver::waiting(Mode::Xmodem, 1 << 20, now);
        for i in 1..=40 {
            r.handle_timeout(now + START_RETRY * i);
        }
        let sent = drain(&mut r);
        assert_eq!(&sent[..7], &[b'C', b'C', b'C', NAK, NAK, NAK, b'C']);
        assert!(!r.is_done());
        assert!(!sent.contains(&CAN));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000), y in proptest::prelude::any::<bool>()) {
            let now = Instant::now();
            let mut r = ModemReceiver::new(if y { Mode::Ymodem } else { Mode::Xmodem }, 4096, now);
            for c in data.chunks(37) {
                r.handle_input(c, now);
                while r.poll_transmit().is_some() {}
                while r.poll_event().is_some() {}
                if r.awaiting_commit() {
                    if c.len() % 2 == 0 { r.stored(&TestProof, now) } else { r.not_stored(now) };
                }
            }
            r.handle_timeout(now + Duration::from_secs(60));
        }
    }
}
