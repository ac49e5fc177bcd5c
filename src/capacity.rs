//! The capacity guard (SPEC §6.6) as a pure rule, below both layers that use it: the planner
//! (which profiles get a slot) and the observe layer (SPEC §9.3: files of profiles over the cap
//! are not even read). `plan::capacity` re-exports it.

use crate::config::Config;
use crate::model::ProfileName;
use crate::world::ScannerObs;
use std::collections::BTreeSet;

/// How many named slots may exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// The smaller of `HERMES_RECONCILER_MAX_PROFILES` and what s6-svscan's limit leaves.
    pub named: usize,
    /// What s6-svscan's limit leaves for named slots: every slot is two services (it and its
    /// logger); entries the daemon does not own, the root slot and one unit for the kick
    /// entry are left out.
    pub scanner_named: usize,
}

pub fn capacity(cfg: &Config, scanner: &ScannerObs) -> Capacity {
    let units_left = (scanner.limit_units as usize).saturating_sub(scanner.foreign_units as usize + 1);
    let scanner_named = (units_left / 2).saturating_sub(1);
    Capacity { named: cfg.max_profiles.min(scanner_named), scanner_named }
}

/// The profiles that may have a slot: the root, every named profile that already has one, then
/// the others in name order while the total of named slots stays within `limit`.
///
/// `names` must be in name order (the root may come anywhere).
pub fn admitted<'a>(
    names: impl IntoIterator<Item = &'a ProfileName>,
    has_slot: impl Fn(&ProfileName) -> bool,
    limit: usize,
) -> BTreeSet<ProfileName> {
    // `has_slot` once per name: with 10,000 folders it was a fifth of a re-list's work.
    let names: Vec<(&ProfileName, bool)> =
        names.into_iter().map(|n| (n, !n.is_root() && has_slot(n))).collect();
    let existing = names.iter().filter(|(_, slot)| *slot).count();
    let mut budget = limit.saturating_sub(existing);
    let mut out = Vec::with_capacity(names.len().min(limit.saturating_add(1)));
    for (n, slot) in names {
        if n.is_root() || slot {
            out.push(n.clone());
        } else if budget > 0 {
            budget -= 1;
            out.push(n.clone());
        }
    }
    // Built from the (almost) sorted names at once, not by one search per insert.
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> ProfileName {
        if s == "default" { ProfileName::root() } else { ProfileName::parse_named(s).unwrap() }
    }

    #[test]
    fn existing_slots_first_then_name_order() {
        let names: Vec<ProfileName> = ["default", "a", "b", "c", "d"].iter().map(|s| n(s)).collect();
        let with_slot = [n("d")];
        let got = admitted(&names, |p| with_slot.contains(p), 2);
        assert_eq!(got, [n("default"), n("a"), n("d")].into_iter().collect());
        let got = admitted(&names, |_| false, 0);
        assert_eq!(got, [n("default")].into_iter().collect());
    }
}
