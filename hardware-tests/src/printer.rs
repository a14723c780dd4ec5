//! A CUPS scheduler of the test's own, on a socket in a temporary
//! directory, with one virtual printer (`printer-driver-cups-pdf`) that
//! writes each job as a PDF named after the job's title; `pdftoppm`
//! (poppler) renders a printed page to check it holds ink.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Cups {
    child: Child,
    /// What `lp -h` takes.
    pub socket: PathBuf,
    pub queue: &'static str,
}

impl Cups {
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let d = dir.join("cups");
        for sub in ["root", "spool", "cache", "state", "log", "tmp"] {
            std::fs::create_dir_all(d.join(sub))?;
        }
        // Filters run as the `lp` user and write their temporary files here.
        std::fs::set_permissions(
            d.join("tmp"),
            std::os::unix::fs::PermissionsExt::from_mode(0o1777),
        )?;
        let socket = d.join("cups.sock");
        std::fs::write(
            d.join("root/cupsd.conf"),
            format!(
                "Listen {}\nLogLevel warn\nWebInterface No\nDefaultAuthType None\n\
                 <Location />\n  Order allow,deny\n  Allow all\n</Location>\n\
                 <Location /admin>\n  Order allow,deny\n  Allow all\n</Location>\n\
                 <Policy default>\n  JobPrivateAccess all\n  JobPrivateValues none\n  \
                 SubscriptionPrivateAccess all\n  SubscriptionPrivateValues none\n  \
                 <Limit All>\n    Order deny,allow\n  </Limit>\n</Policy>\n",
                socket.display()
            ),
        )?;
        let p = |s: &str| d.join(s).display().to_string();
        std::fs::write(
            d.join("root/cups-files.conf"),
            format!(
                "ServerRoot {}\nRequestRoot {}\nCacheDir {}\nStateDir {}\nTempDir {}\n\
                 ServerBin /usr/lib/cups\nDataDir /usr/share/cups\nAccessLog {}\nErrorLog {}\n\
                 PageLog {}\nPrintcap /dev/null\nSystemGroup root\n",
                p("root"),
                p("spool"),
                p("cache"),
                p("state"),
                p("tmp"),
                p("log/access_log"),
                p("log/error_log"),
                p("log/page_log")
            ),
        )?;
        let child = Command::new("cupsd")
            .arg("-f")
            .arg("-c")
            .arg(d.join("root/cupsd.conf"))
            .arg("-s")
            .arg(d.join("root/cups-files.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cupsd (apt-get install cups): {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            anyhow::ensure!(Instant::now() < deadline, "cupsd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let cups = Self {
            child,
            socket,
            queue: "yilian-pdf",
        };
        let ppd = "/usr/share/ppd/cups-pdf/CUPS-PDF_opt.ppd";
        let out = Command::new("lpadmin")
            .arg("-h")
            .arg(&cups.socket)
            .args(["-p", cups.queue, "-E", "-v", "cups-pdf:/", "-P", ppd])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "lpadmin (apt-get install printer-driver-cups-pdf): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(cups)
    }

    /// The PDF the virtual printer wrote for the job whose title starts
    /// with `title`, once it is there.
    pub fn printed(&self, title: &str, timeout: Duration) -> Option<PathBuf> {
        // cups-pdf writes into the job owner's home from the password
        // database, which need not be this process's $HOME.
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        let dirs = [
            PathBuf::from(home).join("PDF"),
            PathBuf::from("/root/PDF"),
            PathBuf::from("/var/spool/cups-pdf/ANONYMOUS"),
        ];
        let deadline = Instant::now() + timeout;
        loop {
            for d in &dirs {
                let found = std::fs::read_dir(d).ok().and_then(|rd| {
                    rd.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| {
                        p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with(title))
                    })
                });
                if found.is_some() {
                    return found;
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Cups {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The share of dark pixels on the first page of `pdf`, rendered by
/// `pdftoppm` in grey at 40 dpi.
pub fn ink(pdf: &Path) -> anyhow::Result<f64> {
    let out = Command::new("pdftoppm")
        .args(["-gray", "-r", "40", "-f", "1", "-l", "1"])
        .arg(pdf)
        .output()
        .map_err(|e| anyhow::anyhow!("pdftoppm (apt-get install poppler-utils): {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "pdftoppm: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // PGM (P5): magic, width, height, maxval, then one byte per pixel.
    let data = out.stdout;
    let mut fields = Vec::new();
    let mut i = 0;
    while fields.len() < 4 && i < data.len() {
        while i < data.len() && data[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        while i < data.len() && !data[i].is_ascii_whitespace() {
            i += 1;
        }
        fields.push(String::from_utf8_lossy(&data[start..i]).into_owned());
    }
    anyhow::ensure!(
        fields.first().map(String::as_str) == Some("P5"),
        "not a PGM"
    );
    let pixels = &data[(i + 1).min(data.len())..];
    anyhow::ensure!(!pixels.is_empty(), "an empty page image");
    let dark = pixels.iter().filter(|&&p| p < 128).count();
    Ok(dark as f64 / pixels.len() as f64)
}

/// A one-page PDF with `lines` of text in Helvetica, xref and all.
pub fn simple_pdf(lines: &[&str]) -> Vec<u8> {
    let mut content = String::from("BT /F1 14 Tf 60 760 Td 18 TL\n");
    for l in lines {
        let esc = l
            .replace('\\', "\\\\")
            .replace('(', "\\(")
            .replace(')', "\\)");
        content.push_str(&format!("({esc}) Tj T*\n"));
    }
    content.push_str("ET\n");
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_owned(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_owned(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>".to_owned(),
        format!("<< /Length {} >>\nstream\n{content}endstream", content.len()),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_owned(),
    ];
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (n, o) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend(format!("{} 0 obj\n{o}\nendobj\n", n + 1).into_bytes());
    }
    let xref = out.len();
    out.extend(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).into_bytes());
    for off in offsets {
        out.extend(format!("{off:010} 00000 n \n").into_bytes());
    }
    out.extend(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .into_bytes(),
    );
    out
}
