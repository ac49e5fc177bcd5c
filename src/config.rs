//! Configuration: every setting is an environment variable with an overriding flag (SPEC §3).
//!
//! Invariant: an invalid value is an error naming the variable (exit 78), never a silent default.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// A resolved, validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub home: PathBuf,
    pub scandir: PathBuf,
    /// The gateway topology (SPEC §6.7). `None`: neither `HERMES_GATEWAY_TOPOLOGY` nor
    /// `GATEWAY_MULTIPLEX_PROFILES` is set, so the root home's `config.yaml` decides between
    /// `per-profile` and `multiplex` at each pass, as upstream reads it.
    pub topology: Option<Topology>,
    pub no_supervise: bool,
    pub gateway_command: String,
    /// `None`: never drop privileges.
    pub run_as: Option<String>,
    pub resync: Duration,
    pub remove_grace: Duration,
    pub max_profiles: usize,
    pub log_filter: String,
    /// The daemon's own root-only runtime state (SPEC §9.4); never inside the scandir or the
    /// home, which other users can write.
    pub runtime_dir: PathBuf,
    /// Crash-loop detection (SPEC §6.8): this many abnormal deaths within this window hold a
    /// gateway down. `None`: off.
    pub crashloop: Option<CrashLoop>,
    /// Longest hold of a crash-looping gateway.
    pub backoff_max: Duration,
    /// Up this long, a gateway's death count starts again from zero.
    pub crashloop_reset: Duration,
    /// Which watcher backend to use (SPEC §6.3): `auto` decides from the home's filesystem.
    pub watch: WatchMode,
    /// Period of the polling backend.
    pub poll: Duration,
}

/// Which gateways run (SPEC §6.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topology {
    /// One gateway per profile.
    PerProfile,
    /// Named slots registered, never brought up; stop intents still apply.
    Multiplex,
    /// One gateway (the root's) serves every profile: named intents fold into the root's,
    /// except `gateway.standalone: true` profiles, which keep their own slot and intent.
    Single,
}

impl Topology {
    pub fn as_str(self) -> &'static str {
        match self {
            Topology::PerProfile => "per-profile",
            Topology::Multiplex => "multiplex",
            Topology::Single => "single",
        }
    }
}

/// `HERMES_RECONCILER_CRASHLOOP`: `deaths` abnormal deaths within `window` make a crash loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashLoop {
    pub deaths: u32,
    pub window: Duration,
}

/// `HERMES_RECONCILER_WATCH`: how the volume is watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchMode {
    /// inotify, unless the home is on a filesystem where inotify misses changes made elsewhere.
    Auto,
    Inotify,
    Poll,
}

/// One setting: its environment variable, its flag and its default.
pub struct Setting {
    pub var: &'static str,
    pub flag: &'static str,
    pub default: &'static str,
}

pub const HOME: Setting = Setting { var: "HERMES_HOME", flag: "--home", default: "/opt/data" };
pub const SCANDIR: Setting =
    Setting { var: "S6_PROFILE_GATEWAY_SCANDIR", flag: "--scandir", default: "/run/service" };
pub const MULTIPLEX: Setting =
    Setting { var: "GATEWAY_MULTIPLEX_PROFILES", flag: "--multiplex", default: "false" };
pub const NO_SUPERVISE: Setting =
    Setting { var: "HERMES_GATEWAY_NO_SUPERVISE", flag: "--no-supervise", default: "false" };
pub const GATEWAY_COMMAND: Setting =
    Setting { var: "HERMES_GATEWAY_COMMAND", flag: "--gateway-command", default: "hermes" };
pub const RUN_AS: Setting = Setting { var: "HERMES_RUN_AS", flag: "--run-as", default: "hermes" };
pub const RESYNC: Setting =
    Setting { var: "HERMES_RECONCILER_RESYNC_SECS", flag: "--resync-secs", default: "30" };
pub const REMOVE_GRACE: Setting =
    Setting { var: "HERMES_RECONCILER_REMOVE_GRACE_MS", flag: "--remove-grace-ms", default: "2000" };
pub const MAX_PROFILES: Setting =
    Setting { var: "HERMES_RECONCILER_MAX_PROFILES", flag: "--max-profiles", default: "400" };
pub const LOG: Setting = Setting { var: "HERMES_RECONCILER_LOG", flag: "--log", default: "info" };
pub const RUNTIME_DIR: Setting = Setting {
    var: "HERMES_RECONCILER_RUNTIME_DIR",
    flag: "--runtime-dir",
    default: "/run/hermes-reconciler",
};
pub const WATCH: Setting = Setting { var: "HERMES_RECONCILER_WATCH", flag: "--watch", default: "auto" };
pub const POLL_MS: Setting = Setting { var: "HERMES_RECONCILER_POLL_MS", flag: "--poll-ms", default: "2000" };

