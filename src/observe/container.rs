//! The container's main command, from `/proc/*/cmdline` (SPEC §5.4).
//!
//! s6-overlay v3 runs the image's `CMD` through its `rc.init` script, whose argv holds the
//! command after the entrypoint's `.../main-wrapper.sh` (e.g. `sh -e .../rc.init top
//! /opt/hermes/docker/main-wrapper.sh gateway run`), and later through `main-wrapper.sh` itself.
//! So the first process, in pid order, whose argv contains a token ending in `main-wrapper.sh`
//! tells what the container was started to do.
//!
//! Trust (SPEC §9.4): argv of any process is visible here, including processes an agent starts
//! and rewrites at will, so only processes wholly owned by root count. The lowest pid wins
//! because the container's init chain starts before anything else. The first judgment of a
//! container boot is recorded (see [`crate::runtime`]) and reused by every later start. Reads
//! are bounded and never fail: any problem means "this process does not tell", and no process
//! telling means [`ContainerMode::Normal`].

use nix::fcntl::{AT_FDCWD, OFlag, openat};
use nix::sys::stat::{Mode, SFlag};
use std::path::Path;

/// Largest `cmdline` read; a longer one is skipped rather than truncated (a truncated argv
/// could lose a trailing `--no-supervise`).
pub const MAX_CMDLINE: u64 = 64 << 10;

pub use crate::world::ContainerMode;

/// The argv token (by suffix) after which the container's main command starts.
pub const WRAPPER_SUFFIX: &str = "main-wrapper.sh";

/// The main command in one process's argv (NUL-separated `cmdline` bytes): the arguments after
/// the first token ending in `main-wrapper.sh`, with a leading `hermes` dropped.
///
/// * Arguments are split at NUL bytes and decoded lossily one by one; the empty piece after the
///   final NUL terminator is dropped (a missing terminator is tolerated; inner empty arguments
///   are kept as `""`).
/// * The wrapper token matches by suffix, as the spec says (`main-wrapper.sh`,
///   `/opt/hermes/docker/main-wrapper.sh`).
/// * One leading program name is dropped when it is `hermes` or a path whose last component is
///   `hermes` (`/opt/hermes/.venv/bin/hermes`): a `CMD` may name the CLI by absolute path, and
///   what follows is the same command either way.
///
/// Returns `None` when no token ends in `main-wrapper.sh`, else the (possibly empty) command.
pub fn main_command(cmdline: &[u8]) -> Option<Vec<String>> {
    let mut args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    if args.last().is_some_and(|a| a.is_empty()) {
        args.pop();
    }
    let wrapper = args.iter().position(|a| a.ends_with(WRAPPER_SUFFIX.as_bytes()))?;
    let mut rest = &args[wrapper + 1..];
    if let Some((first, tail)) = rest.split_first()
        && is_hermes_program(first)
    {
        rest = tail;
    }
    Some(rest.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect())
}

fn is_hermes_program(arg: &[u8]) -> bool {
    arg == b"hermes" || arg.ends_with(b"/hermes")
}

/// Classifies a main command.
///
/// * first argument `dashboard` → [`ContainerMode::Dashboard`];
/// * first two arguments `gateway run` and no argument anywhere equal to `--no-supervise` →
///   [`ContainerMode::LegacyGatewayRun`];
/// * anything else (including an empty command) → [`ContainerMode::Normal`].
///
/// Matches are exact (case-sensitive, no trimming), like the CLI's own argument parser.
pub fn classify(command: &[String]) -> ContainerMode {
    match command {
        [first, ..] if first == "dashboard" => ContainerMode::Dashboard,
        [a, b, ..] if a == "gateway" && b == "run" => {
            if command.iter().any(|arg| arg == "--no-supervise") {
                ContainerMode::Normal
            } else {
                ContainerMode::LegacyGatewayRun
            }
        }
        _ => ContainerMode::Normal,
    }
}

