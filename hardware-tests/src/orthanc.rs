//! Orthanc (the Debian package) as the hospital PACS on the bench: started
//! with its own configuration in a temporary directory, DICOM and HTTP on
//! free loopback ports, its REST API read to see what it stored.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::configs::free_tcp_port;

pub struct Orthanc {
    child: Child,
    pub dicom: SocketAddr,
    pub http: SocketAddr,
    pub ae_title: &'static str,
    pub dir: PathBuf,
}

impl Orthanc {
    pub fn start(dir: &Path) -> std::io::Result<Orthanc> {
        std::fs::create_dir_all(dir)?;
        let dicom = free_tcp_port()?;
        let http = free_tcp_port()?;
        let config = serde_json::json!({
            "Name": "yilian-bench-pacs",
            "StorageDirectory": dir.join("storage"),
            "IndexDirectory": dir.join("index"),
            "DicomAet": "ORTHANC",
            "DicomPort": dicom.port(),
            "HttpPort": http.port(),
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "DicomCheckCalledAet": false,
            "DicomAlwaysAllowStore": true,
            "DicomAlwaysAllowEcho": true,
            "StorageCompression": false,
            "Plugins": [],
        });
        let path = dir.join("orthanc.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
        let log = std::fs::File::create(dir.join("orthanc.log"))?;
        // dcmtk inside Orthanc: see `modality::dcmtk` on TCP_NODELAY.
        let child = Command::new("/usr/sbin/Orthanc")
            .env("TCP_NODELAY", "1")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("Orthanc: {e} (apt-get install orthanc; ./scripts/test-all does)"),
                )
            })?;
        let o = Orthanc {
            child,
            dicom,
            http,
            ae_title: "ORTHANC",
            dir: dir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while o.get("/system").is_err() {
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "Orthanc did not start; see {}",
                    dir.join("orthanc.log").display()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(o)
    }

    fn request(&self, method: &str, path: &str, body: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&self.http, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
            self.http,
            body.len()
        )?;
        s.write_all(body)?;
        let mut all = Vec::new();
        s.read_to_end(&mut all)?;
        let split = all
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| std::io::Error::other("no HTTP header end"))?;
        let head = String::from_utf8_lossy(&all[..split]);
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            return Err(std::io::Error::other(format!(
                "{method} {path}: {}",
                head.lines().next().unwrap_or("")
            )));
        }
        Ok(all[split + 4..].to_vec())
    }

    pub fn get(&self, path: &str) -> std::io::Result<Vec<u8>> {
        self.request("GET", path, b"")
    }

    pub fn json(&self, path: &str) -> std::io::Result<serde_json::Value> {
        serde_json::from_slice(&self.get(path)?).map_err(std::io::Error::other)
    }

    /// Instances stored.
    pub fn instance_count(&self) -> std::io::Result<u64> {
        Ok(self.json("/statistics")?["CountInstances"]
            .as_u64()
            .unwrap_or(0))
    }

    /// The stored file of the instance with this SOP Instance UID.
    pub fn instance_file(&self, sop_instance_uid: &str) -> std::io::Result<Vec<u8>> {
        let found: serde_json::Value = serde_json::from_slice(&self.request(
            "POST",
            "/tools/lookup",
            sop_instance_uid.as_bytes(),
        )?)
        .map_err(std::io::Error::other)?;
        let id = found
            .as_array()
            .and_then(|a| a.iter().find(|r| r["Type"] == "Instance"))
            .and_then(|r| r["ID"].as_str())
            .ok_or_else(|| std::io::Error::other(format!("no instance {sop_instance_uid}")))?
            .to_owned();
        self.get(&format!("/instances/{id}/file"))
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
