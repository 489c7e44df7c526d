"""Which limit binds the nodes' PAB in a simulated run: counts of ``PABReport.binding`` per horizon.

Every budget a simulated node computes (its tightest tier's and, with ``--slo-tier``, each looser
tier's over that tier's TTFT) is bound by one of the limits of ``node.core.pab.BINDINGS``: the
prefill time left in the horizon, KV, the decode time a new request needs, or seats. This runs one
simulation (every ``fairbatching sim run`` option) and prints how often each limit bound, by the
TTFT the budget was computed over.

    python bench/pab_bindings.py --trace azure-conv --nodes 1 --duration-s 900 --balancer pab \\
        --slo-tier interactive=0.5:1:0.05 --slo-tier batch=0.5:30:0.25 --rate-scale 5.656 --json OUT.json
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Optional

import typer

import cluster.sim.simulator as simulator
from cluster.cli.sim import config_options
from cluster.sim.config import SimConfig

app = typer.Typer(add_completion=False)


@app.command(help="Count which limit binds the simulated nodes' PAB in one run.")
@config_options
def main(config: SimConfig,
         json_out: Optional[Path] = typer.Option(None, "--json", help="Write the counts and the run's report here.")) -> None:
    counts: collections.Counter = collections.Counter()
    estimate = simulator.estimate_pab

    def counting(*args, **kw):
        report = estimate(*args, **kw)
        counts[(kw.get("due_within_s"), report.binding)] += 1
        return report

    simulator.estimate_pab = counting
    try:
        report = simulator.simulate(config).report
    finally:
        simulator.estimate_pab = estimate
    rows = [{"ttft_s": t, "binding": b, "count": n} for (t, b), n in sorted(counts.items())]
    for r in rows:
        typer.echo(f"budget over a {r['ttft_s']:g} s TTFT: {r['binding']:>6} {r['count']}")
    typer.echo(f"attainment {report['attainment']:.3f}, rejected {report['rejected']}")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({"config": config.to_dict(), "bindings": rows, "report": report}, indent=1))


if __name__ == "__main__":
    app()
