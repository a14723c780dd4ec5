#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers may panic on setup failure
//! The box's page in a real browser (Debian's headless Chromium, with the
//! Noto CJK fonts): an HL7 sender that sent shows up with its last item
//! and today's count, and the item with its patient ID masked; a serial
//! ECG cart whose cable is pulled turns to 故障 with what to do; the link
//! cut shows 已断开 with the reason; English on request. With
//! `YILIAN_SCREENSHOTS=DIR` the Chinese and English pages are saved there
//! (the README's pictures come from `docs/`).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use yilian_rig::cable::Cable;
use yilian_rig::configs::free_tcp_port;
use yilian_rig::hub::{Hub, HubSpec};

/// One scenario at a time: each picks free ports and starts a browser,
/// and two at once could pick the same port.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The page's DOM after load, as Chromium renders it.
fn dump_dom(url: &str) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--lang=zh-CN",
            "--dump-dom",
            url,
        ])
        .output()
        .expect("chromium (apt-get install chromium fonts-noto-cjk; ./scripts/test-all does)");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn screenshot(url: &str, file: &Path) {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1280,1100",
        ])
        .arg(format!("--screenshot={}", file.display()))
        .arg(url)
        .output()
        .expect("chromium");
    assert!(out.status.success() && file.exists(), "no screenshot");
}

/// Sends one HL7 message over MLLP; returns the ACK.
fn mllp_send(addr: SocketAddr, message: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(&[0x0b]).expect("send");
    s.write_all(message.as_bytes()).expect("send");
    s.write_all(&[0x1c, 0x0d]).expect("send");
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The row of device `name` in the page's DOM.
fn row<'a>(dom: &'a str, name: &str) -> &'a str {
    let marker = format!("data-device=\"{name}\"");
    let start = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no row for {name}:\n{dom}"));
    let end = dom[start..].find("</tr>").map_or(dom.len(), |e| start + e);
    &dom[start..end]
}

