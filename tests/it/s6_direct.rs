//! The `s6` module against a real s6 (the one on PATH; s6 2.11.3.2 on Debian bookworm).
//!
//! Every test that needs supervision runs its own `s6-svscan` as the init of a fresh pid and
//! mount namespace (`unshare --pid --fork --kill-child --mount --mount-proc`), so tests can run
//! in parallel and cleanup is total: SIGKILL to a pid namespace's init, sent from outside it,
//! kills every process in the namespace (s6-svscan, each s6-supervise, each service). The
//! [`Scan`] guard (the kit's `Svscan`) does that on drop, including when a test panics; and the `unshare` process gets
//! a parent-death SIGKILL, which `--kill-child` passes on to s6-svscan, so even a test binary
//! that is killed outright leaves nothing running.
//!
//! No mocks and no timing assertions: state changes are awaited by polling with a generous
//! bound ([`WAIT`]). `s6-svstat` is the reference the decoder is compared with; it reads the same
//! `supervise/status` file, so both see the pids of the namespace.
//!
//! Needs root (for `unshare`), `unshare` from util-linux, s6 and `/bin/sh`. A missing tool is a
//! failure, not a skip.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::kit::{Svscan, root_only};

use hermes_reconciler::s6::control::{control_path, lock_path};
use hermes_reconciler::s6::status::{normally_up, tai64n_to_system_time};
use hermes_reconciler::s6::{
    ControlError, ServiceStatus, SupervisorCommand, decode_status, read_status, rescan, send_command,
    supervisor_pid,
};

/// Upper bound of every wait for s6 to act. Things normally happen within milliseconds.
const WAIT: Duration = Duration::from_secs(10);

/// Polls `f` until it returns `Some`, for at most [`WAIT`]; panics naming `what` otherwise.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The host's `s6-svscan` running as init of its own pid namespace on a temporary scandir
/// (the kit's [`Svscan`], killed with everything in its namespace on drop).
struct Scan {
    _svscan: Svscan,
    scandir: PathBuf,
    /// Dropped after the namespace is gone (fields drop in order).
    _tmp: tempfile::TempDir,
}

/// What a service directory contains.
#[derive(Default)]
struct ServiceSpec<'a> {
    run: &'a str,
    finish: Option<&'a str>,
    down: bool,
    notification_fd: Option<u32>,
    timeout_finish_ms: Option<u32>,
}

const SLEEP: &str = "#!/bin/sh\nexec sleep 1000\n";

