//! Reads the daemon's status record from its runtime directory (SPEC §9.4): what `status`
//! shows of the daemon's last passes, and what a starting daemon carries over from `once`.

use crate::layout::runtime::STATUS_RECORD;
use crate::observe::safe_read::read_bounded;
use crate::world::StatusReport;
use std::path::Path;

/// Largest record read; a report of thousands of skipped profiles is well under it.
const MAX_RECORD: u64 = 4 << 20;

/// The record in `runtime_dir`; absent, unreadable (e.g. `status` run by a user who cannot
/// enter the root-only directory) or malformed is an empty report. Read without following a
/// symlink.
pub fn read(runtime_dir: &Path) -> StatusReport {
    read_bounded(&runtime_dir.join(STATUS_RECORD), MAX_RECORD)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}
