use std::io;
use std::path::PathBuf;

/// Errors of the spool layer.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The quota's high watermark is reached: refuse the device so it
    /// retries later. Nothing already stored is affected.
    #[error(
        "spool full{}: {used} bytes held, refusing above {high_mark} until below {low_mark}",
        if *by_disk { " (its filesystem has no more room than that, whatever the quota)" } else { "" }
    )]
    Full {
        used: u64,
        high_mark: u64,
        low_mark: u64,
        /// The filesystem, not the configured quota, set the marks.
        by_disk: bool,
    },
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("spool index: {0}")]
    Db(#[from] rusqlite::Error),
    #[error(
        "spool index at {path} was written by a newer version (schema {found}, this build knows {known})"
    )]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("spool configuration: {0}")]
    Config(String),
    #[error("no item {0} in the spool")]
    NotFound(i64),
    #[error("payload of item {upload_id} is damaged: {detail}")]
    Damaged { upload_id: String, detail: String },
    /// The same item (same dedup key) arrived on another connection and its
    /// payload is not yet on the disk: this sender is asked to retry rather
    /// than be answered on the strength of bytes that are not yet durable.
    #[error("item {upload_id} is still being stored for another sender; retry")]
    InFlight { upload_id: String },
    #[error("the spool writer has stopped")]
    Closed,
}

impl SpoolError {
    pub(crate) fn io(context: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        SpoolError::Io {
            context,
            path: path.into(),
            source,
        }
    }

    /// A short, stable reason for metrics labels and device refusals.
    pub fn reason(&self) -> &'static str {
        match self {
            SpoolError::Full { by_disk: false, .. } => "full",
            SpoolError::Full { by_disk: true, .. } => "disk_full",
            SpoolError::Io { .. } => "io",
            SpoolError::Db(_) => "index",
            SpoolError::SchemaTooNew { .. } => "schema",
            SpoolError::Config(_) => "config",
            SpoolError::NotFound(_) => "not_found",
            SpoolError::Damaged { .. } => "damaged",
            SpoolError::InFlight { .. } => "busy",
            SpoolError::Closed => "closed",
        }
    }
}
