//! The fleet's records in central's index: enrollment tokens, revocations,
//! published configuration, each box's last reported state, and the audit
//! log of every change to the fleet.

use crate::store::sql::params;
use serde::Serialize;

use crate::store::{Store, StoreError, now_ms, rfc3339};

/// Why a token cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenUse {
    Consumed,
    Unknown,
    AlreadyUsed { at_ms: i64, from: String },
}

/// One line of the audit log.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRow {
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

/// A box as `fleet list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FleetRow {
    pub identity: String,
    pub software_version: String,
    pub first_seen: String,
    pub last_seen: String,
    pub last_seen_ms: i64,
    /// Seconds since the epoch (0 when never reported).
    pub certificate_not_after: i64,
    /// Hash of the whole configuration the box runs.
    pub config_version: String,
    /// Version of the centrally published configuration it applied.
    pub pushed_config_version: String,
    /// The last published configuration it refused, and why.
    pub pushed_config_error: String,
    /// Backlog per lane at the last heartbeat.
    pub backlog: serde_json::Value,
    pub revoked: Option<String>,
    /// Taken out of service on purpose: not watched, not alerted on.
    pub retired: Option<String>,
}

/// What a box reported in its last heartbeat.
#[derive(Debug, Clone, Default)]
pub struct ReportedState {
    pub certificate_not_after: i64,
    pub config_version: String,
    pub pushed_config_version: String,
    pub pushed_config_error: String,
    pub backlog: serde_json::Value,
}

/// Configuration published for a scope (`COUNTY`, `COUNTY/CLINIC` or a box).
#[derive(Debug, Clone, Serialize)]
pub struct PublishedConfig {
    pub scope: String,
    pub version: String,
    pub toml: String,
    pub set_at: String,
    pub set_by: String,
}

