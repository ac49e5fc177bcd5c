//! A home with more than 30 profiles in mixed states: after one `once`, s6 itself shows exactly
//! the expected slots supervised, the running ones up and the others down with a `down` file,
//! and every started stand-in got the right arguments, environment and a distinct port.

use crate::kit::*;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};

/// (desired_state, gateway_state, runs?) cycled over the profiles.
const MIX: [(Option<&str>, Option<&str>, bool); 8] = [
    (Some("running"), None, true),
    (Some("stopped"), Some("running"), false),
    (None, Some("draining"), true),
    (None, Some("starting"), false),
    (None, None, false),
    (None, Some("stopped"), false),
    (None, Some("startup_failed"), false),
    (None, Some("degraded"), true),
];

#[test]
fn thirty_profiles_in_mixed_states_are_supervised_as_intended() {
    root_only!();
    let w = World::new();
    let mut want: BTreeMap<String, Want> = BTreeMap::new();
    // Profiles whose .env sets API_SERVER_PORT: the run script must not export one.
    let mut env_port: BTreeSet<String> = BTreeSet::new();

    w.root_profile().desired("running").dot_env("FOO=1\nAPI_SERVER_PORT=9999\n");
    want.insert("default".into(), Want::Up);
    env_port.insert("default".into());
    for i in 0..32 {
        let name = format!("p{i:02}-{}", ["ops", "dev", "qa", "x_y"][i % 4]);
        let (d, g, runs) = MIX[i % MIX.len()];
        let mut p = w.profile(&name);
        if let Some(d) = d {
            p = p.desired(d);
        }
        if let Some(g) = g {
            p = p.gateway(g);
        }
        if i == 0 || i == 9 {
            p.dot_env("export API_SERVER_PORT=9123\n");
            env_port.insert(name.clone());
        } else if i == 2 {
            // Mentions the variable but does not set it.
            p.dot_env("# API_SERVER_PORT is chosen by the reconciler\nOTHER=1\n");
        }
        want.insert(name, if runs { Want::Up } else { Want::Down });
    }
    assert!(want.len() > 30);

    w.once();
    let mut c = Checks::new();
    c.eq("slots", gateway_slots(&w.scandir), slot_set(want.keys()));
    c.ok(wait_slots(&w.scandir, &want));

    let running: Vec<&String> = want.iter().filter(|(_, w)| **w == Want::Up).map(|(n, _)| n).collect();
    c.ok(poll(WAIT, || {
        let missing: Vec<&&String> = running.iter().filter(|n| w.standin_records(n).is_empty()).collect();
        if missing.is_empty() { Ok(()) } else { Err(format!("stand-ins never started: {missing:?}")) }
    }));

    let home = w.home.to_string_lossy().into_owned();
    let mut ports: BTreeMap<u16, String> = BTreeMap::new();
    for (name, wnt) in &want {
        let slot = w.slot(name);
        let records = w.standin_records(name);

        // Slot contents (SPEC §7.1).
        c.eq(&format!("{name}: type"), read(&slot.join("type")), "longrun\n".to_string());
        for f in ["run", "finish", "log/run"] {
            let mode = std::fs::metadata(slot.join(f)).map(|m| m.permissions().mode()).unwrap_or(0);
            c.check(mode & 0o111 != 0, format!("{name}: {f} is not executable (mode {mode:o})"));
        }
        c.check(slot.join("data/reconciler.json").is_file(), format!("{name}: no data/reconciler.json"));
        let fifo = std::fs::symlink_metadata(slot.join("supervise/control")).map(|m| m.file_type().is_fifo());
        c.check(matches!(fifo, Ok(true)), format!("{name}: supervise/control is not a FIFO"));

        // The port: in range and distinct, or not exported at all when .env sets it.
        let run = read(&slot.join("run"));
        let script_port = port_in_run_script(&run);
        if env_port.contains(name) {
            c.check(
                !run.contains("API_SERVER_PORT="),
                format!("{name}: .env sets API_SERVER_PORT but run exports one:\n{run}"),
            );
        } else {
            match script_port {
                Some(p) if (9200..9800).contains(&p) => {
                    if let Some(other) = ports.insert(p, name.clone()) {
                        c.check(false, format!("port {p} given to both {other} and {name}"));
                    }
                }
                other => {
                    c.check(false, format!("{name}: run script port {other:?} not in [9200,9800):\n{run}"))
                }
            }
        }

        match wnt {
            Want::Up => {
                c.eq(&format!("{name}: stand-in starts"), records.len(), 1);
                let Some(r) = records.first() else { continue };
                let mut args: Vec<String> = Vec::new();
                if name != "default" {
                    args.extend(["-p".to_string(), name.clone()]);
                }
                args.extend(["gateway", "run", "--replace"].map(String::from));
                c.eq(&format!("{name}: argv"), r.args.clone(), args);
                c.eq(&format!("{name}: HOME"), r.home.as_str(), home.as_str());
                c.eq(&format!("{name}: cwd"), r.pwd.as_str(), home.as_str());
                c.eq(&format!("{name}: HERMES_S6_SUPERVISED_CHILD"), r.supervised.as_str(), "1");
                c.eq(&format!("{name}: HERMES_SUPERVISED_CHILD"), r.supervised2.as_str(), "1");
                c.eq(&format!("{name}: uid (HERMES_RUN_AS empty: no drop)"), r.uid.as_str(), "0");
                if env_port.contains(name) {
                    c.eq(&format!("{name}: API_SERVER_PORT seen"), r.port.as_str(), "<unset>");
                } else {
                    c.eq(
                        &format!("{name}: API_SERVER_PORT seen"),
                        r.port.clone(),
                        script_port.map(|p| p.to_string()).unwrap_or_default(),
                    );
                }
                let pid = svstat(&slot).ok().and_then(|s| s.pid).map(|p| p.to_string());
                c.eq(&format!("{name}: supervise/status pid is the stand-in"), pid, Some(r.pid.clone()));
            }
            _ => c.eq(&format!("{name}: stand-in starts"), records.len(), 0),
        }
    }
    c.eq("distinct ports", ports.len(), want.len() - env_port.len());

    // Boot log: one line per profile, one timestamp, root first then names in order.
    match w.boot_lines() {
        Err(e) => c.check(false, e),
        Ok(lines) => {
            let got: Vec<(String, String)> =
                lines.iter().map(|l| (l.profile.clone(), l.action.clone())).collect();
            let mut expect = vec![("default".to_string(), "started".to_string())];
            expect.extend(want.iter().filter(|(n, _)| *n != "default").map(|(n, w)| {
                (n.clone(), if *w == Want::Up { "started" } else { "registered" }.to_string())
            }));
            c.eq("boot-log (profile, action)", got, expect);
            let stamps: BTreeSet<&str> = lines.iter().map(|l| l.time.as_str()).collect();
            c.eq("distinct boot-log timestamps", stamps.len(), 1);
        }
    }
    c.finish();
}

