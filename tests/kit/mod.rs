//! The test kit: everything the integration tests (`tests/it`) and the benchmarks
//! (`benches/reconciler`) need to run hermes-reconciler against a real s6, in one place.
//!
//! | module | what |
//! |---|---|
//! | [`s6`] | which s6 runs: the host's, or a chroot's (`HERMES_TEST_S6_ROOT`) |
//! | [`svscan`] | s6-svscan as init of its own pid namespace; the processes of that namespace |
//! | [`standin`] | the stand-in gateway script and what it records |
//! | [`world`] | the world builder: home, scandir, svscan, profiles; running the binary |
//! | [`daemon`] | `hermes-reconciler run` as a child process, readiness, re-list barrier |
//! | [`slots`] | `s6-svstat`, the expected state of a slot, waits for it |
//! | [`wait`] | bounded polls and soft assertions |
//! | [`boot_log`] | the `container-boot.log` parser |
//! | [`snapshot`] | tree and slot snapshots (what a command must not change) |
//! | [`status`] | `status --json` rows checked against `s6-svstat` |
//! | [`users`] | the `hermes` user and commands run as it |
//!
//! Every test gets its own [`World`]: a temporary `HERMES_HOME`, a temporary scandir and a real
//! `s6-svscan` running as init of its own pid and mount namespace
//! (`unshare --pid --fork --kill-child --mount --mount-proc`). Tearing it down is total: SIGKILL
//! to a pid namespace's init, sent from outside, kills every process in it. [`Svscan`] does that
//! on drop, also when a test panics; the `unshare` process also gets a parent-death SIGKILL, which
//! `--kill-child` passes on to s6-svscan, so a test binary killed outright leaves nothing behind.
//!
//! No mocks and no timing assertions: s6 acts asynchronously, so every expectation about s6 is
//! polled for with a generous bound ([`WAIT`]) and only the final state is asserted.
//!
//! Needs root (for `unshare`, `chroot`, root-owned slots), util-linux `unshare`, s6, execline and
//! `/bin/sh`. A missing tool is a failure, never a skip. Not being root is the one case a test
//! does not run, and it says so: see [`as_root`] and [`root_only!`].
//!
//! # Adding a suite
//!
//! 1. Write `tests/it/<area>_<topic>.rs` (areas: `once_`, `run_`, `scanner`, `hostile_`, `s6_`,
//!    `status_`, `packaging`); start it with `use crate::kit::*;`.
//! 2. Add `mod <area>_<topic>;` to `tests/it/main.rs`.
//! 3. Start every test that needs root (all that touch s6) with `root_only!();`.
//!
//! A test file written for the old layout (`tests/<name>.rs` with `mod common; mod daemon;
//! use common::*; use daemon::*;`) moves over by `git mv tests/<name>.rs tests/it/`, replacing
//! those four lines by `use crate::kit::*;` and adding step 3. Select suites with libtest filters on the module
//! path: `cargo test --test it -- once_ run_ scanner --skip packaging::` (the suites of the 2.13
//! and 2.15 rows of `scripts/test.sh`).
//!
//! # In the benchmarks
//!
//! `benches/reconciler/main.rs` includes this tree with `#[path = "../../tests/kit/mod.rs"]`, so
//! the benchmarks start s6-svscan and the daemon with the same code; paths inside the kit are
//! relative (`super::`) for that reason. The tests judge s6's state with s6's own tools
//! (`s6-svstat` of the generation under test is the reference); the benchmarks read and write
//! s6's files (rescan and control bytes, `supervise/lock`, `supervise/status`) through the
//! library's `hermes_reconciler::s6`, the code the daemon itself uses.

// The integration tests and the benchmarks each use a part of the kit: what one of them leaves
// unused is not dead.
#![allow(dead_code, unused_imports, unused_macros)]

pub mod boot_log;
pub mod daemon;
pub mod s6;
pub mod slots;
pub mod snapshot;
pub mod standin;
pub mod status;
pub mod svscan;
pub mod users;
pub mod wait;
pub mod world;

pub use boot_log::*;
pub use daemon::*;
pub use s6::*;
pub use slots::*;
pub use snapshot::*;
pub use status::*;
pub use svscan::*;
pub use users::*;
pub use wait::*;
pub use world::*;

use std::io::Write;
use std::time::Duration;

/// Bound of every wait for s6 to act. Things normally happen within milliseconds; the bound is
/// generous because tests run in parallel on a loaded machine.
pub const WAIT: Duration = Duration::from_secs(20);

/// Bound of one `hermes-reconciler once` run. A pass that takes this long is hung.
pub const ONCE_TIMEOUT: Duration = Duration::from_secs(60);

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_hermes-reconciler");

/// PATH given to everything the tests start.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Set (to anything but empty or `0`) where the root-only suites must run: `scripts/test.sh`
/// sets it, so a run that is not root fails there instead of passing without testing.
pub const REQUIRE_ROOT_ENV: &str = "HERMES_TEST_REQUIRE_ROOT";

/// Whether the root-only suites can run in this process.
///
/// `true` as root. Otherwise, with [`REQUIRE_ROOT_ENV`] set this panics (the caller demanded
/// the suites); without it, it prints once, straight to the terminal (past libtest's capture),
/// that the root-only suites were not run, and returns `false`. This is how a plain
/// `cargo test` by a developer runs the unit tests and says plainly what it left out; it is
/// not a skip for a missing tool, which stays a failure.
pub fn as_root() -> bool {
    static TOLD: std::sync::Once = std::sync::Once::new();
    let euid = nix::unistd::geteuid();
    if euid.is_root() {
        return true;
    }
    let required = std::env::var(REQUIRE_ROOT_ENV).is_ok_and(|v| !v.is_empty() && v != "0");
    assert!(!required, "{REQUIRE_ROOT_ENV} is set but the tests run as uid {euid}, not root");
    TOLD.call_once(|| {
        let _ = writeln!(
            std::io::stderr(),
            "\nNOT RUN: the root-only integration suites (real s6 in pid namespaces) need root; \
             this is uid {euid}. Run scripts/test.sh as root for them.\n"
        );
    });
    false
}

/// First statement of a test that needs root: returns from it (having said so once) when the
/// process is not root, and fails it when [`REQUIRE_ROOT_ENV`] demands root. See [`as_root`].
macro_rules! root_only {
    () => {
        if !$crate::kit::as_root() {
            return;
        }
    };
}
pub(crate) use root_only;

/// A readiness pipe for a child to be spawned by `cmd`: the child gets the write end as fd 3
/// (s6's notification convention, kept across any exec chain such as unshare, sh, chroot) and
/// is SIGKILLed when the test process dies. Returns both ends: the caller drops the write end
/// right after spawning, so that the child holds the only copies.
pub fn readiness_on_fd3(cmd: &mut std::process::Command) -> (std::io::PipeReader, std::io::PipeWriter) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    // The pipe's ends are close-on-exec; only the dup at fd 3 survives into the child.
    let (reader, writer) = std::io::pipe().expect("readiness pipe");
    let wfd = writer.as_raw_fd();
    // SAFETY: only async-signal-safe calls (prctl, dup2, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)?;
            let r =
                if wfd == 3 { nix::libc::fcntl(3, nix::libc::F_SETFD, 0) } else { nix::libc::dup2(wfd, 3) };
            if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
        });
    }
    (reader, writer)
}
