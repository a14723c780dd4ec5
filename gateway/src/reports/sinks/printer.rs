//! Paper, through CUPS: the PDF (or the text version) handed to `lp`
//! with the report's id in the job title, so a page on the tray can be
//! traced back. Delivered means CUPS took the job (as the HIS's AA means
//! the HIS took the message): a printer out of paper or off is CUPS's
//! queue to hold, and `lpstat -p` shows it. A box that dies in the
//! instant between `lp` returning and the record prints the page again —
//! a second sheet of the same report, never a lost one.

use std::process::Stdio;

use tokio::process::Command;
use yilian_gateway_config::schema::ReportSinkSection;

use super::{Ready, Sink, SinkVerdict, Why, folder};

pub struct PrinterSink {
    printer: Option<String>,
    server: Option<String>,
}

impl PrinterSink {
    pub fn new(section: &ReportSinkSection) -> Self {
        Self {
            printer: section.printer.clone(),
            server: section.server.clone(),
        }
    }
}

impl Sink for PrinterSink {
    async fn deliver(&mut self, ready: &Ready<'_>) -> SinkVerdict {
        let body = match &ready.report.pdf {
            Some(pdf) => pdf.clone(),
            None => folder::text(ready).into_bytes(),
        };
        let mut cmd = Command::new("lp");
        if let Some(h) = &self.server {
            cmd.arg("-h").arg(h);
        }
        if let Some(p) = &self.printer {
            cmd.arg("-d").arg(p);
        }
        let title = format!("{} {}", ready.held.id, folder::stem(ready));
        cmd.arg("-t").arg(&title);
        if ready.report.pdf.is_none() {
            cmd.arg("-o").arg("document-format=text/plain");
        }
        // No file: lp reads the document from its standard input.
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return SinkVerdict::Retry(Why::new("why-printer-missing", e));
            }
        };
        if let Some(mut stdin) = child.stdin.take() {
            use tokio::io::AsyncWriteExt;
            if let Err(e) = stdin.write_all(&body).await {
                return SinkVerdict::Retry(Why::new("why-printer-failed", e));
            }
        }
        let out = match tokio::time::timeout(
            std::time::Duration::from_secs(60),
            child.wait_with_output(),
        )
        .await
        {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => return SinkVerdict::Retry(Why::new("why-printer-failed", e)),
            Err(_) => {
                return SinkVerdict::Retry(Why::new(
                    "why-printer-failed",
                    "lp did not finish within a minute",
                ));
            }
        };
        let said = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
        if out.status.success() {
            SinkVerdict::Delivered(said(&out.stdout))
        } else {
            SinkVerdict::Retry(Why::new(
                "why-printer-failed",
                format!(
                    "{}: {}",
                    self.printer.as_deref().unwrap_or("default printer"),
                    said(&out.stderr)
                ),
            ))
        }
    }
}
