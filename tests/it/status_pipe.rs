//! Issue 9 row 11: `hermes-reconciler status | head -1` with thousands of profiles exits quietly
//! when the reader closes the pipe early: exit 0, nothing on stderr, no panic. The output is
//! several times a pipe's 64 KiB buffer, so the program is still writing when the pipe closes.

use crate::kit::*;
use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;

fn closed_early(w: &World, args: &[&str], read_some: impl FnOnce(&mut BufReader<std::process::ChildStdout>)) {
    let mut cmd = w.command(args);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn status");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    read_some(&mut out);
    drop(out); // `head` exits: the read end is closed
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let deadline = std::time::Instant::now() + ONCE_TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            panic!("status {args:?} hung after its reader went away");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0), "status {args:?} on a closed pipe: {status}, stderr {err:?}");
    assert_eq!(err, "", "status {args:?} on a closed pipe wrote to stderr");
}

#[test]
fn status_exits_quietly_when_its_reader_closes_the_pipe() {
    root_only!();
    let w = World::without_svscan();
    for i in 0..3000 {
        w.profile(&format!("p{i:05}"));
    }
    closed_early(&w, &["status"], |out| {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.starts_with("PROFILE") || line.starts_with("warning:"), "first line {line:?}");
    });
    closed_early(&w, &["status", "--json"], |out| {
        let mut buf = [0u8; 4096];
        out.read_exact(&mut buf).unwrap();
        assert!(buf.starts_with(b"{"), "JSON output");
    });
}
