//! What central may publish into a box's configuration: the device sections
//! and the uplink's tuning. Where central is, the box's certificate and its
//! spool stay in the box's own file, so that no published configuration
//! can cut a box off from central or from its data.

/// Top-level tables a published fragment may hold; each replaces the
/// box's own table of that name.
pub const TABLES: &[&str] = &[
    "folder",
    "hl7",
    "astm",
    "ecg_serial",
    "dicom",
    "uplink",
    "page",
    "report_sink",
];

/// Keys of `[uplink]` a published fragment may set; the others keep the
/// box's values.
pub const UPLINK_KEYS: &[&str] = &[
    "max_in_flight",
    "chunk_size",
    "heartbeat_interval",
    "idle_timeout",
    "reconnect_max",
    "congestion",
    "rate_limit",
    "schedule",
    "utc_offset",
    "urgent_allowance",
];

/// Checks one key of a fragment: `table`, or `table.key` for `[uplink]`.
pub fn check_key(table: &str, key: Option<&str>) -> Result<(), String> {
    if !TABLES.contains(&table) {
        return Err(format!(
            "{table:?} cannot be published centrally (allowed: {})",
            TABLES.join(", ")
        ));
    }
    if let Some(key) = key
        && table == "uplink"
        && !UPLINK_KEYS.contains(&key)
    {
        return Err(format!(
            "uplink.{key} cannot be published centrally (allowed: {})",
            UPLINK_KEYS.join(", ")
        ));
    }
    Ok(())
}
