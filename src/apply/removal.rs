//! Removing a slot (SPEC §7.3): hide it from the scan, let s6-svscan prune it, wait (bounded)
//! until its supervisors are gone, then delete the directory.
//!
//! Invariants: the slot's name is free the moment it is hidden, so a profile that comes back
//! gets a new slot at once; a directory is deleted only when no s6-supervise holds the lock of
//! the service or of its logger, so no process is ever orphaned in a deleted directory; nothing
//! here blocks: the caller polls.

use super::slot::{SlotError, SlotWriter};
use crate::fsops;
use crate::layout::slot::LOG_DIR;
use crate::model::ProfileName;
use crate::s6::{self, SupervisorCommand};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// After this long, a service that ignored SIGTERM is sent SIGKILL.
pub const KILL_AFTER: Duration = Duration::from_secs(10);
/// After this long the removal is reported as stuck; the hidden directory stays and is
/// cleared by a later pass once its supervisors are gone.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(60);

/// A slot that has been hidden and is waiting for its supervisors to exit.
#[derive(Debug)]
pub struct PendingRemoval {
    /// What is being removed, for messages (`gateway-<name>`, or a leftover's entry name).
    pub label: String,
    pub hidden: PathBuf,
    pub since: Instant,
    killed: bool,
}

/// Where a removal stands.
#[derive(Debug, PartialEq, Eq)]
pub enum RemovalState {
    Waiting,
    Done,
    Stuck(String),
}

fn nonce() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0);
    t ^ std::process::id().rotate_left(16)
}

impl SlotWriter {
    /// Renames the slot to a hidden removal name. The caller then asks s6-svscan to rescan and
    /// prune (`an`), once for all removals of a pass.
    pub fn hide(&self, name: &ProfileName) -> Result<PendingRemoval, SlotError> {
        let from = self.slot_dir(name);
        let mut n = nonce();
        loop {
            let to = self.scandir.join(name.removal_name(n));
            match fsops::rename_noreplace(&from, &to) {
                Ok(()) => {
                    return Ok(PendingRemoval {
                        label: name.slot_name(),
                        hidden: to,
                        since: Instant::now(),
                        killed: false,
                    });
                }
                Err(nix::errno::Errno::EEXIST) => n = n.wrapping_add(1),
                Err(e) => return Err(SlotError::Io { path: from, source: e.into() }),
            }
        }
    }
}

impl PendingRemoval {
    /// A hidden directory left by an interrupted removal whose supervisor still runs: it is
    /// finished like any removal (the caller asks s6-svscan to prune).
    pub fn leftover(hidden: PathBuf) -> Self {
        let label = hidden.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        PendingRemoval { label, hidden, since: Instant::now(), killed: false }
    }

    /// Checks the supervisors; deletes the directory once both are gone.
    pub fn poll(&mut self, scandir: &std::path::Path) -> RemovalState {
        // Unknown counts as alive: never delete under a live supervisor.
        let alive = |d: PathBuf| s6::supervisor(&d).maybe_alive();
        let main_alive = alive(self.hidden.clone());
        let log_alive = alive(self.hidden.join(LOG_DIR));
        if !main_alive && !log_alive {
            return match std::fs::remove_dir_all(&self.hidden) {
                Ok(()) => RemovalState::Done,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => RemovalState::Done,
                Err(e) => RemovalState::Stuck(format!("{}: not deleted: {e}", self.hidden.display())),
            };
        }
        let waited = self.since.elapsed();
        if waited >= KILL_AFTER && !self.killed {
            self.killed = true;
            tracing::warn!(slot = %self.label, "gateway ignored SIGTERM for {KILL_AFTER:?}; sending SIGKILL");
            let _ = s6::send_command(&self.hidden, SupervisorCommand::Kill);
            let _ = s6::rescan(scandir, true);
        }
        if waited >= GIVE_UP_AFTER {
            return RemovalState::Stuck(format!(
                "{}: supervisors still running after {GIVE_UP_AFTER:?}",
                self.hidden.display()
            ));
        }
        RemovalState::Waiting
    }
}
