//! Drift and lost events on real s6: slots deleted or edited by hand, an orphan `gateway-*`
//! service, the daemon's own leftovers and an inotify queue overflow are all settled by a full
//! re-list; a scandir entry the daemon does not own is never touched.

use crate::kit::*;
use nix::sys::signal::Signal;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn write_exec(p: &Path, content: &str) {
    fs::write(p, content).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
}

fn svscanctl(w: &World, flags: &str) {
    let st = Command::new("s6-svscanctl")
        .arg(flags)
        .arg(&w.scandir)
        .env_clear()
        .env("PATH", PATH)
        .status()
        .expect("spawn s6-svscanctl");
    assert!(st.success(), "s6-svscanctl {flags} failed: {st}");
}

/// Is a supervisor running on `dir` (`s6-svok`)?
fn svok(dir: &Path) -> bool {
    Command::new("s6-svok")
        .arg(dir)
        .env_clear()
        .env("PATH", PATH)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A service directory made by hand in the scandir (optionally with a logger), published and
/// picked up by s6-svscan.
fn hand_made_service(w: &World, name: &str, with_log: bool) {
    let dir = w.scandir.join(name);
    let staging = w.scandir.join(format!(".handmade-{name}"));
    fs::create_dir(&staging).unwrap();
    write_exec(&staging.join("run"), "#!/bin/sh\nexec sleep 100000\n");
    if with_log {
        fs::create_dir(staging.join("log")).unwrap();
        write_exec(&staging.join("log/run"), "#!/bin/sh\nexec cat >/dev/null\n");
    }
    fs::rename(&staging, &dir).unwrap();
    svscanctl(w, "-a");
    wait_until(&format!("{name} up"), WAIT, || {
        svstat(&dir).is_ok_and(|s| s.up) && (!with_log || svstat(&dir.join("log")).is_ok_and(|s| s.up))
    });
}

/// Namespace pids of the stand-in gateways of `profile` that are still alive.
fn live_gateways(w: &World, profile: &str) -> Vec<i64> {
    w.standin_records(profile)
        .iter()
        .filter_map(|r| r.pid.parse::<i64>().ok())
        .filter(|p| ns_pid_alive(w, *p))
        .collect()
}

/// Deleting a slot "by hand" is done the way s6 documents it for a live service: rename it
/// to a dot name (s6-svscan ignores those), `s6-svscanctl -an` so s6-svscan prunes its
/// supervisor (which stops the service), wait until no supervisor runs in it (`s6-svok`),
/// then `rm -rf`. A plain `rm -rf` of a live slot does not stop anything (see
/// `rm_rf_of_a_live_slot_leaves_exactly_one_gateway`).
#[test]
fn hand_made_drift_is_repaired_at_the_next_periodic_relist() {
    root_only!();
    let w = World::new();
    for n in ["deleted", "edited", "keep"] {
        w.profile(n).desired("running");
    }
    hand_made_service(&w, "other-svc", true);
    let other = w.scandir.join("other-svc");
    let other_ino = other.metadata().unwrap().ino();
    let other_files = slot_snapshot(&other);
    let other_st = svstat(&other).unwrap();
    let other_log = svstat(&other.join("log")).unwrap();

    // No SIGHUP in this test: the periodic re-list (every 2 s) must find the drift.
    let d = Daemon::start(
        &w,
        &[("HERMES_RECONCILER_RESYNC_SECS", "2"), ("HERMES_RECONCILER_REMOVE_GRACE_MS", SHORT_GRACE_MS)],
    );
    converge(&w, &d, &[("deleted", Want::Up), ("edited", Want::Up), ("keep", Want::Up)]);
    let edited_run = w.slot("edited").join("run");
    let original_run = fs::read(&edited_run).unwrap();
    let edited_pid = svstat(&w.slot("edited")).unwrap().pid;
    let keep_before = (slot_snapshot(&w.slot("keep")), svstat(&w.slot("keep")).unwrap().pid);

    // 1. A slot deleted by hand (the s6 way, see above).
    let aside = w.scandir.join(".deleted-by-hand");
    fs::rename(w.slot("deleted"), &aside).unwrap();
    svscanctl(&w, "-an");
    wait_until("the hand-deleted slot's supervisors to exit", WAIT, || {
        !svok(&aside) && !svok(&aside.join("log"))
    });
    fs::remove_dir_all(&aside).unwrap();
    // 2. A slot file edited by hand.
    fs::write(&edited_run, "#!/bin/sh\n# edited by hand\nexec sleep 1\n").unwrap();
    // 3. An orphan gateway-* service with no profile, supervised, with a logger.
    hand_made_service(&w, "gateway-zzz", true);
    // 4. Leftovers of an interrupted daemon: a staging and a removal directory.
    fs::create_dir_all(w.scandir.join(".gateway-stale.new/log")).unwrap();
    fs::create_dir_all(w.scandir.join(".gateway-stale.rm-0000abcd")).unwrap();

    converge(&w, &d, &[("deleted", Want::Up), ("edited", Want::Up), ("keep", Want::Up)]);
    must(
        &d,
        "drift repaired",
        poll(WAIT, || {
            if fs::read(&edited_run).ok().as_deref() != Some(original_run.as_slice()) {
                return Err("gateway-edited/run not restored".into());
            }
            let left: Vec<String> = entries(&w.scandir)
                .into_iter()
                .filter(|e| e.contains("gateway-zzz") || e.contains("gateway-stale"))
                .collect();
            if !left.is_empty() {
                return Err(format!("still in the scandir: {left:?}"));
            }
            match supervisors_of(&w, "gateway-zzz") {
                (0, 0) => {}
                s => return Err(format!("gateway-zzz supervisors left: {s:?}")),
            }
            one_supervisor_each(&w)
        }),
    );

    let mut c = Checks::new();
    c.eq("gateway slots", gateway_slots(&w.scandir), slot_set(["default", "deleted", "edited", "keep"]));
    c.ok(starts(&w, "deleted", 2)
        .map_err(|e| format!("deleted: stand-in starts (stopped by hand, started again): {e}")));
    c.eq("deleted: live gateways", live_gateways(&w, "deleted").len(), 1);
    c.eq(
        "edited: gateway pid (an edited file restarts nothing)",
        svstat(&w.slot("edited")).unwrap().pid,
        edited_pid,
    );
    c.ok(starts(&w, "edited", 1).map_err(|e| format!("edited: stand-in starts: {e}")));
    c.check(
        (slot_snapshot(&w.slot("keep")), svstat(&w.slot("keep")).unwrap().pid) == keep_before,
        "keep: slot or gateway changed",
    );
    // other-svc: the same directory, the same files, the same supervised processes.
    c.eq("other-svc: inode", other.metadata().map(|m| m.ino()).ok(), Some(other_ino));
    c.check(slot_snapshot(&other) == other_files, "other-svc: files changed");
    c.eq("other-svc: status", svstat(&other).ok(), Some(other_st));
    c.eq("other-svc/log: status", svstat(&other.join("log")).ok(), Some(other_log));
    c.eq("other-svc: supervisors", supervisors_of(&w, "other-svc"), (1, 1));
    let settled = |l: &[BootLine]| {
        has_line(l, "edited", "updated")
            && has_line(l, "zzz", "unregistered")
            && l.iter().filter(|x| x.profile == "deleted" && x.action == "started").count() >= 2
    };
    match boot_lines_when(&w, settled) {
        Ok(lines) => {
            let has = |p: &str, a: &str| lines.iter().any(|l| l.profile == p && l.action == a);
            c.check(has("edited", "updated"), "no `updated` line for edited");
            c.check(has("zzz", "unregistered"), "no `unregistered` line for zzz");
            c.check(
                lines.iter().filter(|l| l.profile == "deleted" && l.action == "started").count() == 2,
                "deleted: want two `started` lines",
            );
        }
        Err(e) => c.check(false, e),
    }

    // 5. Hand edits of a slot that stood still through several re-lists: the daemon then
    //    trusts its last reading of it without stat'ing its files (issue 15), until an
    //    inotify event names it. (If this machine is too slow for two re-lists in the sleep,
    //    the slot is merely read again: the checks hold either way.)
    std::thread::sleep(Duration::from_secs(5));
    let keep = w.slot("keep");
    let log_run = keep.join("log/run");
    let original_log_run = fs::read(&log_run).unwrap();
    fs::write(&log_run, "#!/bin/sh\n# edited by hand\nexec sleep 1\n").unwrap();
    fs::set_permissions(keep.join("event"), fs::Permissions::from_mode(0o3733)).unwrap();
    c.ok(poll(WAIT, || {
        let mode = fs::symlink_metadata(keep.join("event")).map(|m| m.mode() & 0o7777).unwrap_or(0);
        if fs::read(&log_run).ok().as_deref() != Some(original_log_run.as_slice()) {
            Err("gateway-keep/log/run not restored".to_string())
        } else if mode != 0o3730 {
            Err(format!("gateway-keep/event mode {mode:o}, want 3730"))
        } else {
            Ok(())
        }
    }));
    c.finish();
}

/// A plain `rm -rf` of a live slot directory (the most common "delete by hand"). s6 keeps the
/// supervisor and its gateway running in the deleted directory (S6-FACTS: services are known by
/// inode); the daemon repairs the slot by creating a new directory under the same name. SPEC
/// §7.2 forbids exactly that outcome ("that would run two copies"): after the repair there
/// must be one gateway and one supervisor per service, which the daemon can get by asking
/// s6-svscan to prune (`an`) when it publishes.
#[test]
fn rm_rf_of_a_live_slot_leaves_exactly_one_gateway() {
    root_only!();
    let w = World::new();
    w.profile("victim").desired("running");
    w.profile("bystander").desired("running");
    let d = Daemon::start(
        &w,
        &[("HERMES_RECONCILER_RESYNC_SECS", "1"), ("HERMES_RECONCILER_REMOVE_GRACE_MS", SHORT_GRACE_MS)],
    );
    converge(&w, &d, &[("victim", Want::Up), ("bystander", Want::Up)]);
    let bystander_pid = svstat(&w.slot("bystander")).unwrap().pid;

    fs::remove_dir_all(w.slot("victim")).unwrap();
    // The next re-list recreates the slot.
    converge(&w, &d, &[("victim", Want::Up)]);
    let r = poll(WAIT, || {
        let live = live_gateways(&w, "victim");
        let sup = supervisors_of(&w, "gateway-victim");
        if live.len() == 1 && sup == (1, 1) {
            Ok(())
        } else {
            Err(format!(
                "gateway-victim: {} live gateway(s) (namespace pids {live:?}), supervisors (service, log) = {sup:?}",
                live.len()
            ))
        }
    });
    let mut c = Checks::new();
    c.ok(r);
    c.eq("bystander pid", svstat(&w.slot("bystander")).unwrap().pid, bystander_pid);
    c.finish();
}

/// More than 16,384 events queued while the daemon is stopped (SIGSTOP): the kernel drops the
/// rest and queues IN_Q_OVERFLOW. The changes made after the burst (a new profile, a new
/// intent, a deleted profile) are among the lost events, and the periodic re-list is an hour
/// away: only the re-list the overflow triggers can converge them.
#[test]
fn inotify_overflow_triggers_a_full_relist() {
    root_only!();
    let w = World::new();
    let noisy = w.profile("noisy");
    w.profile("doomed").desired("running");
    let d = Daemon::start(
        &w,
        &[("HERMES_RECONCILER_RESYNC_SECS", "3600"), ("HERMES_RECONCILER_REMOVE_GRACE_MS", SHORT_GRACE_MS)],
    );
    converge(&w, &d, &[("noisy", Want::Down), ("doomed", Want::Up)]);

    d.signal(Signal::SIGSTOP);
    // 3 events per round (IN_CREATE, IN_CLOSE_WRITE, IN_DELETE), all on watched directories.
    for i in 0..7000 {
        let f = noisy.dir.join(format!("junk-{i}"));
        fs::write(&f, b"x").unwrap();
        fs::remove_file(&f).unwrap();
    }
    set_desired(&noisy.dir, "running");
    fs::remove_dir_all(w.profile_dir("doomed")).unwrap();
    rename_in_profile(&w, "late", Some("running"));
    d.signal(Signal::SIGCONT);

    converge(&w, &d, &[("noisy", Want::Up), ("late", Want::Up)]);
    must(
        &d,
        "doomed removed",
        poll(WAIT, || {
            let sup = supervisors_of(&w, "gateway-doomed");
            let left: Vec<String> =
                entries(&w.scandir).into_iter().filter(|e| e.contains("gateway-doomed")).collect();
            if left.is_empty() && sup == (0, 0) { Ok(()) } else { Err(format!("doomed: {left:?}, {sup:?}")) }
        }),
    );
    let mut c = Checks::new();
    c.check(
        !d.log_lines_with(&["WARN", "inotify queue overflowed"]).is_empty(),
        format!("no overflow warning in the daemon's stderr:\n{}", d.stderr()),
    );
    c.eq("gateway slots", gateway_slots(&w.scandir), slot_set(["default", "late", "noisy"]));
    c.ok(starts(&w, "noisy", 1).map_err(|e| format!("noisy: stand-in starts: {e}")));
    c.ok(starts(&w, "late", 1).map_err(|e| format!("late: stand-in starts: {e}")));
    c.ok(one_supervisor_each(&w));
    c.finish();
}

/// A removal interrupted between hiding the slot and asking s6-svscan to prune (the daemon
/// SIGKILLed or OOM-killed right after its rename): a daemon-named hidden directory
/// `.gateway-<name>.rm-<8 hex>` whose supervisor and gateway still run, because s6-svscan only
/// stops services that left the scan when told to prune. SPEC §6.2 ("leftover staging folders
/// from an interrupted run are repaired by the next pass") and §7.3 (hide, prune, wait,
/// delete): the next passes must finish that removal.
#[test]
fn interrupted_removal_with_a_live_supervisor_is_finished() {
    root_only!();
    let w = World::new();
    w.profile("kept").desired("running");
    hand_made_service(&w, "gateway-ghost", true);
    let hidden = w.scandir.join(".gateway-ghost.rm-0000abcd");
    fs::rename(w.scandir.join("gateway-ghost"), &hidden).unwrap();
    svscanctl(&w, "-a");
    assert!(svok(&hidden), "the hidden slot's supervisor should still run before the daemon starts");

    let d = Daemon::start(
        &w,
        &[("HERMES_RECONCILER_RESYNC_SECS", "1"), ("HERMES_RECONCILER_REMOVE_GRACE_MS", SHORT_GRACE_MS)],
    );
    converge(&w, &d, &[("kept", Want::Up)]);
    let r = poll(WAIT, || {
        let sup = supervisors_of(&w, "gateway-ghost");
        let left = hidden.exists();
        if !left && sup == (0, 0) {
            Ok(())
        } else {
            Err(format!("{} still exists: {left}; its supervisors (service, log): {sup:?}", hidden.display()))
        }
    });
    must(&d, "interrupted removal finished", r);
}

/// The processes `pid` follows by pidfd, by their pids.
fn followed(pid: i32) -> std::collections::BTreeSet<i32> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|e| fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == "anon_inode:[pidfd]"))
        .filter_map(|e| {
            let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", e.file_name().to_str()?)).ok()?;
            info.lines().find_map(|l| l.strip_prefix("Pid:"))?.trim().parse().ok()
        })
        .collect()
}

