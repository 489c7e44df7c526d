"""Where a sim-vs-live check's refusals come from: one live run beside its hindsight simulation.

On each run's own steps (the ``at-live-steps`` arm) the simulator admits every request it serves in
time, as the live cluster does, but refuses fewer (``bench/results/SIMULATION.md``, "Correlated step
noise"). This prints, for one live run of a recorded check, its refusals by reason and its engines'
published PAB (polled every 0.5 s) beside the same run simulated on the fit of its own steps (the
arm's settings: its client path, its step noise), and the same simulation with other ``SimConfig``
settings (``--set FIELD=VALUE[,FIELD=VALUE...]``, repeatable; each one a variant on its own), so that a
candidate cause of the gap can be tried in a minute. ``--host-per-request`` adds the variant with the
run's host time per request served (``host_per_request``; for a check recorded before it was fitted,
with ``--step-logs``, the folder the check kept its engines' step logs in); ``--sim-seeds N`` runs each
variant at N simulator seeds and adds their mean.

    python bench/sim_vs_live_refusals.py bench/results/sim-vs-live/conv-240-step-noise/azure-conv-600-seed21.json \\
        --row 1 --run 0 --set pab_interval_s=0.2 --set noise=0
"""

from __future__ import annotations

import collections
import json
import tempfile
from dataclasses import fields, replace
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from cluster.bench.sim_vs_live import (AT_LIVE_STEPS, SimLiveConfig, _window, arm_run_config, calibrated_profile,
                                       coefficients, fill_from_step_logs, timeline_while_arriving)
from cluster.config import ServeConfig
from cluster.sim.config import SimConfig
from cluster.sim.simulator import simulate

QUANTILES = (5, 10, 25, 50, 75, 90)


def _variant(spec: str) -> dict:
    """``FIELD=VALUE[,FIELD=VALUE...]`` as ``SimConfig`` overrides, each value read as its field's type."""
    types = {f.name: f.type for f in fields(SimConfig)}
    out = {}
    for pair in spec.split(","):
        name, sep, value = pair.partition("=")
        if not sep or name not in types:
            raise typer.BadParameter(f"{pair!r} is not FIELD=VALUE with a SimConfig field", param_hint="--set")
        kind = str(types[name])
        if "bool" in kind:
            out[name] = value.lower() in ("1", "true", "yes")
            continue
        try:
            out[name] = int(value) if kind.startswith("int") else float(value) if "float" in kind else value
        except ValueError:
            raise typer.BadParameter(f"{pair!r}: {value!r} is not a {kind}", param_hint="--set") from None
    return out


def _pab_line(values: list[float], small: float) -> str:
    v = np.asarray(values, dtype=float)
    return (f"PAB quantiles {', '.join(f'P{q} {x:.0f}' for q, x in zip(QUANTILES, np.percentile(v, QUANTILES)))}; "
            f"under {small:.0f} tokens in {100 * (v < small).mean():.1f} % of samples")


