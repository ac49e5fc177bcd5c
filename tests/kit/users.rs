//! The `hermes` user, and commands run as it (the hostile agent of SPEC §9).

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use super::PATH;
use super::s6::{s6_command, s6_root};
use super::world::World;

/// Creates the user and group `hermes` (10000:10000, as in the image) if they do not exist;
/// tolerates a concurrent creation. With a chroot'ed s6 under test, the root gets the same
/// user with the same ids, so `s6-setuidgid hermes` means the same there.
pub fn ensure_hermes_user() -> (u32, u32) {
    static SYNC: std::sync::Once = std::sync::Once::new();
    if nix::unistd::User::from_name("hermes").ok().flatten().is_none() {
        let _ = Command::new("groupadd").args(["-g", "10000", "hermes"]).output();
        let out = Command::new("useradd")
            .args(["-u", "10000", "-g", "hermes", "-M", "-s", "/usr/sbin/nologin", "hermes"])
            .output()
            .expect("spawn useradd");
        let exists = nix::unistd::User::from_name("hermes").ok().flatten().is_some();
        assert!(
            out.status.success() || exists,
            "useradd hermes failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let u = nix::unistd::User::from_name("hermes").unwrap().expect("user hermes");
    let (uid, gid) = (u.uid.as_raw(), u.gid.as_raw());
    if let Some(root) = s6_root() {
        SYNC.call_once(|| {
            let script = format!(
                "if getent group hermes >/dev/null; then groupmod -g {gid} hermes; else groupadd -g {gid} hermes; fi && \
                 if id hermes >/dev/null 2>&1; then usermod -u {uid} -g {gid} hermes; \
                 else useradd -u {uid} -g {gid} -M -s /usr/sbin/nologin hermes; fi"
            );
            let out = Command::new("chroot").arg(&root).args(["sh", "-c", &script]).output().expect("chroot");
            assert!(out.status.success(), "hermes user in {}: {}", root.display(), String::from_utf8_lossy(&out.stderr));
        });
    }
    (uid, gid)
}

/// Runs `argv` as user `user` through `s6-setuidgid`.
pub fn run_as(user: &str, argv: &[&OsStr]) -> std::process::Output {
    s6_command("s6-setuidgid")
        .arg(user)
        .args(argv)
        .env_clear()
        .env("PATH", PATH)
        .output()
        .expect("spawn s6-setuidgid")
}

/// `chown -R uid:gid p`: in the container the volume belongs to `hermes`.
pub fn chown_tree(p: &Path, uid: u32, gid: u32) {
    let st = Command::new("chown").arg("-R").arg(format!("{uid}:{gid}")).arg(p).status().unwrap();
    assert!(st.success(), "chown -R {}", p.display());
}

impl World {
    /// A world like the container's: the binary runs its gateways as `hermes`
    /// (`HERMES_RUN_AS`), and the world's root and scandir are 0755 so that `hermes` reaches the
    /// home and the slots (the scandir stays root's). Returns `hermes`' uid and gid; create the
    /// profiles, then hand the home over with [`chown_tree`].
    pub fn for_hermes() -> (World, u32, u32) {
        let (uid, gid) = ensure_hermes_user();
        let mut w = World::new();
        w.set_env("HERMES_RUN_AS", "hermes");
        fs::set_permissions(&w.root, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&w.scandir, fs::Permissions::from_mode(0o755)).unwrap();
        (w, uid, gid)
    }
}