pub const TOPOLOGY: Setting =
    Setting { var: "HERMES_GATEWAY_TOPOLOGY", flag: "--topology", default: "per-profile" };
pub const CRASHLOOP: Setting =
    Setting { var: "HERMES_RECONCILER_CRASHLOOP", flag: "--crashloop", default: "5/60" };
pub const BACKOFF_MAX: Setting =
    Setting { var: "HERMES_RECONCILER_BACKOFF_MAX_SECS", flag: "--backoff-max-secs", default: "300" };

pub const CRASHLOOP_RESET: Setting =
    Setting { var: "HERMES_RECONCILER_CRASHLOOP_RESET_SECS", flag: "--crashloop-reset-secs", default: "600" };

/// Every setting, in the order of SPEC §3 (used by `--help` texts and the README table).
pub const ALL: [&Setting; 17] = [
    &HOME,
    &SCANDIR,
    &MULTIPLEX,
    &NO_SUPERVISE,
    &GATEWAY_COMMAND,
    &RUN_AS,
    &RESYNC,
    &REMOVE_GRACE,
    &MAX_PROFILES,
    &LOG,
    &TOPOLOGY,
    &CRASHLOOP,
    &BACKOFF_MAX,
    &CRASHLOOP_RESET,
    &RUNTIME_DIR,
    &WATCH,
    &POLL_MS,
];

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?} is invalid: {why} (set by {source_kind})")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub why: String,
    pub source_kind: &'static str,
}

/// Raw values: flags given on the command line win over the environment.
#[derive(Clone, Debug, Default)]
pub struct RawSettings {
    pub flags: HashMap<&'static str, String>,
    pub env: HashMap<String, String>,
}

impl RawSettings {
    /// Captures the process environment (only the variables named in [`ALL`]).
    pub fn from_process_env() -> Self {
        let env =
            ALL.iter().filter_map(|s| std::env::var(s.var).ok().map(|v| (s.var.to_string(), v))).collect();
        RawSettings { flags: HashMap::new(), env }
    }

    /// The value given by a flag or the environment, `None` when neither sets it.
    fn given(&self, s: &Setting) -> Option<(String, &'static str)> {
        if let Some(v) = self.flags.get(s.var) {
            return Some((v.clone(), "flag"));
        }
        self.env.get(s.var).map(|v| (v.clone(), "environment"))
    }

    fn get(&self, s: &Setting) -> (String, &'static str) {
        if let Some(v) = self.flags.get(s.var) {
            return (v.clone(), "flag");
        }
        match self.env.get(s.var) {
            Some(v) => (v.clone(), "environment"),
            None => (s.default.to_string(), "default"),
        }
    }
}

fn bool_of(
    raw: &RawSettings,
    s: &'static Setting,
    truthy: &[&str],
    falsy: &[&str],
) -> Result<bool, ConfigError> {
    let (value, source_kind) = raw.get(s);
    let v = value.trim().to_ascii_lowercase();
    if truthy.contains(&v.as_str()) {
        Ok(true)
    } else if falsy.contains(&v.as_str()) {
        Ok(false)
    } else {
        Err(ConfigError {
            var: s.var,
            value,
            why: format!("expected one of {} (true) or {} (false)", truthy.join(" "), falsy.join(" ")),
            source_kind,
        })
    }
}

fn number_of(raw: &RawSettings, s: &'static Setting, min: u64, max: u64) -> Result<u64, ConfigError> {
    let (value, source_kind) = raw.get(s);
    let err = |why: String| ConfigError { var: s.var, value: value.clone(), why, source_kind };
    let n: u64 =
        value.trim().parse().map_err(|_| err(format!("expected a whole number from {min} to {max}")))?;
    if n < min || n > max {
        return Err(err(format!("expected a whole number from {min} to {max}")));
    }
    Ok(n)
}

fn path_of(raw: &RawSettings, s: &'static Setting) -> Result<PathBuf, ConfigError> {
    let (value, source_kind) = raw.get(s);
    if !value.starts_with('/') {
        return Err(ConfigError { var: s.var, value, why: "expected an absolute path".into(), source_kind });
    }
    let path = PathBuf::from(&value);
    // Normalise away `.` and trailing slashes; refuse `..` so the path means what it says.
    if path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(ConfigError { var: s.var, value, why: "must not contain '..'".into(), source_kind });
    }
    Ok(path.components().collect())
}

