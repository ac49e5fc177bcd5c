//! A warning for people, with the key that says which problem it is about.
//!
//! The text of a warning may change while its cause stays the same (a JSON error's column moves
//! with each rewrite of a hostile file, an excerpt changes with the content). Repeats are
//! therefore recognised by [`Warning::key`] — the file (or profile) and the kind of problem —
//! never by the text (SPEC §9.3: the same warning about the same file at most once a minute,
//! whatever its text).

use crate::escape::Escaped;
use crate::model::ProfileName;
use serde::{Serialize, Serializer};
use std::fmt;
use std::ops::Deref;
use std::path::PathBuf;

/// Where a finding belongs, for `status` and the daemon's status record: control flow picks
/// findings by scope, never by their text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The scandir itself (shown by `status` under "scandir").
    Scandir,
    /// One profile (its files, its slot, its admission).
    Profile,
    /// The volume as a whole (listing `profiles/`, the port record).
    Volume,
    /// The daemon's own work with s6-svscan (rescans, re-publication, its leftovers); passing,
    /// so not kept for `status`.
    Supervision,
}

/// Which bound kept a profile from getting a slot (SPEC §6.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapacityBound {
    /// s6-svscan's service limit leaves room for `named` named slots.
    Scanner { limit_units: u32, named: usize },
    /// `HERMES_RECONCILER_MAX_PROFILES`.
    Configured { max: usize },
}

/// Every problem the daemon reports to people: the typed vocabulary (issue 11 item 1). The
/// `Display` of each is the sentence printed; [`Finding::key`] says which problem it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// A file the daemon reads is unusable. `kind` is a stable word naming the problem (part of
    /// the key); `text` is the whole sentence, naming the file, and may vary while the problem
    /// persists (a JSON error's column, an excerpt).
    File { subject: String, kind: &'static str, text: String },
    /// A finding about one profile's file, as the plan reports it for that profile.
    InProfile { profile: ProfileName, inner: Box<Finding> },
    /// A scandir entry is a symlink to nothing (S6-FACTS "Scanning").
    DanglingScandirEntry { path: PathBuf },
    /// A profile gets no slot: a capacity bound is reached.
    OverCapacity { profile: ProfileName, bound: CapacityBound },
    /// At boot, a slot whose profile is gone (removed later, after the grace).
    SlotWithoutProfile { slot: String },
    /// A marked directory under `profiles/` that cannot be a profile.
    SkippedDir { path: PathBuf, reason: String },
    /// The volume's `profiles/` could not be listed or an entry examined.
    Discovery { text: String },
    /// `.gateway-ports.json` could not be written.
    PortsNotSaved { error: String },
    /// A PID-namespace leftover of the previous container could not be removed.
    LeftoverNotRemoved { error: String },
    /// One of the daemon's own hidden scandir leftovers could not be deleted (`kick`: the
    /// throwaway entry of older daemons).
    LeftoverNotCleared { kick: bool, error: String },
    /// s6-svscan does not run on the scandir: new slots start when it does.
    ScannerNotRunning { scandir: PathBuf },
    /// s6-svscan could not be asked to rescan.
    RescanNotRequested { error: String },
    /// A slot s6-svscan did not pick up could not be re-published.
    NotRepublished { slot: String, error: String },
}

impl Finding {
    pub fn scope(&self) -> Scope {
        match self {
            Finding::DanglingScandirEntry { .. } => Scope::Scandir,
            Finding::InProfile { .. }
            | Finding::OverCapacity { .. }
            | Finding::SlotWithoutProfile { .. }
            | Finding::SkippedDir { .. }
            | Finding::LeftoverNotRemoved { .. } => Scope::Profile,
            Finding::File { .. } | Finding::Discovery { .. } | Finding::PortsNotSaved { .. } => Scope::Volume,
            Finding::LeftoverNotCleared { .. }
            | Finding::ScannerNotRunning { .. }
            | Finding::RescanNotRequested { .. }
            | Finding::NotRepublished { .. } => Scope::Supervision,
        }
    }

