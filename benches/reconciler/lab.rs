//! The lab: one s6-svscan in its own pid and mount namespace, a `HERMES_HOME`, the daemon, and
//! the recorder of stand-in starts. Everything it starts is stopped when it is dropped, even on a
//! panic: SIGKILL to the namespace's init (sent from outside) ends every process inside it.
//!
//! s6-svscan and the daemon are the test kit's ([`Svscan`], [`Daemon`], `tests/kit`); control
//! bytes, lock queries and `supervise/status` go through the library's `s6` module, the one the
//! daemon itself uses. What is here is what only the benchmarks need: the start recorder, the
//! status watch, the slot template the floors publish, and the lab's directory layout.

use crate::kit::{Daemon, Svscan, poll_every};
use anyhow::{Context, Result, anyhow, bail};
use hermes_reconciler::s6::{ServiceStatus, read_status, supervisor_pid};
use nix::libc;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::stat::Mode;
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use hermes_reconciler::s6::rescan;

/// The daemon binary to measure: the kit's `BIN` (built in release by `cargo bench`), or
/// `$HERMES_BENCH_DAEMON` (to compare a prototype build against the same floors).
pub fn bin() -> String {
    std::env::var("HERMES_BENCH_DAEMON")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| crate::kit::BIN.to_string())
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

/// Bound of the daemon's first pass (10,000 profile folders on a loaded machine).
const READY_BOUND: Duration = Duration::from_secs(300);

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

/// Polls `f` every `step` until it is true or `timeout` passes (the kit's poll, as a bool).
pub fn poll_until(timeout: Duration, step: Duration, mut f: impl FnMut() -> bool) -> Result<()> {
    poll_every(timeout, step, || if f() { Ok(()) } else { Err(String::new()) })
        .map_err(|_| anyhow!("not within {timeout:?}"))
}

/// Pid of the s6-supervise on `dir`, if one is alive (the library's lock query; an unreadable
/// lock counts as none).
pub fn lock_holder(dir: &Path) -> Option<i32> {
    supervisor_pid(dir).ok().flatten()
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
    pub fn wait(&self, timeout: Duration, cond: impl Fn(&ServiceStatus) -> bool) -> Option<i64> {
        let deadline = Instant::now() + timeout;
        loop {
            while self.inotify.read_events().is_ok_and(|e| !e.is_empty()) {}
            if read_status(&self.dir).ok().flatten().is_some_and(|s| cond(&s)) {
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
        let quit = fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&self.path);
        if quit.and_then(|mut f| f.write_all(format!("{QUIT}\n").as_bytes())).is_ok()
            && let Some(t) = self.thread.take()
        {
            let _ = t.join();
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
    pub daemon: Option<Daemon>,
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
        Lab::with_limit(tag, SVSCAN_LIMIT)
    }

    /// [`Lab::new`] with s6-svscan's service limit (`-c`) set to `limit`.
    pub fn with_limit(tag: &str, limit: &str) -> Result<Self> {
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
        let fifo = dir.join("starts.fifo");
        let svscan = Svscan::start_env(
            &scandir,
            &dir.join("svscan.log"),
            &["-c", limit],
            &[(FIFO_ENV, fifo.as_os_str())],
        );
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
        // `HERMES_BENCH_WATCH=poll` measures the daemon on its polling backend (issue 12).
        if let Some(w) = std::env::var("HERMES_BENCH_WATCH").ok().filter(|v| !v.is_empty()) {
            env.push(("HERMES_RECONCILER_WATCH".into(), w));
        }
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        env
    }

    /// Starts the daemon and waits for its readiness; returns the time from spawn to it.
    pub fn start_daemon(&mut self, extra: &[(&str, String)]) -> Result<Duration> {
        let mut cmd = Command::new(bin());
        cmd.args(["run", "--notify-fd", "3"]).env_clear().envs(self.env(extra)).stdin(Stdio::null());
        let d = self.daemon.insert(Daemon::spawn_command(cmd));
        d.wait_ready_within(READY_BOUND).map_err(|e| anyhow!("{e}"))?;
        d.ready_after().context("readiness without a time")
    }

    /// Number of `s6-supervise` processes per service name (`gateway-x`, `gateway-x/log`) in
    /// the lab's namespace.
    pub fn supervisors(&self) -> std::collections::BTreeMap<String, usize> {
        crate::kit::supervisors_of_ns(self.svscan.as_ref().expect("s6-svscan running"))
    }

    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("daemon started")
    }

    /// The command running `hermes-reconciler once` in the lab (stderr to `once.log`).
    pub fn once_command(&self, extra: &[(&str, String)]) -> Result<Command> {
        let mut cmd = Command::new(bin());
        cmd.arg("once")
            .env_clear()
            .envs(self.env(extra))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(self.dir.join("once.log"))?);
        Ok(cmd)
    }

    /// Runs `hermes-reconciler once`; returns its wall time (spawn to exit).
    pub fn once(&self, extra: &[(&str, String)]) -> Result<Duration> {
        let mut cmd = self.once_command(extra)?;
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

    /// The captured files of a named slot (`root`: of the root's), as (relative path, mode,
    /// content with `@HOME@` and `@NAME@` placeholders).
    pub fn files(&self, root: bool) -> impl Iterator<Item = (&str, u32, &str)> {
        let files = if root { &self.root } else { &self.named };
        files.iter().map(|f| (f.rel, f.mode, f.content.as_str()))
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
        fs::rename(&staging, scandir.join(entry))?;
        Ok(())
    }
}

/// Takes a runner-published slot out of the scan and deletes it once its supervisors are gone.
pub fn unpublish(scandir: &Path, entry: &str) -> Result<()> {
    let hidden = scandir.join(format!(".{entry}.gone"));
    fs::rename(scandir.join(entry), &hidden)?;
    rescan(scandir, true)?;
    poll_until(Duration::from_secs(10), Duration::from_millis(1), || {
        lock_holder(&hidden).is_none() && lock_holder(&hidden.join("log")).is_none()
    })
    .with_context(|| format!("{}: supervisors still alive", hidden.display()))?;
    fs::remove_dir_all(&hidden)?;
    Ok(())
}
