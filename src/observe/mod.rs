//! Observe: read the world (volume, scandir, s6 status) into plain data. Never writes.
//!
//! Everything returned here is what the pure [`crate::plan`] step decides from.

pub mod container;
pub mod deaths;
pub mod gateway_yaml;
pub mod profile_files;
pub mod safe_read;
pub mod scandir;
pub mod scanner;
pub mod volume;
pub mod watch;

use crate::config::Config;
use crate::model::{Intent, PriorExit, ProfileName};
use crate::warning::Warning;
use container::ContainerMode;
use profile_files::ProfileFileCache;
use scandir::ScandirObs;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use volume::SkippedDir;

/// Where the volume keeps port assignments (SPEC §7.4).
pub const PORTS_FILE: &str = ".gateway-ports.json";

/// One profile as the volume describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileObs {
    pub name: ProfileName,
    /// The profile's directory (`$HERMES_HOME` for the root).
    pub dir: PathBuf,
    /// The directory is reached through a symlink: read, never written into.
    pub via_symlink: bool,
    pub intent: Intent,
    /// Why the intent file was ignored or a value refused, naming the file.
    pub intent_warning: Option<Warning>,
    pub prior_exit: PriorExit,
    /// The profile's own `.env` sets `API_SERVER_PORT`.
    pub env_sets_port: bool,
    /// What its `config.yaml` says about the topology (SPEC §6.7).
    pub yaml: gateway_yaml::GatewayYaml,
    /// Why its `config.yaml` was ignored, naming the file.
    pub yaml_warning: Option<Warning>,
}

/// Everything a pass decides from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub mode: ContainerMode,
    /// `$HERMES_HOME/gateway_state.json` exists (the legacy migration needs its absence).
    pub root_state_file_exists: bool,
    /// Root first, then named profiles in name order.
    pub profiles: Vec<ProfileObs>,
    /// Marked directories that cannot be profiles.
    pub skipped: Vec<SkippedDir>,
    pub scandir: ScandirObs,
    /// s6-svscan's limit and the scandir's other entries.
    pub scanner: scanner::ScannerObs,
    /// Recorded port assignments.
    pub previous_ports: BTreeMap<String, u16>,
    /// Problems met while observing that belong to no single profile.
    pub warnings: Vec<Warning>,
    pub with_contenv: bool,
}

impl Observed {
    /// Nothing observed yet.
    pub fn empty() -> Self {
        Observed {
            mode: ContainerMode::Normal,
            root_state_file_exists: false,
            profiles: Vec::new(),
            skipped: Vec::new(),
            scandir: ScandirObs::default(),
            scanner: scanner::ScannerObs::default(),
            previous_ports: BTreeMap::new(),
            warnings: Vec::new(),
            with_contenv: false,
        }
    }
}

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
        yaml: gateway_yaml::GatewayYaml::default(),
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
    let path = home.join(PORTS_FILE);
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
        &mut scandir::SlotFileCache::default(),
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
    cache: &mut scandir::SlotFileCache,
    profile_cache: &mut ProfileFileCache,
) -> Observed {
    let home = &config.home;
    let mut warnings = Vec::new();
    let scandir = scandir::observe_scandir(&config.scandir, cache);
    let scanner = scanner::observe_scanner(&config.scandir);
    let discovery = volume::discover(home);
    let cap = crate::plan::capacity::capacity(config, &scanner);
    let admitted = crate::plan::capacity::admitted(
        discovery.named.iter().map(|d| &d.name),
        |n| scandir.slots.contains_key(n),
        cap.named,
    );
    let mut root = unread_profile(ProfileName::root(), home.to_path_buf(), false);
    read_profile_files(&mut root, profile_cache);
    let mut profiles = vec![root];
    for d in discovery.named {
        let mut p = unread_profile(d.name, d.dir, d.via_symlink);
        if admitted.contains(&p.name) {
            read_profile_files(&mut p, profile_cache);
        }
        profiles.push(p);
    }
    profile_cache.end_pass();
    warnings.extend(discovery.warnings.into_iter().map(Warning::from));
    let (previous_ports, ports_warning) = read_ports(home);
    warnings.extend(ports_warning);
    Observed {
        mode: proc_root.map_or(ContainerMode::Normal, |p| crate::runtime::judged(&config.runtime_dir, p)),
        root_state_file_exists: std::fs::symlink_metadata(home.join("gateway_state.json")).is_ok(),
        profiles,
        skipped: discovery.skipped,
        scandir,
        scanner,
        previous_ports,
        warnings,
        with_contenv: Path::new("/command/with-contenv").exists(),
    }
}
