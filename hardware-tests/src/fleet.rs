//! A fleet CA and certificates for a bench.

use std::path::{Path, PathBuf};
use std::time::Duration;

use time::OffsetDateTime;
use yilian_link::TlsFiles;
use yilian_pki::FleetCa;
use yilian_pki::ca::write_cert_files;
use yilian_protocol::BoxIdentity;

pub const DAY: Duration = Duration::from_secs(86400);

pub struct Fleet {
    pub dir: PathBuf,
    pub ca: FleetCa,
}

impl Fleet {
    /// Creates a CA in `dir/ca`.
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        let ca = FleetCa::init(&dir.join("ca"), "Yilian bench fleet", DAY * 3650)?;
        Ok(Self {
            dir: dir.to_owned(),
            ca,
        })
    }

    /// Central's certificate for `host`, in `dir/central`.
    pub fn central(&self, host: &str) -> anyhow::Result<TlsFiles> {
        let out = self.dir.join("central");
        // With the fleet CA in the chain, as `cert issue --central-host`
        // writes it: enrolling boxes check central against it.
        let mut issued = self.ca.issue_central(host, DAY * 365)?;
        issued.cert_pem.push_str(self.ca.cert_pem());
        write_cert_files(&out, "central", &issued, self.ca.cert_pem())?;
        Ok(TlsFiles {
            ca: out.join("ca.pem"),
            cert: out.join("central.pem"),
            key: out.join("central.key"),
        })
    }

    /// A box certificate, valid from `not_before` for `lifetime`, in
    /// `dir/boxes/<county>_<clinic>_<box>`.
    pub fn gateway_at(
        &self,
        identity: &str,
        not_before: OffsetDateTime,
        lifetime: Duration,
    ) -> anyhow::Result<TlsFiles> {
        let id = BoxIdentity::parse(identity)?;
        let out = self.dir.join("boxes").join(identity.replace('/', "_"));
        write_cert_files(
            &out,
            "gateway",
            &self.ca.issue_gateway(&id, not_before, lifetime)?,
            self.ca.cert_pem(),
        )?;
        Ok(TlsFiles {
            ca: out.join("ca.pem"),
            cert: out.join("gateway.pem"),
            key: out.join("gateway.key"),
        })
    }

    pub fn gateway(&self, identity: &str) -> anyhow::Result<TlsFiles> {
        self.gateway_at(identity, OffsetDateTime::now_utc(), DAY * 30)
    }
}
