"""The ledger's schema, moved forward by Alembic (scripts in workflows/migrations).

A new, empty ledger is brought to the newest schema by the first process that opens it;
a ledger an older cosfail made is upgraded only on the operator's word (`cosfail db
upgrade`), since processes of the older release may still be using it. One process at a
time migrates: PostgreSQL's advisory lock, or a lock on the SQLite file itself.
Ledgers from before Alembic carry a `schema_version` table instead of Alembic's
`alembic_version`; their version names the revision they are at.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from cosfail.cosprint.errors import CosfailError
from sqlalchemy import Connection, Engine, column, inspect, select, table, text

MIGRATIONS = Path(__file__).with_name("migrations")
# The revision this cosfail's code reads and writes (tests/test_ledger.py checks it is
# the newest script's).
HEAD = "0008"
# A pre-Alembic ledger's schema_version → the revision that made the same schema.
LEGACY = {1: "0001", 2: "0002"}
_ADVISORY_KEY = 0x636F7366  # "cosf": the key every cosfail migrator locks


class SchemaError(CosfailError):
    """The ledger's schema is not the one this cosfail works with."""


def revision(conn: Connection) -> str | None:
    """The ledger's revision; None for an empty database."""
    names = set(inspect(conn).get_table_names())
    if "alembic_version" in names:
        return conn.execute(select(column("version_num")).select_from(
            table("alembic_version"))).scalar()
    if "schema_version" in names:
        found = conn.execute(text("SELECT max(version) FROM schema_version")).scalar()
        return LEGACY.get(found, f"schema_version {found}")
    return None


def check(engine: Engine) -> None:
    """Create the schema on an empty ledger; refuse, naming the fix, any other that is
    not at HEAD."""
    where = engine.url.render_as_string(hide_password=True)
    with engine.connect() as conn:
        found = revision(conn)
    if found == HEAD:
        return
    with _one_migrator(engine) as conn:  # once a migrator at work (SQLite's DDL shows
        found = revision(conn)           # half-way) has finished
    if found == HEAD:
        return
    if found is None:
        upgrade(engine)
        return
    if found in _scripts():
        raise SchemaError(f"{where}: ledger schema is at revision {found}, this cosfail "
                          f"needs {HEAD}: run `cosfail db upgrade`")
    raise SchemaError(f"{where}: ledger schema {found} is newer than this cosfail "
                      f"knows ({HEAD}): upgrade cosfail")


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Migrate to HEAD (idempotent); returns the revisions before and after."""
    from alembic import command
    from alembic.config import Config

    with _one_migrator(engine) as conn:
        before = revision(conn)
        if before not in (None, *_scripts()):
            raise SchemaError(f"ledger schema {before} is newer than this cosfail "
                              f"knows ({HEAD}): upgrade cosfail")
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = conn
        if before is not None and "schema_version" in inspect(conn).get_table_names():
            command.stamp(config, before)
        command.upgrade(config, "head")
        after = revision(conn)
    assert after == HEAD, f"migrations end at {after}, code expects {HEAD}"
    return before, after


def upgrade_ledger(url: str) -> tuple[str | None, str]:
    from cosfail.workflows.ledger import engine_for

    return upgrade(engine_for(url))


@cache
def _scripts() -> tuple[str, ...]:
    from alembic.script import ScriptDirectory

    return tuple(s.revision for s in ScriptDirectory(str(MIGRATIONS)).walk_revisions())


@contextmanager
def _one_migrator(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that no other migrator holds at the same time."""
    if engine.dialect.name == "sqlite":
        # A lock file beside the ledger, never the ledger itself: closing any descriptor
        # of a file drops every fcntl lock this process holds on it, SQLite's included,
        # and then another process's last close deletes the WAL under our workers.
        with open(f"{engine.url.database}.migrate-lock", "ab") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            with engine.begin() as conn:
                yield conn
        return
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_KEY})
        yield conn
