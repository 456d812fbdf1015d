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

# Debian 12's libvirt 9.0 drives QEMU 7.2. A QEMU from bookworm-backports
# (10.x) rejects options that libvirt passes (-no-acpi), so guests fail to
# start; such a QEMU is replaced by Debian 12's own.
QEMU_PACKAGES="qemu-system-x86 qemu-utils qemu-system-common qemu-system-data
qemu-system-gui qemu-system-modules-opengl qemu-system-modules-spice seabios"
qemu_version=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
if [ -n "$qemu_version" ] && dpkg --compare-versions "$qemu_version" ge 1:8; then
    if [ "$(id -u)" != "0" ]; then
        echo "install-system-deps: QEMU $qemu_version is newer than Debian 12's libvirt supports; run as root to replace it" >&2
        exit 1
    fi
    echo "install-system-deps: replacing QEMU $qemu_version with Debian 12's"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # Each installed piece goes back to bookworm's version, or is removed
    # (a trailing "-") where bookworm has none (the split-out modules).
    downgrade=""
    for p in $QEMU_PACKAGES; do
        if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
            if apt-cache madison "$p" | grep -q " bookworm/"; then
                downgrade="$downgrade $p/bookworm"
            else
                downgrade="$downgrade $p-"
            fi
        fi
    done
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends --allow-downgrades $downgrade
fi

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
