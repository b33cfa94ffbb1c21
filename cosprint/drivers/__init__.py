"""Drivers: how cosfail starts, stops and reads a node's COSprint.

A node's `driver` setting names its driver in `REGISTRY`; the project ships the
reference driver, whose COSprint is a real local process (`cosprint.daemon`), and the
CUPS driver, whose COSprint is a real `cupsd` (`cosprint.drivers.cups`).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from cosfail.cosprint.domain import Domain
from cosfail.cosprint.driver import Driver
from cosfail.cosprint.errors import DriverError

# The name a node's `driver` setting gives -> the module and class of that driver,
# imported at first use: a process drives only the kinds its nodes run (the CUPS driver
# alone needs SQLAlchemy to import).
REGISTRY: dict[str, tuple[str, str]] = {
    "reference": ("cosfail.cosprint.drivers.reference", "ReferenceDriver"),
    "cups": ("cosfail.cosprint.drivers.cups", "CupsDriver"),
}


def driver_class(domain: Domain, node_name: str) -> type[Driver]:
    """The class of the driver `node_name` runs; an unknown node raises
    `UnknownNodeError`, an unknown driver `DriverError`."""
    kind = domain.node(node_name).driver
    try:
        module, name = REGISTRY[kind]
    except KeyError:
        raise DriverError(f"node {node_name}: unknown driver {kind!r}") from None
    cls: type[Driver] = getattr(importlib.import_module(module), name)
    return cls


def driver_for(domain: Domain, node_name: str) -> Driver:
    """The driver of `node_name`; an unknown node raises `UnknownNodeError`."""
    return driver_class(domain, node_name)(domain, node_name)


def spool_handoff(domain: Domain, source: str, here: str) -> tuple[Path, Path, str]:
    """Where `failover --with-spool` takes `source`'s pending jobs from, where it puts
    them on `here`, and the name suffix of the files to copy ("" for every file)."""
    return driver_class(domain, source).spool_handoff(domain, source, here)
