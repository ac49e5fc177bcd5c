//! The lab: one s6-svscan in its own pid and mount namespace, a `HERMES_HOME`, the daemon, and
//! the recorder of stand-in starts. Everything it starts is stopped when it is dropped, even on a
//! panic: SIGKILL to the namespace's init (sent from outside) ends every process inside it.

use anyhow::{Context, Result, bail};
use nix::libc;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::Mode;
use nix::unistd::Pid;
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The program under test, built in release by `cargo bench`.
pub const BIN: &str = env!("CARGO_BIN_EXE_hermes-reconciler");

/// The daemon binary to measure: [`BIN`], or `$HERMES_BENCH_DAEMON` (to compare a prototype
/// build against the same floors).
pub fn bin() -> String {
    std::env::var("HERMES_BENCH_DAEMON").ok().filter(|v| !v.is_empty()).unwrap_or_else(|| BIN.to_string())
}
/// Environment variable naming the FIFO the stand-in gateway reports its start into.
pub const FIFO_ENV: &str = "HERMES_BENCH_FIFO";
/// s6-svscan's service limit in the lab (2.11: `-c`; a service and its logger count once).
pub const SVSCAN_LIMIT: &str = "4000";
/// Where the labs' homes go: `$HERMES_BENCH_HOME_BASE`, default `/tmp` (standing for the volume).
pub fn home_base() -> String {
    std::env::var("HERMES_BENCH_HOME_BASE").ok().filter(|v| !v.is_empty()).unwrap_or_else(|| "/tmp".into())
}

/// A tmpfs for the scandirs (the container's scandir is a tmpfs).
pub const SCANDIR_BASE: &str = "/dev/shm";

/// CLOCK_MONOTONIC in nanoseconds: the one clock the runner and every stand-in share.
pub fn mono_ns() -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// Sleeps until CLOCK_MONOTONIC reaches `ns` (returns at once if it has).
pub fn sleep_until_ns(ns: i64) {
    let now = mono_ns();
    if ns > now {
        std::thread::sleep(Duration::from_nanos((ns - now) as u64));
    }
}

/// Polls `f` every `step` until it returns `Some` or `timeout` passes.
pub fn poll<T>(timeout: Duration, step: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(step);
    }
}

/// Makes the child die (with `sig`) when the runner's spawning thread dies, however it dies.
fn die_with_parent(cmd: &mut Command, sig: libc::c_int) {
    // SAFETY: prctl is async-signal-safe; nothing else runs in the child before exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Writes `bytes` into a control FIFO (write-only, non-blocking: fails if nobody reads it).
pub fn control(fifo: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(fifo)?;
    f.write_all(bytes)
}

/// Asks s6-svscan to rescan (`a`), and to prune (`an`).
pub fn rescan(scandir: &Path, prune: bool) -> Result<()> {
    let bytes: &[u8] = if prune { b"an" } else { b"a" };
    control(&scandir.join(".s6-svscan/control"), bytes).context("rescan byte not written")
}

/// Pid (in the runner's namespace) of the s6-supervise holding `<dir>/supervise/lock`: a write
/// lock, asked for with `F_RDLCK` so that read locks (anyone's, the file is 0644) never count
/// (SPEC §9.1, as `hermes_reconciler::s6::supervisor_pid`).
pub fn lock_holder(dir: &Path) -> Option<i32> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(dir.join("supervise/lock"))
        .ok()?;
    // SAFETY: an all-zero flock is a valid value; F_GETLK fills it in.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_RDLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: valid descriptor and flock.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) } != 0 {
        return None;
    }
    (fl.l_type != libc::F_UNLCK as libc::c_short).then_some(fl.l_pid)
}

/// The parts of `supervise/status` the benchmarks look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub pid: u64,
    pub want_up: bool,
    pub finishing: bool,
}

