"""FairBatching inside vLLM's V1 engine: the policy plans each step, vLLM carries the plan out.

``FairBatchingScheduler`` (on vLLM's ``Scheduler``) and ``FairBatchingAsyncScheduler``
(on ``AsyncScheduler``, vLLM's default on GPU) share ``FairBatchingMixin``. Load
either by dotted path: ``LLM(..., scheduler_cls="node.vllm.scheduler.FairBatchingScheduler")``.
Settings come from ``FAIRBATCHING_NODE_CONFIG`` (``node.vllm.node_config``).

Each step, before vLLM's own ``schedule()``:

1. snapshot: every running and waiting ``Request`` becomes a ``RequestState``
   (SLOs from ``SamplingParams.extra_args`` ``ttft_slo_s`` / ``tpot_slo_s``,
   else the deployment defaults; a waiting request starts at its prefix-cache
   hit; a token in flight under async scheduling counts as emitted; a request
   whose structured-output grammar has compiled is admittable); the policy
   plans the step;
2. apply: running requests the plan leaves out are hidden from
   ``self.running`` for this call (they keep their KV blocks and runner slots);
   the rest are ordered decodes first, then prefill chunks, each in plan order,
   so the tail (vLLM's preemption victim) is the least pressed; planned waiting
   requests move to the head of the FCFS queue in plan order;
   ``max_num_active_reqs`` admits exactly the planned new requests and
   ``max_num_scheduled_tokens`` is the planned total (at most the configured cap).
   Each planned request is also *granted* its planned tokens
   (``NodeConfig.token_grants``): vLLM's scan gives a running request
   ``min(remaining, budget left)`` before it reaches the waiting queue, so
   without a grant a loose prefill in progress would take the tokens planned
   for a tighter waiting prompt (EDF across prefills would not hold when SLOs
   differ). The grant caps what vLLM gives each request in the per-request hook
   ``_reserve_prefill_lookahead`` that both of its scans call;
   Urgent decodes the plan left out for want of KV blocks stay visible right
   after the planned decodes (one token each added to the budget), so vLLM
   preempts from the tail to fit them exactly as it would on its own; the
   hidden decodes then stay at the tail, the most relaxed last, so they are
   preempted first;
3. vLLM schedules as usual (KV allocation, prefix cache, preemption, chunking);
   everything is restored in ``finally``;
4. what vLLM scheduled is compared with the plan; a step where they differ is a
   divergence, counted by reason.

An empty plan while work exists (everything skipped, e.g. the KV cache is full)
falls back to vLLM's own step, so vLLM can preempt and make progress.

Measurement: the step time is the interval from the end of ``schedule()`` to
the start of ``update_from_output()`` (model execution and sampling), on
``time.perf_counter``. The step *cadence* is the time from the start of one
``schedule()`` to the start of the next while requests remain (the engine
did not idle between them); cadence minus step time is the host's per-step
time (scheduling, output processing, IPC), whose running median is the
model's ``host_s`` (``OnlineRefit.observe_cadence``), refit or not. Under async scheduling (overlapped steps) a step is
timed from the later of its schedule end and the previous step's update, a
close approximation of its own execution. Each measured step feeds
``OnlineRefit``; the policy plans with the refitted model.

Clocks: slack and deadlines use wall-clock ``time.time()`` seconds, because
vLLM stamps ``Request.arrival_time`` with ``time.time()``; first-token times
(seen in ``update_from_output``) use the same clock. Durations use
``time.perf_counter``.

Node state for the serving layer: ``node_stats()`` returns a ``NodeStats``
(``node.vllm.node_stats``: budget, last step predicted/measured, urgent/skipped
counts, divergences, model coefficients, refit error). The node's PAB is computed once, by the engine
replica (``node.serve.engine_replica``), which holds the closed loop that
corrects it; the scheduler supplies the step-time model it is computed with. With ``step_log`` set, one JSON
line per step is appended to that file.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter, deque
from dataclasses import dataclass, replace
from typing import Any

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import RequestStatus

from node.core.step_time import StepTimeModel, prefill_attention_pairs

from node.fit.step_time_fit import OnlineRefit, StepSample
from node.core.envelope import Anchor
from node.vllm.node_config import NodeConfig
from node.vllm.internals import check_internals
from node.vllm.node_stats import NodeStats, StepSummary
from node.core.plan import BatchPlan, Limits, host_running_order
from node.core.policies import make_policy
from node.fit.profile import load_profile
from node.core.extra_args import arrival_from_extra_args, slo_or_default
from node.core.request import SLO, RequestState

logger = logging.getLogger(__name__)


_ADMITTABLE = (RequestStatus.WAITING, RequestStatus.PREEMPTED)


@dataclass
class _PendingStep:
    """What one ``schedule()`` call scheduled, waiting for its measured duration."""

    step: int
    sched_end: float  # perf_counter at the end of schedule()
    prefill_tokens: int
    decode_tokens: int
    context_tokens: int
    predicted_s: float  # the current model on what vLLM actually scheduled
    record: dict[str, Any]  # the step-log line, completed in update_from_output
    prefill_attention_pairs: float = 0.0  # sum of q * (p + q / 2) over the prefill chunks


class FairBatchingMixin:
    """Host logic shared by the sync and async schedulers. Mix in before a vLLM ``Scheduler``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fb_config = cfg = NodeConfig.from_env()
        check_internals(self, plan_applied=cfg.apply_plan)  # one clear error instead of a broken step
        self.fb_profile = profile = load_profile(cfg.profile)
        prior = profile.planning_model(cfg.step_model, cfg.safety_factor)
        self.fb_refit = OnlineRefit(
            prior, window=cfg.refit_window, min_samples=cfg.refit_min_samples, refit_every=cfg.refit_every,
            min_prefill_steps=cfg.refit_min_prefill_steps,
        )
        # Named fb_policy: vLLM's Scheduler already uses self.policy (FCFS / priority).
        self.fb_policy = make_policy(cfg.policy, prior, **cfg.knobs)
        self.fb_default_slo = SLO(cfg.ttft_slo_s or profile.default_slo.ttft_s,
                                  cfg.tpot_slo_s or profile.default_slo.tpot_s)
        anchor = getattr(getattr(self.fb_policy, "config", None), "anchor", Anchor.ARRIVAL)
        self.fb_anchor = Anchor(anchor)

        self._fb_slos: dict[str, SLO] = {}
        self._fb_first_token_s: dict[str, float] = {}
        self._fb_pending: deque[_PendingStep] = deque()
        self._fb_last_update = 0.0
        # Step cadence (start to start while busy) for the host time of the step-time model.
        self._fb_prev_start: float | None = None
        # Per-request token grants of the step being scheduled (request id -> planned tokens); empty
        # outside schedule() and when grants are off.
        self._fb_grants: dict[str, int] = {}
        self._fb_busy = False
        self._fb_last_forward_s: float | None = None
        self.fb_last_snapshot: list[RequestState] = []
        self.fb_last_plan: BatchPlan | None = None
        self._fb_last_step = StepSummary()

        self.fb_steps = 0  # schedule() calls that had something to plan
        self.fb_divergent_steps = 0
        self.fb_divergence: Counter[str] = Counter()
        self.fb_fallback_steps = 0
        self.fb_invalid_slos = 0
        self._fb_measured = 0
        self._fb_ape_sum = 0.0  # absolute percentage error of the raw model, summed
        self._fb_plan_s_sum = 0.0
        self._fb_plan_s_max = 0.0

        log_path = cfg.step_log.replace("{pid}", str(os.getpid())) if cfg.step_log else None
        self._fb_log = open(log_path, "a", buffering=1) if log_path else None  # noqa: SIM115
        logger.info(
            "FairBatching scheduler: policy=%s apply_plan=%s profile=%s (a=%.3g s, b=%.3g s/tok, c=%.3g s/ctx, "
            "e=%.3g s/pair)", cfg.policy, cfg.apply_plan, profile.name, prior.a_s, prior.b_s_per_token,
            prior.c_s_per_context_token, prior.attn_prefill_s_per_token_sq,
        )

    # ------------------------------------------------------------------ snapshot

    def _fb_slo_of(self, request: Any) -> SLO:
        rid = request.request_id
        slo = self._fb_slos.get(rid)
        if slo is not None:
            return slo
        params = request.sampling_params
        extra = params.extra_args if params is not None else None
        slo, invalid = slo_or_default(extra, self.fb_default_slo)
        if invalid:
            self.fb_invalid_slos += 1
            logger.warning("request %s: invalid %s in extra_args %r; using the deployment default",
                           rid, " and ".join(invalid), extra)
        self._fb_slos[rid] = slo
        return slo

    def _fb_arrival_of(self, request: Any) -> float:
        """The ingress's arrival stamp when the request carries one (earlier than vLLM's), else vLLM's."""
        params = request.sampling_params
        return min(arrival_from_extra_args(params.extra_args if params is not None else None, request.arrival_time),
                   request.arrival_time)

    def _fb_prefix_hit(self, request: Any) -> tuple[int, int]:
        """The prefix-cache hit vLLM would give ``request`` if it admitted it now: (tokens, evictable blocks).

        Only a request that has computed nothing (new, or preempted) gets a hit, only when prefix
        caching is on and the request may read the cache (``prefix_cache_lookup_enabled``), and at
        most ``num_tokens - 1`` tokens (the last prompt token is recomputed for its logits), as in
        ``KVCacheManager.get_computed_blocks``. The lookup is the coordinator's
        ``find_longest_cache_hit``, which only reads the block-hash table: unlike
        ``get_computed_blocks`` plus the scheduler's admission, it records no prefix-cache stats,
        emits no KV events and touches no block (reference counts and the free queue's LRU order
        are unchanged). A window vLLM replays (``prefix_replay_tokens``) is recomputed, so it is
        taken off the hit. External (KV connector) hits are not counted.

        Evictable blocks are hit blocks with no owner (``ref_cnt == 0``): they sit in the free
        queue, so they are counted free now and stop being free when the request adopts them.
        """
        kv = self.kv_cache_manager
        if request.num_computed_tokens or not kv.prefix_cache_lookup_enabled(request):
            return 0, 0
        groups, hit, _ = kv.coordinator.find_longest_cache_hit(request.block_hashes, request.num_tokens - 1)
        replay = self.prefix_replay_tokens
        if replay:
            hit = hit - replay if hit > replay else 0
        if hit <= 0:
            return 0, 0
        evictable = sum(1 for blocks in groups for b in blocks if b.ref_cnt == 0 and not b.is_null)
        return hit, evictable

    def _fb_state(self, request: Any) -> tuple[RequestState, bool] | None:
        """The policy's view of one vLLM request, and whether it decodes; None if it needs no tokens now.

        Token counts are vLLM's. Under the async scheduler a scheduled token is in flight until
        ``update_from_output`` (``num_output_placeholders``): it counts as emitted here, so
        ``output_tokens`` is the index of the token this step would compute and its deadline is the
        one the envelope gives that token. A decode whose last token (``max_tokens``) is in flight
        needs nothing more (vLLM skips it). A waiting request that has computed nothing starts at
        its prefix-cache hit (``_fb_prefix_hit``): only the uncached tokens are planned, and its
        ``kv_blocks`` make the planner count only the blocks it must take from the free pool.
        """
        computed = request.num_computed_tokens
        placeholders = request.num_output_placeholders
        prompt = request.num_prompt_tokens
        if placeholders and computed + 2 - placeholders >= prompt + request.max_tokens:
            return None  # async: the request's last token is in flight (vLLM's own test)
        needed = request.num_tokens + placeholders - computed  # what vLLM would schedule at most
        if needed <= 0:
            return None
        outputs = request.num_output_tokens + placeholders
        common = dict(
            request_id=request.request_id,
            arrival_s=self._fb_arrival_of(request),
            slo=self._fb_slo_of(request),
            output_tokens=outputs,
            first_token_s=self._fb_first_token_s.get(request.request_id),
            max_output_tokens=request.max_tokens,
        )
        if needed == 1 and outputs > 0 and computed >= prompt:
            return RequestState(prompt_tokens=prompt, computed_tokens=prompt, **common), True
        # Prefilling. After a preemption the prompt and every generated token are
        # recomputed, so the "prompt" to prefill is what vLLM will schedule in all.
        total = computed + needed
        hit, evictable = self._fb_prefix_hit(request)
        if hit:
            # The hit's blocks count as held; the evictable ones are taken from the free pool.
            held_blocks = max(0, -(-hit // self.block_size) - evictable)
            return RequestState(prompt_tokens=total, computed_tokens=hit, kv_blocks=held_blocks, **common), False
        return RequestState(prompt_tokens=total, computed_tokens=computed, **common), False

    @staticmethod
    def _fb_grammar_ready(request: Any) -> bool:
        """Whether ``request`` waits only for a structured-output grammar that is now compiled.

        vLLM flips such a request to WAITING only when its waiting scan reaches it, and the scan
        stops when the step's token budget runs out; a budget the plan fills would keep the scan
        from ever reaching it. It is admittable: the plan may schedule it, and vLLM flips its status
        when the plan puts it at the head of the queue. A grammar that failed to compile is not.
        """
        if request.status != RequestStatus.WAITING_FOR_STRUCTURED_OUTPUT_GRAMMAR:
            return False
        so = request.structured_output_request
        grammar = so.grammar if so is not None else None
        return grammar is not None and not isinstance(grammar, Exception)

    def _fb_snapshot(self, now_s: float, limits: Limits) -> tuple[list[RequestState], dict[str, bool]]:
        states: list[RequestState] = []
        is_decode: dict[str, bool] = {}
        bs = self.block_size
        growth = 0  # blocks the running requests take if all of them run this step
        for request in self.running:
            got = self._fb_state(request)
            if got is not None:
                states.append(got[0])
                is_decode[request.request_id] = got[1]
                c, end = request.num_computed_tokens, request.num_tokens + request.num_output_placeholders
                growth += max(0, -(-end // bs) - (-(-c // bs)))
        # vLLM admits a waiting request only when its whole sequence fits in the
        # free blocks (scheduler_reserve_full_isl, plus the watermark); a request
        # that cannot be admitted is left out of the plan, in the seat order below.
        full_isl = self.scheduler_reserve_full_isl
        room = self.kv_cache_manager.block_pool.get_num_free_blocks() - growth
        room -= self.kv_cache_manager.watermark_blocks
        # (state, decoding, KV blocks it takes from the free pool to be admitted; None: not checked)
        candidates = []
        for request in self.waiting:
            if request.status not in _ADMITTABLE and not self._fb_grammar_ready(request):
                continue  # blocked (grammar compiling, remote KV, streaming input): vLLM handles it
            got = self._fb_state(request)
            if got is not None:
                state, decoding = got
                need = None
                if full_isl and request.num_computed_tokens == 0:
                    # Blocks the whole sequence takes from the free pool: a prefix-cache hit's
                    # blocks are already there (evictable ones excepted, see _fb_prefix_hit).
                    uncached = max(0, min(state.prompt_tokens, self.max_model_len) - state.computed_tokens)
                    need = state.kv_blocks_needed(uncached, bs)
                candidates.append((state, decoding, need))
        # vLLM admits a waiting request only into a free seat: running requests,
        # hidden ones included, count against max_num_running_reqs. Offer the
        # planner no more waiting requests than there are seats, and take the KV
        # room above in the policy's seat order (EDF, relegated requests last:
        # ConfiguredPolicy.seat_order), not vLLM's queue order. When every waiting
        # request fits, the order changes nothing and is not computed (it runs
        # Moore's rule under fewest-late relegation: host time on every step).
        seats = self.max_num_running_reqs - len(self.running)
        needs = [g[2] for g in candidates if g[2] is not None]
        short = len(candidates) > seats or (bool(needs) and sum(needs) > room)
        if seats > 0 and short and len(candidates) > 1:
            by_id = {g[0].request_id: g for g in candidates}
            order = self.fb_policy.seat_order([g[0] for g in candidates], states, limits, now_s)
            candidates = [by_id[st.request_id] for st in order]
        for state, decoding, need in candidates:
            if seats <= 0:
                break
            if need is not None:
                if need > room:
                    continue
                room -= need
            seats -= 1
            states.append(state)
            is_decode[state.request_id] = decoding
        return states, is_decode

    def _fb_limits(self, token_cap: int) -> Limits:
        return Limits(
            max_num_seqs=self.max_num_running_reqs,
            max_num_batched_tokens=token_cap,
            kv_blocks_free=self.kv_cache_manager.block_pool.get_num_free_blocks(),
            block_size=self.block_size,
            kv_blocks_total=self.kv_cache_manager.block_pool.num_gpu_blocks,
        )

    # ------------------------------------------------------------------ schedule

    def schedule(self, *args: Any, **kwargs: Any):  # -> SchedulerOutput
        t0 = time.perf_counter()
        now_s = time.time()
        cfg = self.fb_config
        if self._fb_prev_start is not None and self._fb_busy and self._fb_last_forward_s is not None:
            # Back to back with the previous step: its cadence is the time between the two starts.
            self._fb_set_step_model(self.fb_refit.observe_cadence(t0 - self._fb_prev_start, self._fb_last_forward_s))
        if self.current_step % 256 == 0:
            self._fb_prune()
        saved_tokens = self.max_num_scheduled_tokens
        saved_active = self.max_num_active_reqs
        limits = self._fb_limits(saved_tokens)
        states, is_decode = self._fb_snapshot(now_s, limits)
        plan = self.fb_policy.plan(states, limits, now_s) if states else None
        t_plan = time.perf_counter() - t0
        apply = cfg.apply_plan and plan is not None and not plan.is_empty
        fallback = cfg.apply_plan and plan is not None and plan.is_empty
        planned = {item.request_id: item for item in plan.items} if plan is not None else {}

        hidden: list[Any] = []
        removed: list[Any] = []
        try:
            if apply:
                hidden, removed = self._fb_apply(plan, planned, is_decode, saved_tokens, saved_active, states)
                if cfg.token_grants:
                    self._fb_grants = {rid: item.new_tokens for rid, item in planned.items()}
            out = super().schedule(*args, **kwargs)
        finally:
            self._fb_grants = {}
            if removed:
                self.running = self.running + removed
            self.max_num_scheduled_tokens = saved_tokens
            self.max_num_active_reqs = saved_active

        self._fb_prev_start = t0 if out.total_num_scheduled_tokens > 0 else None
        if plan is None:
            return out
        self.fb_steps += 1
        self._fb_plan_s_sum += t_plan
        self._fb_plan_s_max = max(self._fb_plan_s_max, t_plan)
        self.fb_last_snapshot, self.fb_last_plan = states, plan
        reasons = self._fb_divergence(out, plan, planned, fallback)
        if reasons:
            self.fb_divergent_steps += 1
            self.fb_divergence.update(reasons)
        if fallback:
            self.fb_fallback_steps += 1
        self._fb_record(out, plan, is_decode, hidden, reasons, now_s, t_plan)
        return out

    def _fb_apply(
        self, plan: BatchPlan, planned: dict, is_decode: dict[str, bool], saved_tokens: int, saved_active: int,
        states: list[RequestState],
    ) -> tuple[list[Any], list[Any]]:
        """Shape vLLM's queues and limits so its scan carries out ``plan``.

        Returns ``(hidden, removed)``: the running requests the plan gives no tokens, and those of
        them taken out of ``self.running`` for this call (the caller puts them back).
        """
        # Decodes first, then prefill chunks: vLLM gives each running request
        # min(remaining, budget left), so a chunk ahead of a decode would eat its token.
        # Urgent decodes the plan left out for want of KV blocks stay visible right
        # after the planned decodes: vLLM then preempts from the tail to fit them.
        kv_urgent = dict.fromkeys(plan.short_of_kv)
        rank = {rid: k for k, rid in enumerate(plan.host_order)}
        last = len(rank)
        visible, hidden = [], []
        for request in self.running:
            rid = request.request_id
            if rid in planned or rid in kv_urgent or rid not in is_decode:  # not in snapshot: needs no tokens
                visible.append(request)
            else:
                hidden.append(request)
        visible.sort(key=lambda r: rank.get(r.request_id, last))
        removed = hidden
        if kv_urgent and hidden:
            # An urgent decode short of KV blocks makes vLLM preempt: from the tail of
            # running under FCFS (the largest (priority, arrival) under the priority policy).
            # The hidden decodes are the most relaxed requests, so they go to the tail, the
            # latest next-token deadline last, and are preempted before any planned prefill
            # or the urgent decode itself. They get no tokens: the budget below is spent
            # before vLLM's scan reaches them.
            by_id = {r.request_id: r for r in hidden}
            tail = host_running_order([s for s in states if s.request_id in by_id], plan, self.fb_anchor)
            visible += [by_id[s.request_id] for s in tail]
            removed = []
        self.running = visible

        admit = 0
        if isinstance(self.waiting, deque):  # FCFS queue; a priority heap keeps its own order
            waiting = list(self.waiting)
            head = [r for r in waiting if r.request_id in planned]
            if head:
                head.sort(key=lambda r: rank[r.request_id])
                rest = [r for r in waiting if r.request_id not in planned]
                self.waiting.clear()
                self.waiting.extend(head + rest)
                admit = len(head)
        else:
            admit = sum(1 for r in self.waiting if r.request_id in planned)
        slots = len(visible) + self.num_waiting_for_streaming_input + admit
        self.max_num_active_reqs = max(1, min(saved_active - len(removed), slots))
        self.max_num_scheduled_tokens = max(1, min(plan.new_tokens + len(kv_urgent), saved_tokens))
        return hidden, removed

    def _reserve_prefill_lookahead(self, request: Any, num_computed_tokens: int, num_new_tokens: int) -> int:
        """vLLM's per-request cap on a chunk (both scans call it just before allocating KV), narrowed to
        the request's token grant while a plan is applied (module docstring, step 2). A request without a
        grant (not planned: a decode kept visible for preemption, one that needs no tokens) keeps vLLM's."""
        tokens = super()._reserve_prefill_lookahead(request, num_computed_tokens, num_new_tokens)
        grant = self._fb_grants.get(request.request_id)
        return tokens if grant is None else min(tokens, grant)

    def _fb_divergence(self, out: Any, plan: BatchPlan, planned: dict, fallback: bool) -> Counter[str]:
        """Why what vLLM scheduled differs from the plan (empty when it does not)."""
        reasons: Counter[str] = Counter()
        if fallback:
            reasons["empty-plan"] += 1
            return reasons
        scheduled = out.num_scheduled_tokens
        computed_before: dict[str, int] | None = None  # built only when a prefill got fewer tokens
        if out.preempted_req_ids:
            reasons["preempted"] += len(out.preempted_req_ids)
        for rid, item in planned.items():
            got = scheduled.get(rid, 0)
            if got == item.new_tokens:
                continue
            if got == 0:
                reasons["not-scheduled"] += 1
            elif got < item.new_tokens:
                # A prefix-cache hit moves the request's computed tokens past the snapshot's by more
                # than vLLM scheduled (vLLM counts scheduled tokens as computed within schedule()).
                if computed_before is None:
                    computed_before = {s.request_id: s.computed_tokens for s in self.fb_last_snapshot}
                request = self.requests.get(rid)
                hit = (request is not None and item.is_prefill
                       and request.num_computed_tokens - got > computed_before.get(rid, request.num_computed_tokens))
                reasons["prefix-cache" if hit else "fewer-tokens"] += 1
            else:
                reasons["more-tokens"] += 1
        kv_urgent = set(plan.short_of_kv)
        for rid in scheduled:
            if rid not in planned:
                reasons["kv-urgent" if rid in kv_urgent else "unplanned"] += 1
        return reasons

    def _fb_record(
        self, out: Any, plan: BatchPlan, is_decode: dict[str, bool], hidden: list, reasons: Counter, now_s: float,
        t_plan: float,
    ) -> None:
        scheduled = out.num_scheduled_tokens
        prefill = decode = context = 0
        pairs = 0.0
        for rid, n in scheduled.items():
            request = self.requests.get(rid)
            if request is None:
                continue
            context += request.num_computed_tokens  # advanced by vLLM at schedule time: cached + new
            if is_decode.get(rid, n == 1 and request.num_output_tokens > 0):
                decode += n
            else:
                prefill += n
                pairs += prefill_attention_pairs(n, max(request.num_computed_tokens - n, 0))
        model = self.fb_refit.step_model
        predicted = model.predict_s(prefill + decode, context, pairs) if scheduled else 0.0
        self._fb_last_step = StepSummary(
            step=self.current_step,
            budget_s=plan.budget_s,
            plan_predicted_s=plan.predicted_s,
            predicted_s=predicted,
            urgent=plan.urgent_decodes,
            skipped=len(plan.skipped),
            hidden=len(hidden),
            planned_tokens=plan.new_tokens,
            scheduled_tokens=out.total_num_scheduled_tokens,
        )
        if out.total_num_scheduled_tokens <= 0:
            return
        record = None
        if self._fb_log is not None:
            record = {
                "step": self.current_step,
                "t": now_s,
                "policy": plan.policy,
                "applied": self.fb_config.apply_plan,
                "budget_s": plan.budget_s,
                "plan_predicted_s": plan.predicted_s,
                "predicted_s": predicted,
                "plan_tokens": plan.new_tokens,
                "urgent": plan.urgent_decodes,
                "skipped": dict(Counter(s.reason.value for s in plan.skipped)),
                "hidden": [r.request_id for r in hidden],
                "decoding": [rid for rid, d in is_decode.items() if d],
                "tokens": dict(scheduled),
                "prefill_tokens": prefill,
                "decode_tokens": decode,
                "context_tokens": context,
                "prefill_attention_pairs": pairs,
                "preempted": sorted(out.preempted_req_ids),
                "diverged": dict(reasons),
                "plan_s": t_plan,
            }
        self._fb_pending.append(
            _PendingStep(self.current_step, time.perf_counter(), prefill, decode, context, predicted, record, pairs)
        )

    # ------------------------------------------------------------------ outputs

    def update_from_output(self, scheduler_output: Any, model_runner_output: Any):
        t_update = time.perf_counter()
        scheduled = scheduler_output.num_scheduled_tokens
        first_unseen = [
            (rid, self.requests.get(rid)) for rid in scheduled if rid not in self._fb_first_token_s
        ]
        result = super().update_from_output(scheduler_output, model_runner_output)
        now_s = time.time()
        for rid, request in first_unseen:
            if request is not None and request.num_output_tokens > 0:
                self._fb_first_token_s[rid] = now_s
        for rid in scheduled:
            request = self.requests.get(rid)
            if request is None or request.is_finished():
                self._fb_forget(rid)
        self._fb_busy = self.has_unfinished_requests()
        if scheduler_output.total_num_scheduled_tokens > 0 and self._fb_pending:
            self._fb_measure(self._fb_pending.popleft(), t_update)
        self._fb_last_update = time.perf_counter()
        return result

    def _fb_measure(self, pending: _PendingStep, t_update: float) -> None:
        duration = t_update - max(pending.sched_end, self._fb_last_update)
        if duration <= 0:
            return
        model = self.fb_refit.step_model
        raw = pending.predicted_s / model.safety_factor
        self._fb_measured += 1
        self._fb_ape_sum += abs(raw - duration) / duration
        self._fb_last_step = replace(self._fb_last_step, measured_s=duration, step_predicted_s=pending.predicted_s)
        self._fb_last_forward_s = duration
        if self.fb_config.refit:
            sample = StepSample(pending.prefill_tokens, pending.decode_tokens, pending.context_tokens, duration,
                                pending.prefill_attention_pairs)
            self._fb_set_step_model(self.fb_refit.observe(sample))
        if pending.record is not None and self._fb_log is not None:
            pending.record["measured_s"] = duration
            # Work left after this step: the next step's start minus this one's ("t") is then its cadence.
            pending.record["busy_after"] = self._fb_busy
            self._fb_log.write(json.dumps(pending.record) + "\n")

    def _fb_set_step_model(self, model: StepTimeModel) -> None:
        if model is not self.fb_policy.step_model:
            self.fb_policy.step_model = model

    def _fb_forget(self, rid: str) -> None:
        self._fb_slos.pop(rid, None)
        self._fb_first_token_s.pop(rid, None)

    def _fb_prune(self) -> None:
        """Drop per-request state of requests vLLM no longer holds (aborted between steps)."""
        for table in (self._fb_slos, self._fb_first_token_s):
            for rid in [rid for rid in table if rid not in self.requests]:
                del table[rid]

    # ------------------------------------------------------------------ node state

    def node_stats(self) -> NodeStats:
        """The node's state for the replica, dashboards and benches: small, O(1) to build."""
        report = self.fb_refit.report
        return NodeStats(
            policy=self.fb_config.policy,
            plan_applied=self.fb_config.apply_plan,
            profile=self.fb_profile.name,
            steps=self.fb_steps,
            running=len(self.running),
            waiting=len(self.waiting),
            kv_free_blocks=self.kv_cache_manager.block_pool.get_num_free_blocks(),
            block_size=self.block_size,
            last_step=self._fb_last_step,
            divergent_steps=self.fb_divergent_steps,
            fallback_steps=self.fb_fallback_steps,
            divergence_by_reason=dict(self.fb_divergence),
            step_model=self.fb_refit.step_model,
            refits=self.fb_refit.refits,
            host_samples=self.fb_refit.host_samples,
            refit_mape=report.overall.mape if report is not None else None,
            measured_steps=self._fb_measured,
            prediction_mape=self._fb_ape_sum / self._fb_measured if self._fb_measured else None,
            plan_time_mean_s=self._fb_plan_s_sum / self.fb_steps if self.fb_steps else None,
            plan_time_max_s=self._fb_plan_s_max,
            invalid_slos=self.fb_invalid_slos,
        )

    def shutdown(self) -> None:
        try:
            super().shutdown()
        finally:
            if self._fb_log is not None:
                self._fb_log.close()
                self._fb_log = None


class FairBatchingScheduler(FairBatchingMixin, Scheduler):
    """vLLM V1 ``Scheduler`` whose steps are planned by the node policy (CPU, or GPU without async scheduling)."""


class FairBatchingAsyncScheduler(FairBatchingMixin, AsyncScheduler):
    """The same on vLLM's ``AsyncScheduler`` (GPU default: overlapped steps)."""
