"""Which domain type VMs get: KVM wherever the host can run it, TCG only where it cannot.

`choose` is fed libvirt's capabilities both ways: the real capabilities of a
lab host on the development machines (QEMU 7.2 under libvirt 9.0, offering
kvm and qemu domains for x86_64; tests/data/libvirt-capabilities-kvm.xml) and
the same document with the kvm domains taken out, as on a host without KVM.
Then the adapter and the agent decide through their real code paths against
libvirt's test driver (which offers no KVM); tests/test_hypervisor.py does the
same against a lab host's real libvirtd, which offers KVM.
"""

from __future__ import annotations

import json
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from novacron.agent.config import ConfigError, load
from novacron.agent.domain_type import (
    DomainTypeVerdict,
    ProbeOutcome,
    choose,
    kvm_device_problem,
    kvm_in_capabilities,
)
from novacron.agent.hypervisor import Hypervisor
from novacron.agent.vmspec import VmSpec
from tests.agent_process import BIN, make_ca, notifications, running_agent

WITH_KVM = (Path(__file__).parent / "data" / "libvirt-capabilities-kvm.xml").read_text()


def without_kvm(capabilities: str) -> str:
    """The capabilities of the same host if libvirt found no usable KVM."""
    root = ET.fromstring(capabilities)
    for arch in root.iter("arch"):
        for domain in arch.findall("domain[@type='kvm']"):
            arch.remove(domain)
    return ET.tostring(root, encoding="unicode")


def test_auto_is_kvm_where_libvirt_offers_it_and_dev_kvm_answers() -> None:
    verdict = choose("auto", capabilities_xml=WITH_KVM, device_problem=None)
    assert verdict == DomainTypeVerdict(
        "kvm", "auto: libvirt offers KVM for x86_64 guests and /dev/kvm answers"
    )


def test_auto_is_tcg_where_libvirt_offers_no_kvm() -> None:
    verdict = choose("auto", capabilities_xml=without_kvm(WITH_KVM), device_problem=None)
    assert verdict == DomainTypeVerdict(
        "qemu", "auto: libvirt offers no KVM for x86_64 guests (only qemu); VMs run emulated (TCG)"
    )


def test_auto_is_tcg_where_dev_kvm_does_not_answer() -> None:
    problem = "/dev/kvm does not exist (no KVM kernel module, or no hardware virtualisation)"
    verdict = choose("auto", capabilities_xml=WITH_KVM, device_problem=problem)
    assert verdict.domain_type == "qemu"
    assert verdict.reason == f"auto: libvirt offers KVM, but {problem}; VMs run emulated (TCG)"


def test_kvm_for_another_architecture_does_not_count() -> None:
    root = ET.fromstring(WITH_KVM)
    for arch in root.iter("arch"):
        if arch.get("name") == "x86_64":
            for domain in arch.findall("domain[@type='kvm']"):
                arch.remove(domain)
    i686_only = ET.tostring(root, encoding="unicode")
    assert kvm_in_capabilities(WITH_KVM, arch="i686") is None
    assert kvm_in_capabilities(i686_only) == "libvirt offers no KVM for x86_64 guests (only qemu)"


def test_unreadable_or_empty_capabilities_mean_tcg() -> None:
    garbled = choose("auto", capabilities_xml="<capabilities><guest>", device_problem=None)
    assert garbled.domain_type == "qemu" and "capabilities are unreadable" in garbled.reason
    empty = choose("auto", capabilities_xml="<capabilities/>", device_problem=None)
    assert empty.domain_type == "qemu" and "no x86_64 guests at all" in empty.reason


def test_a_probe_guest_is_an_extra_check_never_the_way_to_kvm() -> None:
    booted = ProbeOutcome(heartbeat_after=1.23, timeout=15)
    silent = ProbeOutcome(heartbeat_after=None, timeout=15)
    kvm = choose("auto", capabilities_xml=WITH_KVM, device_problem=None, probe=booted)
    assert kvm.domain_type == "kvm"
    assert kvm.reason.endswith("and a KVM probe guest's first heartbeat came after 1.2 s")
    hung = choose("auto", capabilities_xml=WITH_KVM, device_problem=None, probe=silent)
    assert hung.domain_type == "qemu" and "no heartbeat within 15 s" in hung.reason
    no_kvm = choose(
        "auto", capabilities_xml=without_kvm(WITH_KVM), device_problem=None, probe=booted
    )
    assert no_kvm.domain_type == "qemu", "a heartbeat cannot stand in for libvirt's KVM"


