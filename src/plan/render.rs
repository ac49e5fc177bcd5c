//! Rendering a slot's files (SPEC §7.1). Pure: same input, byte-identical output, so adopting a
//! slot can compare what is on disk with what would be written and touch only what differs.
//!
//! Invariant: every value that reaches a script is single-quoted with [`sh_quote`]; profile
//! names are validated [`ProfileName`]s, so nothing from a file reaches a shell unquoted.

use crate::layout::home::{GATEWAY_LOGS_DIR, LOGS_DIR};
use crate::layout::slot::{FINISH, LOG_RUN, RUN, TYPE};
use crate::model::ProfileName;
use sha2::{Digest, Sha256};
use std::path::Path;

/// One file of a slot, relative to the slot directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotFile {
    pub rel: &'static str,
    pub content: String,
    pub mode: u32,
}

/// Everything a slot's files depend on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderInput<'a> {
    pub name: &'a ProfileName,
    pub home: &'a Path,
    pub gateway_command: &'a str,
    pub run_as: Option<&'a str>,
    /// `None` when the profile's `.env` sets `API_SERVER_PORT` (or no port was free).
    pub port: Option<u16>,
    /// `/command/with-contenv` exists (s6-overlay): use it as the `run` shebang.
    pub with_contenv: bool,
}

/// A slot's rendered files and their [`digest`].
#[derive(Debug, PartialEq, Eq)]
pub struct Rendered {
    pub files: Vec<SlotFile>,
    pub digest: String,
}

/// The last [`Rendered`] of each profile, kept by the daemon between passes: a full re-list
/// plans every slot again, and rendering and hashing the same files for each was a fifth of
/// its work (issue 15). Transparent: [`rendered`] gives what [`render`] and [`digest`] give,
/// with or without it (tested). Bounded by the profiles planned ([`RenderMemo::retain`]).
#[derive(Debug, Default)]
pub struct RenderMemo {
    by_name: std::cell::RefCell<crate::hashing::FastMap<ProfileName, (OwnedInput, std::sync::Arc<Rendered>)>>,
}

/// A [`RenderInput`]'s values, owned.
#[derive(Debug)]
struct OwnedInput {
    home: std::path::PathBuf,
    gateway_command: String,
    run_as: Option<String>,
    port: Option<u16>,
    with_contenv: bool,
}

impl OwnedInput {
    fn of(i: &RenderInput<'_>) -> Self {
        OwnedInput {
            home: i.home.to_path_buf(),
            gateway_command: i.gateway_command.to_string(),
            run_as: i.run_as.map(str::to_string),
            port: i.port,
            with_contenv: i.with_contenv,
        }
    }

    fn is(&self, i: &RenderInput<'_>) -> bool {
        self.port == i.port
            && self.with_contenv == i.with_contenv
            && self.home == i.home
            && self.gateway_command == i.gateway_command
            && self.run_as.as_deref() == i.run_as
    }
}

impl RenderMemo {
    /// Forgets the profiles `keep` rejects (gone, or no longer planned).
    pub fn retain(&self, keep: impl Fn(&ProfileName) -> bool) {
        self.by_name.borrow_mut().retain(|n, _| keep(n));
    }

