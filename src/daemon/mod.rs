//! The long-running reconciler (SPEC §6.2–6.5): event-driven partial passes, periodic full
//! re-lists, removal grace, per-profile backoff, and removals that finish in the background.
//!
//! Invariants:
//! - the watcher only marks profiles dirty; every pass reads the current files (level
//!   triggered), so the result never depends on which events arrived;
//! - `world` is the last observation, kept current for every profile a pass touched; a full
//!   re-list replaces it, so drift the watcher cannot see is repaired within one resync period;
//! - a slot whose profile is gone is held for the removal grace before it is removed; a profile
//!   that comes back within it leaves its running gateway untouched;
//! - one profile's failure delays only that profile (exponential backoff).

pub mod backoff;
mod event_loop;
pub mod retry;
pub mod schedule;
pub mod warn_limit;

pub use event_loop::run;

use crate::apply::removal::{PendingRemoval, RemovalState};
use crate::apply::status_record::{self, StatusRecord};
use crate::apply::{Applier, Outcome};
use crate::config::Config;
use crate::model::ProfileName;
use crate::observe::profile_files::ProfileFileCache;
use crate::observe::slots::{SlotFileCache, observe_slot, slot_dir};
use crate::observe::watch::{self, Batch, EventStream, WatchError, Watcher};
use crate::observe::{self, Observed};
use crate::plan::{self, PassKind, PassOptions, crashloop};
use crate::s6::{self, SupervisorCommand};
use crate::warning::{Finding, Warning};
use backoff::Backoff;
pub use schedule::{FALLBACK_RELIST, RELIST_COALESCE, relist_due_at};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};
use warn_limit::WarnLimiter;

/// The profile named `name` among `profiles` (root first, then names in order).
fn profile_mut<'p>(
    profiles: &'p mut [observe::ProfileObs],
    name: &ProfileName,
) -> Option<&'p mut observe::ProfileObs> {
    if name.is_root() {
        return profiles.first_mut().filter(|p| p.name.is_root());
    }
    let start = usize::from(profiles.first().is_some_and(|p| p.name.is_root()));
    let i = profiles[start..].binary_search_by(|p| p.name.cmp(name)).ok()?;
    Some(&mut profiles[start + i])
}

/// Crash-loop backoff, unless it is off or inotify cannot watch the slots.
fn crash_watch(
    (crashloop, max_hold, reset_after): &(Option<crate::config::CrashLoop>, Duration, Duration),
) -> Option<CrashWatch> {
    let c = (*crashloop)?;
    match crate::observe::deaths::StatusWatch::new() {
        Ok(watch) => Some(CrashWatch {
            watch,
            policy: crashloop::Policy {
                deaths: c.deaths,
                window: c.window,
                max_hold: *max_hold,
                reset_after: *reset_after,
            },
            trackers: BTreeMap::new(),
        }),
        Err(e) => {
            tracing::warn!("crash-loop backoff unavailable: inotify: {e}");
            None
        }
    }
}

/// The reconciler's state between passes.
pub struct Daemon {
    cfg: Config,
    applier: Applier,
    world: Observed,
    watcher: Option<Watcher>,
    /// The watcher cannot see everything (none, or its watch limit exhausted): re-list every
    /// [`FALLBACK_RELIST`].
    polling_fallback: bool,
    /// Slots whose profile is gone, and since when.
    absent: BTreeMap<ProfileName, Instant>,
    retries: BTreeMap<ProfileName, Backoff>,
    removals: Vec<PendingRemoval>,
    /// Profiles waiting for removals in flight to give back room in s6-svscan's limit; planned
    /// again as soon as a removal finishes.
    deferred: BTreeSet<ProfileName>,
    /// Warnings already emitted: the same problem of the same file at most once a minute,
    /// whatever its text (SPEC §9.3).
    warned: WarnLimiter,
    /// Last error per profile, and skipped profiles, for `status`.
    report: StatusRecord,
    last_full: Instant,
    /// Events asked for a full re-list; it runs once [`RELIST_COALESCE`] has passed since the
    /// last one.
    relist_pending: bool,
    /// Slot files as last read (re-read only when their inode, size or times change).
    slot_files: SlotFileCache,
    /// Slot files as last rendered, by profile: a re-list does not render unchanged ones again.
    render_memo: plan::render::RenderMemo,
    /// Profile files as last parsed (SPEC §9.3: parsed again only when their identity changes).
    profile_files: ProfileFileCache,
    /// Crash-loop backoff (SPEC §6.8): each slot's `supervise/status` rewrites, and each
    /// slot's tracker. `None`: off (or inotify unavailable).
    crash: Option<CrashWatch>,
    /// The profiles the capacity guard admits in `world`: computed by full passes, and again
    /// only when a pass changes whether a profile exists or has a slot.
    admitted: BTreeSet<ProfileName>,
    /// Named profiles of `world` without a slot, kept from the profiles each pass touched.
    slotless: BTreeSet<ProfileName>,
    /// `world.previous_ports` is what the last pass assigned (saved, or unchanged): a partial
    /// pass may then plan its profiles alone ([`plan::incremental`]).
    ports_clean: bool,
    /// The last full pass found nothing to do and left nothing pending, and nothing has run
    /// since (every event, timer and pass clears it). A re-list that then observes the very
    /// same world skips planning and applying, which would decide the same and do nothing
    /// (issue 15: a quiet volume's periodic re-list costs its observation only), and one
    /// whose tape replays unchanged does not even observe.
    settled: Option<Settled>,
}

