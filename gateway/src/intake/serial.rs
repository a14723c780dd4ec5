//! Serial ports shared by the device adapters: opened by their stable path
//! (`/dev/serial/by-id/...`) with the device profile's settings, and
//! reopened after an unplug. A read ending in EIO or zero bytes means the
//! adapter is gone; the path vanishes with it and comes back on replug.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use tokio::sync::watch;
use tokio_serial::{DataBits, SerialPortBuilderExt, SerialStream, StopBits};

use crate::config::{FlowControl, Parity};

/// How often a missing port is looked for again.
pub const REOPEN: Duration = Duration::from_secs(2);

pub use crate::config::SerialSettings;

pub fn open(path: &Path, s: &SerialSettings) -> Result<SerialStream, tokio_serial::Error> {
    let data_bits = match s.data_bits {
        5 => DataBits::Five,
        6 => DataBits::Six,
        7 => DataBits::Seven,
        _ => DataBits::Eight,
    };
    let parity = match s.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let flow = match s.flow_control {
        FlowControl::None => tokio_serial::FlowControl::None,
        FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
        FlowControl::Software => tokio_serial::FlowControl::Software,
    };
    let stop_bits = if s.stop_bits == 2 {
        StopBits::Two
    } else {
        StopBits::One
    };
    tokio_serial::new(path.to_string_lossy(), s.baud)
        .data_bits(data_bits)
        .parity(parity)
        .stop_bits(stop_bits)
        .flow_control(flow)
        .open_native_async()
}

/// Keeps the port at `path` open and served by `session` (which returns
/// why it ended) until `stop`; a missing port is logged once per absence.
pub async fn run_port<F, Fut>(
    metrics: &crate::metrics::GatewayMetrics,
    adapter: &str,
    device: &str,
    path: &Path,
    settings: SerialSettings,
    mut stop: watch::Receiver<bool>,
    mut session: F,
) where
    F: FnMut(SerialStream, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = String>,
{
    let mut reported_missing = false;
    loop {
        if *stop.borrow() {
            return;
        }
        // Present is what a technician can check: the cable is in.
        metrics.device_up(adapter, device, path.exists());
        match open(path, &settings) {
            Ok(port) => {
                reported_missing = false;
                tracing::info!(device, port = %path.display(), "serial port open");
                let open = metrics.connection(adapter, device);
                let why = session(port, stop.clone()).await;
                drop(open);
                metrics.device_up(adapter, device, path.exists());
                if *stop.borrow() {
                    return;
                }
                tracing::warn!(device, port = %path.display(), reason = %why,
                    "serial port closed; waiting for it to come back (unplugged?)");
            }
            Err(e) => {
                if !reported_missing {
                    tracing::warn!(device, port = %path.display(), error = %e,
                        "cannot open the serial port; check the cable and the by-id path");
                    reported_missing = true;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(REOPEN) => {}
            _ = stop.changed() => return,
        }
    }
}
