//! Fleet CA: creation, loading, and certificate issuance.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;
use yilian_protocol::BoxIdentity;

pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
/// The issuing CA central holds, below the fleet root.
pub const ISSUING_CERT_FILE: &str = "issuing.pem";
pub const ISSUING_KEY_FILE: &str = "issuing.key";
pub use crate::identity::ADMIN_SCHEME;

/// Clock skew tolerated between the CA and the boxes: certificates start
/// this long before their issue time.
const BACKDATE: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} already exists; refusing to overwrite a CA")]
    Exists { path: PathBuf },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("certificate signing request: {0}")]
    Csr(String),
}

fn io_err<'a>(
    context: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> PkiError + 'a {
    move |source| PkiError::Io {
        context,
        path: path.to_owned(),
        source,
    }
}

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The fleet CA, loaded with its key.
pub struct FleetCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for FleetCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetCa").finish_non_exhaustive()
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive, as RFC 5280 requires.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn validity(params: &mut CertificateParams, not_before: OffsetDateTime, lifetime: Duration) {
    params.not_before = not_before;
    params.not_after = not_before + BACKDATE + lifetime;
}

/// Parameters of an end-entity certificate: subject, one SAN, signature
/// usage, one extended usage, a random serial.
fn leaf_params(
    common_name: &str,
    organization: &str,
    san: SanType,
    usage: ExtendedKeyUsagePurpose,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, organization);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![san];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    params
}

impl FleetCa {
    /// Creates a new CA in memory.
    pub fn generate(name: &str, lifetime: Duration) -> Result<(Self, IssuedCert), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "Yilian fleet");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        validity(&mut params, OffsetDateTime::now_utc() - BACKDATE, lifetime);
        let cert = params.self_signed(&key)?;
        let issued = IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        let issuer = Issuer::new(params, key);
        Ok((
            Self {
                cert_pem: issued.cert_pem.clone(),
                issuer,
            },
            issued,
        ))
    }

    /// `ca init`: creates the CA files in `dir`, refusing to overwrite.
    pub fn init(dir: &Path, name: &str, lifetime: Duration) -> Result<Self, PkiError> {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        for f in [CA_CERT_FILE, CA_KEY_FILE] {
            let p = dir.join(f);
            if p.exists() {
                return Err(PkiError::Exists { path: p });
            }
        }
        let (ca, issued) = Self::generate(name, lifetime)?;
        write_private(&dir.join(CA_KEY_FILE), &issued.key_pem)?;
        write_public(&dir.join(CA_CERT_FILE), &issued.cert_pem)?;
        Ok(ca)
    }

    /// Loads the CA from `dir`.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let cert_pem = fs::read_to_string(&cert_path).map_err(io_err("read", &cert_path))?;
        let key_pem = fs::read_to_string(&key_path).map_err(io_err("read", &key_path))?;
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok(Self { cert_pem, issuer })
    }

    /// Loads a CA from its certificate and key files (the issuing CA
    /// central holds).
    pub fn load_files(cert_path: &Path, key_path: &Path) -> Result<Self, PkiError> {
        let cert_pem = fs::read_to_string(cert_path).map_err(io_err("read", cert_path))?;
        let key_pem = fs::read_to_string(key_path).map_err(io_err("read", key_path))?;
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok(Self { cert_pem, issuer })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// `ca issuing`: an intermediate CA for central to issue box
    /// certificates with, so that the root key can stay offline. It may not
    /// sign further CAs.
    pub fn issue_issuing_ca(&self, name: &str, lifetime: Duration) -> Result<IssuedCert, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "Yilian fleet");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, OffsetDateTime::now_utc() - BACKDATE, lifetime);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// An administrator's client certificate (`yilian-admin://NAME`): what
    /// `yilian-provision` presents to central for fleet commands.
    pub fn issue_admin(&self, name: &str, lifetime: Duration) -> Result<IssuedCert, PkiError> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
        {
            return Err(PkiError::Invalid(format!(
                "admin name {name:?} may only hold letters, digits, '-', '_', '.' and '@'"
            )));
        }
        let key = KeyPair::generate()?;
        let mut params = leaf_params(
            name,
            "Yilian administrator",
            SanType::URI(format!("{ADMIN_SCHEME}{name}").try_into()?),
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        validity(&mut params, OffsetDateTime::now_utc() - BACKDATE, lifetime);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a box's CSR, valid from `not_before` for `lifetime`. Only the
    /// CSR's public key is used (its signature
    /// proves the box holds the key): identity, usage and lifetime are
    /// central's to decide, never the requester's.
    pub fn sign_gateway_csr(
        &self,
        csr_pem: &str,
        identity: &BoxIdentity,
        not_before: OffsetDateTime,
        lifetime: Duration,
    ) -> Result<String, PkiError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Csr(e.to_string()))?;
        let mut params = leaf_params(
            &identity.to_string(),
            "Yilian gateway",
            SanType::URI(identity.to_uri().try_into()?),
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        // Exactly the window asked for: central chooses its backdating.
        params.not_before = not_before;
        params.not_after = not_before + lifetime;
        let signed = rcgen::CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)?;
        Ok(signed.pem())
    }

    /// A gateway certificate for `identity`, valid from `not_before` for
    /// `lifetime` (plus the backdating allowance).
    pub fn issue_gateway(
        &self,
        identity: &BoxIdentity,
        not_before: OffsetDateTime,
        lifetime: Duration,
    ) -> Result<IssuedCert, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = leaf_params(
            &identity.to_string(),
            "Yilian gateway",
            SanType::URI(identity.to_uri().try_into()?),
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        validity(&mut params, not_before, lifetime);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A central (server) certificate for `hostname`, a DNS name or an IP.
    pub fn issue_central(
        &self,
        hostname: &str,
        lifetime: Duration,
    ) -> Result<IssuedCert, PkiError> {
        let key = KeyPair::generate()?;
        let san = match hostname.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(hostname.try_into()?),
        };
        let mut params = leaf_params(
            hostname,
            "Yilian central",
            san,
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        validity(&mut params, OffsetDateTime::now_utc() - BACKDATE, lifetime);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Writes `<name>.pem`, `<name>.key` and the CA certificate into `out`.
pub fn write_cert_files(
    out: &Path,
    name: &str,
    issued: &IssuedCert,
    ca_pem: &str,
) -> Result<(), PkiError> {
    fs::create_dir_all(out).map_err(io_err("create", out))?;
    write_private(&out.join(format!("{name}.key")), &issued.key_pem)?;
    write_public(&out.join(format!("{name}.pem")), &issued.cert_pem)?;
    write_public(&out.join(CA_CERT_FILE), ca_pem)?;
    Ok(())
}

fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("create", path))?;
    f.write_all(contents.as_bytes())
        .map_err(io_err("write", path))?;
    f.sync_all().map_err(io_err("fsync", path))
}

