"""Single-node capacity of the FairBatching policy against vLLM's and Sarathi's (issue 12, item 5).

One simulated node (round-robin, no admission), Azure conv and code (first 600 s) and ShareGPT lengths
with Gamma arrivals (CV 2, 10 req/s before scaling, 2000 requests drawn by the seed), SLOs 1 s / 50 ms,
capacity = the highest rate with per-request attainment >= 90 % (bisection to 2 %). Every arm runs
over ``--seeds`` seeds of lognormal step-time noise (``--noise``), so each capacity comes with its
spread. vLLM runs at every token budget of ``VLLM_BUDGETS``: its best budget per trace, the best
single budget across the traces (what an operator serving mixed traffic would pick) and vLLM 0.32's
OpenAI-server default (``SHIPPED_BUDGET``, ``vllm/engine/arg_utils.py``: 8192 batched tokens on
H100/H200, 2048 on A100) are all read from the same runs. Ratios are taken per seed, then summarised.

    python bench/node_policy.py --json bench/results/sim/node-policy.json   # ~75 min on 2 cores (three traces)
    python bench/node_policy.py --arms fb-first+doomed+align256+margin0.2 --json OUT.json   # (re)run some arms into a file
    python bench/node_policy.py --traces sharegpt-gamma   # add a trace to the same file (~45 min)

Recorded before 2026-12-01 (``bench/results/sim/node-policy.json``) with ``--no-seats-as-vllm --max-num-seqs 256``.
"""

from __future__ import annotations

import json
import os
import statistics as st
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import typer

from cluster.sim.capacity import find_capacity
from cluster.sim.config import SimConfig
from cluster.sim.simulator import load_workload

VLLM_BUDGETS = (512, 1024, 2048, 4096, 8192)
SHIPPED_BUDGET = {"h100-llama3-8b": 8192, "a100-llama3-8b": 2048}
START_RATE_SCALE = {"azure-conv": 3.6, "azure-code": 0.7, "sharegpt-gamma": 1.5}  # near the expected capacity: fewer probes
FB = dict(scheduler="fairbatching", anchor="first-token", relegate="none", chunk_align_tokens=0, tpot_margin=0.0,
          seat_pressure=None, step_model="linear", safety_factor=None)
#: FairBatching arms: the paper's policy (the arrival anchor, EDF without relegation), then each measured
#: addition. Every knob is named, so the arms do not move with the simulator's defaults.
FB_ARMS = {
    "fb-paper": {**FB, "anchor": "arrival"},
    "fb-first": FB,
    "fb-first+align256": {**FB, "chunk_align_tokens": 256},
    "fb-first+doomed": {**FB, "relegate": "doomed"},
    "fb-first+doomed+align64": {**FB, "relegate": "doomed", "chunk_align_tokens": 64},
    "fb-first+doomed+align128": {**FB, "relegate": "doomed", "chunk_align_tokens": 128},
    "fb-first+doomed+align256": {**FB, "relegate": "doomed", "chunk_align_tokens": 256},
    # The simulator's and the serving layer's defaults: the above with the serving layer's TPOT guard band.
    "fb-first+doomed+align256+margin0.2": {**FB, "relegate": "doomed", "chunk_align_tokens": 256, "tpot_margin": 0.2},
    # Moore's fewest-late relegation in place of doomed (node.core.fairbatching, "Relegation").
    "fb-first+fewest-late+align256+margin0.2": {**FB, "relegate": "fewest-late", "chunk_align_tokens": 256,
                                                 "tpot_margin": 0.2},
    # The simulator's and the serving layer's defaults since 2026-12-03: the above with seat pressure 0.8.
    "fb-first+fewest-late+align256+margin0.2+seat0.8": {**FB, "relegate": "fewest-late", "chunk_align_tokens": 256,
                                                         "tpot_margin": 0.2, "seat_pressure": 0.8},
}
# The above planning with the quadratic step model (prefill attention, bench/results/STEPTIME.md), without and
# with a 10 % safety factor on its predictions; the latter is the simulator's and the engines' default
# since 2026-12-04 (STEPTIME.md 3b).
_DEFAULTS = FB_ARMS["fb-first+fewest-late+align256+margin0.2+seat0.8"]
FB_ARMS["fb-defaults+quadratic"] = {**_DEFAULTS, "step_model": "quadratic", "safety_factor": 1.0}
FB_ARMS["fb-defaults+quadratic+sf1.1"] = {**_DEFAULTS, "step_model": "quadratic", "safety_factor": 1.1}

