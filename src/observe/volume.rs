//! What the volume says: profile discovery, intent, prior exit and `.env` port overrides.
//!
//! Every file read here lives under `$HERMES_HOME`, which a hostile agent can write (SPEC §9).
//! So every read goes through [`read_bounded`] (no symlink in the last component, no FIFO or
//! device ever opened, bounded size), every parser accepts arbitrary bytes without panicking,
//! and nothing here returns an error: a bad file degrades to "no intent" / "unknown" / "not
//! set", with at most one warning that names the file.

use crate::model::{
    INVALID_INTENT, Intent, MAX_INTENT_LEN, NameError, PriorExit, ProfileName, is_valid_intent_value,
};
use crate::observe::listing;
use crate::observe::safe_read::{MAX_STATE_FILE, ReadError, read_bounded};
use crate::warning::{Warning, excerpt};
use nix::errno::Errno;
use serde_json::Value;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

// The home's names are owned by [`crate::layout::home`]; re-exported for the watcher.
pub use crate::layout::home::{
    ENV_FILE, INTENT_FILE, LIFECYCLE_FILE, MARKER_FILE, PROFILES_DIR, TOMBSTONE_DIR,
};
pub use crate::world::SkippedDir;
/// Largest `.env` the daemon reads.
pub const MAX_ENV_FILE: u64 = 1 << 20;

/// The intent read from one `gateway_state.json`, with the warning to log if the file was bad.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IntentReading {
    pub intent: Intent,
    /// One human sentence naming the file and what is wrong with it; `None` when the file was
    /// fine or simply absent. Keyed by the file and the kind of problem (see [`Warning`]).
    pub warning: Option<Warning>,
}

/// What one `gateway_state.json` content means, independently of the path it was read at (so
/// a result can be shared by every hard link of one file).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IntentOutcome {
    pub intent: Intent,
    /// The kind of problem (a stable word, part of the warning's key) and the rest of the
    /// warning sentence after the path; bounded whatever the file holds.
    pub problem: Option<(&'static str, String)>,
}

impl IntentOutcome {
    /// The reading of this outcome for the file at `path`.
    pub fn at(self, path: &Path) -> IntentReading {
        IntentReading {
            intent: self.intent,
            warning: self.problem.map(|(kind, rest)| {
                Warning::about(path.display(), kind, format!("{} {rest}", path.display()))
            }),
        }
    }
}

/// How many bytes of a refused intent value a warning quotes (escaped).
const EXCERPT_BYTES: usize = 32;

/// Replaces intent values that are not [`is_valid_intent_value`] by [`INVALID_INTENT`] (SPEC
/// §9.2), so no value the daemon keeps, records in a slot or prints is longer than
/// [`crate::model::MAX_INTENT_LEN`] bytes or holds a character that could break a line. The
/// second value is the warning text (after the file's path) when something was replaced: it
/// names the field, its length and a bounded, escaped excerpt.
pub fn validate_intent(intent: Intent) -> (Intent, Option<String>) {
    let mut why = Vec::new();
    let mut check = |field: &str, v: Option<String>| -> Option<String> {
        let v = v?;
        if is_valid_intent_value(&v) {
            return Some(v);
        }
        why.push(format!(
            "a {field} that is not 1 to {MAX_INTENT_LEN} characters of [A-Za-z0-9_.-] ({} bytes: \"{}\")",
            v.len(),
            excerpt(&v, EXCERPT_BYTES)
        ));
        Some(INVALID_INTENT.to_string())
    };
    let intent = Intent {
        desired_state: check("desired_state", intent.desired_state),
        gateway_state: check("gateway_state", intent.gateway_state),
    };
    let warning =
        (!why.is_empty()).then(|| format!("has {}; reading it as {INVALID_INTENT}", why.join(" and ")));
    (intent, warning)
}

/// What the result of reading a `gateway_state.json` means (SPEC §5.2, §9.2).
pub fn intent_outcome(read: Result<Vec<u8>, ReadError>) -> IntentOutcome {
    let (kind, problem) = match read {
        Err(ReadError::Missing) => return IntentOutcome::default(),
        Err(e) => (read_error_kind(&e), e.to_string()),
        Ok(bytes) => match parse_intent(&bytes) {
            Ok(intent) => {
                let (intent, problem) = validate_intent(intent);
                return IntentOutcome { intent, problem: problem.map(|p| ("value", p)) };
            }
            Err(why) => ("content", why),
        },
    };
    IntentOutcome {
        intent: Intent::default(),
        problem: Some((kind, format!("{problem}; treating it as no intent"))),
    }
}

/// A stable word for the kind of a read failure (part of a warning's key).
fn read_error_kind(e: &ReadError) -> &'static str {
    match e {
        ReadError::Missing => "missing",
        ReadError::Symlink => "symlink",
        ReadError::NotRegular(_) => "not-regular",
        ReadError::TooLarge { .. } => "too-large",
        ReadError::Io(_) => "unreadable",
    }
}

/// Parses the bytes of a `gateway_state.json` (SPEC §5.2). `Err` says why it means no intent.
///
/// Rules:
/// * the bytes must be UTF-8; one leading byte-order mark is allowed and skipped;
/// * the text must be one JSON value, and that value an object;
/// * `desired_state` and `gateway_state` are each either absent, JSON `null` (treated exactly as
///   absent: a writer that clears a field with `null` means "no value", not "bad file"), or a
///   string, kept verbatim (no trimming, no case folding: sanitising is the consumer's job);
/// * any other type for either field makes the whole file mean no intent (SPEC: "whose fields
///   are not strings"), even if the other field is a fine string;
/// * all other fields are ignored. For a duplicated key, the last occurrence wins.
///
/// The `Err` text is a predicate to put after the file's path, e.g. `is a JSON array, not an
/// object`. JSON nesting is bounded by serde_json's recursion limit, so no input can overflow
/// the stack.
pub fn parse_intent(bytes: &[u8]) -> Result<Intent, String> {
    let map = match parse_json(bytes)? {
        Value::Object(map) => map,
        Value::Null => return Err("is JSON null, not an object".to_string()),
        other => return Err(format!("is a JSON {}, not an object", type_word(&other))),
    };
    let field = |key: &str| -> Result<Option<String>, String> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!("has a {key} that is {}, not a string", type_with_article(other))),
        }
    };
    Ok(Intent { desired_state: field("desired_state")?, gateway_state: field("gateway_state")? })
}

/// Decodes UTF-8 (one leading BOM allowed) and parses one JSON value.
fn parse_json(bytes: &[u8]) -> Result<Value, String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| format!("is not UTF-8 (invalid byte sequence at offset {})", e.valid_up_to()))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    serde_json::from_str(text).map_err(|e| format!("is not valid JSON ({e})"))
}

