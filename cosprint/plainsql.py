"""The reads cosprintd makes before every act that matters, as plain SQL.

A cosprintd start is on the failover's critical path, and importing SQLAlchemy is most
of what a start costs. So on an SQLite file (the default, for both the node's tables and
the ledger) these queries run on the stdlib's `sqlite3`; on any other URL (PostgreSQL in
production) the same text runs through SQLAlchemy, imported only then. The tables they
read are defined once, in `cosprint.tables` and `cosprint.authority` (whose `read` runs
`AUTHORITY` too); tests/test_cosprintd.py checks that the two agree.
"""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

# cosprint.tables.OBJECT_TABLES, by name.
OBJECT_TABLE_NAMES = (
    "printers",
    "queues",
    "formats",
    "defaults",
    "default_locks",
    "resource_capabilities",
)

# The domain's authoritative master and epoch (cosprint.authority's domain_state).
AUTHORITY = "SELECT master, epoch FROM domain_state WHERE domain = :domain"

# How many objects :host hosts: a count on each table's host index, not a full GROUP BY.
HOSTED_BY = "SELECT " + " + ".join(
    f"(SELECT count(*) FROM {t} WHERE host = :host)" for t in OBJECT_TABLE_NAMES
)

# The host of queue :queue and the name of its printer.
QUEUE_ROUTE = (
    "SELECT q.host, p.name FROM queues AS q JOIN printers AS p ON q.printer_id = p.id "
    "WHERE q.name = :queue"
)

# Only the plain form of an SQLite file URL; anything else (query options, in-memory,
# percent-escapes) is left to SQLAlchemy, which knows every form.
_SQLITE_FILE = re.compile(r"sqlite:///([^?#%]+)")


def sqlite_file(url: str) -> Path | None:
    """The file of a plain `sqlite:///PATH` URL, None for anything else."""
    m = _SQLITE_FILE.fullmatch(url)
    if m is None or m.group(1) == ":memory:":
        return None
    return Path(m.group(1)).absolute()


def has_tables(path: Path, names: tuple[str, ...]) -> bool:
    """True if the SQLite file `path` exists and holds every table in `names`."""
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=rw", uri=True)) as conn:
            marks = ",".join("?" * len(names))
            sql = f"SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ({marks})"
            found = conn.execute(sql, names).fetchone()[0]
    except sqlite3.Error:
        return False
    return found == len(names)


class Database:
    """A database cosprintd reads, one query at a time on a fresh connection: a file
    renamed over an SQLite database (a snapshot import, a restored ledger) is seen at once.
    """

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._file = sqlite_file(url)
        self._engine: Any = None if self._file is not None else _engine(url, timeout)

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file behind the URL, None if it is no SQLite file."""
        if self._file is not None:
            return self._file
        u = self._engine.url
        if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
            return None
        return Path(u.database).absolute()

    @property
    def dialect(self) -> str:
        """`sqlite` or SQLAlchemy's name of the other database (`postgresql`)."""
        return "sqlite" if self._engine is None else str(self._engine.dialect.name)

    def execute(self, sql: str, params: dict[str, Any]) -> int:
        """Run one write in its own transaction; the number of rows it touched."""
        if self._engine is not None:
            from sqlalchemy import text

            with self._engine.begin() as conn:
                return int(conn.execute(text(sql), params).rowcount)
        uri = f"{self._file.as_uri()}?mode=rw"  # type: ignore[union-attr]
        with closing(sqlite3.connect(uri, uri=True, timeout=self.timeout)) as conn, conn:
            return conn.execute(sql, params).rowcount

    def first(self, sql: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
        """The first row of `sql`, None if it has none."""
        if self._engine is not None:
            from sqlalchemy import text

            with self._engine.connect() as conn:
                row = conn.execute(text(sql), params).first()
            return tuple(row) if row is not None else None
        # mode=rw: a file that vanished is an error, never a new empty database.
        uri = f"{self._file.as_uri()}?mode=rw"  # type: ignore[union-attr]
        with closing(sqlite3.connect(uri, uri=True, timeout=self.timeout)) as conn:
            return conn.execute(sql, params).fetchone()


def _engine(url: str, timeout: float) -> Any:
    from cosfail.cosprint.database import open_engine  # SQLAlchemy: only off an SQLite file

    return open_engine(url, pooled=False, busy_timeout=timeout, connect_timeout=2)
