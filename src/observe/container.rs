//! The container's main command, from `/proc/*/cmdline` (SPEC §5.4).

use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerMode {
    /// Nothing special: supervise gateways.
    Normal,
    /// Main command `gateway run` without `--no-supervise`.
    LegacyGatewayRun,
    /// Main command `dashboard`: gateways are not supervised here.
    Dashboard,
}

/// The main command in one process's argv (NUL-separated `cmdline` bytes): the arguments after
/// the first token ending in `main-wrapper.sh`, with a leading `hermes` dropped.
pub fn main_command(_cmdline: &[u8]) -> Option<Vec<String>> {
    todo!()
}

/// Classifies a main command.
pub fn classify(_command: &[String]) -> ContainerMode {
    todo!()
}

/// Scans `<proc_root>/<pid>/cmdline` in pid order; the first process with a main command decides.
pub fn detect(_proc_root: &Path) -> ContainerMode {
    todo!()
}
