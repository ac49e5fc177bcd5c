//! The daemon (`hermes-reconciler run`) as a child process, and waits on what it does.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::WAIT;
use super::boot_log::BootLine;
use super::slots::{Want, wait_slots, wants};
use super::wait::poll;
use super::world::World;

/// Grace used by tests that want removals to happen soon.
pub const SHORT_GRACE_MS: &str = "300";

/// Bound of the wait for a daemon's readiness: a hang bound, not a performance check.
pub const READY_BOUND: Duration = Duration::from_secs(120);

/// What the readiness pipe delivered so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    pub bytes: Vec<u8>,
    /// Every write end is closed.
    pub eof: bool,
    /// When the first byte arrived.
    pub first_at: Option<Instant>,
}

/// `hermes-reconciler run --notify-fd 3` as a child process.
pub struct Daemon {
    child: Option<Child>,
    pid: i32,
    stderr: Arc<Mutex<String>>,
    readiness: Arc<Mutex<Readiness>>,
    threads: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
    /// Printed with the stderr when a test fails.
    label: String,
    spawned_at: Instant,
}

impl Daemon {
    /// Starts the daemon on `w` with `HERMES_RECONCILER_LOG=debug` and `env` on top of the
    /// world's environment. Does not wait for readiness.
    pub fn spawn(w: &World, env: &[(&str, &str)]) -> Daemon {
        let mut cmd = w.command(&["run", "--notify-fd", "3"]);
        cmd.env("HERMES_RECONCILER_LOG", "debug");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Daemon::spawn_command(cmd)
    }

