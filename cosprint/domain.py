"""The domain file (`domain.toml`): nodes, roles, coverage and the control plane.

Loading validates everything up front, so that no workflow ever starts on a domain it
would have to refuse half-way. Every violation is a `DomainFileError` whose one-line
message names the file, the entry and the problem.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from cosfail.cosprint import lease
from cosfail.cosprint.errors import DomainFileError, UnknownNodeError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# Names become queue names, directory names and SSH arguments: keep them boring.
NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,39}$"
_NAME_RE = re.compile(NAME_PATTERN)
DEFAULT_DOMAIN_FILE = "domain.toml"

Role = Literal["server", "bcs", "client"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SSHConfig(_Strict):
    host: str
    port: int = Field(default=22, ge=1, le=65535)
    user: str = "root"
    key_file: str
    known_hosts: str


class CupsSettings(_Strict):
    """`[node.cups]`: how the CUPS driver runs a node's cupsd (see cosprint/drivers/cups/)."""

    # Wrap every printer's device URI in the project's sink backend, which records each
    # job in var/sink/ instead of sending it to a device (demo and tests).
    sink: bool = False
    cupsd: str = "/usr/sbin/cupsd"
    server_bin: str = "/usr/lib/cups"  # the system's backends, filters and helpers
    user: str = "lp"  # cups-files.conf User/Group: cupsd refuses to run jobs as root
    group: str = "lp"
    # The job history a client polls its jobs in: each finished job's attributes kept
    # this many seconds, and at most max_jobs jobs, finished or not (cupsd.conf's
    # PreserveJobHistory and MaxJobs; the oldest finished job makes room first).
    job_history: int = Field(default=86400, ge=0)
    max_jobs: int = Field(default=500, ge=1)


class Hooks(_Strict):
    pre_failover: list[str] = []
    post_failover: list[str] = []


class Control(_Strict):
    name: str = "cosprint"
    broker: str = "redis://127.0.0.1:6379/0"
    ledger: str | None = None  # where domain files before `[ledger] url` named it
    api: str = "127.0.0.1:8700"
    token_file: str = "secrets/api.token"
    flower: str = "127.0.0.1:5555"
    flower_auth_file: str = "secrets/flower.auth"
    backup_interval: float = Field(default=300.0, gt=0)
    retention: int = Field(default=5, ge=1)
    auto_reclaim: bool = True
    step_expires: float = Field(default=30.0, gt=0)
    lock_lease: float = Field(default=600.0, gt=0)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return _check_name(v)


class LedgerSettings(_Strict):
    """`[ledger]`: the database of runs, steps and the domain's authority (master,
    epoch): a SQLite file on the control host, or PostgreSQL (`postgresql+psycopg://`)."""

    url: str = "sqlite:///ledger.db"


class Detect(_Strict):
    """`[detect]`: failure detection, and the guarded automatic failover (off by default)."""

    down_after: float = Field(default=10.0, gt=0)  # seconds both unreachable before down
    interval: float = Field(default=1.0, gt=0)  # seconds between two observations
    auto_failover: bool = False
    max_auto_per_hour: int = Field(default=1, ge=0)
    max_data_loss: float = Field(default=900.0, gt=0)  # newest verified snapshot's max age
    notify_command: list[str] = []  # argv, no shell; {node} and {state} substituted


class Lease(_Strict):
    """`[lease]`: how long a printing node prints on when it cannot read the ledger
    (cosprint/lease.py; docs/architecture.md, invariant 14)."""

    ttl: float = lease.DEFAULT_TTL
    failsafe: bool = True  # past the lease, while every peer confirms it (Patroni's rule)

    @field_validator("ttl")
    @classmethod
    def _keeps_the_invariant(cls, v: float) -> float:
        if why := lease.ttl_problem(v):
            raise ValueError(why)
        return v


class Node(_Strict):
    name: str
    role: Role
    home: str
    port: int = Field(ge=1, le=65535)
    master: bool = False
    host: str = "localhost"
    tables: str | None = None
    backup_area: str | None = None
    shared_spool: str | None = None
    driver: Literal["reference", "cups"] = "reference"
    cups: CupsSettings | None = None
    fence_command: list[str] = []
    ssh: SSHConfig | None = None

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return _check_name(v)


