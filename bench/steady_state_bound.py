"""The most requests per second one node can serve in steady state, whatever its policy (issue 13).

Every step of ``S`` new tokens costs, in the profile's ground truth (the simulator's ``TrueStepTime``),
``fixed + lin(S)`` plus attention terms that do not depend on how the work is batched or chunked (a
prompt of ``p`` tokens costs ``e * p**2 / 2`` of prefill attention in any chunking, its ``k``-th decode
``c * (p + k)``). So a request of ``p`` prompt and ``o`` output tokens costs the node at least

    w = kappa * (p + o - 1) + e * p**2 / 2 + c * ((o - 1) * p + (o - 1) * o / 2)   seconds,

``kappa`` the cheapest cost per token of any step the engine can run (at most its
``max_num_batched_tokens``, s/token). A node that serves a mix
continuously can sustain at most ``1 / mean(w)`` req/s if it serves every request, and
``1 / (f * mean(w))`` if it attains a fraction ``f`` and refuses the rest without regard to their size.
A finite measurement window can exceed this by the work it leaves to after its last arrival (a batch
tier's TTFT), and a policy that refuses the largest prompts first can exceed it too.

    python bench/steady_state_bound.py --trace azure-conv --duration-s 900
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from cluster.sim.config import SimConfig
from cluster.sim.simulator import load_workload
from cluster.sim.true_step_time import TrueStepTime
from node.fit.profile import load_profile

app = typer.Typer(add_completion=False)


@app.command(help="Steady-state upper bound on one node's request rate for a trace window's request mix.")
def main(
    trace: str = typer.Option("azure-conv", help="Trace name or file, as `fairbatching sim run --trace`."),
    duration_s: float = typer.Option(900.0, help="Trace window (s), as the simulator's --duration-s."),
    profile: str = typer.Option("h100-llama3-8b", help="Profile with a ground_truth section."),
    attained: float = typer.Option(0.9, help="Fraction attained (the capacity target), the rest refused."),
    max_step_tokens: Optional[int] = typer.Option(None, help="Largest step (default: the profile's max_num_batched_tokens)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the figures here."),
) -> None:
    prof = load_profile(profile)
    truth = TrueStepTime(prof, host_s=0.0)
    if not truth.uses_ground_truth:
        raise typer.BadParameter(f"profile {profile!r} has no ground_truth section", param_hint="--profile")
    largest = max_step_tokens or prof.max_num_batched_tokens or 8192
    if largest < 1:
        raise typer.BadParameter(f"must be >= 1, got {largest}", param_hint="--max-step-tokens")
    per_token = [truth.step_s(n, 0, 0, 0.0) / n for n in range(1, largest + 1)]
    at = int(np.argmin(per_token))
    kappa = per_token[at]
    requests = load_workload(SimConfig(trace=trace, duration_s=duration_s)).requests
    p = np.array([r.prompt_tokens for r in requests], dtype=float)
    d = np.maximum(np.array([r.output_tokens for r in requests], dtype=float) - 1, 0)
    parts = {"linear_s": kappa * (p + d), "prefill_attention_s": truth.attn_prefill_s * p * p / 2,
             "decode_attention_s": truth.attn_decode_s * (d * p + d * (d + 1) / 2)}
    work = sum(parts.values())
    out = {"trace": trace, "duration_s": duration_s, "profile": profile, "requests": len(requests),
           "max_step_tokens": largest, "kappa_s_per_token": kappa, "kappa_at_tokens": at + 1,
           "mean_work_s": float(work.mean()), **{f"mean_{k}": float(v.mean()) for k, v in parts.items()},
           "all_served_rps": float(1 / work.mean()), "attained": attained,
           "attained_size_blind_rps": float(1 / (attained * work.mean()))}
    typer.echo(f"{len(requests)} requests, mean work {work.mean() * 1e3:.2f} ms (least cost {kappa * 1e6:.2f} us/token "
               f"at {at + 1}-token steps, of steps up to {largest}): at most {out['all_served_rps']:.2f} req/s serving every request, "
               f"{out['attained_size_blind_rps']:.2f} req/s attaining {attained:.0%} with size-blind refusals")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    app()
