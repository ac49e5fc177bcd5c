//! A profile's `config.yaml`, read for the two settings the topology needs (SPEC §6.7):
//! `multiplex_profiles` (top level, else `gateway.multiplex_profiles`; the root home's selects
//! `multiplex` when no variable does) and `gateway.standalone` (a profile that keeps its own
//! gateway in the `single` topology).
//!
//! The file is written by the agent, so it is parsed as a stream of events with `yaml-rust2`
//! (a maintained, pure-Rust, safe YAML 1.2 parser; `serde_yaml` is unmaintained and its forks
//! wrap the C-translated `unsafe-libyaml`), never loaded into a tree: an alias is never expanded
//! (a "billion laughs" file costs what its bytes cost), flow nesting is capped by the parser, and
//! only the scalar values of the three keys are kept. The read itself is bounded and refuses
//! anything but a regular file (see [`crate::observe::safe_read`]).
//!
//! Values: only a YAML boolean `true` (`true`, `True`, `TRUE`, and YAML 1.1's `yes`/`on`, which
//! PyYAML, upstream's reader, also takes) counts as true; anything else, an alias, a mapping, or
//! a broken file, counts as false.

use crate::observe::safe_read::ReadError;
use yaml_rust2::parser::{Event, Parser};

pub use crate::layout::home::CONFIG_FILE;

/// Largest `config.yaml` read; a larger one is a warning and reads as all false.
pub const MAX_CONFIG_FILE: u64 = 256 * 1024;

pub use crate::world::GatewayYaml;

/// The outcome of reading one file: its settings, and why it was ignored, if it was.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct YamlOutcome {
    pub settings: GatewayYaml,
    /// Why the file was ignored (bounded text, without the path).
    pub problem: Option<String>,
}

/// Parses a bounded read of `config.yaml`. A missing file is silently all false.
pub fn outcome(read: Result<Vec<u8>, ReadError>) -> YamlOutcome {
    match read {
        Ok(bytes) => match parse(&bytes) {
            Ok(settings) => YamlOutcome { settings, problem: None },
            Err(why) => YamlOutcome {
                settings: GatewayYaml::default(),
                problem: Some(format!("{why}; its settings count as false")),
            },
        },
        Err(ReadError::Missing) => YamlOutcome::default(),
        Err(e) => YamlOutcome {
            settings: GatewayYaml::default(),
            problem: Some(format!("{e}; its settings count as false")),
        },
    }
}

/// Reads `<dir>/config.yaml` (uncached): its settings, and a warning naming the file when it
/// was ignored.
pub fn read(dir: &std::path::Path) -> (GatewayYaml, Option<crate::warning::Warning>) {
    let path = dir.join(CONFIG_FILE);
    let o = outcome(crate::observe::safe_read::read_bounded(&path, MAX_CONFIG_FILE));
    (o.settings, o.problem.map(|why| warning(&path, &why)))
}

/// What [`read`] gives for a `config.yaml` known to be missing.
pub fn missing(dir: &std::path::Path) -> (GatewayYaml, Option<crate::warning::Warning>) {
    let o = outcome(Err(crate::observe::safe_read::ReadError::Missing));
    (o.settings, o.problem.map(|why| warning(&dir.join(CONFIG_FILE), &why)))
}

/// The warning about an ignored `config.yaml` at `path`.
pub fn warning(path: &std::path::Path, why: &str) -> crate::warning::Warning {
    let shown = crate::escape::Escaped::new(path).to_string();
    crate::warning::Warning::about(&shown, "config", format!("{shown} {why}"))
}

