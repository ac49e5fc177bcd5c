//! The daemon and intent on real s6: a marker that flaps within the removal grace and a state
//! file replaced a hundred times leave the running gateway alone; fifty quick `desired_state`
//! flips end on the last one; a gateway parked by exit 78 stays down across re-lists and a
//! daemon restart until `desired_state` takes a new value.

use crate::kit::*;
use std::fs;
use std::time::Duration;

fn up_pid(w: &World, profile: &str) -> Option<i64> {
    svstat(&w.slot(profile)).ok().filter(|s| s.up).and_then(|s| s.pid)
}

#[test]
fn flapping_marker_and_replaced_state_file_never_restart_the_gateway() {
    root_only!();
    let w = World::new();
    let steady = w.profile("steady").desired("running");
    w.profile("witness").desired("running");
    w.profile("canary");
    // The default grace (2000 ms): an editor replacing SOUL.md is back long before it ends.
    let d = Daemon::start(&w, &[("HERMES_RECONCILER_REMOVE_GRACE_MS", "2000")]);
    converge(&w, &d, &[("steady", Want::Up), ("witness", Want::Up), ("canary", Want::Down)]);
    let pid = up_pid(&w, "steady").expect("steady up");
    let mut c = Checks::new();

    // SOUL.md deleted and recreated within 100 ms, ten times.
    for _ in 0..10 {
        fs::remove_file(steady.dir.join("SOUL.md")).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        fs::write(steady.dir.join("SOUL.md"), "# soul, edited\n").unwrap();
        std::thread::sleep(Duration::from_millis(30));
        c.eq("steady pid while SOUL.md flaps", up_pid(&w, "steady"), Some(pid));
    }
    // A rename round-trip through a dot name (ignored by discovery), five times.
    let aside = w.home.join("profiles/.steady.moving");
    for _ in 0..5 {
        fs::rename(&steady.dir, &aside).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        fs::rename(&aside, &steady.dir).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        c.eq("steady pid while the profile is renamed back and forth", up_pid(&w, "steady"), Some(pid));
    }
    // gateway_state.json replaced by rename 100 times; desired_state stays `running`, the
    // gateway's own report (gateway_state) changes.
    let reports = ["running", "draining", "degraded", "starting", "stopped", "startup_failed"];
    for i in 0..100 {
        write_state(
            &steady.dir,
            &serde_json::json!({ "desired_state": "running", "gateway_state": reports[i % reports.len()] }),
        );
        if i % 10 == 0 {
            c.eq("steady pid while the state file is replaced", up_pid(&w, "steady"), Some(pid));
        }
    }
    // One last flap, at the moment a witness profile really goes: once the witness's slot has
    // been removed, the grace of the flap has run out as well.
    fs::remove_file(steady.dir.join("SOUL.md")).unwrap();
    fs::remove_dir_all(w.profile_dir("witness")).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    fs::write(steady.dir.join("SOUL.md"), "# soul, final\n").unwrap();
    must(
        &d,
        "witness removed",
        poll(WAIT, || {
            let (m, l) = supervisors_of(&w, "gateway-witness");
            if w.slot("witness").exists() || m + l > 0 {
                Err("gateway-witness still there".to_string())
            } else {
                Ok(())
            }
        }),
    );
    relist_barrier(&w, &d, "canary");

    c.ok(slot_matches(&w.slot("steady"), Want::Up));
    c.eq("steady pid at the end", up_pid(&w, "steady"), Some(pid));
    c.ok(starts(&w, "steady", 1).map_err(|e| format!("steady: stand-in starts: {e}")));
    c.eq("steady: supervisors", supervisors_of(&w, "gateway-steady"), (1, 1));
    match w.boot_lines() {
        Ok(lines) => {
            let acts: Vec<String> =
                lines.iter().filter(|l| l.profile == "steady").map(|l| l.action.clone()).collect();
            c.eq("steady: container-boot.log actions", acts, vec!["started".to_string()]);
        }
        Err(e) => c.check(false, e),
    }
    c.finish();
}

