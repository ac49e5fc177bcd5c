//! `container-boot.log`: one line per profile and pass, in a documented format.

/// One line of `container-boot.log`. Actions: the six of SPEC §8.1 and `backoff` (§6.8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootLine {
    pub time: String,
    pub profile: String,
    pub prior_state: String,
    pub action: String,
    pub prior_exit: String,
    /// The optional ` key=value` fields after the four fixed ones, in order.
    pub extra: Vec<(String, String)>,
}

impl BootLine {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.extra.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

fn is_value(v: &str) -> bool {
    (1..=64).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// `%Y-%m-%dT%H:%M:%S%z`, e.g. `2026-01-01T00:00:00+0000`.
fn is_timestamp(t: &str) -> bool {
    let b = t.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.into_iter().all(|i| b[i].is_ascii_digit());
    b.len() == 24
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && (b[19] == b'+' || b[19] == b'-')
        && digits(20..24)
}

/// Parses one line, checking the whole documented format.
pub fn parse_boot_line(line: &str) -> Result<BootLine, String> {
    let bad = |why: &str| Err(format!("malformed container-boot.log line ({why}): {line:?}"));
    let mut tokens = line.split(' ');
    let time = tokens.next().unwrap_or_default();
    if !is_timestamp(time) {
        return bad("timestamp");
    }
    let mut fixed = Vec::new();
    for key in ["profile", "prior_state", "action", "prior_exit"] {
        match tokens.next().and_then(|t| t.split_once('=')) {
            Some((k, v)) if k == key && is_value(v) => fixed.push(v.to_string()),
            _ => return bad(key),
        }
    }
    const ACTIONS: [&str; 7] =
        ["started", "registered", "stopped", "unregistered", "updated", "skipped", "backoff"];
    if !ACTIONS.contains(&fixed[2].as_str()) {
        return bad("action");
    }
    if !["clean", "unclean", "unknown"].contains(&fixed[3].as_str()) {
        return bad("prior_exit");
    }
    let mut extra = Vec::new();
    for t in tokens {
        match t.split_once('=') {
            Some((k, v))
                if !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') && is_value(v) =>
            {
                extra.push((k.to_string(), v.to_string()))
            }
            _ => return bad("extra field"),
        }
    }
    // The fields with a documented shape (SPEC §6.7, §6.8): `folded_into_root=true|false`;
    // `retry_in=<secs> deaths=<n> last_exit=exit_<code>|signal_<n>`, on `action=backoff` lines
    // and only there.
    let get = |key: &str| extra.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    if get("folded_into_root").is_some_and(|v| v != "true" && v != "false") {
        return bad("folded_into_root");
    }
    let number = |v: Option<&str>| v.is_some_and(|v| v.bytes().all(|b| b.is_ascii_digit()));
    let exit = |v: Option<&str>| {
        v.and_then(|v| v.strip_prefix("exit_").or_else(|| v.strip_prefix("signal_")))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    if fixed[2] == "backoff" {
        if !number(get("retry_in")) || !number(get("deaths")) || !exit(get("last_exit")) {
            return bad("backoff fields");
        }
    } else if get("retry_in").is_some() || get("deaths").is_some() {
        return bad("backoff fields on another action");
    }
    Ok(BootLine {
        time: time.to_string(),
        profile: fixed[0].clone(),
        prior_state: fixed[1].clone(),
        action: fixed[2].clone(),
        prior_exit: fixed[3].clone(),
        extra,
    })
}
