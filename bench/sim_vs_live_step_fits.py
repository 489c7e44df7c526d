"""The engines' own steps in each phase of a sim-vs-live check: a least-squares fit per phase.

A check run with ``--step-logs DIR`` keeps every step the engines timed. This fits each phase's steps
on its own (the calibration replay, every live run), beside the context the steps carried, so that
one can see which coefficient of the calibrated truth holds at the predicted loads and which does
not. ``bench/results/SIMULATION.md`` ("The engines' own steps") quotes it.

    fairbatching bench sim-vs-live --truth steps --repeats 3 --seed 6 --out-dir bench/results/sim-vs-live/conv-240-steps \\
        --step-logs /tmp/steps6
    python bench/sim_vs_live_step_fits.py bench/results/sim-vs-live/conv-240-steps/azure-conv-600-seed6.json \\
        /tmp/steps6 --json bench/results/sim-vs-live/conv-240-steps/step-fits-seed6.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from cluster.bench.sim_vs_live import engine_steps, fit_step_truth, step_summary


def main(check: Path = typer.Argument(..., help="A recorded check (JSON) whose live runs kept their wall-clock span."),
         logs: Path = typer.Argument(..., help="The folder its --step-logs went to."),
         json_out: Optional[Path] = typer.Option(None, "--json", help="Write the table's rows here.")) -> None:
    """Per phase: steps, mean tokens and context, the phase's own fit, and the check's truth's slowdown there."""
    doc = json.loads(check.read_text())
    cal = doc["calibration"]
    if "wall_clock_s" not in cal["live"]:
        raise typer.BadParameter("the check kept no wall-clock spans (recorded before 2026-12-02)", param_hint="check")
    truth = cal["step_truth"]
    phases = [("calibration", cal["live"]["wall_clock_s"])] + [
        (f"{row['multiple']:g}x run {k + 1}", live["wall_clock_s"])
        for row in doc["rows"] for k, live in enumerate(row["live"])]
    rows = []
    print("| phase | steps | tokens a step | context a step (mean, P90) | own fit: a ms, b us/token, c us/context token, "
          "host ms | truth's slowdown |")
    print("|---|---|---|---|---|---|")
    for name, span in phases:
        steps = engine_steps(logs, *span)
        own = fit_step_truth(steps, prefill_attention=truth.get("attn_prefill_s_per_token_sq", 0.0) > 0)
        ctx = np.array([s.sample.context_tokens for s in steps])
        summary = step_summary(steps, truth)
        row = {"phase": name, "steps": len(steps), "tokens_mean": summary["tokens_mean"],
               "context_mean": float(ctx.mean()), "context_p90": float(np.percentile(ctx, 90)), "own_fit": own,
               "truth_slowdown": summary["slowdown"]}
        rows.append(row)
        print(f"| {name} | {len(steps)} | {row['tokens_mean']:.0f} | {row['context_mean']:.0f}, {row['context_p90']:.0f} "
              f"| {own['a_s'] * 1e3:.1f}, {own['b_s_per_token'] * 1e6:.1f}, {own['c_s_per_context_token'] * 1e6:.2f}, "
              f"{own['host_s'] * 1e3:.1f} | {row['truth_slowdown']:.2f} |")
    if json_out is not None:
        json_out.write_text(json.dumps({"check": str(check), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    typer.run(main)