#[test]
fn fifty_quick_desired_state_flips_end_on_the_last_write() {
    root_only!();
    let w = World::new();
    let a = w.profile("flipa");
    let b = w.profile("flipb").desired("running");
    w.profile("canary");
    let d = Daemon::start(&w, &[]);
    converge(&w, &d, &[("flipa", Want::Down), ("flipb", Want::Up), ("canary", Want::Down)]);

    // flipa: running, stopped, ... (50 writes, the last is `stopped`);
    // flipb: stopped, running, ... (the last is `running`).
    for i in 0..50 {
        let (va, vb) = if i % 2 == 0 { ("running", "stopped") } else { ("stopped", "running") };
        set_desired(&a.dir, va);
        set_desired(&b.dir, vb);
    }
    converge(&w, &d, &[("flipa", Want::Down), ("flipb", Want::Up)]);
    // Still so after a full re-list (nothing was left half-applied).
    relist_barrier(&w, &d, "canary");
    converge(&w, &d, &[("flipa", Want::Down), ("flipb", Want::Up)]);
    let mut c = Checks::new();
    for (p, up) in [("flipa", false), ("flipb", true)] {
        if let Ok(st) = svstat(&w.slot(p)) {
            c.eq(&format!("{p}: wanted up"), st.wanted_up, up);
            c.eq(&format!("{p}: down file"), w.slot(p).join("down").exists(), !up);
            c.eq(&format!("{p}: normally up"), st.normally_up, up);
        }
    }
    c.ok(one_supervisor_each(&w));
    c.ok(status_agrees(&w, &["canary", "default", "flipa", "flipb"]).map(|_| ()));
    c.finish();
}

#[test]
fn exit_78_stays_down_across_relists_and_a_restart_until_desired_state_changes() {
    root_only!();
    let w = World::new();
    let fatal = w.profile("fatal").desired("running");
    w.profile("canary");
    w.standin_exit("fatal", 78);
    let mut d = Daemon::start(&w, &[]);
    converge(&w, &d, &[("fatal", Want::Parked), ("canary", Want::Down)]);
    let parked = |w: &World, when: &str, c: &mut Checks| {
        c.ok(slot_matches(&w.slot("fatal"), Want::Parked).map_err(|e| format!("{when}: {e}")));
        c.ok(starts(w, "fatal", 1).map_err(|e| format!("{when}: fatal stand-in starts: {e}")));
    };
    let mut c = Checks::new();
    parked(&w, "after the first pass", &mut c);

    for i in 1..=3 {
        relist_barrier(&w, &d, "canary");
        parked(&w, &format!("after re-list {i}"), &mut c);
    }
    d.stop();
    let d = Daemon::start(&w, &[]);
    relist_barrier(&w, &d, "canary");
    parked(&w, "after a daemon restart", &mut c);

    // Writing the same value again is not a new intent: the daemon commands s6 only when
    // desired_state takes a value different from the one it last applied (SPEC §6.2: a new
    // desired_state value). Still parked.
    set_desired(&fatal.dir, "running");
    relist_barrier(&w, &d, "canary");
    parked(&w, "after desired_state=running written again", &mut c);

    // A new value: `stopped` (down, with a down file), then `running` again: up. The exit-78
    // instruction of the stand-in is gone, so the gateway now stays up.
    fs::remove_file(w.home.join(".standin/fatal.exit")).unwrap();
    set_desired(&fatal.dir, "stopped");
    converge(&w, &d, &[("fatal", Want::Down)]);
    set_desired(&fatal.dir, "running");
    converge(&w, &d, &[("fatal", Want::Up)]);
    c.ok(starts(&w, "fatal", 2).map_err(|e| format!("fatal stand-in starts at the end: {e}")));
    c.ok(one_supervisor_each(&w));
    c.finish();
}

