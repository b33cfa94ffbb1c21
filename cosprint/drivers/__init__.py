"""Drivers: how cosfail starts, stops and reads a node's COSprint.

`driver_for` picks the one a node's `driver` setting names; the project ships the
reference driver, whose COSprint is a real local process (`cosprint.daemon`), and the
CUPS driver, whose COSprint is a real `cupsd` (`cosprint.drivers.cups`).
"""

from __future__ import annotations

from pathlib import Path

from cosprint.domain import Domain
from cosprint.driver import Driver
from cosprint.errors import DriverError


def driver_for(domain: Domain, node_name: str) -> Driver:
    """The driver of `node_name`; an unknown node raises `UnknownNodeError`."""
    kind = domain.node(node_name).driver
    if kind == "reference":
        from cosprint.drivers.reference import ReferenceDriver

        return ReferenceDriver(domain, node_name)
    if kind == "cups":
        from cosprint.drivers.cups import CupsDriver

        return CupsDriver(domain, node_name)
    raise DriverError(f"node {node_name}: unknown driver {kind!r}")


def spool_handoff(domain: Domain, source: str, here: str) -> tuple[Path, Path, str]:
    """Where `failover --with-spool` takes `source`'s pending jobs from, where it puts
    them on `here`, and the name suffix of the files to copy ("" for every file)."""
    if domain.node(source).driver == "cups":
        from cosprint.drivers.cups import spool_handoff as cups_handoff

        return cups_handoff(domain, source, here)
    from cosprint.daemon.spool import JOB_SUFFIX

    return domain.spool_dir(source), domain.spool_dir(here), JOB_SUFFIX
