"""Capacity: the highest request rate at which SLO attainment stays at or above a target.

The rate is swept by scaling the trace's inter-arrival times (burst structure
kept). ``find_capacity`` brackets the capacity by doubling or halving the rate
scale, then bisects (geometrically) until the bracket is within ``rel_tol``.
Attainment near the cliff is noisy, so ``capacity_over_seeds`` searches on
several seeds and reports the spread. The result keeps every probe, which
gives the attainment-vs-rate curve for free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

from cluster.sim.config import SimConfig
from cluster.sim.simulator import SimResult, load_workload, simulate, true_step_time
from cluster.workload.traces import Workload
from node.fit.profile import Profile, load_profile


@dataclass
class Probe:
    rate_scale: float
    rate_rps: float
    attainment: float  # the searched metric (attainment unless told otherwise)
    report: dict = field(repr=False)


@dataclass
class CapacityResult:
    capacity_rps: float | None  # None when even the lowest probed rate misses the target
    capacity_rate_scale: float | None
    target: float
    probes: list[Probe]
    result_at_capacity: SimResult | None = field(default=None, repr=False)
    lower_bound: bool = False  # the metric never failed: capacity is at least this
    why: list[str] = field(default_factory=list)  # when no rate met the target: what the lowest probe shows


    def to_dict(self) -> dict:
        at = self.result_at_capacity.report if self.result_at_capacity else None
        return {
            "capacity_rps": self.capacity_rps,
            "capacity_rate_scale": self.capacity_rate_scale,
            "capacity_is_lower_bound": self.lower_bound,
            "why_no_capacity": self.why,
            "attainment_target": self.target,
            "report": at,
            "probes": self.probe_rows(),
        }

    def probe_rows(self) -> list[dict]:
        """The probes as JSON rows, by rate."""
        return [{"rate_scale": p.rate_scale, "rate_rps": p.rate_rps, "attainment": p.attainment,
                 "admitted_attainment": p.report["admitted_attainment"], "rejected_fraction": p.report["rejected_fraction"],
                 "ttft_p99": p.report["ttft_p99"], "tpot_p99": p.report["tpot_p99"]}
                for p in sorted(self.probes, key=lambda p: p.rate_scale)]


def report_metric(report: dict, metric: str) -> float:
    """``report[metric]``, where ``metric`` may be a dotted path into the report
    (``per_tier.interactive.attainment``); a missing or empty value counts as 0.
    Raises ``KeyError`` naming the metric when the path is not in the report."""
    value = report
    for key in metric.split("."):
        if not isinstance(value, dict) or key not in value:
            raise KeyError(f"no metric {metric!r} in the run report")
        value = value[key]
    return float(value or 0.0)


def find_capacity(
    cfg: SimConfig,
    *,
    target: float = 0.9,
    rel_tol: float = 0.02,
    max_probes: int = 24,
    max_doublings: int = 6,
    metric: str = "attainment",
    workload: Workload | None = None,
    profile: Profile | None = None,
    on_probe: Callable[[Probe], None] | None = None,
) -> CapacityResult:
    """Bisect ``cfg.rate_scale`` for the highest rate with ``metric >= target``.

    Starts from ``cfg.rate_scale``. ``metric`` is a key of the run report
    (``attainment``, ``admitted_attainment``, ``token_attainment_arrival``,
    ...) or a dotted path into it (``per_tier.interactive.attainment``). Returns the last passing probe as the capacity, with its full
    ``SimResult``. A metric that still passes after ``max_doublings``
    doublings of the rate is not bounded by load (e.g. first-token-anchored
    per-token attainment, where queueing delays only token 0): the result is
    then flagged ``lower_bound``. Halving the rate stops early when the last three probes measured the
    same value and TTFT P50 (``_settled``: requests no longer meet one another, so no lower rate does
    better). Raises ``ValueError`` for a bad ``target`` or ``rel_tol`` and for a
    window whose arrivals span no time (its rate is undefined).
    """
    if not 0 < target <= 1:
        raise ValueError(f"target must be in (0, 1], got {target!r}")
    if rel_tol <= 0:
        raise ValueError(f"rel_tol must be > 0, got {rel_tol!r}")
    profile = profile or load_profile(cfg.profile)
    workload = workload if workload is not None else load_workload(cfg)
    reqs = workload.requests
    if len(reqs) < 2 or reqs[-1].arrival_s <= reqs[0].arrival_s:
        raise ValueError(f"{workload.name}: a capacity needs arrivals spread over time, and the window's "
                         f"{len(reqs)} arrival(s) share one instant, so its request rate is undefined "
                         "(--spread-ties spreads tied arrivals over the trace's time resolution)")
    probes: list[Probe] = []
    results: dict[float, SimResult] = {}

    def probe(scale: float) -> bool:
        res = simulate(replace(cfg, rate_scale=scale), workload=workload, profile=profile)
        p = Probe(scale, res.report["offered_rps"], report_metric(res.report, metric), res.report)
        probes.append(p)
        results[scale] = res
        if on_probe:
            on_probe(p)
        return p.attainment >= target

    scale = cfg.rate_scale
    lo = hi = None
    if probe(scale):
        lo = scale
        while hi is None and len(probes) < min(max_probes, max_doublings + 1):
            scale *= 2
            if probe(scale):
                lo = scale
            else:
                hi = scale
    else:
        hi = scale
        while lo is None and len(probes) < max_probes:
            scale /= 2
            if probe(scale):
                lo = scale
            else:
                hi = scale
                if _settled(probes[-3:]):
                    break  # halving the rate changes nothing: the floor of vanishing load, no rate meets it
    if lo is not None and hi is not None:
        while hi / lo > 1 + rel_tol and len(probes) < max_probes:
            mid = math.sqrt(lo * hi)
            if probe(mid):
                lo = mid
            else:
                hi = mid
    if lo is None:
        lowest = min(probes, key=lambda p: p.rate_scale)
        return CapacityResult(None, None, target, probes, why=why_no_rate_meets(cfg, workload, profile, lowest, target))
    best = results[lo]
    return CapacityResult(best.report["offered_rps"], lo, target, probes, best, lower_bound=hi is None)


def _settled(probes: list[Probe]) -> bool:
    """Whether three probes at falling rates show vanishing load: the same metric value and a TTFT P50
    within 2 % (an overloaded node can miss everything at several rates, but its TTFT still falls)."""
    if len(probes) < 3 or len({p.attainment for p in probes}) > 1:
        return False
    p50s = [p.report.get("ttft_p50") for p in probes]
    return None not in p50s and max(p50s) <= 1.02 * min(p50s)


@dataclass
class SeedCapacities:
    """One capacity search per seed (``seed``, ``seed + 1``, ...): the capacity with its spread.

    ``results[k]`` is the search on ``seeds[k]``. A seed on which no rate met the target has capacity
    None; ``mean_rps``, ``min_rps`` and ``max_rps`` (req/s) are over the seeds that have one (None when
    none has). ``fixed``: every seed gave the same capacity: nothing in the configuration is drawn
    at random (no ``--noise``, no ``--slo-tier``), or what is drawn moves the capacity less than the
    search's resolution (each seed's bisection then takes the same path to the same rate)."""

    seeds: list[int]
    results: list[CapacityResult]

    @property
    def capacities_rps(self) -> list[float | None]:
        return [r.capacity_rps for r in self.results]

    def _found(self) -> list[float]:
        return [c for c in self.capacities_rps if c is not None]

    @property
    def mean_rps(self) -> float | None:
        found = self._found()
        return sum(found) / len(found) if found else None

    @property
    def min_rps(self) -> float | None:
        return min(self._found(), default=None)

    @property
    def max_rps(self) -> float | None:
        return max(self._found(), default=None)

    @property
    def fixed(self) -> bool:
        return len(set(self.capacities_rps)) == 1

    def summary(self) -> str:
        """``"12.3 req/s (min 11.9, max 12.8 over 3 seeds)"``, or why there is none; ``"at least ..."``
        when a seed's search met the target at its highest rate (``CapacityResult.lower_bound``)."""
        if self.mean_rps is None:
            return f"no rate met the target on any of {len(self.seeds)} seeds"
        missed = sum(c is None for c in self.capacities_rps)
        unbounded = sum(r.lower_bound for r in self.results)
        seeds = f"{len(self.seeds)} seed{'s' if len(self.seeds) > 1 else ''}"
        text = (f"{'at least ' if unbounded else ''}{self.mean_rps:.4g} req/s (min {self.min_rps:.4g}, "
                f"max {self.max_rps:.4g} over {seeds}")
        if unbounded:
            text += (f"; {unbounded} still met the target at the highest rate the search offers: a lower bound, "
                     "not a spread")
        if missed:
            text += f"; {missed} met the target at no rate"
        if self.fixed and len(self.seeds) > 1:
            text += ("; the same on every seed: what the seeds draw, if anything, moves it less than the "
                     "search's resolution (--rel-tol)")
        return text + ")"

    def to_dict(self) -> dict:
        """The first seed's ``CapacityResult.to_dict()`` (its probes and its report at capacity; that seed is
        ``report_seed``), with the capacity replaced by the mean over seeds, the spread, and every seed's own
        search (``capacity_rps_per_seed``, ``probes_per_seed``)."""
        out = self.results[0].to_dict()
        out.update({
            "capacity_rps": self.mean_rps,
            "capacity_rps_min": self.min_rps,
            "capacity_rps_max": self.max_rps,
            "seeds": self.seeds,
            "capacity_rps_per_seed": self.capacities_rps,
            "capacity_rate_scale_per_seed": [r.capacity_rate_scale for r in self.results],
            "capacity_is_lower_bound": any(r.lower_bound for r in self.results),
            "probes_per_seed": [r.probe_rows() for r in self.results],
            "report_seed": self.seeds[0],
        })
        out.pop("capacity_rate_scale")
        return out


