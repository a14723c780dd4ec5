//! A serial cable on the bench: a socat pseudo-terminal pair whose two
//! ends appear under stable names, like `/dev/serial/by-id` links. Pulling
//! it removes both, as unplugging a USB-serial adapter does.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Cable {
    child: Child,
    /// The gateway's end.
    pub gateway_end: PathBuf,
    /// The device's end.
    pub device_end: PathBuf,
}

impl Cable {
    pub fn plug(gateway_end: &Path, device_end: &Path) -> std::io::Result<Cable> {
        let mut child = Command::new("socat")
            .arg("-d")
            .arg(format!("pty,raw,echo=0,link={}", gateway_end.display()))
            .arg(format!("pty,raw,echo=0,link={}", device_end.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("socat: {e} (apt-get install socat; ./scripts/test-all does)"),
                )
            })?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(gateway_end.exists() && device_end.exists()) {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(std::io::Error::other("socat did not create the pty pair"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Cable {
            child,
            gateway_end: gateway_end.to_owned(),
            device_end: device_end.to_owned(),
        })
    }

    /// Pulls the cable: the pty pair and its links disappear.
    pub fn unplug(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Cable {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens the device's end of a cable as the device would (raw, 9600 8N1),
/// waiting up to ten seconds for it to appear.
pub async fn open_device_end(path: &Path) -> tokio_serial::Result<tokio_serial::SerialStream> {
    use tokio_serial::SerialPortBuilderExt;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio_serial::new(path.to_string_lossy(), 9600).open_native_async() {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
