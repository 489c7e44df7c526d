"""Reproduce the simulator results in bench/results/sim/ (issue 3, item 7).

    .venv/bin/python bench/sim_experiments.py [--quick] [--only SECTION[,SECTION]]

Sections (each writes bench/results/sim/SECTION.json):

* ``crosscheck-single``: DESIGN section 6's single-node figures with the
  ref-linear-h100 profile (first 600 s of Azure conv and code, SLOs 1 s / 50 ms,
  attainment 90 %): vLLM at its best budget, Sarathi dynamic, FairBatching
  with both anchors. No balancer rejection (round-robin over one node).
* ``crosscheck-cluster``: the 8-node figures on the whole traces: vLLM +
  power-of-two, FB-first + PAB without rejection, FB-first + PAB, and vLLM /
  Sarathi + least-prefill with the naive admission cap.
* ``single-h100``, ``cluster-h100``: the same questions on the
  h100-llama3-8b profile (ground-truth step times), more arms.
* ``ablations``: urgency rule, budget floor, PAB report delay, PAB variants.

``--quick`` shrinks every trace window and loosens the bisection so the whole
script runs in a few minutes (smoke test of the pipeline, not results).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import typer

from cluster.sim.capacity import find_capacity
from cluster.sim.compare import tune_token_budget
from cluster.sim.config import SimConfig
from cluster.sim.simulator import load_workload, simulate

OUT = Path(__file__).resolve().parent / "results" / "sim"
KEEP = ("offered_rps", "attainment", "admitted_attainment", "rejected_fraction", "ttft_p50", "ttft_p90", "ttft_p99",
        "tpot_p50", "tpot_p99", "token_attainment_arrival", "token_attainment_first_token", "goodput_rps",
        "preemptions", "sim_speedup", "sim_speedup_cpu", "wall_s", "unfinished")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def capacity_row(label: str, cfg: SimConfig, *, target=0.9, rel_tol=0.02, metric="attainment", cache=None) -> dict:
    t0 = time.perf_counter()
    key = (cfg.trace, cfg.start_s, cfg.duration_s, cfg.max_prompt_tokens)
    if cache is not None and key not in cache:
        cache[key] = load_workload(cfg)
    res = find_capacity(cfg, target=target, rel_tol=rel_tol, metric=metric,
                        workload=cache[key] if cache is not None else None)
    report = res.result_at_capacity.report if res.result_at_capacity else {}
    row = {
        "arm": label, "trace": cfg.trace, "profile": cfg.profile, "nodes": cfg.nodes, "scheduler": cfg.scheduler,
        "balancer": cfg.balancer, "admission_cap": cfg.admission_cap, "token_budget": cfg.token_budget,
        "anchor": cfg.anchor, "metric": metric, "target": target, "capacity_rps": res.capacity_rps,
        "capacity_rate_scale": res.capacity_rate_scale, "capacity_is_lower_bound": res.lower_bound,
        "at_capacity": {k: report.get(k) for k in KEEP},
        "probes": [(round(p.rate_rps, 3), round(p.attainment, 4)) for p in sorted(res.probes, key=lambda p: p.rate_rps)],
        "search_wall_s": round(time.perf_counter() - t0, 1),
    }
    log(f"{label:<45} {cfg.trace:<11} capacity {res.capacity_rps and round(res.capacity_rps, 2)} rps "
        f"({len(res.probes)} probes, {row['search_wall_s']} s)")
    return row


def save(section: str, data: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{section}.json").write_text(json.dumps(data, indent=1) + "\n")
    log(f"wrote {OUT / (section + '.json')}")


def base_cfg(quick: bool, **kw) -> SimConfig:
    # The simulator's defaults when these results were recorded (it now relegates, aligns and anchors at the
    # first token by default); the arms set what they vary.
    kw = {"anchor": "arrival", "relegate": "none", "chunk_align_tokens": 0, "tpot_margin": 0.0, "seat_pressure": None, **kw}
    # (seats as recorded, before 2026-12-01: the plan's cap only)
    cfg = SimConfig(profile="ref-linear-h100", ttft_slo_s=1.0, tpot_slo_s=0.05, seed=0, seats_as_vllm=False, max_num_seqs=256,
                    **kw)
    if quick:
        cfg = replace(cfg, duration_s=min(cfg.duration_s or 120.0, 120.0))
    return cfg


# Starting rate scales near the expected capacity save probes (conv ~5.5 req/s, code ~2.6 req/s at x1).
START = {("azure-conv", 1): 3.6, ("azure-code", 1): 0.7, ("azure-conv", 8): 30.0, ("azure-code", 8): 25.0}


def crosscheck_single(quick: bool, profile: str = "ref-linear-h100") -> dict:
    rows, budgets, cache = [], {}, {}
    tol = 0.05 if quick else 0.02
    for trace in ("azure-conv", "azure-code"):
        cfg = replace(base_cfg(quick, trace=trace, duration_s=600.0, nodes=1, balancer="round-robin"),
                      profile=profile, rate_scale=START[(trace, 1)])
        best, caps = tune_token_budget(cfg, "vllm", target=0.9, rel_tol=tol, tune_duration_s=cfg.duration_s, log=log)
        budgets[trace] = {"vllm_best": best, "vllm_capacity_by_budget": caps}
        rows.append(capacity_row(f"vllm[{best}]", replace(cfg, scheduler="vllm", token_budget=best), rel_tol=tol, cache=cache))
        rows.append(capacity_row("sarathi dynamic", replace(cfg, scheduler="sarathi"), rel_tol=tol, cache=cache))
        for anchor in ("arrival", "first-token"):
            rows.append(capacity_row(f"fairbatching {anchor}", replace(cfg, scheduler="fairbatching", anchor=anchor),
                                     rel_tol=tol, cache=cache))
    return {"profile": profile, "slo": [1.0, 0.05], "window_s": 600.0, "rows": rows, "tuning": budgets}


def crosscheck_cluster(quick: bool, budgets: dict, profile: str = "ref-linear-h100") -> dict:
    rows, cache = [], {}
    tol = 0.05 if quick else 0.02
    for trace in ("azure-conv", "azure-code"):
        cfg = replace(base_cfg(quick, trace=trace, nodes=8), profile=profile, rate_scale=START[(trace, 8)],
                      duration_s=120.0 if quick else None)
        vb = budgets.get(trace, 2048)
        arms = [
            ("vllm+power-of-two", dict(scheduler="vllm", token_budget=vb, balancer="power-of-two")),
            ("fb-first+pab no-reject", dict(scheduler="fairbatching", anchor="first-token", balancer="pab", pab_reject=False)),
            ("fb-first+pab", dict(scheduler="fairbatching", anchor="first-token", balancer="pab")),
            ("vllm+least-prefill+cap", dict(scheduler="vllm", token_budget=vb, balancer="least-prefill", admission_cap=True)),
            ("sarathi+least-prefill+cap", dict(scheduler="sarathi", balancer="least-prefill", admission_cap=True)),
        ]
        for label, kw in arms:
            rows.append(capacity_row(label, replace(cfg, **kw), rel_tol=tol, cache=cache))
    return {"profile": profile, "slo": [1.0, 0.05], "window": "whole trace", "rows": rows, "vllm_budgets": budgets}


def single_h100(quick: bool) -> dict:
    """Single node, ground-truth H100 step times: FB (both anchors) vs best-tuned vLLM and Sarathi,
    capacity under the per-request and both per-token attainment definitions."""
    out = crosscheck_single(quick, profile="h100-llama3-8b")
    cache, tol = {}, (0.05 if quick else 0.02)
    extra = []
    for trace in ("azure-conv", "azure-code"):
        cfg = replace(base_cfg(quick, trace=trace, duration_s=600.0, nodes=1, balancer="round-robin"),
                      profile="h100-llama3-8b", rate_scale=START[(trace, 1)])
        best = out["tuning"][trace]["vllm_best"]
        # Per-token attainment under the first-token anchor is not bounded by load (queueing delays only
        # token 0), so it is no capacity metric; it is reported at every capacity instead.
        for metric in ("token_attainment_arrival",):
            for label, kw in (("vllm", dict(scheduler="vllm", token_budget=best)), ("sarathi", dict(scheduler="sarathi")),
                              ("fairbatching arrival", dict(scheduler="fairbatching", anchor="arrival")),
                              ("fairbatching first-token", dict(scheduler="fairbatching", anchor="first-token"))):
                extra.append(capacity_row(f"{label} [{metric}]", replace(cfg, **kw), metric=metric, rel_tol=tol, cache=cache))
    out["rows_token_attainment"] = extra
    return out


def cluster_h100(quick: bool, budgets: dict, traces=("azure-code", "azure-conv")) -> dict:
    """8 nodes, whole traces, ground-truth H100 step times: every scheduler with the conventional
    balancers, with and without the admission cap; FB with PAB and with conventional balancers."""
    cache, tol = {}, (0.05 if quick else 0.03)
    out = {}
    for trace in traces:
        cfg = replace(base_cfg(quick, trace=trace, nodes=8), profile="h100-llama3-8b", rate_scale=START[(trace, 8)],
                      duration_s=120.0 if quick else None)
        schedulers = {"vllm": dict(scheduler="vllm", token_budget=budgets.get(trace, 2048)),
                      "sarathi": dict(scheduler="sarathi"),
                      "fb-first": dict(scheduler="fairbatching", anchor="first-token")}
        arms = [("fb-first+pab", dict(schedulers["fb-first"], balancer="pab")),
                ("fb-arrival+pab", dict(scheduler="fairbatching", anchor="arrival", balancer="pab")),
                ("fb-first+pab no-reject", dict(schedulers["fb-first"], balancer="pab", pab_reject=False))]
        for name, kw in schedulers.items():
            # The long conv trace gets the two most informative conventional balancers only (time box).
            balancers = ("power-of-two", "least-prefill") if name == "fb-first" or trace == "azure-conv" else \
                ("power-of-two", "least-prefill", "queue-kv", "round-robin")
            for bal in balancers:
                for cap in (False, True):
                    arms.append((f"{name}+{bal}{'+cap' if cap else ''}", dict(kw, balancer=bal, admission_cap=cap)))
        rows = [capacity_row(label, replace(cfg, **kw), rel_tol=tol, cache=cache) for label, kw in arms]
        out[trace] = rows
        data = {"profile": "h100-llama3-8b", "slo": [1.0, 0.05], "rows": rows}
        save(f"cluster-h100-{trace}" + ("-quick" if quick else ""), data)
        # TTFT tails at equal load: every arm at the best uncapped baseline's capacity rate.
        baseline = max((r for r in rows if not r["arm"].startswith("fb") and not r["admission_cap"]),
                       key=lambda r: r["capacity_rps"] or 0.0)
        scale = baseline["capacity_rate_scale"]
        at_rate = {}
        for label, kw in arms:
            rep = simulate(replace(cfg, rate_scale=scale, **kw), workload=cache[(cfg.trace, cfg.start_s, cfg.duration_s, cfg.max_prompt_tokens)]).report
            at_rate[label] = {k: rep[k] for k in KEEP}
            log(f"  at {baseline['arm']} capacity: {label:<36} ttft_p99 {rep['ttft_p99']:.3f} attainment {rep['attainment']:.3f}")
        data["at_baseline_capacity"] = {"baseline": baseline["arm"], "rate_scale": scale, "arms": at_rate}
        save(f"cluster-h100-{trace}" + ("-quick" if quick else ""), data)
    return out


def ablations_node(quick: bool) -> dict:
    """Urgency rule and budget floor of FairBatching (first-token anchor), single node, both profiles."""
    rows, cache = [], {}
    tol = 0.05 if quick else 0.02
    for profile in ("ref-linear-h100", "h100-llama3-8b"):
        for trace in ("azure-conv", "azure-code"):
            cfg = replace(base_cfg(quick, trace=trace, duration_s=600.0, nodes=1, balancer="round-robin"),
                          profile=profile, rate_scale=START[(trace, 1)], scheduler="fairbatching", anchor="first-token")
            for label, kw in (("fb-first default", {}), ("urgency=tpot", dict(urgency="tpot")),
                              ("no budget floor", dict(budget_floor=False))):
                rows.append(capacity_row(f"{label} ({profile})", replace(cfg, **kw), rel_tol=tol, cache=cache))
    return {"rows": rows}


def ablations_pab(quick: bool, traces=("azure-code", "azure-conv")) -> None:
    """PAB report delay and PAB variants: FB-first + PAB, 8 nodes, whole traces, ref-linear-h100."""
    rows, cache = [], {}
    tol = 0.05 if quick else 0.02
    for trace in traces:
        cfg = replace(base_cfg(quick, trace=trace, nodes=8), profile="ref-linear-h100", rate_scale=START[(trace, 8)],
                      duration_s=120.0 if quick else None, scheduler="fairbatching", anchor="first-token", balancer="pab")
        arms = [("pab delay 0", {}), ("pab delay 0.05 s", dict(pab_delay_s=0.05)), ("pab delay 0.2 s", dict(pab_delay_s=0.2)),
                ("pab delay 1 s", dict(pab_delay_s=1.0)), ("pab edf variant", dict(pab_variant="edf")),
                ("pab best-fit", dict(pab_fit="best")), ("pab no-reject", dict(pab_reject=False)),
                ("pab + balancer queue 0.5 s", dict(balancer_queue_s=0.5)),
                ("pab oracle output lengths", dict(oracle_output_lengths=True))]
        for label, kw in arms:
            rows.append(capacity_row(label, replace(cfg, **kw), rel_tol=tol, cache=cache))
        save(f"ablations-pab-{trace}" + ("-quick" if quick else ""), {"profile": "ref-linear-h100", "rows": rows})
        rows = []


def pab_delay(quick: bool, traces=("azure-code",)) -> None:
    """PAB report delay with and without acknowledged debits (FB-first + PAB, 8 nodes, whole trace, ref-linear)."""
    cache, tol = {}, (0.05 if quick else 0.02)
    for trace in traces:
        rows = []
        cfg = replace(base_cfg(quick, trace=trace, nodes=8), rate_scale=START[(trace, 8)],
                      duration_s=120.0 if quick else None, scheduler="fairbatching", anchor="first-token", balancer="pab")
        for acks in (True, False):
            for delay in (0.05, 0.2, 1.0):
                label = f"pab delay {delay} s, {'acked debits' if acks else 'report replaces view'}"
                rows.append(capacity_row(label, replace(cfg, pab_delay_s=delay, report_acks=acks), rel_tol=tol, cache=cache))
        save(f"pab-delay-{trace}" + ("-quick" if quick else ""), {"profile": "ref-linear-h100", "rows": rows})


def cap_sensitivity(quick: bool) -> dict:
    """How the naive admission cap's size moves the capped baselines (8 nodes, whole code trace, ref-linear)."""
    rows, cache = [], {}
    tol = 0.05 if quick else 0.02
    cfg = replace(base_cfg(quick, trace="azure-code", nodes=8), rate_scale=START[("azure-code", 8)],
                  duration_s=120.0 if quick else None, balancer="least-prefill", admission_cap=True)
    default_cap = int((1.0 - 0.0056) / 21e-6)
    for sched, kw in (("sarathi", dict(scheduler="sarathi")), ("vllm", dict(scheduler="vllm", token_budget=1024))):
        for factor in (0.5, 0.75, 1.5, 2.0):
            cap = int(default_cap * factor)
            rows.append(capacity_row(f"{sched}+least-prefill+cap x{factor} ({cap} tokens)",
                                     replace(cfg, admission_cap_tokens=cap, **kw), rel_tol=tol, cache=cache))
    return {"profile": "ref-linear-h100", "default_cap_tokens": default_cap, "rows": rows}


