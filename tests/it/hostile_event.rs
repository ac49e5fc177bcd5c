//! Issue 9 row 1 (SPEC §9.1), tried as the hostile `hermes` user against real s6: `event/` of a
//! slot (and of its logger) is closed to `hermes`, because s6-supervise (root) writes one byte
//! into every `event/ftrig1*` entry at each state change, following symlinks. A symlink planted
//! there aimed at a root-only file, or a hard link to another slot's `supervise/control`, would
//! make root write where `hermes` cannot; a big file would fill the scandir's tmpfs.
//!
//! - slots the daemon creates: `hermes` cannot create anything in `event/` (EACCES), and a
//!   state change it causes through its control FIFO writes nothing anywhere else;
//! - slots made by an older build (`event/` 03730 group `hermes`) with entries `hermes` planted:
//!   adopting them closes `event/` and removes everything but single-link FIFOs.
//!
//! The planting runs as `hermes` with the host's tools (the kernel decides, not s6); the state
//! changes go through the s6 under test (`s6-svc`/`s6-svstat` as `hermes`).

use crate::kit::*;
use std::ffi::OsStr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

const VICTIM: &[u8] = b"root-only secret\n";

/// Runs a shell script as `hermes` (uid and gid 10000, no other group) with the host's tools.
fn sh_as_hermes(uid: u32, gid: u32, script: &str) -> std::process::Output {
    Command::new("setpriv")
        .args([format!("--reuid={uid}"), format!("--regid={gid}"), "--clear-groups".into()])
        .args(["sh", "-c", script])
        .env_clear()
        .env("PATH", PATH)
        .output()
        .expect("spawn setpriv")
}

/// A world like the container: volume owned by `hermes`, scandir owned by root, slots
/// controlled by group `hermes`; profiles `work` (running) and `other` (running).
fn container_world() -> (World, u32, u32) {
    let (w, uid, gid) = World::for_hermes();
    w.root_profile().desired("stopped");
    w.profile("work").desired("running");
    w.profile("other").desired("running");
    chown_tree(&w.home, uid, gid);
    (w, uid, gid)
}

/// A root-only file (0600) in a directory `hermes` can traverse.
fn victim(w: &World) -> std::path::PathBuf {
    let v = w.root.join("victim");
    std::fs::write(&v, VICTIM).unwrap();
    std::fs::set_permissions(&v, std::fs::Permissions::from_mode(0o600)).unwrap();
    v
}

/// `event/` of the slot and of its logger: root-owned, root's group, exactly what s6 itself
/// makes (03730), so `hermes` can neither list nor add.
fn check_event_closed(c: &mut Checks, slot: &Path) {
    for rel in ["event", "log/event"] {
        let p = slot.join(rel);
        match std::fs::symlink_metadata(&p) {
            Ok(m) => {
                let (dir, uid, gid, mode) = (m.is_dir(), m.uid(), m.gid(), m.mode() & 0o7777);
                c.check(
                    (dir, uid, gid, mode) == (true, 0, 0, 0o3730),
                    format!(
                        "{}: dir {dir}, owner {uid}:{gid}, mode {mode:o}; want a directory, 0:0, 3730",
                        p.display()
                    ),
                );
            }
            Err(e) => c.check(false, format!("{}: {e}", p.display())),
        }
    }
}

/// `hermes` bounces `work`; then the root-only `victim` still holds [`VICTIM`] and both
/// gateways (`work`, `other`) are up: no event went anywhere it was not meant to.
fn bounce_survived(c: &mut Checks, w: &World, work: &Path, victim: &Path) {
    bounce_as_hermes(c, work);
    c.eq(
        "victim content",
        String::from_utf8_lossy(&std::fs::read(victim).unwrap()).into_owned(),
        String::from_utf8_lossy(VICTIM).into_owned(),
    );
    c.ok(wait_slots(&w.scandir, &wants(&[("work", Want::Up), ("other", Want::Up)])));
}

