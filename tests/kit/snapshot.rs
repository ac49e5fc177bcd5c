//! Snapshots of a directory tree or of a slot, to prove what a command did not change.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Everything about one path that `--dry-run` must not change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// File content, or symlink target.
    pub content: Vec<u8>,
}

/// Paths, types, modes, owners and contents of every entry under `root` (FIFOs are never opened).
pub fn tree_digest(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, p: &Path, out: &mut BTreeMap<PathBuf, Node>) {
    let md = match p.symlink_metadata() {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return,
        Err(e) => panic!("stat {}: {e}", p.display()),
    };
    let ft = md.file_type();
    use std::os::unix::fs::FileTypeExt;
    let (kind, content) = if ft.is_symlink() {
        ('l', fs::read_link(p).unwrap().as_os_str().as_bytes().to_vec())
    } else if ft.is_dir() {
        ('d', Vec::new())
    } else if ft.is_file() {
        ('f', fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())))
    } else if ft.is_fifo() {
        ('p', Vec::new())
    } else if ft.is_socket() {
        ('s', Vec::new())
    } else {
        ('?', Vec::new())
    };
    let rel = p.strip_prefix(root).unwrap().to_path_buf();
    out.insert(rel, Node { kind, mode: md.mode() & 0o7777, uid: md.uid(), gid: md.gid(), content });
    if kind == 'd' {
        let mut names: Vec<_> = fs::read_dir(p).unwrap().flatten().map(|e| e.path()).collect();
        names.sort();
        for n in names {
            walk(root, &n, out);
        }
    }
}

/// Differences between two digests, for messages.
pub fn digest_diff(a: &BTreeMap<PathBuf, Node>, b: &BTreeMap<PathBuf, Node>) -> Vec<String> {
    let keys: BTreeSet<&PathBuf> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter_map(|k| match (a.get(k), b.get(k)) {
            (Some(x), Some(y)) if x == y => None,
            (Some(x), Some(y)) => Some(format!(
                "{} changed: {}{:o} {}:{} {}B -> {}{:o} {}:{} {}B",
                k.display(),
                x.kind,
                x.mode,
                x.uid,
                x.gid,
                x.content.len(),
                y.kind,
                y.mode,
                y.uid,
                y.gid,
                y.content.len()
            )),
            (Some(_), None) => Some(format!("{} removed", k.display())),
            (None, Some(_)) => Some(format!("{} created", k.display())),
            (None, None) => None,
        })
        .collect()
}

/// Identity of one file of a slot: inode, mtime (ns) and content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileId {
    pub ino: u64,
    pub mtime_ns: i128,
    pub content: Vec<u8>,
}

/// Every entry of a slot except what s6 itself writes (`supervise/` and `event/`, at any
/// depth); directories are recorded by inode only.
pub fn slot_snapshot(slot: &Path) -> BTreeMap<PathBuf, FileId> {
    fn go(root: &Path, p: &Path, out: &mut BTreeMap<PathBuf, FileId>) {
        let md = p.symlink_metadata().unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        if md.is_dir() {
            out.insert(rel, FileId { ino: md.ino(), mtime_ns: 0, content: Vec::new() });
            for e in fs::read_dir(p).unwrap().flatten() {
                let n = e.file_name();
                if n == "supervise" || n == "event" {
                    continue;
                }
                go(root, &e.path(), out);
            }
        } else {
            let content = if md.is_file() { fs::read(p).unwrap() } else { Vec::new() };
            let mtime_ns = i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec());
            out.insert(rel, FileId { ino: md.ino(), mtime_ns, content });
        }
    }
    let mut out = BTreeMap::new();
    go(slot, slot, &mut out);
    out
}
