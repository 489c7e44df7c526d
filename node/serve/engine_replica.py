"""The engine deployment: one Serve replica per node, wrapping vLLM's ``AsyncLLM``.

Each replica

* runs vLLM's ``AsyncLLM`` (engine core in a child process, as AsyncLLM always
  does) with ``scheduler_cls`` = the FairBatching scheduler when configured
  (its node config travels in the ``FAIRBATCHING_NODE_CONFIG`` environment
  variable, which the engine-core process inherits), or stock vLLM;
* answers each request with vLLM's own OpenAI layer (``OpenAIServingChat``,
  ``OpenAIServingCompletion``, built by ``node.vllm.openai_server``) on a subclass of
  ``AsyncLLM`` that shows the replica every request's outputs (first token,
  output count) for its bookkeeping;
* keeps the state of its outstanding requests and computes its Prefill
  Admission Budget from it with ``node.core.pab.estimate_pab`` (DESIGN section 3):
  a request with no output yet counts as wholly unprefilled but for the head
  of its prompt this node's prefix cache holds (estimated from the prompts the
  node received, ``balancer.core.prefix.PrefixIndex``), so the queued work ``W``
  is what the engine must compute; at each first token the charge is counted
  beside vLLM's own (``fairbatching_prompt_tokens_charged_total`` and
  ``..._computed_total``);
* computes that budget with the deployment's step-time model, which the PAB
  registry pools from every node's online refit (``PABRegistry.deployment_model``);
  until there is one, with its own scheduler's model (the profile until the
  first refit). The FairBatching scheduler's own report (``node_stats``, once
  per step through vLLM's scheduler stats) supplies that refit (host time per
  step included) and the step metrics;
* budgets a request's whole life (``node.core.pab``): the engine's caps
  (``max_num_batched_tokens``, ``max_num_seqs``), the decode load and KV of
  every request it holds, and a new request of the output length it has seen
  (the mean output of its recently finished requests);
* closes the loop (``node.core.feedback``): the TTFT of each request it serves, from
  the ingress's arrival stamp to the first token, and its mean TPOT, against
  its SLOs, steer a correction factor on the prefill rate; the delay from that
  stamp to the request reaching this replica (proxy, ingress, router, the hop)
  is taken off the budget's horizon;
* pushes its ``NodeView`` to the PAB registry every ``report_interval_s``
  (100 ms by default), with the ids of the requests it received in the last
  ``RECEIVED_WINDOW_S`` (so routers drop their debits exactly when the report
  counts the request), and exposes it through ``record_routing_stats`` for
  routers whose registry is away;
* exports metrics through ``ray.util.metrics`` with ``node`` and ``replica``
  labels.

``EngineSpec`` is the plain-data description of an engine the app builder
hands to each replica.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, AsyncIterator, Optional

from node.core.step_time import StepTimeModel
from node.core.envelope import Anchor
from starlette.datastructures import State

from node.core.feedback import FeedbackConfig, FrontDelay, LatencyFeedback, PrefillRate, SlowStart
from node.core.attainment import mean_tpot_s, meets_slo
from node.vllm.tiny_model import resolve_model
from node.vllm.node_config import NodeConfig, front_log_path
from node.vllm.node_stats import STATS_KEY, NodeStats
from balancer.core.placement import NodeView
from balancer.core.prefix import PrefixIndex, prompt_block_hashes
from balancer.serve.pab_registry import NodeReport
from node.serve.messages import CHAT, EngineJob, EngineReply
from node.serve.metrics import instrument
from node.core.pab import PABReport, estimate_pab
from node.core.recent import RecentMean
from node.vllm.openai_server import engine_args_from, init_serving_state, server_args
from node.fit.profile import load_profile
from node.core.extra_args import arrival_from_extra_args, slo_or_default
from node.core.request import SLO, RequestState

logger = logging.getLogger("ray.serve")

#: A report lists the requests received within this many seconds (many report intervals, so a
#: router that misses a report still sees every request acknowledged).
RECEIVED_WINDOW_S = 5.0
#: Set by ``EngineReplica.generate`` for the vLLM call it makes: the engine sets it at the request's first output.
FIRST_OUTPUT: contextvars.ContextVar[Optional[asyncio.Event]] = contextvars.ContextVar("first_output", default=None)


@dataclass(frozen=True)
class EngineSpec:
    """Everything an engine replica needs, derived from the deployment's config
    (``cluster.config.ServeConfig.engine_spec``, which owns the defaults); plain data for the Ray call."""

    model: str  # HF id or path; "tiny": the tiny random-weight Llama
    served_model_name: str
    engine_args: dict[str, Any]  # vLLM AsyncEngineArgs fields
    scheduler_cls: Optional[str]  # dotted path (node.vllm.names); None = stock vLLM
    node_config: Optional[NodeConfig]  # the scheduler's (FAIRBATCHING_NODE_CONFIG); None with stock vLLM
    profile: str  # step-time profile (name in deploy/profiles or path)
    ttft_slo_s: float  # deployment default SLOs, seconds; requests may name their own
    tpot_slo_s: float
    anchor: str
    report_interval_s: float
    feedback: FeedbackConfig  # PAB's closed loop
    pab_horizon_fraction: float  # PAB's horizon: this share of the TTFT SLO (the rest: the way back, the tail)
    slo_tiers: dict[str, SLO]  # the deployment's SLO classes (SLO with name and rank, 0 the tightest); {}: none
    tier_hold_fraction: float  # share of the idle budget the looser classes leave (shown as the held budget)
    openai_server: dict[str, Any]  # vLLM BaseFrontendArgs fields (tools, template)
    engine_core_nice: Optional[int] = None  # niceness added to the engine's child processes; None: 4 on CPU, 0 on GPU


def lower_children_priority(increment: int) -> list[int]:
    """Add ``increment`` (>= 0) to the niceness of every child process of this one (vLLM's engine
    core and its workers), capped at 19; returns their pids. Raising a niceness needs no privilege.
    A child that exits meanwhile is skipped."""
    import psutil

    pids = []
    for child in psutil.Process().children(recursive=True):
        try:
            if increment > 0:
                child.nice(min(19, child.nice() + increment))
            pids.append(child.pid)
        except psutil.Error:
            continue
    return pids


@dataclass
class _Live:
    """One outstanding request as the replica tracks it."""

    arrival_s: float  # the ingress's stamp, time.time() seconds
    prompt_tokens: int
    max_tokens: int
    slo: SLO
    output_tokens: int = 0
    first_token_s: Optional[float] = None
    last_token_s: Optional[float] = None
    finished: bool = False
    cached_tokens: int = 0  # of the prompt, this node's prefix cache holds (estimated; counted as computed)
    token_ids: Optional[list[int]] = None  # prompt and output ids, kept while the node caches prefixes

    @property
    def uncached_tokens(self) -> int:
        """The prompt tokens the engine must compute: what the budget charges for this prompt."""
        return self.prompt_tokens - self.cached_tokens

    def state(self, rid: str) -> RequestState:
        started = self.output_tokens > 0
        return RequestState(
            request_id=rid,
            arrival_s=self.arrival_s,
            prompt_tokens=self.prompt_tokens,
            slo=self.slo,
            computed_tokens=self.prompt_tokens if started else self.cached_tokens,
            output_tokens=self.output_tokens,
            first_token_s=self.first_token_s,
            max_output_tokens=self.max_tokens,
        )


class _Metrics:
    """The replica's ``ray.util.metrics`` instruments, labelled by node and replica."""

    def __init__(self, node: str, replica: str) -> None:
        self.default = {"node": node, "replica": replica}

        def made(name: str):
            return instrument(name, self.default)

        self.pab = made("fairbatching_pab_tokens")
        self.prefill_rate = made("fairbatching_pab_prefill_rate_tps")
        self.queued = made("fairbatching_pab_queued_tokens")
        self.kv_headroom = made("fairbatching_pab_kv_headroom_tokens")
        self.tier_pab = made("fairbatching_pab_tier_tokens")
        self.held = made("fairbatching_pab_held_tokens")
        self.ttft_slo = made("fairbatching_ttft_slo_s")
        self.tpot_slo = made("fairbatching_tpot_slo_s")
        self.budget = made("fairbatching_time_budget_s")
        self.step_pred = made("fairbatching_step_time_predicted_s")
        self.step_meas = made("fairbatching_step_time_measured_s")
        self.urgent = made("fairbatching_urgent_decodes_total")
        self.skipped = made("fairbatching_skipped_decodes_total")
        self.divergences = made("fairbatching_plan_divergences_total")
        self.in_flight = made("fairbatching_requests_in_flight")
        self.kv_usage = made("fairbatching_kv_usage")
        self.ttft = made("fairbatching_ttft_s")
        self.tpot = made("fairbatching_tpot_s")
        self.finished = made("fairbatching_requests_finished_total")
        self.attained = made("fairbatching_requests_attained_total")
        self.attainment = made("fairbatching_slo_attainment")
        self.correction = made("fairbatching_pab_correction")
        self.front_delay = made("fairbatching_front_delay_s")
        self.host_time = made("fairbatching_step_host_time_s")
        self.prompt_charged = made("fairbatching_prompt_tokens_charged_total")
        self.prompt_computed = made("fairbatching_prompt_tokens_computed_total")


