//! A hostile volume (SPEC §9.2, §9.3; issue 9 rows 2, 3, 6, 8) against the daemon on real s6:
//! every attack is made by the `hermes` user on a home it owns, as in the container.
//!
//! - a 1 MiB `desired_state` reads as `invalid` (down), nothing stored or printed grows with it,
//!   and a later valid `running` is applied;
//! - 2,000 empty directories in `profiles/` take a bounded number of inotify watches;
//! - invalid JSON rewritten with a moving error column gives a bounded number of warnings;
//! - 500 profiles hard-linking 1 MiB state, lifecycle and `.env` files, with a loop creating
//!   and removing `profiles/.deleted` and touching the big file, do not keep a legitimate
//!   profile's `desired_state` changes from reaching s6.
//!
//! Only final states are asserted, with the harness's generous bounds; never durations.

use crate::kit::*;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A world whose home belongs to `hermes` (uid, gid), reachable by it.
fn hermes_world() -> (World, u32, u32) {
    let (uid, gid) = ensure_hermes_user();
    let w = World::new();
    fs::set_permissions(&w.root, fs::Permissions::from_mode(0o755)).unwrap();
    fs::create_dir_all(w.home.join("profiles")).unwrap();
    chown_home(&w, uid, gid);
    (w, uid, gid)
}

fn chown_home(w: &World, uid: u32, gid: u32) {
    let st = Command::new("chown").arg("-R").arg(format!("{uid}:{gid}")).arg(&w.home).status().unwrap();
    assert!(st.success(), "chown -R {}", w.home.display());
}

/// Runs a shell script as `hermes` in `dir`; panics with its stderr if it fails.
fn hermes_sh(dir: &Path, script: &str) {
    let full = format!("cd '{}' && {script}", dir.display());
    let o = run_as("hermes", &[OsStr::new("sh"), OsStr::new("-c"), OsStr::new(&full)]);
    assert!(o.status.success(), "as hermes: {script}: {}", String::from_utf8_lossy(&o.stderr));
}

/// Replaces `<dir>/gateway_state.json` atomically, as `hermes`.
fn hermes_set_desired(dir: &Path, value: &str) {
    hermes_sh(
        dir,
        &format!("printf '{{\"desired_state\":\"{value}\"}}' > .gs.tmp && mv .gs.tmp gateway_state.json"),
    );
}

/// The daemon's inotify watches on the volume: every `inotify wd:` line of process `pid`'s
/// descriptors but those on the scandir's directories (a slot, its `data/`, `log/` and
/// `supervise/`: the drift and crash-loop watches, bounded by the slots, not the volume's).
fn inotify_watches(w: &World, pid: i32) -> usize {
    use std::os::unix::fs::MetadataExt;
    let supervise: std::collections::BTreeSet<String> = fs::read_dir(&w.scandir)
        .expect("scandir")
        .flatten()
        .flat_map(|e| ["", "data", "log", "supervise"].map(|sub| e.path().join(sub)))
        .filter_map(|p| fs::metadata(p).ok())
        .map(|m| format!("ino:{:x} ", m.ino()))
        .collect();
    let mut n = 0;
    for e in fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("fdinfo").flatten() {
        if let Ok(text) = fs::read_to_string(e.path()) {
            n += text
                .lines()
                .filter(|l| l.starts_with("inotify wd:") && !supervise.iter().any(|i| l.contains(i.as_str())))
                .count();
        }
    }
    n
}

/// Longest line of `text`, in bytes.
fn longest_line(text: &str) -> usize {
    text.lines().map(str::len).max().unwrap_or(0)
}

