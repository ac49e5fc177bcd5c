//! The hash maps of the re-list's hot path (issue 15): keyed by paths and profile names, looked
//! up several times per profile at every re-list.
//!
//! std's `HashMap` hashes with SipHash-1-3, which was a tenth of a steady re-list's work on
//! keys of a few dozen bytes. foldhash (already in the dependency tree, the default hasher of
//! `hashbrown`) is several times faster on such keys and, like std's, seeded at random per
//! process: names the volume's user picks cannot be chosen to collide on purpose.

/// A `HashMap` with foldhash's seeded hasher. Make one with `FastMap::default()`.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A `HashSet` with foldhash's seeded hasher.
pub type FastSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;
