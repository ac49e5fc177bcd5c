//! The watcher backends (issue 12, SPEC §6.3) on real s6: the daemon's key convergence
//! scenarios once more with `HERMES_RECONCILER_WATCH=poll` (notify's `PollWatcher`), a renamed
//! profile followed under its new name by inotify, and `auto` on a real tmpfs. The periodic
//! re-list is an hour away in each: only the watcher can make them converge.

use crate::kit::*;
use std::fs;
use std::process::Command;

const POLL_MS: &str = "200";

fn status_watch(w: &World) -> serde_json::Value {
    let o = w.run(&["status", "--json"]);
    o.assert_code(0);
    o.json()["watch"].clone()
}

/// Profiles appearing (created, renamed in), an intent change, a rename `a` → `b` followed by a
/// change inside `b`, a profile deleted, and the home deleted and recreated: all converge by
/// polling, bounded by the poll period rather than by inotify.
#[test]
fn poll_backend_converges_the_key_scenarios() {
    root_only!();
    let w = World::new();
    w.profile("alpha");
    w.profile("doomed").desired("running");
    let d = Daemon::start(
        &w,
        &[
            ("HERMES_RECONCILER_WATCH", "poll"),
            ("HERMES_RECONCILER_POLL_MS", POLL_MS),
            ("HERMES_RECONCILER_RESYNC_SECS", "3600"),
            ("HERMES_RECONCILER_REMOVE_GRACE_MS", SHORT_GRACE_MS),
        ],
    );
    converge(&w, &d, &[("alpha", Want::Down), ("doomed", Want::Up)]);
    let mut c = Checks::new();
    c.check(
        !d.log_lines_with(&["watching the volume by polling"]).is_empty(),
        format!("the backend is not logged:\n{}", d.stderr()),
    );
    c.eq("status watch", status_watch(&w), serde_json::json!(format!("poll ({POLL_MS} ms)")));

    // A new profile, and an intent change.
    w.profile("beta").desired("running");
    set_desired(&w.profile_dir("alpha"), "running");
    converge(&w, &d, &[("alpha", Want::Up), ("beta", Want::Up)]);

    // A profile directory that is a link to one outside `profiles/` (SPEC allows it): its
    // files are polled through the link, although the poller follows no link below it.
    let outside = w.home.parent().unwrap().join("linked-target");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("SOUL.md"), "# linked\n").unwrap();
    std::os::unix::fs::symlink(&outside, w.profile_dir("linked")).unwrap();
    converge(&w, &d, &[("linked", Want::Down)]);
    set_desired(&outside, "running");
    converge(&w, &d, &[("linked", Want::Up)]);

    // A profile renamed in from outside, then renamed `beta` → `gamma` with a change inside
    // `gamma` right after.
    rename_in_profile(&w, "late", Some("running"));
    fs::rename(w.profile_dir("beta"), w.profile_dir("gamma")).unwrap();
    set_desired(&w.profile_dir("gamma"), "stopped");
    converge(&w, &d, &[("late", Want::Up), ("gamma", Want::Down)]);

    // rm -rf of a profile: its slot goes.
    fs::remove_dir_all(w.profile_dir("doomed")).unwrap();
    must(
        &d,
        "doomed and beta removed",
        poll(WAIT, || {
            let slots = gateway_slots(&w.scandir);
            let want = slot_set(["alpha", "default", "gamma", "late", "linked"]);
            if slots == want { Ok(()) } else { Err(format!("slots {slots:?}, want {want:?}")) }
        }),
    );

    // The home deleted and recreated (seen through its parent's watch).
    wait_until("the home deleted", WAIT, || fs::remove_dir_all(&w.home).is_ok() || !w.home.exists());
    fs::create_dir_all(w.home.join(".standin")).unwrap();
    set_desired(&w.home, "running");
    w.profile("after").desired("running");
    converge(&w, &d, &[("default", Want::Up), ("after", Want::Up)]);
    // The profiles that went with the old home lose their slots after the removal grace.
    must(
        &d,
        "the old home's profiles removed",
        poll(WAIT, || {
            let slots = gateway_slots(&w.scandir);
            let want = slot_set(["after", "default"]);
            if slots == want { Ok(()) } else { Err(format!("slots {slots:?}, want {want:?}")) }
        }),
    );
    // Removed slots' supervisors exit on their own time.
    must(&d, "one supervisor each", poll(WAIT, || one_supervisor_each(&w)));
    c.finish();
}

