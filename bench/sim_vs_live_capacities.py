"""Where a sim-vs-live check put the capacity, against what the steps of its later runs say it was.

A check's rows run at multiples of a capacity that the simulator finds on a calibration at a light load; when
that capacity is off, its "1.5x" row is not above the live capacity (SIMULATION.md, "Host time per request;
three checks more": seeds 23 and 25). This prints, for each recorded check, its rows' live outcomes and the
capacity the simulator finds (``capacity_on_steps``: run as the arms on fits of steps run it, with the host line
unless ``--no-host-per-request``) on the fit of the steps of each phase the check kept: the stall probe (another
window, at the highest multiple), each row's rehearsal, and each run above 1x (hindsight: the run's own steps).
The rehearsal at the highest multiple stands for a capacity probe (``SimLiveConfig.capacity_probes``): a run of
the window at that rate.

    python bench/sim_vs_live_capacities.py bench/results/sim-vs-live/conv-240-step-noise/azure-conv-600-seed2*.json \\
        --step-logs /tmp/steps{seed}
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import typer

from cluster.bench.sim_vs_live import (AT_LIVE_STEPS, SimLiveConfig, _window, capacity_on_steps, fill_from_step_logs)
from cluster.config import ServeConfig


def _capacity(check: dict, fit: Optional[dict], host_per_request: bool) -> Optional[float]:
    if not fit:
        return None
    cal = check["calibration"]
    cfg = replace(SimLiveConfig(**check["config"]), host_per_request=host_per_request)
    path_s = (cal.get("arms", {}).get(AT_LIVE_STEPS) or {}).get("client_path_s", cal["client_path_s"])
    try:
        return capacity_on_steps(ServeConfig.model_validate(check["serve_config"]), cfg, fit,
                                 _window(cfg, cfg.start_s, cfg.duration_s), client_path_s=path_s,
                                 ingress=cal.get("ingress_delay"))["capacity_rps"]
    except RuntimeError:
        return None


def phases(check: dict) -> dict[str, Optional[dict[str, Any]]]:
    """The fits of steps a check kept, by phase: the stall probe's, each row's rehearsal's, each run's above 1x."""
    out = {"stall probe": (check["calibration"].get("stall_probe") or {}).get("step_truth")}
    for row in check["rows"]:
        out[f"rehearsal {row['multiple']:g}x"] = (row.get("rehearsal") or {}).get("step_truth")
    for row in check["rows"]:
        if row["multiple"] > 1:
            for k, live in enumerate(row["live"]):
                out[f"{row['multiple']:g}x run {k + 1}"] = live.get("step_truth")
    return out


def main(checks: list[Path] = typer.Argument(..., help="Recorded checks (JSON)."),
         step_logs: Optional[str] = typer.Option(None, help="The folder each check kept its engines' step logs in, "
                                                            "with {seed} for the check's seed: fits what the check "
                                                            "did not record (the host line)."),
         host_per_request: bool = typer.Option(True, help="Simulate each fit's host time per request served (where "
                                                          "the fit has it), whatever the check was recorded with.")
         ) -> None:
    """Each check's rows beside the capacity on the steps of each phase it kept (req/s)."""
    for path in checks:
        check = json.loads(path.read_text())
        if step_logs is not None:
            logs = Path(step_logs.format(seed=check["config"]["seed"]))
            if not logs.is_dir():
                raise typer.BadParameter(f"no such folder: {logs}", param_hint="--step-logs")
            fill_from_step_logs(check, logs)
        rows = "; ".join(f"{r['multiple']:g}x at {r['rate_rps']:.1f} req/s: attainment "
                         + ", ".join(format(x["attainment"], ".3f") for x in r["live"]) + ", refused "
                         + ", ".join(str(x["rejected"]) for x in r["live"]) for r in check["rows"])
        print(f"{path.name}: the check's capacity {check['capacity']['capacity_rps']:.1f} req/s; {rows}")
        found = {name: _capacity(check, fit, host_per_request) for name, fit in phases(check).items()}
        print("  capacity on the steps of: " + ", ".join(
            f"{name} {'-' if c is None else f'{c:.1f}'}" for name, c in found.items()))


if __name__ == "__main__":
    typer.run(main)
