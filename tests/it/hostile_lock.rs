//! Issue 9 row 9 (SPEC §9.1), tried as the hostile `hermes` user against real s6: a *read* lock
//! on `supervise/lock` (0644, so `hermes` may take one) is not a supervisor. s6-supervise holds a
//! write lock for as long as it runs; `hermes` cannot read-lock while it does, but can take the
//! lock the moment the supervisor exits. Counted as a supervisor, that read lock would pin the
//! removal of the slot forever (the hidden directory is deleted only once no supervisor is left).
//!
//! The lock is taken by the host's python3 as `hermes` (`fcntl.lockf(LOCK_SH)` is an `fcntl`
//! read lock, the kind s6 uses, not a `flock(2)` one); the slot is supervised by the s6 under
//! test.

use crate::kit::*;
use std::io::Read;
use std::process::{Command, Stdio};

/// Blocks until a read lock on `argv[1]` is granted (that is, until no write lock is held),
/// says so, then holds it until killed.
const HOLD_READ_LOCK: &str = r#"
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.lockf(fd, fcntl.LOCK_SH)
sys.stdout.write("locked\n")
sys.stdout.flush()
time.sleep(3600)
"#;

#[test]
fn a_read_lock_hermes_takes_as_the_supervisor_exits_does_not_pin_a_removal() {
    root_only!();
    let (w, uid, gid) = World::for_hermes();
    w.profile("work").desired("running");
    w.profile("keep").desired("running");
    chown_tree(&w.home, uid, gid);
    let d = Daemon::start(&w, &[("HERMES_RECONCILER_REMOVE_GRACE_MS", SHORT_GRACE_MS)]);
    converge(&w, &d, &[("work", Want::Up), ("keep", Want::Up)]);

    // hermes opens the lock now (the descriptor follows the directory when it is hidden) and
    // waits for the supervisor's write lock to go away.
    let lock = w.slot("work").join("supervise/lock");
    let mut holder = Command::new("setpriv")
        .args([format!("--reuid={uid}"), format!("--regid={gid}"), "--clear-groups".into()])
        .args(["/usr/bin/python3", "-c", HOLD_READ_LOCK])
        .arg(&lock)
        .env_clear()
        .env("PATH", PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn setpriv python3");
    // The slot may go only once hermes holds the file open: python starts slowly on a loaded
    // machine, and opened after the removal has begun, the path is already gone.
    let fds = format!("/proc/{}/fd", holder.id());
    let opened = poll(WAIT, || {
        let mut fds = std::fs::read_dir(&fds).into_iter().flatten().flatten();
        if fds.any(|e| std::fs::read_link(e.path()).ok().as_deref() == Some(lock.as_path())) {
            Ok(())
        } else {
            Err(format!("hermes has not opened {} yet", lock.display()))
        }
    });
    must(&d, "hermes opening supervise/lock", opened);

    std::fs::remove_dir_all(w.profile_dir("work")).unwrap();
    let gone = poll(WAIT, || {
        let left: Vec<String> = entries(&w.scandir)
            .into_iter()
            .filter(|e| e == "gateway-work" || e.starts_with(".gateway-work."))
            .collect();
        if left.is_empty() { Ok(()) } else { Err(format!("scandir still has {left:?}")) }
    });

    let _ = holder.kill();
    let mut out = String::new();
    let mut err = String::new();
    let _ = holder.stdout.take().map(|mut s| s.read_to_string(&mut out));
    let _ = holder.stderr.take().map(|mut s| s.read_to_string(&mut err));
    let _ = holder.wait();
    must(&d, "removal of gateway-work while hermes holds a read lock on its supervise/lock", gone);
    assert_eq!(out, "locked\n", "hermes never got its read lock (stderr: {err})");
    converge(&w, &d, &[("keep", Want::Up)]);
}