class Coverage(_Strict):
    bcs: str
    servers: list[str] = Field(min_length=1)


class DomainFile(_Strict):
    control: Control = Control()
    ledger: LedgerSettings = LedgerSettings()
    node: list[Node] = Field(min_length=1)
    coverage: list[Coverage] = []
    hooks: Hooks = Hooks()
    detect: Detect = Detect()
    lease: Lease = Lease()


def _check_name(v: str) -> str:
    if not _NAME_RE.fullmatch(v):
        raise ValueError(
            f"name {v!r} is not allowed (lower-case letter first, then a-z 0-9 _ -, "
            "at most 40 characters)"
        )
    return v


class Domain:
    """A validated domain, with paths resolved against the domain file's directory."""

    def __init__(self, path: Path, spec: DomainFile) -> None:
        self.path = path
        self.base = path.parent
        self.spec = spec
        self.control = spec.control
        self.nodes: dict[str, Node] = {n.name: n for n in spec.node}

    # ----- lookup -------------------------------------------------------------------
    def node(self, name: str) -> Node:
        try:
            return self.nodes[name]
        except KeyError:
            raise UnknownNodeError(
                f"{self.path}: unknown node {name!r} (known: {', '.join(self.nodes)})"
            ) from None

    def names(self, role: Role | None = None) -> list[str]:
        return [n.name for n in self.spec.node if role is None or n.role == role]

    @property
    def initial_master(self) -> str:
        return next(n.name for n in self.spec.node if n.master)

    def covering_bcs(self, server: str) -> list[str]:
        """The BCSs that cover `server`, in domain-file order."""
        return [c.bcs for c in self.spec.coverage if server in c.servers]

    def covered_servers(self, bcs: str) -> list[str]:
        return [s for c in self.spec.coverage if c.bcs == bcs for s in c.servers]

    # ----- paths --------------------------------------------------------------------
    def resolve(self, p: str) -> Path:
        return (self.base / os.path.expanduser(p)).resolve()

    def home(self, name: str) -> Path:
        return self.resolve(self.node(name).home)

    def tables_url(self, name: str) -> str:
        node = self.node(name)
        if node.tables:
            return resolve_sqlite_url(node.tables, self.base)
        return f"sqlite:///{self.home(name) / 'tables.db'}"

    def backup_area(self, name: str) -> Path:
        node = self.node(name)
        if node.backup_area:
            return self.resolve(node.backup_area)
        return self.home(name) / "backup"

    def spool_dir(self, name: str) -> Path:
        node = self.node(name)
        if node.shared_spool:
            return self.resolve(node.shared_spool)
        return self.home(name) / "spool"

    @property
    def ledger_url(self) -> str:
        return resolve_sqlite_url(self.control.ledger or self.spec.ledger.url, self.base)

    @property
    def broker_url(self) -> str:
        return os.environ.get("COSFAIL_BROKER", self.control.broker)

    def address(self, name: str) -> str:
        """The address node `name`'s services listen on."""
        host = self.node(name).host
        return "127.0.0.1" if host == "localhost" else host

    def service_url(self, name: str) -> str:
        return f"http://{self.address(name)}:{self.node(name).port}"

    def service_settings(self, name: str) -> dict[str, Any]:
        """All that node `name`'s cosprintd needs of this file, as JSON-ready values.

        The reference driver hands them to the daemon at start, so that its start (on the
        failover's critical path) need not import pydantic to parse this file again.
        """
        node = self.node(name)
        return {
            "domain": self.control.name,
            "domain_file": str(self.path),
            "node": name,
            "port": node.port,
            "listen": self.address(name),
            "home": str(self.home(name)),
            "spool": str(self.spool_dir(name)),
            "tables": self.tables_url(name),
            "ledger": self.ledger_url,
            "peers": {n: self.service_url(n) for n in self.nodes},
            "lease": {"ttl": self.spec.lease.ttl, "failsafe": self.spec.lease.failsafe},
        }


