//! The world builder: a temporary home and scandir with a running s6-svscan and a stand-in
//! gateway, the binary run against it, and the profiles on its volume.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::boot_log::{BootLine, parse_boot_line};
use super::slots::{entries, slot_name};
use super::standin::{STANDIN, StandinRecord, parse_record};
use super::svscan::Svscan;
use super::{BIN, ONCE_TIMEOUT, PATH};

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

/// Asserts the binary exists (a clear failure instead of a spawn error).
pub fn binary_exists() -> bool {
    Path::new(BIN).exists()
}

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
