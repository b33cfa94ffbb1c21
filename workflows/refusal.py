"""A refusal: why a workflow will not start, as a value a planner returns.

A planner answers with its plan or a `Refusal`; the trigger raises `Refused` carrying
it, and the CLI (exit 2) and the API (422, with the code) report its reason as is.
"""

from __future__ import annotations

from dataclasses import dataclass

from cosfail.cosprint.errors import CosfailError

INVALID = "invalid"  # the request names something that cannot be: an unknown node, a role
REFUSED = "refused"  # the domain, as it is now, does not allow it
VETOED = "vetoed"  # the operator's pre-failover hook said no


@dataclass(frozen=True)
class Refusal:
    reason: str
    code: str = REFUSED


def invalid(reason: str) -> Refusal:
    return Refusal(reason, INVALID)


class Refused(CosfailError):
    """A trigger refused: nothing changed. Carries the planner's refusal."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal
