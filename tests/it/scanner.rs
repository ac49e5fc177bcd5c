//! The s6 scanner as s6-overlay ships it (issue 6), run against both s6 generations: the host's
//! (2.11) and, with `HERMES_TEST_S6_ROOT`, 2.13 from a trixie root and 2.15 from a sid root
//! (scripts/test.sh runs all three).
//!
//! - publishing and removing slots in quick succession never leaves a published slot
//!   unsupervised nor a removed one supervised;
//! - a dangling symlink in the scandir is named in the daemon's report while it is there, and
//!   the slot created meanwhile is supervised once it is gone;
//! - with a small service limit, the capacity guard counts loggers and other entries, so s6
//!   keeps starting and pruning; the profiles over the cap are reported;
//! - the status decoder reads what this generation of s6 writes.

use crate::kit::*;
use std::collections::BTreeSet;
use std::fs;
use std::time::Duration;

/// The stand-in gateway of `name` has started at least once.
fn gateway_ran(w: &World, name: &str) -> bool {
    !w.standin_records(name).is_empty()
}

#[test]
fn publish_then_remove_300_rounds_never_strands_a_slot() {
    root_only!();
    const ROUNDS: usize = 300;
    let mut w = World::without_svscan();
    // Room for 300 victims, 300 newcomers and the root, loggers counted.
    let limit = if s6_version() >= (2, 12) { ["-C", "2000"] } else { ["-c", "1000"] };
    w.start_svscan_with(&limit);
    let victim = |i: usize| format!("v{i:03}");
    let fresh = |i: usize| format!("p{i:03}");
    for i in 0..ROUNDS {
        w.profile(&victim(i));
    }
    let mut d = Daemon::start(
        &w,
        &[("HERMES_RECONCILER_REMOVE_GRACE_MS", "0"), ("HERMES_RECONCILER_MAX_PROFILES", "700")],
    );
    let r = poll(Duration::from_secs(60), || {
        let missing = (0..ROUNDS).filter(|i| !w.slot(&victim(*i)).exists()).count();
        if missing == 0 { Ok(()) } else { Err(format!("{missing} victim slots missing")) }
    });
    must(&d, "victim slots created", r);
    for i in 0..ROUNDS {
        // Publish a profile, and remove another one immediately after.
        rename_in_profile(&w, &fresh(i), Some("running"));
        fs::remove_dir_all(w.profile_dir(&victim(i))).unwrap();
    }
    let r = poll(Duration::from_secs(120), || {
        let slots = gateway_slots(&w.scandir);
        let stranded: Vec<String> =
            (0..ROUNDS).map(victim).filter(|v| slots.contains(&slot_name(v))).collect();
        if !stranded.is_empty() {
            return Err(format!(
                "{} removed profiles still have a slot, e.g. {}",
                stranded.len(),
                stranded[0]
            ));
        }
        let mut not_running = Vec::new();
        for i in 0..ROUNDS {
            let n = fresh(i);
            match svstat(&w.slot(&n)) {
                Ok(st) if st.up && gateway_ran(&w, &n) => {}
                Ok(st) => not_running.push(format!("{n}: {st:?}")),
                Err(e) => not_running.push(format!("{n}: {e}")),
            }
        }
        if !not_running.is_empty() {
            return Err(format!(
                "{} published gateways not running, e.g. {}",
                not_running.len(),
                not_running[0]
            ));
        }
        let sup = supervisors(&w);
        let left: Vec<&String> = sup.keys().filter(|s| s.contains("-v")).collect();
        if !left.is_empty() {
            return Err(format!("supervisors left for removed profiles: {left:?}"));
        }
        one_supervisor_each(&w)
    });
    must(&d, "every published gateway runs, every removed supervisor is gone", r);
    let r = poll(WAIT, || {
        let hidden: Vec<String> =
            entries(&w.scandir).into_iter().filter(|e| e.starts_with(".gateway-")).collect();
        if hidden.is_empty() { Ok(()) } else { Err(format!("hidden leftovers: {hidden:?}")) }
    });
    must(&d, "no hidden leftovers", r);
    let recovered = d.log_lines_with(&["re-publishing them as new directories"]).len();
    eprintln!(
        "s6 {:?}: {ROUNDS} publish-then-remove rounds, {recovered} confirmation(s) found slots stuck",
        s6_version()
    );
    d.stop();
}