/// SPEC §6.3 with inotify: `a` → `b`, then a `desired_state` change inside `b` reaches `b`
/// without a re-list (the next periodic one is an hour away; a rename asks for none).
#[test]
fn inotify_follows_a_renamed_profile_under_its_new_name() {
    root_only!();
    let w = World::new();
    w.profile("first");
    let d = Daemon::start(
        &w,
        &[
            ("HERMES_RECONCILER_WATCH", "inotify"),
            ("HERMES_RECONCILER_RESYNC_SECS", "3600"),
            ("HERMES_RECONCILER_REMOVE_GRACE_MS", SHORT_GRACE_MS),
        ],
    );
    converge(&w, &d, &[("first", Want::Down)]);
    fs::rename(w.profile_dir("first"), w.profile_dir("second")).unwrap();
    converge(&w, &d, &[("second", Want::Down)]);
    set_desired(&w.profile_dir("second"), "running");
    converge(&w, &d, &[("second", Want::Up)]);
    // And again, once the first change has been served.
    set_desired(&w.profile_dir("second"), "stopped");
    converge(&w, &d, &[("second", Want::Down)]);
    let mut c = Checks::new();
    c.eq("status watch", status_watch(&w), serde_json::json!("inotify"));
    c.check(
        d.log_lines_with(&["inotify queue overflowed"]).is_empty(),
        "no overflow expected (the convergence must come from the events)",
    );
    c.finish();
}

/// Unmounts (lazily) the tmpfs mounted over a world's home when the test ends, before the
/// world's directories are deleted.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `auto` on a real tmpfs (where inotify sees every change) picks inotify, logs it once and
/// reports it in `status`; the daemon converges on it.
#[test]
fn auto_on_a_real_tmpfs_watches_with_inotify() {
    root_only!();
    let w = World::new();
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "mode=0755", "tmpfs"])
        .arg(&w.home)
        .output()
        .unwrap();
    assert!(out.status.success(), "mount tmpfs: {out:?}");
    let _mounted = Mounted(w.home.clone());
    let fs_type = Command::new("stat").args(["-f", "-c", "%T"]).arg(&w.home).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&fs_type.stdout).trim(), "tmpfs");
    fs::create_dir(w.home.join(".standin")).unwrap();
    w.profile("alpha");
    let d = Daemon::start(&w, &[("HERMES_RECONCILER_RESYNC_SECS", "3600")]);
    converge(&w, &d, &[("alpha", Want::Down)]);
    set_desired(&w.profile_dir("alpha"), "running");
    converge(&w, &d, &[("alpha", Want::Up)]);
    let mut c = Checks::new();
    c.eq("backend lines", d.log_lines_with(&["watching the volume with inotify"]).len(), 1);
    c.check(d.log_lines_with(&["watching the volume by polling"]).is_empty(), "auto polled on tmpfs");
    c.eq("status watch", status_watch(&w), serde_json::json!("inotify"));
    c.finish();
}

