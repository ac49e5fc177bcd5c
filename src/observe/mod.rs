//! Observe: read the world (volume, scandir, s6 status) into plain data. Never writes.
//!
//! Everything returned here is what the pure [`crate::plan`] step decides from.

pub mod container;
pub mod deaths;
pub mod drift_watch;
pub mod gateway_yaml;
pub mod identity;
pub mod inotify;
pub mod listing;
pub mod profile_files;
pub mod replay;
pub mod runtime_record;
pub mod safe_read;
pub mod slots;
pub mod stat_base;
pub mod status_record;
pub mod supervisor_watch;
pub mod svscan;
pub mod tape;
#[cfg(test)]
pub(crate) mod test_lock;
pub mod volume;
pub mod watch;

use crate::config::Config;
use crate::model::{Intent, PriorExit, ProfileName};
use crate::warning::{Finding, Warning};
pub use crate::world::{Observed, ProfileObs};
use container::ContainerMode;
use profile_files::ProfileFileCache;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Descriptors the observation caches may hold open in all (slot locks, supervisors'
/// pidfds, profile files kept by identity): half of the soft limit less a reserve, the rest
/// being left to everything else. `run` raises the soft limit first when it can.
pub fn descriptor_budget() -> usize {
    let mut lim = nix::libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given, nothing else.
    if unsafe { nix::libc::getrlimit(nix::libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    usize::try_from(lim.rlim_cur.saturating_sub(256) / 2).unwrap_or(usize::MAX)
}

/// Reads one profile's files (uncached).
pub fn observe_profile(name: ProfileName, dir: PathBuf, via_symlink: bool) -> ProfileObs {
    let mut p = unread_profile(name, dir, via_symlink);
    read_profile_files_uncached(&mut p);
    p
}

/// Reads a profile's intent, lifecycle, `.env` and `config.yaml` files directly: what
/// [`read_profile_files`] gives with an empty cache, without the cache's `lstat` of each file
/// before and after its read (a one-shot pass reads every file once).
pub fn read_profile_files_uncached(p: &mut ProfileObs) {
    read_listed(p, true);
}

/// [`read_profile_files_uncached`] without `config.yaml` (left unread: default settings, no
/// warning), for a pass whose plan does not look at it (see
/// [`crate::plan::BootStream::reads_yaml`]): one lookup and a YAML parse less per profile.
pub fn read_profile_files_but_yaml(p: &mut ProfileObs) {
    read_listed(p, false);
}

/// What a named profile's directory is listed for (see [`listing`]): its optional files and the
/// leftovers a boot pass removes.
const LISTED: [&str; 6] = [
    crate::layout::home::INTENT_FILE,
    crate::layout::home::STATE_DIR,
    crate::layout::home::ENV_FILE,
    crate::layout::home::CONFIG_FILE,
    crate::layout::home::PID_LEFTOVERS[0],
    crate::layout::home::PID_LEFTOVERS[1],
];

/// Reads the files of `p` that are there. A named profile's directory is listed once first
/// ([`listing::which`]): a file it does not hold reads as missing without a lookup, and the
/// pid-file leftovers are known. The root's directory (the whole home) is not listed.
fn read_listed(p: &mut ProfileObs, yaml: bool) {
    use crate::layout::home::{CONFIG_FILE, ENV_FILE, INTENT_FILE, PID_LEFTOVERS, STATE_DIR};
    let listed = if p.name.is_root() { None } else { listing::which(&p.dir, &LISTED) };
    let holds = |name: &str| listed.is_none_or(|l| l.holds(name));
    let reading =
        if holds(INTENT_FILE) { volume::read_intent(&p.dir) } else { volume::intent_missing(&p.dir) };
    p.intent = reading.intent;
    p.intent_warning = reading.warning;
    p.prior_exit = if holds(STATE_DIR) { volume::read_prior_exit(&p.dir) } else { PriorExit::Unknown };
    p.env_sets_port = holds(ENV_FILE) && volume::env_sets_port(&p.dir);
    if yaml {
        (p.yaml, p.yaml_warning) =
            if holds(CONFIG_FILE) { gateway_yaml::read(&p.dir) } else { gateway_yaml::missing(&p.dir) };
    }
    p.pid_leftovers = listed.map(|l| PID_LEFTOVERS.iter().any(|f| l.holds(f)));
}

/// A profile as discovered, its files not read (yet): no intent, prior exit unknown, no port
/// override. What a profile over the capacity cap stays (SPEC §9.3).
pub fn unread_profile(name: ProfileName, dir: PathBuf, via_symlink: bool) -> ProfileObs {
    ProfileObs {
        name,
        dir,
        via_symlink,
        intent: Intent::default(),
        intent_warning: None,
        prior_exit: PriorExit::Unknown,
        env_sets_port: false,
        yaml: crate::world::GatewayYaml::default(),
        yaml_warning: None,
        pid_leftovers: None,
    }
}

/// Reads a profile's intent, lifecycle and `.env` files through `cache`.
pub fn read_profile_files(p: &mut ProfileObs, cache: &mut ProfileFileCache) {
    let reading = cache.intent(&p.dir);
    p.intent = reading.intent;
    p.intent_warning = reading.warning;
    p.prior_exit = cache.prior_exit(&p.dir);
    p.env_sets_port = cache.env_sets_port(&p.dir);
    (p.yaml, p.yaml_warning) = cache.gateway_yaml(&p.dir);
}

/// The port record as read: profile name → port, and why it was ignored if it was.
///
/// The map is shared: a re-list hands the cached reading of an unchanged record to the new
/// world without copying a name per profile (issue 15).
pub type PortsReading = (std::sync::Arc<BTreeMap<String, u16>>, Option<Warning>);

/// Reads `.gateway-ports.json`: a JSON object of profile name → port. Anything else is a
/// warning and an empty map (ports are then re-derived, which is stable by construction).
pub fn read_ports(home: &Path) -> PortsReading {
    let path = home.join(crate::layout::home::PORTS_FILE);
    ports_outcome(&path, safe_read::read_bounded(&path, safe_read::MAX_STATE_FILE))
}

/// What a bounded read of the port record at `path` means (see [`read_ports`]).
pub fn ports_outcome(path: &Path, read: Result<Vec<u8>, safe_read::ReadError>) -> PortsReading {
    match read {
        Ok(bytes) => match serde_json::from_slice::<BTreeMap<String, u16>>(&bytes) {
            Ok(map) => (std::sync::Arc::new(map), None),
            Err(e) => (
                Default::default(),
                Some(Warning::about(
                    path.display(),
                    "content",
                    format!("{} is not a JSON object of ports ({e}); ports are re-derived", path.display()),
                )),
            ),
        },
        Err(safe_read::ReadError::Missing) => (Default::default(), None),
        Err(e) => (
            Default::default(),
            Some(Warning::about(
                path.display(),
                "read",
                format!("{} {e}; ports are re-derived", path.display()),
            )),
        ),
    }
}

/// Observes one named profile (`Ok(None)`: it is not, or no longer, a profile).
pub fn observe_named(home: &Path, name: &ProfileName) -> Result<Option<ProfileObs>, String> {
    Ok(volume::probe(home, name)?.map(|d| observe_profile(d.name, d.dir, d.via_symlink)))
}

/// Looks at one named profile without reading its files (`Ok(None)`: not a profile).
pub fn probe_named(home: &Path, name: &ProfileName) -> Result<Option<ProfileObs>, String> {
    Ok(volume::probe(home, name)?.map(|d| unread_profile(d.name, d.dir, d.via_symlink)))
}

/// Observes the root profile.
pub fn observe_root(home: &Path) -> ProfileObs {
    observe_profile(ProfileName::root(), home.to_path_buf(), false)
}

/// Observes the whole world for a full pass.
///
/// `proc_root` is where to look for the container's main command (`/proc`), unless this boot's
/// judgment is recorded in the runtime directory (SPEC §9.4); `None` skips that (the mode only
/// matters to a boot pass) and reports a normal container.
pub fn observe_all(config: &Config, proc_root: Option<&Path>) -> Observed {
    observe_all_with(
        config,
        proc_root,
        &mut slots::SlotFileCache::default(),
        &|_, _| None,
        &mut |p, _| read_profile_files_uncached(p),
        &mut read_ports,
    )
}

/// [`observe_all`] with only the root's files read: the start of a boot pass that reads the
/// named profiles' files batch by batch ([`crate::plan::BootStream`], [`read_profile_files_uncached`]).
pub fn observe_names(config: &Config, proc_root: Option<&Path>) -> Observed {
    let read_root = &mut |p: &mut ProfileObs, _| {
        if p.name.is_root() {
            read_profile_files_uncached(p);
        }
    };
    observe_all_with(
        config,
        proc_root,
        &mut slots::SlotFileCache::default(),
        &|_, _| None,
        read_root,
        &mut read_ports,
    )
}

/// [`observe_all`] reading slot and profile files through caches kept across passes.
///
/// The scandir and s6-svscan's limit are observed first, so that the files of profiles over
/// the capacity cap are never read (SPEC §9.3): they are listed (for `status` and the log)
/// as unread profiles.
///
/// `dir_key` gives the identity a named profile's directory had before this pass looked at
/// it (the watcher's stat at the start of the pass), if known: while it is unchanged, the
/// optional files that were missing are not looked for again ([`ProfileFileCache::enter_dir`]).
pub fn observe_all_cached(
    config: &Config,
    proc_root: Option<&Path>,
    cache: &mut slots::SlotFileCache,
    profile_cache: &mut ProfileFileCache,
    dir_key: &dyn Fn(&str) -> Option<stat_base::FileKey>,
) -> Observed {
    // Held for this listing only: a later pass opens `profiles/` afresh. (The root's files,
    // outside it, are stat'ed by their absolute paths.)
    let profiles = config.home.join(crate::layout::home::PROFILES_DIR);
    profile_cache.set_base(stat_base::StatBase::open(&profiles));
    // Discovery asks it (`SOUL.md` known there), then the reads update it: one after the other.
    let shared = std::cell::RefCell::new(profile_cache);
    let known = |entry: &std::ffi::OsStr, dir: &Path| match entry.to_str().and_then(dir_key) {
        Some(key) => shared.borrow().marker_known(dir, Some(key)).then_some(true),
        // Not watched (over the cap): known by the folder's own identity.
        None => shared.borrow_mut().folder_marker(entry),
    };
    let observed = observe_all_with(
        config,
        proc_root,
        cache,
        &known,
        &mut |p, marker_plain| {
            let mut profile_cache = shared.borrow_mut();
            let key = if p.name.is_root() { None } else { dir_key(p.name.as_str()) };
            profile_cache.enter_dir(&p.dir, key);
            read_profile_files(p, &mut profile_cache);
            profile_cache.leave_dir(&p.dir, marker_plain);
        },
        &mut |home| shared.borrow_mut().ports(home),
    );
    let profile_cache = shared.into_inner();
    profile_cache.set_base(None);
    profile_cache.end_pass();
    observed
}

/// [`observe_all`] reading each admitted profile's files with `read`.
fn observe_all_with(
    config: &Config,
    proc_root: Option<&Path>,
    cache: &mut slots::SlotFileCache,
    marker_known: &dyn Fn(&std::ffi::OsStr, &Path) -> Option<bool>,
    read: &mut dyn FnMut(&mut ProfileObs, bool),
    ports: &mut dyn FnMut(&Path) -> PortsReading,
) -> Observed {
    let home = &config.home;
    let mut warnings = Vec::new();
    cache.set_base(stat_base::StatBase::open(&config.scandir));
    let scandir = slots::observe_scandir(&config.scandir, cache);
    cache.set_base(None);
    let scanner = svscan::observe_scanner(&config.scandir);
    let discovery = volume::discover_with(home, marker_known);
    let cap = crate::capacity::capacity(config, &scanner);
    let admitted = crate::capacity::admitted(
        discovery.named.iter().map(|d| &d.name),
        |n| scandir.slots.contains_key(n),
        cap.named,
    );
    let mut root = unread_profile(ProfileName::root(), home.to_path_buf(), false);
    read(&mut root, false);
    let mut profiles = Vec::with_capacity(discovery.named.len() + 1);
    profiles.push(root);
    for d in discovery.named {
        let mut p = unread_profile(d.name, d.dir, d.via_symlink);
        if admitted.contains(&p.name) {
            read(&mut p, d.marker_plain);
        }
        profiles.push(p);
    }
    warnings.extend(discovery.warnings.into_iter().map(|text| Warning::new(Finding::Discovery { text })));
    let (previous_ports, ports_warning) = ports(home);
    warnings.extend(ports_warning);
    Observed {
        mode: proc_root.map_or(ContainerMode::Normal, |p| runtime_record::judged(&config.runtime_dir, p)),
        root_state_file_exists: stat_base::StatBase::lstat(
            None,
            &home.join(crate::layout::home::INTENT_FILE),
        )
        .is_ok(),
        profiles,
        skipped: discovery.skipped,
        scandir,
        scanner,
        previous_ports,
        warnings,
        with_contenv: stat_base::StatBase::stat(None, Path::new("/command/with-contenv")).is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn read(dir: &Path) -> ProfileObs {
        let mut p = unread_profile(ProfileName::parse_named("p").unwrap(), dir.to_path_buf(), false);
        read_profile_files_uncached(&mut p);
        p
    }

    /// The listing only spares lookups: a profile read through it observes what one read file
    /// by file does, and a directory the agent filled past the listing's bound is read file by
    /// file (its `.env` and leftovers still seen).
    #[test]
    fn a_listed_profile_reads_as_one_looked_up_file_by_file() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("p");
        fs::create_dir(&dir).unwrap();
        let bare = read(&dir);
        assert_eq!(bare.pid_leftovers, Some(false), "listed, nothing to sweep");
        assert!(!bare.env_sets_port && bare.intent == Default::default());
        fs::write(dir.join(".env"), "API_SERVER_PORT=9999\n").unwrap();
        fs::write(dir.join("gateway.pid"), "1\n").unwrap();
        fs::write(dir.join("gateway_state.json"), r#"{"desired_state":"running"}"#).unwrap();
        let full = read(&dir);
        assert_eq!(full.pid_leftovers, Some(true));
        assert!(full.env_sets_port);
        assert_eq!(full.intent.desired_state.as_deref(), Some("running"));
        // Filled past the bound: no answer from the listing, the same observation.
        let long = "x".repeat(200);
        for i in 0..listing::MAX_CALLS * listing::BUF_LEN / 200 + 10 {
            fs::write(dir.join(format!("{long}{i}")), "").unwrap();
        }
        let filled = read(&dir);
        assert_eq!(filled.pid_leftovers, None, "unlisted: the sweep runs as before");
        assert!(filled.env_sets_port);
        assert_eq!(filled.intent, full.intent);
    }
}
