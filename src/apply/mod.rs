//! Apply: the only layer that changes s6 or the filesystem. It carries out a [`Plan`] step by
//! step; one profile's failure stops that profile's remaining steps and nothing else.

pub mod boot_log;
pub mod home;
pub mod publish;
pub mod removal;
pub mod runtime_record;
pub mod slot;
pub mod status_record;

use crate::model::ProfileName;
use crate::plan::{Decision, Plan, ProfilePlan, Step};
use crate::s6::{self, ControlError};
use crate::warning::{Finding, Warning};
use home::HomeWriter;
use slot::{SlotError, SlotWriter};
use std::path::Path;

/// Everything the apply layer writes through.
#[derive(Clone, Debug)]
pub struct Applier {
    pub slots: SlotWriter,
    pub home: HomeWriter,
    /// Wait, after each rescan, until every published slot is supervised (and kick a stuck
    /// scanner). The daemon does, so that none of its later mutations can abort a scan that
    /// has not started them yet; `once` does not: it mutates nothing afterwards, and the
    /// daemon's first pass confirms whatever is still unsupervised.
    pub wait_for_pickup: bool,
    /// Set on SIGTERM/SIGINT: a pass stops at its next safe point (between profiles, inside a
    /// supervisor wait), leaving every slot hidden or fully published.
    pub shutdown: crate::shutdown::Shutdown,
}

/// What applying a plan did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Decisions whose steps all succeeded, in log order.
    pub applied: Vec<Decision>,
    /// Profiles whose steps failed.
    pub errors: Vec<ProfileError>,
    /// Problems that did not stop a profile.
    pub warnings: Vec<Warning>,
    /// Slots published in this pass.
    pub created: usize,
    /// Slots hidden in this pass, waiting for their supervisors to exit.
    pub removals: Vec<removal::PendingRemoval>,
    /// Slots that must be supervised once s6-svscan has scanned.
    pub to_confirm: Vec<ProfileName>,
    /// The port record was written (or its write attempted) in this pass.
    pub ports_saved: bool,
    /// A stop was requested: the pass stopped at a safe point before its end.
    pub abandoned: bool,
    /// Each profile whose steps all succeeded, with the steps as carried out (records
    /// stamped): the daemon updates its view of the slot from them instead of reading it back.
    pub done: Vec<(ProfileName, Vec<Step>)>,
}

/// Why a profile's step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Slot(#[from] SlotError),
    #[error(transparent)]
    Home(#[from] home::HomeError),
    #[error("legacy migration record not written: {0}")]
    LegacyRecord(home::HomeError),
    /// Published, but s6-svscan did not pick the slot up (see [`publish`]).
    #[error("slot {slot} is published but s6-svscan does not supervise it: {why}")]
    NotSupervised { slot: String, why: String },
}

/// A profile whose steps failed; the rest of its steps were not run. Whether and when to try
/// again is the daemon's policy (`daemon::retry`), not apply's.
#[derive(Debug, thiserror::Error)]
#[error("profile {profile}: {source}")]
pub struct ProfileError {
    pub profile: ProfileName,
    pub source: StepError,
}

/// The legacy migration record (SPEC §5.4).
pub const LEGACY_RECORD: &str = "{\"gateway_state\":\"running\",\"desired_state\":\"running\",\"migrated_from\":\"legacy-container-cmd\"}\n";

