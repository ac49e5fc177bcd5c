//! Decoder for `supervise/status` (35 bytes on s6 2.11, 2.12 and >= 2.14; 43 bytes on 2.13.x).
//!
//! The file is the only state s6-supervise publishes about its service. It is not a versioned
//! format: its layout is told apart by its size alone, so [`decode_status`] accepts exactly the
//! two sizes s6 has ever written and rejects everything else rather than guessing.
//!
//! Layout (all integers big-endian):
//!
//! | 35-byte | 43-byte | field |
//! |---|---|---|
//! | 0..12 | 0..12 | TAI64N time of the last up/down change |
//! | 12..24 | 12..24 | TAI64N time of the last readiness change |
//! | 24..32 | 24..32 | pid (u64, 0 while down) |
//! | – | 32..40 | process group (u64; 0 or all-ones when unknown) |
//! | 32..34 | 40..42 | wait status of the last death (u16) |
//! | 34 | 42 | flags: bit0 paused, bit1 finishing, bit2 want-up, bit3 ready |
//!
//! The helpers on [`ServiceStatus`] reproduce the meaning `s6-svstat` gives these bytes (the
//! reference the tests compare against), because "pid is non-zero" alone does not mean "up": while
//! `./finish` runs, the pid field holds the finish script's pid.

use crate::layout::slot::{DOWN_FILE, SUPERVISE_STATUS};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Size of `supervise/status` written by s6 2.11, 2.12 and >= 2.14.
pub const STATUS_SIZE: usize = 35;
/// Size of `supervise/status` written by s6 2.13.x (adds a u64 process group at offset 32).
pub const STATUS_SIZE_WITH_PGID: usize = 43;

/// At most this many bytes are read from a status file: more than either valid size, so an
/// oversized file is still reported as [`StatusError::BadSize`], but bounded, so a huge or
/// endlessly growing file cannot make the daemon allocate or block.
const STATUS_READ_LIMIT: u64 = 64 + 1;

/// Offset between a TAI64 label and Unix seconds: labels count from 2^62 at 1970-01-01 TAI,
/// and TAI was 37 s ahead of UTC (the leap-second offset s6/skalibs use for the conversion).
const TAI64_UNIX_OFFSET: i128 = (1i128 << 62) + 37;

/// Seconds beyond which a decoded time is clamped. A real s6 never writes such labels; the
/// clamp only exists so that garbage decodes to *some* time instead of overflowing `SystemTime`
/// (whose range is platform dependent). 2^40 s is about 35,000 years either side of 1970.
const MAX_ABS_UNIX_SECS: i128 = 1i128 << 40;

/// One decoded `supervise/status` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceStatus {
    /// Time of the last up/down change.
    pub since: SystemTime,
    /// Time of the last readiness change.
    pub ready_since: SystemTime,
    /// Pid of the service process; `None` when it is down.
    pub pid: Option<u64>,
    /// Process group (43-byte format only).
    ///
    /// `None` in the 35-byte format, and in the 43-byte format when s6 recorded no usable group
    /// (0 before the first start, -1 if `getpgid` failed). Kept after the service goes down.
    pub pgid: Option<u64>,
    /// Raw wait status of the last death (as from waitpid).
    ///
    /// 0 until the service has died once; not reset when it is restarted, so it describes the
    /// *previous* run while the service is up. See [`ServiceStatus::svstat_exitcode`].
    pub wait_status: u16,
    /// Raw flag bit 0: the service was stopped with SIGSTOP (`s6-svc -p`). s6 2.15 also sets it
    /// on a service that was never started (no pid): s6-svstat then says "not started yet".
    pub paused: bool,
    /// Raw flag bit 1: `./finish` is running; the pid field is then finish's pid.
    pub finishing: bool,
    /// Raw flag bit 2: the supervisor's live instruction — restart the service when it is down.
    pub want_up: bool,
    /// Raw flag bit 3, set both for "up and ready" and for "down and ready to be started";
    /// use [`ServiceStatus::is_ready`] for the former.
    pub ready: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("status file has {0} bytes; expected 35 or 43")]
    BadSize(usize),
    #[error("reading {path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
}

impl ServiceStatus {
    /// Whether the service is up, as `s6-svstat -o up` prints it.
    ///
    /// Up means a pid is recorded *and* it is not the pid of `./finish`: s6-supervise keeps the
    /// finish script's pid in the pid field while it runs, with the finishing flag set, and the
    /// service is down during that time.
    pub fn is_up(&self) -> bool {
        self.pid.is_some() && !self.finishing
    }

