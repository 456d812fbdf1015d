"""Local disks in a live migration: which disks must travel, and room for them on the target.

Without shared storage, libvirt copies a VM's writable file disks during the
migration (NON_SHARED_INC copies only an overlay's own blocks, NON_SHARED_DISK
the whole image). For an incremental copy libvirt refuses to create the
target's file ("pre-creation of storage targets for incremental storage
migration is not supported"), so the source prepares it: through the target's
libvirtd, a qcow2 overlay at the same path, on the same base image (which
every host keeps at the same path), of the same virtual size. A disk whose
base is unknown is copied whole instead, into a plain image of its size.

After a successful move the source's copies are deleted (libvirt leaves
them behind when it undefines the source domain); after a failed one, the
copies prepared on the target, unless the VM is there after all.

The target's directory becomes a transient libvirt `dir` storage pool when
it is not one already: that is how libvirt creates files on another host.
"""

from __future__ import annotations

import hashlib
import logging
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

import libvirt

log = logging.getLogger("novacron.disks")

# Text and attribute values in the XML below. Not xml.sax.saxutils.escape: that
# module loads urllib.request, http.client and email, 3 MiB of every agent's memory.
_XML_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "'": "&apos;", '"': "&quot;"})


def escape(text: str) -> str:
    """`text` safe inside an XML element or a quoted attribute."""
    return text.translate(_XML_ESCAPES)


@dataclass(frozen=True, slots=True)
class LocalDisk:
    """A writable file disk of a domain, as libvirt describes it."""

    path: str  # the image the guest writes (an overlay, for NovaCron's VMs)
    format: str  # its format, e.g. qcow2
    backing: str | None  # the base image under it, if libvirt knows one
    backing_format: str | None


def local_disks(domain_xml: str) -> list[LocalDisk]:
    """The domain's writable, unshared file disks (those a migration must copy)."""
    disks = []
    for disk in ET.fromstring(domain_xml).iter("disk"):
        if disk.get("device", "disk") != "disk" or disk.find("readonly") is not None:
            continue
        source = disk.find("source")
        if disk.find("shareable") is not None or source is None:
            continue
        path = source.get("file") or source.get("dev") or ""
        driver = disk.find("driver")
        backing = disk.find("backingStore/source")
        backing_format = disk.find("backingStore/format")
        disks.append(
            LocalDisk(
                path=path,
                format=driver.get("type", "raw") if driver is not None else "raw",
                backing=backing.get("file") if backing is not None else None,
                backing_format=backing_format.get("type") if backing_format is not None else None,
            )
        )
    return disks


def incremental(disks: list[LocalDisk]) -> bool:
    """Whether every disk is an overlay on a known base (copy only the overlays)."""
    return all(d.backing for d in disks)


def pool_xml(directory: str) -> str:
    """A transient dir pool over `directory`, named after it (one pool per directory)."""
    name = "novacron-" + hashlib.sha256(directory.encode()).hexdigest()[:12]
    return (
        f"<pool type='dir'><name>{name}</name>"
        f"<target><path>{escape(directory)}</path></target></pool>"
    )


def volume_xml(disk: LocalDisk, capacity: int, with_backing: bool) -> str:
    """The target's copy of `disk`: same name, format and size (on the same base if asked)."""
    backing = ""
    if with_backing and disk.backing:
        backing = (
            f"<backingStore><path>{escape(disk.backing)}</path>"
            f"<format type='{escape(disk.backing_format or 'raw')}'/></backingStore>"
        )
    return (
        f"<volume><name>{escape(os.path.basename(disk.path))}</name>"
        f"<capacity unit='bytes'>{int(capacity)}</capacity>"
        f"<target><format type='{escape(disk.format)}'/>"
        f"<permissions><mode>0600</mode></permissions></target>{backing}</volume>"
    )


def prepare_on_target(conn: Any, disks: list[LocalDisk], capacities: list[int]) -> None:
    """Create each disk's image on the target behind `conn` (blocking).

    An image already at that path is a leftover of an earlier failed attempt:
    the target admitted the VM, so no domain of that name lives there, and the
    leftover is replaced.
    """
    with_backing = incremental(disks)
    for disk, capacity in zip(disks, capacities, strict=True):
        pool = _pool_for(conn, os.path.dirname(disk.path))
        name = os.path.basename(disk.path)
        pool.refresh(0)
        try:
            stale = pool.storageVolLookupByName(name)
        except libvirt.libvirtError:
            stale = None
        if stale is not None:
            log.warning("replacing a leftover disk on the target", extra={"fields": {"path": name}})
            stale.delete(0)
        pool.createXML(volume_xml(disk, capacity, with_backing), 0)


def remove_source_copies(disks: list[LocalDisk]) -> None:
    """Delete this host's copies of disks a finished migration moved (blocking).

    libvirt undefines the source domain but leaves its files; once the job
    has succeeded the target holds every block, and the source's overlays
    would only fill the disk. Base images are never touched.
    """
    for disk in disks:
        try:
            os.unlink(disk.path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning(
                "cannot remove a moved disk", extra={"fields": {"path": disk.path, "why": str(exc)}}
            )
            continue
        log.info("removed the source copy of a moved disk", extra={"fields": {"path": disk.path}})


def remove_target_copies(conn: Any, vm: str, disks: list[LocalDisk]) -> None:
    """Delete the images `prepare_on_target` made behind `conn`, after a failed job (blocking).

    Left alone when the target has a domain called `vm` (the VM may be there,
    on these very images) or when its libvirtd cannot tell.
    """
    try:
        conn.lookupByName(vm)
        return  # the VM is there: these are its disks
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            log.warning("target copies kept", extra={"fields": {"vm": vm, "why": str(exc)}})
            return
    for disk in disks:
        try:
            pool = conn.storagePoolLookupByTargetPath(os.path.dirname(disk.path))
            pool.refresh(0)
            pool.storageVolLookupByName(os.path.basename(disk.path)).delete(0)
        except libvirt.libvirtError as exc:
            log.warning(
                "cannot remove the target's copy of a disk",
                extra={"fields": {"path": disk.path, "why": str(exc)}},
            )
            continue
        log.info(
            "removed the target's copy of a disk after a failed migration",
            extra={"fields": {"vm": vm, "path": disk.path}},
        )


def _pool_for(conn: Any, directory: str) -> Any:
    """The target's storage pool over `directory`, created (transient) if there is none."""
    try:
        return conn.storagePoolLookupByTargetPath(directory)
    except libvirt.libvirtError:
        pass
    build = libvirt.VIR_STORAGE_POOL_CREATE_WITH_BUILD  # creates the directory if needed
    return conn.storagePoolCreateXML(pool_xml(directory), build)