def capacity_over_seeds(cfg: SimConfig, *, seeds: int = 3, workload: Workload | None = None,
                        profile: Profile | None = None, **search) -> SeedCapacities:
    """``find_capacity`` on each of ``seeds`` seeds (``cfg.seed`` upwards), one seed per probe: the
    capacity's spread over seeds of everything the run draws (step-time noise, tier draws, power-of-two
    choices, a synthetic trace when no ``workload`` is given). ``search``: the other arguments of
    ``find_capacity``. Raises ``ValueError`` unless ``seeds >= 1``."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be an integer >= 1, got {seeds!r}")
    profile = profile or load_profile(cfg.profile)
    runs = [cfg.seed + k for k in range(seeds)]
    results = []
    for s in runs:
        seeded = replace(cfg, seed=s)
        results.append(find_capacity(seeded, profile=profile, **search,
                                     workload=workload if workload is not None else load_workload(seeded)))
    return SeedCapacities(runs, results)


def _seconds(value: float | None) -> str:
    """A latency for a sentence: ``"0.0109 s"``, or ``"none (nothing served)"``."""
    return "none (nothing served)" if value is None else f"{value:.3g} s"


def why_no_rate_meets(cfg: SimConfig, workload: Workload, profile: Profile, lowest: Probe, target: float) -> list[str]:
    """Reasons no probed rate met ``target``, each one sentence, most decisive first.

    Looks at what no scheduler can help at vanishing load, on the simulated truth (the step times
    the nodes really take, ``TrueStepTime``, not the model they plan with): prompts whose prefill
    alone, on an idle node in chunks of at most ``max_num_batched_tokens``, takes longer than their
    TTFT SLO; a TPOT SLO below one decode step; arrivals that share one timestamp (a trace of coarse
    resolution: ``--spread-ties`` spreads them). Then the lowest probe's own figures: the requests
    refused at admission (the nodes' planning model says they would miss), its TTFT and TPOT P99
    against the SLO.
    """
    from cluster.workload.tiers import assign_tiers, parse_slo_tiers
    from cluster.workload.traces import TIE_WARNING_FRACTION, tie_fraction

    truth = true_step_time(cfg, profile)
    cap = profile.max_num_batched_tokens or 8192
    default = cfg.slo_on(profile.default_slo)
    reqs = workload.requests
    slos = ([t.slo for t in assign_tiers(len(reqs), parse_slo_tiers(cfg.slo_tier), cfg.seed)]
            if cfg.slo_tier else [default] * len(reqs))
    why = []
    too_long = 0
    for r, slo in zip(reqs, slos):
        too_long += truth.prefill_alone_s(r.prompt_tokens, cap) > slo.ttft_s
    if reqs and too_long:
        best = 1 - too_long / len(reqs)
        why.append(f"{too_long} of {len(reqs)} prompts ({too_long / len(reqs):.1%}) take longer than their TTFT SLO "
                   f"to prefill alone on an idle node, so attainment can be at most {best:.1%}"
                   + (f", below the target {target:.0%}" if best < target else ""))
    one_step_s = truth.forward_s(1, int(sum(r.prompt_tokens for r in reqs) / max(len(reqs), 1)) + 1, 0, 0.0) \
        + truth.host_time_s(1)
    tight = min((s.tpot_s for s in slos), default=default.tpot_s)
    if one_step_s > tight:
        why.append(f"one decode step of a typical request takes {one_step_s * 1e3:.1f} ms on the simulated truth, more than "
                   f"the TPOT SLO of {tight * 1e3:.1f} ms")
    ties = tie_fraction(workload)
    if ties > TIE_WARNING_FRACTION:
        arrivals = [r.arrival_s for r in reqs]
        group, run = 1, 1
        for a, b in zip(arrivals, arrivals[1:]):
            run = run + 1 if a == b else 1
            group = max(group, run)
        why.append(f"{ties:.0%} of arrivals share a timestamp with the previous one (up to {group} at "
                   f"once): the trace's time resolution turns them into bursts")
    rep = lowest.report
    if rep.get("rejected"):
        why.append(f"at the lowest rate probed the nodes refused {rep['rejected']} of {rep['requests']} requests at "
                   "admission: their planning model says those would miss (--safety-factor and --step-model "
                   "change that model; the simulated truth stays)")
    why.append(f"at the lowest rate probed ({lowest.rate_rps:.3g} req/s) attainment was {lowest.attainment:.3f}; "
               f"TTFT P99 {_seconds(rep.get('ttft_p99'))} against {default.ttft_s:g} s, TPOT P99 {_seconds(rep.get('tpot_p99'))} "
               f"against {default.tpot_s:g} s")
    return why
