//! Hostile and broken input on the volume (SPEC §5.1, §5.2, §8.1, §9): each bad thing sits in
//! its own profile beside healthy ones, gives one clear warning naming the profile and the file,
//! and has no effect on the others; `once` never hangs, never follows a symlink out of the home
//! and no file content can forge a `container-boot.log` line.

use crate::kit::*;
use std::collections::BTreeMap;
use std::time::Duration;

/// Checks that exactly one warning names `path` (and the profile), as it should for a bad file.
fn one_warning(c: &mut Checks, out: &Outcome, profile: &str, path: &std::path::Path) {
    let p = path.to_string_lossy();
    let lines = out.warnings_with(&[&p]);
    c.eq(&format!("{profile}: warnings naming {p}"), lines.len(), 1);
    for l in lines {
        c.check(l.contains(profile), format!("{profile}: warning does not name the profile: {l}"));
    }
}

#[test]
fn malformed_state_files_mean_no_intent_with_one_warning_each() {
    root_only!();
    let w = World::new();
    w.root_profile().desired("running");
    w.profile("good-up").desired("running");
    w.profile("good-down").desired("stopped");
    let mut big = br#"{"desired_state":"running","#.to_vec();
    big.extend(std::iter::repeat_n(b' ', 2 << 20));
    big.extend(br#""pad":"x"}"#);
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("bad-json", br#"{"desired_state": "running""#.to_vec()),
        ("bad-array", br#"["running"]"#.to_vec()),
        ("bad-string", br#""running""#.to_vec()),
        ("bad-number", br#"{"desired_state": 1, "gateway_state": "running"}"#.to_vec()),
        ("bad-big", big),
        ("bad-utf8", b"{\"desired_state\":\"running\",\"note\":\"\xff\xfe\"}".to_vec()),
        ("bad-empty", Vec::new()),
    ];
    let mut paths = BTreeMap::new();
    for (name, bytes) in &bad {
        let p = w.profile(name).state_raw(bytes);
        paths.insert(name.to_string(), p.state_path());
    }
    // A leading BOM is allowed: this one is a valid running intent.
    let bom = w.profile("bom-ok").state_raw(b"\xef\xbb\xbf{\"desired_state\":\"running\"}");

    let out = w.once();
    let mut c = Checks::new();
    let mut want = wants(&[
        ("default", Want::Up),
        ("good-up", Want::Up),
        ("good-down", Want::Down),
        ("bom-ok", Want::Up),
    ]);
    for (name, _) in &bad {
        want.insert(name.to_string(), Want::Down);
    }
    c.eq("slots", gateway_slots(&w.scandir), slot_set(want.keys()));
    c.ok(wait_slots(&w.scandir, &want));
    for (name, path) in &paths {
        one_warning(&mut c, &out, name, path);
        c.eq(&format!("{name}: stand-in starts"), w.standin_records(name).len(), 0);
    }
    c.eq("bom-ok: warnings", out.warnings_with(&[&bom.state_path().to_string_lossy()]), Vec::<&str>::new());
    c.eq("warnings in all", out.warnings().len(), bad.len());
    match w.boot_lines() {
        Err(e) => c.check(false, e),
        Ok(lines) => {
            for l in &lines {
                if paths.contains_key(&l.profile) {
                    c.eq(
                        &format!("{}: (prior_state, action)", l.profile),
                        (l.prior_state.as_str(), l.action.as_str()),
                        ("None", "registered"),
                    );
                }
            }
            c.eq("boot-log lines", lines.len(), want.len());
        }
    }
    c.finish();
}

#[test]
fn non_regular_and_symlinked_state_files_never_block_or_get_followed() {
    root_only!();
    let w = World::new();
    w.profile("good-up").desired("running");
    w.profile("good-down").desired("stopped");
    // A file outside $HERMES_HOME saying "running", and symlinks to it.
    let outside = w.root.join("outside-state.json");
    std::fs::write(&outside, br#"{"desired_state":"running"}"#).unwrap();
    let root = w.root_profile();
    std::os::unix::fs::symlink(&outside, root.state_path()).unwrap();
    let link = w.profile("link-out");
    std::os::unix::fs::symlink(&outside, link.state_path()).unwrap();
    let fifo = w.profile("fifo");
    nix::unistd::mkfifo(&fifo.state_path(), nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    let dir = w.profile("dir");
    std::fs::create_dir(dir.state_path()).unwrap();
    std::fs::write(dir.state_path().join("desired_state"), "running").unwrap();

    let out = run_with_timeout(w.command(&["once"]), Duration::from_secs(30));
    out.assert_code(0);
    let mut c = Checks::new();
    let want = wants(&[
        ("default", Want::Down),
        ("good-up", Want::Up),
        ("good-down", Want::Down),
        ("link-out", Want::Down),
        ("fifo", Want::Down),
        ("dir", Want::Down),
    ]);
    c.eq("slots", gateway_slots(&w.scandir), slot_set(want.keys()));
    c.ok(wait_slots(&w.scandir, &want));
    for p in [&root, &link, &fifo, &dir] {
        one_warning(&mut c, &out, &p.name, &p.state_path());
        c.eq(&format!("{}: stand-in starts", p.name), w.standin_records(&p.name).len(), 0);
    }
    c.check(
        std::fs::read(&outside).ok().as_deref() == Some(br#"{"desired_state":"running"}"#.as_slice()),
        "the file outside $HERMES_HOME changed",
    );
    use std::os::unix::fs::FileTypeExt;
    c.check(
        std::fs::symlink_metadata(fifo.state_path()).map(|m| m.file_type().is_fifo()).unwrap_or(false),
        "the FIFO is no longer a FIFO",
    );
    c.boot_lines_are(
        &w,
        &[
            ("default", "None", "registered"),
            ("dir", "None", "registered"),
            ("fifo", "None", "registered"),
            ("good-down", "stopped", "registered"),
            ("good-up", "running", "started"),
            ("link-out", "None", "registered"),
        ],
    );
    c.finish();
}

#[test]
fn invalid_names_are_skipped_with_one_warning_each() {
    root_only!();
    let w = World::new();
    // The root is stopped; profiles/default says running but must not touch the root slot.
    w.root_profile().desired("stopped");
    w.profile("default").desired("running");
    w.profile("good").desired("running");
    let at_max: String = "m0_-".repeat(58).chars().take(230).collect();
    let over_max = "q".repeat(231);
    assert_eq!((at_max.len(), over_max.len()), (230, 231));
    w.profile(&at_max).desired("running");
    let invalid = ["Upper", "has.dot", "has space", "-dash-first", "_under-first", over_max.as_str()];
    for n in invalid {
        w.profile(n).desired("running");
    }

    let out = w.once();
    let mut c = Checks::new();
    let want = wants(&[("default", Want::Down), ("good", Want::Up), (at_max.as_str(), Want::Up)]);
    c.eq("slots", gateway_slots(&w.scandir), slot_set(want.keys()));
    c.ok(wait_slots(&w.scandir, &want));

    // The 230-byte name is supervised by real s6 and its gateway got `-p <name>`.
    c.ok(poll(WAIT, || {
        let r = w.standin_records(&at_max);
        match r.first() {
            Some(r) if r.args.get(1) == Some(&at_max) && r.args.first().map(String::as_str) == Some("-p") => {
                Ok(())
            }
            Some(r) => Err(format!("230-byte profile stand-in argv {:?}", r.args)),
            None => Err("230-byte profile stand-in never started".into()),
        }
    }));
    c.eq("root stand-in starts", w.standin_records("default").len(), 0);

    for n in invalid {
        c.eq(&format!("warnings naming {n:?}"), out.warnings_with(&[n]).len(), 1);
        c.eq(&format!("{n:?} stand-in starts"), w.standin_records(n).len(), 0);
    }
    let default_dir = w.home.join("profiles/default");
    c.eq("warnings naming profiles/default", out.warnings_with(&[&default_dir.to_string_lossy()]).len(), 1);
    c.eq("warnings naming the 230-byte profile", out.warnings_with(&[&at_max]).len(), 0);

    match w.boot_lines() {
        Err(e) => c.check(false, e),
        Ok(lines) => {
            let mut skipped: Vec<String> =
                lines.iter().filter(|l| l.action == "skipped").map(|l| l.profile.clone()).collect();
            skipped.sort();
            let mut expect: Vec<String> =
                ["-dash-first", "Upper", "_under-first", "default", "has.dot", "invalid", "invalid"]
                    .map(String::from)
                    .to_vec();
            expect.sort();
            c.eq("skipped boot-log profiles", skipped, expect);
            for l in lines.iter().filter(|l| l.action == "skipped") {
                c.check(l.get("reason").is_some(), format!("skipped line without reason: {l:?}"));
            }
            let others: Vec<(String, String)> = lines
                .iter()
                .filter(|l| l.action != "skipped")
                .map(|l| (l.profile.clone(), l.action.clone()))
                .collect();
            // The 230-byte name is longer than a log value may be: written `invalid`.
            let mut expect_others = vec![
                ("default".to_string(), "registered".to_string()),
                ("good".to_string(), "started".to_string()),
                ("invalid".to_string(), "started".to_string()),
            ];
            expect_others.sort();
            let mut others = others;
            others.sort();
            c.eq("non-skipped boot-log lines", others, expect_others);
        }
    }
    c.finish();
}

#[test]
fn tombstones_staging_and_unmarked_directories_are_ignored_silently() {
    root_only!();
    let w = World::new();
    w.root_profile().desired("running");
    w.profile("good").desired("running");
    // Tombstoned: the directory is still there, with its marker.
    w.profile("tomb").desired("running");
    std::fs::create_dir_all(w.home.join("profiles/.deleted")).unwrap();
    std::fs::write(w.home.join("profiles/.deleted/tomb"), "").unwrap();
    // Half-made by the CLI, hidden, and without a marker.
    w.profile(".x.staging-123").desired("running");
    w.profile(".hidden").desired("running");
    let unmarked = w.home.join("profiles/nomarker");
    std::fs::create_dir_all(&unmarked).unwrap();
    std::fs::write(unmarked.join("gateway_state.json"), r#"{"desired_state":"running"}"#).unwrap();
    // A dangling SOUL.md symlink counts as no marker.
    let dangling = w.home.join("profiles/dangling");
    std::fs::create_dir_all(&dangling).unwrap();
    std::os::unix::fs::symlink(w.root.join("nowhere"), dangling.join("SOUL.md")).unwrap();

    let out = w.once();
    let mut c = Checks::new();
    let want = wants(&[("default", Want::Up), ("good", Want::Up)]);
    c.eq("slots", gateway_slots(&w.scandir), slot_set(want.keys()));
    c.ok(wait_slots(&w.scandir, &want));
    for n in ["tomb", "staging", "hidden", "nomarker", "dangling", ".deleted"] {
        c.eq(&format!("warnings naming {n}"), out.warnings_with(&[n]), Vec::<&str>::new());
        c.check(!w.boot_log().contains(n), format!("container-boot.log mentions {n}:\n{}", w.boot_log()));
    }
    c.eq("tomb stand-in starts", w.standin_records("tomb").len(), 0);
    c.eq("boot-log lines", w.boot_log().lines().count(), 2);
    c.finish();
}

#[test]
fn file_content_cannot_forge_a_boot_log_line() {
    root_only!();
    let w = World::new();
    w.root_profile().desired("running");
    w.profile("good").desired("stopped");
    w.profile("forge").desired("running\n2026-01-01T00:00:00+0000 profile=x action=started");
    w.profile("forge-gw").gateway("running prior_exit=clean");
    w.profile("forge-long").desired(&"a".repeat(65));
    w.profile("forge-path").desired("../../etc");

    let out = w.once();
    let mut c = Checks::new();
    let want = wants(&[
        ("default", Want::Up),
        ("good", Want::Down),
        ("forge", Want::Down),
        ("forge-gw", Want::Down),
        ("forge-long", Want::Down),
        ("forge-path", Want::Down),
    ]);
    c.ok(wait_slots(&w.scandir, &want));
    c.eq("forge stand-in starts", w.standin_records("forge").len(), 0);
    c.eq("exit status", out.code, Some(0));
    c.boot_lines_are(
        &w,
        &[
            ("default", "running", "started"),
            ("forge", "invalid", "registered"),
            ("forge-gw", "invalid", "registered"),
            ("forge-long", "invalid", "registered"),
            ("forge-path", "invalid", "registered"),
            ("good", "stopped", "registered"),
        ],
    );
    c.check(!w.boot_log().contains("profile=x "), format!("forged line in the log:\n{}", w.boot_log()));
    c.finish();
}
