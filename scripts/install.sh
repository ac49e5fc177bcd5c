#!/bin/sh
# Installs hermes-reconciler into the root filesystem of an image whose PID 1 is s6-overlay v3:
#
#   scripts/install.sh BINARY [ROOT]      (ROOT defaults to /; run as root at image build time)
#
#   ROOT/usr/local/bin/hermes-reconciler                   the binary
#   ROOT/etc/s6-overlay/s6-rc.d/hermes-reconciler/         the longrun (s6-rc source definition)
#   .../user/contents.d/hermes-reconciler                  its membership of the `user` bundle
#   ROOT/etc/cont-init.d/50-hermes-reconciler-prepare      scandir rights, leftovers (as root)
#   ROOT/etc/cont-init.d/60-hermes-reconciler-boot         the boot pass (`hermes-reconciler once`)
#
# The `user` bundle is defined in /etc/s6-overlay/user-bundles.d/ from s6-overlay 3.2.3.2 on, and
# in /etc/s6-overlay/s6-rc.d/ before. s6-overlay 3.2.3.2 still reads the old place, but then only
# that one, so the membership goes wherever the image defines its bundle.
#
# The one-shot boot script that hermes-reconciler replaces (cont-init.d/02-reconcile-profiles of
# Hermes images) is removed: it would hand the scandir to the unprivileged user.
set -eu

prog=hermes-reconciler-install
# The repository root: s6-rc.d/, user-bundles.d/ and cont-init.d/ there are laid out as they
# are installed under /etc/s6-overlay/ and /etc/.
here=$(cd "$(dirname "$0")/.." && pwd)

if [ "$#" -lt 1 ] || [ "$#" -gt 2 ]; then
  echo "usage: $0 BINARY [ROOT]" >&2
  exit 64
fi
bin=$1
root=${2:-/}
root=${root%/}

fail() {
  echo "$prog: $*" >&2
  exit 1
}

if [ ! -f "$bin" ] || [ ! -x "$bin" ]; then
  fail "$bin is not an executable file"
fi
if [ ! -e "$root/init" ] || [ ! -e "$root/package/admin/s6-overlay" ]; then
  fail "no s6-overlay v3 in ${root:-/} (/init, /package/admin/s6-overlay): install it first"
fi

etc=$root/etc/s6-overlay
if [ -d "$etc/s6-rc.d/user" ]; then
  bundle=$etc/s6-rc.d/user
else
  bundle=$etc/user-bundles.d/user
fi

install -d -m 0755 "$root/usr/local/bin"
install -m 0755 "$bin" "$root/usr/local/bin/hermes-reconciler"

svc=$etc/s6-rc.d/hermes-reconciler
src=$here/s6-rc.d/hermes-reconciler
install -d -m 0755 "$svc" "$svc/dependencies.d"
install -m 0644 "$src/type" "$src/notification-fd" "$svc/"
install -m 0755 "$src/run" "$src/finish" "$svc/"
install -m 0644 "$src/dependencies.d/base" "$svc/dependencies.d/base"

install -d -m 0755 "$bundle/contents.d"
install -m 0644 "$here/user-bundles.d/user/contents.d/hermes-reconciler" "$bundle/contents.d/"

install -d -m 0755 "$root/etc/cont-init.d"
for script in "$here"/cont-init.d/*; do
  install -m 0755 "$script" "$root/etc/cont-init.d/"
done

legacy=$root/etc/cont-init.d/02-reconcile-profiles
if [ -e "$legacy" ] || [ -L "$legacy" ]; then
  rm -f "$legacy"
  echo "$prog: removed ${legacy#"$root"}: hermes-reconciler replaces it" >&2
fi
echo "$prog: installed; user bundle: ${bundle#"$root"}" >&2
