"""Where a sim-vs-live check's refusals come from: one live run beside its hindsight simulation.

On each run's own steps (the ``at-live-steps`` arm) the simulator admits every request it serves in
time, as the live cluster does, but refuses fewer (``bench/results/SIMULATION.md``, "Correlated step
noise"). This prints, for one live run of a recorded check, its refusals by reason and its engines'
published PAB (polled every 0.5 s) beside the same run simulated on the fit of its own steps (the
arm's settings: its client path, its step noise), and the same simulation with other ``SimConfig``
settings (``--set FIELD=VALUE``, repeatable; each one a variant on its own), so that a candidate
cause of the gap can be tried in a minute.

    python bench/sim_vs_live_refusals.py bench/results/sim-vs-live/conv-240-step-noise/azure-conv-600-seed21.json \\
        --row 1 --run 0 --set pab_interval_s=0.2 --set noise=0
"""

from __future__ import annotations

import collections
import json
import tempfile
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import typer

from cluster.bench.sim_vs_live import (AT_LIVE_STEPS, SimLiveConfig, _window, calibrated_profile, coefficients,
                                       noise_fields, sim_config_for)
from cluster.config import ServeConfig
from cluster.sim.config import SimConfig
from cluster.sim.simulator import simulate

QUANTILES = (5, 10, 25, 50, 75, 90)


def _variant(spec: str) -> dict:
    """``FIELD=VALUE`` as a ``SimConfig`` override, the value read as the field's type."""
    name, sep, value = spec.partition("=")
    types = {f.name: f.type for f in fields(SimConfig)}
    if not sep or name not in types:
        raise typer.BadParameter(f"{spec!r} is not FIELD=VALUE with a SimConfig field", param_hint="--set")
    kind = str(types[name])
    if "bool" in kind:
        return {name: value.lower() in ("1", "true", "yes")}
    try:
        return {name: int(value) if kind.startswith("int") else float(value) if "float" in kind else value}
    except ValueError:
        raise typer.BadParameter(f"{spec!r}: {value!r} is not a {kind}", param_hint="--set") from None


def _pab_line(values: list[float], small: float) -> str:
    v = np.asarray(values, dtype=float)
    return (f"PAB quantiles {', '.join(f'P{q} {x:.0f}' for q, x in zip(QUANTILES, np.percentile(v, QUANTILES)))}; "
            f"under {small:.0f} tokens in {100 * (v < small).mean():.1f} % of samples")


def main(check: Path = typer.Argument(..., help="A recorded check (JSON) with the at-live-steps arm."),
         row: int = typer.Option(1, min=0, help="The row (load) of the check, 0-based (1: 1.5x by default)."),
         run: int = typer.Option(0, min=0, help="The live run of that row, 0-based."),
         set_: list[str] = typer.Option([], "--set", help="A SimConfig override FIELD=VALUE, one variant each.")) -> None:
    """One live run's refusals and published PAB beside its hindsight simulation and variants of it."""
    doc = json.loads(check.read_text())
    cal = doc["calibration"]
    if AT_LIVE_STEPS not in cal.get("arms", {}):
        raise typer.BadParameter("the check has no at-live-steps arm (recorded before 2026-12-03)", param_hint="check")
    try:
        live = doc["rows"][row]["live"][run]
    except IndexError:
        raise typer.BadParameter(f"no run {run} in row {row}") from None
    variants = [{}] + [_variant(s) for s in set_]
    cfg = SimLiveConfig(**doc["config"])
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
        base = replace(sim_config_for(serve, cfg, profile, start_s=cfg.start_s,
                                      client_path_s=cal["arms"][AT_LIVE_STEPS]["client_path_s"],
                                      ingress=cal.get("ingress_delay")),
                       rate_scale=doc["rows"][row]["rate_scale"], **noise_fields(truth, cfg))
        configs = []
        for v in variants:  # every variant checked before the first simulation
            try:
                configs.append((v, replace(base, **v)))
            except ValueError as exc:
                errors = getattr(exc, "errors", None)
                raise typer.BadParameter(errors()[0]["msg"] if errors else str(exc), param_hint="--set") from None
        for v, config in configs:
            result = simulate(config, workload=window)
            r = result.report
            span = r["requests"] / r["offered_rps"]
            pab = [t[1] for rows in result.timelines.values() for t in rows if t[0] <= span]
            print(f"sim {v or '(the arm)'}: {r['rejected']} refused, attainment {r['attainment']:.3f}, TTFT P50 "
                  f"{r['ttft_p50']:.3f} s, P90 {r['ttft_p90']:.3f} s; nodes' reports: {_pab_line(pab, small)}")


if __name__ == "__main__":
    typer.run(main)
