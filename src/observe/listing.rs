//! One bounded listing of a directory, to learn which of a few names it holds before looking
//! any of them up (issue 14).
//!
//! A one-shot pass reads a handful of optional files per profile (`.env`, the lifecycle file
//! under `state/`, ...) and removes two leftovers (`gateway.pid`, `processes.json`). Most are
//! missing on most profiles, and a lookup that fails costs a system call all the same. Listing
//! the directory costs a fixed four (`open`, two `getdents64`, `close`) whatever it holds, and
//! then only what is there is opened.
//!
//! Guarantees:
//! * the answer is a hint, never an authority: a name the listing did not see is one that was
//!   not there when the directory was read (the caller then treats it as missing, which is what
//!   its own lookup would have found an instant before); a name it saw is still looked up and
//!   read with every check of [`crate::observe::safe_read`];
//! * bounded: the directory is read in at most [`MAX_CALLS`] calls of [`BUF_LEN`] bytes. A
//!   bigger directory (the agent may fill one) gives no answer, and the caller looks every name
//!   up as it would without a listing;
//! * no `stat`, no `fcntl`: the entries are read with `getdents64(2)` directly, which libc's
//!   `opendir` would precede with an `fstat` (and `fdopendir` with an `fcntl` too).
//!
//! Directories are opened following symlinks (a profile directory that is a symlink is read
//! through on purpose, SPEC §5.1), without blocking and close-on-exec. Only reads happen here.

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// Bytes asked for in each `getdents64` call: about 1,000 entries of short names.
pub const BUF_LEN: usize = 32 * 1024;

/// Calls after which a directory is too big to be worth listing (the end not met by then).
pub const MAX_CALLS: usize = 4;

/// Which of the names asked for a directory held when it was listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listed<'n> {
    names: &'n [&'n str],
    /// Bit `i` set: `names[i]` was seen.
    seen: u64,
}

impl Listed<'_> {
    /// Whether the directory held `name`, of any type. A name that was not asked for is
    /// reported held: the caller must then look it up.
    pub fn holds(&self, name: &str) -> bool {
        match self.names.iter().position(|n| *n == name) {
            Some(i) => self.seen & (1 << i) != 0,
            None => true,
        }
    }
}

/// Lists `dir` once and tells which of `names` (at most 64, each a single component) it holds.
/// `None` when the directory cannot be opened or read, or is bigger than the bound: the caller
/// then looks each name up itself.
pub fn which<'n>(dir: &Path, names: &'n [&'n str]) -> Option<Listed<'n>> {
    debug_assert!(names.len() <= 64 && names.iter().all(|n| !n.contains('/')));
    // Only some names are kept: nothing a replay could compare.
    super::tape::opaque("a directory listed for a few names");
    let fd = open_dir(dir).ok()?;
    BUF.with_borrow_mut(|buf| {
        let mut seen = 0u64;
        for _ in 0..MAX_CALLS {
            let n = getdents64(&fd, buf)?;
            if n == 0 {
                return Some(Listed { names, seen });
            }
            for name in entry_names(&buf[..n]) {
                if let Some(i) = names.iter().position(|w| w.as_bytes() == name) {
                    seen |= 1 << i;
                }
            }
        }
        None
    })
}

// One buffer per thread, made once: a boot pass lists thousands of directories, and a fresh
// 32 KiB buffer each time was a zero-fill and a large allocation per profile (a re-list's
// `opendir` asked for one too, which made glibc sort every chunk freed since: issue 15).
thread_local! {
    static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; BUF_LEN]);
}

fn open_dir(dir: &Path) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    nix::fcntl::open(dir, flags, Mode::empty())
}

/// An entry's type as the listing gives it (`d_type`): some file systems do not, and say
/// [`Kind::Unknown`] (the caller then looks for itself, as libc's readers do).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    Symlink,
    Other,
    Unknown,
}

impl Kind {
    /// This type, or, when the listing did not say, the entry at `path`'s own (`lstat`, no
    /// symlink followed), as libc's readers do.
    pub fn resolved(self, path: &Path) -> std::io::Result<Kind> {
        if self != Kind::Unknown {
            return Ok(self);
        }
        let t = super::stat_base::StatBase::lstat(None, path)?;
        Ok(if t.dir {
            Kind::Dir
        } else if t.symlink {
            Kind::Symlink
        } else {
            Kind::Other
        })
    }

