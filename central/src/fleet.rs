//! Fleet management at central: enrollment tokens and certificates from
//! the issuing CA, renewal (also for a box whose certificate expired while
//! it was offline), revocation, centrally published configuration, and the
//! audit log. The QUIC driver is in [`crate::server`]; the records are in
//! [`crate::registry`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::json;
use time::OffsetDateTime;
use yilian_link::Revocations;
use yilian_pki::token::{TokenClaims, TokenError, TokenKey};
use yilian_pki::{FleetCa, PkiError, csr};
use yilian_protocol::BoxIdentity;

use crate::config::{CentralConfig, EnrollmentSection};
use crate::registry::TokenUse;
use crate::store::{Store, StoreError, now_ms, rfc3339};

/// A box's certificate starts up to this long before it is issued, for
/// clocks that lag central's (a tenth of the lifetime when that is shorter,
/// so that short lifetimes still renew at two thirds).
const BACKDATE_SECS: i64 = 3600;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Refused, with the reason the requester is told.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("issuing a certificate: {0}")]
    Issue(#[from] PkiError),
}

fn refused(msg: impl Into<String>) -> FleetError {
    FleetError::Refused(msg.into())
}

/// An issued box certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    pub identity: BoxIdentity,
    /// Box certificate, then the issuing CA.
    pub chain_pem: String,
    pub not_after_ms: i64,
}

struct Issuing {
    ca: FleetCa,
    config: EnrollmentSection,
}

/// See the module documentation.
#[derive(Clone)]
pub struct Fleet {
    store: Store,
    revoked: Revocations,
    ca_path: PathBuf,
    ca_pem: String,
    ca_sha256: String,
    issuing: Option<Arc<Issuing>>,
    token_key: Arc<TokenKey>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("ca_sha256", &self.ca_sha256)
            .field("enrollment", &self.issuing.is_some())
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Loads the fleet CA, the issuing CA (with `[enrollment]`), the token
    /// key (made on first start) and the revocations.
    pub fn open(config: &CentralConfig, store: Store) -> anyhow::Result<Self> {
        let ca_pem = std::fs::read_to_string(&config.tls.ca)
            .with_context(|| format!("reading the fleet CA {}", config.tls.ca.display()))?;
        let ca_sha256 = csr::fingerprint_pem(&ca_pem)
            .with_context(|| format!("reading the fleet CA {}", config.tls.ca.display()))?;
        let issuing = match &config.enrollment {
            Some(e) => {
                let ca =
                    FleetCa::load_files(&e.issuing_cert, &e.issuing_key).with_context(|| {
                        format!(
                            "loading the issuing CA {} / {}",
                            e.issuing_cert.display(),
                            e.issuing_key.display()
                        )
                    })?;
                Some(Arc::new(Issuing {
                    ca,
                    config: e.clone(),
                }))
            }
            None => None,
        };
        let token_key = token_key(&store, &config.server.data_dir.join("token.key"))?;
        let revoked = Revocations::default();
        for id in store.revoked_identities()? {
            revoked.insert(&id);
        }
        Ok(Self {
            store,
            revoked,
            ca_path: config.tls.ca.clone(),
            ca_pem,
            ca_sha256,
            issuing,
            token_key: Arc::new(token_key),
        })
    }

