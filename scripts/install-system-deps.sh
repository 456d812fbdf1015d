#!/bin/sh
# Installs the Debian packages NovaCron needs, on a fresh Debian 12 machine as
# root. One list, used by `make test`, `make demo` and every later issue.
# Idempotent: packages already present are not fetched again.
set -eu

PACKAGES="
build-essential
python3-dev
python3-venv
pkg-config
iproute2
iputils-ping
libvirt-daemon
libvirt-daemon-driver-qemu
libvirt-clients
libvirt-dev
qemu-system-x86
qemu-utils
busybox-static
openssl
prometheus
stress-ng
tmux
postgresql
nats-server
"

missing=""
for p in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    echo "install-system-deps: all Debian packages present"
    exit 0
fi

if [ "$(id -u)" != "0" ]; then
    echo "install-system-deps: missing packages:$missing; run as root to install them" >&2
    exit 1
fi

echo "install-system-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086
apt-get install -y -q --no-install-recommends $missing
