//! Scenarios 1 (add latency) and 2 (intent latency), in one lab with a base population, the
//! daemon and the runner's floor trials interleaved so that noise falls on both alike.

use crate::Cfg;
use crate::lab::{
    FIFO_ENV, IntentRewrite, Lab, StatusWatch, Template, mono_ns, poll_until, rescan, unpublish,
};
use crate::report::{Report, ms, ratio, summarize};
use anyhow::{Context, Result, bail};
use hermes_reconciler::s6::{SupervisorCommand, send_command};
use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

pub fn run(cfg: &Cfg, tpl: &Template, report: &mut Report) -> Result<()> {
    let mut lab = Lab::new("latency")?;
    let mut running = Vec::new();
    for i in 0..cfg.base_profiles {
        let name = format!("base{i:04}");
        lab.add_profile(&name, i.is_multiple_of(2))?;
        if i.is_multiple_of(2) {
            running.push(name);
        }
    }
    // Grace 0: a trial's profile is removed right after it, so every trial meets the same
    // scandir. The grace only delays removals; it plays no part in what is measured.
    lab.start_daemon(&[("HERMES_RECONCILER_REMOVE_GRACE_MS", "0".into())])?;
    lab.recorder.all_started(&running, Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_millis(500));
    standin_cost(&lab, report)?;
    if cfg.wants("add") {
        add(cfg, tpl, &lab, report)?;
    }
    if cfg.wants("intent") {
        intent(cfg, tpl, &lab, report)?;
    }
    Ok(())
}

/// What the stand-in itself costs: spawn → its first instruction, directly and through
/// `/bin/sh -c 'exec …'` as a slot's `run` script does. Part of every floor and every trial.
fn standin_cost(lab: &Lab, report: &mut Report) -> Result<()> {
    let exe = std::env::current_exe()?;
    for shell in [false, true] {
        let mut v = Vec::new();
        for i in 0..50 {
            let name = format!("probe-{shell}-{i}");
            let mut cmd = if shell {
                let mut c = Command::new("/bin/sh");
                c.arg("-c").arg(format!("exec '{}' -p {name} gateway run --replace", exe.display()));
                c
            } else {
                let mut c = Command::new(&exe);
                c.args(["-p", &name, "gateway", "run", "--replace"]);
                c
            };
            cmd.env(FIFO_ENV, lab.recorder.path()).stdin(Stdio::null()).stdout(Stdio::null());
            let t0 = mono_ns();
            let mut child = cmd.spawn()?;
            let t1 = lab.recorder.first_of(&name, WAIT);
            let _ = child.kill();
            let _ = child.wait();
            v.push(t1.context("stand-in probe never reported")? - t0);
        }
        let s = summarize(&v);
        let how = if shell { "through /bin/sh exec" } else { "direct exec" };
        report.row(
            format!("0. stand-in: spawn → first instruction, {how}"),
            format!("{} (p99 {})", ms(s.median), ms(s.p99)),
            "-",
            "-",
            "-",
            None,
        );
    }
    Ok(())
}

/// A short pause with jitter between trials, so trials do not phase-lock with anything.
fn gap(i: usize) {
    std::thread::sleep(Duration::from_micros(5_000 + (i as u64 * 7919) % 10_000));
}

fn daemon_add(lab: &Lab, i: usize) -> Result<i64> {
    let name = format!("add{i:04}");
    let staged = lab.stage_profile(&name, true)?;
    let target = lab.profiles.join(&name);
    let t0 = mono_ns();
    fs::rename(&staged, &target)?;
    let t1 = lab.recorder.first_of(&name, WAIT).with_context(|| format!("{name}: gateway never started"))?;
    // Clean up: move the profile out; the daemon removes the slot (grace 0).
    let gone = lab.stage.join(format!("gone-{name}"));
    fs::rename(&target, &gone)?;
    fs::remove_dir_all(&gone)?;
    let hidden = format!(".gateway-{name}.rm-");
    let slot = lab.slot(&name);
    poll_until(WAIT, Duration::from_millis(1), || !slot.exists() && lab.scandir_entries(&hidden) == 0)
        .with_context(|| format!("{name}: slot not removed"))?;
    Ok(t1 - t0)
}

fn floor_add(lab: &Lab, tpl: &Template, i: usize) -> Result<i64> {
    let entry = format!("floor-a{i:04}");
    let t0 = mono_ns();
    tpl.publish(&lab.scandir, &entry, &entry, &lab.home, true)?;
    rescan(&lab.scandir, false)?;
    let t1 = lab.recorder.first_of(&entry, WAIT).with_context(|| format!("{entry}: never started"))?;
    unpublish(&lab.scandir, &entry)?;
    Ok(t1 - t0)
}

