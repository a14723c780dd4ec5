//! Certificate renewal over the live connection.

use std::time::Duration;

use yilian_link::TlsFiles;

use crate::metrics::GatewayMetrics;

/// Renews the certificate over this connection once two thirds of its life
/// have passed. The connection keeps its handshake; the next one uses the
/// new certificate.
pub(super) fn spawn_renewal(conn: quinn::Connection, tls: TlsFiles, metrics: GatewayMetrics) {
    use crate::certificate::{Renewal, renew_online, renewal, validity};
    tokio::spawn(async move {
        loop {
            // Re-read the dates every time: the clock may have jumped.
            let wait = match validity(&tls.cert) {
                None => Duration::from_secs(60),
                Some((nb, na)) => match renewal(nb, na, crate::now_ms() / 1000) {
                    Renewal::NotYet { renew_at } => {
                        Duration::from_secs((renew_at - crate::now_ms() / 1000).clamp(1, 60) as u64)
                    }
                    Renewal::Due | Renewal::Expired => match renew_online(&conn, &tls).await {
                        Ok(i) => {
                            metrics.certificate_expiry.set(i.not_after);
                            tracing::info!(not_after = i.not_after, "box certificate renewed");
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "certificate renewal failed; trying again");
                            Duration::from_secs(((na - nb) / 30).clamp(1, 300) as u64)
                        }
                    },
                },
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = conn.closed() => return,
            }
        }
    });
}