impl Store {
    pub fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT INTO audit(at_ms, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![now_ms(), actor, action, target, detail],
        )?;
        Ok(())
    }

    pub fn audit_log(&self, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        let rows = self.db().query(
            "SELECT at_ms, actor, action, target, detail FROM audit ORDER BY id DESC LIMIT ?1",
            params![limit],
            |r| {
                Ok(AuditRow {
                    at: rfc3339(r.get(0)?),
                    actor: r.get(1)?,
                    action: r.get(2)?,
                    target: r.get(3)?,
                    detail: r.get(4)?,
                })
            },
        )?;
        let mut out: Vec<AuditRow> = rows;
        out.reverse();
        Ok(out)
    }

    /// Records a minted token, with its audit line, in one transaction.
    pub fn token_created(
        &self,
        id: &str,
        gateway: &str,
        expires_ms: i64,
        actor: &str,
    ) -> Result<(), StoreError> {
        let mut db = self.db();
        let mut tx = db.transaction()?;
        let now = now_ms();
        tx.execute(
            "INSERT INTO tokens(id, gateway, expires_ms, created_ms, created_by) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, gateway, expires_ms, now, actor],
        )?;
        tx.execute(
            "INSERT INTO audit(at_ms, actor, action, target, detail) VALUES (?1, ?2, 'token.create', ?3, ?4)",
            params![now, actor, gateway, format!("token {id} expires {}", rfc3339(expires_ms))],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Marks a token used, atomically: of two boxes racing with the same
    /// token, one wins.
    pub fn consume_token(&self, id: &str, from: &str) -> Result<TokenUse, StoreError> {
        let mut db = self.db();
        let mut tx = db.transaction()?;
        let row: Option<(Option<i64>, Option<String>)> = tx.query_row(
            "SELECT used_ms, used_from FROM tokens WHERE id = ?1",
            params![id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let outcome = match row {
            None => TokenUse::Unknown,
            Some((Some(at_ms), used_from)) => TokenUse::AlreadyUsed {
                at_ms,
                from: used_from.unwrap_or_default(),
            },
            Some((None, _)) => {
                let won = tx.execute(
                    "UPDATE tokens SET used_ms = ?2, used_from = ?3 WHERE id = ?1 AND used_ms IS NULL",
                    params![id, now_ms(), from],
                )? == 1;
                if won {
                    TokenUse::Consumed
                } else {
                    // Another central instance (sharing a PostgreSQL index)
                    // used it between our read and our update.
                    let (at_ms, used_from): (Option<i64>, Option<String>) = tx.query_one(
                        "SELECT used_ms, used_from FROM tokens WHERE id = ?1",
                        params![id],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )?;
                    TokenUse::AlreadyUsed {
                        at_ms: at_ms.unwrap_or_default(),
                        from: used_from.unwrap_or_default(),
                    }
                }
            }
        };
        tx.commit()?;
        Ok(outcome)
    }

    pub fn revoke(&self, identity: &str, actor: &str, reason: &str) -> Result<bool, StoreError> {
        let mut db = self.db();
        let mut tx = db.transaction()?;
        let now = now_ms();
        let added = tx.execute(
            "INSERT INTO revocations(identity, revoked_ms, revoked_by, reason) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            params![identity, now, actor, reason],
        )? == 1;
        tx.execute(
            "INSERT INTO audit(at_ms, actor, action, target, detail) VALUES (?1, ?2, 'revoke', ?3, ?4)",
            params![now, actor, identity, reason],
        )?;
        tx.commit()?;
        Ok(added)
    }

    /// Marks a box retired on purpose (clinic closed, box stored away): it
    /// is no longer watched, so it does not page as silent. It may still
    /// connect and drain. `undo` makes it watched again.
    pub fn retire(
        &self,
        identity: &str,
        actor: &str,
        reason: &str,
        undo: bool,
    ) -> Result<bool, StoreError> {
        let mut db = self.db();
        let mut tx = db.transaction()?;
        let now = now_ms();
        let changed = if undo {
            tx.execute(
                "DELETE FROM retirements WHERE identity = ?1",
                params![identity],
            )?
        } else {
            tx.execute(
                "INSERT INTO retirements(identity, retired_ms, retired_by, reason) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT(identity) DO UPDATE SET retired_ms = excluded.retired_ms, \
                 retired_by = excluded.retired_by, reason = excluded.reason",
                params![identity, now, actor, reason],
            )?
        } == 1;
        tx.execute(
            "INSERT INTO audit(at_ms, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                now,
                actor,
                if undo { "unretire" } else { "retire" },
                identity,
                reason
            ],
        )?;
        tx.commit()?;
        Ok(changed)
    }

    /// Boxes that are not watched: revoked or retired.
    pub fn unwatched_identities(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        let rows = self.db().query(
            "SELECT identity FROM revocations UNION SELECT identity FROM retirements",
            params![],
            |r| r.get(0),
        )?;
        Ok(rows.into_iter().collect())
    }

    pub fn retirement(&self, identity: &str) -> Result<Option<String>, StoreError> {
        Ok(self.db().query_row(
            "SELECT retired_ms, retired_by, reason FROM retirements WHERE identity = ?1",
            params![identity],
            |r| {
                let at: i64 = r.get(0)?;
                let by: String = r.get(1)?;
                let why: String = r.get(2)?;
                Ok(format!("{} by {by}: {why}", rfc3339(at)))
            },
        )?)
    }

    /// Who revoked a box, when and why, as the box is told.
    pub fn revocation_notice(&self, identity: &str) -> Result<Option<String>, StoreError> {
        Ok(self.db().query_row(
            "SELECT revoked_ms, revoked_by, reason FROM revocations WHERE identity = ?1",
            params![identity],
            |r| {
                let at: i64 = r.get(0)?;
                let by: String = r.get(1)?;
                let why: String = r.get(2)?;
                Ok(format!("revoked by {by} at {}: {why}", rfc3339(at)))
            },
        )?)
    }

    pub fn revoked_identities(&self) -> Result<Vec<String>, StoreError> {
        let rows = self
            .db()
            .query("SELECT identity FROM revocations", params![], |r| r.get(0))?;
        Ok(rows)
    }

    pub fn revocation(&self, identity: &str) -> Result<Option<String>, StoreError> {
        Ok(self.db().query_row(
            "SELECT revoked_ms, revoked_by FROM revocations WHERE identity = ?1",
            params![identity],
            |r| {
                let at: i64 = r.get(0)?;
                let by: String = r.get(1)?;
                Ok(format!("{} by {by}", rfc3339(at)))
            },
        )?)
    }

    pub fn publish_config(
        &self,
        scope: &str,
        version: &str,
        toml: &str,
        actor: &str,
    ) -> Result<(), StoreError> {
        let mut db = self.db();
        let mut tx = db.transaction()?;
        let now = now_ms();
        tx.execute(
            "INSERT INTO configs(scope, version, toml, set_ms, set_by) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(scope) DO UPDATE SET version = ?2, toml = ?3, set_ms = ?4, set_by = ?5",
            params![scope, version, toml, now, actor],
        )?;
        tx.execute(
            "INSERT INTO audit(at_ms, actor, action, target, detail) VALUES (?1, ?2, 'config.set', ?3, ?4)",
            params![now, actor, scope, format!("version {version}")],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Every published configuration, most general scope first.
    pub fn configs(&self) -> Result<Vec<PublishedConfig>, StoreError> {
        let rows = self.db().query(
            "SELECT scope, version, toml, set_ms, set_by FROM configs
             ORDER BY length(scope) - length(replace(scope, '/', '')), scope",
            params![],
            |r| {
                Ok(PublishedConfig {
                    scope: r.get(0)?,
                    version: r.get(1)?,
                    toml: r.get(2)?,
                    set_at: rfc3339(r.get(3)?),
                    set_by: r.get(4)?,
                })
            },
        )?;
        Ok(rows)
    }

    /// Withdraws the configuration published for exactly `scope`; boxes
    /// fall back to the next broader scope's, or to their own file.
    /// Returns the version withdrawn.
    pub fn unpublish_config(&self, scope: &str, actor: &str) -> Result<Option<String>, StoreError> {
        let mut db = self.db();
        let mut tx = db.transaction()?;
        let version: Option<String> = tx.query_row(
            "SELECT version FROM configs WHERE scope = ?1",
            params![scope],
            |r| r.get(0),
        )?;
        if let Some(v) = &version {
            tx.execute("DELETE FROM configs WHERE scope = ?1", params![scope])?;
            tx.execute(
                "INSERT INTO audit(at_ms, actor, action, target, detail) VALUES (?1, ?2, 'config.unset', ?3, ?4)",
                params![now_ms(), actor, scope, format!("version {v}")],
            )?;
        }
        tx.commit()?;
        Ok(version)
    }

    /// The configuration that applies to a box: its own, else its clinic's,
    /// else its county's.
    pub fn config_for(
        &self,
        county: &str,
        clinic: &str,
        identity: &str,
    ) -> Result<Option<PublishedConfig>, StoreError> {
        let clinic_scope = format!("{county}/{clinic}");
        Ok(self.db().query_row(
            "SELECT scope, version, toml, set_ms, set_by FROM configs
                 WHERE scope IN (?1, ?2, ?3)
                 ORDER BY length(scope) - length(replace(scope, '/', '')) DESC LIMIT 1",
            params![identity, clinic_scope, county],
            |r| {
                Ok(PublishedConfig {
                    scope: r.get(0)?,
                    version: r.get(1)?,
                    toml: r.get(2)?,
                    set_at: rfc3339(r.get(3)?),
                    set_by: r.get(4)?,
                })
            },
        )?)
    }

    pub fn record_state(&self, identity: &str, s: &ReportedState) -> Result<(), StoreError> {
        self.db().execute(
            "INSERT INTO gateway_state(identity, certificate_not_after, config_version,
                pushed_config_version, pushed_config_error, backlog, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(identity) DO UPDATE SET certificate_not_after = ?2, config_version = ?3,
                pushed_config_version = ?4, pushed_config_error = ?5, backlog = ?6, updated_ms = ?7",
            params![
                identity,
                s.certificate_not_after,
                s.config_version,
                s.pushed_config_version,
                s.pushed_config_error,
                s.backlog.to_string(),
                now_ms()
            ],
        )?;
        Ok(())
    }

    pub fn fleet(&self) -> Result<Vec<FleetRow>, StoreError> {
        let rows = self.db().query(
            "SELECT g.identity, g.software_version, g.first_seen_ms, g.last_seen_ms,
                    COALESCE(s.certificate_not_after, 0), COALESCE(s.config_version, ''),
                    COALESCE(s.pushed_config_version, ''), COALESCE(s.pushed_config_error, ''),
                    COALESCE(s.backlog, '[]'), r.revoked_ms, r.revoked_by, r.reason,
                    t.retired_ms, t.retired_by, t.reason
             FROM gateways g
             LEFT JOIN gateway_state s ON s.identity = g.identity
             LEFT JOIN revocations r ON r.identity = g.identity
             LEFT JOIN retirements t ON t.identity = g.identity
             ORDER BY g.identity",
            params![],
            |r| {
                let backlog: String = r.get(8)?;
                let revoked_ms: Option<i64> = r.get(9)?;
                let revoked_by: Option<String> = r.get(10)?;
                let revoked_why: Option<String> = r.get(11)?;
                let retired_ms: Option<i64> = r.get(12)?;
                let retired_by: Option<String> = r.get(13)?;
                let retired_why: Option<String> = r.get(14)?;
                Ok(FleetRow {
                    identity: r.get(0)?,
                    software_version: r.get(1)?,
                    first_seen: rfc3339(r.get(2)?),
                    last_seen: rfc3339(r.get(3)?),
                    last_seen_ms: r.get(3)?,
                    certificate_not_after: r.get(4)?,
                    config_version: r.get(5)?,
                    pushed_config_version: r.get(6)?,
                    pushed_config_error: r.get(7)?,
                    backlog: serde_json::from_str(&backlog).unwrap_or_default(),
                    revoked: revoked_ms.map(|at| {
                        format!(
                            "{} by {}: {}",
                            rfc3339(at),
                            revoked_by.unwrap_or_default(),
                            revoked_why.unwrap_or_default()
                        )
                    }),
                    retired: retired_ms.map(|at| {
                        format!(
                            "{} by {}: {}",
                            rfc3339(at),
                            retired_by.unwrap_or_default(),
                            retired_why.unwrap_or_default()
                        )
                    }),
                })
            },
        )?;
        Ok(rows)
    }
}