/// Decodes `<dir>/supervise/status` (35 bytes; 43 on s6 2.13).
pub fn read_status(dir: &Path) -> Option<Status> {
    let b = fs::read(dir.join("supervise/status")).ok()?;
    if b.len() != 35 && b.len() != 43 {
        return None;
    }
    let pid = u64::from_be_bytes(b[24..32].try_into().ok()?);
    let flags = b[b.len() - 1];
    Some(Status { pid, want_up: flags & 4 != 0, finishing: flags & 2 != 0 })
}

/// Wakes on every rewrite of a slot's `supervise/status` (s6-supervise renames a new one in).
pub struct StatusWatch {
    dir: PathBuf,
    inotify: Inotify,
}

impl StatusWatch {
    pub fn new(dir: &Path) -> Result<Self> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        inotify.add_watch(
            &dir.join("supervise"),
            AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_CREATE,
        )?;
        Ok(StatusWatch { dir: dir.to_path_buf(), inotify })
    }

    /// CLOCK_MONOTONIC when the status first satisfied `cond` (checked at every rewrite).
    pub fn wait(&self, timeout: Duration, cond: impl Fn(&Status) -> bool) -> Option<i64> {
        let deadline = Instant::now() + timeout;
        loop {
            while self.inotify.read_events().is_ok_and(|e| !e.is_empty()) {}
            if read_status(&self.dir).is_some_and(|s| cond(&s)) {
                return Some(mono_ns());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            // A 20 ms fallback in case an event was missed; normally inotify wakes us first.
            let ms = left.as_millis().min(20) as u16;
            let mut fds = [nix::poll::PollFd::new(self.inotify.as_fd(), nix::poll::PollFlags::POLLIN)];
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms));
        }
    }
}

/// One start of a stand-in gateway.
#[derive(Clone, Debug)]
pub struct Start {
    pub name: String,
    pub ns: i64,
}

type Shared = Arc<(Mutex<Vec<Start>>, Condvar)>;

/// Collects the lines stand-ins write into the lab's FIFO (`<name> <CLOCK_MONOTONIC ns>`).
pub struct Recorder {
    path: PathBuf,
    shared: Shared,
    thread: Option<JoinHandle<()>>,
}

const QUIT: &str = "\u{1}quit";

impl Recorder {
    pub fn new(path: &Path) -> Result<Self> {
        nix::unistd::mkfifo(path, Mode::from_bits_truncate(0o666))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o666))?;
        // Read-write: there is always a writer, so reads never see end-of-file.
        let fifo = fs::OpenOptions::new().read(true).write(true).open(path)?;
        let shared: Shared = Arc::default();
        let mine = shared.clone();
        let thread = std::thread::spawn(move || {
            for line in BufReader::new(fifo).lines() {
                let Ok(line) = line else { break };
                if line == QUIT {
                    break;
                }
                let Some((name, ns)) = line.split_once(' ') else { continue };
                let Ok(ns) = ns.trim().parse() else { continue };
                let (m, c) = &*mine;
                m.lock().unwrap().push(Start { name: name.to_string(), ns });
                c.notify_all();
            }
        });
        Ok(Recorder { path: path.to_path_buf(), shared, thread: Some(thread) })
    }

    /// Waits until `done` finds what it looks for in the starts so far.
    pub fn wait_until<T>(&self, timeout: Duration, mut done: impl FnMut(&[Start]) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let (m, c) = &*self.shared;
        let mut starts = m.lock().unwrap();
        loop {
            if let Some(v) = done(&starts) {
                return Some(v);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            starts = c.wait_timeout(starts, left).unwrap().0;
        }
    }

    /// The first start of `name`.
    pub fn first_of(&self, name: &str, timeout: Duration) -> Option<i64> {
        self.wait_until(timeout, |s| s.iter().find(|x| x.name == name).map(|x| x.ns))
    }

    /// Waits until every one of `names` has started.
    pub fn all_started(&self, names: &[String], timeout: Duration) -> Result<()> {
        let missing = |s: &[Start]| names.iter().filter(|n| !s.iter().any(|x| &x.name == *n)).count();
        if self.wait_until(timeout, |s| (missing(s) == 0).then_some(())).is_none() {
            bail!(
                "{} of {} gateways did not start within {timeout:?}",
                missing(&self.snapshot()),
                names.len()
            );
        }
        Ok(())
    }

    /// The FIFO stand-ins write into.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn snapshot(&self) -> Vec<Start> {
        self.shared.0.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if control(&self.path, format!("{QUIT}\n").as_bytes()).is_ok()
            && let Some(t) = self.thread.take()
        {
            let _ = t.join();
        }
    }
}

