//! `hermes-reconciler once`: one boot pass (SPEC §6.1), then exit.

use super::{EXIT_FAILURE, EXIT_OK};
use crate::apply::Applier;
use crate::apply::runtime_record;
use crate::apply::status_record::{self, StatusRecord};
use crate::config::Config;
use crate::escape::{Escaped, json_safe};
use crate::observe::{self, container::ContainerMode};
use crate::plan::{self, Decision, PassKind, Plan, Step};
use crate::warning::Warning;
use serde::Serialize;
use std::path::Path;

#[derive(Serialize)]
struct Report<'a> {
    dry_run: bool,
    mode: &'static str,
    decisions: Vec<&'a Decision>,
    /// Dry run only: the steps that would be taken, one human sentence each.
    #[serde(skip_serializing_if = "Option::is_none")]
    steps: Option<Vec<String>>,
    warnings: &'a [Warning],
    errors: &'a [String],
}

fn mode_name(mode: ContainerMode) -> &'static str {
    match mode {
        ContainerMode::Dashboard => "dashboard",
        ContainerMode::Normal | ContainerMode::LegacyGatewayRun => "normal",
    }
}

/// One sentence per step, for `--dry-run`.
pub fn describe_steps(plan: &Plan, config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if plan.migrate_legacy {
        out.push(format!(
            "write {}/gateway_state.json (legacy `gateway run` migration)",
            config.home.display()
        ));
    }
    if plan.ports_changed {
        out.push(format!("write {}/{}", config.home.display(), crate::layout::home::PORTS_FILE));
    }
    for h in &plan.clear_hidden {
        out.push(format!("clear leftover {}", config.scandir.join(h).display()));
    }
    for pp in &plan.profiles {
        for s in &pp.steps {
            out.push(match s {
                Step::SweepPidFiles { dir } => {
                    format!("remove {0}/gateway.pid and {0}/processes.json if present", dir.display())
                }
                Step::Create { name, up, .. } => format!(
                    "create slot {} ({})",
                    config.scandir.join(name.slot_name()).display(),
                    if *up { "started" } else { "down" }
                ),
                Step::WriteFiles { name, files } => format!(
                    "rewrite {} in slot {}",
                    files.iter().map(|f| f.rel).collect::<Vec<_>>().join(", "),
                    name.slot_name()
                ),
                Step::Command { name, up } => {
                    format!("want slot {} {}", name.slot_name(), if *up { "up" } else { "down" })
                }
                Step::WriteRecord { name, .. } => {
                    format!("record applied intent in slot {}", name.slot_name())
                }
                Step::Remove { name } => format!("remove slot {}", name.slot_name()),
                Step::EnsureSupervised { name } => {
                    format!("have s6-svscan supervise slot {}", name.slot_name())
                }
                Step::CloseEvent { name } => {
                    format!("close event/ of slot {} to other users and clear it", name.slot_name())
                }
            });
        }
    }
    out
}

/// One decision for people; the profile (a raw directory name when skipped), state and reason
/// come from the volume and are escaped.
fn decision_text(d: &Decision) -> String {
    let mut s = format!(
        "{} {} (prior_state={}, prior_exit={})",
        d.action.as_str(),
        Escaped::new(&d.profile),
        Escaped::new(d.prior_state.as_deref().unwrap_or("None")),
        d.prior_exit.as_str()
    );
    if let Some(r) = &d.reason {
        s.push_str(&format!(" reason={r}"));
    }
    s
}

/// Runs the boot pass. Returns the exit status.
pub fn run(config: &Config, applier: &Applier, dry_run: bool, json: bool) -> i32 {
    // The first start of a container boot judges and records the container mode; a dry run
    // only reads the record (or judges without recording).
    if !dry_run && let (_, Some(w)) = runtime_record::settle(&config.runtime_dir, Path::new("/proc")) {
        tracing::warn!("{w}");
    }
    if !dry_run && !json {
        let names = observe::observe_names(config, Some(Path::new("/proc")));
        if let Some((stream, head)) = plan::BootStream::new(&names, config) {
            return run_streamed(config, applier, &names, stream, head);
        }
    }
    let observed = observe::observe_all(config, Some(Path::new("/proc")));
    let plan = plan::plan(&observed, config, PassKind::Boot);
    for w in &plan.warnings {
        tracing::warn!("{w}");
    }
    if plan.mode == ContainerMode::Dashboard {
        tracing::info!("dashboard container: gateways are not supervised here");
    }
    if dry_run {
        let steps = describe_steps(&plan, config);
        let decisions: Vec<&Decision> = plan.decisions().collect();
        if json {
            let report = Report {
                dry_run: true,
                mode: mode_name(plan.mode),
                decisions,
                steps: Some(steps),
                warnings: &plan.warnings,
                errors: &[],
            };
            println!("{}", json_safe(&serde_json::to_string(&report).expect("report serialises")));
        } else {
            for s in &steps {
                println!("would {s}");
            }
            for d in decisions {
                println!("would log: {}", decision_text(d));
            }
        }
        return EXIT_OK;
    }
    let outcome = applier.apply(&plan);
    for w in &outcome.warnings {
        tracing::warn!("{w}");
    }
    for e in &outcome.errors {
        tracing::error!("{e}");
    }
    let mut warnings = plan.warnings.clone();
    warnings.extend(outcome.warnings.iter().cloned());
    let mut errors: Vec<String> = outcome.errors.iter().map(ToString::to_string).collect();
    let mut report = StatusRecord::from(status_record::of_pass(&warnings, &outcome));
    // The boot pass watches nothing: keep what a daemon of this boot reported.
    report.watch = crate::observe::status_record::read(&config.runtime_dir).watch;
    if plan.mode != ContainerMode::Dashboard
        && let Err(e) = report.write(&config.runtime_dir)
    {
        tracing::debug!("status file not written: {e}");
    }
    // A dashboard container writes nothing under $HERMES_HOME (SPEC §5.4): the gateway
    // container usually shares the volume, and its boot log must not fill with our boots.
    if plan.mode != ContainerMode::Dashboard
        && let Err(e) = applier.log_decisions(&outcome.applied)
    {
        tracing::error!("container-boot.log not written: {e}");
        errors.push(format!("container-boot.log not written: {e}"));
    }
    if json {
        let report = Report {
            dry_run: false,
            mode: mode_name(plan.mode),
            decisions: outcome.applied.iter().collect(),
            steps: None,
            warnings: &warnings,
            errors: &errors,
        };
        println!("{}", json_safe(&serde_json::to_string(&report).expect("report serialises")));
    } else {
        // One write for all the lines, not one per profile (stdout is line-buffered).
        let text: String = outcome.applied.iter().map(|d| decision_text(d) + "\n").collect();
        print!("{text}");
    }
    if errors.is_empty() { EXIT_OK } else { EXIT_FAILURE }
}

