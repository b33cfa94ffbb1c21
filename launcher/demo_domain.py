"""The demo domain: what `cosfail init-demo DIR` writes.

`init_demo` lays out a complete domain on one machine: `DIR/domain.toml`, a home per
node (`nodes/<name>` with `etc/`, `var/`, `spool/`, and `backup/` for a BCS), the
control plane's secrets (`secrets/`, mode 0700, files 0600), and the domain tables:
realistic, referentially consistent printers, queues, formats, defaults, locks and
capabilities spread over the servers. Every node holds a copy of the master's tables
and the designation `srv1@1`.

The tables are generated once, in one transaction, and the SQLite file is then copied
to the other nodes, so that 100 000 objects take a few seconds. `domain.toml` is written
last: a run that fails half-way leaves no domain behind and can simply be run again.

It is the launcher's, not cosprint's: no running domain reads it; it makes up the
domain that the demo, `cosfail local`, the tests and the benchmarks start.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import socket
import tomllib
from pathlib import Path
from typing import Any, Literal

from cosfail.cosprint import designation, tables
from cosfail.cosprint.designation import Designation
from cosfail.cosprint.domain import DEFAULT_DOMAIN_FILE, Control, parse_domain, resolve_sqlite_url
from cosfail.cosprint.errors import CosfailError, DomainFileError
from cosfail.cosprint.fsutil import atomic_copy, atomic_write_bytes, fsync_dir
from cosfail.launcher.hosts import (
    CONTROL,
    HOST_PORT,
    LAB_FILE,
    LAB_POSTGRES_PORT,
    Lab,
    plan_lab,
    write_host_keys,
)
from sqlalchemy.exc import SQLAlchemyError

DOMAIN_NAME = "demo"
MASTER = "srv1"
EPOCH = 1
DEFAULT_LEDGER = "sqlite:///ledger.db"
TOKEN_NAME = "api.token"  # in the control plane's secrets directory (_secrets_dir)
FLOWER_AUTH_NAME = "flower.auth"
FLOWER_USER = "cosfail"
TABLES_FILE = "tables.db"  # Domain.tables_url's default, under the node's home
SEED = 20240601  # the demo is the same every time it is written

Coverage = Literal["one", "each"]
DriverKind = Literal["reference", "cups"]
# Objects when none are asked for: a CUPS demo makes one lpadmin call per printer and
# class at every change of hosting, so it stays small.
DEFAULT_OBJECTS = {"reference": 1000, "cups": 60}


class DemoError(CosfailError):
    """init-demo refused its arguments or its target directory."""


# --------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------


def init_demo(
    directory: Path,
    *,
    servers: int = 1,
    bcs: int = 1,
    clients: int = 2,
    objects: int | None = None,
    coverage: Coverage = "one",
    base_port: int | None = None,
    broker: str | None = None,
    ledger: str | None = None,
    driver: DriverKind = "reference",
    hosts: bool = False,
    device: str | None = None,
) -> Path:
    """Write `directory/domain.toml` and every node's home; return the domain file path.

    Nodes are `srv1..srvN` (srv1 is master), `bcs1..bcsM`, `cl1..clK`. With
    `coverage="one"` every BCS covers every server; with `"each"` server i is covered by
    BCS ((i-1) % M) + 1. Ports are `base_port`, `base_port+1`, ... (nodes, then API, then
    Flower, then the broker's), or free ports of this machine when `base_port` is None.
    Without `broker`, the domain has a broker of its own on that last port (`local up`
    starts a redis-server there): never a shared Redis another domain uses.

    `driver="cups"` makes every node's COSprint a real cupsd (servers and BCSs) or a
    client.conf (clients), its printers behind the project's sink backend; `objects`
    defaults to 1000, or 60 with CUPS. With `device` (a URI: a real printer, such as an
    IPP one), every printer's device is that printer, and no sink stands before it.

    `hosts=True` makes every node, and the control plane, a host of its own
    (launcher/hosts.py: `DIR/lab.json`, homes under `hosts/<name>`): each node has its
    address, its port 6310 and its sshd, reached over SFTP with verified host keys; the
    broker, API, Flower and a PostgreSQL ledger listen on the control host's address.
    """
    if driver not in DEFAULT_OBJECTS:
        raise DemoError(f"driver: want 'reference' or 'cups', not {driver!r}")
    if objects is None:
        objects = DEFAULT_OBJECTS[driver]
    _check_args(servers, bcs, clients, objects, coverage, base_port, broker, ledger)
    if device is not None and not re.fullmatch(r"[a-z][a-z0-9+.-]*://\S+", device):
        raise DemoError(f"device: want a printer's URI (ipp://host:port/path), not {device!r}")
    directory = Path(directory).absolute()
    domain_file = directory / DEFAULT_DOMAIN_FILE
    if directory.exists() and not directory.is_dir():
        raise DemoError(f"{directory}: not a directory")
    if os.path.lexists(domain_file):
        raise DemoError(
            f"{domain_file}: a domain is already there; choose another directory "
            "or remove it first"
        )
    srv = [f"srv{i}" for i in range(1, servers + 1)]
    bcss = [f"bcs{i}" for i in range(1, bcs + 1)]
    cls = [f"cl{i}" for i in range(1, clients + 1)]
    roles = {**dict.fromkeys(srv, "server"), **dict.fromkeys(bcss, "bcs"),
             **dict.fromkeys(cls, "client")}
    names = list(roles)
    lab = plan_lab(str(directory), [CONTROL, *names]) if hosts else None
    if lab is not None:
        if driver != "reference":
            raise DemoError("--hosts runs the reference cosprintd on every host; "
                            "the CUPS driver runs only in a loopback domain")
        control_address = lab.host(CONTROL).address
        if ledger is None:
            ledger = f"postgresql+psycopg://postgres@{control_address}:{LAB_POSTGRES_PORT}/cosfail"
        elif ledger.startswith("sqlite"):
            raise DemoError("--hosts needs a ledger every host reaches over the network "
                            "(postgresql+psycopg://...), not a SQLite file on one of them")
    ledger_url = resolve_sqlite_url(DEFAULT_LEDGER if ledger is None else ledger, directory)
    if ledger_url.startswith("sqlite:///") and os.path.lexists(ledger_url[len("sqlite:///"):]):
        # its authoritative master and epoch would overrule the new domain's srv1@1
        raise DemoError(
            f"{ledger_url[len('sqlite:///'):]}: a ledger is already there; "
            "choose another directory or ledger, or remove it first"
        )

    if lab is not None:
        ports = [HOST_PORT] * len(names) + [8700, 5555, 6379]
    elif base_port is None:
        ports = _free_ports(len(names) + 3)
    else:
        ports = list(range(base_port, base_port + len(names) + 3))
    node_ports = dict(zip(names, ports, strict=False))
    api_port, flower_port, broker_port = ports[-3:]
    if broker is None:
        broker = f"redis://{control_address if lab else '127.0.0.1'}:{broker_port}/0"

    if coverage == "one":
        cover = [(b, list(srv)) for b in bcss]
    else:
        by_bcs: dict[str, list[str]] = {b: [] for b in bcss}
        for i, s in enumerate(srv):
            by_bcs[bcss[i % bcs]].append(s)
        cover = [(b, ss) for b, ss in by_bcs.items() if ss]

    text = _domain_toml(
        roles=roles,
        ports=node_ports,
        cover=cover,
        broker=broker,
        ledger=DEFAULT_LEDGER if ledger is None else ledger,
        api=f"{control_address if lab else '127.0.0.1'}:{api_port}",
        flower=f"{control_address if lab else '127.0.0.1'}:{flower_port}",
        lab=lab,
        summary=f"{servers} server(s), {bcs} bcs, {clients} client(s), {objects} objects, "
        f"coverage {coverage!r}" + (f", driver {driver!r}" if driver != "reference" else ""),
        driver=driver,
        sink=device is None,
    )
    # Validate before anything is written: the file must load as it is.
    try:
        parse_domain(tomllib.loads(text), domain_file)
    except (DomainFileError, ValueError) as exc:
        raise DemoError(f"{domain_file}: the demo domain would not load: {exc}") from None

    try:
        directory.mkdir(parents=True, exist_ok=True)
        homes = {n: directory / _home(n, lab) for n in names}
        for n, home in homes.items():
            for sub in ("etc", "var", "spool") + (("backup",) if roles[n] == "bcs" else ()):
                (home / sub).mkdir(parents=True, exist_ok=True)
        _write_secrets(directory, lab)
        _write_tables(directory, homes, srv, objects, device)
        if lab is not None:
            write_host_keys(directory, lab, names)
            lab.save(directory / LAB_FILE)
        here = Designation(MASTER, EPOCH)
        for home in homes.values():
            designation.write(home / designation.DESIGNATION, here)
            designation.write(home / designation.LAST_RUNNING, here)
        atomic_write_bytes(domain_file, text.encode())  # last: the domain now exists
    except OSError as exc:
        where = exc.filename or directory
        raise DemoError(f"{where}: cannot write the demo domain: {exc.strerror}") from None
    except SQLAlchemyError as exc:
        reason = str(exc.orig if getattr(exc, "orig", None) else exc).splitlines()[0]
        raise DemoError(f"{directory}: cannot write the demo tables: {reason}") from None
    return domain_file


def _check_args(
    servers: Any, bcs: Any, clients: Any, objects: Any, coverage: Any,
    base_port: Any, broker: Any, ledger: Any,
) -> None:
    def whole(name: str, v: Any, low: int) -> None:
        if not isinstance(v, int) or isinstance(v, bool):
            raise DemoError(f"{name}: want a whole number, not {v!r}")
        if v < low:
            raise DemoError(f"{name}: must be at least {low}, not {v}")

    whole("servers", servers, 1)
    whole("bcs", bcs, 1)
    whole("clients", clients, 0)
    whole("objects", objects, 6 * servers)  # one row of each of the six tables per server
    if coverage not in ("one", "each"):
        raise DemoError(f"coverage: want 'one' or 'each', not {coverage!r}")
    if base_port is not None:
        whole("base_port", base_port, 1)
        last = base_port + servers + bcs + clients + 1
        if last > 65535:
            raise DemoError(f"base_port: {base_port} leaves no room for every port (up to {last})")
    for name, url in (("broker", broker), ("ledger", ledger)):
        if url is not None and (not isinstance(url, str) or not url.strip()):
            raise DemoError(f"{name}: want a URL, not {url!r}")


def _free_ports(n: int) -> list[int]:
    """`n` distinct ports free on 127.0.0.1 now (all held open while they are picked)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# --------------------------------------------------------------------------------------
# domain.toml
# --------------------------------------------------------------------------------------


def _q(s: str) -> str:
    """A TOML basic string. JSON's escapes are TOML's, except that DEL must be escaped."""
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def _domain_toml(
    *,
    roles: dict[str, str],
    ports: dict[str, int],
    cover: list[tuple[str, list[str]]],
    broker: str,
    ledger: str,
    api: str,
    flower: str,
    summary: str,
    driver: DriverKind = "reference",
    lab: Lab | None = None,
    sink: bool = True,
) -> str:
    defaults = Control()
    lines = [
        "# COSprint demo domain, written by `cosfail init-demo`.",
        f"# {summary}.",
        "# Paths are relative to this file's directory.",
        "",
        "[control]",
        f"name = {_q(DOMAIN_NAME)}",
        f"broker = {_q(broker)}",
        f"api = {_q(api)}",
        f"token_file = {_q(_secrets_dir(lab) + '/' + TOKEN_NAME)}",
        f"flower = {_q(flower)}",
        f"flower_auth_file = {_q(_secrets_dir(lab) + '/' + FLOWER_AUTH_NAME)}",
        f"backup_interval = {float(defaults.backup_interval)!r}",
        f"retention = {int(defaults.retention)}",
        "",
        "[ledger]",
        f"url = {_q(ledger)}",
    ]
    for name, role in roles.items():
        lines += ["", "[[node]]", f"name = {_q(name)}", f"role = {_q(role)}"]
        if name == MASTER:
            lines.append("master = true")
        lines += [f"home = {_q(_home(name, lab))}", f"port = {ports[name]}"]
        if lab is not None:
            address = lab.host(name).address
            # Each host's processes run with HOME = its directory: "~" is the host's own.
            lines += [f"host = {_q(address)}", "", "[node.ssh]", f"host = {_q(address)}",
                      'key_file = "~/.ssh/id_ed25519"', 'known_hosts = "~/.ssh/known_hosts"']
        if driver == "cups":  # the port is the cupsd's; jobs go to the sink backend
            lines += ['driver = "cups"', "", "[node.cups]", f"sink = {str(sink).lower()}"]
    for b, servers in cover:
        lines += [
            "",
            "[[coverage]]",
            f"bcs = {_q(b)}",
            f"servers = [{', '.join(_q(s) for s in servers)}]",
        ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------
# secrets
# --------------------------------------------------------------------------------------


def _write_secret(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by its owner only from the first byte on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # an older file may have had a wider mode
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _home(node: str, lab: Lab | None) -> str:
    return f"hosts/{node}" if lab else f"nodes/{node}"


def _secrets_dir(lab: Lab | None) -> str:
    """The control plane's secrets: on the control host's own directory in a lab."""
    return f"hosts/{CONTROL}/secrets" if lab else "secrets"


def _write_secrets(directory: Path, lab: Lab | None) -> None:
    sdir = directory / _secrets_dir(lab)
    sdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(sdir, 0o700)
    _write_secret(sdir / TOKEN_NAME, secrets.token_urlsafe(32))
    _write_secret(sdir / FLOWER_AUTH_NAME,
                  f"{FLOWER_USER}:{secrets.token_urlsafe(18)}")
    fsync_dir(sdir)


# --------------------------------------------------------------------------------------
# the domain tables
# --------------------------------------------------------------------------------------

# (format name suffix, paper)
FORMATS = [
    ("a4", "A4"), ("a4-duplex", "A4"), ("letter", "Letter"), ("a3", "A3"),
    ("a4-label", "A4"), ("a5", "A5"), ("legal", "Legal"), ("a3-color", "A3"),
    ("letter-duplex", "Letter"), ("envelope-dl", "DL"), ("b5", "B5"), ("tabloid", "Tabloid"),
]
CAPABILITIES = [
    ("duplex", ("yes", "no")),
    ("color", ("yes", "no")),
    ("resolution", ("300dpi", "600dpi", "1200dpi")),
    ("trays", ("1", "2", "3", "5")),
    ("max_paper", ("A4", "A3", "Letter", "Legal")),
    ("stapler", ("yes", "no")),
    ("pdl", ("PCL6", "PostScript", "PDF", "ZPL")),
    ("pages_per_minute", ("20", "35", "45", "60")),
]
USERS = [
    "ops", "helpdesk", "sap-spool", "finance-batch", "j.martin", "a.nguyen",
    "m.keller", "s.rossi", "l.dubois", "payroll",
]

# Share of a server's objects, formats set aside, that goes to each table.
_SHARES = {"printers": 0.22, "queues": 0.28, "defaults": 0.20, "default_locks": 0.05}


def split_budget(budget: int) -> dict[str, int]:
    """How many rows of each table a server hosting `budget` (≥ 6) objects gets."""
    n_formats = min(len(FORMATS), max(1, budget // 200))
    rest = budget - n_formats
    counts = {k: max(1, round(rest * share)) for k, share in _SHARES.items()}
    counts["resource_capabilities"] = rest - sum(counts.values())
    counts["formats"] = n_formats
    assert counts["resource_capabilities"] >= 1, budget
    return counts


def generate_rows(servers: list[str], objects: int, seed: int = SEED,
                  device: str | None = None) -> dict[str, list[dict]]:
    """The rows of the six tables, `objects` in all, spread evenly over `servers`; every
    printer's device `device` when given."""
    rng = random.Random(seed)
    rows: dict[str, list[dict]] = {t.name: [] for t in tables.OBJECT_TABLES}
    printers, queues, formats = rows["printers"], rows["queues"], rows["formats"]
    defaults, locks, caps = rows["defaults"], rows["default_locks"], rows["resource_capabilities"]
    per, extra = divmod(objects, len(servers))
    for h, host in enumerate(servers):
        n = split_budget(per + (1 if h < extra else 0))
        net = h % 250 + 1
        w = max(4, len(str(max(n.values()))))

        p0 = len(printers)
        for k in range(n["printers"]):
            name = f"prn-{host}-{k + 1:0{w}d}"
            a, b = divmod(k, 250)
            ip = f"10.{net}.{a % 256}.{b + 1}"
            kind = rng.random()
            if kind < 0.6:
                uri = f"socket://{ip}:9100"
            elif kind < 0.85:
                uri = f"lpd://{ip}/{rng.choice(['lp', 'raw', 'PASSTHRU'])}"
            else:
                uri = f"ipp://{name}.print.example.com/ipp/print"
            floor = rng.randint(0, 9)
            printers.append({
                "id": p0 + k + 1,
                "name": name,
                "host": host,
                "device": device or uri,
                "location": f"Building {rng.choice('ABCDEFGH')}, floor {floor}, "
                f"room {floor}.{rng.randint(1, 40):02d}",
            })
        q0 = len(queues)
        for k in range(n["queues"]):
            queues.append({
                "id": q0 + k + 1,
                "name": f"q-{host}-{k + 1:0{w}d}",
                "host": host,
                "printer_id": p0 + k % n["printers"] + 1,
            })
        f0 = len(formats)
        for k in range(n["formats"]):
            suffix, paper = FORMATS[k]
            formats.append(
                {"id": f0 + k + 1, "name": f"fmt-{host}-{suffix}", "host": host, "paper": paper}
            )
        d0 = len(defaults)
        for k in range(n["defaults"]):
            defaults.append({
                "id": d0 + k + 1,
                "name": f"dflt-{host}-{k + 1:0{w}d}",
                "host": host,
                "queue_id": q0 + k % n["queues"] + 1,
                "format_id": f0 + rng.randrange(n["formats"]) + 1,
            })
        l0 = len(locks)
        for k in range(n["default_locks"]):
            locks.append({
                "id": l0 + k + 1,
                "host": host,
                "default_id": d0 + k % n["defaults"] + 1,
                "locked_by": rng.choice(USERS),
            })
        c0 = len(caps)
        for k in range(n["resource_capabilities"]):
            capability, values = CAPABILITIES[k // n["printers"] % len(CAPABILITIES)]
            caps.append({
                "id": c0 + k + 1,
                "host": host,
                "printer_id": p0 + k % n["printers"] + 1,
                "capability": capability,
                "value": rng.choice(values),
            })
    return rows


def _remove_db(path: Path) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def _write_tables(
    directory: Path, homes: dict[str, Path], servers: list[str], objects: int,
    device: str | None,
) -> None:
    """Generate the master's tables once, then copy the file into every node's home."""
    work = directory / f".{TABLES_FILE}.generating"
    _remove_db(work)
    rows = generate_rows(servers, objects, device=device)
    with tables.connect(f"sqlite:///{work}") as conn:
        for t in tables.OBJECT_TABLES:
            conn.execute(t.insert(), rows[t.name])
        tables.write_pointer(conn, MASTER, EPOCH)
    try:
        for name, home in homes.items():
            if name != MASTER:
                _remove_db(home / TABLES_FILE)
                atomic_copy(work, home / TABLES_FILE)
        _remove_db(homes[MASTER] / TABLES_FILE)
        os.replace(work, homes[MASTER] / TABLES_FILE)
        fsync_dir(homes[MASTER])
    finally:
        _remove_db(work)
