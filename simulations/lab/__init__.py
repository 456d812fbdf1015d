"""The lab: real hosts in network namespaces on one machine.

Each host has its own network namespace (one veth to a bridge in a private
switch namespace, an address in 198.18.0.0/15, multicast passing), its own
mount and UTS namespaces (hostname, private /run and /etc/libvirt) and, unless
disabled, its own libvirtd reachable at qemu+tcp://<address>/system.

Python API (tests, demos)::

    from novacron.simulations.lab import Lab

    with Lab("demo", hosts=3) as lab:
        h1, h2, _ = lab.hosts
        h2.run(["virsh", "-c", h1.libvirt_uri, "nodeinfo"], check=True)

CLI: `python -m novacron.simulations.lab up|down|status|exec|link` (see cli.py).
"""

from novacron.simulations.lab.errors import LabError
from novacron.simulations.lab.host import LabHost
from novacron.simulations.lab.instance import Lab
from novacron.simulations.lab.state import DEFAULT_STATE_ROOT
from novacron.simulations.lab.teardown import TeardownReport, tear_down

__all__ = ["DEFAULT_STATE_ROOT", "Lab", "LabError", "LabHost", "TeardownReport", "tear_down"]