/// Watch-limit exhaustion (SPEC §6.3): the daemon runs in a user namespace of its own whose
/// inotify watch limit (`/proc/sys/user/max_inotify_watches`, per user namespace, so the host's
/// budget is untouched) leaves room for the base watches only. It logs the fallback once and
/// converges by re-listing every two seconds (the periodic re-list is an hour away).
#[test]
fn watch_limit_exhaustion_falls_back_to_relisting() {
    root_only!();
    let w = World::new();
    w.profile("alpha");
    w.profile("beta");
    let base = w.command(&["run"]);
    let stderr_path = w.root.join("limited.stderr");
    let mut cmd = Command::new("unshare");
    cmd.args(["-U", "-r", "sh", "-c", "echo 4 >/proc/sys/user/max_inotify_watches && exec \"$0\" run"])
        .arg(base.get_program())
        .env_clear()
        .envs(base.get_envs().filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))))
        .env("HERMES_RECONCILER_WATCH", "inotify")
        .env("HERMES_RECONCILER_RESYNC_SECS", "3600")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(fs::File::create(&stderr_path).unwrap());
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Killed(cmd.spawn().expect("unshare"));
    let stderr = || fs::read_to_string(&stderr_path).unwrap_or_default();
    let r = wait_slots(&w.scandir, &wants(&[("alpha", Want::Down), ("beta", Want::Down)]));
    assert!(r.is_ok(), "{r:?}\n{}", stderr());
    // Room for one profile's watch at most: a change in the other is seen only by re-listing.
    set_desired(&w.profile_dir("alpha"), "running");
    set_desired(&w.profile_dir("beta"), "running");
    w.profile("gamma").desired("running");
    let r = wait_slots(&w.scandir, &wants(&[("alpha", Want::Up), ("beta", Want::Up), ("gamma", Want::Up)]));
    assert!(r.is_ok(), "{r:?}\n{}", stderr());
    let text = stderr();
    let fallback = text.lines().filter(|l| l.contains("WARN") && l.contains("watch limit exhausted")).count();
    assert_eq!(fallback, 1, "the fallback is logged once:\n{text}");
}

/// A daemon that sees the volume only by re-listing it, every second: polling that never
/// polls (an hour away), and the debug lines that tell a replayed re-list from an observed one.
const RELIST_ONLY: [(&str, &str); 4] = [
    ("HERMES_RECONCILER_WATCH", "poll"),
    ("HERMES_RECONCILER_POLL_MS", "3600000"),
    ("HERMES_RECONCILER_RESYNC_SECS", "1"),
    ("HERMES_RECONCILER_LOG", "info,hermes_reconciler=debug"),
];

