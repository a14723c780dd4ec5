//! The fleet side of the QUIC listener: administrators' commands (on
//! connections with a `yilian-admin://` certificate), enrollment and
//! expired-certificate renewal (on connections without a certificate, which
//! may do nothing else), and renewal over a box's own link.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use yilian_link::{LinkError, MessageReader, write_message};
use yilian_protocol::BoxIdentity;
use yilian_protocol::messages::{
    AdminRequest, AdminResponse, CertificateResponse, Envelope, RenewRequest, envelope::Body,
};

use crate::fleet::{FleetError, Issued};
use crate::shared::{Shared, close};

/// A connection without a certificate gets this long for its one request.
const ANONYMOUS_TIMEOUT: Duration = Duration::from_secs(30);

fn answer(result: Result<Issued, FleetError>, ca_pem: &str) -> Envelope {
    let response = match result {
        Ok(issued) => CertificateResponse {
            chain_pem: issued.chain_pem,
            ca_pem: ca_pem.to_owned(),
            error: String::new(),
            identity: issued.identity.to_string(),
        },
        Err(FleetError::Refused(reason)) => CertificateResponse {
            error: reason,
            ..Default::default()
        },
        Err(e) => {
            tracing::error!(error = %e, "cannot issue a certificate");
            CertificateResponse {
                error: "central cannot issue certificates right now; try again later".into(),
                ..Default::default()
            }
        }
    };
    Envelope::new(Body::CertificateResponse(response))
}

/// Enrollment or expired-certificate renewal: one request, then the
/// connection is closed.
pub async fn serve_anonymous(conn: quinn::Connection, remote: SocketAddr, shared: Shared) {
    let work = async {
        let (mut send, recv) = conn.accept_bi().await.map_err(LinkError::from)?;
        let mut reader = MessageReader::new(recv);
        let first = reader.next().await?;
        let fleet = shared.fleet.clone();
        let ca_pem = fleet.ca_pem().to_owned();
        let reply = match first.and_then(|e| e.body) {
            Some(Body::EnrollRequest(req)) => {
                let f = fleet.clone();
                let r =
                    tokio::task::spawn_blocking(move || f.enroll(&req.token, &req.csr_pem, remote))
                        .await
                        .map_err(|e| LinkError::Identity(e.to_string()))?;
                match &r {
                    Ok(i) => tracing::info!(gateway = %i.identity, %remote, "box enrolled"),
                    Err(e) => tracing::warn!(%remote, reason = %e, "enrollment refused"),
                }
                answer(r, &ca_pem)
            }
            Some(Body::RenewRequest(req)) if !req.expired_chain_pem.is_empty() => {
                let f = fleet.clone();
                let r = tokio::task::spawn_blocking(move || {
                    f.renew_expired(&req.expired_chain_pem, &req.csr_pem, remote)
                })
                .await
                .map_err(|e| LinkError::Identity(e.to_string()))?;
                match &r {
                    Ok(i) => tracing::info!(gateway = %i.identity, %remote,
                        "renewed the expired certificate of a box that was offline"),
                    Err(e) => {
                        tracing::warn!(%remote, reason = %e, "expired-certificate renewal refused")
                    }
                }
                answer(r, &ca_pem)
            }
            _ => {
                tracing::warn!(%remote, "a connection without a certificate asked for something other than enrollment");
                answer(
                    Err(FleetError::Refused(
                        "without a certificate, only enrollment and renewal are possible".into(),
                    )),
                    &ca_pem,
                )
            }
        };
        write_message(&mut send, &reply).await?;
        let _ = send.finish();
        // Let the answer reach the box before closing.
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
        Ok::<(), LinkError>(())
    };
    match tokio::time::timeout(ANONYMOUS_TIMEOUT, work).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "enrollment connection ended"),
        Err(_) => tracing::debug!(%remote, "enrollment connection timed out"),
    }
    conn.close(0u32.into(), b"done");
}

