//! Slots as s6 sees them: `s6-svstat`, the expected state of a slot, and waits for it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use super::PATH;
use super::WAIT;
use super::s6::s6_command;
use super::wait::poll;

/// `s6-svstat -o up,wantedup,normallyup,ready,pid,exitcode` of a service directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SvStat {
    pub up: bool,
    pub wanted_up: bool,
    pub normally_up: bool,
    pub ready: bool,
    /// Namespace pid; `None` when down.
    pub pid: Option<i64>,
    pub exitcode: i64,
}

/// Runs `s6-svstat` on `dir`; `Err` when no supervisor answers.
pub fn svstat(dir: &Path) -> Result<SvStat, String> {
    let out = s6_command("s6-svstat")
        .args(["-o", "up,wantedup,normallyup,ready,pid,exitcode"])
        .arg(dir)
        .env_clear()
        .env("PATH", PATH)
        .output()
        .map_err(|e| format!("spawn s6-svstat: {e}"))?;
    if !out.status.success() {
        return Err(format!("s6-svstat {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr).trim()));
    }
    parse_svstat(&String::from_utf8_lossy(&out.stdout))
}

pub fn parse_svstat(s: &str) -> Result<SvStat, String> {
    let f: Vec<&str> = s.split_whitespace().collect();
    if f.len() != 6 {
        return Err(format!("unexpected s6-svstat output {s:?}"));
    }
    let b = |x: &str| match x {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("unexpected boolean {x:?} in s6-svstat output {s:?}")),
    };
    let n = |x: &str| x.parse::<i64>().map_err(|_| format!("unexpected number {x:?} in {s:?}"));
    let pid = n(f[4])?;
    Ok(SvStat {
        up: b(f[0])?,
        wanted_up: b(f[1])?,
        normally_up: b(f[2])?,
        ready: b(f[3])?,
        pid: (pid > 0).then_some(pid),
        exitcode: n(f[5])?,
    })
}

/// What a slot should look like once s6 has acted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Supervised, gateway up, wanted up, no `down` file, logger up.
    Up,
    /// Supervised, gateway down, not wanted up, `down` file present, logger up.
    Down,
    /// Supervised, gateway down and not wanted up (parked by `finish` exiting 125).
    Parked,
    /// No slot directory at all.
    Absent,
}

/// Checks the current state of `slot` against `want`; `Err` describes the difference.
pub fn slot_matches(slot: &Path, want: Want) -> Result<(), String> {
    let name = slot.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let exists = slot.symlink_metadata().is_ok();
    if want == Want::Absent {
        return if exists { Err(format!("{name}: slot exists, want none")) } else { Ok(()) };
    }
    if !exists {
        return Err(format!("{name}: no slot directory, want {want:?}"));
    }
    let st = svstat(slot).map_err(|e| format!("{name}: not supervised ({e}), want {want:?}"))?;
    let down_file = slot.join("down").exists();
    let ok = match want {
        Want::Up => st.up && st.wanted_up && !down_file,
        Want::Down => !st.up && !st.wanted_up && down_file,
        Want::Parked => !st.up && !st.wanted_up,
        Want::Absent => unreachable!(),
    };
    if !ok {
        return Err(format!("{name}: want {want:?}, observed {st:?}, down file present: {down_file}"));
    }
    let log = svstat(&slot.join("log")).map_err(|e| format!("{name}/log: not supervised ({e})"))?;
    if !log.up {
        return Err(format!("{name}/log: logger not up: {log:?}"));
    }
    Ok(())
}

/// Waits (bounded) until every slot in `want` matches; `Err` lists the ones that do not.
pub fn wait_slots(scandir: &Path, want: &BTreeMap<String, Want>) -> Result<(), String> {
    poll(WAIT, || {
        let bad: Vec<String> = want
            .iter()
            .filter_map(|(name, w)| slot_matches(&scandir.join(slot_name(name)), *w).err())
            .collect();
        if bad.is_empty() { Ok(()) } else { Err(format!("slots not as expected: {}", bad.join("; "))) }
    })
}

pub fn slot_name(profile: &str) -> String {
    format!("gateway-{profile}")
}

/// Names of the scandir entries starting with `gateway-`.
pub fn gateway_slots(scandir: &Path) -> BTreeSet<String> {
    fs::read_dir(scandir)
        .expect("read scandir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("gateway-"))
        .collect()
}

/// Every entry name of `dir`.
pub fn entries(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// The first `API_SERVER_PORT=<n>` assignment of a run script, if any.
pub fn port_in_run_script(run: &str) -> Option<u16> {
    let i = run.find("API_SERVER_PORT=")?;
    let rest = run[i + "API_SERVER_PORT=".len()..].trim_start_matches(['\'', '"']);
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// A want map from pairs.
pub fn wants(pairs: &[(&str, Want)]) -> BTreeMap<String, Want> {
    pairs.iter().map(|(n, w)| (n.to_string(), *w)).collect()
}

/// The `gateway-*` slot names for `profiles`.
pub fn slot_set<S: AsRef<str>>(profiles: impl IntoIterator<Item = S>) -> BTreeSet<String> {
    profiles.into_iter().map(|p| slot_name(p.as_ref())).collect()
}

/// Reads a slot file as text (empty when missing).
pub fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_default()
}
