//! What the daemon knows that s6 and the slots do not record: the last error of each profile
//! and the profiles skipped (capacity, invalid names). Kept in `<scandir>/.hermes-reconciler-status.json`
//! (a dot name: s6-svscan ignores it; it is the daemon's own), read by `status`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const STATUS_FILE: &str = ".hermes-reconciler-status.json";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Profile → last error message (cleared when the profile converges).
    pub errors: BTreeMap<String, String>,
    /// Profile (or raw directory name) → reason it has no slot.
    pub skipped: BTreeMap<String, String>,
    /// Problems of the scandir itself (e.g. dangling symlinks that block s6 >= 2.12 scans).
    #[serde(default)]
    pub scandir: Vec<String>,
    /// Profile → crash-loop hold: when the gateway is tried again (SPEC §6.8).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub backoff: BTreeMap<String, String>,
    /// What was last written, so an unchanged report is not rewritten.
    #[serde(skip)]
    pub written: Option<Vec<u8>>,
}

pub fn path(scandir: &Path) -> PathBuf {
    scandir.join(STATUS_FILE)
}

/// Writes the report atomically if it changed since the last write.
pub fn write(scandir: &Path, report: &mut StatusReport) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(report).map_err(std::io::Error::other)?;
    if report.written.as_deref() == Some(bytes.as_slice()) {
        return Ok(());
    }
    if std::fs::read(path(scandir)).ok().as_deref() == Some(bytes.as_slice()) {
        report.written = Some(bytes);
        return Ok(());
    }
    let tmp = scandir.join(format!("{STATUS_FILE}.tmp"));
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, path(scandir))?;
    report.written = Some(bytes);
    Ok(())
}

/// Reads the report; absent or unreadable is an empty report.
pub fn read(scandir: &Path) -> StatusReport {
    crate::observe::safe_read::read_bounded(&path(scandir), 4 << 20)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}
