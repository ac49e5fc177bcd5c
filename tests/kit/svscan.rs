//! s6-svscan as init of its own pid and mount namespace, and the processes of that namespace.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::s6::{CHROOT_SH, s6_root, shared_tmp};
use super::slots::gateway_slots;
use super::world::World;
use super::{PATH, WAIT};

/// An `s6-svscan` running as init of its own pid namespace.
pub struct Svscan {
    unshare: Option<Child>,
    /// Pid (in our namespace) of s6-svscan, the namespace's init.
    init: Option<i32>,
    scandir: PathBuf,
}

fn children_of(pid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    out
}

fn comm(pid: i32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim().to_string())
}

/// True when something reads `fifo` (a non-blocking write-only open succeeds).
pub fn fifo_has_reader(fifo: &Path) -> bool {
    fs::OpenOptions::new().write(true).custom_flags(nix::libc::O_NONBLOCK).open(fifo).is_ok()
}

impl Svscan {
    /// Starts s6-svscan on `scandir` and waits until it listens on its control FIFO.
    pub fn start(scandir: &Path, log: &Path) -> Svscan {
        Svscan::start_with(scandir, log, &[])
    }

    /// Starts s6-svscan with extra options (e.g. `-C 40`) on `scandir`, from the s6
    /// generation under test, and waits until it listens on its control FIFO.
    pub fn start_with(scandir: &Path, log: &Path, options: &[&str]) -> Svscan {
        Svscan::start_env(scandir, log, options, &[])
    }

    /// [`Svscan::start_with`], with `env` on top of `PATH` in s6-svscan's environment (which
    /// every supervisor and service inherits).
    pub fn start_env(scandir: &Path, log: &Path, options: &[&str], env: &[(&str, &OsStr)]) -> Svscan {
        Svscan::spawn(scandir, log, options, env, s6_root())
    }

    /// The host's s6-svscan on `scandir`, whatever `HERMES_TEST_S6_ROOT` says: for the suites
    /// that pin the generation (`s6_direct` compares the decoder with the host's s6-svstat).
    pub fn start_on_host(scandir: &Path, log: &Path) -> Svscan {
        Svscan::spawn(scandir, log, &[], &[], None)
    }

    fn spawn(
        scandir: &Path,
        log: &Path,
        options: &[&str],
        env: &[(&str, &OsStr)],
        root: Option<PathBuf>,
    ) -> Svscan {
        let out = fs::OpenOptions::new().create(true).append(true).open(log).expect("svscan log file");
        let err = out.try_clone().expect("dup svscan log");
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--kill-child", "--mount", "--mount-proc"]);
        if let Some(root) = root {
            cmd.args(["sh", "-c", CHROOT_SH]).arg(root).arg(shared_tmp());
        }
        // `-d 3`: s6-svscan writes a newline to fd 3 once it is ready. That comes after it
        // listens on its control FIFO and, from s6 2.14.0.1 on, after its start-up cleanup,
        // which unlinks every dangling symlink of the scandir: a test that planted one in
        // between (the FIFO was once the only sign waited for) lost it on a busy machine.
        cmd.arg("s6-svscan")
            .args(["-d", "3"])
            .args(options)
            .arg(scandir)
            .env_clear()
            .env("PATH", PATH)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // unshare, sh and chroot pass fd 3 on to s6-svscan.
        let (mut ready, writer) = super::readiness_on_fd3(&mut cmd);
        let child = cmd.spawn().expect("spawn unshare s6-svscan (is util-linux unshare installed?)");
        drop(writer);
        let pid = child.id();
        let mut scan = Svscan { unshare: Some(child), init: None, scandir: scandir.to_path_buf() };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(&c) = children_of(pid).first()
                && comm(c).as_deref() == Some("s6-svscan")
            {
                scan.init = Some(c);
                break;
            }
            if let Some(st) = scan.unshare.as_mut().and_then(|u| u.try_wait().ok().flatten()) {
                panic!("unshare s6-svscan exited early ({st}); see {}", log.display());
            }
            assert!(Instant::now() < deadline, "s6-svscan did not start under unshare {pid}");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Bounded: s6-svscan writes one byte and never closes the pipe's other copies (unshare
        // keeps one), so the wait polls the read end and keeps an eye on the process.
        let mut byte = [0u8; 1];
        let deadline = Instant::now() + WAIT;
        loop {
            let mut fds = [PollFd::new(ready.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::from(50u16)).unwrap_or(0) > 0 {
                let n = ready.read(&mut byte).expect("read s6-svscan's readiness pipe");
                assert!(
                    n == 1 && byte[0] == b'\n',
                    "s6-svscan closed its readiness pipe; see {}",
                    log.display()
                );
                break;
            }
            if let Some(st) = scan.unshare.as_mut().and_then(|u| u.try_wait().ok().flatten()) {
                panic!("unshare s6-svscan exited before it was ready ({st}); see {}", log.display());
            }
            assert!(Instant::now() < deadline, "s6-svscan under unshare {pid} never said it was ready");
        }
        let control = scandir.join(".s6-svscan/control");
        assert!(fifo_has_reader(&control), "s6-svscan is ready but nothing reads .s6-svscan/control");
        scan
    }

    pub fn init_pid(&self) -> Option<i32> {
        self.init
    }

    /// Kills the whole namespace and waits until every process in it is gone.
    pub fn kill(&mut self) {
        if let Some(init) = self.init.take() {
            let _ = kill(Pid::from_raw(init), Signal::SIGKILL);
        }
        if let Some(mut u) = self.unshare.take() {
            // unshare exits once it has reaped its child (the init); an init's exit waits for
            // every other process of its namespace to be gone first. Killing unshare before
            // that would leave the init a zombie nobody reaps.
            let deadline = Instant::now() + WAIT;
            while u.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = u.kill();
            let _ = u.wait();
        }
    }
}

impl Drop for Svscan {
    fn drop(&mut self) {
        self.kill();
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
    ns_processes_of(w.svscan.as_ref().expect("s6-svscan running"))
}

/// Every process of the pid namespace whose init is `svscan`.
pub fn ns_processes_of(svscan: &Svscan) -> Vec<Proc> {
    let init = svscan.init_pid().expect("s6-svscan running");
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
    supervisors_of_ns(w.svscan.as_ref().expect("s6-svscan running"))
}

/// Number of `s6-supervise` processes per service name in `svscan`'s namespace.
pub fn supervisors_of_ns(svscan: &Svscan) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for p in ns_processes_of(svscan) {
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
