//! Incremental planning for the daemon's partial passes (issue 15): a change of one profile
//! costs work proportional to that profile, not to the world.
//!
//! [`plan_dirty`] gives exactly the plan [`super::plan_with`] gives for the same dirty set
//! (property-tested below), but only when the change cannot move anything outside the dirty
//! profiles: no capacity admission, no port of another profile and no folded root intent can
//! depend on it. Otherwise it declines (`None`) and the caller plans the whole world. The
//! cases it covers are the steady state: a profile with a slot changed one of its files, or a
//! profile whose slot exists went away (while no profile waits for a slot).
//!
//! Pure, like the rest of [`crate::plan`]: the context it needs ([`Maintained`]) is kept by the
//! daemon, which updates it from the dirty profiles only.

use super::{
    Plan, ProfilePlan, Role, Step, plan_adopt, plan_create, ports, removal, render, render_input, topology,
};
use crate::config::{Config, Topology};
use crate::model::ProfileName;
use crate::warning::{Finding, Warning};
use crate::world::{ContainerMode, Observed, ProfileObs, SlotObs};
use std::collections::{BTreeMap, BTreeSet};

/// What the daemon maintains between passes, so that a partial pass need not recompute it
/// from every profile.
#[derive(Clone, Copy, Debug)]
pub struct Maintained<'a> {
    /// The named profiles of the world that have no slot (new, deferred or over the cap).
    pub slotless: &'a BTreeSet<ProfileName>,
    /// `obs.previous_ports` is exactly what port assignment gave the last pass's profiles (it
    /// was saved, or nothing changed): then a profile that keeps or loses its port moves no
    /// other profile's.
    pub ports_clean: bool,
    /// Renderings of the profiles' slot files, reused while their inputs are unchanged (what
    /// `plan_with` is given; the result is the same with or without it).
    pub memo: Option<&'a super::render::RenderMemo>,
}

/// The profile named `name` in `obs` (root first, then named profiles in name order): a binary
/// search, not a scan.
pub fn find_profile<'o>(obs: &'o Observed, name: &ProfileName) -> Option<&'o ProfileObs> {
    let start = usize::from(obs.profiles.first().is_some_and(|p| p.name.is_root()));
    if name.is_root() {
        return obs.profiles[..start].first();
    }
    let named = &obs.profiles[start..];
    named.binary_search_by(|p| p.name.cmp(name)).ok().map(|i| &named[i])
}

/// Plans a continuous partial pass over `dirty` alone, or `None` when the change may reach
/// beyond them (then [`super::plan_with`] must decide). `hold`: slots whose profile is gone
/// but still within the removal grace.
///
/// Declines when: the container runs the dashboard; the topology is `single` (the root's
/// intent folds in every named one); ports are not clean, or the range is full; a dirty
/// profile has no slot (it needs the capacity guard and room in s6-svscan's limit); a dirty
/// profile's port membership changed (its `.env` started or stopped setting the port, or its
/// recorded port is out of range); or a dirty profile is gone while another waits for a slot
/// (the gone one no longer counts against the cap: another may be admitted).
pub fn plan_dirty(
    obs: &Observed,
    cfg: &Config,
    m: &Maintained<'_>,
    dirty: &BTreeSet<ProfileName>,
    hold: &BTreeSet<ProfileName>,
) -> Option<Plan> {
    let range = usize::from(ports::PORT_END - ports::PORT_BASE);
    if obs.mode == ContainerMode::Dashboard || !m.ports_clean || obs.previous_ports.len() >= range {
        return None;
    }
    let topo = topology(obs, cfg);
    if topo == Topology::Single {
        return None;
    }
    // Root first, then names: the order of `plan_with` (its warnings and its profiles).
    let mut order: Vec<&ProfileName> = dirty.iter().collect();
    order.sort_by_key(|n| !n.is_root());
    let mut present: Vec<&ProfileObs> = Vec::new();
    let mut gone: Vec<&ProfileName> = Vec::new();
    for name in order {
        match find_profile(obs, name) {
            Some(p) => {
                if !p.name.is_root() && !obs.scandir.slots.contains_key(name) {
                    return None;
                }
                let port = obs.previous_ports.get(name.as_str());
                let in_range = port.is_none_or(|p| (ports::PORT_BASE..ports::PORT_END).contains(p));
                if p.env_sets_port == port.is_some() || !in_range {
                    return None;
                }
                present.push(p);
            }
            None if !m.slotless.is_empty() => return None,
            None => gone.push(name),
        }
    }
    let mut plan = Plan {
        mode: obs.mode,
        migrate_legacy: false,
        ports: obs.previous_ports.clone(),
        ports_changed: false,
        clear_hidden: Vec::new(),
        clear_kick: false,
        profiles: Vec::new(),
        skipped: Vec::new(),
        deferred: Vec::new(),
        warnings: obs.warnings.clone(),
        topology: topo,
        folded: Vec::new(),
    };
    for name in &gone {
        if plan.ports.contains_key(name.as_str()) {
            std::sync::Arc::make_mut(&mut plan.ports).remove(name.as_str());
            plan.ports_changed = true;
        }
    }
    for p in present {
        plan.profiles.extend(plan_present(obs, cfg, p, &plan.ports, m.memo, &mut plan.warnings));
    }
    for name in gone {
        if obs.scandir.slots.contains_key(name) && !hold.contains(name) {
            plan.profiles.push(removal(name));
        }
    }
    plan.profiles.sort_by(|a, b| (!a.name.is_root(), &a.name).cmp(&(!b.name.is_root(), &b.name)));
    Some(plan)
}