fn is_true(v: &str) -> bool {
    matches!(v, "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "on" | "On" | "ON")
}

/// One open collection while walking the events.
enum Frame {
    /// A mapping at key path `path`; `key` is the pending key once read (`None`: the next
    /// node is a key).
    Map {
        key: Option<Option<String>>,
    },
    Seq,
}

/// Extracts the settings from the first YAML document of `bytes`.
pub fn parse(bytes: &[u8]) -> Result<GatewayYaml, String> {
    let text = std::str::from_utf8(bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes))
        .map_err(|_| "is not UTF-8".to_string())?;
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    // Key path of the open mappings (a key that is not a plain string is `None`).
    let mut path: Vec<Option<String>> = Vec::new();
    let mut top_mux: Option<bool> = None;
    let mut gw_mux: Option<bool> = None;
    let mut standalone: Option<bool> = None;
    loop {
        let (event, _) = parser.next_token().map_err(|e| format!("is not valid YAML ({e})"))?;
        // A value node (scalar, alias or collection) taking the pending key's place.
        let value: Option<Option<String>>;
        match event {
            Event::StreamEnd | Event::DocumentEnd => break,
            Event::Nothing | Event::StreamStart | Event::DocumentStart => continue,
            Event::Scalar(v, style, _, _) => {
                let plain = matches!(style, yaml_rust2::scanner::TScalarStyle::Plain);
                match stack.last_mut() {
                    Some(Frame::Map { key }) if key.is_none() => {
                        *key = Some(Some(v));
                        continue;
                    }
                    _ => value = Some(plain.then_some(v)),
                }
            }
            Event::Alias(_) => match stack.last_mut() {
                Some(Frame::Map { key }) if key.is_none() => {
                    *key = Some(None);
                    continue;
                }
                _ => value = Some(None),
            },
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let key = match stack.last_mut() {
                    Some(Frame::Map { key }) => key.take().unwrap_or(None),
                    _ => None,
                };
                path.push(key);
                stack.push(if matches!(event, Event::MappingStart(..)) {
                    Frame::Map { key: None }
                } else {
                    Frame::Seq
                });
                continue;
            }
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
                path.pop();
                if let Some(Frame::Map { key }) = stack.last_mut() {
                    *key = None;
                }
                continue;
            }
        }
        // A scalar or alias value: is it one of ours?
        let Some(Frame::Map { key }) = stack.last_mut() else { continue };
        let k = key.take().unwrap_or(None);
        let v = value.unwrap_or(None);
        let truth = v.as_deref().is_some_and(is_true);
        // `path` holds the keys leading to the open mappings, the document's own first.
        let inner: Vec<Option<&str>> = path.iter().skip(1).map(|p| p.as_deref()).collect();
        match (inner.as_slice(), k.as_deref()) {
            ([], Some("multiplex_profiles")) => top_mux = Some(truth),
            ([Some("gateway")], Some("multiplex_profiles")) => gw_mux = Some(truth),
            ([Some("gateway")], Some("standalone")) => standalone = Some(truth),
            _ => {}
        }
    }
    Ok(GatewayYaml {
        multiplex_profiles: top_mux.or(gw_mux).unwrap_or(false),
        standalone: standalone.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(text: &str) -> GatewayYaml {
        parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn keys_upstream_reads() {
        assert_eq!(g(""), GatewayYaml::default());
        assert!(g("multiplex_profiles: true\n").multiplex_profiles);
        assert!(g("gateway:\n  multiplex_profiles: yes\n").multiplex_profiles);
        assert!(!g("multiplex_profiles: false\ngateway:\n  multiplex_profiles: true\n").multiplex_profiles);
        assert!(g("gateway: {standalone: true, port: 3}\n").standalone);
        assert!(!g("standalone: true\n").standalone, "top-level standalone is not gateway.standalone");
        assert!(!g("gateway:\n  x:\n    standalone: true\n").standalone);
        assert!(!g("gateway:\n  standalone: 'true'\n").standalone, "a quoted string is not a boolean");
        assert!(!g("gateway:\n  standalone: [true]\n").standalone);
        assert!(g("a: [1, {b: c}]\ngateway:\n  - x\n\nmultiplex_profiles: On\n").multiplex_profiles);
        assert!(!g("x: &a true\nmultiplex_profiles: *a\n").multiplex_profiles, "aliases are not followed");
    }

    #[test]
    fn broken_files_count_as_false_with_a_reason() {
        for bad in ["a: [", "gateway: {standalone: true", "\t- : :\n  x"] {
            let o = outcome(Ok(bad.as_bytes().to_vec()));
            assert_eq!(o.settings, GatewayYaml::default(), "{bad:?}");
            assert!(o.problem.is_some(), "{bad:?}");
        }
        assert!(outcome(Ok(vec![0xff, 0xfe])).problem.is_some());
        assert_eq!(outcome(Err(ReadError::Missing)), YamlOutcome::default());
    }

    #[test]
    fn hostile_shapes_cost_their_bytes() {
        // Deep flow nesting: refused by the parser's limit, not a stack overflow.
        let deep = format!("x: {}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(outcome(Ok(deep.into_bytes())).problem.is_some());
        // A billion laughs: aliases are never expanded.
        let mut laughs = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..30 {
            let p = i - 1;
            laughs.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        laughs.push_str("multiplex_profiles: true\n");
        assert!(g(&laughs).multiplex_profiles);
    }
}
