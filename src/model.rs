//! The vocabulary shared by every layer: profile names, intent, prior exit, slot records.
//!
//! Everything here is pure data with validation; nothing touches the filesystem.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The implicit profile at `$HERMES_HOME` itself. Its slot is always `gateway-default`.
pub const ROOT_PROFILE: &str = "default";

// The scandir names (owned by [`crate::layout::slot`]), used here to map profile names to
// slot names and back. No profile slot can take [`KICK_ENTRY`]: profile names never start
// with `-`.
pub use crate::layout::slot::{KICK_ENTRY, REMOVAL_INFIX, SLOT_PREFIX, STAGING_SUFFIX};

/// s6-svscan refuses service names longer than this many bytes.
pub const S6_NAME_MAX: usize = 251;

/// The longest scandir entry name the daemon builds for a profile of name length `n` is the
/// removal name `.gateway-<n bytes>.rm-XXXXXXXX`: `n + 21` bytes.
const LONGEST_OVERHEAD: usize = 1 + SLOT_PREFIX.len() + REMOVAL_INFIX.len() + 8;

/// Longest valid profile name: every name the daemon builds from it (`gateway-<name>`, the
/// staging and the removal names) fits s6-svscan's 251-byte limit. 251 − 21 = 230.
pub const MAX_NAME_LEN: usize = S6_NAME_MAX - LONGEST_OVERHEAD;

/// A validated profile name: `^[a-z0-9][a-z0-9_-]*$`, at most [`MAX_NAME_LEN`] bytes.
///
/// Invariant: a `ProfileName` is always safe to use as a single path component and inside a
/// single-quoted shell word, because the character set excludes `/`, `.`, quotes and spaces.
///
/// Shared, not copied: a name is cloned into every set and map a pass keeps (the world, the
/// admitted and slotless sets, the caches...), several times per profile at each re-list
/// (issue 15), so a clone only counts a reference. Compared, ordered and hashed by content.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProfileName(std::sync::Arc<str>);

/// Why a directory name under `profiles/` is not a usable profile name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("the name is empty")]
    Empty,
    #[error(
        "the name must match ^[a-z0-9][a-z0-9_-]*$ (lowercase letters, digits, '_' and '-', not starting with '_' or '-')"
    )]
    BadCharacters,
    #[error("the name is {len} bytes long; the longest allowed is {max}")]
    TooLong { len: usize, max: usize },
    #[error("'default' is the root profile's slot; a profiles/default directory would collide with it")]
    Reserved,
}

impl ProfileName {
    /// The root profile's name, `default`.
    pub fn root() -> Self {
        ProfileName(std::sync::Arc::from(ROOT_PROFILE))
    }

    /// Validates a named profile's directory name. `default` is refused: it is the root's.
    pub fn parse_named(raw: &str) -> Result<Self, NameError> {
        let name = Self::parse_any(raw)?;
        if name.is_root() {
            return Err(NameError::Reserved);
        }
        Ok(name)
    }

    /// Validates a name without refusing `default` (used for slot names read back from the
    /// scandir, where `gateway-default` is the root's slot).
    pub fn parse_any(raw: &str) -> Result<Self, NameError> {
        Self::check_any(raw)?;
        Ok(ProfileName(std::sync::Arc::from(raw)))
    }

