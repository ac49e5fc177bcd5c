//! The stand-in gateway. Slots exec this same executable as `$HERMES_GATEWAY_COMMAND`, with
//! `[-p <name>] gateway run --replace`. Its first act (the first statement of `main`) is to read
//! CLOCK_MONOTONIC; it then writes `<name> <ns>` into the lab's FIFO in one write and waits for a
//! signal, like a gateway that is up. Floors and daemon runs use the same stand-in.

use crate::lab::FIFO_ENV;
use nix::libc;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

/// Is this process a slot's `run` exec'ing the gateway?
pub fn is_standin(args: &[OsString]) -> bool {
    args.len() >= 4 && args[args.len() - 3..] == ["gateway", "run", "--replace"]
}

pub fn run(started_ns: i64, args: &[OsString]) -> ! {
    let name = match args.get(1).and_then(|a| a.to_str()) {
        Some("-p") => args.get(2).map(|a| a.to_string_lossy().into_owned()).unwrap_or_default(),
        _ => "default".to_string(),
    };
    if let Some(path) = std::env::var_os(FIFO_ENV)
        && let Ok(mut fifo) =
            std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(path)
    {
        let _ = fifo.write_all(format!("{name} {started_ns}\n").as_bytes());
    }
    loop {
        // SAFETY: pause has no preconditions; SIGTERM's default action ends the process.
        unsafe { libc::pause() };
    }
}
