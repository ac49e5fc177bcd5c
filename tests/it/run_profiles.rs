//! The daemon on real s6: profiles that appear (renamed in, `SOUL.md` written late), disappear
//! (`rm -rf`, `mv a b`, the whole `profiles/` replaced), a home that does not exist yet and an
//! s6-svscan that starts after the daemon. Each converges without a restart.

use crate::kit::*;
use std::fs;
use std::time::Duration;

/// Waits until `slot` and every hidden name built from it are gone from the scandir, no
/// s6-supervise names it, and its last gateway process (by the stand-in's record) is gone.
fn slot_fully_gone(w: &World, d: &Daemon, profile: &str) {
    let slot = slot_name(profile);
    let gw_pids: Vec<i64> =
        w.standin_records(profile).iter().filter_map(|r| r.pid.parse::<i64>().ok()).collect();
    must(
        d,
        &format!("removal of {slot}"),
        poll(WAIT, || {
            let left: Vec<String> = entries(&w.scandir)
                .into_iter()
                .filter(|e| e == &slot || e.starts_with(&format!(".{slot}.")))
                .collect();
            if !left.is_empty() {
                return Err(format!("scandir still has {left:?}"));
            }
            let (main, log) = supervisors_of(w, &slot);
            if main + log > 0 {
                return Err(format!("{slot}: {main} s6-supervise left, {log} for its logger"));
            }
            if let Some(p) = gw_pids.iter().find(|p| ns_pid_alive(w, **p)) {
                return Err(format!("{slot}: gateway pid {p} still alive"));
            }
            Ok(())
        }),
    );
}

#[test]
fn profiles_that_appear_get_slots() {
    root_only!();
    let w = World::new();
    let d = Daemon::start(&w, &[]);
    converge(&w, &d, &[("default", Want::Down)]);

    // Complete profiles renamed into profiles/ in one step.
    rename_in_profile(&w, "alpha", Some("running"));
    rename_in_profile(&w, "beta", None);
    converge(&w, &d, &[("default", Want::Down), ("alpha", Want::Up), ("beta", Want::Down)]);

    // mkdir first, the marker later: no slot until SOUL.md exists.
    let gamma = w.home.join("profiles/gamma");
    fs::create_dir(&gamma).unwrap();
    set_desired(&gamma, "running");
    fs::write(gamma.join("notes.txt"), "half-made\n").unwrap();
    relist_barrier(&w, &d, "beta");
    assert!(!w.slot("gamma").exists(), "a directory without SOUL.md got a slot\nstderr:\n{}", d.stderr());
    fs::write(gamma.join("SOUL.md"), "# soul\n").unwrap();
    converge(&w, &d, &[("alpha", Want::Up), ("beta", Want::Down), ("gamma", Want::Up)]);

    // A profile restored elsewhere and linked in: a symlink to a directory counts.
    let restored = w.root.join("restored-delta");
    fs::create_dir(&restored).unwrap();
    fs::write(restored.join("SOUL.md"), "# soul\n").unwrap();
    set_desired(&restored, "running");
    std::os::unix::fs::symlink(&restored, w.home.join("profiles/delta")).unwrap();
    converge(&w, &d, &[("delta", Want::Up)]);

    let mut c = Checks::new();
    c.eq(
        "gateway slots",
        gateway_slots(&w.scandir),
        slot_set(["alpha", "beta", "default", "delta", "gamma"]),
    );
    for n in ["alpha", "gamma", "delta"] {
        c.ok(starts(&w, n, 1));
        let recs = w.standin_records(n);
        if let Some(r) = recs.first() {
            c.eq(
                &format!("{n}: argv"),
                r.args.clone(),
                vec!["-p".into(), n.into(), "gateway".into(), "run".into(), "--replace".into()],
            );
        }
    }
    c.ok(starts(&w, "beta", 0).map_err(|e| format!("beta: stand-in starts: {e}")));
    c.ok(one_supervisor_each(&w));
    match boot_lines_when(&w, |l| {
        ["alpha", "beta", "gamma"].iter().all(|p| l.iter().any(|x| x.profile == *p))
    }) {
        Ok(lines) => {
            // The first line of each: how its slot was created. (beta has a later `updated`
            // line: the relist barrier edited its `run` and the daemon repaired it.)
            let first = |p: &str| lines.iter().find(|l| l.profile == p).map(|l| l.action.clone());
            c.eq("alpha: first action", first("alpha"), Some("started".into()));
            c.eq("beta: first action", first("beta"), Some("registered".into()));
            c.eq("gamma: first action", first("gamma"), Some("started".into()));
        }
        Err(e) => c.check(false, e),
    }
    c.finish();
}