    /// What [`Self::parse_any`] says of `raw`, without making a name (no allocation).
    pub fn check_any(raw: &str) -> Result<(), NameError> {
        let bytes = raw.as_bytes();
        let Some(&first) = bytes.first() else {
            return Err(NameError::Empty);
        };
        let body_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-';
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) || !bytes.iter().all(|&b| body_ok(b)) {
            return Err(NameError::BadCharacters);
        }
        if bytes.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong { len: bytes.len(), max: MAX_NAME_LEN });
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        &*self.0 == ROOT_PROFILE
    }

    /// `gateway-<name>`: the slot's directory name in the scandir.
    pub fn slot_name(&self) -> String {
        format!("{SLOT_PREFIX}{}", self.0)
    }

    /// `.gateway-<name>.new`: where a new slot is built before it is published by rename.
    pub fn staging_name(&self) -> String {
        format!(".{SLOT_PREFIX}{}{STAGING_SUFFIX}", self.0)
    }

    /// `.gateway-<name>.rm-<nonce>`: the hidden name a slot is renamed to while it is removed.
    pub fn removal_name(&self, nonce: u32) -> String {
        format!(".{SLOT_PREFIX}{}{REMOVAL_INFIX}{nonce:08x}", self.0)
    }

    /// The profile name of a scandir entry `gateway-<name>`, if it is one of ours.
    pub fn from_slot_name(entry: &str) -> Option<Self> {
        Self::parse_any(entry.strip_prefix(SLOT_PREFIX)?).ok()
    }

    /// The name part of a scandir entry `gateway-<name>` that is one of ours, borrowed.
    pub fn slot_name_part(entry: &str) -> Option<&str> {
        entry.strip_prefix(SLOT_PREFIX).filter(|n| Self::check_any(n).is_ok())
    }
}

/// A name is looked up in sets and maps by its text (hash and order are those of the `str`):
/// a known name is found, and shared, without making a new one.
impl std::borrow::Borrow<str> for ProfileName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ProfileName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        Self::parse_any(&s)
    }
}

impl From<ProfileName> for String {
    fn from(n: ProfileName) -> String {
        n.0.to_string()
    }
}

impl fmt::Display for ProfileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Is this scandir entry one of the daemon's own hidden staging or removal directories?
pub fn is_own_hidden_entry(entry: &str) -> bool {
    let Some(rest) = entry.strip_prefix('.').and_then(|e| e.strip_prefix(SLOT_PREFIX)) else {
        return false;
    };
    let valid = |name: &str| name == "-kick" || ProfileName::check_any(name).is_ok();
    if let Some(name) = rest.strip_suffix(STAGING_SUFFIX) {
        return valid(name);
    }
    if let Some((name, nonce)) = rest.rsplit_once(REMOVAL_INFIX) {
        return nonce.len() == 8 && nonce.bytes().all(|b| b.is_ascii_hexdigit()) && valid(name);
    }
    false
}

/// Longest intent value kept (SPEC §9.2); a longer one reads as [`INVALID_INTENT`].
pub const MAX_INTENT_LEN: usize = 64;

/// What an intent value that is too long or has other characters reads as: not `running`,
/// and bounded, so nothing the daemon stores or prints grows with a file's content.
pub const INVALID_INTENT: &str = "invalid";

/// Is this an intent value the daemon keeps as it is: 1 to [`MAX_INTENT_LEN`] bytes of
/// `[A-Za-z0-9_.-]`?
pub fn is_valid_intent_value(v: &str) -> bool {
    (1..=MAX_INTENT_LEN).contains(&v.len())
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// What `gateway_state.json` says, as read (both fields verbatim).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Intent {
    /// The operator's intent, used verbatim when present.
    pub desired_state: Option<String>,
    /// The gateway's report on itself; an intent source only when a slot is created.
    pub gateway_state: Option<String>,
}

impl Intent {
    /// The effective intent of SPEC §5.2: `desired_state`, else `gateway_state` with `draining`
    /// and `degraded` read as `running`, else none.
    pub fn effective(&self) -> Option<&str> {
        if let Some(d) = &self.desired_state {
            return Some(d);
        }
        match self.gateway_state.as_deref() {
            Some("draining") | Some("degraded") => Some("running"),
            other => other,
        }
    }

    /// Only `running` is run intent.
    pub fn runs(&self) -> bool {
        self.effective() == Some("running")
    }
}

/// How the gateway's previous run ended, from `state/gateway.lifecycle.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PriorExit {
    Clean,
    Unclean,
    Unknown,
}

impl PriorExit {
    pub fn as_str(self) -> &'static str {
        match self {
            PriorExit::Clean => "clean",
            PriorExit::Unclean => "unclean",
            PriorExit::Unknown => "unknown",
        }
    }
}

