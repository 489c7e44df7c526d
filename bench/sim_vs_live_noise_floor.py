"""The sim-vs-live check's noise floor: its live runs judged against each other with its own criterion.

Each live run of a recorded check (three or more repeats of one load) is taken as the prediction of
the median of that load's other live runs, and judged as the simulator is (attainment within 5
points, TTFT P50 within 25 %; ``cluster.bench.sim_vs_live.live_self_agreement``). How often that
holds is the most a simulator that reproduced a live run exactly could expect on this machine.
``bench/results/SIMULATION.md`` ("The check's noise floor") quotes it.

    python bench/sim_vs_live_noise_floor.py bench/results/sim-vs-live \\
        --json bench/results/sim-vs-live/noise-floor.json
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Optional

import typer

from cluster.bench.sim_vs_live import live_self_agreement


def main(folder: Path = typer.Argument(..., help="Folder of recorded checks (*.json with a verdict), searched "
                                                 "recursively; re-simulations are left out (their live runs are "
                                                 "another check's)."),
         json_out: Optional[Path] = typer.Option(None, "--json", help="Write every live run's row here.")) -> None:
    """Per load multiple: how many live runs meet the check's criterion against their siblings' median."""
    rows = []
    for path in sorted(folder.rglob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict) or "verdict" not in doc or "resimulated_from" in doc:
            continue
        cfg = doc["config"]
        for r in live_self_agreement(doc["rows"], attainment_tol_pts=cfg["attainment_tol_pts"],
                                     ttft_p50_rel_tol=cfg["ttft_p50_rel_tol"]):
            rows.append({"check": str(path.relative_to(folder)), "trace": cfg["trace"], "start_s": cfg["start_s"],
                         "duration_s": cfg["duration_s"], **r})
    if not rows:
        raise typer.BadParameter(f"no recorded check with three or more live runs a load in {folder}")
    groups: dict[tuple, list] = defaultdict(list)
    for r in rows:
        groups[(r["trace"], r["start_s"], r["duration_s"], r["multiple"])].append(r)
    typer.echo("| trace window | load | live runs | criterion held | attainment within tolerance | TTFT P50 within tolerance |")
    typer.echo("|---|---|---|---|---|---|")
    for (trace, start, duration, multiple), rs in sorted(groups.items()):
        att = sum(r["attainment_gap_pts"] <= 5.0 for r in rs)
        ttft = sum(r["ttft_p50_rel_err"] is not None and r["ttft_p50_rel_err"] <= 0.25 for r in rs)
        typer.echo(f"| {trace} {start:g}+{duration:g} s | {multiple:g}x | {len(rs)} | {sum(r['holds'] for r in rs)} | {att} | {ttft} |")
    if json_out is not None:
        json_out.write_text(json.dumps(rows, indent=1) + "\n")
        typer.echo(f"wrote {json_out}")


if __name__ == "__main__":
    typer.run(main)
