//! Every on-disk name the daemon reads or writes, in one place (issue 11): the home's layout
//! (what the Hermes agent and the daemon share on the volume), a slot's layout (what s6 and the
//! daemon share in the scandir) and the daemon's runtime directory. Layers take names from
//! here, never from each other, so that no layer has to import from one above it to find a
//! file.
//!
//! Only names live here: no I/O, no policy. Joining a name to a directory is the caller's job
//! ([`child`] does it cheaply).

use std::path::{Path, PathBuf};

/// `dir/name` in one allocation of the right size. `Path::join` copies `dir`, grows the copy
/// and parses both as components: a tenth of a steady re-list, which joins a few names per
/// profile and per slot. `name` is relative (one of this module's names, or a validated
/// profile or slot name), so the result is under `dir` as `dir.join(name)` would be.
pub fn child(dir: &Path, name: impl AsRef<std::ffi::OsStr>) -> PathBuf {
    let name = name.as_ref();
    debug_assert!(!Path::new(name).is_absolute(), "{name:?} is absolute");
    let dir = dir.as_os_str();
    let sep = !dir.is_empty() && !std::os::unix::ffi::OsStrExt::as_bytes(dir).ends_with(b"/");
    let mut out = std::ffi::OsString::with_capacity(dir.len() + usize::from(sep) + name.len());
    out.push(dir);
    if sep {
        out.push("/");
    }
    out.push(name);
    PathBuf::from(out)
}

/// `$HERMES_HOME` and each profile directory under it (SPEC §3, §5, §7).
pub mod home {
    /// A profile's intent (the gateway's own state file, SPEC §5.2); also the legacy
    /// migration's record at the home's root (SPEC §5.4).
    pub const INTENT_FILE: &str = "gateway_state.json";
    /// The gateway's state directory in a profile, where its lifecycle record lives.
    pub const STATE_DIR: &str = "state";
    /// The gateway's lifecycle record: how its last run ended (SPEC §5.3).
    pub const LIFECYCLE_FILE: &str = "state/gateway.lifecycle.json";
    /// A profile's environment file (a port set there overrides ours, SPEC §7.4).
    pub const ENV_FILE: &str = ".env";
    /// A profile's agent configuration: its `gateway.standalone` and, at the root,
    /// `gateway.multiplex_profiles` pick the topology (SPEC §6.7).
    pub const CONFIG_FILE: &str = "config.yaml";
    /// The file that marks a directory under `profiles/` as a profile (SPEC §3).
    pub const MARKER_FILE: &str = "SOUL.md";
    /// Named profiles live in `$HERMES_HOME/profiles/<name>`.
    pub const PROFILES_DIR: &str = "profiles";
    /// Deleted profiles are moved to `profiles/.deleted/` by the agent's tooling.
    pub const TOMBSTONE_DIR: &str = ".deleted";
    /// Port assignments, at the home's root (SPEC §7.4).
    pub const PORTS_FILE: &str = ".gateway-ports.json";
    /// Leftovers of the previous container's gateway, removed before a slot starts (SPEC §5.5).
    pub const PID_LEFTOVERS: [&str; 2] = ["gateway.pid", "processes.json"];
    /// The directory of the daemon's log files, at the home's root.
    pub const LOGS_DIR: &str = "logs";
    /// One line per decision (SPEC §8.1), in [`LOGS_DIR`].
    pub const BOOT_LOG: &str = "container-boot.log";
    /// Each gateway's own log directory is `logs/gateways/<profile>` (written by s6-log).
    pub const GATEWAY_LOGS_DIR: &str = "gateways";
}

/// The scandir and one slot directory in it (S6-FACTS; SPEC §6).
pub mod slot {
    /// Prefix of every slot the daemon owns: `gateway-<profile>`.
    pub const SLOT_PREFIX: &str = "gateway-";
    /// The throwaway scandir entry older daemons published to make an s6 >= 2.12 scanner start
    /// new slots; only ever removed now.
    pub const KICK_ENTRY: &str = "gateway--kick";
    /// Suffix of a slot being built, hidden: `.gateway-<profile>.new`.
    pub const STAGING_SUFFIX: &str = ".new";
    /// Infix of a slot being removed, hidden: `.gateway-<profile>.rm-<suffix>`.
    pub const REMOVAL_INFIX: &str = ".rm-";
    /// The files the daemon renders into a slot (SPEC §6.2), in rendering order.
    pub const RENDERED: [&str; 4] = [TYPE, RUN, FINISH, LOG_RUN];
    pub const TYPE: &str = "type";
    pub const RUN: &str = "run";
    pub const FINISH: &str = "finish";
    pub const LOG_RUN: &str = "log/run";
    /// The logger's service directory inside a slot.
    pub const LOG_DIR: &str = "log";
    /// s6 reserves `data/` for users.
    pub const DATA_DIR: &str = "data";
    /// The daemon's bookkeeping inside a slot's `data/`.
    pub const RECORD_FILE: &str = "data/reconciler.json";
    /// Present: the service is not normally up (s6-supervise reads it at start).
    pub const DOWN_FILE: &str = "down";
    /// s6-supervise's own directory: `status`, `control`, `lock`.
    pub const SUPERVISE_DIR: &str = "supervise";
    pub const SUPERVISE_STATUS: &str = "supervise/status";
    pub const SUPERVISE_CONTROL: &str = "supervise/control";
    pub const SUPERVISE_LOCK: &str = "supervise/lock";
    /// s6-supervise's event fifodir.
    pub const EVENT_DIR: &str = "event";
}

/// The daemon's own runtime directory, `HERMES_RECONCILER_RUNTIME_DIR` (SPEC §9.4).
pub mod runtime {
    /// The container-mode judgment of this container boot.
    pub const MODE_RECORD: &str = "container-mode";
    /// What the daemon knows that s6 and the slots do not record (last errors, skips, scandir
    /// findings), read by `status`.
    pub const STATUS_RECORD: &str = "status.json";
}

#[cfg(test)]
mod tests {
    use super::child;
    use std::path::Path;

    #[test]
    fn child_is_what_join_gives() {
        for (dir, name) in [
            ("/opt/data", "gateway_state.json"),
            ("/opt/data/", "a"),
            ("", "a"),
            ("/", "x"),
            ("rel/dir", "state/gateway.lifecycle.json"),
        ] {
            assert_eq!(child(Path::new(dir), name), Path::new(dir).join(name), "{dir:?} + {name:?}");
        }
    }
}