fn type_word(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_with_article(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Reads `<profile_dir>/gateway_state.json`. Never blocks, never fails the pass.
///
/// A missing file is no intent and no warning. Anything else that is wrong (not a regular file,
/// a symlink, over [`MAX_STATE_FILE`] bytes, unreadable, or refused by [`parse_intent`]) is no
/// intent and exactly one warning of the form
/// `<full path> <problem>; treating it as no intent`. A value refused by [`validate_intent`]
/// reads as [`INVALID_INTENT`], with one warning.
pub fn read_intent(profile_dir: &Path) -> IntentReading {
    let path = profile_dir.join(INTENT_FILE);
    intent_outcome(read_bounded(&path, MAX_STATE_FILE)).at(&path)
}

/// What [`read_intent`] gives for a `gateway_state.json` known to be missing.
pub fn intent_missing(profile_dir: &Path) -> IntentReading {
    intent_outcome(Err(ReadError::Missing)).at(&profile_dir.join(INTENT_FILE))
}

/// Parses `state/gateway.lifecycle.json`: `phase` `exited` → clean, `running` → unclean.
///
/// Anything else (not UTF-8, not JSON, not an object, no `phase`, a `phase` that is not one of
/// those two strings) is [`PriorExit::Unknown`]. A leading BOM is allowed, as for the intent.
pub fn parse_prior_exit(bytes: &[u8]) -> PriorExit {
    let Ok(Value::Object(map)) = parse_json(bytes) else {
        return PriorExit::Unknown;
    };
    match map.get("phase").and_then(Value::as_str) {
        Some("exited") => PriorExit::Clean,
        Some("running") => PriorExit::Unclean,
        _ => PriorExit::Unknown,
    }
}

/// Reads `<profile_dir>/state/gateway.lifecycle.json`.
///
/// Bounded like the intent file; any problem, including a missing file, is
/// [`PriorExit::Unknown`] without a warning (the value is informational only: it goes into
/// `container-boot.log`).
pub fn read_prior_exit(profile_dir: &Path) -> PriorExit {
    match read_bounded(&profile_dir.join(LIFECYCLE_FILE), MAX_STATE_FILE) {
        Ok(bytes) => parse_prior_exit(&bytes),
        Err(_) => PriorExit::Unknown,
    }
}

/// Does this `.env` content set `API_SERVER_PORT`?
///
/// The rule, applied to each line (lines end at `\n`; a trailing `\r` is ignored; the bytes
/// need not be UTF-8):
/// 1. leading whitespace is skipped;
/// 2. a line that then starts with `#` is a comment and never counts;
/// 3. an optional `export` followed by at least one space or tab is skipped;
/// 4. the line must then start with exactly `API_SERVER_PORT`, optionally followed by spaces or
///    tabs, then `=` (so `API_SERVER_PORTS=1` and `MY_API_SERVER_PORT=1` do not count);
/// 5. the value after `=` must be non-empty: surrounding whitespace is ignored, a value whose
///    first non-blank character is `#` is a comment (empty), a value in single or double quotes
///    counts only if there is something between the quotes, and an unquoted value ends at a
///    whitespace-preceded `#`.
///
/// It is true iff at least one line passes. This follows what dotenv readers accept, and errs
/// on "set" only when a line clearly assigns a non-empty value.
pub fn parse_env_sets_port(bytes: &[u8]) -> bool {
    bytes.split(|&b| b == b'\n').any(line_sets_port)
}

fn line_sets_port(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut rest = line.trim_ascii_start();
    if rest.starts_with(b"#") {
        return false;
    }
    if let Some(after) = rest.strip_prefix(b"export")
        && after.first().is_some_and(|&b| b == b' ' || b == b'\t')
    {
        rest = after.trim_ascii_start();
    }
    let Some(after_key) = rest.strip_prefix(b"API_SERVER_PORT") else {
        return false;
    };
    let Some(value) = after_key.trim_ascii_start().strip_prefix(b"=").map(<[u8]>::trim_ascii) else {
        return false;
    };
    match value.first() {
        None | Some(b'#') => false,
        Some(&q @ (b'"' | b'\'')) => {
            let inner = &value[1..];
            let content = match inner.iter().position(|&b| b == q) {
                Some(end) => &inner[..end],
                None => inner,
            };
            !content.is_empty()
        }
        Some(_) => {
            // Unquoted: an inline comment starts at a `#` preceded by whitespace. The first byte
            // is not `#` and not whitespace, so whatever comes before that comment is non-empty.
            true
        }
    }
}

/// Does `<profile_dir>/.env` set `API_SERVER_PORT`?
///
/// Read with the same guarantees as every other file (bounded to [`MAX_ENV_FILE`], no symlink,
/// no FIFO); an unreadable or refused file counts as not setting it.
pub fn env_sets_port(profile_dir: &Path) -> bool {
    read_bounded(&profile_dir.join(ENV_FILE), MAX_ENV_FILE)
        .map(|bytes| parse_env_sets_port(&bytes))
        .unwrap_or(false)
}

/// A named profile found under `profiles/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedDir {
    pub name: ProfileName,
    /// `$HERMES_HOME/profiles/<name>`.
    pub dir: PathBuf,
    /// The path reaches the directory through a symlink: the entry itself is a symlink to a
    /// directory, or `$HERMES_HOME/profiles` itself is a symlink. Read through it, never write
    /// into it (SPEC §9: no write may land outside `$HERMES_HOME`).
    pub via_symlink: bool,
    /// Its `SOUL.md` is not a symlink (an entry that stays while the directory is unchanged;
    /// a symlink's target may go without the directory changing).
    pub marker_plain: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovery {
    /// Sorted by name.
    pub named: Vec<NamedDir>,
    /// Sorted by `raw`; each skipped entry appears exactly once.
    pub skipped: Vec<SkippedDir>,
    /// Problems that made discovery incomplete (an unreadable `profiles/`, an entry whose type
    /// could not be determined...). Each names the path. Routine cases (missing `profiles/`,
    /// dangling links, folders without `SOUL.md`) are not warnings.
    pub warnings: Vec<String>,
}

/// Errors that mean "this is not there" for discovery purposes, silently: missing entries,
/// a file where a directory was expected, and symlink loops (a hostile link is as good as a
/// dangling one, and warning about it every pass would let an agent flood the log).
fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::ENOENT) | Some(Errno::ENOTDIR) | Some(Errno::ELOOP)
    )
}

