"""Every measure of issue 10 in one run: `make bench`, or `.venv/bin/python -m bench`.

Runs the backup benchmark (`bench/backup.py`: backup vs `sqlite3 .backup` + `cp` +
`sha256sum`, and the step hop) and the failover benchmark (`bench/failover.py`: RTO over
the node and object sweeps, where its time goes, and the BCS worker's memory), one
after the other on one redis-server, then the command-line benchmark (`bench/cli.py`:
how long `cosfail status` and others take, spawn to exit, on a broker of its own), then
prints each one's tables and a summary: every
measure of the issue beside its target, `pass`, `miss`, or `report` where the issue asks
only for the figure. Writes `summary.json` (the summary and both benchmarks' full
results), `backup.json`, `failover.json`, `cli.json` and `rto.png` (RTO against nodes, and against
objects) under `bench/results/`; a `--quick` smoke run writes under
`bench/results/quick/`, which git ignores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from cosfail.launcher.local import LoopbackRedis

from bench import backup, cli, failover
from bench.common import BenchFailed, write_json

RESULTS = backup.REPO / "bench" / "results"
QUICK_SIZES = [10_000]
QUICK_REPEATS = 3


def row(measure: str, figure: str, target: str, ok: bool | None) -> dict[str, Any]:
    """One line of the summary; `ok` None: the issue asks for the figure, no target."""
    verdict = "report" if ok is None else ("pass" if ok else "miss")
    return {"measure": measure, "figure": figure, "target": target, "verdict": verdict}


def summarise(bk: dict[str, Any], fo: dict[str, Any], cl: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's table, from whatever the two benchmarks measured."""
    rows = []
    configs = fo["configs"]
    main = configs.get("10n-100k", {})
    if "rto_ms" in main:
        rows.append(row(f"failover RTO, 10 nodes, 100k objects (median of {main['repeats']})",
                        f"{main['rto_ms']:.0f} ms", f"≤ {failover.TARGET_RTO_MS:.0f} ms",
                        main["rto_ms"] <= failover.TARGET_RTO_MS))
        share = main["orchestration_share"]
        rows.append(row("orchestration share of RTO (10 nodes, 100k)", f"{share:.0%}",
                        f"≤ {failover.TARGET_ORCHESTRATION:.0%}",
                        share <= failover.TARGET_ORCHESTRATION))
    growth = fo.get("growth", {})
    if "nodes" in growth:
        g = growth["nodes"]
        rows.append(row(f"RTO {g['from']} → {g['to']} nodes ({failover.SWEEP_OBJECTS:,} "
                        "objects)", f"{g['rto_ratio']:.2f}×", f"≤ {failover.TARGET_GROWTH:g}×",
                        g["rto_ratio"] <= failover.TARGET_GROWTH))
    if "objects" in growth:
        g = growth["objects"]
        rows.append(row(f"RTO {count(g['from'])} → {count(g['to'])} objects "
                        f"({failover.SWEEP_NODES} nodes)", f"{g['rto_ratio']:.2f}×",
                        f"≤ {g['scale']:g}× (linear)", g["rto_ratio"] <= g["scale"]))
    big = configs.get(failover.config_key(failover.SWEEP_NODES, 1_000_000), {})
    if "rto_ms" in big:
        rows.append(row(f"failover RTO, 10 nodes, 1M objects (median of {big['repeats']})",
                        f"{big['rto_ms']:.0f} ms", f"≤ {failover.TARGET_RTO_1M_MS:.0f} ms",
                        big["rto_ms"] <= failover.TARGET_RTO_1M_MS))
    for e in bk["sizes"].values():
        rows.append(row(f"backup vs sqlite3 .backup + cp + sha256sum, {e['objects']:,} objects",
                        f"{e['ratio']:.2f}× ({e['cosfail_ms']:.0f} / {e['baseline_ms']:.0f} ms)",
                        f"≤ {backup.TARGET_RATIO:g}×", e["ratio"] <= backup.TARGET_RATIO))
    if "hop" in bk:
        hop = bk["hop"]["hop_ms"]
        rows.append(row("empty step hop, chain across two node queues (median)",
                        f"{hop:.2f} ms (plain Celery {bk['hop']['celery_per_step_ms']:.2f})",
                        f"≤ {backup.TARGET_HOP_MS:g} ms", hop <= backup.TARGET_HOP_MS))
    done = [e for e in configs.values() if "rto_ms" in e]
    if done:
        # The largest restore: the most objects, then the fewest nodes (least else running).
        e = max(done, key=lambda e: (e["objects"], -e["nodes"]))
        rows.append(row("BCS node worker memory at rest (VmRSS)",
                        f"{e['bcs_worker_rest_kb'] / 1024:.0f} MB", "report", None))
        rows.append(row(f"BCS node worker peak through start-up and a {e['objects']:,}-object "
                        "backup (VmHWM)", f"{e['bcs_worker_backup_peak_kb'] / 1024:.0f} MB",
                        "report", None))
        rows.append(row(f"BCS node worker peak during a {e['objects']:,}-object failover "
                        "restore (VmHWM)",
                        f"{e['bcs_worker_peak_kb'] / 1024:.0f} MB (+"
                        f"{(e['bcs_worker_peak_kb'] - e['bcs_worker_before_kb']) / 1024:.0f} MB "
                        f"over {e['bcs_worker_before_kb'] / 1024:.0f}; snapshot "
                        f"{e['snapshot_bytes'] / 1e6:.0f} MB)", "report", None))
    commands = cl["commands"]
    status = commands["cosfail status"]["median_ms"]
    rows.append(row(f"`cosfail status`, spawn to exit (median of {cl['repeats']})",
                    f"{status:.0f} ms (bare interpreter "
                    f"{commands['python -c pass']['median_ms']:.0f})",
                    f"≤ {cl['target_status_ms']:.0f} ms", cli.verdict(cl)))
    rows.append(row("`cosfail status` with the broker stopped (exit 3)",
                    f"{commands['cosfail status, broker stopped']['median_ms']:.0f} ms",
                    "report", None))
    if "failure" in bk:
        rows.append(row("backup benchmark", "failed: " + bk["failure"][:200], "succeeds", False))
    for key, e in configs.items():
        if e.get("failures"):
            rows.append(row(f"failover {key}", "failed: " + e["failures"][0][:200], "succeeds",
                            False))
    return rows


