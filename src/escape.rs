//! Escaping of untrusted text on its way to people (SPEC §9.3): profile and directory names,
//! intent values, paths and messages that carry them reach log lines, `status` and `once`
//! output. A name holding a newline could forge a log line; one holding ESC could send escape
//! sequences to an operator's terminal.
//!
//! One rule, [`escape_into`]: every character that does not print as itself is written as the
//! `\xNN` of each of its UTF-8 bytes (bytes that are not UTF-8 likewise), and `\` as `\\`, so
//! the output is printable and unambiguous. "Does not print as itself" ([`needs_escape`]): C0
//! controls (newline and tab included), DEL, C1 controls, and the invisible formatting
//! characters that reorder or hide text (bidirectional overrides and isolates, zero-width
//! characters, the BOM). Everything else, non-ASCII letters included, passes unchanged.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;

/// Whether `c` must not reach a terminal or a log line as itself.
pub fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}' | '\u{FEFF}'
        )
}

/// Writes `bytes` escaped to `out`. With `backslash`, `\` becomes `\\` (unambiguous output);
/// without, only what [`needs_escape`] (and bytes that are not UTF-8) is escaped, for text
/// whose untrusted parts were escaped already.
pub fn escape_into(out: &mut impl fmt::Write, bytes: &[u8], backslash: bool) -> fmt::Result {
    let hex =
        |out: &mut dyn fmt::Write, bytes: &[u8]| bytes.iter().try_for_each(|b| write!(out, "\\x{b:02x}"));
    for chunk in bytes.utf8_chunks() {
        let valid = chunk.valid();
        let mut start = 0;
        for (i, c) in valid.char_indices() {
            let special = needs_escape(c) || (backslash && c == '\\');
            if !special {
                continue;
            }
            out.write_str(&valid[start..i])?;
            if c == '\\' {
                out.write_str("\\\\")?;
            } else {
                hex(out, &valid.as_bytes()[i..i + c.len_utf8()])?;
            }
            start = i + c.len_utf8();
        }
        out.write_str(&valid[start..])?;
        hex(out, chunk.invalid())?;
    }
    Ok(())
}

/// `s` escaped (see the module documentation); borrowed when nothing needed escaping.
pub fn escape(s: &str) -> Cow<'_, str> {
    if s.chars().any(|c| needs_escape(c) || c == '\\') {
        let mut out = String::with_capacity(s.len() + 8);
        let _ = escape_into(&mut out, s.as_bytes(), true);
        Cow::Owned(out)
    } else {
        Cow::Borrowed(s)
    }
}

/// An untrusted string, path or OS string that displays escaped. Honours width and alignment
/// (`{:<24}`), so table columns stay aligned.
#[derive(Clone, Copy)]
pub struct Escaped<'a>(&'a [u8]);

impl<'a> Escaped<'a> {
    pub fn new<S: AsRef<OsStr> + ?Sized>(s: &'a S) -> Self {
        Escaped(s.as_ref().as_bytes())
    }
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.width().is_some() || f.precision().is_some() {
            let mut s = String::new();
            escape_into(&mut s, self.0, true)?;
            f.pad(&s)
        } else {
            escape_into(f, self.0, true)
        }
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// A serialised JSON text with every character that [`needs_escape`] and that serde_json leaves
/// raw (DEL, C1 controls, invisible formatting characters: it escapes only `U+0000`–`U+001F`)
/// written as a `\uXXXX` escape. The JSON value is unchanged; the text is printable.
pub fn json_safe(json: &str) -> Cow<'_, str> {
    let raw = |c: char| c >= '\u{7f}' && needs_escape(c);
    if !json.chars().any(raw) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if raw(c) {
            // Every such character is in the Basic Multilingual Plane: one escape.
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A writer for diagnostics that escapes, in each write, what [`needs_escape`] except a final
/// newline: the last line of defence, so that no untrusted byte that reached a log message
/// unescaped can break or forge a line or drive a terminal. Backslashes are left alone (the
/// untrusted parts are escaped, unambiguously, where the messages are built). Each `write` is
/// one formatted event (tracing's fmt layer writes an event with one `write_all`).
pub struct EscapingWriter<W>(pub W);

impl<W: std::io::Write> std::io::Write for EscapingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (body, end) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, &b"\n"[..]),
            None => (buf, &b""[..]),
        };
        let clean = std::str::from_utf8(body).is_ok_and(|s| !s.chars().any(needs_escape));
        if clean {
            self.0.write_all(buf)?;
        } else {
            let mut s = String::with_capacity(buf.len() + 16);
            let _ = escape_into(&mut s, body, false);
            s.push_str(std::str::from_utf8(end).unwrap_or_default());
            self.0.write_all(s.as_bytes())?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    #[test]
    fn controls_newlines_backslash_and_invisibles_are_escaped() {
        assert_eq!(escape("work"), "work");
        assert_eq!(escape("é-ü 名前"), "é-ü 名前");
        assert_eq!(escape("a\nb"), "a\\x0ab");
        assert_eq!(escape("\u{1b}[2J"), "\\x1b[2J");
        assert_eq!(escape("tab\there\r\0"), "tab\\x09here\\x0d\\x00");
        assert_eq!(escape("x\\x0a"), "x\\\\x0a");
        assert_eq!(escape("\u{7f}\u{9b}31m"), "\\x7f\\xc2\\x9b31m");
        assert_eq!(escape("a\u{202e}b\u{200b}"), "a\\xe2\\x80\\xaeb\\xe2\\x80\\x8b");
        assert_eq!(Escaped::new(OsStr::from_bytes(b"bot\xff\n")).to_string(), "bot\\xff\\x0a");
        assert_eq!(format!("[{:<6}]", Escaped::new("a\n")), "[a\\x0a ]");
    }

    #[test]
    fn json_stays_the_same_value_and_becomes_printable() {
        let v = serde_json::json!({ "profile": "a\n\u{1b}[2J\u{7f}\u{9b}\u{202e}é\\" });
        let text = v.to_string();
        let safe = json_safe(&text);
        assert!(!safe.chars().any(needs_escape), "{safe}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&safe).unwrap(), v);
    }

    #[test]
    fn writer_escapes_all_but_the_final_newline() {
        let mut w = EscapingWriter(Vec::new());
        w.write_all(b"WARN profiles/a\nb \x1b[2J path\\x\n").unwrap();
        assert_eq!(String::from_utf8(w.0).unwrap(), "WARN profiles/a\\x0ab \\x1b[2J path\\x\n");
    }

    proptest! {
        #[test]
        fn escaped_output_is_printable_and_reversible(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let s = Escaped::new(OsStr::from_bytes(&bytes)).to_string();
            prop_assert!(!s.chars().any(needs_escape));
            // Reverse it: `\\` and `\xNN` are the only escapes.
            let mut back = Vec::new();
            let b = s.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'\\' && b[i + 1] == b'\\' {
                    back.push(b'\\');
                    i += 2;
                } else if b[i] == b'\\' {
                    back.push(u8::from_str_radix(&s[i + 2..i + 4], 16).unwrap());
                    i += 4;
                } else {
                    back.push(b[i]);
                    i += 1;
                }
            }
            prop_assert_eq!(back, bytes);
        }
    }
}
