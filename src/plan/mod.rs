//! Plan: a pure function from what was observed to what must be done.
//!
//! Nothing here reads or writes anything; every rule of SPEC §6 that decides *whether* to act
//! lives here and is tested without I/O. [`crate::apply`] carries the steps out.

pub use crate::capacity;
pub mod crashloop;
pub mod incremental;
pub mod ports;
pub mod reason;
pub mod render;

pub use reason::Reason;

use crate::config::{Config, Topology};
use crate::model::{Intent, PriorExit, ProfileName, SlotRecord};
use crate::warning::{CapacityBound, Finding, Warning};
use crate::world::ContainerMode;
use crate::world::SlotObs;
use crate::world::{Observed, ProfileObs};
use render::{RenderInput, SlotFile};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Which pass this is: the boot pass may sweep PID-namespace leftovers and migrate a legacy
/// container; later passes may not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PassKind {
    Boot,
    Continuous,
}

/// The action word of a `container-boot.log` line (SPEC §8.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    Started,
    Registered,
    Stopped,
    Unregistered,
    Updated,
    Skipped,
    /// A crash-looping gateway held down for a while (SPEC §6.8).
    Backoff,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Started => "started",
            ActionKind::Registered => "registered",
            ActionKind::Stopped => "stopped",
            ActionKind::Unregistered => "unregistered",
            ActionKind::Updated => "updated",
            ActionKind::Skipped => "skipped",
            ActionKind::Backoff => "backoff",
        }
    }
}

/// One decision, reported to people once its steps have succeeded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Profile name, or the raw (unsanitised) directory name of a skipped entry.
    pub profile: String,
    pub slot: Option<String>,
    pub action: ActionKind,
    /// The effective intent (SPEC §5.2), `None` when there is none.
    pub prior_state: Option<String>,
    pub prior_exit: PriorExit,
    pub reason: Option<Reason>,
    /// `single` topology only: for the root, whether any named profile's `running` folded
    /// into its intent; for a named profile, whether its `running` did (SPEC §6.7).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub folded_into_root: Option<bool>,
    /// `backoff` only: the hold's length and the deaths that caused it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffInfo>,
}

/// The fields of an `action=backoff` line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackoffInfo {
    pub retry_in_secs: u64,
    pub deaths: u32,
    /// `exit_<code>` or `signal_<n>`.
    pub last_exit: String,
}

/// One change to the world. Steps of one profile run in order; a failed step stops that
/// profile's remaining steps and nothing else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Delete `gateway.pid` and `processes.json` from the profile directory.
    SweepPidFiles { dir: std::path::PathBuf },
    /// Build the slot under its staging name and publish it by rename.
    Create { name: ProfileName, files: Vec<SlotFile>, up: bool, record: SlotRecord },
    /// Rewrite these files of an existing slot in place, each atomically.
    WriteFiles { name: ProfileName, files: Vec<SlotFile> },
    /// Want the slot up (`U`) or down (`D`), keeping `./down` in agreement.
    Command { name: ProfileName, up: bool },
    /// Rewrite the slot's bookkeeping.
    WriteRecord { name: ProfileName, record: SlotRecord },
    /// The slot is published but no supervisor runs it: have s6-svscan pick it up.
    EnsureSupervised { name: ProfileName },
    /// Close the slot's `event/` directories (service and logger) to everyone but the daemon's
    /// user and remove what others planted in them (SPEC §9.1; slots of older builds).
    CloseEvent { name: ProfileName },
    /// Take the slot out of the scan, stop it and delete it (SPEC §7.3).
    Remove { name: ProfileName },
}

/// What to do for one profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfilePlan {
    pub name: ProfileName,
    pub steps: Vec<Step>,
    pub decision: Option<Decision>,
}