    /// Stable identity of the problem: for a file, the file and the kind of problem (so a
    /// varying text is still the same warning, SPEC §9.3); for a profile's file finding, the
    /// file's key; for the rest, whose text does not vary while the cause persists, the text.
    pub fn key(&self) -> String {
        match self {
            Finding::File { subject, kind, .. } => format!("{subject}\u{0}{kind}"),
            Finding::InProfile { inner, .. } => inner.key(),
            other => other.to_string(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::File { text, .. } | Finding::Discovery { text } => f.write_str(text),
            Finding::InProfile { profile, inner } => write!(f, "profile {profile}: {inner}"),
            Finding::DanglingScandirEntry { path } => write!(
                f,
                "scandir entry {} is a dangling symlink: s6-svscan >= 2.12 abandons every scan that meets it, so no slot starts or stops until it is removed",
                path.display()
            ),
            Finding::OverCapacity { profile, bound: CapacityBound::Scanner { limit_units, named } } => {
                write!(
                    f,
                    "profile {profile}: not given a slot: s6-svscan's limit of {limit_units} services leaves room for {named} named slots"
                )
            }
            Finding::OverCapacity { profile, bound: CapacityBound::Configured { max } } => write!(
                f,
                "profile {profile}: not given a slot: HERMES_RECONCILER_MAX_PROFILES={max} named slots exist or are planned"
            ),
            Finding::SlotWithoutProfile { slot } => {
                write!(f, "slot {slot} has no profile; the daemon removes it after the removal grace")
            }
            Finding::SkippedDir { path, reason } => write!(f, "{}: skipped: {reason}", Escaped::new(path)),
            Finding::PortsNotSaved { error } => write!(f, "port assignments not saved: {error}"),
            Finding::LeftoverNotRemoved { error } => {
                write!(f, "leftover of the previous container not removed: {error}")
            }
            Finding::LeftoverNotCleared { kick: false, error } => write!(f, "leftover not cleared: {error}"),
            Finding::LeftoverNotCleared { kick: true, error } => {
                write!(f, "leftover {} not cleared: {error}", crate::layout::slot::KICK_ENTRY)
            }
            Finding::ScannerNotRunning { scandir } => write!(
                f,
                "s6-svscan is not running on {}; the new slots start when it does",
                scandir.display()
            ),
            Finding::RescanNotRequested { error } => write!(f, "rescan not requested: {error}"),
            Finding::NotRepublished { slot, error } => write!(f, "slot {slot} not re-published: {error}"),
        }
    }
}

/// One warning: a [`Finding`], with its sentence and key computed once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// [`Finding::key`]: two warnings with the same key are the same warning, whatever their
    /// texts.
    pub key: String,
    /// The finding's sentence, naming the file or profile.
    pub text: String,
    pub finding: Finding,
}

impl Warning {
    pub fn new(finding: Finding) -> Self {
        Warning { key: finding.key(), text: finding.to_string(), finding }
    }

    /// A warning about a file `subject` (a path) of the given kind.
    pub fn about(subject: impl fmt::Display, kind: &'static str, text: String) -> Self {
        Warning::new(Finding::File { subject: subject.to_string(), kind, text })
    }

    pub fn scope(&self) -> Scope {
        self.finding.scope()
    }
}

impl From<Finding> for Warning {
    fn from(f: Finding) -> Self {
        Warning::new(f)
    }
}

impl Deref for Warning {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Serialised as its text only (the key is internal).
impl Serialize for Warning {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// At most `max` bytes of untrusted text, for a warning: control characters, quotes,
/// backslashes and anything not ASCII are written as `\xNN` escapes (per byte), so an excerpt
/// can neither break nor forge a log line, and `…` marks a cut.
pub fn excerpt(raw: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, b) in raw.bytes().enumerate() {
        if i >= max {
            out.push('…');
            break;
        }
        if b.is_ascii_graphic() && b != b'"' && b != b'\\' || b == b' ' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ignores_the_text() {
        let a = Warning::about("/h/p/gateway_state.json", "json", "column 3".into());
        let b = Warning::about("/h/p/gateway_state.json", "json", "column 9".into());
        assert_eq!(a.key, b.key);
        assert_ne!(a.key, Warning::about("/h/p/gateway_state.json", "value", "x".into()).key);
        assert_ne!(a.key, Warning::about("/h/q/gateway_state.json", "json", "column 3".into()).key);
        assert_eq!(&*a, "column 3");
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"column 3\"");
    }

    #[test]
    fn excerpts_are_bounded_and_escaped() {
        assert_eq!(excerpt("running", 32), "running");
        assert_eq!(excerpt("a\nb\x1b[2J\"\\é", 32), "a\\x0ab\\x1b[2J\\x22\\x5c\\xc3\\xa9");
        let long = "x".repeat(1 << 20);
        assert_eq!(excerpt(&long, 8), "xxxxxxxx…");
    }
}
