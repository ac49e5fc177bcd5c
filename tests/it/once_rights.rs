//! Slot rights (SPEC §9) as root with `HERMES_RUN_AS=hermes`: slots and their scripts are owned
//! by root and not writable by `hermes`, who still controls and reads its gateways and their
//! loggers through the group rights of `supervise/`; `event/` is root's alone (issue 9 row 1,
//! attacked in `tests/hostile_event.rs`); the gateway and its logger run as `hermes`.

use crate::kit::*;
use std::ffi::OsStr;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Every entry of `slot` outside `supervise/` and `event/`: root-owned and not writable by
/// `hermes` (neither by group `hermes` nor by others); then those, of the service and the logger.
fn check_slot_rights(c: &mut Checks, slot: &Path, hermes_gid: u32) {
    fn walk(c: &mut Checks, p: &Path, gid: u32) {
        let md = std::fs::symlink_metadata(p).unwrap();
        let mode = md.mode() & 0o7777;
        c.eq(&format!("{} owner", p.display()), md.uid(), 0);
        let group_writable = md.gid() == gid && mode & 0o020 != 0;
        c.check(
            !group_writable && mode & 0o002 == 0,
            format!("{} writable by hermes (mode {mode:o}, gid {})", p.display(), md.gid()),
        );
        if md.is_dir() {
            for e in std::fs::read_dir(p).unwrap().flatten() {
                if e.file_name() != "supervise" && e.file_name() != "event" {
                    walk(c, &e.path(), gid);
                }
            }
        }
    }
    walk(c, slot, hermes_gid);
    let meta = |rel: &str| std::fs::symlink_metadata(slot.join(rel));
    // The service's and the logger's: control for the group, `event/` root's alone (s6-supervise
    // writes through whatever entries it holds).
    for (rel, want_gid, want_mode) in [
        ("supervise", hermes_gid, 0o710),
        ("supervise/control", hermes_gid, 0o660),
        ("event", 0, 0o3730),
        ("log/supervise", hermes_gid, 0o710),
        ("log/supervise/control", hermes_gid, 0o660),
        ("log/event", 0, 0o3730),
    ] {
        match meta(rel) {
            Ok(m) => {
                let got = (m.uid(), m.gid(), m.mode() & 0o7777);
                c.check(
                    got == (0, want_gid, want_mode),
                    format!(
                        "{}/{rel}: (uid, gid, mode) = ({}, {}, {:o}), want (0, {want_gid}, {want_mode:o})",
                        slot.display(),
                        got.0,
                        got.1,
                        got.2
                    ),
                );
            }
            Err(e) => c.check(false, format!("{}/{rel}: {e}", slot.display())),
        }
    }
    for rel in ["supervise/control", "log/supervise/control"] {
        c.check(
            meta(rel).map(|m| m.file_type().is_fifo()).unwrap_or(false),
            format!("{}/{rel} is not a FIFO", slot.display()),
        );
    }
}

fn as_hermes(args: &[&OsStr]) -> std::process::Output {
    run_as("hermes", args)
}

