//! The harness itself, proven on real s6 without the binary: a hand-made service directory is
//! published by rename + rescan, supervised, controlled and read back, and killing the
//! namespace leaves no process behind. Also the boot-log line checker against good and bad
//! lines, since every boot-log assertion of the other files relies on it.

use crate::kit::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn write_exec(p: &Path, s: &str) {
    fs::write(p, s).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
}

fn process_alive(pid: i32) -> bool {
    // A zombie is dead for our purposes.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

#[test]
fn hand_made_slot_is_supervised_and_namespace_kill_leaves_nothing() {
    root_only!();
    let mut w = World::new();
    let init = w.svscan.as_ref().unwrap().init_pid().expect("init pid");
    assert!(process_alive(init));

    // Build a slot with a logger in a dot directory, publish it by rename, ask for a rescan.
    let staging = w.scandir.join(".gateway-hand.new");
    fs::create_dir_all(staging.join("log")).unwrap();
    fs::write(staging.join("type"), "longrun\n").unwrap();
    fs::write(staging.join("down"), "").unwrap();
    write_exec(
        &staging.join("run"),
        &format!(
            "#!/bin/sh\nexport HOME={}\nexec {} -p hand gateway run --replace\n",
            w.home.display(),
            w.standin.display()
        ),
    );
    write_exec(&staging.join("log/run"), "#!/bin/sh\nexec s6-log 1 -\n");
    let slot = w.slot("hand");
    fs::rename(&staging, &slot).unwrap();
    fs::write(w.scandir.join(".s6-svscan/control"), "a").unwrap();

    let mut want = std::collections::BTreeMap::new();
    want.insert("hand".to_string(), Want::Down);
    wait_slots(&w.scandir, &want).unwrap();
    assert!(w.standin_records("hand").is_empty(), "a down slot must not start");

    // Up: the stand-in runs and records its arguments.
    let st = s6_command("s6-svc").args(["-u"]).arg(&slot).status().unwrap();
    assert!(st.success());
    wait_until("stand-in started", WAIT, || w.standin_records("hand").len() == 1);
    let rec = &w.standin_records("hand")[0];
    assert_eq!(rec.args, ["-p", "hand", "gateway", "run", "--replace"]);
    assert_eq!(rec.home, w.home.to_string_lossy());
    let up = poll(WAIT, || {
        let s = svstat(&slot)?;
        if s.up && s.wanted_up && !s.normally_up { Ok(s) } else { Err(format!("{s:?}")) }
    })
    .unwrap();
    assert_eq!(
        up.pid.map(|p| p.to_string()),
        Some(rec.pid.clone()),
        "svstat pid is the stand-in's namespace pid"
    );

    // Parked: a stand-in exiting 0 is not restarted when finish says 125. The exit file is
    // written while the service is down, so the stand-in cannot race past it.
    write_exec(&slot.join("finish"), "#!/bin/sh\n[ \"$1\" = 0 ] && exit 125\nexit 0\n");
    s6_command("s6-svc").arg("-d").arg(&slot).status().unwrap();
    wait_until("stand-in down", WAIT, || svstat(&slot).map(|s| !s.up && !s.wanted_up).unwrap_or(false));
    w.standin_exit("hand", 0);
    s6_command("s6-svc").arg("-u").arg(&slot).status().unwrap();
    wait_until("stand-in started again, exited 0 and parked", WAIT, || {
        w.standin_records("hand").len() == 2 && slot_matches(&slot, Want::Parked).is_ok()
    });

    // Kill the namespace: every process in it is gone, svscan included.
    let svstat_before = svstat(&slot).unwrap();
    assert!(!svstat_before.up);
    w.kill_svscan();
    assert!(!process_alive(init), "s6-svscan survived the namespace kill");
    assert!(svstat(&slot).is_err(), "a supervisor survived the namespace kill");
    assert!(!fifo_has_reader(&w.scandir.join(".s6-svscan/control")));

    // Restart on the wiped scandir works (the container restart of the lifecycle tests).
    w.wipe_scandir();
    w.start_svscan();
    assert!(fifo_has_reader(&w.scandir.join(".s6-svscan/control")));
}

#[test]
fn boot_line_checker_accepts_the_format_and_rejects_forgeries() {
    root_only!();
    let good = "2026-01-01T00:00:00+0000 profile=alpha prior_state=running action=started prior_exit=clean";
    let l = parse_boot_line(good).unwrap();
    assert_eq!(
        (l.profile.as_str(), l.prior_state.as_str(), l.action.as_str(), l.prior_exit.as_str()),
        ("alpha", "running", "started", "clean")
    );
    let l = parse_boot_line(
        "2026-01-01T00:00:00-0130 profile=x prior_state=None action=skipped prior_exit=unknown reason=capacity",
    )
    .unwrap();
    assert_eq!(l.get("reason"), Some("capacity"));
    for bad in [
        "",
        "2026-01-01 00:00:00 profile=x prior_state=None action=started prior_exit=clean",
        "2026-01-01T00:00:00+0000 profile=x prior_state=None action=started",
        "2026-01-01T00:00:00+0000 profile=x prior_state=None action=launched prior_exit=clean",
        "2026-01-01T00:00:00+0000 profile=x prior_state=a\tb action=started prior_exit=clean",
        "2026-01-01T00:00:00+0000 profile= prior_state=None action=started prior_exit=clean",
        "2026-01-01T00:00:00+0000 prior_state=None profile=x action=started prior_exit=clean",
        "2026-01-01T00:00:00+0000 profile=x prior_state=None action=started prior_exit=maybe",
        "2026-01-01T00:00:00+0000 profile=x prior_state=None action=started prior_exit=clean junk",
    ] {
        assert!(parse_boot_line(bad).is_err(), "accepted {bad:?}");
    }
    let long = "a".repeat(65);
    assert!(
        parse_boot_line(&format!(
            "2026-01-01T00:00:00+0000 profile={long} prior_state=None action=started prior_exit=clean"
        ))
        .is_err()
    );
}

#[test]
fn svstat_output_parser() {
    root_only!();
    assert_eq!(
        parse_svstat("true true false false 3 -1\n").unwrap(),
        SvStat { up: true, wanted_up: true, normally_up: false, ready: false, pid: Some(3), exitcode: -1 }
    );
    assert_eq!(parse_svstat("false false true false -1 0").unwrap().pid, None);
    assert!(parse_svstat("up (pid 3) 0 seconds").is_err());
}
