//! Intent (SPEC §5.2, §5.3, §6.1, §6.6) observed end to end: what `once` makes s6 do for each
//! combination of `desired_state` and `gateway_state`, with multiplexing on, and with the
//! capacity guard; and what it writes to `container-boot.log`.

use crate::kit::*;
use std::collections::BTreeMap;

const GATEWAY_STATES: [&str; 7] =
    ["running", "draining", "degraded", "starting", "startup_failed", "stopped", "absent"];

/// The effective intent of SPEC §5.2.
fn effective(desired: Option<&str>, gateway: Option<&str>) -> Option<String> {
    match (desired, gateway) {
        (Some(d), _) => Some(d.to_string()),
        (None, Some("draining" | "degraded")) => Some("running".into()),
        (None, Some(g)) => Some(g.to_string()),
        (None, None) => None,
    }
}

#[test]
fn intent_table_over_desired_and_gateway_state() {
    root_only!();
    let w = World::new();
    // name -> (desired, gateway); "absent" means the key is not in the file.
    let mut table: BTreeMap<String, (Option<&str>, Option<&str>)> = BTreeMap::new();
    for desired in ["running", "stopped", "absent"] {
        for gateway in GATEWAY_STATES {
            let name = format!("d-{desired}-g-{gateway}");
            let mut p = w.profile(&name);
            if desired != "absent" {
                p = p.desired(desired);
            }
            if gateway != "absent" {
                p = p.gateway(gateway);
            }
            if desired == "absent" && gateway == "absent" {
                p.state_raw(b"{}");
            }
            let d = (desired != "absent").then_some(desired);
            let g = (gateway != "absent").then_some(gateway);
            table.insert(name, (d, g));
        }
    }
    // No file at all; an intent that is not exactly `running`; extra keys are fine.
    w.profile("no-file");
    table.insert("no-file".into(), (None, None));
    w.profile("d-paused").desired("paused").gateway("running");
    table.insert("d-paused".into(), (Some("paused"), Some("running")));
    w.profile("d-capital").desired("Running");
    table.insert("d-capital".into(), (Some("Running"), None));
    w.profile("extra-keys").state_raw(br#"{"desired_state":"running","pid":12,"since":"x"}"#);
    table.insert("extra-keys".into(), (Some("running"), None));
    // Root: gateway_state draining and no desired_state: a gateway that was running.
    w.root_profile().gateway("draining");

    let out = w.once();
    let mut c = Checks::new();
    c.eq("warnings", out.warnings(), Vec::<&str>::new());

    let mut want = BTreeMap::new();
    want.insert("default".to_string(), Want::Up);
    for (name, (d, g)) in &table {
        let running = effective(*d, *g).as_deref() == Some("running");
        want.insert(name.clone(), if running { Want::Up } else { Want::Down });
    }
    c.eq("slots", gateway_slots(&w.scandir), slot_set(want.keys()));
    c.ok(wait_slots(&w.scandir, &want));

    // Stand-ins ran exactly for the running ones.
    for (name, wnt) in &want {
        let n = w.standin_records(name).len();
        c.check((*wnt == Want::Up) == (n >= 1), format!("{name}: {n} stand-in start(s), want {wnt:?}"));
    }

    // One boot-log line per profile, one timestamp, root first then names in order.
    match w.boot_lines() {
        Err(e) => c.check(false, e),
        Ok(lines) => {
            let order: Vec<&str> = lines.iter().map(|l| l.profile.as_str()).collect();
            let mut expected: Vec<&str> = vec!["default"];
            expected.extend(table.keys().map(String::as_str));
            c.eq("boot-log profile order", order, expected);
            let stamps: std::collections::BTreeSet<&str> = lines.iter().map(|l| l.time.as_str()).collect();
            c.eq("distinct boot-log timestamps", stamps.len(), 1);
            for l in &lines {
                let (prior, action) = if l.profile == "default" {
                    (Some("running".to_string()), "started")
                } else if let Some((d, g)) = table.get(&l.profile) {
                    let e = effective(*d, *g);
                    let a = if e.as_deref() == Some("running") { "started" } else { "registered" };
                    (e, a)
                } else {
                    c.check(false, format!("unexpected boot-log line {l:?}"));
                    continue;
                };
                c.eq(&format!("{} action", l.profile), l.action.as_str(), action);
                c.eq(
                    &format!("{} prior_state", l.profile),
                    l.prior_state.clone(),
                    prior.unwrap_or_else(|| "None".into()),
                );
                c.eq(&format!("{} prior_exit", l.profile), l.prior_exit.as_str(), "unknown");
            }
        }
    }
    c.finish();
}

#[test]
fn prior_exit_comes_from_the_lifecycle_phase() {
    root_only!();
    let w = World::new();
    w.root_profile().desired("running").lifecycle("exited");
    w.profile("crashed").desired("running").lifecycle("running");
    w.profile("odd-phase").desired("stopped").lifecycle("starting");
    w.profile("garbage").desired("stopped").state_raw(br#"{"desired_state":"stopped"}"#);
    std::fs::create_dir_all(w.home.join("profiles/garbage/state")).unwrap();
    std::fs::write(w.home.join("profiles/garbage/state/gateway.lifecycle.json"), b"{not json").unwrap();
    w.profile("none").desired("stopped");
    w.once();
    let mut c = Checks::new();
    let want = [
        ("default", "clean"),
        ("crashed", "unclean"),
        ("garbage", "unknown"),
        ("none", "unknown"),
        ("odd-phase", "unknown"),
    ];
    match w.boot_lines() {
        Err(e) => c.check(false, e),
        Ok(lines) => {
            let got: Vec<(String, String)> =
                lines.iter().map(|l| (l.profile.clone(), l.prior_exit.clone())).collect();
            let want: Vec<(String, String)> =
                want.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
            c.eq("profile and prior_exit per line", got, want);
        }
    }
    c.ok(wait_slots(
        &w.scandir,
        &wants(&[
            ("default", Want::Up),
            ("crashed", Want::Up),
            ("garbage", Want::Down),
            ("none", Want::Down),
            ("odd-phase", Want::Down),
        ]),
    ));
    c.finish();
}

#[test]
fn multiplexing_registers_named_profiles_down_and_leaves_root_alone() {
    root_only!();
    let mut w = World::new();
    w.set_env("GATEWAY_MULTIPLEX_PROFILES", "1");
    w.root_profile().desired("running");
    w.profile("alpha").desired("running");
    w.profile("beta").gateway("running");
    w.profile("gamma").desired("stopped");
    w.once();
    let mut c = Checks::new();
    let want =
        wants(&[("default", Want::Up), ("alpha", Want::Down), ("beta", Want::Down), ("gamma", Want::Down)]);
    c.eq("slots", gateway_slots(&w.scandir), slot_set(want.keys()));
    c.ok(wait_slots(&w.scandir, &want));
    c.ok(poll(WAIT, || {
        if w.standin_records("default").len() == 1 {
            Ok(())
        } else {
            Err("root stand-in did not start exactly once".into())
        }
    }));
    for n in ["alpha", "beta", "gamma"] {
        c.eq(&format!("{n} stand-in starts"), w.standin_records(n).len(), 0);
    }
    c.boot_lines_are(
        &w,
        &[
            ("default", "running", "started"),
            ("alpha", "running", "registered"),
            ("beta", "running", "registered"),
            ("gamma", "stopped", "registered"),
        ],
    );
    c.finish();
}

#[test]
fn capacity_cap_keeps_the_first_names_and_skips_the_rest() {
    root_only!();
    let mut w = World::new();
    w.set_env("HERMES_RECONCILER_MAX_PROFILES", "3");
    w.root_profile().desired("running");
    // Created out of order on purpose: the cap follows name order, not creation order.
    for n in ["echo", "alpha", "delta", "bravo", "charlie"] {
        w.profile(n).desired("running");
    }
    let out = w.run(&["once", "--json"]);
    out.assert_code(0);
    let mut c = Checks::new();
    let want =
        wants(&[("default", Want::Up), ("alpha", Want::Up), ("bravo", Want::Up), ("charlie", Want::Up)]);
    c.eq("slots", gateway_slots(&w.scandir), slot_set(want.keys()));
    c.ok(wait_slots(&w.scandir, &want));
    for n in ["delta", "echo"] {
        c.eq(&format!("{n} stand-in starts"), w.standin_records(n).len(), 0);
    }

    let j = out.json();
    c.eq("dry_run", j["dry_run"].as_bool(), Some(false));
    c.eq("mode", j["mode"].as_str(), Some("normal"));
    let decisions = j["decisions"].as_array().cloned().unwrap_or_default();
    let get = |p: &str| decisions.iter().find(|d| d["profile"] == p).cloned();
    for n in ["default", "alpha", "bravo", "charlie"] {
        match get(n) {
            Some(d) => {
                c.eq(&format!("{n} action"), d["action"].as_str(), Some("started"));
                c.eq(&format!("{n} slot"), d["slot"].as_str().map(String::from), Some(slot_name(n)));
            }
            None => c.check(false, format!("no JSON decision for {n}: {}", out.stdout)),
        }
    }
    for n in ["delta", "echo"] {
        match get(n) {
            Some(d) => {
                c.eq(&format!("{n} action"), d["action"].as_str(), Some("skipped"));
                c.eq(&format!("{n} reason"), d["reason"].as_str(), Some("capacity"));
                c.check(d["slot"].is_null(), format!("{n}: skipped decision has a slot: {d}"));
            }
            None => c.check(false, format!("no JSON decision for {n}: {}", out.stdout)),
        }
    }
    match w.boot_lines() {
        Err(e) => c.check(false, e),
        Ok(lines) => {
            let skipped: Vec<(String, Option<String>)> = lines
                .iter()
                .filter(|l| l.action == "skipped")
                .map(|l| (l.profile.clone(), l.get("reason").map(String::from)))
                .collect();
            c.eq(
                "skipped boot-log lines",
                skipped,
                vec![
                    ("delta".to_string(), Some("capacity".to_string())),
                    ("echo".to_string(), Some("capacity".to_string())),
                ],
            );
        }
    }
    c.finish();
}