/// Scans `<proc_root>/<pid>/cmdline` in pid order; the first process owned by root with a main
/// command decides (SPEC §9.4). Processes in another pid namespace than `<proc_root>/self`
/// (when both are readable) are not this container's and are skipped.
///
/// Only entries made of ASCII digits are pids (`self`, `sys`... are not). Processes that vanish
/// meanwhile, unreadable or oversized ([`MAX_CMDLINE`]) `cmdline`s, kernel threads (empty
/// `cmdline`) and processes not wholly root's ([`is_root_process`]) are skipped. An unlistable
/// `proc_root` gives [`ContainerMode::Normal`].
///
/// Each process is read through one descriptor of its `/proc/<pid>` directory, which stays tied
/// to that process even if it exits and its pid is reused, and its uids are read *after* its
/// `cmdline`: uids only go from root to another user (a process of another user can rewrite its
/// own argv, but can never become root again with all four uids), so a process that is wholly
/// root's after its `cmdline` was read was root's when it was read.
pub fn detect(proc_root: &Path) -> ContainerMode {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return ContainerMode::Normal;
    };
    let mut pids: Vec<(u64, std::ffi::OsString)> = entries
        .map_while(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name();
            let pid = parse_pid(name.to_str()?)?;
            Some((pid, name))
        })
        .collect();
    pids.sort();
    // The container's main command runs in the daemon's own pid namespace. Processes of nested
    // pid namespaces (sandboxes, other tests' containers on a shared host) are listed too, but
    // are not this container's: skip those whose namespace is known to differ.
    let own_ns = std::fs::read_link(proc_root.join("self/ns/pid")).ok();
    for (_, name) in pids {
        let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let Ok(dir) = openat(AT_FDCWD, &proc_root.join(name), flags, Mode::empty()) else {
            continue;
        };
        if let Some(own) = &own_ns
            && let Ok(ns) = nix::fcntl::readlinkat(&dir, "ns/pid")
            && ns != own.as_os_str()
        {
            continue;
        }
        let Some(bytes) = read_at(&dir, "cmdline", MAX_CMDLINE) else {
            continue;
        };
        let Some(command) = main_command(&bytes) else {
            continue;
        };
        if read_at(&dir, "status", MAX_STATUS).is_some_and(|s| is_root_process(&s)) {
            return classify(&command);
        }
    }
    ContainerMode::Normal
}

/// Largest `/proc/<pid>/status` read (a real one is about 1.5 KiB).
const MAX_STATUS: u64 = 16 << 10;

/// Whether a `/proc/<pid>/status` text says the process is wholly root's: its `Uid:` line has
/// four fields (real, effective, saved, filesystem), all `0`. A set-uid-root program started by
/// another user keeps that user as its real uid, so it does not count; neither does the owner of
/// the `/proc/<pid>` entry, which is root for any process that made itself non-dumpable.
pub fn is_root_process(status: &[u8]) -> bool {
    status.split(|&b| b == b'\n').find_map(|line| line.strip_prefix(b"Uid:")).is_some_and(|rest| {
        let fields: Vec<&[u8]> = rest.split(|b| b.is_ascii_whitespace()).filter(|f| !f.is_empty()).collect();
        fields.len() == 4 && fields.iter().all(|f| *f == b"0")
    })
}

/// Reads at most `limit` bytes of the regular file `name` in `dir` (no symlink followed, never
/// blocking); `None` on any problem or when the file is larger than `limit`.
fn read_at(dir: &std::os::fd::OwnedFd, name: &str, limit: u64) -> Option<Vec<u8>> {
    use std::io::Read;
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let fd = openat(dir, name, flags, Mode::empty()).ok()?;
    let st = nix::sys::stat::fstat(&fd).ok()?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return None;
    }
    let mut out = Vec::new();
    std::fs::File::from(fd).take(limit + 1).read_to_end(&mut out).ok()?;
    (out.len() as u64 <= limit).then_some(out)
}