    /// One byte for the type, as a tape keeps it.
    pub(crate) fn byte(self) -> u8 {
        self as u8
    }

    fn of(d_type: u8) -> Kind {
        match d_type {
            nix::libc::DT_DIR => Kind::Dir,
            nix::libc::DT_LNK => Kind::Symlink,
            nix::libc::DT_UNKNOWN => Kind::Unknown,
            _ => Kind::Other,
        }
    }
}

/// Calls `f` with the name and type of every entry of `dir` but `.` and `..`, as the kernel
/// returns them (no order), and nothing else: no `stat`, no allocation. The whole directory
/// is read, however big (a caller that must see every entry, as a re-list must); `Err` when it
/// cannot be opened or read, after `f` has seen what came before the error.
///
/// `f` runs while this thread's listing buffer is in use: it must not list (callers collect
/// what they need and look at it after).
///
/// While an observation is recorded ([`super::tape`]), the whole listing goes on its tape.
pub fn each(dir: &Path, mut f: impl FnMut(&[u8], Kind)) -> std::io::Result<()> {
    if !super::tape::recording() {
        return each_unrecorded(dir, f);
    }
    let mut tape = super::tape::Listing::default();
    let out = each_unrecorded(dir, |name, kind| {
        tape.entry(name, kind.byte());
        f(name, kind);
    });
    tape.done(dir, out.as_ref().err());
    out
}

fn each_unrecorded(dir: &Path, mut f: impl FnMut(&[u8], Kind)) -> std::io::Result<()> {
    let fd = open_dir(dir)?;
    BUF.with_borrow_mut(|buf| {
        loop {
            let n = getdents64(&fd, buf).ok_or_else(std::io::Error::last_os_error)?;
            if n == 0 {
                return Ok(());
            }
            for (name, d_type) in entries(&buf[..n]).filter(|(n, _)| *n != b"." && *n != b"..") {
                f(name, Kind::of(d_type));
            }
        }
    })
}

/// One `getdents64(2)` call into `buf`: the number of bytes of records it filled (0 at the
/// end), `None` on an error.
fn getdents64(fd: &OwnedFd, buf: &mut [u8]) -> Option<usize> {
    loop {
        // SAFETY: the pointer and length describe `buf`, which outlives the call; the kernel
        // writes at most `buf.len()` bytes of records into it.
        let n = unsafe {
            nix::libc::syscall(nix::libc::SYS_getdents64, fd.as_raw_fd(), buf.as_mut_ptr(), buf.len())
        };
        if n >= 0 {
            return usize::try_from(n).ok().filter(|&n| n <= buf.len());
        }
        if nix::errno::Errno::last() != nix::errno::Errno::EINTR {
            return None;
        }
    }
}

/// The names of the `linux_dirent64` records in `records` (`d_ino` u64, `d_off` i64,
/// `d_reclen` u16, `d_type` u8, then the NUL-terminated name, the record padded to 8 bytes).
/// A malformed record ends the walk: nothing is read past the bytes given.
fn entry_names(records: &[u8]) -> impl Iterator<Item = &[u8]> {
    entries(records).map(|(name, _)| name)
}

