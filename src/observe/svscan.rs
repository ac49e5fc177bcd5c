//! What s6-svscan itself imposes on the scandir (S6-FACTS "Scanning"): its service limit, how
//! much of it entries the daemon does not own already use, and entries that would make an
//! s6 ≥ 2.12 scan fail (dangling symlinks).
//!
//! Units: one unit per supervised directory, a service and its logger counting separately (as
//! s6 ≥ 2.12's `-C`). s6 2.11's `-c N` counts a service with its logger once, i.e. `2N` units;
//! both versions' defaults (500 pairs, 1000 services) are 1000 units.

use crate::layout::slot::LOG_DIR;
use crate::model::{KICK_ENTRY, ProfileName};
use crate::observe::listing::{self, Kind};
use crate::s6;
use std::path::Path;

pub use crate::world::{DEFAULT_LIMIT_UNITS, ScannerObs};

/// The service limit in units from s6-svscan's argv (NUL-separated): `-c N` → 2N, `-C N` → N,
/// the last one given wins; `None` when neither is given.
pub fn parse_limit(cmdline: &[u8]) -> Option<u32> {
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).filter(|a| !a.is_empty()).collect();
    let mut limit = None;
    let mut i = 1;
    while i < args.len() {
        let a = args[i];
        if a == b"--" || !a.starts_with(b"-") {
            break;
        }
        // Options are single letters; those taking a value take the rest of the word or the
        // next word (subgetopt). Scan the letters of this word.
        let mut j = 1;
        while j < a.len() {
            let opt = a[j];
            let takes_value = b"cCLtdX".contains(&opt);
            if takes_value {
                let value: &[u8] = if j + 1 < a.len() {
                    &a[j + 1..]
                } else {
                    i += 1;
                    args.get(i).copied().unwrap_or(b"")
                };
                let n: Option<u32> = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
                match (opt, n) {
                    (b'c', Some(n)) => limit = Some(n.saturating_mul(2)),
                    (b'C', Some(n)) => limit = Some(n),
                    _ => {}
                }
                break;
            }
            j += 1;
        }
        i += 1;
    }
    limit
}

/// Units one scandir entry uses: 1, plus 1 if it has a `log` sub-service.
fn units(path: &Path) -> u32 {
    1 + u32::from(is_dir(&path.join(LOG_DIR)))
}

/// Whether `path` is a directory, symlinks followed (recorded on a tape: [`super::tape`]).
fn is_dir(path: &Path) -> bool {
    super::stat_base::StatBase::stat(None, path).is_ok_and(|s| s.dir)
}

/// Units a hidden directory still uses: one per live supervisor (service, logger). A lock that
/// cannot be read counts as alive, as in removals.
fn supervised_units(path: &Path) -> u32 {
    // Unknown counts as alive: a unit that may be in use is not offered to new slots.
    let alive = |d: &Path| {
        let liveness = s6::supervisor(d);
        super::tape::service_lock(None, d, &liveness);
        liveness.maybe_alive()
    };
    u32::from(alive(path)) + u32::from(is_dir(&path.join(LOG_DIR)) && alive(&path.join(LOG_DIR)))
}

/// Units used by the daemon's own hidden directories whose supervisors still run.
pub fn removing_units(scandir: &Path) -> u32 {
    super::tape::opaque("the scandir was listed for removals");
    let Ok(entries) = std::fs::read_dir(scandir) else { return 0 };
    entries
        .flatten()
        .filter(|e| crate::model::is_own_hidden_entry(&e.file_name().to_string_lossy()))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| supervised_units(&e.path()))
        .sum()
}

