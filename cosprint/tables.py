"""The COSprint tables: six object tables, each row naming the server that hosts it.

SQLAlchemy Core (not the ORM): every bulk operation here is one statement per table.
`domain_pointer` holds the master and epoch the node's tables point at; restart-check
re-points it when the master changes.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

from cosfail.cosprint.database import open_engine
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    func,
    select,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.schema import CreateIndex, CreateTable

metadata = MetaData()


def _host() -> Column:
    return Column("host", String(40), nullable=False, index=True)


printers = Table(
    "printers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(80), nullable=False, unique=True),
    _host(),
    Column("device", String(200), nullable=False),
    Column("location", String(200), nullable=False, default=""),
)
queues = Table(
    "queues",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(80), nullable=False, unique=True),
    _host(),
    Column("printer_id", Integer, ForeignKey("printers.id"), nullable=False),
)
formats = Table(
    "formats",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(80), nullable=False, unique=True),
    _host(),
    Column("paper", String(40), nullable=False),
)
defaults = Table(
    "defaults",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(80), nullable=False, unique=True),
    _host(),
    Column("queue_id", Integer, ForeignKey("queues.id"), nullable=False),
    Column("format_id", Integer, ForeignKey("formats.id"), nullable=False),
)
default_locks = Table(
    "default_locks",
    metadata,
    Column("id", Integer, primary_key=True),
    _host(),
    Column("default_id", Integer, ForeignKey("defaults.id"), nullable=False),
    Column("locked_by", String(80), nullable=False),
)
resource_capabilities = Table(
    "resource_capabilities",
    metadata,
    Column("id", Integer, primary_key=True),
    _host(),
    Column("printer_id", Integer, ForeignKey("printers.id"), nullable=False),
    Column("capability", String(80), nullable=False),
    Column("value", String(200), nullable=False),
)
domain_pointer = Table(
    "domain_pointer",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("master", String(40), nullable=False),
    Column("epoch", Integer, nullable=False),
)

# Parents before children: the order to create, fill and copy them in.
OBJECT_TABLES: tuple[Table, ...] = (
    printers,
    queues,
    formats,
    defaults,
    default_locks,
    resource_capabilities,
)


def open_tables(url: str) -> Engine:
    """An engine on a node's tables, creating the schema if it is not there."""
    engine = open_engine(url, pragmas=("foreign_keys=ON", "busy_timeout=10000"))
    metadata.create_all(engine)
    return engine


@functools.cache
def sqlite_schema() -> str:
    """The schema as an SQLite script that creates only what is missing: a raw sqlite3
    connection completes a file with it, without an engine or `create_all`'s probes."""
    dialect = sqlite.dialect()
    parts = []
    for t in metadata.sorted_tables:
        parts.append(str(CreateTable(t, if_not_exists=True).compile(dialect=dialect)))
        parts += [str(CreateIndex(i, if_not_exists=True).compile(dialect=dialect))
                  for i in t.indexes]
    return ";\n".join(p.strip() for p in parts) + ";\n"


@contextmanager
def connect(url: str) -> Iterator[Connection]:
    engine = open_tables(url)
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def row_counts(conn: Connection) -> dict[str, int]:
    return {
        t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
        for t in OBJECT_TABLES
    }


def hosted_counts(conn: Connection) -> dict[str, int]:
    """How many objects each server hosts, over all six tables."""
    totals: dict[str, int] = {}
    for t in OBJECT_TABLES:
        for host, n in conn.execute(select(t.c.host, func.count()).group_by(t.c.host)):
            totals[host] = totals.get(host, 0) + n
    return totals


def rehost(conn: Connection, old_host: str, new_host: str) -> dict[str, int]:
    """Move every object of `old_host` to `new_host`: one UPDATE per table."""
    moved = {}
    for t in OBJECT_TABLES:
        result = conn.execute(update(t).where(t.c.host == old_host).values(host=new_host))
        moved[t.name] = result.rowcount
    return moved


def read_pointer(conn: Connection) -> tuple[str, int] | None:
    row = conn.execute(select(domain_pointer.c.master, domain_pointer.c.epoch)).first()
    return (row.master, row.epoch) if row else None


def write_pointer(conn: Connection, master: str, epoch: int) -> None:
    conn.execute(domain_pointer.delete())
    conn.execute(domain_pointer.insert().values(id=1, master=master, epoch=epoch))


def rows_digest(conn: Connection, tables: tuple[Table, ...] = OBJECT_TABLES) -> str:
    """sha256 over every row of `tables` in primary-key order: equal digests, equal data."""
    h = hashlib.sha256()
    for t in tables:
        h.update(t.name.encode())
        for row in conn.execute(select(t).order_by(*t.primary_key.columns)):
            h.update(repr(tuple(row)).encode())
    return h.hexdigest()