/// [`entry_names`] with each entry's `d_type`.
fn entries(records: &[u8]) -> impl Iterator<Item = (&[u8], u8)> {
    const NAME_AT: usize = 19;
    let mut rest = records;
    std::iter::from_fn(move || {
        let reclen = usize::from(u16::from_ne_bytes([*rest.get(16)?, *rest.get(17)?]));
        if reclen <= NAME_AT || reclen > rest.len() {
            rest = &[];
            return None;
        }
        let (record, tail) = rest.split_at(reclen);
        rest = tail;
        let name = &record[NAME_AT..];
        Some((name.iter().position(|&b| b == 0).map_or(name, |end| &name[..end]), record[18]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const ASKED: [&str; 4] = ["a", ".env", "state", "gone"];

    #[test]
    fn tells_which_names_are_there_of_any_type() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("a"), "").unwrap();
        fs::create_dir(t.path().join("state")).unwrap();
        std::os::unix::fs::symlink("/nowhere", t.path().join(".env")).unwrap();
        fs::write(t.path().join("other"), "").unwrap();
        let l = which(t.path(), &ASKED).unwrap();
        assert!(l.holds("a") && l.holds(".env") && l.holds("state"));
        assert!(!l.holds("gone"));
        assert!(l.holds("never asked"), "a name not asked for must be looked up");
    }

    #[test]
    fn an_empty_directory_holds_nothing() {
        let t = tempfile::tempdir().unwrap();
        let l = which(t.path(), &ASKED).unwrap();
        assert!(ASKED.iter().all(|n| !l.holds(n)));
    }

    #[test]
    fn no_answer_for_what_cannot_be_listed() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(which(&t.path().join("missing"), &ASKED), None);
        fs::write(t.path().join("file"), "").unwrap();
        assert_eq!(which(&t.path().join("file"), &ASKED), None);
        nix::unistd::mkfifo(&t.path().join("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
        assert_eq!(which(&t.path().join("fifo"), &ASKED), None, "never blocks on a FIFO");
    }

    #[test]
    fn a_directory_bigger_than_the_bound_gives_no_answer() {
        let t = tempfile::tempdir().unwrap();
        // Records of 24 + 200 bytes: more than MAX_CALLS buffers' worth.
        let long = "x".repeat(200);
        let count = MAX_CALLS * BUF_LEN / 200 + 10;
        for i in 0..count {
            fs::write(t.path().join(format!("{long}{i}")), "").unwrap();
        }
        assert_eq!(which(t.path(), &ASKED), None);
        // Within the bound, every name is seen wherever it lies in the listing.
        let u = tempfile::tempdir().unwrap();
        for i in 0..2000 {
            fs::write(u.path().join(format!("f{i}")), "").unwrap();
        }
        fs::write(u.path().join("gone"), "").unwrap();
        let l = which(u.path(), &ASKED).unwrap();
        assert!(l.holds("gone") && !l.holds("a"));
    }

    #[test]
    fn each_sees_every_entry_of_a_big_directory_once() {
        let t = tempfile::tempdir().unwrap();
        // Several buffers' worth, of every type.
        let long = "y".repeat(100);
        let mut made: Vec<String> = (0..1000).map(|i| format!("{long}{i}")).collect();
        for n in &made {
            fs::write(t.path().join(n), "").unwrap();
        }
        fs::create_dir(t.path().join("d")).unwrap();
        std::os::unix::fs::symlink("/nowhere", t.path().join("l")).unwrap();
        made.extend(["d".to_owned(), "l".to_owned()]);
        let mut seen = Vec::new();
        let mut kinds = std::collections::BTreeMap::new();
        each(t.path(), |n, k| {
            seen.push(String::from_utf8(n.to_vec()).unwrap());
            kinds.insert(String::from_utf8(n.to_vec()).unwrap(), k);
        })
        .unwrap();
        seen.sort();
        made.sort();
        assert_eq!(seen, made, "every entry once, without . and ..");
        // tmpfs and ext4 give the type; a file system that does not says so.
        let known = |n: &str, k: Kind| kinds[n] == k || kinds[n] == Kind::Unknown;
        assert!(
            known("d", Kind::Dir) && known("l", Kind::Symlink) && known(&format!("{long}0"), Kind::Other)
        );
        assert!(each(&t.path().join("missing"), |_, _| ()).is_err());
        assert!(each(&t.path().join("d").join("x"), |_, _| ()).is_err());
        let fifo = t.path().join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o644)).unwrap();
        assert!(each(&fifo, |_, _| ()).is_err(), "never blocks on a FIFO");
    }

    #[test]
    fn malformed_records_end_the_walk_without_reading_past_them() {
        let mut rec = vec![0u8; 24];
        rec[16..18].copy_from_slice(&24u16.to_ne_bytes());
        rec[19..21].copy_from_slice(b"ok");
        let mut bad = rec.clone();
        bad.extend_from_slice(&[0u8; 10]); // a truncated second record
        assert_eq!(entry_names(&bad).collect::<Vec<_>>(), vec![&b"ok"[..]]);
        let mut huge = rec.clone();
        huge[16..18].copy_from_slice(&500u16.to_ne_bytes());
        assert_eq!(entry_names(&huge).count(), 0);
        let mut tiny = rec;
        tiny[16..18].copy_from_slice(&8u16.to_ne_bytes());
        assert_eq!(entry_names(&tiny).count(), 0);
        assert_eq!(entry_names(&[]).count(), 0);
    }
}