/// The daemon's bookkeeping for one slot, kept in `<slot>/data/reconciler.json`.
///
/// Invariant: `applied_desired` is the `desired_state` value the daemon last turned into a
/// want-state (or found when it adopted the slot); a command is issued only when the volume's
/// `desired_state` differs from it, so a gateway's own reports never fight an operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRecord {
    /// `desired_state` at the time of the last applied decision (`None`: there was none).
    pub applied_desired: Option<String>,
    /// Whether that decision wanted the gateway up.
    pub applied_up: bool,
    /// SHA-256 (hex) of the rendered files as last written.
    pub digest: String,
    /// The last action taken on the slot and its local time, for `status` (informational:
    /// never part of a decision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_action_at: Option<String>,
}

impl SlotRecord {
    /// A record for a decision; the informational fields are filled in by the apply layer.
    pub fn new(applied_desired: Option<String>, applied_up: bool, digest: String) -> Self {
        SlotRecord { applied_desired, applied_up, digest, last_action: None, last_action_at: None }
    }

    /// Do two records describe the same applied state (ignoring the informational fields)?
    pub fn same_state(&self, other: &SlotRecord) -> bool {
        self.applied_desired == other.applied_desired
            && self.applied_up == other.applied_up
            && self.digest == other.digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_pattern() {
        for ok in ["a", "0", "work", "my-bot_2", "9z"] {
            assert!(ProfileName::parse_named(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "_a", "A", "Work", "a.b", "a b", "a/b", ".x", "é", "a\n"] {
            assert!(ProfileName::parse_named(bad).is_err(), "{bad:?}");
        }
        assert_eq!(ProfileName::parse_named("default"), Err(NameError::Reserved));
        assert!(ProfileName::parse_any("default").is_ok());
    }

    #[test]
    fn longest_name_fits_every_built_name() {
        assert_eq!(MAX_NAME_LEN, 230);
        let at = "a".repeat(MAX_NAME_LEN);
        let name = ProfileName::parse_named(&at).unwrap();
        assert!(name.slot_name().len() <= S6_NAME_MAX);
        assert!(name.staging_name().len() <= S6_NAME_MAX);
        assert_eq!(name.removal_name(u32::MAX).len(), S6_NAME_MAX);
        let over = "a".repeat(MAX_NAME_LEN + 1);
        assert_eq!(
            ProfileName::parse_named(&over),
            Err(NameError::TooLong { len: MAX_NAME_LEN + 1, max: MAX_NAME_LEN })
        );
    }

    #[test]
    fn own_hidden_entries_are_recognised() {
        let n = ProfileName::parse_named("bot").unwrap();
        assert!(is_own_hidden_entry(&n.staging_name()));
        assert!(is_own_hidden_entry(&n.removal_name(7)));
        assert!(!is_own_hidden_entry(".s6-svscan"));
        assert!(!is_own_hidden_entry(".gateway-bot"));
        assert!(!is_own_hidden_entry(".gateway-Bot.new"));
        assert!(!is_own_hidden_entry(".gateway-bot.rm-xyz"));
        assert_eq!(ProfileName::from_slot_name("gateway-bot"), Some(n));
        assert_eq!(ProfileName::from_slot_name("gateway-"), None);
        assert_eq!(ProfileName::from_slot_name("other"), None);
    }

    #[test]
    fn effective_intent_table() {
        let i = |d: Option<&str>, g: Option<&str>| Intent {
            desired_state: d.map(String::from),
            gateway_state: g.map(String::from),
        };
        for g in [None, Some("running"), Some("stopped"), Some("startup_failed")] {
            assert!(i(Some("running"), g).runs());
            assert!(!i(Some("stopped"), g).runs());
        }
        for (g, runs) in [
            ("running", true),
            ("draining", true),
            ("degraded", true),
            ("starting", false),
            ("startup_failed", false),
            ("stopped", false),
            ("weird", false),
        ] {
            assert_eq!(i(None, Some(g)).runs(), runs, "{g}");
        }
        assert!(!i(None, None).runs());
        assert_eq!(i(None, Some("draining")).effective(), Some("running"));
        assert_eq!(i(Some("paused"), Some("running")).effective(), Some("paused"));
    }
}