    /// Starts `cmd`, which must be `hermes-reconciler run --notify-fd 3` with its environment
    /// (the benchmarks build their own), with the readiness pipe at fd 3, stderr collected and
    /// a parent-death SIGKILL. Does not wait for readiness.
    pub fn spawn_command(mut cmd: Command) -> Daemon {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let (reader, writer) = super::readiness_on_fd3(&mut cmd);
        let spawned_at = Instant::now();
        let mut child = cmd.spawn().expect("spawn hermes-reconciler run");
        drop(writer);
        let pid = child.id() as i32;
        let stderr = Arc::new(Mutex::new(String::new()));
        let readiness = Arc::new(Mutex::new(Readiness::default()));
        let mut threads = Vec::new();
        let err_pipe = child.stderr.take().expect("stderr pipe");
        let sink = stderr.clone();
        threads.push(std::thread::spawn(move || {
            let mut r = BufReader::new(err_pipe);
            let mut line = Vec::new();
            while r.read_until(b'\n', &mut line).map(|n| n > 0).unwrap_or(false) {
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&line));
                line.clear();
            }
        }));
        let ready = readiness.clone();
        threads.push(std::thread::spawn(move || {
            let mut reader = reader;
            let mut buf = [0u8; 64];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut r = ready.lock().unwrap();
                        r.first_at.get_or_insert_with(Instant::now);
                        r.bytes.extend_from_slice(&buf[..n]);
                    }
                }
            }
            ready.lock().unwrap().eof = true;
        }));
        Daemon {
            child: Some(child),
            pid,
            stderr,
            readiness,
            threads,
            status: None,
            label: format!("hermes-reconciler run (pid {pid})"),
            spawned_at,
        }
    }

    /// Starts the daemon and waits until it reports readiness.
    pub fn start(w: &World, env: &[(&str, &str)]) -> Daemon {
        let d = Daemon::spawn(w, env);
        d.wait_ready();
        d
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Stderr lines containing every one of `needles`.
    pub fn log_lines_with(&self, needles: &[&str]) -> Vec<String> {
        self.stderr().lines().filter(|l| needles.iter().all(|n| l.contains(n))).map(str::to_owned).collect()
    }

    pub fn readiness(&self) -> Readiness {
        self.readiness.lock().unwrap().clone()
    }

    /// Waits (bounded) for the readiness newline; panics with the daemon's stderr otherwise.
    ///
    /// Readiness comes after the first full pass, which waits until s6 supervises every slot it
    /// published: with hundreds of profiles on a loaded machine that takes more than [`WAIT`]
    /// (seen: 300 slots under two CPU burners on s6 2.11). The bound only catches a hang.
    pub fn wait_ready(&self) {
        if let Err(e) = self.wait_ready_within(READY_BOUND) {
            panic!("{e}");
        }
    }

    /// From spawn to the first readiness byte, once it has come.
    pub fn ready_after(&self) -> Option<Duration> {
        self.readiness().first_at.map(|t| t - self.spawned_at)
    }

    /// Waits at most `bound` for the readiness newline; `Err` carries the daemon's stderr.
    pub fn wait_ready_within(&self, bound: Duration) -> Result<(), String> {
        let r = poll(bound, || {
            let r = self.readiness();
            if !r.bytes.is_empty() {
                return Ok(());
            }
            if r.eof {
                return Err("readiness pipe closed without a byte".to_string());
            }
            Err("no readiness byte yet".to_string())
        });
        r.map_err(|e| format!("{}: not ready: {e}\nstderr:\n{}", self.label, self.stderr()))
    }

    /// Waits (bounded) for EOF on the readiness pipe and checks that exactly one newline came.
    pub fn readiness_is_one_newline(&self) -> Result<(), String> {
        poll(WAIT, || {
            let r = self.readiness();
            if r.eof { Ok(r) } else { Err(format!("readiness pipe still open after {:?}", r.bytes)) }
        })
        .and_then(|r| {
            if r.bytes == b"\n" {
                Ok(())
            } else {
                Err(format!("readiness pipe delivered {:?}, want exactly one newline", r.bytes))
            }
        })
    }

    pub fn signal(&self, sig: Signal) {
        if self.status.is_none() {
            kill(Pid::from_raw(self.pid), sig).unwrap_or_else(|e| panic!("kill -{sig} {}: {e}", self.pid));
        }
    }

    /// Exit status if the daemon has exited (reaps it).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Some(c) = self.child.as_mut()
            && let Ok(Some(st)) = c.try_wait()
        {
            self.status = Some(st);
        }
        self.status
    }

    /// Waits (bounded by `timeout`) for the daemon to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.wait_exit_every(timeout, Duration::from_millis(10))
    }

    /// SIGTERM, then waits at most `bound` for the exit; how long it took (to a millisecond),
    /// or `None` if the daemon still ran at the bound (it is then killed). For the benchmarks:
    /// tests assert the exit, never its duration.
    pub fn terminate_within(&mut self, bound: Duration) -> Option<Duration> {
        let t0 = Instant::now();
        self.signal(Signal::SIGTERM);
        let exited = self.wait_exit_every(bound, Duration::from_millis(1)).map(|_| t0.elapsed());
        if exited.is_none() {
            self.kill9();
        }
        exited
    }

    fn wait_exit_every(&mut self, timeout: Duration, step: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_status() {
                self.join_threads();
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(step);
        }
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if self.try_status().is_none() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            if let Some(c) = self.child.as_mut() {
                self.status = c.wait().ok();
            }
        }
        self.join_threads();
    }

    /// SIGTERM, then wait (bounded) for exit status 0.
    pub fn stop(&mut self) {
        self.signal(Signal::SIGTERM);
        match self.wait_exit(WAIT) {
            Some(st) if st.success() => {}
            other => panic!("{}: SIGTERM gave {other:?}\nstderr:\n{}", self.label, self.stderr()),
        }
    }

    fn join_threads(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            if let Some(c) = self.child.as_mut() {
                let _ = c.wait();
            }
        }
        self.join_threads();
        if std::thread::panicking() {
            eprintln!("----- {} stderr -----\n{}----- end -----", self.label, self.stderr());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Re-lists
// ---------------------------------------------------------------------------------------------

/// Proves that a full re-list ran after this call started: edits `run` of `canary`'s slot (a
/// drift only a full re-list sees: the scandir is not watched), sends SIGHUP, and waits until
/// the daemon has restored the file.
pub fn relist_barrier(w: &World, d: &Daemon, canary: &str) {
    let run = w.slot(canary).join("run");
    let original = fs::read(&run).unwrap_or_else(|e| panic!("read {}: {e}", run.display()));
    let mut edited = original.clone();
    edited.extend_from_slice(b"\n# edited by the relist barrier\n");
    fs::write(&run, &edited).unwrap();
    d.signal(Signal::SIGHUP);
    let r = poll(WAIT, || {
        if fs::read(&run).ok().as_deref() == Some(original.as_slice()) {
            Ok(())
        } else {
            Err(format!("{} not restored by a re-list", run.display()))
        }
    });
    if let Err(e) = r {
        panic!("{e}\nstderr:\n{}", d.stderr());
    }
}

/// Waits (bounded) until every slot of `pairs` matches; panics with the daemon's stderr.
pub fn converge(w: &World, d: &Daemon, pairs: &[(&str, Want)]) {
    must(d, "convergence", wait_slots(&w.scandir, &wants(pairs)));
}

/// Panics with the daemon's stderr when `r` is an error.
pub fn must<T>(d: &Daemon, what: &str, r: Result<T, String>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}\ndaemon stderr:\n{}", d.stderr()))
}

/// Waits (bounded) until the stand-in of `profile` has recorded `n` starts (s6 reports a
/// service up when its run script starts, a moment before the stand-in writes its record);
/// `Err` if it recorded fewer, or more.
pub fn starts(w: &World, profile: &str, n: usize) -> Result<(), String> {
    let got = poll(WAIT, || {
        let k = w.standin_records(profile).len();
        if k >= n { Ok(k) } else { Err(format!("{profile}: {k} stand-in start(s), want {n}")) }
    })?;
    if got == n { Ok(()) } else { Err(format!("{profile}: {got} stand-in starts, want {n}")) }
}

/// True when `lines` has a line for `profile` with `action`.
pub fn has_line(lines: &[BootLine], profile: &str, action: &str) -> bool {
    lines.iter().any(|l| l.profile == profile && l.action == action)
}

/// `container-boot.log` once `ready` holds for it (polled, bounded), or as it is when the wait
/// runs out. The daemon writes a pass's lines after the pass's s6 commands, so a test that saw
/// s6 act must wait a moment for the lines; `Err` names a malformed line.
pub fn boot_lines_when(w: &World, ready: impl Fn(&[BootLine]) -> bool) -> Result<Vec<BootLine>, String> {
    let mut last = Ok(Vec::new());
    let _ = poll(WAIT, || {
        let lines = w.boot_lines();
        let done = lines.as_ref().map_or(true, |l| ready(l));
        last = lines;
        if done { Ok(()) } else { Err(String::new()) }
    });
    last
}
