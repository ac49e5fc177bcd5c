#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests and the integration tests against a real
# s6-svscan. Needs root (the integration tests use unshare and create slots owned by root).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked 2>&1
