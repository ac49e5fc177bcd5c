//! Crash-loop backoff on real s6 (SPEC §6.8, issue 13 item 2), with short settings
//! (`HERMES_RECONCILER_CRASHLOOP=3/30`): a stand-in gateway that exits 1 at once is held down
//! after 3 deaths (`action=backoff` in the boot log, `backoff` in `status`), a new
//! `desired_state` value ends the hold at once, and so does an up command sent to the slot; a
//! later crash loop is held again from the kept step (20 s); gateways exiting 0 or 78 are
//! parked as before, never backed off. No timing assertion: waits are hang bounds.

use crate::kit::*;
use std::time::Duration;

const SHORT: [(&str, &str); 2] =
    [("HERMES_RECONCILER_CRASHLOOP", "3/30"), ("HERMES_RECONCILER_BACKOFF_MAX_SECS", "60")];

/// The `action=backoff` lines of `profile`, parsed (and checked) by the kit's parser.
fn backoff_lines(w: &World, profile: &str) -> Vec<BootLine> {
    let lines = w.boot_lines().unwrap_or_else(|e| panic!("{e}"));
    lines.into_iter().filter(|l| l.profile == profile && l.action == "backoff").collect()
}

fn wait_backoff_lines(w: &World, d: &Daemon, profile: &str, n: usize) -> Vec<BootLine> {
    must(
        d,
        &format!("{n} backoff line(s) for {profile}"),
        poll(Duration::from_secs(60), || {
            let l = backoff_lines(w, profile);
            if l.len() >= n { Ok(l) } else { Err(format!("{} so far; log:\n{}", l.len(), w.boot_log())) }
        }),
    )
}

fn status_backoff(w: &World, profile: &str) -> Option<String> {
    let json = w.run(&["status", "--json"]).json();
    json["profiles"].as_array()?.iter().find(|r| r["profile"] == profile)?["backoff"]
        .as_str()
        .map(str::to_owned)
}

#[test]
fn a_crash_loop_is_held_and_a_new_desired_state_ends_the_hold() {
    root_only!();
    let w = World::new();
    let crash = w.profile("crash").desired("running");
    w.profile("steady").desired("running");
    w.standin_exit("crash", 1);
    let d = Daemon::start(&w, &SHORT);
    let lines = wait_backoff_lines(&w, &d, "crash", 1);
    let mut c = Checks::new();
    c.eq("retry_in", lines[0].get("retry_in"), Some("10"));
    c.eq("deaths", lines[0].get("deaths"), Some("3"));
    c.eq("last_exit", lines[0].get("last_exit"), Some("exit_1"));
    // (stderr is written by a non-blocking logger thread: wait for the line.)
    c.ok(poll(WAIT, || {
        if d.log_lines_with(&["WARN", "crash", "exit_1"]).is_empty() { Err(d.stderr()) } else { Ok(()) }
    }));
    c.ok(wait_slots(&w.scandir, &wants(&[("crash", Want::Parked), ("steady", Want::Up)])));
    // The record `status` reads is written at the end of the pass that logged the hold.
    c.ok(poll(WAIT, || match status_backoff(&w, "crash") {
        Some(b) if b.contains("deaths=3") => Ok(()),
        other => Err(format!("status shows no hold with 3 deaths: {other:?}")),
    }));
    let table = w.run(&["status"]).stdout;
    c.check(table.lines().any(|l| l.starts_with("crash ") && l.contains("backoff until")), table);
    // A new desired_state value ends the hold at once (here: stopped).
    write_state(&crash.dir, &serde_json::json!({ "desired_state": "stopped" }));
    c.ok(poll(WAIT, || match status_backoff(&w, "crash") {
        None => Ok(()),
        Some(b) => Err(format!("still held: {b}")),
    }));
    c.ok(wait_slots(&w.scandir, &wants(&[("crash", Want::Down)])));
    // Running again, still crashing: held again, from the kept step.
    write_state(&crash.dir, &serde_json::json!({ "desired_state": "running" }));
    let lines = wait_backoff_lines(&w, &d, "crash", 2);
    c.eq("second hold", lines[1].get("retry_in"), Some("20"));
    c.finish();
}