#[test]
fn dangling_symlink_is_reported_and_the_slot_supervised_once_it_is_gone() {
    root_only!();
    let w = World::new();
    let link = w.scandir.join("broken-service");
    std::os::unix::fs::symlink(w.root.join("nowhere"), &link).unwrap();
    let mut d = Daemon::start(&w, &[("HERMES_RECONCILER_RESYNC_SECS", "1")]);
    rename_in_profile(&w, "late", Some("running"));
    let r = poll(WAIT, || {
        let named = d.log_lines_with(&["broken-service", "dangling symlink"]);
        if named.is_empty() { Err("the daemon has not named the symlink".into()) } else { Ok(()) }
    });
    must(&d, "daemon names the dangling symlink", r);
    // The record `status` reads is written at the end of the pass that logged the warning.
    let r = poll(WAIT, || {
        let status = w.run(&["status", "--json"]);
        status.assert_code(0);
        let report = status.json()["scandir"].to_string();
        if report.contains("broken-service") {
            Ok(())
        } else {
            Err(format!("status does not name it: {report}"))
        }
    });
    must(&d, "status names the dangling symlink", r);
    fs::remove_file(&link).unwrap();
    let r = poll(Duration::from_secs(60), || {
        let st = svstat(&w.slot("late"))?;
        if st.up { Ok(()) } else { Err(format!("late not up: {st:?}")) }
    });
    must(&d, "slot supervised and up once the symlink is gone", r);
    d.stop();
}

/// Two CPU-burning processes (`yes >/dev/null`) for as long as this lives: the load a CI box
/// or a busy container host puts on s6-svscan and the daemon.
struct Burners(Vec<std::process::Child>);

impl Burners {
    fn start() -> Burners {
        let spawn = || {
            std::process::Command::new("yes")
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("spawn yes (CPU burner)")
        };
        Burners(vec![spawn(), spawn()])
    }
}

impl Drop for Burners {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn small_service_limit_keeps_s6_starting_and_pruning() {
    root_only!();
    let _load = Burners::start();
    let mut w = World::without_svscan();
    // 40 services with loggers counted separately: `-C 40` on s6 >= 2.12, `-c 20` (pairs) on 2.11.
    let limit = if s6_version() >= (2, 12) { ["-C", "40"] } else { ["-c", "20"] };
    w.start_svscan_with(&limit);
    let mut names: Vec<String> = (0..30).map(|i| format!("c{i:02}")).collect();
    for n in &names {
        w.profile(n).desired("running");
    }
    let mut d = Daemon::start(&w, &[("HERMES_RECONCILER_REMOVE_GRACE_MS", "0")]);
    // (40 - 1 for the kick entry) / 2 = 19 slots: the root and the first 18 names.
    let admitted = |names: &[String]| -> BTreeSet<String> {
        let mut s: BTreeSet<String> = names.iter().take(18).map(|n| slot_name(n)).collect();
        s.insert(slot_name("default"));
        s
    };
    let check = |want: BTreeSet<String>| {
        let w = &w;
        move || -> Result<(), String> {
            let slots = gateway_slots(&w.scandir);
            if slots != want {
                return Err(format!("slots {slots:?}, want {want:?}"));
            }
            for s in &want {
                let st = svstat(&w.scandir.join(s))?;
                if s != &slot_name("default") && !st.up {
                    return Err(format!("{s} not up: {st:?}"));
                }
            }
            let hidden: Vec<String> =
                entries(&w.scandir).into_iter().filter(|e| e.starts_with(".gateway-")).collect();
            if !hidden.is_empty() {
                return Err(format!("hidden entries remain: {hidden:?}"));
            }
            one_supervisor_each(w)
        }
    };
    must(&d, "first 18 named slots up", poll(WAIT, check(admitted(&names))));
    let over = d.log_lines_with(&["c29", "not given a slot"]);
    assert!(!over.is_empty(), "c29 not reported as over the cap\n{}", d.stderr());
    let log = w.boot_log();
    // SPEC §9.3: the files of a profile over the cap are not read, so its intent is unknown.
    assert!(log.contains("profile=c29 prior_state=None action=skipped"), "{log}");
    assert!(log.contains("reason=capacity"), "{log}");
    // Five rounds of churn at the limit: remove the two lowest admitted profiles, add two new
    // ones (over the cap: their names sort last). The next two names must get slots that s6
    // starts, which only works if they are published once the removed supervisors are gone.
    let mut worst = Duration::ZERO;
    for round in 0..5 {
        let t0 = std::time::Instant::now();
        for _ in 0..2 {
            let gone = names.remove(0);
            fs::remove_dir_all(w.profile_dir(&gone)).unwrap();
        }
        for k in 0..2 {
            let n = format!("c{}", 30 + 2 * round + k);
            w.profile(&n).desired("running");
            names.push(n);
        }
        if round % 2 == 0 {
            // A full re-list sees the removals and the room they free in one pass (the case
            // that stranded slots: published while the removed supervisors still counted).
            d.signal(nix::sys::signal::Signal::SIGHUP);
        }
        // A hang bound, not a performance check.
        must(
            &d,
            &format!("round {round}: pruned and replaced within the limit"),
            poll(Duration::from_secs(120), check(admitted(&names))),
        );
        let took = t0.elapsed();
        worst = worst.max(took);
        eprintln!("churn round {round} on s6 {:?}: converged in {took:?}", s6_version());
    }
    eprintln!("churn on s6 {:?}: worst round {worst:?}", s6_version());
    d.stop();
}

#[test]
fn status_decoder_reads_this_generation_of_s6() {
    root_only!();
    let w = World::new();
    w.profile("up").desired("running");
    w.profile("down").desired("stopped");
    w.once();
    let want_size = if s6_version() >= (2, 13) && s6_version() < (2, 14) { 43 } else { 35 };
    for name in ["up", "down", "default"] {
        let dir = w.slot(name);
        let r = poll(WAIT, || {
            let st = svstat(&dir)?;
            let ours = hermes_reconciler::s6::read_status(&dir)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "no status file".to_string())?;
            let normally_up = hermes_reconciler::s6::status::normally_up(&dir).map_err(|e| e.to_string())?;
            let line = ours.svstat_line(normally_up);
            let theirs = format!(
                "{} {} {} {} {} {}",
                st.up,
                st.wanted_up,
                st.normally_up,
                st.ready,
                st.pid.unwrap_or(-1),
                st.exitcode
            );
            if line.trim() != theirs {
                return Err(format!("decoder says {line:?}, s6-svstat says {theirs:?}"));
            }
            Ok(())
        });
        if let Err(e) = r {
            panic!("{name}: {e}");
        }
        let size = fs::metadata(dir.join("supervise/status")).unwrap().len();
        assert_eq!(size, want_size, "{name}: status file size on s6 {:?}", s6_version());
    }
}

