#!/usr/bin/env bash
# Prints the path of a Debian trixie root holding s6 2.13 (what s6-overlay 3.2.0.x ships),
# building it with debootstrap on first use. The integration tests run s6-svscan from it with
# chroot when HERMES_TEST_S6_ROOT names it (see README, "Testing against s6 2.13").
set -euo pipefail

root=${HERMES_S6_TRIXIE_ROOT:-/var/cache/hermes-reconciler/trixie}
if [[ ! -x $root/usr/bin/s6-svscan || ! -e $root/.hermes-ready ]]; then
  if ! command -v debootstrap >/dev/null 2>&1; then
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  fi
  rm -rf "$root"
  mkdir -p "$(dirname "$root")"
  log=$(mktemp)
  if ! debootstrap --variant=minbase --include=s6,execline,passwd trixie "$root" >"$log" 2>&1; then
    cat "$log" >&2
    exit 1
  fi
  rm -f "$log"
  touch "$root/.hermes-ready"
fi
echo "$root"
