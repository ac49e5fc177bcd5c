//! The container's main command (SPEC §5.4), seen the way the daemon sees it: `once` runs in
//! its own pid namespace next to a process whose argv carries `.../main-wrapper.sh <command>`,
//! as s6-overlay's CMD would be, so `/proc` shows that process and nothing of the host's.

use crate::kit::*;
use std::fs;
use std::process::Command;

/// Runs `hermes-reconciler <args>` in a fresh pid namespace beside a stand-in for the
/// container's main process, started as `main-wrapper.sh <main>`.
fn once_in_container(w: &World, main: &str, args: &[&str]) -> Outcome {
    let script = format!(
        "sh -c 'sleep 60; :' /opt/hermes/docker/main-wrapper.sh {main} & sleep 0.3; exec \"$0\" \"$@\""
    );
    in_container_with(w, &script, args)
}

#[test]
fn legacy_gateway_run_container_migrates_the_root_and_starts_it() {
    root_only!();
    let w = World::new();
    w.profile("named").desired("running");
    let out = once_in_container(&w, "hermes gateway run", &["once"]);
    out.assert_code(0);
    let mut c = Checks::new();
    c.ok(wait_slots(&w.scandir, &wants(&[("default", Want::Up), ("named", Want::Up)])));
    let record = fs::read_to_string(w.home.join("gateway_state.json")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&record).unwrap_or_default();
    c.eq("gateway_state", v["gateway_state"].as_str(), Some("running"));
    c.eq("desired_state", v["desired_state"].as_str(), Some("running"));
    c.eq("migrated_from", v["migrated_from"].as_str(), Some("legacy-container-cmd"));
    c.boot_lines_are(&w, &[("default", "running", "started"), ("named", "running", "started")]);
    c.finish();
}

