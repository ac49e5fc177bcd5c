//! What the volume says: profile discovery, intent, prior exit and `.env` port overrides.

use crate::model::{Intent, PriorExit, ProfileName};
use std::path::{Path, PathBuf};

/// The intent read from one `gateway_state.json`, with the warning to log if the file was bad.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IntentReading {
    pub intent: Intent,
    /// One human sentence naming the file and what is wrong with it; `None` when the file was
    /// fine or simply absent.
    pub warning: Option<String>,
}

/// Parses the bytes of a `gateway_state.json` (SPEC §5.2). `Err` says why it means no intent.
pub fn parse_intent(_bytes: &[u8]) -> Result<Intent, String> {
    todo!()
}

/// Reads `<profile_dir>/gateway_state.json`. Never blocks, never fails the pass.
pub fn read_intent(_profile_dir: &Path) -> IntentReading {
    todo!()
}

/// Parses `state/gateway.lifecycle.json`: `phase` `exited` → clean, `running` → unclean.
pub fn parse_prior_exit(_bytes: &[u8]) -> PriorExit {
    todo!()
}

/// Reads `<profile_dir>/state/gateway.lifecycle.json`.
pub fn read_prior_exit(_profile_dir: &Path) -> PriorExit {
    todo!()
}

/// Does this `.env` content set `API_SERVER_PORT`?
pub fn parse_env_sets_port(_bytes: &[u8]) -> bool {
    todo!()
}

/// Does `<profile_dir>/.env` set `API_SERVER_PORT`?
pub fn env_sets_port(_profile_dir: &Path) -> bool {
    todo!()
}

/// A named profile found under `profiles/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedDir {
    pub name: ProfileName,
    /// `$HERMES_HOME/profiles/<name>`.
    pub dir: PathBuf,
    /// The entry is a symlink to a directory: read through it, never write into it.
    pub via_symlink: bool,
}

/// An entry that has the `SOUL.md` marker but cannot be a profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedDir {
    /// The entry name, lossily decoded.
    pub raw: String,
    pub reason: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovery {
    /// Sorted by name.
    pub named: Vec<NamedDir>,
    pub skipped: Vec<SkippedDir>,
}

/// Lists `$HERMES_HOME/profiles/` (SPEC §5.1).
pub fn discover(_home: &Path) -> Discovery {
    todo!()
}
