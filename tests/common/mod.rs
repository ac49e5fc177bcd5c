//! Shared harness for the end-to-end tests of `hermes-reconciler once`.
//!
//! Every test gets its own [`World`]: a temporary `HERMES_HOME`, a temporary scandir and a real
//! `s6-svscan` running as init of its own pid and mount namespace
//! (`unshare --pid --fork --kill-child --mount --mount-proc`). Tearing it down is total: SIGKILL
//! to a pid namespace's init, sent from outside, kills every process in it (s6-svscan, every
//! s6-supervise, every s6-log, every stand-in gateway). [`Svscan`] does that on drop, also when
//! a test panics; the `unshare` process also gets a parent-death SIGKILL, which `--kill-child`
//! passes on to s6-svscan, so a test binary killed outright leaves nothing behind either.
//!
//! The gateway is a stand-in shell script ([`STANDIN`]) that records what it was given in
//! `$HOME/.standin/<name>.<n>` (n counts starts, so restarts are visible) and then sleeps, or
//! exits with the code found in `$HOME/.standin/<name>.exit`.
//!
//! No mocks and no timing assertions: s6 acts asynchronously, so every expectation about s6 is
//! polled for with a generous bound ([`WAIT`]) and only the final state is asserted.
//!
//! Needs root (for `unshare`), util-linux `unshare`, s6, execline and `/bin/sh`. A missing tool
//! is a failure, never a skip.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fmt::Debug;
use std::fs;
use std::io::{ErrorKind, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Bound of every wait for s6 to act. Things normally happen within milliseconds; the bound is
/// generous because tests run in parallel on a loaded machine.
pub const WAIT: Duration = Duration::from_secs(20);

/// Bound of one `hermes-reconciler once` run. A pass that takes this long is hung.
pub const ONCE_TIMEOUT: Duration = Duration::from_secs(60);

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_hermes-reconciler");

/// PATH given to everything the tests start.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Polls `f` until it returns true, for at most `timeout`; panics naming `desc` otherwise.
pub fn wait_until(desc: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {desc}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `f` until it returns `Ok`, for at most `timeout`; returns the last `Err` otherwise.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Soft assertions: collects every failed check of a test, then fails once listing them all.
#[derive(Default)]
pub struct Checks {
    failures: Vec<String>,
}

impl Checks {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn check(&mut self, ok: bool, msg: impl Into<String>) {
        if !ok {
            self.failures.push(msg.into());
        }
    }

    pub fn eq<T: PartialEq + Debug>(&mut self, what: &str, got: T, want: T) {
        if got != want {
            self.failures.push(format!("{what}: got {got:?}, want {want:?}"));
        }
    }

    pub fn ok<T>(&mut self, r: Result<T, String>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.failures.push(e);
                None
            }
        }
    }

    /// Panics listing every failed check, if any.
    /// Checks the `(profile, prior_state, action)` of every `container-boot.log` line.
    pub fn boot_lines_are(&mut self, w: &World, want: &[(&str, &str, &str)]) {
        match w.boot_lines() {
            Err(e) => self.check(false, e),
            Ok(lines) => {
                let got: Vec<(&str, &str, &str)> = lines
                    .iter()
                    .map(|l| (l.profile.as_str(), l.prior_state.as_str(), l.action.as_str()))
                    .collect();
                self.eq("boot-log lines", got, want.to_vec());
            }
        }
    }

    pub fn finish(self) {
        if !self.failures.is_empty() {
            panic!("{} check(s) failed:\n  - {}", self.failures.len(), self.failures.join("\n  - "));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Which s6: the host's (Debian bookworm, 2.11) or a chroot's (HERMES_TEST_S6_ROOT: trixie with
// 2.13 or sid with 2.15, made by scripts/s6-root.sh)
// ---------------------------------------------------------------------------------------------

/// The root directory whose s6 the tests run, if not the host's.
pub fn s6_root() -> Option<PathBuf> {
    std::env::var_os("HERMES_TEST_S6_ROOT").filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The s6 generation under test: `(major, minor)` from the root's (or host's) s6 package.
pub fn s6_version() -> (u32, u32) {
    let status = match s6_root() {
        Some(r) => r.join("var/lib/dpkg/status"),
        None => PathBuf::from("/var/lib/dpkg/status"),
    };
    let text = fs::read_to_string(&status).expect("dpkg status");
    let block = text.split("\n\n").find(|b| b.starts_with("Package: s6\n")).expect("s6 installed");
    let version = block.lines().find_map(|l| l.strip_prefix("Version: ")).expect("s6 version");
    let mut it = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// The temp directory every test world lives under; a chroot'ed s6 sees it at the same path.
fn shared_tmp() -> PathBuf {
    std::env::temp_dir().canonicalize().expect("canonical temp dir")
}

/// A shell snippet that bind-mounts the temp directory into the root `$0`, then runs `"$@"`
/// chrooted there. Run it inside a private mount namespace (`unshare --mount`).
const CHROOT_SH: &str = "mount --bind \"$1\" \"$0$1\" && shift && exec chroot \"$0\" \"$@\"";

/// A command running the s6 program `prog` of the generation under test.
pub fn s6_command(prog: &str) -> Command {
    match s6_root() {
        None => Command::new(prog),
        Some(root) => {
            let mut c = Command::new("unshare");
            c.args(["--mount", "sh", "-c", CHROOT_SH]).arg(root).arg(shared_tmp()).arg(prog);
            c
        }
    }
}

// ---------------------------------------------------------------------------------------------
// s6-svscan in its own pid namespace
// ---------------------------------------------------------------------------------------------

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
        let out = fs::OpenOptions::new().create(true).append(true).open(log).expect("svscan log file");
        let err = out.try_clone().expect("dup svscan log");
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--kill-child", "--mount", "--mount-proc"]);
        if let Some(root) = s6_root() {
            cmd.args(["sh", "-c", CHROOT_SH]).arg(root).arg(shared_tmp());
        }
        cmd.arg("s6-svscan")
            .args(options)
            .arg(scandir)
            .env_clear()
            .env("PATH", PATH)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from));
        }
        let child = cmd.spawn().expect("spawn unshare s6-svscan (is util-linux unshare installed?)");
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
        let control = scandir.join(".s6-svscan/control");
        wait_until("s6-svscan to listen on .s6-svscan/control", WAIT, || fifo_has_reader(&control));
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
// s6 state
// ---------------------------------------------------------------------------------------------

/// `s6-svstat -o up,wantedup,normallyup,ready,pid,exitcode` of a service directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SvStat {
    pub up: bool,
    pub wanted_up: bool,
    pub normally_up: bool,
    pub ready: bool,
    /// Namespace pid; `None` when down.
    pub pid: Option<i64>,
    pub exitcode: i64,
}

/// Runs `s6-svstat` on `dir`; `Err` when no supervisor answers.
pub fn svstat(dir: &Path) -> Result<SvStat, String> {
    let out = s6_command("s6-svstat")
        .args(["-o", "up,wantedup,normallyup,ready,pid,exitcode"])
        .arg(dir)
        .env_clear()
        .env("PATH", PATH)
        .output()
        .map_err(|e| format!("spawn s6-svstat: {e}"))?;
    if !out.status.success() {
        return Err(format!("s6-svstat {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr).trim()));
    }
    parse_svstat(&String::from_utf8_lossy(&out.stdout))
}

pub fn parse_svstat(s: &str) -> Result<SvStat, String> {
    let f: Vec<&str> = s.split_whitespace().collect();
    if f.len() != 6 {
        return Err(format!("unexpected s6-svstat output {s:?}"));
    }
    let b = |x: &str| match x {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("unexpected boolean {x:?} in s6-svstat output {s:?}")),
    };
    let n = |x: &str| x.parse::<i64>().map_err(|_| format!("unexpected number {x:?} in {s:?}"));
    let pid = n(f[4])?;
    Ok(SvStat {
        up: b(f[0])?,
        wanted_up: b(f[1])?,
        normally_up: b(f[2])?,
        ready: b(f[3])?,
        pid: (pid > 0).then_some(pid),
        exitcode: n(f[5])?,
    })
}

/// What a slot should look like once s6 has acted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Supervised, gateway up, wanted up, no `down` file, logger up.
    Up,
    /// Supervised, gateway down, not wanted up, `down` file present, logger up.
    Down,
    /// Supervised, gateway down and not wanted up (parked by `finish` exiting 125).
    Parked,
    /// No slot directory at all.
    Absent,
}

/// Checks the current state of `slot` against `want`; `Err` describes the difference.
pub fn slot_matches(slot: &Path, want: Want) -> Result<(), String> {
    let name = slot.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let exists = slot.symlink_metadata().is_ok();
    if want == Want::Absent {
        return if exists { Err(format!("{name}: slot exists, want none")) } else { Ok(()) };
    }
    if !exists {
        return Err(format!("{name}: no slot directory, want {want:?}"));
    }
    let st = svstat(slot).map_err(|e| format!("{name}: not supervised ({e}), want {want:?}"))?;
    let down_file = slot.join("down").exists();
    let ok = match want {
        Want::Up => st.up && st.wanted_up && !down_file,
        Want::Down => !st.up && !st.wanted_up && down_file,
        Want::Parked => !st.up && !st.wanted_up,
        Want::Absent => unreachable!(),
    };
    if !ok {
        return Err(format!("{name}: want {want:?}, observed {st:?}, down file present: {down_file}"));
    }
    let log = svstat(&slot.join("log")).map_err(|e| format!("{name}/log: not supervised ({e})"))?;
    if !log.up {
        return Err(format!("{name}/log: logger not up: {log:?}"));
    }
    Ok(())
}

/// Waits (bounded) until every slot in `want` matches; `Err` lists the ones that do not.
pub fn wait_slots(scandir: &Path, want: &BTreeMap<String, Want>) -> Result<(), String> {
    poll(WAIT, || {
        let bad: Vec<String> = want
            .iter()
            .filter_map(|(name, w)| slot_matches(&scandir.join(slot_name(name)), *w).err())
            .collect();
        if bad.is_empty() { Ok(()) } else { Err(format!("slots not as expected: {}", bad.join("; "))) }
    })
}

pub fn slot_name(profile: &str) -> String {
    format!("gateway-{profile}")
}

/// Names of the scandir entries starting with `gateway-`.
pub fn gateway_slots(scandir: &Path) -> BTreeSet<String> {
    fs::read_dir(scandir)
        .expect("read scandir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("gateway-"))
        .collect()
}

/// Every entry name of `dir`.
pub fn entries(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Runs `argv` as user `user` through `s6-setuidgid`.
pub fn run_as(user: &str, argv: &[&OsStr]) -> std::process::Output {
    s6_command("s6-setuidgid")
        .arg(user)
        .args(argv)
        .env_clear()
        .env("PATH", PATH)
        .output()
        .expect("spawn s6-setuidgid")
}

// ---------------------------------------------------------------------------------------------
// The test world: home, scandir, stand-in gateway, s6-svscan
// ---------------------------------------------------------------------------------------------

/// The stand-in gateway. Records its arguments and environment, then sleeps or exits.
pub const STANDIN: &str = r#"#!/bin/sh
d="$HOME/.standin"
mkdir -p "$d"
name=default
if [ "$1" = "-p" ]; then name="$2"; fi
n=1
while [ -e "$d/$name.$n" ]; do n=$((n+1)); done
f="$d/$name.$n"
{
  echo "pid=$$"
  echo "uid=$(id -u)"
  echo "port=${API_SERVER_PORT-<unset>}"
  echo "home=${HOME-<unset>}"
  echo "pwd=$(pwd -P)"
  echo "supervised=${HERMES_S6_SUPERVISED_CHILD-<unset>}"
  echo "supervised2=${HERMES_SUPERVISED_CHILD-<unset>}"
  for a in "$@"; do echo "arg=$a"; done
} > "$f.tmp"
mv "$f.tmp" "$f"
if [ -e "$d/$name.exit" ]; then exit "$(cat "$d/$name.exit")"; fi
exec sleep 100000
"#;

/// One start of the stand-in gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StandinRecord {
    pub pid: String,
    pub uid: String,
    pub port: String,
    pub home: String,
    pub pwd: String,
    pub supervised: String,
    pub supervised2: String,
    pub args: Vec<String>,
}

/// Result of one run of the binary.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// The stderr lines that are warnings.
    pub fn warnings(&self) -> Vec<&str> {
        self.stderr.lines().filter(|l| l.contains("WARN")).collect()
    }

    /// The warning lines containing every one of `needles`.
    pub fn warnings_with(&self, needles: &[&str]) -> Vec<&str> {
        self.warnings().into_iter().filter(|l| needles.iter().all(|n| l.contains(n))).collect()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {:?}", self.stdout))
    }

    pub fn assert_code(&self, want: i32) {
        assert_eq!(self.code, Some(want), "exit status; stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
    }
}

/// A temporary home and scandir with a running s6-svscan and a stand-in gateway.
pub struct World {
    /// Field order matters: the namespace dies before the directories are deleted.
    pub svscan: Option<Svscan>,
    pub home: PathBuf,
    pub scandir: PathBuf,
    pub standin: PathBuf,
    pub root: PathBuf,
    /// Extra environment for the binary (overrides the defaults of [`World::command`]).
    pub env: BTreeMap<String, String>,
    _tmp: tempfile::TempDir,
}

impl World {
    /// A world with s6-svscan running.
    pub fn new() -> World {
        let mut w = World::without_svscan();
        w.start_svscan();
        w
    }

    /// A world whose s6-svscan is not started yet.
    pub fn without_svscan() -> World {
        let tmp = tempfile::Builder::new().prefix("hermes-it-").tempdir().expect("tempdir");
        let root = tmp.path().canonicalize().expect("canonical tempdir");
        let home = root.join("home");
        let scandir = root.join("scan");
        fs::create_dir(&home).unwrap();
        fs::create_dir(&scandir).unwrap();
        fs::create_dir(home.join(".standin")).unwrap();
        let standin = root.join("standin-gateway");
        fs::write(&standin, STANDIN).unwrap();
        fs::set_permissions(&standin, fs::Permissions::from_mode(0o755)).unwrap();
        World { svscan: None, home, scandir, standin, root, env: BTreeMap::new(), _tmp: tmp }
    }

    pub fn start_svscan(&mut self) {
        self.start_svscan_with(&[]);
    }

    /// Starts s6-svscan with extra options, e.g. a service limit.
    pub fn start_svscan_with(&mut self, options: &[&str]) {
        assert!(self.svscan.is_none(), "s6-svscan already running");
        self.svscan = Some(Svscan::start_with(&self.scandir, &self.root.join("svscan.log"), options));
    }

    /// SIGKILLs the namespace (the container dies); the scandir is left as it is.
    pub fn kill_svscan(&mut self) {
        if let Some(mut s) = self.svscan.take() {
            s.kill();
        }
    }

    /// Empties the scandir completely, dot entries included (the tmpfs is gone).
    pub fn wipe_scandir(&self) {
        for e in fs::read_dir(&self.scandir).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                fs::remove_dir_all(&p).unwrap();
            } else {
                fs::remove_file(&p).unwrap();
            }
        }
        assert!(entries(&self.scandir).is_empty());
    }

    pub fn set_env(&mut self, k: &str, v: &str) -> &mut Self {
        self.env.insert(k.to_string(), v.to_string());
        self
    }

    /// The binary with a clean environment pointing at this world.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_clear()
            .env("PATH", PATH)
            .env("HERMES_HOME", &self.home)
            .env("S6_PROFILE_GATEWAY_SCANDIR", &self.scandir)
            .env("HERMES_GATEWAY_COMMAND", &self.standin)
            .env("HERMES_RUN_AS", "")
            .env("HERMES_RECONCILER_LOG", "info")
            .env("HERMES_RECONCILER_RUNTIME_DIR", self.runtime_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// This world's `HERMES_RECONCILER_RUNTIME_DIR` (created by the binary on first use): each
    /// world is a container of its own, whose container-mode judgment no other world shares.
    pub fn runtime_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    /// Runs the binary with `args`, killing it (and failing) after [`ONCE_TIMEOUT`].
    pub fn run(&self, args: &[&str]) -> Outcome {
        run_with_timeout(self.command(args), ONCE_TIMEOUT)
    }

    /// `hermes-reconciler once`, expecting exit 0.
    pub fn once(&self) -> Outcome {
        let o = self.run(&["once"]);
        o.assert_code(0);
        o
    }

    pub fn slot(&self, profile: &str) -> PathBuf {
        self.scandir.join(slot_name(profile))
    }

    /// A named profile `profiles/<name>/` with a `SOUL.md`.
    pub fn profile(&self, name: &str) -> Profile {
        let dir = self.home.join("profiles").join(name);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        fs::write(dir.join("SOUL.md"), "# soul\n").unwrap();
        Profile { name: name.to_string(), dir, desired: None, gateway: None }
    }

    /// The root profile (`$HERMES_HOME` itself).
    pub fn root_profile(&self) -> Profile {
        Profile { name: "default".into(), dir: self.home.clone(), desired: None, gateway: None }
    }

    /// The directory of profile `name` (`default` is the root).
    pub fn profile_dir(&self, name: &str) -> PathBuf {
        if name == "default" { self.home.clone() } else { self.home.join("profiles").join(name) }
    }

    /// Makes the stand-in of `name` exit with `code` instead of sleeping.
    pub fn standin_exit(&self, name: &str, code: i32) {
        fs::write(self.home.join(".standin").join(format!("{name}.exit")), code.to_string()).unwrap();
    }

    /// Every recorded start of the stand-in for `name`, in start order.
    pub fn standin_records(&self, name: &str) -> Vec<StandinRecord> {
        let dir = self.home.join(".standin");
        let mut out = Vec::new();
        for n in 1.. {
            match fs::read_to_string(dir.join(format!("{name}.{n}"))) {
                Ok(s) => out.push(parse_record(&s)),
                Err(_) => break,
            }
        }
        out
    }

    pub fn boot_log(&self) -> String {
        fs::read_to_string(self.home.join("logs/container-boot.log")).unwrap_or_default()
    }

    /// Parsed lines of `container-boot.log`; `Err` names the first malformed line.
    pub fn boot_lines(&self) -> Result<Vec<BootLine>, String> {
        self.boot_log().lines().map(parse_boot_line).collect()
    }
}

/// Runs `cmd`, killing it (and failing) after `timeout`.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Outcome {
    let mut child = cmd.spawn().expect("spawn hermes-reconciler");
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait hermes-reconciler") {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hermes-reconciler {:?} did not finish within {timeout:?} (hung)", cmd.get_args());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = String::from_utf8_lossy(&out_t.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err_t.join().unwrap()).into_owned();
    Outcome { code: status.code(), stdout, stderr }
}