impl Applier {
    fn run_step(&self, step: &Step, out: &mut Outcome, pass: &mut PassFacts) -> Result<(), StepError> {
        match step {
            Step::SweepPidFiles { dir } => {
                // A leftover that cannot be removed safely (a directory of that name, the
                // profile swapped for a symlink since it was read) is reported and left: the
                // gateway runs as an unprivileged user and cannot misuse it beyond its rights,
                // and one odd file must not keep the profile from getting its slot.
                let rel = self.home.relative(dir)?;
                let leftovers = crate::layout::home::PID_LEFTOVERS;
                let results = match self.home.unlink_each_held(&mut pass.held, rel, &leftovers) {
                    Ok(results) => results,
                    Err(e) => {
                        // The directory cannot be opened: one warning per leftover left.
                        let error = e.to_string();
                        for _ in leftovers {
                            out.warnings.push(Finding::LeftoverNotRemoved { error: error.clone() }.into());
                        }
                        Vec::new()
                    }
                };
                for (f, r) in results {
                    match r {
                        Ok(true) => {
                            tracing::info!(file = %dir.join(f).display(), "removed a leftover of the previous container")
                        }
                        Ok(false) => {}
                        Err(e) => {
                            out.warnings.push(Finding::LeftoverNotRemoved { error: e.to_string() }.into())
                        }
                    }
                }
                Ok(())
            }
            Step::Create { name, files, up, record } => {
                let setgid = *pass.setgid_scandir.get_or_insert_with(|| self.slots.scandir_is_setgid());
                self.slots.create(name, files, *up, record, setgid).map_err(StepError::from)?;
                out.created += 1;
                out.to_confirm.push(name.clone());
                Ok(())
            }
            Step::WriteFiles { name, files } => self.slots.write_files(name, files).map_err(StepError::from),
            Step::Command { name, up } => self.slots.command(name, *up).map_err(StepError::from),
            Step::WriteRecord { name, record } => {
                self.slots.write_record(name, record).map_err(StepError::from)
            }
            Step::EnsureSupervised { name } => {
                out.to_confirm.push(name.clone());
                Ok(())
            }
            Step::CloseEvent { name } => {
                let removed = self.slots.close_event(name).map_err(StepError::from)?;
                tracing::warn!(
                    slot = %name.slot_name(),
                    removed,
                    "event/ was open to other users (a slot made by an older build): closed it and removed what was planted in it"
                );
                Ok(())
            }
            Step::Remove { name } => {
                out.removals.push(self.slots.hide(name).map_err(StepError::from)?);
                Ok(())
            }
        }
    }

    /// Applies a whole plan, then asks s6-svscan to rescan if anything was published.
    pub fn apply(&self, plan: &Plan) -> Outcome {
        let mut run = self.begin(plan);
        self.apply_profiles(&mut run, &plan.profiles);
        self.finish(run, plan)
    }

    /// The start of a pass: the legacy migration record and the leftovers of the scandir.
    /// Profiles follow ([`Applier::apply_profiles`], in one go or in batches), then
    /// [`Applier::finish`].
    pub fn begin(&self, plan: &Plan) -> PassRun {
        let mut run = PassRun::default();
        let out = &mut run.out;
        if plan.migrate_legacy {
            match self.home.write_atomic(
                Path::new(""),
                crate::layout::home::INTENT_FILE,
                LEGACY_RECORD.as_bytes(),
            ) {
                Ok(()) => {
                    tracing::info!("legacy `gateway run` container: recorded the root gateway as running")
                }
                Err(e) => {
                    run.root_failed = true;
                    out.errors.push(ProfileError {
                        profile: ProfileName::root(),
                        source: StepError::LegacyRecord(e),
                    });
                }
            }
        }
        for entry in &plan.clear_hidden {
            match self.slots.clear_hidden(entry) {
                Ok(true) => tracing::info!(entry = %entry, "cleared a leftover staging directory"),
                Ok(false) => {
                    // An interrupted removal: finish it (prune, wait for the supervisor, delete).
                    tracing::info!(entry = %entry, "finishing an interrupted removal");
                    out.removals.push(removal::PendingRemoval::leftover(self.slots.scandir.join(entry)));
                }
                Err(e) => out
                    .warnings
                    .push(Finding::LeftoverNotCleared { kick: false, error: e.to_string() }.into()),
            }
        }
        run
    }