/// What a settled pass leaves for the next re-list.
struct Settled {
    /// Its warnings, logged or held back then.
    warnings: Vec<Warning>,
    /// What the last re-list that found the world unchanged read, when it can be replayed
    /// ([`observe::tape`]): a re-list whose every answer is the same would observe that same
    /// world. It names lock files the slot cache holds open: it lives only as long as
    /// nothing else runs, and no observation runs while it does.
    tape: Option<observe::tape::Tape>,
}

/// The pass planned and did nothing: no step, no leftover to clear, no port record or legacy
/// record to write, nothing deferred, and applying raised no error, warning or removal.
fn did_nothing(plan: &plan::Plan, outcome: &Outcome) -> bool {
    plan.profiles.iter().all(|pp| pp.steps.is_empty())
        && plan.clear_hidden.is_empty()
        && !plan.clear_kick
        && !plan.ports_changed
        && !plan.migrate_legacy
        && plan.deferred.is_empty()
        && outcome.errors.is_empty()
        && outcome.warnings.is_empty()
        && outcome.removals.is_empty()
        && !outcome.abandoned
}

/// Whether a profile exists and whether it has a slot: what capacity admission, the absent
/// set and the slotless set are made of.
type Standing = (bool, bool);

/// Crash-loop backoff state of the daemon.
pub struct CrashWatch {
    pub watch: crate::observe::deaths::StatusWatch,
    policy: crashloop::Policy,
    trackers: BTreeMap<ProfileName, crashloop::Tracker>,
}

impl Daemon {
    /// The daemon's state, and the stream of its watcher's events (`None` without a watcher:
    /// then it re-lists every [`FALLBACK_RELIST`]). The backend is logged here, once.
    pub fn new(cfg: Config, applier: Applier) -> (Self, Option<EventStream>) {
        let backend = watch::choose(cfg.watch, &cfg.home);
        let (watcher, events) = match Watcher::new(&cfg.home, backend, cfg.poll) {
            Ok((w, e)) => {
                match backend {
                    watch::Backend::Inotify => {
                        tracing::info!(watch = "inotify", "watching the volume with inotify")
                    }
                    watch::Backend::Poll => tracing::info!(
                        watch = "poll",
                        period_ms = cfg.poll.as_millis() as u64,
                        "watching the volume by polling"
                    ),
                }
                (Some(w), Some(e))
            }
            Err(e) => {
                tracing::warn!("{e}; falling back to re-listing every {FALLBACK_RELIST:?}");
                (None, None)
            }
        };
        let mut report = StatusRecord::from(observe::status_record::read(&cfg.runtime_dir));
        report.watch = Some(match &watcher {
            Some(_) if backend == watch::Backend::Poll => format!("poll ({} ms)", cfg.poll.as_millis()),
            Some(_) => "inotify".to_string(),
            None => format!("none (re-listing every {} s)", FALLBACK_RELIST.as_secs()),
        });
        let cfg_crash = (cfg.crashloop, cfg.backoff_max, cfg.crashloop_reset);
        let daemon = Daemon {
            polling_fallback: watcher.is_none(),
            world: Observed::empty(),
            watcher,
            cfg,
            applier,
            absent: BTreeMap::new(),
            retries: BTreeMap::new(),
            removals: Vec::new(),
            deferred: BTreeSet::new(),
            warned: WarnLimiter::default(),
            // Carry over what `once` (or a previous run) reported, so skips already logged at
            // boot are not logged again.
            report,
            last_full: Instant::now(),
            relist_pending: false,
            slot_files: SlotFileCache::watching(),
            render_memo: plan::render::RenderMemo::default(),
            profile_files: ProfileFileCache::holding(crate::observe::descriptor_budget() / 3),
            crash: crash_watch(&cfg_crash),
            admitted: BTreeSet::new(),
            slotless: BTreeSet::new(),
            ports_clean: false,
            settled: None,
        };
        (daemon, events)
    }