fn parse_record(s: &str) -> StandinRecord {
    let mut r = StandinRecord::default();
    for line in s.lines() {
        let (k, v) = line.split_once('=').unwrap_or((line, ""));
        let v = v.to_string();
        match k {
            "pid" => r.pid = v,
            "uid" => r.uid = v,
            "port" => r.port = v,
            "home" => r.home = v,
            "pwd" => r.pwd = v,
            "supervised" => r.supervised = v,
            "supervised2" => r.supervised2 = v,
            "arg" => r.args.push(v),
            _ => {}
        }
    }
    r
}

/// A profile on the volume; setters write its files at once.
pub struct Profile {
    pub name: String,
    pub dir: PathBuf,
    desired: Option<String>,
    gateway: Option<String>,
}

impl Profile {
    pub fn state_path(&self) -> PathBuf {
        self.dir.join("gateway_state.json")
    }

    fn write_state(&self) {
        let mut m = serde_json::Map::new();
        if let Some(d) = &self.desired {
            m.insert("desired_state".into(), d.clone().into());
        }
        if let Some(g) = &self.gateway {
            m.insert("gateway_state".into(), g.clone().into());
        }
        fs::write(self.state_path(), serde_json::Value::Object(m).to_string()).unwrap();
    }

    /// Sets `desired_state`.
    pub fn desired(mut self, s: &str) -> Self {
        self.desired = Some(s.to_string());
        self.write_state();
        self
    }

