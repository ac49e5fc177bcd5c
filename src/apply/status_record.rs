//! Builds and writes the daemon's status record ([`StatusReport`]) in its runtime directory:
//! the one report builder, shared by `once` and the daemon (issue 11 item 5), and the only
//! writer of the record ([`crate::observe::status_record`] reads it).

use super::{Outcome, ProfileError};
use crate::fsops::{self, Durability};
use crate::layout::runtime::STATUS_RECORD;
use crate::observe::runtime_record::RuntimeError;
use crate::plan::{ActionKind, Decision};
use crate::warning::{Scope, Warning};
use crate::world::StatusReport;
use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::os::fd::AsFd;
use std::path::Path;

/// The skipped profiles among `decisions`, with their reason words.
pub fn skips<'a>(decisions: impl IntoIterator<Item = &'a Decision>) -> BTreeMap<String, String> {
    decisions
        .into_iter()
        .filter(|d| d.action == ActionKind::Skipped)
        .map(|d| (d.profile.clone(), d.reason.map_or_else(String::new, |r| r.to_string())))
        .collect()
}

/// The findings `status` shows under "scandir".
pub fn scandir_findings(warnings: &[Warning]) -> Vec<String> {
    warnings.iter().filter(|w| w.scope() == Scope::Scandir).map(|w| w.text.clone()).collect()
}

/// Profile → message of each error.
pub fn errors(errors: &[ProfileError]) -> BTreeMap<String, String> {
    errors.iter().map(|e| (e.profile.to_string(), e.source.to_string())).collect()
}

/// The report of one whole pass (`once`): its errors, its skips, its scandir findings.
pub fn of_pass(plan_warnings: &[Warning], outcome: &Outcome) -> StatusReport {
    StatusReport {
        errors: errors(&outcome.errors),
        skipped: skips(&outcome.applied),
        scandir: scandir_findings(plan_warnings),
        watch: None,
        backoff: BTreeMap::new(),
    }
}

/// The report as last written, so an unchanged one is not rewritten at every pass.
#[derive(Debug, Default)]
pub struct StatusRecord {
    report: StatusReport,
    written: Option<Vec<u8>>,
}

impl From<StatusReport> for StatusRecord {
    fn from(report: StatusReport) -> Self {
        StatusRecord { report, written: None }
    }
}

impl Deref for StatusRecord {
    type Target = StatusReport;
    fn deref(&self) -> &StatusReport {
        &self.report
    }
}

impl DerefMut for StatusRecord {
    fn deref_mut(&mut self) -> &mut StatusReport {
        &mut self.report
    }
}

impl StatusRecord {
    /// Writes the report into `runtime_dir` atomically if it changed since the last write. The
    /// directory is opened and checked as every use of it is ([`super::runtime_record`]: created
    /// `0700`, trusted only while the daemon's user owns it and no one else may enter). Not
    /// synced: the record describes this container boot only.
    pub fn write(&mut self, runtime_dir: &Path) -> Result<(), RuntimeError> {
        let path = runtime_dir.join(STATUS_RECORD);
        let io = |e: std::io::Error| RuntimeError::Io { path: path.clone(), source: e };
        let bytes = serde_json::to_vec_pretty(&self.report).map_err(|e| io(std::io::Error::other(e)))?;
        if self.written.as_deref() == Some(bytes.as_slice()) {
            return Ok(());
        }
        let dir = super::runtime_record::open_dir(runtime_dir)?;
        fsops::replace_at(dir.as_fd(), STATUS_RECORD, &bytes, 0o600, Durability::Volatile, |_| Ok(()))
            .map_err(io)?;
        self.written = Some(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn written_in_a_closed_runtime_dir_read_back_and_never_through_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("run");
        let mut rec = StatusRecord::from(crate::observe::status_record::read(&dir));
        assert_eq!(*rec, StatusReport::default(), "no directory yet: an empty report");
        rec.errors.insert("bot".into(), "boom".into());
        rec.write(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(crate::observe::status_record::read(&dir), *rec);
        // A symlink planted at the record's name is replaced, not written through.
        let outside = t.path().join("outside");
        std::fs::write(&outside, "keep").unwrap();
        let path = dir.join(STATUS_RECORD);
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&outside, &path).unwrap();
        assert_eq!(crate::observe::status_record::read(&dir), StatusReport::default());
        rec.skipped.insert("c".into(), "capacity".into());
        rec.write(&dir).unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
        assert_eq!(crate::observe::status_record::read(&dir), *rec);
    }
}