/// One admitted profile's steps outside the `single` topology, as `plan_with` decides them.
fn plan_present(
    obs: &Observed,
    cfg: &Config,
    p: &ProfileObs,
    ports: &BTreeMap<String, u16>,
    memo: Option<&super::render::RenderMemo>,
    warnings: &mut Vec<Warning>,
) -> Option<ProfilePlan> {
    let topo = topology(obs, cfg);
    if let Some(w) = &p.intent_warning {
        warnings.push(Warning::new(Finding::InProfile {
            profile: p.name.clone(),
            inner: Box::new(w.finding.clone()),
        }));
    }
    if let Some(w) = &p.yaml_warning
        && p.name.is_root()
    {
        warnings.push(Warning::new(Finding::InProfile {
            profile: p.name.clone(),
            inner: Box::new(w.finding.clone()),
        }));
    }
    let intent = p.intent.clone();
    let runs = intent.runs();
    let prior_state = if runs { Some("running".to_string()) } else { intent.effective().map(str::to_owned) };
    let role = Role { topo, folded_into_root: None, runs, prior_state };
    let rendered = render::rendered(&render_input(obs, cfg, p, ports.get(p.name.as_str()).copied()), memo);
    let pp = match obs.scandir.slots.get(&p.name) {
        None => plan_create(p, &intent, &rendered, &role, super::PassKind::Continuous),
        Some(slot) => plan_adopt(p, &intent, &rendered, slot, &role, obs.scanner.pid.is_some()),
    };
    (!pp.steps.is_empty() || pp.decision.is_some()).then_some(pp)
}

/// A slot as the next pass would observe it once `steps` (one profile's, in order) have all
/// succeeded: the daemon keeps its world current from what it wrote instead of reading the
/// slot back (`None`: no slot). A created or confirmed slot is taken as supervised (the
/// daemon waits for that, and checks the lock itself); anything written by someone else is
/// seen by the next full re-list.
pub fn settle_slot(mut slot: Option<SlotObs>, steps: &[Step]) -> Option<SlotObs> {
    for s in steps {
        match s {
            Step::Create { files, up, record, .. } => {
                slot = Some(SlotObs {
                    record: Some(std::sync::Arc::new(record.clone())),
                    files: std::sync::Arc::new(
                        files.iter().map(|f| (f.rel, Some(f.content.as_bytes().into()))).collect(),
                    ),
                    has_down: !up,
                    supervised: true,
                    event_open: false,
                })
            }
            Step::Remove { .. } => slot = None,
            Step::SweepPidFiles { .. } => {}
            _ => {
                let Some(o) = slot.as_mut() else { continue };
                match s {
                    Step::WriteFiles { files, .. } => {
                        let mine = std::sync::Arc::make_mut(&mut o.files);
                        for f in files {
                            mine.insert(f.rel, Some(f.content.as_bytes().into()));
                        }
                    }
                    Step::Command { up, .. } => o.has_down = !up,
                    Step::WriteRecord { record, .. } => o.record = Some(std::sync::Arc::new(record.clone())),
                    Step::EnsureSupervised { .. } => o.supervised = true,
                    Step::CloseEvent { .. } => o.event_open = false,
                    _ => {}
                }
            }
        }
    }
    slot
}

#[cfg(test)]
mod tests {
    use super::super::{PassKind, PassOptions, plan_with};
    use super::*;
    use crate::config::RawSettings;
    use crate::model::Intent;
    use proptest::prelude::*;

    fn cfg(topo: Option<Topology>, max: usize) -> Config {
        let mut c = Config::resolve(&RawSettings::default()).unwrap();
        c.topology = topo;
        c.max_profiles = max;
        c.run_as = None;
        c
    }