/// `hermes` makes `slot` go down, then up again (six or so s6 events), through its control FIFO
/// and `s6-svstat`, as it legitimately may.
fn bounce_as_hermes(c: &mut Checks, slot: &Path) {
    for (flag, up) in [("-d", false), ("-u", true)] {
        let o = run_as("hermes", &[OsStr::new("s6-svc"), OsStr::new(flag), slot.as_os_str()]);
        if !o.status.success() {
            c.check(false, format!("hermes: s6-svc {flag}: {}", String::from_utf8_lossy(&o.stderr).trim()));
            return;
        }
        c.ok(poll(WAIT, || {
            let o = run_as(
                "hermes",
                &[
                    OsStr::new("s6-svstat"),
                    OsStr::new("-o"),
                    OsStr::new("up,wantedup,normallyup,ready,pid,exitcode"),
                    slot.as_os_str(),
                ],
            );
            let st = parse_svstat(&String::from_utf8_lossy(&o.stdout))?;
            if st.up == up { Ok(()) } else { Err(format!("{}: {st:?}, want up={up}", slot.display())) }
        }));
    }
}

/// The container world after its boot pass, with `work` and `other` up and the victim file.
struct Booted {
    w: World,
    uid: u32,
    gid: u32,
    c: Checks,
    victim: std::path::PathBuf,
    work: std::path::PathBuf,
    other: std::path::PathBuf,
}

fn booted() -> Booted {
    let (w, uid, gid) = container_world();
    w.once();
    let mut c = Checks::new();
    c.ok(wait_slots(&w.scandir, &wants(&[("default", Want::Down), ("work", Want::Up), ("other", Want::Up)])));
    let victim = victim(&w);
    let (work, other) = (w.slot("work"), w.slot("other"));
    Booted { w, uid, gid, c, victim, work, other }
}

#[test]
fn hermes_cannot_plant_in_event_of_a_new_slot_and_the_symlink_attack_fails() {
    root_only!();
    let Booted { w, uid, gid, mut c, victim, work, other } = booted();
    check_event_closed(&mut c, &work);

    // The attack: a symlink to a root-only file, a hard link to another slot's control FIFO,
    // a file to fill the tmpfs; in the service's and in the logger's event/.
    for ev in [work.join("event"), work.join("log/event")] {
        for (what, script) in [
            (
                "symlink",
                format!(
                    "ln -s '{}' '{}/ftrig1:@400000006b0ccbdc1f0a52a1:AAAAAA'",
                    victim.display(),
                    ev.display()
                ),
            ),
            (
                "hard link to another slot's control",
                format!(
                    "ln '{}/supervise/control' '{}/ftrig1:@400000006b0ccbdc1f0a52a2:BBBBBB'",
                    other.display(),
                    ev.display()
                ),
            ),
            ("file", format!("head -c 65536 /dev/zero > '{}/ftrig1big'", ev.display())),
        ] {
            let o = sh_as_hermes(uid, gid, &script);
            let err = String::from_utf8_lossy(&o.stderr);
            // The hard link may also be refused earlier, with EPERM, by fs.protected_hardlinks.
            let refused =
                err.contains("Permission denied") || what.starts_with("hard") && !o.status.success();
            c.check(
                !o.status.success() && refused,
                format!(
                    "hermes planted a {what} in {}: exit {:?}, stderr {err:?}",
                    ev.display(),
                    o.status.code()
                ),
            );
        }
    }
    // A state change of `work` now writes into nothing but s6's own subscribers.
    bounce_survived(&mut c, &w, &work, &victim);
    check_event_closed(&mut c, &work);
    c.finish();
}

