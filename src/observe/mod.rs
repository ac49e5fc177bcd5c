//! Observe: read the world (volume, scandir, s6 status) into plain data. Never writes.
//!
//! Everything returned here is what the pure [`crate::plan`] step decides from.

pub mod container;
pub mod safe_read;
pub mod scandir;
pub mod scanner;
pub mod volume;
pub mod watch;

use crate::config::Config;
use crate::model::{Intent, PriorExit, ProfileName};
use container::ContainerMode;
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
    /// Why the intent file was ignored, naming the file.
    pub intent_warning: Option<String>,
    pub prior_exit: PriorExit,
    /// The profile's own `.env` sets `API_SERVER_PORT`.
    pub env_sets_port: bool,
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
    pub warnings: Vec<String>,
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

/// Reads one profile's files.
pub fn observe_profile(name: ProfileName, dir: PathBuf, via_symlink: bool) -> ProfileObs {
    let reading = volume::read_intent(&dir);
    ProfileObs {
        prior_exit: volume::read_prior_exit(&dir),
        env_sets_port: volume::env_sets_port(&dir),
        intent: reading.intent,
        intent_warning: reading.warning,
        name,
        dir,
        via_symlink,
    }
}

/// Reads `.gateway-ports.json`: a JSON object of profile name → port. Anything else is a
/// warning and an empty map (ports are then re-derived, which is stable by construction).
pub fn read_ports(home: &Path) -> (BTreeMap<String, u16>, Option<String>) {
    let path = home.join(PORTS_FILE);
    match safe_read::read_bounded(&path, safe_read::MAX_STATE_FILE) {
        Ok(bytes) => match serde_json::from_slice::<BTreeMap<String, u16>>(&bytes) {
            Ok(map) => (map, None),
            Err(e) => (
                BTreeMap::new(),
                Some(format!("{} is not a JSON object of ports ({e}); ports are re-derived", path.display())),
            ),
        },
        Err(safe_read::ReadError::Missing) => (BTreeMap::new(), None),
        Err(e) => (BTreeMap::new(), Some(format!("{} {e}; ports are re-derived", path.display()))),
    }
}

/// Observes one named profile (`Ok(None)`: it is not, or no longer, a profile).
pub fn observe_named(home: &Path, name: &ProfileName) -> Result<Option<ProfileObs>, String> {
    Ok(volume::probe(home, name)?.map(|d| observe_profile(d.name, d.dir, d.via_symlink)))
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
    observe_all_cached(config, proc_root, &mut scandir::SlotFileCache::default())
}

/// [`observe_all`] reading slot files through a cache kept across passes.
pub fn observe_all_cached(
    config: &Config,
    proc_root: Option<&Path>,
    cache: &mut scandir::SlotFileCache,
) -> Observed {
    let home = &config.home;
    let mut warnings = Vec::new();
    let discovery = volume::discover(home);
    let mut profiles = vec![observe_root(home)];
    profiles.extend(discovery.named.into_iter().map(|d| observe_profile(d.name, d.dir, d.via_symlink)));
    warnings.extend(discovery.warnings);
    let (previous_ports, ports_warning) = read_ports(home);
    warnings.extend(ports_warning);
    Observed {
        mode: proc_root.map_or(ContainerMode::Normal, |p| crate::runtime::judged(&config.runtime_dir, p)),
        root_state_file_exists: std::fs::symlink_metadata(home.join("gateway_state.json")).is_ok(),
        profiles,
        skipped: discovery.skipped,
        scandir: scandir::observe_scandir(&config.scandir, cache),
        scanner: scanner::observe_scanner(&config.scandir),
        previous_ports,
        warnings,
        with_contenv: Path::new("/command/with-contenv").exists(),
    }
}