    fn name(s: &str) -> ProfileName {
        if s == "default" { ProfileName::root() } else { ProfileName::parse_named(s).unwrap() }
    }

    fn profile(n: &str, desired: Option<&str>, env_port: bool) -> ProfileObs {
        let intent = Intent { desired_state: desired.map(String::from), gateway_state: None };
        ProfileObs { env_sets_port: env_port, ..crate::plan::tests::profile(n, intent) }
    }

    fn world(profiles: Vec<ProfileObs>) -> Observed {
        crate::plan::tests::observed(profiles)
    }

    /// Applies a pass's steps to the world as the next pass would observe it.
    fn settle(obs: &mut Observed, cfg: &Config, kind: PassKind) {
        let p = plan_with(obs, cfg, &PassOptions { kind, only: None, hold: &BTreeSet::new(), memo: None });
        for pp in &p.profiles {
            match settle_slot(obs.scandir.slots.get(&pp.name).cloned(), &pp.steps) {
                Some(s) => obs.scandir.slots.insert(pp.name.clone(), s),
                None => obs.scandir.slots.remove(&pp.name),
            };
        }
        obs.previous_ports = p.ports;
    }

    fn slotless(obs: &Observed) -> BTreeSet<ProfileName> {
        obs.profiles
            .iter()
            .filter(|p| !p.name.is_root() && !obs.scandir.slots.contains_key(&p.name))
            .map(|p| p.name.clone())
            .collect()
    }

    /// One change to a profile between passes.
    #[derive(Clone, Debug)]
    enum Change {
        Desired(Option<&'static str>),
        EnvPort(bool),
        Delete,
        Warn,
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            4 => proptest::option::of(prop_oneof![Just("running"), Just("stopped"), Just("x")]).prop_map(Change::Desired),
            1 => any::<bool>().prop_map(Change::EnvPort),
            1 => Just(Change::Delete),
            1 => Just(Change::Warn),
        ]
    }

