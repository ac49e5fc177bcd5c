//! `hermes-reconciler status`: one row per known profile and per slot (SPEC §4). Reads the
//! volume, the slots and s6's status files; changes nothing; works with or without the daemon.

use super::EXIT_OK;
use crate::config::Config;
use crate::daemon::status_file;
use crate::escape::{Escaped, escape, json_safe};
use crate::model::ProfileName;
use crate::observe::{self, scandir::slot_dir};
use crate::s6;
use serde::Serialize;
use std::collections::BTreeSet;

/// One row of `status`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Row {
    pub profile: String,
    pub slot: String,
    /// The profile exists on the volume.
    pub profile_present: bool,
    pub slot_present: bool,
    /// Effective intent (SPEC §5.2), `null` when none.
    pub intent: Option<String>,
    /// s6's want-up flag; `null` when no supervisor has written a status yet.
    pub wanted_up: Option<bool>,
    pub normally_up: Option<bool>,
    pub up: Option<bool>,
    pub ready: Option<bool>,
    pub pid: Option<u64>,
    /// Seconds since the last up/down change.
    pub uptime_secs: Option<u64>,
    pub supervised: bool,
    pub port: Option<u16>,
    pub last_action: Option<String>,
    pub last_action_at: Option<String>,
    pub last_error: Option<String>,
    /// Why the profile has no slot (capacity, invalid name...).
    pub skipped: Option<String>,
}

/// Builds the rows.
pub fn rows(config: &Config) -> Vec<Row> {
    let world = observe::observe_all(config, None);
    let report = status_file::read(&config.scandir);
    let mut names: Vec<ProfileName> = world.profiles.iter().map(|p| p.name.clone()).collect();
    let known: BTreeSet<ProfileName> = names.iter().cloned().collect();
    names.extend(world.scandir.slots.keys().filter(|n| !known.contains(*n)).cloned());
    let mut rows: Vec<Row> = names
        .iter()
        .map(|name| {
            let profile = world.profiles.iter().find(|p| &p.name == name);
            let slot = world.scandir.slots.get(name);
            let dir = slot_dir(&config.scandir, name);
            let status = slot.and_then(|_| s6::read_status(&dir).ok().flatten());
            let record = slot.and_then(|s| s.record.as_ref());
            Row {
                profile: name.to_string(),
                slot: name.slot_name(),
                profile_present: profile.is_some(),
                slot_present: slot.is_some(),
                intent: profile.and_then(|p| p.intent.effective().map(str::to_owned)),
                wanted_up: status.as_ref().map(|s| s.want_up),
                normally_up: slot.map(|s| !s.has_down),
                up: status.as_ref().map(|s| s.is_up()),
                ready: status.as_ref().map(|s| s.is_ready()),
                pid: status.as_ref().and_then(|s| s.up_pid()),
                uptime_secs: status.as_ref().and_then(|s| s.since.elapsed().ok()).map(|d| d.as_secs()),
                supervised: slot.is_some() && matches!(s6::supervisor_pid(&dir), Ok(Some(_))),
                port: world.previous_ports.get(name.as_str()).copied(),
                last_action: record.and_then(|r| r.last_action.clone()),
                last_action_at: record.and_then(|r| r.last_action_at.clone()),
                last_error: report.errors.get(name.as_str()).cloned(),
                skipped: report.skipped.get(name.as_str()).cloned(),
            }
        })
        .collect();
    // Skipped entries that are not valid profile names still deserve a row.
    for s in &world.skipped {
        rows.push(Row {
            profile: s.raw.clone(),
            slot: String::new(),
            profile_present: true,
            slot_present: false,
            intent: None,
            wanted_up: None,
            normally_up: None,
            up: None,
            ready: None,
            pid: None,
            uptime_secs: None,
            supervised: false,
            port: None,
            last_action: None,
            last_action_at: None,
            last_error: None,
            skipped: Some(s.reason.clone()),
        });
    }
    rows
}

impl Row {
    /// The row with every string escaped (SPEC §9.3), for the table: names, intents, actions
    /// and messages come from files another user can write.
    pub fn escaped(&self) -> Row {
        let e = |s: &String| escape(s).into_owned();
        Row {
            profile: e(&self.profile),
            slot: e(&self.slot),
            intent: self.intent.as_ref().map(e),
            last_action: self.last_action.as_ref().map(e),
            last_action_at: self.last_action_at.as_ref().map(e),
            last_error: self.last_error.as_ref().map(e),
            skipped: self.skipped.as_ref().map(e),
            ..self.clone()
        }
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".to_string(), ToString::to_string)
}

pub fn run(config: &Config, json: bool) -> i32 {
    let rows = rows(config);
    // Scandir problems as the daemon last saw them, plus what is there now.
    let mut scandir = status_file::read(&config.scandir).scandir;
    for d in observe::scanner::observe_scanner(&config.scandir).dangling {
        let w = format!("scandir entry {} is a dangling symlink", config.scandir.join(&d).display());
        if !scandir.iter().any(|s| s.starts_with(&w)) {
            scandir.push(w);
        }
    }
    if json {
        let out = serde_json::json!({ "profiles": rows, "scandir": scandir });
        let out = json_safe(&out.to_string()).into_owned();
        println!("{out}");
        return EXIT_OK;
    }
    for w in &scandir {
        let w = Escaped::new(w);
        println!("warning: {w}");
    }
    println!(
        "{:<24} {:<5} {:<14} {:<6} {:<5} {:<5} {:<8} {:>8} {:<5} {:<12} {:<24} ERROR",
        "PROFILE", "SLOT", "INTENT", "WANTUP", "UP", "READY", "PID", "UPTIME", "PORT", "LAST", "AT"
    );
    for r in &rows {
        let r = &r.escaped();
        let error = r.last_error.clone().or(r.skipped.as_ref().map(|s| format!("skipped: {s}")));
        println!(
            "{:<24} {:<5} {:<14} {:<6} {:<5} {:<5} {:<8} {:>8} {:<5} {:<12} {:<24} {}",
            r.profile,
            if r.slot_present { "yes" } else { "no" },
            opt(&r.intent),
            opt(&r.wanted_up),
            opt(&r.up),
            opt(&r.ready),
            opt(&r.pid),
            r.uptime_secs.map_or_else(|| "-".into(), |s| format!("{s}s")),
            opt(&r.port),
            opt(&r.last_action),
            opt(&r.last_action_at),
            error.unwrap_or_default()
        );
    }
    EXIT_OK
}