    /// Applies the steps of `profiles` (in order), each profile's until one fails. Stops at
    /// the first profile after a stop request (the pass is then abandoned).
    pub fn apply_profiles(&self, run: &mut PassRun, profiles: &[ProfilePlan]) {
        for pp in profiles {
            if run.out.abandoned || self.shutdown.requested() {
                // Safe point: every slot so far is published whole or still hidden.
                run.out.abandoned = true;
                break;
            }
            if run.root_failed && pp.name.is_root() {
                continue;
            }
            // Stamped one step at a time: the local time is taken only when a record is about
            // to be written, after a command byte before it (the intent path), and once per pass.
            let mut stamped = Vec::with_capacity(pp.steps.len());
            let mut failed = None;
            for step in &pp.steps {
                let step = stamp(step, pp.decision.as_ref(), &mut run.at);
                if let Err(e) = self.run_step(&step, &mut run.out, &mut run.facts) {
                    failed = Some(e);
                    break;
                }
                stamped.push(step);
            }
            match failed {
                Some(source) => run.out.errors.push(ProfileError { profile: pp.name.clone(), source }),
                None => {
                    run.out.applied.extend(pp.decision.clone());
                    run.out.done.push((pp.name.clone(), stamped));
                }
            }
        }
    }

    /// The end of a pass: the skipped entries' decisions, the kick entry, the rescan, the port
    /// record, the confirmation that the new slots are supervised.
    pub fn finish(&self, run: PassRun, plan: &Plan) -> Outcome {
        let mut out = run.out;
        out.applied.extend(plan.skipped.iter().cloned());
        if plan.clear_kick
            && !out.abandoned
            && let Err(e) = self.slots.unkick(&self.shutdown)
        {
            out.warnings.push(Finding::LeftoverNotCleared { kick: true, error: e.to_string() }.into());
        }
        if out.created > 0 || !out.removals.is_empty() || !out.to_confirm.is_empty() {
            // Prune when something left the scan, and when the daemon (re)creates slots: a slot
            // deleted by hand leaves its supervisor running in the deleted directory, and only a
            // prune stops that second copy.
            let prune = !out.removals.is_empty() || (self.wait_for_pickup && out.created > 0);
            let rescan = s6::rescan(&self.slots.scandir, prune);
            // The port record only has to be on the volume before the next container start:
            // written after the rescan byte, its fsync does not delay any gateway.
            self.save_ports(plan, &mut out);
            match rescan {
                Ok(()) if self.wait_for_pickup => self.confirm_supervised(&mut out),
                Ok(()) => {}
                Err(ControlError::NoSupervisor(_)) => out
                    .warnings
                    .push(Finding::ScannerNotRunning { scandir: self.slots.scandir.clone() }.into()),
                Err(e) => out.warnings.push(Finding::RescanNotRequested { error: e.to_string() }.into()),
            }
        }
        self.save_ports(plan, &mut out);
        out
    }

    /// Writes `.gateway-ports.json` if the plan changed it (once per pass). Not when the pass
    /// was abandoned for a stop: the write syncs to the volume, which can take long on a busy
    /// disk, and the next start assigns the same ports again (the assignment is a function of
    /// the profiles and the record, both unchanged).
    fn save_ports(&self, plan: &Plan, out: &mut Outcome) {
        if !plan.ports_changed || out.ports_saved || out.abandoned {
            return;
        }
        out.ports_saved = true;
        let mut json = serde_json::to_vec_pretty(&*plan.ports).expect("a map of ports serialises");
        json.push(b'\n');
        if let Err(e) = self.home.write_atomic(Path::new(""), crate::layout::home::PORTS_FILE, &json) {
            out.warnings.push(Finding::PortsNotSaved { error: e.to_string() }.into());
        }
    }