/// The outcome of planning one pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub mode: ContainerMode,
    /// Write the legacy `gateway run` migration record for the root profile.
    pub migrate_legacy: bool,
    /// Port assignments after this pass, and whether they differ from the recorded ones.
    /// Shared: a partial pass hands the recorded map on without copying a string per profile.
    pub ports: std::sync::Arc<BTreeMap<String, u16>>,
    pub ports_changed: bool,
    /// The daemon's own hidden leftovers in the scandir, to be cleared.
    pub clear_hidden: Vec<String>,
    /// Take a leftover kick entry out of the scan.
    pub clear_kick: bool,
    /// Root first, then named profiles in name order. Only profiles with steps or a decision.
    pub profiles: Vec<ProfilePlan>,
    /// Skipped entries that have no valid name (decisions without steps).
    pub skipped: Vec<Decision>,
    /// Profiles that will get a slot but not yet: the room they need in s6-svscan's limit is
    /// still used by slots being removed. Planned again once those supervisors are gone.
    pub deferred: Vec<ProfileName>,
    pub warnings: Vec<Warning>,
    /// The topology in force for this pass (SPEC §6.7).
    pub topology: Topology,
    /// `single`: the named profiles whose `running` folds into the root's intent.
    pub folded: Vec<ProfileName>,
}

impl Plan {
    /// Every decision in log order: root, then names; skipped entries last.
    pub fn decisions(&self) -> impl Iterator<Item = &Decision> {
        self.profiles.iter().filter_map(|p| p.decision.as_ref()).chain(self.skipped.iter())
    }

    pub fn step_count(&self) -> usize {
        self.profiles.iter().map(|p| p.steps.len()).sum::<usize>()
            + usize::from(self.migrate_legacy)
            + usize::from(self.ports_changed)
            + self.clear_hidden.len()
            + usize::from(self.clear_kick)
    }
}

/// The intent written by the legacy migration (SPEC §5.4).
pub fn legacy_intent() -> Intent {
    Intent { desired_state: Some("running".into()), gateway_state: Some("running".into()) }
}

/// What a pass covers.
#[derive(Clone, Copy, Debug)]
pub struct PassOptions<'a> {
    pub kind: PassKind,
    /// Plan steps only for these profiles (a partial pass after events); `None`: all.
    /// Ports and the capacity guard are still computed over everything observed.
    pub only: Option<&'a BTreeSet<ProfileName>>,
    /// Slots whose profile is gone but still within the removal grace: keep them.
    pub hold: &'a BTreeSet<ProfileName>,
    /// Rendered files kept from earlier passes (the daemon's); the plan is the same without.
    pub memo: Option<&'a render::RenderMemo>,
}

/// Decides one full pass. Pure.
pub fn plan(obs: &Observed, cfg: &Config, kind: PassKind) -> Plan {
    plan_with(obs, cfg, &PassOptions { kind, only: None, hold: &BTreeSet::new(), memo: None })
}

/// Decides one pass. Pure.
///
/// Three steps, shared with the batched boot pass ([`BootStream`]): the pass-wide one
/// ([`context`]: topology, capacity and admission, over the names and the scandir), the ports
/// ([`ports::PortAssigner`]), and one step per profile ([`plan_profile`]); then the tail
/// ([`plan_tail`]: slots without a profile, skipped entries).
pub fn plan_with(obs: &Observed, cfg: &Config, opts: &PassOptions<'_>) -> Plan {
    let topo = topology(obs, cfg);
    // In `single` the root's intent depends on every named profile's: a pass over any named
    // profile plans the root too.
    let in_scope = |name: &ProfileName| {
        opts.only.is_none_or(|o| {
            o.contains(name) || (name.is_root() && topo == Topology::Single && o.iter().any(|n| !n.is_root()))
        })
    };
    let (mut plan, mut ctx) = context(obs, cfg, opts.kind, topo, opts.only.is_none(), &in_scope);
    if obs.mode == ContainerMode::Dashboard {
        return plan;
    }
    let admitted: Vec<&ProfileObs> = obs.profiles.iter().filter(|p| ctx.admitted.contains(&p.name)).collect();

    // Ports for every admitted profile whose .env does not set its own.
    let mut ports = ports::PortAssigner::new(admitted.iter().map(|p| p.name.as_str()), &obs.previous_ports);
    let wanting = admitted.iter().filter(|p| !p.env_sets_port).map(|p| p.name.as_str());
    for name in ports::in_port_order(wanting) {
        ports.take(name);
    }
    plan.ports = std::sync::Arc::new(ports.finish());
    plan.ports_changed = *plan.ports != *obs.previous_ports;

    // `single`: named intents fold into the root's (admitted profiles only: the files of
    // the others are not read).
    if topo == Topology::Single {
        let named: Vec<&ProfileObs> =
            admitted.iter().copied().filter(|p| !p.name.is_root() && !p.yaml.standalone).collect();
        plan.folded = named.iter().filter(|p| p.intent.runs()).map(|p| p.name.clone()).collect();
        ctx.fold = Some(Fold {
            intents: named.iter().map(|p| p.intent.clone()).collect(),
            folded: plan.folded.iter().cloned().collect(),
        });
    }
    for p in &obs.profiles {
        if !in_scope(&p.name) {
            continue;
        }
        let port = plan.ports.get(p.name.as_str()).copied();
        if let Some(pp) = plan_profile(&ctx, obs, cfg, p, port, opts.memo, &mut plan.warnings) {
            plan.profiles.push(pp);
        }
    }
    // Slots whose profile is gone: removed by continuous passes once the grace has passed.
    let known: BTreeSet<&ProfileName> = obs.profiles.iter().map(|p| &p.name).collect();
    for name in obs.scandir.slots.keys() {
        if known.contains(name) || name.is_root() || !in_scope(name) || opts.kind == PassKind::Boot {
            continue;
        }
        if !opts.hold.contains(name) {
            plan.profiles.push(removal(name));
        }
    }
    // Keep log order: root first, then names.
    plan.profiles.sort_by(|a, b| (!a.name.is_root(), &a.name).cmp(&(!b.name.is_root(), &b.name)));
    plan_tail(obs, cfg, opts.kind, opts.only.is_none(), &in_scope, &mut plan);
    plan
}

