//! The observed world: plain data that [`crate::observe`] produces and [`crate::plan`]
//! consumes (issue 11). Data only: no I/O here, and nothing that depends on a layer above, so
//! that plan can be tested from values built by hand and observe cannot reach into plan.
//!
//! The observe modules re-export the types they fill, so `observe::Observed` and
//! `world::Observed` are the same type.

use crate::layout::home::PROFILES_DIR;
use crate::model::{Intent, PriorExit, ProfileName, SlotRecord};
use crate::warning::Warning;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::SystemTime;

/// The limit when s6-svscan's command line says nothing (S6-FACTS "Scanning"): one unit per
/// supervised directory; both s6 2.11's and s6 ≥ 2.12's defaults are 1000 units.
pub const DEFAULT_LIMIT_UNITS: u32 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerMode {
    /// Nothing special: supervise gateways.
    Normal,
    /// Main command `gateway run` without `--no-supervise`.
    LegacyGatewayRun,
    /// Main command `dashboard`: gateways are not supervised here.
    Dashboard,
}

/// An entry that has the `SOUL.md` marker but cannot be a profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedDir {
    /// The entry name, lossily decoded. Untrusted: it may hold control characters, so quote it
    /// (`{:?}`) when logging, as the `Display` impl does.
    pub raw: String,
    /// Why it is skipped: the [`crate::model::NameError`] text (prefixed by `the name is not UTF-8; ` for
    /// names that are not UTF-8).
    pub reason: String,
}

impl fmt::Display for SkippedDir {
    /// `profiles/"Work" is skipped: <reason>`, the raw name quoted so it cannot forge a line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PROFILES_DIR}/{:?} is skipped: {}", self.raw, self.reason)
    }
}

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
    pub yaml: GatewayYaml,
    /// Why its `config.yaml` was ignored, naming the file.
    pub yaml_warning: Option<Warning>,
    /// Whether its directory held `gateway.pid` or `processes.json` when listed; `None`: not
    /// listed (a boot pass then removes them if present, as it does when they were seen).
    pub pid_leftovers: Option<bool>,
}

/// What a `config.yaml` says about the topology (SPEC §6.7).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayYaml {
    /// `multiplex_profiles` at top level if present, else `gateway.multiplex_profiles`.
    pub multiplex_profiles: bool,
    /// `gateway.standalone`.
    pub standalone: bool,
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
    pub scanner: ScannerObs,
    /// Recorded port assignments.
    pub previous_ports: std::sync::Arc<BTreeMap<String, u16>>,
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
            scanner: ScannerObs::default(),
            previous_ports: Default::default(),
            warnings: Vec::new(),
            with_contenv: false,
        }
    }
}

/// One existing slot directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotObs {
    /// The daemon's record, if present and readable.
    ///
    /// This and `files` are shared, not copied: a re-list hands the last reading of an
    /// untouched slot to the new observation by counting references (no allocation), and
    /// comparing two observations that share them compares pointers (issue 15).
    pub record: Option<std::sync::Arc<SlotRecord>>,
    /// Current content of each rendered file (`None`: missing or unreadable).
    pub files: std::sync::Arc<SlotFiles>,
    /// `./down` exists: the slot is not normally up.
    pub has_down: bool,
    /// An s6-supervise holds the slot's lock (a published slot s6-svscan has picked up).
    pub supervised: bool,
    /// The `event/` of the slot or of its logger is not closed to other users (made by an older
    /// build, with group `hermes`): see [`crate::s6::event`].
    pub event_open: bool,
}

/// The content of each rendered file of a slot, by its path in the slot.
pub type SlotFiles = BTreeMap<&'static str, Option<std::sync::Arc<[u8]>>>;

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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScannerObs {
    /// s6-svscan's pid, when it runs and is visible.
    pub pid: Option<i32>,
    pub limit_units: u32,
    /// Units used by scandir entries that are not the daemon's slots.
    pub foreign_units: u32,
    /// Scandir entries that are symlinks to nothing.
    pub dangling: Vec<String>,
    /// Units still used by the daemon's own hidden directories whose supervisors have not
    /// exited yet (removals in flight): s6-svscan counts them against its limit until then.
    pub removing_units: u32,
}

impl Default for ScannerObs {
    fn default() -> Self {
        ScannerObs {
            pid: None,
            limit_units: DEFAULT_LIMIT_UNITS,
            foreign_units: 0,
            dangling: Vec::new(),
            removing_units: 0,
        }
    }
}

/// What the daemon knows that s6 and the slots do not record, for `status`: the last error of
/// each profile, the profiles skipped and why, and the findings about the scandir itself. Kept
/// in the daemon's runtime directory ([`crate::layout::runtime::STATUS_RECORD`]), read by
/// [`crate::observe::status_record`], written by [`crate::apply::status_record`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatusReport {
    /// Profile → last error message (cleared when the profile converges).
    pub errors: BTreeMap<String, String>,
    /// Profile (or raw directory name) → reason word it has no slot (SPEC §8.1).
    pub skipped: BTreeMap<String, String>,
    /// Findings of [`crate::warning::Scope::Scandir`] (e.g. dangling symlinks that block
    /// s6 >= 2.12 scans), as sentences.
    #[serde(default)]
    pub scandir: Vec<String>,
    /// The watcher backend of the daemon that wrote the report (`inotify`, `poll (N ms)`, or
    /// none); absent when no daemon has run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<String>,
    /// Profile → crash-loop hold: when the gateway is tried again (SPEC §6.8).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub backoff: BTreeMap<String, String>,
}

/// What one slot's `supervise/status` rewrite says, for crash-loop backoff (SPEC §6.8):
/// filled by [`crate::observe::deaths`], judged by [`crate::plan::crashloop`].
/// How the last run ended, from the status file's wait status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// Not exit 0 (deliberate stop) or 78 (fatal configuration, parked by `finish`), and not
    /// SIGTERM (a stop or restart someone asked for: `s6-svc -d`/`-t`, the daemon's own).
    pub fn abnormal(self) -> bool {
        !matches!(self, Exit::Code(0) | Exit::Code(78) | Exit::Signal(15))
    }

    /// `exit_1`, `signal_9`: fit for a boot-log value.
    pub fn describe(self) -> String {
        match self {
            Exit::Code(c) => format!("exit_{c}"),
            Exit::Signal(s) => format!("signal_{s}"),
        }
    }
}

/// One rewrite of `supervise/status`, reduced to what the tracker needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    /// s6's time of the last up/down change: one start or one death.
    pub since: SystemTime,
    pub up: bool,
    pub want_up: bool,
    /// The last death's exit (meaningful when not up).
    pub exit: Exit,
}