def resolve_sqlite_url(url: str, base: Path) -> str:
    """Make a relative SQLite path absolute against `base`; other URLs pass through."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        return prefix + str((base / url[len(prefix) :]).resolve())
    return url


def _cross_check(spec: DomainFile) -> str | None:
    """The reason the nodes and coverage do not fit together, or None."""
    if spec.control.ledger is not None and "url" in spec.ledger.model_fields_set:
        return "both [control] ledger and [ledger] url are set: keep [ledger] url only"
    seen: dict[str, int] = {}
    ports: dict[tuple[str, int], str] = {}
    for i, n in enumerate(spec.node):
        if n.name in seen:
            return f"node[{i}]: duplicate node name {n.name!r} (first at node[{seen[n.name]}])"
        seen[n.name] = i
        if (n.host, n.port) in ports:
            return f"node[{i}] {n.name!r}: port {n.port} already used by {ports[n.host, n.port]!r}"
        ports[n.host, n.port] = n.name
        if n.master and n.role != "server":
            return f"node[{i}] {n.name!r}: only a server can be master, not a {n.role}"
        if n.backup_area and n.role != "bcs":
            return f"node[{i}] {n.name!r}: backup_area belongs to a bcs, not a {n.role}"
        if n.cups is not None and n.driver != "cups":
            return f"node[{i}] {n.name!r}: [node.cups] needs driver = \"cups\""
        if n.driver == "cups" and n.shared_spool:
            return (f"node[{i}] {n.name!r}: a cupsd's spool cannot be shared with another "
                    "cupsd; leave shared_spool unset (failover --with-spool copies it)")
    masters = [n.name for n in spec.node if n.master]
    if not masters:
        return "no master: mark exactly one server with master = true"
    if len(masters) > 1:
        return f"two or more masters ({', '.join(masters)}): exactly one server is master"
    roles = {n.name: n.role for n in spec.node}
    for i, c in enumerate(spec.coverage):
        if c.bcs not in roles:
            return f"coverage[{i}]: unknown node {c.bcs!r}"
        if roles[c.bcs] != "bcs":
            return f"coverage[{i}]: {c.bcs!r} is a {roles[c.bcs]}, not a bcs"
        for s in c.servers:
            if s not in roles:
                return f"coverage[{i}]: unknown node {s!r}"
            if roles[s] != "server":
                return f"coverage[{i}]: {s!r} is a {roles[s]}, not a server"
    covered = {s for c in spec.coverage for s in c.servers}
    for n in spec.node:
        if n.role == "server" and n.name not in covered:
            return f"server {n.name!r} is covered by no bcs: add it to a [[coverage]] entry"
    return None


def _describe(loc: tuple[int | str, ...], raw: dict) -> str:
    """`node[2] 'cl1'.role` from a pydantic location, naming the entry when it can."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            # a key the file invented may hold anything, newlines included: quote it
            text = part if part.isidentifier() else repr(part)
            out += ("." if out else "") + text
    if len(loc) >= 2 and loc[0] == "node" and isinstance(loc[1], int):
        try:
            name = raw["node"][loc[1]].get("name")
        except (IndexError, AttributeError, TypeError):
            name = None
        if isinstance(name, str):
            out = out.replace(f"node[{loc[1]}]", f"node[{loc[1]}] {name!r}", 1)
    return out


def parse_domain(raw: dict, path: Path) -> Domain:
    try:
        spec = DomainFile.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        where = _describe(tuple(err["loc"]), raw)
        raise DomainFileError(f"{path}: {where}: {msg}") from None
    reason = _cross_check(spec)
    if reason:
        raise DomainFileError(f"{path}: {reason}")
    return Domain(path, spec)


def load_domain(path: str | Path | None = None) -> Domain:
    """Load `path`, else $COSFAIL_DOMAIN, else ./domain.toml."""
    p = Path(path or os.environ.get("COSFAIL_DOMAIN") or DEFAULT_DOMAIN_FILE).absolute()
    try:
        raw = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise DomainFileError(f"{p}: no such domain file") from None
    except tomllib.TOMLDecodeError as exc:
        raise DomainFileError(f"{p}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise DomainFileError(f"{p}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise DomainFileError(f"{p}: cannot read: {exc.strerror}") from None
    return parse_domain(raw, p)