/// Waits for the page to say what `ok` accepts.
async fn wait_page(url: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let u = url.to_owned();
        let dom = tokio::task::spawn_blocking(move || dump_dom(&u))
            .await
            .expect("join");
        if ok(&dom) {
            return dom;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed {what}:\n{dom}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_technician_sees_devices_items_and_faults_in_chinese_and_english() {
    let _one = ONE_AT_A_TIME.lock().await;
    let fonts = Command::new("fc-list")
        .arg(":lang=zh")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(
        !fonts.trim().is_empty(),
        "no Chinese font: Chinese would render as empty boxes (apt-get install fonts-noto-cjk)"
    );
    // Every character the Chinese catalogue uses has a glyph in the font
    // the page asks for first: no empty boxes on the page.
    let catalogue = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/i18n/zh-CN.ftl"),
    )
    .expect("catalogue");
    let mut chars: Vec<char> = catalogue.chars().filter(|c| !c.is_ascii()).collect();
    chars.sort_unstable();
    chars.dedup();
    let charset: Vec<String> = chars.iter().map(|c| format!("{:x}", *c as u32)).collect();
    let covering = Command::new("fc-list")
        .arg(format!(
            ":family=Noto Sans CJK SC:charset={}",
            charset.join(" ")
        ))
        .arg("family")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(
        !covering.trim().is_empty(),
        "Noto Sans CJK SC lacks some of the {} characters the page uses",
        chars.len()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let hl7 = free_tcp_port().expect("port");
    let page = free_tcp_port().expect("port");
    let reports = free_tcp_port().expect("port");
    let cable =
        Cable::plug(&dir.path().join("ttyCART"), &dir.path().join("ttyDEVICE")).expect("socat");
    let hub = Hub::start_with(
        dir.path(),
        HubSpec {
            gateway: "anxi/hutou/box-1",
            gateway_extra: format!(
                "\n[page]\nlisten = \"{page}\"\n\n[[hl7]]\nname = \"lab-lis\"\nlisten = \"{hl7}\"\n\n\
                 [[ecg_serial]]\nname = \"ecg-cart\"\nport = {:?}\nprotocol = \"raw\"\n\n\
                 [[report_sink]]\nname = \"reports-folder\"\ntype = \"folder\"\ndir = {:?}\n",
                cable.gateway_end.display().to_string(),
                dir.path().join("clinic-reports").display().to_string()
            ),
            central_extra: format!("[reports]\nhl7_listen = \"{reports}\"\n"),
            relay: Some(None),
            // A cut link is noticed within seconds, as on a real line.
            idle_timeout_ms: Some(3000),
            reconnect_max_ms: 500,
            ..HubSpec::default()
        },
    )
    .await
    .expect("hub");
    assert_eq!(hub.gateway.page_addr, Some(page));
    let zh = format!("http://{page}/?lang=zh-CN");
    let en = format!("http://{page}/?lang=en");

    let message = "MSH|^~\\&|LAB|HUTOU|LIS|COUNTY|20261203101500||ORU^R01^ORU_R01|PAGE0001|P|2.5.1\r\
                   PID|1||MZ261100000017^^^HUTOU||王^小明\r\
                   OBR|1||S1|GLU\r\
                   OBX|1|NM|GLU||5.6|mmol/L|3.9-6.1|N|||F\r";
    let ack = tokio::task::spawn_blocking(move || mllp_send(hl7, message))
        .await
        .expect("join");
    assert!(ack.contains("MSA|AA|PAGE0001"), "{ack}");

    // The sender's row: OK, with its last item and today's count; the item
    // listed with the patient ID masked (never in full), delivered.
    let dom = wait_page(&zh, "the HL7 item delivered", |d| {
        d.contains("已送达") && row(d, "lab-lis").contains("<td>1</td>")
    })
    .await;
    let lis = row(&dom, "lab-lis");
    assert!(lis.contains("正常"), "{lis}");
    assert!(lis.contains("检验系统（HL7）"), "{lis}");
    assert!(!lis.contains("从未收到"), "{lis}");
    assert!(dom.contains("MZ2611****17"), "masked ID missing");
    assert!(
        !dom.contains("MZ261100000017"),
        "the full patient ID is on the page"
    );
    assert!(dom.contains("已连接"), "link up missing");
    assert!(dom.contains("anxi/hutou/box-1"));
    assert!(row(&dom, "ecg-cart").contains("串口已就绪"));
    assert!(dom.contains("+08:00"), "times without the clinic's offset");
    // The box and central share this machine's clock: no offset to speak of.
    let offset = dom
        .split("id=\"clock-offset\"")
        .nth(1)
        .and_then(|d| d.split('>').nth(1))
        .and_then(|d| d.split(" 秒").next())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("the clock's offset from central is shown");
    assert!(offset.abs() < 2.0, "offset {offset}");

    let english = tokio::task::spawn_blocking({
        let en = en.clone();
        move || dump_dom(&en)
    })
    .await
    .expect("join");
    let lis_en = row(&english, "lab-lis");
    assert!(
        lis_en.contains("OK") && lis_en.contains("Lab system (HL7)"),
        "{lis_en}"
    );
    assert!(english.contains("delivered") && english.contains("Recently received"));

    // The county's lab reports back on that patient: the page lists the
    // report, masked, and where it was filed.
    let report = "MSH|^~\\&|LIS|COUNTY_HOSP|YILIAN|HUB|20261203103000||ORU^R01|PAGEREP1|P|2.5\r\
                  PID|1||MZ261100000017^^^HUTOU||王^小明\r\
                  OBR|1|||GLU^血糖复查|||20261203102000|||||||||||||||20261203102900|||F\r\
                  OBX|1|TX|GLU^血糖||空腹血糖 5.6 mmol/L，正常。||||||F\r";
    let ack = tokio::task::spawn_blocking(move || mllp_send(reports, report))
        .await
        .expect("join");
    assert!(ack.contains("MSA|AA|PAGEREP1"), "{ack}");
    let dom = wait_page(&zh, "the report on the page", |d| {
        d.contains("data-report=") && d.contains("已送达")
    })
    .await;
    let section = dom
        .split("id=\"reports\"")
        .nth(1)
        .and_then(|s| s.split("</section>").next())
        .unwrap_or_default();
    assert!(
        section.contains("血糖复查")
            && section.contains("正式报告")
            && section.contains("MZ2611****17"),
        "{section}"
    );

    if let Ok(out) = std::env::var("YILIAN_SCREENSHOTS") {
        let out = Path::new(&out);
        std::fs::create_dir_all(out).expect("mkdir");
        let (zh, en) = (zh.clone(), en.clone());
        let (a, b) = (out.join("page-zh-CN.png"), out.join("page-en.png"));
        tokio::task::spawn_blocking(move || {
            screenshot(&zh, &a);
            screenshot(&en, &b);
        })
        .await
        .expect("join");
    }

    // The cart's cable is pulled: its row turns to fault, with advice.
    cable.unplug();
    let dom = wait_page(&zh, "the cart in fault", |d| {
        row(d, "ecg-cart").contains("故障")
    })
    .await;
    let cart = row(&dom, "ecg-cart");
    assert!(cart.contains("找不到串口"), "{cart}");
    assert!(cart.contains("请检查串口线是否插好"), "{cart}");
    assert!(
        row(&dom, "lab-lis").contains("正常"),
        "one device's fault is not another's"
    );

    // The link is cut: 已断开, with the reason.
    hub.relay.as_ref().expect("relay").cut();
    let dom = wait_page(&zh, "the link down", |d| d.contains("已断开")).await;
    let link = dom
        .split("id=\"link\"")
        .nth(1)
        .and_then(|s| s.split("</dd>").next())
        .unwrap_or_default();
    assert!(
        link.contains("原因"),
        "no reason for the link being down: {link}"
    );
    // What it means, in Chinese, before the error itself: a cut link
    // times out (or the box sees the network fail).
    assert!(
        link.contains("中心没有应答") || link.contains("网络中断"),
        "the reason in the technician's words: {link}"
    );

    hub.shutdown().await;
}

/// A raw HTTP request to the page; returns the status line and body.
fn raw(addr: SocketAddr, request: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(request.as_bytes()).expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pin_guards_the_actions_and_forged_forms_are_refused() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let page = free_tcp_port().expect("port");
    let drop = dir.path().join("ecg-share");
    std::fs::create_dir_all(&drop).expect("mkdir");
    // dcmtk's storescp plays the DR the technician just plugged in.
    let modality = free_tcp_port().expect("port");
    let dicom = free_tcp_port().expect("port");
    let storescp_dir = dir.path().join("storescp");
    std::fs::create_dir_all(&storescp_dir).expect("mkdir");
    let mut storescp = yilian_rig::modality::dcmtk("storescp")
        .args(["-aet", "DR_ROOM", "-od"])
        .arg(&storescp_dir)
        .arg(modality.port().to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("storescp (dcmtk)");
    let hub = Hub::start_with(
        dir.path(),
        HubSpec {
            gateway: "anxi/hutou/box-2",
            gateway_extra: format!(
                "\n[page]\nlisten = \"{page}\"\npin = \"246810\"\n\n[[folder]]\nname = \"ecg-share\"\npath = {:?}\n\n\
                 [[dicom]]\nname = \"imaging\"\nlisten = \"{dicom}\"\nae_title = \"YILIAN_GW\"\n\
                 allowed = [{{ ae_title = \"DR_ROOM\", address = \"{modality}\" }}]\n",
                drop.display().to_string()
            ),
            relay: Some(None),
            idle_timeout_ms: Some(3000),
            reconnect_max_ms: 500,
            ..HubSpec::default()
        },
    )
    .await
    .expect("hub");

    // A form posted from anywhere but the page itself (no CSRF cookie and
    // token) is refused, logged in or not.
    let forged = tokio::task::spawn_blocking(move || {
        let body = "action=check-link&csrf=00000000000000000000000000000000";
        let action = raw(
            page,
            &format!(
                "POST /action HTTP/1.1\r\nHost: {page}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        );
        let body = "pin=246810&csrf=00000000000000000000000000000000";
        let login = raw(
            page,
            &format!(
                "POST /login HTTP/1.1\r\nHost: {page}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        );
        let bundle = raw(
            page,
            &format!("GET /support-bundle HTTP/1.1\r\nHost: {page}\r\nConnection: close\r\n\r\n"),
        );
        (action, login, bundle)
    })
    .await
    .expect("join");
    assert!(forged.0.starts_with("HTTP/1.1 403"), "{}", forged.0);
    assert!(forged.1.starts_with("HTTP/1.1 403"), "{}", forged.1);
    assert!(forged.2.starts_with("HTTP/1.1 403"), "{}", forged.2);

    // In a real browser: a wrong PIN is refused; the right one opens the
    // actions; the folder check writes and removes a probe.
    let url = format!("http://{page}");
    let page_url = url.clone();
    let browser = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let wait = Duration::from_secs(10);
        let b = yilian_rig::webdriver::Browser::start("zh-CN")?;
        b.open(&format!("{url}/?lang=zh-CN"))?;
        b.wait_for("to-login", wait)?;
        b.click("#to-login")?;
        b.wait_for("login-button", wait)?;
        b.type_into("#pin", "000000")?;
        b.click("#login-button")?;
        b.wait_for("PIN 不正确", wait)?;
        b.type_into("#pin", "246810")?;
        b.click("#login-button")?;
        b.wait_for("check-link", wait)?;
        b.click("#check-link")?;
        b.wait_for("连接正常", wait)?;
        b.click("button.folder")?;
        b.wait_for("文件夹 ecg-share 可写", wait)?;
        b.click("button.echo")?;
        b.wait_for("DR_ROOM 应答正常", wait)?;
        let session = b.cookie("yl_session")?;
        Ok((b, session))
    })
    .await
    .expect("join")
    .expect("browser");
    let (browser, session) = browser;
    // The support bundle, with the browser's session: the configuration
    // without the PIN, the link, recent warnings, metrics.
    let bundle = tokio::task::spawn_blocking(move || {
        raw(
            page,
            &format!(
                "GET /support-bundle HTTP/1.1\r\nHost: {page}\r\nCookie: yl_session={session}\r\nConnection: close\r\n\r\n"
            ),
        )
    })
    .await
    .expect("join");
    assert!(bundle.starts_with("HTTP/1.1 200"), "{bundle}");
    assert!(
        bundle.contains("## configuration") && bundle.contains("pin = (removed)"),
        "{bundle}"
    );
    assert!(
        !bundle.contains("246810"),
        "the PIN is in the support bundle"
    );
    assert!(
        bundle.contains("## metrics") && bundle.contains("yilian_device_up"),
        "{bundle}"
    );
    assert!(bundle.contains("## recent warnings and errors"), "{bundle}");
    let left: Vec<_> = std::fs::read_dir(&drop).expect("ls").flatten().collect();
    assert!(left.is_empty(), "the probe stayed in the folder: {left:?}");

    // An item set aside (as when central refuses it for good) is listed
    // with its reason, and "send again" puts it back: it reaches central
    // once the link is back.
    hub.relay.as_ref().expect("relay").cut();
    let deadline = Instant::now() + Duration::from_secs(20);
    while hub.gateway.link.borrow().state == "up" {
        assert!(Instant::now() < deadline, "the link never went down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::write(drop.join("REPORT.PDF"), b"%PDF-1.4 set aside").expect("write");
    let spool = hub.gateway.spool.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    let lease = loop {
        let s = spool.clone();
        let l = tokio::task::spawn_blocking(move || s.lease(&yilian_spool::Lane::ALL))
            .await
            .expect("join")
            .expect("lease");
        if let Some(l) = l {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "the file never reached the spool"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let s = spool.clone();
    tokio::task::spawn_blocking(move || s.dead_letter(lease, "TooLarge: set aside by the test"))
        .await
        .expect("join")
        .expect("dead letter");
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let wait = Duration::from_secs(10);
        browser.open(&format!("{page_url}/?lang=zh-CN"))?;
        browser.wait_for("无法送达的数据", wait)?;
        browser.wait_for("set aside by the test", wait)?;
        browser.click("button.requeue")?;
        browser.wait_for("已重新排队", wait)?;
        Ok(())
    })
    .await
    .expect("join")
    .expect("browser");
    hub.relay.as_ref().expect("relay").restore();
    hub.wait_items(1, Duration::from_secs(30))
        .await
        .expect("the item sent again reaches central");
    let _ = storescp.kill();
    let _ = storescp.wait();
    hub.shutdown().await;
}
