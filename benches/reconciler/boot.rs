//! Scenario 3: the boot pass (`once`, issue 14) against its floor: `floor.c`, a logic-free C
//! program of the bench's own that makes exactly the objects `once` makes (the same slot files,
//! captured from a real `once`, with the same modes; the same dirs, FIFOs and setgid `event/`;
//! the staging rename; the pid-file sweep; the rescan byte; the port record; status.json; the
//! boot log). Both run interleaved, each on a fresh, identical tree (home, scandir, s6-svscan
//! with its limit raised so that every profile gets a slot).
//!
//! Measured per N: wall time spawn to exit and CPU time (user + system; medians), peak RSS
//! (`ru_maxrss` from `wait4`); and once for each program the system calls per slot from
//! `strace -f -c` (the difference between N = 1,000 and N = 0, divided by 1,000: what one more
//! slot costs).

use crate::Cfg;
use crate::lab::{Lab, Template};
use crate::report::{Report, ms, ratio, summarize};
use anyhow::{Context, Result, bail};
use nix::libc;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FLOOR_C: &str = include_str!("floor.c");

fn lab_with(n: usize) -> Result<Lab> {
    // s6-svscan 2.11 counts a service and its logger once: room for every slot and the kick.
    let lab = Lab::with_limit("boot", &(n + 16).max(4000).to_string())?;
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

/// The runtime directory every pass of the scenario shares: it holds this boot's container-mode
/// judgment, recorded by a first `once` ([`record_mode`]). Judging scans `/proc`, which in the
/// lab is the host's (thousands of processes, where a container has a dozen): the measured
/// passes are later starts of the same boot, as the daemon's `run` after `once` is.
fn runtime_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("hermes-boot-run")
}

fn record_mode() -> Result<()> {
    let _ = std::fs::remove_dir_all(runtime_dir());
    let lab = lab_with(1)?;
    lab.once(&once_env(1))?;
    if !runtime_dir().join("container-mode").exists() {
        bail!("`once` recorded no container mode in {}", runtime_dir().display());
    }
    Ok(())
}

fn once_env(n: usize) -> Vec<(&'static str, String)> {
    vec![
        ("HERMES_RECONCILER_MAX_PROFILES", n.max(1).to_string()),
        ("HERMES_RECONCILER_RUNTIME_DIR", runtime_dir().display().to_string()),
    ]
}

fn floor_command(floor: &Path, lab: &Lab) -> Command {
    let mut cmd = Command::new(floor);
    cmd.arg(&lab.home)
        .arg(&lab.scandir)
        .arg(runtime_dir())
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// What one run cost.
struct Cost {
    wall: Duration,
    /// User + system CPU time, in nanoseconds: less sensitive than wall time to a busy machine.
    cpu: i64,
    /// Peak RSS, KiB.
    rss: i64,
}

/// Runs `cmd` to its end; returns what it cost.
fn measured(mut cmd: Command) -> Result<Cost> {
    let t0 = Instant::now();
    let child = cmd.spawn().context("spawn")?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own unwaited child; status and ru are valid and writable.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let took = t0.elapsed();
    if r != pid {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{cmd:?} failed (wait status {status})");
    }
    let ns = |t: libc::timeval| t.tv_sec * 1_000_000_000 + t.tv_usec * 1000;
    Ok(Cost { wall: took, cpu: ns(ru.ru_utime) + ns(ru.ru_stime), rss: ru.ru_maxrss })
}

/// C string literal of `s`.
fn c_str(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(b as char);
            }
            b'\n' => out.push_str("\\n\"\n\t\""),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\{b:03o}");
            }
        }
    }
    out.push('"');
    out
}