def print_summary(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    colour = {"pass": "green", "miss": "red", "report": "cyan"}
    t = Table(title="issue 10: speed and scale, every measure against its target")
    for col in ("measure", "figure", "target", ""):
        t.add_column(col)
    for r in rows:
        t.add_row(r["measure"], r["figure"], r["target"],
                  f"[{colour[r['verdict']]}]{r['verdict']}[/]")
    Console(width=max(Console().width, 130)).print(t)


def count(x: float) -> str:
    """10000 → 10k, 1000000 → 1M; node counts as they are."""
    for size, unit in ((1_000_000, "M"), (1000, "k")):
        if x >= size:
            return f"{x / size:g}{unit}"
    return f"{x:g}"


def plot(fo: dict[str, Any], out: Path) -> bool:
    """RTO against nodes (10k objects) and against objects (10 nodes, log-log), each
    point the median with the range of its repetitions, beside the targets."""
    try:
        import matplotlib
    except ImportError:
        print("no plot: matplotlib is not installed (pip install -e '.[bench]')")
        return False
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    done = [e for e in fo["configs"].values() if "rto_ms" in e]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = ((left, "nodes", "objects", failover.SWEEP_OBJECTS,
               f"RTO against nodes ({failover.SWEEP_OBJECTS:,} objects)"),
              (right, "objects", "nodes", failover.SWEEP_NODES,
               f"RTO against objects ({failover.SWEEP_NODES} nodes)"))
    for ax, axis, fixed, value, title in panels:
        sweep = sorted((e for e in done if e[fixed] == value), key=lambda e: e[axis])
        ax.set_title(title)
        ax.set_xlabel(axis)
        ax.set_ylabel("RTO (s): accept → verified")
        ax.grid(True, which="both", alpha=0.3)
        if not sweep:
            continue
        xs = [e[axis] for e in sweep]
        mid = [e["rto_ms"] / 1000 for e in sweep]
        low = [m - min(e["rto_samples_ms"]) / 1000 for m, e in zip(mid, sweep, strict=True)]
        high = [max(e["rto_samples_ms"]) / 1000 - m for m, e in zip(mid, sweep, strict=True)]
        ax.errorbar(xs, mid, yerr=[low, high], marker="o", capsize=4,
                    label="median (bars: range of the repetitions)")
        if axis == "nodes":
            ax.axhline(mid[0] * failover.TARGET_GROWTH, color="red", ls="--",
                       label=f"target: ≤ {failover.TARGET_GROWTH:g}× RTO at {xs[0]} nodes")
            ax.set_xticks(xs)
            ax.set_ylim(bottom=0)
        else:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))  # 1 2 5 10 20 s
            ax.plot(xs, [mid[0] * x / xs[0] for x in xs], color="grey", ls=":",
                    label=f"linear from {xs[0]:,}")
            ax.plot([100_000, 1_000_000], [failover.TARGET_RTO_MS / 1000,
                                           failover.TARGET_RTO_1M_MS / 1000],
                    ls="none", marker="_", markersize=30, mew=2, color="red",
                    label="targets: 2 s at 100k, 20 s at 1M")
        ax.legend(fontsize=8)
    fig.suptitle(f"cosfail failover RTO, {fo['when'][:10]}, {fo['cpus']} CPUs "
                 "(1 server, 1 BCS, the rest clients)", fontsize=10)
    for ax in (left, right):  # 10k, 100k, 1M rather than 10^4 …
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: count(x)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _pos: f"{y:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _pos: ""))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    failover.add_arguments(p)
    p.add_argument("--out", type=Path, help="the results folder (default: bench/results, "
                   "or bench/results/quick with --quick)")
    args = p.parse_args()
    out: Path = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    if args.quick and not args.out:
        (out / ".gitignore").write_text("*\n")  # a smoke run's figures are not results
    sizes, repeats = (QUICK_SIZES, QUICK_REPEATS) if args.quick else (backup.SIZES,
                                                                      backup.REPEATS)
    t0 = time.time()
    with LoopbackRedis(Path(tempfile.gettempdir())) as redis:
        try:
            bk = backup.bench(redis, sizes, repeats, repeats, args.keep, args.workdir)
        except BenchFailed as exc:  # the failover figures are still worth having
            bk = {"sizes": {}, "failure": str(exc)}
        else:
            write_json(out / "backup.json", bk)
            backup.report(bk, out / "backup.json")
        fo = failover.bench(redis, failover.chosen_configs(args), args.repeats, args.keep,
                            args.workdir)
        write_json(out / "failover.json", fo)
        failover.report(fo, out / "failover.json")
    cl = cli.bench(repeats, args.keep, args.workdir)
    write_json(out / "cli.json", cl)
    cli.report(cl, out / "cli.json")
    rows = summarise(bk, fo, cl)
    write_json(out / "summary.json", {"when": fo["when"], "cpus": os.cpu_count(),
                                 "took_s": round(time.time() - t0), "quick": args.quick,
                                 "summary": rows, "backup": bk, "failover": fo, "cli": cl})
    print_summary(rows)
    if plot(fo, out / "rto.png"):
        print(f"plot: {out / 'rto.png'}")
    print(f"written to {out} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
