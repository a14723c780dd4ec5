#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers may panic on setup failure
//! The gateway as a modality's storage destination, driven by dcmtk's
//! `echoscu` and `storescu`: a CT series and the conformance samples
//! arrive at central byte for byte (data set unchanged, Part 10 header
//! added), an unknown calling AE is refused when an allow-list is set, and
//! a full spool answers 0xA700 until space frees, when the modality's retry
//! succeeds; a malformed data set (sent raw by pynetdicom) is answered
//! 0xC000 without the gateway allocating what its headers claim, between
//! two good instances that are stored; and a 400-image CT study reaches Orthanc, the hospital PACS,
//! with the same SOP Instance UIDs and pixel data; and a storage
//! commitment request from pynetdicom answered only once central has the
//! instances, on a new association, with the unknown instance as failed;
//! and dcmtk `findscu` getting the clinic's worklist, imported at central
//! with `yilian-central worklist`, from the gateway while central is
//! unreachable, and an ORM^O01 from the RIS (sent by the python `hl7`
//! package's `mllp_send`) reaching that worklist.

//!
//! One binary, a module per scenario: [`storage`] (C-STORE from dcmtk
//! and pynetdicom, allow-list, full spool, malformed data sets), [`pacs`]
//! (a CT study to Orthanc), [`commitment`] (storage commitment) and
//! [`worklist`] (the modality worklist, and RIS orders reaching it).

mod commitment;
mod pacs;
mod storage;
mod worklist;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use yilian_central::store::ItemRow;
use yilian_rig::configs::free_tcp_port;
use yilian_rig::hub::HubSpec;
use yilian_rig::modality::{CtStudy, dataset_bytes, echoscu, storescu, write_malformed};
use yilian_rig::orthanc::Orthanc;
use yilian_rig::relay::Relay;

fn sample(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/samples")
        .join(rel);
    assert!(p.exists(), "{} is missing", p.display());
    p
}

struct Hub {
    central: yilian_central::Running,
    gateway: yilian_gateway::Running,
    relay: Relay,
    dicom: std::net::SocketAddr,
}

async fn hub(dir: &Path, dicom_extra: &str, quota_bytes: Option<u64>) -> Hub {
    hub_with(dir, dicom_extra, quota_bytes, "").await
}

async fn hub_with(
    dir: &Path,
    dicom_extra: &str,
    quota_bytes: Option<u64>,
    central_extra: &str,
) -> Hub {
    let dicom = free_tcp_port().expect("a free port");
    let hub = yilian_rig::hub::Hub::start_with(
        dir,
        HubSpec {
            gateway: "lingshan/xiacun/box-1",
            central_extra: format!(
                "[ecg]\ndirectory = {:?}\n{central_extra}",
                dir.join("ecg-import").display().to_string()
            ),
            gateway_extra: format!(
                "\n[[dicom]]\nname = \"modalities\"\nlisten = \"{dicom}\"\nae_title = \"YILIAN_GW\"\n{dicom_extra}"
            ),
            quota_bytes,
            idle_timeout_ms: Some(3000),
            reconnect_max_ms: 500,
            relay: Some(None),
            ..HubSpec::default()
        },
    )
    .await
    .expect("hub");
    Hub {
        central: hub.central,
        gateway: hub.gateway,
        relay: hub.relay.expect("relay"),
        dicom,
    }
}

async fn wait_items(central: &yilian_central::Running, n: usize, secs: u64) -> Vec<ItemRow> {
    yilian_rig::hub::wait_items(central, n, Duration::from_secs(secs), Duration::ZERO)
        .await
        .expect("items at central")
}

fn meta<'a>(i: &'a ItemRow, k: &str) -> Option<&'a str> {
    i.metadata.get(k).and_then(|v| v.as_str())
}

/// The files storescu's verbose log says were refused.
fn refused_files(log: &str) -> Vec<PathBuf> {
    let mut current = None;
    let mut refused = Vec::new();
    for line in log.lines() {
        if let Some(f) = line.strip_prefix("I: Sending file: ") {
            current = Some(PathBuf::from(f.trim()));
        } else if line.contains("Received Store Response (Refused")
            && let Some(f) = current.take()
        {
            refused.push(f);
        }
    }
    refused
}

/// dcmtk's storescp, bit-preserving, as the reference receiver.
struct Storescp {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    dir: PathBuf,
}

impl Storescp {
    fn start(dir: &Path) -> Storescp {
        std::fs::create_dir_all(dir).expect("mkdir");
        let addr = free_tcp_port().expect("port");
        let child = yilian_rig::modality::dcmtk("storescp")
            .args(["-B", "-aet", "STORESCP", "-od"])
            .arg(dir)
            .arg(addr.port().to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("dcmtk is missing: apt-get install dcmtk (./scripts/test-all does)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "storescp did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Storescp {
            child,
            addr,
            dir: dir.to_owned(),
        }
    }

    /// The files it stored, once there are `n`.
    fn files(&self, n: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v: Vec<Vec<u8>> = std::fs::read_dir(&self.dir)
                .expect("ls")
                .flatten()
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect();
            if v.len() >= n {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "storescp stored {} of {n}",
                v.len()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Storescp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("join")
}