    /// Sets `gateway_state`.
    pub fn gateway(mut self, s: &str) -> Self {
        self.gateway = Some(s.to_string());
        self.write_state();
        self
    }

    /// Replaces `gateway_state.json` by raw bytes.
    pub fn state_raw(self, bytes: &[u8]) -> Self {
        let _ = fs::remove_file(self.state_path());
        fs::write(self.state_path(), bytes).unwrap();
        self
    }

    /// Writes `state/gateway.lifecycle.json` with `phase`.
    pub fn lifecycle(self, phase: &str) -> Self {
        fs::create_dir_all(self.dir.join("state")).unwrap();
        fs::write(
            self.dir.join("state/gateway.lifecycle.json"),
            serde_json::json!({ "phase": phase }).to_string(),
        )
        .unwrap();
        self
    }

    /// Writes the profile's `.env`.
    pub fn dot_env(self, content: &str) -> Self {
        fs::write(self.dir.join(".env"), content).unwrap();
        self
    }

    /// Writes `gateway.pid` and `processes.json` (leftovers of a previous container).
    pub fn pid_files(self) -> Self {
        fs::write(self.dir.join("gateway.pid"), "4242\n").unwrap();
        fs::write(self.dir.join("processes.json"), "[]\n").unwrap();
        self
    }

