//! A hostile agent (`hermes`) against the daemon's writes under `$HERMES_HOME` (SPEC §9.2), as
//! in the container: the daemon runs as root with `HERMES_RUN_AS=hermes`, the volume belongs to
//! `hermes`, and everything planted here is planted by `hermes` itself.

use crate::kit::*;
use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

fn as_hermes_sh(script: &str) {
    let o = run_as("hermes", &[OsStr::new("sh"), OsStr::new("-c"), OsStr::new(script)]);
    assert!(o.status.success(), "as hermes: {script}: {}", String::from_utf8_lossy(&o.stderr));
}

/// A world like the container's, with one running profile, and a root-owned file outside the
/// home that `hermes` may link to (`fs.protected_hardlinks=1` lets a user hard-link only files
/// it owns or can read and write, hence 0666: what root must not do is append to it or hand it
/// to `hermes`).
fn container_world() -> (World, (u32, u32), std::path::PathBuf) {
    let (w, uid, gid) = World::for_hermes();
    w.profile("work").desired("running");
    std::fs::create_dir(w.home.join("logs")).unwrap();
    chown_tree(&w.home, uid, gid);
    let victim = w.root.join("victim");
    std::fs::write(&victim, "keep\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o666)).unwrap();
    (w, (uid, gid), victim)
}

fn check_fresh_boot_log(c: &mut Checks, w: &World, uid: u32, what: &str) {
    let log = w.home.join("logs/container-boot.log");
    match std::fs::symlink_metadata(&log) {
        Ok(m) => {
            c.check(m.file_type().is_file(), format!("{what}: the boot log is not a regular file"));
            c.eq(&format!("{what}: boot log links"), m.nlink(), 1);
            c.eq(&format!("{what}: boot log owner"), m.uid(), uid);
        }
        Err(e) => c.check(false, format!("{what}: {}: {e}", log.display())),
    }
    c.check(
        w.boot_log().contains("profile=work prior_state=running action=started"),
        format!("{what}: boot log lacks the work line: {:?}", w.boot_log()),
    );
}

fn check_victim(c: &mut Checks, victim: &Path, what: &str) {
    c.eq(&format!("{what}: victim content"), std::fs::read_to_string(victim).ok(), Some("keep\n".into()));
    let m = std::fs::metadata(victim).unwrap();
    c.eq(&format!("{what}: victim owner (uid, gid)"), (m.uid(), m.gid()), (0, 0));
    c.eq(&format!("{what}: victim mode"), m.mode() & 0o7777, 0o666);
}

#[test]
fn hard_link_at_the_boot_log_is_replaced_never_appended_to_nor_chowned() {
    root_only!();
    let (w, (uid, _), victim) = container_world();
    let log = w.home.join("logs/container-boot.log");
    as_hermes_sh(&format!("ln '{}' '{}'", victim.display(), log.display()));
    w.once();
    let mut c = Checks::new();
    check_victim(&mut c, &victim, "hard link");
    c.eq("victim links", std::fs::metadata(&victim).unwrap().nlink(), 1);
    check_fresh_boot_log(&mut c, &w, uid, "hard link");
    c.finish();
}

#[test]
fn hard_link_at_the_rotation_size_is_replaced_not_rotated_into_place() {
    root_only!();
    let (w, (uid, _), victim) = container_world();
    // Big enough to trigger the rotation (256 KiB).
    std::fs::write(&victim, "x".repeat(300 << 10)).unwrap();
    let log = w.home.join("logs/container-boot.log");
    as_hermes_sh(&format!("ln '{}' '{}'", victim.display(), log.display()));
    w.once();
    let mut c = Checks::new();
    let m = std::fs::metadata(&victim).unwrap();
    c.eq("victim size", m.len(), 300 << 10);
    c.eq("victim owner", (m.uid(), m.gid()), (0, 0));
    check_fresh_boot_log(&mut c, &w, uid, "big hard link");
    c.finish();
}

#[test]
fn symlink_and_fifo_at_the_boot_log_are_replaced() {
    root_only!();
    for kind in ["symlink", "fifo"] {
        let (w, (uid, _), victim) = container_world();
        let log = w.home.join("logs/container-boot.log");
        match kind {
            "symlink" => as_hermes_sh(&format!("ln -s '{}' '{}'", victim.display(), log.display())),
            _ => as_hermes_sh(&format!("mkfifo '{}'", log.display())),
        }
        w.once();
        let mut c = Checks::new();
        check_victim(&mut c, &victim, kind);
        check_fresh_boot_log(&mut c, &w, uid, kind);
        c.finish();
    }
}

#[test]
fn a_hermes_owned_boot_log_is_appended_to_and_a_foreign_one_replaced() {
    root_only!();
    let (w, (uid, _), _) = container_world();
    let log = w.home.join("logs/container-boot.log");
    as_hermes_sh(&format!("echo earlier > '{}'", log.display()));
    w.once();
    let mut c = Checks::new();
    c.check(
        w.boot_log().starts_with("earlier\n"),
        format!("hermes' own log not appended to: {:?}", w.boot_log()),
    );
    check_fresh_boot_log(&mut c, &w, uid, "own");
    c.finish();

    // A file of another user (here: root, made by someone else) with one link is not ours.
    let (w, (uid, gid), _) = container_world();
    let log = w.home.join("logs/container-boot.log");
    std::fs::write(&log, "foreign\n").unwrap();
    let foreign_ino = std::fs::metadata(&log).unwrap().ino();
    w.once();
    let mut c = Checks::new();
    let m = std::fs::metadata(&log).unwrap();
    c.check(m.ino() != foreign_ino, "a root-owned boot log was written through");
    c.eq("replaced log owner", (m.uid(), m.gid()), (uid, gid));
    c.check(!w.boot_log().contains("foreign"), "foreign content kept");
    check_fresh_boot_log(&mut c, &w, uid, "foreign");
    c.finish();
}
