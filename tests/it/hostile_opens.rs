//! `hermes` (or a busy gateway) opening and reading the files of its profile in a loop: the
//! root daemon must not pay for it. Reads change nothing, so the watcher's kernel mask leaves
//! them out (no `IN_OPEN`, no read-only close, no per-`write()` modify): the event loop, which
//! reads inotify itself, is not even woken. Once, each open queued an event that woke a watcher
//! thread, which then dropped it: an agent could keep a root thread busy for free, and so did
//! the daemon's own re-list reads.

use crate::kit::*;
use std::process::Command;

/// Opens, reads and closes every file of the profile directory `argv[1]`, and lists it,
/// `argv[2]` times.
const READ_LOOP: &str = r#"
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for _ in range(n):
    for name in os.listdir(d):
        p = os.path.join(d, name)
        if os.path.isfile(p):
            with open(p, "rb") as f:
                f.read()
"#;

/// Context switches of the daemon's main thread (the event loop, which reads inotify) so far,
/// voluntary and not.
fn switches(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/status")).ok()?;
    Some(
        status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum(),
    )
}

#[test]
fn reads_of_profile_files_by_hermes_never_wake_the_watcher() {
    root_only!();
    let (w, uid, gid) = World::for_hermes();
    w.profile("work").desired("stopped");
    chown_tree(&w.home, uid, gid);
    let d = Daemon::start(
        &w,
        &[("HERMES_RECONCILER_WATCH", "inotify"), ("HERMES_RECONCILER_RESYNC_SECS", "3600")],
    );
    converge(&w, &d, &[("work", Want::Down)]);
    let before = switches(d.pid()).expect("the daemon's main thread");
    let out = Command::new("setpriv")
        .args([format!("--reuid={uid}"), format!("--regid={gid}"), "--clear-groups".into()])
        .args(["/usr/bin/python3", "-c", READ_LOOP])
        .arg(w.profile_dir("work"))
        .arg("300")
        .output()
        .unwrap();
    assert!(out.status.success(), "read loop as hermes: {out:?}");
    let after = switches(d.pid()).expect("the daemon's main thread");
    // 300 rounds of a listing and three file reads: about 1,800 opens. Each one woke a watcher
    // thread once (hundreds of switches even when the kernel batched them); now none does.
    assert!(after - before < 10, "the event loop switched {} times for reads", after - before);
    // And it still sees changes.
    set_desired(&w.profile_dir("work"), "running");
    converge(&w, &d, &[("work", Want::Up)]);
}
