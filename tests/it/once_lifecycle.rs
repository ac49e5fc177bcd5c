//! Life of slots across passes on real s6: the finish mapping of gateway exit codes, a second
//! `once` that changes nothing, and container restarts (the pid namespace killed, the tmpfs
//! scandir emptied or partly lost) with the boot-pass sweep of `gateway.pid`/`processes.json`.

use crate::kit::*;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[test]
fn finish_parks_exit_0_and_78_and_restarts_exit_1() {
    root_only!();
    let w = World::new();
    for n in ["clean0", "config78", "crash1", "steady"] {
        w.profile(n).desired("running");
    }
    w.standin_exit("clean0", 0);
    w.standin_exit("config78", 78);
    w.standin_exit("crash1", 1);
    w.once();
    let mut c = Checks::new();

    // exit 1: s6 restarts it, and it stays wanted up.
    c.ok(poll(WAIT, || {
        let n = w.standin_records("crash1").len();
        let st = svstat(&w.slot("crash1"))?;
        if n >= 2 && st.wanted_up { Ok(()) } else { Err(format!("crash1: {n} start(s), {st:?}")) }
    }));
    // exit 0 / 78: finish exits 125, want-up is cleared and nothing restarts it. By now crash1
    // has been restarted at least once, so a restart of these would have happened as well.
    c.ok(wait_slots(
        &w.scandir,
        &wants(&[("clean0", Want::Parked), ("config78", Want::Parked), ("steady", Want::Up)]),
    ));
    for n in ["clean0", "config78"] {
        c.eq(&format!("{n}: stand-in starts"), w.standin_records(n).len(), 1);
        if let Ok(st) = svstat(&w.slot(n)) {
            c.check(!st.wanted_up && !st.up, format!("{n}: {st:?}"));
        }
    }
    c.eq("steady: stand-in starts", w.standin_records("steady").len(), 1);
    c.finish();
}

/// Everything a second pass must leave alone.
#[derive(Debug, PartialEq)]
struct Snapshot {
    scandir: std::collections::BTreeSet<String>,
    slots: BTreeMap<String, BTreeMap<PathBuf, FileId>>,
    pids: BTreeMap<String, (Option<i64>, Option<i64>)>,
    starts: BTreeMap<String, usize>,
    boot_log: String,
    ports_file: String,
}

fn snapshot(w: &World, profiles: &[&str]) -> Snapshot {
    let mut slots = BTreeMap::new();
    let mut pids = BTreeMap::new();
    let mut starts = BTreeMap::new();
    for p in profiles {
        let slot = w.slot(p);
        slots.insert(p.to_string(), slot_snapshot(&slot));
        let pid = svstat(&slot).ok().and_then(|s| s.pid);
        let log_pid = svstat(&slot.join("log")).ok().and_then(|s| s.pid);
        pids.insert(p.to_string(), (pid, log_pid));
        starts.insert(p.to_string(), w.standin_records(p).len());
    }
    Snapshot {
        scandir: entries(&w.scandir),
        slots,
        pids,
        starts,
        boot_log: w.boot_log(),
        ports_file: read(&w.home.join(".gateway-ports.json")),
    }
}

