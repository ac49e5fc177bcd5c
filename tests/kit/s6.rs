//! Which s6 runs the tests: the host's (Debian bookworm, 2.11) or a chroot's
//! (`HERMES_TEST_S6_ROOT`: trixie with 2.13 or sid with 2.15, made by `scripts/s6-root.sh`).

use std::fs;
use std::path::PathBuf;
use std::process::Command;

/// The root directory whose s6 the tests run, if not the host's.
pub fn s6_root() -> Option<PathBuf> {
    std::env::var_os("HERMES_TEST_S6_ROOT").filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The s6 generation under test: `(major, minor)` from the root's (or host's) s6 package.
pub fn s6_version() -> (u32, u32) {
    let status = match s6_root() {
        Some(r) => r.join("var/lib/dpkg/status"),
        None => PathBuf::from("/var/lib/dpkg/status"),
    };
    let text = fs::read_to_string(&status).expect("dpkg status");
    let block = text.split("\n\n").find(|b| b.starts_with("Package: s6\n")).expect("s6 installed");
    let version = block.lines().find_map(|l| l.strip_prefix("Version: ")).expect("s6 version");
    let mut it = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// The temp directory every test world lives under; a chroot'ed s6 sees it at the same path.
pub(super) fn shared_tmp() -> PathBuf {
    std::env::temp_dir().canonicalize().expect("canonical temp dir")
}

/// A shell snippet that bind-mounts the temp directory into the root `$0`, then runs `"$@"`
/// chrooted there. Run it inside a private mount namespace (`unshare --mount`).
pub(super) const CHROOT_SH: &str = "mount --bind \"$1\" \"$0$1\" && shift && exec chroot \"$0\" \"$@\"";

/// A command running the s6 program `prog` of the generation under test.
pub fn s6_command(prog: &str) -> Command {
    match s6_root() {
        None => Command::new(prog),
        Some(root) => {
            let mut c = Command::new("unshare");
            c.args(["--mount", "sh", "-c", CHROOT_SH]).arg(root).arg(shared_tmp()).arg(prog);
            c
        }
    }
}