#[test]
fn an_up_command_sent_to_the_slot_ends_the_hold() {
    root_only!();
    let w = World::new();
    w.profile("crash").desired("running");
    w.standin_exit("crash", 3);
    let d = Daemon::start(&w, &SHORT);
    wait_backoff_lines(&w, &d, "crash", 1);
    must(&d, "held", wait_slots(&w.scandir, &wants(&[("crash", Want::Parked)])));
    // The gateway is fixed, then started by hand.
    std::fs::remove_file(w.home.join(".standin/crash.exit")).unwrap();
    let before = w.standin_records("crash").len();
    let st = s6_command("s6-svc").arg("-u").arg(w.slot("crash")).status().unwrap();
    assert!(st.success());
    let mut c = Checks::new();
    c.ok(wait_slots(&w.scandir, &wants(&[("crash", Want::Up)])));
    c.ok(poll(WAIT, || match status_backoff(&w, "crash") {
        None => Ok(()),
        Some(b) => Err(format!("still held: {b}")),
    }));
    // s6 reports the slot up when its run script starts; the stand-in records itself after.
    c.ok(poll(WAIT, || match w.standin_records("crash").len() {
        n if n > before => Ok(()),
        n => Err(format!("not started again: {n} start record(s), {before} before")),
    }));
    c.ok(poll(WAIT, || {
        if d.log_lines_with(&["crash-loop hold ended"]).is_empty() { Err(d.stderr()) } else { Ok(()) }
    }));
    c.finish();
}

#[test]
fn exits_0_and_78_are_parked_never_backed_off() {
    root_only!();
    let w = World::new();
    w.profile("zero").desired("running");
    w.profile("config").desired("running");
    w.profile("crash").desired("running");
    w.standin_exit("zero", 0);
    w.standin_exit("config", 78);
    // A crash-looping witness: once it is held, the others had every chance to be.
    w.standin_exit("crash", 1);
    let d = Daemon::start(
        &w,
        &[("HERMES_RECONCILER_CRASHLOOP", "2/30"), ("HERMES_RECONCILER_BACKOFF_MAX_SECS", "60")],
    );
    wait_backoff_lines(&w, &d, "crash", 1);
    let mut c = Checks::new();
    c.ok(wait_slots(&w.scandir, &wants(&[("zero", Want::Parked), ("config", Want::Parked)])));
    c.eq("zero backoff lines", backoff_lines(&w, "zero").len(), 0);
    c.eq("config backoff lines", backoff_lines(&w, "config").len(), 0);
    c.eq("zero starts", w.standin_records("zero").len(), 1);
    c.finish();
}

#[test]
fn crash_loop_off_never_holds() {
    root_only!();
    let w = World::new();
    w.profile("crash").desired("running");
    w.standin_exit("crash", 1);
    let d = Daemon::start(&w, &[("HERMES_RECONCILER_CRASHLOOP", "off")]);
    // s6 restarts it every second; well past 3 deaths nothing holds it.
    must(
        &d,
        "five restarts",
        poll(WAIT, || {
            let n = w.standin_records("crash").len();
            if n >= 5 { Ok(()) } else { Err(format!("{n} starts")) }
        }),
    );
    assert!(backoff_lines(&w, "crash").is_empty(), "{}", w.boot_log());
}

#[test]
fn a_gateway_up_for_the_reset_period_counts_from_zero() {
    root_only!();
    let w = World::new();
    w.profile("crash").desired("running");
    w.standin_exit("crash", 1);
    let d = Daemon::start(
        &w,
        &[
            ("HERMES_RECONCILER_CRASHLOOP", "3/60"),
            ("HERMES_RECONCILER_BACKOFF_MAX_SECS", "60"),
            ("HERMES_RECONCILER_CRASHLOOP_RESET_SECS", "2"),
        ],
    );
    // Two deaths, then it is fixed and stays up past the reset period.
    must(
        &d,
        "two starts",
        poll(WAIT, || {
            let n = w.standin_records("crash").len();
            if n >= 2 { Ok(()) } else { Err(format!("{n} starts")) }
        }),
    );
    std::fs::remove_file(w.home.join(".standin/crash.exit")).unwrap();
    must(
        &d,
        "up",
        poll(WAIT, || match svstat(&w.slot("crash")) {
            Ok(s) if s.up => Ok(()),
            other => Err(format!("{other:?}")),
        }),
    );
    // Up past the reset period (2 s), whatever the load: s6's own timestamps decide.
    std::thread::sleep(Duration::from_secs(3));
    let starts_before = w.standin_records("crash").len();
    assert!(backoff_lines(&w, "crash").is_empty(), "{}", w.boot_log());
    // Broken again and killed: the count starts from zero, so three more deaths are needed.
    w.standin_exit("crash", 1);
    assert!(s6_command("s6-svc").arg("-k").arg(w.slot("crash")).status().unwrap().success());
    let lines = wait_backoff_lines(&w, &d, "crash", 1);
    let mut c = Checks::new();
    c.eq("deaths", lines[0].get("deaths"), Some("3"));
    c.eq("starts after the reset before the hold", w.standin_records("crash").len() - starts_before, 2);
    c.finish();
}
