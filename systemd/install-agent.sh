#!/bin/sh
# Installs the agent where its systemd unit runs it (as root, from a checkout):
#   /opt/novacron                          a virtualenv holding the novacron package
#   /usr/local/bin/nova, nova-agent, nova-coordinator   links into it, on operators' PATH
#   /etc/systemd/system/novacron-agent.service
#   /etc/systemd/system/novacron-coordinator.service  (optional: enabled only where it runs)
#   /usr/share/doc/novacron/README.md      the unit's Documentation=
#   /etc/novacron                          for ca.pub, this host's certificate and key, agent.toml
# DESTDIR=DIR puts all of it under DIR instead (staged installs, the unit's test).
# The argument, if any, is what pip installs: a wheel or a source tree (default: this checkout).
# The Debian packages that building libvirt-python needs: scripts/install-system-deps.sh.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
source=${1:-$here}
dest=${DESTDIR:-}

python3 -m venv "$dest/opt/novacron"
"$dest/opt/novacron/bin/pip" install -q "$source"
install -D -m 0644 "$here/systemd/novacron-agent.service" \
    "$dest/etc/systemd/system/novacron-agent.service"
install -D -m 0644 "$here/systemd/novacron-coordinator.service" \
    "$dest/etc/systemd/system/novacron-coordinator.service"
install -D -m 0644 "$here/README.md" "$dest/usr/share/doc/novacron/README.md"
install -d -m 0755 "$dest/etc/novacron" "$dest/usr/local/bin"
ln -sfn /opt/novacron/bin/nova "$dest/usr/local/bin/nova"
ln -sfn /opt/novacron/bin/nova-agent "$dest/usr/local/bin/nova-agent"
ln -sfn /opt/novacron/bin/nova-coordinator "$dest/usr/local/bin/nova-coordinator"
echo "installed under ${dest:-/}; next: /etc/novacron (README.md, \"Under systemd\")"
