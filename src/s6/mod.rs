//! Talking to s6 directly, through the files and FIFOs its documentation declares stable:
//! `supervise/status` (decoded by size), `supervise/control` and `supervise/lock` of a
//! service, and `.s6-svscan/control` of the scanner. No s6 program is spawned on a hot path.

pub mod control;
pub mod event;
pub mod status;

pub use control::{
    ControlError, Liveness, SupervisorCommand, rescan, scanner_pid, send_command, supervisor, supervisor_by,
    supervisor_in, supervisor_pid,
};
pub use status::{ServiceStatus, StatusError, decode_status, read_status};
