"""Live A/B of the measured prefill rate that caps PAB: over the time prompts waited (the default since
2026-12-02) against over the whole window (before), on the embedded default past its capacity.

For each setting a fresh local cluster of the embedded default (``feedback.prefill_rate_over_busy_time``)
replays the sim-vs-live check's window (azure-conv 600+240 s, prompts clipped at 512 and outputs at 32
tokens) at ``--rate-rps`` ``--repeats`` times with the official client path of ``fairbatching load``; the
settings alternate (``--rounds``), so a drift of the shared machine falls on both. Per run: attainment,
admitted attainment, goodput, refusals, TTFT percentiles at the client, and the engines' medians of the
measured prefill rate and PAB. ``bench/results/SIMULATION.md``, "What the engines drain against what they
measure".

    python bench/prefill_rate_ab.py --rate-rps 19.8 --json bench/results/sim-vs-live/prefill-rate-ab.json   # ~22 min
    python bench/prefill_rate_ab.py --rate-rps 19.8 --seed 13 --old-first \
        --json bench/results/sim-vs-live/prefill-rate-ab-2.json
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Optional

import typer

from cluster.bench.sim_vs_live import SimLiveConfig, _live_run, _window
from node.vllm.engine_setup import machine_name

SETTINGS = {"over the waiting time": True, "over the window (before)": False}
KEPT = ("attainment", "admitted_attainment", "goodput_rps", "rejected", "requests", "ttft_p50", "ttft_p90",
        "ttft_p99", "tpot_p99")


def main(rate_rps: float = typer.Option(19.8, help="Offered load, requests a second (the check's 1.5x here)."),
         repeats: int = typer.Option(2, min=1, help="Replays per setting and round."),
         rounds: int = typer.Option(2, min=1, help="Times the two settings alternate (a fresh cluster each)."),
         seed: int = typer.Option(12, help="Seed of the replays."),
         old_first: bool = typer.Option(False, help="Each round starts with the old setting (an A/B in the other "
                                                    "order)."),
         json_out: Optional[Path] = typer.Option(None, "--json", help="Write every run and the summary here.")) -> None:
    """Replay the check's window past capacity under both prefill-rate settings and print the medians."""
    from cluster.bench.overload import local_cluster

    cfg = SimLiveConfig(seed=seed)
    window = _window(cfg, cfg.start_s, cfg.duration_s)
    scale = rate_rps / window.rate_rps
    runs: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    order = list(SETTINGS.items())[::-1] if old_first else list(SETTINGS.items())
    for r in range(rounds):
        for name, over_busy in order:
            with local_cluster({"feedback": {"prefill_rate_over_busy_time": over_busy}}) as (url, serve):
                for k in range(repeats):
                    time.sleep(5.0)
                    report, _ = _live_run(url, serve.served_model_name, cfg, window, rate_scale=scale,
                                          seed=seed + 100 * r + k)
                    row = {**{key: report[key] for key in KEPT},
                           "measured_prefill_rate_tps": report["engines"]["measured_prefill_rate_tps"],
                           "pab_tokens": report["engines"]["pab_tokens"], "round": r}
                    runs[name].append(row)
                    typer.echo(f"round {r + 1}, {name}, run {k + 1}: " + ", ".join(
                        f"{key} {row[key]:.3f}" for key in ("attainment", "admitted_attainment", "goodput_rps",
                                                             "ttft_p50") if row[key] is not None)
                        + f", refused {row['rejected']}, measured prefill "
                        + ("-" if row["measured_prefill_rate_tps"] is None
                           else f"{row['measured_prefill_rate_tps']:.0f}"))
    summary = {name: {key: statistics.median(r[key] for r in rows if r[key] is not None)
                      for key in KEPT + ("measured_prefill_rate_tps", "pab_tokens")
                      if any(r[key] is not None for r in rows)}
               for name, rows in runs.items()}
    new, old = (summary[name] for name in SETTINGS)
    typer.echo(f"medians over {rounds * repeats} runs each at {rate_rps:g} req/s:")
    for name, s in summary.items():
        typer.echo(f"  {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in s.items()))
    typer.echo(f"goodput ratio (waiting time / window): {new['goodput_rps'] / old['goodput_rps']:.3f}")
    if json_out is not None:
        json_out.write_text(json.dumps({
            "machine": machine_name(), "command": f"python bench/prefill_rate_ab.py --rate-rps {rate_rps:g} "
            f"--repeats {repeats} --rounds {rounds} --seed {seed}" + (" --old-first" if old_first else ""),
            "rate_rps": rate_rps,
            "window": {"trace": cfg.trace, "start_s": cfg.start_s, "duration_s": cfg.duration_s},
            "runs": runs, "medians": summary,
            "goodput_ratio": new["goodput_rps"] / old["goodput_rps"]}, indent=1))
        typer.echo(f"wrote {json_out}")


if __name__ == "__main__":
    typer.run(main)
