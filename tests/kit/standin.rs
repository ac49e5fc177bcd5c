//! The stand-in gateway the slots of a test world exec.

/// The stand-in gateway. Records its arguments and environment, then sleeps or exits.
pub const STANDIN: &str = r#"#!/bin/sh
d="$HOME/.standin"
mkdir -p "$d"
name=default
if [ "$1" = "-p" ]; then name="$2"; fi
n=1
while [ -e "$d/$name.$n" ]; do n=$((n+1)); done
f="$d/$name.$n"
{
  echo "pid=$$"
  echo "uid=$(id -u)"
  echo "port=${API_SERVER_PORT-<unset>}"
  echo "home=${HOME-<unset>}"
  echo "pwd=$(pwd -P)"
  echo "supervised=${HERMES_S6_SUPERVISED_CHILD-<unset>}"
  echo "supervised2=${HERMES_SUPERVISED_CHILD-<unset>}"
  for a in "$@"; do echo "arg=$a"; done
} > "$f.tmp"
mv "$f.tmp" "$f"
if [ -e "$d/$name.exit" ]; then exit "$(cat "$d/$name.exit")"; fi
exec sleep 100000
"#;

/// One start of the stand-in gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StandinRecord {
    pub pid: String,
    pub uid: String,
    pub port: String,
    pub home: String,
    pub pwd: String,
    pub supervised: String,
    pub supervised2: String,
    pub args: Vec<String>,
}

pub(super) fn parse_record(s: &str) -> StandinRecord {
    let mut r = StandinRecord::default();
    for line in s.lines() {
        let (k, v) = line.split_once('=').unwrap_or((line, ""));
        let v = v.to_string();
        match k {
            "pid" => r.pid = v,
            "uid" => r.uid = v,
            "port" => r.port = v,
            "home" => r.home = v,
            "pwd" => r.pwd = v,
            "supervised" => r.supervised = v,
            "supervised2" => r.supervised2 = v,
            "arg" => r.args.push(v),
            _ => {}
        }
    }
    r
}
