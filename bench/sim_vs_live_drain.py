"""What the live engines drained against the prefill rate their budgets planned with, for a recorded
sim-vs-live check whose step logs were kept (``--step-logs DIR``).

Per live run: the engines' drain rate (prompt tokens a second of the steps that prefilled at least half
the largest step, ``step_summary``'s ``prefill_drain_tps``, from the step logs); the prefill rate PAB
planned with, implied by each polled report, ``(PAB + queued prompt tokens) / (horizon - front delay)``
(median over the polls; it ignores the decodes' reservation, which the measured rate already holds);
the engines' measured prefill rate (median); and the share of polls with more prompt tokens queued than
one step takes (the engine saturated). Checks recorded after 2026-12-02 carry the drain rate
themselves. ``bench/results/SIMULATION.md``, "What the engines drain against what they measure".

    python bench/sim_vs_live_drain.py bench/results/sim-vs-live/conv-240-drain/azure-conv-600-seed12.json \\
        /tmp/steps12 --json bench/results/sim-vs-live/drain-seed12.json
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Optional

import typer

from cluster.bench.sim_vs_live import engine_steps, step_summary


def drain_rows(recorded: dict[str, Any], step_logs: Path) -> list[dict[str, Any]]:
    """One row per live run of ``recorded`` (a check's JSON) with the figures of the module docstring."""
    from cluster.config import ServeConfig, embedded_default_slo

    serve = ServeConfig.model_validate(recorded["serve_config"])
    ttft_s = serve.ttft_slo_s or embedded_default_slo().ttft_s
    horizon_s = serve.pab_horizon_fraction * ttft_s
    step_tokens = int(serve.engine_args.get("max_num_batched_tokens", 512))
    truth = recorded["calibration"]["deployment_model"]
    rows = []
    for row in recorded["rows"]:
        for k, live in enumerate(row["live"]):
            cols = live["engines_timeline_columns"]
            polls = [dict(zip(cols, p)) for p in live["engines_timeline"]]
            implied = [(p["pab_tokens"] + p["queued_prefill_tokens"]) / (horizon_s - p["front_delay_s"])
                       for p in polls if p["pab_tokens"] is not None and p["front_delay_s"] is not None
                       and p["front_delay_s"] < horizon_s]
            measured = [p["measured_prefill_rate_tps"] for p in polls if p["measured_prefill_rate_tps"] is not None]
            steps = engine_steps(step_logs, *live["wall_clock_s"])
            drain = step_summary(steps, truth).get("prefill_drain_tps") if steps else None
            implied_p50 = statistics.median(implied) if implied else None
            rows.append({
                "multiple": row["multiple"], "run": k + 1, "ttft_p50_s": live["ttft_p50"],
                "attainment": live["attainment"], "drain_tps": drain, "implied_pab_rate_tps": implied_p50,
                "measured_prefill_rate_tps": statistics.median(measured) if measured else None,
                "planned_under_drain": (1 - implied_p50 / drain) if drain and implied_p50 else None,
                "saturated_poll_share": (sum(p["queued_prefill_tokens"] > step_tokens for p in polls) / len(polls)
                                         if polls else None)})
    return rows


def main(check: Path = typer.Argument(..., exists=True, dir_okay=False, help="A recorded check's JSON."),
         step_logs: Path = typer.Argument(..., exists=True, file_okay=False, help="Its engines' step logs."),
         json_out: Optional[Path] = typer.Option(None, "--json", help="Write the rows here.")) -> None:
    """Print, per live run, the engines' drain rate beside the prefill rate their budgets planned with."""
    recorded = json.loads(check.read_text())
    rows = drain_rows(recorded, step_logs)
    num = lambda v, f: "-" if v is None else f.format(v)  # noqa: E731
    for r in rows:
        typer.echo(f"{r['multiple']:g}x run {r['run']}: drain {num(r['drain_tps'], '{:.0f}')} tokens/s, PAB planned "
                   f"{num(r['implied_pab_rate_tps'], '{:.0f}')} "
                   f"(measured {num(r['measured_prefill_rate_tps'], '{:.0f}')}), "
                   f"{num(r['planned_under_drain'], '{:.0%}')} under; saturated in "
                   f"{num(r['saturated_poll_share'], '{:.0%}')} of polls; TTFT P50 {r['ttft_p50_s']:.3f} s")
    if json_out is not None:
        json_out.write_text(json.dumps({"check": str(check), "command": f"python bench/sim_vs_live_drain.py {check} "
                                        f"{step_logs}", "rows": rows}, indent=1))
        typer.echo(f"wrote {json_out}")


if __name__ == "__main__":
    typer.run(main)