/// A full boot pass decided profile by profile, so that `once` can read, plan and apply its
/// profiles in bounded batches (issue 14): memory then holds the names, the scandir and the
/// port map, never every profile's rendered slot. It decides exactly what [`plan`] decides over
/// the same observations (the same steps: [`context`], the ports, [`plan_profile`],
/// [`plan_tail`]), given the profiles in their order (the root first, then names).
#[derive(Debug)]
pub struct BootStream<'a> {
    obs: &'a Observed,
    cfg: &'a Config,
    ctx: PassContext,
    ports: ports::PortAssigner,
}

impl<'a> BootStream<'a> {
    /// The stream and the plan's head (no profiles yet), from `obs` whose named profiles need
    /// not have been read (only the root's files matter here). `None` when the pass must be
    /// decided whole: the `single` topology (the root's intent folds every named profile's)
    /// and a dashboard container (which only reports).
    pub fn new(obs: &'a Observed, cfg: &'a Config) -> Option<(Self, Plan)> {
        let topo = topology(obs, cfg);
        if topo == Topology::Single || obs.mode == ContainerMode::Dashboard {
            return None;
        }
        let (plan, ctx) = context(obs, cfg, PassKind::Boot, topo, true, &|_| true);
        let ports = ports::PortAssigner::new(
            obs.profiles.iter().filter(|p| ctx.admitted.contains(&p.name)).map(|p| p.name.as_str()),
            &obs.previous_ports,
        );
        Some((BootStream { obs, cfg, ctx, ports }, plan))
    }

    /// Whether `name` is planned with its files (else they are not to be read: SPEC §9.3).
    pub fn admitted(&self, name: &ProfileName) -> bool {
        self.ctx.admitted.contains(name)
    }

    /// Whether the plan looks at this profile's `config.yaml`: the root's selects the topology;
    /// a named profile's matters only in the `single` topology (`standalone`, and its warning),
    /// which is never streamed.
    pub fn reads_yaml(&self, name: &ProfileName) -> bool {
        name.is_root() || self.ctx.topo == Topology::Single
    }

    /// The plan of the next profile, its files read if [`BootStream::admitted`]; its warnings
    /// are appended to `warnings`. Profiles must come in the order of the observation.
    pub fn profile(&mut self, p: &ProfileObs, warnings: &mut Vec<Warning>) -> Option<ProfilePlan> {
        let port =
            (self.admitted(&p.name) && !p.env_sets_port).then(|| self.ports.take(p.name.as_str())).flatten();
        plan_profile(&self.ctx, self.obs, self.cfg, p, port, None, warnings)
    }

    /// Ends the pass: the port record and the tail (skipped entries, their warnings) go into
    /// `plan`, whose profiles are not looked at.
    pub fn finish(self, plan: &mut Plan) {
        plan.ports = std::sync::Arc::new(self.ports.finish());
        plan.ports_changed = *plan.ports != *self.obs.previous_ports;
        plan_tail(self.obs, self.cfg, PassKind::Boot, true, &|_| true, plan);
    }
}

