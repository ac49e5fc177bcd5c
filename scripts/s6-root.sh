#!/usr/bin/env bash
# Prints the path of a Debian root holding another generation of s6, building it with
# debootstrap on first use. The integration tests run s6-svscan from it with chroot when
# HERMES_TEST_S6_ROOT names it (see README, "Testing against other s6 generations").
#
#   scripts/s6-root.sh trixie   s6 2.13 (what s6-overlay 3.2.0.x ships)
#   scripts/s6-root.sh sid      s6 2.15 (what s6-overlay 3.2.3.x ships)
#
# The root is kept in /var/cache/hermes-reconciler/<suite> (HERMES_S6_ROOT_CACHE overrides the
# parent directory). It counts as built only once `.hermes-ready` exists in it, which is written
# last: an interrupted build is thrown away and redone on the next call.
set -euo pipefail

suite=${1:?usage: scripts/s6-root.sh trixie|sid}
case $suite in
  trixie | sid) ;;
  *)
    echo "s6-root: unknown suite '$suite' (trixie or sid)" >&2
    exit 64
    ;;
esac
root=${HERMES_S6_ROOT_CACHE:-/var/cache/hermes-reconciler}/$suite
if [[ ! -x $root/usr/bin/s6-svscan || ! -e $root/.hermes-ready ]]; then
  if ! command -v debootstrap >/dev/null 2>&1; then
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  fi
  rm -rf "$root"
  mkdir -p "$(dirname "$root")"
  log=$(mktemp)
  if ! debootstrap --variant=minbase --include=s6,execline,passwd "$suite" "$root" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
  touch "$root/.hermes-ready"
fi
echo "$root"