#[test]
fn rm_rf_and_rename_remove_exactly_their_slots() {
    root_only!();
    let w = World::new();
    for n in ["aa", "bb", "keep", "marker", "tomb"] {
        w.profile(n).desired("running");
    }
    w.profile("idle");
    let d = Daemon::start(&w, &[("HERMES_RECONCILER_REMOVE_GRACE_MS", SHORT_GRACE_MS)]);
    converge(
        &w,
        &d,
        &[
            ("aa", Want::Up),
            ("bb", Want::Up),
            ("keep", Want::Up),
            ("marker", Want::Up),
            ("tomb", Want::Up),
            ("idle", Want::Down),
        ],
    );
    let untouched = ["default", "keep", "idle"];
    // Each untouched slot's files and its gateway's and logger's pids.
    let fingerprint = |p: &&str| {
        (
            slot_snapshot(&w.slot(p)),
            svstat(&w.slot(p)).unwrap().pid,
            svstat(&w.slot(p).join("log")).unwrap().pid,
        )
    };
    let before: Vec<_> = untouched.iter().map(fingerprint).collect();

    // rm -rf of a profile: its slot, supervisors and gateway go.
    fs::remove_dir_all(w.profile_dir("aa")).unwrap();
    slot_fully_gone(&w, &d, "aa");

    // mv bb cc: bb's slot goes, cc's comes (and runs: same state file).
    fs::rename(w.profile_dir("bb"), w.profile_dir("cc")).unwrap();
    slot_fully_gone(&w, &d, "bb");
    converge(&w, &d, &[("cc", Want::Up), ("keep", Want::Up), ("idle", Want::Down)]);

    // SOUL.md removed (the directory stays): the profile is gone.
    fs::remove_file(w.profile_dir("marker").join("SOUL.md")).unwrap();
    slot_fully_gone(&w, &d, "marker");

    // A tombstone written (`profiles/.deleted` did not exist yet): the profile is gone...
    fs::create_dir(w.home.join("profiles/.deleted")).unwrap();
    fs::write(w.home.join("profiles/.deleted/tomb"), "").unwrap();
    slot_fully_gone(&w, &d, "tomb");
    // ...until the tombstone is taken away again.
    fs::remove_file(w.home.join("profiles/.deleted/tomb")).unwrap();
    converge(&w, &d, &[("tomb", Want::Up)]);

    let mut c = Checks::new();
    c.eq("gateway slots", gateway_slots(&w.scandir), slot_set(["cc", "default", "idle", "keep", "tomb"]));
    let after: Vec<_> = untouched.iter().map(fingerprint).collect();
    for (i, p) in untouched.iter().enumerate() {
        c.check(before[i] == after[i], format!("{p}: slot files or pids changed"));
    }
    c.ok(starts(&w, "keep", 1).map_err(|e| format!("keep: stand-in starts: {e}")));
    c.ok(starts(&w, "cc", 1).map_err(|e| format!("cc: stand-in starts: {e}")));
    c.ok(starts(&w, "tomb", 2).map_err(|e| format!("tomb: stand-in starts (removed, then back): {e}")));
    c.ok(one_supervisor_each(&w));
    let hidden: Vec<String> =
        entries(&w.scandir).into_iter().filter(|e| e.starts_with(".gateway-")).collect();
    c.eq("hidden leftovers", hidden, Vec::<String>::new());
    match boot_lines_when(&w, |l| {
        ["aa", "bb", "marker", "tomb"].iter().all(|p| has_line(l, p, "unregistered"))
    }) {
        Ok(lines) => {
            for p in ["aa", "bb", "marker", "tomb"] {
                c.check(
                    lines.iter().any(|l| l.profile == p && l.action == "unregistered"),
                    format!("{p}: no unregistered line in container-boot.log"),
                );
            }
        }
        Err(e) => c.check(false, e),
    }
    c.finish();
}

