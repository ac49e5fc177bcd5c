//! Topologies on real s6 (SPEC §6.7, issue 13 item 1): the `single` boot table with a
//! standalone profile, the fold's edges under the daemon (first fold brings the root up, a
//! gateway rewriting `gateway_state` changes nothing, the last unfold stops it), the root
//! home's `config.yaml` selecting `multiplex` (missing, broken, symlink, huge, overridden by
//! the environment) and the two variables disagreeing.

use crate::kit::*;
use std::fs;

fn line_of<'a>(lines: &'a [BootLine], profile: &str) -> Option<&'a BootLine> {
    lines.iter().find(|l| l.profile == profile)
}

#[test]
fn single_boot_pass_folds_named_intents_into_the_root() {
    root_only!();
    let mut w = World::new();
    w.set_env("HERMES_GATEWAY_TOPOLOGY", "single");
    w.profile("a").desired("running");
    let b = w.profile("b").desired("running");
    fs::write(b.dir.join("config.yaml"), "gateway:\n  standalone: true\n").unwrap();
    w.profile("c").desired("stopped");
    w.once();
    let mut c = Checks::new();
    c.ok(wait_slots(
        &w.scandir,
        &wants(&[("default", Want::Up), ("a", Want::Down), ("b", Want::Up), ("c", Want::Down)]),
    ));
    let lines = w.boot_lines().unwrap_or_default();
    let folded = |p: &str| line_of(&lines, p).and_then(|l| l.get("folded_into_root")).map(str::to_owned);
    c.eq("root folded", folded("default").as_deref(), Some("true"));
    c.eq("root line", line_of(&lines, "default").map(|l| l.action.as_str()), Some("started"));
    c.eq("a folded", folded("a").as_deref(), Some("true"));
    c.eq(
        "a line",
        line_of(&lines, "a").map(|l| (l.action.as_str(), l.get("reason"))),
        Some(("registered", Some("folded"))),
    );
    c.eq("b (standalone) folded", folded("b").as_deref(), Some("false"));
    c.eq("c folded", folded("c").as_deref(), Some("false"));
    let status = w.run(&["status", "--json"]).json();
    c.eq("status topology", status["topology"].as_str(), Some("single"));
    c.eq("status folded", status["folded_into_root"].clone(), serde_json::json!(["a"]));
    let table = w.run(&["status"]).stdout;
    c.check(table.contains("topology: single; folded into the root: a"), table);
    c.finish();
}

#[test]
fn single_topology_edges_under_the_daemon() {
    root_only!();
    let mut w = World::new();
    w.set_env("HERMES_GATEWAY_TOPOLOGY", "single");
    let a = w.profile("a");
    w.profile("b");
    let d = Daemon::start(&w, &[]);
    converge(&w, &d, &[("default", Want::Down), ("a", Want::Down), ("b", Want::Down)]);
    // The first fold brings the root up; the named slot stays down.
    write_state(&a.dir, &serde_json::json!({ "desired_state": "running" }));
    converge(&w, &d, &[("default", Want::Up), ("a", Want::Down), ("b", Want::Down)]);
    // The gateway rewriting gateway_state (here: reporting itself stopped) changes nothing,
    // which a later change to another profile (b, not running) then shows.
    write_state(&a.dir, &serde_json::json!({ "desired_state": "running", "gateway_state": "stopped" }));
    write_state(&w.home, &serde_json::json!({ "gateway_state": "startup_failed" }));
    write_state(&w.profile_dir("b"), &serde_json::json!({ "desired_state": "stopped" }));
    let log_b =
        || w.boot_lines().unwrap_or_default().iter().any(|l| l.profile == "b" && l.action == "stopped");
    must(&d, "b's stop logged", poll(WAIT, || if log_b() { Ok(()) } else { Err("no line for b".into()) }));
    converge(&w, &d, &[("default", Want::Up), ("a", Want::Down), ("b", Want::Down)]);
    // The last unfold stops the root.
    write_state(&a.dir, &serde_json::json!({ "desired_state": "stopped" }));
    converge(&w, &d, &[("default", Want::Down), ("a", Want::Down), ("b", Want::Down)]);
    // The boot-log line follows the control byte (written first, for latency): s6 may report
    // the root down an instant before it is there.
    let root_stopped =
        || w.boot_lines().unwrap_or_default().iter().any(|l| l.profile == "default" && l.action == "stopped");
    must(
        &d,
        "the root's stop logged",
        poll(WAIT, || if root_stopped() { Ok(()) } else { Err("no stop line for the root".into()) }),
    );
    let mut c = Checks::new();
    let lines = w.boot_lines().unwrap_or_default();
    let root: Vec<(String, Option<String>)> = lines
        .iter()
        .filter(|l| l.profile == "default")
        .map(|l| (l.action.clone(), l.get("folded_into_root").map(str::to_owned)))
        .collect();
    c.eq(
        "root lines",
        root,
        vec![
            ("registered".into(), Some("false".into())),
            ("started".into(), Some("true".into())),
            ("stopped".into(), Some("false".into())),
        ],
    );
    c.finish();
}