    pub fn revocations(&self) -> Revocations {
        self.revoked.clone()
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn is_revoked(&self, identity: &BoxIdentity) -> bool {
        self.revoked.contains(&identity.to_string())
    }

    fn issuing(&self) -> Result<&Issuing, FleetError> {
        self.issuing.as_deref().ok_or_else(|| {
            refused("this central does not enroll boxes (no [enrollment] section in central.toml)")
        })
    }

    fn refuse_revoked(&self, identity: &BoxIdentity) -> Result<(), FleetError> {
        if self.is_revoked(identity) {
            let when = self
                .store
                .revocation(&identity.to_string())?
                .unwrap_or_default();
            return Err(refused(format!(
                "{identity} is revoked ({when}); a replacement box needs an identity of its own"
            )));
        }
        Ok(())
    }

    /// `token create`: a single-use token for `gateway`, valid for `ttl`.
    pub fn create_token(
        &self,
        actor: &str,
        gateway: &str,
        ttl: Duration,
        central: Option<String>,
    ) -> Result<serde_json::Value, FleetError> {
        let issuing = self.issuing()?;
        let identity = BoxIdentity::parse(gateway).map_err(|e| refused(e.to_string()))?;
        self.refuse_revoked(&identity)?;
        let id = hex::encode(rand::random::<[u8; 16]>());
        let expires_ms = now_ms() + ttl.as_millis() as i64;
        let central = central.or_else(|| issuing.config.public_address.clone());
        let claims = TokenClaims {
            id: id.clone(),
            gateway: identity.to_string(),
            expires: expires_ms / 1000,
            ca_sha256: self.ca_sha256.clone(),
            central: central.clone(),
        };
        let token = self.token_key.sign(&claims);
        self.store
            .token_created(&id, &identity.to_string(), expires_ms, actor)?;
        Ok(json!({
            "token": token,
            "gateway": identity.to_string(),
            "expires": rfc3339(expires_ms),
            "ca_sha256": self.ca_sha256,
            "central": central,
        }))
    }

    /// A box with a token and a CSR for a key it made.
    pub fn enroll(
        &self,
        token: &str,
        csr_pem: &str,
        from: SocketAddr,
    ) -> Result<Issued, FleetError> {
        let issuing = self.issuing()?;
        let claims = self.token_key.verify(token).map_err(|e| match e {
            TokenError::Forged => refused(
                "token signature invalid: it was not issued by this central, or it was altered",
            ),
            other => refused(other.to_string()),
        })?;
        if now_ms() / 1000 > claims.expires {
            return Err(refused(format!(
                "token expired at {}; ask the county admin for a new one",
                rfc3339(claims.expires * 1000)
            )));
        }
        let identity = BoxIdentity::parse(&claims.gateway).map_err(|e| refused(e.to_string()))?;
        match csr::requested_identity(csr_pem) {
            Ok(Some(asked)) if asked != claims.gateway => {
                return Err(refused(format!(
                    "the token is for {}, but this box asks to be {asked}",
                    claims.gateway
                )));
            }
            Ok(_) => {}
            Err(e) => return Err(refused(e.to_string())),
        }
        self.refuse_revoked(&identity)?;
        match self.store.consume_token(&claims.id, &from.to_string())? {
            TokenUse::Consumed => {}
            TokenUse::Unknown => {
                return Err(refused(
                    "token unknown to this central (its record is gone); ask for a new one",
                ));
            }
            TokenUse::AlreadyUsed { at_ms, from } => {
                return Err(refused(format!(
                    "token already used at {} from {from}; tokens are single-use",
                    rfc3339(at_ms)
                )));
            }
        }
        let issued = self.sign(issuing, &identity, csr_pem)?;
        self.store.touch_gateway(&identity, None)?;
        self.store.audit(
            &format!("gateway:{identity}"),
            "enroll",
            &identity.to_string(),
            &format!(
                "from {from} with token {}, certificate until {}",
                claims.id,
                rfc3339(issued.not_after_ms)
            ),
        )?;
        Ok(issued)
    }

    /// Renewal over the box's mutually authenticated link.
    pub fn renew(&self, identity: &BoxIdentity, csr_pem: &str) -> Result<Issued, FleetError> {
        let issuing = self.issuing()?;
        self.refuse_revoked(identity)?;
        let issued = self.sign(issuing, identity, csr_pem)?;
        self.store.audit(
            &format!("gateway:{identity}"),
            "renew",
            &identity.to_string(),
            &format!("certificate until {}", rfc3339(issued.not_after_ms)),
        )?;
        Ok(issued)
    }

    /// Renewal for a box whose certificate expired while it was offline: it
    /// shows the old chain and signs the CSR with the old key. Allowed up
    /// to the grace period after expiry.
    pub fn renew_expired(
        &self,
        chain_pem: &str,
        csr_pem: &str,
        from: SocketAddr,
    ) -> Result<Issued, FleetError> {
        let issuing = self.issuing()?;
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| refused(format!("old certificate chain unreadable: {e}")))?;
        let leaf = chain
            .first()
            .ok_or_else(|| refused("no old certificate given"))?;
        let (not_before, not_after) =
            yilian_link::certificate_validity(leaf).map_err(|e| refused(e.to_string()))?;
        let now = now_ms() / 1000;
        let grace = issuing.config.grace.as_secs() as i64;
        if now > not_after + grace {
            return Err(refused(format!(
                "the old certificate expired at {}, more than {} ago; enroll again with a new token",
                rfc3339(not_after * 1000),
                humantime::format_duration(issuing.config.grace)
            )));
        }
        // Verify as of the certificate's last valid second: everything but
        // the expiry must hold.
        let at = UnixTime::since_unix_epoch(Duration::from_secs(
            (not_after - 1).max(not_before).max(0) as u64,
        ));
        let identity = yilian_link::verify_expired_gateway_chain(&self.ca_path, &chain, at)
            .map_err(|e| refused(format!("old certificate not from this fleet: {e}")))?;
        match csr::request_matches_certificate(csr_pem, leaf) {
            Ok(true) => {}
            Ok(false) => {
                return Err(refused(
                    "the request is not signed by the old certificate's key",
                ));
            }
            Err(e) => return Err(refused(e.to_string())),
        }
        self.refuse_revoked(&identity)?;
        let issued = self.sign(issuing, &identity, csr_pem)?;
        self.store.audit(
            &format!("gateway:{identity}"),
            "renew.expired",
            &identity.to_string(),
            &format!(
                "from {from}, old certificate expired {}, new one until {}",
                rfc3339(not_after * 1000),
                rfc3339(issued.not_after_ms)
            ),
        )?;
        Ok(issued)
    }

