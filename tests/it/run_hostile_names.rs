//! SPEC §9.3: names and values from the volume never reach people raw. A directory name holding
//! a newline, a forged log line and ESC, and a `desired_state` holding the same, planted by
//! `hermes`, leave no raw control byte in the daemon's stderr, `container-boot.log`, `status`
//! or `status --json`, and forge no line.

use crate::kit::*;
use std::ffi::OsStr;

/// What a forged line would start with.
const FORGED: &str = "2001-01-01T00:00:00.000000Z";

/// Raw control bytes (other than the line ends) in `text`, with their offsets.
fn raw_controls(text: &[u8]) -> Vec<(usize, u8)> {
    text.iter().copied().enumerate().filter(|&(_, b)| (b < 0x20 && b != b'\n') || b == 0x7f).collect()
}

fn check_clean(c: &mut Checks, what: &str, text: &[u8]) {
    let raw = raw_controls(text);
    c.check(
        raw.is_empty(),
        format!("{what}: raw control bytes {raw:?} in:\n{}", String::from_utf8_lossy(text)),
    );
    let forged = String::from_utf8_lossy(text).lines().any(|l| l.starts_with(FORGED) || l.starts_with("[2J"));
    c.check(!forged, format!("{what}: a forged line:\n{}", String::from_utf8_lossy(text)));
}

#[test]
fn hostile_names_and_values_are_escaped_in_logs_boot_log_and_status() {
    root_only!();
    let (w, uid, gid) = World::for_hermes();
    w.profile("work");
    chown_tree(&w.home, uid, gid);
    // Planted by hermes: an invalid profile directory whose name forges a log line and clears
    // the screen, and an intent value doing the same (JSON escapes in the file, raw once read).
    let profiles = w.home.join("profiles");
    let script = format!(
        "cd '{}' && d=\"$(printf 'evil\\n{FORGED}  INFO forged\\033[2J')\" && mkdir \"$d\" && : > \"$d/SOUL.md\" && \
         printf '%s' '{{\"desired_state\":\"\\n{FORGED}  INFO forged\\u001b[2J\\u009b\"}}' > work/gateway_state.json",
        profiles.display()
    );
    let o = run_as("hermes", &[OsStr::new("sh"), OsStr::new("-c"), OsStr::new(&script)]);
    assert!(o.status.success(), "as hermes: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(entries(&profiles).len(), 2, "{:?}", entries(&profiles));

    let mut d = Daemon::start(&w, &[]);
    let mut c = Checks::new();
    c.ok(boot_lines_when(&w, |l| has_line(l, "work", "registered") || has_line(l, "work", "started"))
        .map(|_| ()));
    c.ok(poll(WAIT, || match w.boot_log().contains("action=skipped") {
        true => Ok(()),
        false => Err(format!("no skipped line: {:?}", w.boot_log())),
    }));
    let status = w.run(&["status"]);
    let json = w.run(&["status", "--json"]);
    let once = w.run(&["once"]);
    let once_json = w.run(&["once", "--json"]);
    d.stop();
    let stderr = d.stderr();
    check_clean(&mut c, "daemon stderr", stderr.as_bytes());
    c.check(stderr.contains("evil\\x0a"), format!("the name is not shown escaped:\n{stderr}"));
    check_clean(&mut c, "container-boot.log", w.boot_log().as_bytes());
    check_clean(&mut c, "status", status.stdout.as_bytes());
    check_clean(&mut c, "status stderr", status.stderr.as_bytes());
    c.check(
        status.stdout.contains("evil\\x0a"),
        format!("status does not list the name escaped:\n{}", status.stdout),
    );
    check_clean(&mut c, "status --json", json.stdout.as_bytes());
    c.check(!json.stdout.contains('\u{9b}'), format!("raw C1 CSI in status --json:\n{}", json.stdout));
    c.check(!status.stdout.contains('\u{9b}'), format!("raw C1 CSI in status:\n{}", status.stdout));
    check_clean(&mut c, "once", once.stdout.as_bytes());
    check_clean(&mut c, "once stderr", once.stderr.as_bytes());
    check_clean(&mut c, "once --json", once_json.stdout.as_bytes());
    c.check(
        !once_json.stdout.contains('\u{9b}'),
        format!("raw C1 CSI in once --json:\n{}", once_json.stdout),
    );
    c.check(!once.stdout.contains('\u{9b}'), format!("raw C1 CSI in once:\n{}", once.stdout));
    // The JSON still carries the name itself.
    let v = json.json();
    let names: Vec<&str> =
        v["profiles"].as_array().unwrap().iter().filter_map(|r| r["profile"].as_str()).collect();
    c.check(names.iter().any(|n| n.starts_with("evil\n")), format!("status --json names: {names:?}"));
    c.finish();
}