fn write_public(path: &Path, contents: &str) -> Result<(), PkiError> {
    fs::write(path, contents).map_err(io_err("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_refuses_to_overwrite_and_loads() {
        let dir = tempfile::tempdir().expect("tmp");
        FleetCa::init(dir.path(), "test fleet", Duration::from_secs(86400)).expect("init");
        assert!(matches!(
            FleetCa::init(dir.path(), "again", Duration::from_secs(86400)),
            Err(PkiError::Exists { .. })
        ));
        let ca = FleetCa::load(dir.path()).expect("load");
        let id = BoxIdentity::parse("anxi/hutou/box-1").expect("id");
        let issued = ca
            .issue_gateway(&id, OffsetDateTime::now_utc(), Duration::from_secs(3600))
            .expect("issue");
        assert!(issued.cert_pem.contains("BEGIN CERTIFICATE"));
        let der = pem_der(&issued.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parses");
        let san = cert
            .subject_alternative_name()
            .expect("ext")
            .expect("present");
        let uri = san
            .value
            .general_names
            .iter()
            .find_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .expect("uri");
        assert_eq!(uri, "yilian://anxi/hutou/box-1");
        let mode = fs::metadata(dir.path().join(CA_KEY_FILE))
            .expect("stat")
            .permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            mode.mode() & 0o077,
            0,
            "CA key must not be readable by others"
        );
    }

    fn pem_der(pem: &str) -> Vec<u8> {
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64_decode(&b64)
    }

    fn base64_decode(s: &str) -> Vec<u8> {
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        let mut acc = 0u32;
        let mut bits = 0;
        for c in s.bytes().filter(|c| *c != b'=') {
            let v = T.iter().position(|t| *t == c).expect("base64") as u32;
            acc = (acc << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        out
    }
}