    fn sign(
        &self,
        issuing: &Issuing,
        identity: &BoxIdentity,
        csr_pem: &str,
    ) -> Result<Issued, FleetError> {
        let now = OffsetDateTime::now_utc();
        let lifetime = issuing.config.certificate_lifetime;
        let backdate = Duration::from_secs(BACKDATE_SECS as u64).min(lifetime / 10);
        let not_before = now - backdate;
        let cert = issuing
            .ca
            .sign_gateway_csr(csr_pem, identity, not_before, lifetime + backdate)
            .map_err(|e| match e {
                PkiError::Csr(m) => refused(format!("certificate request refused: {m}")),
                other => FleetError::Issue(other),
            })?;
        let not_after = now + lifetime;
        Ok(Issued {
            identity: identity.clone(),
            chain_pem: format!("{cert}{}", issuing.ca.cert_pem()),
            not_after_ms: (not_after.unix_timestamp_nanos() / 1_000_000) as i64,
        })
    }

    /// `revoke`: refused at every handshake from now on. The caller closes
    /// the box's live connection.
    pub fn revoke(
        &self,
        actor: &str,
        gateway: &str,
        reason: &str,
    ) -> Result<BoxIdentity, FleetError> {
        let identity = BoxIdentity::parse(gateway).map_err(|e| refused(e.to_string()))?;
        self.revoked.insert(&identity.to_string());
        self.store.revoke(&identity.to_string(), actor, reason)?;
        Ok(identity)
    }

    /// `config set`: publishes a fragment for a county, a clinic or a box.
    /// Checked here with the box's own parser (unknown keys, types, values,
    /// with the file's name and line); each box checks it again against its
    /// own file before switching, and reports a refusal.
    pub fn set_config(
        &self,
        actor: &str,
        scope: &str,
        text: &str,
        name: Option<&str>,
    ) -> Result<serde_json::Value, FleetError> {
        check_scope(scope)?;
        yilian_gateway_config::fragment::check(text, name.unwrap_or("published configuration"))
            .map_err(|e| refused(e.to_string()))?;
        let version = yilian_gateway_config::version_of(text);
        self.store.publish_config(scope, &version, text, actor)?;
        Ok(json!({ "scope": scope, "version": version }))
    }
}

fn check_scope(scope: &str) -> Result<(), FleetError> {
    let parts: Vec<&str> = scope.split('/').collect();
    let ok = match parts.len() {
        3 => BoxIdentity::parse(scope).is_ok(),
        1 | 2 => {
            let padded = format!("{scope}{}", "/x".repeat(3 - parts.len()));
            BoxIdentity::parse(&padded).is_ok()
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(refused(format!(
            "{scope:?} is not COUNTY, COUNTY/CLINIC or COUNTY/CLINIC/BOX"
        )))
    }
}

/// The key enrollment tokens are signed with. Instances sharing an index
/// share it through the index (a token made at one is good at every
/// other, whatever their data directories); the first to start puts it
/// there, taken from a county hub's `token.key` when it has one, so tokens
/// issued before a move stay good. An embedded hub keeps it in its file.
fn token_key(store: &Store, path: &Path) -> anyhow::Result<TokenKey> {
    if !store.shares_connections() {
        return load_or_create_key(path);
    }
    let candidate = match std::fs::read(path) {
        Ok(bytes) if bytes.len() >= 32 => bytes,
        _ => rand::random::<[u8; 32]>().to_vec(),
    };
    let secret = store
        .shared_secret("token_key", &candidate)
        .context("reading the token key from the shared index")?;
    anyhow::ensure!(
        secret.len() >= 32,
        "the token key in the shared index is shorter than 32 bytes"
    );
    Ok(TokenKey::from_bytes(&secret))
}

fn load_or_create_key(path: &Path) -> anyhow::Result<TokenKey> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read(path) {
        Ok(bytes) if bytes.len() >= 32 => return Ok(TokenKey::from_bytes(&bytes)),
        Ok(_) => anyhow::bail!("{} is shorter than 32 bytes", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    // Written aside and linked into place whole: of two instances starting
    // on one directory, the second finds the first's complete key.
    let secret: [u8; 32] = rand::random();
    let aside = path.with_extension(format!("new.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&aside)
        .with_context(|| format!("creating {}", aside.display()))?;
    f.write_all(&secret)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", aside.display()))?;
    let linked = std::fs::hard_link(&aside, path);
    let _ = std::fs::remove_file(&aside);
    match linked {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                yilian_proof::disk::sync_dir(dir)
                    .with_context(|| format!("syncing {}", dir.display()))?;
            }
            Ok(TokenKey::from_bytes(&secret))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            anyhow::ensure!(
                bytes.len() >= 32,
                "{} is shorter than 32 bytes",
                path.display()
            );
            Ok(TokenKey::from_bytes(&bytes))
        }
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}