/// A home of 300 profiles (more than one of `once`'s batches of 256), 20 of them over the
/// capacity cap, one with its own port in the second batch: the streamed boot pass publishes the
/// same slots (scripts, ports) and the same port record as the whole pass (`--json` decides
/// whole), and its boot log is one pass: one line per profile, root first, then names in order,
/// all with one timestamp.
#[test]
fn hundreds_of_profiles_stream_in_batches_as_one_pass() {
    root_only!();
    let make = || {
        let mut w = World::without_svscan();
        w.set_env("HERMES_RECONCILER_MAX_PROFILES", "280");
        w.root_profile().desired("running");
        for i in 0..300 {
            let p = w.profile(&format!("p{i:03}")).desired(if i % 2 == 0 { "running" } else { "stopped" });
            if i == 270 {
                p.dot_env("API_SERVER_PORT=9999\n");
            }
        }
        w
    };
    let streamed = make();
    let out = streamed.once();
    let whole = make();
    whole.run(&["once", "--json"]).assert_code(0);

    let mut c = Checks::new();
    let slots = gateway_slots(&streamed.scandir);
    c.eq("slots (root + 280 admitted)", slots.len(), 281);
    c.eq("the same slots as the whole pass", &slots, &gateway_slots(&whole.scandir));
    for name in std::iter::once("default".to_string()).chain((0..280).map(|i| format!("p{i:03}"))) {
        for f in ["run", "finish", "log/run", "type"] {
            let (a, b) = (read(&streamed.slot(&name).join(f)), read(&whole.slot(&name).join(f)));
            // Each world has its own directory (home, stand-in).
            let dir = |w: &World| w.home.parent().unwrap().to_string_lossy().into_owned();
            let (a, b) = (a.replace(&dir(&streamed), "WORLD"), b.replace(&dir(&whole), "WORLD"));
            c.eq(&format!("{name}/{f}"), a, b);
        }
        c.eq(
            &format!("{name}: down"),
            streamed.slot(&name).join("down").exists(),
            whole.slot(&name).join("down").exists(),
        );
    }
    c.eq(
        "port record",
        read(&streamed.home.join(".gateway-ports.json")),
        read(&whole.home.join(".gateway-ports.json")),
    );

    let log = read(&streamed.home.join("logs/container-boot.log"));
    let lines: Vec<BootLine> = log.lines().map(|l| parse_boot_line(l).unwrap()).collect();
    let want: Vec<String> =
        std::iter::once("default".to_string()).chain((0..300).map(|i| format!("p{i:03}"))).collect();
    c.eq(
        "boot log: one line per profile, in order",
        lines.iter().map(|l| l.profile.clone()).collect::<Vec<_>>(),
        want,
    );
    let times: BTreeSet<&str> = lines.iter().map(|l| l.time.as_str()).collect();
    c.eq("boot log: one timestamp", times.len(), 1);
    c.eq("skipped for capacity", lines.iter().filter(|l| l.get("reason") == Some("capacity")).count(), 20);
    c.eq("stdout: one line per profile", out.stdout.lines().count(), 301);
    c.finish();
}
