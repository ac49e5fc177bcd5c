//! Benchmarks of hermes-reconciler against a real s6-svscan (GitHub issue 5); see BENCHMARKS.md.
//!
//! `cargo bench --bench reconciler` runs every scenario and prints, for each, the measured value,
//! its floor (the same effect produced directly by the runner, in the same run), the ratio and
//! PASS/MISS against the target. `HERMES_BENCH_QUICK=1` runs a short version;
//! `HERMES_BENCH_ONLY=add,intent,boot,idle,memory,storm,hostile` a subset.
//!
//! This executable is also the stand-in gateway the slots exec (see `standin`).

mod boot;
mod hostile;
mod idle;
#[path = "../../tests/kit/mod.rs"]
mod kit;
mod lab;
mod latency;
mod report;
mod standin;
mod storm;

use anyhow::Result;
use std::time::Instant;

/// What to run, and how much of it.
pub struct Cfg {
    pub quick: bool,
    only: Option<Vec<String>>,
    /// Trials of each latency scenario (daemon and floor each).
    pub trials: usize,
    /// Profiles already present during the latency trials.
    pub base_profiles: usize,
    /// Boot pass sizes and repetitions (daemon and floor each).
    pub boot: Vec<(usize, usize)>,
    pub idle_secs: u64,
    /// Profile folders of the large memory scenario.
    pub big_profiles: usize,
    pub storm: usize,
    /// Storms of each kind (daemon and floor).
    pub storm_reps: usize,
    /// Hostile profiles of the "hostile home" scenario, its window and its intent flips.
    pub hostile_profiles: usize,
    pub hostile_secs: u64,
    pub hostile_flips: usize,
}

impl Cfg {
    fn from_env() -> Self {
        let quick = std::env::var("HERMES_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let only = std::env::var("HERMES_BENCH_ONLY")
            .ok()
            .filter(|v| !v.is_empty())
            .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
        Cfg {
            quick,
            only,
            trials: if quick { 30 } else { 200 },
            base_profiles: 100,
            boot: if quick {
                vec![(0, 3), (100, 2), (1000, 1), (10_000, 1)]
            } else {
                vec![(0, 11), (100, 7), (1000, 3), (10_000, 2)]
            },
            idle_secs: if quick { 5 } else { 30 },
            big_profiles: 10_000,
            storm: 400,
            storm_reps: if quick { 1 } else { 3 },
            hostile_profiles: std::env::var("HERMES_BENCH_HOSTILE_PROFILES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(5_000),
            hostile_secs: if quick { 10 } else { 60 },
            hostile_flips: 20,
        }
    }

    pub fn wants(&self, scenario: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.iter().any(|s| s == scenario))
    }
}

fn first_line(path: &str, prefix: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(prefix))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

fn machine() -> String {
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let cpu = first_line("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let s6 = std::process::Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "s6"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|| "unknown".into());
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let commit = git(&["rev-parse", "--short", "HEAD"]);
    let dirty = if git(&["status", "--porcelain", "--", "src"]).is_empty() { "" } else { " (src/ modified)" };
    format!(
        "- date: {}\n- machine: nproc {nproc}, CPU {cpu}, kernel {}, s6 {s6}\n- daemon: commit {commit}{dirty}\n",
        chrono::Local::now().format("%Y-%m-%d %H:%M:%S %z"),
        kernel.trim()
    )
}

fn bench(cfg: &Cfg) -> Result<report::Report> {
    let mut rep = report::Report::default();
    let tpl = lab::Template::capture()?;
    type Scenario<'a> = (&'a [&'a str], Box<dyn Fn(&mut report::Report) -> Result<()> + 'a>);
    let scenarios: Vec<Scenario> = vec![
        (&["add", "intent"], Box::new(|r| latency::run(cfg, &tpl, r))),
        (&["boot"], Box::new(|r| boot::run(cfg, &tpl, r))),
        (&["idle", "memory"], Box::new(|r| idle::run(cfg, r))),
        (&["storm"], Box::new(|r| storm::run(cfg, &tpl, r))),
        (&["hostile"], Box::new(|r| hostile::run(cfg, r))),
    ];
    for (names, f) in scenarios {
        if names.iter().any(|n| cfg.wants(n)) {
            let t = Instant::now();
            println!("{} …", names.join(" + "));
            f(&mut rep)?;
            println!("  ({:.1} s)", t.elapsed().as_secs_f64());
        }
    }
    Ok(rep)
}

fn main() {
    // The stand-in's first instruction: nothing may come before this.
    let started = lab::mono_ns();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if standin::is_standin(&args) {
        standin::run(started, &args);
    }
    if !args.iter().any(|a| a == "--bench") {
        // Built as a test (`cargo test --all-targets`): benchmarks run only under `cargo bench`.
        println!("hermes-reconciler benchmarks: run `cargo bench --bench reconciler`");
        return;
    }
    let cfg = Cfg::from_env();
    let t = Instant::now();
    let header = machine();
    print!("hermes-reconciler benchmarks{}\n{header}", if cfg.quick { " (quick mode)" } else { "" });
    let result = bench(&cfg);
    let rep = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("benchmark failed: {e:#}");
            std::process::exit(1);
        }
    };
    let md = format!(
        "{header}- mode: {}; total {:.0} s\n\n{}",
        if cfg.quick { "quick (HERMES_BENCH_QUICK=1)" } else { "full" },
        t.elapsed().as_secs_f64(),
        rep.markdown()
    );
    println!("\n{md}");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("reconciler-bench.md");
    match std::fs::write(&out, &md) {
        Ok(()) => println!("table written to {}", out.display()),
        Err(e) => eprintln!("{}: {e}", out.display()),
    }
    if rep.rows.iter().any(|r| r.pass == Some(false)) {
        println!("some targets were missed (MISS above)");
    }
}
