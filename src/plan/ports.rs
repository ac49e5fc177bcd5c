//! Gateway port assignment (SPEC §7.4): pure, deterministic, stable across restarts.
//!
//! Invariants: every port is in `[PORT_BASE, PORT_END)`; no two profiles share one while the
//! range has room; a profile keeps the port recorded for it while that port is still its own;
//! a profile that left is forgotten, releasing its port.

use crate::model::ROOT_PROFILE;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

pub const PORT_BASE: u16 = 9200;
pub const PORT_END: u16 = 9800;
const RANGE: u16 = PORT_END - PORT_BASE;

/// The port a profile would get with no competition: SHA-256 of its name, first 8 bytes as a
/// big-endian integer, modulo the range.
pub fn hashed_port(name: &str) -> u16 {
    let digest = Sha256::digest(name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    PORT_BASE + (u64::from_be_bytes(first) % u64::from(RANGE)) as u16
}

/// Assigns ports to `profiles` (names in any order; the root, [`ROOT_PROFILE`], is taken first,
/// then the others in name order): [`PortAssigner`] over all of them.
///
/// `previous` is what `.gateway-ports.json` recorded; entries for profiles not listed are
/// dropped, entries out of range or already taken by an earlier profile are re-assigned.
/// A profile gets no port only when the whole range is taken.
pub fn assign(profiles: &BTreeSet<String>, previous: &BTreeMap<String, u16>) -> BTreeMap<String, u16> {
    let mut a = PortAssigner::new(profiles.iter().map(String::as_str), previous);
    for name in in_port_order(profiles.iter().map(String::as_str)) {
        a.take(name);
    }
    a.finish()
}

/// `names` (in name order) with the root moved first: the order in which profiles take ports.
pub fn in_port_order<'a>(names: impl Iterator<Item = &'a str> + Clone) -> impl Iterator<Item = &'a str> {
    let root = names.clone().filter(|n| *n == ROOT_PROFILE);
    root.chain(names.filter(|n| *n != ROOT_PROFILE))
}

/// The port rule, one profile at a time, so that a pass can assign ports while it walks the
/// profiles in batches, before it knows which of the later ones want a port.
///
/// Rule: the recorded ports of every *listed* profile (every profile that may have a slot this
/// pass) are reserved first, whether or not that profile turns out to want one (its `.env` may
/// set its own port: it is only read in its batch); then each profile that wants a port, the
/// root first and then the others in name order, gets its recorded port, else the first free
/// port from its hashed one. A reserved port whose profile does not take it stays free of
/// newcomers for this pass and is released from the record.
#[derive(Debug)]
pub struct PortAssigner {
    taken: BTreeSet<u16>,
    /// Recorded ports kept for listed profiles (at most the range's size).
    reserved: BTreeMap<String, u16>,
    out: BTreeMap<String, u16>,
}

