//! What to do about a profile whose steps failed: the daemon's error policy, kept apart from
//! reconciling (as kube-runtime keeps `error_policy` apart from `reconcile`). Apply reports
//! what failed ([`ProfileError`]); only this decides whether trying again can help.

use crate::apply::home::HomeError;
use crate::apply::slot::SlotError;
use crate::apply::{ProfileError, StepError};

/// When a failed profile is planned again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Transient (I/O, a supervisor that was busy or gone, s6-svscan slow to pick a slot up):
    /// again after the profile's exponential backoff ([`super::backoff`]).
    Backoff,
    /// Trying the same steps again fails the same way: a live slot already holds the name
    /// (`Exists`), the profile's directory resolves outside `$HERMES_HOME` (`Outside`), a
    /// non-regular file sits where a record goes (`NotRegular`). Planned again only when the
    /// world changes: an event about the profile, or the next full re-list, which observes the
    /// world afresh.
    OnChange,
}

/// The policy for one error.
pub fn error_policy(e: &ProfileError) -> Retry {
    match &e.source {
        StepError::Slot(SlotError::Exists(_))
        | StepError::Home(HomeError::Outside { .. } | HomeError::NotRegular { .. })
        | StepError::LegacyRecord(HomeError::Outside { .. } | HomeError::NotRegular { .. }) => {
            Retry::OnChange
        }
        StepError::Slot(SlotError::Io { .. } | SlotError::Control(_))
        | StepError::Home(HomeError::Io { .. })
        | StepError::LegacyRecord(HomeError::Io { .. })
        | StepError::NotSupervised { .. } => Retry::Backoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ProfileName;
    use crate::s6::ControlError;
    use std::path::PathBuf;

    fn err(source: StepError) -> ProfileError {
        ProfileError { profile: ProfileName::root(), source }
    }

    #[test]
    fn only_errors_a_retry_can_fix_are_retried_with_backoff() {
        let p = PathBuf::from("/x");
        let io = || std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(error_policy(&err(SlotError::Exists(p.clone()).into())), Retry::OnChange);
        assert_eq!(error_policy(&err(HomeError::Outside { path: p.clone() }.into())), Retry::OnChange);
        assert_eq!(error_policy(&err(HomeError::NotRegular { path: p.clone() }.into())), Retry::OnChange);
        assert_eq!(
            error_policy(&err(SlotError::Io { path: p.clone(), source: io() }.into())),
            Retry::Backoff
        );
        assert_eq!(
            error_policy(&err(HomeError::Io { path: p.clone(), source: io() }.into())),
            Retry::Backoff
        );
        assert_eq!(
            error_policy(&err(StepError::NotSupervised { slot: "gateway-a".into(), why: "limit".into() })),
            Retry::Backoff
        );
        // Every control failure (no supervisor yet, a FIFO without reader, I/O) can pass.
        assert_eq!(
            error_policy(&err(SlotError::Control(ControlError::NoSupervisor(p)).into())),
            Retry::Backoff
        );
    }
}