    static ANSWERED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    proptest! {
        /// Whenever the incremental planner answers, its plan is the whole-world planner's
        /// for the same dirty set; and a change of intents alone in a world where every
        /// profile has its slot is always answered incrementally.
        #[test]
        fn dirty_plan_is_the_whole_world_plan_for_the_dirty_profiles(
            specs in proptest::collection::btree_map(
                "[a-z][a-z0-9]{0,4}",
                (proptest::option::of(prop_oneof![Just("running"), Just("stopped")]), any::<bool>()),
                0..14),
            // Mostly existing profiles (by index into `specs`), sometimes a new name.
            picks in proptest::collection::vec((0usize..20, change()), 1..5),
            fresh in proptest::option::of(("[a-z][a-z0-9]{0,4}", change())),
            topo in prop_oneof![Just(None), Just(Some(Topology::Multiplex)), Just(Some(Topology::PerProfile)), Just(Some(Topology::Single))],
            max in 0usize..16,
            held in any::<bool>(),
            root_dirty in any::<bool>(),
        ) {
            let cfg = cfg(topo, max);
            let names: Vec<&String> = specs.keys().filter(|n| n.as_str() != "default").collect();
            let mut changes: BTreeMap<String, Change> = picks
                .iter()
                .filter(|_| !names.is_empty())
                .map(|(i, c)| (names[i % names.len()].clone(), c.clone()))
                .collect();
            changes.extend(fresh);
            let mut profiles = vec![profile("default", Some("running"), false)];
            profiles.extend(specs.iter().filter(|(n, _)| n.as_str() != "default").map(|(n, (d, e))| profile(n, *d, *e)));
            let mut obs = world(profiles);
            settle(&mut obs, &cfg, PassKind::Boot);
            // The settled world is what the daemon keeps: a whole pass over it does nothing.
            let again = plan_with(&obs, &cfg, &PassOptions { kind: PassKind::Continuous, only: None, hold: &BTreeSet::new(), memo: None });
            prop_assert!(again.profiles.iter().all(|pp| pp.steps.is_empty()), "{:?}", again.profiles);
            // The daemon's render memo changes nothing, here and after the changes below.
            let memo = super::render::RenderMemo::default();
            let memoized = |obs: &Observed| {
                plan_with(obs, &cfg, &PassOptions { kind: PassKind::Continuous, only: None, hold: &BTreeSet::new(), memo: Some(&memo) })
            };
            prop_assert_eq!(&memoized(&obs), &again);
            let only_intents = changes.values().all(|c| matches!(c, Change::Desired(_)))
                && changes.keys().all(|n| obs.scandir.slots.contains_key(&name(n)) || n == "default")
                && topology(&obs, &cfg) != Topology::Single;
            let mut dirty: BTreeSet<ProfileName> = BTreeSet::new();
            for (n, c) in &changes {
                if n == "default" { continue; }
                let nm = name(n);
                dirty.insert(nm.clone());
                let pos = obs.profiles.iter().position(|p| p.name == nm);
                match (c, pos) {
                    (Change::Desired(d), Some(i)) => obs.profiles[i].intent.desired_state = d.map(String::from),
                    (Change::Desired(d), None) => {
                        // A new profile.
                        let at = obs.profiles.iter().position(|p| !p.name.is_root() && p.name > nm).unwrap_or(obs.profiles.len());
                        obs.profiles.insert(at, profile(n, *d, false));
                    }
                    (Change::EnvPort(e), Some(i)) => obs.profiles[i].env_sets_port = *e,
                    (Change::Delete, Some(i)) => { obs.profiles.remove(i); }
                    (Change::Warn, Some(i)) => {
                        obs.profiles[i].intent_warning = Some(Warning::about(n, "content", format!("{n}: bad")));
                    }
                    _ => {}
                }
            }
            if root_dirty {
                dirty.insert(ProfileName::root());
                obs.profiles[0].intent.desired_state = Some("stopped".into());
            }
            let plain = plan_with(&obs, &cfg, &PassOptions { kind: PassKind::Continuous, only: None, hold: &BTreeSet::new(), memo: None });
            prop_assert_eq!(memoized(&obs), plain);
            let hold: BTreeSet<ProfileName> = if held { dirty.clone() } else { BTreeSet::new() };
            let sl = slotless(&obs);
            let m = Maintained { slotless: &sl, ports_clean: true, memo: None };
            let whole = plan_with(&obs, &cfg, &PassOptions { kind: PassKind::Continuous, only: Some(&dirty), hold: &hold, memo: None });
            // The render memo changes nothing (primed by the world before, used twice).
            let memo = crate::plan::render::RenderMemo::default();
            let _ = plan_with(&obs, &cfg, &PassOptions { kind: PassKind::Continuous, only: None, hold: &BTreeSet::new(), memo: Some(&memo) });
            for _ in 0..2 {
                let with_memo = Maintained { memo: Some(&memo), ..m };
                prop_assert_eq!(plan_dirty(&obs, &cfg, &with_memo, &dirty, &hold), plan_dirty(&obs, &cfg, &m, &dirty, &hold));
            }
            match plan_dirty(&obs, &cfg, &m, &dirty, &hold) {
                Some(p) => {
                    prop_assert_eq!(p, whole);
                    ANSWERED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                None => prop_assert!(!only_intents, "declined a change of intents only"),
            }
        }
    }

    #[test]
    fn the_property_is_not_vacuous() {
        // Runs the property's cases in this test's thread too, then checks that many of them
        // were answered incrementally (the rest are compared only through `None`).
        dirty_plan_is_the_whole_world_plan_for_the_dirty_profiles();
        assert!(ANSWERED.load(std::sync::atomic::Ordering::Relaxed) > 50);
    }

    #[test]
    fn finds_profiles_by_binary_search() {
        let obs = world(vec![
            profile("default", None, false),
            profile("a", None, false),
            profile("c", None, false),
        ]);
        assert_eq!(find_profile(&obs, &ProfileName::root()).unwrap().name, ProfileName::root());
        assert_eq!(find_profile(&obs, &name("c")).unwrap().name, name("c"));
        assert!(find_profile(&obs, &name("b")).is_none());
        assert!(find_profile(&world(vec![]), &ProfileName::root()).is_none());
    }

    #[test]
    fn declines_when_a_port_record_was_not_saved_or_a_slot_is_missing() {
        let cfg = cfg(None, 10);
        let mut obs = world(vec![profile("default", None, false), profile("a", Some("running"), false)]);
        settle(&mut obs, &cfg, PassKind::Boot);
        let dirty: BTreeSet<ProfileName> = [name("a")].into();
        let none = BTreeSet::new();
        let clean = Maintained { slotless: &none, ports_clean: true, memo: None };
        assert!(plan_dirty(&obs, &cfg, &clean, &dirty, &none).is_some());
        assert!(plan_dirty(&obs, &cfg, &Maintained { ports_clean: false, ..clean }, &dirty, &none).is_none());
        obs.scandir.slots.remove(&name("a"));
        assert!(plan_dirty(&obs, &cfg, &clean, &dirty, &none).is_none());
    }
}
