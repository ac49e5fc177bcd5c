//! Helpers for the end-to-end tests of the daemon (`hermes-reconciler run`) and `status`, on
//! top of the shared harness in `tests/common` (used read-only).
//!
//! - [`Daemon`]: the daemon as a child process with the world's environment, a readiness pipe
//!   at fd 3 (`--notify-fd 3`) whose bytes are counted until EOF, stderr collected as it comes
//!   (printed when a test fails), killed on drop;
//! - the processes of a world's pid namespace (`/proc`, compared by pid namespace), to count
//!   the `s6-supervise` of each slot and to tell whether a gateway process still exists;
//! - atomic writes of `gateway_state.json` the way Hermes makes them (temp file + rename);
//! - [`relist_barrier`]: proof that a full re-list has run after a given moment;
//! - `status --json` rows and their comparison with `s6-svstat`.
//!
//! Every wait is bounded and only final states are asserted, never durations.

#![allow(dead_code)]

use crate::common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Grace used by tests that want removals to happen soon.
pub const SHORT_GRACE_MS: &str = "300";

/// What the readiness pipe delivered so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    pub bytes: Vec<u8>,
    /// Every write end is closed.
    pub eof: bool,
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
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        // The pipe's ends are close-on-exec; the child gets the write end as fd 3 only.
        let (reader, writer) = std::io::pipe().expect("readiness pipe");
        let wfd = writer.as_raw_fd();
        // SAFETY: only async-signal-safe calls (prctl, dup2, fcntl) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
                if wfd == 3 {
                    if nix::libc::fcntl(3, nix::libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if nix::libc::dup2(wfd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
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
                    Ok(n) => ready.lock().unwrap().bytes.extend_from_slice(&buf[..n]),
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
    pub fn wait_ready(&self) {
        let r = poll(WAIT, || {
            let r = self.readiness();
            if !r.bytes.is_empty() {
                return Ok(());
            }
            if r.eof {
                return Err("readiness pipe closed without a byte".to_string());
            }
            Err("no readiness byte yet".to_string())
        });
        if let Err(e) = r {
            panic!("{}: not ready: {e}\nstderr:\n{}", self.label, self.stderr());
        }
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
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_status() {
                self.join_threads();
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
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
// Processes of a world's pid namespace
// ---------------------------------------------------------------------------------------------

/// One process of the world's pid namespace.
#[derive(Clone, Debug)]
pub struct Proc {
    /// Pid in our namespace.
    pub pid: i32,
    /// Pid inside the world's namespace (what s6 and the stand-in record).
    pub ns_pid: i64,
    pub argv: Vec<String>,
}

/// Every process of the pid namespace whose init is the world's s6-svscan.
pub fn ns_processes(w: &World) -> Vec<Proc> {
    let init = w.svscan.as_ref().and_then(|s| s.init_pid()).expect("s6-svscan running");
    let Ok(ns) = fs::read_link(format!("/proc/{init}/ns/pid")) else { return Vec::new() };
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if fs::read_link(e.path().join("ns/pid")).ok().as_ref() != Some(&ns) {
            continue;
        }
        let Ok(status) = fs::read_to_string(e.path().join("status")) else { continue };
        let ns_pid = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|v| v.split_whitespace().last())
            .and_then(|v| v.parse::<i64>().ok());
        let Some(ns_pid) = ns_pid else { continue };
        let argv = fs::read(e.path().join("cmdline"))
            .unwrap_or_default()
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        out.push(Proc { pid, ns_pid, argv });
    }
    out
}

/// Number of `s6-supervise` processes per service name (`gateway-a`, `gateway-a/log`, ...).
pub fn supervisors(w: &World) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for p in ns_processes(w) {
        if p.argv.first().is_some_and(|a| a.ends_with("s6-supervise"))
            && let Some(name) = p.argv.get(1)
        {
            *out.entry(name.clone()).or_insert(0) += 1;
        }
    }
    out
}

/// `s6-supervise` processes naming `slot` or `slot/log`.
pub fn supervisors_of(w: &World, slot: &str) -> (usize, usize) {
    let s = supervisors(w);
    (s.get(slot).copied().unwrap_or(0), s.get(&format!("{slot}/log")).copied().unwrap_or(0))
}

/// Is a process with this namespace pid alive in the world's namespace?
pub fn ns_pid_alive(w: &World, ns_pid: i64) -> bool {
    ns_processes(w).iter().any(|p| p.ns_pid == ns_pid)
}

/// Checks that every `gateway-*` service (and its logger) has exactly one supervisor and that
/// no supervisor runs for a `gateway-*` name that is not in the scandir (call it once
/// removals are finished: a removal in flight still has its supervisors for a moment).
pub fn one_supervisor_each(w: &World) -> Result<(), String> {
    let sup = supervisors(w);
    let mut bad = Vec::new();
    for slot in gateway_slots(&w.scandir) {
        for name in [slot.clone(), format!("{slot}/log")] {
            let n = sup.get(&name).copied().unwrap_or(0);
            if n != 1 {
                bad.push(format!("{name}: {n} s6-supervise"));
            }
        }
    }
    for (name, n) in &sup {
        let base = name.strip_suffix("/log").unwrap_or(name);
        // The daemon's throwaway scanner kick entry runs nothing (it has a `down` file).
        if base.starts_with("gateway-") && base != "gateway--kick" && !w.scandir.join(base).exists() {
            bad.push(format!("{name}: {n} s6-supervise for a slot that is not in the scandir"));
        }
    }
    if bad.is_empty() { Ok(()) } else { Err(bad.join("; ")) }
}

// ---------------------------------------------------------------------------------------------
// The volume
// ---------------------------------------------------------------------------------------------

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Replaces `<dir>/gateway_state.json` atomically (temp file + rename), as Hermes does.
pub fn write_state(dir: &Path, state: &serde_json::Value) {
    let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".gateway_state.json.tmp-{}-{n}", std::process::id()));
    fs::write(&tmp, state.to_string()).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    fs::rename(&tmp, dir.join("gateway_state.json"))
        .unwrap_or_else(|e| panic!("rename {}: {e}", tmp.display()));
}