/// Renewal on a box's own link, for the identity its certificate carries.
pub async fn renew(
    mut send: quinn::SendStream,
    req: RenewRequest,
    identity: &BoxIdentity,
    shared: &Shared,
) -> Result<(), LinkError> {
    let fleet = shared.fleet.clone();
    let id = identity.clone();
    let r = tokio::task::spawn_blocking(move || fleet.renew(&id, &req.csr_pem))
        .await
        .map_err(|e| LinkError::Identity(e.to_string()))?;
    match &r {
        Ok(i) => {
            tracing::info!(gateway = %identity, until = i.not_after_ms / 1000, "renewed the box's certificate")
        }
        Err(e) => tracing::warn!(gateway = %identity, reason = %e, "renewal refused"),
    }
    write_message(&mut send, &answer(r, shared.fleet.ca_pem())).await?;
    let _ = send.finish();
    Ok(())
}

/// Fleet commands from an administrator, one per stream.
pub async fn serve_admin(
    conn: quinn::Connection,
    remote: SocketAddr,
    name: String,
    shared: Shared,
) {
    let actor = format!("admin:{name}");
    tracing::info!(%actor, %remote, "administrator connected");
    while let Ok((mut send, recv)) = conn.accept_bi().await {
        let shared = shared.clone();
        let actor = actor.clone();
        tokio::spawn(async move {
            let mut reader = MessageReader::new(recv);
            let Ok(Some(Envelope {
                body: Some(Body::AdminRequest(req)),
            })) = reader.next().await
            else {
                return;
            };
            let command = req.command.clone();
            let response = match run(&shared, &actor, req).await {
                Ok(v) => AdminResponse {
                    result_json: v.to_string(),
                    error: String::new(),
                },
                Err(FleetError::Refused(e)) => AdminResponse {
                    result_json: String::new(),
                    error: e,
                },
                Err(e) => {
                    tracing::error!(%actor, %command, error = %e, "admin command failed");
                    AdminResponse {
                        result_json: String::new(),
                        error: format!("central failed: {e}"),
                    }
                }
            };
            tracing::info!(%actor, %command, ok = response.error.is_empty(), "admin command");
            if write_message(&mut send, &Envelope::new(Body::AdminResponse(response)))
                .await
                .is_ok()
            {
                let _ = send.finish();
                let _ = send.stopped().await;
            }
        });
    }
}

#[derive(Deserialize)]
struct TokenArgs {
    gateway: String,
    expires_seconds: u64,
    central: Option<String>,
}