#[test]
fn second_once_changes_nothing() {
    root_only!();
    let mut w = World::new();
    w.set_env("HERMES_RECONCILER_MAX_PROFILES", "10");
    w.root_profile().desired("running").lifecycle("exited");
    w.profile("alpha").desired("running");
    w.profile("bravo").desired("stopped");
    w.profile("charlie").gateway("draining");
    w.profile("delta").gateway("startup_failed").lifecycle("running");
    w.profile("echo");
    w.profile("foxtrot").desired("running").dot_env("API_SERVER_PORT=9555\n");
    let profiles = ["default", "alpha", "bravo", "charlie", "delta", "echo", "foxtrot"];
    let want = wants(&[
        ("default", Want::Up),
        ("alpha", Want::Up),
        ("bravo", Want::Down),
        ("charlie", Want::Up),
        ("delta", Want::Down),
        ("echo", Want::Down),
        ("foxtrot", Want::Up),
    ]);
    w.once();
    wait_slots(&w.scandir, &want).unwrap();
    wait_until("every running stand-in started", WAIT, || {
        want.iter().filter(|(_, w)| **w == Want::Up).all(|(n, _)| !w.standin_records(n).is_empty())
    });
    let before = snapshot(&w, &profiles);
    assert_eq!(before.boot_log.lines().count(), profiles.len(), "first pass boot log:\n{}", before.boot_log);

    let out = w.once();
    // A wrongly issued command or restart shows within s6's one-second restart delay.
    std::thread::sleep(Duration::from_millis(1500));
    let mut c = Checks::new();
    c.ok(wait_slots(&w.scandir, &want));
    let after = snapshot(&w, &profiles);
    c.eq("scandir entries", &after.scandir, &before.scandir);
    for p in profiles {
        let (b, a) = (&before.slots[p], &after.slots[p]);
        for (path, id) in b {
            match a.get(path) {
                None => c.check(false, format!("{p}: {} disappeared", path.display())),
                Some(x) if x != id => c.check(
                    false,
                    format!(
                        "{p}: {} rewritten (ino {}→{}, mtime {}→{}, content equal: {})",
                        path.display(),
                        id.ino,
                        x.ino,
                        id.mtime_ns,
                        x.mtime_ns,
                        id.content == x.content
                    ),
                ),
                _ => {}
            }
        }
        for path in a.keys().filter(|k| !b.contains_key(*k)) {
            c.check(false, format!("{p}: new file {}", path.display()));
        }
    }
    c.eq("supervise/status pids (gateway, logger)", &after.pids, &before.pids);
    c.eq("stand-in starts", &after.starts, &before.starts);
    c.eq("container-boot.log", &after.boot_log, &before.boot_log);
    c.eq(".gateway-ports.json", &after.ports_file, &before.ports_file);
    c.eq("second pass warnings", out.warnings(), Vec::<&str>::new());
    c.finish();
}

#[test]
fn container_restart_recreates_every_slot_and_sweeps_pid_files() {
    root_only!();
    let mut w = World::new();
    let root = w.root_profile().desired("running");
    let alpha = w.profile("alpha").desired("running");
    let bravo = w.profile("bravo").desired("stopped");
    w.profile("charlie").gateway("running");
    let want =
        wants(&[("default", Want::Up), ("alpha", Want::Up), ("bravo", Want::Down), ("charlie", Want::Up)]);
    w.once();
    wait_slots(&w.scandir, &want).unwrap();
    wait_until("first stand-ins", WAIT, || {
        ["default", "alpha", "charlie"].iter().all(|n| w.standin_records(n).len() == 1)
    });
    let first_lines = w.boot_log().lines().count();

    // The container dies: every process of the namespace, and the tmpfs with it.
    w.kill_svscan();
    w.wipe_scandir();
    // Leftovers of the dead container's pid namespace, and a directory that is no profile.
    let root = root.pid_files();
    let alpha = alpha.pid_files();
    let bravo = bravo.pid_files();
    let stray = w.home.join("profiles/not-a-profile");
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::write(stray.join("gateway.pid"), "1\n").unwrap();
    std::fs::write(stray.join("processes.json"), "[]\n").unwrap();
    w.start_svscan();
    w.once();

    let mut c = Checks::new();
    c.eq("slots", gateway_slots(&w.scandir), slot_set(want.keys()));
    c.ok(wait_slots(&w.scandir, &want));
    c.ok(poll(WAIT, || {
        let n: Vec<usize> =
            ["default", "alpha", "charlie"].iter().map(|p| w.standin_records(p).len()).collect();
        if n == [2, 2, 2] { Ok(()) } else { Err(format!("stand-in starts (default, alpha, charlie): {n:?}")) }
    }));
    for n in ["default", "alpha", "charlie"] {
        let r = w.standin_records(n);
        if r.len() == 2 {
            c.eq(&format!("{n}: port kept across the restart"), &r[1].port, &r[0].port);
        }
    }
    for p in [&root, &alpha, &bravo] {
        c.eq(
            &format!("{}: (gateway.pid, processes.json) present", p.name),
            p.has_pid_files(),
            (false, false),
        );
    }
    c.check(
        stray.join("gateway.pid").exists() && stray.join("processes.json").exists(),
        "pid files of a directory that is not a profile were deleted",
    );
    c.eq("bravo stand-in starts", w.standin_records("bravo").len(), 0);
    match w.boot_lines() {
        Err(e) => c.check(false, e),
        Ok(lines) => {
            let second: Vec<(String, String)> =
                lines[first_lines..].iter().map(|l| (l.profile.clone(), l.action.clone())).collect();
            let expect: Vec<(String, String)> = [
                ("default", "started"),
                ("alpha", "started"),
                ("bravo", "registered"),
                ("charlie", "started"),
            ]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
            c.eq("boot-log lines of the second pass", second, expect);
        }
    }
    c.finish();
}