/// A pid directory name: ASCII digits only (so no sign, no spaces), fitting a `u64`.
fn parse_pid(name: &str) -> Option<u64> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::PathBuf;

    fn argv(args: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for a in args {
            out.extend_from_slice(a.as_bytes());
            out.push(0);
        }
        out
    }

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    // ---- main_command ----

    #[test]
    fn rc_init_argv() {
        let cmd = argv(&[
            "/bin/sh",
            "-e",
            "/run/s6/basedir/scripts/rc.init",
            "top",
            "/opt/hermes/docker/main-wrapper.sh",
            "gateway",
            "run",
        ]);
        assert_eq!(main_command(&cmd), Some(strings(&["gateway", "run"])));
    }

    #[test]
    fn leading_hermes_is_dropped_once() {
        let c = |a: &[&str]| main_command(&argv(a));
        assert_eq!(c(&["main-wrapper.sh", "hermes", "gateway", "run"]), Some(strings(&["gateway", "run"])));
        assert_eq!(
            c(&["main-wrapper.sh", "/opt/hermes/.venv/bin/hermes", "dashboard"]),
            Some(strings(&["dashboard"]))
        );
        assert_eq!(c(&["main-wrapper.sh", "hermes", "hermes", "x"]), Some(strings(&["hermes", "x"])));
        assert_eq!(c(&["main-wrapper.sh", "hermes"]), Some(vec![]));
        // Only a leading one, and only that exact program name.
        assert_eq!(c(&["main-wrapper.sh", "gateway", "hermes"]), Some(strings(&["gateway", "hermes"])));
        assert_eq!(
            c(&["main-wrapper.sh", "hermes-agent", "dashboard"]),
            Some(strings(&["hermes-agent", "dashboard"]))
        );
        assert_eq!(
            c(&["main-wrapper.sh", "/opt/hermes/", "dashboard"]),
            Some(strings(&["/opt/hermes/", "dashboard"]))
        );
    }

    #[test]
    fn no_wrapper_token_is_none() {
        assert_eq!(main_command(b""), None);
        assert_eq!(main_command(b"\0"), None);
        assert_eq!(main_command(&argv(&["/init"])), None);
        assert_eq!(main_command(&argv(&["hermes", "gateway", "run"])), None);
        assert_eq!(main_command(&argv(&["main-wrapper.sh.bak", "dashboard"])), None);
        assert_eq!(main_command(&argv(&["main-wrapper", "dashboard"])), None);
    }

    #[test]
    fn wrapper_without_arguments_is_an_empty_command() {
        assert_eq!(main_command(&argv(&["/x/main-wrapper.sh"])), Some(vec![]));
        assert_eq!(main_command(b"main-wrapper.sh"), Some(vec![]));
    }

    #[test]
    fn missing_final_nul_and_inner_empty_arguments() {
        assert_eq!(main_command(b"sh\0main-wrapper.sh\0gateway\0run"), Some(strings(&["gateway", "run"])));
        assert_eq!(main_command(b"main-wrapper.sh\0\0x\0"), Some(strings(&["", "x"])));
        // Only one trailing empty piece is the terminator.
        assert_eq!(main_command(b"main-wrapper.sh\0x\0\0"), Some(strings(&["x", ""])));
    }

    #[test]
    fn first_wrapper_token_wins_and_matching_is_by_suffix() {
        assert_eq!(
            main_command(&argv(&["a/main-wrapper.sh", "dashboard", "b/main-wrapper.sh", "gateway"])),
            Some(strings(&["dashboard", "b/main-wrapper.sh", "gateway"]))
        );
        assert_eq!(main_command(&argv(&["my-main-wrapper.sh", "dashboard"])), Some(strings(&["dashboard"])));
    }

    #[test]
    fn invalid_utf8_is_lossy_per_argument() {
        assert_eq!(
            main_command(b"\xffmain-wrapper.sh\0gate\xffway\0run\0"),
            Some(strings(&["gate\u{fffd}way", "run"]))
        );
    }

    proptest! {
        #[test]
        fn main_command_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Some(cmd) = main_command(&bytes) {
                let _ = classify(&cmd);
            }
        }

        #[test]
        fn arguments_round_trip(args in proptest::collection::vec("[a-z-]{1,8}", 0..6)) {
            let mut full = vec!["/bin/sh".to_string(), "/main-wrapper.sh".to_string()];
            full.extend(args.iter().cloned());
            let refs: Vec<&str> = full.iter().map(String::as_str).collect();
            let mut want = args.clone();
            if want.first().is_some_and(|a| a == "hermes") {
                want.remove(0);
            }
            prop_assert_eq!(main_command(&argv(&refs)), Some(want));
        }
    }

    // ---- classify ----

    #[test]
    fn classify_table() {
        use ContainerMode::*;
        for (args, want) in [
            (&[][..], Normal),
            (&["dashboard"][..], Dashboard),
            (&["dashboard", "--port", "9119"][..], Dashboard),
            (&["gateway", "run"][..], LegacyGatewayRun),
            (&["gateway", "run", "--verbose"][..], LegacyGatewayRun),
            (&["gateway", "run", "--no-supervise"][..], Normal),
            (&["gateway", "run", "-v", "--no-supervise", "x"][..], Normal),
            (&["gateway", "run", "--no-supervise=1"][..], LegacyGatewayRun),
            (&["gateway"][..], Normal),
            (&["gateway", "start"][..], Normal),
            (&["run", "gateway"][..], Normal),
            (&["-p", "bot", "gateway", "run"][..], Normal),
            (&["Gateway", "run"][..], Normal),
            (&["gateway ", "run"][..], Normal),
            (&["sleep", "infinity"][..], Normal),
            (&["chat", "dashboard"][..], Normal),
            (&["Dashboard"][..], Normal),
        ] {
            assert_eq!(classify(&strings(args)), want, "{args:?}");
        }
    }

    // ---- detect ----

    struct FakeProc {
        dir: tempfile::TempDir,
    }

    impl FakeProc {
        fn new() -> Self {
            FakeProc { dir: tempfile::tempdir().unwrap() }
        }
        fn root(&self) -> &Path {
            self.dir.path()
        }
        /// A process directory; root's unless a `status` is written over it.
        fn pid_dir(&self, pid: &str) -> PathBuf {
            let d = self.root().join(pid);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("status"), "Name:\tsh\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n").unwrap();
            d
        }
        fn process(&self, pid: &str, args: &[&str]) {
            std::fs::write(self.pid_dir(pid).join("cmdline"), argv(args)).unwrap();
        }
        fn process_of(&self, uids: &str, pid: &str, args: &[&str]) {
            self.process(pid, args);
            std::fs::write(self.root().join(pid).join("status"), format!("Name:\tsh\nUid:\t{uids}\n"))
                .unwrap();
        }
    }

    #[test]
    fn detect_picks_the_lowest_pid_numerically() {
        let p = FakeProc::new();
        p.process("1", &["/package/admin/s6/command/s6-svscan", "-d4", "--", "/run/service"]);
        // Lexicographically "100" < "12" < "7": numeric order must win.
        p.process("100", &["sh", "main-wrapper.sh", "dashboard"]);
        p.process("12", &["sh", "main-wrapper.sh", "hermes", "gateway", "run"]);
        p.process("7", &["sh", "-e", "rc.init", "top"]);
        assert_eq!(detect(p.root()), ContainerMode::LegacyGatewayRun);
    }

    #[test]
    fn detect_dashboard() {
        let p = FakeProc::new();
        p.process("1", &["s6-svscan"]);
        p.process("20", &["/bin/sh", "/opt/hermes/docker/main-wrapper.sh", "dashboard"]);
        assert_eq!(detect(p.root()), ContainerMode::Dashboard);
    }

    #[test]
    fn detect_first_main_command_decides_even_if_normal() {
        let p = FakeProc::new();
        p.process("5", &["sh", "main-wrapper.sh", "sleep", "infinity"]);
        p.process("6", &["sh", "main-wrapper.sh", "dashboard"]);
        assert_eq!(detect(p.root()), ContainerMode::Normal);
        let p = FakeProc::new();
        p.process("5", &["sh", "main-wrapper.sh"]);
        p.process("6", &["sh", "main-wrapper.sh", "dashboard"]);
        assert_eq!(detect(p.root()), ContainerMode::Normal);
    }

    #[test]
    fn detect_without_any_main_command_is_normal() {
        let p = FakeProc::new();
        assert_eq!(detect(p.root()), ContainerMode::Normal);
        p.process("1", &["/init"]);
        p.process("2", &[]);
        assert_eq!(detect(p.root()), ContainerMode::Normal);
        assert_eq!(detect(&p.root().join("no-such-proc")), ContainerMode::Normal);
    }

    #[test]
    fn detect_skips_non_pid_entries() {
        let p = FakeProc::new();
        for name in ["self", "sys", "+3", "-4", " 5", "6a", "0x7"] {
            p.process(name, &["sh", "main-wrapper.sh", "dashboard"]);
        }
        std::fs::write(p.root().join("uptime"), "1.0 2.0").unwrap();
        p.process("900", &["sh", "main-wrapper.sh", "gateway", "run"]);
        assert_eq!(detect(p.root()), ContainerMode::LegacyGatewayRun);
    }

    #[test]
    fn detect_tolerates_vanished_and_odd_processes() {
        let p = FakeProc::new();
        // Vanished: directory without cmdline.
        p.pid_dir("2");
        // cmdline is a directory, a FIFO (must not hang), a symlink, oversized.
        std::fs::create_dir(p.pid_dir("3").join("cmdline")).unwrap();
        nix::unistd::mkfifo(&p.pid_dir("4").join("cmdline"), nix::sys::stat::Mode::from_bits_truncate(0o644))
            .unwrap();
        let target = p.root().join("target");
        std::fs::write(&target, argv(&["main-wrapper.sh", "dashboard"])).unwrap();
        std::os::unix::fs::symlink(&target, p.pid_dir("5").join("cmdline")).unwrap();
        let mut huge = argv(&["sh", "main-wrapper.sh", "dashboard"]);
        huge.resize(MAX_CMDLINE as usize + 1, b'x');
        std::fs::write(p.pid_dir("6").join("cmdline"), huge).unwrap();
        // A pid entry that is a plain file.
        std::fs::write(p.root().join("7"), "x").unwrap();
        p.process("8", &["sh", "main-wrapper.sh", "gateway", "run", "--no-supervise"]);
        p.process("9", &["sh", "main-wrapper.sh", "dashboard"]);
        assert_eq!(detect(p.root()), ContainerMode::Normal);
    }

    #[test]
    fn detect_counts_only_processes_wholly_owned_by_root() {
        let p = FakeProc::new();
        // An agent's process, a set-uid-root program it started, and one with no status.
        p.process_of(
            "10000\t10000\t10000\t10000",
            "5",
            &["sh", "/opt/hermes/docker/main-wrapper.sh", "dashboard"],
        );
        p.process_of("10000\t0\t0\t0", "6", &["sh", "main-wrapper.sh", "dashboard"]);
        p.process("7", &["sh", "main-wrapper.sh", "dashboard"]);
        std::fs::remove_file(p.root().join("7/status")).unwrap();
        p.process("9", &["sh", "main-wrapper.sh", "gateway", "run"]);
        assert_eq!(detect(p.root()), ContainerMode::LegacyGatewayRun);
        let p = FakeProc::new();
        p.process_of("10000\t10000\t10000\t10000", "5", &["sh", "main-wrapper.sh", "dashboard"]);
        assert_eq!(detect(p.root()), ContainerMode::Normal);
    }

    #[test]
    fn root_process_status() {
        assert!(is_root_process(b"Name:\tx\nUid:\t0\t0\t0\t0\nGid:\t5\t5\t5\t5\n"));
        for bad in [
            &b"Uid:\t0\t0\t0\t1\n"[..],
            b"Uid:\t0\t0\t0\n",
            b"Uid:\t0\t0\t0\t0\t0\n",
            b"Uid:\t00\t0\t0\t0\n",
            b"Gid:\t0\t0\t0\t0\n",
            b"",
            b"XUid:\t0\t0\t0\t0\n",
        ] {
            assert!(!is_root_process(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn detect_on_the_real_proc_does_not_panic() {
        let _ = detect(Path::new("/proc"));
    }

    #[test]
    fn pid_parsing() {
        assert_eq!(parse_pid("1"), Some(1));
        assert_eq!(parse_pid("4194304"), Some(4_194_304));
        assert_eq!(parse_pid("007"), Some(7));
        for bad in ["", "+1", "-1", "1 ", "self", "99999999999999999999999"] {
            assert_eq!(parse_pid(bad), None, "{bad:?}");
        }
    }
}
