"""The trigger API (docs/architecture.md §6): thin routes over workflows, bearer-token auth."""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict
from typing import Annotated, Any

from cosfail.cosprint.domain import Domain
from cosfail.cosprint.errors import CosfailError
from cosfail.workers.app import configure
from cosfail.workflows import ledger as L
from cosfail.workflows.engine import Engine
from cosfail.workflows.refusal import Refused
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import BaseModel, ConfigDict


class FailoverBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    server: str
    to: str | None = None
    best: bool = False
    force: bool = False
    with_spool: bool = False
    dry_run: bool = False
    reason: str = ""


class MoveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    server: str
    to: str | None = None
    dry_run: bool = False
    reason: str = ""


class SwitchoverBody(MoveBody):
    at: str | None = None  # ISO 8601: schedule it for then (workflows/schedule.py)


class ReasonBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = ""


def read_token(domain: Domain) -> str:
    path = domain.resolve(domain.control.token_file)
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise CosfailError(f"{path}: cannot read the API token ({exc.strerror})") from None
    if len(token) < 16:
        raise CosfailError(f"{path}: the API token is too short (16 characters at least)")
    return token


_bearer = HTTPBearer(auto_error=False)
_UNAUTHORISED = {"detail": "missing or wrong bearer token"}
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _token_matches(credentials: str | None, token: str) -> bool:
    return credentials is not None and secrets.compare_digest(credentials.encode(),
                                                              token.encode())


