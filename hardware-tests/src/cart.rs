//! An ECG cart on the bench: SCP-ECG records as a cart writes them (section
//! 0 and a section 1 header with patient, device, time and the STAT code),
//! and the ways it sends them: raw on a serial line, or by XMODEM/YMODEM
//! through lrzsz (`sx`, `sb`), a sender nobody here wrote.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use yilian_codecs::ecg::scp::crc_ccitt;

/// What the cart puts in the record's header.
#[derive(Debug, Clone)]
pub struct CartRecord<'a> {
    pub patient_id: &'a str,
    pub last_name: &'a str,
    /// 0 routine; 1–10 urgent.
    pub stat_code: u8,
    /// Bytes of stand-in waveform data (a section the reader skips).
    pub waveform_bytes: usize,
}

impl CartRecord<'_> {
    /// The record, with correct section and record CRCs.
    pub fn encode(&self) -> Vec<u8> {
        // Tag 14: institution/department/device ids, then the 6-byte model
        // description at 8, the language byte at 16.
        let mut device = vec![0u8; 40];
        device[8..14].copy_from_slice(b"YLCART");
        device[16] = 0; // ASCII
        let tags: Vec<(u8, Vec<u8>)> = vec![
            (0, [self.last_name.as_bytes(), b"\0"].concat()),
            (2, [self.patient_id.as_bytes(), b"\0"].concat()),
            (14, device),
            (24, vec![self.stat_code]),
            (25, [2026u16.to_le_bytes().to_vec(), vec![11, 23]].concat()),
            (26, vec![10, 15, 0]),
        ];
        let mut s1 = vec![0u8; 16];
        for (t, v) in &tags {
            s1.push(*t);
            s1.extend_from_slice(&(v.len() as u16).to_le_bytes());
            s1.extend_from_slice(v);
        }
        s1.extend_from_slice(&[255, 0, 0]);
        let mut s6 = vec![0u8; 16];
        s6.extend((0..self.waveform_bytes).map(|i| (i * 7 % 251) as u8));
        let s0_len = 16 + 3 * 10;
        let s1_at = 6 + s0_len;
        let s6_at = s1_at + s1.len();
        let mut s0 = vec![0u8; 16];
        for (id, len, at) in [
            (0u16, s0_len, 6usize),
            (1, s1.len(), s1_at),
            (6, s6.len(), s6_at),
        ] {
            s0.extend_from_slice(&id.to_le_bytes());
            s0.extend_from_slice(&(len as u32).to_le_bytes());
            s0.extend_from_slice(&(at as u32 + 1).to_le_bytes());
        }
        let seal = |sec: &mut Vec<u8>, id: u16| {
            let len = sec.len() as u32;
            sec[2..4].copy_from_slice(&id.to_le_bytes());
            sec[4..8].copy_from_slice(&len.to_le_bytes());
            sec[8] = 20;
            sec[9] = 20;
            if id == 0 {
                sec[10..16].copy_from_slice(b"SCPECG");
            }
            let crc = crc_ccitt(&sec[2..]);
            sec[0..2].copy_from_slice(&crc.to_le_bytes());
        };
        seal(&mut s0, 0);
        seal(&mut s1, 1);
        seal(&mut s6, 6);
        let mut rec = vec![0u8; 6];
        rec.extend(s0);
        rec.extend(s1);
        rec.extend(s6);
        let len = rec.len() as u32;
        rec[2..6].copy_from_slice(&len.to_le_bytes());
        let crc = crc_ccitt(&rec[2..]);
        rec[0..2].copy_from_slice(&crc.to_le_bytes());
        rec
    }
}

/// Sends `files` from the device end of a cable with lrzsz: `sx` (XMODEM,
/// one file) or `sb` (YMODEM batch), bounded by `timeout` because `sx` can
/// hang after a transfer. Returns the sender's exit status.
pub fn lrzsz_send(
    ymodem: bool,
    device_end: &Path,
    files: &[&Path],
    timeout_secs: u32,
) -> std::io::Result<ExitStatus> {
    let tty_in = File::open(device_end)?;
    let tty_out = OpenOptions::new().write(true).open(device_end)?;
    let mut cmd = Command::new("timeout");
    cmd.arg(timeout_secs.to_string());
    if ymodem {
        cmd.arg("sb");
    } else {
        cmd.arg("sx");
    }
    cmd.args(files)
        .stdin(Stdio::from(tty_in))
        .stdout(Stdio::from(tty_out))
        .stderr(Stdio::null())
        .status()
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("lrzsz: {e} (apt-get install lrzsz; ./scripts/test-all does)"),
            )
        })
}
