"""Wiring of one simulation: the trace's arrivals -> the balancer -> N nodes, on one event loop.

``simulate(config)`` is a pure function of the config (and the trace and
profile files it names): same seed, same result. The report holds the
metrics of ``cluster.sim.metrics``, the per-node PAB/budget timelines and
``sim_speedup`` (simulated seconds per wall second).
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, field, replace
from typing import Callable

from balancer.core.admission_queue import AdmissionQueue
from balancer.core.placement import NodeView, PlacementPolicy, idle_prefill_tokens, view_age_summary
from balancer.core.policies import make_placement
from balancer.core.prefix import PrefixIndex
from cluster.sim.config import SimConfig
from cluster.sim.events import EventLoop
from cluster.sim.kv_cache import BlockPool
from cluster.sim.prefix_cache import NodePrefixCache
from cluster.workload.tiers import SLOClasses, assign_tiers, parse_slo_tiers
from node.core.pab_prefill_only import estimate_pab_prefill_only
from cluster.sim.metrics import shares, summarize
from cluster.sim.node import SimNode, SimRequest
from cluster.sim.true_step_time import TrueStepTime
from cluster.workload.traces import TraceError, Workload, load_named, prepare
from node.core.envelope import Anchor
from node.core.fairbatching import memory_short
from node.core.pab import estimate_pab, estimate_pab_edf
from node.core.request import SLO
from node.fit.step_time_fit import OnlineRefit
from node.core.feedback import FeedbackConfig, FrontDelay, LatencyFeedback, PrefillRate
from node.core.policies import make_policy
from node.fit.profile import Profile, load_profile, tile_tokens_of


def load_workload(cfg: SimConfig) -> Workload:
    """The config's trace window, clipped, *before* rate scaling (``simulate`` scales it). Raises
    ``TraceError`` for a window that holds no requests, and as ``load_named`` does."""
    w = load_named(
        cfg.trace,
        columns=cfg.columns,
        rate_rps=cfg.sharegpt_rate_rps,
        num_requests=cfg.num_requests,
        seed=cfg.seed,
        arrivals=cfg.arrivals,
        arrival_rate_rps=cfg.arrival_rate_rps,
    )
    window = prepare(w, start_s=cfg.start_s, duration_s=cfg.duration_s, max_prompt_tokens=cfg.max_prompt_tokens,
                     max_output_tokens=cfg.max_output_tokens, spread=cfg.spread_ties)
    if not window.requests:
        last_s = max((r.arrival_s for r in w.requests), default=0.0)
        raise TraceError(f"the window (--start-s {cfg.start_s:g}, --duration-s {cfg.duration_s}) of {w.name} holds no "
                         f"requests: its {len(w.requests)} arrivals lie between 0 and {last_s:g} s")
    return window


@dataclass
class SimResult:
    config: SimConfig
    report: dict
    requests: list[SimRequest] = field(repr=False)
    timelines: dict[int, list] = field(repr=False)


def run_tiers(cfg: SimConfig) -> tuple:
    """The SLO tiers the run holds requests to (``SLOTier``s, tightest first; empty without ``--slo-tier``):
    with ``only_tier``, that tier alone as the only class (priority 0: nothing held for others)."""
    tiers = parse_slo_tiers(cfg.slo_tier) if cfg.slo_tier else ()
    if cfg.only_tier is not None:
        kept = next(t for t in tiers if t.name == cfg.only_tier)
        tiers = (replace(kept, slo=replace(kept.slo, priority=0)),)
    return tiers


def sim_requests(cfg: SimConfig, workload: Workload, slo: SLO) -> list[SimRequest]:
    """The run's requests, in arrival order: the workload's (unscaled) requests with arrivals divided by
    ``cfg.rate_scale`` (as ``workload.scale_rate``), each held to ``slo`` or, with ``--slo-tier``, to
    the tier drawn for it by ``cfg.seed`` (every tier takes part in the draw, so ``--only-tier`` keeps
    the same requests, then only the kept tier's). Prefix block hashes are kept when the trace names
    them (only the prompt's full blocks: a clipped prompt loses the blocks past its end)."""
    tiers = run_tiers(cfg)
    if tiers:
        slos = [t.slo for t in assign_tiers(len(workload.requests), parse_slo_tiers(cfg.slo_tier), cfg.seed)]
        if cfg.only_tier is not None:  # the kept tier's requests, held to its SLO as the only class
            slos = [tiers[0].slo if s.tier == cfg.only_tier else s for s in slos]
    else:
        slos = [slo] * len(workload.requests)
    prefix_block = cfg.prefix_block_tokens
    prefix_caching = any(r.hash_ids for r in workload.requests)
    scale = cfg.rate_scale
    return [SimRequest(r.request_id, r.arrival_s / scale, r.prompt_tokens, r.output_tokens, s,
                       r.hash_ids[:r.prompt_tokens // prefix_block] if prefix_caching else ())
            for r, s in zip(workload.requests, slos) if cfg.only_tier is None or s.tier == cfg.only_tier]


def idle_prefill_cap(cfg: SimConfig, profile: Profile) -> int:
    """The naive admission cap: prompt tokens an idle node prefills within the TTFT SLO by the planning
    model (``cfg.step_model``): ``(ttft - a) / b`` (``idle_prefill_tokens``) for the linear model, the
    root of ``a + b * L + e * L**2 / 2 = ttft`` (the prompt's own causal attention) with the term."""
    model = cfg.planning_model(profile)
    ttft_s = cfg.slo_on(profile.default_slo).ttft_s
    if model.is_linear:
        return idle_prefill_tokens(ttft_s, model.a_s, model.b_s_per_token)
    per_token = replace(model, c_s_per_context_token=0.0, safety_factor=1.0, host_s=0.0)
    return max(0, int(per_token.chunk_for_room(ttft_s - model.a_s, 0)))


def true_step_time(cfg: SimConfig, profile: Profile, node: int | None = None) -> TrueStepTime:
    """The simulated truth of a node's steps on ``profile``: the host time the config gives (``host_fixed_s``,
    else ``host_s``, else the profile's) and, for ``node`` (an index), its step-time noise seeded by
    ``cfg.seed`` and the index; ``node`` None: without noise."""
    host_s = cfg.host_fixed_s if cfg.host_fixed_s is not None else profile.host_s if cfg.host_s is None else cfg.host_s
    if node is None:
        return TrueStepTime(profile, host_s=host_s, host_s_per_request=cfg.host_s_per_request)
    return TrueStepTime(profile, noise_sigma=cfg.noise, noise_ar=cfg.noise_ar,
                        rng=random.Random(cfg.seed * 1_000_003 + node), host_s=host_s,
                        host_s_per_request=cfg.host_s_per_request)


def build_placement(cfg: SimConfig, profile: Profile, prefix_index: PrefixIndex | None = None,
                    tier_shed_s: float | None = None) -> PlacementPolicy:
    cap = None
    if cfg.admission_cap:
        cap = cfg.admission_cap_tokens or idle_prefill_cap(cfg, profile)
    knobs = ({"fit": cfg.pab_fit, "reject": cfg.pab_reject, "cache_affinity": cfg.pab_cache_affinity,
              "affinity_slack": cfg.pab_affinity_slack if cfg.pab_affinity_slack >= 0 else None, "fresh_share": cfg.pab_fresh_share}
             if cfg.balancer == "pab" else {})
    return make_placement(cfg.balancer, list(range(cfg.nodes)), admission_cap=cap, rng=random.Random(cfg.seed),
                          prefix_index=prefix_index, tier_shed_s=tier_shed_s, **knobs)


def simulate(
    cfg: SimConfig,
    *,
    workload: Workload | None = None,
    profile: Profile | None = None,
    progress: Callable[[float], None] | None = None,
) -> SimResult:
    """Run the config once; ``workload`` (unscaled) and ``profile`` may be passed to skip loading."""
    wall0 = time.perf_counter()
    profile = profile or load_profile(cfg.profile)
    workload = workload if workload is not None else load_workload(cfg)
    host_s = profile.host_s if cfg.host_s is None else cfg.host_s
    # The nodes plan (and budget) with the profile's model and the host time, as a cadence fit gives it.
    model = replace(cfg.planning_model(profile), host_s=host_s if cfg.host_in_model else 0.0)
    slo = cfg.slo_on(profile.default_slo)
    tiers = run_tiers(cfg)
    # Admission by tier as the ingress applies it (no bounds on the targets: the trace sets them).
    classes = SLOClasses(tiers={t.name: t.slo for t in tiers}, floors={t.name: t.slo for t in tiers},
                         default=tiers[0].name, hold_fraction=cfg.tier_hold_fraction) if tiers else None
    # PAB budgets for the tightest SLO a request may have: the default's, or the tightest tier's.
    pab_slo = classes.tightest if classes is not None else slo
    anchor = Anchor(cfg.anchor) if cfg.scheduler == "fairbatching" else Anchor.ARRIVAL
    pab_fn = {"closed": estimate_pab, "edf": estimate_pab_edf,
              "prefill-only": estimate_pab_prefill_only}[cfg.pab_variant]
    kv_tokens = cfg.kv_cache_tokens or profile.kv_cache_tokens or 450_000
    block_size = profile.block_size or 16
    max_num_seqs = cfg.max_num_seqs or profile.max_num_seqs or 256
    max_num_batched_tokens = profile.max_num_batched_tokens or 8192
    # What a node's PAB may plan per step: the engine's cap, or a static token budget below it (a vLLM
    # or Sarathi node runs at its budget, and a live host reports that budget as max_num_batched_tokens).
    knobs = cfg.scheduler_knobs(tile_tokens_of(profile))
    pab_batched_tokens = min(max_num_batched_tokens, knobs.get("token_budget") or max_num_batched_tokens)

    # Prefix caching, when the trace names its prompts' blocks: a cache per node, and the balancer's
    # estimate of them (a PrefixIndex of what it placed where) unless it is to charge every token.
    prefix_block = cfg.prefix_block_tokens
    prefix_caching = any(r.hash_ids for r in workload.requests)
    if prefix_caching and prefix_block % block_size:
        raise ValueError(f"--prefix-block-tokens {prefix_block} must be a multiple of the KV block size ({block_size})")
    prefix_index = None
    if prefix_caching and (cfg.pab_tokens == "uncached" or cfg.balancer == "prefix-affinity"):
        prefix_index = PrefixIndex(prefix_block, capacity_blocks=kv_tokens // prefix_block)
    estimated_hit_tokens = 0  # what the balancer expected the chosen nodes to hold, over placed requests

    loop = EventLoop()
    # After a refusal of the tightest tier the others are shed for tier_shed_s (default: its TTFT, as served).
    shed_s = (cfg.tier_shed_s if cfg.tier_shed_s is not None else classes.tightest.ttft_s) if classes else None
    balancer = build_placement(cfg, profile, prefix_index, tier_shed_s=shed_s or None)

    def place(req: SimRequest):
        nonlocal estimated_hit_tokens
        decision = balancer.choose(req.key, req.prompt_tokens, held_fraction(req), tier_of(req),
                                   block_hashes=req.hash_ids, now_s=loop.now_s)
        if decision.node_id is not None and prefix_caching:
            estimated_hit_tokens += req.prompt_tokens - decision.charged_tokens
        return decision

    def held_fraction(req: SimRequest) -> float:
        return classes.held_fraction(req.slo) if classes is not None else 0.0

    def tier_of(req: SimRequest) -> str | None:
        return classes.budget_tier(req.slo) if classes is not None else None

    # Held at the balancer (balancer_queue_s > 0) and retried on each report, in balancer_queue_order.
    pending: AdmissionQueue[SimRequest] = AdmissionQueue(cfg.balancer_queue_s, cfg.balancer_queue_order)

    def try_place(req: SimRequest) -> bool:
        decision = place(req)
        if decision.node_id is None:
            return False
        nodes[decision.node_id].admit(req, loop.now_s)
        return True

    def place_pending() -> None:
        """Retry held requests; refuse those held longer than balancer_queue_s."""
        for req in pending.retry(loop.now_s, try_place):
            req.rejected = True

    def deliver(view: NodeView) -> None:
        balancer.update(view)
        if pending:
            place_pending()

    def publish(view: NodeView) -> None:
        if cfg.pab_delay_s > 0 and view.reported_at_s > 0:
            loop.at(loop.now_s + cfg.pab_delay_s, deliver, view)
        else:
            deliver(view)

    def on_finish(req: SimRequest) -> None:
        balancer.release(req.key)

    def lends_decode_slack(live: int, kv_free: int) -> bool:
        # A FairBatching node lends its decodes' slack to prefills, unless it holds so many requests
        # (seat pressure) or so much KV (KV pressure) that it serves every decode each step.
        if not (cfg.pab_lent_slack and cfg.scheduler == "fairbatching"):
            return False
        return not memory_short(cfg.seat_pressure, cfg.kv_pressure, live, max_num_seqs, kv_tokens - kv_free, kv_tokens)

    def node_pab(states, now_s, kv_free, budget_slo=pab_slo, **node_knows):
        # The node's own knowledge (expected output, correction, front delay) beside the engine's caps;
        # budget_slo: the SLO whose TTFT is the horizon (a looser tier's for its own budget).
        return pab_fn(
            states, model, now_s,
            horizon_s=cfg.pab_horizon_fraction * budget_slo.ttft_s, due_within_s=budget_slo.ttft_s,
            kv_free_tokens=kv_free, default_tpot_s=budget_slo.tpot_s, anchor=anchor,
            max_num_batched_tokens=pab_batched_tokens, max_num_seqs=max_num_seqs,
            paced_decodes=cfg.scheduler == "fairbatching",
            lent_decode_slack=lends_decode_slack(len(states), kv_free), decode_pace=1.0 - cfg.tpot_margin, **node_knows,
        )

    # The serving path's CPU on the engines' cores (the embedded default), one host for every node.
    shared_host = cfg.shared_host()
    ingress = cfg.ingress_delay()
    nodes = [
        SimNode(
            i, loop,
            make_policy(cfg.scheduler, model, **knobs),
            true_step_time(cfg, profile, i),
            pool,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            estimate_pab=node_pab,
            publish=publish,
            on_finish=on_finish,
            pab_interval_s=cfg.pab_interval_s,
            pab_in_every_report=cfg.balancer == "pab",
            timeline_interval_s=cfg.timeline_interval_s,
            refit=OnlineRefit(model) if cfg.refit else None,
            oracle_output_lengths=cfg.oracle_output_lengths,
            acknowledge_received=cfg.report_acks,
            feedback=LatencyFeedback(FeedbackConfig(max_factor=cfg.feedback_max_factor)) if cfg.feedback else None,
            front_delay=FrontDelay() if cfg.feedback else None,
            prefill_rate=PrefillRate() if cfg.measured_prefill_rate else None,
            expected_output_prior=cfg.expected_output_tokens,
            tier_slos={t.name: t.slo for t in tiers if t.slo.priority > 0} if cfg.balancer == "pab" else None,
            seats_as_vllm=cfg.seats_as_vllm,
            prefix_cache=NodePrefixCache(pool, prefix_block) if prefix_caching else None,
            pab_counts_cached=prefix_caching and cfg.pab_tokens == "all",
            shared_host=shared_host,
        )
        for i, pool in enumerate(BlockPool(kv_tokens, block_size) for _ in range(cfg.nodes))
    ]
    for node in nodes:
        node.publish_now(0.0)  # the balancer starts knowing the nodes are idle

    requests = sim_requests(cfg, workload, slo)
    n = len(requests)
    last_arrival_s = requests[-1].arrival_s if n else 0.0
    every = max(1, n // 200)

    def arrive(i: int) -> None:
        req = requests[i]
        # its CPU is spent before any step it starts (a refusal's, if refused at once)
        charge = shared_host.arrive(loop.now_s) if shared_host is not None else None
        if ingress is None:
            route(req, charge)
        else:  # it reaches the balancer (and its node) after the serving path's time in front of the engines
            loop.at(loop.now_s + ingress.delay_s(loop.now_s), route, req, charge)
        if i + 1 < n:
            loop.at(requests[i + 1].arrival_s, arrive, i + 1)
        if progress is not None and i % every == 0:
            progress(i / n)

    view_ages: list[float] = []  # how old the nodes' views were at each decision (as a live balancer reports)

    def route(req: SimRequest, charge: list[float] | None) -> None:
        age = balancer.view_age_s(loop.now_s)
        if age is not None:
            view_ages.append(age)
        if pending:  # tried with the requests already held at the balancer, in the queue's order
            pending.hold(req, req.arrival_s, req.slo.ttft_s)
            place_pending()
        elif not try_place(req):
            if cfg.balancer_queue_s > 0:
                pending.hold(req, req.arrival_s, req.slo.ttft_s)
            else:
                req.rejected = True
        if charge is not None and req.rejected:  # (a request held at the balancer is charged as served)
            shared_host.refuse(charge)

    if n:
        loop.at(requests[0].arrival_s, arrive, 0)
    loop_wall0, loop_cpu0 = time.perf_counter(), time.process_time()
    loop.run(until_s=last_arrival_s + cfg.drain_s)
    loop_wall_s = time.perf_counter() - loop_wall0
    loop_cpu_s = time.process_time() - loop_cpu0
    for req in pending.items():  # still held when the run ended: the balancer gave up on them
        req.rejected = True
    if progress is not None:
        progress(1.0)
    wall_s = time.perf_counter() - wall0

    if cfg.client_path_s:
        for req in requests:  # the client sees every served token that much later
            for attr in ("first_token_s", "last_token_s", "finish_s"):
                if getattr(req, attr) is not None:
                    setattr(req, attr, getattr(req, attr) + cfg.client_path_s)
    span = requests[-1].arrival_s - requests[0].arrival_s if n > 1 else 0.0
    report = summarize(requests, span)
    sim_s = loop.now_s
    report.update(
        {
            "rate_rps": report["offered_rps"],
            "rate_scale": cfg.rate_scale,
            "trace": workload.name,
            "profile": profile.name,
            "scheduler": cfg.scheduler,
            "balancer": cfg.balancer,
            "nodes": cfg.nodes,
            "seed": cfg.seed,
            "ttft_slo_s": slo.ttft_s,
            "tpot_slo_s": slo.tpot_s,
            "sim_s": sim_s,
            "wall_s": wall_s,
            # Simulated seconds per wall second of the event loop (loading excluded).
            "sim_speedup": sim_s / loop_wall_s if loop_wall_s > 0 else None,
            # The same per CPU second of this process: what the speedup is on an unshared core.
            "sim_speedup_cpu": sim_s / loop_cpu_s if loop_cpu_s > 0 else None,
            "steps": sum(nd.steps for nd in nodes),
            "preemptions": sum(nd.preemptions for nd in nodes),
            "node_busy_fraction": [nd.busy_s / sim_s if sim_s > 0 else 0.0 for nd in nodes],
            "true_step_time": "ground-truth" if nodes[0].step_time.uses_ground_truth else "linear",
            "host_s": host_s,
            "pab_variant": cfg.pab_variant,
            "relegate": cfg.relegate if cfg.scheduler == "fairbatching" else None,
            "feedback": cfg.feedback,
            # Per node: the closed loop's correction at the end, its min and mean over the timeline, decreases.
            "node_correction": [
                {"final": nd.correction,
                 "min": min((row[5] for row in nd.timeline), default=nd.correction),
                 "mean": statistics.fmean(row[5] for row in nd.timeline) if nd.timeline else nd.correction,
                 "decreases": nd.feedback.decreases if nd.feedback is not None else 0}
                for nd in nodes
            ],
            # Per node: the output length it expected at the end (None: oracle lengths or nothing finished).
            "node_expected_output_tokens": [nd.expected_output_tokens() for nd in nodes],
            # Steps of all nodes: their mean wall time (forward and host), and the shared host's mean
            # slowdown of them (1 without one), to set beside a live engine's step timings.
            "step_mean_s": sum(nd.busy_s for nd in nodes) / max(1, sum(nd.steps for nd in nodes)),
            "step_slowdown_mean": sum(nd.slowdown_sum for nd in nodes) / max(1, sum(nd.steps for nd in nodes)),
            # What a queue drains at: prompt tokens a second of the steps that prefilled at least half of
            # max_num_batched_tokens (None: no such step), as a live engine's steps give it.
            "prefill_drain_tps": (sum(nd.draining_tokens for nd in nodes)
                                  / sum(nd.draining_s for nd in nodes) if any(nd.draining_s for nd in nodes) else None),
            # How old the nodes' views were when the balancer decided (PlacementPolicy.view_age_s), seconds.
            "view_age_s": view_age_summary(view_ages),
            # Which PAB limit bound, as a fraction of the timeline samples (all nodes).
            "pab_binding_fraction": shares(row[6] for nd in nodes for row in nd.timeline),
            # The model each node planned with at the end (the profile's, unless refitted online).
            "planning_models": [
                {"a_s": nd.policy.step_model.a_s, "b_s_per_token": nd.policy.step_model.b_s_per_token,
                 "c_s_per_context_token": nd.policy.step_model.c_s_per_context_token, "host_s": nd.policy.step_model.host_s,
                 "attn_prefill_s_per_token_sq": nd.policy.step_model.attn_prefill_s_per_token_sq,
                 "safety_factor": nd.policy.step_model.safety_factor,
                 "refits": nd.refit.refits if nd.refit is not None else 0}
                for nd in nodes
            ],
            "config": cfg.to_dict(),
        }
    )
    if prefix_caching:
        prompt_tokens = sum(nd.prefix_cache.prompt_tokens for nd in nodes)
        hit_tokens = sum(nd.prefix_cache.hit_tokens for nd in nodes)
        report.update({
            # Prompt tokens of the requests that reached a node, and the share its prefix cache held.
            "prefix_cache_hit_rate": hit_tokens / prompt_tokens if prompt_tokens else 0.0,
            "prefix_cache_hit_tokens": hit_tokens,
            "prefix_cache_prompt_tokens": prompt_tokens,
            # The hit the balancer's PrefixIndex expected over the same requests (None: it kept none).
            "prefix_estimated_hit_rate": (estimated_hit_tokens / prompt_tokens if prompt_tokens else 0.0)
            if prefix_index is not None else None,
            "prefix_cache_evictions": sum(nd.prefix_cache.evictions for nd in nodes),
            "prefix_block_tokens": prefix_block,
            "pab_tokens": cfg.pab_tokens,
        })
    timelines = {nd.node_id: nd.timeline for nd in nodes}
    return SimResult(cfg, report, requests, timelines)
