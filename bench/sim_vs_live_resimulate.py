"""Recorded sim-vs-live checks simulated again with other simulator settings, against the same live runs.

A diagnosis, not a prediction: the live runs are already known, so a setting that lands closer
here has been chosen after the fact. ``bench/results/SIMULATION.md`` ("With the serving layer's
current defaults") uses it to show how the 1.5x predictions move with the shared host's cost per
request and with the nodes' online refit (``cluster.bench.sim_vs_live.resimulate``).

    python bench/sim_vs_live_resimulate.py bench/results/sim-vs-live/fewest-late \\
        --json bench/results/sim-vs-live/fewest-late/resimulated.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from cluster.bench.sim_vs_live import resimulate

#: Settings tried, by label: ``SimConfig`` fields set over what the check's deployment runs.
SETTINGS = {
    "as the check runs now (refit on)": {},
    "refit off (as recorded)": {"refit": False},
    "no shared host": {"host_cpu_s_per_request": 0.0},
    "shared host 10 ms/request": {"host_cpu_s_per_request": 0.010},
    "shared host 13 ms/request": {"host_cpu_s_per_request": 0.013},
}


def main(folder: Path = typer.Argument(..., help="Folder of recorded checks (*.json with a verdict)."),
         json_out: Optional[Path] = typer.Option(None, "--json", help="Write the rows here.")) -> None:
    """Each recorded check's 1.5x (and 0.5x) rows simulated again under every setting of ``SETTINGS``."""
    rows = []
    for path in sorted(folder.glob("*.json")):
        recorded = json.loads(path.read_text())
        if "verdict" not in recorded:
            continue
        for label, overrides in SETTINGS.items():
            result = resimulate(recorded, **overrides)
            verdict = result.verdict()  # the check's own medians and criterion
            for row in result.rows:
                v, sim = verdict[f"{row['multiple']:g}x"], row["sim"]
                att, ttft = v["live_attainment_median"], v["live_ttft_p50_median_s"]
                rows.append({"check": path.name, "setting": label, "multiple": row["multiple"],
                             "live_attainment_median": att, "sim_attainment": sim["attainment"],
                             "attainment_gap_pts": 100 * (sim["attainment"] - att),  # signed: + optimistic
                             "live_ttft_p50_median_s": ttft, "sim_ttft_p50_s": sim["ttft_p50"],
                             "ttft_p50_rel_err": (sim["ttft_p50"] - ttft) / ttft if ttft else None,
                             "holds": v["holds"], "sim_rejected": sim["rejected"]})
                typer.echo(f"{path.name} | {label} | {row['multiple']:g}x | attainment live {att:.3f} sim "
                           f"{sim['attainment']:.3f} ({100 * (sim['attainment'] - att):+.1f} pts) | TTFT p50 live "
                           f"{ttft:.3f} sim {sim['ttft_p50']:.3f}")
    if json_out is not None:
        json_out.write_text(json.dumps(rows, indent=1))
        typer.echo(f"wrote {json_out}")


if __name__ == "__main__":
    typer.run(main)