#[test]
fn a_huge_desired_state_reads_as_invalid_and_a_later_running_is_applied() {
    root_only!();
    let (w, uid, gid) = hermes_world();
    let big = w.profile("big").desired("running");
    w.profile("canary");
    chown_home(&w, uid, gid);
    let d = Daemon::start(&w, &[]);
    converge(&w, &d, &[("big", Want::Up), ("canary", Want::Down)]);

    // hermes writes a 1 MiB desired_state (valid JSON, just under the 1 MiB file limit).
    let value = "\u{1b}[2J".to_string() + &"x".repeat((1 << 20) - 64);
    let content = serde_json::json!({ "desired_state": value }).to_string();
    assert!(content.len() < 1 << 20);
    let staged = w.home.join(".big-state");
    fs::write(&staged, &content).unwrap();
    std::os::unix::fs::chown(&staged, Some(uid), Some(gid)).unwrap();
    hermes_sh(&big.dir, &format!("mv '{}' gateway_state.json", staged.display()));
    // Not `running`: the gateway is brought down.
    converge(&w, &d, &[("big", Want::Down)]);
    relist_barrier(&w, &d, "canary");

    let mut c = Checks::new();
    let record = fs::read(w.slot("big").join("data/reconciler.json")).unwrap_or_default();
    c.check(record.len() < 4096, format!("slot record is {} bytes", record.len()));
    c.check(
        String::from_utf8_lossy(&record).contains("\"invalid\""),
        format!("slot record does not hold `invalid`: {}", String::from_utf8_lossy(&record)),
    );
    let status_file = fs::read(w.runtime_dir().join("status.json")).unwrap_or_default();
    c.check(status_file.len() < 4096, format!("status file is {} bytes", status_file.len()));
    match status_rows(&w) {
        Ok(rows) => c.eq("status intent of big", rows["big"]["intent"].clone(), serde_json::json!("invalid")),
        Err(e) => c.check(false, e),
    }
    let o = w.run(&["status"]);
    c.check(longest_line(&o.stdout) < 1024, format!("status line of {} bytes", longest_line(&o.stdout)));
    c.check(!o.stdout.contains('\u{1b}'), "status prints an escape character");
    let err = d.stderr();
    c.check(longest_line(&err) < 2048, format!("a daemon log line of {} bytes", longest_line(&err)));
    c.check(!err.contains('\u{1b}'), "the daemon log holds an escape character");
    let warnings = d.log_lines_with(&["WARN", "big/gateway_state.json"]);
    c.eq("warnings about big's state file", warnings.len(), 1);

    // A later valid intent is applied.
    hermes_set_desired(&big.dir, "running");
    c.ok(wait_slots(&w.scandir, &wants(&[("big", Want::Up)])));
    c.finish();
}

#[test]
fn thousands_of_empty_directories_take_a_bounded_number_of_watches() {
    root_only!();
    let (w, uid, gid) = hermes_world();
    w.profile("a").desired("running");
    w.profile("canary");
    chown_home(&w, uid, gid);
    let d = Daemon::start(&w, &[]);
    converge(&w, &d, &[("a", Want::Up), ("canary", Want::Down)]);

    hermes_sh(&w.home.join("profiles"), "i=0; while [ $i -lt 2000 ]; do mkdir e$i; i=$((i+1)); done");
    relist_barrier(&w, &d, "canary");
    let mut c = Checks::new();
    // Admitted: the root and two named profiles; the rest is covered by re-listing.
    let watches = inotify_watches(&w, d.pid());
    c.check(watches <= 3 + 64, format!("{watches} inotify watches for 3 profiles and 2,000 empty dirs"));

    // A profile renamed in is still seen at once, and so is a marker added to an empty dir
    // (at the latest by a re-list).
    let late = rename_in_profile(&w, "late", Some("running"));
    let _ = late;
    c.ok(wait_slots(&w.scandir, &wants(&[("late", Want::Up)])));
    hermes_sh(&w.home.join("profiles/e1999"), ": > SOUL.md");
    relist_barrier(&w, &d, "canary");
    c.ok(wait_slots(&w.scandir, &wants(&[("e1999", Want::Down)])));
    let watches = inotify_watches(&w, d.pid());
    c.check(watches <= 5 + 64, format!("{watches} inotify watches for 5 profiles and 2,000 dirs"));
    c.finish();
}