#[test]
fn slots_are_root_owned_and_hermes_controls_them_through_group_rights() {
    root_only!();
    // Like the container: the volume belongs to hermes, the scandir to root.
    let (w, uid, gid) = World::for_hermes();
    w.root_profile().desired("stopped");
    w.profile("work").desired("running");
    chown_tree(&w.home, uid, gid);

    w.once();
    let mut c = Checks::new();
    c.ok(wait_slots(&w.scandir, &wants(&[("default", Want::Down), ("work", Want::Up)])));
    c.ok(poll(WAIT, || match w.standin_records("work").first() {
        Some(r) if r.uid == uid.to_string() => Ok(()),
        Some(r) => Err(format!("work gateway runs as uid {}, want {uid}", r.uid)),
        None => Err("work gateway never started".into()),
    }));
    for p in ["default", "work"] {
        check_slot_rights(&mut c, &w.slot(p), gid);
    }
    for f in ["logs/container-boot.log", ".gateway-ports.json"] {
        match std::fs::metadata(w.home.join(f)) {
            Ok(m) => c.eq(&format!("{f} owner (uid, gid)"), (m.uid(), m.gid()), (uid, gid)),
            Err(e) => c.check(false, format!("{f}: {e}")),
        }
    }

    // hermes can neither edit a slot nor add to it.
    let work = w.slot("work");
    let sh = |script: String| as_hermes(&[OsStr::new("sh"), OsStr::new("-c"), OsStr::new(&script)]);
    for (what, script) in [
        ("append to run", format!("echo 'id > /tmp/pwned' >> '{}/run'", work.display())),
        ("append to finish", format!("echo 'exit 0' >> '{}/finish'", work.display())),
        ("append to log/run", format!("echo x >> '{}/log/run'", work.display())),
        ("truncate data/reconciler.json", format!(": > '{}/data/reconciler.json'", work.display())),
        ("create a file in the slot", format!(": > '{}/notification-fd'", work.display())),
        ("remove the down file of default", format!("rm -f '{}/down'", w.slot("default").display())),
        ("hide the slot", format!("mv '{}' '{}/.x'", work.display(), w.scandir.display())),
    ] {
        let o = sh(script);
        c.check(!o.status.success(), format!("hermes could {what}"));
    }
    c.check(w.slot("default").join("down").exists(), "default lost its down file");

    // ... but controls and reads its gateways.
    let svc = |flag: &str, slot: &Path| {
        let o = as_hermes(&[OsStr::new("s6-svc"), OsStr::new(flag), slot.as_os_str()]);
        if !o.status.success() {
            return Err(format!(
                "hermes: s6-svc {flag} {}: {}",
                slot.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Ok(())
    };
    let hermes_svstat = |slot: &Path| -> Result<SvStat, String> {
        let o = as_hermes(&[
            OsStr::new("s6-svstat"),
            OsStr::new("-o"),
            OsStr::new("up,wantedup,normallyup,ready,pid,exitcode"),
            slot.as_os_str(),
        ]);
        if !o.status.success() {
            return Err(format!(
                "hermes: s6-svstat {}: {}",
                slot.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        parse_svstat(&String::from_utf8_lossy(&o.stdout))
    };
    let wait_state = |slot: &Path, up: bool| {
        poll(WAIT, || {
            let st = hermes_svstat(slot)?;
            if st.up == up && st.wanted_up == up {
                Ok(())
            } else {
                Err(format!("{}: {st:?}, want up={up}", slot.display()))
            }
        })
    };

    if c.ok(svc("-d", &work)).is_some() {
        c.ok(wait_state(&work, false));
    }
    if c.ok(svc("-u", &work)).is_some() {
        c.ok(wait_state(&work, true));
        c.ok(poll(WAIT, || {
            let n = w.standin_records("work").len();
            if n == 2 { Ok(()) } else { Err(format!("work: {n} stand-in start(s), want 2")) }
        }));
    }
    let default = w.slot("default");
    if c.ok(svc("-u", &default)).is_some() {
        c.ok(wait_state(&default, true));
        c.ok(poll(WAIT, || match w.standin_records("default").first() {
            Some(r) if r.uid == uid.to_string() && r.args == ["gateway", "run", "--replace"] => Ok(()),
            Some(r) => Err(format!("default gateway: uid {}, argv {:?}", r.uid, r.args)),
            None => Err("default gateway never started".into()),
        }));
    }
    // The logger's status too.
    c.ok(poll(WAIT, || match hermes_svstat(&work.join("log")) {
        Ok(st) if st.up => Ok(()),
        Ok(st) => Err(format!("work's logger: {st:?}, want up")),
        Err(e) => Err(e),
    }));
    // Root's view agrees with what hermes did.
    c.ok(wait_slots(&w.scandir, &wants(&[("work", Want::Up)])));
    c.finish();
}

/// Mode (octal) of every entry of every slot, by path relative to the scandir.
fn slot_modes(scandir: &Path) -> std::collections::BTreeMap<String, String> {
    fn walk(base: &Path, p: &Path, out: &mut std::collections::BTreeMap<String, String>) {
        let md = std::fs::symlink_metadata(p).unwrap();
        let rel = p.strip_prefix(base).unwrap().display().to_string();
        out.insert(rel, format!("{:o}", md.mode() & 0o7777));
        if md.is_dir() {
            for e in std::fs::read_dir(p).unwrap().flatten() {
                walk(base, &e.path(), out);
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(scandir).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("gateway-") {
            walk(scandir, &e.path(), &mut out);
        }
    }
    out
}

/// Slots are built with exact modes whatever `once` inherits: a strict umask, no umask at all,
/// or a scandir with the set-group-ID bit (which new directories inherit), give the same slots as
/// the usual umask on a plain scandir. Building skips a `chmod` where creation already gives the mode.
#[test]
fn slot_modes_are_exact_whatever_the_umask_and_the_scandir() {
    root_only!();
    let build = |umask: u32, setgid: bool| {
        let w = World::without_svscan();
        w.root_profile().desired("stopped");
        w.profile("work").desired("running");
        if setgid {
            std::fs::set_permissions(&w.scandir, std::os::unix::fs::PermissionsExt::from_mode(0o2755))
                .unwrap();
        }
        let mut cmd = w.command(&["once"]);
        // SAFETY: umask is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                nix::libc::umask(umask);
                Ok(())
            });
        }
        run_with_timeout(cmd, ONCE_TIMEOUT).assert_code(0);
        let modes = slot_modes(&w.scandir);
        (w, modes)
    };
    let (_w1, usual) = build(0o022, false);
    let mut c = Checks::new();
    for (rel, want) in [
        ("gateway-work", "755"),
        ("gateway-work/run", "755"),
        ("gateway-work/supervise", "710"),
        ("gateway-work/supervise/control", "660"),
        ("gateway-default/down", "644"),
    ] {
        c.eq(rel, usual.get(rel).map(String::as_str), Some(want));
    }
    // `event/` is s6-supervise's to make (root's, 3730: checked with s6 running above).
    for rel in ["gateway-work/event", "gateway-work/log/event"] {
        c.eq(rel, usual.get(rel).map(String::as_str), None);
    }
    let (_w2, strict) = build(0o077, false);
    c.eq("slot modes under umask 077", &strict, &usual);
    let (_w4, open) = build(0o000, false);
    c.eq("slot modes under umask 000", &open, &usual);
    let (_w3, setgid) = build(0o022, true);
    c.eq("slot modes in a set-group-ID scandir", &setgid, &usual);
    c.finish();
}