#[test]
fn profiles_dir_deleted_and_recreated() {
    root_only!();
    let w = World::new();
    w.profile("old1").desired("running");
    w.profile("old2");
    let d = Daemon::start(&w, &[("HERMES_RECONCILER_REMOVE_GRACE_MS", SHORT_GRACE_MS)]);
    converge(&w, &d, &[("old1", Want::Up), ("old2", Want::Down)]);

    fs::remove_dir_all(w.home.join("profiles")).unwrap();
    fs::create_dir(w.home.join("profiles")).unwrap();
    w.profile("new1").desired("running");
    w.profile("new2");

    converge(&w, &d, &[("new1", Want::Up), ("new2", Want::Down), ("default", Want::Down)]);
    slot_fully_gone(&w, &d, "old1");
    slot_fully_gone(&w, &d, "old2");
    let mut c = Checks::new();
    c.eq("gateway slots", gateway_slots(&w.scandir), slot_set(["default", "new1", "new2"]));
    c.ok(one_supervisor_each(&w));
    c.finish();
    // The watches follow the new directory: a later profile is seen too.
    w.profile("new3").desired("running");
    converge(&w, &d, &[("new3", Want::Up)]);
}

#[test]
fn home_created_after_the_daemon_started() {
    root_only!();
    let w = World::new();
    fs::remove_dir_all(&w.home).unwrap();
    // No periodic re-list within the test: only inotify can make it converge.
    let d = Daemon::start(&w, &[("HERMES_RECONCILER_RESYNC_SECS", "3600")]);
    converge(&w, &d, &[("default", Want::Down)]);

    // The root slot's logger (`mkdir -p $HERMES_HOME/logs/gateways/default`, run as root here
    // because HERMES_RUN_AS is empty) may already have made the home: create what is missing.
    fs::create_dir_all(w.home.join(".standin")).unwrap();
    set_desired(&w.home, "running");
    w.profile("first").desired("running");
    w.profile("second");
    converge(&w, &d, &[("default", Want::Up), ("first", Want::Up), ("second", Want::Down)]);
    let mut c = Checks::new();
    c.ok(starts(&w, "default", 1).map_err(|e| format!("default: stand-in starts: {e}")));
    c.ok(starts(&w, "first", 1).map_err(|e| format!("first: stand-in starts: {e}")));
    c.ok(one_supervisor_each(&w));
    c.finish();
}

#[test]
fn svscan_started_two_seconds_after_the_daemon() {
    root_only!();
    let mut w = World::without_svscan();
    w.profile("early").desired("running");
    w.profile("quiet");
    fs::remove_dir(&w.scandir).unwrap();
    let d = Daemon::spawn(&w, &[]);

    // Neither the scandir nor s6-svscan: not ready, retrying.
    std::thread::sleep(Duration::from_secs(1));
    fs::create_dir(&w.scandir).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let r = d.readiness();
    assert!(r.bytes.is_empty() && !r.eof, "ready before s6-svscan exists: {r:?}\nstderr:\n{}", d.stderr());
    w.start_svscan();
    d.wait_ready();
    converge(&w, &d, &[("default", Want::Down), ("early", Want::Up), ("quiet", Want::Down)]);

    let mut c = Checks::new();
    c.check(
        !d.log_lines_with(&["waiting for s6-svscan"]).is_empty(),
        format!("no 'waiting for s6-svscan' report:\n{}", d.stderr()),
    );
    c.ok(d.readiness_is_one_newline());
    c.ok(starts(&w, "early", 1).map_err(|e| format!("early: stand-in starts: {e}")));
    c.ok(one_supervisor_each(&w));
    c.finish();
}

#[test]
fn changes_made_while_the_daemon_was_down_converge_when_it_starts() {
    root_only!();
    let w = World::new();
    w.profile("stays").desired("running");
    w.profile("goes").desired("running");
    let later = w.profile("later");
    let mut d = Daemon::start(&w, &[("HERMES_RECONCILER_REMOVE_GRACE_MS", SHORT_GRACE_MS)]);
    converge(&w, &d, &[("stays", Want::Up), ("goes", Want::Up), ("later", Want::Down)]);
    let stays_pid = svstat(&w.slot("stays")).unwrap().pid;
    d.stop();

    fs::remove_dir_all(w.profile_dir("goes")).unwrap();
    set_desired(&later.dir, "running");
    w.profile("newcomer").desired("running");

    let d = Daemon::start(&w, &[("HERMES_RECONCILER_REMOVE_GRACE_MS", SHORT_GRACE_MS)]);
    converge(&w, &d, &[("stays", Want::Up), ("later", Want::Up), ("newcomer", Want::Up)]);
    slot_fully_gone(&w, &d, "goes");
    let mut c = Checks::new();
    c.eq("stays: pid", svstat(&w.slot("stays")).unwrap().pid, stays_pid);
    c.ok(starts(&w, "stays", 1).map_err(|e| format!("stays: stand-in starts: {e}")));
    c.eq("gateway slots", gateway_slots(&w.scandir), slot_set(["default", "later", "newcomer", "stays"]));
    c.ok(one_supervisor_each(&w));
    c.finish();
}

