//! Supervisors followed by their process, so that a re-list need not ask each slot's lock
//! again (issue 15).
//!
//! A slot is supervised while an s6-supervise holds the write lock on its `supervise/lock`
//! ([`crate::s6::supervisor_pid`]). s6-supervise takes that lock when it starts and holds it
//! until it exits (S6-FACTS: "Is a supervisor alive?"); the kernel drops it when the process
//! dies, however it dies. So once the holder is known, "is the lock still held?" is "is that
//! process still alive?", and the kernel answers that for every followed process at once: a
//! pidfd becomes readable when its process exits, and one epoll instance holding the pidfds
//! of every followed supervisor is readable as soon as any of them exits. A re-list of 400
//! slots then makes one `epoll_wait` instead of 400 `fcntl(F_GETLK)` (measured: about a
//! quarter of a settled re-list's CPU).
//!
//! Invariants:
//! * a process is followed only if, after its pidfd was opened, the lock still names it as the
//!   holder: a pid that died and was reused between the lock query and `pidfd_open` is never
//!   taken for the supervisor (the pidfd would name the new process, which holds no lock);
//! * the holder's pid is never 0 (a holder in a pid namespace we cannot see): that slot keeps
//!   asking its lock;
//! * each pidfd is registered once, level-triggered: it stays readable after its process
//!   exits, so [`SupervisorWatch::deaths`] reports it until its [`Followed`] is dropped, which
//!   removes it from the set (explicitly: closing it would not, while a child forked meanwhile
//!   still holds a copy of the descriptor);
//! * a supervisor that exits shows as a death at the next [`SupervisorWatch::deaths`]; an
//!   observation made between the moment its lock was released and the moment it became a
//!   zombie (microseconds, inside the exit) still counts it alive, as a lock query made an
//!   instant earlier would: the next re-list sees it either way.

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

/// The followed supervisors' pidfds, in one epoll set.
#[derive(Debug)]
pub struct SupervisorWatch {
    epoll: Arc<Epoll>,
}

/// One followed supervisor: its pidfd, in the set until this is dropped.
#[derive(Debug)]
pub struct Followed {
    pidfd: OwnedFd,
    set: Arc<Epoll>,
}

impl Followed {
    /// What [`SupervisorWatch::deaths`] reports when this process exits.
    pub fn id(&self) -> RawFd {
        self.pidfd.as_raw_fd()
    }
}

impl Drop for Followed {
    fn drop(&mut self) {
        let _ = self.set.delete(self.pidfd.as_fd());
    }
}

impl SupervisorWatch {
    /// `Err` without epoll: every slot keeps asking its lock.
    pub fn new() -> nix::Result<Self> {
        Ok(SupervisorWatch { epoll: Arc::new(Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?) })
    }

    /// Follows `pid`, which [`crate::s6::supervisor_by`] just named as the holder of `lock`:
    /// its pidfd, registered here, or `None` (pid 0, no pidfds on this kernel, no descriptor
    /// left, or the holder changed meanwhile). The caller keeps it while it trusts the holder
    /// and drops it when it stops.
    pub fn follow(&self, pid: i32, lock: &File) -> Option<Followed> {
        if pid <= 0 {
            return None;
        }
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
        let fd = RawFd::try_from(fd).ok().filter(|fd| *fd >= 0)?;
        // SAFETY: a descriptor the kernel just made for us, owned by nothing else (pidfds are
        // close-on-exec).
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd) };
        // The pid could have been reused between the lock's answer and the open: only a pidfd
        // opened while `pid` still held the lock names the supervisor.
        if !matches!(crate::s6::supervisor_by(lock), crate::s6::Liveness::Alive(p) if p == pid) {
            return None;
        }
        let data = u64::try_from(pidfd.as_raw_fd()).ok()?;
        self.epoll.add(pidfd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, data)).ok()?;
        Some(Followed { pidfd, set: Arc::clone(&self.epoll) })
    }

    /// The followed processes that exited, by [`Followed::id`]. Each is reported again at
    /// every call until its [`Followed`] is dropped. `Err`: the set cannot be read
    /// (the caller then trusts none of them).
    pub fn deaths(&self) -> nix::Result<Vec<RawFd>> {
        let mut dead = Vec::new();
        let mut events = [EpollEvent::empty(); 64];
        let n = self.epoll.wait(&mut events, EpollTimeout::ZERO)?;
        dead.extend(events[..n].iter().filter_map(|e| RawFd::try_from(e.data()).ok()));
        if n == events.len() {
            // More than a batch died at once: the rest are as readable, and reported the same
            // way the next time (the caller closes these first). Say every one is dead now so
            // that nothing is trusted meanwhile.
            return Err(nix::errno::Errno::EAGAIN);
        }
        Ok(dead)
    }

    /// The epoll descriptor: readable while a followed process has exited (for a tape's
    /// [`super::tape::quiet`] step).
    pub fn fd(&self) -> RawFd {
        self.epoll.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::test_lock::Holder;

    fn lock_file(path: &std::path::Path) -> File {
        File::options().read(true).open(path).unwrap()
    }

    #[test]
    fn a_followed_holder_is_quiet_while_alive_and_reported_once_dead() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("lock");
        let holder = Holder::lock(&path);
        let lock = lock_file(&path);
        let w = SupervisorWatch::new().unwrap();
        let followed = w.follow(holder.pid(), &lock).expect("the holder is followed");
        assert_eq!(w.deaths().unwrap(), Vec::<RawFd>::new());
        assert_eq!(nix_poll(w.fd()), 0, "quiet while the holder lives");
        // A child forked now holds a copy of the pidfd (as one forked to exec would, for an
        // instant): dropping ours must still take it out of the set.
        let copy = Holder::lock(&t.path().join("other"));
        drop(holder);
        assert_eq!(w.deaths().unwrap(), vec![followed.id()]);
        assert_eq!(w.deaths().unwrap(), vec![followed.id()], "reported until dropped");
        assert_eq!(nix_poll(w.fd()), 1, "the set is readable");
        drop(followed);
        assert_eq!(w.deaths().unwrap(), Vec::<RawFd>::new(), "dropping it leaves the set");
        assert_eq!(nix_poll(w.fd()), 0);
        drop(copy);
    }

    #[test]
    fn only_the_lock_holder_is_followed() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("lock");
        let holder = Holder::lock(&path);
        let other = Holder::lock(&t.path().join("other"));
        let lock = lock_file(&path);
        let w = SupervisorWatch::new().unwrap();
        // A live process that does not hold this lock (as a reused pid would be): refused.
        assert!(w.follow(other.pid(), &lock).is_none());
        assert!(w.follow(0, &lock).is_none(), "pid 0: a holder we cannot see");
        assert!(w.follow(-1, &lock).is_none());
        assert!(w.follow(holder.pid(), &lock).is_some());
        // No lock held at all.
        let free = t.path().join("free");
        std::fs::write(&free, "").unwrap();
        assert!(w.follow(holder.pid(), &lock_file(&free)).is_none());
    }

    fn nix_poll(fd: RawFd) -> i32 {
        let mut p = nix::libc::pollfd { fd, events: nix::libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd on the stack for the duration of the call.
        unsafe { nix::libc::poll(&mut p, 1, 0) }
    }
}