    /// Pid of the running `./run` process: `Some` exactly when [`is_up`](Self::is_up).
    ///
    /// This is a pid in the pid namespace of the s6-supervise that wrote the file (the container's
    /// namespace), which may differ from the caller's.
    pub fn up_pid(&self) -> Option<u64> {
        if self.is_up() { self.pid } else { None }
    }

    /// Whether the service is up and has notified readiness, as `s6-svstat -o ready` prints it.
    ///
    /// The raw [`ready`](Self::ready) flag is also set while the service is down and *could* be
    /// started ("down readiness"); s6-svstat, and this method, only report it when a pid is
    /// recorded. While `./finish` runs s6-supervise clears the flag, so this is `false` then too.
    pub fn is_ready(&self) -> bool {
        self.pid.is_some() && self.ready
    }

    /// Exit code of the last death, if that process exited normally (`WIFEXITED`), decoded from
    /// the raw wait status regardless of the current state.
    ///
    /// Before the service has ever died s6 records a wait status of 0, which reads as `Some(0)`;
    /// use [`svstat_exitcode`](Self::svstat_exitcode) for the value s6-svstat prints.
    pub fn exit_code(&self) -> Option<i32> {
        let w = self.wait_status;
        if w & 0x7f == 0 { Some(i32::from((w >> 8) & 0xff)) } else { None }
    }

    /// Signal that killed the last process (`WIFSIGNALED`/`WTERMSIG`), decoded from the raw wait
    /// status regardless of the current state. The core-dump bit is ignored.
    pub fn signal(&self) -> Option<i32> {
        let sig = self.wait_status & 0x7f;
        // 0 is a normal exit and 0x7f a stopped child; neither is a death by signal.
        if sig != 0 && sig != 0x7f { Some(i32::from(sig)) } else { None }
    }

    /// Whether the last death by signal dumped core (`WCOREDUMP`).
    pub fn core_dumped(&self) -> bool {
        self.signal().is_some() && self.wait_status & 0x80 != 0
    }

    /// The service never ran, as s6 2.15 records it (bit 0 with no pid; earlier versions never
    /// set that bit on a service that is down).
    fn never_started(&self) -> bool {
        self.pid.is_none() && self.paused
    }

    /// The `exitcode` field of `s6-svstat -o`: `-1` while the service is up (the recorded wait
    /// status belongs to an earlier run) or when the last process was killed by a signal,
    /// otherwise its exit code. A service that never ran prints `0` up to s6 2.14, `-1` on 2.15
    /// (which marks it "not started yet").
    pub fn svstat_exitcode(&self) -> i32 {
        if self.is_up() || self.never_started() { -1 } else { self.exit_code().unwrap_or(-1) }
    }

    /// The `signum` field of `s6-svstat -o`: `-1` while up, before the first run, or when the
    /// last process exited normally, otherwise the number of the signal that killed it.
    pub fn svstat_signum(&self) -> i32 {
        if self.is_up() || self.never_started() { -1 } else { self.signal().unwrap_or(-1) }
    }

    /// Exactly what `s6-svstat -o up,wantedup,normallyup,ready,pid,exitcode <dir>` prints
    /// (without the trailing newline), given `normally_up` from [`normally_up`] on the same
    /// service directory: the status file does not record whether a `down` file exists.
    pub fn svstat_line(&self, normally_up: bool) -> String {
        format!(
            "{} {} {} {} {} {}",
            self.is_up(),
            self.want_up,
            normally_up,
            self.is_ready(),
            // `-1` while down, and also while ./finish runs (the file then holds finish's pid).
            // s6 narrows the stored u64 to a C pid_t; Linux pids never exceed 2^22, and an
            // impossible larger value is printed in full here rather than truncated.
            self.up_pid().map_or_else(|| "-1".to_string(), |p| p.to_string()),
            self.svstat_exitcode()
        )
    }
}

