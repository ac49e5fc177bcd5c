//! Observe: read the world (volume, scandir, s6 status) into plain data. Never writes.
//!
//! Everything returned here is what the pure [`crate::plan`] step decides from.

pub mod container;
pub mod deaths;
pub mod gateway_yaml;
pub mod profile_files;
pub mod runtime_record;
pub mod safe_read;
pub mod slots;
pub mod stat_base;
pub mod status_record;
pub mod svscan;
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

/// Reads one profile's files (uncached).
pub fn observe_profile(name: ProfileName, dir: PathBuf, via_symlink: bool) -> ProfileObs {
    let mut p = unread_profile(name, dir, via_symlink);
    read_profile_files(&mut p, &mut ProfileFileCache::default());
    p
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

/// Reads `.gateway-ports.json`: a JSON object of profile name → port. Anything else is a
/// warning and an empty map (ports are then re-derived, which is stable by construction).
pub fn read_ports(home: &Path) -> (BTreeMap<String, u16>, Option<Warning>) {
    let path = home.join(crate::layout::home::PORTS_FILE);
    match safe_read::read_bounded(&path, safe_read::MAX_STATE_FILE) {
        Ok(bytes) => match serde_json::from_slice::<BTreeMap<String, u16>>(&bytes) {
            Ok(map) => (map, None),
            Err(e) => (
                BTreeMap::new(),
                Some(Warning::about(
                    path.display(),
                    "content",
                    format!("{} is not a JSON object of ports ({e}); ports are re-derived", path.display()),
                )),
            ),
        },
        Err(safe_read::ReadError::Missing) => (BTreeMap::new(), None),
        Err(e) => (
            BTreeMap::new(),
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
    observe_all_cached(
        config,
        proc_root,
        &mut slots::SlotFileCache::default(),
        &mut ProfileFileCache::default(),
    )
}

/// [`observe_all`] reading slot and profile files through caches kept across passes.
///
/// The scandir and s6-svscan's limit are observed first, so that the files of profiles over
/// the capacity cap are never read (SPEC §9.3): they are listed (for `status` and the log)
/// as unread profiles.
pub fn observe_all_cached(
    config: &Config,
    proc_root: Option<&Path>,
    cache: &mut slots::SlotFileCache,
    profile_cache: &mut ProfileFileCache,
) -> Observed {
    let home = &config.home;
    let mut warnings = Vec::new();
    cache.set_base(stat_base::StatBase::open(&config.scandir));
    let scandir = slots::observe_scandir(&config.scandir, cache);
    cache.set_base(None);
    let scanner = svscan::observe_scanner(&config.scandir);
    let discovery = volume::discover(home);
    let cap = crate::capacity::capacity(config, &scanner);
    let admitted = crate::capacity::admitted(
        discovery.named.iter().map(|d| &d.name),
        |n| scandir.slots.contains_key(n),
        cap.named,
    );
    let mut root = unread_profile(ProfileName::root(), home.to_path_buf(), false);
    read_profile_files(&mut root, profile_cache);
    let mut profiles = vec![root];
    // Held for this listing only: a later pass opens `profiles/` afresh.
    profile_cache.set_base(stat_base::StatBase::open(&home.join(crate::layout::home::PROFILES_DIR)));
    for d in discovery.named {
        let mut p = unread_profile(d.name, d.dir, d.via_symlink);
        if admitted.contains(&p.name) {
            read_profile_files(&mut p, profile_cache);
        }
        profiles.push(p);
    }
    profile_cache.set_base(None);
    profile_cache.end_pass();
    warnings.extend(discovery.warnings.into_iter().map(|text| Warning::new(Finding::Discovery { text })));
    let (previous_ports, ports_warning) = read_ports(home);
    warnings.extend(ports_warning);
    Observed {
        mode: proc_root.map_or(ContainerMode::Normal, |p| runtime_record::judged(&config.runtime_dir, p)),
        root_state_file_exists: std::fs::symlink_metadata(home.join(crate::layout::home::INTENT_FILE))
            .is_ok(),
        profiles,
        skipped: discovery.skipped,
        scandir,
        scanner,
        previous_ports,
        warnings,
        with_contenv: Path::new("/command/with-contenv").exists(),
    }
}