/// s6-svscan as the init of a fresh pid + mount namespace.
pub struct Svscan {
    unshare: Option<Child>,
}

impl Svscan {
    pub fn start(scandir: &Path, fifo: &Path, log: &Path) -> Result<Self> {
        let out = fs::File::create(log)?;
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--pid",
            "--fork",
            "--kill-child",
            "--mount",
            "--mount-proc",
            "s6-svscan",
            "-c",
            SVSCAN_LIMIT,
        ])
        .arg(scandir)
        .env(FIFO_ENV, fifo)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
        die_with_parent(&mut cmd, libc::SIGKILL);
        let s = Svscan { unshare: Some(cmd.spawn().context("unshare s6-svscan")?) };
        let ctl = scandir.join(".s6-svscan/control");
        if poll(Duration::from_secs(10), Duration::from_millis(2), || control(&ctl, b"").ok()).is_none() {
            bail!("s6-svscan did not come up on {} (see {})", scandir.display(), log.display());
        }
        Ok(s)
    }

    /// s6-svscan's pid in the runner's namespace (the only child of `unshare`).
    fn init_pid(&self) -> Option<i32> {
        let pid = self.unshare.as_ref()?.id();
        for task in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
            let children = fs::read_to_string(task.path().join("children")).unwrap_or_default();
            if let Some(p) = children.split_whitespace().next().and_then(|p| p.parse().ok()) {
                return Some(p);
            }
        }
        None
    }
}