/// The daemon keeps the lock file of a slot nothing touched and asks it with one `fcntl` at
/// each re-list (issue 15): that holds only because s6-supervise opens `supervise/lock`
/// without replacing it. Shown on this generation: a killed supervisor's successor is seen
/// through the file opened before.
#[test]
fn a_lock_file_held_open_sees_the_next_supervisor_of_this_generation() {
    use hermes_reconciler::s6::{Liveness, supervisor_by, supervisor_in, supervisor_pid};
    root_only!();
    let w = World::new();
    w.profile("up").desired("running");
    w.once();
    let dir = w.slot("up");
    let first = poll(WAIT, || match supervisor_pid(&dir) {
        Ok(Some(pid)) if pid > 0 => Ok(pid),
        other => Err(format!("no supervisor yet: {other:?}")),
    })
    .unwrap();
    let (live, held) = supervisor_in(nix::fcntl::AT_FDCWD, &dir);
    assert!(matches!(live, Liveness::Alive(p) if p == first), "{live:?}");
    let held = held.expect("the lock file is opened");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first), nix::sys::signal::Signal::SIGKILL).unwrap();
    let next = poll(WAIT, || match supervisor_by(&held) {
        Liveness::Alive(pid) if pid != first => Ok(pid),
        other => Err(format!("through the held lock file: {other:?}")),
    })
    .unwrap();
    assert_eq!(supervisor_pid(&dir).unwrap(), Some(next), "the path and the held file agree");
}

