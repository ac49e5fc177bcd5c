//! Pure tests of the planner: observed data in, steps and decisions out. No I/O.

use super::*;
use crate::config::RawSettings;
use crate::world::ScandirObs;
use crate::world::SkippedDir;
use proptest::prelude::*;
use std::path::PathBuf;

fn config(multiplex: bool, max: usize) -> Config {
    let mut c = Config::resolve(&RawSettings::default()).unwrap();
    c.topology = multiplex.then_some(crate::config::Topology::Multiplex);
    c.max_profiles = max;
    c.run_as = None;
    c
}

fn intent(d: Option<&str>, g: Option<&str>) -> Intent {
    Intent { desired_state: d.map(String::from), gateway_state: g.map(String::from) }
}

/// A profile as observed with intent `i` (also used by the incremental planner's tests).
pub(super) fn profile(name: &str, i: Intent) -> ProfileObs {
    let name = if name == "default" { ProfileName::root() } else { ProfileName::parse_named(name).unwrap() };
    let dir = if name.is_root() {
        PathBuf::from("/opt/data")
    } else {
        PathBuf::from(format!("/opt/data/profiles/{name}"))
    };
    ProfileObs {
        name,
        dir,
        via_symlink: false,
        intent: i,
        intent_warning: None,
        prior_exit: PriorExit::Unknown,
        env_sets_port: false,
        yaml: Default::default(),
        yaml_warning: None,
        pid_leftovers: None,
    }
}

/// A normal container's world of `profiles`, no slot yet.
pub(super) fn observed(profiles: Vec<ProfileObs>) -> Observed {
    Observed {
        mode: ContainerMode::Normal,
        root_state_file_exists: true,
        profiles,
        skipped: vec![],
        scandir: ScandirObs { exists: true, ..Default::default() },
        scanner: Default::default(),
        previous_ports: Default::default(),
        warnings: vec![],
        with_contenv: false,
    }
}

/// The slot the planner would have created, as the observe layer would read it back.
fn slot_as_created(obs: &Observed, cfg: &Config, name: &str) -> SlotObs {
    let p = plan(obs, cfg, PassKind::Boot);
    let pp = p.profiles.iter().find(|pp| pp.name.as_str() == name).unwrap();
    let Some(Step::Create { files, up, record, .. }) =
        pp.steps.iter().find(|s| matches!(s, Step::Create { .. }))
    else {
        panic!("no create step for {name}")
    };
    SlotObs {
        record: Some(std::sync::Arc::new(record.clone())),
        files: std::sync::Arc::new(
            files.iter().map(|f| (f.rel, Some(f.content.as_bytes().into()))).collect(),
        ),
        has_down: !up,
        supervised: true,
        event_open: false,
    }
}

fn create_of(p: &Plan, name: &str) -> Option<bool> {
    p.profiles.iter().find(|pp| pp.name.as_str() == name)?.steps.iter().find_map(|s| match s {
        Step::Create { up, .. } => Some(*up),
        _ => None,
    })
}

#[test]
fn intent_table_on_create() {
    let gateway_states = [
        None,
        Some("running"),
        Some("draining"),
        Some("degraded"),
        Some("starting"),
        Some("startup_failed"),
        Some("stopped"),
        Some("weird"),
    ];
    for multiplex in [false, true] {
        let cfg = config(multiplex, 400);
        for desired in [None, Some("running"), Some("stopped"), Some("paused")] {
            for g in gateway_states {
                let i = intent(desired, g);
                let runs = match desired {
                    Some(d) => d == "running",
                    None => matches!(g, Some("running" | "draining" | "degraded")),
                };
                let obs = observed(vec![profile("default", i.clone()), profile("bot", i)]);
                let p = plan(&obs, &cfg, PassKind::Boot);
                assert_eq!(create_of(&p, "default"), Some(runs), "root {desired:?} {g:?}");
                assert_eq!(
                    create_of(&p, "bot"),
                    Some(runs && !multiplex),
                    "bot {desired:?} {g:?} mux={multiplex}"
                );
                let d =
                    p.profiles.iter().find(|pp| pp.name.as_str() == "bot").unwrap().decision.clone().unwrap();
                let want = if runs && !multiplex { ActionKind::Started } else { ActionKind::Registered };
                assert_eq!(d.action, want);
                assert_eq!(d.reason.as_deref(), (runs && multiplex).then_some("multiplexed"));
            }
        }
    }
}

/// The profiles whose pid-file leftovers the plan sweeps.
fn swept(p: &Plan) -> Vec<&str> {
    p.profiles
        .iter()
        .filter(|pp| pp.steps.iter().any(|s| matches!(s, Step::SweepPidFiles { .. })))
        .map(|pp| pp.name.as_str())
        .collect()
}

