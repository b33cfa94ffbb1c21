"""`cosfail`'s composition root: api.cli's operator commands, and the commands that start
things on this machine (`init-demo`, `demo`, `local ...`), registered on the same app.

Those live here, not in api/, because they run the launcher's supervisor and demo,
which api may not import (launcher sits above it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from cosfail.api.cli import EXIT_FAILED, DomainOpt, JsonOpt, app, emit, err, guarded, out, refuse
from cosfail.cosprint.domain import load_domain
from rich.text import Text

local_app = typer.Typer(no_args_is_help=True, help="Run the whole domain on this machine.")
app.add_typer(local_app, name="local")


# ----- set-up ---------------------------------------------------------------------------
@app.command("init-demo")
@guarded
def init_demo(
    directory: Path,
    servers: int = 1,
    bcs: int = 1,
    clients: int = 2,
    objects: Annotated[int | None, typer.Option(
        help="objects in all [default: 1000; 60 with --driver cups]")] = None,
    coverage: Annotated[str, typer.Option(help="one|each")] = "one",
    broker: Annotated[str | None, typer.Option(help="broker URL")] = None,
    ledger: Annotated[str | None, typer.Option(
        help="ledger URL, e.g. postgresql+psycopg://user@host/db [default: SQLite in DIR]")
    ] = None,
    driver: Annotated[str, typer.Option(
        help="reference|cups: every node's COSprint is a cosprintd, or a real cupsd")
    ] = "reference",
    hosts: Annotated[bool, typer.Option(
        "--hosts", help="every node its own host (a network namespace; root only), "
                        "the ledger on PostgreSQL on the control host")] = False,
    device: Annotated[str | None, typer.Option(
        help="every printer's device: a real printer's URI, e.g. "
             "ipp://127.0.0.1:8631/ipp/print [default: made-up devices behind a sink]")
    ] = None,
) -> None:
    """Write DIR/domain.toml and every node's home, with realistic objects."""
    from cosfail.launcher.demo_domain import init_demo as make

    if coverage not in ("one", "each"):
        raise refuse(f"--coverage must be one or each, not {coverage!r}")
    if driver not in ("reference", "cups"):
        raise refuse(f"--driver must be reference or cups, not {driver!r}")
    path = make(directory, servers=servers, bcs=bcs, clients=clients, objects=objects,
                coverage=coverage, broker=broker, ledger=ledger,
                driver=driver, hosts=hosts, device=device)  # type: ignore[arg-type]
    out.print(f"wrote {path}")


@app.command()
@guarded
def demo(
    directory: Annotated[Path | None, typer.Option(help="where to create the domain")] = None,
    objects: int = 10_000, as_json: JsonOpt = False,
    hosts: Annotated[bool, typer.Option(
        "--hosts", help="every node its own host, the ledger on PostgreSQL (root only)")] = False,
) -> None:
    """The one-command demonstration: a domain saved from losing its master."""
    from cosfail.api import view
    from cosfail.launcher.demo import run_demo

    console = err if as_json else out

    def say(text: str) -> None:
        console.print(Text.assemble(("▶", "bold cyan"), f" {text}"))

    def show(eng, run_id: str):  # type: ignore[no-untyped-def]
        return view.follow(eng, run_id, console)

    try:
        summary = run_demo(say, show, directory, objects, hosts)
    except RuntimeError as exc:
        err.print(Text.assemble(("demo failed:", "bold red"), f" {exc}"))
        raise typer.Exit(EXIT_FAILED) from None
    if as_json:
        emit(summary)
    else:
        out.print(view.demo_summary(summary))
    raise typer.Exit(0 if summary["jobs_lost"] == 0 and summary["failover_completed"]
                     else EXIT_FAILED)


# ----- local ----------------------------------------------------------------------------
@local_app.command("up")
@guarded
def local_up(domain: DomainOpt = None,
             services: Annotated[bool, typer.Option(help="also beat, API, Flower")] = True
             ) -> None:
    """Start broker (if none answers), workers, COSprint per node, beat, API, Flower."""
    from cosfail.launcher.local import LocalDomain
    from cosfail.workers.app import configure

    d = load_domain(domain)
    configure(d)
    LocalDomain(d).up(with_services=services)
    out.print(f"domain {d.control.name} is up ({len(d.nodes)} nodes)")


@local_app.command("down")
@guarded
def local_down(domain: DomainOpt = None) -> None:
    """Stop everything `local up` started."""
    from cosfail.launcher.local import LocalDomain

    LocalDomain(load_domain(domain)).down()
    out.print("stopped")


@local_app.command("status")
@guarded
def local_status(domain: DomainOpt = None, as_json: JsonOpt = False) -> None:
    """Every local component with pid, state and URL."""
    from cosfail.launcher.local import LocalDomain

    rows = LocalDomain(load_domain(domain)).status()
    if as_json:
        emit(rows)
        return
    for r in rows:
        out.print(f"{r['name']:<22} {r['state']:<5} pid {r['pid']!s:<8} {r['url']}")


@local_app.command("kill")
@guarded
def local_kill(node: str, domain: DomainOpt = None) -> None:
    """Simulate losing NODE: SIGKILL its worker and its COSprint."""
    from cosfail.launcher.local import LocalDomain

    d = load_domain(domain)
    d.node(node)
    LocalDomain(d).kill(node)
    out.print(f"killed {node}")


@local_app.command("revive")
@guarded
def local_revive(node: str, domain: DomainOpt = None) -> None:
    """Bring NODE's worker back (its restart-check decides what COSprint does)."""
    from cosfail.launcher.local import LocalDomain

    d = load_domain(domain)
    d.node(node)
    LocalDomain(d).revive(node)
    out.print(f"revived {node}")


def main() -> None:
    app(prog_name="cosfail")


if __name__ == "__main__":
    main()