    /// The timer state as the pure schedule sees it.
    fn timers<'a>(
        &'a self,
        removals: &'a [Instant],
        holds: &'a BTreeMap<ProfileName, Instant>,
    ) -> schedule::Timers<'a> {
        schedule::Timers {
            last_full: self.last_full,
            resync: self.cfg.resync,
            fallback: self.polling_fallback,
            relist_pending: self.relist_pending,
            remove_grace: self.cfg.remove_grace,
            absent: &self.absent,
            retries: &self.retries,
            removals,
            holds,
        }
    }

    /// When each crash-loop hold ends.
    fn hold_ends(&self) -> BTreeMap<ProfileName, Instant> {
        self.crash
            .iter()
            .flat_map(|c| c.trackers.iter())
            .filter_map(|(n, t)| t.hold.as_ref().map(|h| (n.clone(), h.until)))
            .collect()
    }

    /// The descriptor that turns readable when a slot's status is rewritten (crash-loop
    /// backoff on), for the event loop to wait on.
    pub fn status_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.crash.as_ref().map(|c| c.watch.as_raw_fd())
    }

    /// Slots' statuses were rewritten: feed each tracker, hold down or release.
    pub fn on_status_events(&mut self, now: Instant) {
        self.settled = None;
        let Some(crash) = self.crash.as_mut() else { return };
        let names = crash.watch.read();
        let mut lines = Vec::new();
        for name in names {
            let dir = slot_dir(&self.cfg.scandir, &name);
            let Some(seen) = crate::observe::deaths::seen(&dir) else { continue };
            let tracker = crash.trackers.entry(name.clone()).or_default();
            match tracker.observe(&seen, now, &crash.policy) {
                crashloop::Verdict::Nothing => {}
                crashloop::Verdict::HoldDown(h) => {
                    // `d`: want-up cleared, `./down` left as the applied intent has it, so a
                    // supervisor restart goes by the intent, not by a hold nobody remembers.
                    if let Err(e) = s6::send_command(&dir, SupervisorCommand::Down) {
                        tracing::error!(slot = %name.slot_name(), "crash loop: cannot hold the gateway down: {e}");
                        tracker.hold = None;
                        continue;
                    }
                    tracing::warn!(
                        "profile {name}: gateway crash-looping ({} deaths within {:?}, last {}); held down, tried again in {:?}",
                        h.deaths,
                        crash.policy.window,
                        h.last_exit.describe(),
                        h.retry_in
                    );
                    let at = chrono::Local::now()
                        + chrono::Duration::from_std(h.retry_in).unwrap_or_else(|_| chrono::Duration::zero());
                    self.report.backoff.insert(
                        name.to_string(),
                        format!(
                            "until {} (deaths={}, last {})",
                            at.format("%Y-%m-%dT%H:%M:%S%z"),
                            h.deaths,
                            h.last_exit.describe()
                        ),
                    );
                    lines.push(plan::Decision {
                        profile: name.to_string(),
                        slot: Some(name.slot_name()),
                        action: plan::ActionKind::Backoff,
                        prior_state: Some("running".into()),
                        prior_exit: crate::model::PriorExit::Unknown,
                        reason: Some(plan::Reason::CrashLoop),
                        folded_into_root: None,
                        backoff: Some(plan::BackoffInfo {
                            retry_in_secs: h.retry_in.as_secs(),
                            deaths: h.deaths,
                            last_exit: h.last_exit.describe(),
                        }),
                    });
                }
                crashloop::Verdict::Released => {
                    tracing::info!(
                        "profile {name}: gateway wanted up by someone else; crash-loop hold ended"
                    );
                    self.report.backoff.remove(name.as_str());
                }
            }
        }
        if !lines.is_empty()
            && let Err(e) = self.applier.log_decisions(&lines)
        {
            tracing::error!("container-boot.log not written: {e}");
        }
        if let Err(e) = self.report.write(&self.cfg.runtime_dir) {
            tracing::debug!("status file not written: {e}");
        }
    }

    /// Holds whose time has come (`due`, from the schedule): want those gateways up again.
    fn retry_holds(&mut self, due: &BTreeSet<ProfileName>, now: Instant) {
        let Some(crash) = self.crash.as_mut() else { return };
        for name in due {
            let Some(tracker) = crash.trackers.get_mut(name) else { continue };
            if tracker.due(now) {
                let dir = slot_dir(&self.cfg.scandir, name);
                match s6::send_command(&dir, SupervisorCommand::Up) {
                    Ok(()) => tracing::info!("profile {name}: crash-loop hold over; gateway tried again"),
                    Err(e) => tracing::warn!(
                        "profile {name}: crash-loop hold over, but the gateway could not be wanted up: {e}"
                    ),
                }
                self.report.backoff.remove(name.as_str());
            }
        }
        if let Err(e) = self.report.write(&self.cfg.runtime_dir) {
            tracing::debug!("status file not written: {e}");
        }
    }

    /// The operator's new `desired_state` (a command the daemon applied) ends a hold at once.
    /// `slots_changed`: slots came or went, so the trackers and status watches follow.
    fn release_holds(&mut self, applied: &[plan::Decision], slots_changed: bool) {
        let Some(crash) = self.crash.as_mut() else { return };
        for d in applied {
            if matches!(d.action, plan::ActionKind::Started | plan::ActionKind::Stopped)
                && let Ok(name) = ProfileName::parse_any(&d.profile)
                && crash.trackers.get_mut(&name).is_some_and(|t| t.release())
            {
                tracing::info!("profile {name}: new desired_state; crash-loop hold ended");
                self.report.backoff.remove(name.as_str());
            }
        }
        if slots_changed {
            let slots = &self.world.scandir.slots;
            crash.trackers.retain(|n, _| slots.contains_key(n));
            crash.watch.sync(&self.cfg.scandir, slots.keys());
        }
    }

    /// When the next timer-driven work is due.
    pub fn next_deadline(&self, now: Instant) -> Instant {
        let removals: Vec<Instant> = self.removals.iter().map(|r| r.since).collect();
        let holds = self.hold_ends();
        self.timers(&removals, &holds).next_deadline(now)
    }

    /// Runs whatever timers are due at `now`: removals, full re-list, expired graces, retries.
    pub fn on_timer(&mut self, now: Instant) {
        let removals: Vec<Instant> = self.removals.iter().map(|r| r.since).collect();
        let holds = self.hold_ends();
        let due = self.timers(&removals, &holds).due(now);
        if due.removals || !due.holds.is_empty() || !due.profiles.is_empty() {
            self.settled = None;
        }
        if !due.holds.is_empty() {
            self.retry_holds(&due.holds, now);
        }
        if due.removals
            && self.poll_removals()
            && !self.deferred.is_empty()
            && !self.applier.shutdown.requested()
        {
            // Room given back: the profiles that waited for it get their slots now.
            self.partial_pass(self.deferred.clone());
        }
        if due.full {
            self.full_pass(PassKind::Continuous);
        } else if !due.profiles.is_empty() {
            self.partial_pass(due.profiles);
        }
    }

    /// A batch of watcher events: the changed profiles are served first, then a re-list if the
    /// batch asks for one (coalesced): a storm of re-list events never delays a profile's own
    /// change (SPEC §9.3).
    pub fn on_events(&mut self, batch: Batch, now: Instant) {
        self.settled = None;
        let mut changes = watch::interpret(&self.cfg.home, &batch.events);
        changes.relist |= batch.overflowed;
        if let Some(w) = self.watcher.as_mut()
            && let Err(e) = w.follow(&changes)
        {
            tracing::warn!("a new entry of profiles/ is not watched: {e}; re-listing");
            changes.relist = true;
        }
        if !changes.dirty.is_empty() {
            self.partial_pass(changes.dirty);
        }
        if changes.relist {
            self.request_relist(now);
        }
    }

    /// An event asks for a full re-list: run it now if the last one is at least
    /// [`RELIST_COALESCE`] old, else once it is (from [`Daemon::on_timer`]). Call it after
    /// serving the event's dirty profiles, so they never wait for a re-list.
    pub fn request_relist(&mut self, now: Instant) {
        self.relist_pending = true;
        if relist_due_at(self.last_full, now) <= now {
            self.full_pass(PassKind::Continuous);
        }
    }

    /// The profiles the capacity guard admits in the current world.
    fn admitted_now(&self) -> BTreeSet<ProfileName> {
        let cap = crate::plan::capacity::capacity(&self.cfg, &self.world.scanner);
        let slots = &self.world.scandir.slots;
        crate::plan::capacity::admitted(
            self.world.profiles.iter().map(|p| &p.name),
            |n| slots.contains_key(n),
            cap.named,
        )
    }

    /// Keeps the watches on the admitted profiles' directories (plus a bounded number of other
    /// entries). Returns the admitted profiles that were not watched until now.
    fn sync_watches(&mut self) -> Vec<ProfileName> {
        let Some(w) = self.watcher.as_mut() else { return Vec::new() };
        match w.set_admitted(&self.admitted) {
            Ok(fresh) => fresh,
            Err(e) => {
                if !self.polling_fallback {
                    tracing::warn!("watch failed: {e}; re-listing every {FALLBACK_RELIST:?}");
                }
                self.polling_fallback = true;
                Vec::new()
            }
        }
    }

    /// Establishes watches (before listing, so nothing created in between is missed), then
    /// observes everything and converges it.
    pub fn full_pass(&mut self, kind: PassKind) {
        let converged = self.full_pass_inner(kind);
        // Not before: closing an intent file the agent replaced may wait on the device.
        self.profile_files.close_released();
        if !converged {
            return;
        }
        // Slots this pass created or removed may move the capacity guard's line.
        self.admitted = self.admitted_now();
        // Profiles admitted for the first time were listed before their watch existed: read
        // them once more so a change made in between is not left to the next re-list.
        let fresh = self.sync_watches();
        if !fresh.is_empty() {
            self.partial_pass(fresh.into_iter().collect());
        }
    }

    /// `false` when the re-list found the world as the last settled pass left it (nothing
    /// planned, nothing to follow up).
    fn full_pass_inner(&mut self, kind: PassKind) -> bool {
        self.relist_pending = false;
        if kind == PassKind::Continuous
            && !self.polling_fallback
            && let Some(tape) = self.settled.as_ref().and_then(|s| s.tape.as_ref())
        {
            if tape.unchanged() {
                // Every question the last observation asked got the same answer: it would
                // observe the same world, in which the settled pass found nothing to do.
                tracing::debug!(steps = tape.len(), "re-list replayed unchanged");
                self.last_full = Instant::now();
                self.warned.end_same_full_pass(Instant::now());
                return false;
            }
            tracing::debug!("re-list replay found a change; observing");
        }
        // An observation runs: the tape (which names lock files the observation may close)
        // goes, whatever the pass finds.
        let settled = self.settled.take();
        let (world, tape) = if kind == PassKind::Continuous && settled.is_some() {
            observe::tape::record(|| self.establish_and_observe(kind))
        } else {
            (self.establish_and_observe(kind), Err("the last pass did not settle"))
        };
        // Compared only when the last pass settled: the comparison is not free.
        if let Some(Settled { warnings, .. }) = settled
            && kind == PassKind::Continuous
            && world == self.world
        {
            // The plan is a function of the world, the configuration and the daemon's pending
            // work (none: see `nothing_pending`): it would be the settled pass's, with no step.
            // Its warnings are the settled pass's, logged or held back then; no warning was
            // offered since (anything that could offer one clears `settled`), so offering them
            // again would log nothing: only the filter's old entries expire.
            tracing::debug!("re-list found the world unchanged since a pass with nothing to do");
            if let Err(why) = &tape {
                tracing::debug!("the next re-list observes again: {why}");
            }
            self.warned.end_same_full_pass(Instant::now());
            self.settled = Some(Settled { warnings, tape: tape.ok() });
            return false;
        }
        self.world = world;
        if self.applier.shutdown.requested() {
            return false;
        }
        self.track_absent();
        self.slotless = self
            .world
            .profiles
            .iter()
            .filter(|p| !p.name.is_root() && !self.world.scandir.slots.contains_key(&p.name))
            .map(|p| p.name.clone())
            .collect();
        self.admitted = self.admitted_now();
        let hold = self.held();
        let plan = plan::plan_with(
            &self.world,
            &self.cfg,
            &PassOptions { kind, only: None, hold: &hold, memo: Some(&self.render_memo) },
        );
        // Only profiles planned again may use it: bounded by the admitted ones.
        self.render_memo.retain(|n| self.admitted.contains(n));
        let skipped = status_record::skips(plan.decisions());
        self.emit_warnings(&plan.warnings, true);
        self.report.scandir = status_record::scandir_findings(&plan.warnings);
        let mut outcome = self.applier.apply(&plan);
        // A skip is logged when it starts, not at every re-list while it lasts.
        let previous = std::mem::replace(&mut self.report.skipped, skipped);
        outcome.applied.retain(|d| {
            d.action != plan::ActionKind::Skipped
                || previous.get(&d.profile).map(String::as_str) != Some(d.reason.as_deref().unwrap_or(""))
        });
        let quiet = kind == PassKind::Continuous && did_nothing(&plan, &outcome);
        self.after_apply(&plan, outcome, None);
        if quiet && self.nothing_pending() {
            self.settled = Some(Settled { warnings: plan.warnings, tape: None });
        }
        true
    }

    /// Establishes watches (before listing, so nothing created in between is missed), then
    /// observes everything through the caches.
    fn establish_and_observe(&mut self, kind: PassKind) -> Observed {
        if let Some(w) = self.watcher.as_mut() {
            match w.establish() {
                Ok(()) => {
                    if self.polling_fallback {
                        tracing::info!("watches re-established; periodic re-listing back to normal");
                    }
                    self.polling_fallback = false;
                }
                Err(WatchError::Limit) => {
                    if !self.polling_fallback {
                        tracing::warn!(
                            "inotify watch limit exhausted; some changes are seen only by re-listing every {FALLBACK_RELIST:?}"
                        );
                    }
                    self.polling_fallback = true;
                }
                Err(e) => {
                    if !self.polling_fallback {
                        tracing::warn!("watch failed: {e}; re-listing every {FALLBACK_RELIST:?}");
                    }
                    self.polling_fallback = true;
                }
            }
        }
        self.last_full = Instant::now();
        let watcher = self.watcher.as_ref();
        let world = observe::observe_all_cached(
            &self.cfg,
            (kind == PassKind::Boot).then_some(Path::new("/proc")),
            &mut self.slot_files,
            &mut self.profile_files,
            &|name| watcher.and_then(|w| w.dir_key(name)),
        );
        self.slot_files.end_pass();
        self.profile_files.end_full_pass();
        world
    }

    /// No work waits on a timer or on a removal: a pass over an unchanged world would find
    /// nothing more to do than the last one.
    fn nothing_pending(&self) -> bool {
        self.absent.is_empty()
            && self.retries.is_empty()
            && self.deferred.is_empty()
            && self.removals.is_empty()
    }

    /// Re-observes the given profiles and converges them alone, in work proportional to them
    /// (issue 15): their slots are known from what the daemon last read or wrote (a full
    /// re-list reads them afresh), admission, the absent and slotless sets are updated from
    /// them, and they are planned alone unless the change can reach other profiles.
    pub fn partial_pass(&mut self, dirty: BTreeSet<ProfileName>) {
        self.settled = None;
        let before: Vec<Standing> = dirty.iter().map(|n| self.standing(n)).collect();
        for name in &dirty {
            if self.applier.shutdown.requested() {
                return;
            }
            self.refresh(name);
        }
        let moved = self.note(&dirty, &before);
        if moved {
            self.admitted = self.admitted_now();
        }
        for name in &dirty {
            if self.admitted.contains(name)
                && let Some(p) = profile_mut(&mut self.world.profiles, name)
            {
                observe::read_profile_files(p, &mut self.profile_files);
            }
        }
        self.profile_files.end_pass();
        // Supervisors of hidden slots count against s6-svscan's limit until they exit; only
        // worth a look while some may still run.
        if !self.removals.is_empty() || self.world.scanner.removing_units > 0 {
            self.world.scanner.removing_units = observe::svscan::removing_units(&self.cfg.scandir);
        }
        let hold = self.held();
        let kept = plan::incremental::Maintained {
            slotless: &self.slotless,
            ports_clean: self.ports_clean,
            memo: Some(&self.render_memo),
        };
        let plan = plan::incremental::plan_dirty(&self.world, &self.cfg, &kept, &dirty, &hold)
            .unwrap_or_else(|| {
                plan::plan_with(
                    &self.world,
                    &self.cfg,
                    &PassOptions {
                        kind: PassKind::Continuous,
                        only: Some(&dirty),
                        hold: &hold,
                        memo: Some(&self.render_memo),
                    },
                )
            });
        self.emit_warnings(&plan.warnings, false);
        let mid: Vec<Standing> = dirty.iter().map(|n| self.standing(n)).collect();
        let outcome = self.applier.apply(&plan);
        // The control bytes are written: now the intent files let go may be closed.
        self.profile_files.close_released();
        self.after_apply(&plan, outcome, Some(&dirty));
        let after: Vec<Standing> = dirty.iter().map(|n| self.standing(n)).collect();
        if moved || mid != after {
            if mid != after {
                self.admitted = self.admitted_now();
            }
            self.sync_watches();
        }
    }

    /// Whether `name` exists in `world` and whether it has a slot there.
    fn standing(&self, name: &ProfileName) -> Standing {
        (
            plan::incremental::find_profile(&self.world, name).is_some(),
            self.world.scandir.slots.contains_key(name),
        )
    }

    /// Brings the absent and slotless sets up to date for `names`, whose standing was
    /// `before`; `true` when one of them changed (capacity admission may then differ).
    fn note(&mut self, names: &BTreeSet<ProfileName>, before: &[Standing]) -> bool {
        let now = Instant::now();
        let mut moved = false;
        for (name, was) in names.iter().zip(before) {
            let (present, slotted) = self.standing(name);
            moved |= *was != (present, slotted);
            if name.is_root() {
                continue;
            }
            if present && !slotted {
                self.slotless.insert(name.clone());
            } else {
                self.slotless.remove(name);
            }
            if slotted && !present {
                self.absent.entry(name.clone()).or_insert(now);
            } else {
                self.absent.remove(name);
            }
        }
        moved
    }

    /// Re-lists one profile into `world` (its files are read afterwards, only if the capacity
    /// guard admits it: SPEC §9.3, files of profiles over it are not read). Its slot is read
    /// only when `world` knows none: the daemon keeps what it wrote, and full re-lists repair
    /// what others changed.
    fn refresh(&mut self, name: &ProfileName) {
        let obs = if name.is_root() {
            Some(observe::unread_profile(ProfileName::root(), self.cfg.home.clone(), false))
        } else {
            match observe::probe_named(&self.cfg.home, name) {
                Ok(o) => o,
                Err(w) => {
                    self.emit_warnings(&[Warning::new(Finding::Discovery { text: w })], false);
                    None
                }
            }
        };
        let start = usize::from(self.world.profiles.first().is_some_and(|p| p.name.is_root()));
        let profiles = &mut self.world.profiles;
        let found = if name.is_root() {
            if start == 1 { Ok(0) } else { Err(0) }
        } else {
            profiles[start..].binary_search_by(|p| p.name.cmp(name)).map(|i| i + start).map_err(|i| i + start)
        };
        match (obs, found) {
            (Some(o), Ok(i)) => profiles[i] = o,
            (Some(o), Err(at)) => profiles.insert(at, o),
            (None, Ok(i)) => {
                profiles.remove(i);
            }
            (None, Err(_)) => {}
        }
        if !self.world.scandir.slots.contains_key(name) {
            self.refresh_slot(name);
        }
    }

    fn refresh_slot(&mut self, name: &ProfileName) {
        let dir = slot_dir(&self.cfg.scandir, name);
        if dir.is_dir() {
            self.world.scandir.slots.insert(name.clone(), observe_slot(&dir, &mut self.slot_files));
        } else {
            self.world.scandir.slots.remove(name);
        }
    }

    /// Starts the grace clock for slots that lost their profile, stops it for the others.
    fn track_absent(&mut self) {
        let now = Instant::now();
        let known: BTreeSet<&ProfileName> = self.world.profiles.iter().map(|p| &p.name).collect();
        let orphans: BTreeSet<ProfileName> =
            self.world.scandir.slots.keys().filter(|n| !n.is_root() && !known.contains(n)).cloned().collect();
        self.absent.retain(|n, _| orphans.contains(n));
        for n in orphans {
            self.absent.entry(n).or_insert(now);
        }
    }

    fn held(&self) -> BTreeSet<ProfileName> {
        let now = Instant::now();
        self.absent
            .iter()
            .filter(|(_, since)| now < **since + self.cfg.remove_grace)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Logs warnings through the filter; a full pass's warnings are every cause that persists.
    fn emit_warnings(&mut self, warnings: &[Warning], full: bool) {
        let now = Instant::now();
        for w in warnings {
            if self.warned.admit(w, now) {
                tracing::warn!("{w}");
            }
        }
        if full {
            // A cause that went away may come back: warn again then (at most once a minute).
            self.warned.end_full_pass(warnings, now);
        }
    }

    /// Books the outcome of a pass. `scope` is the set a partial pass covered (`None`: all).
    fn after_apply(&mut self, plan: &plan::Plan, outcome: Outcome, scope: Option<&BTreeSet<ProfileName>>) {
        self.emit_warnings(&outcome.warnings, false);
        match scope {
            None => self.deferred.clear(),
            Some(s) => self.deferred.retain(|n| !s.contains(n)),
        }
        if self.removals.is_empty() && outcome.removals.is_empty() && !plan.deferred.is_empty() {
            // Nothing in flight will give room back: the next full pass plans them again.
            tracing::debug!(profiles = plan.deferred.len(), "slots deferred to the next full pass");
        } else if !plan.deferred.is_empty() {
            tracing::info!(
                profiles = plan.deferred.len(),
                "new slots wait until removed slots' supervisors have exited (s6-svscan's service limit)"
            );
        }
        self.deferred.extend(plan.deferred.iter().cloned());
        let now = Instant::now();
        let failed: BTreeSet<&ProfileName> = outcome.errors.iter().map(|e| &e.profile).collect();
        for e in &outcome.errors {
            match retry::error_policy(e) {
                retry::Retry::Backoff => {
                    let b = Backoff::after_failure(self.retries.get(&e.profile).copied(), now);
                    tracing::error!("{e}; retrying in {:?}", b.due - now);
                    self.retries.insert(e.profile.clone(), b);
                }
                retry::Retry::OnChange => {
                    tracing::error!("{e}; not retried until the profile changes or the next full re-list");
                    self.retries.remove(&e.profile);
                }
            }
            self.report.errors.insert(e.profile.to_string(), e.source.to_string());
        }
        // Success clears a profile's backoff, whether or not it needed steps this time (a
        // retried profile that converged by other means must not stay due forever).
        let succeeded = |n: &ProfileName| !failed.contains(n) && scope.is_none_or(|s| s.contains(n));
        self.retries.retain(|n, _| !succeeded(n));
        self.report.errors.retain(|n, _| ProfileName::parse_any(n).map_or(true, |n| !succeeded(&n)));
        // The slots as written, without reading them back; a profile that failed is read
        // back (what it left is unknown). Stopping: nothing reads `world` again.
        // Only profiles that carried out steps (or failed some) can have a slot more or less:
        // a full pass's thousands of capacity skips cost nothing here.
        let acted: BTreeSet<ProfileName> = outcome
            .done
            .iter()
            .filter(|(_, steps)| !steps.is_empty())
            .map(|(n, _)| n.clone())
            .chain(outcome.errors.iter().map(|e| e.profile.clone()))
            .collect();
        let before: Vec<Standing> = acted.iter().map(|n| self.standing(n)).collect();
        if !outcome.abandoned && scope.is_none() {
            // A full pass (the boot pass creates every slot) reads back what it wrote, through
            // the slot-file cache: the next re-list then finds it cached instead of reading
            // every slot again.
            for name in &acted {
                self.refresh_slot(name);
            }
        } else if !outcome.abandoned {
            for (name, steps) in &outcome.done {
                let slot = self.world.scandir.slots.remove(name);
                let confirm = steps
                    .iter()
                    .any(|s| matches!(s, plan::Step::Create { .. } | plan::Step::EnsureSupervised { .. }));
                if let Some(mut slot) = plan::incremental::settle_slot(slot, steps) {
                    if confirm {
                        // Whether a supervisor took it: one lock query, not a re-read.
                        slot.supervised = s6::supervisor(&slot_dir(&self.cfg.scandir, name)).maybe_alive();
                    }
                    self.world.scandir.slots.insert(name.clone(), slot);
                }
            }
            for e in &outcome.errors {
                self.refresh_slot(&e.profile);
            }
        }
        let slots_changed = self.note(&acted, &before) || scope.is_none();
        // Leftovers are only ever cleared by full passes, which list them afresh.
        self.world.scandir.hidden.clear();
        let ports_saved =
            !outcome.warnings.iter().any(|w| matches!(w.finding, Finding::PortsNotSaved { .. }));
        if plan.ports_changed && ports_saved {
            self.world.previous_ports = plan.ports.clone();
        }
        self.ports_clean = !plan.ports_changed || ports_saved;
        if plan.migrate_legacy {
            self.world.root_state_file_exists = true;
        }
        for d in outcome.applied.iter().filter(|d| d.action != plan::ActionKind::Skipped) {
            // A profile that was over the cap and got its slot in a partial pass (room given
            // back) is no longer skipped.
            self.report.skipped.remove(&d.profile);
        }
        for d in &outcome.applied {
            tracing::info!(
                profile = %crate::escape::Escaped::new(&d.profile),
                action = d.action.as_str(),
                reason = d.reason.as_deref().unwrap_or(""),
                "decision"
            );
        }
        if let Err(e) = self.applier.log_decisions(&outcome.applied) {
            tracing::error!("container-boot.log not written: {e}");
        }
        self.release_holds(&outcome.applied, slots_changed);
        for r in outcome.removals {
            // A full pass lists the hidden directories of removals already in flight too.
            if !self.removals.iter().any(|p| p.hidden == r.hidden) {
                self.removals.push(r);
            }
        }
        if let Err(e) = self.report.write(&self.cfg.runtime_dir) {
            tracing::debug!("status file not written: {e}");
        }
    }

    /// Finishes removals whose supervisors are gone; `true` if one finished (room given back).
    pub fn poll_removals(&mut self) -> bool {
        let scandir = self.cfg.scandir.clone();
        let mut finished = false;
        self.removals.retain_mut(|r| {
            if self.applier.shutdown.requested() {
                return true;
            }
            match r.poll(&scandir) {
                RemovalState::Waiting => true,
                RemovalState::Done => {
                    tracing::debug!(slot = %r.label, "slot removed");
                    finished = true;
                    false
                }
                RemovalState::Stuck(why) => {
                    tracing::error!(slot = %r.label, "removal stuck: {why}");
                    false
                }
            }
        });
        finished
    }

    /// Called on SIGTERM: removals in flight are abandoned (their hidden directories are
    /// cleared by the next start once their supervisors are gone).
    pub fn pending_removals(&self) -> usize {
        self.removals.len()
    }
}