def caller(request: Request,
           cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
    """Who calls: the token's name, once the bearer token matches; else 401."""
    token: str = request.app.state.token
    if not _token_matches(cred.credentials if cred else None, token):
        raise HTTPException(401, _UNAUTHORISED["detail"], headers=_CHALLENGE)
    return "api:token"


Caller = Annotated[str, Depends(caller)]


def create_app(domain: Domain) -> FastAPI:
    configure(domain)
    eng = Engine(domain)
    token = read_token(domain)
    app = FastAPI(title="cosfail", version="0.1.0",
                  description="Failover for COSprint print domains")
    app.state.token = token
    public = {"/healthz", app.openapi_url, app.docs_url, app.redoc_url,
              app.swagger_ui_oauth2_redirect_url}

    @app.middleware("http")
    async def _auth_first(request: Request, call_next):  # type: ignore[no-untyped-def]
        """The token is checked before anything else: FastAPI parses a request's body
        before it resolves the `caller` dependency, so without this an anonymous caller
        with a malformed body got a 400/422 describing it instead of a 401."""
        if request.url.path not in public:
            scheme, credentials = get_authorization_scheme_param(
                request.headers.get("Authorization"))
            if scheme.lower() != "bearer" or not _token_matches(credentials or None, token):
                return JSONResponse(_UNAUTHORISED, status_code=401, headers=_CHALLENGE)
        return await call_next(request)

    @app.exception_handler(L.LockHeld)
    async def _held(_req: Request, exc: L.LockHeld) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "holder": exc.holder}, status_code=409)

    @app.exception_handler(L.UnknownRun)
    @app.exception_handler(L.UnknownScheduled)
    async def _unknown(_req: Request, exc: L.LedgerError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(L.LedgerError)
    async def _ledger(_req: Request, exc: L.LedgerError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(Refused)
    async def _refused(_req: Request, exc: Refused) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "code": exc.refusal.code}, status_code=422)

    @app.exception_handler(CosfailError)
    async def _bad(_req: Request, exc: CosfailError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    def start(wf: Any, request: Any, who: str, reason: str, dry_run: bool) -> dict[str, Any]:
        from cosfail.workflows import trigger

        planned = trigger.plan(eng, wf, request)
        # An operator's run goes ahead in a paused domain, and is told it is paused.
        paused = eng.ledger.paused()
        if dry_run:
            return {"run_id": None, "plan": asdict(planned.plan), "paused": paused}
        return {"run_id": trigger.start(eng, planned, who, reason).run_id,
                "plan": asdict(planned.plan), "paused": paused}

    @app.post("/backup", status_code=202)
    def backup(who: Caller, body: ReasonBody | None = None) -> dict[str, Any]:
        from cosfail.workflows import trigger
        from cosfail.workflows.backup import BACKUP, BackupRequest

        started = trigger.run(eng, BACKUP, BackupRequest(), who, (body or ReasonBody()).reason)
        if started.state == L.SKIPPED:
            holder = eng.ledger.run(started.run_id)["params"]["holder"]
            raise L.LockHeld(L.BACKUP_LOCK, holder)
        return {"run_id": started.run_id}

    @app.post("/failover", status_code=202)
    def failover(body: FailoverBody, who: Caller) -> dict[str, Any]:
        from cosfail.workflows.failover import FAILOVER
        from cosfail.workflows.plan import FailoverRequest

        req = FailoverRequest(server=body.server, to=body.to, best=body.best,
                              force=body.force, with_spool=body.with_spool)
        return start(FAILOVER, req, who, body.reason, body.dry_run)

    @app.post("/switchover", status_code=202)
    def switchover(body: SwitchoverBody, who: Caller) -> dict[str, Any]:
        from cosfail.workflows.plan import MoveRequest
        from cosfail.workflows.schedule import parse_at, schedule
        from cosfail.workflows.switchover import SWITCHOVER

        if not body.to:
            raise CosfailError("switchover needs `to`: the BCS to move to")
        if body.at is None:
            return start(SWITCHOVER, MoveRequest(body.server, body.to), who, body.reason,
                         body.dry_run)
        entry, now_refused = schedule(eng, MoveRequest(body.server, body.to),
                                      parse_at(body.at, time.time()), who, body.reason)
        return {"scheduled": entry, "refused_now": now_refused}

    @app.get("/scheduled")
    def scheduled(who: Caller, all: bool = False) -> list[dict[str, Any]]:  # noqa: A002
        return eng.ledger.scheduled(None if all else (L.PENDING, L.DUE))

    @app.delete("/scheduled/{sched_id}")
    def cancel(sched_id: str, who: Caller) -> dict[str, Any]:
        return eng.ledger.cancel_scheduled(sched_id, who)

    @app.post("/reclaim", status_code=202)
    def reclaim(body: MoveBody, who: Caller) -> dict[str, Any]:
        from cosfail.workflows.plan import MoveRequest
        from cosfail.workflows.reclaim import RECLAIM

        return start(RECLAIM, MoveRequest(body.server), who, body.reason, body.dry_run)

    @app.post("/failback", status_code=202)
    def failback(body: MoveBody, who: Caller) -> dict[str, Any]:
        from cosfail.workflows.plan import MoveRequest
        from cosfail.workflows.switchover import FAILBACK

        return start(FAILBACK, MoveRequest(body.server), who, body.reason, body.dry_run)

    @app.post("/pause")
    def pause(who: Caller, body: ReasonBody | None = None) -> dict[str, Any]:
        pause, began = eng.ledger.pause(who, (body or ReasonBody()).reason)
        return {"paused": pause, "began": began}

    @app.post("/unpause")
    def unpause(who: Caller) -> dict[str, Any]:
        return {"ended": eng.ledger.unpause()}

    @app.get("/status")
    def status(who: Caller) -> dict[str, Any]:
        from cosfail.workflows.status import domain_status

        return domain_status(eng.domain, eng)

    @app.get("/history")
    def history(who: Caller, server: str | None = None) -> list[dict[str, Any]]:
        from cosfail.workflows.history import history

        return [m.as_json() for m in history(eng, server)]

    @app.get("/runs")
    def runs(who: Caller, limit: int = 20) -> list[dict[str, Any]]:
        return eng.ledger.runs(min(max(limit, 1), 500))

    @app.get("/runs/{run_id}")
    def run(run_id: str, who: Caller) -> dict[str, Any]:
        return {**eng.ledger.run(run_id),
                "steps": [s.as_json() for s in eng.ledger.steps(run_id)]}

    @app.post("/runs/{run_id}/resume", status_code=202)
    def resume(run_id: str, who: Caller) -> dict[str, Any]:
        from cosfail.workflows.liveness import alive_workers

        eng.ledger.run(run_id)
        eng.reap_lost_steps(run_id, alive=alive_workers())
        return {"run_id": run_id, "from_step": eng.resume(run_id)}

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics(who: Caller) -> str:
        from cosfail.workflows.metrics import render

        return render(eng)

    return app