#[test]
fn boot_pass_sweeps_only_for_created_unsymlinked_profiles() {
    let cfg = config(false, 400);
    let mut linked = profile("linked", intent(None, None));
    linked.via_symlink = true;
    let mut obs =
        observed(vec![profile("default", intent(None, None)), profile("a", intent(None, None)), linked]);
    let existing = slot_as_created(&obs, &cfg, "a");
    obs.scandir.slots.insert(ProfileName::parse_named("a").unwrap(), existing);
    let p = plan(&obs, &cfg, PassKind::Boot);
    assert_eq!(swept(&p), vec!["default"]);
    assert!(swept(&plan(&obs, &cfg, PassKind::Continuous)).is_empty());
}

#[test]
fn boot_pass_sweeps_unless_the_listing_saw_no_leftover() {
    let cfg = config(false, 400);
    let with = |name: &str, seen: Option<bool>| ProfileObs {
        pid_leftovers: seen,
        ..profile(name, intent(None, None))
    };
    let obs = observed(vec![
        profile("default", intent(None, None)),
        with("clean", Some(false)),
        with("stale", Some(true)),
        with("unlisted", None),
    ]);
    let p = plan(&obs, &cfg, PassKind::Boot);
    assert_eq!(swept(&p), vec!["default", "stale", "unlisted"]);
}

#[test]
fn second_pass_over_its_own_result_does_nothing() {
    let cfg = config(false, 400);
    let mut obs = observed(vec![
        profile("default", intent(Some("running"), None)),
        profile("a", intent(None, Some("stopped"))),
        profile("b", intent(Some("stopped"), Some("running"))),
    ]);
    let first = plan(&obs, &cfg, PassKind::Boot);
    for name in ["default", "a", "b"] {
        let slot = slot_as_created(&obs, &cfg, name);
        obs.scandir.slots.insert(ProfileName::parse_any(name).unwrap(), slot);
    }
    obs.previous_ports = first.ports.clone();
    let second = plan(&obs, &cfg, PassKind::Boot);
    assert_eq!(second.step_count(), 0, "{second:#?}");
    assert_eq!(second.decisions().count(), 0);
}

