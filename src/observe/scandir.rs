//! What the scandir holds: the daemon's `gateway-*` slots, their files and bookkeeping, and
//! its own hidden staging or removal leftovers. Entries it does not own are not even read.

use crate::model::{KICK_ENTRY, ProfileName, SlotRecord, is_own_hidden_entry};
use crate::observe::safe_read::read_bounded;
use crate::plan::render::RENDERED;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Bookkeeping file inside a slot's `data/` (s6 reserves `data/` for users).
pub const RECORD_FILE: &str = "data/reconciler.json";

/// Largest slot file read back for comparison; ours are far smaller.
const MAX_SLOT_FILE: u64 = 64 * 1024;

/// One existing slot directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotObs {
    /// The daemon's record, if present and readable.
    pub record: Option<SlotRecord>,
    /// Current content of each rendered file (`None`: missing or unreadable).
    pub files: BTreeMap<&'static str, Option<Vec<u8>>>,
    /// `./down` exists: the slot is not normally up.
    pub has_down: bool,
    /// An s6-supervise holds the slot's lock (a published slot s6-svscan has picked up).
    pub supervised: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScandirObs {
    /// `false` when the scandir does not exist (s6 not there yet).
    pub exists: bool,
    pub slots: BTreeMap<ProfileName, SlotObs>,
    /// The daemon's own dot-prefixed leftovers (interrupted creations or removals).
    pub hidden: Vec<String>,
    /// A throwaway kick entry left published by an interrupted daemon.
    pub kick_leftover: bool,
}

pub fn slot_dir(scandir: &Path, name: &ProfileName) -> PathBuf {
    scandir.join(name.slot_name())
}

/// Reads one slot directory.
pub fn observe_slot(dir: &Path) -> SlotObs {
    let record = read_bounded(&dir.join(RECORD_FILE), MAX_SLOT_FILE)
        .ok()
        .and_then(|b| serde_json::from_slice::<SlotRecord>(&b).ok());
    let files = RENDERED.iter().map(|rel| (*rel, read_bounded(&dir.join(rel), MAX_SLOT_FILE).ok())).collect();
    let has_down = std::fs::symlink_metadata(dir.join("down")).is_ok();
    let supervised = !matches!(crate::s6::supervisor_pid(dir), Ok(None));
    SlotObs { record, files, has_down, supervised }
}

/// Lists the scandir. A scandir that cannot be listed is reported as absent.
pub fn observe_scandir(scandir: &Path) -> ScandirObs {
    let Ok(entries) = std::fs::read_dir(scandir) else {
        return ScandirObs::default();
    };
    let mut obs = ScandirObs { exists: true, ..Default::default() };
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if is_own_hidden_entry(&name) {
            obs.hidden.push(name);
            continue;
        }
        if name == KICK_ENTRY {
            obs.kick_leftover = true;
            continue;
        }
        let Some(profile) = ProfileName::from_slot_name(&name) else {
            continue;
        };
        // A slot is a real directory; a symlink or file named gateway-* is not one of ours.
        match entry.file_type() {
            Ok(t) if t.is_dir() => {
                obs.slots.insert(profile, observe_slot(&entry.path()));
            }
            _ => continue,
        }
    }
    obs.hidden.sort();
    obs
}