/// The pids of the supervisors of the `gateway-*` slots (not their loggers').
fn slot_supervisors(w: &World) -> std::collections::BTreeSet<i32> {
    ns_processes(w)
        .into_iter()
        .filter(|p| {
            p.argv.first().is_some_and(|a| a.ends_with("s6-supervise"))
                && p.argv.get(1).is_some_and(|s| s.starts_with("gateway-") && !s.contains('/'))
        })
        .map(|p| p.pid)
        .collect()
}

/// The daemon's soft limit on open descriptors.
fn soft_nofile(pid: i32) -> u64 {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

fn wait_showing(what: &str, d: &Daemon, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}:\n{}", d.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Settled re-lists do not ask each slot's lock again: the daemon follows each supervisor by
/// its process (a pidfd), even started under the soft limit of 1,024 descriptors that
/// container runtimes often set. A supervisor that dies is let go, and the one s6-svscan
/// starts in its place is followed instead: the daemon never vouches for a dead one.
#[test]
fn a_dead_supervisor_is_let_go_and_its_successor_followed() {
    root_only!();
    let w = World::new();
    w.profile("work").desired("running");
    w.profile("idle");
    let mut cmd = w.command(&["run", "--notify-fd", "3"]);
    cmd.env("HERMES_RECONCILER_RESYNC_SECS", "1")
        .env("HERMES_RECONCILER_LOG", "info,hermes_reconciler=debug");
    // SAFETY: getrlimit and setrlimit are async-signal-safe and touch nothing of the parent's.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            let mut lim = nix::libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            nix::libc::getrlimit(nix::libc::RLIMIT_NOFILE, &mut lim);
            lim.rlim_cur = 1024;
            nix::libc::setrlimit(nix::libc::RLIMIT_NOFILE, &lim);
            Ok(())
        });
    }
    let d = Daemon::spawn_command(cmd);
    d.wait_ready();
    converge(&w, &d, &[("work", Want::Up), ("idle", Want::Down)]);
    assert_eq!(gateway_slots(&w.scandir).len(), 3, "default, work and idle");
    assert!(soft_nofile(d.pid()) > 1024, "the daemon raised its soft limit on descriptors");
    let replays = || d.log_lines_with(&["re-list replayed unchanged"]).len();
    // Followed once a re-list found the readings standing; then re-lists are replayed.
    let supervisors = slot_supervisors(&w);
    assert_eq!(supervisors.len(), 3);
    wait_showing("every supervisor followed", &d, || followed(d.pid()) == supervisors);
    let before = replays();
    wait_showing("a replayed re-list", &d, || replays() > before);

    // The supervisor of the slot that is down is killed: the harshest way one goes, with
    // nothing running under it to leave behind. (s6-svscan starts a new one: 2.13 at once,
    // as measured; the daemon asks for a scan if none comes.)
    let idle = slot_name("idle");
    let victim = ns_processes(&w)
        .into_iter()
        .find(|p| p.argv.first().is_some_and(|a| a.ends_with("s6-supervise")) && p.argv.get(1) == Some(&idle))
        .expect("idle's supervisor");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim.pid), Signal::SIGKILL).unwrap();
    // s6-svscan (asked by the daemon, if need be) starts a new one, which the daemon follows
    // in place of the dead one; the slot is as it was.
    wait_showing("the successor followed, the dead one let go", &d, || {
        let now = slot_supervisors(&w);
        now.len() == 3 && !now.contains(&victim.pid) && followed(d.pid()) == now
    });
    converge(&w, &d, &[("work", Want::Up), ("idle", Want::Down)]);
    let after = replays();
    wait_showing("replays again", &d, || replays() > after);
}