_workloads: dict = {}


def _capacity(task: tuple) -> dict:
    trace, profile, seed, noise, arm, knobs, engine = task
    cfg = SimConfig(profile=profile, ttft_slo_s=1.0, tpot_slo_s=0.05, seed=seed, noise=noise, trace=trace,
                    duration_s=600.0, nodes=1, balancer="round-robin", rate_scale=START_RATE_SCALE[trace], **engine)
    # One load per worker process, trace and seed: a synthetic trace (ShareGPT lengths, Gamma arrivals
    # at 10 req/s before scaling, CV 2) draws its requests from the seed, the same for every arm.
    if (trace, seed) not in _workloads:
        _workloads[trace, seed] = load_workload(cfg)
    t0 = time.perf_counter()
    res = find_capacity(replace(cfg, **knobs), target=0.9, rel_tol=0.02, workload=_workloads[trace, seed])
    return {"trace": trace, "profile": profile, "seed": seed, "arm": arm, "knobs": knobs, **_seats(profile, engine),
            "capacity_rps": res.capacity_rps, "wall_s": round(time.perf_counter() - t0, 1),
            "probes": [(round(p.rate_rps, 3), round(p.attainment, 4)) for p in sorted(res.probes, key=lambda p: p.rate_rps)]}


def _seats(profile: str, engine: dict) -> dict:
    """How a row's nodes count seats and how many they have (the profile's when not set)."""
    from node.fit.profile import load_profile

    return {"seats_as_vllm": engine["seats_as_vllm"],
            "max_num_seqs": engine["max_num_seqs"] or load_profile(profile).max_num_seqs}


def _spread(values: list[float]) -> str:
    return f"{st.mean(values):.3g} ({min(values):.3g}-{max(values):.3g})"