/// Lists `$HERMES_HOME/profiles/` (SPEC §5.1).
///
/// For each entry of `profiles/`:
/// * a name starting with `.` is ignored silently (staging folders, `.deleted/`);
/// * it must be a directory, following a symlink to see that (a symlink to a directory counts;
///   a dangling symlink, a file, a FIFO... are ignored silently);
/// * it must contain `SOUL.md`, checked with `stat` (follows symlinks, never opens): a `SOUL.md`
///   of *any* type counts, a dangling `SOUL.md` symlink counts as absent. This matches a
///   `Path.exists()` check, so the daemon and the CLI agree on what a profile is; the file is
///   never read, so its type does not matter for safety. Without it the entry is ignored
///   silently;
/// * a tombstone `profiles/.deleted/<name>` of any type makes it ignored silently (one listing
///   of `.deleted/` answers for every entry; if it cannot be listed, each name is `lstat`ed);
/// * the name must be UTF-8 and pass [`ProfileName::parse_named`], else it goes to `skipped`
///   (this includes `default`, refused as [`NameError::Reserved`]).
///
/// Never errors and never opens a file (only the directories `profiles/` and `.deleted/`, to
/// list them): a missing `profiles/` is an empty result, any other failure to list it is an
/// empty result with a warning.
pub fn discover(home: &Path) -> Discovery {
    discover_with(home, &|_, _| None)
}

/// [`discover`], sparing the `SOUL.md` lookup of the real directories whose marker `known`
/// can tell: `Some(true)`, a marker that is no symlink is there; `Some(false)`, no marker is
/// (the entry is no profile); `None`, look (see
/// [`crate::observe::profile_files::ProfileFileCache::marker_known`] and `folder_marker`).
pub fn discover_with(home: &Path, known: &dyn Fn(&OsStr, &Path) -> Option<bool>) -> Discovery {
    let profiles = home.join(PROFILES_DIR);
    let mut out = Discovery::default();
    // The names first, into one buffer (the listing holds its own while it calls back): no
    // allocation per entry, no `opendir` (issue 15).
    let mut arena: Vec<u8> = Vec::new();
    let mut listed: Vec<(std::ops::Range<usize>, listing::Kind)> = Vec::new();
    let walk = listing::each(&profiles, |name, kind| {
        if !name.starts_with(b".") {
            let start = arena.len();
            arena.extend_from_slice(name);
            listed.push((start..arena.len(), kind));
        }
    });
    if let Err(e) = walk {
        if listed.is_empty() && e.kind() == io::ErrorKind::NotFound {
            return out;
        }
        if listed.is_empty() {
            out.warnings
                .push(format!("{} cannot be listed: {e}; no named profiles seen", profiles.display()));
            return out;
        }
        // A failing read may fail again forever: what came before it is kept.
        out.warnings.push(format!("{} could not be listed completely: {e}", profiles.display()));
    }
    let profiles_is_symlink =
        super::stat_base::StatBase::lstat(None, &profiles).map(|m| m.symlink).unwrap_or(false);
    let tombstones = Tombstones::list(profiles.join(TOMBSTONE_DIR));
    // Entries are stat'ed by their short paths under `profiles/` (issue 15: a re-list costs a
    // few path components per stat, not the whole absolute path).
    let base = super::stat_base::StatBase::open(&profiles);

    for (range, listed_kind) in listed {
        let file_name = OsStr::from_bytes(&arena[range]);
        let dir = crate::layout::child(&profiles, file_name);
        // The listing's type (`d_type`; `lstat` when the file system does not give it) spares
        // a `stat` of every real directory; a symlink is followed.
        let listed_kind = match listed_kind.resolved(&dir) {
            Ok(kind) => kind,
            Err(e) if is_absent(&e) => continue, // vanished since
            Err(e) => {
                out.warnings.push(format!("{} cannot be examined: {e}", dir.display()));
                continue;
            }
        };
        let kind = match listed_kind {
            listing::Kind::Dir => EntryKind::Directory,
            listing::Kind::Symlink => EntryKind::Follow,
            _ => continue, // a file, a FIFO...: never a profile
        };
        let marker_known = if matches!(kind, EntryKind::Directory) { known(file_name, &dir) } else { None };
        let marker_plain =
            match classify_entry(base.as_ref(), &dir, kind, &tombstones, file_name, marker_known) {
                Ok(Some(plain)) => plain,
                Ok(None) => continue,
                Err(warning) => {
                    out.warnings.push(warning);
                    continue;
                }
            };
        let Some(raw) = file_name.to_str() else {
            out.skipped.push(SkippedDir {
                raw: file_name.to_string_lossy().into_owned(),
                reason: format!("the name is not UTF-8; {}", NameError::BadCharacters),
            });
            continue;
        };
        let name = match ProfileName::parse_named(raw) {
            Ok(name) => name,
            Err(e) => {
                out.skipped.push(SkippedDir { raw: raw.to_string(), reason: e.to_string() });
                continue;
            }
        };
        out.named.push(NamedDir {
            name,
            dir,
            via_symlink: listed_kind == listing::Kind::Symlink || profiles_is_symlink,
            marker_plain,
        });
    }
    out.named.sort_by(|a, b| a.name.cmp(&b.name));
    out.skipped.sort_by(|a, b| a.raw.cmp(&b.raw));
    out
}

/// Looks at one named profile only, with the same rules as [`discover`]: `Ok(None)` when
/// `profiles/<name>` is not (or no longer) a profile. Used by partial passes after events.
pub fn probe(home: &Path, name: &ProfileName) -> Result<Option<NamedDir>, String> {
    let profiles = home.join(PROFILES_DIR);
    let dir = profiles.join(name.as_str());
    let tombstones = Tombstones::PerEntry(profiles.join(TOMBSTONE_DIR));
    let Some(marker_plain) =
        classify_entry(None, &dir, EntryKind::Follow, &tombstones, OsStr::new(name.as_str()), None)?
    else {
        return Ok(None);
    };
    let is_link = |p: &Path| super::stat_base::StatBase::lstat(None, p).map(|m| m.symlink).unwrap_or(false);
    let via_symlink = is_link(&dir) || is_link(&profiles);
    Ok(Some(NamedDir { name: name.clone(), dir, via_symlink, marker_plain }))
}

/// What is known of an entry's type before [`classify_entry`].
#[derive(Clone, Copy)]
enum EntryKind {
    /// The listing said: a directory (not a symlink).
    Directory,
    /// A symlink, or unknown: `stat` it (following) to see whether it is a directory.
    Follow,
}

/// The tombstones of `profiles/.deleted/`.
enum Tombstones {
    /// Its names, from one listing (a full discovery): one `getdents` instead of one `lstat`
    /// per profile.
    Listed(std::collections::HashSet<std::ffi::OsString>),
    /// The directory, to `lstat` each name in (one probe, or a listing that failed).
    PerEntry(PathBuf),
}

