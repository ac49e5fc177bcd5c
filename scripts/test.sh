#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, and the integration tests against a real
# s6-svscan of three generations: the host's s6 (Debian bookworm: 2.11), s6 2.13 from a Debian
# trixie root (what s6-overlay 3.2.0.x ships; its scanner differs, see S6-FACTS) and s6 2.15
# from a Debian sid root (what s6-overlay 3.2.3.x ships: no `-c`, 35-byte status). The roots
# are built by scripts/s6-root.sh on first use and cached. Needs root: the integration tests
# use unshare, chroot and create root-owned slots.
#
#   scripts/test.sh                 everything
#   S6_MATRIX=host scripts/test.sh  only the host's s6 (unit and integration tests)
#   S6_MATRIX=2.13 scripts/test.sh  only s6 2.13 (integration tests)
#   S6_MATRIX=2.15 scripts/test.sh  only s6 2.15 (integration tests)
#   S6_MATRIX=all                   all three (the default)
#
# HERMES_TEST_THREADS, when set, is passed to the test binaries as --test-threads.
#
# The integration tests are one binary, `it` (tests/it, on the kit in tests/kit); its suites are
# selected by libtest filters (substrings of `module::test`). s6 2.13 and 2.15 run the `once_*`,
# `run_*` and `scanner` suites (the ones whose behaviour depends on the s6 generation); the
# `--skip packaging::` drops the packaging tests whose names contain `run_` (they use the host's
# s6 whatever the generation). The host runs all.
# HERMES_TEST_REQUIRE_ROOT=1 makes the root-only tests fail, instead of saying they were not
# run, if this is not root.
set -euo pipefail
cd "$(dirname "$0")/.."

matrix=${S6_MATRIX:-all}
case $matrix in
  all | host | 2.13 | 2.15) ;;
  *)
    echo "S6_MATRIX must be host, 2.13, 2.15 or all, not '$matrix'" >&2
    exit 64
    ;;
esac
threads=()
if [[ -n ${HERMES_TEST_THREADS:-} ]]; then
  threads=("--test-threads=$HERMES_TEST_THREADS")
fi
export HERMES_TEST_REQUIRE_ROOT=1
start=$SECONDS
scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
scripts/lint.sh

if [[ $matrix == all || $matrix == host ]]; then
  # shellcheck disable=SC2016 # ${Version} is dpkg-query's format, not a shell variable
  echo "== unit and integration tests, host s6 ($(dpkg-query -W -f '${Version}' s6))"
  cargo test --locked -- "${threads[@]}" 2>&1
fi
for gen in 2.13 2.15; do
  [[ $matrix == all || $matrix == "$gen" ]] || continue
  case $gen in
    2.13) suite=trixie ;;
    2.15) suite=sid ;;
  esac
  root=$(scripts/s6-root.sh "$suite")
  # shellcheck disable=SC2016 # ${Version} is dpkg-query's format, not a shell variable
  echo "== integration tests, s6 $(chroot "$root" dpkg-query -W -f '${Version}' s6) from $root"
  HERMES_TEST_S6_ROOT=$root cargo test --locked --test it -- once_ run_ scanner --skip packaging:: "${threads[@]}" 2>&1
done
echo "== all tests passed in $((SECONDS - start)) s"