/// What the pass-wide step decided, for the per-profile step.
#[derive(Clone, Debug)]
pub struct PassContext {
    kind: PassKind,
    topo: Topology,
    migrate_legacy: bool,
    /// Profiles planned in this pass (subject to the pass's scope): the root, those with a slot,
    /// and those admitted by the capacity guard for which there is room now.
    admitted: BTreeSet<ProfileName>,
    /// Profiles over the capacity cap, in scope: a skip decision each.
    over_cap: BTreeSet<ProfileName>,
    /// `single` only: the fold, once every admitted named profile has been read.
    fold: Option<Fold>,
}

/// The `single` topology's fold (SPEC §6.7).
#[derive(Clone, Debug)]
struct Fold {
    /// Intents of the admitted named profiles that are not standalone.
    intents: Vec<Intent>,
    /// Those whose intent runs.
    folded: BTreeSet<ProfileName>,
}

/// The pass-wide step: the plan's head (mode, legacy migration, leftovers, warnings so far,
/// deferred profiles) and the admission of every profile. Reads only the names, the scandir,
/// the scanner and the root's files (the topology), never another profile's files. `full`: the
/// pass covers every profile (it listed the scandir afresh).
fn context(
    obs: &Observed,
    cfg: &Config,
    kind: PassKind,
    topo: Topology,
    full: bool,
    in_scope: &dyn Fn(&ProfileName) -> bool,
) -> (Plan, PassContext) {
    let mut plan = Plan {
        mode: obs.mode,
        migrate_legacy: false,
        ports: Default::default(),
        ports_changed: false,
        clear_hidden: if full { obs.scandir.hidden.clone() } else { Vec::new() },
        clear_kick: full && obs.scandir.kick_leftover,
        profiles: Vec::new(),
        skipped: Vec::new(),
        deferred: Vec::new(),
        warnings: obs.warnings.clone(),
        topology: topo,
        folded: Vec::new(),
    };
    let mut ctx = PassContext {
        kind,
        topo,
        migrate_legacy: false,
        admitted: BTreeSet::new(),
        over_cap: BTreeSet::new(),
        fold: None,
    };
    if obs.mode == ContainerMode::Dashboard {
        plan.clear_hidden.clear();
        plan.clear_kick = false;
        plan.skipped.push(Decision {
            profile: ProfileName::root().to_string(),
            slot: None,
            action: ActionKind::Skipped,
            prior_state: None,
            prior_exit: PriorExit::Unknown,
            reason: Some(Reason::DashboardContainer),
            folded_into_root: None,
            backoff: None,
        });
        return (plan, ctx);
    }
    plan.migrate_legacy = kind == PassKind::Boot
        && obs.mode == ContainerMode::LegacyGatewayRun
        && !cfg.no_supervise
        && !obs.root_state_file_exists;
    ctx.migrate_legacy = plan.migrate_legacy;

    for d in obs.scanner.dangling.iter().filter(|_| full) {
        plan.warnings.push(Warning::new(Finding::DanglingScandirEntry { path: cfg.scandir.join(d) }));
    }
    // Capacity (SPEC §6.6): named profiles that already have a slot keep it; new slots are
    // created in name order while the total stays within the cap.
    let cap = capacity::capacity(cfg, &obs.scanner);
    let scanner_named = cap.scanner_named;
    let admit = capacity::admitted(
        obs.profiles.iter().map(|p| &p.name),
        |n| obs.scandir.slots.contains_key(n),
        cap.named,
    );
    // What fits *now*: a slot whose profile is gone (held for the grace, or removed in this
    // very pass) and a hidden one whose supervisors have not exited yet still count against the
    // limit, and on s6 >= 2.12 a scan that meets a new slot over the limit never starts it.
    // Slots that fit the cap but not the room left now are deferred, not skipped.
    let units_left =
        (obs.scanner.limit_units as usize).saturating_sub(obs.scanner.foreign_units as usize + 1);
    let present_pairs =
        obs.scandir.slots.len() + usize::from(!obs.scandir.slots.contains_key(&ProfileName::root()));
    let mut room_now =
        (units_left.saturating_sub(obs.scanner.removing_units as usize) / 2).saturating_sub(present_pairs);
    for p in &obs.profiles {
        if p.name.is_root() || obs.scandir.slots.contains_key(&p.name) {
            ctx.admitted.insert(p.name.clone());
        } else if admit.contains(&p.name) && room_now > 0 {
            room_now -= 1;
            ctx.admitted.insert(p.name.clone());
            if !in_scope(&p.name) {
                // Room came back for a profile this partial pass does not cover (one that was
                // over the cap): it gets its slot in the pass the daemon runs for it next.
                plan.deferred.push(p.name.clone());
            }
        } else if admit.contains(&p.name) {
            plan.deferred.push(p.name.clone());
        } else if in_scope(&p.name) {
            let bound = if scanner_named < cfg.max_profiles {
                CapacityBound::Scanner { limit_units: obs.scanner.limit_units, named: scanner_named }
            } else {
                CapacityBound::Configured { max: cfg.max_profiles }
            };
            plan.warnings.push(Warning::new(Finding::OverCapacity { profile: p.name.clone(), bound }));
            ctx.over_cap.insert(p.name.clone());
        }
    }
    (plan, ctx)
}