    pub fn has_pid_files(&self) -> (bool, bool) {
        (self.dir.join("gateway.pid").exists(), self.dir.join("processes.json").exists())
    }
}

// ---------------------------------------------------------------------------------------------
// container-boot.log
// ---------------------------------------------------------------------------------------------

/// One line of `container-boot.log`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootLine {
    pub time: String,
    pub profile: String,
    pub prior_state: String,
    pub action: String,
    pub prior_exit: String,
    /// The optional ` key=value` fields after the four fixed ones, in order.
    pub extra: Vec<(String, String)>,
}

impl BootLine {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.extra.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

fn is_value(v: &str) -> bool {
    (1..=64).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// `%Y-%m-%dT%H:%M:%S%z`, e.g. `2026-01-01T00:00:00+0000`.
fn is_timestamp(t: &str) -> bool {
    let b = t.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.into_iter().all(|i| b[i].is_ascii_digit());
    b.len() == 24
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && (b[19] == b'+' || b[19] == b'-')
        && digits(20..24)
}

/// Parses one line, checking the whole documented format.
pub fn parse_boot_line(line: &str) -> Result<BootLine, String> {
    let bad = |why: &str| Err(format!("malformed container-boot.log line ({why}): {line:?}"));
    let mut tokens = line.split(' ');
    let time = tokens.next().unwrap_or_default();
    if !is_timestamp(time) {
        return bad("timestamp");
    }
    let mut fixed = Vec::new();
    for key in ["profile", "prior_state", "action", "prior_exit"] {
        match tokens.next().and_then(|t| t.split_once('=')) {
            Some((k, v)) if k == key && is_value(v) => fixed.push(v.to_string()),
            _ => return bad(key),
        }
    }
    const ACTIONS: [&str; 6] = ["started", "registered", "stopped", "unregistered", "updated", "skipped"];
    if !ACTIONS.contains(&fixed[2].as_str()) {
        return bad("action");
    }
    if !["clean", "unclean", "unknown"].contains(&fixed[3].as_str()) {
        return bad("prior_exit");
    }
    let mut extra = Vec::new();
    for t in tokens {
        match t.split_once('=') {
            Some((k, v))
                if !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') && is_value(v) =>
            {
                extra.push((k.to_string(), v.to_string()))
            }
            _ => return bad("extra field"),
        }
    }
    Ok(BootLine {
        time: time.to_string(),
        profile: fixed[0].clone(),
        prior_state: fixed[1].clone(),
        action: fixed[2].clone(),
        prior_exit: fixed[3].clone(),
        extra,
    })
}

// ---------------------------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------------------------

/// Everything about one path that `--dry-run` must not change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// File content, or symlink target.
    pub content: Vec<u8>,
}

/// Paths, types, modes, owners and contents of every entry under `root` (FIFOs are never opened).
pub fn tree_digest(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, p: &Path, out: &mut BTreeMap<PathBuf, Node>) {
    let md = match p.symlink_metadata() {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return,
        Err(e) => panic!("stat {}: {e}", p.display()),
    };
    let ft = md.file_type();
    use std::os::unix::fs::FileTypeExt;
    let (kind, content) = if ft.is_symlink() {
        ('l', fs::read_link(p).unwrap().as_os_str().as_bytes().to_vec())
    } else if ft.is_dir() {
        ('d', Vec::new())
    } else if ft.is_file() {
        ('f', fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())))
    } else if ft.is_fifo() {
        ('p', Vec::new())
    } else if ft.is_socket() {
        ('s', Vec::new())
    } else {
        ('?', Vec::new())
    };
    let rel = p.strip_prefix(root).unwrap().to_path_buf();
    out.insert(rel, Node { kind, mode: md.mode() & 0o7777, uid: md.uid(), gid: md.gid(), content });
    if kind == 'd' {
        let mut names: Vec<_> = fs::read_dir(p).unwrap().flatten().map(|e| e.path()).collect();
        names.sort();
        for n in names {
            walk(root, &n, out);
        }
    }
}