impl Config {
    /// Resolves and validates every setting.
    pub fn resolve(raw: &RawSettings) -> Result<Config, ConfigError> {
        let home = path_of(raw, &HOME)?;
        let scandir = path_of(raw, &SCANDIR)?;
        let topology = topology_of(raw)?;
        let no_supervise =
            bool_of(raw, &NO_SUPERVISE, &["1", "true", "yes"], &["0", "false", "no", "off", ""])?;
        let (gateway_command, src) = raw.get(&GATEWAY_COMMAND);
        if gateway_command.is_empty() || gateway_command.contains('\0') || gateway_command.contains('\n') {
            return Err(ConfigError {
                var: GATEWAY_COMMAND.var,
                value: gateway_command,
                why: "expected a program name or path without newlines".into(),
                source_kind: src,
            });
        }
        let (run_as, src) = raw.get(&RUN_AS);
        let run_as = if run_as.is_empty() {
            None
        } else if run_as.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            && !run_as.starts_with('-')
        {
            Some(run_as)
        } else {
            return Err(ConfigError {
                var: RUN_AS.var,
                value: run_as,
                why: "expected a user name (letters, digits, '.', '_', '-') or empty".into(),
                source_kind: src,
            });
        };
        let resync = Duration::from_secs(number_of(raw, &RESYNC, 1, 86_400)?);
        let remove_grace = Duration::from_millis(number_of(raw, &REMOVE_GRACE, 0, 3_600_000)?);
        let max_profiles = number_of(raw, &MAX_PROFILES, 0, 100_000)? as usize;
        let (log_filter, src) = raw.get(&LOG);
        if tracing_subscriber::EnvFilter::try_new(&log_filter).is_err() {
            return Err(ConfigError {
                var: LOG.var,
                value: log_filter,
                why: "expected a tracing filter such as 'info' or 'hermes_reconciler=debug'".into(),
                source_kind: src,
            });
        }
        let runtime_dir = path_of(raw, &RUNTIME_DIR)?;
        for (inside, what) in [(&scandir, "the scandir"), (&home, "HERMES_HOME")] {
            if runtime_dir.starts_with(inside) {
                let (value, source_kind) = raw.get(&RUNTIME_DIR);
                return Err(ConfigError {
                    var: RUNTIME_DIR.var,
                    value,
                    why: format!(
                        "must not be inside {what} ({}), which other users can write",
                        inside.display()
                    ),
                    source_kind,
                });
            }
        }
        let (watch, src) = raw.get(&WATCH);
        let watch = match watch.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => WatchMode::Auto,
            "inotify" => WatchMode::Inotify,
            "poll" => WatchMode::Poll,
            _ => {
                return Err(ConfigError {
                    var: WATCH.var,
                    value: watch,
                    why: "expected auto, inotify or poll".into(),
                    source_kind: src,
                });
            }
        };
        let poll = Duration::from_millis(number_of(raw, &POLL_MS, 100, 3_600_000)?);
        Ok(Config {
            watch,
            poll,
            runtime_dir,
            home,
            scandir,
            topology,
            no_supervise,
            gateway_command,
            run_as,
            resync,
            remove_grace,
            max_profiles,
            log_filter,
            crashloop: crashloop_of(raw)?,
            backoff_max: Duration::from_secs(number_of(raw, &BACKOFF_MAX, 10, 86_400)?),
            crashloop_reset: Duration::from_secs(number_of(raw, &CRASHLOOP_RESET, 1, 86_400)?),
        })
    }
}

/// `HERMES_GATEWAY_TOPOLOGY` and its older spelling `GATEWAY_MULTIPLEX_PROFILES`.
///
/// A truthy `GATEWAY_MULTIPLEX_PROFILES` selects `multiplex`; a falsy one `per-profile`
/// (an empty value says nothing: images often pass the variable through unset-but-empty).
/// Both given and disagreeing (multiplex truthy with another topology, or falsy with
/// `multiplex`) is a configuration error: which one the operator meant cannot be guessed.
fn topology_of(raw: &RawSettings) -> Result<Option<Topology>, ConfigError> {
    let legacy = match raw.given(&MULTIPLEX) {
        Some((v, _)) if v.trim().is_empty() => None,
        Some(_) => {
            Some(bool_of(raw, &MULTIPLEX, &["1", "true", "yes", "on"], &["0", "false", "no", "off", ""])?)
        }
        None => None,
    };
    let Some((value, source_kind)) = raw.given(&TOPOLOGY) else {
        return Ok(legacy.map(|m| if m { Topology::Multiplex } else { Topology::PerProfile }));
    };
    let topology = match value.trim().to_ascii_lowercase().as_str() {
        "per-profile" => Topology::PerProfile,
        "multiplex" => Topology::Multiplex,
        "single" => Topology::Single,
        _ => {
            return Err(ConfigError {
                var: TOPOLOGY.var,
                value,
                why: "expected per-profile, multiplex or single".into(),
                source_kind,
            });
        }
    };
    if let Some(m) = legacy
        && m != (topology == Topology::Multiplex)
    {
        let (mvalue, _) = raw.get(&MULTIPLEX);
        return Err(ConfigError {
            var: TOPOLOGY.var,
            value,
            why: format!("disagrees with {}={mvalue:?}; set only one of them", MULTIPLEX.var),
            source_kind,
        });
    }
    Ok(Some(topology))
}