#[test]
fn sigterm_during_a_300_profile_storm_exits_at_once_and_a_restart_finishes_the_work() {
    root_only!();
    const N: usize = 300;
    let w = World::new();
    let mut d = Daemon::start(&w, &[]);
    let name = |i: usize| format!("s{i:03}");
    // Build every profile outside `profiles/`, then rename them in as fast as possible.
    let staging = w.root.join("incoming");
    for i in 0..N {
        let dir = staging.join(name(i));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("SOUL.md"), "# soul\n").unwrap();
        set_desired(&dir, "running");
    }
    fs::create_dir_all(w.home.join("profiles")).unwrap();
    let t0 = std::time::Instant::now();
    for i in 0..N {
        fs::rename(staging.join(name(i)), w.home.join("profiles").join(name(i))).unwrap();
    }
    std::thread::sleep(Duration::from_millis(150).saturating_sub(t0.elapsed()));
    let slots_at_signal = gateway_slots(&w.scandir).len();
    let signalled = std::time::Instant::now();
    d.signal(nix::sys::signal::Signal::SIGTERM);
    // A hang bound; the time taken is printed (SPEC §6.4 promises one second).
    let status = d.wait_exit(Duration::from_secs(10));
    let took = signalled.elapsed();
    eprintln!(
        "SIGTERM {:?} into the storm, {slots_at_signal} slots published: exited {status:?} after {took:?} (s6 {:?})",
        signalled - t0,
        s6_version()
    );
    match status {
        Some(st) if st.success() => {}
        other => panic!("SIGTERM during the storm gave {other:?}\n{}", d.stderr()),
    }
    // SPEC §6.4 promises one second; the time is printed above. The bound asserted is twice
    // that, so a loaded machine (parallel tests, CPU burners: the process's own exit and its
    // reaping are slowed too) does not make it flaky, while a daemon that finishes its pass or
    // sits out a supervisor wait (1.5 s without progress, then more) still fails it.
    assert!(took <= Duration::from_secs(2), "exit took {took:?} after SIGTERM\n{}", d.stderr());
    // Nothing half-built is visible: every published slot is complete.
    for s in gateway_slots(&w.scandir) {
        for f in ["run", "finish", "log/run", "supervise/control", "data"] {
            assert!(w.scandir.join(&s).join(f).exists(), "{s}/{f} missing after the stop");
        }
    }
    // Gateways started before the stop, to check that the restart leaves them alone.
    let started_before: Vec<usize> = (0..N).filter(|i| gateway_ran(&w, &name(*i))).collect();
    // Not `start`: its readiness bound is for small worlds; this boot pass has 300 profiles,
    // and the convergence poll below is the hang bound.
    let mut d = Daemon::spawn(&w, &[]);
    let r = poll(Duration::from_secs(120), || {
        let mut not_up = Vec::new();
        for i in 0..N {
            match svstat(&w.slot(&name(i))) {
                Ok(st) if st.up && gateway_ran(&w, &name(i)) => {}
                Ok(st) => not_up.push(format!("{}: {st:?}", name(i))),
                Err(e) => not_up.push(e),
            }
        }
        if !not_up.is_empty() {
            return Err(format!("{} gateways not up, e.g. {}", not_up.len(), not_up[0]));
        }
        let hidden: Vec<String> =
            entries(&w.scandir).into_iter().filter(|e| e.starts_with(".gateway-")).collect();
        if !hidden.is_empty() {
            return Err(format!("hidden leftovers: {hidden:?}"));
        }
        one_supervisor_each(&w)
    });
    must(&d, "all 300 converge after the restart, one supervisor each", r);
    for i in &started_before {
        let n = w.standin_records(&name(*i)).len();
        assert_eq!(n, 1, "{}: started {n} times; the restart restarted a running gateway", name(*i));
    }
    for i in 0..N {
        must(&d, "one start per gateway", starts(&w, &name(i), 1));
    }
    d.stop();
}