/// A re-list that finds the world as its last settled pass left it plans nothing (issue 15),
/// and the ones after it only replay what it read, but one that finds a change still
/// converges it. The poller here is an hour away, so only the periodic re-list (every second)
/// can see the changes: a settled daemon must keep noticing, again and again, both ways.
#[test]
fn settled_relists_still_converge_what_only_a_relist_sees() {
    root_only!();
    let w = World::new();
    w.profile("work").desired("running");
    w.profile("idle");
    let d = Daemon::start(&w, &RELIST_ONLY);
    converge(&w, &d, &[("work", Want::Up), ("idle", Want::Down)]);
    for (round, (work, idle)) in
        [("stopped", "running"), ("running", "stopped"), ("stopped", "stopped")].into_iter().enumerate()
    {
        // Until re-lists find nothing new (the daemon settles in between) and, the files
        // written last being old enough (two seconds), one only replays what another read.
        let replays = d.log_lines_with(&["re-list replayed unchanged"]).len();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while d.log_lines_with(&["re-list replayed unchanged"]).len() <= replays {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: no replayed re-list:\n{}",
                d.stderr()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        set_desired(&w.profile_dir("work"), work);
        set_desired(&w.profile_dir("idle"), idle);
        let want = |v: &str| if v == "running" { Want::Up } else { Want::Down };
        converge(&w, &d, &[("work", want(work)), ("idle", want(idle))]);
        assert!(
            !d.log_lines_with(&["re-list found the world unchanged"]).is_empty(),
            "round {round}: no quiet re-list logged:\n{}",
            d.stderr()
        );
    }
}

/// The attack on intent files held open between re-lists, made by `hermes` where only a
/// re-list can see it (polling that never polls): the held intent rewritten in place with its
/// mtime set back to what it was (so only its ctime tells), then swapped for a symlink to a
/// file of `hermes`' own saying `running`, then (once a plain file is held again) swapped for
/// a FIFO nobody writes to. The first must stop the gateway; the second must not be followed
/// (no intent: the gateway stays down); the third must be refused without an open, which
/// would hang the daemon: it is reported, and re-lists go on.
#[test]
fn hermes_rewriting_a_held_intent_behind_its_mtime_or_for_a_symlink_or_fifo_is_seen() {
    root_only!();
    let (w, uid, gid) = World::for_hermes();
    w.profile("work").desired("running");
    chown_tree(&w.home, uid, gid);
    let d = Daemon::start(&w, &RELIST_ONLY);
    converge(&w, &d, &[("work", Want::Up)]);
    let replays = || d.log_lines_with(&["re-list replayed unchanged"]).len();
    let wait_replay = |what: &str| {
        let before = replays();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while replays() <= before {
            assert!(std::time::Instant::now() < deadline, "{what}: no replayed re-list:\n{}", d.stderr());
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    // Held, and replayed: the intent is asked by descriptor now.
    wait_replay("before the attack");
    let intent = w.profile_dir("work").join("gateway_state.json");
    let holds = || {
        fs::read_dir(format!("/proc/{}/fd", d.pid()))
            .unwrap()
            .flatten()
            .any(|e| fs::read_link(e.path()).is_ok_and(|l| l == intent))
    };
    assert!(holds(), "the daemon holds the intent open");
    let was = fs::read_to_string(&intent).unwrap();
    let stopped = was.replace("running", "stopped");
    assert_eq!(stopped.len(), was.len(), "the same size");
    // The reference time is kept outside the profile's folder, which must not change.
    let reference = w.home.join(".reference");
    let script = format!(
        "touch -r '{f}' '{r}' && printf '%s' '{s}' > '{f}' && touch -r '{r}' '{f}'",
        f = intent.display(),
        r = reference.display(),
        s = stopped
    );
    let o = run_as(
        "hermes",
        &[std::ffi::OsStr::new("sh"), std::ffi::OsStr::new("-euc"), std::ffi::OsStr::new(&script)],
    );
    assert!(o.status.success(), "as hermes: {}", String::from_utf8_lossy(&o.stderr));
    converge(&w, &d, &[("work", Want::Down)]);

    let outside = w.home.join("outside.json");
    let script = format!(
        "printf '%s' '{s}' > '{o}' && rm '{f}' && ln -s '{o}' '{f}'",
        s = was,
        o = outside.display(),
        f = intent.display()
    );
    let o = run_as(
        "hermes",
        &[std::ffi::OsStr::new("sh"), std::ffi::OsStr::new("-euc"), std::ffi::OsStr::new(&script)],
    );
    assert!(o.status.success(), "as hermes: {}", String::from_utf8_lossy(&o.stderr));
    // Two re-lists that found nothing more to do since (a symlinked intent is read by path at
    // every re-list, so they observe rather than replay).
    let quiet = || d.log_lines_with(&["re-list found the world unchanged"]).len();
    let two_quiet = |what: &str| {
        let before = quiet();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while quiet() < before + 2 {
            assert!(std::time::Instant::now() < deadline, "no quiet re-lists after {what}:\n{}", d.stderr());
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    two_quiet("the symlink");
    converge(&w, &d, &[("work", Want::Down)]);
    assert!(
        d.log_lines_with(&["gateway_state.json"]).iter().any(|l| l.contains("WARN")),
        "the symlinked intent is reported:\n{}",
        d.stderr()
    );

    // Last, a FIFO nobody writes to in place of the held file: opening it would hang the
    // daemon. First a plain file again, held and replayed.
    let script = format!("rm '{f}' && printf '%s' '{s}' > '{f}'", f = intent.display(), s = stopped);
    let o = run_as(
        "hermes",
        &[std::ffi::OsStr::new("sh"), std::ffi::OsStr::new("-euc"), std::ffi::OsStr::new(&script)],
    );
    assert!(o.status.success(), "as hermes: {}", String::from_utf8_lossy(&o.stderr));
    wait_replay("a plain intent again");
    assert!(holds(), "the daemon holds the plain intent again");
    let script = format!("rm '{f}' && mkfifo '{f}'", f = intent.display());
    let o = run_as(
        "hermes",
        &[std::ffi::OsStr::new("sh"), std::ffi::OsStr::new("-euc"), std::ffi::OsStr::new(&script)],
    );
    assert!(o.status.success(), "as hermes: {}", String::from_utf8_lossy(&o.stderr));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !d.log_lines_with(&["gateway_state.json", "FIFO"]).iter().any(|l| l.contains("WARN")) {
        assert!(std::time::Instant::now() < deadline, "the FIFO is not reported:\n{}", d.stderr());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    two_quiet("the FIFO");
    converge(&w, &d, &[("work", Want::Down)]);
}
