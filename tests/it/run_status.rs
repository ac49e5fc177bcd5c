//! `hermes-reconciler status --json` on real s6: every row agrees with `s6-svstat` and the slot
//! directory, while the daemon runs and after it stopped (including changes made behind its
//! back), and `status` itself changes nothing.

use crate::kit::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

/// Scandir entries, files of every slot, ports file, boot log.
type Untouched = (Vec<String>, BTreeMap<String, BTreeMap<PathBuf, FileId>>, String, String);

/// What `status` must leave as it is.
fn untouched(w: &World) -> Untouched {
    let names: Vec<String> = entries(&w.scandir).into_iter().collect();
    let slots = gateway_slots(&w.scandir)
        .into_iter()
        .map(|s| (s.clone(), slot_snapshot(&w.scandir.join(&s))))
        .collect();
    (names, slots, read(&w.home.join(".gateway-ports.json")), w.boot_log())
}

#[test]
fn status_json_agrees_with_s6_with_and_without_the_daemon() {
    root_only!();
    let w = World::new();
    set_desired(&w.home, "running");
    w.profile("up1").desired("running");
    w.profile("down1");
    w.profile("stopped1").desired("stopped");
    w.profile("parked").desired("running");
    w.standin_exit("parked", 78);
    let all = ["default", "down1", "parked", "stopped1", "up1"];
    let mut d = Daemon::start(&w, &[]);
    converge(
        &w,
        &d,
        &[
            ("default", Want::Up),
            ("up1", Want::Up),
            ("down1", Want::Down),
            ("stopped1", Want::Down),
            ("parked", Want::Parked),
        ],
    );

    let mut c = Checks::new();
    // With the daemon running.
    if let Some(rows) = c.ok(status_agrees(&w, &all)) {
        let intents: BTreeMap<&str, Value> =
            rows.iter().map(|(k, r)| (k.as_str(), r["intent"].clone())).collect();
        c.eq(
            "intents",
            intents,
            BTreeMap::from([
                ("default", json!("running")),
                ("down1", Value::Null),
                ("parked", json!("running")),
                ("stopped1", json!("stopped")),
                ("up1", json!("running")),
            ]),
        );
        for (name, r) in &rows {
            c.eq(&format!("{name}: profile_present"), r["profile_present"].clone(), json!(true));
            c.eq(&format!("{name}: last_error"), r["last_error"].clone(), Value::Null);
            c.eq(&format!("{name}: skipped"), r["skipped"].clone(), Value::Null);
            let port = r["port"].as_u64();
            c.check(port.is_some_and(|p| (9200..9800).contains(&p)), format!("{name}: port {}", r["port"]));
            c.check(r["uptime_secs"].is_u64(), format!("{name}: uptime_secs {}", r["uptime_secs"]));
            let want_action =
                if ["default", "up1", "parked"].contains(&name.as_str()) { "started" } else { "registered" };
            c.eq(&format!("{name}: last_action"), r["last_action"].clone(), json!(want_action));
            c.check(
                r["last_action_at"].is_string(),
                format!("{name}: last_action_at {}", r["last_action_at"]),
            );
        }
        // The port column is the recorded assignment.
        let ports: Value =
            serde_json::from_str(&read(&w.home.join(".gateway-ports.json"))).unwrap_or(Value::Null);
        for (name, r) in &rows {
            c.eq(
                &format!("{name}: port vs .gateway-ports.json"),
                r["port"].clone(),
                ports[name.as_str()].clone(),
            );
        }
    }

    // Without the daemon.
    d.stop();
    c.ok(status_agrees(&w, &all).map(|_| ()).map_err(|e| format!("daemon stopped: {e}")));

    // Changes behind the stopped daemon's back: s6 commands and a profile removed.
    let svc = |args: &[&str], slot: &str| {
        let st = Command::new("s6-svc").args(args).arg(w.slot(slot)).env_clear().env("PATH", PATH).status();
        assert!(st.is_ok_and(|s| s.success()), "s6-svc {args:?} {slot}");
    };
    svc(&["-u"], "down1");
    svc(&["-d"], "up1");
    std::fs::remove_dir_all(w.profile_dir("stopped1")).unwrap();
    wait_until("down1 up and up1 down", WAIT, || {
        svstat(&w.slot("down1")).is_ok_and(|s| s.up) && svstat(&w.slot("up1")).is_ok_and(|s| !s.up)
    });
    let before = untouched(&w);
    if let Some(rows) = c.ok(status_agrees(&w, &all).map_err(|e| format!("after changes: {e}"))) {
        let r = &rows["stopped1"];
        c.eq("stopped1 (profile deleted): profile_present", r["profile_present"].clone(), json!(false));
        c.eq("stopped1 (profile deleted): slot_present", r["slot_present"].clone(), json!(true));
        c.eq("stopped1 (profile deleted): intent", r["intent"].clone(), Value::Null);
        c.eq("down1: wanted_up after s6-svc -u", rows["down1"]["wanted_up"].clone(), json!(true));
        c.eq("up1: wanted_up after s6-svc -d", rows["up1"]["wanted_up"].clone(), json!(false));
    }
    // The table form works too and names every profile.
    let table = w.run(&["status"]);
    c.eq("status exit", table.code, Some(0));
    for p in all {
        c.check(table.stdout.lines().any(|l| l.starts_with(p)), format!("status table has no row for {p}"));
    }
    c.check(untouched(&w) == before, "status changed the scandir, a slot, the ports file or the boot log");
    c.ok(starts(&w, "up1", 1).map_err(|e| format!("up1: stand-in starts: {e}")));
    c.finish();
}