/// One round of "publish A, then hide B" straight against s6-svscan, without the daemon:
/// `confirm` waits until A is supervised before B is hidden (the daemon's discipline);
/// otherwise B is hidden about half a millisecond later. Returns whether A ended up
/// unsupervised (stuck).
fn publish_then_hide(w: &World, i: usize, confirm: bool) -> bool {
    use hermes_reconciler::s6::{rescan, supervisor_pid};
    let supervised = |d: &std::path::Path| matches!(supervisor_pid(d), Ok(Some(_)));
    let tag = if confirm { "c" } else { "n" };
    let a = w.scandir.join(format!("a{tag}{i:03}"));
    let b = w.scandir.join(format!("b{tag}{i:03}"));
    let staging = w.scandir.join(format!(".a{tag}{i:03}"));
    fs::create_dir(&staging).unwrap();
    fs::write(staging.join("down"), "").unwrap();
    fs::write(staging.join("run"), "#!/bin/sh\nexec sleep 1000\n").unwrap();
    fs::set_permissions(staging.join("run"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    fs::rename(&staging, &a).unwrap();
    rescan(&w.scandir, false).unwrap();
    if confirm {
        // The daemon's confirmation: nothing else changes until A is supervised (hang bound).
        let _ = poll(Duration::from_secs(20), || if supervised(&a) { Ok(()) } else { Err(String::new()) });
    } else {
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_micros(500) {}
    }
    fs::rename(&b, w.scandir.join(format!(".b{tag}{i:03}.rm"))).unwrap();
    rescan(&w.scandir, true).unwrap();
    // A slot a failed scan met stays unsupervised for good on s6 >= 2.12 (until a scan meets
    // a brand-new directory, which the next round would publish): look before that.
    poll(Duration::from_secs(1), || if supervised(&a) { Ok(()) } else { Err(String::new()) }).is_err()
}

#[test]
fn publish_then_hide_strands_slots_unless_each_publish_is_confirmed() {
    root_only!();
    const ROUNDS: usize = 300;
    let mut w = World::without_svscan();
    let limit = if s6_version() >= (2, 12) { ["-C", "2000"] } else { ["-c", "1000"] };
    for tag in ["c", "n"] {
        for i in 0..ROUNDS {
            let b = w.scandir.join(format!("b{tag}{i:03}"));
            fs::create_dir(&b).unwrap();
            fs::write(b.join("down"), "").unwrap();
            fs::write(b.join("run"), "#!/bin/sh\nexec sleep 1000\n").unwrap();
            fs::set_permissions(b.join("run"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        }
    }
    w.start_svscan_with(&limit);
    let r = poll(Duration::from_secs(60), || {
        let n = supervisors(&w).keys().filter(|k| k.starts_with('b')).count();
        if n == 2 * ROUNDS { Ok(()) } else { Err(format!("{n} of {} victims supervised", 2 * ROUNDS)) }
    });
    r.unwrap();
    let without = (0..ROUNDS).filter(|i| publish_then_hide(&w, *i, false)).count();
    let with = (0..ROUNDS).filter(|i| publish_then_hide(&w, *i, true)).count();
    eprintln!(
        "s6 {:?}: publish-then-hide stuck rounds: {without}/{ROUNDS} without confirmation, {with}/{ROUNDS} with",
        s6_version()
    );
    assert_eq!(with, 0, "slots stranded although each publish was confirmed before the next change");
}

#[test]
fn sigterm_during_a_supervisor_confirmation_wait_exits_at_once() {
    root_only!();
    let mut w = World::new();
    let mut d = Daemon::start(&w, &[]);
    // A frozen s6-svscan keeps its control FIFO open but starts nothing: the daemon publishes
    // the slot, asks for a scan, and waits for a supervisor that does not come.
    let svscan = w.svscan.as_ref().and_then(|s| s.init_pid()).expect("s6-svscan");
    let svscan = nix::unistd::Pid::from_raw(svscan);
    nix::sys::signal::kill(svscan, nix::sys::signal::Signal::SIGSTOP).unwrap();
    rename_in_profile(&w, "waiting", Some("running"));
    let r = poll(WAIT, || if w.slot("waiting").is_dir() { Ok(()) } else { Err("not published".into()) });
    must(&d, "slot published", r);
    std::thread::sleep(Duration::from_millis(300));
    let signalled = std::time::Instant::now();
    d.signal(nix::sys::signal::Signal::SIGTERM);
    let status = d.wait_exit(Duration::from_secs(10));
    let took = signalled.elapsed();
    nix::sys::signal::kill(svscan, nix::sys::signal::Signal::SIGCONT).unwrap();
    eprintln!("SIGTERM during a confirmation wait: exited {status:?} after {took:?} (s6 {:?})", s6_version());
    match status {
        Some(st) if st.success() => {}
        other => panic!("SIGTERM during a confirmation wait gave {other:?}\n{}", d.stderr()),
    }
    // SPEC §6.4 promises one second; the time is printed above. The bound asserted is twice
    // that, so a loaded machine (parallel tests, CPU burners: the process's own exit and its
    // reaping are slowed too) does not make it flaky, while a daemon that finishes its pass or
    // sits out a supervisor wait (1.5 s without progress, then more) still fails it.
    assert!(took <= Duration::from_secs(2), "exit took {took:?} after SIGTERM\n{}", d.stderr());
    // The next start finishes the work.
    let mut d = Daemon::start(&w, &[]);
    converge(&w, &d, &[("waiting", Want::Up)]);
    must(&d, "one supervisor each", poll(WAIT, || one_supervisor_each(&w)));
    must(&d, "one start", starts(&w, "waiting", 1));
    d.stop();
    w.kill_svscan();
}