#[test]
fn no_migration_with_no_supervise_or_an_existing_state_file() {
    root_only!();
    for (main, env, state) in [
        ("gateway run --no-supervise", None, None),
        ("gateway run", Some(("HERMES_GATEWAY_NO_SUPERVISE", "yes")), None),
        ("gateway run", None, Some(r#"{"gateway_state":"stopped"}"#)),
    ] {
        let mut w = World::new();
        if let Some((k, v)) = env {
            w.set_env(k, v);
        }
        if let Some(s) = state {
            fs::write(w.home.join("gateway_state.json"), s).unwrap();
        }
        let out = once_in_container(&w, main, &["once"]);
        out.assert_code(0);
        let mut c = Checks::new();
        c.ok(wait_slots(&w.scandir, &wants(&[("default", Want::Down)])));
        let now = fs::read_to_string(w.home.join("gateway_state.json")).ok();
        c.eq(&format!("{main} {env:?}: root state file"), now.as_deref(), state);
        c.finish();
    }
}

#[test]
fn dashboard_container_supervises_nothing_and_says_so() {
    root_only!();
    let w = World::new();
    w.root_profile().desired("running");
    w.profile("named").desired("running");
    let before = tree_digest(&w.home);
    let out = once_in_container(&w, "dashboard", &["once", "--json"]);
    out.assert_code(0);
    let json = out.json();
    let mut c = Checks::new();
    c.eq("mode", json["mode"].as_str(), Some("dashboard"));
    c.eq("slots", gateway_slots(&w.scandir), Default::default());
    // Issue 13 item 3 / SPEC §5.4: reported on stderr only; nothing under $HERMES_HOME
    // changes (no container-boot.log line: the gateway container sharing the volume would
    // otherwise log every dashboard boot).
    c.check(tree_digest(&w.home) == before, "nothing under HERMES_HOME changes");
    c.check(!w.home.join("logs/container-boot.log").exists(), w.boot_log());
    c.check(out.stderr.contains("dashboard container"), format!("stderr:\n{}", out.stderr));
    c.finish();
}

#[test]
fn dashboard_container_run_signals_readiness_and_idles_until_sigterm() {
    root_only!();
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;

    let w = World::new();
    w.root_profile().desired("running");
    let inner = w.command(&["run", "--notify-fd", "3"]);
    // Close-on-exec: only the dup2'ed fd 3 reaches the daemon.
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    // The stand-in main process must not hold the readiness pipe (3>&-), or EOF never comes.
    let script = "sh -c 'sleep 60; :' /opt/hermes/docker/main-wrapper.sh dashboard 3>&- & \
                  sleep 0.3; exec \"$0\" \"$@\"";
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--kill-child", "--mount", "--mount-proc", "sh", "-c", script])
        .arg(BIN)
        .args(["run", "--notify-fd", "3"])
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (k, v) in inner.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    let fd = write_end.as_raw_fd();
    // SAFETY: dup2 and fcntl are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if nix::libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn unshare");
    drop(write_end);
    // unshare itself keeps fd 3 open while it waits for its child, so no EOF comes through it:
    // read the first byte, which the daemon writes once its (idle) start is complete.
    let mut ready = vec![0u8; 1];
    let mut pipe = std::fs::File::from(read_end);
    let mut fds = [nix::poll::PollFd::new(std::os::fd::AsFd::as_fd(&pipe), nix::poll::PollFlags::POLLIN)];
    let n = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(20_000u16)).unwrap();
    if n == 0 {
        let _ = child.kill();
        panic!("no readiness within 20 s");
    }
    pipe.read_exact(&mut ready).unwrap();
    let mut c = Checks::new();
    c.eq("readiness bytes", ready, b"\n".to_vec());
    c.eq("slots", gateway_slots(&w.scandir), Default::default());
    c.check(child.try_wait().unwrap().is_none(), "the daemon did not stay up");
    // The daemon is the namespace's init (sh exec'd it): SIGTERM it and expect exit 0.
    let init = std::fs::read_to_string(format!("/proc/{}/task/{}/children", child.id(), child.id()))
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .and_then(|p| p.parse::<i32>().ok())
        .expect("the daemon under unshare");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(init), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = poll(WAIT, || child.try_wait().unwrap().ok_or_else(|| "still running".to_string()));
    c.eq("exit status", status.ok().and_then(|s| s.code()), Some(0));
    c.finish();
}

/// SPEC §9.2: temporary names are unpredictable. In its own pid namespace the daemon is pid 1,
/// so the old `.<name>.hermes-reconciler-<pid>` names were known in advance: directories
/// planted there blocked the port record and the legacy migration record on every pass.
#[test]
fn directories_at_predictable_temporary_names_do_not_block_the_home_records() {
    root_only!();
    let w = World::new();
    w.profile("named").desired("running");
    for name in [".gateway_state.json", "..gateway-ports.json"] {
        for pid in [1, 2, 3] {
            fs::create_dir(w.home.join(format!("{name}.hermes-reconciler-{pid}"))).unwrap();
        }
    }
    let out = once_in_container(&w, "gateway run", &["once"]);
    out.assert_code(0);
    let mut c = Checks::new();
    c.ok(wait_slots(&w.scandir, &wants(&[("default", Want::Up), ("named", Want::Up)])));
    let record = fs::read_to_string(w.home.join("gateway_state.json")).unwrap_or_default();
    c.check(record.contains("legacy-container-cmd"), format!("legacy record: {record:?}"));
    let ports = fs::read_to_string(w.home.join(".gateway-ports.json")).unwrap_or_default();
    c.check(ports.contains("\"named\""), format!("port record: {ports:?}; stderr: {}", out.stderr));
    c.finish();
}

/// Runs `script` with `sh` as pid 1 of a fresh pid namespace (a container of its own, with its
/// own `/proc`); the script gets the binary as `$0` and this world's environment.
fn in_container(w: &World, script: &str) -> Outcome {
    in_container_with(w, script, &[])
}

/// [`in_container`], the script also getting `args` as `$1…`.
fn in_container_with(w: &World, script: &str, args: &[&str]) -> Outcome {
    let inner = w.command(&[]);
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--kill-child", "--mount", "--mount-proc", "sh", "-c", script])
        .arg(BIN)
        .args(args)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in inner.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    run_with_timeout(cmd, ONCE_TIMEOUT)
}

/// The `mode` of each `once --json` report line of `out`.
fn modes(out: &Outcome) -> Vec<String> {
    out.stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["mode"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// SPEC §9.4: a process `hermes` starts, whatever its argv, never makes this a dashboard
/// container, even as the lowest pid with a main command.
#[test]
fn a_hermes_process_posing_as_the_dashboard_main_command_is_ignored() {
    root_only!();
    ensure_hermes_user();
    let w = World::new();
    w.root_profile().desired("running");
    let out = in_container(
        &w,
        "setpriv --reuid hermes --regid hermes --clear-groups \
             sh -c 'sleep 60; :' /opt/hermes/docker/main-wrapper.sh dashboard & \
         sleep 0.3; \"$0\" once --json",
    );
    out.assert_code(0);
    let mut c = Checks::new();
    c.eq("modes", modes(&out), vec!["normal".to_string()]);
    c.ok(wait_slots(&w.scandir, &wants(&[("default", Want::Up)])));

    // The daemon, started in another container with the same poser, does not idle: it creates
    // the root's slot (waited for at most 30 s, a hang bound), then stops on SIGTERM.
    let w = World::new();
    w.root_profile().desired("running");
    let slot = w.slot("default");
    let out = in_container(
        &w,
        &format!(
            "setpriv --reuid hermes --regid hermes --clear-groups \
                 sh -c 'sleep 60; :' /opt/hermes/docker/main-wrapper.sh dashboard & \
             sleep 0.3; \"$0\" run & d=$!; i=0; \
             while [ ! -e '{}' ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; \
             kill -TERM $d; wait $d",
            slot.display()
        ),
    );
    out.assert_code(0);
    c.check(slot.is_dir(), format!("the daemon idled: no {}; stderr:\n{}", slot.display(), out.stderr));
    c.check(!out.stderr.contains("dashboard container"), format!("stderr:\n{}", out.stderr));
    c.finish();
}

/// SPEC §9.4: the first judgment of a container boot is recorded in the runtime directory and
/// reused by later starts, even when the main process is gone and an agent's process poses as
/// another main command; a new container (another pid 1) judges again.
#[test]
fn the_first_judgment_of_a_boot_is_recorded_and_reused() {
    root_only!();
    ensure_hermes_user();
    let w = World::new();
    w.root_profile().desired("running");
    let out = in_container(
        &w,
        "sh -c 'sleep 60; :' /opt/hermes/docker/main-wrapper.sh dashboard & main=$!; \
         sleep 0.3; \"$0\" once --json; \
         kill $main; wait $main; \
         setpriv --reuid hermes --regid hermes --clear-groups \
             sh -c 'sleep 60; :' /opt/hermes/docker/main-wrapper.sh gateway run & \
         sleep 0.3; \"$0\" once --json",
    );
    out.assert_code(0);
    let mut c = Checks::new();
    c.eq("modes", modes(&out), vec!["dashboard".to_string(), "dashboard".to_string()]);
    c.eq("slots", gateway_slots(&w.scandir), Default::default());
    let record = w.runtime_dir().join("container-mode");
    match fs::symlink_metadata(&record) {
        Ok(m) => {
            use std::os::unix::fs::MetadataExt;
            c.eq("record owner and mode", (m.uid(), m.mode() & 0o7777), (0, 0o600));
        }
        Err(e) => c.check(false, format!("{}: {e}", record.display())),
    }
    let dir =
        fs::metadata(w.runtime_dir()).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
    c.eq("runtime dir mode", dir.ok().map(|m| m & 0o7777), Some(0o700));
    // Another container boot on the same runtime directory judges afresh.
    let out = in_container(&w, "\"$0\" once --json");
    out.assert_code(0);
    c.eq("next boot", modes(&out), vec!["normal".to_string()]);
    c.finish();
}

/// A dashboard container's main process in a *nested* pid namespace (another container or
/// test on the same host) is not this container's main command: `once` in the outer
/// namespace, which sees that process in its `/proc`, still supervises gateways.
#[test]
fn a_main_command_in_a_nested_pid_namespace_is_not_ours() {
    root_only!();
    let w = World::new();
    w.profile("named").desired("running");
    let mut nested = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child", "--mount", "--mount-proc"])
        // One word for unshare's own argv, which is in our namespace; the inner `sh -c` is not.
        .args(["sh", "-c", "sh -c 'sleep 60; :' /opt/hermes/docker/main-wrapper.sh dashboard"])
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("spawn unshare");
    // Wait (bounded) until the nested process is visible in our /proc.
    let visible = poll(WAIT, || {
        let seen = fs::read_dir("/proc").unwrap().flatten().any(|e| {
            fs::read(e.path().join("cmdline"))
                .map(|c| c.windows(15).any(|w| w == b"main-wrapper.sh"))
                .unwrap_or(false)
        });
        if seen { Ok(()) } else { Err("nested main-wrapper.sh not visible".to_string()) }
    });
    let out = w.run(&["once"]);
    let _ = nested.kill();
    let _ = nested.wait();
    visible.unwrap();
    out.assert_code(0);
    let mut c = Checks::new();
    c.ok(wait_slots(&w.scandir, &wants(&[("default", Want::Down), ("named", Want::Up)])));
    c.finish();
}