#[test]
fn multiplexing_never_starts_named_slots_but_applies_stops() {
    root_only!();
    let w = World::new();
    set_desired(&w.home, "running");
    let m1 = w.profile("m1").desired("running");
    w.profile("m2");
    let d = Daemon::start(&w, &[("GATEWAY_MULTIPLEX_PROFILES", "yes")]);
    converge(&w, &d, &[("default", Want::Up), ("m1", Want::Down), ("m2", Want::Down)]);

    // A new `running` intent is not applied to a named slot...
    let m2 = w.profile_dir("m2");
    set_desired(&m2, "running");
    relist_barrier(&w, &d, "m1");
    converge(&w, &d, &[("m1", Want::Down), ("m2", Want::Down)]);
    // ...but a slot brought up by hand is brought down by a new `stopped` intent.
    let st = std::process::Command::new("s6-svc")
        .arg("-u")
        .arg(w.slot("m1"))
        .env_clear()
        .env("PATH", PATH)
        .status()
        .expect("spawn s6-svc");
    assert!(st.success());
    wait_until("m1 up by hand", WAIT, || svstat(&w.slot("m1")).is_ok_and(|s| s.up));
    set_desired(&m1.dir, "stopped");
    converge(&w, &d, &[("m1", Want::Down)]);
    let mut c = Checks::new();
    c.ok(starts(&w, "m2", 0));
    c.ok(starts(&w, "default", 1));
    match boot_lines_when(&w, |l| has_line(l, "m1", "stopped") && has_line(l, "m2", "skipped")) {
        Ok(lines) => {
            c.check(
                lines.iter().any(|l| {
                    l.profile == "m2" && l.action == "skipped" && l.get("reason") == Some("multiplexed")
                }),
                format!("no `skipped reason=multiplexed` line for m2: {lines:?}"),
            );
            c.check(
                lines.iter().any(|l| l.profile == "m1" && l.action == "stopped"),
                "no `stopped` line for m1",
            );
        }
        Err(e) => c.check(false, e),
    }
    c.finish();
}

/// SPEC §6.2: "A slot whose finish script parked it (exit 125) stays parked while the intent
/// is unchanged", and s6 is commanded only when desired_state takes a value different from the
/// one last applied. Here the value never changes (`running` throughout); the file is only
/// briefly missing (deleted and recreated, as a non-atomic replace does) or briefly empty (a
/// truncating rewrite of the same content, as `echo ... > gateway_state.json` does). Neither
/// is a new intent: the parked gateway must not be started again.
#[test]
fn parked_gateway_stays_parked_when_the_same_desired_state_is_rewritten() {
    root_only!();
    let w = World::new();
    let fatal = w.profile("fatal").desired("running");
    w.profile("canary");
    w.standin_exit("fatal", 78);
    let d = Daemon::start(&w, &[]);
    converge(&w, &d, &[("fatal", Want::Parked), ("canary", Want::Down)]);
    let content = r#"{"desired_state":"running"}"#;
    let mut c = Checks::new();

    // Deleted, seen missing by a full re-list, recreated with the same value.
    fs::remove_file(fatal.state_path()).unwrap();
    relist_barrier(&w, &d, "canary");
    fs::write(fatal.state_path(), content).unwrap();
    relist_barrier(&w, &d, "canary");
    c.ok(slot_matches(&w.slot("fatal"), Want::Parked).map_err(|e| format!("after delete + recreate: {e}")));
    c.ok(starts(&w, "fatal", 1).map_err(|e| format!("after delete + recreate: {e}")));

    // Rewritten in place (truncate, write) with the same value, twenty times.
    for _ in 0..20 {
        fs::write(fatal.state_path(), content).unwrap();
    }
    relist_barrier(&w, &d, "canary");
    c.ok(slot_matches(&w.slot("fatal"), Want::Parked).map_err(|e| format!("after truncating rewrites: {e}")));
    c.ok(starts(&w, "fatal", 1).map_err(|e| format!("after truncating rewrites: {e}")));
    c.finish();
}
