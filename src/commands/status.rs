//! `hermes-reconciler status`: one row per known profile and per slot (SPEC §4). Reads the
//! volume, the slots and s6's status files; changes nothing; works with or without the daemon.

use super::{EXIT_FAILURE, EXIT_OK};
use crate::config::Config;
use crate::escape::{Escaped, escape, json_safe};
use crate::model::ProfileName;
use crate::observe::{self, slots::slot_dir};
use crate::s6;
use crate::warning::Finding;
use serde::Serialize;
use std::collections::BTreeSet;
use std::io::Write;

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
    /// `single` topology only (SPEC §6.7): the root: whether any named profile's `running`
    /// folds into it; a named profile: whether its own does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub folded_into_root: Option<bool>,
    /// Held down as crash-looping (SPEC §6.8): until when, the deaths and the last exit.
    pub backoff: Option<String>,
}

/// The topology in force and the named profiles folding into the root (`single` only).
pub fn topology(config: &Config, world: &observe::Observed) -> (crate::config::Topology, Vec<String>) {
    let topo = crate::plan::topology(world, config);
    let folded = if topo == crate::config::Topology::Single {
        world
            .profiles
            .iter()
            .filter(|p| !p.name.is_root() && !p.yaml.standalone && p.intent.runs())
            .map(|p| p.name.to_string())
            .collect()
    } else {
        Vec::new()
    };
    (topo, folded)
}

/// Builds the rows.
pub fn rows(config: &Config) -> Vec<Row> {
    rows_of(config, &observe::observe_all(config, None))
}

fn rows_of(config: &Config, world: &observe::Observed) -> Vec<Row> {
    let (topo, folded) = topology(config, world);
    let single = topo == crate::config::Topology::Single;
    let report = observe::status_record::read(&config.runtime_dir);
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
                // Unknown shows as not supervised: the table states only what it could check.
                supervised: slot.is_some() && s6::supervisor(&dir).surely_alive(),
                port: world.previous_ports.get(name.as_str()).copied(),
                last_action: record.and_then(|r| r.last_action.clone()),
                last_action_at: record.and_then(|r| r.last_action_at.clone()),
                last_error: report.errors.get(name.as_str()).cloned(),
                skipped: report.skipped.get(name.as_str()).cloned(),
                backoff: report.backoff.get(name.as_str()).cloned(),
                folded_into_root: (single && profile.is_some()).then(|| {
                    if name.is_root() {
                        !folded.is_empty()
                    } else {
                        folded.iter().any(|f| f == name.as_str())
                    }
                }),
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
            folded_into_root: None,
            backoff: None,
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
            backoff: self.backoff.as_ref().map(e),
            ..self.clone()
        }
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".to_string(), ToString::to_string)
}

pub fn run(config: &Config, json: bool) -> i32 {
    let world = observe::observe_all(config, None);
    let rows = rows_of(config, &world);
    let topo = topology(config, &world);
    // Scandir problems as the daemon last saw them, plus what is there now.
    let report = observe::status_record::read(&config.runtime_dir);
    let watch = report.watch;
    let mut scandir = report.scandir;
    for d in observe::svscan::observe_scanner(&config.scandir).dangling {
        let w = Finding::DanglingScandirEntry { path: config.scandir.join(&d) }.to_string();
        if !scandir.contains(&w) {
            scandir.push(w);
        }
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let written = print(&mut out, &rows, &scandir, &topo, watch.as_deref(), json).and_then(|()| out.flush());
    output_done(written)
}

/// Exit status once the output is written or could not be. A reader that went away early
/// (`status | head -1`) is not a failure: the rest of the output has nobody to read it, so the
/// command stops quietly with 0, as `ls | head` does. Rust ignores SIGPIPE, so the write fails
/// with `EPIPE` instead of killing the process, and `println!` would panic (exit 101) on it;
/// every write here therefore goes through `write!` and this function. (Restoring SIGPIPE's
/// default instead would end the process by a signal — 141 under `set -o pipefail` — and is a
/// process-wide switch that the daemon, which writes into FIFOs whose reader may vanish, must
/// never have.) Any other write error is reported and is a failure.
fn output_done(written: std::io::Result<()>) -> i32 {
    match written {
        Ok(()) => EXIT_OK,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => EXIT_OK,
        Err(e) => {
            eprintln!("hermes-reconciler: status: cannot write the output: {e}");
            EXIT_FAILURE
        }
    }
}

/// `watch`: the watcher backend the daemon last reported (`None`: no daemon has run).
fn print(
    out: &mut impl Write,
    rows: &[Row],
    scandir: &[String],
    (topo, folded): &(crate::config::Topology, Vec<String>),
    watch: Option<&str>,
    json: bool,
) -> std::io::Result<()> {
    if json {
        let doc = serde_json::json!({
            "profiles": rows,
            "scandir": scandir,
            "topology": topo,
            "folded_into_root": folded,
            "watch": watch,
        });
        return writeln!(out, "{}", json_safe(&doc.to_string()));
    }
    for w in scandir {
        writeln!(out, "warning: {}", Escaped::new(w))?;
    }
    writeln!(
        out,
        "{:<24} {:<5} {:<14} {:<6} {:<5} {:<5} {:<8} {:>8} {:<5} {:<12} {:<24} ERROR",
        "PROFILE", "SLOT", "INTENT", "WANTUP", "UP", "READY", "PID", "UPTIME", "PORT", "LAST", "AT"
    )?;
    for r in rows {
        let r = &r.escaped();
        let error = r
            .backoff
            .as_ref()
            .map(|b| format!("backoff {b}"))
            .or(r.last_error.clone())
            .or(r.skipped.as_ref().map(|s| format!("skipped: {s}")));
        writeln!(
            out,
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
        )?;
    }
    match topo {
        crate::config::Topology::PerProfile => {}
        crate::config::Topology::Multiplex => writeln!(out, "topology: multiplex")?,
        crate::config::Topology::Single => writeln!(
            out,
            "topology: single; folded into the root: {}",
            if folded.is_empty() { "none".to_string() } else { folded.join(", ") }
        )?,
    }
    writeln!(out, "watch: {}", Escaped::new(watch.unwrap_or("- (no daemon has run)")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_pipe_is_a_quiet_success_and_other_write_errors_fail() {
        use std::io::{Error, ErrorKind};
        assert_eq!(output_done(Ok(())), EXIT_OK);
        assert_eq!(output_done(Err(Error::from(ErrorKind::BrokenPipe))), EXIT_OK);
        assert_eq!(output_done(Err(Error::from_raw_os_error(nix::libc::ENOSPC))), EXIT_FAILURE);
    }
}
