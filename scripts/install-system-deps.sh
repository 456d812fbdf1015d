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
libvirt-daemon-driver-storage
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

# The lab's guests run emulated (TCG). Debian 12's QEMU 7.2 loses dirty pages
# when it migrates a TCG guest, so a moved guest now and then crashes
# (BENCHMARKS.md, "Why the lab's migrated guests break"); QEMU 10 does not.
# QEMU 10 and the libvirt 11 that drives it (libvirt 9 passes -no-acpi, which
# QEMU 10 rejects) come from Debian's bookworm-backports. KVM hosts never take
# that path and run with either pair.
BACKPORTS_PACKAGES="qemu-system-x86 qemu-utils qemu-system-common
qemu-system-data seabios libvirt-daemon libvirt-daemon-driver-qemu
libvirt-daemon-driver-storage libvirt-clients libvirt-dev libvirt0
libvirt-common libvirt-daemon-common libvirt-daemon-log"
BACKPORTS_SOURCE=/etc/apt/sources.list.d/novacron-bookworm-backports.sources

installed_at_least() {  # PACKAGE VERSION
    v=$(dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true)
    [ -n "$v" ] && dpkg --compare-versions "$v" ge "$2"
}

codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
if [ "$codename" = "bookworm" ] && ! { installed_at_least qemu-system-x86 1:10 \
        && installed_at_least libvirt-daemon-driver-qemu 11 \
        && installed_at_least libvirt-daemon-driver-storage 11 \
        && installed_at_least libvirt-dev 11; }; then
    if [ "$(id -u)" != "0" ]; then
        echo "install-system-deps: QEMU 10 and libvirt 11 from bookworm-backports are needed; run as root to install them" >&2
        exit 1
    fi
    if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d; then
        echo "install-system-deps: adding Debian's bookworm-backports ($BACKPORTS_SOURCE)"
        cat > "$BACKPORTS_SOURCE" <<'SOURCE'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCE
    fi
    echo "install-system-deps: installing QEMU 10 and libvirt 11 from bookworm-backports"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # Only these packages come from backports; their other dependencies
    # stay Debian 12's own.
    pinned=""
    for p in $BACKPORTS_PACKAGES; do
        pinned="$pinned $p/bookworm-backports"
    done
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $pinned
fi

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
