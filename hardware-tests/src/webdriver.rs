//! A real browser the tests can click: Debian's `chromedriver` driving
//! headless Chromium over the W3C WebDriver protocol (JSON over HTTP, so
//! no client library and no second TLS stack).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

/// The key W3C WebDriver names an element by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One browser session; the driver is stopped when dropped.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
}

fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    // chromedriver keeps the connection open: read the head, then as many
    // bytes as it says.
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        anyhow::ensure!(
            s.read(&mut byte)? == 1,
            "chromedriver closed the connection"
        );
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no Content-Length from chromedriver")?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    let json = String::from_utf8_lossy(&body);
    let v: Value =
        serde_json::from_str(json.trim()).with_context(|| format!("chromedriver said: {json}"))?;
    if let Some(e) = v["value"]["error"].as_str() {
        anyhow::bail!("webdriver {method} {path}: {e}: {}", v["value"]["message"]);
    }
    Ok(v["value"].clone())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session in `lang`.
    pub fn start(lang: &str) -> anyhow::Result<Self> {
        let port = crate::configs::free_tcp_port()?.port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("chromedriver (apt-get install chromium-driver; ./scripts/test-all does)")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(20);
        while http(addr, "GET", "/status", None).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", format!("--lang={lang}")]
            }
        }}});
        let mut b = Browser {
            driver,
            addr,
            session: String::new(),
        };
        let v = http(addr, "POST", "/session", Some(&caps))?;
        b.session = v["sessionId"].as_str().context("no session id")?.to_owned();
        Ok(b)
    }

    fn at(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub fn open(&self, url: &str) -> anyhow::Result<()> {
        http(
            self.addr,
            "POST",
            &self.at("/url"),
            Some(&json!({ "url": url })),
        )?;
        Ok(())
    }

    fn element(&self, css: &str) -> anyhow::Result<String> {
        let v = http(
            self.addr,
            "POST",
            &self.at("/element"),
            Some(&json!({"using": "css selector", "value": css})),
        )?;
        Ok(v[ELEMENT]
            .as_str()
            .with_context(|| format!("no element {css}: {v}"))?
            .to_owned())
    }

    /// Types `text` into the element `css` selects.
    pub fn type_into(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let e = self.element(css)?;
        http(
            self.addr,
            "POST",
            &self.at(&format!("/element/{e}/value")),
            Some(&json!({ "text": text })),
        )?;
        Ok(())
    }

    /// Clicks the element `css` selects, looking for it again while the
    /// page is still being replaced by the previous click's navigation.
    pub fn click(&self, css: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self.element(css).and_then(|e| {
                http(
                    self.addr,
                    "POST",
                    &self.at(&format!("/element/{e}/click")),
                    Some(&json!({})),
                )
            });
            match r {
                Ok(_) => return Ok(()),
                Err(e)
                    if Instant::now() < deadline
                        && ["stale element", "no such element"]
                            .iter()
                            .any(|m| e.to_string().contains(m)) =>
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The value of the browser's cookie `name` for the current page.
    pub fn cookie(&self, name: &str) -> anyhow::Result<String> {
        let v = http(self.addr, "GET", &self.at(&format!("/cookie/{name}")), None)?;
        Ok(v["value"].as_str().context("no cookie value")?.to_owned())
    }

    /// The page's source as the browser has it now.
    pub fn source(&self) -> anyhow::Result<String> {
        Ok(http(self.addr, "GET", &self.at("/source"), None)?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }
}

impl Browser {
    /// The page's source once it contains `text` (a click's navigation
    /// may still be under way when the click returns).
    pub fn wait_for(&self, text: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let source = self.source()?;
            if source.contains(text) {
                return Ok(source);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the page never showed {text:?}:\n{source}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = http(self.addr, "DELETE", &self.at(""), None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