fn add(cfg: &Cfg, tpl: &Template, lab: &Lab, report: &mut Report) -> Result<()> {
    let (mut d, mut f) = (Vec::new(), Vec::new());
    for i in 0..cfg.trials {
        for floor in [!i.is_multiple_of(2), i.is_multiple_of(2)] {
            gap(i);
            if floor {
                f.push(floor_add(lab, tpl, i)?);
            } else {
                d.push(daemon_add(lab, i)?);
            }
        }
    }
    let (d, f) = (summarize(&d), summarize(&f));
    let scen = format!("1. add latency, median ({} trials)", d.n);
    // Issue 15's target (SPEC §6's was floor + 2 ms).
    let pass = d.median <= f.median + 1_000_000;
    report.row(scen, ms(d.median), ms(f.median), ratio(d.median, f.median), "≤ floor + 1 ms", Some(pass));
    let pass = d.p99 <= f.p99 + 10_000_000;
    report.row(
        "1. add latency, p99",
        ms(d.p99),
        ms(f.p99),
        ratio(d.p99, f.p99),
        "≤ floor + 10 ms",
        Some(pass),
    );
    report.note(format!(
        "add latency: rename of a complete profile into profiles/ → stand-in's first instruction; \
         {} other profiles present (half running); max {} (floor max {})",
        cfg.base_profiles,
        ms(d.max),
        ms(f.max)
    ));
    Ok(())
}

/// Flips a slot's want-up through `act` and returns (flip latency, direction).
fn flip(dir: &std::path::Path, up: bool, act: impl FnOnce() -> Result<()>) -> Result<i64> {
    let watch = StatusWatch::new(dir)?;
    let t0 = mono_ns();
    act()?;
    let t1 = watch.wait(WAIT, |s| s.want_up == up).context("want-up flag never flipped")?;
    // Settle: the service is really up (or down and finished) before the next trial.
    watch
        .wait(WAIT, |s| if up { s.pid.is_some() } else { s.pid.is_none() && !s.finishing })
        .context("service never settled")?;
    Ok(t1 - t0)
}

fn intent(cfg: &Cfg, tpl: &Template, lab: &Lab, report: &mut Report) -> Result<()> {
    let name = "intentd";
    let staged = lab.stage_profile(name, true)?;
    let profile = lab.profiles.join(name);
    fs::rename(&staged, &profile)?;
    lab.recorder.first_of(name, WAIT).context("intent profile never started")?;
    let floor = "floor-intent";
    tpl.publish(&lab.scandir, floor, floor, &lab.home, true)?;
    rescan(&lab.scandir, false)?;
    lab.recorder.first_of(floor, WAIT).context("floor intent slot never started")?;
    let (slot, fslot) = (lab.slot(name), lab.scandir.join(floor));
    let (mut d, mut f) = (Vec::new(), Vec::new());
    let (mut d_dir, mut f_dir) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for i in 0..cfg.trials {
        let up = !i.is_multiple_of(2);
        for floor_first in [!(i / 2).is_multiple_of(2), (i / 2).is_multiple_of(2)] {
            gap(i);
            if floor_first {
                let cmd = if up { SupervisorCommand::UpPersist } else { SupervisorCommand::DownPersist };
                let t = flip(&fslot, up, || Ok(send_command(&fslot, cmd)?))?;
                f.push(t);
                f_dir[up as usize].push(t);
            } else {
                let rewrite = IntentRewrite::prepare(&profile, up)?;
                let t = flip(&slot, up, || rewrite.commit())?;
                d.push(t);
                d_dir[up as usize].push(t);
            }
        }
    }
    if d.is_empty() {
        bail!("no intent trials");
    }
    let (ds, fs_) = (summarize(&d), summarize(&f));
    // Issue 15's targets.
    let pass = ds.median <= fs_.median + 500_000;
    report.row(
        format!("2. intent latency, median ({} flips)", ds.n),
        ms(ds.median),
        ms(fs_.median),
        ratio(ds.median, fs_.median),
        "≤ floor + 0.5 ms",
        Some(pass),
    );
    let pass = ds.p99 <= fs_.p99 + 2_000_000;
    report.row(
        "2. intent latency, p99",
        ms(ds.p99),
        ms(fs_.p99),
        ratio(ds.p99, fs_.p99),
        "≤ floor + 2 ms",
        Some(pass),
    );
    for (k, label) in [(0, "running→stopped"), (1, "stopped→running")] {
        let (a, b) = (summarize(&d_dir[k]), summarize(&f_dir[k]));
        report.row(
            format!("2. intent {label}, median"),
            ms(a.median),
            ms(b.median),
            ratio(a.median, b.median),
            "-",
            None,
        );
    }
    report.note(
        "intent latency: atomic rewrite of desired_state → s6's want-up flag flips in supervise/status \
         (watched with inotify); floor: the U/D byte written into supervise/control by the runner",
    );
    Ok(())
}