#[test]
fn rewriting_invalid_json_with_a_moving_error_does_not_flood_the_log() {
    root_only!();
    let (w, uid, gid) = hermes_world();
    let noisy = w.profile("noisy").desired("running");
    w.profile("canary");
    chown_home(&w, uid, gid);
    let d = Daemon::start(&w, &[]);
    converge(&w, &d, &[("noisy", Want::Up), ("canary", Want::Down)]);

    // 300 rewrites, each with the JSON error one column further.
    hermes_sh(
        &noisy.dir,
        "i=0; while [ $i -lt 300 ]; do pad=$(printf \"%${i}s\" ''); \
         printf '{\"desired_state\":%s x}' \"$pad\" > .t && mv .t gateway_state.json; \
         sleep 0.005; i=$((i+1)); done",
    );
    relist_barrier(&w, &d, "canary");
    let warnings = d.log_lines_with(&["WARN", "noisy/gateway_state.json"]);
    // One, or two if the test happened to straddle a minute.
    assert!(
        !warnings.is_empty() && warnings.len() <= 2,
        "{} warnings about noisy's state file:\n{}",
        warnings.len(),
        warnings.join("\n")
    );
    // Still the same profile, still converging: a valid file is applied.
    hermes_set_desired(&noisy.dir, "stopped");
    converge(&w, &d, &[("noisy", Want::Down)]);
}

/// A `hermes` process looping until `<stop>` exists.
struct HermesLoop {
    child: Child,
    stop: PathBuf,
}

impl HermesLoop {
    fn start(dir: &Path, body: &str, stop: PathBuf) -> HermesLoop {
        let script =
            format!("cd '{}' && while [ ! -e '{}' ]; do {body}; done", dir.display(), stop.display());
        let child = s6_command("s6-setuidgid")
            .arg("hermes")
            .args(["sh", "-c", &script])
            .env_clear()
            .env("PATH", PATH)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the hermes loop");
        HermesLoop { child, stop }
    }
}

impl Drop for HermesLoop {
    fn drop(&mut self) {
        let _ = fs::write(&self.stop, "");
        let deadline = std::time::Instant::now() + WAIT;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn hard_linked_huge_files_in_many_profiles_do_not_starve_a_legitimate_profile() {
    root_only!();
    let (w, uid, gid) = hermes_world();
    let legit = w.profile("a-legit").desired("running");
    w.profile("b-canary");
    // The big files, owned by hermes (who then links them: it may link only its own files).
    let bigdir = w.home.join(".big");
    fs::create_dir(&bigdir).unwrap();
    let pad = |n: usize| "x".repeat(n);
    fs::write(bigdir.join("state.json"), format!("{{\"desired_state\":\"{}\"}}", pad((1 << 20) - 40)))
        .unwrap();
    fs::write(bigdir.join("life.json"), format!("{{\"phase\":\"{}\"}}", pad((1 << 20) - 40))).unwrap();
    fs::write(bigdir.join("env"), format!("A={}\n", pad((1 << 20) - 40))).unwrap();
    chown_home(&w, uid, gid);
    hermes_sh(
        &w.home.join("profiles"),
        "i=0; while [ $i -lt 500 ]; do p=h$i; mkdir -p $p/state && : > $p/SOUL.md && \
         ln ../.big/state.json $p/gateway_state.json && ln ../.big/life.json $p/state/gateway.lifecycle.json && \
         ln ../.big/env $p/.env; i=$((i+1)); done",
    );
    let d = Daemon::start(&w, &[("HERMES_RECONCILER_MAX_PROFILES", "50")]);
    converge(&w, &d, &[("a-legit", Want::Up), ("b-canary", Want::Down)]);

    // hermes keeps forcing re-lists and touching the shared big file.
    let _storm = HermesLoop::start(
        &w.home,
        "mkdir profiles/.deleted; rmdir profiles/.deleted; touch .big/state.json .big/life.json .big/env",
        w.root.join("stop-storm"),
    );
    for (value, want) in [("stopped", Want::Down), ("running", Want::Up), ("stopped", Want::Down)] {
        hermes_set_desired(&legit.dir, value);
        converge(&w, &d, &[("a-legit", want)]);
    }
    let mut c = Checks::new();
    let watches = inotify_watches(&w, d.pid());
    c.check(watches <= 51 + 64, format!("{watches} inotify watches with 51 admitted profiles"));
    // Profiles over the cap are discovered (and reported), not given slots.
    c.check(!w.slot("h99").exists(), "h99 has a slot despite the cap");
    c.finish();
}