#[test]
fn only_the_recreated_slot_sweeps_pid_files() {
    root_only!();
    let mut w = World::new();
    let root = w.root_profile().desired("running");
    let alpha = w.profile("alpha").desired("running");
    let bravo = w.profile("bravo").desired("running");
    let want = wants(&[("default", Want::Up), ("alpha", Want::Up), ("bravo", Want::Up)]);
    w.once();
    wait_slots(&w.scandir, &want).unwrap();
    let first_lines = w.boot_log().lines().count();

    // While s6 is down, one slot is lost; pid files appear in every profile.
    w.kill_svscan();
    std::fs::remove_dir_all(w.slot("alpha")).unwrap();
    let root = root.pid_files();
    let alpha = alpha.pid_files();
    let bravo = bravo.pid_files();
    w.start_svscan();
    w.once();

    let mut c = Checks::new();
    c.eq("slots", gateway_slots(&w.scandir), slot_set(want.keys()));
    c.ok(wait_slots(&w.scandir, &want));
    c.eq("alpha: (gateway.pid, processes.json) present", alpha.has_pid_files(), (false, false));
    c.eq("bravo: (gateway.pid, processes.json) present", bravo.has_pid_files(), (true, true));
    c.eq("root: (gateway.pid, processes.json) present", root.has_pid_files(), (true, true));
    match w.boot_lines() {
        Err(e) => c.check(false, e),
        Ok(lines) => {
            let second: Vec<(String, String)> =
                lines[first_lines..].iter().map(|l| (l.profile.clone(), l.action.clone())).collect();
            c.eq(
                "boot-log lines of the second pass",
                second,
                vec![("alpha".to_string(), "started".to_string())],
            );
        }
    }
    c.finish();
}

#[test]
fn a_pid_file_that_cannot_be_swept_is_reported_and_the_slot_still_created() {
    root_only!();
    let w = World::new();
    let odd = w.profile("odd").desired("running");
    w.profile("plain").desired("running");
    // A hostile or confused agent left a directory where the pid file goes.
    std::fs::create_dir(odd.dir.join("gateway.pid")).unwrap();
    std::fs::write(odd.dir.join("gateway.pid/keep"), "data").unwrap();
    let out = w.once();
    let mut c = Checks::new();
    c.ok(wait_slots(&w.scandir, &wants(&[("default", Want::Down), ("odd", Want::Up), ("plain", Want::Up)])));
    let warned = out.warnings_with(&["gateway.pid"]);
    c.eq("warnings naming odd's gateway.pid", warned.len(), 1);
    c.check(warned.iter().all(|l| l.contains("profiles/odd/gateway.pid")), format!("{warned:?}"));
    c.check(odd.dir.join("gateway.pid/keep").exists(), "the directory's content was touched");
    c.finish();
}
