//! A stand-in for s6-supervise's lock, for tests.

use std::fs;
use std::path::Path;

/// A child process holding a POSIX write lock on `path` (as s6-supervise does), killed
/// when dropped.
pub struct Holder(nix::unistd::Pid);

impl Holder {
    pub fn pid(&self) -> i32 {
        self.0.as_raw()
    }

    pub fn lock(path: &Path) -> Holder {
        use nix::libc;
        let file = fs::File::options().create(true).truncate(false).write(true).open(path).unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        // SAFETY: the child makes only async-signal-safe system calls (fcntl, write,
        // pause) on descriptors it inherited, then waits to be killed.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => unsafe {
                use std::os::fd::AsRawFd;
                let mut fl: libc::flock = std::mem::zeroed();
                fl.l_type = libc::F_WRLCK as libc::c_short;
                fl.l_whence = libc::SEEK_SET as libc::c_short;
                libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &fl);
                libc::write(w.as_raw_fd(), b"x".as_ptr().cast(), 1);
                loop {
                    libc::pause();
                }
            },
            nix::unistd::ForkResult::Parent { child } => {
                drop(w);
                let mut b = [0u8; 1];
                assert_eq!(nix::unistd::read(&r, &mut b).unwrap(), 1, "the child holds the lock");
                Holder(child)
            }
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.0, None);
    }
}
