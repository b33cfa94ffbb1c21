"""The domain's authoritative state: current master and epoch, kept in the ledger DB.

A node's designation file is its copy; where the two disagree, this one wins. COSprint
reads it at start (and while it runs) so that a node with a stale epoch never serves
as master, whatever the timing.
"""

from __future__ import annotations

import time

from cosfail.cosprint import plainsql
from cosfail.cosprint.designation import Designation
from cosfail.cosprint.errors import StaleEpochError
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError

metadata = MetaData()

domain_state = Table(
    "domain_state",
    metadata,
    Column("domain", String(40), primary_key=True),
    Column("master", String(40), nullable=False),
    Column("epoch", Integer, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Each printing node's lease (cosprint/lease.py): times by the database server's clock.
serving_lease = Table(
    "serving_lease",
    metadata,
    Column("domain", String(40), primary_key=True),
    Column("node", String(40), primary_key=True),
    Column("epoch", Integer, nullable=False),
    Column("renewed_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)

# What a node did while it could not reach the ledger, recorded once it could again.
lease_events = Table(
    "lease_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("domain", String(40), nullable=False),
    Column("node", String(40), nullable=False),
    Column("epoch", Integer, nullable=False),
    Column("since", Float, nullable=False),  # the node's own clock, as it reports
    Column("until", Float, nullable=False),
    Column("outcome", String(200), nullable=False),
)


def read(engine: Engine, domain: str) -> Designation | None:
    # The same SQL as cosprintd's, which runs it without SQLAlchemy on SQLite.
    with engine.connect() as conn:
        row = conn.execute(text(plainsql.AUTHORITY), {"domain": domain}).first()
    return Designation(row.master, row.epoch) if row else None


def initialise(engine: Engine, domain: str, master: str) -> Designation:
    """Record epoch 1 with the domain file's master, unless a state already exists."""
    metadata.create_all(engine)
    try:
        with engine.begin() as conn:
            conn.execute(
                domain_state.insert().values(
                    domain=domain, master=master, epoch=1, updated_at=time.time()
                )
            )
    except IntegrityError:
        pass
    current = read(engine, domain)
    assert current is not None
    return current


def advance(conn: Connection, domain: str, expected: Designation,
            new: Designation) -> Designation:
    """Compare-and-set: move from `expected` to `new`; idempotent when already at `new`.
    In the caller's transaction, so that what else records the change commits with it."""
    if new.epoch <= expected.epoch:
        raise ValueError(f"new epoch {new.epoch} must be above {expected.epoch}")
    result = conn.execute(
        update(domain_state)
        .where(
            domain_state.c.domain == domain,
            domain_state.c.master == expected.master,
            domain_state.c.epoch == expected.epoch,
        )
        .values(master=new.master, epoch=new.epoch, updated_at=time.time())
    )
    if result.rowcount == 1:
        return new
    row = conn.execute(text(plainsql.AUTHORITY), {"domain": domain}).first()
    current = Designation(row.master, row.epoch) if row else None
    if current == new:
        return new
    raise StaleEpochError(
        f"domain {domain!r} is at {current}, not {expected}: cannot move to {new}"
    )
