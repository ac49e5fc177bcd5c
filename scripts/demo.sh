#!/usr/bin/env bash
# Runs hermes-reconciler for real: a real s6-svscan on a demo scandir, a demo HERMES_HOME with
# a few profiles and a stand-in gateway, and the daemon in the foreground (Ctrl-C stops it;
# the gateways are then stopped with the demo's s6-svscan).
#
#   scripts/demo.sh                   # demo home in /tmp/hermes-demo/home
#   HERMES_HOME=/path scripts/demo.sh # your own home (its profiles are used as they are)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo build --release --locked
bin=$PWD/target/release/hermes-reconciler

demo=/tmp/hermes-demo
export HERMES_HOME=${HERMES_HOME:-$demo/home}
export S6_PROFILE_GATEWAY_SCANDIR=${S6_PROFILE_GATEWAY_SCANDIR:-$demo/service}
export HERMES_RUN_AS=${HERMES_RUN_AS-}
mkdir -p "$demo" "$S6_PROFILE_GATEWAY_SCANDIR"

# A stand-in gateway: says who it is every 30 s. Set HERMES_GATEWAY_COMMAND to use a real one.
if [[ -z ${HERMES_GATEWAY_COMMAND:-} ]]; then
  cat >"$demo/gateway" <<'GW'
#!/bin/sh
profile=default
[ "$1" = "-p" ] && profile=$2
while :; do
  echo "stand-in gateway for profile $profile (pid $$, port ${API_SERVER_PORT:-unset})"
  sleep 30
done
GW
  chmod 0755 "$demo/gateway"
  export HERMES_GATEWAY_COMMAND=$demo/gateway
fi

if [[ ! -e $HERMES_HOME ]]; then
  mkdir -p "$HERMES_HOME/profiles"
  echo '{"desired_state":"running"}' >"$HERMES_HOME/gateway_state.json"
  for p in alice bob carol; do
    mkdir -p "$HERMES_HOME/profiles/$p"
    echo "# $p" >"$HERMES_HOME/profiles/$p/SOUL.md"
  done
  echo '{"desired_state":"running"}' >"$HERMES_HOME/profiles/alice/gateway_state.json"
  echo '{"gateway_state":"startup_failed"}' >"$HERMES_HOME/profiles/bob/gateway_state.json"
fi

# s6-svscan in its own PID namespace, so everything it supervises ends with the demo.
unshare --pid --fork --kill-child --mount --mount-proc s6-svscan "$S6_PROFILE_GATEWAY_SCANDIR" &
svscan=$!
trap 'kill -KILL "$svscan" 2>/dev/null || true' EXIT

cat <<TXT
hermes-reconciler demo
  HERMES_HOME=$HERMES_HOME
  scandir    =$S6_PROFILE_GATEWAY_SCANDIR
Try, in another terminal (same variables exported):
  $bin status
  mkdir $HERMES_HOME/profiles/dave && touch $HERMES_HOME/profiles/dave/SOUL.md
  echo '{"desired_state":"running"}' > $HERMES_HOME/profiles/dave/gateway_state.json
  rm -rf $HERMES_HOME/profiles/carol
  tail -f $HERMES_HOME/logs/container-boot.log
Ctrl-C stops the daemon (and the demo's s6-svscan with it).
TXT
"$bin" run