    /// Confirms that every slot published (or found unsupervised) in this pass is picked up by
    /// s6-svscan; re-publishes once, as brand-new directories, those that are not (once the
    /// supervisors of this pass's removals, which count against s6-svscan's limit, are gone);
    /// reports the rest as errors naming what blocks the scan. No later pass mutates the
    /// scandir before this returns, unless a stop is requested (then it returns at once).
    fn confirm_supervised(&self, out: &mut Outcome) {
        if out.to_confirm.is_empty() || out.abandoned {
            return;
        }
        let stop = &self.shutdown;
        let dirs: Vec<_> = out.to_confirm.iter().map(|n| self.slots.slot_dir(n)).collect();
        let mut stuck = publish::wait_supervised(&dirs, stop);
        if !stuck.is_empty() && !stop.requested() {
            // A scan met these while it failed (another entry, or the service limit while
            // removed supervisors still counted): s6 >= 2.12 never starts them unless a scan
            // meets a brand-new directory. Make them new, with the removals' room back first.
            let deadline = std::time::Instant::now() + removal::KILL_AFTER;
            for r in &out.removals {
                publish::wait_unsupervised(&r.hidden, deadline, stop);
            }
            tracing::warn!(
                count = stuck.len(),
                "published slots not picked up by s6-svscan; re-publishing them as new directories"
            );
            let mut again = Vec::new();
            for name in &out.to_confirm {
                let dir = self.slots.slot_dir(name);
                if !stuck.contains(&dir) || stop.requested() {
                    continue;
                }
                match self.slots.republish(name) {
                    Ok(true) => again.push(dir),
                    Ok(false) => {}
                    Err(e) => out.warnings.push(
                        Finding::NotRepublished { slot: name.slot_name(), error: e.to_string() }.into(),
                    ),
                }
            }
            if !again.is_empty() && !stop.requested() {
                match s6::rescan(&self.slots.scandir, true) {
                    Ok(()) => {}
                    Err(e) => out.warnings.push(Finding::RescanNotRequested { error: e.to_string() }.into()),
                }
            }
            stuck = publish::wait_supervised(&stuck, stop);
        }
        if stuck.is_empty() || stop.requested() {
            return;
        }
        let why = publish::diagnose_blockers(&self.slots.scandir, out.to_confirm.len());
        for name in &out.to_confirm {
            if stuck.contains(&self.slots.slot_dir(name)) {
                out.errors.push(ProfileError {
                    profile: name.clone(),
                    source: StepError::NotSupervised { slot: name.slot_name(), why: why.clone() },
                });
            }
        }
    }

    /// Appends the decisions to `container-boot.log`, all with one timestamp.
    pub fn log_decisions(&self, decisions: &[Decision]) -> Result<(), home::HomeError> {
        self.log_decisions_at(&boot_log::now_timestamp(), decisions, true)
    }

    /// Appends the decisions to `container-boot.log` with the timestamp `ts`; `rotate`: the
    /// log may be rotated first (a pass that logs in batches rotates only before its first, so
    /// that its lines stay together).
    pub fn log_decisions_at(
        &self,
        ts: &str,
        decisions: &[Decision],
        rotate: bool,
    ) -> Result<(), home::HomeError> {
        if decisions.is_empty() {
            return Ok(());
        }
        let text: String = decisions.iter().map(|d| boot_log::format_line(ts, d)).collect();
        self.home.append_log(boot_log::BOOT_LOG, &text, if rotate { boot_log::ROTATE_AT } else { u64::MAX })
    }
}

/// A pass being applied: what it did so far, and what its profiles share.
#[derive(Debug, Default)]
pub struct PassRun {
    pub out: Outcome,
    /// The legacy migration record could not be written: the root's steps are not run.
    root_failed: bool,
    facts: PassFacts,
    /// The pass's time, as records show it (taken at the first record written).
    at: Option<String>,
}

/// What a pass learns once and its steps share.
#[derive(Debug, Default)]
struct PassFacts {
    /// `profiles/`, opened once for the pass's pid-file sweeps.
    held: home::HeldDir,
    /// Whether the scandir has the set-group-ID bit, asked at the pass's first slot creation.
    setgid_scandir: Option<bool>,
}

/// Fills the records' informational fields with the decision about to be carried out, and the
/// pass's time `at` (taken now if not yet: when the pass's first record is about to be written).
fn stamp(step: &Step, decision: Option<&Decision>, at: &mut Option<String>) -> Step {
    let mut step = step.clone();
    // Only for a decision with a record to write: thousands of capacity skips (no steps) must
    // not cost a local-time formatting each on every re-list.
    if let Some(d) = decision
        && let Step::Create { record, .. } | Step::WriteRecord { record, .. } = &mut step
    {
        record.last_action = Some(d.action.as_str().to_string());
        record.last_action_at = Some(at.get_or_insert_with(boot_log::now_timestamp).clone());
    }
    step
}