impl Drop for Svscan {
    fn drop(&mut self) {
        if let Some(init) = self.init_pid() {
            let _ = kill(Pid::from_raw(init), Signal::SIGKILL);
        }
        if let Some(mut child) = self.unshare.take()
            && poll(Duration::from_secs(10), Duration::from_millis(5), || child.try_wait().ok().flatten())
                .is_none()
        {
            // `--kill-child` passes this on to s6-svscan, and the namespace dies with it.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `hermes-reconciler run --notify-fd 3`, ready.
pub struct DaemonProc {
    child: Option<Child>,
    pub pid: i32,
    /// From spawn to the readiness newline.
    pub ready_after: Duration,
}

impl DaemonProc {
    pub fn start(env: &[(String, String)], log: &Path) -> Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: fds is a valid array of two ints.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            bail!("pipe2: {}", std::io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned here only.
        let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let w = write_end.as_raw_fd();
        let mut cmd = Command::new(bin());
        cmd.args(["run", "--notify-fd", "3"])
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(log)?);
        // SAFETY: dup2/fcntl/prctl are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                let ok = if w == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(w, 3) };
                if ok < 0 || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let t0 = Instant::now();
        let child = cmd.spawn().context("spawning hermes-reconciler run")?;
        drop(write_end);
        let pid = child.id() as i32;
        let mut me = DaemonProc { child: Some(child), pid, ready_after: Duration::ZERO };
        let mut pipe = fs::File::from(read_end);
        let mut buf = [0u8; 16];
        let deadline = Instant::now() + Duration::from_secs(300);
        let ready = loop {
            let mut fds = [nix::poll::PollFd::new(pipe.as_fd(), nix::poll::PollFlags::POLLIN)];
            match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(1000u16)) {
                Ok(n) if n > 0 => break pipe.read(&mut buf).is_ok_and(|n| buf[..n].contains(&b'\n')),
                _ if Instant::now() >= deadline => break false,
                _ => {}
            }
        };
        if !ready {
            bail!("the daemon did not signal readiness (see {})", log.display());
        }
        me.ready_after = t0.elapsed();
        Ok(me)
    }

    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.pid), sig);
    }

    /// Sends SIGTERM and waits (at most `bound`) for the daemon to exit; returns how long it
    /// took, or `None` if it was still running at the bound (it is then killed).
    pub fn terminate_timed(&mut self, bound: Duration) -> Option<Duration> {
        let mut child = self.child.take()?;
        let t0 = Instant::now();
        self.signal(Signal::SIGTERM);
        let exited = poll(bound, Duration::from_millis(1), || child.try_wait().ok().flatten());
        let took = t0.elapsed();
        if exited.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        exited.map(|_| took)
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.signal(Signal::SIGTERM);
            if poll(Duration::from_secs(5), Duration::from_millis(5), || child.try_wait().ok().flatten())
                .is_none()
            {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Writes a profile's `SOUL.md` and `gateway_state.json` into `dir` (created).
pub fn write_profile(dir: &Path, running: bool) -> Result<()> {
    fs::create_dir(dir).with_context(|| format!("mkdir {}", dir.display()))?;
    fs::write(dir.join("SOUL.md"), "# bench\n")?;
    write_intent_file(dir, running)
}

/// Writes `desired_state` in place.
pub fn write_intent_file(dir: &Path, running: bool) -> Result<()> {
    fs::write(dir.join("gateway_state.json"), intent_json(running))?;
    Ok(())
}

fn intent_json(running: bool) -> String {
    format!("{{\"desired_state\":\"{}\"}}\n", if running { "running" } else { "stopped" })
}

/// An atomic rewrite of `desired_state` as a careful tool does it: the new file is written
/// under a temporary name first ([`IntentRewrite::prepare`]), then renamed over the old one
/// ([`IntentRewrite::commit`]) — the moment the new intent exists.
pub struct IntentRewrite {
    tmp: PathBuf,
    target: PathBuf,
}

impl IntentRewrite {
    pub fn prepare(dir: &Path, running: bool) -> Result<Self> {
        let tmp = dir.join(".gateway_state.json.tmp");
        fs::write(&tmp, intent_json(running))?;
        Ok(IntentRewrite { tmp, target: dir.join("gateway_state.json") })
    }

    pub fn commit(self) -> Result<()> {
        fs::rename(&self.tmp, &self.target)?;
        Ok(())
    }
}

/// One isolated world: home, scandir, s6-svscan, recorder, and optionally the daemon.
pub struct Lab {
    pub daemon: Option<DaemonProc>,
    svscan: Option<Svscan>,
    pub recorder: Recorder,
    pub home: PathBuf,
    pub profiles: PathBuf,
    pub scandir: PathBuf,
    /// Where profiles are built before they are renamed into `profiles/` (same filesystem).
    pub stage: PathBuf,
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
    _scan_tmp: tempfile::TempDir,
}

impl Lab {
    pub fn new(tag: &str) -> Result<Self> {
        let tmp = tempfile::Builder::new().prefix(&format!("hermes-bench-{tag}-")).tempdir_in(home_base())?;
        let dir = tmp.path().to_path_buf();
        // The scandir is on tmpfs, as in the container (/run/service); the home is on /tmp's
        // filesystem, standing for the volume.
        let scan_tmp =
            tempfile::Builder::new().prefix(&format!("hermes-bench-{tag}-scan-")).tempdir_in(SCANDIR_BASE)?;
        let scandir = scan_tmp.path().to_path_buf();
        let (home, stage) = (dir.join("home"), dir.join("stage"));
        let profiles = home.join("profiles");
        for d in [&home, &profiles, &scandir, &stage] {
            fs::create_dir_all(d)?;
        }
        let recorder = Recorder::new(&dir.join("starts.fifo"))?;
        let svscan = Svscan::start(&scandir, &dir.join("starts.fifo"), &dir.join("svscan.log"))?;
        Ok(Lab {
            daemon: None,
            svscan: Some(svscan),
            recorder,
            home,
            profiles,
            scandir,
            stage,
            dir,
            _tmp: tmp,
            _scan_tmp: scan_tmp,
        })
    }

    /// The daemon's environment: the lab's paths, the stand-in, no privilege drop, `extra`.
    pub fn env(&self, extra: &[(&str, String)]) -> Vec<(String, String)> {
        let standin: OsString = std::env::current_exe().expect("own path").into();
        let mut env = vec![
            ("PATH".to_string(), std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())),
            ("HERMES_HOME".into(), self.home.display().to_string()),
            ("S6_PROFILE_GATEWAY_SCANDIR".into(), self.scandir.display().to_string()),
            ("HERMES_GATEWAY_COMMAND".into(), standin.to_string_lossy().into_owned()),
            ("HERMES_RUN_AS".into(), String::new()),
            // The daemon's own runtime state stays in the lab (a build that has no such
            // setting ignores it).
            ("HERMES_RECONCILER_RUNTIME_DIR".into(), self.dir.join("run").display().to_string()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        env
    }

    pub fn start_daemon(&mut self, extra: &[(&str, String)]) -> Result<&DaemonProc> {
        let d = DaemonProc::start(&self.env(extra), &self.dir.join("daemon.log"))?;
        Ok(self.daemon.insert(d))
    }

    pub fn daemon(&self) -> &DaemonProc {
        self.daemon.as_ref().expect("daemon started")
    }

    /// Runs `hermes-reconciler once`; returns its wall time (spawn to exit).
    pub fn once(&self, extra: &[(&str, String)]) -> Result<Duration> {
        let mut cmd = Command::new(bin());
        cmd.arg("once")
            .env_clear()
            .envs(self.env(extra))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(self.dir.join("once.log"))?);
        let t0 = Instant::now();
        let status = cmd.status()?;
        let took = t0.elapsed();
        if !status.success() {
            bail!("once failed: {status} (see {})", self.dir.join("once.log").display());
        }
        Ok(took)
    }

    /// A profile created in place (before the daemon runs).
    pub fn add_profile(&self, name: &str, running: bool) -> Result<()> {
        write_profile(&self.profiles.join(name), running)
    }

    /// A complete profile built outside `profiles/`, ready to be renamed in.
    pub fn stage_profile(&self, name: &str, running: bool) -> Result<PathBuf> {
        let d = self.stage.join(name);
        write_profile(&d, running)?;
        Ok(d)
    }

    pub fn slot(&self, name: &str) -> PathBuf {
        self.scandir.join(format!("gateway-{name}"))
    }

    /// Entries of the scandir whose name starts with `prefix`.
    pub fn scandir_entries(&self, prefix: &str) -> usize {
        fs::read_dir(&self.scandir)
            .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(prefix)).count())
            .unwrap_or(0)
    }

    pub fn boot_log(&self) -> String {
        fs::read_to_string(self.home.join("logs/container-boot.log")).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        drop(self.daemon.take());
        drop(self.svscan.take());
    }
}