def test_a_configured_type_is_used_as_configured() -> None:
    no_kvm = without_kvm(WITH_KVM)
    assert choose("kvm", capabilities_xml=no_kvm, device_problem="gone") == DomainTypeVerdict(
        "kvm", "configured as kvm"
    )
    assert choose("qemu", capabilities_xml=WITH_KVM, device_problem=None) == DomainTypeVerdict(
        "qemu", "configured as qemu (TCG)"
    )
    with pytest.raises(ValueError, match="kvm, qemu or auto"):
        choose("xen", capabilities_xml=WITH_KVM, device_problem=None)


def test_a_device_that_is_not_kvm_is_named(tmp_path: Path) -> None:
    assert kvm_device_problem(tmp_path / "kvm") == (
        f"{tmp_path / 'kvm'} does not exist (no KVM kernel module, or no hardware virtualisation)"
    )
    assert kvm_device_problem(Path("/dev/null")) == (
        "/dev/null is not a KVM device (Inappropriate ioctl for device)"
    )


async def test_the_adapter_decides_from_what_libvirt_reports(tmp_path: Path) -> None:
    """Through the adapter's real code path: libvirt's test driver offers no x86_64 KVM."""
    (tmp_path / "vmlinuz").write_bytes(b"kernel")
    (tmp_path / "initrd").write_bytes(b"initrd")
    hv = Hypervisor(
        "test:///default", domain_type="auto", disk_dir=tmp_path / "disks", console_dir=tmp_path
    )
    try:
        assert hv.verdict is None
        verdict = await hv.resolve_domain_type()
        assert verdict.domain_type == "qemu"
        assert verdict.reason.startswith("auto: libvirt offers no x86_64 guests at all")
        assert hv.verdict == verdict
        await hv.create(VmSpec("defaults", 1, 128, tmp_path / "vmlinuz", tmp_path / "initrd"))
        try:
            assert (await hv.stats("defaults")).domain_type == "qemu"
        finally:
            await hv.delete("defaults")
    finally:
        await hv.close()


def test_nova_status_says_which_domain_type_and_why(tmp_path: Path) -> None:
    """An agent with the default setting (auto) on libvirt's test driver: TCG, and why."""
    with running_agent(make_ca(tmp_path)) as (_, notify, tmp):
        assert "READY=1" in "".join(notifications(notify, "READY=1"))
        command = [str(BIN / "nova"), "--json", "status", "--socket", str(tmp / "agent.sock")]
        deadline = time.monotonic() + 30
        while True:  # the agent decides once libvirt answers, after it is ready
            out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
            status = json.loads(out.stdout)["status"]
            if status["domain_type"] is not None or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert status["domain_type"] == "qemu", status["domain_type_reason"]
        assert "libvirt offers no x86_64 guests" in status["domain_type_reason"]
        text = subprocess.run(command[:1] + command[2:], capture_output=True, text=True, timeout=30)
    assert f"domain type:  qemu ({status['domain_type_reason']})" in text.stdout.splitlines()


def test_a_probe_guest_needs_both_files_and_absolute_paths() -> None:
    base = {"kvm_probe_kernel": "/var/lib/novacron/probe/vmlinuz"}
    with pytest.raises(ConfigError, match="give both or neither"):
        load(base, environ={}, config_file="/dev/null")
    with pytest.raises(ConfigError, match="kvm_probe_initrd must be an absolute path"):
        load({**base, "kvm_probe_initrd": "initrd.gz"}, environ={}, config_file="/dev/null")
    both = load({**base, "kvm_probe_initrd": "/p/initrd.gz"}, environ={}, config_file="/dev/null")
    assert (both.domain_type, both.kvm_probe_initrd) == ("auto", "/p/initrd.gz")
