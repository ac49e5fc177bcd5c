//! Why a decision was taken, as the one word a `container-boot.log` line and `status` carry
//! (SPEC §8.1). A closed set: control flow matches on the variant, never on the word.

use serde::{Serialize, Serializer};
use std::fmt;
use std::ops::Deref;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Skipped: the profile is over the capacity cap (SPEC §6.6).
    Capacity,
    /// Skipped: the directory's name is not a valid profile name.
    InvalidName,
    /// Skipped: the directory is named like the root profile (`profiles/default`).
    ReservedName,
    /// Skipped: a dashboard container supervises no gateway (SPEC §5.4).
    DashboardContainer,
    /// Registered down or not started: the gateway multiplexes profiles (SPEC §6.3).
    Multiplexed,
    /// Unregistered: the profile is gone and the removal grace has passed.
    ProfileGone,
    /// Registered down or not started: in the `single` topology the root's gateway serves
    /// this profile (SPEC §6.7).
    Folded,
    /// Held down: the gateway is crash-looping (SPEC §6.8, `action=backoff`).
    CrashLoop,
}

impl Reason {
    /// The reasons a profile is skipped (gets no slot, or no start).
    pub fn is_skip(self) -> bool {
        !matches!(self, Reason::ProfileGone | Reason::CrashLoop)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Capacity => "capacity",
            Reason::InvalidName => "invalid-name",
            Reason::ReservedName => "reserved-name",
            Reason::DashboardContainer => "dashboard-container",
            Reason::Multiplexed => "multiplexed",
            Reason::ProfileGone => "profile-gone",
            Reason::Folded => "folded",
            Reason::CrashLoop => "crash-loop",
        }
    }
}

impl Deref for Reason {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Serialised as its word (SPEC §8.1).
impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}
