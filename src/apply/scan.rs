//! Publishing discipline for s6-svscan (S6-FACTS "Scanning"; issue: the s6 >= 2.12 trap).
//!
//! On s6 >= 2.12 a scan that meets a failing entry aborts, and the entries it had already met
//! are never started by later scans, unless a scan meets a brand-new directory. The daemon
//! therefore (1) mutates the scandir only between its own scans: a pass does all its renames,
//! sends one rescan, and confirms that every slot it published is supervised before any later
//! pass mutates again; (2) when a slot is not picked up in time, publishes a throwaway
//! brand-new entry ([`KICK_ENTRY`], a name no profile slot can take, with a `down` file so
//! nothing runs) to make the scanner start it, then takes that entry away again.

use super::slot::{SlotError, SlotWriter};
use crate::model::KICK_ENTRY;
use crate::s6;
use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the scanner may go without starting any of the slots still waited for before
/// they are declared stuck. s6-svscan starts supervisors one by one, and on a loaded machine
/// a thousand of them take seconds: what matters is whether it still makes progress.
pub const STALL: Duration = Duration::from_millis(1500);

/// Upper bound on the whole wait, whatever the progress.
pub const MAX_WAIT: Duration = Duration::from_secs(120);

fn supervised(dir: &Path) -> bool {
    !matches!(s6::supervisor_pid(dir), Ok(None))
}

/// Waits until every directory is supervised, or until no new one has been for [`STALL`];
/// returns those that are not. Polls the locks (a few µs each), sleeping briefly in between.
pub fn wait_supervised(dirs: &[PathBuf]) -> Vec<PathBuf> {
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
        if pending.is_empty() || now - last_progress >= STALL || now - start >= MAX_WAIT {
            return pending;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(2));
    }
}

/// Waits until no supervisor holds `dir`'s lock (or its logger's); `false` on timeout.
pub fn wait_unsupervised(dir: &Path, deadline: Instant) -> bool {
    let mut pause = Duration::from_micros(100);
    loop {
        if !supervised(dir) && !supervised(&dir.join("log")) {
            return true;
        }
        if Instant::now() >= deadline {
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

    /// Publishes the kick entry and asks for a scan. The entry has a `down` file: its
    /// supervisor starts nothing.
    pub fn kick(&self) -> Result<(), SlotError> {
        let live = self.kick_dir();
        if live.exists() {
            self.unkick()?;
        }
        let staging = self.scandir.join(format!(".{KICK_ENTRY}.new"));
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| SlotError::Io { path: p, source }
        };
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir(&staging).map_err(io(&staging))?;
        std::fs::write(staging.join("down"), b"").map_err(io(&staging))?;
        std::fs::write(staging.join("run"), b"#!/bin/sh\nexec sleep 1\n").map_err(io(&staging))?;
        std::fs::set_permissions(staging.join("run"), std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(io(&staging))?;
        renameat2(AT_FDCWD, &staging, AT_FDCWD, &live, RenameFlags::RENAME_NOREPLACE)
            .map_err(|e| SlotError::Io { path: live.clone(), source: e.into() })?;
        s6::rescan(&self.scandir, false)?;
        Ok(())
    }

    /// Takes the kick entry out of the scan again (hide, prune) once the scan it caused has
    /// started its supervisor; deletes it when that supervisor is gone (else a later pass does).
    pub fn unkick(&self) -> Result<(), SlotError> {
        let live = self.kick_dir();
        wait_supervised(std::slice::from_ref(&live));
        let hidden = self.scandir.join(format!(".{KICK_ENTRY}.rm-{:08x}", std::process::id()));
        let _ = std::fs::remove_dir_all(&hidden);
        renameat2(AT_FDCWD, &live, AT_FDCWD, &hidden, RenameFlags::RENAME_NOREPLACE)
            .map_err(|e| SlotError::Io { path: live.clone(), source: e.into() })?;
        s6::rescan(&self.scandir, true)?;
        if wait_unsupervised(&hidden, Instant::now() + Duration::from_secs(1)) {
            std::fs::remove_dir_all(&hidden).map_err(|source| SlotError::Io { path: hidden, source })?;
        }
        Ok(())
    }
}

/// What may keep s6-svscan from starting slots (see [`crate::observe::scanner::diagnose`]).
pub fn diagnose_blockers(scandir: &Path, ours: usize) -> String {
    crate::observe::scanner::diagnose(scandir, ours)
}
