"""Which requests one node makes late, by tier and size: a single-node run with SLO tiers and no
admission (``bench/results/TIERS.md``, "One node without admission").

For each tier: how many requests miss, whether by their first token or by TPOT alone, the share of
the tier's tokens (prompt + output) the late ones carry, and their median prompt against the tier's.
Also the share of the window's tokens that its largest requests carry, the most work that leaving a
given share of requests undone can remove (``bench/steady_state_bound.py`` gives the work that must go).

    python bench/tiers_late_requests.py --rate-scale 5.656 --seed 0 \\
        --json bench/results/sim/tiers-node-capacity/seats1024/no-admission-fewest-late/late-27.8rps-seed0.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from cluster.sim.config import SimConfig
from cluster.sim.metrics import attains, ttft_s
from cluster.sim.simulator import simulate

#: TIERS.md's single-node setting, FairBatching with the serving knobs, KV pressure 0.5, no admission.
BASE = dict(trace="azure-conv", profile="h100-llama3-8b", nodes=1, duration_s=900, noise=0.05,
            slo_tier=("interactive=0.5:1:0.05", "batch=0.5:30:0.25"), scheduler="fairbatching",
            relegate="fewest-late", balancer="round-robin", kv_pressure=0.5, seat_pressure=0.8,
            step_model="linear")  # the planning model as recorded (the default until 2026-12-04)


def main(rate_scale: float = typer.Option(5.656, help="Arrival-rate scale (5.656: 27.8 req/s on this window)."),
         seed: int = typer.Option(0, help="Seed of the tier draw and the step-time noise."),
         json_out: Optional[Path] = typer.Option(None, "--json", help="Write the summary here.")) -> None:
    """One run; prints and writes the late requests by tier."""
    result = simulate(SimConfig(**BASE, rate_scale=rate_scale, seed=seed))
    reqs = result.requests
    tokens = np.array([r.prompt_tokens + r.output_tokens for r in reqs], dtype=float)
    largest = np.sort(tokens)[::-1]
    out = {"rate_rps": result.report["offered_rps"], "attainment": result.report["attainment"], "seed": seed,
           "largest_share_of_tokens": {f"{q:g}": float(largest[:int(q * len(largest))].sum() / largest.sum())
                                       for q in (0.05, 0.10, 0.15)},
           "per_tier": {}}
    for tier_ttft_s, name in ((1.0, "interactive"), (30.0, "batch")):
        tier = [r for r in reqs if r.slo.ttft_s == tier_ttft_s]
        late = [r for r in tier if not attains(r)]
        first_late = [r for r in late if ttft_s(r) is None or ttft_s(r) > r.slo.ttft_s]
        out["per_tier"][name] = {
            "requests": len(tier), "late": len(late), "first_token_late": len(first_late),
            "tpot_late_only": len(late) - len(first_late),
            "late_share_of_tokens": (sum(r.prompt_tokens + r.output_tokens for r in late)
                                     / sum(r.prompt_tokens + r.output_tokens for r in tier)),
            "median_prompt_tokens": float(np.median([r.prompt_tokens for r in tier])),
            "median_prompt_tokens_late": float(np.median([r.prompt_tokens for r in late])) if late else None,
        }
    typer.echo(json.dumps(out, indent=1))
    if json_out is not None:
        json_out.write_text(json.dumps(out, indent=1))
        typer.echo(f"wrote {json_out}")


if __name__ == "__main__":
    typer.run(main)
