//! The packaging (`s6-rc.d/`, `user-bundles.d/`, `cont-init.d/`, `scripts/install.sh`,
//! `scripts/lint.sh`) against the real thing: s6 2.11 from Debian,
//! the built binary, `unshare` namespaces standing in for a container, shellcheck and hadolint.
//!
//! - The s6-rc longrun `s6-rc.d/hermes-reconciler`, installed as the plain service
//!   directory that s6-rc compiles it into (`run`, `finish`, `type`, `notification-fd`, copied
//!   verbatim), runs under a real s6-svscan: ready through its notification fd, converging, and
//!   stopping with exit 0 while the gateways keep running; with a configuration error it fails
//!   for good instead of being restarted every second.
//! - A container's life: a pid + mount namespace with a tmpfs scandir and a persistent
//!   `HERMES_HOME`, booted like s6-overlay boots (s6-svscan, then the cont-init.d scripts as
//!   root, then the longrun), changed while it runs, killed and booted again on the same home.
//! - `scripts/install.sh` against image root filesystems of both s6-overlay layouts, and the
//!   cont-init.d prepare script against a scandir with leftovers of every kind.
//! - `scripts/lint.sh` passes on the repository and fails on each kind of finding.
//!
//! The `hermes-reconciler` that the shipped scripts run is found on PATH, as in the image: each
//! test puts a directory holding a symlink to the binary under test first on PATH. Gateways are
//! a stand-in script (HERMES_GATEWAY_COMMAND) that records its arguments and pid under
//! `$HOME/.standin/` and sleeps. HERMES_RUN_AS is empty (no `hermes` user is assumed).
//!
//! Every namespace is killed by a guard on drop (SIGKILL to its init kills everything in it),
//! also when a test fails, and `unshare` gets a parent-death SIGKILL that `--kill-child` passes
//! on, so nothing outlives the test binary. No timing assertions: every wait polls with a
//! generous bound. Needs root, `unshare`, s6 and git; scripts/lint.sh installs its linters.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::kit::{BootLine, parse_boot_line, root_only};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Upper bound of every wait. Things normally happen within milliseconds; the bound is for a
/// loaded two-core machine.
const WAIT: Duration = Duration::from_secs(20);
const BIN: &str = env!("CARGO_BIN_EXE_hermes-reconciler");
const SERVICE: &str = "hermes-reconciler";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Polls `f` every 10 ms until it returns `Some`, for at most [`WAIT`].
fn poll<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn write_exec(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// What `s6-svstat -o up,wantedup,normallyup,ready,pid,exitcode` says about a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Svstat {
    up: bool,
    wanted_up: bool,
    normally_up: bool,
    ready: bool,
    /// -1 when down.
    pid: i64,
    /// -1 when up or killed by a signal.
    exitcode: i64,
}

/// `None` while there is no supervisor to ask (or no service directory yet).
fn svstat(dir: &Path) -> Option<Svstat> {
    let out = Command::new("s6-svstat")
        .args(["-o", "up,wantedup,normallyup,ready,pid,exitcode"])
        .arg(dir)
        .stderr(Stdio::null())
        .output()
        .expect("run s6-svstat");
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).unwrap();
    let f: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(f.len(), 6, "s6-svstat printed {text:?}");
    let flag = |s: &str| match s {
        "true" => true,
        "false" => false,
        other => panic!("s6-svstat flag {other:?}"),
    };
    Some(Svstat {
        up: flag(f[0]),
        wanted_up: flag(f[1]),
        normally_up: flag(f[2]),
        ready: flag(f[3]),
        pid: f[4].parse().unwrap(),
        exitcode: f[5].parse().unwrap(),
    })
}

