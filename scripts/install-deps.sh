#!/usr/bin/env bash
# Installs what building and testing hermes-reconciler needs on a Debian machine, if missing:
# s6 and execline (the real supervisor the tests run against) and util-linux's unshare.
set -euo pipefail

missing=()
command -v s6-svscan >/dev/null 2>&1 || missing+=(s6)
command -v execlineb >/dev/null 2>&1 || missing+=(execline)
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
command -v useradd >/dev/null 2>&1 || missing+=(passwd)
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo is missing; install a Rust toolchain (https://rustup.rs) first" >&2
  exit 1
fi
