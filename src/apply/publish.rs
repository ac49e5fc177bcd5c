//! Publishing discipline for s6-svscan (S6-FACTS "Scanning"; issue: the s6 >= 2.12 trap).
//!
//! On s6 >= 2.12 a scan that meets a failing entry aborts, and the entries it had already met
//! are never started by later scans, unless a scan meets a brand-new directory. The daemon
//! therefore (1) mutates the scandir only between its own scans: a pass does all its renames,
//! sends one rescan, and confirms that every slot it published is supervised before any later
//! pass mutates again; (2) when a slot is not picked up in time (a scan met it while another
//! entry failed, or while s6-svscan was over its service limit), re-publishes that slot as a
//! brand-new directory: a scan that meets a new directory starts it, and needs no unit of the
//! limit beyond the slot's own. (Older daemons published a throwaway entry, [`KICK_ENTRY`],
//! instead; that entry itself does not fit when the scandir is at the limit. A leftover of it
//! is still taken away.)
//!
//! Every wait here returns early once a stop is requested ([`Shutdown`]).

use super::slot::{SlotError, SlotWriter};
use crate::fsops;
use crate::layout::slot::LOG_DIR;
use crate::model::{KICK_ENTRY, ProfileName};
use crate::s6;
use crate::shutdown::Shutdown;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the scanner may go without starting any of the slots still waited for before
/// they are declared stuck. s6-svscan starts supervisors one by one, and on a loaded machine
/// a thousand of them take seconds: what matters is whether it still makes progress.
pub const STALL: Duration = Duration::from_millis(1500);

/// Upper bound on the whole wait, whatever the progress.
pub const MAX_WAIT: Duration = Duration::from_secs(120);

/// Unknown counts as supervised: a slot is never re-published (nor a kick leftover deleted)
/// under a supervisor that may be alive.
fn supervised(dir: &Path) -> bool {
    s6::supervisor(dir).maybe_alive()
}

/// Waits until every directory is supervised, or until no new one has been for [`STALL`], or
/// a stop is requested; returns those that are not. Polls the locks (a few µs each), sleeping
/// briefly in between.
pub fn wait_supervised(dirs: &[PathBuf], stop: &Shutdown) -> Vec<PathBuf> {
    let start = Instant::now();
    let mut pending: Vec<PathBuf> = dirs.to_vec();
    let mut last_progress = start;
    let mut pause = Duration::from_micros(100);
    loop {
        let before = pending.len();
        pending.retain(|d| !supervised(d));
        let now = Instant::now();
        if pending.len() < before {
            last_progress = now;
            pause = Duration::from_micros(100);
        }
        if pending.is_empty() || now - last_progress >= STALL || now - start >= MAX_WAIT || stop.requested() {
            return pending;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(2));
    }
}

/// Waits until no supervisor holds `dir`'s lock (or its logger's); `false` on timeout or stop.
pub fn wait_unsupervised(dir: &Path, deadline: Instant, stop: &Shutdown) -> bool {
    let mut pause = Duration::from_micros(100);
    loop {
        if !supervised(dir) && !supervised(&dir.join(LOG_DIR)) {
            return true;
        }
        if Instant::now() >= deadline || stop.requested() {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(2));
    }
}

impl SlotWriter {
    fn kick_dir(&self) -> PathBuf {
        self.scandir.join(KICK_ENTRY)
    }

    /// Takes a leftover kick entry out of the scan (hide, prune); deletes it when its
    /// supervisor is gone (else a later pass does).
    pub fn unkick(&self, stop: &Shutdown) -> Result<(), SlotError> {
        let live = self.kick_dir();
        let hidden = self.scandir.join(format!(".{KICK_ENTRY}.rm-{:08x}", std::process::id()));
        let _ = std::fs::remove_dir_all(&hidden);
        fsops::rename_noreplace(&live, &hidden)
            .map_err(|e| SlotError::Io { path: live.clone(), source: e.into() })?;
        s6::rescan(&self.scandir, true)?;
        if wait_unsupervised(&hidden, Instant::now() + Duration::from_secs(1), stop) {
            std::fs::remove_dir_all(&hidden).map_err(|source| SlotError::Io { path: hidden, source })?;
        }
        Ok(())
    }
}

impl SlotWriter {
    /// Re-publishes a slot that no supervisor runs as a brand-new directory, so that the next
    /// scan meets a directory it has never seen and starts it (on s6 >= 2.12 a directory a
    /// failed scan already met is never started otherwise). Returns `false` when a supervisor
    /// runs it after all (nothing to do).
    ///
    /// Steps: hide the slot (a removal name: invisible to s6-svscan from then on), make sure no
    /// supervisor started in it meanwhile (if one did, the slot goes back under its name, which
    /// s6 does not notice), move its entries into a new staging directory, publish that by
    /// rename, delete the emptied old one. Interrupted anywhere, what is visible is either the
    /// old slot or the new one, complete; hidden leftovers without a supervisor are cleared by
    /// the next full pass, which also recreates a slot that went missing.
    pub fn republish(&self, name: &ProfileName) -> Result<bool, SlotError> {
        let live = self.slot_dir(name);
        if supervised(&live) || supervised(&live.join(LOG_DIR)) {
            return Ok(false);
        }
        let old = self.hide(name)?.hidden;
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| SlotError::Io { path: p, source }
        };
        if supervised(&old) || supervised(&old.join(LOG_DIR)) {
            fsops::rename_noreplace(&old, &live)
                .map_err(|e| SlotError::Io { path: live.clone(), source: e.into() })?;
            return Ok(false);
        }
        let staging = self.scandir.join(name.staging_name());
        if std::fs::symlink_metadata(&staging).is_ok() {
            std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
        }
        std::fs::create_dir(&staging).map_err(io(&staging))?;
        std::fs::set_permissions(&staging, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(io(&staging))?;
        for e in std::fs::read_dir(&old).map_err(io(&old))? {
            let e = e.map_err(io(&old))?;
            std::fs::rename(e.path(), staging.join(e.file_name())).map_err(io(&e.path()))?;
        }
        fsops::rename_noreplace(&staging, &live)
            .map_err(|e| SlotError::Io { path: live.clone(), source: e.into() })?;
        std::fs::remove_dir(&old).map_err(io(&old))?;
        Ok(true)
    }
}

/// What may keep s6-svscan from starting slots (see [`crate::observe::svscan::diagnose`]).
pub fn diagnose_blockers(scandir: &Path, ours: usize) -> String {
    crate::observe::svscan::diagnose(scandir, ours)
}