#[test]
fn adopting_an_older_slot_closes_event_and_removes_what_hermes_planted() {
    root_only!();
    let Booted { w, uid, gid, mut c, victim, work, other } = booted();
    let ev = work.join("event");
    // What older builds made: event/ 03730 group hermes.
    std::os::unix::fs::chown(&ev, Some(0), Some(gid)).unwrap();
    std::fs::set_permissions(&ev, std::fs::Permissions::from_mode(0o3730)).unwrap();
    // A hard link to `other`'s control FIFO, as `hermes` can plant it where
    // fs.protected_hardlinks is 0 (made by root here, where it is 1).
    std::fs::hard_link(other.join("supervise/control"), ev.join("ftrig1:@400000006b0ccbdc1f0a52a2:BBBBBB"))
        .unwrap();
    let planted = [
        format!("ln -s '{}' '{}/ftrig1:@400000006b0ccbdc1f0a52a1:AAAAAA'", victim.display(), ev.display()),
        format!("head -c 65536 /dev/zero > '{}/ftrig1big'", ev.display()),
        format!("mkdir '{0}/ftrig1dir' && : > '{0}/ftrig1dir/x' && chmod 777 '{0}/ftrig1dir'", ev.display()),
        format!("mkfifo '{}/ftrig1:@400000006b0ccbdc1f0a52a3:CCCCCC'", ev.display()),
    ];
    for script in &planted {
        let o = sh_as_hermes(uid, gid, script);
        assert!(
            o.status.success(),
            "the older slot's event/ accepts {script}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    // Adoption (a later boot pass, or the daemon's first pass) closes it.
    w.once();
    check_event_closed(&mut c, &work);
    let left: Vec<String> = entries(&ev).into_iter().collect();
    c.eq("entries left in event/", left, vec!["ftrig1:@400000006b0ccbdc1f0a52a3:CCCCCC".to_string()]);
    if let Ok(m) = std::fs::symlink_metadata(ev.join("ftrig1:@400000006b0ccbdc1f0a52a3:CCCCCC")) {
        c.check(m.file_type().is_fifo() && m.nlink() == 1, "the subscriber FIFO is kept as it was");
    }
    let o = sh_as_hermes(
        uid,
        gid,
        &format!("ln -s '{}' '{}/ftrig1:@400000006b0ccbdc1f0a52a4:DDDDDD'", victim.display(), ev.display()),
    );
    c.check(!o.status.success(), "hermes can still plant a symlink in an adopted slot's event/");

    // Nothing that was planted is written through any more: not the root-only file, not
    // `other`'s control FIFO (a `d`/`x` there would stop `other` or its supervisor).
    bounce_survived(&mut c, &w, &work, &victim);
    c.finish();
}

/// The shell block of README's "Security model" that shows how `hermes` waits for a state.
fn readme_wait_snippet() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let at = readme
        .find("<!-- this block is run as hermes by tests/it/hostile_event.rs -->")
        .expect("marker in README");
    let block = &readme[at..];
    let start = block.find("```sh\n").expect("sh block") + "```sh\n".len();
    let end = block[start..].find("```").expect("end of block");
    block[start..start + end].to_string()
}

#[test]
fn hermes_cannot_subscribe_but_the_readme_polling_snippet_waits_for_states() {
    root_only!();
    let (w, _, _) = container_world();
    w.once();
    let mut c = Checks::new();
    c.ok(wait_slots(&w.scandir, &wants(&[("work", Want::Up)])));
    // s6 reports "up" when the run script starts, a moment before the stand-in records its
    // start: a stop sent in that moment would kill it unrecorded and leave one record, not two.
    c.ok(starts(&w, "work", 1));
    let work = w.slot("work");
    for argv in [vec!["s6-svwait", "-u"], vec!["s6-svc", "-wu", "-u"]] {
        let mut args: Vec<&OsStr> = argv.iter().map(OsStr::new).collect();
        args.push(work.as_os_str());
        let o = run_as("hermes", &args);
        let err = String::from_utf8_lossy(&o.stderr);
        c.check(
            !o.status.success() && err.contains("ermission denied"),
            format!("hermes: {argv:?}: exit {:?}, stderr {err:?}; want a refusal", o.status.code()),
        );
    }
    let script = readme_wait_snippet().replace("/run/service/gateway-alice", &work.display().to_string());
    let o = run_as("hermes", &[OsStr::new("sh"), OsStr::new("-euc"), OsStr::new(&script)]);
    c.check(
        o.status.success(),
        format!(
            "README snippet as hermes: exit {:?}, stderr {}",
            o.status.code(),
            String::from_utf8_lossy(&o.stderr)
        ),
    );
    // It waited for the final state, so that state holds right after it returned.
    c.ok(wait_slots(&w.scandir, &wants(&[("work", Want::Up)])));
    match svstat(&work) {
        Ok(st) => c.check(st.up && st.wanted_up, format!("after the snippet: {st:?}")),
        Err(e) => c.check(false, e),
    }
    c.ok(starts(&w, "work", 2));
    c.finish();
}
