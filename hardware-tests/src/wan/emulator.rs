//! The emulated uplink: two network namespaces, `clinic` and `hub`, each
//! with a TUN device; this process reads every IP packet one side sends,
//! runs it through the [link model](super::model) of its direction and
//! writes it into the other side at the time the model says. Both kernels
//! see a real point-to-point link, so QUIC, TCP and anything else pay the
//! same rate, delay and loss.
//!
//! Each namespace also has a management veth to the root namespace (the
//! bench's own network: metrics scrapes, status), which bypasses the
//! emulated link as a real bench's management port would.
//!
//! Root only. Everything is removed on drop; namespaces left by a killed
//! run are removed by the next one.

use std::collections::BinaryHeap;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::model::{Direction, DropCause, Verdict};
use super::profile::Profile;

/// The two ends of the emulated link, inside their namespaces.
pub const CLINIC_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const HUB_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

const NS_PREFIX: &str = "yl-";

/// A network namespace created for the bench.
#[derive(Debug, Clone)]
pub struct Namespace {
    pub name: String,
}

impl Namespace {
    /// `program` run inside this namespace (`ip netns exec`, which execs it:
    /// the child's pid is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Counters of one direction.
#[derive(Default)]
pub struct DirectionStats {
    pub packets_in: AtomicU64,
    /// Everything the sender put on the link, dropped packets included.
    pub bytes_in: AtomicU64,
    pub packets_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub drops: [AtomicU64; 4],
}

impl DirectionStats {
    pub fn dropped(&self, cause: DropCause) -> u64 {
        self.drops[cause.index()].load(Ordering::Relaxed)
    }
}

struct Shared {
    stop: AtomicBool,
    cut: AtomicBool,
    up: DirectionStats,
    down: DirectionStats,
}

pub struct Wan {
    pub profile: Profile,
    pub clinic: Namespace,
    pub hub: Namespace,
    /// The root namespace reaches the clinic and the hub at these
    /// addresses through their management veths.
    pub clinic_mgmt: Ipv4Addr,
    pub hub_mgmt: Ipv4Addr,
    started: Instant,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Wan {
    /// Creates the namespaces and starts forwarding under `profile`.
    pub fn start(profile: Profile) -> anyhow::Result<Self> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        remove_stale_namespaces();
        let pid = std::process::id();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{pid}x{n}");
        let clinic = Namespace {
            name: format!("{NS_PREFIX}{tag}-clinic"),
        };
        let hub = Namespace {
            name: format!("{NS_PREFIX}{tag}-hub"),
        };
        // A /30 pair per namespace for management, distinct per process
        // and per emulator in it.
        let m = (pid as u64 * 31 + n) % 4000;
        let (a, b) = (80 + (m / 250) as u8, (m % 250) as u8);
        let mgmt = |host: u8| Ipv4Addr::new(10, a, b, host);
        let mut wan = Self {
            profile,
            clinic,
            hub,
            clinic_mgmt: mgmt(2),
            hub_mgmt: mgmt(6),
            started: Instant::now(),
            shared: Arc::new(Shared {
                stop: AtomicBool::new(false),
                cut: AtomicBool::new(false),
                up: DirectionStats::default(),
                down: DirectionStats::default(),
            }),
            threads: Vec::new(),
        };
        // From here on, drop removes whatever was made.
        let mtu = wan.profile.mtu.to_string();
        let mut devices = Vec::new();
        for (ns, side, addr, peer, mgmt_root, mgmt_ns) in [
            (&wan.clinic, 'c', CLINIC_ADDR, HUB_ADDR, mgmt(1), mgmt(2)),
            (&wan.hub, 'h', HUB_ADDR, CLINIC_ADDR, mgmt(5), mgmt(6)),
        ] {
            ip(&["netns", "add", &ns.name])?;
            ns.ip(&["link", "set", "lo", "up"])?;
            let tun_name = format!("yt{tag}{side}");
            let mut config = tun::Configuration::default();
            config.tun_name(&tun_name);
            let device = tun::Device::new(&config)
                .map_err(|e| anyhow::anyhow!("creating TUN {tun_name}: {e}"))?;
            // The open descriptor keeps working after the device moves.
            ip(&["link", "set", &tun_name, "netns", &ns.name])?;
            ns.ip(&["link", "set", &tun_name, "mtu", &mtu, "up"])?;
            ns.ip(&[
                "addr",
                "add",
                &format!("{addr}/32"),
                "peer",
                &format!("{peer}/32"),
                "dev",
                &tun_name,
            ])?;
            devices.push(Arc::new(device));

            let (root_end, ns_end) = (format!("ym{tag}{side}"), format!("yn{tag}{side}"));
            ip(&[
                "link", "add", &root_end, "type", "veth", "peer", "name", &ns_end, "netns",
                &ns.name,
            ])?;
            ip(&["addr", "add", &format!("{mgmt_root}/30"), "dev", &root_end])?;
            ip(&["link", "set", &root_end, "up"])?;
            ns.ip(&["addr", "add", &format!("{mgmt_ns}/30"), "dev", &ns_end])?;
            ns.ip(&["link", "set", &ns_end, "up"])?;
        }
        let (clinic_dev, hub_dev) = (devices[0].clone(), devices[1].clone());
        let mtu = usize::from(wan.profile.mtu);
        let seed = u64::from(pid) << 8 | n;
        for (up, from, to) in [
            (true, clinic_dev.clone(), hub_dev.clone()),
            (false, hub_dev, clinic_dev),
        ] {
            let spec = if up {
                wan.profile.up.clone()
            } else {
                wan.profile.down.clone()
            };
            let model = Direction::new(spec, mtu, seed * 2 + u64::from(up));
            let queue = Arc::new((Mutex::new(BinaryHeap::new()), Condvar::new()));
            let (shared, started, outage) =
                (wan.shared.clone(), wan.started, wan.profile.outage.clone());
            let q = queue.clone();
            wan.threads.push(
                std::thread::Builder::new()
                    .name(format!("wan-in-{up}"))
                    .spawn(move || read_side(&from, model, outage, started, &shared, up, &q))?,
            );
            let shared = wan.shared.clone();
            wan.threads.push(
                std::thread::Builder::new()
                    .name(format!("wan-out-{up}"))
                    .spawn(move || write_side(&to, started, &shared, up, &queue))?,
            );
        }
        Ok(wan)
    }

