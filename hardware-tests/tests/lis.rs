#![allow(clippy::expect_used, clippy::unwrap_used)] // test helpers may panic on setup failure
//! Lab results from the clinic to the hospital LIS: HL7 forwarded as
//! received, ASTM converted to ORU^R01; the LIS (a scripted MLLP receiver
//! of the test's own) answers AR once, stays silent once, and refuses one
//! message with AE. Retries keep the same MSH-10; the refused one is parked
//! with the LIS's reason.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use yilian_codecs::hl7::{AckCode, ErrorInfo, Message, Verdict, build_ack};
use yilian_codecs::mllp::{MllpDecoder, encode};
use yilian_rig::analyzer::{Faults, send_message};
use yilian_rig::configs::free_tcp_port;
use yilian_rig::hub::HubSpec;

#[derive(Default)]
struct Lis {
    /// Every message received, in order.
    received: Vec<Vec<u8>>,
    seen: HashMap<String, u32>,
}

/// The scripted LIS: for a control id seen the first time, `HL7ONCE1` gets
/// AR, `YL…` (converted ASTM) gets silence, `BAD1` gets AE; otherwise AA.
async fn run_lis(listener: tokio::net::TcpListener, lis: Arc<Mutex<Lis>>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let lis = lis.clone();
        tokio::spawn(async move {
            let mut dec = MllpDecoder::default();
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok(n) = s.read(&mut buf).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                for frame in dec.push(&buf[..n]).into_iter().flatten() {
                    let text = yilian_codecs::hl7::decode(&frame, None).text;
                    let m = Message::parse(&text).expect("the LIS gets valid HL7");
                    let id = m.control_id().to_owned();
                    let first = {
                        let mut l = lis.lock().unwrap();
                        l.received.push(frame.clone());
                        let n = l.seen.entry(id.clone()).or_default();
                        *n += 1;
                        *n == 1
                    };
                    let (code, err) = if id == "BAD1" {
                        (
                            AckCode::AE,
                            Some(ErrorInfo {
                                location: "PID^1^3".into(),
                                code: 101,
                                text: "unknown patient".into(),
                                severity: 'E',
                            }),
                        )
                    } else if first && id == "HL7ONCE1" {
                        (
                            AckCode::AR,
                            Some(ErrorInfo {
                                location: String::new(),
                                code: 207,
                                text: "database busy".into(),
                                severity: 'E',
                            }),
                        )
                    } else if first && id.starts_with("YL") {
                        continue; // silence: the sender must resend
                    } else {
                        (AckCode::AA, None)
                    };
                    // The scripted LIS stores nothing: it plays its proof.
                    let verdict = match (code, &err) {
                        (AckCode::AA, _) => Verdict::Stored(&ScriptedLis),
                        (AckCode::AE, Some(e)) => Verdict::Malformed(e),
                        (_, Some(e)) => Verdict::Refused(e),
                        (_, None) => Verdict::Stored(&ScriptedLis),
                    };
                    let ack = build_ack(&m, verdict, "LISACK", "20240101120000");
                    if s.write_all(&encode(ack.as_bytes())).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}

/// The scripted LIS's stand-in for a store's commit.
struct ScriptedLis;
impl yilian_proof::Durable for ScriptedLis {
    fn durable_id(&self) -> &str {
        "scripted-lis"
    }
}

fn raw_send(port: u16, message: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(&encode(message.as_bytes())).expect("write");
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.ends_with(&[0x1c, 0x0d]) {
        let n = s.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn results_reach_the_lis_with_retries_same_control_ids_and_refusals_parked() {
    lis_scenario(String::new()).await;
}

/// The same with central's index on a real PostgreSQL server (deliveries
/// leased and the LIS claimed through it) and the payloads in a real S3
/// bucket (each message read back from it to be sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn results_reach_the_lis_with_the_index_on_postgresql() {
    let city = yilian_rig::garage::CityStore::start("lis").expect("PostgreSQL and Garage");
    lis_scenario(city.toml()).await;
}

async fn lis_scenario(store_toml: String) {
    let tmp = tempfile::Builder::new()
        .prefix("yilian-lis-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tmp");
    let dir = tmp.path();
    let lis_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let lis_addr = lis_listener.local_addr().expect("addr");
    let lis = Arc::new(Mutex::new(Lis::default()));
    tokio::spawn(run_lis(lis_listener, lis.clone()));

    let hl7 = free_tcp_port().expect("port");
    let astm = free_tcp_port().expect("port");
    let hub = yilian_rig::hub::Hub::start_with(
        dir,
        HubSpec {
            gateway: "anxi/hutou/box-1",
            central_extra: format!(
                "[lis]\naddress = \"{lis_addr}\"\nack_timeout = \"1s\"\nretry_base = \"100ms\"\nretry_max = \"1s\"\nreceiving_facility = \"COUNTY\"\n\n{store_toml}"
            ),
            gateway_extra: format!(
                "\n[[hl7]]\nname = \"lab-lis\"\nlisten = \"{hl7}\"\n\n[[astm]]\nname = \"chem\"\ntransport = \"tcp-server\"\nlisten = \"{astm}\"\n"
            ),
            ..HubSpec::default()
        },
    )
    .await
    .expect("hub");
    let (central, gateway) = (hub.central, hub.gateway);

    let good = "MSH|^~\\&|LAB|HUTOU|LIS|COUNTY|20240101120000||ORU^R01^ORU_R01|HL7ONCE1|P|2.5.1\rPID|1||P1\rOBX|1|NM|GLU||5.6|mmol/L|3.9-6.1|N|||F\r";
    let bad = "MSH|^~\\&|LAB|HUTOU|LIS|COUNTY|20240101120000||ORU^R01^ORU_R01|BAD1|P|2.5.1\rPID|1||NOBODY\rOBX|1|NM|GLU||5.6|mmol/L|3.9-6.1|N|||F\r";
    let (p, g, b) = (hl7.port(), good.to_owned(), bad.to_owned());
    tokio::task::spawn_blocking(move || {
        assert!(raw_send(p, &g).contains("MSA|AA|HL7ONCE1"));
        assert!(
            raw_send(p, &b).contains("MSA|AA|BAD1"),
            "the gateway stores it; the LIS decides later"
        );
    })
    .await
    .expect("join");
    let records: Vec<Vec<u8>> = [
        "H|\\^&|||Cobas^c311",
        "P|1||PAT9||李^四",
        "O|1|SID9||^^^GLU|R",
        "R|1|^^^GLU^Glucose|7.8|mmol/L|3.9-6.1|H||F||||20240101121000",
        "L|1|N",
    ]
    .iter()
    .map(|r| format!("{r}\r").into_bytes())
    .collect();
    let mut s = tokio::net::TcpStream::connect(astm).await.expect("connect");
    assert!(
        send_message(&mut s, &records, Faults::default())
            .await
            .expect("sent")
            .completed
    );

    // Wait for two deliveries and one parked.
    let deadline = Instant::now() + Duration::from_secs(60);
    let rows = loop {
        let rows = central.store.outbox_list(None).expect("outbox");
        let delivered = rows.iter().filter(|r| r.state == "delivered").count();
        let parked = rows.iter().filter(|r| r.state == "parked").count();
        if rows.len() == 3 && delivered == 2 && parked == 1 {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "outbox did not settle: {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let parked = rows.iter().find(|r| r.state == "parked").expect("parked");
    assert_eq!(
        parked.last_error.as_deref(),
        Some("LIS answered AE: unknown patient")
    );

    {
        let l = lis.lock().unwrap();
        // HL7: AR first, then delivered: sent twice, byte for byte as received.
        let hl7_copies: Vec<&Vec<u8>> = l
            .received
            .iter()
            .filter(|m| m.as_slice() == good.as_bytes())
            .collect();
        assert_eq!(hl7_copies.len(), 2, "AR, then resent as is");
        // ASTM: converted, first send unanswered, resent with the same MSH-10.
        let orus: Vec<Message> = l
            .received
            .iter()
            .filter_map(|m| Message::parse(&String::from_utf8_lossy(m)).ok())
            .filter(|m| m.control_id().starts_with("YL"))
            .collect();
        assert_eq!(orus.len(), 2, "timeout, then resent");
        assert_eq!(orus[0].control_id(), orus[1].control_id());
        assert_eq!(orus[0].get("PID", 5, 1), "李");
        assert_eq!(orus[0].get("OBX", 5, 1), "7.8");
        assert_eq!(orus[0].get("OBX", 8, 1), "H");
        assert_eq!(orus[0].get("MSH", 4, 1), "anxi/hutou");
    }

    let text = central.metrics.encode();
    assert!(
        text.contains("yilian_central_outbox_items{destination=\"lis\",state=\"parked\"} 1"),
        "{text}"
    );
    gateway.shutdown().await;
    central.shutdown().await;
}
