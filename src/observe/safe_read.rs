//! Bounded reads of untrusted files under `$HERMES_HOME`.

use std::path::Path;

/// Largest state file the daemon reads (SPEC §5.2).
pub const MAX_STATE_FILE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("does not exist")]
    Missing,
    #[error("is a symbolic link, which is not followed")]
    Symlink,
    #[error("is not a regular file (it is a {0})")]
    NotRegular(&'static str),
    #[error("is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("cannot be read: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads at most `limit` bytes of a regular file, without following a symlink in the last
/// component and without ever blocking on a FIFO or device.
pub fn read_bounded(_path: &Path, _limit: u64) -> Result<Vec<u8>, ReadError> {
    todo!()
}