    /// Drops every packet both ways until [`Wan::restore`].
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
    }

    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// Clinic → hub counters.
    pub fn up(&self) -> &DirectionStats {
        &self.shared.up
    }

    /// Hub → clinic counters.
    pub fn down(&self) -> &DirectionStats {
        &self.shared.down
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for Wan {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // Removing a namespace removes its devices and the veths' root ends.
        for ns in [&self.clinic, &self.hub] {
            let _ = ip(&["netns", "del", &ns.name]);
        }
    }
}

/// Namespaces of bench runs whose process is gone.
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split('x').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// A packet waiting for its delivery time (earliest first, then in order
/// of arrival).
struct Pending {
    at: Duration,
    seq: u64,
    data: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

type Queue = Arc<(Mutex<BinaryHeap<Pending>>, Condvar)>;

const POLL: Duration = Duration::from_millis(100);

fn stats(shared: &Shared, up: bool) -> &DirectionStats {
    if up { &shared.up } else { &shared.down }
}

fn read_side(
    from: &tun::Device,
    mut model: Direction,
    outage: Option<super::model::OutageSpec>,
    started: Instant,
    shared: &Shared,
    up: bool,
    queue: &Queue,
) {
    let st = stats(shared, up);
    let mut buf = vec![0u8; 65536];
    let mut seq = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let n = match from.recv_timeout(&mut buf, POLL) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        st.packets_in.fetch_add(1, Ordering::Relaxed);
        st.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        let now = started.elapsed();
        let down =
            shared.cut.load(Ordering::Relaxed) || outage.as_ref().is_some_and(|o| o.active(now));
        match model.admit(now, n, down) {
            Verdict::Drop(cause) => {
                st.drops[cause.index()].fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Deliver(at) => {
                seq += 1;
                let (lock, wake) = &**queue;
                if let Ok(mut q) = lock.lock() {
                    q.push(Pending {
                        at,
                        seq,
                        data: buf[..n].to_vec(),
                    });
                }
                wake.notify_one();
            }
        }
    }
}

fn write_side(to: &tun::Device, started: Instant, shared: &Shared, up: bool, queue: &Queue) {
    let st = stats(shared, up);
    let (lock, wake) = &**queue;
    let Ok(mut q) = lock.lock() else { return };
    while !shared.stop.load(Ordering::Relaxed) {
        let now = started.elapsed();
        let wait = match q.peek() {
            Some(p) if p.at <= now => {
                if let Some(p) = q.pop() {
                    // Write outside the lock so the reader is never held up.
                    drop(q);
                    if to.send(&p.data).is_ok() {
                        st.packets_out.fetch_add(1, Ordering::Relaxed);
                        st.bytes_out
                            .fetch_add(p.data.len() as u64, Ordering::Relaxed);
                    }
                    q = match lock.lock() {
                        Ok(q) => q,
                        Err(_) => return,
                    };
                }
                continue;
            }
            Some(p) => (p.at - now).min(POLL),
            None => POLL,
        };
        q = match wake.wait_timeout(q, wait) {
            Ok((q, _)) => q,
            Err(_) => return,
        };
    }
}