/// The per-profile step: the plan of one profile in scope (`None`: nothing to do, or not
/// admitted), given its port; its warnings are appended to `warnings`.
fn plan_profile(
    ctx: &PassContext,
    obs: &Observed,
    cfg: &Config,
    p: &ProfileObs,
    port: Option<u16>,
    memo: Option<&render::RenderMemo>,
    warnings: &mut Vec<Warning>,
) -> Option<ProfilePlan> {
    if ctx.over_cap.contains(&p.name) {
        return Some(ProfilePlan {
            name: p.name.clone(),
            steps: vec![],
            decision: Some(Decision {
                profile: p.name.to_string(),
                slot: None,
                action: ActionKind::Skipped,
                prior_state: p.intent.effective().map(str::to_owned),
                prior_exit: p.prior_exit,
                reason: Some(Reason::Capacity),
                folded_into_root: None,
                backoff: None,
            }),
        });
    }
    if !ctx.admitted.contains(&p.name) {
        return None;
    }
    let topo = ctx.topo;
    if let Some(w) = &p.intent_warning {
        warnings.push(Warning::new(Finding::InProfile {
            profile: p.name.clone(),
            inner: Box::new(w.finding.clone()),
        }));
    }
    if let Some(w) = &p.yaml_warning
        && (p.name.is_root() || topo == Topology::Single)
    {
        warnings.push(Warning::new(Finding::InProfile {
            profile: p.name.clone(),
            inner: Box::new(w.finding.clone()),
        }));
    }
    let own = if p.name.is_root() && ctx.migrate_legacy { legacy_intent() } else { p.intent.clone() };
    // What boot-log lines and `status` show as the profile's state: its own effective
    // intent, or `running` for a root that runs because of the fold.
    let shown = own.effective().map(str::to_owned);
    let (intent, runs) = match &ctx.fold {
        Some(fold) if p.name.is_root() => folded_root_intent(&own, fold.intents.iter()),
        _ => {
            let runs = own.runs();
            (own, runs)
        }
    };
    let prior_state = if runs { Some("running".to_string()) } else { shown };
    let folded_into_root = ctx
        .fold
        .as_ref()
        .map(|f| if p.name.is_root() { !f.folded.is_empty() } else { f.folded.contains(&p.name) });
    let role = Role { topo, folded_into_root, runs, prior_state };
    let rendered = render::rendered(&render_input(obs, cfg, p, port), memo);
    let pp = match obs.scandir.slots.get(&p.name) {
        None => plan_create(p, &intent, &rendered, &role, ctx.kind),
        Some(slot) => plan_adopt(p, &intent, &rendered, slot, &role, obs.scanner.pid.is_some()),
    };
    (!pp.steps.is_empty() || pp.decision.is_some()).then_some(pp)
}

/// What the slot files of `p` are rendered from, given its port.
fn render_input<'a>(
    obs: &Observed,
    cfg: &'a Config,
    p: &'a ProfileObs,
    port: Option<u16>,
) -> RenderInput<'a> {
    RenderInput {
        name: &p.name,
        home: &cfg.home,
        gateway_command: &cfg.gateway_command,
        run_as: cfg.run_as.as_deref(),
        port,
        with_contenv: obs.with_contenv,
    }
}