def tuned_budgets(section: str, run: Callable[[bool], dict], quick: bool, only: set[str]) -> dict[str, int]:
    """vLLM's best token budget per trace from a tuning section: ``run`` it (and save it) when it is selected,
    else read its saved full run; {} when neither."""
    if section in only:
        data = run(quick)
        save(section + ("-quick" if quick else ""), data)
    elif (OUT / f"{section}.json").exists():
        data = json.loads((OUT / f"{section}.json").read_text())
    else:
        return {}
    return {t: v["vllm_best"] for t, v in data["tuning"].items()}


app = typer.Typer(add_completion=False, rich_markup_mode="markdown")


@app.command(help=__doc__)
def main(
    quick: bool = typer.Option(False, "--quick", help="Shrink every trace window and loosen the bisection "
                               "(a smoke test of the pipeline, not results)."),
    only: str = typer.Option(
        "crosscheck-single,crosscheck-cluster,single-h100,ablations-node,cluster-h100,ablations-pab",
        help="Comma-separated sections to run (also: pab-delay, cap-sensitivity)."),
    traces: str = typer.Option("azure-code,azure-conv", help="Traces of the 8-node sections."),
    vllm_budgets: str = typer.Option("", help="vLLM budgets per trace for the H100 cluster runs, TRACE=TOKENS,...; "
                                     "default: the tuning in single-h100.json, else 2048."),
) -> None:
    sections = set(only.split(","))
    suffix = "-quick" if quick else ""
    budgets = tuned_budgets("crosscheck-single", crosscheck_single, quick, sections)
    if "crosscheck-cluster" in sections:
        save("crosscheck-cluster" + suffix, crosscheck_cluster(quick, budgets))
    h100_budgets = tuned_budgets("single-h100", single_h100, quick, sections)
    if vllm_budgets:  # e.g. azure-code=1024,azure-conv=1024 (from an earlier tuning run)
        h100_budgets = {k: int(v) for k, v in (kv.split("=") for kv in vllm_budgets.split(","))}
    trace_list = tuple(traces.split(","))
    if "ablations-node" in sections:
        save("ablations-node" + suffix, ablations_node(quick))
    if "cluster-h100" in sections:
        cluster_h100(quick, h100_budgets, trace_list)
    if "ablations-pab" in sections:
        ablations_pab(quick, trace_list)
    if "pab-delay" in sections:
        pab_delay(quick, trace_list)
    if "cap-sensitivity" in sections:
        save("cap-sensitivity" + suffix, cap_sensitivity(quick))


if __name__ == "__main__":
    app()
