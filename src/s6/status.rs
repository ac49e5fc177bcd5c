//! Decoder for `supervise/status` (35 bytes on s6 2.11, 2.12 and >= 2.14; 43 bytes on 2.13.x).

use std::path::Path;
use std::time::SystemTime;

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
    pub pgid: Option<u64>,
    /// Raw wait status of the last death (as from waitpid).
    pub wait_status: u16,
    pub paused: bool,
    pub finishing: bool,
    pub want_up: bool,
    pub ready: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("status file has {0} bytes; expected 35 or 43")]
    BadSize(usize),
    #[error("reading {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

pub fn decode_status(_bytes: &[u8]) -> Result<ServiceStatus, StatusError> {
    todo!()
}

/// Reads `<service_dir>/supervise/status`; `Ok(None)` if it does not exist.
pub fn read_status(_service_dir: &Path) -> Result<Option<ServiceStatus>, StatusError> {
    todo!()
}