/// The tail of a pass: warnings about slots without a profile (boot) and the skipped entries
/// (full passes).
fn plan_tail(
    obs: &Observed,
    cfg: &Config,
    kind: PassKind,
    full: bool,
    in_scope: &dyn Fn(&ProfileName) -> bool,
    plan: &mut Plan,
) {
    if obs.mode == ContainerMode::Dashboard {
        return;
    }
    if kind == PassKind::Boot {
        let known: BTreeSet<&ProfileName> = obs.profiles.iter().map(|p| &p.name).collect();
        for name in obs.scandir.slots.keys() {
            if !known.contains(name) && !name.is_root() && in_scope(name) {
                plan.warnings.push(Warning::new(Finding::SlotWithoutProfile { slot: name.slot_name() }));
            }
        }
    }
    for s in obs.skipped.iter().filter(|_| full) {
        plan.warnings.push(Warning::new(Finding::SkippedDir {
            path: cfg.home.join(crate::layout::home::PROFILES_DIR).join(&s.raw),
            reason: s.reason.clone(),
        }));
        plan.skipped.push(Decision {
            profile: s.raw.clone(),
            slot: None,
            action: ActionKind::Skipped,
            prior_state: None,
            prior_exit: PriorExit::Unknown,
            reason: Some(if s.raw == crate::model::ROOT_PROFILE {
                Reason::ReservedName
            } else {
                Reason::InvalidName
            }),
            folded_into_root: None,
            backoff: None,
        });
    }
}

/// The removal of a slot whose profile is gone (its grace over).
pub(crate) fn removal(name: &ProfileName) -> ProfilePlan {
    ProfilePlan {
        name: name.clone(),
        steps: vec![Step::Remove { name: name.clone() }],
        decision: Some(Decision {
            profile: name.to_string(),
            slot: Some(name.slot_name()),
            action: ActionKind::Unregistered,
            prior_state: None,
            prior_exit: PriorExit::Unknown,
            reason: Some(Reason::ProfileGone),
            folded_into_root: None,
            backoff: None,
        }),
    }
}

/// The topology in force: the configured one, else (neither variable set) `multiplex` when
/// the root home's `config.yaml` says `multiplex_profiles`, as upstream reads it.
pub fn topology(obs: &Observed, cfg: &Config) -> Topology {
    cfg.topology.unwrap_or_else(|| {
        let root_mux =
            obs.profiles.iter().find(|p| p.name.is_root()).is_some_and(|r| r.yaml.multiplex_profiles);
        if root_mux { Topology::Multiplex } else { Topology::PerProfile }
    })
}

/// The root's intent in the `single` topology, and whether it runs (SPEC §6.7).
///
/// It runs when its own intent does or when any folded named profile's does (boot and
/// creation: the effective intent, `gateway_state` included). Its `desired_state`, which the
/// edge rule of §6.2 compares with the last applied one, is `running` when the root's own
/// `desired_state` or any folded profile's is, else the root's own value, else `stopped`: so the
/// root is brought up when the first named profile's `desired_state` becomes `running`, and
/// stopped when the last one stops being it or its profile goes (unless the root's own is
/// `running`), while a gateway rewriting `gateway_state` never changes it.
pub fn folded_root_intent<'a>(
    own: &Intent,
    named: impl Iterator<Item = &'a Intent> + Clone,
) -> (Intent, bool) {
    let runs = own.runs() || named.clone().any(Intent::runs);
    let desired_running = own.desired_state.as_deref() == Some("running")
        || named.clone().any(|i| i.desired_state.as_deref() == Some("running"));
    let desired_state = Some(if desired_running {
        "running".to_string()
    } else {
        own.desired_state.clone().unwrap_or_else(|| "stopped".to_string())
    });
    let gateway_state = if runs { Some("running".to_string()) } else { own.gateway_state.clone() };
    (Intent { desired_state, gateway_state }, runs)
}

/// How the topology places one profile.
struct Role {
    topo: Topology,
    /// `single` only: see [`Decision::folded_into_root`].
    folded_into_root: Option<bool>,
    /// The effective intent runs (for the root in `single`: its folded intent does).
    runs: bool,
    /// The `prior_state` of its decisions.
    prior_state: Option<String>,
}