/// Runs `cmd`, returning its output; panics if it cannot be started.
fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Copies the s6-rc source definition of the daemon into `scandir` as s6-rc installs a longrun:
/// `run`, `finish`, `type` and `notification-fd`, byte for byte and with their modes, plus the
/// `down` file with which s6-rc-init installs every longrun (s6-rc then starts it, [`s6_rc_up`]).
fn install_longrun(scandir: &Path) -> PathBuf {
    let src = repo().join("s6-rc.d").join(SERVICE);
    let dst = scandir.join(SERVICE);
    fs::create_dir(&dst).unwrap();
    for f in ["run", "finish", "type", "notification-fd"] {
        fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    fs::write(dst.join("down"), "").unwrap();
    dst
}

/// Starts a longrun the way `s6-rc change` does: `s6-svc -uwU`, which returns once the service
/// is up and ready (0), or fails at once if it reports a permanent failure (1).
fn s6_rc_up(dir: &Path) -> Output {
    run(Command::new("s6-svc").args(["-uwU", "-T", "20000"]).arg(dir))
}

/// A test's `HERMES_HOME`, stand-in gateway and PATH directory, in a temporary directory.
struct World {
    tmp: tempfile::TempDir,
    home: PathBuf,
    bin_dir: PathBuf,
    standin: PathBuf,
}

impl World {
    fn new() -> World {
        let tmp = tempfile::Builder::new().prefix("hermes-pkg-").tempdir().unwrap();
        let home = tmp.path().join("home");
        fs::create_dir_all(home.join("profiles")).unwrap();
        let bin_dir = tmp.path().join("bin");
        fs::create_dir(&bin_dir).unwrap();
        std::os::unix::fs::symlink(BIN, bin_dir.join("hermes-reconciler")).unwrap();
        let standin = tmp.path().join("gateway");
        write_exec(
            &standin,
            "#!/bin/sh\n\
             # Stand-in gateway: records how it was started, then sleeps.\n\
             name=default\n\
             [ \"$1\" = -p ] && name=$2\n\
             mkdir -p \"$HOME/.standin\"\n\
             printf '%s\\n' \"$@\" >\"$HOME/.standin/$name.argv.tmp\"\n\
             mv \"$HOME/.standin/$name.argv.tmp\" \"$HOME/.standin/$name.argv\"\n\
             echo $$ >\"$HOME/.standin/$name.pid.tmp\"\n\
             mv \"$HOME/.standin/$name.pid.tmp\" \"$HOME/.standin/$name.pid\"\n\
             exec sleep 100000\n",
        );
        World { tmp, home, bin_dir, standin }
    }

    /// The environment of the container (what with-contenv would hand the scripts).
    fn env(&self, cmd: &mut Command, scandir: &Path) {
        let mut path = OsString::from(&self.bin_dir);
        path.push(":");
        path.push(std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()));
        for var in [
            "GATEWAY_MULTIPLEX_PROFILES",
            "HERMES_GATEWAY_NO_SUPERVISE",
            "HERMES_RECONCILER_RESYNC_SECS",
            "HERMES_RECONCILER_MAX_PROFILES",
            "HERMES_RECONCILER_LOG",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("PATH", path)
            .env("HERMES_HOME", &self.home)
            .env("S6_PROFILE_GATEWAY_SCANDIR", scandir)
            .env("HERMES_GATEWAY_COMMAND", &self.standin)
            .env("HERMES_RUN_AS", "")
            .env("HERMES_RECONCILER_REMOVE_GRACE_MS", "200")
            .env("HERMES_RECONCILER_RUNTIME_DIR", self.tmp.path().join("run"));
    }

    fn profile_dir(&self, name: &str) -> PathBuf {
        if name == "default" { self.home.clone() } else { self.home.join("profiles").join(name) }
    }

    /// Creates a profile (`default`: the root one) with an optional `gateway_state.json`, the
    /// state file first so that the profile appears with its intent.
    fn profile(&self, name: &str, state: Option<&str>) {
        let dir = self.profile_dir(name);
        fs::create_dir_all(&dir).unwrap();
        if let Some(state) = state {
            self.set_state(name, state);
        }
        if name != "default" {
            fs::write(dir.join("SOUL.md"), format!("# {name}\n")).unwrap();
        }
    }

    fn set_state(&self, name: &str, json: &str) {
        let dir = self.profile_dir(name);
        let tmp = dir.join(".gateway_state.json.tmp");
        fs::write(&tmp, json).unwrap();
        fs::rename(&tmp, dir.join("gateway_state.json")).unwrap();
    }

    /// Pid and arguments the stand-in recorded for `name`, once both are there.
    fn standin(&self, name: &str) -> Option<(i64, Vec<String>)> {
        let dir = self.home.join(".standin");
        let pid = fs::read_to_string(dir.join(format!("{name}.pid"))).ok()?.trim().parse().ok()?;
        let argv = fs::read_to_string(dir.join(format!("{name}.argv"))).ok()?;
        Some((pid, argv.lines().map(str::to_owned).collect()))
    }

    /// Every line of `container-boot.log`, each checked against the documented format.
    fn boot_log(&self) -> Vec<BootLine> {
        let text = fs::read_to_string(self.home.join("logs/container-boot.log")).unwrap_or_default();
        text.lines().map(|line| parse_boot_line(line).unwrap_or_else(|e| panic!("{e}"))).collect()
    }
}

/// A pid + mount namespace whose init is the given command, started by `unshare`. Dropping it
/// SIGKILLs the init, which kills every process of the namespace and with its mount namespace
/// unmounts what was mounted in it.
struct Namespace {
    unshare: Child,
    init: i32,
    /// The init's stdout and stderr (s6-svscan's, the supervisors', the services').
    log: PathBuf,
}

impl Namespace {
    fn start(init: &[&OsStr], configure: impl FnOnce(&mut Command), log: PathBuf) -> Namespace {
        let out = fs::File::create(&log).unwrap();
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--kill-child", "--mount", "--mount-proc"])
            .args(init)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        configure(&mut cmd);
        // SAFETY: runs in the forked child before exec; one async-signal-safe system call.
        unsafe {
            cmd.pre_exec(|| nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from));
        }
        let mut unshare = cmd.spawn().expect("spawn unshare (util-linux)");
        let upid = unshare.id();
        let init = poll(|| {
            let children = fs::read_to_string(format!("/proc/{upid}/task/{upid}/children")).ok()?;
            children.split_whitespace().next()?.parse().ok()
        });
        let Some(init) = init else {
            let _ = unshare.kill();
            let _ = unshare.wait();
            panic!("unshare did not start its init; log:\n{}", fs::read_to_string(&log).unwrap_or_default());
        };
        Namespace { unshare, init, log }
    }

    /// `path` (absolute) as the namespace's processes see it, mounts included.
    fn path(&self, path: &Path) -> PathBuf {
        Path::new(&format!("/proc/{}/root", self.init)).join(path.strip_prefix("/").unwrap())
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `f` until it returns `Some`; panics naming `what`, with the namespace's log, on
    /// timeout or if the namespace died.
    fn wait_for<T>(&mut self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let mut died = false;
        let found = poll(|| {
            if let Some(v) = f() {
                return Some(Some(v));
            }
            if matches!(self.unshare.try_wait(), Ok(Some(_))) {
                died = true;
                return Some(None);
            }
            None
        });
        match found {
            Some(Some(v)) => v,
            _ => panic!(
                "{} waiting for {what}; namespace log:\n{}",
                if died { "namespace died" } else { "timed out" },
                self.log_text()
            ),
        }
    }

    /// SIGKILL to the init ("the container is killed"), then waits for `unshare`, which exits
    /// once the namespace's last process is gone.
    fn kill(&mut self) {
        // Only while unshare (our unreaped child) runs is the init's pid surely still the init's.
        if matches!(self.unshare.try_wait(), Ok(None)) {
            let _ = kill(Pid::from_raw(self.init), Signal::SIGKILL);
        }
        let deadline = Instant::now() + WAIT;
        while matches!(self.unshare.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- namespace log {}:\n{}", self.log.display(), self.log_text());
        }
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
fn service_definition_is_an_s6_rc_longrun_with_readiness() {
    root_only!();
    let svc = repo().join("s6-rc.d").join(SERVICE);
    assert_eq!(fs::read_to_string(svc.join("type")).unwrap(), "longrun\n");
    assert_eq!(fs::read_to_string(svc.join("notification-fd")).unwrap(), "3\n");
    assert_eq!(fs::read(svc.join("dependencies.d/base")).unwrap(), b"");
    // s6-overlay 3.2.3.2 (the version the Dockerfile pins) reads the user bundle here.
    let member = repo().join("user-bundles.d/user/contents.d").join(SERVICE);
    assert_eq!(fs::read(member).unwrap(), b"");
    let script = fs::read_to_string(svc.join("run")).unwrap();
    assert!(script.starts_with("#!/bin/sh\n"), "{script}");
    assert!(script.contains("\nexec 2>&1\n"), "stderr must reach the log: {script}");
    assert!(script.contains("exec hermes-reconciler run --notify-fd 3\n"), "{script}");
    assert!(script.contains("exec /command/with-contenv hermes-reconciler run --notify-fd 3\n"), "{script}");
    for f in ["run", "finish"] {
        let mode = fs::metadata(svc.join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "{f} must be executable");
    }
    for entry in fs::read_dir(repo().join("cont-init.d")).unwrap() {
        let path = entry.unwrap().path();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "{} must be executable", path.display());
    }
}

#[test]
fn longrun_under_s6_svscan_is_ready_converges_and_stops_with_exit_0_leaving_gateways_up() {
    root_only!();
    let w = World::new();
    let scandir = w.tmp.path().join("service");
    fs::create_dir(&scandir).unwrap();
    let daemon = install_longrun(&scandir);
    w.profile("alice", Some(r#"{"desired_state":"running"}"#));
    // Diagnostics on stderr, the service's stdout separately: `exec 2>&1` must send them to stdout.
    let stdout_log = w.tmp.path().join("svscan.stdout");
    let stderr_log = w.tmp.path().join("svscan.stderr");
    let stderr_file = fs::File::create(&stderr_log).unwrap();
    let mut ns = Namespace::start(
        &[OsStr::new("s6-svscan"), scandir.as_os_str()],
        |cmd| {
            w.env(cmd, &scandir);
            cmd.stderr(stderr_file);
        },
        stdout_log.clone(),
    );

    // Started and awaited as s6-rc does it: up and ready.
    ns.wait_for("a supervisor for the daemon", || svstat(&daemon));
    let out = s6_rc_up(&daemon);
    assert!(out.status.success(), "s6-svc -uwU: {out:?}\n{}", ns.log_text());
    let st = svstat(&daemon).unwrap();
    assert!(st.up && st.ready, "{st:?}");
    let out = run(Command::new("s6-svwait").args(["-U", "-t", "20000"]).arg(&daemon));
    assert!(out.status.success(), "s6-svwait -U: {out:?}");

    // The boot pass converged: alice's gateway runs (as the stand-in recorded it), the root
    // profile (no intent) is registered down.
    let alice = scandir.join("gateway-alice");
    let alice_up = ns.wait_for("gateway-alice up", || svstat(&alice).filter(|s| s.up && s.pid > 0));
    let (pid, argv) = ns.wait_for("the alice stand-in", || w.standin("alice"));
    assert_eq!(pid, alice_up.pid, "s6-svstat and the stand-in agree on the gateway's pid");
    assert_eq!(argv, ["-p", "alice", "gateway", "run", "--replace"]);
    let root = scandir.join("gateway-default");
    let root_st = ns.wait_for("gateway-default supervised", || svstat(&root));
    assert!(!root_st.up && !root_st.wanted_up && !root_st.normally_up, "{root_st:?}");

    // It keeps converging: a profile made now gets its slot up.
    w.profile("bob", Some(r#"{"desired_state":"running"}"#));
    let bob = scandir.join("gateway-bob");
    let bob_up = ns.wait_for("gateway-bob up", || svstat(&bob).filter(|s| s.up && s.pid > 0));

    // The daemon's diagnostics went to stdout (`exec 2>&1`).
    ns.wait_for("the daemon's `ready` line on stdout", || {
        fs::read_to_string(&stdout_log).unwrap().contains("ready").then_some(())
    });

    // s6-svc -d: SIGTERM; the daemon exits 0 and the gateways keep running, same processes.
    let out = run(Command::new("s6-svc").arg("-d").arg(&daemon));
    assert!(out.status.success(), "s6-svc -d: {out:?}");
    let stopped = ns.wait_for("the daemon down", || svstat(&daemon).filter(|s| !s.up));
    assert_eq!(stopped.exitcode, 0, "the daemon's exit code on SIGTERM: {stopped:?}");
    let out = run(Command::new("s6-svstat").args(["-o", "exitcode"]).arg(&daemon));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
    for (dir, before) in [(&alice, alice_up), (&bob, bob_up)] {
        let now = svstat(dir).unwrap();
        assert!(now.up, "{} went down with the daemon: {now:?}", dir.display());
        assert_eq!(now.pid, before.pid, "{} was restarted", dir.display());
    }
    let stderr_text = fs::read_to_string(&stderr_log).unwrap();
    assert!(!stderr_text.contains("ready"), "daemon diagnostics on stderr:\n{stderr_text}");
}

#[test]
fn longrun_with_a_configuration_error_fails_for_good_instead_of_restarting() {
    root_only!();
    let w = World::new();
    let scandir = w.tmp.path().join("service");
    fs::create_dir(&scandir).unwrap();
    let daemon = install_longrun(&scandir);
    let mut ns = Namespace::start(
        &[OsStr::new("s6-svscan"), scandir.as_os_str()],
        |cmd| {
            w.env(cmd, &scandir);
            cmd.env("HERMES_RECONCILER_RESYNC_SECS", "0"); // invalid: exit 78
        },
        w.tmp.path().join("svscan.log"),
    );
    ns.wait_for("a supervisor for the daemon", || svstat(&daemon));
    // s6-rc's wait for the service must end (permanent failure), not last until its timeout.
    let out = s6_rc_up(&daemon);
    assert_eq!(out.status.code(), Some(1), "s6-svc -uwU: {out:?}\n{}", ns.log_text());
    let st = svstat(&daemon).unwrap();
    assert!(!st.up && !st.wanted_up, "parked, not restarted: {st:?}");
    assert_eq!(st.exitcode, 78, "{st:?}");
    let log = ns.log_text();
    assert!(log.contains("HERMES_RECONCILER_RESYNC_SECS"), "the error names the variable:\n{log}");
    assert!(log.contains("not restarting it"), "{log}");
}

/// The Hermes container, modelled: a persistent home, and per boot a fresh pid + mount
/// namespace whose init mounts a tmpfs on the scandir, starts s6-svscan on it, runs the
/// cont-init.d scripts in order as root (s6-overlay's legacy-cont-init), then installs and starts
/// the longrun (the `user` bundle, which depends on `base`).
struct Container {
    world: World,
    scandir: PathBuf,
    boots: usize,
}

const BOOT: &str = r#"
set -eu
mount -t tmpfs -o mode=0755 container-run "$S6_PROFILE_GATEWAY_SCANDIR"
# What an interrupted run left behind (a real /run is wiped; this one was not).
if [ -d "$SEED" ]; then cp -a "$SEED/." "$S6_PROFILE_GATEWAY_SCANDIR/"; fi
s6-svscan "$S6_PROFILE_GATEWAY_SCANDIR" &
tries=0
until s6-svscanctl -a "$S6_PROFILE_GATEWAY_SCANDIR" 2>/dev/null; do
  tries=$((tries + 1))
  if [ "$tries" -ge 2000 ]; then echo "boot: s6-svscan did not start" >&2; exit 1; fi
  sleep 0.01
done
for script in "$CONT_INIT"/*; do
  echo "boot: running $script" >&2
  status=0
  "$script" || status=$?
  echo "boot: $script exited $status" >&2
done
# The longrun as s6-rc-init installs it (down), then started as `s6-rc change` does.
svc=$S6_PROFILE_GATEWAY_SCANDIR/hermes-reconciler
mkdir "$svc"
for f in run finish type notification-fd; do
  cp -p "$SERVICE_SRC/$f" "$svc/$f"
done
: >"$svc/down"
s6-svscanctl -a "$S6_PROFILE_GATEWAY_SCANDIR"
tries=0
until s6-svok "$svc"; do
  tries=$((tries + 1))
  if [ "$tries" -ge 2000 ]; then echo "boot: no supervisor for $svc" >&2; exit 1; fi
  sleep 0.01
done
s6-svc -uwU -T 20000 "$svc"
echo "boot: services started" >&2
wait
"#;

impl Container {
    fn new() -> Container {
        let world = World::new();
        let scandir = world.tmp.path().join("run/service");
        fs::create_dir_all(&scandir).unwrap();
        Container { world, scandir, boots: 0 }
    }

    /// Boots the container; `seed` is copied into the fresh scandir before anything runs.
    fn boot(&mut self, seed: &Path) -> Namespace {
        self.boots += 1;
        let log = self.world.tmp.path().join(format!("boot-{}.log", self.boots));
        let mut ns = Namespace::start(
            &[OsStr::new("sh"), OsStr::new("-c"), OsStr::new(BOOT)],
            |cmd| {
                self.world.env(cmd, &self.scandir);
                cmd.env("SEED", seed)
                    .env("CONT_INIT", repo().join("cont-init.d"))
                    .env("SERVICE_SRC", repo().join("s6-rc.d").join(SERVICE));
            },
            log,
        );
        let daemon = ns.path(&self.scandir.join(SERVICE));
        ns.wait_for("the daemon ready", || svstat(&daemon).filter(|s| s.up && s.ready));
        ns
    }

    fn slot(&self, ns: &Namespace, name: &str) -> PathBuf {
        ns.path(&self.scandir.join(format!("gateway-{name}")))
    }

    fn wait_up(&self, ns: &mut Namespace, name: &str) -> Svstat {
        let dir = self.slot(ns, name);
        ns.wait_for(&format!("gateway-{name} up"), || {
            svstat(&dir).filter(|s| s.up && s.wanted_up && s.normally_up && s.pid > 0)
        })
    }

    /// Registered down: the slot is there, supervised, not up, not wanted up, with `./down`.
    fn wait_down(&self, ns: &mut Namespace, name: &str) -> Svstat {
        let dir = self.slot(ns, name);
        ns.wait_for(&format!("gateway-{name} down"), || {
            svstat(&dir).filter(|s| !s.up && !s.wanted_up && !s.normally_up && dir.join("down").exists())
        })
    }

    fn wait_gone(&self, ns: &mut Namespace, name: &str) {
        let dir = self.slot(ns, name);
        ns.wait_for(&format!("gateway-{name} removed"), || (!dir.exists()).then_some(()));
    }

    fn hidden_entries(&self, ns: &Namespace) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(ns.path(&self.scandir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".gateway-"))
            .collect();
        names.sort();
        names
    }
}

/// A root-owned leftover as an interrupted run leaves it: a half-built slot with its
/// `supervise/control` FIFO and a directory only root may enter.
fn make_leftover(dir: &Path) {
    fs::create_dir_all(dir.join("supervise")).unwrap();
    nix::unistd::mkfifo(&dir.join("supervise/control"), nix::sys::stat::Mode::from_bits_truncate(0o600))
        .unwrap();
    fs::create_dir(dir.join("log")).unwrap();
    write_exec(&dir.join("run"), "#!/bin/sh\nexec sleep 1000\n");
    fs::create_dir(dir.join("private")).unwrap();
    fs::write(dir.join("private/file"), "x").unwrap();
    fs::set_permissions(dir.join("private"), fs::Permissions::from_mode(0o500)).unwrap();
}

/// Boot-pass lines: the last `n` lines of the log, which must share one timestamp.
fn boot_pass(lines: &[BootLine], n: usize) -> Vec<BootLine> {
    assert!(lines.len() >= n, "expected at least {n} lines: {lines:#?}");
    let pass = lines[lines.len() - n..].to_vec();
    assert!(pass.iter().all(|l| l.time == pass[0].time), "one timestamp per boot pass: {pass:#?}");
    pass
}

fn summary(lines: &[BootLine]) -> Vec<(String, String, String, String)> {
    lines
        .iter()
        .map(|l| (l.profile.clone(), l.prior_state.clone(), l.action.clone(), l.prior_exit.clone()))
        .collect()
}

fn tuple(p: &str, s: &str, a: &str, e: &str) -> (String, String, String, String) {
    (p.into(), s.into(), a.into(), e.into())
}

#[test]
fn container_boot_profile_changes_and_restart_on_the_same_home() {
    root_only!();
    let mut c = Container::new();
    let w = &c.world;
    w.profile("default", Some(r#"{"desired_state":"running"}"#));
    w.profile("alice", Some(r#"{"desired_state":"running"}"#));
    w.profile("bob", None);
    w.profile("carol", Some(r#"{"gateway_state":"startup_failed"}"#));
    w.profile("dave", Some(r#"{"gateway_state":"running"}"#));
    fs::create_dir_all(w.home.join("profiles/notes")).unwrap(); // no SOUL.md: not a profile
    let alice_dir = w.profile_dir("alice");
    fs::create_dir_all(alice_dir.join("state")).unwrap();
    fs::write(alice_dir.join("state/gateway.lifecycle.json"), r#"{"phase":"exited"}"#).unwrap();
    // Pid files of the previous container's pid namespace.
    fs::write(alice_dir.join("gateway.pid"), "4242\n").unwrap();
    fs::write(alice_dir.join("processes.json"), "[]\n").unwrap();
    let seed = w.tmp.path().join("seed");
    make_leftover(&seed.join(".gateway-x.new"));

    // --- first boot --------------------------------------------------------------------------
    let mut ns = c.boot(&seed);
    for name in ["default", "alice", "dave"] {
        c.wait_up(&mut ns, name);
    }
    for name in ["bob", "carol"] {
        c.wait_down(&mut ns, name);
    }
    assert_eq!(c.hidden_entries(&ns), Vec::<String>::new(), "the leftover was cleared");
    assert!(!alice_dir.join("gateway.pid").exists() && !alice_dir.join("processes.json").exists());
    let w = &c.world;
    let (_, argv) = ns.wait_for("the root stand-in", || w.standin("default"));
    assert_eq!(argv, ["gateway", "run", "--replace"], "the root profile never gets -p");
    // One boot-pass line per profile, root first; the daemon then adopted the slots without
    // doing anything (it was ready, so its own boot pass was over, and it logged nothing).
    let log = w.boot_log();
    assert_eq!(log.len(), 5, "{log:#?}");
    assert_eq!(
        summary(&boot_pass(&log, 5)),
        [
            tuple("default", "running", "started", "unknown"),
            tuple("alice", "running", "started", "clean"),
            tuple("bob", "None", "registered", "unknown"),
            tuple("carol", "startup_failed", "registered", "unknown"),
            tuple("dave", "running", "started", "unknown"),
        ]
    );
    let alice_pid = c.wait_up(&mut ns, "alice").pid;

    // --- changes while it runs ---------------------------------------------------------------
    let w = &c.world;
    w.profile("erin", Some(r#"{"desired_state":"running"}"#));
    c.wait_up(&mut ns, "erin");
    w.set_state("erin", r#"{"desired_state":"stopped"}"#);
    c.wait_down(&mut ns, "erin");
    fs::rename(w.profile_dir("dave"), w.profile_dir("frank")).unwrap();
    c.wait_up(&mut ns, "frank");
    c.wait_gone(&mut ns, "dave");
    fs::remove_dir_all(w.profile_dir("bob")).unwrap();
    c.wait_gone(&mut ns, "bob");
    let mut expected = vec![
        ("bob".to_string(), "unregistered".to_string()),
        ("dave".into(), "unregistered".into()),
        ("erin".into(), "started".into()),
        ("erin".into(), "stopped".into()),
        ("frank".into(), "started".into()),
    ];
    expected.sort();
    let w = &c.world;
    ns.wait_for("the log lines of the changes", || {
        let mut got: Vec<_> =
            w.boot_log()[5..].iter().map(|l| (l.profile.clone(), l.action.clone())).collect();
        got.sort();
        (got == expected).then_some(())
    });
    assert_eq!(c.wait_up(&mut ns, "alice").pid, alice_pid, "alice's gateway was not touched");
    let lines_before_restart = w.boot_log().len();

    // The gateways were killed, not stopped: alice's lifecycle still says running, and its pid
    // file is the dead container's.
    fs::write(alice_dir.join("state/gateway.lifecycle.json"), r#"{"phase":"running"}"#).unwrap();
    fs::write(alice_dir.join("gateway.pid"), "4343\n").unwrap();

    // --- docker restart: kill the container, boot it again on the same home -----------------
    ns.kill();
    drop(ns);
    let seed2 = c.world.tmp.path().join("seed2");
    make_leftover(&seed2.join(".gateway-x.new"));
    make_leftover(&seed2.join(".gateway-y.rm-0123abcd"));
    let mut ns = c.boot(&seed2);
    for name in ["default", "alice", "frank"] {
        c.wait_up(&mut ns, name);
    }
    for name in ["carol", "erin"] {
        c.wait_down(&mut ns, name);
    }
    for name in ["bob", "dave"] {
        assert!(!c.slot(&ns, name).exists(), "gateway-{name} came back");
    }
    assert_eq!(c.hidden_entries(&ns), Vec::<String>::new(), "the leftovers were cleared");
    assert!(!alice_dir.join("gateway.pid").exists(), "the boot pass removes stale pid files");
    let log = c.world.boot_log();
    assert_eq!(log.len(), lines_before_restart + 5, "{log:#?}");
    assert_eq!(
        summary(&boot_pass(&log, 5)),
        [
            tuple("default", "running", "started", "unknown"),
            tuple("alice", "running", "started", "unclean"),
            tuple("carol", "startup_failed", "registered", "unknown"),
            tuple("erin", "stopped", "registered", "unknown"),
            tuple("frank", "running", "started", "unknown"),
        ]
    );
    let scandir_names: Vec<String> = fs::read_dir(ns.path(&c.scandir))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("gateway-"))
        .collect();
    let mut scandir_names = scandir_names;
    scandir_names.sort();
    assert_eq!(
        scandir_names,
        ["gateway-alice", "gateway-carol", "gateway-default", "gateway-erin", "gateway-frank"]
    );
}

// ---------------------------------------------------------------------------------------------

/// A fake image root with s6-overlay v3's marks (/init, /package/admin/s6-overlay) and its user
/// bundle where `bundle` says (relative to /etc/s6-overlay).
fn fake_image_root(bundle: &str) -> tempfile::TempDir {
    let root = tempfile::Builder::new().prefix("hermes-pkg-root-").tempdir().unwrap();
    let r = root.path();
    fs::create_dir_all(r.join("package/admin/s6-overlay-3.2.3.2")).unwrap();
    std::os::unix::fs::symlink("s6-overlay-3.2.3.2", r.join("package/admin/s6-overlay")).unwrap();
    fs::write(r.join("init"), "").unwrap();
    let b = r.join("etc/s6-overlay").join(bundle);
    fs::create_dir_all(b.join("contents.d")).unwrap();
    fs::write(b.join("type"), "bundle\n").unwrap();
    root
}

fn install_into(root: &Path) -> Output {
    run(Command::new("sh").arg(repo().join("scripts/install.sh")).arg(BIN).arg(root))
}

fn assert_same_file(a: &Path, b: &Path) {
    assert_eq!(fs::read(a).unwrap(), fs::read(b).unwrap(), "{} vs {}", a.display(), b.display());
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(a), mode(b), "mode of {}", b.display());
}

#[test]
fn install_script_puts_the_service_where_each_s6_overlay_layout_reads_it() {
    root_only!();
    // s6-overlay 3.2.3.2: the user bundle lives in user-bundles.d.
    let root = fake_image_root("user-bundles.d/user");
    let r = root.path();
    let out = install_into(r);
    assert!(out.status.success(), "{out:?}");
    assert!(r.join("etc/s6-overlay/user-bundles.d/user/contents.d").join(SERVICE).is_file());
    assert!(!r.join("etc/s6-overlay/s6-rc.d/user").exists(), "would switch s6-overlay to the old layout");
    let src = repo().join("s6-rc.d").join(SERVICE);
    let dst = r.join("etc/s6-overlay/s6-rc.d").join(SERVICE);
    for f in ["run", "finish", "type", "notification-fd", "dependencies.d/base"] {
        assert_same_file(&src.join(f), &dst.join(f));
    }
    for entry in fs::read_dir(repo().join("cont-init.d")).unwrap() {
        let src = entry.unwrap().path();
        assert_same_file(&src, &r.join("etc/cont-init.d").join(src.file_name().unwrap()));
    }
    assert_eq!(fs::read(r.join("usr/local/bin/hermes-reconciler")).unwrap(), fs::read(BIN).unwrap());

    // Older s6-overlay, or an image that still defines its user bundle in s6-rc.d (which 3.2.3.2
    // then reads instead of user-bundles.d): the membership goes there. The old boot script goes.
    let root = fake_image_root("s6-rc.d/user");
    let r = root.path();
    fs::create_dir_all(r.join("etc/cont-init.d")).unwrap();
    write_exec(&r.join("etc/cont-init.d/02-reconcile-profiles"), "#!/bin/sh\n");
    write_exec(&r.join("etc/cont-init.d/01-hermes-setup"), "#!/bin/sh\n");
    let out = install_into(r);
    assert!(out.status.success(), "{out:?}");
    assert!(r.join("etc/s6-overlay/s6-rc.d/user/contents.d").join(SERVICE).is_file());
    assert!(!r.join("etc/s6-overlay/user-bundles.d").exists());
    assert!(!r.join("etc/cont-init.d/02-reconcile-profiles").exists(), "the replaced boot script");
    assert!(r.join("etc/cont-init.d/01-hermes-setup").exists(), "other scripts stay");

    // No s6-overlay: refused.
    let bare = tempfile::tempdir().unwrap();
    let out = install_into(bare.path());
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no s6-overlay v3"), "{out:?}");
    assert!(!bare.path().join("usr").exists());
}

#[test]
fn prepare_script_locks_the_scandir_and_clears_only_its_own_leftovers() {
    root_only!();
    let w = World::new();
    let scandir = w.tmp.path().join("service");
    fs::create_dir(&scandir).unwrap();
    fs::set_permissions(&scandir, fs::Permissions::from_mode(0o777)).unwrap();
    make_leftover(&scandir.join(".gateway-x.new"));
    make_leftover(&scandir.join(".gateway-y.rm-0123abcd"));
    let keep = [".gateway-z.rm-nothex00", ".gateway-Bad.new", ".other", "gateway-a", "dashboard"];
    for name in keep {
        fs::create_dir(scandir.join(name)).unwrap();
    }
    // A supervised leftover (an interrupted removal, supervisor still there) is kept.
    let busy = scandir.join(".gateway-w.rm-00000000");
    fs::create_dir(&busy).unwrap();
    write_exec(&busy.join("run"), "#!/bin/sh\nexec sleep 100000\n");
    let fake_home = w.tmp.path().join("new-home");
    let log = w.tmp.path().join("supervise.log");
    let mut ns = Namespace::start(
        &[OsStr::new("s6-supervise"), busy.as_os_str()],
        |cmd| {
            cmd.current_dir(w.tmp.path());
        },
        log,
    );
    ns.wait_for("the busy leftover supervised", || svstat(&busy).filter(|s| s.up));

    let mut cmd = Command::new(repo().join("cont-init.d/50-hermes-reconciler-prepare"));
    w.env(&mut cmd, &scandir);
    cmd.env("HERMES_HOME", &fake_home);
    let out = run(&mut cmd);
    assert!(out.status.success(), "{out:?}");
    let mut left: Vec<String> = fs::read_dir(&scandir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let mut want: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
    want.push(".gateway-w.rm-00000000".into());
    want.sort();
    assert_eq!(left, want, "{}", String::from_utf8_lossy(&out.stderr));
    let mode = fs::metadata(&scandir).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o755, "the scandir is writable by root only");
    assert!(fake_home.is_dir(), "a missing HERMES_HOME is created");
}

// ---------------------------------------------------------------------------------------------

/// scripts/lint.sh may install its tools: one run at a time.
static LINT: Mutex<()> = Mutex::new(());

fn lint(repo: &Path) -> Output {
    let _guard = LINT.lock().unwrap_or_else(|e| e.into_inner());
    run(Command::new("bash")
        .arg(self::repo().join("scripts/lint.sh"))
        .arg(repo)
        .env("HERMES_RECONCILER_BIN", BIN))
}

fn text(out: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn lint_passes_on_the_repository() {
    root_only!();
    let out = lint(&repo());
    assert!(out.status.success(), "scripts/lint.sh failed:\n{}", text(&out));
    let t = text(&out);
    assert!(t.contains("12 rendered slot script(s)"), "{t}");
}

#[test]
fn lint_fails_on_each_kind_of_finding() {
    root_only!();
    // A small repository holding the packaging and scripts/lint.sh, clean to start with.
    let tmp = tempfile::Builder::new().prefix("hermes-pkg-lint-").tempdir().unwrap();
    let r = tmp.path();
    fs::create_dir(r.join("scripts")).unwrap();
    for (entry, into) in [
        ("Dockerfile", ""),
        ("s6-rc.d", ""),
        ("user-bundles.d", ""),
        ("cont-init.d", ""),
        ("scripts/install.sh", "scripts"),
        ("scripts/lint.sh", "scripts"),
    ] {
        let out = run(Command::new("cp").arg("-a").arg(repo().join(entry)).arg(r.join(into)));
        assert!(out.status.success(), "{out:?}");
    }
    let git = |args: &[&str]| {
        let out = run(Command::new("git").arg("-C").arg(r).args(args));
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    let out = lint(r);
    assert!(out.status.success(), "the copy must start clean:\n{}", text(&out));

    let script = r.join("cont-init.d/60-hermes-reconciler-boot");
    let original_script = fs::read(&script).unwrap();
    let dockerfile = r.join("Dockerfile");
    let original_dockerfile = fs::read(&dockerfile).unwrap();
    type Break<'a> = Box<dyn Fn() + 'a>;
    let cases: Vec<(&str, Break<'_>, &str)> = vec![
        (
            "CRLF line endings",
            Box::new(|| fs::write(r.join("notes.txt"), "one\r\ntwo\r\n").unwrap()),
            "notes.txt",
        ),
        (
            "UTF-8 byte order mark",
            Box::new(|| fs::write(r.join("notes.txt"), "\u{feff}# notes\n").unwrap()),
            "notes.txt",
        ),
        (
            "shellcheck: cont-init.d/60-hermes-reconciler-boot",
            Box::new(|| {
                let mut s = original_script.clone();
                s.extend_from_slice(b"echo $HERMES_HOME\n");
                fs::write(&script, s).unwrap();
            }),
            "cont-init.d/60-hermes-reconciler-boot",
        ),
        (
            "shellcheck: scripts/extra.sh",
            Box::new(|| write_exec(&r.join("scripts/extra.sh"), "#!/usr/bin/env bash\ncd /tmp\nls\n")),
            "scripts/extra.sh",
        ),
        (
            "hadolint: Dockerfile",
            Box::new(|| {
                let mut s = original_dockerfile.clone();
                s.extend_from_slice(b"RUN cd /tmp && ls\n");
                fs::write(&dockerfile, s).unwrap();
            }),
            "Dockerfile",
        ),
    ];
    for (finding, make, file) in &cases {
        make();
        git(&["add", "-A"]);
        let out = lint(r);
        let t = text(&out);
        assert!(!out.status.success(), "{finding} not caught:\n{t}");
        assert!(t.contains(&format!("lint: FAILED: {finding}")), "{finding}:\n{t}");
        // Undo.
        fs::write(&script, &original_script).unwrap();
        fs::write(&dockerfile, &original_dockerfile).unwrap();
        let path = r.join(file);
        if *file == "notes.txt" || file.starts_with("scripts/extra") {
            fs::remove_file(&path).unwrap();
        }
        git(&["add", "-A"]);
    }
    let out = lint(r);
    assert!(out.status.success(), "clean again:\n{}", text(&out));
}