#[test]
fn adopting_a_foreign_slot_records_without_command() {
    let cfg = config(false, 400);
    let mut obs = observed(vec![profile("default", intent(Some("running"), None))]);
    let mut slot = slot_as_created(&obs, &cfg, "default");
    slot.record = None;
    slot.has_down = true;
    obs.scandir.slots.insert(ProfileName::root(), slot);
    let p = plan(&obs, &cfg, PassKind::Boot);
    let pp = &p.profiles[0];
    assert!(pp.decision.is_none());
    match pp.steps.as_slice() {
        [Step::WriteRecord { record, .. }] => {
            assert_eq!(record.applied_desired.as_deref(), Some("running"));
            assert!(!record.applied_up);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn only_a_new_desired_state_value_commands() {
    let cfg = config(false, 400);
    let base = observed(vec![profile("default", intent(Some("running"), None))]);
    let slot = slot_as_created(&base, &cfg, "default");
    // (new desired, new gateway) -> expected command
    let cases: [(Option<&str>, Option<&str>, Option<bool>); 6] = [
        (Some("running"), Some("stopped"), None), // gateway reports alone never command
        (Some("running"), Some("startup_failed"), None),
        (Some("stopped"), None, Some(false)),
        (Some("paused"), Some("running"), Some(false)),
        (None, Some("stopped"), None), // desired removed: not a new intent
        (None, None, None),
    ];
    for (d, g, want) in cases {
        let mut obs = observed(vec![profile("default", intent(d, g))]);
        obs.scandir.slots.insert(ProfileName::root(), slot.clone());
        let p = plan(&obs, &cfg, PassKind::Continuous);
        let cmd = p.profiles.iter().flat_map(|pp| &pp.steps).find_map(|s| match s {
            Step::Command { up, .. } => Some(*up),
            _ => None,
        });
        assert_eq!(cmd, want, "{d:?} {g:?}");
    }
}

#[test]
fn desired_state_back_after_removal_commands_again() {
    let cfg = config(false, 400);
    let obs0 = observed(vec![profile("default", intent(Some("running"), None))]);
    let mut slot = slot_as_created(&obs0, &cfg, "default");
    std::sync::Arc::make_mut(slot.record.as_mut().unwrap()).applied_desired = None;
    let mut obs = observed(vec![profile("default", intent(Some("running"), None))]);
    obs.scandir.slots.insert(ProfileName::root(), slot);
    let p = plan(&obs, &cfg, PassKind::Continuous);
    assert!(p.profiles[0].steps.contains(&Step::Command { name: ProfileName::root(), up: true }));
    assert_eq!(p.profiles[0].decision.as_ref().unwrap().action, ActionKind::Started);
}

#[test]
fn multiplex_never_brings_named_up_but_applies_stops() {
    let cfg = config(true, 400);
    let obs0 = observed(vec![profile("bot", intent(Some("stopped"), None))]);
    let slot = slot_as_created(&obs0, &cfg, "bot");
    let mut obs = observed(vec![profile("bot", intent(Some("running"), None))]);
    obs.scandir.slots.insert(ProfileName::parse_named("bot").unwrap(), slot.clone());
    let p = plan(&obs, &cfg, PassKind::Continuous);
    let pp = p.profiles.iter().find(|pp| pp.name.as_str() == "bot").unwrap();
    assert!(!pp.steps.iter().any(|s| matches!(s, Step::Command { .. })));
    assert_eq!(pp.decision.as_ref().unwrap().reason.as_deref(), Some("multiplexed"));

    let mut up_slot = slot;
    std::sync::Arc::make_mut(up_slot.record.as_mut().unwrap()).applied_desired = Some("running".into());
    let mut obs = observed(vec![profile("bot", intent(Some("stopped"), None))]);
    obs.scandir.slots.insert(ProfileName::parse_named("bot").unwrap(), up_slot);
    let p = plan(&obs, &cfg, PassKind::Continuous);
    let pp = p.profiles.iter().find(|pp| pp.name.as_str() == "bot").unwrap();
    assert!(pp.steps.contains(&Step::Command { name: pp.name.clone(), up: false }));
}

#[test]
fn edited_file_is_rewritten_without_command() {
    let cfg = config(false, 400);
    let mut obs = observed(vec![profile("default", intent(Some("running"), None))]);
    let mut slot = slot_as_created(&obs, &cfg, "default");
    std::sync::Arc::make_mut(&mut slot.files).insert("run", Some(b"#!/bin/sh\nexec evil\n"[..].into()));
    std::sync::Arc::make_mut(&mut slot.files).insert("finish", None);
    obs.scandir.slots.insert(ProfileName::root(), slot);
    let p = plan(&obs, &cfg, PassKind::Continuous);
    let pp = &p.profiles[0];
    match pp.steps.as_slice() {
        [Step::WriteFiles { files, .. }] => {
            let rels: Vec<&str> = files.iter().map(|f| f.rel).collect();
            assert_eq!(rels, vec!["run", "finish"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(pp.decision.as_ref().unwrap().action, ActionKind::Updated);
}

#[test]
fn capacity_guard_counts_existing_slots_and_goes_by_name() {
    let cfg = config(false, 2);
    let names = ["default", "a", "b", "c", "d"];
    let mut obs = observed(names.iter().map(|n| profile(n, intent(None, None))).collect());
    let slot_d = slot_as_created(&obs, &cfg, "a"); // any slot content will do for "d"
    obs.scandir.slots.insert(ProfileName::parse_named("d").unwrap(), slot_d);
    let p = plan(&obs, &cfg, PassKind::Boot);
    let created: Vec<&str> = p
        .profiles
        .iter()
        .filter(|pp| pp.steps.iter().any(|s| matches!(s, Step::Create { .. })))
        .map(|pp| pp.name.as_str())
        .collect();
    assert_eq!(created, vec!["default", "a"]);
    let skipped: Vec<&str> = p
        .decisions()
        .filter(|d| d.reason.as_deref() == Some("capacity"))
        .map(|d| d.profile.as_str())
        .collect();
    assert_eq!(skipped, vec!["b", "c"]);
}

#[test]
fn decisions_are_root_first_then_names_then_skipped_entries() {
    let cfg = config(false, 1);
    let mut obs = observed(vec![
        profile("default", intent(None, None)),
        profile("b", intent(None, None)),
        profile("c", intent(None, None)),
    ]);
    obs.skipped.push(SkippedDir { raw: "Bad Name".into(), reason: "bad".into() });
    obs.skipped.push(SkippedDir { raw: "default".into(), reason: "reserved".into() });
    let p = plan(&obs, &cfg, PassKind::Boot);
    let order: Vec<(&str, Option<&str>)> =
        p.decisions().map(|d| (d.profile.as_str(), d.reason.as_deref())).collect();
    assert_eq!(
        order,
        vec![
            ("default", None),
            ("b", None),
            ("c", Some("capacity")),
            ("Bad Name", Some("invalid-name")),
            ("default", Some("reserved-name")),
        ]
    );
}

#[test]
fn legacy_migration_only_at_boot_without_state_file() {
    let cfg = config(false, 400);
    let mut obs = observed(vec![profile("default", intent(None, None))]);
    obs.mode = ContainerMode::LegacyGatewayRun;
    obs.root_state_file_exists = false;
    let p = plan(&obs, &cfg, PassKind::Boot);
    assert!(p.migrate_legacy);
    assert_eq!(create_of(&p, "default"), Some(true));
    assert!(!plan(&obs, &cfg, PassKind::Continuous).migrate_legacy);
    let mut no_sup = cfg.clone();
    no_sup.no_supervise = true;
    assert!(!plan(&obs, &no_sup, PassKind::Boot).migrate_legacy);
    obs.root_state_file_exists = true;
    let p = plan(&obs, &cfg, PassKind::Boot);
    assert!(!p.migrate_legacy);
    assert_eq!(create_of(&p, "default"), Some(false));
}

#[test]
fn dashboard_does_nothing_but_report() {
    let cfg = config(false, 400);
    let mut obs = observed(vec![profile("default", intent(Some("running"), None))]);
    obs.mode = ContainerMode::Dashboard;
    obs.scandir.hidden.push(".gateway-x.new".into());
    let p = plan(&obs, &cfg, PassKind::Boot);
    assert_eq!(p.step_count(), 0);
    let d: Vec<_> = p.decisions().collect();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].reason.as_deref(), Some("dashboard-container"));
}

#[test]
fn env_port_override_gets_no_port() {
    let cfg = config(false, 400);
    let mut own = profile("own", intent(None, None));
    own.env_sets_port = true;
    let obs = observed(vec![profile("default", intent(None, None)), own]);
    let p = plan(&obs, &cfg, PassKind::Boot);
    assert!(p.ports.contains_key("default"));
    assert!(!p.ports.contains_key("own"));
    assert!(p.ports_changed);
}

proptest! {
    /// Whatever the volume and scandir hold, planning is total and its own result is a fixed
    /// point: applying a boot pass's creations leaves a second pass with nothing to do.
    #[test]
    fn plan_is_total_and_converges(
        specs in proptest::collection::btree_map(
            "[a-z][a-z0-9]{0,5}",
            (proptest::option::of(prop_oneof![Just("running"), Just("stopped"), Just("x")]),
             proptest::option::of(prop_oneof![Just("running"), Just("draining"), Just("starting")])),
            0..20),
        multiplex in any::<bool>(),
        max in 0usize..25,
    ) {
        let cfg = config(multiplex, max);
        let mut profiles = vec![profile("default", intent(Some("running"), None))];
        profiles.extend(specs.iter().filter(|(n, _)| n.as_str() != "default").map(|(n, (d, g))| profile(n, intent(*d, *g))));
        let mut obs = observed(profiles);
        let first = plan(&obs, &cfg, PassKind::Boot);
        let named_created = first.profiles.iter()
            .filter(|pp| !pp.name.is_root() && pp.steps.iter().any(|s| matches!(s, Step::Create { .. })))
            .count();
        prop_assert!(named_created <= max);
        for pp in &first.profiles {
            if pp.steps.iter().any(|s| matches!(s, Step::Create { .. })) {
                let slot = slot_as_created(&obs, &cfg, pp.name.as_str());
                obs.scandir.slots.insert(pp.name.clone(), slot);
            }
        }
        obs.previous_ports = first.ports.clone();
        let second = plan(&obs, &cfg, PassKind::Continuous);
        let actionable = second.profiles.iter().filter(|pp| !pp.steps.is_empty()).count();
        prop_assert_eq!(actionable, 0);
        prop_assert!(!second.ports_changed);
    }
}

#[test]
fn capacity_guard_respects_the_scanner_limit_with_loggers() {
    // -C 40 with 5 foreign services: (40 - 5 - 1) / 2 = 17 slots, root included: 16 named.
    let cfg = config(false, 400);
    let mut profiles = vec![profile("default", intent(None, None))];
    profiles.extend((0..30).map(|i| profile(&format!("p{i:02}"), intent(None, None))));
    let mut obs = observed(profiles);
    obs.scanner.limit_units = 40;
    obs.scanner.foreign_units = 5;
    let p = plan(&obs, &cfg, PassKind::Boot);
    let created =
        p.profiles.iter().filter(|pp| pp.steps.iter().any(|s| matches!(s, Step::Create { .. }))).count();
    assert_eq!(created, 17);
    assert_eq!(p.decisions().filter(|d| d.reason.as_deref() == Some("capacity")).count(), 14);
    assert!(2 * created + 5 < 40);
}

#[test]
fn unsupervised_slot_is_confirmed_only_when_a_scanner_runs() {
    let cfg = config(false, 400);
    let mut obs = observed(vec![profile("default", intent(None, None))]);
    let mut slot = slot_as_created(&obs, &cfg, "default");
    slot.supervised = false;
    obs.scandir.slots.insert(ProfileName::root(), slot);
    obs.previous_ports = plan(&obs, &cfg, PassKind::Boot).ports;
    assert_eq!(plan(&obs, &cfg, PassKind::Continuous).step_count(), 0);
    obs.scanner.pid = Some(1);
    let p = plan(&obs, &cfg, PassKind::Continuous);
    assert_eq!(p.profiles[0].steps, vec![Step::EnsureSupervised { name: ProfileName::root() }]);
    assert!(p.profiles[0].decision.is_none());
}

#[test]
fn an_open_event_dir_is_closed_first_with_no_decision() {
    let cfg = config(false, 400);
    let mut obs = observed(vec![profile("default", intent(Some("running"), None))]);
    let mut slot = slot_as_created(&obs, &cfg, "default");
    slot.event_open = true;
    std::sync::Arc::make_mut(slot.record.as_mut().unwrap()).applied_desired = Some("stopped".into());
    obs.scandir.slots.insert(ProfileName::root(), slot);
    obs.previous_ports = plan(&obs, &cfg, PassKind::Boot).ports;
    let p = plan(&obs, &cfg, PassKind::Continuous);
    // Before the command: an up makes the supervisor write into every event/ entry.
    assert_eq!(p.profiles[0].steps[0], Step::CloseEvent { name: ProfileName::root() });
    assert!(matches!(p.profiles[0].steps[1], Step::Command { up: true, .. }));
    // Closing alone is no boot-log decision.
    std::sync::Arc::make_mut(
        obs.scandir.slots.get_mut(&ProfileName::root()).unwrap().record.as_mut().unwrap(),
    )
    .applied_desired = Some("running".into());
    let p = plan(&obs, &cfg, PassKind::Continuous);
    assert_eq!(p.profiles[0].steps, vec![Step::CloseEvent { name: ProfileName::root() }]);
    assert!(p.profiles[0].decision.is_none());
}

#[test]
fn dangling_scandir_symlinks_are_warned_on_full_passes() {
    let cfg = config(false, 400);
    let mut obs = observed(vec![profile("default", intent(None, None))]);
    obs.scanner.dangling.push("broken".into());
    let p = plan(&obs, &cfg, PassKind::Boot);
    assert!(
        p.warnings.iter().any(|w| w.contains("/run/service/broken is a dangling symlink")),
        "{:?}",
        p.warnings
    );
    let only = BTreeSet::from([ProfileName::root()]);
    let p = plan_with(
        &obs,
        &cfg,
        &PassOptions { kind: PassKind::Continuous, only: Some(&only), hold: &BTreeSet::new(), memo: None },
    );
    assert!(p.warnings.is_empty());
}

#[test]
fn a_briefly_missing_or_invalid_state_file_does_not_renew_the_same_intent() {
    let cfg = config(false, 400);
    let obs0 = observed(vec![profile("bot", intent(Some("running"), None))]);
    let mut slot = slot_as_created(&obs0, &cfg, "bot");
    // The file disappears (or is unreadable): nothing to do, nothing recorded.
    let mut obs = observed(vec![profile("bot", intent(None, None))]);
    obs.scandir.slots.insert(ProfileName::parse_named("bot").unwrap(), slot.clone());
    obs.previous_ports = plan(&obs0, &cfg, PassKind::Boot).ports;
    let p = plan(&obs, &cfg, PassKind::Continuous);
    assert_eq!(p.step_count(), 0, "{p:#?}");
    // It comes back with the same value: still nothing (a parked gateway stays parked).
    std::sync::Arc::make_mut(slot.record.as_mut().unwrap()).applied_up = true;
    let mut obs = observed(vec![profile("bot", intent(Some("running"), Some("startup_failed")))]);
    obs.scandir.slots.insert(ProfileName::parse_named("bot").unwrap(), slot);
    obs.previous_ports = plan(&obs0, &cfg, PassKind::Boot).ports;
    assert_eq!(plan(&obs, &cfg, PassKind::Continuous).step_count(), 0);
}

#[test]
fn new_slots_wait_while_removed_supervisors_still_count_against_the_limit() {
    // -C 40: room for the root and 18 named slots. Two hidden slots being removed still have
    // their supervisors (4 units): the two profiles that fit the cap are deferred, not skipped
    // and not created; once the supervisors are gone they are created.
    let cfg = config(false, 400);
    let mut profiles = vec![profile("default", intent(None, None))];
    profiles.extend((0..20).map(|i| profile(&format!("p{i:02}"), intent(None, None))));
    let mut obs = observed(profiles);
    obs.scanner.limit_units = 40;
    for n in std::iter::once("default".to_string()).chain((2..18).map(|i| format!("p{i:02}"))) {
        let slot = slot_as_created(&obs, &cfg, &n);
        obs.scandir.slots.insert(ProfileName::parse_any(&n).unwrap(), slot);
    }
    obs.profiles.retain(|p| !["p00", "p01"].contains(&p.name.as_str()));
    obs.scanner.removing_units = 4;
    let creates = |p: &Plan| -> Vec<String> {
        p.profiles
            .iter()
            .filter(|pp| pp.steps.iter().any(|s| matches!(s, Step::Create { .. })))
            .map(|pp| pp.name.to_string())
            .collect()
    };
    let p = plan(&obs, &cfg, PassKind::Continuous);
    assert!(creates(&p).is_empty(), "created {:?} while removals still count", creates(&p));
    let deferred: Vec<&str> = p.deferred.iter().map(|n| n.as_str()).collect();
    assert_eq!(deferred, ["p18", "p19"]);
    assert_eq!(p.decisions().filter(|d| d.reason.as_deref() == Some("capacity")).count(), 0);
    obs.scanner.removing_units = 0;
    let p = plan(&obs, &cfg, PassKind::Continuous);
    assert_eq!(creates(&p), ["p18", "p19"]);
    assert!(p.deferred.is_empty());
}

// ---- Topologies (SPEC §6.7) ----

fn single() -> Config {
    let mut c = config(false, 400);
    c.topology = Some(crate::config::Topology::Single);
    c
}

fn standalone(mut p: ProfileObs) -> ProfileObs {
    p.yaml.standalone = true;
    p
}

fn command_of(p: &Plan, name: &str) -> Option<bool> {
    p.profiles.iter().find(|pp| pp.name.as_str() == name)?.steps.iter().find_map(|s| match s {
        Step::Command { up, .. } => Some(*up),
        _ => None,
    })
}

fn decision_of<'a>(p: &'a Plan, name: &str) -> Option<&'a Decision> {
    p.profiles.iter().find(|pp| pp.name.as_str() == name)?.decision.as_ref()
}

/// Boot table: root intent × two named profiles' intents × standalone.
#[test]
fn single_topology_boot_table() {
    let intents = [
        intent(None, None),
        intent(Some("running"), None),
        intent(Some("stopped"), Some("running")),
        intent(None, Some("draining")),
        intent(None, Some("startup_failed")),
    ];
    let cfg = single();
    for root in &intents {
        for a in &intents {
            for b in &intents {
                for b_alone in [false, true] {
                    let mut pb = profile("b", b.clone());
                    if b_alone {
                        pb = standalone(pb);
                    }
                    let obs = observed(vec![profile("default", root.clone()), profile("a", a.clone()), pb]);
                    let p = plan(&obs, &cfg, PassKind::Boot);
                    let folded_b = b.runs() && !b_alone;
                    let root_runs = root.runs() || a.runs() || folded_b;
                    let ctx = format!("root={root:?} a={a:?} b={b:?} standalone={b_alone}");
                    assert_eq!(create_of(&p, "default"), Some(root_runs), "{ctx}");
                    assert_eq!(create_of(&p, "a"), Some(false), "{ctx}: named slots stay down");
                    assert_eq!(create_of(&p, "b"), Some(b_alone && b.runs()), "{ctx}");
                    let rd = decision_of(&p, "default").unwrap();
                    assert_eq!(rd.folded_into_root, Some(a.runs() || folded_b), "{ctx}");
                    assert_eq!(rd.prior_state.as_deref() == Some("running"), root_runs, "{ctx}");
                    let ad = decision_of(&p, "a").unwrap();
                    assert_eq!(ad.folded_into_root, Some(a.runs()), "{ctx}");
                    assert_eq!(ad.reason.as_deref(), a.runs().then_some("folded"), "{ctx}");
                    assert_eq!(decision_of(&p, "b").unwrap().folded_into_root, Some(folded_b), "{ctx}");
                    let mut want_folded = Vec::new();
                    if a.runs() {
                        want_folded.push(ProfileName::parse_named("a").unwrap());
                    }
                    if folded_b {
                        want_folded.push(ProfileName::parse_named("b").unwrap());
                    }
                    assert_eq!(p.folded, want_folded, "{ctx}");
                }
            }
        }
    }
}

/// The world after applying a plan, as the next pass observes it (slots as created/commanded).
fn settle(obs: &mut Observed, cfg: &Config, kind: PassKind) {
    let p = plan(obs, cfg, kind);
    for pp in &p.profiles {
        let mut slot = obs.scandir.slots.get(&pp.name).cloned();
        for s in &pp.steps {
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
                Step::Command { up, .. } => slot.as_mut().unwrap().has_down = !up,
                Step::WriteRecord { record, .. } => {
                    slot.as_mut().unwrap().record = Some(std::sync::Arc::new(record.clone()))
                }
                _ => {}
            }
        }
        obs.scandir.slots.insert(pp.name.clone(), slot.unwrap());
    }
}

fn root_up(obs: &Observed) -> bool {
    !obs.scandir.slots[&ProfileName::root()].has_down
}

#[test]
fn single_topology_edges_follow_the_folded_desired_state() {
    let cfg = single();
    let mut obs = observed(vec![
        profile("default", intent(None, None)),
        profile("a", intent(None, None)),
        profile("b", intent(None, None)),
    ]);
    settle(&mut obs, &cfg, PassKind::Boot);
    assert!(!root_up(&obs));
    let set = |obs: &mut Observed, i: usize, d: Option<&str>, g: Option<&str>| {
        obs.profiles[i].intent = intent(d, g)
    };
    // The first fold brings the root up (a partial pass over `a` alone plans the root too).
    set(&mut obs, 1, Some("running"), None);
    let only: BTreeSet<ProfileName> = [ProfileName::parse_named("a").unwrap()].into();
    let p = plan_with(
        &obs,
        &cfg,
        &PassOptions { kind: PassKind::Continuous, only: Some(&only), hold: &BTreeSet::new(), memo: None },
    );
    assert_eq!(command_of(&p, "default"), Some(true));
    assert_eq!(command_of(&p, "a"), None, "named slots are never brought up");
    assert_eq!(decision_of(&p, "default").unwrap().folded_into_root, Some(true));
    settle(&mut obs, &cfg, PassKind::Continuous);
    assert!(root_up(&obs));
    // A second fold, then gateways rewriting gateway_state: nothing.
    set(&mut obs, 2, Some("running"), None);
    assert_eq!(command_of(&plan(&obs, &cfg, PassKind::Continuous), "default"), None);
    settle(&mut obs, &cfg, PassKind::Continuous);
    for g in ["stopped", "startup_failed", "running"] {
        set(&mut obs, 1, Some("running"), Some(g));
        obs.profiles[0].intent.gateway_state = Some(g.into());
        assert_eq!(command_of(&plan(&obs, &cfg, PassKind::Continuous), "default"), None, "{g}");
    }
    // One unfolds: still running. The last unfolds: stopped.
    set(&mut obs, 1, Some("stopped"), None);
    assert_eq!(command_of(&plan(&obs, &cfg, PassKind::Continuous), "default"), None);
    settle(&mut obs, &cfg, PassKind::Continuous);
    assert!(root_up(&obs));
    set(&mut obs, 2, Some("stopped"), Some("running"));
    let p = plan(&obs, &cfg, PassKind::Continuous);
    assert_eq!(command_of(&p, "default"), Some(false));
    assert_eq!(command_of(&p, "b"), Some(false), "stop intents of named slots still apply");
    settle(&mut obs, &cfg, PassKind::Continuous);
    assert!(!root_up(&obs));
    // A standalone profile keeps its own slot and intent.
    obs.profiles[2].yaml.standalone = true;
    set(&mut obs, 2, Some("running"), None);
    let p = plan(&obs, &cfg, PassKind::Continuous);
    assert_eq!(command_of(&p, "b"), Some(true));
    assert_eq!(command_of(&p, "default"), None);
}

#[test]
fn root_config_yaml_selects_multiplex_only_when_no_variable_does() {
    let mut root = profile("default", intent(None, None));
    root.yaml.multiplex_profiles = true;
    let obs = observed(vec![root, profile("bot", intent(Some("running"), None))]);
    let p = plan(&obs, &config(false, 400), PassKind::Boot);
    assert_eq!(p.topology, crate::config::Topology::Multiplex);
    assert_eq!(create_of(&p, "bot"), Some(false));
    let mut cfg = config(false, 400);
    cfg.topology = Some(crate::config::Topology::PerProfile);
    let p = plan(&obs, &cfg, PassKind::Boot);
    assert_eq!(create_of(&p, "bot"), Some(true), "the environment overrides config.yaml");
    // A named profile's multiplex_profiles means nothing.
    let mut bot = profile("bot", intent(Some("running"), None));
    bot.yaml.multiplex_profiles = true;
    let obs = observed(vec![profile("default", intent(None, None)), bot]);
    assert_eq!(create_of(&plan(&obs, &config(false, 400), PassKind::Boot), "bot"), Some(true));
}

proptest! {
    /// Whatever the intents, in `single` no named non-standalone slot is ever created up or
    /// commanded up, and the root is created up iff some folded or own intent runs.
    #[test]
    fn single_never_starts_folded_named_slots(
        spec in proptest::collection::vec((0usize..5, any::<bool>()), 0..6),
        root_i in 0usize..5,
    ) {
        let intents = [
            intent(None, None),
            intent(Some("running"), None),
            intent(Some("stopped"), Some("running")),
            intent(None, Some("degraded")),
            intent(Some("paused"), None),
        ];
        let mut profiles = vec![profile("default", intents[root_i].clone())];
        for (k, (i, alone)) in spec.iter().enumerate() {
            let mut p = profile(&format!("p{k}"), intents[*i].clone());
            p.yaml.standalone = *alone;
            profiles.push(p);
        }
        let want_root = profiles.iter().any(|p| p.intent.runs() && (p.name.is_root() || !p.yaml.standalone));
        let obs = observed(profiles.clone());
        let p = plan(&obs, &single(), PassKind::Boot);
        prop_assert_eq!(create_of(&p, "default"), Some(want_root));
        for q in profiles.iter().filter(|q| !q.name.is_root()) {
            prop_assert_eq!(create_of(&p, q.name.as_str()), Some(q.yaml.standalone && q.intent.runs()));
        }
    }
}

#[test]
fn single_root_stops_when_its_last_folded_profile_goes() {
    let cfg = single();
    let mut obs = observed(vec![profile("default", intent(None, None)), profile("a", intent(None, None))]);
    settle(&mut obs, &cfg, PassKind::Boot);
    let p = plan(&observed(obs.profiles.clone()), &cfg, PassKind::Boot);
    assert_eq!(decision_of(&p, "default").unwrap().prior_state, None, "no intent shows as None");
    obs.profiles[1].intent = intent(Some("running"), None);
    settle(&mut obs, &cfg, PassKind::Continuous);
    assert!(root_up(&obs));
    // The profile is deleted: nothing folds any more.
    obs.profiles.truncate(1);
    let p = plan(&obs, &cfg, PassKind::Continuous);
    assert_eq!(command_of(&p, "default"), Some(false));
    // The root's own running keeps it up whatever the named profiles do.
    settle(&mut obs, &cfg, PassKind::Continuous);
    obs.profiles[0].intent = intent(Some("running"), None);
    obs.profiles.push(profile("b", intent(Some("running"), None)));
    settle(&mut obs, &cfg, PassKind::Continuous);
    obs.profiles[1].intent = intent(Some("stopped"), None);
    assert_eq!(command_of(&plan(&obs, &cfg, PassKind::Continuous), "default"), None);
}

/// The boot pass decided in batches ([`BootStream`]) is the whole pass ([`plan`]), whatever the
/// ports recorded, the `.env` overrides, the capacity and the slots already there.
fn streamed(obs: &Observed, cfg: &Config) -> Plan {
    let (mut stream, mut head) = BootStream::new(obs, cfg).expect("streams");
    for p in &obs.profiles {
        if let Some(pp) = stream.profile(p, &mut head.warnings) {
            head.profiles.push(pp);
        }
    }
    stream.finish(&mut head);
    head
}

proptest! {
    #[test]
    fn boot_stream_decides_what_the_whole_pass_decides(
        names in proptest::collection::btree_set("[a-f][a-z0-9]{0,3}", 0..40),
        env in proptest::collection::vec(any::<bool>(), 40),
        recorded in proptest::collection::vec(proptest::option::of(9195u16..9805), 40),
        running in proptest::collection::vec(any::<bool>(), 40),
        max in 0usize..45,
        multiplex in any::<bool>(),
        with_slot in proptest::collection::vec(any::<bool>(), 40),
    ) {
        let cfg = config(multiplex, max);
        let mut profiles = vec![profile("default", intent(Some("running"), None))];
        let mut previous = BTreeMap::new();
        for (i, n) in names.iter().filter(|n| n.as_str() != "default").enumerate() {
            let mut p = profile(n, intent(Some(if running[i] { "running" } else { "stopped" }), None));
            p.env_sets_port = env[i];
            if let Some(port) = recorded[i] {
                previous.insert(n.clone(), port);
            }
            profiles.push(p);
        }
        if let Some(port) = recorded[39] {
            previous.insert("default".to_string(), port);
        }
        let mut obs = observed(profiles);
        obs.previous_ports = std::sync::Arc::new(previous);
        // Some profiles already have a slot (as the planner would have made it).
        let first = plan(&obs, &cfg, PassKind::Boot);
        for (i, pp) in first.profiles.iter().enumerate() {
            if with_slot[i % 40] && pp.steps.iter().any(|s| matches!(s, Step::Create { .. })) {
                let slot = slot_as_created(&obs, &cfg, pp.name.as_str());
                obs.scandir.slots.insert(pp.name.clone(), slot);
            }
        }
        prop_assert_eq!(streamed(&obs, &cfg), plan(&obs, &cfg, PassKind::Boot));
    }
}

#[test]
fn boot_stream_is_not_used_for_single_or_dashboard() {
    let obs = observed(vec![profile("default", intent(None, None))]);
    assert!(BootStream::new(&obs, &single()).is_none());
    let mut dash = obs.clone();
    dash.mode = ContainerMode::Dashboard;
    assert!(BootStream::new(&dash, &config(false, 10)).is_none());
    assert!(BootStream::new(&obs, &config(false, 10)).is_some());
}