/// The capacity guard (SPEC §6.6) under the daemon: a profile over the cap is reported as
/// skipped in `status`, and gets its slot once a re-list finds room.
#[test]
fn status_reports_capacity_skips_until_there_is_room() {
    root_only!();
    let w = World::new();
    for n in ["c1", "c2", "c3"] {
        w.profile(n).desired("running");
    }
    let d = Daemon::start(
        &w,
        &[
            ("HERMES_RECONCILER_MAX_PROFILES", "2"),
            ("HERMES_RECONCILER_RESYNC_SECS", "2"),
            ("HERMES_RECONCILER_REMOVE_GRACE_MS", SHORT_GRACE_MS),
        ],
    );
    converge(&w, &d, &[("c1", Want::Up), ("c2", Want::Up), ("c3", Want::Absent)]);
    let mut c = Checks::new();
    if let Some(rows) = c.ok(status_agrees(&w, &["c1", "c2", "c3", "default"])) {
        c.eq("c3: skipped", rows["c3"]["skipped"].clone(), json!("capacity"));
        c.eq("c3: slot_present", rows["c3"]["slot_present"].clone(), json!(false));
        c.eq("c3: profile_present", rows["c3"]["profile_present"].clone(), json!(true));
        c.eq("c1: skipped", rows["c1"]["skipped"].clone(), Value::Null);
    }
    c.check(
        !d.log_lines_with(&["WARN", "c3", "HERMES_RECONCILER_MAX_PROFILES"]).is_empty(),
        "no capacity warning naming c3",
    );

    std::fs::remove_dir_all(w.profile_dir("c1")).unwrap();
    converge(&w, &d, &[("c1", Want::Absent), ("c2", Want::Up), ("c3", Want::Up)]);
    // The skip is cleared at the end of the pass that started c3, after its control byte.
    c.ok(status_agrees_when(&w, &["c2", "c3", "default"], |rows| match &rows["c3"]["skipped"] {
        Value::Null => Ok(()),
        s => Err(format!("c3 has its slot and is still reported skipped: {s}")),
    }));
    c.ok(starts(&w, "c3", 1));
    match boot_lines_when(&w, |l| has_line(l, "c3", "started")) {
        Ok(lines) => {
            let c3: Vec<(String, Option<String>)> = lines
                .iter()
                .filter(|l| l.profile == "c3")
                .map(|l| (l.action.clone(), l.get("reason").map(str::to_owned)))
                .collect();
            c.eq(
                "c3: log lines (one skip while it lasts, then the start)",
                c3,
                vec![("skipped".into(), Some("capacity".into())), ("started".into(), None)],
            );
        }
        Err(e) => c.check(false, e),
    }
    c.finish();
}
