//! The identity of a gateway box: `county/clinic/box`, carried in its
//! certificate as the SAN URI `yilian://county/clinic/box`.

use std::fmt;

const SCHEME: &str = "yilian://";

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BoxIdentity {
    county: String,
    clinic: String,
    box_name: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("expected COUNTY/CLINIC/BOX, got {0:?}")]
    Shape(String),
    #[error(
        "identity part {0:?} may only hold letters, digits, '-', '_' and '.', and must not be empty"
    )]
    BadPart(String),
    #[error("not a yilian:// URI: {0:?}")]
    NotYilianUri(String),
}

impl BoxIdentity {
    /// Parses `county/clinic/box`.
    pub fn parse(s: &str) -> Result<Self, IdentityError> {
        let parts: Vec<&str> = s.split('/').collect();
        let [county, clinic, box_name] = parts.as_slice() else {
            return Err(IdentityError::Shape(s.to_owned()));
        };
        for part in [county, clinic, box_name] {
            let ok = !part.is_empty()
                && part.len() <= 63
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && *part != "."
                && *part != "..";
            if !ok {
                return Err(IdentityError::BadPart((*part).to_owned()));
            }
        }
        Ok(Self {
            county: (*county).to_owned(),
            clinic: (*clinic).to_owned(),
            box_name: (*box_name).to_owned(),
        })
    }

    /// Parses the SAN URI form `yilian://county/clinic/box`.
    pub fn from_uri(uri: &str) -> Result<Self, IdentityError> {
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| IdentityError::NotYilianUri(uri.to_owned()))?;
        Self::parse(rest)
    }

    pub fn to_uri(&self) -> String {
        format!("{SCHEME}{self}")
    }

    pub fn county(&self) -> &str {
        &self.county
    }
    pub fn clinic(&self) -> &str {
        &self.clinic
    }
    pub fn box_name(&self) -> &str {
        &self.box_name
    }
}

impl fmt::Display for BoxIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.county, self.clinic, self.box_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id = BoxIdentity::parse("anxi/hutou/box-1").expect("valid");
        assert_eq!(id.to_uri(), "yilian://anxi/hutou/box-1");
        assert_eq!(BoxIdentity::from_uri(&id.to_uri()), Ok(id));
    }

    #[test]
    fn rejects_bad_shapes() {
        for bad in [
            "",
            "a/b",
            "a/b/c/d",
            "a//c",
            "a/../c",
            "a/b c/d",
            "https://a/b/c",
        ] {
            assert!(BoxIdentity::parse(bad).is_err(), "{bad}");
        }
        assert!(BoxIdentity::from_uri("https://a/b/c").is_err());
    }
}
