//! Scenario 3: the boot pass (`once`) against the runner publishing the same slots with no
//! logic. Every repetition gets a fresh home, scandir and s6-svscan.

use crate::Cfg;
use crate::lab::{Lab, Template, rescan};
use crate::report::{Report, ms, ratio, summarize};
use anyhow::{Result, bail};
use std::time::{Duration, Instant};

fn lab_with(n: usize) -> Result<Lab> {
    let lab = Lab::new("boot")?;
    for i in 0..n {
        lab.add_profile(&format!("p{i:05}"), i.is_multiple_of(2))?;
    }
    Ok(lab)
}

fn check(lab: &Lab, n: usize) -> Result<()> {
    let slots = lab.scandir_entries("gateway-");
    if slots != n + 1 {
        bail!("{slots} slots published, expected {}", n + 1);
    }
    Ok(())
}

fn daemon_once(n: usize) -> Result<Duration> {
    let lab = lab_with(n)?;
    let took = lab.once(&[("HERMES_RECONCILER_MAX_PROFILES", n.to_string())])?;
    check(&lab, n)?;
    Ok(took)
}

fn floor_once(n: usize, tpl: &Template) -> Result<Duration> {
    let lab = lab_with(n)?;
    let t0 = Instant::now();
    tpl.publish(&lab.scandir, "gateway-default", "default", &lab.home, false)?;
    for i in 0..n {
        let name = format!("p{i:05}");
        tpl.publish(&lab.scandir, &format!("gateway-{name}"), &name, &lab.home, i.is_multiple_of(2))?;
    }
    rescan(&lab.scandir, false)?;
    let took = t0.elapsed();
    check(&lab, n)?;
    Ok(took)
}

pub fn run(cfg: &Cfg, tpl: &Template, report: &mut Report) -> Result<()> {
    for &(n, reps) in &cfg.boot {
        let (mut d, mut f) = (Vec::new(), Vec::new());
        for r in 0..reps {
            for floor in [!r.is_multiple_of(2), r.is_multiple_of(2)] {
                if floor {
                    f.push(floor_once(n, tpl)?.as_nanos() as i64);
                } else {
                    d.push(daemon_once(n)?.as_nanos() as i64);
                }
            }
        }
        let (d, f) = (summarize(&d), summarize(&f));
        let (target, pass) =
            if n >= 1000 { ("≤ 3 × floor", Some(d.median <= 3 * f.median)) } else { ("-", None) };
        report.row(
            format!("3. boot pass, {n} profiles (median of {reps})"),
            ms(d.median),
            ms(f.median),
            ratio(d.median, f.median),
            target,
            pass,
        );
    }
    report.note(
        "boot pass: `once` from spawn to exit (all slots published, one rescan byte), half the profiles \
         running; floor: the runner building and renaming the same slots in-process, then one rescan byte",
    );
    Ok(())
}