def summarise(rows: list[dict]) -> str:
    """The Markdown tables of ``rows``: capacity per arm, and each FairBatching arm's ratios."""
    cap = {(r["trace"], r["profile"], r["seed"], r["arm"]): r["capacity_rps"] or 0.0 for r in rows}
    traces = sorted({r["trace"] for r in rows})
    profiles = sorted({r["profile"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    out = []
    all_arms = arms
    for profile in profiles:
        # The arms run on this profile for every trace and seed (a file may hold an arm for one profile only).
        arms = [a for a in all_arms if all((t, profile, s, a) in cap for t in traces for s in seeds)]
        vllm = [a for a in arms if a.startswith("vllm[")]
        # The best single budget across the traces: the highest mean over traces of capacity / trace best.
        def rel(a: str) -> float:
            return st.mean(cap[(t, profile, s, a)] / max(cap[(t, profile, s, v)] for v in vllm)
                           for t in traces for s in seeds)
        single = max(vllm, key=rel)
        shipped = f"vllm[{SHIPPED_BUDGET.get(profile, 8192)}]"
        out.append(f"\n### {profile}: capacity req/s, mean (min-max) over seeds {seeds}; best single vLLM budget "
                   f"across traces: {single}; vLLM as shipped: {shipped}\n")
        out.append("| arm | " + " | ".join(traces) + " |")
        out.append("|---|" + "---|" * len(traces))
        for a in arms:
            out.append(f"| {a} | " + " | ".join(_spread([cap[(t, profile, s, a)] for s in seeds]) for t in traces) + " |")
        out.append("\nFairBatching arms against the baselines (per-seed ratios, mean (min-max)):\n")
        out.append("| arm | trace | / vLLM per-trace best | / vLLM best single budget | / vLLM as shipped | / Sarathi |")
        out.append("|---|---|---|---|---|---|")
        for a in arms:
            if not a.startswith("fb"):
                continue
            for t in traces:
                def ratio(base) -> str:
                    return _spread([cap[(t, profile, s, a)] / base(s) for s in seeds])
                best = lambda s, t=t: max(cap[(t, profile, s, v)] for v in vllm)  # noqa: E731
                out.append(f"| {a} | {t} | {ratio(best)} | {ratio(lambda s: cap[(t, profile, s, single)])} "
                           f"| {ratio(lambda s: cap[(t, profile, s, shipped)])} "
                           f"| {ratio(lambda s: cap[(t, profile, s, 'sarathi')])} |")
    return "\n".join(out)


def main(
    json_out: Path = typer.Option(Path("bench/results/sim/node-policy.json"), "--json", help="Where the rows go."),
    traces: str = typer.Option("azure-conv,azure-code", help="Comma-separated traces."),
    profiles: str = typer.Option("h100-llama3-8b,a100-llama3-8b", help="Comma-separated step-time profiles."),
    seeds: int = typer.Option(3, min=1, help="Seeds of step-time noise per arm."),
    noise: float = typer.Option(0.05, min=0.0, help="Sigma of the lognormal step-time noise."),
    jobs: int = typer.Option(os.cpu_count() or 1, min=1, help="Worker processes."),
    only_summary: bool = typer.Option(False, help="Print the tables of an existing --json and exit."),
    seats_as_vllm: bool = typer.Option(True, help="Count sequence seats as vLLM does (the simulator's default; "
                                                  "the results recorded before 2026-12-01: --no-seats-as-vllm)."),
    max_num_seqs: int = typer.Option(0, min=0, help="Sequence seats per node (0: the profile's, 1024 on H100 and 256 on "
                                                    "A100 as vLLM 0.32 ships; recorded before 2026-12-01: 256)."),
    only_arms: str = typer.Option("", "--arms", help="Run only these arms (comma-separated names); default: every arm. "
                                                      "Rows of an existing --json that this run does not redo are kept."),
) -> None:
    """Single-node capacity: FairBatching arms against vLLM at every budget and Sarathi."""
    if only_summary:
        print(summarise(json.loads(json_out.read_text())["rows"]))
        return
    arms = {f"vllm[{b}]": dict(scheduler="vllm", token_budget=b) for b in VLLM_BUDGETS}
    # Sarathi's token budget comes from the TPOT SLO by the planning model: the linear fit, as recorded.
    arms["sarathi"] = dict(scheduler="sarathi", step_model="linear", safety_factor=None)
    arms.update(FB_ARMS)
    rows = []
    if only_arms:
        wanted = [a.strip() for a in only_arms.split(",") if a.strip()]
        unknown = [a for a in wanted if a not in arms]
        if unknown:
            raise typer.BadParameter(f"unknown arm(s) {', '.join(unknown)}; arms: {', '.join(arms)}", param_hint="--arms")
        arms = {a: arms[a] for a in wanted}
    engine = {"seats_as_vllm": seats_as_vllm, "max_num_seqs": max_num_seqs or None}
    tasks = [(t, p, s, noise, a, k, engine) for p in profiles.split(",") for t in traces.split(",")
             for s in range(seeds) for a, k in arms.items()]
    if json_out.exists():  # keep what this run does not redo (other traces, profiles or arms)
        redo = {(t, p, s, a) for t, p, s, _, a, _, _ in tasks}
        rows = [r for r in json.loads(json_out.read_text())["rows"]
                if (r["trace"], r["profile"], r["seed"], r["arm"]) not in redo]
        # One seat setting per file: rows recorded before the settings were stored ran without counting
        # seats as vLLM does, at 256 seats.
        for r in rows:
            had = {"seats_as_vllm": r.get("seats_as_vllm", False), "max_num_seqs": r.get("max_num_seqs", 256)}
            if had != _seats(r["profile"], engine):
                raise typer.BadParameter(
                    f"{json_out} holds rows recorded with {had} on {r['profile']}; this run would use "
                    f"{_seats(r['profile'], engine)}: pass the same settings or another --json", param_hint="--json")
    tasks.sort(key=lambda task: task[0] != "azure-conv")  # the slow trace first: the pool ends evenly
    t0 = time.time()
    with ProcessPoolExecutor(jobs) as pool:
        for n, row in enumerate(pool.map(_capacity, tasks), 1):
            rows.append(row)
            print(f"[{n}/{len(tasks)} {time.time() - t0:6.0f} s] {row['profile']} {row['trace']} seed {row['seed']} "
                  f"{row['arm']}: {row['capacity_rps'] and round(row['capacity_rps'], 3)} req/s", flush=True)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": "python bench/node_policy.py", "noise": noise, "seeds": seeds, "window_s": 600.0,
            "slo": [1.0, 0.05], "target": 0.9, "machine": os.uname().machine}
    json_out.write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    print(summarise(rows))


if __name__ == "__main__":
    typer.run(main)
