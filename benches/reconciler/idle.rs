//! Scenarios 4 (idle CPU and wakeups) and 5 (peak memory).

use crate::Cfg;
use crate::lab::Lab;
use crate::report::Report;
use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Per-process counters, summed over the daemon's threads.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    /// utime + stime, clock ticks (/proc/<pid>/stat, whole thread group).
    ticks: u64,
    /// Time on CPU in ns (/proc/<pid>/task/*/schedstat).
    run_ns: u64,
    /// voluntary + nonvoluntary context switches (/proc/<pid>/task/*/status).
    switches: u64,
}

fn sample(pid: i32) -> Result<Sample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at ")".
    let rest: Vec<&str> = stat.rsplit_once(')').context("stat")?.1.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime 15.
    let ticks = rest[11].parse::<u64>()? + rest[12].parse::<u64>()?;
    let mut s = Sample { ticks, ..Default::default() };
    for task in fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        if let Ok(sched) = fs::read_to_string(task.path().join("schedstat")) {
            s.run_ns += sched.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
        if let Ok(status) = fs::read_to_string(task.path().join("status")) {
            for line in status.lines() {
                if let Some(v) = line
                    .strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
                {
                    s.switches += v.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    Ok(s)
}

/// VmHWM of a process, in KiB.
fn vm_hwm(pid: i32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM")?;
    Ok(line.split_whitespace().nth(1).context("VmHWM")?.parse()?)
}

fn populated(tag: &str, n: usize) -> Result<(Lab, Vec<String>)> {
    let lab = Lab::new(tag)?;
    let mut running = Vec::new();
    for i in 0..n {
        let name = format!("p{i:05}");
        lab.add_profile(&name, i.is_multiple_of(2))?;
        if i.is_multiple_of(2) && i < 400 {
            running.push(name);
        }
    }
    Ok((lab, running))
}

/// Waits until the daemon has been off-CPU for `quiet` (its work after a signal is done).
fn wait_quiet(pid: i32, quiet: Duration) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = sample(pid)?.run_ns;
    let mut since = Instant::now();
    while since.elapsed() < quiet {
        if Instant::now() > deadline {
            bail!("the daemon never went quiet");
        }
        std::thread::sleep(Duration::from_millis(50));
        let now = sample(pid)?.run_ns;
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    Ok(())
}

const MIB: f64 = 1024.0;

pub fn run(cfg: &Cfg, report: &mut Report) -> Result<()> {
    if cfg.wants("idle") || cfg.wants("memory") {
        let (mut lab, running) = populated("idle", 400)?;
        lab.start_daemon(&[])?;
        lab.recorder.all_started(&running, Duration::from_secs(60))?;
        let pid = lab.daemon().pid();
        // The poll backend wakes every period (2 s by default) by design: quiet means quiet
        // between two polls there.
        let polling = std::env::var("HERMES_BENCH_WATCH").is_ok_and(|v| v == "poll");
        wait_quiet(pid, Duration::from_millis(if polling { 500 } else { 2000 }))?;
        if cfg.wants("idle") {
            steady_idle(cfg, &lab, pid, "400 profiles", 0.05, report)?;
            let floor = relist_cpu(&lab, pid, "400 profiles", Some(5.0), report)?;
            idle_floor(floor, "400 profiles", report);
            report.note(format!(
                "this machine charges {:.2} µs to touch a page left alone for 2 s (4 MiB, one byte a page)",
                idle_page_cost()
            ));
        }
        if cfg.wants("memory") {
            lab.daemon().signal(Signal::SIGHUP);
            wait_quiet(pid, Duration::from_secs(1))?;
            let kib = vm_hwm(pid)?;
            report.row(
                "5. peak RSS (VmHWM), 400 profiles",
                format!("{:.1} MiB", kib as f64 / MIB),
                "-",
                "-",
                "≤ 16 MiB",
                Some(kib <= 16 * 1024),
            );
        }
    }
    if cfg.wants("memory") || cfg.wants("idle") {
        let n = cfg.big_profiles;
        let (mut lab, running) = populated("memory", n)?;
        let ready = lab.start_daemon(&[])?;
        lab.recorder.all_started(&running, Duration::from_secs(120))?;
        let pid = lab.daemon().pid();
        lab.daemon().signal(Signal::SIGHUP);
        wait_quiet(pid, Duration::from_secs(1))?;
        let kib = vm_hwm(pid)?;
        let slots = lab.scandir_entries("gateway-");
        if slots != 401 {
            bail!("{n} profiles with the default cap: {slots} slots, expected 401");
        }
        if cfg.wants("idle") {
            // The folders over the cap are listed by every re-list, never read (SPEC 9.3).
            let what = format!("{n} profile folders (cap 400)");
            steady_idle(cfg, &lab, pid, &what, 0.1, report)?;
            // Measured, without a target: issue 15 sets one at 400 profiles only (the floor
            // alone, 10,000 lookups, is several times 5 ms).
            let floor = relist_cpu(&lab, pid, &what, None, report)?;
            idle_floor(floor, &what, report);
        }
        if cfg.wants("memory") {
            report.row(
                format!("5. peak RSS (VmHWM), {n} profile folders (cap 400)"),
                format!("{:.1} MiB", kib as f64 / MIB),
                "-",
                "-",
                if n >= 10_000 { "≤ 64 MiB" } else { "≤ 64 MiB (at 10,000)" },
                Some(kib <= 64 * 1024),
            );
            report.note(format!(
                "memory: VmHWM after the boot pass and one SIGHUP re-list; with {n} folders the first \
                 pass (to readiness) took {:.2} s",
                ready.as_secs_f64()
            ));
        }
    }
    Ok(())
}

/// CPU time of one full re-list (SIGHUP) from a quiet daemon to a quiet daemon: the median and
/// the worst of five, each beside a floor re-list ([`RelistFloor`]) made in the same state (at
/// least a second after anything touched the lab), the two alternating which goes first.
/// `target_ms`: the most the worst may cost, if this size has a target.
fn relist_cpu(lab: &Lab, pid: i32, what: &str, target_ms: Option<f64>, report: &mut Report) -> Result<f64> {
    let floor = RelistFloor::new(lab)?;
    let (mut ms, mut fl) = (Vec::new(), Vec::new());
    for i in 0..5 {
        for floor_first in [i % 2 == 0, i % 2 == 1] {
            wait_quiet(pid, Duration::from_secs(1))?;
            if floor_first {
                fl.push(floor.run());
            } else {
                let before = sample(pid)?.run_ns;
                lab.daemon().signal(Signal::SIGHUP);
                wait_quiet(pid, Duration::from_secs(1))?;
                ms.push((sample(pid)?.run_ns - before) as f64 / 1e6);
            }
        }
    }
    ms.sort_by(f64::total_cmp);
    fl.sort_by(f64::total_cmp);
    let (median, worst) = (ms[ms.len() / 2], ms[ms.len() - 1]);
    let (f_median, f_worst) = (fl[fl.len() / 2], fl[fl.len() - 1]);
    report.row(
        format!("4. CPU of one full re-list (SIGHUP), {what}, median / worst of 5"),
        format!("{median:.2} / {worst:.2} ms"),
        format!("{f_median:.2} / {f_worst:.2} ms"),
        format!("{:.2}×", median / f_median),
        target_ms.map_or_else(|| "-".to_owned(), |t| format!("≤ {t} ms")),
        target_ms.map(|t| worst <= t),
    );
    report.note(format!(
        "re-list floor ({what}): the runner lists profiles/ and the scandir, stats each of the {} \
         profile folders and the intent files of the {} profiles with a slot, and asks each of \
         the {} slots' locks (held open) with one fcntl, timed on the runner's thread: the \
         system calls of a full re-list that asks every lock (the daemon follows each \
         supervisor by a pidfd instead, one epoll_wait for all, so it may cost less)",
        floor.folders.len(),
        floor.intents.len(),
        floor.locks.len()
    ));
    Ok(f_median)
}

/// The system calls of a full re-list, made by the runner (see [`relist_cpu`]'s note).
struct RelistFloor {
    profiles: PathBuf,
    scandir: PathBuf,
    base: fs::File,
    folders: Vec<CString>,
    intents: Vec<CString>,
    locks: Vec<fs::File>,
}

impl RelistFloor {
    fn new(lab: &Lab) -> Result<Self> {
        let mut folders = Vec::new();
        for e in fs::read_dir(&lab.profiles)? {
            folders.push(CString::new(e?.file_name().into_vec())?);
        }
        let (mut intents, mut locks) = (Vec::new(), Vec::new());
        for e in fs::read_dir(&lab.scandir)? {
            let name = e?.file_name().into_string().map_err(|n| anyhow::anyhow!("{n:?}"))?;
            let Some(profile) = name.strip_prefix("gateway-") else { continue };
            if profile != "default" {
                intents.push(CString::new(format!("{profile}/gateway_state.json"))?);
            }
            locks.push(fs::File::open(lab.scandir.join(&name).join("supervise/lock"))?);
        }
        Ok(RelistFloor {
            profiles: lab.profiles.clone(),
            scandir: lab.scandir.clone(),
            base: fs::File::open(&lab.profiles)?,
            folders,
            intents,
            locks,
        })
    }

    /// One floor re-list: its CPU time on this thread, in ms.
    fn run(&self) -> f64 {
        use nix::libc;
        use std::os::fd::AsRawFd;
        let t0 = thread_cpu_ns();
        let listed = fs::read_dir(&self.profiles).map_or(0, |d| d.count())
            + fs::read_dir(&self.scandir).map_or(0, |d| d.count());
        // SAFETY: plain system calls on descriptors and NUL-terminated names this struct owns,
        // into stack buffers of the right type.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            for f in &self.folders {
                libc::fstatat(self.base.as_raw_fd(), f.as_ptr(), &mut st, 0);
            }
            for i in &self.intents {
                libc::fstatat(self.base.as_raw_fd(), i.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW);
            }
            for l in &self.locks {
                let mut fl: libc::flock = std::mem::zeroed();
                fl.l_type = libc::F_WRLCK as i16;
                libc::fcntl(l.as_raw_fd(), libc::F_GETLK, &mut fl);
            }
        }
        std::hint::black_box(listed);
        (thread_cpu_ns() - t0) as f64 / 1e6
    }
}

fn thread_cpu_ns() -> u64 {
    let mut ts = nix::libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { nix::libc::clock_gettime(nix::libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// How much this machine charges to touch memory left alone for a while: 4 MiB written, then
/// read again one byte per page after 2 s asleep, in µs per page (a few hundredths on a quiet
/// machine; hypervisors that reclaim idle guest memory charge far more). The re-lists above,
/// made after a second of quiet, pay it for every page they touch, the kernel's included.
pub fn idle_page_cost() -> f64 {
    const LEN: usize = 4 << 20;
    let mut buf = vec![1u8; LEN];
    std::hint::black_box(&mut buf);
    std::thread::sleep(Duration::from_secs(2));
    let t0 = Instant::now();
    let mut sum = 0u64;
    for i in (0..LEN).step_by(4096) {
        // SAFETY: `i` is within `buf`; a volatile read so the loop is not folded away.
        sum += u64::from(unsafe { std::ptr::read_volatile(buf.as_ptr().add(i)) });
    }
    std::hint::black_box(sum);
    t0.elapsed().as_secs_f64() * 1e6 / (LEN / 4096) as f64
}

/// What the floor re-list's median would cost per resync period (30 s), as idle CPU: the least
/// a daemon bound to re-list every period can use.
fn idle_floor(floor_ms: f64, what: &str, report: &mut Report) {
    report.row(
        format!("4. idle CPU floor, {what}: one floor re-list per 30 s"),
        format!("{:.4} %", 100.0 * floor_ms / 30_000.0),
        "-",
        "-",
        "-",
        None,
    );
}

/// Idle CPU twice: first the window after the boot pass, then the steady state.
///
/// The first window holds one of the first re-lists after the boot pass: at 400 profiles the
/// very first, which plans the whole world again (the boot pass's own slots and starts make it
/// differ from what the boot pass observed) and settles; in the bigger lab (a SIGHUP came
/// before, for the memory figure) the next, which observes the settled world whole and keeps
/// what it read. A row without a target. Then a SIGHUP re-list, and the second window, which
/// holds the next periodic re-list, is the daemon's steady state: the target's.
fn steady_idle(
    cfg: &Cfg,
    lab: &Lab,
    pid: i32,
    what: &str,
    target_pct: f64,
    report: &mut Report,
) -> Result<()> {
    idle(cfg, pid, &format!("{what}, the first window after the boot pass"), None, report)?;
    lab.daemon().signal(Signal::SIGHUP);
    wait_quiet(pid, Duration::from_secs(1))?;
    idle(cfg, pid, &format!("{what}, steady"), Some(target_pct), report)
}

fn idle(cfg: &Cfg, pid: i32, what: &str, target_pct: Option<f64>, report: &mut Report) -> Result<()> {
    let window = Duration::from_secs(cfg.idle_secs);
    let start = Instant::now();
    let s0 = sample(pid)?;
    let mut last = s0.switches;
    let mut wakes: Vec<f64> = Vec::new();
    while start.elapsed() < window {
        std::thread::sleep(Duration::from_millis(20));
        let s = sample(pid)?.switches;
        if s != last {
            wakes.push(start.elapsed().as_secs_f64());
            last = s;
        }
    }
    let s1 = sample(pid)?;
    let secs = start.elapsed().as_secs_f64();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) } as f64;
    let cpu_ticks = (s1.ticks - s0.ticks) as f64 / hz;
    let cpu = (s1.run_ns - s0.run_ns) as f64 / 1e9;
    let pct = 100.0 * cpu / secs;
    report.row(
        format!("4. idle CPU, {what}, {:.0} s", secs),
        format!("{pct:.4} % ({:.1} ms on CPU; utime+stime {:.2} s)", cpu * 1e3, cpu_ticks),
        "-",
        "-",
        target_pct.map_or("-".to_string(), |t| format!("≤ {t} %")),
        target_pct.map(|t| pct <= t),
    );
    // Episodes: switch-count changes less than 2 s apart are one episode (a re-list, with the
    // early timer wakeups that lead up to it). A periodic wakeup faster than the re-list period
    // shows as more episodes than re-lists fit in the window, or as one that never ends.
    let mut episodes: Vec<(f64, f64)> = Vec::new();
    for w in &wakes {
        match episodes.last_mut() {
            Some((_, end)) if w - *end < 2.0 => *end = *w,
            _ => episodes.push((*w, *w)),
        }
    }
    let resync = 30.0;
    let fit = (secs / resync).floor() as usize + 1;
    let ok = episodes.len() <= fit && episodes.iter().all(|(a, b)| b - a < 3.0);
    let at: Vec<String> = episodes.iter().map(|(a, b)| format!("{a:.1}–{b:.1}")).collect();
    report.row(
        format!("4. idle wakeups, {what}"),
        format!(
            "{} context switches in {} episode(s), at t = [{}] s",
            s1.switches - s0.switches,
            episodes.len(),
            at.join(", ")
        ),
        "-",
        "-",
        "no period < re-list (30 s)",
        Some(ok),
    );
    Ok(())
}