fn write_exec(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Builds a service directory at `dir` (which must not exist).
fn make_service(dir: &Path, spec: &ServiceSpec<'_>) {
    fs::create_dir(dir).unwrap();
    write_exec(&dir.join("run"), spec.run);
    if let Some(finish) = spec.finish {
        write_exec(&dir.join("finish"), finish);
    }
    if spec.down {
        fs::write(dir.join("down"), "").unwrap();
    }
    if let Some(fd) = spec.notification_fd {
        fs::write(dir.join("notification-fd"), format!("{fd}\n")).unwrap();
    }
    if let Some(ms) = spec.timeout_finish_ms {
        fs::write(dir.join("timeout-finish"), format!("{ms}\n")).unwrap();
    }
}

impl Scan {
    /// Creates the scandir with `services` in it, starts s6-svscan on it and waits until every
    /// one of them has a supervisor that has written its status file (so the initial scan is
    /// over; s6-svscan will not scan again unless asked).
    fn start(services: &[(&str, ServiceSpec<'_>)]) -> Scan {
        assert!(!services.is_empty(), "readiness is detected through a service");
        let tmp = tempfile::tempdir().unwrap();
        let scandir = tmp.path().join("scan");
        fs::create_dir(&scandir).unwrap();
        for (name, spec) in services {
            make_service(&scandir.join(name), spec);
        }
        let svscan = Svscan::start_on_host(&scandir, &tmp.path().join("s6-svscan.log"));
        let scan = Scan { _svscan: svscan, scandir, _tmp: tmp };
        for (name, _) in services {
            let dir = scan.service(name);
            wait_for(&format!("first status of {name}"), || read_status(&dir).unwrap());
        }
        scan
    }

    fn service(&self, name: &str) -> PathBuf {
        self.scandir.join(name)
    }
}

/// Output of `s6-svstat -o up,wantedup,normallyup,ready,pid,exitcode <dir>`, without newline.
fn svstat(dir: &Path) -> String {
    let out = Command::new("s6-svstat")
        .args(["-o", "up,wantedup,normallyup,ready,pid,exitcode"])
        .arg(dir)
        .output()
        .expect("run s6-svstat");
    assert!(
        out.status.success(),
        "s6-svstat {}: {:?} {}",
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim_end().to_string()
}

/// Exit status of `s6-svok <dir>`: 0 iff a supervisor runs there.
fn svok(dir: &Path) -> i32 {
    Command::new("s6-svok").arg(dir).status().expect("run s6-svok").code().unwrap()
}

/// Reads the status file, s6-svstat and the `down` file until the status file is the same
/// before and after (so both readers saw the same bytes), then checks that the decoder plus
/// [`normally_up`] print exactly what s6-svstat printed. Returns the decoded status and the line.
fn compare_with_svstat(dir: &Path) -> (ServiceStatus, String) {
    let status_file = dir.join("supervise/status");
    let (bytes, line, nup) = wait_for("a stable status file", || {
        let before = fs::read(&status_file).unwrap();
        let line = svstat(dir);
        let nup = normally_up(dir).unwrap();
        let after = fs::read(&status_file).unwrap();
        (before == after).then_some((before, line, nup))
    });
    assert_eq!(bytes.len(), 35, "s6 2.11 writes 35-byte status files");
    let st = decode_status(&bytes).unwrap();
    assert_eq!(st.svstat_line(nup), line, "decoder vs s6-svstat on {}", dir.display());
    (st, line)
}

/// Waits until the decoded status of `dir` satisfies `pred`.
fn wait_status(dir: &Path, what: &str, pred: impl Fn(&ServiceStatus) -> bool) -> ServiceStatus {
    wait_for(what, || read_status(dir).unwrap().filter(|s| pred(s)))
}

/// Last NSpid entry of a process (its pid in the innermost namespace).
fn innermost_pid(global: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{global}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    line.split_whitespace().last().unwrap().parse().unwrap()
}

#[test]
fn decoder_and_normally_up_reproduce_svstat_for_every_kind_of_service() {
    root_only!();
    let scan = Scan::start(&[
        ("sleeper", ServiceSpec { run: SLEEP, ..Default::default() }),
        ("parked", ServiceSpec { run: SLEEP, down: true, ..Default::default() }),
        ("exit3", ServiceSpec { run: "#!/bin/sh\nexit 3\n", down: true, ..Default::default() }),
        ("killed", ServiceSpec { run: "#!/bin/sh\nkill -KILL $$\n", down: true, ..Default::default() }),
        (
            "ready",
            ServiceSpec {
                run: "#!/bin/sh\necho >&3\nexec sleep 1000\n",
                notification_fd: Some(3),
                ..Default::default()
            },
        ),
        (
            // Exits 5, then stays in ./finish for good (timeout-finish 0 = no time limit).
            "finishing",
            ServiceSpec {
                run: "#!/bin/sh\nexit 5\n",
                finish: Some(SLEEP),
                down: true,
                timeout_finish_ms: Some(0),
                ..Default::default()
            },
        ),
    ]);
    // Run the `down` ones once: `o` starts them without wanting them back up afterwards.
    for name in ["exit3", "killed", "finishing"] {
        send_command(&scan.service(name), SupervisorCommand::Once).unwrap();
    }

    // Up, no readiness support: ready is false, exitcode -1 although the wait status is 0.
    let dir = scan.service("sleeper");
    let st = wait_status(&dir, "sleeper up", |s| s.is_up());
    let (st2, line) = compare_with_svstat(&dir);
    assert_eq!(st2, st);
    let pid = st.pid.unwrap();
    assert_eq!(line, format!("true true true false {pid} -1"));
    assert_eq!(st.wait_status, 0);
    assert_eq!(st.exit_code(), Some(0));
    assert_eq!(st.svstat_exitcode(), -1);
    assert_eq!(st.pgid, None, "35-byte format has no pgid");
    // The pid in the file is the pid inside the namespace: the supervisor's child, seen from
    // here under another number, has it as its innermost NSpid.
    let sup = supervisor_pid(&dir).unwrap().unwrap();
    let children = fs::read_to_string(format!("/proc/{sup}/task/{sup}/children")).unwrap();
    let child: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    assert_eq!(innermost_pid(child), pid);
    assert!(st.since <= std::time::SystemTime::now() + Duration::from_secs(5));

    // Down file, never started: normally down, wanted down, exitcode 0 (wait status 0).
    let dir = scan.service("parked");
    let (st, line) = compare_with_svstat(&dir);
    assert_eq!(line, "false false false false -1 0");
    assert!(!st.is_up() && !st.want_up && st.ready, "down and ready to start");
    assert!(!normally_up(&dir).unwrap());

    let dir = scan.service("exit3");
    wait_status(&dir, "exit3 to have exited", |s| !s.is_up() && !s.finishing && s.exit_code() == Some(3));
    let (st, line) = compare_with_svstat(&dir);
    assert_eq!(line, "false false false false -1 3");
    assert_eq!((st.exit_code(), st.signal()), (Some(3), None));

    let dir = scan.service("killed");
    wait_status(&dir, "killed to have died", |s| !s.is_up() && !s.finishing && s.signal().is_some());
    let (st, line) = compare_with_svstat(&dir);
    assert_eq!(line, "false false false false -1 -1");
    assert_eq!((st.exit_code(), st.signal()), (None, Some(9)));
    assert_eq!(st.svstat_signum(), 9);

    let dir = scan.service("ready");
    wait_status(&dir, "ready to notify", |s| s.is_ready());
    let (st, line) = compare_with_svstat(&dir);
    assert_eq!(line, format!("true true true true {} -1", st.pid.unwrap()));
    assert!(st.ready_since >= st.since, "readiness came after the start");

    // While ./finish runs the pid field holds finish's pid, yet the service is down.
    let dir = scan.service("finishing");
    wait_status(&dir, "finishing to run ./finish", |s| s.finishing && s.exit_code() == Some(5));
    let (st, line) = compare_with_svstat(&dir);
    assert_eq!(line, "false false false false -1 5");
    assert!(st.pid.is_some() && st.finishing && !st.is_up());
}

#[test]
fn persistent_commands_flip_wanted_up_and_the_down_file() {
    root_only!();
    let scan = Scan::start(&[("flip", ServiceSpec { run: SLEEP, ..Default::default() })]);
    let dir = scan.service("flip");
    let down = dir.join("down");
    wait_status(&dir, "flip up", |s| s.is_up());
    assert!(!down.exists());

    send_command(&dir, SupervisorCommand::DownPersist).unwrap();
    wait_status(&dir, "flip wanted down and down", |s| !s.want_up && !s.is_up());
    wait_for("./down to be created", || down.exists().then_some(()));
    let (st, line) = compare_with_svstat(&dir);
    // `d`/`D` stop the service with SIGTERM: no exit code.
    assert_eq!(line, "false false false false -1 -1");
    assert_eq!(st.signal(), Some(15));
    assert!(!normally_up(&dir).unwrap());

    send_command(&dir, SupervisorCommand::UpPersist).unwrap();
    wait_status(&dir, "flip wanted up and up", |s| s.want_up && s.is_up());
    wait_for("./down to be deleted", || (!down.exists()).then_some(()));
    let (st, line) = compare_with_svstat(&dir);
    assert_eq!(line, format!("true true true false {} -1", st.pid.unwrap()));
    assert!(normally_up(&dir).unwrap());

    // The non-persistent pair changes the flag only.
    send_command(&dir, SupervisorCommand::Down).unwrap();
    wait_status(&dir, "flip down (d)", |s| !s.want_up && !s.is_up());
    let (_, line) = compare_with_svstat(&dir);
    assert_eq!(line, "false false true false -1 -1");
    assert!(!down.exists());
    send_command(&dir, SupervisorCommand::Up).unwrap();
    wait_status(&dir, "flip up (u)", |s| s.want_up && s.is_up());
    let (st, line) = compare_with_svstat(&dir);
    assert_eq!(line, format!("true true true false {} -1", st.pid.unwrap()));
}

#[test]
fn kill_stops_a_service_that_ignores_sigterm() {
    root_only!();
    let scan = Scan::start(&[(
        "stubborn",
        ServiceSpec {
            // An ignored signal stays ignored across exec: sleep ignores SIGTERM. Readiness is
            // notified only once the trap is in place, so `d` cannot arrive before it.
            run: "#!/bin/sh\ntrap '' TERM\necho >&3\nexec sleep 1000\n",
            notification_fd: Some(3),
            ..Default::default()
        },
    )]);
    let dir = scan.service("stubborn");
    let st = wait_status(&dir, "stubborn up and ready", |s| s.is_ready());
    send_command(&dir, SupervisorCommand::Down).unwrap();
    let after_d = wait_status(&dir, "stubborn wanted down", |s| !s.want_up);
    // SIGTERM is ignored, so `d` alone never brings it down (no timeout-kill here).
    assert!(after_d.is_up());
    assert_eq!(after_d.pid, st.pid);
    let (_, line) = compare_with_svstat(&dir);
    assert_eq!(line, format!("true false true true {} -1", st.pid.unwrap()));

    send_command(&dir, SupervisorCommand::Kill).unwrap();
    let st = wait_status(&dir, "stubborn killed", |s| !s.is_up() && !s.finishing);
    assert_eq!(st.signal(), Some(9));
    let (_, line) = compare_with_svstat(&dir);
    assert_eq!(line, "false false true false -1 -1");
}

#[test]
fn rescan_supervises_a_service_renamed_into_the_scandir() {
    root_only!();
    let scan = Scan::start(&[("first", ServiceSpec { run: SLEEP, ..Default::default() })]);
    // Build under a dot name (ignored by s6-svscan), then publish with rename().
    let staging = scan.scandir.join(".late");
    make_service(&staging, &ServiceSpec { run: SLEEP, ..Default::default() });
    let dir = scan.service("late");
    fs::rename(&staging, &dir).unwrap();
    // s6-svscan scans only when asked: nothing supervises it yet.
    assert_eq!(supervisor_pid(&dir).unwrap(), None);
    assert!(matches!(
        send_command(&dir, SupervisorCommand::Up),
        Err(ControlError::NoSupervisor(p)) if p == control_path(&dir)
    ));

    rescan(&scan.scandir, false).unwrap();
    let sup = wait_for("a supervisor for late", || supervisor_pid(&dir).unwrap());
    assert!(sup > 0, "s6-supervise runs in a namespace we can see");
    wait_status(&dir, "late up", |s| s.is_up());
    let (st, line) = compare_with_svstat(&dir);
    assert_eq!(line, format!("true true true false {} -1", st.pid.unwrap()));
    // The existing service kept its supervisor.
    assert!(supervisor_pid(&scan.service("first")).unwrap().is_some());
}

#[test]
fn supervisor_pid_follows_the_lock_until_a_hidden_service_is_pruned() {
    root_only!();
    let scan = Scan::start(&[
        ("victim", ServiceSpec { run: SLEEP, ..Default::default() }),
        ("bystander", ServiceSpec { run: SLEEP, ..Default::default() }),
    ]);
    let dir = scan.service("victim");
    wait_status(&dir, "victim up", |s| s.is_up());
    let sup = supervisor_pid(&dir).unwrap().expect("victim is supervised");
    // The lock holder, seen from our namespace, is the s6-supervise of this directory.
    assert_eq!(fs::read_to_string(format!("/proc/{sup}/comm")).unwrap().trim_end(), "s6-supervise");
    assert_eq!(svok(&dir), 0);

    // Renaming is invisible to s6: same supervisor, still locked.
    let hidden = scan.scandir.join(".victim");
    fs::rename(&dir, &hidden).unwrap();
    assert_eq!(supervisor_pid(&hidden).unwrap(), Some(sup));

    rescan(&scan.scandir, true).unwrap();
    wait_for("the hidden service's supervisor to exit", || {
        supervisor_pid(&hidden).unwrap().is_none().then_some(())
    });
    assert_ne!(svok(&hidden), 0, "s6-svok agrees that nothing supervises it");
    // The FIFO is still there, but nobody reads it any more.
    assert!(control_path(&hidden).exists());
    match send_command(&hidden, SupervisorCommand::UpPersist) {
        Err(ControlError::NoSupervisor(p)) => assert_eq!(p, control_path(&hidden)),
        other => panic!("expected NoSupervisor, got {other:?}"),
    }
    // The service was brought down before its supervisor left.
    let st = read_status(&hidden).unwrap().unwrap();
    assert!(!st.is_up(), "{st:?}");
    // The lock file stays behind, unlocked.
    assert!(lock_path(&hidden).exists());

    let other = scan.service("bystander");
    assert!(supervisor_pid(&other).unwrap().is_some());
    assert!(read_status(&other).unwrap().unwrap().is_up());
}

#[test]
fn control_writes_without_a_reader_or_to_a_non_fifo_are_refused() {
    root_only!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("svc");
    fs::create_dir(&dir).unwrap();

    // Never supervised: no supervise/ at all.
    match send_command(&dir, SupervisorCommand::UpPersist) {
        Err(ControlError::NoSupervisor(p)) => assert_eq!(p, control_path(&dir)),
        other => panic!("expected NoSupervisor, got {other:?}"),
    }
    assert_eq!(supervisor_pid(&dir).unwrap(), None);
    assert_eq!(read_status(&dir).unwrap(), None);
    match rescan(tmp.path(), true) {
        Err(ControlError::NoSupervisor(p)) => {
            assert_eq!(p, tmp.path().join(".s6-svscan/control"))
        }
        other => panic!("expected NoSupervisor, got {other:?}"),
    }

    // A FIFO nobody reads (what a dead supervisor leaves): ENXIO.
    let sup = dir.join("supervise");
    fs::create_dir(&sup).unwrap();
    nix::unistd::mkfifo(&sup.join("control"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    assert!(matches!(send_command(&dir, SupervisorCommand::DownPersist), Err(ControlError::NoSupervisor(_))));
    // An unlocked lock file: no supervisor.
    fs::write(sup.join("lock"), "").unwrap();
    assert_eq!(supervisor_pid(&dir).unwrap(), None);

    // A regular file in place of the FIFO is never written to.
    fs::remove_file(sup.join("control")).unwrap();
    fs::write(sup.join("control"), "").unwrap();
    match send_command(&dir, SupervisorCommand::UpPersist) {
        Err(ControlError::Io { path, source }) => {
            assert_eq!(path, control_path(&dir));
            assert_eq!(source.kind(), ErrorKind::InvalidInput);
        }
        other => panic!("expected Io, got {other:?}"),
    }
    assert_eq!(fs::read(sup.join("control")).unwrap(), b"");

    // A symlink in the last component is not followed, not even to a live FIFO.
    fs::remove_file(sup.join("control")).unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    nix::unistd::mkfifo(&elsewhere, nix::sys::stat::Mode::S_IRWXU).unwrap();
    std::os::unix::fs::symlink(&elsewhere, sup.join("control")).unwrap();
    assert!(matches!(send_command(&dir, SupervisorCommand::UpPersist), Err(ControlError::Io { .. })));
    fs::remove_file(sup.join("lock")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("no-such"), sup.join("lock")).unwrap();
    assert!(matches!(supervisor_pid(&dir), Err(ControlError::Io { .. })));
}

#[test]
fn tai64n_of_a_real_status_file_is_recent() {
    root_only!();
    let scan = Scan::start(&[("clock", ServiceSpec { run: SLEEP, ..Default::default() })]);
    let dir = scan.service("clock");
    wait_status(&dir, "clock up", |s| s.is_up());
    let bytes = fs::read(dir.join("supervise/status")).unwrap();
    let mut label = [0u8; 12];
    label.copy_from_slice(&bytes[..12]);
    let since = tai64n_to_system_time(&label);
    let now = std::time::SystemTime::now();
    // Generous: only checks the epoch offset is right (a wrong one is off by years or by 2^62).
    let age = now.duration_since(since).unwrap_or_default();
    assert!(age < Duration::from_secs(3600), "since {since:?}, now {now:?}");
    assert!(since.duration_since(now).unwrap_or_default() < Duration::from_secs(3600));
}
