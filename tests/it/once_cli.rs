//! The command line of `once`: `--dry-run` changes nothing (a digest of paths, types, modes,
//! owners and contents of the home and the scandir is equal before and after) and its `--json`
//! lists the actions it would take; configuration and usage errors have their exit statuses.

use crate::kit::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

type Digest = (BTreeMap<PathBuf, Node>, BTreeMap<PathBuf, Node>);

fn digest(w: &World) -> Digest {
    (tree_digest(&w.home), tree_digest(&w.scandir))
}

fn same_digest(c: &mut Checks, what: &str, before: &Digest, after: &Digest) {
    let mut diff = digest_diff(&before.0, &after.0);
    diff.extend(digest_diff(&before.1, &after.1));
    c.check(diff.is_empty(), format!("{what} changed the disk: {diff:?}"));
}

/// (profile, slot, action, reason) of each JSON decision.
fn decisions(j: &Value) -> BTreeMap<String, (Option<String>, String, Option<String>)> {
    j["decisions"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| {
                    let s = |k: &str| d[k].as_str().map(String::from);
                    (
                        s("profile").unwrap_or_default(),
                        (s("slot"), s("action").unwrap_or_default(), s("reason")),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn dry_run_on_a_fresh_home_changes_nothing_and_lists_actions() {
    root_only!();
    let w = World::new();
    let root = w.root_profile().desired("running").pid_files().lifecycle("exited");
    w.profile("alpha").desired("running").pid_files();
    w.profile("beta").desired("stopped");
    let fifo = w.profile("fifo");
    nix::unistd::mkfifo(&fifo.state_path(), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    w.profile("Upper").desired("running");
    let before = digest(&w);

    let out = w.run(&["once", "--dry-run", "--json"]);
    out.assert_code(0);
    let mut c = Checks::new();
    same_digest(&mut c, "once --dry-run --json", &before, &digest(&w));
    let j = out.json();
    c.eq("dry_run", j["dry_run"].as_bool(), Some(true));
    c.eq("mode", j["mode"].as_str(), Some("normal"));
    c.eq("errors", j["errors"].as_array().map(Vec::len), Some(0));
    let warnings: Vec<String> =
        j["warnings"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(String::from)).collect();
    let fifo_path = fifo.state_path().to_string_lossy().into_owned();
    c.check(
        warnings.iter().any(|x| x.contains(&fifo_path)),
        format!("no JSON warning names {fifo_path}: {warnings:?}"),
    );
    c.check(
        warnings.iter().any(|x| x.contains("Upper")),
        format!("no JSON warning names Upper: {warnings:?}"),
    );

    let d = decisions(&j);
    let s = |x: &str| Some(x.to_string());
    let mut want = BTreeMap::new();
    want.insert("default".to_string(), (s("gateway-default"), "started".to_string(), None));
    want.insert("alpha".to_string(), (s("gateway-alpha"), "started".to_string(), None));
    want.insert("beta".to_string(), (s("gateway-beta"), "registered".to_string(), None));
    want.insert("fifo".to_string(), (s("gateway-fifo"), "registered".to_string(), None));
    let upper = d.get("Upper").cloned();
    let mut d_no_upper = d.clone();
    d_no_upper.remove("Upper");
    c.eq("JSON decisions (profile -> slot, action, reason)", d_no_upper, want);
    match upper {
        Some((slot, action, reason)) => {
            c.eq("Upper slot", slot, None);
            c.eq("Upper action", action.as_str(), "skipped");
            c.check(reason.is_some(), "Upper: skipped without a reason");
        }
        None => c.check(false, format!("no JSON decision for Upper: {}", out.stdout)),
    }
    c.eq("root pid files still there", root.has_pid_files(), (true, true));
    c.eq("stand-in starts", std::fs::read_dir(w.home.join(".standin")).map(|r| r.count()).ok(), Some(0));

    // The human form changes nothing either, and says something.
    let out = w.run(&["once", "--dry-run"]);
    out.assert_code(0);
    same_digest(&mut c, "once --dry-run", &before, &digest(&w));
    c.check(!out.stdout.trim().is_empty(), "once --dry-run printed nothing");
    c.finish();
}

#[test]
fn dry_run_after_a_pass_changes_nothing_and_lists_intent_changes() {
    root_only!();
    let w = World::new();
    w.root_profile().desired("running");
    w.profile("alpha").desired("running");
    w.profile("beta").desired("stopped");
    let want = wants(&[("default", Want::Up), ("alpha", Want::Up), ("beta", Want::Down)]);
    w.once();
    wait_slots(&w.scandir, &want).unwrap();
    // Let every process settle: the stand-ins have recorded their start, the loggers opened
    // their log directories.
    wait_until("stand-ins and loggers settled", WAIT, || {
        w.standin_records("default").len() == 1
            && w.standin_records("alpha").len() == 1
            && ["default", "alpha", "beta"]
                .iter()
                .all(|p| w.home.join("logs/gateways").join(p).join("current").exists())
    });

    // The volume changes: alpha is stopped, beta wanted running, delta appears.
    w.profile("alpha").desired("stopped");
    w.profile("beta").desired("running");
    w.profile("delta").desired("running");
    let before = digest(&w);
    let out = w.run(&["once", "--dry-run", "--json"]);
    out.assert_code(0);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut c = Checks::new();
    same_digest(&mut c, "once --dry-run --json", &before, &digest(&w));
    let j = out.json();
    c.eq("dry_run", j["dry_run"].as_bool(), Some(true));
    let d = decisions(&j);
    let action = |p: &str| d.get(p).map(|(_, a, _)| a.clone());
    c.eq("alpha action", action("alpha"), Some("stopped".into()));
    c.eq("beta action", action("beta"), Some("started".into()));
    c.eq("delta action", action("delta"), Some("started".into()));
    c.eq("delta slot", d.get("delta").and_then(|(s, _, _)| s.clone()), Some("gateway-delta".into()));
    c.ok(wait_slots(&w.scandir, &want));
    c.eq("slots", gateway_slots(&w.scandir), slot_set(["default", "alpha", "beta"]));
    c.finish();
}

#[test]
fn max_profiles_not_a_number_is_a_config_error_naming_the_variable() {
    root_only!();
    let mut w = World::new();
    w.root_profile().desired("running");
    w.profile("alpha").desired("running");
    w.set_env("HERMES_RECONCILER_MAX_PROFILES", "abc");
    let before = digest(&w);
    let out = w.run(&["once"]);
    let mut c = Checks::new();
    c.eq("exit status", out.code, Some(78));
    c.check(
        out.stderr.contains("HERMES_RECONCILER_MAX_PROFILES"),
        format!("stderr does not name the variable: {:?}", out.stderr),
    );
    same_digest(&mut c, "once with a bad configuration", &before, &digest(&w));
    c.finish();
}

#[test]
fn unknown_flag_is_a_usage_error() {
    root_only!();
    let w = World::new();
    w.root_profile().desired("running");
    let before = digest(&w);
    let out = w.run(&["once", "--no-such-flag"]);
    let mut c = Checks::new();
    c.eq("exit status", out.code, Some(64));
    c.check(!out.stderr.trim().is_empty(), "no message on stderr");
    same_digest(&mut c, "once with a usage error", &before, &digest(&w));
    c.finish();
}