/// (what, config.yaml content or `@link`, an environment variable, named slot up, warned)
type YamlCase<'a> = (&'a str, Option<&'a str>, Option<(&'a str, &'a str)>, bool, bool);

#[test]
fn root_config_yaml_selects_multiplex_when_no_variable_does() {
    root_only!();
    let big = format!("multiplex_profiles: true\n#{}\n", "x".repeat(300 * 1024));
    // (config.yaml content or a symlink to a file saying true, env, named slot up?)
    let cases: Vec<YamlCase> = vec![
        ("missing", None, None, true, false),
        ("top level", Some("multiplex_profiles: true\n"), None, false, false),
        ("under gateway", Some("gateway:\n  multiplex_profiles: yes\n"), None, false, false),
        ("false", Some("multiplex_profiles: false\n"), None, true, false),
        ("broken", Some("multiplex_profiles: [true\n"), None, true, true),
        ("huge", Some(big.as_str()), None, true, true),
        ("symlink", Some("@link"), None, true, true),
        (
            "env per-profile",
            Some("multiplex_profiles: true\n"),
            Some(("HERMES_GATEWAY_TOPOLOGY", "per-profile")),
            true,
            false,
        ),
        (
            "env mux off",
            Some("multiplex_profiles: true\n"),
            Some(("GATEWAY_MULTIPLEX_PROFILES", "0")),
            true,
            false,
        ),
    ];
    let mut c = Checks::new();
    for (what, yaml, env, named_up, warned) in cases {
        let mut w = World::new();
        if let Some((k, v)) = env {
            w.set_env(k, v);
        }
        match yaml {
            Some("@link") => {
                let target = w.root.join("elsewhere.yaml");
                fs::write(&target, "multiplex_profiles: true\n").unwrap();
                std::os::unix::fs::symlink(&target, w.home.join("config.yaml")).unwrap();
            }
            Some(y) => fs::write(w.home.join("config.yaml"), y).unwrap(),
            None => {}
        }
        w.profile("bot").desired("running");
        let out = w.once();
        let want = if named_up { Want::Up } else { Want::Down };
        if let Err(e) = wait_slots(&w.scandir, &wants(&[("default", Want::Down), ("bot", want)])) {
            c.check(false, format!("{what}: {e}"));
        }
        c.eq(&format!("{what}: warning"), !out.warnings_with(&["config.yaml"]).is_empty(), warned);
    }
    c.finish();
}

#[test]
fn disagreeing_topology_variables_are_a_configuration_error() {
    root_only!();
    let mut w = World::new();
    w.set_env("HERMES_GATEWAY_TOPOLOGY", "single").set_env("GATEWAY_MULTIPLEX_PROFILES", "yes");
    let out = w.run(&["once"]);
    out.assert_code(78);
    assert!(out.stderr.contains("HERMES_GATEWAY_TOPOLOGY"), "{}", out.stderr);
    assert!(gateway_slots(&w.scandir).is_empty());
}