def main(check: Path = typer.Argument(..., help="A recorded check (JSON) with the at-live-steps arm."),
         row: int = typer.Option(1, min=0, help="The row (load) of the check, 0-based (1: 1.5x by default)."),
         run: int = typer.Option(0, min=0, help="The live run of that row, 0-based."),
         set_: list[str] = typer.Option([], "--set", help="SimConfig overrides FIELD=VALUE[,FIELD=VALUE...], "
                                                          "one variant each."),
         host_per_request: bool = typer.Option(False, help="Add the variant with the run's host time per request "
                                                           "served (its fit's host_fixed_s, host_s_per_request)."),
         step_logs: Optional[Path] = typer.Option(None, help="The folder the check kept its engines' step logs in: "
                                                             "fits what the check did not record (the host line)."),
         sim_seeds: int = typer.Option(1, min=1, help="Run each variant at this many simulator seeds (the check's "
                                                      "and the next ones) and add their mean.")) -> None:
    """One live run's refusals and published PAB beside its hindsight simulation and variants of it."""
    doc = json.loads(check.read_text())
    cal = doc["calibration"]
    if AT_LIVE_STEPS not in cal.get("arms", {}):
        raise typer.BadParameter("the check has no at-live-steps arm (recorded before 2026-12-03)", param_hint="check")
    try:
        live = doc["rows"][row]["live"][run]
    except IndexError:
        raise typer.BadParameter(f"no run {run} in row {row}") from None
    if step_logs is not None:
        if not step_logs.is_dir():
            raise typer.BadParameter(f"no such folder: {step_logs}", param_hint="--step-logs")
        fill_from_step_logs(doc, step_logs)
    variants = [{}] + [_variant(s) for s in set_]
    if host_per_request:
        if "host_s_per_request" not in (live.get("step_truth") or {}):
            raise typer.BadParameter("the run's fit has no host time per request: give --step-logs",
                                     param_hint="--host-per-request")
        variants.append({k: live["step_truth"][k] for k in ("host_fixed_s", "host_s_per_request")})
    # the arm as the check ran it (a check recorded before the host line ran without it)
    cfg = SimLiveConfig(**{"host_per_request": False, **doc["config"]})
    serve = ServeConfig.model_validate(doc["serve_config"])
    truth = live["step_truth"]
    window = _window(cfg, cfg.start_s, cfg.duration_s)
    small = float(np.median([r.prompt_tokens for r in window.requests]))
    reasons = collections.Counter(r[5] for r in live["per_request"] if r[3])
    cols = live["engines_timeline_columns"]
    polled = [r[cols.index("pab_tokens")] for r in live["engines_timeline"] if r[cols.index("pab_tokens")] is not None]
    print(f"{check.name}, {doc['rows'][row]['multiple']:g}x run {run + 1}: {live['requests']} requests, "
          f"median prompt {small:.0f} tokens")
    print(f"live: {live['rejected']} refused ({dict(reasons)}), attainment {live['attainment']:.3f}, TTFT P50 "
          f"{live['ttft_p50']:.3f} s, P90 {live['ttft_p90']:.3f} s; engines' polls: {_pab_line(polled, small)}")
    with tempfile.TemporaryDirectory() as tmp:
        profile = str(calibrated_profile(coefficients(truth), serve, Path(tmp) / "truth.json"))
        base = arm_run_config(serve, cfg, profile, truth, rate_scale=doc["rows"][row]["rate_scale"],
                              client_path_s=cal["arms"][AT_LIVE_STEPS]["client_path_s"],
                              ingress=cal.get("ingress_delay"))
        configs = []
        for v in variants:  # every variant checked before the first simulation
            try:
                configs.append((v, replace(base, **v)))
            except ValueError as exc:
                errors = getattr(exc, "errors", None)
                raise typer.BadParameter(errors()[0]["msg"] if errors else str(exc), param_hint="--set") from None
        for v, config in configs:
            reports = []
            for i in range(sim_seeds):
                result = simulate(replace(config, seed=config.seed + i), workload=window)
                r = result.report
                reports.append(r)
                if i == 0:
                    pab = [row[1] for row in timeline_while_arriving(result)]
                    print(f"sim {v or '(the arm)'}: {r['rejected']} refused, attainment {r['attainment']:.3f}, TTFT "
                          f"P50 {r['ttft_p50']:.3f} s, P90 {r['ttft_p90']:.3f} s; nodes' reports: "
                          f"{_pab_line(pab, small)}")
            if sim_seeds > 1:
                mean = {k: float(np.mean([r[k] for r in reports])) for k in ("rejected", "attainment", "ttft_p50")}
                print(f"  over {sim_seeds} seeds: {mean['rejected']:.0f} refused, attainment {mean['attainment']:.3f} "
                      f"({100 * (mean['attainment'] - live['attainment']):+.1f} points on the live run), TTFT P50 "
                      f"{mean['ttft_p50']:.3f} s ({100 * (mean['ttft_p50'] / live['ttft_p50'] - 1):+.0f} %)")


if __name__ == "__main__":
    typer.run(main)
