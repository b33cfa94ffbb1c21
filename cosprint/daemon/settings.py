"""What a start of the daemon is handed, and the databases it names, opened as cheaply
as their URL allows (on SQLite files: the stdlib only)."""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cosfail.cosprint import lease, plainsql
from cosfail.cosprint.errors import CosfailError

TABLES_TIMEOUT = 10.0  # seconds an SQLite read waits on a writer's lock


@dataclass(frozen=True)
class Settings:
    """What the daemon needs of the domain file: `Domain.service_settings`, as read back."""

    domain: str
    domain_file: Path
    node: str
    port: int
    home: Path
    spool: Path
    tables: str
    ledger: str
    peers: dict[str, str]  # node name -> its service URL
    listen: str = "127.0.0.1"  # the address it serves on: its host's own
    lease_ttl: float = lease.DEFAULT_TTL
    failsafe: bool = True

    @classmethod
    def from_json(cls, raw: bytes) -> Settings:
        try:
            d = json.loads(raw)
        except ValueError as exc:
            raise CosfailError(f"settings are not JSON: {exc}") from None
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: Any) -> Settings:
        try:
            peers = d["peers"]
            settings = cls(
                domain=str(d["domain"]),
                domain_file=Path(d["domain_file"]),
                node=str(d["node"]),
                port=int(d["port"]),
                home=Path(d["home"]),
                spool=Path(d["spool"]),
                tables=str(d["tables"]),
                ledger=str(d["ledger"]),
                peers={str(k): str(v) for k, v in peers.items()},
                listen=str(d.get("listen", "127.0.0.1")),
                lease_ttl=float(d.get("lease", {}).get("ttl", lease.DEFAULT_TTL)),
                failsafe=bool(d.get("lease", {}).get("failsafe", True)),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CosfailError(f"malformed settings: {type(exc).__name__} {exc}") from None
        return settings


@functools.cache
def with_packages() -> None:
    """Make installed packages importable. The reference driver runs the daemon with
    `python -S`: processing site-packages (.pth files) is two thirds of a bare
    interpreter's start, and a start on SQLite files needs no package."""
    if sys.flags.no_site:
        import site

        site.main()


def open_database(url: str, timeout: float) -> plainsql.Database:
    if plainsql.sqlite_file(url) is None:
        with_packages()  # SQLAlchemy reads any other URL
    return plainsql.Database(url, timeout)


def open_tables(url: str) -> plainsql.Database:
    """The node's tables, their schema created first on a fresh node."""
    path = plainsql.sqlite_file(url)
    if path is None or not plainsql.has_tables(path, plainsql.OBJECT_TABLE_NAMES):
        with_packages()
        from cosfail.cosprint import tables  # SQLAlchemy: the schema has one definition

        tables.open_tables(url).dispose()
    return open_database(url, TABLES_TIMEOUT)
