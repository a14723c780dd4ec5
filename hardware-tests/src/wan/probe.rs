//! Plain flows that measure the emulated link itself, run inside the
//! namespaces as `yilian-rig probe ...` (one process per end). Each prints
//! one JSON line.
//!
//! - `tcp-sink` / `tcp-send`: bulk TCP goodput, counted when the sink
//!   confirms the last byte.
//! - `udp-sink` / `udp-send`: paced or flooding UDP with sequence numbers
//!   and send times; the sink counts what arrives and echoes it, so the
//!   sender sees round-trip times, the sink the one-way loss and rate.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Accepts one connection, reads to its end, answers the byte count.
pub fn tcp_sink(listen: SocketAddr) -> anyhow::Result<()> {
    let l = TcpListener::bind(listen)?;
    println!("{{\"listening\":\"{}\"}}", l.local_addr()?);
    let (mut s, _) = l.accept()?;
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    s.write_all(&total.to_be_bytes())?;
    Ok(())
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TcpResult {
    pub bytes: u64,
    pub seconds: f64,
    pub kbit_per_s: f64,
}

pub fn tcp_send(to: SocketAddr, bytes: u64) -> anyhow::Result<TcpResult> {
    let started = Instant::now();
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(10))?;
    let block = vec![0x42u8; 1 << 16];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        s.write_all(&block[..n])?;
        left -= n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut ack = [0u8; 8];
    s.read_exact(&mut ack)?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        u64::from_be_bytes(ack) == bytes,
        "sink counted another total"
    );
    Ok(TcpResult {
        bytes,
        seconds,
        kbit_per_s: bytes as f64 * 8.0 / seconds / 1000.0,
    })
}

/// Datagram header: magic, sequence number, sender's clock in µs.
const MAGIC: &[u8; 4] = b"YLPR";
const STAT: &[u8; 4] = b"YLST";
/// IPv4 and UDP headers: what the link carries beyond the payload.
pub const IP_UDP_OVERHEAD: usize = 28;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SinkStats {
    pub received: u64,
    /// Wire bytes (payload + IP/UDP headers) between the first and the
    /// last datagram, and that span.
    pub wire_bytes: u64,
    pub span_s: f64,
}

/// Counts and echoes datagrams until killed; answers `YLST` with its count.
pub fn udp_sink(listen: SocketAddr) -> anyhow::Result<()> {
    let s = UdpSocket::bind(listen)?;
    println!("{{\"listening\":\"{}\"}}", s.local_addr()?);
    let mut buf = vec![0u8; 65536];
    let mut st = SinkStats::default();
    let mut first: Option<Instant> = None;
    loop {
        let (n, from) = s.recv_from(&mut buf)?;
        if buf[..n].starts_with(STAT) {
            let body = serde_json::to_vec(&st)?;
            s.send_to(&body, from)?;
            continue;
        }
        if !buf[..n].starts_with(MAGIC) {
            continue;
        }
        let now = Instant::now();
        let t0 = *first.get_or_insert(now);
        st.received += 1;
        // The first datagram opens the span; the rest are its traffic.
        if st.received > 1 {
            st.wire_bytes += (n + IP_UDP_OVERHEAD) as u64;
        }
        st.span_s = (now - t0).as_secs_f64();
        // Echo only the header: the return path is not what is measured.
        let _ = s.send_to(&buf[..16.min(n)], from);
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct UdpResult {
    pub sent: u64,
    pub echoed: u64,
    /// One-way, clinic → hub, from the sink's count.
    pub loss_up: f64,
    /// Of the round trip.
    pub loss_round_trip: f64,
    pub rtt_ms_min: f64,
    pub rtt_ms_p50: f64,
    pub rtt_ms_p95: f64,
    pub rtt_ms_p99: f64,
    pub rtt_ms_max: f64,
    /// Echoes that came back after a later one.
    pub reordered: u64,
    /// What reached the sink, in wire bits per second.
    pub sink_kbit_per_s: f64,
    pub sink: SinkStats,
}

/// Sends `count` datagrams of `size` bytes at `pps` (0: as fast as the
/// socket takes them).
pub fn udp_send(to: SocketAddr, count: u64, size: usize, pps: f64) -> anyhow::Result<UdpResult> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.connect(to)?;
    let size = size.max(16);
    let mut payload = vec![0u8; size];
    payload[..4].copy_from_slice(MAGIC);
    let started = Instant::now();
    // Echoes are read by their own thread: a socket read timeout is kept
    // in jiffies, and pacing around it would send in bursts.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let echoes = {
        let s = s.try_clone()?;
        s.set_read_timeout(Some(Duration::from_millis(50)))?;
        let done = done.clone();
        std::thread::spawn(move || {
            let (mut rtts, mut last_seq, mut reordered) = (Vec::new(), 0u64, 0u64);
            let mut buf = [0u8; 64];
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(n) = s.recv(&mut buf) else { continue };
                let now_us = started.elapsed().as_micros() as u64;
                if n < 16 || &buf[..4] != MAGIC {
                    continue;
                }
                let mut packed = [0u8; 16];
                packed[4..].copy_from_slice(&buf[4..16]);
                let packed = u128::from_be_bytes(packed);
                let seq = (packed >> 48) as u64;
                let sent_us = (packed & 0xffff_ffff_ffff) as u64;
                rtts.push(now_us.saturating_sub(sent_us) as f64 / 1000.0);
                if seq < last_seq {
                    reordered += 1;
                }
                last_seq = last_seq.max(seq);
            }
            (rtts, reordered)
        })
    };
    for seq in 0..count {
        if pps > 0.0 {
            let due = started + Duration::from_secs_f64(seq as f64 / pps);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        // seq (48 bits) and send time in µs (48 bits) packed in 12 bytes.
        let t = started.elapsed().as_micros() as u64;
        let packed: u128 = (u128::from(seq) << 48) | u128::from(t & 0xffff_ffff_ffff);
        payload[4..16].copy_from_slice(&packed.to_be_bytes()[4..16]);
        // A full socket buffer (ENOBUFS) is the flood's own loss.
        let _ = s.send(&payload);
    }
    std::thread::sleep(Duration::from_secs(3));
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut rtts, reordered) = echoes
        .join()
        .map_err(|_| anyhow::anyhow!("echo reader panicked"))?;
    let sink = ask_stats(&s)?;
    let echoed = rtts.len() as u64;
    rtts.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        rtts.get(((rtts.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(UdpResult {
        sent: count,
        echoed,
        loss_up: 1.0 - sink.received as f64 / count as f64,
        loss_round_trip: 1.0 - echoed as f64 / count as f64,
        rtt_ms_min: pct(0.0),
        rtt_ms_p50: pct(0.5),
        rtt_ms_p95: pct(0.95),
        rtt_ms_p99: pct(0.99),
        rtt_ms_max: pct(1.0),
        reordered,
        sink_kbit_per_s: if sink.span_s > 0.0 {
            sink.wire_bytes as f64 * 8.0 / sink.span_s / 1000.0
        } else {
            0.0
        },
        sink,
    })
}

fn ask_stats(s: &UdpSocket) -> anyhow::Result<SinkStats> {
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut buf = vec![0u8; 4096];
    for _ in 0..20 {
        s.send(STAT)?;
        if let Ok(n) = s.recv(&mut buf)
            && let Ok(st) = serde_json::from_slice::<SinkStats>(&buf[..n])
        {
            return Ok(st);
        }
    }
    anyhow::bail!("the UDP sink did not report its count")
}