/// Converts a 12-byte TAI64N label (8-byte big-endian seconds label, 4-byte big-endian
/// nanoseconds) to a `SystemTime`.
///
/// Unix seconds = label − 2^62 − 37. Never panics: nanoseconds above 999,999,999 are clamped to
/// that, and seconds are clamped to ±2^40 around the epoch, so labels s6 never writes (0, values
/// with the reserved top bit set) still map to a representable time.
pub fn tai64n_to_system_time(label: &[u8; 12]) -> SystemTime {
    let secs_label =
        u64::from_be_bytes([label[0], label[1], label[2], label[3], label[4], label[5], label[6], label[7]]);
    let nanos = u32::from_be_bytes([label[8], label[9], label[10], label[11]]).min(999_999_999);
    let unix = (i128::from(secs_label) - TAI64_UNIX_OFFSET).clamp(-MAX_ABS_UNIX_SECS, MAX_ABS_UNIX_SECS);
    // |unix| <= 2^40, so the cast to u64 cannot truncate.
    let whole = Duration::from_secs(unix.unsigned_abs() as u64);
    let base = if unix >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(whole)
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(whole)
    };
    base.and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nanos)))).unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Decodes the contents of a `supervise/status` file, telling the format apart by its size:
/// 35 bytes (s6 2.11, 2.12, >= 2.14) or 43 bytes (s6 2.13.x, with a process group).
///
/// Any other size is [`StatusError::BadSize`]. Never panics, whatever the bytes: every field
/// is decoded from fixed offsets checked against the length first, and out-of-range times are
/// clamped (see [`tai64n_to_system_time`]). Unknown flag bits are ignored.
pub fn decode_status(bytes: &[u8]) -> Result<ServiceStatus, StatusError> {
    // Offsets of the pgid (if any), wait status and flags differ; the first 32 bytes do not.
    let (pgid_at, wstat_at, flags_at) = match bytes.len() {
        STATUS_SIZE => (None, 32, 34),
        STATUS_SIZE_WITH_PGID => (Some(32), 40, 42),
        n => return Err(StatusError::BadSize(n)),
    };
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_be_bytes(b)
    };
    let tai_at = |at: usize| {
        let mut b = [0u8; 12];
        b.copy_from_slice(&bytes[at..at + 12]);
        tai64n_to_system_time(&b)
    };
    let pid = u64_at(24);
    // s6 2.13 stores a pid_t (0 before the first start, -1 if getpgid failed) widened to u64;
    // only a positive pid_t is a process group one could signal.
    let pgid = pgid_at.map(u64_at).filter(|&g| (1..=i32::MAX as u64).contains(&g));
    let flags = bytes[flags_at];
    Ok(ServiceStatus {
        since: tai_at(0),
        ready_since: tai_at(12),
        pid: (pid != 0).then_some(pid),
        pgid,
        wait_status: u16::from_be_bytes([bytes[wstat_at], bytes[wstat_at + 1]]),
        paused: flags & 1 != 0,
        finishing: flags & 2 != 0,
        want_up: flags & 4 != 0,
        ready: flags & 8 != 0,
    })
}

/// Reads `<service_dir>/supervise/status`; `Ok(None)` if it does not exist.
///
/// The file does not exist before an s6-supervise has first started on the directory (or when
/// `supervise/` itself is missing). s6-supervise replaces it atomically (write a temporary file,
/// `rename()` it over), so one plain read sees either the old or the new contents, never a mix.
///
/// The read is bounded (65 bytes: an oversized file is reported as `BadSize(65)`, meaning "at
/// least 65"), the last component is not followed if it is a symlink, and anything but a regular
/// file is rejected: the open is non-blocking, so a FIFO planted there cannot hang the caller.
pub fn read_status(service_dir: &Path) -> Result<Option<ServiceStatus>, StatusError> {
    let path = service_dir.join(SUPERVISE_STATUS);
    let io_err = |source: std::io::Error| StatusError::Io { path: path.clone(), source };
    let file = match File::options()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    let file_type = file.metadata().map_err(io_err)?.file_type();
    if !file_type.is_file() {
        let what = if file_type.is_fifo() { "a FIFO" } else { "not a regular file" };
        return Err(io_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("status file is {what}"),
        )));
    }
    let mut bytes = Vec::with_capacity(STATUS_READ_LIMIT as usize);
    file.take(STATUS_READ_LIMIT).read_to_end(&mut bytes).map_err(io_err)?;
    decode_status(&bytes).map(Some)
}