/// Compiles the floor with the slot templates into the target's tmp directory.
fn compile_floor(tpl: &Template) -> Result<PathBuf> {
    let mut table = String::new();
    for (var, root) in [("TPL_NAMED", false), ("TPL_ROOT", true)] {
        let _ = writeln!(table, "static const struct tpl {var}[] = {{");
        for (rel, mode, content) in tpl.files(root) {
            let _ = writeln!(table, "\t{{ {}, 0{mode:o}, {} }},", c_str(rel), c_str(content));
        }
        table.push_str("};\n");
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let src = dir.join("hermes-boot-floor.c");
    let bin = dir.join("hermes-boot-floor");
    std::fs::write(&src, FLOOR_C.replace("/* @TEMPLATES@ */", &table))?;
    let out = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .context("running `cc` to build the boot floor (a C compiler is required)")?;
    if !out.status.success() {
        bail!("compiling the boot floor failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(bin)
}

/// Path of `strace`, installing it with apt-get when missing; an error says what to do.
fn strace() -> Result<PathBuf> {
    let find = || {
        ["/usr/bin/strace", "/bin/strace", "/usr/local/bin/strace"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    println!("  strace missing: installing it with apt-get");
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-qq", "strace"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    match find() {
        Some(p) if ok => Ok(p),
        _ => bail!("the boot scenario needs strace (apt-get install strace) to count system calls"),
    }
}

/// Total calls of an `strace -c` summary.
fn strace_total(path: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(path)?;
    let line = text
        .lines()
        .rfind(|l| l.trim_end().ends_with("total"))
        .with_context(|| format!("no total in {}", path.display()))?;
    let calls = line.split_whitespace().nth(3).context("strace total line")?;
    Ok(calls.parse()?)
}

/// System calls of one pass over `n` profiles, of `once` (`floor` None) or of the floor.
fn syscalls(n: usize, floor: Option<&Path>, strace: &Path) -> Result<u64> {
    let lab = lab_with(n)?;
    let out = lab.dir.join("strace.txt");
    let inner = match floor {
        Some(f) => floor_command(f, &lab),
        None => lab.once_command(&once_env(n))?,
    };
    let mut cmd = Command::new(strace);
    cmd.args(["-f", "-c", "-o"]).arg(&out).arg(inner.get_program()).args(inner.get_args());
    cmd.env_clear().stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    for (k, v) in inner.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    let status = cmd.status()?;
    if !status.success() {
        bail!("strace run failed: {status}");
    }
    check(&lab, n)?;
    strace_total(&out)
}

fn mib(kib: i64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub fn run(cfg: &Cfg, tpl: &Template, report: &mut Report) -> Result<()> {
    let floor = compile_floor(tpl)?;
    let strace = strace()?;
    record_mode()?;
    for &(n, reps) in &cfg.boot {
        let (mut d, mut f, mut d_cpu, mut f_cpu, mut d_rss, mut f_rss) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), 0, 0);
        for r in 0..reps {
            for floor_turn in [!r.is_multiple_of(2), r.is_multiple_of(2)] {
                let lab = lab_with(n)?;
                if floor_turn {
                    let c = measured(floor_command(&floor, &lab))?;
                    f.push(c.wall.as_nanos() as i64);
                    f_cpu.push(c.cpu);
                    f_rss = f_rss.max(c.rss);
                } else {
                    let c = measured(lab.once_command(&once_env(n))?)?;
                    d.push(c.wall.as_nanos() as i64);
                    d_cpu.push(c.cpu);
                    d_rss = d_rss.max(c.rss);
                }
                check(&lab, n)?;
            }
        }
        let (d, f, d_cpu, f_cpu) = (summarize(&d), summarize(&f), summarize(&d_cpu), summarize(&f_cpu));
        let (target, pass) = if n >= 100 {
            ("≤ 1.5 × floor", d.median * 2 <= f.median * 3)
        } else {
            ("≤ 2 × floor", d.median <= 2 * f.median)
        };
        report.row(
            format!("3. boot pass, {n} profiles (median of {reps})"),
            ms(d.median),
            ms(f.median),
            ratio(d.median, f.median),
            target,
            Some(pass),
        );
        report.row(
            format!("3. boot pass CPU (user + system), {n} profiles (median of {reps})"),
            ms(d_cpu.median),
            ms(f_cpu.median),
            ratio(d_cpu.median, f_cpu.median),
            "-",
            None,
        );
        let (target, pass) = if n >= 10_000 { ("≤ 20 MiB", Some(d_rss <= 20 * 1024)) } else { ("-", None) };
        report.row(
            format!("3. boot pass peak RSS, {n} profiles"),
            mib(d_rss),
            mib(f_rss),
            ratio(d_rss, f_rss),
            target,
            pass,
        );
    }
    let per_slot = |fl: Option<&Path>| -> Result<f64> {
        let (small, big) = (syscalls(0, fl, &strace)?, syscalls(1000, fl, &strace)?);
        Ok((big.saturating_sub(small)) as f64 / 1000.0)
    };
    let (d, f) = (per_slot(None)?, per_slot(Some(&floor))?);
    report.row(
        "3. boot pass system calls per slot (strace -f -c, N = 1,000 minus N = 0)",
        format!("{d:.1}"),
        format!("{f:.1}"),
        format!("{:.2}×", d / f),
        "≤ 35",
        Some(d <= 35.0),
    );
    report.note(
        "boot pass: `once` from spawn to exit (all slots published, one rescan byte), half the \
         profiles running, interleaved with the floor on identical fresh trees; floor: `floor.c`, a \
         logic-free C program making the same objects (compiled by the bench with `cc -O2`); peak RSS \
         is `ru_maxrss` of the process (max over the repetitions); the container mode is judged \
         once before (`/proc` in the lab is the host's)",
    );
    Ok(())
}
