"""Every scheduler x balancer arm on one trace, each baseline at its best-tuned token budget.

Baselines are tuned fairly (DESIGN section 4): each candidate token budget is
given its own single-node capacity search on the tuning window, and the
budget with the highest capacity is used for every arm of that scheduler.
Then each arm gets a capacity search on the configured trace and cluster, on
each of several seeds (the mean with its min and max), and is re-run at one
common rate (the lowest capacity among the arms, i.e. the
weakest baseline's capacity) for TTFT distributions at equal load.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from cluster.sim.capacity import CapacityResult, capacity_over_seeds, find_capacity
from cluster.sim.config import SimConfig
from cluster.sim.metrics import ttft_samples
from cluster.sim.simulator import load_workload, simulate
from node.fit.profile import load_profile

BUDGET_CANDIDATES: dict[str, tuple[int | None, ...]] = {
    "vllm": (512, 1024, 2048, 4096, 8192),
    "vllm-priority": (512, 1024, 2048, 4096, 8192),  # tuned like vllm (issue 13)
    "sarathi": (None, 512, 1024, 2048),  # None: derived each step from the TPOT SLO
    "fairbatching": (None,),
}


@dataclass(frozen=True)
class Arm:
    scheduler: str
    balancer: str
    admission_cap: bool = False
    token_budget: int | None = None

    @property
    def label(self) -> str:
        budget = f"[{self.token_budget}]" if self.token_budget else ""
        cap = "+cap" if self.admission_cap else ""
        return f"{self.scheduler}{budget}/{self.balancer}{cap}"

    def apply(self, cfg: SimConfig) -> SimConfig:
        return replace(
            cfg, scheduler=self.scheduler, balancer=self.balancer,
            admission_cap=self.admission_cap, token_budget=self.token_budget,
        )


def tune_token_budget(
    cfg: SimConfig, scheduler: str, *, target: float, rel_tol: float = 0.04,
    tune_duration_s: float | None = 600.0, log: Callable[[str], None] = print,
) -> tuple[int | None, dict]:
    """The candidate budget with the highest single-node capacity on the tuning window."""
    candidates = BUDGET_CANDIDATES.get(scheduler, (None,))
    if len(candidates) == 1:
        return candidates[0], {}
    tune_cfg = replace(cfg, nodes=1, balancer="round-robin", admission_cap=False, scheduler=scheduler,
                       duration_s=tune_duration_s if tune_duration_s else cfg.duration_s,
                       rate_scale=cfg.rate_scale / cfg.nodes)
    workload, profile = load_workload(tune_cfg), load_profile(cfg.profile)
    capacities: dict = {}
    for budget in candidates:
        res = find_capacity(replace(tune_cfg, token_budget=budget), target=target, rel_tol=rel_tol,
                            workload=workload, profile=profile)
        capacities[str(budget or "dynamic")] = res.capacity_rps
        log(f"  tune {scheduler} budget={budget or 'dynamic'}: single-node capacity {res.capacity_rps}")
    best = max(candidates, key=lambda b: capacities[str(b or "dynamic")] or 0.0)
    return best, capacities


def run_compare(
    cfg: SimConfig,
    arms: list[Arm],
    *,
    target: float = 0.9,
    rel_tol: float = 0.02,
    seeds: int = 3,
    log: Callable[[str], None] = print,
) -> tuple[dict, dict[str, CapacityResult], dict[str, list[float]]]:
    """Capacity of every arm on each of ``seeds`` seeds (``capacity_over_seeds``: the summary's
    ``capacity_rps`` is the mean, with ``capacity_rps_min``/``_max``), then each arm at the common rate
    (the lowest of the arms' mean capacity rate scales). Returns (summary, the first seed's search per
    arm, ttft samples)."""
    workload, profile = load_workload(cfg), load_profile(cfg.profile)
    results: dict[str, CapacityResult] = {}
    rows = []
    scales = []
    for arm in arms:
        res = capacity_over_seeds(arm.apply(cfg), seeds=seeds, target=target, rel_tol=rel_tol,
                                  workload=workload, profile=profile)
        results[arm.label] = res.results[0]
        found = [r.capacity_rate_scale for r in res.results if r.capacity_rate_scale]
        if found:
            scales.append(sum(found) / len(found))
        log(f"  {arm.label}: capacity {res.summary()}")
        rows.append({"arm": arm.label, "scheduler": arm.scheduler, "balancer": arm.balancer,
                     "admission_cap": arm.admission_cap, "token_budget": arm.token_budget, **res.to_dict()})
    common_scale = min(scales) if scales else cfg.rate_scale
    ttfts: dict[str, list[float]] = {}
    at_common = {}
    for arm in arms:
        run = simulate(replace(arm.apply(cfg), rate_scale=common_scale), workload=workload, profile=profile)
        ttfts[arm.label] = ttft_samples(run.requests)
        at_common[arm.label] = {k: run.report[k] for k in (
            "offered_rps", "attainment", "admitted_attainment", "rejected_fraction", "ttft_p50", "ttft_p90",
            "ttft_p99", "tpot_p50", "tpot_p99", "token_attainment_arrival", "token_attainment_first_token")}
    summary = {
        "trace": workload.name, "profile": profile.name, "nodes": cfg.nodes, "seed": cfg.seed,
        "ttft_slo_s": cfg.slo.ttft_s, "tpot_slo_s": cfg.slo.tpot_s, "attainment_target": target,
        "common_rate_scale": common_scale,
        "common_rate_rps": next(iter(at_common.values()))["offered_rps"] if at_common else None,
        "arms": rows, "at_common_rate": at_common,
    }
    return summary, results, ttfts
