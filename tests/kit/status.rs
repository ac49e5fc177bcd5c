//! `status --json` rows and their comparison with `s6-svstat`.

use std::collections::BTreeMap;

use super::WAIT;
use super::slots::{slot_name, svstat};
use super::wait::poll;
use super::world::World;

/// `status --json` rows by profile name; `Err` if it fails or prints something else.
pub fn status_rows(w: &World) -> Result<BTreeMap<String, serde_json::Value>, String> {
    let o = w.run(&["status", "--json"]);
    if o.code != Some(0) {
        return Err(format!("status --json exited {:?}: {}", o.code, o.stderr));
    }
    let v: serde_json::Value =
        serde_json::from_str(o.stdout.trim()).map_err(|e| format!("status --json: {e}: {:?}", o.stdout))?;
    let rows = v
        .get("profiles")
        .and_then(|p| p.as_array())
        .ok_or_else(|| format!("status --json has no profiles array: {v}"))?;
    let mut out = BTreeMap::new();
    for r in rows {
        let name = r
            .get("profile")
            .and_then(|p| p.as_str())
            .ok_or_else(|| format!("row without profile: {r}"))?
            .to_string();
        if out.insert(name.clone(), r.clone()).is_some() {
            return Err(format!("two rows for profile {name}"));
        }
    }
    Ok(out)
}

/// Checks one `status` row against `s6-svstat` and the slot directory.
pub fn row_agrees_with_s6(w: &World, row: &serde_json::Value) -> Result<(), String> {
    let name = row["profile"].as_str().unwrap_or_default();
    let slot = w.slot(name);
    let mut bad = Vec::new();
    let present = slot.is_dir();
    if row["slot"] != serde_json::json!(slot_name(name)) {
        bad.push(format!("slot {} != {}", row["slot"], slot_name(name)));
    }
    if row["slot_present"] != serde_json::json!(present) {
        bad.push(format!("slot_present {} but directory exists: {present}", row["slot_present"]));
    }
    if present {
        let st = svstat(&slot)?;
        let pairs = [
            ("wanted_up", serde_json::json!(st.wanted_up)),
            ("up", serde_json::json!(st.up)),
            ("ready", serde_json::json!(st.ready)),
            ("normally_up", serde_json::json!(st.normally_up)),
            ("pid", serde_json::json!(st.pid)),
            ("supervised", serde_json::json!(true)),
        ];
        for (k, want) in pairs {
            if row[k] != want {
                bad.push(format!("{k}: status says {}, s6-svstat says {want}", row[k]));
            }
        }
        if st.normally_up == slot.join("down").exists() {
            bad.push(format!("s6-svstat normallyup {} disagrees with the down file", st.normally_up));
        }
    } else {
        for k in ["wanted_up", "up", "pid"] {
            if !row[k].is_null() {
                bad.push(format!("{k} is {} for a slot that does not exist", row[k]));
            }
        }
    }
    if bad.is_empty() { Ok(()) } else { Err(format!("status row {name}: {}", bad.join(", "))) }
}

/// Waits (bounded) until `status --json` has exactly the rows `profiles` and each agrees with
/// s6; returns the rows.
pub fn status_agrees(w: &World, profiles: &[&str]) -> Result<BTreeMap<String, serde_json::Value>, String> {
    poll(WAIT, || {
        let rows = status_rows(w)?;
        let names: Vec<&str> = rows.keys().map(String::as_str).collect();
        let mut want: Vec<&str> = profiles.to_vec();
        want.sort();
        if names != want {
            return Err(format!("status rows {names:?}, want {want:?}"));
        }
        for r in rows.values() {
            row_agrees_with_s6(w, r)?;
        }
        Ok(rows)
    })
}

/// [`status_agrees`], until `ready` also holds of the rows. What `status` reads from the
/// daemon's record (skips, errors, last actions) is written at the end of a pass, after the
/// control bytes whose effect s6 may already report.
pub fn status_agrees_when(
    w: &World,
    profiles: &[&str],
    ready: impl Fn(&BTreeMap<String, serde_json::Value>) -> Result<(), String>,
) -> Result<BTreeMap<String, serde_json::Value>, String> {
    poll(WAIT, || {
        let rows = status_agrees(w, profiles)?;
        ready(&rows).map(|()| rows)
    })
}