impl Role {
    /// Would the daemon bring this profile's slot up? Named slots never are when
    /// multiplexing, nor in `single` unless the profile is standalone.
    fn may_start(&self, p: &ProfileObs) -> bool {
        p.name.is_root()
            || match self.topo {
                Topology::PerProfile => true,
                Topology::Multiplex => false,
                Topology::Single => p.yaml.standalone,
            }
    }

    /// Why a `running` intent did not start the slot.
    fn held_reason(&self) -> Reason {
        if self.topo == Topology::Single { Reason::Folded } else { Reason::Multiplexed }
    }
}

fn plan_create(
    p: &ProfileObs,
    intent: &Intent,
    rendered: &render::Rendered,
    role: &Role,
    kind: PassKind,
) -> ProfilePlan {
    let up = role.runs && role.may_start(p);
    let mut steps = Vec::new();
    if kind == PassKind::Boot && !p.via_symlink && p.pid_leftovers != Some(false) {
        steps.push(Step::SweepPidFiles { dir: p.dir.clone() });
    }
    let record = SlotRecord::new(intent.desired_state.clone(), up, rendered.digest.clone());
    steps.push(Step::Create { name: p.name.clone(), files: rendered.files.clone(), up, record });
    let reason = (role.runs && !up).then(|| role.held_reason());
    ProfilePlan {
        name: p.name.clone(),
        steps,
        decision: Some(decision(
            p,
            role,
            if up { ActionKind::Started } else { ActionKind::Registered },
            reason,
        )),
    }
}

fn plan_adopt(
    p: &ProfileObs,
    intent: &Intent,
    rendered: &render::Rendered,
    slot: &SlotObs,
    role: &Role,
    scanner_runs: bool,
) -> ProfilePlan {
    let digest = rendered.digest.clone();
    let changed: Vec<SlotFile> = rendered
        .files
        .iter()
        .filter(|f| slot.files.get(f.rel).and_then(|c| c.as_deref()) != Some(f.content.as_bytes()))
        .cloned()
        .collect();
    let mut steps = Vec::new();
    let mut action = None;
    let mut reason = None;
    // First, before anything makes the supervisor announce a state change through `event/`.
    if slot.event_open {
        steps.push(Step::CloseEvent { name: p.name.clone() });
    }
    if !changed.is_empty() {
        steps.push(Step::WriteFiles { name: p.name.clone(), files: changed });
        action = Some(ActionKind::Updated);
    }
    let record = match &slot.record {
        // Made by another tool (or an older daemon): adopt its current want-state as applied.
        None => SlotRecord::new(intent.desired_state.clone(), !slot.has_down, digest),
        Some(r) => {
            let mut next = SlotRecord { digest, ..(**r).clone() };
            // A new desired_state value is a new operator intent. Its absence is not, and is not
            // recorded either: a file briefly missing, empty or half-written (delete + create,
            // truncate + write) must not make the same value look new when it comes back, or a
            // parked gateway would be restarted.
            if intent.desired_state.is_some() && intent.desired_state != r.applied_desired {
                next.applied_desired = intent.desired_state.clone();
                let up = intent.desired_state.as_deref() == Some("running");
                if up && !role.may_start(p) {
                    reason = Some(role.held_reason());
                    action = action.or(Some(ActionKind::Skipped));
                } else {
                    steps.push(Step::Command { name: p.name.clone(), up });
                    next.applied_up = up;
                    action = Some(if up { ActionKind::Started } else { ActionKind::Stopped });
                }
            }
            next
        }
    };
    if !slot.supervised && scanner_runs {
        steps.push(Step::EnsureSupervised { name: p.name.clone() });
    }
    if !slot.record.as_ref().is_some_and(|r| r.same_state(&record)) {
        steps.push(Step::WriteRecord { name: p.name.clone(), record });
    }
    ProfilePlan { name: p.name.clone(), steps, decision: action.map(|a| decision(p, role, a, reason)) }
}

fn decision(p: &ProfileObs, role: &Role, action: ActionKind, reason: Option<Reason>) -> Decision {
    Decision {
        profile: p.name.to_string(),
        slot: Some(p.name.slot_name()),
        action,
        prior_state: role.prior_state.clone(),
        prior_exit: p.prior_exit,
        reason,
        folded_into_root: role.folded_into_root,
        backoff: None,
    }
}

#[cfg(test)]
mod tests;
