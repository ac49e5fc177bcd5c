#!/usr/bin/env bash
# Runs the s6 integration suites (once_*, run_*, scanner: filters of the `it` test binary, as in
# scripts/test.sh) with two CPU-burning processes alongside, N times per s6 generation, and
# prints how many runs passed. A test that fails here depends on timing: fix it (timeouts in
# tests are hang bounds, never performance checks).
#
#   scripts/stress-tests.sh [GEN...]     GEN: host (2.11), 2.13, 2.15; default: all three
#   STRESS_RUNS=N                        runs per generation (default 3)
#   STRESS_BURNERS=K                     CPU-burning processes (default 2)
#
# Exit status 0 only if every run passed. Logs of failed runs are kept in $STRESS_LOGS
# (default: a new temporary directory, printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${STRESS_RUNS:-3}
burners=${STRESS_BURNERS:-2}
gens=("$@")
if [[ ${#gens[@]} -eq 0 ]]; then
  gens=(host 2.13 2.15)
fi
logs=${STRESS_LOGS:-$(mktemp -d /tmp/hermes-stress.XXXXXX)}
mkdir -p "$logs"

# Build once, without burners, so the runs measure the tests and not the compiler.
cargo test --locked --no-run --test it >/dev/null 2>&1

pids=()
stop_burners() {
  for p in "${pids[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  pids=()
}
trap stop_burners EXIT
for _ in $(seq "$burners"); do
  yes >/dev/null &
  pids+=($!)
done

failed=0
summary=()
for gen in "${gens[@]}"; do
  case $gen in
    host) root= ;;
    2.13) root=$(scripts/s6-root.sh trixie) ;;
    2.15) root=$(scripts/s6-root.sh sid) ;;
    *)
      echo "stress-tests: unknown generation '$gen' (host, 2.13, 2.15)" >&2
      exit 64
      ;;
  esac
  passed=0
  for i in $(seq "$runs"); do
    log=$logs/$gen-$i.log
    start=$SECONDS
    if HERMES_TEST_REQUIRE_ROOT=1 HERMES_TEST_S6_ROOT=$root cargo test --locked --test it -- once_ run_ scanner --skip packaging:: \
      >"$log" 2>&1; then
      passed=$((passed + 1))
      echo "stress: s6 $gen run $i/$runs passed ($((SECONDS - start)) s)"
      rm -f "$log"
    else
      failed=1
      echo "stress: s6 $gen run $i/$runs FAILED ($((SECONDS - start)) s): $log"
      grep -E '^test .* FAILED$|panicked at' "$log" | head -20 || true
    fi
  done
  summary+=("s6 $gen: $passed/$runs passed")
done
stop_burners
echo "== stress ($burners CPU burners): ${summary[*]}"
[[ $failed -eq 0 ]] || echo "logs of failed runs: $logs"
exit "$failed"