/// Sets `desired_state` (and nothing else) atomically.
pub fn set_desired(dir: &Path, value: &str) {
    write_state(dir, &serde_json::json!({ "desired_state": value }));
}

/// Builds a complete profile in `<root>/staging-<name>` (outside `profiles/`) and renames it
/// into `profiles/<name>` in one step.
pub fn rename_in_profile(w: &World, name: &str, desired: Option<&str>) -> PathBuf {
    let staging = w.root.join(format!("staging-{name}"));
    fs::create_dir_all(&staging).unwrap();
    fs::write(staging.join("SOUL.md"), "# soul\n").unwrap();
    if let Some(d) = desired {
        set_desired(&staging, d);
    }
    let profiles = w.home.join("profiles");
    fs::create_dir_all(&profiles).unwrap();
    let dest = profiles.join(name);
    fs::rename(&staging, &dest).unwrap();
    dest
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

// ---------------------------------------------------------------------------------------------
// status --json
// ---------------------------------------------------------------------------------------------

/// `status --json` rows by profile name; `Err` if it fails or prints something else.
pub fn status_rows(w: &World) -> Result<BTreeMap<String, serde_json::Value>, String> {
    let o = w.run(&["status", "--json"]);
    if o.code != Some(0) {
        return Err(format!("status --json exited {:?}: {}", o.code, o.stderr));
    }
    let v: serde_json::Value =
        serde_json::from_str(o.stdout.trim()).map_err(|e| format!("status --json: {e}: {:?}", o.stdout))?;
    let rows = v
        .get("profiles")
        .and_then(|p| p.as_array())
        .ok_or_else(|| format!("status --json has no profiles array: {v}"))?;
    let mut out = BTreeMap::new();
    for r in rows {
        let name = r
            .get("profile")
            .and_then(|p| p.as_str())
            .ok_or_else(|| format!("row without profile: {r}"))?
            .to_string();
        if out.insert(name.clone(), r.clone()).is_some() {
            return Err(format!("two rows for profile {name}"));
        }
    }
    Ok(out)
}

/// Checks one `status` row against `s6-svstat` and the slot directory.
pub fn row_agrees_with_s6(w: &World, row: &serde_json::Value) -> Result<(), String> {
    let name = row["profile"].as_str().unwrap_or_default();
    let slot = w.slot(name);
    let mut bad = Vec::new();
    let present = slot.is_dir();
    if row["slot"] != serde_json::json!(slot_name(name)) {
        bad.push(format!("slot {} != {}", row["slot"], slot_name(name)));
    }
    if row["slot_present"] != serde_json::json!(present) {
        bad.push(format!("slot_present {} but directory exists: {present}", row["slot_present"]));
    }
    if present {
        let st = svstat(&slot)?;
        let pairs = [
            ("wanted_up", serde_json::json!(st.wanted_up)),
            ("up", serde_json::json!(st.up)),
            ("ready", serde_json::json!(st.ready)),
            ("normally_up", serde_json::json!(st.normally_up)),
            ("pid", serde_json::json!(st.pid)),
            ("supervised", serde_json::json!(true)),
        ];
        for (k, want) in pairs {
            if row[k] != want {
                bad.push(format!("{k}: status says {}, s6-svstat says {want}", row[k]));
            }
        }
        if st.normally_up == slot.join("down").exists() {
            bad.push(format!("s6-svstat normallyup {} disagrees with the down file", st.normally_up));
        }
    } else {
        for k in ["wanted_up", "up", "pid"] {
            if !row[k].is_null() {
                bad.push(format!("{k} is {} for a slot that does not exist", row[k]));
            }
        }
    }
    if bad.is_empty() { Ok(()) } else { Err(format!("status row {name}: {}", bad.join(", "))) }
}

/// Waits (bounded) until `status --json` has exactly the rows `profiles` and each agrees with
/// s6; returns the rows.
pub fn status_agrees(w: &World, profiles: &[&str]) -> Result<BTreeMap<String, serde_json::Value>, String> {
    poll(WAIT, || {
        let rows = status_rows(w)?;
        let names: Vec<&str> = rows.keys().map(String::as_str).collect();
        let mut want: Vec<&str> = profiles.to_vec();
        want.sort();
        if names != want {
            return Err(format!("status rows {names:?}, want {want:?}"));
        }
        for r in rows.values() {
            row_agrees_with_s6(w, r)?;
        }
        Ok(rows)
    })
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