/// Observes the scanner and the scandir's other entries.
pub fn observe_scanner(scandir: &Path) -> ScannerObs {
    let pid = s6::scanner_pid(scandir);
    super::tape::scanner_lock(scandir, pid.as_ref().ok().copied().flatten(), pid.is_err());
    let mut obs = ScannerObs { pid: pid.ok().flatten(), ..Default::default() };
    if let Some(pid) = obs.pid.filter(|p| *p > 0) {
        let path = format!("/proc/{pid}/cmdline");
        let cmdline = std::fs::read(&path);
        super::tape::read(Path::new(&path), &cmdline);
        if let Some(l) = cmdline.ok().and_then(|c| parse_limit(&c)) {
            obs.limit_units = l;
        }
    }
    // The listing's names and types first (its buffer is held while it calls back); only
    // the entries that are not the daemon's slots are kept, so a re-list allocates nothing
    // per slot. A slot (a real directory named `gateway-<valid name>`) is neither foreign nor
    // dangling, and costs no `stat`.
    let mut others: Vec<(String, Kind)> = Vec::new();
    let _ = listing::each(scandir, |raw, kind| {
        let name = String::from_utf8_lossy(raw);
        let ours = kind == Kind::Dir && ProfileName::slot_name_part(&name).is_some();
        if !ours {
            others.push((name.into_owned(), kind));
        }
    });
    for (name, kind) in others {
        let path = scandir.join(&name);
        let Ok(kind) = kind.resolved(&path) else { continue };
        if name.starts_with('.') {
            if crate::model::is_own_hidden_entry(&name) && kind == Kind::Dir {
                obs.removing_units += supervised_units(&path);
            }
            continue;
        }
        let is_link = kind == Kind::Symlink;
        // Not a symlink: the entry's own type (from the listing).
        let meta = if is_link {
            super::stat_base::StatBase::stat(None, &path).map(|m| m.dir)
        } else {
            Ok(kind == Kind::Dir)
        };
        match meta {
            Err(_) if is_link => obs.dangling.push(name),
            Ok(true) => {
                let ours = ProfileName::slot_name_part(&name).is_some() && !is_link;
                if !ours && name != KICK_ENTRY {
                    obs.foreign_units += units(&path);
                }
            }
            _ => {}
        }
    }
    obs.dangling.sort();
    obs
}

/// One sentence naming what may keep s6-svscan from starting a published slot.
pub fn diagnose(scandir: &Path, ours: usize) -> String {
    let s = observe_scanner(scandir);
    let mut parts = Vec::new();
    if s.pid.is_none() {
        parts.push(format!("no s6-svscan holds {}/.s6-svscan/lock", scandir.display()));
    }
    for d in &s.dangling {
        parts.push(format!("scandir entry {d} is a dangling symlink (s6 >= 2.12 aborts every scan on it)"));
    }
    let used = s.foreign_units as usize + 2 * ours;
    if used >= s.limit_units as usize {
        parts.push(format!(
            "the scandir holds about {used} services (loggers counted) for s6-svscan's limit of {}",
            s.limit_units
        ));
    }
    if parts.is_empty() { "no blocking scandir entry found".to_string() } else { parts.join("; ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<u8> {
        let mut v = Vec::new();
        for a in args {
            v.extend_from_slice(a.as_bytes());
            v.push(0);
        }
        v
    }

    #[test]
    fn limits_from_argv() {
        assert_eq!(parse_limit(&argv(&["s6-svscan", "/run/service"])), None);
        assert_eq!(parse_limit(&argv(&["s6-svscan", "-c", "500", "/run/service"])), Some(1000));
        assert_eq!(parse_limit(&argv(&["s6-svscan", "-C40", "/scan"])), Some(40));
        assert_eq!(parse_limit(&argv(&["s6-svscan", "-t0", "-C", "40", "/scan"])), Some(40));
        assert_eq!(parse_limit(&argv(&["/bin/s6-svscan", "-d3", "-c", "4000", "x"])), Some(8000));
        assert_eq!(parse_limit(&argv(&["s6-svscan", "-C", "x"])), None);
        assert_eq!(parse_limit(&argv(&["s6-svscan", "--", "-C", "40"])), None);
        assert_eq!(parse_limit(b""), None);
    }

    #[test]
    fn counts_foreign_entries_and_dangling_links() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::create_dir_all(d.join("other/log")).unwrap();
        std::fs::create_dir_all(d.join("plain")).unwrap();
        std::fs::create_dir_all(d.join("gateway-a/log")).unwrap();
        std::fs::create_dir_all(d.join(".hidden")).unwrap();
        std::os::unix::fs::symlink(d.join("nowhere"), d.join("broken")).unwrap();
        let s = observe_scanner(d);
        assert_eq!(s.foreign_units, 3);
        assert_eq!(s.dangling, vec!["broken".to_string()]);
        assert_eq!(s.pid, None);
        assert!(diagnose(d, 1).contains("broken is a dangling symlink"));
    }
}
