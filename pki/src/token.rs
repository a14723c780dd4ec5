//! Enrollment tokens: `yl1.<claims>.<mac>`, base64url without padding.
//!
//! The claims bind the token to one box identity and an expiry, and carry
//! the SHA-256 of the fleet root CA so that the box can tell the real
//! central from an impostor before it has any certificate of its own. The
//! MAC (HMAC-SHA256 under a key only central holds) makes them unforgeable;
//! single use is central's record of the token id.

use ring::hmac;
use serde::{Deserialize, Serialize};

const PREFIX: &str = "yl1";
const ENCODING: data_encoding::Encoding = data_encoding::BASE64URL_NOPAD;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// Random; what central records as used.
    pub id: String,
    /// `county/clinic/box`.
    pub gateway: String,
    /// Seconds since the epoch.
    pub expires: i64,
    /// SHA-256 (hex) of the fleet root CA certificate.
    pub ca_sha256: String,
    /// Where central is, when the admin said so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub central: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("not an enrollment token (expected yl1.CLAIMS.MAC)")]
    Malformed,
    #[error("token claims unreadable: {0}")]
    Claims(String),
    #[error("token signature invalid: it was not issued by this central, or was altered")]
    Forged,
}

/// Central's token key.
pub struct TokenKey(hmac::Key);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    pub fn from_bytes(secret: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    pub fn sign(&self, claims: &TokenClaims) -> String {
        let json = serde_json::to_vec(claims).unwrap_or_default();
        let body = ENCODING.encode(&json);
        let tag = hmac::sign(&self.0, body.as_bytes());
        format!("{PREFIX}.{body}.{}", ENCODING.encode(tag.as_ref()))
    }

    /// Checks the MAC and returns the claims. Expiry and single use are the
    /// caller's (they need the clock and the record).
    pub fn verify(&self, token: &str) -> Result<TokenClaims, TokenError> {
        let (body, mac) = split(token)?;
        let mac = ENCODING
            .decode(mac.as_bytes())
            .map_err(|_| TokenError::Malformed)?;
        hmac::verify(&self.0, body.as_bytes(), &mac).map_err(|_| TokenError::Forged)?;
        decode_claims(body)
    }
}

/// The claims without checking the MAC: what the box reads to learn its
/// identity and the fleet CA fingerprint. Central checks the MAC.
pub fn peek(token: &str) -> Result<TokenClaims, TokenError> {
    let (body, _) = split(token)?;
    decode_claims(body)
}

fn split(token: &str) -> Result<(&str, &str), TokenError> {
    let mut parts = token.trim().split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(PREFIX), Some(body), Some(mac), None) if !body.is_empty() && !mac.is_empty() => {
            Ok((body, mac))
        }
        _ => Err(TokenError::Malformed),
    }
}

fn decode_claims(body: &str) -> Result<TokenClaims, TokenError> {
    let json = ENCODING
        .decode(body.as_bytes())
        .map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&json).map_err(|e| TokenError::Claims(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> TokenClaims {
        TokenClaims {
            id: "0123456789abcdef".into(),
            gateway: "anxi/hutou/box-1".into(),
            expires: 1_900_000_000,
            ca_sha256: "ab".repeat(32),
            central: Some("hub.example:4433".into()),
        }
    }

    #[test]
    fn round_trip_and_forgeries() {
        let key = TokenKey::from_bytes(b"0123456789abcdef0123456789abcdef");
        let t = key.sign(&claims());
        assert_eq!(key.verify(&t), Ok(claims()));
        assert_eq!(peek(&t), Ok(claims()));
        // Same claims, another central's key.
        let other = TokenKey::from_bytes(b"another key, another central....");
        assert_eq!(other.verify(&t), Err(TokenError::Forged));
        // Claims altered to another box, MAC kept.
        let mut c = claims();
        c.gateway = "anxi/hutou/box-2".into();
        let forged_body = ENCODING.encode(&serde_json::to_vec(&c).expect("json"));
        let mac = t.rsplit('.').next().expect("mac");
        assert_eq!(
            key.verify(&format!("yl1.{forged_body}.{mac}")),
            Err(TokenError::Forged)
        );
        for junk in ["", "yl1", "yl1..", "yl2.a.b", "yl1.a.b.c", "yl1.!!.b"] {
            assert!(key.verify(junk).is_err(), "{junk}");
            assert!(peek(junk).is_err(), "{junk}");
        }
    }
}