/// `HERMES_RECONCILER_CRASHLOOP`: `off`, or `<deaths>/<seconds>` (2–1000 deaths, 1–86400 s).
fn crashloop_of(raw: &RawSettings) -> Result<Option<CrashLoop>, ConfigError> {
    let (value, source_kind) = raw.get(&CRASHLOOP);
    let v = value.trim().to_ascii_lowercase();
    if v == "off" {
        return Ok(None);
    }
    let parsed = v
        .split_once('/')
        .and_then(|(d, w)| Some((d.trim().parse::<u32>().ok()?, w.trim().parse::<u64>().ok()?)));
    match parsed {
        Some((deaths, secs)) if (2..=1000).contains(&deaths) && (1..=86_400).contains(&secs) => {
            Ok(Some(CrashLoop { deaths, window: Duration::from_secs(secs) }))
        }
        _ => Err(ConfigError {
            var: CRASHLOOP.var,
            value,
            why: "expected off or <deaths>/<seconds> (deaths 2 to 1000, seconds 1 to 86400), e.g. 5/60"
                .into(),
            source_kind,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> RawSettings {
        RawSettings {
            flags: HashMap::new(),
            env: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn defaults() {
        let c = Config::resolve(&env(&[])).unwrap();
        assert_eq!(c.home, PathBuf::from("/opt/data"));
        assert_eq!(c.scandir, PathBuf::from("/run/service"));
        assert!(c.topology.is_none() && !c.no_supervise);
        assert_eq!(c.crashloop, Some(CrashLoop { deaths: 5, window: Duration::from_secs(60) }));
        assert_eq!(c.backoff_max, Duration::from_secs(300));
        assert_eq!(c.gateway_command, "hermes");
        assert_eq!(c.run_as.as_deref(), Some("hermes"));
        assert_eq!(c.resync, Duration::from_secs(30));
        assert_eq!(c.remove_grace, Duration::from_millis(2000));
        assert_eq!(c.max_profiles, 400);
        assert_eq!(c.runtime_dir, PathBuf::from("/run/hermes-reconciler"));
        assert_eq!(c.watch, WatchMode::Auto);
        assert_eq!(c.poll, Duration::from_millis(2000));
    }

    #[test]
    fn watch_backends() {
        for (v, want) in
            [("inotify", WatchMode::Inotify), ("POLL", WatchMode::Poll), ("auto", WatchMode::Auto)]
        {
            assert_eq!(Config::resolve(&env(&[("HERMES_RECONCILER_WATCH", v)])).unwrap().watch, want);
        }
        let mut raw = env(&[("HERMES_RECONCILER_WATCH", "inotify")]);
        raw.flags.insert("HERMES_RECONCILER_WATCH", "poll".into());
        raw.flags.insert("HERMES_RECONCILER_POLL_MS", "250".into());
        let c = Config::resolve(&raw).unwrap();
        assert_eq!((c.watch, c.poll), (WatchMode::Poll, Duration::from_millis(250)));
    }

    #[test]
    fn truthy_values() {
        for v in ["1", "true", "YES", "On"] {
            assert_eq!(
                Config::resolve(&env(&[("GATEWAY_MULTIPLEX_PROFILES", v)])).unwrap().topology,
                Some(Topology::Multiplex)
            );
        }
        for v in ["1", "TRUE", "yes"] {
            assert!(Config::resolve(&env(&[("HERMES_GATEWAY_NO_SUPERVISE", v)])).unwrap().no_supervise);
        }
        let e = Config::resolve(&env(&[("HERMES_GATEWAY_NO_SUPERVISE", "on")])).unwrap_err();
        assert_eq!(e.var, "HERMES_GATEWAY_NO_SUPERVISE");
    }

    #[test]
    fn invalid_values_name_the_variable() {
        for (var, value) in [
            ("HERMES_HOME", "relative"),
            ("HERMES_HOME", "/a/../b"),
            ("S6_PROFILE_GATEWAY_SCANDIR", ""),
            ("GATEWAY_MULTIPLEX_PROFILES", "maybe"),
            ("HERMES_RECONCILER_RESYNC_SECS", "0"),
            ("HERMES_RECONCILER_RESYNC_SECS", "ten"),
            ("HERMES_RECONCILER_REMOVE_GRACE_MS", "-1"),
            ("HERMES_RECONCILER_MAX_PROFILES", "abc"),
            ("HERMES_RUN_AS", "bad user"),
            ("HERMES_GATEWAY_COMMAND", ""),
            ("HERMES_RECONCILER_LOG", "[[["),
            ("HERMES_RECONCILER_RUNTIME_DIR", "run/x"),
            ("HERMES_RECONCILER_RUNTIME_DIR", "/run/service"),
            ("HERMES_RECONCILER_RUNTIME_DIR", "/run/service/.hermes"),
            ("HERMES_RECONCILER_RUNTIME_DIR", "/opt/data/run"),
            ("HERMES_GATEWAY_TOPOLOGY", "both"),
            ("HERMES_RECONCILER_CRASHLOOP", "5"),
            ("HERMES_RECONCILER_CRASHLOOP", "1/60"),
            ("HERMES_RECONCILER_CRASHLOOP", "5/0"),
            ("HERMES_RECONCILER_CRASHLOOP", "on"),
            ("HERMES_RECONCILER_BACKOFF_MAX_SECS", "5"),
            ("HERMES_RECONCILER_BACKOFF_MAX_SECS", "x"),
            ("HERMES_RECONCILER_CRASHLOOP_RESET_SECS", "0"),
            ("HERMES_RECONCILER_WATCH", "fanotify"),
            ("HERMES_RECONCILER_POLL_MS", "0"),
            ("HERMES_RECONCILER_POLL_MS", "fast"),
        ] {
            let e = Config::resolve(&env(&[(var, value)])).unwrap_err();
            assert_eq!(e.var, var);
            assert!(e.to_string().contains(var), "{e}");
        }
    }

    #[test]
    fn topology_and_its_older_spelling() {
        let t = |pairs: &[(&str, &str)]| Config::resolve(&env(pairs)).map(|c| c.topology);
        assert_eq!(t(&[]), Ok(None));
        assert_eq!(t(&[("GATEWAY_MULTIPLEX_PROFILES", "")]), Ok(None));
        assert_eq!(t(&[("GATEWAY_MULTIPLEX_PROFILES", "off")]), Ok(Some(Topology::PerProfile)));
        assert_eq!(t(&[("HERMES_GATEWAY_TOPOLOGY", "Single")]), Ok(Some(Topology::Single)));
        for (topo, mux, agree) in [
            ("multiplex", "yes", true),
            ("multiplex", "0", false),
            ("per-profile", "false", true),
            ("per-profile", "1", false),
            ("single", "no", true),
            ("single", "on", false),
        ] {
            let r = t(&[("HERMES_GATEWAY_TOPOLOGY", topo), ("GATEWAY_MULTIPLEX_PROFILES", mux)]);
            match r {
                Ok(_) => assert!(agree, "{topo} {mux}"),
                Err(e) => {
                    assert!(!agree, "{topo} {mux}");
                    assert_eq!(e.var, "HERMES_GATEWAY_TOPOLOGY");
                    assert!(e.to_string().contains("GATEWAY_MULTIPLEX_PROFILES"), "{e}");
                }
            }
        }
        assert_eq!(Config::resolve(&env(&[("HERMES_RECONCILER_CRASHLOOP", "OFF")])).unwrap().crashloop, None);
        assert_eq!(
            Config::resolve(&env(&[("HERMES_RECONCILER_CRASHLOOP", "3/30")])).unwrap().crashloop,
            Some(CrashLoop { deaths: 3, window: Duration::from_secs(30) })
        );
    }

    #[test]
    fn flags_override_environment() {
        let mut raw = env(&[("HERMES_HOME", "/from/env"), ("HERMES_RUN_AS", "x")]);
        raw.flags.insert("HERMES_HOME", "/from/flag/".into());
        raw.flags.insert("HERMES_RUN_AS", "".into());
        let c = Config::resolve(&raw).unwrap();
        assert_eq!(c.home, PathBuf::from("/from/flag"));
        assert_eq!(c.run_as, None);
    }
}
