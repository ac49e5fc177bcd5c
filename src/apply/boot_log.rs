//! `container-boot.log` lines (SPEC §8.1): one per decision, values sanitised so that no file
//! content can forge or break a line.

use crate::plan::Decision;

pub use crate::layout::home::BOOT_LOG;

/// A file this large or larger is rotated to `container-boot.log.1` before appending.
pub const ROTATE_AT: u64 = 256 * 1024;

/// A value as written: itself if it matches `^[A-Za-z0-9_.-]{1,64}$`, else `invalid`.
pub fn sanitize(value: &str) -> &str {
    let ok = (1..=64).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok { value } else { "invalid" }
}

/// Formats one line (with its newline). `timestamp` is `%Y-%m-%dT%H:%M:%S%z` local time.
pub fn format_line(timestamp: &str, d: &Decision) -> String {
    let mut line = format!(
        "{timestamp} profile={} prior_state={} action={} prior_exit={}",
        sanitize(&d.profile),
        d.prior_state.as_deref().map(sanitize).unwrap_or("None"),
        d.action.as_str(),
        d.prior_exit.as_str(),
    );
    if let Some(reason) = &d.reason {
        line.push_str(" reason=");
        line.push_str(sanitize(reason));
    }
    if let Some(b) = &d.backoff {
        line.push_str(&format!(
            " retry_in={} deaths={} last_exit={}",
            b.retry_in_secs,
            b.deaths,
            sanitize(&b.last_exit)
        ));
    }
    if let Some(folded) = d.folded_into_root {
        line.push_str(if folded { " folded_into_root=true" } else { " folded_into_root=false" });
    }
    line.push('\n');
    line
}

/// The local time in the log's format.
pub fn now_timestamp() -> String {
    chrono::Local::now().format("%Y-%m-%dT%H:%M:%S%z").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PriorExit;
    use crate::plan::{ActionKind, Reason};

    fn d(state: Option<&str>, reason: Option<Reason>) -> Decision {
        Decision {
            profile: "work".into(),
            slot: Some("gateway-work".into()),
            action: ActionKind::Started,
            prior_state: state.map(String::from),
            prior_exit: PriorExit::Clean,
            reason,
            folded_into_root: None,
            backoff: None,
        }
    }

    #[test]
    fn line_format() {
        assert_eq!(
            format_line("2026-01-01T00:00:00+0000", &d(Some("running"), None)),
            "2026-01-01T00:00:00+0000 profile=work prior_state=running action=started prior_exit=clean\n"
        );
        assert_eq!(
            format_line("T", &d(None, Some(Reason::Capacity))),
            "T profile=work prior_state=None action=started prior_exit=clean reason=capacity\n"
        );
    }

    #[test]
    fn forged_values_become_invalid() {
        let forged = "running\n2026-01-01T00:00:00+0000 profile=x action=started";
        let line = format_line("T", &d(Some(forged), Some(Reason::Capacity)));
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.contains("prior_state=invalid"));
        // Reasons are a closed set of words now (`Reason`); the sanitiser they still go
        // through refuses what a forged one would have been.
        assert!(line.contains("reason=capacity"));
        for bad in ["", "a=b", "a b", "é", &"x".repeat(65), "None\n"] {
            assert_eq!(sanitize(bad), "invalid", "{bad:?}");
        }
        assert_eq!(sanitize(&"x".repeat(64)), "x".repeat(64));
    }

    #[test]
    fn timestamp_shape() {
        let t = now_timestamp();
        assert_eq!(t.len(), 24, "{t}");
        assert_eq!(&t[10..11], "T");
    }
}