/// Whether the service is "normally up": `true` iff `<service_dir>/down` does not exist.
///
/// This is what `s6-svstat -o normallyup` prints. s6-supervise reads `./down` only when it
/// starts, so this is the state a supervisor restart would come back in, not the live
/// instruction (that is [`ServiceStatus::want_up`]); the daemon keeps both in agreement.
/// Like s6 (`access(F_OK)`), a symlink named `down` is followed, and a dangling one counts as
/// absent. Errors other than "not found" (permission, `service_dir` not a directory) are
/// returned rather than guessed.
pub fn normally_up(service_dir: &Path) -> Result<bool, StatusError> {
    let path: PathBuf = service_dir.join(DOWN_FILE);
    match std::fs::metadata(&path) {
        Ok(_) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(source) => Err(StatusError::Io { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// TAI64N label for Unix time `secs` + `nanos`.
    fn tai(secs: i64, nanos: u32) -> [u8; 12] {
        let label = (i128::from(secs) + TAI64_UNIX_OFFSET) as u64;
        let mut b = [0u8; 12];
        b[..8].copy_from_slice(&label.to_be_bytes());
        b[8..].copy_from_slice(&nanos.to_be_bytes());
        b
    }

    fn build35(since: [u8; 12], ready: [u8; 12], pid: u64, wstat: u16, flags: u8) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&since);
        v.extend_from_slice(&ready);
        v.extend_from_slice(&pid.to_be_bytes());
        v.extend_from_slice(&wstat.to_be_bytes());
        v.push(flags);
        assert_eq!(v.len(), STATUS_SIZE);
        v
    }

    fn build43(since: [u8; 12], ready: [u8; 12], pid: u64, pgid: u64, wstat: u16, flags: u8) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&since);
        v.extend_from_slice(&ready);
        v.extend_from_slice(&pid.to_be_bytes());
        v.extend_from_slice(&pgid.to_be_bytes());
        v.extend_from_slice(&wstat.to_be_bytes());
        v.push(flags);
        assert_eq!(v.len(), STATUS_SIZE_WITH_PGID);
        v
    }

    fn at(secs: u64, nanos: u32) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn s6_status_35_byte_captured_from_s6_2_11() {
        // A running `exec sleep 1000` service, as written by s6 2.11.3.2 (pid 7 in its namespace).
        let bytes: [u8; 35] = [
            0x40, 0, 0, 0, 0x6b, 0x09, 0x1d, 0xa2, 0x1e, 0xd7, 0x56, 0xca, 0x40, 0, 0, 0, 0x6b, 0x09, 0x1d,
            0xa2, 0x1e, 0xc0, 0x91, 0x6c, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0x04,
        ];
        let st = decode_status(&bytes).unwrap();
        assert_eq!(st.since, at(0x6b09_1da2 - 37, 0x1ed7_56ca));
        assert_eq!(st.ready_since, at(0x6b09_1da2 - 37, 0x1ec0_916c));
        assert_eq!(st.pid, Some(7));
        assert_eq!(st.pgid, None);
        assert_eq!(st.wait_status, 0);
        assert!(st.want_up && !st.ready && !st.paused && !st.finishing);
        assert!(st.is_up());
        assert_eq!(st.svstat_line(true), "true true true false 7 -1");
    }

    #[test]
    fn s6_status_35_byte_exit_and_signal() {
        let t = tai(1_700_000_000, 5);
        let exited = decode_status(&build35(t, t, 0, 3 << 8, 0b1000)).unwrap();
        assert!(!exited.is_up());
        assert_eq!(exited.exit_code(), Some(3));
        assert_eq!(exited.signal(), None);
        assert_eq!(exited.svstat_exitcode(), 3);
        assert_eq!(exited.svstat_signum(), -1);
        assert!(!exited.is_ready(), "down readiness is not reported as ready");
        assert_eq!(exited.svstat_line(false), "false false false false -1 3");

        let killed = decode_status(&build35(t, t, 0, 9, 0b1000)).unwrap();
        assert_eq!(killed.exit_code(), None);
        assert_eq!(killed.signal(), Some(9));
        assert!(!killed.core_dumped());
        assert_eq!(killed.svstat_exitcode(), -1);
        assert_eq!(killed.svstat_signum(), 9);

        let cored = decode_status(&build35(t, t, 0, 0x80 | 11, 0)).unwrap();
        assert_eq!(cored.signal(), Some(11));
        assert!(cored.core_dumped());
    }

    #[test]
    fn s6_status_up_hides_the_previous_death() {
        // Restarted after exiting 3: the wait status still says 3, s6-svstat says -1.
        let t = tai(1_700_000_000, 0);
        let st = decode_status(&build35(t, t, 42, 3 << 8, 0b1100)).unwrap();
        assert_eq!(st.exit_code(), Some(3));
        assert_eq!(st.svstat_exitcode(), -1);
        assert_eq!(st.up_pid(), Some(42));
        assert_eq!(st.svstat_line(true), "true true true true 42 -1");
    }

    #[test]
    fn s6_status_never_started_on_2_15() {
        // s6 2.15.1 writes, for a service with a `down` file it never started: no pid, wait
        // status 0, flags 0x09 (bit 0 + ready); s6-svstat prints exitcode -1 ("not started yet").
        let t = tai(1_700_000_000, 0);
        let st = decode_status(&build35(t, t, 0, 0, 0x09)).unwrap();
        assert_eq!(st.svstat_exitcode(), -1);
        assert_eq!(st.svstat_signum(), -1);
        assert_eq!(st.svstat_line(false), "false false false false -1 -1");
        // Earlier versions leave bit 0 clear: exitcode 0.
        let st = decode_status(&build35(t, t, 0, 0, 0x08)).unwrap();
        assert_eq!(st.svstat_exitcode(), 0);
    }

    #[test]
    fn s6_status_finishing_is_down() {
        // While ./finish runs the pid field holds finish's pid.
        let t = tai(1_700_000_000, 0);
        let st = decode_status(&build35(t, t, 99, 5 << 8, 0b0010)).unwrap();
        assert!(st.finishing);
        assert!(!st.is_up());
        assert_eq!(st.up_pid(), None);
        assert_eq!(st.svstat_exitcode(), 5);
        assert_eq!(st.svstat_line(false), "false false false false -1 5");
    }

    #[test]
    fn s6_status_flags_are_independent_bits() {
        let t = tai(0, 0);
        for flags in 0u8..=255 {
            let st = decode_status(&build35(t, t, 1, 0, flags)).unwrap();
            assert_eq!(st.paused, flags & 1 != 0);
            assert_eq!(st.finishing, flags & 2 != 0);
            assert_eq!(st.want_up, flags & 4 != 0);
            assert_eq!(st.ready, flags & 8 != 0);
        }
    }

    #[test]
    fn s6_status_43_byte_format_of_2_13() {
        let since = tai(1_750_000_000, 123_456_789);
        let ready = tai(1_750_000_001, 0);
        let st = decode_status(&build43(since, ready, 314, 314, 0, 0b1100)).unwrap();
        assert_eq!(st.since, at(1_750_000_000, 123_456_789));
        assert_eq!(st.ready_since, at(1_750_000_001, 0));
        assert_eq!(st.pid, Some(314));
        assert_eq!(st.pgid, Some(314));
        assert_eq!(st.wait_status, 0);
        assert!(st.want_up && st.ready && !st.paused && !st.finishing);
        assert_eq!(st.svstat_line(true), "true true true true 314 -1");

        // Down after SIGTERM; the pgid of the last instance is kept.
        let st = decode_status(&build43(since, ready, 0, 314, 15, 0b1000)).unwrap();
        assert_eq!(st.pid, None);
        assert_eq!(st.pgid, Some(314));
        assert_eq!(st.signal(), Some(15));
        assert_eq!(st.svstat_line(false), "false false false false -1 -1");

        // Exited 3, paused and finishing bits at offset 42, wait status at 40.
        let st = decode_status(&build43(since, ready, 77, 70, 3 << 8, 0b0011)).unwrap();
        assert!(st.paused && st.finishing && !st.want_up && !st.ready);
        assert_eq!(st.exit_code(), Some(3));
        assert_eq!(st.svstat_line(true), "false false true false -1 3");
    }

    #[test]
    fn s6_status_43_byte_unknown_pgid_is_none() {
        let t = tai(1_750_000_000, 0);
        // Never started: pgid 0.
        assert_eq!(decode_status(&build43(t, t, 0, 0, 0, 0)).unwrap().pgid, None);
        // getpgid() failed: pid_t -1 widened to u64.
        assert_eq!(decode_status(&build43(t, t, 5, u64::MAX, 0, 4)).unwrap().pgid, None);
    }

    #[test]
    fn s6_status_bad_sizes_are_rejected() {
        for n in [0usize, 1, 12, 34, 36, 42, 44, 64, 65, 1000] {
            match decode_status(&vec![0u8; n]) {
                Err(StatusError::BadSize(m)) => assert_eq!(m, n),
                other => panic!("{n} bytes: expected BadSize, got {other:?}"),
            }
        }
    }

    #[test]
    fn s6_tai64n_conversion_and_clamping() {
        assert_eq!(tai64n_to_system_time(&tai(0, 0)), SystemTime::UNIX_EPOCH);
        assert_eq!(tai64n_to_system_time(&tai(1, 999_999_999)), at(1, 999_999_999));
        assert_eq!(
            tai64n_to_system_time(&tai(-10, 500)),
            SystemTime::UNIX_EPOCH - Duration::from_secs(10) + Duration::from_nanos(500)
        );
        // Out-of-range nanoseconds are clamped, not carried.
        assert_eq!(tai64n_to_system_time(&tai(1, u32::MAX)), at(1, 999_999_999));
        // Extreme labels clamp to +-2^40 s.
        let mut zero = [0u8; 12];
        assert_eq!(tai64n_to_system_time(&zero), SystemTime::UNIX_EPOCH - Duration::from_secs(1 << 40));
        zero[..8].copy_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(tai64n_to_system_time(&zero), at(1 << 40, 0));
    }

    #[test]
    fn s6_normally_up_follows_the_down_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(normally_up(dir.path()).unwrap());
        std::fs::write(dir.path().join("down"), "").unwrap();
        assert!(!normally_up(dir.path()).unwrap());
        std::fs::remove_file(dir.path().join("down")).unwrap();
        std::os::unix::fs::symlink("nowhere", dir.path().join("down")).unwrap();
        assert!(normally_up(dir.path()).unwrap(), "dangling symlink counts as absent");
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(matches!(normally_up(&file), Err(StatusError::Io { .. })));
    }

    #[test]
    fn s6_read_status_missing_short_long_and_fifo() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_status(dir.path()).unwrap().is_none(), "no supervise/");
        let sup = dir.path().join("supervise");
        std::fs::create_dir(&sup).unwrap();
        assert!(read_status(dir.path()).unwrap().is_none(), "no status file");

        let t = tai(1_700_000_000, 0);
        std::fs::write(sup.join("status"), build35(t, t, 12, 0, 4)).unwrap();
        assert_eq!(read_status(dir.path()).unwrap().unwrap().pid, Some(12));

        std::fs::write(sup.join("status"), [0u8; 20]).unwrap();
        assert!(matches!(read_status(dir.path()), Err(StatusError::BadSize(20))));

        // The read is bounded: a megabyte is reported as "at least 65".
        std::fs::write(sup.join("status"), vec![0u8; 1 << 20]).unwrap();
        assert!(matches!(read_status(dir.path()), Err(StatusError::BadSize(65))));

        std::fs::remove_file(sup.join("status")).unwrap();
        nix::unistd::mkfifo(&sup.join("status"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        match read_status(dir.path()) {
            Err(StatusError::Io { path, .. }) => assert_eq!(path, sup.join("status")),
            other => panic!("expected Io error for a FIFO, got {other:?}"),
        }
    }

    proptest! {
        #[test]
        fn s6_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            match decode_status(&bytes) {
                Ok(st) => {
                    prop_assert!(bytes.len() == STATUS_SIZE || bytes.len() == STATUS_SIZE_WITH_PGID);
                    // Exercise every helper on arbitrary contents.
                    let _ = (st.is_up(), st.is_ready(), st.exit_code(), st.signal(), st.core_dumped());
                    let _ = (st.svstat_exitcode(), st.svstat_signum(), st.svstat_line(true));
                    prop_assert_eq!(st.is_up(), st.up_pid().is_some());
                }
                Err(StatusError::BadSize(n)) => prop_assert_eq!(n, bytes.len()),
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }

        #[test]
        fn s6_decode_valid_sizes_never_panic(
            bytes in prop_oneof![
                proptest::collection::vec(any::<u8>(), STATUS_SIZE),
                proptest::collection::vec(any::<u8>(), STATUS_SIZE_WITH_PGID),
            ]
        ) {
            let st = decode_status(&bytes).unwrap();
            let _ = st.svstat_line(false);
            let _ = (st.since, st.ready_since);
        }
    }
}