/// Profiles read, planned and applied together by a streamed boot pass: memory holds one
/// batch's rendered slots at a time.
const BATCH: usize = 256;

/// The boot pass in batches of [`BATCH`] profiles (issue 14): observe (files), plan and apply
/// each batch, then append its boot-log lines (one timestamp for the whole pass, in order) and
/// print them. What it decides and does is what the whole pass would ([`plan::BootStream`]);
/// only the diagnostics come as they arise instead of all before applying.
fn run_streamed(
    config: &Config,
    applier: &Applier,
    names: &observe::Observed,
    mut stream: plan::BootStream<'_>,
    mut plan: Plan,
) -> i32 {
    for w in &plan.warnings {
        tracing::warn!("{w}");
    }
    // What the status record needs of the warnings: the scandir findings (bounded).
    let keep = |w: &Warning| w.scope() == crate::warning::Scope::Scandir;
    let mut kept: Vec<Warning> = plan.warnings.iter().filter(|w| keep(w)).cloned().collect();
    let ts = crate::apply::boot_log::now_timestamp();
    let mut log = BootLog { ts, first: true, error: None, skipped: Vec::new() };
    let mut run = applier.begin(&plan);
    for chunk in names.profiles.chunks(BATCH) {
        if run.out.abandoned {
            // A stop was requested: the rest is neither read nor planned.
            break;
        }
        let mut warnings = Vec::new();
        let mut plans = Vec::with_capacity(chunk.len());
        for p in chunk {
            let mut p = p.clone();
            if !p.name.is_root() && stream.admitted(&p.name) {
                if stream.reads_yaml(&p.name) {
                    observe::read_profile_files_uncached(&mut p);
                } else {
                    observe::read_profile_files_but_yaml(&mut p);
                }
            }
            plans.extend(stream.profile(&p, &mut warnings));
        }
        for w in &warnings {
            tracing::warn!("{w}");
        }
        kept.extend(warnings.into_iter().filter(|w| keep(w)));
        applier.apply_profiles(&mut run, &plans);
        drop(plans);
        // The steps as carried out are for a daemon's view of its slots; a batch keeps none.
        run.out.done.clear();
        let applied = std::mem::take(&mut run.out.applied);
        log.emit(applier, &applied);
    }
    let before = plan.warnings.len();
    stream.finish(&mut plan);
    for w in &plan.warnings[before..] {
        tracing::warn!("{w}");
    }
    kept.extend(plan.warnings[before..].iter().filter(|w| keep(w)).cloned());
    let mut outcome = applier.finish(run, &plan);
    let applied = std::mem::take(&mut outcome.applied);
    log.emit(applier, &applied);
    for w in &outcome.warnings {
        tracing::warn!("{w}");
    }
    for e in &outcome.errors {
        tracing::error!("{e}");
    }
    kept.extend(outcome.warnings.iter().cloned());
    // The status record's skips come from the applied decisions: the skipped ones suffice.
    outcome.applied = log.skipped;
    let mut report = StatusRecord::from(status_record::of_pass(&kept, &outcome));
    report.watch = crate::observe::status_record::read(&config.runtime_dir).watch;
    if let Err(e) = report.write(&config.runtime_dir) {
        tracing::debug!("status file not written: {e}");
    }
    if outcome.errors.is_empty() && log.error.is_none() { EXIT_OK } else { EXIT_FAILURE }
}

/// The boot log and stdout of a streamed pass.
struct BootLog {
    ts: String,
    /// No batch logged yet: the log may be rotated before this one.
    first: bool,
    error: Option<String>,
    /// The skipped decisions so far (for the status record).
    skipped: Vec<Decision>,
}

impl BootLog {
    /// Appends the lines of `applied` to `container-boot.log` and prints them (one write each).
    fn emit(&mut self, applier: &Applier, applied: &[Decision]) {
        if applied.is_empty() {
            return;
        }
        if let Err(e) = applier.log_decisions_at(&self.ts, applied, self.first)
            && self.error.is_none()
        {
            // Said once: the next batches most likely meet the same problem.
            tracing::error!("container-boot.log not written: {e}");
            self.error = Some(e.to_string());
        }
        self.first = false;
        let text: String = applied.iter().map(|d| decision_text(d) + "\n").collect();
        print!("{text}");
        self.skipped.extend(applied.iter().filter(|d| d.action == plan::ActionKind::Skipped).cloned());
    }
}
