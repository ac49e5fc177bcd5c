#!/bin/sh
# CPU used by s6 (s6-svscan, every s6-supervise, the loggers, and the reaped gateway and finish
# processes, through the supervisors' cutime/cstime) and by the daemon, over SECS seconds, with
# N gateways that exit 1 at once, crash-loop backoff off and on (issue 13).
# Usage, as root: scripts/bench-crashloop.sh [BIN] [SECS] [N]
set -eu
bin=${1:-target/release/hermes-reconciler}
secs=${2:-300}
n=${3:-20}
bin=$(readlink -f "$bin")
for mode in off 5/60; do
  t=$(mktemp -d /tmp/hermes-crashbench.XXXXXX)
  mkdir -p "$t/home/profiles" "$t/scan"
  printf '#!/bin/sh\nexit 1\n' >"$t/crash"
  chmod 755 "$t/crash"
  i=1
  while [ "$i" -le "$n" ]; do
    p="$t/home/profiles/p$i"
    mkdir -p "$p"
    echo '# soul' >"$p/SOUL.md"
    echo '{"desired_state":"running"}' >"$p/gateway_state.json"
    i=$((i + 1))
  done
  # shellcheck disable=SC2016 # the inner script is expanded by the inner shell
  HERMES_HOME="$t/home" S6_PROFILE_GATEWAY_SCANDIR="$t/scan" HERMES_GATEWAY_COMMAND="$t/crash" \
    HERMES_RUN_AS="" HERMES_RECONCILER_RUNTIME_DIR="$t/run" HERMES_RECONCILER_CRASHLOOP="$mode" \
    HERMES_RECONCILER_LOG=warn BIN="$bin" SECS="$secs" SCAN="$t/scan" \
    unshare --pid --fork --kill-child --mount --mount-proc sh -c '
      s6-svscan "$SCAN" >/dev/null 2>&1 &
      sleep 0.5
      "$BIN" run 2>/dev/null &
      sleep "$SECS"
      tck=$(getconf CLK_TCK)
      s6=0; daemon=0
      for st in /proc/[0-9]*/stat; do
        line=$(cat "$st" 2>/dev/null) || continue
        comm=${line#*(}; comm=${comm%%)*}
        rest=${line##*) }
        # fields after comm: state(1) ... utime(12) stime(13) cutime(14) cstime(15)
        set -- $rest
        ticks=$(( ${12} + ${13} + ${14} + ${15} ))
        case "$comm" in
          s6-svscan|s6-supervise|s6-log) s6=$((s6 + ticks)) ;;
          hermes-reconcil*) daemon=$((daemon + ticks)) ;;
        esac
      done
      echo "s6_cpu_secs=$(echo "scale=2; $s6 / $tck" | bc) daemon_cpu_secs=$(echo "scale=2; $daemon / $tck" | bc)"
    ' | sed "s|^|crashloop=$mode secs=$secs gateways=$n |"
  rm -rf "$t"
done
