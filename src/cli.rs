//! Command-line interface (SPEC §4). Every setting flag overrides its environment variable.

use crate::config::{self, RawSettings};
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "hermes-reconciler",
    version,
    about = "Keeps one s6 service slot per Hermes agent profile, and its up/down state, in line with the volume."
)]
pub struct Cli {
    #[command(flatten)]
    pub settings: SettingFlags,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon: boot pass, then watch and converge until SIGTERM or SIGINT.
    Run {
        /// Write a newline to this file descriptor, then close it, after the first full pass.
        #[arg(long, value_name = "N")]
        notify_fd: Option<i32>,
    },
    /// One boot pass, then exit (replaces the one-shot boot script).
    Once {
        /// Change nothing; print the actions that would be taken.
        #[arg(long)]
        dry_run: bool,
        /// Print the result as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// One row per profile and per slot; reads state, changes nothing.
    Status {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// One flag per setting of SPEC §3; each overrides the environment variable of the same row.
#[derive(Debug, Args, Default)]
pub struct SettingFlags {
    /// Data root [env: HERMES_HOME] [default: /opt/data]
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<String>,
    /// s6 scandir [env: S6_PROFILE_GATEWAY_SCANDIR] [default: /run/service]
    #[arg(long, global = true, value_name = "DIR")]
    pub scandir: Option<String>,
    /// Register named slots but never auto-start them [env: GATEWAY_MULTIPLEX_PROFILES]
    #[arg(long, global = true, value_name = "BOOL")]
    pub multiplex: Option<String>,
    /// Disable the legacy `gateway run` migration [env: HERMES_GATEWAY_NO_SUPERVISE]
    #[arg(long, global = true, value_name = "BOOL")]
    pub no_supervise: Option<String>,
    /// Program the gateway run script execs [env: HERMES_GATEWAY_COMMAND] [default: hermes]
    #[arg(long, global = true, value_name = "PROGRAM")]
    pub gateway_command: Option<String>,
    /// User the scripts drop to when started as root; empty = never [env: HERMES_RUN_AS] [default: hermes]
    #[arg(long, global = true, value_name = "USER")]
    pub run_as: Option<String>,
    /// Period of the full re-list [env: HERMES_RECONCILER_RESYNC_SECS] [default: 30]
    #[arg(long, global = true, value_name = "SECS")]
    pub resync_secs: Option<String>,
    /// How long a profile must stay gone before its slot is removed [env: HERMES_RECONCILER_REMOVE_GRACE_MS] [default: 2000]
    #[arg(long, global = true, value_name = "MS")]
    pub remove_grace_ms: Option<String>,
    /// Most named slots created [env: HERMES_RECONCILER_MAX_PROFILES] [default: 400]
    #[arg(long, global = true, value_name = "N")]
    pub max_profiles: Option<String>,
    /// Diagnostic log filter [env: HERMES_RECONCILER_LOG] [default: info]
    #[arg(long, global = true, value_name = "FILTER")]
    pub log: Option<String>,
    /// per-profile, multiplex or single [env: HERMES_GATEWAY_TOPOLOGY] [default: per-profile]
    #[arg(long, global = true, value_name = "TOPOLOGY")]
    pub topology: Option<String>,
    /// Deaths/seconds that make a crash loop, or off [env: HERMES_RECONCILER_CRASHLOOP] [default: 5/60]
    #[arg(long, global = true, value_name = "N/SECS")]
    pub crashloop: Option<String>,
    /// Longest hold of a crash-looping gateway [env: HERMES_RECONCILER_BACKOFF_MAX_SECS] [default: 300]
    #[arg(long, global = true, value_name = "SECS")]
    pub backoff_max_secs: Option<String>,
    /// Time up after which a gateway's death count restarts [env: HERMES_RECONCILER_CRASHLOOP_RESET_SECS] [default: 600]
    #[arg(long, global = true, value_name = "SECS")]
    pub crashloop_reset_secs: Option<String>,
    /// Root-only runtime state, outside the scandir [env: HERMES_RECONCILER_RUNTIME_DIR] [default: /run/hermes-reconciler]
    #[arg(long, global = true, value_name = "DIR")]
    pub runtime_dir: Option<String>,
    /// Watcher backend: auto, inotify or poll [env: HERMES_RECONCILER_WATCH] [default: auto]
    #[arg(long, global = true, value_name = "BACKEND")]
    pub watch: Option<String>,
    /// Period of the polling watcher [env: HERMES_RECONCILER_POLL_MS] [default: 2000]
    #[arg(long, global = true, value_name = "MS")]
    pub poll_ms: Option<String>,
}

impl SettingFlags {
    /// Combines the flags with the process environment.
    pub fn raw_settings(&self) -> RawSettings {
        let mut raw = RawSettings::from_process_env();
        let pairs = [
            (&config::HOME, &self.home),
            (&config::SCANDIR, &self.scandir),
            (&config::MULTIPLEX, &self.multiplex),
            (&config::NO_SUPERVISE, &self.no_supervise),
            (&config::GATEWAY_COMMAND, &self.gateway_command),
            (&config::RUN_AS, &self.run_as),
            (&config::RESYNC, &self.resync_secs),
            (&config::REMOVE_GRACE, &self.remove_grace_ms),
            (&config::MAX_PROFILES, &self.max_profiles),
            (&config::LOG, &self.log),
            (&config::TOPOLOGY, &self.topology),
            (&config::CRASHLOOP, &self.crashloop),
            (&config::BACKOFF_MAX, &self.backoff_max_secs),
            (&config::CRASHLOOP_RESET, &self.crashloop_reset_secs),
            (&config::RUNTIME_DIR, &self.runtime_dir),
            (&config::WATCH, &self.watch),
            (&config::POLL_MS, &self.poll_ms),
        ];
        for (setting, value) in pairs {
            if let Some(v) = value {
                raw.flags.insert(setting.var, v.clone());
            }
        }
        raw
    }
}
