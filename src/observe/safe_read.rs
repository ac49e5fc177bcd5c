//! Bounded reads of untrusted files under `$HERMES_HOME`.
//!
//! Everything under `$HERMES_HOME` can be written by the `hermes` user, and an agent running as
//! that user may be hostile (SPEC §9). A file the daemon reads there can therefore be anything:
//! a symlink to `/etc/shadow`, a FIFO nobody writes to (a blocking `open` would hang the daemon
//! forever), a device, a directory, or a multi-gigabyte file. [`read_bounded`] is the one place
//! that turns such a path into bytes, and it guarantees:
//!
//! * a symlink in the **last** component is never followed ([`ReadError::Symlink`]);
//! * anything that is not a regular file is refused ([`ReadError::NotRegular`]) before a single
//!   byte is read: the `open` uses `O_NONBLOCK` and `O_NOCTTY` so it cannot block (a FIFO) nor
//!   acquire a terminal, and the `fstat` of the opened descriptor refuses it (an entry that
//!   cannot even be opened, a socket, is classified by an `lstat` on that error path only);
//! * at most `limit + 1` bytes are read, whatever the file's size ([`ReadError::TooLarge`]);
//! * the descriptor is close-on-exec, so it never leaks into a gateway the daemon starts.
//!
//! Intermediate components are followed as usual: profile directories that are symlinks are
//! read through on purpose (SPEC §5.1).