impl Tombstones {
    /// Lists `dir`; a missing one holds no tombstone; one that cannot be listed is asked per
    /// entry, whose errors are then reported as before.
    fn list(dir: PathBuf) -> Self {
        // Listed like `profiles/` (no `opendir`); a name is made only for a tombstone there.
        let mut set = std::collections::HashSet::new();
        let names = listing::each(&dir, |name, _| {
            set.insert(OsStr::from_bytes(name).to_os_string());
        })
        .map(|()| set);
        match names {
            Ok(names) => Tombstones::Listed(names),
            Err(e) if is_absent(&e) => Tombstones::Listed(Default::default()),
            Err(_) => Tombstones::PerEntry(dir),
        }
    }
}

/// Is this (non-hidden) entry a profile candidate: a directory holding `SOUL.md`, not
/// tombstoned? `Some(plain)`: it is, and its `SOUL.md` is not a symlink (or is `known` to be
/// there, not looked up again). `Err` is a warning about an unexpected failure (the entry is
/// then left out). Stats go relative to `base` (`profiles/` held open) when given.
fn classify_entry(
    base: Option<&super::stat_base::StatBase>,
    dir: &Path,
    kind: EntryKind,
    tombstones: &Tombstones,
    file_name: &OsStr,
    known: Option<bool>,
) -> Result<Option<bool>, String> {
    use super::stat_base::StatBase;
    if let EntryKind::Follow = kind {
        match StatBase::stat(base, dir).map(|m| m.dir) {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(format!("{} cannot be examined: {e}", dir.display())),
        }
    }
    let plain = if let Some(there) = known {
        if !there {
            return Ok(None);
        }
        true
    } else {
        // Not followed first: a marker that is no symlink is one entry of the directory,
        // there while the directory is unchanged. A symlink is followed (a dangling one is
        // no marker).
        let marker = dir.join(MARKER_FILE);
        let examined = |e: std::io::Error| format!("{} cannot be examined: {e}", marker.display());
        match StatBase::lstat(base, &marker) {
            Ok(st) if !st.symlink => true,
            Ok(_) => match StatBase::stat(base, &marker) {
                Ok(_) => false,
                Err(e) if is_absent(&e) => return Ok(None),
                Err(e) => return Err(examined(e)),
            },
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(examined(e)),
        }
    };
    let tombstones = match tombstones {
        Tombstones::Listed(names) => return Ok((!names.contains(file_name)).then_some(plain)),
        Tombstones::PerEntry(dir) => dir,
    };
    let tombstone = tombstones.join(file_name);
    match StatBase::lstat(base, &tombstone) {
        Ok(_) => Ok(None),
        Err(e) if is_absent(&e) => Ok(Some(plain)),
        Err(e) => {
            Err(format!("{} cannot be examined: {e}; ignoring the profile until it can", tombstone.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::Mode;
    use proptest::prelude::*;
    use std::os::unix::fs::symlink;
    use tempfile::TempDir;

    fn intent(d: Option<&str>, g: Option<&str>) -> Intent {
        Intent { desired_state: d.map(String::from), gateway_state: g.map(String::from) }
    }

    fn fifo(p: &Path) {
        nix::unistd::mkfifo(p, Mode::from_bits_truncate(0o644)).unwrap();
    }

    // ---- parse_intent ----

    #[test]
    fn intent_fields_are_read_verbatim() {
        assert_eq!(
            parse_intent(br#"{"desired_state":"running","gateway_state":"stopped"}"#),
            Ok(intent(Some("running"), Some("stopped")))
        );
        assert_eq!(parse_intent(br#"{"gateway_state":"draining"}"#), Ok(intent(None, Some("draining"))));
        assert_eq!(parse_intent(br#"{"desired_state":"stopped"}"#), Ok(intent(Some("stopped"), None)));
        assert_eq!(parse_intent(b"{}"), Ok(intent(None, None)));
        assert_eq!(
            parse_intent(br#"{"desired_state":"running\n2026-01-01 x=y"," gateway_state":1}"#),
            Ok(intent(Some("running\n2026-01-01 x=y"), None))
        );
        assert_eq!(
            parse_intent(br#"{"desired_state":" Running ","gateway_state":""}"#),
            Ok(intent(Some(" Running "), Some("")))
        );
    }

    #[test]
    fn other_fields_are_ignored() {
        assert_eq!(
            parse_intent(
                br#"{"pid":12,"nested":{"a":[1,2]},"desired_state":"running","migrated_from":null}"#
            ),
            Ok(intent(Some("running"), None))
        );
    }

    #[test]
    fn null_fields_are_absent() {
        assert_eq!(
            parse_intent(br#"{"desired_state":null,"gateway_state":"running"}"#),
            Ok(intent(None, Some("running")))
        );
        assert_eq!(parse_intent(br#"{"desired_state":null,"gateway_state":null}"#), Ok(intent(None, None)));
    }

    #[test]
    fn last_duplicate_key_wins() {
        assert_eq!(
            parse_intent(br#"{"desired_state":"stopped","desired_state":"running"}"#),
            Ok(intent(Some("running"), None))
        );
    }

    #[test]
    fn leading_bom_is_allowed() {
        let mut bytes = "\u{feff}".as_bytes().to_vec();
        bytes.extend_from_slice(br#"{"desired_state":"running"}"#);
        assert_eq!(parse_intent(&bytes), Ok(intent(Some("running"), None)));
        // Only one BOM, and only at the start.
        let mut two = "\u{feff}\u{feff}".as_bytes().to_vec();
        two.extend_from_slice(b"{}");
        assert!(parse_intent(&two).unwrap_err().starts_with("is not valid JSON"));
        assert!(parse_intent("\u{feff}".as_bytes()).is_err());
    }

    #[test]
    fn whitespace_around_the_object_is_fine() {
        assert_eq!(
            parse_intent(b"\n  {\"desired_state\":\"running\"}\r\n\n"),
            Ok(intent(Some("running"), None))
        );
    }

    #[test]
    fn not_utf8_is_refused() {
        let err = parse_intent(b"{\"desired_state\":\"run\xffning\"}").unwrap_err();
        assert!(err.starts_with("is not UTF-8"), "{err}");
        assert!(parse_intent(b"\xfe\xff{}").unwrap_err().starts_with("is not UTF-8"));
        // A UTF-16 BOM is not a UTF-8 one.
        assert!(parse_intent(b"\xff\xfe{\0}\0").is_err());
    }

    #[test]
    fn not_json_is_refused() {
        assert_eq!(
            parse_intent(b"").unwrap_err(),
            "is not valid JSON (EOF while parsing a value at line 1 column 0)"
        );
        assert_eq!(
            parse_intent(b"running").unwrap_err(),
            "is not valid JSON (expected value at line 1 column 1)"
        );
        for bad in [
            &b"{"[..],
            b"{\"desired_state\":\"running\"",
            b"{} {}",
            b"{}x",
            b"{'desired_state':'running'}",
            b"{\"desired_state\":\"running\",}",
            b"desired_state=running",
        ] {
            let err = parse_intent(bad).unwrap_err();
            assert!(err.starts_with("is not valid JSON ("), "{bad:?}: {err}");
        }
    }

    #[test]
    fn not_an_object_is_refused_with_its_type() {
        for (bytes, msg) in [
            (&b"[]"[..], "is a JSON array, not an object"),
            (b"[{\"desired_state\":\"running\"}]", "is a JSON array, not an object"),
            (b"\"running\"", "is a JSON string, not an object"),
            (b"42", "is a JSON number, not an object"),
            (b"-1.5e3", "is a JSON number, not an object"),
            (b"true", "is a JSON boolean, not an object"),
            (b"null", "is JSON null, not an object"),
        ] {
            assert_eq!(parse_intent(bytes).unwrap_err(), msg, "{bytes:?}");
        }
    }

    #[test]
    fn fields_that_are_not_strings_are_refused() {
        for (bytes, msg) in [
            (&br#"{"desired_state":1}"#[..], "has a desired_state that is a number, not a string"),
            (br#"{"desired_state":true}"#, "has a desired_state that is a boolean, not a string"),
            (br#"{"desired_state":["running"]}"#, "has a desired_state that is an array, not a string"),
            (br#"{"desired_state":{}}"#, "has a desired_state that is an object, not a string"),
            (br#"{"gateway_state":0}"#, "has a gateway_state that is a number, not a string"),
            // A fine field does not rescue a bad one.
            (
                br#"{"desired_state":"running","gateway_state":[]}"#,
                "has a gateway_state that is an array, not a string",
            ),
            (
                br#"{"desired_state":false,"gateway_state":"running"}"#,
                "has a desired_state that is a boolean, not a string",
            ),
        ] {
            assert_eq!(parse_intent(bytes).unwrap_err(), msg, "{bytes:?}");
        }
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse_intent(deep.as_bytes()).is_err());
        let deep_obj = format!("{{\"x\":{}{}}}", "{\"a\":".repeat(50_000), "}".repeat(50_000));
        assert!(parse_intent(deep_obj.as_bytes()).is_err());
        assert_eq!(parse_prior_exit(deep.as_bytes()), PriorExit::Unknown);
    }

    proptest! {
        #[test]
        fn parse_intent_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_intent(&bytes);
            let _ = parse_prior_exit(&bytes);
            let _ = parse_env_sets_port(&bytes);
        }

        #[test]
        fn any_string_values_round_trip(d in any::<Option<String>>(), g in any::<Option<String>>()) {
            let json = serde_json::json!({"desired_state": d, "gateway_state": g, "other": 1});
            let bytes = serde_json::to_vec(&json).unwrap();
            prop_assert_eq!(parse_intent(&bytes), Ok(Intent { desired_state: d, gateway_state: g }));
        }
    }

    // ---- read_intent ----

    fn warning_of(dir: &Path) -> String {
        let r = read_intent(dir);
        assert_eq!(r.intent, Intent::default());
        r.warning.expect("a warning").text
    }

    #[test]
    fn read_intent_of_a_good_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join(INTENT_FILE),
            br#"{"desired_state":"running","gateway_state":"running","pid":3}"#,
        )
        .unwrap();
        assert_eq!(
            read_intent(d.path()),
            IntentReading { intent: intent(Some("running"), Some("running")), warning: None }
        );
    }

    #[test]
    fn read_intent_with_bom_is_accepted_without_warning() {
        let d = tempfile::tempdir().unwrap();
        let mut bytes = b"\xef\xbb\xbf".to_vec();
        bytes.extend_from_slice(br#"{"desired_state":"stopped"}"#);
        std::fs::write(d.path().join(INTENT_FILE), bytes).unwrap();
        assert_eq!(
            read_intent(d.path()),
            IntentReading { intent: intent(Some("stopped"), None), warning: None }
        );
    }

    #[test]
    fn read_intent_missing_file_or_dir_is_silent() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read_intent(d.path()), IntentReading::default());
        assert_eq!(read_intent(&d.path().join("no-such-profile")), IntentReading::default());
    }

    #[test]
    fn read_intent_fifo_warns_without_hanging() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(INTENT_FILE);
        fifo(&p);
        assert_eq!(
            warning_of(d.path()),
            format!("{} is a FIFO, not a regular file; treating it as no intent", p.display())
        );
    }

    #[test]
    fn read_intent_directory_warns() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(INTENT_FILE);
        std::fs::create_dir(&p).unwrap();
        assert_eq!(
            warning_of(d.path()),
            format!("{} is a directory, not a regular file; treating it as no intent", p.display())
        );
    }

    #[test]
    fn read_intent_too_large_warns() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(INTENT_FILE);
        // Valid JSON padded past the limit: size alone makes it no intent.
        let mut bytes = br#"{"desired_state":"running"}"#.to_vec();
        bytes.resize(2 << 20, b' ');
        std::fs::write(&p, bytes).unwrap();
        assert_eq!(
            warning_of(d.path()),
            format!("{} is larger than 1048576 bytes; treating it as no intent", p.display())
        );
    }

    #[test]
    fn read_intent_symlink_outside_home_is_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("secret.json");
        std::fs::write(&target, br#"{"desired_state":"running"}"#).unwrap();
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(INTENT_FILE);
        symlink(&target, &p).unwrap();
        assert_eq!(
            warning_of(d.path()),
            format!("{} is a symbolic link, which is not followed; treating it as no intent", p.display())
        );
        // A symlink to a FIFO is refused as a symlink, never opened.
        let f = outside.path().join("fifo");
        fifo(&f);
        std::fs::remove_file(&p).unwrap();
        symlink(&f, &p).unwrap();
        assert!(warning_of(d.path()).contains("symbolic link"));
    }

    #[test]
    fn read_intent_symlinked_profile_dir_is_read_through() {
        let real = tempfile::tempdir().unwrap();
        std::fs::write(real.path().join(INTENT_FILE), br#"{"desired_state":"running"}"#).unwrap();
        let d = tempfile::tempdir().unwrap();
        let link = d.path().join("p");
        symlink(real.path(), &link).unwrap();
        assert_eq!(read_intent(&link).intent, intent(Some("running"), None));
    }

    #[test]
    fn read_intent_bad_contents_warn_with_the_path() {
        let cases: [(&[u8], &str); 5] = [
            (b"{\"desired_state\":\"\xff\"}", "is not UTF-8"),
            (b"[1,2]", "is a JSON array, not an object"),
            (b"\"running\"", "is a JSON string, not an object"),
            (b"{\"desired_state\":7}", "has a desired_state that is a number, not a string"),
            (b"not json", "is not valid JSON (expected ident at line 1 column 2)"),
        ];
        for (bytes, problem) in cases {
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join(INTENT_FILE);
            std::fs::write(&p, bytes).unwrap();
            let w = warning_of(d.path());
            let prefix = format!("{} {problem}", p.display());
            assert!(w.starts_with(&prefix), "{w:?} vs {prefix:?}");
            assert!(w.ends_with("; treating it as no intent"), "{w}");
        }
    }

    // ---- intent value validation (SPEC §9.2) ----

    #[test]
    fn intent_values_outside_the_pattern_read_as_invalid() {
        for ok in ["running", "stopped", "startup_failed", "a.b-C_9", &"r".repeat(64)] {
            let (i, w) = validate_intent(intent(Some(ok), Some(ok)));
            assert_eq!(i, intent(Some(ok), Some(ok)));
            assert_eq!(w, None);
        }
        for bad in ["", "run ning", "running\n", "\u{1b}[2J", "é", "a/b", "\"x\"", &"r".repeat(65)] {
            let (i, w) = validate_intent(intent(Some(bad), None));
            assert_eq!(i, intent(Some("invalid"), None), "{bad:?}");
            let w = w.expect("a warning");
            assert!(w.contains("desired_state") && w.ends_with("reading it as invalid"), "{w}");
            assert!(!w.chars().any(char::is_control), "{w:?}");
            let (i, _) = validate_intent(intent(None, Some(bad)));
            assert_eq!(i, intent(None, Some("invalid")), "{bad:?}");
        }
        assert!(!intent(Some("invalid"), None).runs());
    }

    #[test]
    fn a_huge_value_gives_a_bounded_warning_keyed_by_file_and_kind() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(INTENT_FILE);
        let mut keys = Vec::new();
        for fill in ['x', 'y'] {
            let v: String = std::iter::repeat_n(fill, (1 << 20) - 64).collect();
            std::fs::write(&p, serde_json::json!({ "desired_state": v, "gateway_state": "\n" }).to_string())
                .unwrap();
            let r = read_intent(d.path());
            assert_eq!(r.intent, intent(Some("invalid"), Some("invalid")));
            let w = r.warning.expect("one warning");
            assert!(w.text.len() < p.display().to_string().len() + 400, "{} bytes", w.text.len());
            assert!(w.text.contains("desired_state") && w.text.contains("gateway_state"));
            keys.push(w.key);
        }
        assert_eq!(keys[0], keys[1], "the same problem of the same file, whatever the content");
        std::fs::write(&p, "{").unwrap();
        assert_ne!(read_intent(d.path()).warning.unwrap().key, keys[0], "another kind of problem");
    }

    // ---- prior exit ----

    #[test]
    fn prior_exit_table() {
        for (bytes, want) in [
            (&br#"{"phase":"exited"}"#[..], PriorExit::Clean),
            (br#"{"phase":"running","pid":4}"#, PriorExit::Unclean),
            (br#"{"phase":"starting"}"#, PriorExit::Unknown),
            (br#"{"phase":"Exited"}"#, PriorExit::Unknown),
            (br#"{"phase":" exited"}"#, PriorExit::Unknown),
            (br#"{"phase":1}"#, PriorExit::Unknown),
            (br#"{"phase":null}"#, PriorExit::Unknown),
            (br#"{}"#, PriorExit::Unknown),
            (br#"["exited"]"#, PriorExit::Unknown),
            (br#""exited""#, PriorExit::Unknown),
            (b"exited", PriorExit::Unknown),
            (b"", PriorExit::Unknown),
            (b"{\"phase\":\"exited\xff\"}", PriorExit::Unknown),
            (b"\xef\xbb\xbf{\"phase\":\"exited\"}", PriorExit::Clean),
        ] {
            assert_eq!(parse_prior_exit(bytes), want, "{bytes:?}");
        }
    }

    #[test]
    fn read_prior_exit_from_files() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read_prior_exit(d.path()), PriorExit::Unknown);
        std::fs::create_dir(d.path().join("state")).unwrap();
        let p = d.path().join(LIFECYCLE_FILE);
        assert_eq!(read_prior_exit(d.path()), PriorExit::Unknown);
        std::fs::write(&p, br#"{"phase":"running"}"#).unwrap();
        assert_eq!(read_prior_exit(d.path()), PriorExit::Unclean);
        std::fs::write(&p, br#"{"phase":"exited"}"#).unwrap();
        assert_eq!(read_prior_exit(d.path()), PriorExit::Clean);
        // Refused files are unknown, quietly and without blocking.
        std::fs::remove_file(&p).unwrap();
        fifo(&p);
        assert_eq!(read_prior_exit(d.path()), PriorExit::Unknown);
        std::fs::remove_file(&p).unwrap();
        let target = d.path().join("real.json");
        std::fs::write(&target, br#"{"phase":"exited"}"#).unwrap();
        symlink(&target, &p).unwrap();
        assert_eq!(read_prior_exit(d.path()), PriorExit::Unknown);
        std::fs::remove_file(&p).unwrap();
        let mut big = br#"{"phase":"exited"}"#.to_vec();
        big.resize((MAX_STATE_FILE + 1) as usize, b' ');
        std::fs::write(&p, big).unwrap();
        assert_eq!(read_prior_exit(d.path()), PriorExit::Unknown);
    }

    // ---- .env ----

    #[test]
    fn env_lines_that_set_the_port() {
        for text in [
            "API_SERVER_PORT=9300",
            "API_SERVER_PORT=9300\n",
            "  API_SERVER_PORT=9300",
            "\tAPI_SERVER_PORT=9300\r\n",
            "export API_SERVER_PORT=9300",
            "  export\t API_SERVER_PORT=9300",
            "API_SERVER_PORT = 9300",
            "API_SERVER_PORT=\"9300\"",
            "API_SERVER_PORT='9300'",
            "API_SERVER_PORT=9300 # my port",
            "API_SERVER_PORT=abc",
            "API_SERVER_PORT=\"9300",
            "OTHER=1\n# comment\nAPI_SERVER_PORT=1\nMORE=2",
            "API_SERVER_PORT=\nAPI_SERVER_PORT=9301",
        ] {
            assert!(parse_env_sets_port(text.as_bytes()), "{text:?}");
        }
    }

    #[test]
    fn env_lines_that_do_not_set_the_port() {
        for text in [
            "",
            "\n\n",
            "API_SERVER_PORT=",
            "API_SERVER_PORT=   ",
            "API_SERVER_PORT=\r\n",
            "API_SERVER_PORT=\"\"",
            "API_SERVER_PORT=''",
            "API_SERVER_PORT= # nothing",
            "API_SERVER_PORT",
            "API_SERVER_PORT 9300",
            "#API_SERVER_PORT=9300",
            "  # API_SERVER_PORT=9300",
            "# export API_SERVER_PORT=9300",
            "API_SERVER_PORTS=9300",
            "MY_API_SERVER_PORT=9300",
            "api_server_port=9300",
            "exportAPI_SERVER_PORT=9300",
            "export=API_SERVER_PORT=9300",
            "OTHER=1 API_SERVER_PORT=9300",
            "OTHER=API_SERVER_PORT=9300",
        ] {
            assert!(!parse_env_sets_port(text.as_bytes()), "{text:?}");
        }
    }

    #[test]
    fn env_bytes_need_not_be_utf8() {
        assert!(parse_env_sets_port(b"X=\xff\xfe\nAPI_SERVER_PORT=1\n"));
        assert!(!parse_env_sets_port(b"\xff\xfe\x00API_SERVER_PORT=1"));
    }

    #[test]
    fn env_file_reading() {
        let d = tempfile::tempdir().unwrap();
        assert!(!env_sets_port(d.path()));
        let p = d.path().join(ENV_FILE);
        std::fs::write(&p, "OPENAI_API_KEY=x\nAPI_SERVER_PORT=9400\n").unwrap();
        assert!(env_sets_port(d.path()));
        std::fs::write(&p, "OPENAI_API_KEY=x\n").unwrap();
        assert!(!env_sets_port(d.path()));
        // Refused files count as not setting it.
        std::fs::remove_file(&p).unwrap();
        fifo(&p);
        assert!(!env_sets_port(d.path()));
        std::fs::remove_file(&p).unwrap();
        let target = d.path().join("real.env");
        std::fs::write(&target, "API_SERVER_PORT=9400\n").unwrap();
        symlink(&target, &p).unwrap();
        assert!(!env_sets_port(d.path()));
    }

    // ---- discover ----

    struct Home {
        dir: TempDir,
    }

    impl Home {
        fn new() -> Self {
            let h = Home { dir: tempfile::tempdir().unwrap() };
            std::fs::create_dir(h.profiles()).unwrap();
            h
        }
        fn path(&self) -> &Path {
            self.dir.path()
        }
        fn profiles(&self) -> PathBuf {
            self.path().join(PROFILES_DIR)
        }
        /// A directory `profiles/<name>` with a `SOUL.md`.
        fn profile(&self, name: impl AsRef<OsStr>) -> PathBuf {
            let p = self.profiles().join(name.as_ref());
            std::fs::create_dir(&p).unwrap();
            std::fs::write(p.join(MARKER_FILE), "soul").unwrap();
            p
        }
        fn bare(&self, name: &str) -> PathBuf {
            let p = self.profiles().join(name);
            std::fs::create_dir(&p).unwrap();
            p
        }
        fn tombstone(&self, name: &str) {
            let t = self.profiles().join(TOMBSTONE_DIR);
            std::fs::create_dir_all(&t).unwrap();
            std::fs::write(t.join(name), "").unwrap();
        }
        fn discover(&self) -> Discovery {
            discover(self.path())
        }
    }

    fn names(d: &Discovery) -> Vec<&str> {
        d.named.iter().map(|n| n.name.as_str()).collect()
    }

    #[test]
    fn missing_profiles_dir_is_empty_and_silent() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(discover(d.path()), Discovery::default());
        assert_eq!(discover(&d.path().join("no-home")), Discovery::default());
    }

    #[test]
    fn profiles_that_is_a_file_is_empty_with_a_warning() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(PROFILES_DIR);
        std::fs::write(&p, "").unwrap();
        let got = discover(d.path());
        assert!(got.named.is_empty() && got.skipped.is_empty());
        assert_eq!(got.warnings.len(), 1);
        assert!(got.warnings[0].starts_with(&p.display().to_string()));
    }

    #[test]
    fn profiles_that_is_a_fifo_does_not_hang() {
        let d = tempfile::tempdir().unwrap();
        fifo(&d.path().join(PROFILES_DIR));
        let got = discover(d.path());
        assert!(got.named.is_empty());
        assert_eq!(got.warnings.len(), 1);
    }

    #[test]
    fn finds_marked_directories_in_name_order() {
        let h = Home::new();
        for n in ["zeta", "alpha", "m-1", "0bot", "a_b"] {
            h.profile(n);
        }
        let got = h.discover();
        assert_eq!(names(&got), ["0bot", "a_b", "alpha", "m-1", "zeta"]);
        assert!(got.skipped.is_empty() && got.warnings.is_empty());
        let alpha = &got.named[2];
        assert_eq!(alpha.dir, h.profiles().join("alpha"));
        assert!(!alpha.via_symlink);
    }

    #[test]
    fn a_marker_known_to_be_there_is_not_looked_up_and_a_symlinked_one_is_not_plain() {
        let h = Home::new();
        h.profile("plain");
        let linked = h.bare("linked");
        std::os::unix::fs::symlink(h.profiles().join("plain").join(MARKER_FILE), linked.join(MARKER_FILE))
            .unwrap();
        h.bare("trusted");
        let got = h.discover();
        assert_eq!(names(&got), ["linked", "plain"]);
        assert!(got.named.iter().all(|d| d.marker_plain == (d.name.as_str() == "plain")));
        // `trusted` has no marker: said to be known, it is not looked up (the proof), and
        // symlinked entries are always looked at.
        let got = discover_with(h.path(), &|n, _| (n == "trusted").then_some(true));
        assert_eq!(names(&got), ["linked", "plain", "trusted"]);
        // Said to be known without a marker, `plain` is not looked up either: no profile.
        let got = discover_with(h.path(), &|n, _| (n == "plain").then_some(false));
        assert_eq!(names(&got), ["linked"]);
        // A dangling symlink is no marker.
        std::fs::remove_file(h.profiles().join("plain").join(MARKER_FILE)).unwrap();
        assert!(h.discover().named.is_empty());
    }

    #[test]
    fn entries_without_the_marker_are_ignored() {
        let h = Home::new();
        h.profile("real");
        h.bare("half-made");
        h.bare("Backup Copy"); // invalid name but no marker: silent
        std::fs::write(h.profiles().join("notes.txt"), "x").unwrap();
        std::fs::write(h.profiles().join(MARKER_FILE), "x").unwrap();
        fifo(&h.profiles().join("pipe"));
        let got = h.discover();
        assert_eq!(names(&got), ["real"]);
        assert!(got.skipped.is_empty() && got.warnings.is_empty());
    }

    #[test]
    fn marker_rules() {
        let h = Home::new();
        // Dangling SOUL.md symlink counts as absent.
        let dangling = h.bare("dangling");
        symlink(dangling.join("nowhere"), dangling.join(MARKER_FILE)).unwrap();
        // A looping SOUL.md symlink counts as absent, silently.
        let looping = h.bare("looping");
        symlink(looping.join(MARKER_FILE), looping.join(MARKER_FILE)).unwrap();
        // SOUL.md symlink to an existing file (even outside the home) counts.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("soul"), "s").unwrap();
        let linked = h.bare("linked");
        symlink(outside.path().join("soul"), linked.join(MARKER_FILE)).unwrap();
        // Any type counts: a directory, a FIFO (never opened, so no hang).
        let as_dir = h.bare("as-dir");
        std::fs::create_dir(as_dir.join(MARKER_FILE)).unwrap();
        let as_fifo = h.bare("as-fifo");
        fifo(&as_fifo.join(MARKER_FILE));
        // The marker name is case-sensitive.
        let lower = h.bare("lower");
        std::fs::write(lower.join("soul.md"), "s").unwrap();
        let got = h.discover();
        assert_eq!(names(&got), ["as-dir", "as-fifo", "linked"]);
        assert!(got.warnings.is_empty(), "{:?}", got.warnings);
    }

    #[test]
    fn hidden_entries_are_ignored() {
        let h = Home::new();
        h.profile(".work.staging-123");
        h.profile(".hidden");
        h.profile("work");
        h.tombstone("other");
        let got = h.discover();
        assert_eq!(names(&got), ["work"]);
        assert!(got.skipped.is_empty() && got.warnings.is_empty());
    }

    #[test]
    fn tombstoned_names_are_ignored() {
        let h = Home::new();
        h.profile("gone");
        h.profile("kept");
        h.profile("Bad-gone"); // invalid and tombstoned: silent, not skipped
        h.tombstone("gone");
        h.tombstone("Bad-gone");
        // A tombstone of any type counts, even a dangling symlink.
        h.profile("linked-gone");
        symlink("/nonexistent", h.profiles().join(TOMBSTONE_DIR).join("linked-gone")).unwrap();
        let got = h.discover();
        assert_eq!(names(&got), ["kept"]);
        assert!(got.skipped.is_empty() && got.warnings.is_empty());
    }

    #[test]
    fn symlinked_profiles_are_read_through() {
        let h = Home::new();
        let outside = tempfile::tempdir().unwrap();
        let real = outside.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join(MARKER_FILE), "s").unwrap();
        symlink(&real, h.profiles().join("linked")).unwrap();
        // Symlink to a directory without marker, dangling, to a file, looping: ignored.
        let unmarked = outside.path().join("unmarked");
        std::fs::create_dir(&unmarked).unwrap();
        symlink(&unmarked, h.profiles().join("unmarked")).unwrap();
        symlink(outside.path().join("nowhere"), h.profiles().join("dangling")).unwrap();
        std::fs::write(outside.path().join("file"), "").unwrap();
        symlink(outside.path().join("file"), h.profiles().join("to-file")).unwrap();
        symlink(h.profiles().join("loop"), h.profiles().join("loop")).unwrap();
        h.profile("plain");
        let got = h.discover();
        assert_eq!(names(&got), ["linked", "plain"]);
        assert_eq!(got.named[0].dir, h.profiles().join("linked"));
        assert!(got.named[0].via_symlink);
        assert!(!got.named[1].via_symlink);
        assert!(got.warnings.is_empty(), "{:?}", got.warnings);
    }

    #[test]
    fn symlinked_profiles_dir_marks_every_profile_as_via_symlink() {
        let outside = tempfile::tempdir().unwrap();
        let real = outside.path().join("profiles");
        std::fs::create_dir(&real).unwrap();
        std::fs::create_dir(real.join("bot")).unwrap();
        std::fs::write(real.join("bot").join(MARKER_FILE), "s").unwrap();
        let home = tempfile::tempdir().unwrap();
        symlink(&real, home.path().join(PROFILES_DIR)).unwrap();
        let got = discover(home.path());
        assert_eq!(names(&got), ["bot"]);
        assert!(got.named[0].via_symlink);
        assert_eq!(got.named[0].dir, home.path().join("profiles/bot"));
    }

    #[test]
    fn invalid_names_are_skipped_once_each() {
        let h = Home::new();
        h.profile("default");
        h.profile("Work");
        h.profile("-x");
        h.profile("has space");
        h.profile("ok");
        let got = h.discover();
        assert_eq!(names(&got), ["ok"]);
        let raws: Vec<&str> = got.skipped.iter().map(|s| s.raw.as_str()).collect();
        assert_eq!(raws, ["-x", "Work", "default", "has space"]);
        let reason = |raw: &str| got.skipped.iter().find(|s| s.raw == raw).unwrap().reason.clone();
        assert_eq!(reason("default"), NameError::Reserved.to_string());
        assert_eq!(reason("Work"), NameError::BadCharacters.to_string());
        assert_eq!(reason("has space"), NameError::BadCharacters.to_string());
        assert!(got.warnings.is_empty());
    }

    #[test]
    fn name_length_boundary() {
        let h = Home::new();
        let longest = "a".repeat(crate::model::MAX_NAME_LEN);
        let over = "b".repeat(crate::model::MAX_NAME_LEN + 1);
        h.profile(&longest);
        h.profile(&over);
        let got = h.discover();
        assert_eq!(names(&got), [longest.as_str()]);
        assert_eq!(got.skipped.len(), 1);
        assert_eq!(got.skipped[0].raw, over);
        assert_eq!(
            got.skipped[0].reason,
            NameError::TooLong { len: crate::model::MAX_NAME_LEN + 1, max: crate::model::MAX_NAME_LEN }
                .to_string()
        );
    }

    #[test]
    fn non_utf8_names_are_skipped() {
        let h = Home::new();
        let raw = OsStr::from_bytes(b"bot\xff");
        h.profile(raw);
        h.bare("x");
        let got = h.discover();
        assert!(got.named.is_empty());
        assert_eq!(got.skipped.len(), 1);
        assert_eq!(got.skipped[0].raw, "bot\u{fffd}");
        assert!(got.skipped[0].reason.contains("not UTF-8"));
        assert!(got.skipped[0].reason.contains(&NameError::BadCharacters.to_string()));
    }

    #[test]
    fn skipped_display_quotes_the_raw_name() {
        let s = SkippedDir { raw: "evil\nprofile=x action=started".to_string(), reason: "bad".to_string() };
        let line = s.to_string();
        assert!(!line.contains('\n'));
        assert_eq!(line, "profiles/\"evil\\nprofile=x action=started\" is skipped: bad");
    }

    #[test]
    fn unreadable_profiles_dir_warns_unless_root() {
        use std::os::unix::fs::PermissionsExt;
        if nix::unistd::geteuid().is_root() {
            return;
        }
        let h = Home::new();
        h.profile("bot");
        std::fs::set_permissions(h.profiles(), std::fs::Permissions::from_mode(0o000)).unwrap();
        let got = h.discover();
        std::fs::set_permissions(h.profiles(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(got.named.is_empty());
        assert_eq!(got.warnings.len(), 1);
    }
}