/// Slot files as the daemon renders them, captured from a real `once`, with the home and the
/// profile name as placeholders: the floors publish exactly the same slots.
pub struct Template {
    named: Vec<TplFile>,
    root: Vec<TplFile>,
}

struct TplFile {
    rel: &'static str,
    content: String,
    mode: u32,
}

const TPL_NAME: &str = "zzbenchtplzz";
const SLOT_FILES: [&str; 5] = ["type", "run", "finish", "log/run", "data/reconciler.json"];

impl Template {
    pub fn capture() -> Result<Self> {
        let tmp = tempfile::Builder::new().prefix("hermes-bench-tpl-").tempdir_in("/tmp")?;
        let (home, scandir) = (tmp.path().join("home"), tmp.path().join("scan"));
        fs::create_dir_all(home.join("profiles"))?;
        fs::create_dir_all(&scandir)?;
        write_profile(&home.join("profiles").join(TPL_NAME), true)?;
        let standin = std::env::current_exe()?;
        let status = Command::new(bin())
            .arg("once")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HERMES_HOME", &home)
            .env("S6_PROFILE_GATEWAY_SCANDIR", &scandir)
            .env("HERMES_GATEWAY_COMMAND", &standin)
            .env("HERMES_RUN_AS", "")
            .env("HERMES_RECONCILER_LOG", "error")
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("`once` for the slot template failed: {status}");
        }
        let home_s = home.display().to_string();
        let read = |slot: &str| -> Result<Vec<TplFile>> {
            SLOT_FILES
                .iter()
                .map(|rel| {
                    let p = scandir.join(slot).join(rel);
                    let content = fs::read_to_string(&p).with_context(|| p.display().to_string())?;
                    let mode = fs::metadata(&p)?.mode() & 0o7777;
                    let content = content.replace(&home_s, "@HOME@").replace(TPL_NAME, "@NAME@");
                    Ok(TplFile { rel, content, mode })
                })
                .collect()
        };
        Ok(Template { named: read(&format!("gateway-{TPL_NAME}"))?, root: read("gateway-default")? })
    }

    /// Builds the slot `entry` for `profile` under a dot name, then renames it into the scandir,
    /// with the same files, rights and `supervise/` skeleton the daemon gives it. No rescan.
    pub fn publish(&self, scandir: &Path, entry: &str, profile: &str, home: &Path, up: bool) -> Result<()> {
        let files = if profile == "default" { &self.root } else { &self.named };
        let staging = scandir.join(format!(".{entry}.floor"));
        let home_s = home.display().to_string();
        for d in ["", "log", "data"] {
            fs::create_dir(staging.join(d))?;
        }
        for f in files {
            let p = staging.join(f.rel);
            let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(f.mode).open(&p)?;
            file.write_all(f.content.replace("@HOME@", &home_s).replace("@NAME@", profile).as_bytes())?;
            file.set_permissions(fs::Permissions::from_mode(f.mode))?;
        }
        if !up {
            fs::File::create(staging.join("down"))?;
        }
        let sup = staging.join("supervise");
        fs::create_dir(&sup)?;
        fs::set_permissions(&sup, fs::Permissions::from_mode(0o710))?;
        nix::unistd::mkfifo(&sup.join("control"), Mode::from_bits_truncate(0o660))?;
        fs::set_permissions(sup.join("control"), fs::Permissions::from_mode(0o660))?;
        fs::create_dir(staging.join("event"))?;
        fs::set_permissions(staging.join("event"), fs::Permissions::from_mode(0o3730))?;
        fs::rename(&staging, scandir.join(entry))?;
        Ok(())
    }
}

/// Takes a runner-published slot out of the scan and deletes it once its supervisors are gone.
pub fn unpublish(scandir: &Path, entry: &str) -> Result<()> {
    let hidden = scandir.join(format!(".{entry}.gone"));
    fs::rename(scandir.join(entry), &hidden)?;
    rescan(scandir, true)?;
    let gone = poll(Duration::from_secs(10), Duration::from_millis(1), || {
        (lock_holder(&hidden).is_none() && lock_holder(&hidden.join("log")).is_none()).then_some(())
    });
    if gone.is_none() {
        bail!("{}: supervisors still alive after 10 s", hidden.display());
    }
    fs::remove_dir_all(&hidden)?;
    Ok(())
}