#[derive(Deserialize)]
struct GatewayArg {
    gateway: String,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
struct RetireArgs {
    gateway: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    undo: bool,
}

#[derive(Deserialize)]
struct ScopeArgs {
    scope: String,
}

#[derive(Deserialize)]
struct ConfigArgs {
    scope: String,
    toml: String,
    /// The file it came from, for errors (older tools do not send it).
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct AuditArgs {
    #[serde(default = "default_limit")]
    limit: u32,
}

fn default_limit() -> u32 {
    100
}

fn args<T: for<'de> Deserialize<'de>>(req: &AdminRequest) -> Result<T, FleetError> {
    serde_json::from_str(&req.args_json)
        .map_err(|e| FleetError::Refused(format!("{}: bad arguments: {e}", req.command)))
}

async fn run(
    shared: &Shared,
    actor: &str,
    req: AdminRequest,
) -> Result<serde_json::Value, FleetError> {
    let fleet = shared.fleet.clone();
    let store = shared.store.clone();
    let actor = actor.to_owned();
    match req.command.as_str() {
        "token.create" => {
            let a: TokenArgs = args(&req)?;
            blocking(move || {
                fleet.create_token(
                    &actor,
                    &a.gateway,
                    Duration::from_secs(a.expires_seconds),
                    a.central,
                )
            })
            .await
        }
        "fleet.list" => {
            let rows = blocking(move || Ok(store.fleet()?)).await?;
            Ok(serde_json::Value::Array(
                rows.into_iter()
                    .map(|r| {
                        let up = shared.is_connected(&r.identity);
                        let mut v = json!(r);
                        v["link_up"] = json!(up);
                        v
                    })
                    .collect(),
            ))
        }
        "fleet.show" => {
            let a: GatewayArg = args(&req)?;
            let id =
                BoxIdentity::parse(&a.gateway).map_err(|e| FleetError::Refused(e.to_string()))?;
            let up = shared.is_connected(&id.to_string());
            blocking(move || {
                let row = store
                    .fleet()?
                    .into_iter()
                    .find(|r| r.identity == id.to_string())
                    .ok_or_else(|| {
                        FleetError::Refused(format!("{id} has never enrolled or connected"))
                    })?;
                let published = store.config_for(id.county(), id.clinic(), &id.to_string())?;
                let history: Vec<_> = store
                    .audit_log(u32::MAX)?
                    .into_iter()
                    .filter(|a| a.target == id.to_string() || a.actor == format!("gateway:{id}"))
                    .collect();
                let mut v = json!(row);
                v["link_up"] = json!(up);
                v["published_config"] = json!(published);
                v["history"] = json!(history);
                Ok(v)
            })
            .await
        }
        "revoke" => {
            let a: GatewayArg = args(&req)?;
            let reason = a.reason.clone();
            let id = blocking(move || fleet.revoke(&actor, &a.gateway, &a.reason)).await?;
            let notice = store
                .revocation_notice(&id.to_string())
                .ok()
                .flatten()
                .unwrap_or_else(|| "revoked".into());
            let was_connected = shared.disconnect(&id, close::REVOKED, notice.as_bytes());
            shared.set_watched(&id, false);
            tracing::warn!(gateway = %id, %reason, was_connected, "box revoked");
            Ok(json!({ "gateway": id.to_string(), "was_connected": was_connected }))
        }
        "retire" => {
            let a: RetireArgs = args(&req)?;
            let id = yilian_protocol::BoxIdentity::parse(&a.gateway)
                .map_err(|e| FleetError::Refused(e.to_string()))?;
            let who = id.to_string();
            let (reason, undo) = (a.reason.clone(), a.undo);
            let changed = blocking(move || Ok(store.retire(&who, &actor, &reason, undo)?)).await?;
            shared.set_watched(&id, a.undo);
            if a.undo {
                tracing::info!(gateway = %id, "box watched again");
            } else {
                tracing::info!(gateway = %id, reason = %a.reason, "box retired; it is no longer watched");
            }
            Ok(json!({ "gateway": id.to_string(), "retired": !a.undo, "changed": changed }))
        }
        "config.list" => {
            let rows = blocking(move || Ok(store.configs()?)).await?;
            Ok(json!(rows
                .iter()
                .map(|c| json!({ "scope": c.scope, "version": c.version, "set_at": c.set_at, "set_by": c.set_by }))
                .collect::<Vec<_>>()))
        }
        "config.get" => {
            let a: ScopeArgs = args(&req)?;
            let scope = a.scope.clone();
            let rows = blocking(move || Ok(store.configs()?)).await?;
            rows.into_iter()
                .find(|c| c.scope == scope)
                .map(|c| json!(c))
                .ok_or_else(|| {
                    FleetError::Refused(format!("nothing is published for {:?}", a.scope))
                })
        }
        "config.unset" => {
            let a: ScopeArgs = args(&req)?;
            let scope = a.scope.clone();
            match blocking(move || Ok(store.unpublish_config(&a.scope, &actor)?)).await? {
                Some(v) => Ok(json!({ "scope": scope, "version": v })),
                None => Err(FleetError::Refused(format!(
                    "nothing is published for {scope:?}"
                ))),
            }
        }
        "config.set" => {
            let a: ConfigArgs = args(&req)?;
            blocking(move || fleet.set_config(&actor, &a.scope, &a.toml, a.name.as_deref())).await
        }
        "audit" => {
            let a: AuditArgs = args(&req)?;
            let rows = blocking(move || Ok(store.audit_log(a.limit)?)).await?;
            Ok(json!(rows))
        }
        other => Err(FleetError::Refused(format!(
            "unknown command {other:?} (this central may be older than the tool)"
        ))),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FleetError> + Send + 'static,
) -> Result<T, FleetError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FleetError::Refused(format!("central failed: {e}")))?
}
