//! Scenario 6: 400 complete profiles renamed into `profiles/` within one second, while the
//! daemon runs. Measures the time until every slot is supervised and every running gateway has
//! started, then checks that each slot was created exactly once. Floor: the runner publishing
//! the same 400 slots at the same pace (one rename and one rescan byte each) in a fresh lab.

use crate::Cfg;
use crate::lab::{Lab, Template, lock_holder, mono_ns, rescan, sleep_until_ns};
use crate::report::{Report, ratio, summarize};
use anyhow::{Result, anyhow, bail};
use nix::sys::signal::Signal;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Default, Clone)]
struct Seen {
    /// (device, inode) of the slot directory when first seen.
    inode: Option<(u64, u64)>,
    /// s6-supervise holding the slot's lock when first seen, and when.
    supervisor: Option<i32>,
    supervised_at: Option<i64>,
}

struct Storm {
    /// From the first publication to the last slot converged, and from the last publication.
    from_start: i64,
    after_last: i64,
    seen: Vec<Seen>,
}

fn running(i: usize) -> bool {
    i.is_multiple_of(2)
}

/// Runs `publish(i)` for every profile, evenly over one second, and watches the slots converge:
/// supervised (lock held), and for running profiles the stand-in started.
fn storm(lab: &Lab, names: &[String], publish: impl Fn(usize) -> Result<()> + Sync) -> Result<Storm> {
    let n = names.len();
    let t_start = mono_ns();
    std::thread::scope(|scope| {
        let mover = scope.spawn(|| -> Result<i64> {
            let step = 1_000_000_000 / n.max(1) as i64;
            for i in 0..n {
                sleep_until_ns(t_start + i as i64 * step);
                publish(i)?;
            }
            Ok(mono_ns())
        });
        let mut seen = vec![Seen::default(); n];
        let deadline = t_start + 60_000_000_000;
        let converged_at = loop {
            let now = mono_ns();
            for (i, nm) in names.iter().enumerate() {
                if seen[i].supervised_at.is_some() {
                    continue;
                }
                let slot = lab.slot(nm);
                let Ok(meta) = fs::metadata(&slot) else { continue };
                seen[i].inode.get_or_insert((meta.dev(), meta.ino()));
                if let Some(pid) = lock_holder(&slot) {
                    seen[i].supervisor = Some(pid);
                    seen[i].supervised_at = Some(now);
                }
            }
            let starts = lab.recorder.snapshot();
            let first_start = |nm: &str| starts.iter().find(|s| s.name == nm).map(|s| s.ns);
            let mut last = Some(0i64);
            for (i, nm) in names.iter().enumerate() {
                let t = match (seen[i].supervised_at, running(i)) {
                    (Some(_), true) => first_start(nm),
                    (Some(sup), false) => Some(sup),
                    (None, _) => None,
                };
                last = last.zip(t).map(|(a, b)| a.max(b));
            }
            if let Some(t) = last {
                break t;
            }
            if now > deadline {
                let missing = seen.iter().filter(|s| s.supervised_at.is_none()).count();
                bail!("storm did not converge within 60 s ({missing} slots without a supervisor)");
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let t_last = mover.join().map_err(|_| anyhow!("publisher panicked"))??;
        Ok(Storm { from_start: converged_at - t_start, after_last: converged_at - t_last, seen })
    })
}

fn secs(ns: i64) -> String {
    format!("{:.3} s", ns as f64 / 1e9)
}

pub fn run(cfg: &Cfg, tpl: &Template, report: &mut Report) -> Result<()> {
    let n = cfg.storm;
    let names: Vec<String> = (0..n).map(|i| format!("s{i:04}")).collect();
    let (mut floors, mut daemons) = (Vec::new(), Vec::new());
    let mut problems = Vec::new();
    for rep in 0..cfg.storm_reps {
        for floor in [!rep.is_multiple_of(2), rep.is_multiple_of(2)] {
            if floor {
                let lab = Lab::new("storm-floor")?;
                floors.push(storm(&lab, &names, |i| {
                    let nm = &names[i];
                    tpl.publish(&lab.scandir, &format!("gateway-{nm}"), nm, &lab.home, running(i))?;
                    Ok(rescan(&lab.scandir, false)?)
                })?);
            } else {
                let (d, p) = daemon_storm(&names)?;
                daemons.push(d);
                problems.extend(p);
            }
        }
    }
    let med = |v: &[Storm], f: fn(&Storm) -> i64| summarize(&v.iter().map(f).collect::<Vec<_>>()).median;
    let (d, f) = (med(&daemons, |s| s.from_start), med(&floors, |s| s.from_start));
    let (dl, fl) = (med(&daemons, |s| s.after_last), med(&floors, |s| s.after_last));
    report.row(
        format!("6. storm: {n} profiles renamed in over 1 s → all converged (median of {})", cfg.storm_reps),
        format!("{} ({} after the last rename)", secs(d), secs(dl)),
        format!("{} ({} after the last)", secs(f), secs(fl)),
        ratio(d, f),
        "≤ 2 s",
        Some(d <= 2_000_000_000),
    );
    let ok = problems.is_empty();
    let total = n * cfg.storm_reps;
    report.row(
        "6. storm: every slot created exactly once",
        if ok {
            format!(
                "{total}/{total}: same inode, same supervisor, one start, one log line, one s6-supervise each"
            )
        } else {
            format!("{} problems, first: {}", problems.len(), problems[0])
        },
        "-",
        "-",
        "exactly once",
        Some(ok),
    );
    for p in problems.iter().take(20) {
        eprintln!("storm: {p}");
    }
    report.note(
        "storm: converged = every slot has a live s6-supervise (supervise/lock held) and every running \
         profile's stand-in has started; half the profiles running; floor: the runner publishing the \
         same slots at the same pace, one rescan byte each, in a fresh lab",
    );
    Ok(())
}

/// One storm against the daemon, then the exactly-once checks; returns the problems found.
fn daemon_storm(names: &[String]) -> Result<(Storm, Vec<String>)> {
    let mut lab = Lab::new("storm")?;
    lab.start_daemon(&[])?;
    let staged: Vec<PathBuf> =
        names.iter().enumerate().map(|(i, nm)| lab.stage_profile(nm, running(i))).collect::<Result<_>>()?;
    std::thread::sleep(Duration::from_millis(300));
    let d = storm(&lab, names, |i| Ok(fs::rename(&staged[i], lab.profiles.join(&names[i]))?))?;

    // Let everything settle, force one full re-list, and check nothing was done twice.
    std::thread::sleep(Duration::from_secs(3));
    lab.daemon().signal(Signal::SIGHUP);
    std::thread::sleep(Duration::from_secs(2));
    let starts = lab.recorder.snapshot();
    let log = lab.boot_log();
    let sups = lab.supervisors();
    let mut problems = Vec::new();
    for (i, nm) in names.iter().enumerate() {
        let slot = lab.slot(nm);
        let inode = fs::metadata(&slot).ok().map(|m| (m.dev(), m.ino()));
        if inode != d.seen[i].inode {
            problems.push(format!("{nm}: slot directory replaced"));
        }
        if lock_holder(&slot) != d.seen[i].supervisor {
            problems.push(format!("{nm}: supervisor changed"));
        }
        let started = starts.iter().filter(|s| &s.name == nm).count();
        if started != usize::from(running(i)) {
            problems.push(format!("{nm}: gateway started {started} times"));
        }
        let tag = format!(" profile={nm} ");
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(&tag)).collect();
        let want = if running(i) { "action=started" } else { "action=registered" };
        if lines.len() != 1 || !lines[0].contains(want) {
            problems.push(format!("{nm}: boot log lines {lines:?}"));
        }
        let slot_name = format!("gateway-{nm}");
        for arg in [slot_name.clone(), format!("{slot_name}/log")] {
            let c = sups.get(&arg).copied().unwrap_or(0);
            if c != 1 {
                problems.push(format!("{arg}: {c} s6-supervise processes"));
            }
        }
    }
    Ok((d, problems))
}
