"""Drivers: how cosfail starts, stops and reads a node's COSprint.

`driver_for` picks the one a node's `driver` setting names; the project ships the
reference driver, whose COSprint is a real local process (`cosprint.daemon`).
"""

from __future__ import annotations

from cosprint.domain import Domain
from cosprint.driver import Driver
from cosprint.errors import DriverError


def driver_for(domain: Domain, node_name: str) -> Driver:
    """The driver of `node_name`; an unknown node raises `UnknownNodeError`."""
    kind = domain.node(node_name).driver
    if kind == "reference":
        from cosprint.drivers.reference import ReferenceDriver

        return ReferenceDriver(domain, node_name)
    raise DriverError(f"node {node_name}: unknown driver {kind!r}")