use std::fs::{File, FileType, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;

/// Largest state file the daemon reads (SPEC §5.2).
pub const MAX_STATE_FILE: u64 = 1 << 20;

/// Why a file could not be read. The `Display` texts are predicates meant to follow the file's
/// path: `format!("{} {err}", path.display())` reads as a sentence, e.g.
/// `/opt/data/gateway_state.json is a FIFO, not a regular file`.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file, or a directory on its path, does not exist (`ENOENT`, `ENOTDIR`).
    #[error("does not exist")]
    Missing,
    /// The last component is a symbolic link (dangling or not); it is not followed.
    #[error("is a symbolic link, which is not followed")]
    Symlink,
    /// The entry exists but is not a regular file. The payload is one of the texts of
    /// [`kind_name`]: `directory`, `FIFO`, `character device`, `block device`, `socket`,
    /// `symbolic link` or `file of unknown type`.
    #[error("is a {0}, not a regular file")]
    NotRegular(&'static str),
    /// The file holds more than `limit` bytes.
    #[error("is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    /// Any other failure (permissions, I/O error, a symlink loop in a directory component...).
    #[error("cannot be read: {0}")]
    Io(#[from] std::io::Error),
}

/// A human name for a file type, as used in [`ReadError::NotRegular`].
pub fn kind_name(ft: FileType) -> &'static str {
    if ft.is_file() {
        "regular file"
    } else if ft.is_dir() {
        "directory"
    } else if ft.is_symlink() {
        "symbolic link"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_socket() {
        "socket"
    } else {
        "file of unknown type"
    }
}

/// Reads at most `limit` bytes of a regular file, without following a symlink in the last
/// component and without ever blocking on a FIFO or device.
///
/// Returns the whole content when the file holds at most `limit` bytes, else
/// [`ReadError::TooLarge`] (after reading at most `limit + 1` bytes, so a file that grows while
/// it is read, or whose `st_size` lies, as in `/proc`, is still bounded).
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    // A content read leaves a cache's state behind it: a replay could not stand for it.
    super::tape::opaque("a file's content was read");
    let (file, meta) = open_no_follow(path)?;
    read_opened(file, &meta, limit)
}

/// Opens `path` read-only with `O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC` and checks
/// with one `fstat` that what was opened is a regular file. Safe on any entry type: it never
/// blocks (a FIFO opened for reading with `O_NONBLOCK` returns at once), never acquires a
/// terminal, and a symlink fails with `ELOOP`. No `lstat` comes first: it would only repeat
/// what the `fstat` of the descriptor tells, one system call more per file, and the agent cannot
/// make device nodes (the only entries whose mere opening could act) on the volume.
fn open_no_follow(path: &Path) -> Result<(File, Metadata), ReadError> {
    let flags = OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let file = match OpenOptions::new().read(true).custom_flags(flags.bits()).open(path) {
        Ok(f) => f,
        // Error paths only: an `lstat` tells what the entry is. `ELOOP` is a symlink in the
        // last component only if that is what the `lstat` sees (else a loop in a directory
        // component, an I/O problem); a socket cannot be opened (`ENXIO`) but is named as such.
        Err(e) => {
            let err = map_open_error(e);
            if let ReadError::Missing = err {
                return Err(err);
            }
            let lstat = std::fs::symlink_metadata(path);
            return match (err, lstat) {
                (ReadError::Symlink, Ok(m)) if m.file_type().is_symlink() => Err(ReadError::Symlink),
                (ReadError::Symlink, Ok(_)) => Err(ReadError::Io(Errno::ELOOP.into())),
                (ReadError::Symlink, Err(e)) => Err(ReadError::Io(e)),
                (ReadError::Io(e), Ok(m)) => refuse_non_regular(&m).and(Err(ReadError::Io(e))),
                (err, _) => Err(err),
            };
        }
    };
    let meta = file.metadata()?;
    refuse_non_regular(&meta)?;
    Ok((file, meta))
}

/// Reads at most `limit + 1` bytes of an opened regular file whose `fstat` is `meta`.
fn read_opened(file: File, meta: &Metadata, limit: u64) -> Result<Vec<u8>, ReadError> {
    let too_large = ReadError::TooLarge { limit };
    let size = meta.len();
    if size > limit {
        // `st_size` of a regular file is reliable when it is large; no need to read it.
        return Err(too_large);
    }
    // One `read` asks for one byte more than `st_size`. A regular file returns fewer bytes than
    // asked only at its end (or when a signal cuts the read short, which then returns fewer
    // than `st_size`), so getting exactly `st_size` bytes is the end: no second `read` to hear
    // it. Anything else (the file grew or shrank since the `fstat`, an interrupted read, procfs
    // whose `st_size` is 0) reads on until the end, bounded all the same.
    let mut reader = file.take(limit.saturating_add(1));
    let first = usize::try_from(size.saturating_add(1)).unwrap_or(usize::MAX).min(1 << 16);
    let mut buf = vec![0u8; first];
    let n = loop {
        match reader.read(&mut buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => break r?,
        }
    };
    buf.truncate(n);
    if u64::try_from(n).ok() != Some(size) || n == first {
        reader.read_to_end(&mut buf)?;
    }
    if u64::try_from(buf.len()).unwrap_or(u64::MAX) > limit {
        return Err(too_large);
    }
    Ok(buf)
}

fn refuse_non_regular(meta: &Metadata) -> Result<(), ReadError> {
    let ft = meta.file_type();
    if ft.is_file() {
        Ok(())
    } else if ft.is_symlink() {
        Err(ReadError::Symlink)
    } else {
        Err(ReadError::NotRegular(kind_name(ft)))
    }
}

fn is_missing(e: &io::Error) -> bool {
    matches!(e.raw_os_error().map(Errno::from_raw), Some(Errno::ENOENT) | Some(Errno::ENOTDIR))
}

/// `ELOOP` from an `O_NOFOLLOW` open means the last component is a symlink.
fn map_open_error(e: io::Error) -> ReadError {
    if is_missing(&e) {
        ReadError::Missing
    } else if e.raw_os_error().map(Errno::from_raw) == Some(Errno::ELOOP) {
        ReadError::Symlink
    } else {
        ReadError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::Mode;
    use std::os::unix::fs::symlink;
    use std::os::unix::net::UnixListener;
    use tempfile::TempDir;

    fn tmp() -> TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn reads_a_small_regular_file() {
        let d = tmp();
        let p = d.path().join("f");
        std::fs::write(&p, b"hello").unwrap();
        assert_eq!(read_bounded(&p, 100).unwrap(), b"hello");
    }

    #[test]
    fn reads_an_empty_file() {
        let d = tmp();
        let p = d.path().join("f");
        std::fs::write(&p, b"").unwrap();
        assert_eq!(read_bounded(&p, 0).unwrap(), b"");
        assert_eq!(read_bounded(&p, 10).unwrap(), b"");
    }

    #[test]
    fn files_around_the_first_read_size_are_read_whole() {
        let d = tmp();
        let p = d.path().join("f");
        for len in [1usize, 31, 32, 33, 4095, 4096, 4097, (1 << 16) - 1, 1 << 16, (1 << 16) + 1, 200_000] {
            let content: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            std::fs::write(&p, &content).unwrap();
            assert_eq!(read_bounded(&p, MAX_STATE_FILE).unwrap(), content, "{len} bytes");
        }
    }

    #[test]
    fn limit_is_inclusive() {
        let d = tmp();
        let p = d.path().join("f");
        std::fs::write(&p, b"12345").unwrap();
        assert_eq!(read_bounded(&p, 5).unwrap(), b"12345");
        assert!(matches!(read_bounded(&p, 4), Err(ReadError::TooLarge { limit: 4 })));
        assert!(matches!(read_bounded(&p, 0), Err(ReadError::TooLarge { limit: 0 })));
    }

    #[test]
    fn huge_limit_does_not_overflow() {
        let d = tmp();
        let p = d.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(read_bounded(&p, u64::MAX).unwrap(), b"abc");
    }

    #[test]
    fn two_mebibytes_is_too_large_for_a_state_file() {
        let d = tmp();
        let p = d.path().join("big");
        std::fs::write(&p, vec![b' '; 2 << 20]).unwrap();
        assert!(matches!(
            read_bounded(&p, MAX_STATE_FILE),
            Err(ReadError::TooLarge { limit }) if limit == MAX_STATE_FILE
        ));
        let one_mib = d.path().join("exact");
        std::fs::write(&one_mib, vec![b' '; 1 << 20]).unwrap();
        assert_eq!(read_bounded(&one_mib, MAX_STATE_FILE).unwrap().len(), 1 << 20);
    }

    #[test]
    fn sparse_file_is_refused_by_size() {
        // A hostile agent can make a file that claims terabytes without using disk space.
        let d = tmp();
        let p = d.path().join("sparse");
        let f = File::create(&p).unwrap();
        f.set_len(1 << 40).unwrap();
        assert!(matches!(read_bounded(&p, MAX_STATE_FILE), Err(ReadError::TooLarge { .. })));
    }

    #[test]
    fn missing_file_and_missing_parent() {
        let d = tmp();
        assert!(matches!(read_bounded(&d.path().join("nope"), 10), Err(ReadError::Missing)));
        assert!(matches!(read_bounded(&d.path().join("nodir/nope"), 10), Err(ReadError::Missing)));
    }

    #[test]
    fn parent_is_a_file_counts_as_missing() {
        let d = tmp();
        let f = d.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        assert!(matches!(read_bounded(&f.join("child"), 10), Err(ReadError::Missing)));
    }

    #[test]
    fn directory_is_refused() {
        let d = tmp();
        let sub = d.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        assert!(matches!(read_bounded(&sub, 10), Err(ReadError::NotRegular("directory"))));
        // Opening a directory O_RDONLY succeeds on Linux: the fstat check must catch it.
        assert!(matches!(open_no_follow(&sub), Err(ReadError::NotRegular("directory"))));
    }

    #[test]
    fn fifo_is_refused_without_blocking() {
        let d = tmp();
        let p = d.path().join("fifo");
        nix::unistd::mkfifo(&p, Mode::from_bits_truncate(0o644)).unwrap();
        assert!(matches!(read_bounded(&p, 10), Err(ReadError::NotRegular("FIFO"))));
        // The open itself must not block on a FIFO with no writer, and fstat must refuse it.
        assert!(matches!(open_no_follow(&p), Err(ReadError::NotRegular("FIFO"))));
    }

    #[test]
    fn character_device_is_refused() {
        let p = Path::new("/dev/null");
        if !p.exists() {
            return;
        }
        assert!(matches!(read_bounded(p, 10), Err(ReadError::NotRegular("character device"))));
        assert!(matches!(open_no_follow(p), Err(ReadError::NotRegular("character device"))));
    }

    #[test]
    fn socket_is_refused() {
        let d = tmp();
        let p = d.path().join("sock");
        let _l = UnixListener::bind(&p).unwrap();
        assert!(matches!(read_bounded(&p, 10), Err(ReadError::NotRegular("socket"))));
    }

    #[test]
    fn symlinks_in_the_last_component_are_not_followed() {
        let d = tmp();
        let target = d.path().join("target");
        std::fs::write(&target, b"secret").unwrap();
        let to_file = d.path().join("to_file");
        symlink(&target, &to_file).unwrap();
        let dangling = d.path().join("dangling");
        symlink(d.path().join("nowhere"), &dangling).unwrap();
        let to_dir = d.path().join("to_dir");
        symlink(d.path(), &to_dir).unwrap();
        let to_fifo = d.path().join("to_fifo");
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o644)).unwrap();
        symlink(&fifo, &to_fifo).unwrap();
        for p in [&to_file, &dangling, &to_dir, &to_fifo] {
            assert!(matches!(read_bounded(p, 100), Err(ReadError::Symlink)), "{p:?}");
            // The open path on its own maps ELOOP from O_NOFOLLOW to Symlink.
            assert!(matches!(open_no_follow(p), Err(ReadError::Symlink)), "{p:?}");
        }
    }

    #[test]
    fn symlinked_directory_components_are_followed() {
        let d = tmp();
        let real = d.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("f"), b"ok").unwrap();
        symlink(&real, d.path().join("link")).unwrap();
        assert_eq!(read_bounded(&d.path().join("link/f"), 10).unwrap(), b"ok");
    }

    #[test]
    fn unreadable_file_is_an_io_error_unless_root() {
        use std::os::unix::fs::PermissionsExt;
        if nix::unistd::geteuid().is_root() {
            return; // root bypasses permission bits
        }
        let d = tmp();
        let p = d.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o000)).unwrap();
        assert!(matches!(read_bounded(&p, 10), Err(ReadError::Io(_))));
    }

    #[test]
    fn other_failures_are_io_errors() {
        // A component longer than NAME_MAX fails with ENAMETOOLONG, even for root.
        let d = tmp();
        let p = d.path().join("x".repeat(300));
        let err = read_bounded(&p, 10).unwrap_err();
        assert!(matches!(err, ReadError::Io(_)), "{err:?}");
        assert!(err.to_string().starts_with("cannot be read: "));
        // A symlink loop in a directory component is an I/O error, not "is a symlink".
        let a = d.path().join("a");
        symlink(&a, &a).unwrap();
        assert!(matches!(read_bounded(&a.join("f"), 10), Err(ReadError::Io(_))));
    }

    #[test]
    fn reads_procfs_files_whose_size_is_zero() {
        let p = Path::new("/proc/self/cmdline");
        if !p.exists() {
            return;
        }
        assert!(!read_bounded(p, 1 << 16).unwrap().is_empty());
    }

    #[test]
    fn messages_read_as_sentences_after_a_path() {
        assert_eq!(ReadError::NotRegular("FIFO").to_string(), "is a FIFO, not a regular file");
        assert_eq!(ReadError::TooLarge { limit: 5 }.to_string(), "is larger than 5 bytes");
        assert_eq!(ReadError::Symlink.to_string(), "is a symbolic link, which is not followed");
        assert_eq!(ReadError::Missing.to_string(), "does not exist");
    }
}
