"""Who hosted each server's objects, when, by which run, and what each move lost:
`cosfail history` and `GET /history`, from the ledger's hosting table (one row per
hosting change, docs/architecture.md §4) and the runs that made them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from cosfail.workflows.engine import Engine
from cosfail.workflows.refusal import Refused, invalid


@dataclass(frozen=True)
class Move:
    """One hosting change: `server`'s objects went from `moved_from` to `hosted_by`."""

    epoch: int
    server: str
    moved_from: str
    hosted_by: str
    since: float
    run_id: str
    workflow: str | None  # None: the run is no longer in the ledger
    triggered_by: str | None
    reason: str | None
    # Seconds of the master's changes the move lost (the restored snapshot's age when it
    # was planned); 0.0 when the master's live tables were used; None when unknown.
    data_loss: float | None
    snapshot: str | None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def data_loss(plan: dict[str, Any]) -> tuple[float | None, str | None]:
    """(seconds of changes lost, the snapshot restored) for a hosting move's plan."""
    if plan.get("snapshot"):
        return plan.get("snapshot_age"), plan["snapshot"]
    return (0.0, None) if "snapshot" in plan else (None, None)


def moves(hosting: list[dict[str, Any]], runs: dict[str, dict[str, Any]]) -> list[Move]:
    """The hosting rows, oldest first, each with what its run says about it."""
    out = []
    for h in hosting:
        run = runs.get(h["run_id"])
        loss, snapshot = data_loss(run["params"].get("plan") or {}) if run else (None, None)
        out.append(Move(
            epoch=h["epoch"], server=h["server"], moved_from=h["moved_from"],
            hosted_by=h["hosted_by"], since=h["since"], run_id=h["run_id"],
            workflow=run["workflow"] if run else None,
            triggered_by=run["triggered_by"] if run else None,
            reason=run["reason"] if run else None, data_loss=loss, snapshot=snapshot))
    return out


def history(eng: Engine, server: str | None = None) -> list[Move]:
    """Every hosting change (of `server`'s objects, if given) the ledger records."""
    if server is not None and eng.domain.node(server).role != "server":
        raise Refused(invalid(f"{server} is a {eng.domain.node(server).role}, not a "
                              "server: only servers' objects move"))
    rows = eng.ledger.hosting_history(server)
    return moves(rows, eng.ledger.runs_by_id(sorted({h["run_id"] for h in rows})))
