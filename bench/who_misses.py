"""Who misses, by prompt size: per-request attainment in prompt-length bands, for several scheduler arms
at the same rate on one simulated node (round-robin, no admission; ``bench/node_policy.py``'s setup).

Fewest-late relegation (``relegate=fewest-late``, Moore's rule) keeps the most requests in time by
relegating the costliest prompts under overload; this shows what that costs the long prompts, beside
vLLM at its best single budget and FairBatching relegating only doomed requests.

    python bench/who_misses.py --trace azure-conv --rate-scale 4.9 --seeds 0,1,2 --json OUT.json
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import typer

from cluster.sim.config import SimConfig
from cluster.sim.metrics import attains, ttft_s
from cluster.sim.simulator import load_workload, simulate

FB = dict(scheduler="fairbatching", anchor="first-token", chunk_align_tokens=256, tpot_margin=0.2)
ARMS = {
    "vllm[1024]": dict(scheduler="vllm", token_budget=1024),
    "fb doomed": {**FB, "relegate": "doomed"},
    "fb fewest-late": {**FB, "relegate": "fewest-late"},
}
#: Prompt-length bands as quantiles of the window's prompts.
BANDS = ((0.0, 0.5), (0.5, 0.9), (0.9, 0.99), (0.99, 1.0))


def main(
    trace: str = typer.Option("azure-conv", help="Trace (as `fairbatching sim run --trace`)."),
    rate_scale: float = typer.Option(4.9, help="Arrival-rate multiplier (conv: 4.9 is about 23.3 req/s)."),
    profile: str = typer.Option("h100-llama3-8b", help="Step-time profile."),
    duration_s: float = typer.Option(600.0, help="Trace window, seconds."),
    seeds: str = typer.Option("0,1,2", help="Comma-separated seeds of step-time noise (sigma 0.05)."),
    json_out: Path = typer.Option(None, "--json", help="Write the rows here."),
) -> None:
    """Attainment and TTFT P90 per prompt-length band, per arm, at one rate (mean over seeds)."""
    rows = []
    for seed in [int(s) for s in seeds.split(",")]:
        base = SimConfig(profile=profile, ttft_slo_s=1.0, tpot_slo_s=0.05, seed=seed, noise=0.05, trace=trace,
                         duration_s=duration_s, nodes=1, balancer="round-robin", rate_scale=rate_scale,
                         seat_pressure=None, step_model="linear")  # as recorded, before the defaults of 0.8 and quadratic
        workload = load_workload(base)
        for arm, knobs in ARMS.items():
            res = simulate(replace(base, **knobs), workload=workload)
            prompts = np.array([r.prompt_tokens for r in res.requests])
            ok = np.array([attains(r) for r in res.requests])
            ttft = np.array([ttft_s(r) if ttft_s(r) is not None else np.inf for r in res.requests])
            for lo, hi in BANDS:
                a, b = np.quantile(prompts, lo), np.quantile(prompts, hi)
                sel = (prompts >= a) & ((prompts <= b) if hi == 1.0 else (prompts < b))
                rows.append({"seed": seed, "arm": arm, "band": f"p{int(lo * 100)}-p{int(hi * 100)}",
                             "prompt_tokens": [int(a), int(b)], "requests": int(sel.sum()),
                             "attainment": float(ok[sel].mean()), "ttft_p90_s": float(np.quantile(ttft[sel], 0.9))})
            rows.append({"seed": seed, "arm": arm, "band": "all", "prompt_tokens": [int(prompts.min()),
                         int(prompts.max())], "requests": len(prompts), "attainment": float(ok.mean()),
                         "ttft_p90_s": float(np.quantile(ttft, 0.9))})
            print(f"seed {seed} {arm}: attainment {ok.mean():.3f}", flush=True)
    print(f"\n{trace}, rate scale {rate_scale} ({profile}, one node), mean over seeds {seeds}:\n")
    bands = list(dict.fromkeys(r["band"] for r in rows))
    print("| arm | " + " | ".join(f"{b} attainment (TTFT P90 s)" for b in bands) + " |")
    print("|---|" + "---|" * len(bands))
    for arm in ARMS:
        cells = []
        for band in bands:
            sel = [r for r in rows if r["arm"] == arm and r["band"] == band]
            p90 = np.mean([r["ttft_p90_s"] for r in sel])
            cells.append(f"{np.mean([r['attainment'] for r in sel]):.3f} ({p90:.2f})")
        print(f"| {arm} | " + " | ".join(cells) + " |")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({"trace": trace, "rate_scale": rate_scale, "profile": profile,
                                        "duration_s": duration_s, "rows": rows}, indent=1))


if __name__ == "__main__":
    typer.run(main)