class EngineReplica:
    """A Serve replica holding one vLLM ``AsyncLLM``; see the module docstring."""

    async def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        if spec.node_config is not None:  # the engine-core process inherits it
            os.environ.update(spec.node_config.to_env())
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        import ray
        from ray import serve
        ctx = serve.get_replica_context()
        self.replica_key = ctx.replica_id.unique_id
        node_id = ray.get_runtime_context().get_node_id()
        self.node_label = f"{ray.util.get_node_ip_address()}:{node_id[:8]}"
        node_config = spec.node_config or NodeConfig()
        # The scheduler's model (the same rule as the engine core's), refitted online.
        self.own_step_model = load_profile(self.spec.profile).planning_model(node_config.step_model,
                                                                            node_config.safety_factor)
        self.own_refits = 0
        self.deployment_step_model: Optional[StepTimeModel] = None  # the deployment's, from the registry
        self.anchor = Anchor(self.spec.anchor)
        self.default_slo = SLO(self.spec.ttft_slo_s, self.spec.tpot_slo_s)
        # PAB budgets for the tightest class (or the one SLO), and each looser class over its own TTFT.
        tiers = sorted(self.spec.slo_tiers.values(), key=lambda t: t.priority)
        self.pab_slo = tiers[0] if tiers else self.default_slo
        self.looser_tiers = tiers[1:]
        self.live: dict[str, _Live] = {}
        self.metrics = _Metrics(self.node_label, self.replica_key)
        self.finished_by_class: dict[str, list[int]] = {}  # class -> [finished, attained] (status)
        self.sched: Optional[NodeStats] = None  # the FairBatching scheduler's own report, when it sends one
        self.kv_usage = 0.0
        self.steps = 0
        # Ray stops exporting a gauge that is not set again within about two export intervals,
        # so gauges set only when the engine steps are re-set on every report tick while it idles.
        self._held_gauges: dict[Any, float] = {}
        self._vllm_metrics: list = []  # vLLM's Ray stat logger instances (see _vllm_ray_metrics_logger)
        self._gauges_refreshed_at = 0.0
        self.last_step_s: Optional[float] = None
        self._last_record: Optional[float] = None
        self.finished = 0
        self.attained = 0
        self._registry = None
        self._registry_name: Optional[str] = None
        self._pab_parts: dict[str, Any] = {}
        # One decrease per feedback delay: a first token comes up to a TTFT after admission.
        self.feedback = LatencyFeedback(self.spec.feedback)
        self.front_delay = FrontDelay()
        # Each request's time in front of this engine, beside the engine's step log (when it keeps one)
        log = spec.node_config.step_log if spec.node_config is not None else None
        self.front_log = open(front_log_path(log, os.getpid()), "a", buffering=1) if log else None  # noqa: SIM115
        # what this node prefilled per second while prompts waited
        self.prefill_rate = PrefillRate(over_busy_time=self.spec.feedback.prefill_rate_over_busy_time)
        self.received: deque[tuple[float, str]] = deque()  # (time.time(), request id) of recent arrivals
        self.outputs_seen = RecentMean(256)  # output lengths of recently finished requests
        self.prompts_seen = RecentMean(256)  # prompt lengths of recently received requests
        # SLOs and front delays of the last requests, as the engine sees them (SamplingParams.extra_args)
        self.recent_slos: deque[dict[str, float]] = deque(maxlen=16)

        args = dict(self.spec.engine_args)
        args["disable_log_stats"] = True  # vLLM's default loggers would misread our stats channel
        if self.spec.scheduler_cls:
            args["scheduler_cls"] = self.spec.scheduler_cls
        server = server_args(resolve_model(self.spec.model), self.spec.served_model_name, args,
                             self.spec.openai_server)
        self.engine = _tracked_engine_class().from_engine_args(
            engine_args_from(server),
            stat_loggers=[self._stat_logger_factory(), _vllm_ray_metrics_logger(self._vllm_metrics)],
        )
        self.engine.replica = self
        nice = self.spec.engine_core_nice
        if nice is None:
            from vllm.platforms import current_platform
            nice = 4 if current_platform.is_cpu() else 0
        lower_children_priority(nice)
        # vLLM's OpenAI layer on this engine: OpenAIServingChat, OpenAIServingCompletion (node.vllm.openai_server).
        self.api = State()
        await init_serving_state(self.engine, self.api, server)
        cache = self.engine.vllm_config.cache_config
        self.kv_capacity_tokens = int((cache.num_gpu_blocks or 0) * cache.block_size)
        # What this node's prefix cache holds, estimated from the prompts it received (balancer.core.prefix):
        # a prompt's cached head counts as computed, so the budget charges only what the engine computes.
        self.prefix_index = (PrefixIndex(cache.block_size, capacity_blocks=int(cache.num_gpu_blocks or 0))
                             if cache.enable_prefix_caching else None)
        self.prompt_tokens_charged = 0  # of the requests past their first token: charged, and computed by vLLM
        self.prompt_tokens_computed = 0
        sched = self.engine.vllm_config.scheduler_config
        self.max_num_batched_tokens = int(sched.max_num_batched_tokens)
        self.max_num_seqs = int(sched.max_num_seqs)
        self.max_model_len = int(self.engine.vllm_config.model_config.max_model_len)
        # Until this node has evidence of its speed, its budget starts at one step's tokens over the
        # horizon and grows as the loop measures latencies within the target (node.core.feedback.SlowStart).
        # A profile the scheduler does not refit is the operator's word on the node's speed: no slow start.
        self.slow_start = SlowStart(self.max_num_batched_tokens / self.horizon_s)
        if self.spec.node_config is not None and not self.spec.node_config.refit:
            self.slow_start.end()
        self._reporter = asyncio.get_running_loop().create_task(self._report_loop())
        logger.info("engine replica %s on %s up: %d KV tokens", self.replica_key, self.node_label,
                    self.kv_capacity_tokens)

    # -- vLLM stats hook: called once per engine step that produced output -----------------


    def _stat_logger_factory(self):
        from vllm.v1.metrics.loggers import StatLoggerBase

        replica = self

        class _StepLogger(StatLoggerBase):
            def __init__(self, vllm_config, engine_index: int = 0):
                pass

            def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
                replica._on_step(scheduler_stats)

            def log_engine_initialized(self):
                pass

        return _StepLogger

    def _on_step(self, stats) -> None:
        now = time.perf_counter()
        if self._last_record is not None and self.live:
            self.last_step_s = now - self._last_record
            self._hold(self.metrics.step_meas, self.last_step_s)
        self._last_record = now
        self.steps += 1
        if stats is None:
            return
        self.kv_usage = float(stats.kv_cache_usage)
        extra = getattr(stats, "kv_connector_stats", None)
        if isinstance(extra, dict) and isinstance(extra.get(STATS_KEY), dict):
            self._on_scheduler_report(NodeStats.from_dict(extra[STATS_KEY]))

    def _on_scheduler_report(self, rep: NodeStats) -> None:
        """The FairBatching scheduler's ``node_stats()``, once per engine step."""
        prev, self.sched = self.sched, rep
        self.own_step_model, self.own_refits = rep.step_model, rep.refits
        step = rep.last_step
        m = self.metrics
        if step.budget_s is not None:
            self._hold(m.budget, step.budget_s)
        if step.predicted_s is not None:
            self._hold(m.step_pred, step.predicted_s)
        if prev is None or step.step != prev.last_step.step:
            if step.urgent:
                m.urgent.inc(step.urgent)
            if step.skipped:
                m.skipped.inc(step.skipped)
        before = prev.divergent_steps if prev is not None else 0
        if rep.divergent_steps > before:
            m.divergences.inc(rep.divergent_steps - before)

    def _hold(self, gauge, value: float) -> None:
        gauge.set(value)
        self._held_gauges[gauge] = value

    def _refresh_idle_gauges(self) -> None:
        """Re-set the step gauges (ours and vLLM's) at most twice a second, so an idle engine keeps its series."""
        now = time.monotonic()
        if now - self._gauges_refreshed_at < 0.5:
            return
        self._gauges_refreshed_at = now
        for gauge, value in self._held_gauges.items():
            gauge.set(value)
        for logger_ in self._vllm_metrics:
            logger_.refresh_gauges()

    # -- PAB ------------------------------------------------------------------------------

    @property
    def step_model(self) -> StepTimeModel:
        """The step-time model the budget is computed with: the deployment's, else this node's own."""
        return self.deployment_step_model or self.own_step_model

    def expected_output_tokens(self) -> Optional[float]:
        """Output length of a typical new request: the mean of recently finished ones, else of live ``max_tokens``."""
        mean = self.outputs_seen.mean()
        if mean is None and self.live:
            return sum(lv.max_tokens for lv in self.live.values()) / len(self.live)
        return mean

    def typical_prompt_tokens(self) -> Optional[float]:
        """Prompt length of a typical new request: the mean of recently received ones, else None."""
        return self.prompts_seen.mean()

    @property
    def horizon_s(self) -> float:
        """PAB's horizon: ``pab_horizon_fraction`` of the tightest class's (or the default) TTFT SLO, seconds."""
        return self.spec.pab_horizon_fraction * self.pab_slo.ttft_s

    def measured_rate_tps(self) -> Optional[float]:
        """What caps the model's prefill rate: the rate measured under a queue, and the slow start's cap."""
        caps = [r for r in (self.prefill_rate.rate_tps(time.monotonic()), self.slow_start.rate_cap_tps)
                if r is not None]
        return min(caps) if caps else None

    def compute_pab(self, budget_slo: Optional[SLO] = None) -> PABReport:
        """This node's PAB for requests of ``budget_slo`` (None: the tightest class's, ``pab_slo``)."""
        slo = budget_slo or self.pab_slo
        now = time.time()
        states = [lv.state(rid) for rid, lv in self.live.items()]
        kv_free = max(0, int((1.0 - self.kv_usage) * self.kv_capacity_tokens))
        return estimate_pab(
            states, self.step_model, now,
            horizon_s=self.spec.pab_horizon_fraction * slo.ttft_s,
            due_within_s=slo.ttft_s,
            kv_free_tokens=kv_free,
            default_tpot_s=slo.tpot_s,
            paced_decodes=self.spec.scheduler_cls is not None,  # FairBatching paces each decode to its TPOT
            anchor=self.anchor,
            max_num_batched_tokens=self.max_num_batched_tokens,
            max_num_seqs=self.max_num_seqs,
            expected_output_tokens=self.expected_output_tokens(),
            typical_prompt_tokens=self.typical_prompt_tokens(),
            correction=self.feedback.factor,
            front_delay_s=self.front_delay.value_s(now),
            measured_prefill_rate_tps=self.measured_rate_tps(),
        )

    def received_ids(self) -> list[str]:
        """Ids of the requests received within ``RECEIVED_WINDOW_S``."""
        horizon = time.time() - RECEIVED_WINDOW_S
        while self.received and self.received[0][0] < horizon:
            self.received.popleft()
        return [rid for _, rid in self.received]

    def node_view(self) -> NodeView:
        """This node's ``NodeView`` (its ``node_id`` is the balancer's to set); also sets the PAB gauges."""
        waiting = [lv for lv in self.live.values() if lv.output_tokens == 0]
        queued_prefill_tokens = sum(lv.uncached_tokens for lv in waiting)
        # Saturated: more prompt tokens wait than one step prefills (a prompt queues behind another);
        # a prompt merely being prefilled says nothing about what the node could do.
        self.prefill_rate.tick(time.monotonic(), queued_prefill_tokens > self.max_num_batched_tokens)
        rep = self.compute_pab()
        starved = not self.live and (rep.pab_tokens < (self.typical_prompt_tokens() or 1.0) or rep.slots_free < 1)
        now = time.time()  # the arrivals' clock
        cap = self.slow_start.rate_cap_tps
        if self.slow_start.active and (self.own_refits or self.deployment_step_model is not None
                                       or self.prefill_rate.rate_tps(time.monotonic()) is not None):
            self.slow_start.end()  # the node has evidence of its own speed
        self.slow_start.update(now, self.feedback.last_tail_ratio, self.feedback.config.target_ratio)
        factor = self.feedback.update(now, starved=starved, waiting=[(lv.arrival_s, lv.slo.ttft_s) for lv in waiting])
        if factor != rep.correction or self.slow_start.rate_cap_tps != cap:
            rep = self.compute_pab()
        tier_budgets = {t.tier: self.compute_pab(t).pab_tokens for t in self.looser_tiers} or None
        pab_tokens = rep.pab_tokens
        if not self.live and self.slow_start.active:
            # The slow start learns from latencies, so it must let a first request in: an idle node takes
            # one prompt as long as its model says it prefills alone within the horizon (the router's debit
            # closes the door behind it until the next report). Else traffic of prompts longer than the
            # starting cap would be refused for ever.
            pab_tokens = max(pab_tokens, float(self.step_model.largest_prompt_alone(
                self.horizon_s, self.max_num_batched_tokens, self.max_model_len)))
        view = NodeView(
            node_id=0,
            pab_tokens=pab_tokens,
            in_flight=len(self.live),
            queued_prefill_tokens=queued_prefill_tokens,
            kv_usage=self.kv_usage,
            waiting=len(waiting),
            reported_at_s=time.time(),
            prefill_rate_tps=rep.prefill_rate_tps,
            kv_capacity_tokens=self.kv_capacity_tokens,
            recovery_tps=rep.recovery_tps,
            slots_free=rep.slots_free,
            slot_wait_s=rep.slot_wait_s,
            idle_pab_tokens=rep.idle_pab_tokens,
            tier_pab_tokens=tier_budgets,
            max_num_seqs=self.max_num_seqs,
            kv_pab_tokens=rep.kv_limited_tokens,
            expected_output_tokens=rep.expected_output_tokens,
            received_ids=frozenset(self.received_ids()),
        )
        m = self.metrics
        m.pab.set(pab_tokens)
        for slo in self.spec.slo_tiers.values() or [self.default_slo]:  # what the dashboard holds each class to
            m.ttft_slo.set(slo.ttft_s, tags={"slo_class": slo.tier})
            m.tpot_slo.set(slo.tpot_s, tags={"slo_class": slo.tier})
        for name, tokens in (tier_budgets or {}).items():
            m.tier_pab.set(tokens, tags={"slo_class": name})
        if self.looser_tiers:
            m.held.set(self.spec.tier_hold_fraction * rep.idle_pab_tokens)
        m.prefill_rate.set(rep.prefill_rate_tps)
        m.queued.set(float(rep.queued_tokens))
        m.kv_headroom.set(float(rep.kv_headroom_tokens))
        m.in_flight.set(len(self.live))
        m.kv_usage.set(self.kv_usage)
        m.correction.set(rep.correction)
        m.front_delay.set(rep.front_delay_s)
        m.host_time.set(self.step_model.host_s)
        self._refresh_idle_gauges()
        self._pab_parts = {**rep.to_dict(), "model": "deployment" if self.deployment_step_model else "own"}
        if pab_tokens > rep.pab_tokens:
            self._pab_parts["binding"] = "slow-start probe"
        return view

    def _extra(self) -> dict[str, Any]:
        return {
            "node": self.node_label,
            "replica": self.replica_key,
            "pab_model": self._pab_parts.get("model", "own"),
            "queued_tokens": self._pab_parts.get("queued_tokens"),
            "kv_headroom_tokens": self._pab_parts.get("kv_headroom_tokens"),
            "binding": self._pab_parts.get("binding"),
            "pab_held_tokens": (self.spec.tier_hold_fraction * self._pab_parts["idle_pab_tokens"]
                                if self.looser_tiers and "idle_pab_tokens" in self._pab_parts else None),
            "correction": self.feedback.factor,
            "correction_decreases": self.feedback.decreases,
            "latency_tail_ratio": self.feedback.last_tail_ratio,
            "front_delay_s": self._pab_parts.get("front_delay_s"),
            "measured_prefill_rate_tps": self.prefill_rate.rate_tps(time.monotonic()),
            "slow_start_cap_tps": self.slow_start.rate_cap_tps,
            "recent_slos": list(self.recent_slos),
            "expected_output_tokens": self._pab_parts.get("expected_output_tokens"),
            "model": asdict(self.step_model),
            "finished": self.finished,
            "attained": self.attained,
            "attainment": self.attained / self.finished if self.finished else None,
            # per SLO class: finished, attained, attainment ("" without classes)
            "by_class": {name: {"finished": f, "attained": a, "attainment": a / f if f else None}
                         for name, (f, a) in sorted(self.finished_by_class.items())},
            "prefix_caching": self.prefix_index is not None,
            "prompt_tokens_charged": self.prompt_tokens_charged,
            "prompt_tokens_computed": self.prompt_tokens_computed,
            "steps": self.steps,
            "scheduler_steps": self.sched.steps if self.sched else None,
            "scheduler_policy": self.sched.policy if self.sched else None,
            "last_step_s": self.last_step_s,
        }

    async def _registry_handle(self):
        if self._registry is None:
            from balancer.serve.pab_registry import REGISTRY_ACTOR_NAME
            from ray import serve

            try:
                handle = serve.get_deployment_actor(REGISTRY_ACTOR_NAME)
                self._registry_name = await asyncio.wait_for(handle.actor_name.remote(), 2.0)
                self._registry = handle
            except Exception:  # noqa: BLE001 - being (re)created: try again next tick
                return None
        return self._registry

    async def _report_loop(self) -> None:
        """Push this node's view to the registry every ``report_interval_s``."""
        import ray

        pending = None
        while True:
            try:
                report = NodeReport(self.node_view(), self.own_step_model, self.own_refits, self._extra())
                registry = await self._registry_handle()
                if registry is not None:
                    if pending is not None:  # at most one report in flight; it answers the deployment model
                        self.deployment_step_model = await asyncio.wait_for(pending, 2.0)
                    pending = registry.report.remote(self.replica_key, report)
            except (asyncio.TimeoutError, ray.exceptions.RayError):
                self._registry, pending = None, None
            except Exception:  # noqa: BLE001 - never let the reporter die
                logger.exception("PAB report failed")
            await asyncio.sleep(self.spec.report_interval_s)

    # -- Serve hooks ----------------------------------------------------------------------

    async def record_routing_stats(self) -> dict[str, Any]:
        """The router's fallback view (Serve polls this), plus the registry's actor name."""
        await self._registry_handle()
        return {**_view_json(self.node_view()), "registry_actor": self._registry_name, "node": self.node_label}

    async def check_health(self) -> None:
        await self.engine.check_health()

    async def generate(self, job: EngineJob) -> AsyncIterator[EngineReply | str]:
        """Serve one request the ingress admitted and rendered (``cluster.http.api.Ingress.run``),
        with vLLM's OpenAI layer.

        Yields ``EngineReply`` items: for a whole response first ``started`` (at its first
        token, so the ingress's first-output timeout bounds the time to the first token,
        not the generation), then ``error`` or ``body``; for a stream ``sse`` (the first
        server-sent event, after the first token) or ``error``, then each further event as
        a string.
        """
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        received_s = time.time()
        request = job.request
        self.received.append((received_s, job.request_id))
        self.front_delay.observe(received_s, received_s - job.arrival_s)
        if self.front_log is not None:
            self.front_log.write(json.dumps({"t": received_s, "front_delay_s": round(received_s - job.arrival_s, 5)})
                                 + "\n")
        where = {"node": self.node_label, "replica": self.replica_key}
        first_output = asyncio.Event()
        token = FIRST_OUTPUT.set(first_output)  # the task below (and the engine calls in it) inherit it
        try:
            task = asyncio.ensure_future(self._serve(job.kind, request))
        finally:
            FIRST_OUTPUT.reset(token)
        waiter = asyncio.ensure_future(first_output.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():  # a whole response on its way: its first token came, so say so now
                yield EngineReply(**where, started=True)
            out = await task
        finally:
            waiter.cancel()
            task.cancel()  # (when the client left) vLLM aborts the engine request
        if isinstance(out, ErrorResponse):
            yield EngineReply(**where, error=out.model_dump())
            return
        if not hasattr(out, "__aiter__"):
            yield EngineReply(**where, body=out.model_dump_json())
            return
        try:
            first = True
            async for event in out:
                if first:
                    first = False
                    failed = _sse_error(event)
                    yield EngineReply(**where, error=failed) if failed else EngineReply(**where, sse=event)
                    if failed:
                        return
                else:
                    yield event
        finally:
            await out.aclose()  # the client left or the stream ended: vLLM aborts the engine request

    async def _serve(self, kind: str, request):
        """vLLM's answer to ``request``: an ``ErrorResponse``, a whole response, or an SSE generator."""
        from vllm.entrypoints.serve.exception_handling.error_response import create_error_response

        try:
            if kind == CHAT:
                return await self.api.openai_serving_chat.create_chat_completion(request, None)
            return await self.api.openai_serving_completion.create_completion(request, None)
        except Exception as exc:  # noqa: BLE001 - vLLM's input checks raise (token id out of vocabulary, ...)
            return create_error_response(exc)  # vLLM's mapping: a client error is a 400, the rest a 500

    def track(self, request_id: str, prompt: Any, sp) -> list[str]:
        """Start tracking engine request ``request_id`` (one ``_Live`` per sample); returns their keys."""
        ids = prompt.get("prompt_token_ids") if isinstance(prompt, dict) else None
        prompt_tokens = len(ids) if ids is not None else 0
        cached = 0
        index = self.prefix_index
        if index is not None and ids:
            hashes = prompt_block_hashes(ids, index.block_tokens)
            cached = index.cached_tokens(0, hashes, prompt_tokens)
            index.insert(0, hashes)  # (the prompt's blocks are cached once it is prefilled; its output's: untrack)
        slo, _ = slo_or_default(sp.extra_args, self.default_slo)  # as the scheduler reads it
        arrival_s = arrival_from_extra_args(sp.extra_args, time.time())
        self.recent_slos.append({"ttft_slo_s": slo.ttft_s, "tpot_slo_s": slo.tpot_s,
                                 "front_delay_s": round(time.time() - arrival_s, 4)})
        keys = [f"{request_id}/{i}" for i in range(max(1, int(sp.n or 1)))]
        for key in keys:
            self.prompts_seen.add(prompt_tokens)
            self.live[key] = _Live(arrival_s=arrival_s, prompt_tokens=prompt_tokens,
                                   max_tokens=int(sp.max_tokens or 1), slo=slo, cached_tokens=cached,
                                   token_ids=list(ids) if index is not None and ids else None)
        return keys

    def on_output(self, request_id: str, out) -> None:
        """Account one ``RequestOutput`` (``DELTA``: each completion holds its new tokens)."""
        now = time.time()
        for c in out.outputs:
            live = self.live.get(f"{request_id}/{c.index}")
            n = len(c.token_ids)
            if live is None or not n:
                continue
            if live.first_token_s is None:
                live.first_token_s = now
                self.feedback.observe_first_token(now, live.arrival_s, live.slo)
                self.prefill_rate.prefilled(time.monotonic(), live.uncached_tokens)
                self._count_prompt(live, out.num_cached_tokens)
            live.last_token_s = now
            live.output_tokens += n
            if live.token_ids is not None:
                live.token_ids.extend(c.token_ids)
            if c.finish_reason is not None:
                live.finished = True

    def _count_prompt(self, live: _Live, vllm_cached_tokens: Optional[int]) -> None:
        """At a request's first token: the prompt tokens the budget charged it (uncached by this node's
        estimate) beside those vLLM computed (its prompt less vLLM's own prefix-cache hit)."""
        computed = live.prompt_tokens - (vllm_cached_tokens or 0)
        self.prompt_tokens_charged += live.uncached_tokens
        self.prompt_tokens_computed += computed
        if live.uncached_tokens > 0:
            self.metrics.prompt_charged.inc(live.uncached_tokens)
        if computed > 0:
            self.metrics.prompt_computed.inc(computed)

    def untrack(self, keys: list[str]) -> None:
        """Stop tracking; a sample that finished counts in attainment and the output lengths seen."""
        for key in keys:
            live = self.live.pop(key, None)
            if live is not None and live.token_ids is not None and self.prefix_index is not None:
                # vLLM caches every full block of the sequence but the last token's (never computed):
                # a conversation's next turn, which resends this reply, hits them too.
                self.prefix_index.insert(0, prompt_block_hashes(live.token_ids[:-1], self.prefix_index.block_tokens))
            if live is not None and live.finished:
                self._record_finished(live)

    def _record_finished(self, lv: _Live) -> None:
        m = self.metrics
        self.finished += 1
        self.outputs_seen.add(lv.output_tokens)
        ttft = tpot = None
        tags = {"slo_class": lv.slo.tier}
        if lv.first_token_s is not None:
            ttft = lv.first_token_s - lv.arrival_s
            m.ttft.observe(ttft, tags=tags)
            if lv.last_token_s is not None:
                tpot = mean_tpot_s(lv.first_token_s, lv.last_token_s, lv.output_tokens)
        if tpot is not None:
            m.tpot.observe(tpot, tags=tags)
            self.feedback.observe_mean_tpot(time.time(), lv.arrival_s, tpot, lv.slo)
        m.finished.inc(tags=tags)
        counts = self.finished_by_class.setdefault(lv.slo.tier, [0, 0])
        counts[0] += 1
        if meets_slo(ttft, tpot, lv.slo):
            self.attained += 1
            counts[1] += 1
            m.attained.inc(tags=tags)
        m.attainment.set(self.attained / self.finished)

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            try:
                engine.shutdown()
            except Exception:  # noqa: BLE001
                pass



def _sse_error(event: str) -> Optional[dict]:
    """vLLM's error object when a server-sent event carries one (a stream failed before any output), else None."""
    if not event.startswith('data: {"error"'):
        return None
    try:
        body = json.loads(event[len("data: "):])
        int(body["error"]["code"])
        return body
    except (ValueError, KeyError, TypeError):
        return None


def _tracked_engine_class():
    """vLLM's ``AsyncLLM`` with each request's outputs seen by the replica (``engine.replica``).

    The replica's budget, closed loop and metrics need each request's first token
    and output count. A non-streaming request arrives as ``FINAL_ONLY``, which
    would hide its first token: it runs as ``DELTA`` here and its outputs are
    merged back into one (``RequestOutput.add(..., aggregate=True)``) for vLLM's
    serving code, which sees what ``FINAL_ONLY`` gives.
    """
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    class TrackedAsyncLLM(AsyncLLM):
        replica: Optional["EngineReplica"] = None

        async def generate(self, prompt, sampling_params, request_id, **kwargs):
            final_only = sampling_params.output_kind == RequestOutputKind.FINAL_ONLY
            if final_only:
                sampling_params = sampling_params.clone()  # shared by a completion's prompts
                sampling_params.output_kind = RequestOutputKind.DELTA
            keys = self.replica.track(request_id, prompt, sampling_params)
            merged = None
            try:
                first_output = FIRST_OUTPUT.get()
                async for out in super().generate(prompt, sampling_params, request_id, **kwargs):
                    self.replica.on_output(request_id, out)
                    if first_output is not None:
                        first_output.set()
                    if not final_only:
                        yield out
                    elif merged is None:
                        merged = out
                    else:
                        merged.add(out, aggregate=True)
                if merged is not None:
                    merged.outputs.sort(key=lambda c: c.index)
                    yield merged
            finally:
                self.replica.untrack(keys)

    return TrackedAsyncLLM


def _view_json(view: NodeView) -> dict[str, Any]:
    """A view as JSON-able fields (``node_id`` aside), for Serve's routing stats and the status endpoint."""
    data = asdict(view)
    del data["node_id"]
    data["received_ids"] = sorted(view.received_ids or ())
    return data


def _vllm_ray_metrics_logger(instances: list):
    """vLLM's own engine metrics (``vllm:*``) exported through Ray, next to ours.

    The FairBatching scheduler's report rides in ``SchedulerStats.kv_connector_stats``
    (see ``node/vllm/served_scheduler.py``); vLLM's logger would read it as KV-connector
    data, so it gets the stats without it. Each instance appends itself to
    ``instances`` so the replica can call ``refresh_gauges`` while the engine
    idles (vLLM sets its gauges only when a step produced output).
    """
    import dataclasses

    from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

    class VllmRayMetrics(RayPrometheusStatLogger):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._last_gauges: dict[int, tuple[int, int, float]] = {}  # engine -> (running, waiting, kv usage)
            instances.append(self)

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
            if scheduler_stats is not None:
                if scheduler_stats.kv_connector_stats is not None:
                    scheduler_stats = dataclasses.replace(scheduler_stats, kv_connector_stats=None)
                self._last_gauges[engine_idx] = (
                    scheduler_stats.num_running_reqs,
                    scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs,
                    scheduler_stats.kv_cache_usage,
                )
            super().record(scheduler_stats, iteration_stats, mm_cache_stats=mm_cache_stats, engine_idx=engine_idx)

        def refresh_gauges(self) -> None:
            """Re-set the running / waiting / KV-usage gauges to their last values (vLLM 0.32 names)."""
            for idx, (running, waiting, kv) in self._last_gauges.items():
                try:
                    self.gauge_scheduler_running[idx].set(running)
                    self.gauge_scheduler_waiting[idx].set(waiting)
                    self.gauge_kv_cache_usage[idx].set(kv)
                except (AttributeError, KeyError, IndexError):  # another vLLM: nothing to refresh
                    return

    return VllmRayMetrics
