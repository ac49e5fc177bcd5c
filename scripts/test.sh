#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, and the integration tests against a real
# s6-svscan twice: with the host's s6 (Debian bookworm: 2.11) and with s6 2.13 from a Debian
# trixie root (what s6-overlay 3.2.0.x ships; its scanner differs, see S6-FACTS). Needs root:
# the integration tests use unshare, chroot and create root-owned slots.
#
#   scripts/test.sh                 everything
#   S6_MATRIX=host scripts/test.sh  only the host's s6
#   S6_MATRIX=2.13 scripts/test.sh  only s6 2.13 (integration tests)
set -euo pipefail
cd "$(dirname "$0")/.."

matrix=${S6_MATRIX:-all}
scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
scripts/lint.sh

if [[ $matrix == all || $matrix == host ]]; then
  # shellcheck disable=SC2016 # ${Version} is dpkg-query's format, not a shell variable
  echo "== unit and integration tests, host s6 ($(dpkg-query -W -f '${Version}' s6))"
  cargo test --locked 2>&1
fi
if [[ $matrix == all || $matrix == 2.13 ]]; then
  root=$(scripts/s6-trixie-root.sh)
  # shellcheck disable=SC2016 # ${Version} is dpkg-query's format, not a shell variable
  echo "== integration tests, s6 $(chroot "$root" dpkg-query -W -f '${Version}' s6) from $root"
  HERMES_TEST_S6_ROOT=$root cargo test --locked --test 'once_*' --test 'run_*' --test 'scanner*' 2>&1
fi