impl PortAssigner {
    /// Reserves the recorded ports of `listed` (name order); a port recorded twice goes to the
    /// first (the root first).
    pub fn new<'a>(listed: impl Iterator<Item = &'a str> + Clone, previous: &BTreeMap<String, u16>) -> Self {
        let mut taken = BTreeSet::new();
        let mut reserved = BTreeMap::new();
        if !previous.is_empty() {
            for name in in_port_order(listed) {
                if let Some(&port) = previous.get(name)
                    && (PORT_BASE..PORT_END).contains(&port)
                    && taken.insert(port)
                {
                    reserved.insert(name.to_string(), port);
                }
            }
        }
        PortAssigner { taken, reserved, out: BTreeMap::new() }
    }

    /// The port of `name`, which wants one; called in port order (the root first, then name
    /// order). `None` when the range is full.
    pub fn take(&mut self, name: &str) -> Option<u16> {
        if let Some(port) = self.reserved.remove(name) {
            self.out.insert(name.to_string(), port);
            return Some(port);
        }
        if self.taken.len() == usize::from(RANGE) {
            // Full: scanning the range for each of the remaining profiles would cost RANGE
            // steps apiece.
            return None;
        }
        let start = hashed_port(name) - PORT_BASE;
        let port = (0..RANGE).map(|i| PORT_BASE + (start + i) % RANGE).find(|p| !self.taken.contains(p))?;
        self.taken.insert(port);
        self.out.insert(name.to_string(), port);
        Some(port)
    }

    /// The assignments of the profiles that took a port: the record to keep.
    pub fn finish(self) -> BTreeMap<String, u16> {
        self.out
    }

    /// The assignments so far.
    pub fn assigned(&self) -> &BTreeMap<String, u16> {
        &self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn hashed_port_is_stable_and_in_range() {
        assert_eq!(hashed_port("default"), hashed_port("default"));
        for n in ["a", "b", "default", "work"] {
            assert!((PORT_BASE..PORT_END).contains(&hashed_port(n)));
        }
    }

    #[test]
    fn collision_takes_next_free_in_name_order() {
        // Find two names that hash to the same port.
        let mut seen = BTreeMap::new();
        let (a, b) = (0..)
            .map(|i| format!("p{i}"))
            .find_map(|n| seen.insert(hashed_port(&n), n.clone()).map(|old| (old, n)))
            .unwrap();
        let (first, second) = if a < b { (a, b) } else { (b, a) };
        let got = assign(&set(&[&first, &second]), &BTreeMap::new());
        let p = hashed_port(&first);
        assert_eq!(got[&first], p);
        assert_eq!(got[&second], if p + 1 == PORT_END { PORT_BASE } else { p + 1 });
    }

    #[test]
    fn recorded_ports_are_kept_and_departed_released() {
        let prev: BTreeMap<String, u16> =
            [("a".to_string(), 9300), ("gone".to_string(), 9301), ("bad".to_string(), 80)].into();
        let got = assign(&set(&["a", "bad", "new"]), &prev);
        assert_eq!(got["a"], 9300);
        assert!(!got.contains_key("gone"));
        assert!((PORT_BASE..PORT_END).contains(&got["bad"]));
    }

    proptest! {
        #[test]
        fn distinct_and_stable(names in proptest::collection::btree_set("[a-z][a-z0-9]{0,6}", 0..120),
                               extra in "[a-z][a-z0-9]{0,6}") {
            let first = assign(&names, &BTreeMap::new());
            prop_assert_eq!(first.len(), names.len());
            let ports: BTreeSet<u16> = first.values().copied().collect();
            prop_assert_eq!(ports.len(), names.len());
            // Adding a profile never moves an existing one.
            let mut more = names.clone();
            more.insert(extra.clone());
            let second = assign(&more, &first);
            for (n, p) in &first {
                prop_assert_eq!(second[n], *p);
            }
            let ports2: BTreeSet<u16> = second.values().copied().collect();
            prop_assert_eq!(ports2.len(), more.len());
        }
    }

    #[test]
    fn a_full_range_still_keeps_recorded_ports_of_late_names() {
        let names: BTreeSet<String> = (0..(RANGE as usize + 50)).map(|i| format!("n{i:04}")).collect();
        let last = names.iter().next_back().unwrap().clone();
        let prev: BTreeMap<String, u16> = [(last.clone(), PORT_BASE + 7)].into();
        let got = assign(&names, &prev);
        assert_eq!(got.len(), RANGE as usize);
        assert_eq!(got[&last], PORT_BASE + 7);
        assert_eq!(got.values().collect::<BTreeSet<_>>().len(), RANGE as usize);
    }

    #[test]
    fn range_exhaustion_leaves_the_rest_without_a_port() {
        let names: BTreeSet<String> = (0..(RANGE as usize + 5)).map(|i| format!("n{i:04}")).collect();
        let got = assign(&names, &BTreeMap::new());
        assert_eq!(got.len(), RANGE as usize);
    }
}
