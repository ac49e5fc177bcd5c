//! What the scandir holds: the daemon's `gateway-*` slots, their files and bookkeeping, and
//! its own hidden staging or removal leftovers. Entries it does not own are not even read.

use crate::layout::slot::{DOWN_FILE, RECORD_FILE, RENDERED};
use crate::model::{KICK_ENTRY, ProfileName, SlotRecord, is_own_hidden_entry};
use crate::observe::safe_read::read_bounded;
use crate::observe::stat_base::{FileKey, StatBase};
pub use crate::world::{ScandirObs, SlotObs};
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest slot file read back for comparison; ours are far smaller.
const MAX_SLOT_FILE: u64 = 64 * 1024;

/// A slot file's identity when read, its content (`None`: unreadable) and the generation of
/// the last pass that used it.
type CachedSlotFile = (FileKey, Option<Arc<[u8]>>, u64);

/// The slot files read by earlier passes, so a re-list costs one `lstat` per unchanged file
/// instead of an open and a read (the daemon re-lists every slot every resync period).
/// Entries not used by a full pass are dropped at its end ([`SlotFileCache::end_pass`]).
#[derive(Debug, Default)]
pub struct SlotFileCache {
    /// By the path's bytes: hashing and comparing a `Path` goes component by component.
    entries: HashMap<OsString, CachedSlotFile>,
    generation: u64,
    /// The scandir, held open during a full re-list: slot files are stat'ed by their short
    /// paths relative to it ([`StatBase`]).
    base: Option<StatBase>,
}

impl SlotFileCache {
    /// Content of a slot file (bounded, no symlink followed), from the cache when unchanged.
    pub fn read(&mut self, path: &Path) -> Option<Arc<[u8]>> {
        let generation = self.generation;
        let Some(key) = StatBase::lstat(self.base.as_ref(), path).ok().map(|s| s.key) else {
            self.entries.remove(path.as_os_str());
            return None;
        };
        if let Some((k, content, used)) = self.entries.get_mut(path.as_os_str())
            && *k == key
        {
            *used = generation;
            return content.clone();
        }
        let content: Option<Arc<[u8]>> = read_bounded(path, MAX_SLOT_FILE).ok().map(Arc::from);
        // Only cache what was read from the file whose identity we checked.
        if FileKey::of(path) == Some(key) {
            self.entries.insert(path.as_os_str().to_owned(), (key, content.clone(), generation));
        }
        content
    }

    /// Stats files under `base` relative to it until the next call (`None`: absolute paths).
    pub fn set_base(&mut self, base: Option<StatBase>) {
        self.base = base;
    }

    /// Whether anything is at `path` (`lstat`), through the base.
    fn exists(&self, path: &Path) -> bool {
        StatBase::lstat(self.base.as_ref(), path).is_ok()
    }

    /// Forgets entries no read used since the last call (slots that are gone).
    pub fn end_pass(&mut self) {
        let generation = self.generation;
        self.entries.retain(|_, (_, _, used)| *used == generation);
        self.generation += 1;
    }
}

pub fn slot_dir(scandir: &Path, name: &ProfileName) -> PathBuf {
    scandir.join(name.slot_name())
}

/// Reads one slot directory.
pub fn observe_slot(dir: &Path, cache: &mut SlotFileCache) -> SlotObs {
    let record =
        cache.read(&dir.join(RECORD_FILE)).and_then(|b| serde_json::from_slice::<SlotRecord>(&b).ok());
    let files = RENDERED.iter().map(|rel| (*rel, cache.read(&dir.join(rel)))).collect();
    let has_down = cache.exists(&dir.join(DOWN_FILE));
    // A lock that cannot be read counts as supervised: plan then leaves the slot alone rather
    // than re-publishing it under a supervisor that may be alive.
    let supervised = crate::s6::supervisor(dir).maybe_alive();
    let event_open = crate::s6::event::slot_events_open(dir);
    SlotObs { record, files, has_down, supervised, event_open }
}

/// Lists the scandir. A scandir that cannot be listed is reported as absent.
pub fn observe_scandir(scandir: &Path, cache: &mut SlotFileCache) -> ScandirObs {
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
                obs.slots.insert(profile, observe_slot(&entry.path(), cache));
            }
            _ => continue,
        }
    }
    obs.hidden.sort();
    obs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_rereads_only_changed_files_and_forgets_unused_ones() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("run");
        std::fs::write(&f, "one").unwrap();
        let mut c = SlotFileCache::default();
        assert_eq!(c.read(&f).as_deref(), Some(&b"one"[..]));
        // Replaced atomically (new inode): seen.
        let tmp = t.path().join(".run.tmp");
        std::fs::write(&tmp, "two").unwrap();
        std::fs::rename(&tmp, &f).unwrap();
        assert_eq!(c.read(&f).as_deref(), Some(&b"two"[..]));
        // Edited in place with another size: seen.
        std::fs::write(&f, "three").unwrap();
        assert_eq!(c.read(&f).as_deref(), Some(&b"three"[..]));
        // Gone: none, and forgotten.
        std::fs::remove_file(&f).unwrap();
        assert_eq!(c.read(&f), None);
        assert!(c.entries.is_empty());
        std::fs::write(&f, "four").unwrap();
        c.read(&f);
        c.end_pass();
        assert_eq!(c.entries.len(), 1);
        c.end_pass();
        assert!(c.entries.is_empty(), "an entry unused for a whole pass is dropped");
    }
}
