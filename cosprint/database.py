"""The one way cosfail opens a SQLAlchemy engine, on a ledger or on a node's tables: what
each backend needs, said once.

SQLite is a file: its settings are pragmas run on each new connection, and a process
that must not keep the file open between uses (a cosprintd, a CUPS sync) opens one per
use. A server (PostgreSQL) can drop a pooled connection (restarted, failed over), so
every connection is pinged on checkout; `connect_timeout` bounds a connect to one that
is down, so that a read fails in seconds instead of hanging a start.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.pool import NullPool

SERVER_TIMEOUT = 10  # seconds to connect to, or to get an answer's TCP ack from, a server


def open_engine(url: str, *, pragmas: Sequence[str] = (), pooled: bool = True,
                busy_timeout: float | None = None,
                connect_timeout: int | None = None) -> Engine:
    """An engine on `url`. SQLite: `pragmas` (`"busy_timeout=10000"`, ...) on every
    connection, `pooled=False` for a connection per use, `busy_timeout` for sqlite3's
    own wait on a locked file. A server: pinged on checkout, `connect_timeout` seconds
    (SERVER_TIMEOUT by default) at most to connect or to have a request acknowledged
    (PostgreSQL)."""
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        kw: dict[str, Any] = {} if pooled else {"poolclass": NullPool}
        if busy_timeout is not None:
            kw["connect_args"] = {"timeout": busy_timeout}
        engine = create_engine(url, **kw)
        if pragmas:
            event.listen(engine, "connect", partial(_run_pragmas, tuple(pragmas)))
        return engine
    args: dict[str, Any] = {}
    if backend.startswith("postgresql"):
        # A cut link loses packets without an error: without tcp_user_timeout a query on
        # a pooled connection waits out the kernel's retransmissions (about 15 minutes).
        limit = connect_timeout or SERVER_TIMEOUT
        args = {"connect_timeout": limit, "tcp_user_timeout": limit * 1000}
    return create_engine(url, pool_pre_ping=True, connect_args=args)


def _run_pragmas(pragmas: tuple[str, ...], dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    for pragma in pragmas:
        cur.execute(f"PRAGMA {pragma}")
    cur.close()
