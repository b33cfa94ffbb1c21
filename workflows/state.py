"""The domain's authoritative state as workflows see it."""

from __future__ import annotations

from cosfail.cosprint import authority
from cosfail.cosprint.designation import Designation
from cosfail.workflows.engine import Engine


def current_state(eng: Engine) -> Designation:
    """Master and epoch from the ledger DB, initialised from the domain file once."""
    found = authority.read(eng.ledger.engine, eng.domain.control.name)
    if found is not None:
        return found
    return authority.initialise(eng.ledger.engine, eng.domain.control.name,
                                eng.domain.initial_master)
