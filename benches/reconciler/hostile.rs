//! Scenario 7, "hostile home" (issue 9, SPEC §9.3): what a hostile agent costs the daemon.
//!
//! The hostile home holds a legitimate profile (`aaa-legit`, first by name, so it is admitted
//! under the capacity cap) and 5,000 profiles whose `gateway_state.json`,
//! `state/gateway.lifecycle.json` and `.env` are hard links to 1 MiB files, while a thread
//! creates and removes `profiles/.deleted` as fast as it can (each turn used to force a full
//! re-list). The clean home holds the legitimate profile and 399 ordinary ones, and no loop, so
//! the cost of the defences themselves is visible side by side.
//!
//! For each home, on one lab (the boot pass first, then the daemon adopting its slots, as in a
//! container): `once` wall time; the legitimate profile's `desired_state` rewrite → s6's
//! want-up flag (median and p99 of the flips); the daemon's CPU share over the window; its
//! VmHWM; SIGTERM → exit. Targets are SPEC §9.3's; the clean home has none (informational).

use crate::Cfg;
use crate::lab::{IntentRewrite, Lab, StatusWatch, mono_ns};
use crate::report::{Report, ms, summarize};
use anyhow::{Context, Result};
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const LEGIT: &str = "aaa-legit";
const MIB: usize = 1 << 20;
/// Bound of one flip: far beyond the 1 s target, only so that a lost flip cannot hang the run.
const FLIP_BOUND: Duration = Duration::from_secs(30);

/// A 1 MiB JSON object: valid, so that only a parser can tell it says nothing useful.
fn json_blob() -> String {
    let pad = MIB - 64;
    format!("{{\"gateway_state\":\"stopped\",\"phase\":\"exited\",\"pad\":\"{}\"}}\n", "x".repeat(pad))
}

/// A 1 MiB `.env` with no `API_SERVER_PORT`: the whole file must be read to know that.
fn env_blob() -> String {
    let line = format!("HOSTILE_PADDING={}\n", "y".repeat(1000));
    line.repeat(MIB / line.len())
}

/// 5,000 hostile profiles, every file a hard link to one of two 1 MiB files.
fn plant_hostile(lab: &Lab, n: usize) -> Result<()> {
    let (json, env, soul) = (lab.dir.join("blob.json"), lab.dir.join("blob.env"), lab.dir.join("soul.md"));
    fs::write(&json, json_blob())?;
    fs::write(&env, env_blob())?;
    fs::write(&soul, "# hostile\n")?;
    for i in 0..n {
        let d = lab.profiles.join(format!("h{i:05}"));
        fs::create_dir_all(d.join("state"))?;
        fs::hard_link(&soul, d.join("SOUL.md"))?;
        fs::hard_link(&json, d.join("gateway_state.json"))?;
        fs::hard_link(&json, d.join("state/gateway.lifecycle.json"))?;
        fs::hard_link(&env, d.join(".env"))?;
    }
    Ok(())
}

/// `mkdir`/`rmdir profiles/.deleted` until told to stop; counts the turns.
struct TombstoneLoop {
    stop: Arc<AtomicBool>,
    turns: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TombstoneLoop {
    fn start(profiles: &Path) -> Self {
        let (stop, turns) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let dir = profiles.join(".deleted");
        let (s, t) = (stop.clone(), turns.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let _ = fs::create_dir(&dir);
                let _ = fs::remove_dir(&dir);
                t.fetch_add(1, Ordering::Relaxed);
            }
        });
        TombstoneLoop { stop, turns, thread: Some(thread) }
    }

    fn turns(&self) -> u64 {
        self.turns.load(Ordering::Relaxed)
    }
}

impl Drop for TombstoneLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The daemon's CPU time so far (utime + stime of the whole process), in seconds.
fn cpu_secs(pid: i32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest: Vec<&str> = stat.rsplit_once(')').context("stat")?.1.split_whitespace().collect();
    let ticks = rest[11].parse::<u64>()? + rest[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / hz)
}

fn vm_hwm_kib(pid: i32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM")?;
    Ok(line.split_whitespace().nth(1).context("VmHWM")?.parse()?)
}

/// What one home cost.
struct Figures {
    once: Duration,
    ready: Duration,
    flips: Vec<i64>,
    lost_flips: usize,
    cpu_pct: f64,
    window: Duration,
    hwm_kib: u64,
    sigterm: Option<Duration>,
    loop_turns: u64,
}

fn measure(cfg: &Cfg, hostile: bool) -> Result<Figures> {
    let mut lab = Lab::new(if hostile { "hostile" } else { "clean" })?;
    lab.add_profile(LEGIT, false)?;
    if hostile {
        plant_hostile(&lab, cfg.hostile_profiles)?;
    } else {
        for i in 1..400 {
            lab.add_profile(&format!("p{i:05}"), i % 2 == 0)?;
        }
    }
    let once = lab.once(&[])?;
    let ready = lab.start_daemon(&[])?;
    let pid = lab.daemon().pid();
    let tombstones = hostile.then(|| TombstoneLoop::start(&lab.profiles));
    let slot = lab.slot(LEGIT);
    let watch = StatusWatch::new(&slot)?;

    // The CPU window: the flips happen inside it, as a legitimate operator's would.
    let window = Duration::from_secs(cfg.hostile_secs);
    let t0 = Instant::now();
    let cpu0 = cpu_secs(pid)?;
    let mut flips = Vec::new();
    let mut lost_flips = 0;
    let mut up = false;
    let pause = window / (cfg.hostile_flips as u32 + 1);
    for _ in 0..cfg.hostile_flips {
        std::thread::sleep(pause);
        up = !up;
        let rewrite = IntentRewrite::prepare(&lab.profiles.join(LEGIT), up)?;
        let at = mono_ns();
        rewrite.commit()?;
        match watch.wait(FLIP_BOUND, |s| s.want_up == up) {
            Some(done) => flips.push(done - at),
            None => lost_flips += 1,
        }
    }
    if let Some(rest) = window.checked_sub(t0.elapsed()) {
        std::thread::sleep(rest);
    }
    let cpu_pct = 100.0 * (cpu_secs(pid)? - cpu0) / t0.elapsed().as_secs_f64();
    let window = t0.elapsed();
    let hwm_kib = vm_hwm_kib(pid)?;
    // SIGTERM while the attack goes on.
    let sigterm = lab.daemon.as_mut().expect("daemon started").terminate_within(Duration::from_secs(10));
    let loop_turns = tombstones.as_ref().map_or(0, TombstoneLoop::turns);
    drop(tombstones);
    Ok(Figures { once, ready, flips, lost_flips, cpu_pct, window, hwm_kib, sigterm, loop_turns })
}

pub fn run(cfg: &Cfg, report: &mut Report) -> Result<()> {
    for hostile in [true, false] {
        let f = measure(cfg, hostile)?;
        let what = if hostile {
            format!("{} hostile profiles + .deleted loop", cfg.hostile_profiles)
        } else {
            "clean home, 400 profiles".to_string()
        };
        let target = |t: &str| if hostile { t.to_string() } else { "- (reference)".to_string() };
        let pass = |ok: bool| hostile.then_some(ok);
        let s = summarize(if f.flips.is_empty() { &[0] } else { &f.flips });
        report.row(
            format!("7. {what}: desired_state → want-up, {} flips", cfg.hostile_flips),
            format!(
                "median {} / p99 {}{}",
                ms(s.median),
                ms(s.p99),
                if f.lost_flips > 0 { format!(" ({} lost)", f.lost_flips) } else { String::new() }
            ),
            "-",
            "-",
            target("p99 ≤ 1 s"),
            pass(f.lost_flips == 0 && s.p99 <= 1_000_000_000),
        );
        report.row(
            format!("7. {what}: once"),
            format!("{:.2} s", f.once.as_secs_f64()),
            "-",
            "-",
            target("≤ 10 s"),
            pass(f.once <= Duration::from_secs(10)),
        );
        report.row(
            format!("7. {what}: daemon CPU over {:.0} s", f.window.as_secs_f64()),
            format!("{:.1} % of one core", f.cpu_pct),
            "-",
            "-",
            target("≤ 25 %"),
            pass(f.cpu_pct <= 25.0),
        );
        report.row(
            format!("7. {what}: VmHWM"),
            format!("{:.1} MiB", f.hwm_kib as f64 / 1024.0),
            "-",
            "-",
            target("≤ 64 MiB"),
            pass(f.hwm_kib <= 64 * 1024),
        );
        report.row(
            format!("7. {what}: SIGTERM → exit"),
            f.sigterm.map_or("did not exit within 10 s".into(), |d| ms(d.as_nanos() as i64)),
            "-",
            "-",
            target("≤ 1 s"),
            pass(f.sigterm.is_some_and(|d| d <= Duration::from_secs(1))),
        );
        report.note(format!(
            "hostile home ({what}): the daemon was ready {:.2} s after it started (after `once`); \
             the .deleted loop made {} turns",
            f.ready.as_secs_f64(),
            f.loop_turns
        ));
    }
    Ok(())
}