    pub fn len(&self) -> usize {
        self.by_name.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// [`render`] and [`digest`] of `input`, through `memo` when given.
pub fn rendered(input: &RenderInput<'_>, memo: Option<&RenderMemo>) -> std::sync::Arc<Rendered> {
    let fresh = || {
        let files = render(input);
        let digest = digest(&files);
        std::sync::Arc::new(Rendered { files, digest })
    };
    let Some(memo) = memo else { return fresh() };
    if let Some((key, r)) = memo.by_name.borrow().get(input.name)
        && key.is(input)
    {
        return r.clone();
    }
    let r = fresh();
    memo.by_name.borrow_mut().insert(input.name.clone(), (OwnedInput::of(input), r.clone()));
    r
}

/// Quotes `s` as one POSIX shell word.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Renders `type`, `run`, `finish` and `log/run`, in the order of [`crate::layout::slot::RENDERED`].
pub fn render(input: &RenderInput<'_>) -> Vec<SlotFile> {
    vec![
        SlotFile { rel: TYPE, content: "longrun\n".into(), mode: 0o644 },
        SlotFile { rel: RUN, content: run_script(input), mode: 0o755 },
        SlotFile { rel: FINISH, content: FINISH_SCRIPT.into(), mode: 0o755 },
        SlotFile { rel: LOG_RUN, content: log_script(input), mode: 0o755 },
    ]
}

/// SHA-256 (hex) over the rendered files' names, modes and contents.
pub fn digest(files: &[SlotFile]) -> String {
    let mut h = Sha256::new();
    for f in files {
        h.update(f.rel.as_bytes());
        h.update([0]);
        h.update(f.mode.to_be_bytes());
        h.update((f.content.len() as u64).to_be_bytes());
        h.update(f.content.as_bytes());
    }
    // Hex by hand: a `format!` per byte was 32 allocations per slot at every re-list.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in h.finalize() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// The lines that re-execute the script as `user` when it was started as root.
fn drop_privileges(run_as: Option<&str>) -> String {
    match run_as {
        Some(user) => {
            format!("if [ \"$(id -u)\" -eq 0 ]; then\n  exec s6-setuidgid {} \"$0\"\nfi\n", sh_quote(user))
        }
        None => String::new(),
    }
}

fn header(name: &ProfileName) -> String {
    format!("# Generated by hermes-reconciler for profile {name}; edits are overwritten.\n")
}

fn run_script(input: &RenderInput<'_>) -> String {
    let shebang = if input.with_contenv { "#!/command/with-contenv sh" } else { "#!/bin/sh" };
    let home = sh_quote(&input.home.to_string_lossy());
    let mut s = format!("{shebang}\n{}", header(input.name));
    s.push_str(&drop_privileges(input.run_as));
    s.push_str("exec 2>&1\n");
    s.push_str(&format!("HOME={home}\n"));
    s.push_str("HERMES_S6_SUPERVISED_CHILD=1\nHERMES_SUPERVISED_CHILD=1\n");
    s.push_str("export HOME HERMES_S6_SUPERVISED_CHILD HERMES_SUPERVISED_CHILD\n");
    if let Some(port) = input.port {
        s.push_str(&format!("API_SERVER_PORT={port}\nexport API_SERVER_PORT\n"));
    }
    s.push_str(&format!("cd {home} || exit 111\n"));
    let command = sh_quote(input.gateway_command);
    if input.name.is_root() {
        s.push_str(&format!("exec {command} gateway run --replace\n"));
    } else {
        s.push_str(&format!("exec {command} -p {} gateway run --replace\n", sh_quote(input.name.as_str())));
    }
    s
}

/// `$1` is the gateway's exit code (256 when killed by a signal). 0 is a deliberate stop and 78
/// a fatal configuration error: exiting 125 tells s6 not to restart (want-up is cleared).
const FINISH_SCRIPT: &str = "#!/bin/sh
# Generated by hermes-reconciler; edits are overwritten.
# Exit 0 (deliberate stop) or 78 (fatal configuration): park the slot, s6 will not restart it.
case \"$1\" in
  0 | 78) exit 125 ;;
esac
exit 0
";

fn log_script(input: &RenderInput<'_>) -> String {
    let dir = input.home.join(LOGS_DIR).join(GATEWAY_LOGS_DIR).join(input.name.as_str());
    let dir = sh_quote(&dir.to_string_lossy());
    let mut s = format!("#!/bin/sh\n{}", header(input.name));
    s.push_str(&drop_privileges(input.run_as));
    s.push_str(&format!("mkdir -p -- {dir} || exit 111\n"));
    // 1: echo to stdout (the container log); T: ISO 8601 timestamps; 10 files of 1 MiB.
    s.push_str(&format!("exec s6-log 1 T s1048576 n10 {dir}\n"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(name: &'a ProfileName, port: Option<u16>, run_as: Option<&'a str>) -> RenderInput<'a> {
        RenderInput {
            name,
            home: Path::new("/opt/da'ta"),
            gateway_command: "hermes",
            run_as,
            port,
            with_contenv: false,
        }
    }

    #[test]
    fn root_never_gets_dash_p() {
        let root = ProfileName::root();
        let files = render(&input(&root, Some(9300), None));
        let run = &files[1].content;
        assert!(run.contains("exec 'hermes' gateway run --replace\n"), "{run}");
        assert!(!run.contains("-p"));
        assert!(run.contains("API_SERVER_PORT=9300\n"));
        assert!(run.contains("HOME='/opt/da'\\''ta'\n"));
    }

    #[test]
    fn named_gets_dash_p_and_optional_port() {
        let n = ProfileName::parse_named("work").unwrap();
        let run = render(&input(&n, None, Some("hermes")))[1].content.clone();
        assert!(run.contains("exec 'hermes' -p 'work' gateway run --replace\n"));
        assert!(!run.contains("API_SERVER_PORT"));
        assert!(run.contains("exec s6-setuidgid 'hermes' \"$0\""));
    }

    #[test]
    fn contenv_shebang() {
        let n = ProfileName::root();
        let mut i = input(&n, None, None);
        i.with_contenv = true;
        assert!(render(&i)[1].content.starts_with("#!/command/with-contenv sh\n"));
    }

    #[test]
    fn digest_is_the_lowercase_hex_sha256_of_names_modes_and_contents() {
        let n = ProfileName::parse_named("work").unwrap();
        let files = render(&input(&n, Some(8643), Some("hermes")));
        let mut h = Sha256::new();
        for f in &files {
            h.update(f.rel.as_bytes());
            h.update([0]);
            h.update(f.mode.to_be_bytes());
            h.update((f.content.len() as u64).to_be_bytes());
            h.update(f.content.as_bytes());
        }
        let want: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(digest(&files), want);
        assert_eq!(want.len(), 64);
    }

    #[test]
    fn the_memo_gives_what_rendering_gives_and_renders_again_when_an_input_changes() {
        let (a, b) = (ProfileName::parse_named("a").unwrap(), ProfileName::root());
        let memo = RenderMemo::default();
        let inputs = [
            input(&a, Some(9300), None),
            input(&b, Some(9300), None),
            input(&a, Some(9301), None),
            input(&a, Some(9301), Some("hermes")),
            RenderInput { with_contenv: true, ..input(&a, Some(9301), Some("hermes")) },
            RenderInput { home: Path::new("/elsewhere"), ..input(&a, Some(9301), Some("hermes")) },
            RenderInput { gateway_command: "other", ..input(&a, Some(9301), Some("hermes")) },
            input(&a, None, None),
        ];
        for i in inputs.iter().chain(inputs.iter()) {
            let files = render(i);
            let want = Rendered { digest: digest(&files), files };
            assert_eq!(*rendered(i, Some(&memo)), want, "{i:?}");
            assert_eq!(*rendered(i, None), want);
        }
        assert_eq!(memo.len(), 2);
        let again = rendered(&inputs[7], Some(&memo));
        assert!(
            std::sync::Arc::ptr_eq(&again, &rendered(&inputs[7], Some(&memo))),
            "kept, not rendered again"
        );
        memo.retain(|n| n.is_root());
        assert_eq!(memo.len(), 1);
    }

    #[test]
    fn digest_changes_with_content() {
        let n = ProfileName::root();
        let a = digest(&render(&input(&n, Some(9300), None)));
        let b = digest(&render(&input(&n, Some(9301), None)));
        assert_ne!(a, b);
        assert_eq!(a, digest(&render(&input(&n, Some(9300), None))));
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
        assert_eq!(sh_quote(""), "''");
    }
}
