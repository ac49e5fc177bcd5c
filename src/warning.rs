//! A warning for people, with the key that says which problem it is about.
//!
//! The text of a warning may change while its cause stays the same (a JSON error's column moves
//! with each rewrite of a hostile file, an excerpt changes with the content). Repeats are
//! therefore recognised by [`Warning::key`] — the file (or profile) and the kind of problem —
//! never by the text (SPEC §9.3: the same warning about the same file at most once a minute,
//! whatever its text).

use serde::{Serialize, Serializer};
use std::fmt;
use std::ops::Deref;

/// One warning: what to print, and what it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// Stable identity of the problem: the file or profile it is about and the kind of problem.
    /// Two warnings with the same key are the same warning, whatever their texts.
    pub key: String,
    /// One human sentence naming the file or profile.
    pub text: String,
}

impl Warning {
    /// A warning about `subject` (a path or profile) of the given kind.
    pub fn about(subject: impl fmt::Display, kind: &str, text: String) -> Self {
        Warning { key: format!("{subject}\u{0}{kind}"), text }
    }
}

/// A warning whose text does not vary while its cause persists is its own key.
impl From<String> for Warning {
    fn from(text: String) -> Self {
        Warning { key: text.clone(), text }
    }
}

impl Deref for Warning {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Serialised as its text only (the key is internal).
impl Serialize for Warning {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// At most `max` bytes of untrusted text, for a warning: control characters, quotes,
/// backslashes and anything not ASCII are written as `\xNN` escapes (per byte), so an excerpt
/// can neither break nor forge a log line, and `…` marks a cut.
pub fn excerpt(raw: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, b) in raw.bytes().enumerate() {
        if i >= max {
            out.push('…');
            break;
        }
        if b.is_ascii_graphic() && b != b'"' && b != b'\\' || b == b' ' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ignores_the_text() {
        let a = Warning::about("/h/p/gateway_state.json", "json", "column 3".into());
        let b = Warning::about("/h/p/gateway_state.json", "json", "column 9".into());
        assert_eq!(a.key, b.key);
        assert_ne!(a.key, Warning::about("/h/p/gateway_state.json", "value", "x".into()).key);
        assert_ne!(a.key, Warning::about("/h/q/gateway_state.json", "json", "column 3".into()).key);
        assert_eq!(&*a, "column 3");
        assert_eq!(serde_json::to_string(&a).unwrap(), "\"column 3\"");
    }

    #[test]
    fn excerpts_are_bounded_and_escaped() {
        assert_eq!(excerpt("running", 32), "running");
        assert_eq!(excerpt("a\nb\x1b[2J\"\\é", 32), "a\\x0ab\\x1b[2J\\x22\\x5c\\xc3\\xa9");
        let long = "x".repeat(1 << 20);
        assert_eq!(excerpt(&long, 8), "xxxxxxxx…");
    }
}