/// Invalid and reserved names appearing under a running daemon: skipped with one warning and
/// one `skipped` line each, however many re-lists follow; no slot; the others unaffected.
#[test]
fn invalid_names_are_skipped_once_under_the_daemon() {
    root_only!();
    let w = World::new();
    w.profile("fine").desired("running");
    let d = Daemon::start(&w, &[("HERMES_RECONCILER_RESYNC_SECS", "1")]);
    converge(&w, &d, &[("fine", Want::Up)]);
    w.profile("Bad").desired("running");
    w.profile("default").desired("running");
    for _ in 0..3 {
        relist_barrier(&w, &d, "fine");
    }
    let mut c = Checks::new();
    c.eq("gateway slots", gateway_slots(&w.scandir), slot_set(["default", "fine"]));
    c.ok(slot_matches(&w.slot("default"), Want::Down));
    c.ok(starts(&w, "fine", 1));
    c.eq("warnings naming profiles/Bad", d.log_lines_with(&["WARN", "profiles/Bad"]).len(), 1);
    c.eq("warnings naming profiles/default", d.log_lines_with(&["WARN", "profiles/default"]).len(), 1);
    match w.boot_lines() {
        Ok(lines) => {
            let skips = |p: &str| {
                lines
                    .iter()
                    .filter(|l| l.profile == p && l.action == "skipped")
                    .map(|l| l.get("reason").map(str::to_owned))
                    .collect::<Vec<_>>()
            };
            c.eq("Bad: skipped lines", skips("Bad"), vec![Some("invalid-name".to_string())]);
            c.eq("default: skipped lines", skips("default"), vec![Some("reserved-name".to_string())]);
        }
        Err(e) => c.check(false, e),
    }
    c.finish();
}

#[test]
fn forty_profiles_created_at_once_all_converge() {
    root_only!();
    let w = World::new();
    let d = Daemon::start(&w, &[]);
    let names: Vec<String> = (0..40).map(|i| format!("p{i:02}")).collect();
    for (i, n) in names.iter().enumerate() {
        let p = w.profile(n);
        if i % 4 != 3 {
            set_desired(&p.dir, "running");
        }
    }
    let pairs: Vec<(&str, Want)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), if i % 4 != 3 { Want::Up } else { Want::Down }))
        .collect();
    converge(&w, &d, &pairs);
    let mut c = Checks::new();
    for (n, want) in &pairs {
        c.ok(starts(&w, n, usize::from(*want == Want::Up)));
    }
    c.ok(one_supervisor_each(&w));
    let mut ports = std::collections::BTreeSet::new();
    for n in &names {
        let run = read(&w.slot(n).join("run"));
        c.check(
            port_in_run_script(&run).is_some_and(|p| ports.insert(p)),
            format!("{n}: missing or shared port"),
        );
    }
    c.finish();
}

/// SPEC §6.3: the watches on `$HERMES_HOME` are re-established when it is removed and
/// recreated. (The root slot's logger keeps files open under `$HERMES_HOME/logs/`, which pins
/// the deleted directory: the kernel then sends no IN_DELETE_SELF for it, only the parent sees
/// the deletion.) No periodic re-list within the test: only the watches can make it converge.
#[test]
fn home_deleted_and_recreated_under_the_daemon() {
    root_only!();
    let w = World::new();
    w.profile("before").desired("running");
    let d = Daemon::start(
        &w,
        &[("HERMES_RECONCILER_RESYNC_SECS", "3600"), ("HERMES_RECONCILER_REMOVE_GRACE_MS", SHORT_GRACE_MS)],
    );
    converge(&w, &d, &[("default", Want::Down), ("before", Want::Up)]);

    // Loggers write under the home while it is deleted: retry until it is gone.
    wait_until("the home deleted", WAIT, || fs::remove_dir_all(&w.home).is_ok() || !w.home.exists());
    slot_fully_gone(&w, &d, "before");
    // The root slot stays (the root profile always exists), and loggers may recreate parts of
    // the home: create what is missing.
    fs::create_dir_all(w.home.join(".standin")).unwrap();
    set_desired(&w.home, "running");
    w.profile("after").desired("running");
    converge(&w, &d, &[("default", Want::Up), ("after", Want::Up)]);
    let mut c = Checks::new();
    c.eq("gateway slots", gateway_slots(&w.scandir), slot_set(["after", "default"]));
    c.ok(starts(&w, "after", 1));
    c.ok(one_supervisor_each(&w));
    c.finish();
}