/// Differences between two digests, for messages.
pub fn digest_diff(a: &BTreeMap<PathBuf, Node>, b: &BTreeMap<PathBuf, Node>) -> Vec<String> {
    let keys: BTreeSet<&PathBuf> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter_map(|k| match (a.get(k), b.get(k)) {
            (Some(x), Some(y)) if x == y => None,
            (Some(x), Some(y)) => Some(format!(
                "{} changed: {}{:o} {}:{} {}B -> {}{:o} {}:{} {}B",
                k.display(),
                x.kind,
                x.mode,
                x.uid,
                x.gid,
                x.content.len(),
                y.kind,
                y.mode,
                y.uid,
                y.gid,
                y.content.len()
            )),
            (Some(_), None) => Some(format!("{} removed", k.display())),
            (None, Some(_)) => Some(format!("{} created", k.display())),
            (None, None) => None,
        })
        .collect()
}

/// Identity of one file of a slot: inode, mtime (ns) and content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileId {
    pub ino: u64,
    pub mtime_ns: i128,
    pub content: Vec<u8>,
}

/// Every entry of a slot except what s6 itself writes (`supervise/` and `event/`, at any
/// depth); directories are recorded by inode only.
pub fn slot_snapshot(slot: &Path) -> BTreeMap<PathBuf, FileId> {
    fn go(root: &Path, p: &Path, out: &mut BTreeMap<PathBuf, FileId>) {
        let md = p.symlink_metadata().unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        if md.is_dir() {
            out.insert(rel, FileId { ino: md.ino(), mtime_ns: 0, content: Vec::new() });
            for e in fs::read_dir(p).unwrap().flatten() {
                let n = e.file_name();
                if n == "supervise" || n == "event" {
                    continue;
                }
                go(root, &e.path(), out);
            }
        } else {
            let content = if md.is_file() { fs::read(p).unwrap() } else { Vec::new() };
            let mtime_ns = i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec());
            out.insert(rel, FileId { ino: md.ino(), mtime_ns, content });
        }
    }
    let mut out = BTreeMap::new();
    go(slot, slot, &mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// Misc
// ---------------------------------------------------------------------------------------------

/// Creates the user and group `hermes` (10000:10000, as in the image) if they do not exist;
/// tolerates a concurrent creation. With a chroot'ed s6 under test, the root gets the same
/// user with the same ids, so `s6-setuidgid hermes` means the same there.
pub fn ensure_hermes_user() -> (u32, u32) {
    static SYNC: std::sync::Once = std::sync::Once::new();
    if nix::unistd::User::from_name("hermes").ok().flatten().is_none() {
        let _ = Command::new("groupadd").args(["-g", "10000", "hermes"]).output();
        let out = Command::new("useradd")
            .args(["-u", "10000", "-g", "hermes", "-M", "-s", "/usr/sbin/nologin", "hermes"])
            .output()
            .expect("spawn useradd");
        let exists = nix::unistd::User::from_name("hermes").ok().flatten().is_some();
        assert!(
            out.status.success() || exists,
            "useradd hermes failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let u = nix::unistd::User::from_name("hermes").unwrap().expect("user hermes");
    let (uid, gid) = (u.uid.as_raw(), u.gid.as_raw());
    if let Some(root) = s6_root() {
        SYNC.call_once(|| {
            let script = format!(
                "if getent group hermes >/dev/null; then groupmod -g {gid} hermes; else groupadd -g {gid} hermes; fi && \
                 if id hermes >/dev/null 2>&1; then usermod -u {uid} -g {gid} hermes; \
                 else useradd -u {uid} -g {gid} -M -s /usr/sbin/nologin hermes; fi"
            );
            let out = Command::new("chroot").arg(&root).args(["sh", "-c", &script]).output().expect("chroot");
            assert!(out.status.success(), "hermes user in {}: {}", root.display(), String::from_utf8_lossy(&out.stderr));
        });
    }
    (uid, gid)
}

/// The first `API_SERVER_PORT=<n>` assignment of a run script, if any.
pub fn port_in_run_script(run: &str) -> Option<u16> {
    let i = run.find("API_SERVER_PORT=")?;
    let rest = run[i + "API_SERVER_PORT=".len()..].trim_start_matches(['\'', '"']);
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Asserts the binary exists (a clear failure instead of a spawn error).
pub fn binary_exists() -> bool {
    Path::new(BIN).exists()
}

/// A want map from pairs.
pub fn wants(pairs: &[(&str, Want)]) -> BTreeMap<String, Want> {
    pairs.iter().map(|(n, w)| (n.to_string(), *w)).collect()
}

/// The `gateway-*` slot names for `profiles`.
pub fn slot_set<S: AsRef<str>>(profiles: impl IntoIterator<Item = S>) -> BTreeSet<String> {
    profiles.into_iter().map(|p| slot_name(p.as_ref())).collect()
}

/// Reads a slot file as text (empty when missing).
pub fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_default()
}
