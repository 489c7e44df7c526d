"""One serving node of the simulator: a node policy over a KV block pool, stepping on the virtual clock.

Each step the node hands the policy one ``RequestState`` per live request,
advances the clock by the *true* step time of the plan (``TrueStepTime``, not
the policy's prediction) and applies the plan at the end of the step: a
prefill chunk advances ``computed_tokens``, a decode emits a token, and a
prefill that completes emits its first token then. Requests arriving during a
step wait for the next one.

KV cache: a request holds ``ceil(kv_tokens / block_size)`` blocks. When the
plan leaves out a decode it must run for want of a KV block
(``BatchPlan.short_of_kv``: an urgent decode, a baseline's decode-first one),
running requests are preempted by recompute (vLLM's default) and the step is
planned again: their blocks are freed and they become prefills of prompt plus
emitted tokens, keeping their emitted tokens and deadlines. The victims are the
ones vLLM would take: the tail of its running list (the started requests in
the order they last started), as the policy's host orders that list
(``NodePolicy.preemption_order``: as is under FCFS, the largest ``(priority,
arrival)`` first under vLLM's priority policy, under FairBatching the requests
the plan leaves out, the latest next-token deadline first). A decode the plan
may leave out (FairBatching's relaxed ones) waits for a block instead, as on
the vLLM host. When no running request can take a step at all (an empty plan),
the one holding the fewest blocks is preempted first, whatever the policy, so
that the ones holding more keep their progress (``SimNode._victim``).

Snapshots: building a fresh ``RequestState`` for every request every step
(with its validation) costs more than the policy's whole plan. The node
therefore keeps one snapshot per request and updates its changed fields in
place between steps, while no policy call is running. This is sound because the policies are pure and keep no reference to
a snapshot across ``plan`` calls.

The node publishes a ``NodeView`` (PAB and load counters) after a step at most
every ``pab_interval_s`` and when it goes idle; the simulator delivers it to
the balancer ``pab_delay_s`` later.

What a node knows when it budgets (``estimate_pab``'s inputs beyond its
requests): its *expected output length*, the mean output of the last 512
requests it finished (``expected_output_prior`` until the first one; with
oracle output lengths each request carries its true length instead); and,
with a ``LatencyFeedback``, the *correction* of its prefill rate: each
admitted request's TTFT over its TTFT SLO is observed at its first token
(with its arrival time) and its mean TPOT over its TPOT SLO at its finish;
the controller is updated each time the node publishes. ``FrontDelay`` sees
how long each request spent before it reached the node (held at the
balancer), taken off the PAB horizon. With SLO tiers (``tier_slos``: the
looser ones) the node also reports a budget per looser tier, over that
tier's own TTFT (``NodeView.tier_pab_tokens``). The timeline samples
``(t, pab, budget, in_flight, kv_usage, correction, binding, queued_prefill_tokens)``.
"""

from __future__ import annotations

from typing import Callable

from dataclasses import replace

from balancer.core.placement import NodeView
from balancer.core.prefix import cache_hit_tokens
from cluster.sim.events import EventLoop
from cluster.sim.kv_cache import BlockPool
from cluster.sim.prefix_cache import NodePrefixCache
from cluster.sim.shared_host import SharedHost
from cluster.sim.true_step_time import TrueStepTime
from node.fit.step_time_fit import OnlineRefit, StepSample
from node.core.feedback import FrontDelay, LatencyFeedback, PrefillRate
from node.core.pab import PABReport
from node.core.recent import RecentMean
from node.core.plan import BatchPlan, Limits, NodePolicy
from node.core.request import SLO, RequestState
from node.core.step_time import prefill_attention_pairs
from node.core.attainment import mean_tpot_s
from node.core.envelope import on_time_both

class SimRequest:
    """One request's life in the simulator: trace facts, progress, and what the metrics need."""

    __slots__ = (
        "rid", "key", "arrival_s", "prompt_tokens", "output_tokens", "slo",
        "node_id", "state", "prefill_tokens", "computed", "emitted", "kv_tokens", "kv_blocks",
        "first_token_s", "last_token_s", "finish_s", "on_time_arrival", "on_time_first",
        "preemptions", "rejected", "dropped", "hash_ids", "cached_tokens", "held_hashes", "shared_kv_blocks",
    )

    def __init__(self, rid: int, arrival_s: float, prompt_tokens: int, output_tokens: int, slo: SLO,
                 hash_ids: tuple[int, ...] = ()) -> None:
        self.rid = rid
        self.key = str(rid)
        self.arrival_s = arrival_s
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens  # tokens the request will emit in all
        self.slo = slo
        self.node_id: int | None = None
        self.state: RequestState | None = None
        self.prefill_tokens = prompt_tokens  # tokens to prefill (grows on recompute)
        self.computed = 0
        self.emitted = 0
        self.kv_tokens = 0
        self.kv_blocks = 0
        self.first_token_s: float | None = None
        self.last_token_s: float | None = None
        self.finish_s: float | None = None
        self.on_time_arrival = 0  # tokens emitted by their arrival-anchored envelope deadline
        self.on_time_first = 0  # ... by their first-token-anchored deadline
        self.preemptions = 0
        self.rejected = False
        self.dropped = False
        self.hash_ids = hash_ids  # block hashes of the prompt's full prefix blocks (empty: none known)
        self.cached_tokens = 0  # prompt tokens its node's prefix cache held when it arrived (computed from the start)
        self.held_hashes: tuple[int, ...] = ()  # prefix blocks it holds in its node's cache (hit, then registered)
        self.shared_kv_blocks = 0  # KV blocks of its context that the node's prefix cache holds, not the request

    @property
    def started(self) -> bool:
        """Whether it has run a prefill chunk (or finished its prefill) since it last started from its cache hit."""
        return self.computed > self.cached_tokens or self.computed == self.prefill_tokens

    @property
    def finished(self) -> bool:
        return self.finish_s is not None


class SimNode:
    """A node: live requests, a block pool, a policy; steps back to back while it has work."""

    def __init__(
        self,
        node_id: int,
        loop: EventLoop,
        policy: NodePolicy,
        step_time: TrueStepTime,
        pool: BlockPool,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        estimate_pab: Callable[..., PABReport],
        publish: Callable[[NodeView], None],
        on_finish: Callable[[SimRequest], None],
        pab_interval_s: float = 0.0,
        pab_in_every_report: bool = True,
        timeline_interval_s: float = 1.0,
        oracle_output_lengths: bool = False,
        acknowledge_received: bool = True,
        refit: OnlineRefit | None = None,
        feedback: LatencyFeedback | None = None,
        front_delay: FrontDelay | None = None,
        prefill_rate: PrefillRate | None = None,
        report_interval_s: float = 0.1,
        expected_output_prior: float | None = None,
        output_window: int = 512,
        tier_slos: dict[str, SLO] | None = None,
        seats_as_vllm: bool = False,
        prefix_cache: NodePrefixCache | None = None,
        pab_counts_cached: bool = False,
        shared_host: SharedHost | None = None,
    ) -> None:
        self.node_id = node_id
        self.loop = loop
        self.policy = policy
        self.step_time = step_time
        self.pool = pool
        self.block_size = pool.block_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.estimate_pab = estimate_pab
        self.publish = publish
        self.on_finish = on_finish
        self.pab_interval_s = pab_interval_s
        self.pab_in_every_report = pab_in_every_report
        self.timeline_interval_s = timeline_interval_s
        self.oracle_output_lengths = oracle_output_lengths
        self.acknowledge_received = acknowledge_received
        self.shared_host = shared_host  # the front end's CPU on this host's cores (None: a host of its own)
        self.refit = refit  # online refit of the policy's model from the true step times, as a real node does
        self.feedback = feedback  # closed loop on measured latency (None: correction stays 1)
        self.front_delay = front_delay
        # The prefill rate delivered while prompts queued caps PAB's modelled rate, as on a serving engine;
        # it is ticked every report_interval_s of simulated time (the engine replica's report cadence).
        self.prefill_rate = prefill_rate
        self.report_interval_s = report_interval_s
        self._next_tick_s = 0.0
        self.correction = 1.0
        self.expected_output_prior = expected_output_prior
        self._outputs = RecentMean(output_window)  # output lengths of the last finished requests
        self._prompts = RecentMean(output_window)  # prompt lengths of the last received requests

        self.live: dict[str, SimRequest] = {}  # insertion order = admission order
        # vLLM's running list: the started requests, in the order they last started (preemption victims)
        self.running: dict[str, SimRequest] = {}
        self.states: dict[str, RequestState] = {}
        self.busy = False
        self.received = 0  # requests admitted from the balancer, all time
        self._received_ids: list[str] = []  # ids admitted since the last report (acknowledges their debits)
        self.queued_prefill_tokens = 0
        self.waiting = 0  # admitted requests that have not started prefill
        self.decoding = 0
        self.steps = 0
        self.busy_s = 0.0
        self.slowdown_sum = 0.0  # the shared host's slowdown summed over the steps (1 each without one)
        # Steps that prefilled at least half of max_num_batched_tokens: their prompt tokens and wall time
        self.draining_tokens = 0
        self.draining_s = 0.0
        self.preemptions = 0
        self.recomputing = 0  # live requests that were preempted at least once
        self.last_budget_s: float | None = None
        self.last_pab: PABReport | None = None
        # Looser SLO tiers (name -> SLO): a budget over each one's own TTFT is reported beside the tightest's.
        self.tier_slos = dict(tier_slos or {})
        # vLLM admits a waiting request only into a free seat, counting every running request
        # (paced decodes included); off: the plan's per-step cap is the only seat limit.
        self.seats_as_vllm = seats_as_vllm
        # Prefix caching (None: none): hits count as computed. pab_counts_cached: PAB and the
        # reported queued prefill count every prompt token, cached or not (the comparison arm).
        self.prefix_cache = prefix_cache
        self.pab_counts_cached = pab_counts_cached
        self.last_tier_pab: dict[str, float] | None = None
        self._last_publish_s = -float("inf")
        self._next_sample_s = 0.0
        # (t, pab, budget, in_flight, kv, correction, binding, queued prompt tokens)
        self.timeline: list[tuple[float, float, float | None, int, float, float, str, int]] = []

    # -- arrivals ------------------------------------------------------------------

    def admit(self, req: SimRequest, now_s: float) -> None:
        """Take a request from the balancer; start stepping if idle."""
        req.node_id = self.node_id
        self.received += 1
        self._prompts.add(req.prefill_tokens)
        if self.front_delay is not None:
            self.front_delay.observe(now_s, now_s - req.arrival_s)
        if self.acknowledge_received:
            self._received_ids.append(req.key)
        if self.pool.blocks_for(req.prompt_tokens + req.output_tokens) > self.pool.total_blocks:
            req.dropped = True  # can never fit this node's KV cache
            self.on_finish(req)
            return
        cache = self.prefix_cache
        if cache is not None:
            self._take_cache_hit(req, cache)
        req.state = RequestState(
            request_id=req.key,
            arrival_s=req.arrival_s,
            prompt_tokens=req.prefill_tokens,
            slo=req.slo,
            computed_tokens=req.computed,
            max_output_tokens=req.output_tokens if self.oracle_output_lengths else None,
        )
        self.live[req.key] = req
        self.states[req.key] = req.state
        self.queued_prefill_tokens += req.prefill_tokens - req.computed
        self.waiting += 1
        if not self.busy:
            self._start_step(now_s)

    def _take_cache_hit(self, req: SimRequest, cache: NodePrefixCache) -> None:
        """The leading blocks of the prompt the node holds count as computed (at most the prompt less one
        token, whole blocks): the request holds them and neither prefills nor allocates them."""
        hit = 0
        if req.hash_ids:
            hit = cache_hit_tokens(cache.lookup(req.hash_ids), req.prompt_tokens, cache.block_tokens)
            if hit:
                held = req.hash_ids[:hit // cache.block_tokens]
                cache.acquire(held)
                req.held_hashes = held
                req.shared_kv_blocks = len(held) * cache.kv_blocks_per_block
                req.cached_tokens = req.computed = req.kv_tokens = hit
                req.kv_blocks = hit // self.block_size
        cache.count_hit(req.prompt_tokens, hit)

    def _release_cache(self, req: SimRequest) -> None:
        """Return the request's own KV blocks to the pool and let go of the prefix blocks it held."""
        self.pool.give_back(req.kv_blocks - req.shared_kv_blocks)
        if req.held_hashes:
            self.prefix_cache.release(req.held_hashes)
            req.held_hashes = ()
        req.shared_kv_blocks = 0

    # -- one step ------------------------------------------------------------------

    def _start_step(self, now_s: float) -> None:
        if not self.states:
            self.busy = False
            self._maybe_publish(now_s, force=True)
            return
        if not self.busy and self.prefill_rate is not None:
            self._tick_prefill_rate(now_s, idle=True)  # the report ticks of the idle spell just ended
        self.busy = True
        plan = self._plan(now_s)
        # A decode short of KV is left out only when the plan took the last free block (cheap test first).
        while plan.kv_blocks >= self.pool.free_blocks and plan.short_of_kv:
            if not self._preempt_one(now_s, plan):
                break
            plan = self._plan(now_s)
        while plan.is_empty:
            if not self._preempt_one(now_s, plan, stalled=True) and not self._drop_oldest_waiting():
                self.busy = False
                return
            if not self.states:
                self.busy = False
                return
            plan = self._plan(now_s)
        self.last_budget_s = plan.budget_s
        live = self.live
        prefill_ctx = 0
        pairs = 0.0
        if self.recomputing:
            # A recomputed request's snapshot overstates its context: sum from the truth.
            decode_ctx = 0
            for item in plan.items:
                req = live[item.request_id]
                if item.is_prefill:
                    q, p = item.new_tokens, req.computed
                    prefill_ctx += p + q
                    pairs += prefill_attention_pairs(q, p)
                else:
                    decode_ctx += req.kv_tokens + 1
        else:
            # Otherwise the plan's context is exact (decodes: kv + 1, prefills: p + q).
            for item in plan.items:
                if item.is_prefill:
                    q = item.new_tokens
                    p = live[item.request_id].computed
                    prefill_ctx += p + q
                    pairs += prefill_attention_pairs(q, p)
            decode_ctx = plan.context_tokens - prefill_ctx
        slowdown = self.shared_host.slowdown(now_s) if self.shared_host is not None else 1.0
        duration_s = self.step_time.step_s(plan.new_tokens, decode_ctx, prefill_ctx, pairs, slowdown, len(plan.items))
        if self.refit is not None:
            # The forward pass is fitted by least squares; the host time (cadence minus forward) apart.
            prefill = sum(item.new_tokens for item in plan.items if item.is_prefill)
            forward_s = self.step_time.last_forward_s
            sample = StepSample(prefill, plan.new_tokens - prefill, plan.context_tokens, forward_s, pairs)
            observe_cadence = getattr(self.refit, "observe_cadence", None)
            if observe_cadence is not None:
                observe_cadence(duration_s, forward_s)
                model = self.refit.observe(sample)
            else:  # the older signature: observe(sample, cadence_s)
                model = self.refit.observe(sample, duration_s)
            if model is not self.policy.step_model:
                self.policy.step_model = model
        self.steps += 1
        self.busy_s += duration_s
        self.slowdown_sum += slowdown
        prefill = plan.new_tokens - len(plan.decode_ids)
        if 2 * prefill >= self.max_num_batched_tokens:
            self.draining_tokens += prefill
            self.draining_s += duration_s
        self.loop.at(now_s + duration_s, self._end_step, plan)

    def _end_step(self, plan: BatchPlan) -> None:
        now_s = self.loop.now_s
        live, pool, bs = self.live, self.pool, self.block_size
        finished: list[SimRequest] = []
        for item in plan.items:
            req = live[item.request_id]
            if item.is_prefill:
                q = item.new_tokens
                if req.computed == req.cached_tokens:
                    self.waiting -= 1
                    self.running[req.key] = req
                req.computed += q
                req.kv_tokens += q
                blocks = -(-req.kv_tokens // bs)
                pool.take(blocks - req.kv_blocks)
                req.kv_blocks = blocks
                self.queued_prefill_tokens -= q
                req.state.computed_tokens = req.computed
                if req.computed == req.prefill_tokens:
                    self.decoding += 1
                    if req.hash_ids and self.prefix_cache is not None:
                        self._register_prompt(req)
                    self._emit(req, now_s, finished)
            else:
                req.kv_tokens += 1
                if req.kv_tokens > req.kv_blocks * bs:
                    pool.take(1)
                    req.kv_blocks += 1
                self._emit(req, now_s, finished)
            if req.preemptions:
                # Only a recomputed request holds other than what RequestState derives.
                req.state.kv_tokens = req.kv_tokens
                req.state.kv_blocks = req.kv_blocks
        if self.prefix_cache is not None:
            self.prefix_cache.fit()  # the steps' new blocks came out of the free KV the cache lives in
        for req in finished:
            self._retire(req)
            req.finish_s = now_s
            self._learn_from_finish(req, now_s)
            self.on_finish(req)
        self._maybe_publish(now_s)
        self._start_step(now_s)

    def _register_prompt(self, req: SimRequest) -> None:
        """The prompt's full blocks the request computed become the node's cached blocks, held by it."""
        cache = self.prefix_cache
        registered = cache.register(req.hash_ids[len(req.held_hashes):])
        if registered:
            req.held_hashes = req.held_hashes + tuple(registered)
            req.shared_kv_blocks += len(registered) * cache.kv_blocks_per_block

    def _emit(self, req: SimRequest, now_s: float, finished: list[SimRequest]) -> None:
        """Token ``req.emitted`` (0-based) comes out at ``now_s``; score it against both envelopes."""
        j = req.emitted
        if j == 0:
            req.first_token_s = now_s
            req.state.first_token_s = now_s
            if self.feedback is not None:
                self.feedback.observe_first_token(now_s, req.arrival_s, req.slo)
            if self.prefill_rate is not None:
                self.prefill_rate.prefilled(now_s, req.prefill_tokens - req.cached_tokens)
        on_arrival, on_first = on_time_both(now_s, req.arrival_s, req.slo, j, req.first_token_s)
        req.on_time_arrival += on_arrival
        req.on_time_first += on_first
        req.emitted = j + 1
        req.last_token_s = now_s
        req.state.output_tokens = j + 1
        if j + 1 >= req.output_tokens:
            finished.append(req)

    def _learn_from_finish(self, req: SimRequest, now_s: float) -> None:
        """A request finished: its output length feeds the node's estimate, its mean TPOT the closed loop."""
        self._outputs.add(req.output_tokens)
        tpot_s = mean_tpot_s(req.first_token_s, now_s, req.emitted)
        if self.feedback is not None and tpot_s is not None:
            self.feedback.observe_mean_tpot(now_s, req.arrival_s, tpot_s, req.slo)

    def expected_output_tokens(self) -> float | None:
        """What this node expects a request to emit: mean of its last finished ones, else the prior.

        ``None`` with oracle output lengths: each request then carries its true
        length (``max_output_tokens``), which an expectation must not clip.
        """
        if self.oracle_output_lengths:
            return None
        mean = self._outputs.mean()
        return self.expected_output_prior if mean is None else mean

    def _retire(self, req: SimRequest) -> None:
        if req.preemptions:
            self.recomputing -= 1
        del self.live[req.key]
        del self.states[req.key]
        self.running.pop(req.key, None)
        if self.prefix_cache is None:
            self.pool.give_back(req.kv_blocks)
        else:
            self._release_cache(req)
        req.kv_blocks = 0
        if req.computed < req.prefill_tokens:
            self.queued_prefill_tokens -= req.prefill_tokens - req.computed
            if req.computed == req.cached_tokens:
                self.waiting -= 1
        else:
            self.decoding -= 1

    # -- KV pressure ---------------------------------------------------------------

    def _victim(self, now_s: float, plan: BatchPlan, stalled: bool = False) -> SimRequest | None:
        """The request vLLM preempts next for ``plan``: the tail of its running list as the policy's host
        orders it (``NodePolicy.preemption_order``); with nothing running, the newest waiting request that
        holds blocks of its prefix-cache hit (letting go of them; vLLM's waiting requests hold none).

        ``stalled``: the plan is empty, no running request can take a step for want of KV. Then the
        running request holding the fewest blocks goes first (the latest started among equals), so the
        ones holding the most keep their progress. (Taking the most relaxed deadline there let a
        request that had recomputed its prompt be taken again and again, each time losing it, while the
        one it blocked waited: thousands of preemptions of one request on a 512-token cache.)"""
        if self.running and stalled:
            started = list(self.running.values())
            return min(reversed(started), key=lambda req: req.kv_blocks)
        if self.running:
            order = self.policy.preemption_order([req.state for req in self.running.values()], plan, now_s)
            return self.live[order[-1].request_id]
        for req in reversed(self.live.values()):
            if req.kv_blocks > 0:
                return req
        return None

    def _preempt_one(self, now_s: float, plan: BatchPlan, stalled: bool = False) -> bool:
        victim = self._victim(now_s, plan, stalled)
        if victim is None:
            return False
        self._preempt(victim)
        return True

    def _preempt(self, req: SimRequest) -> None:
        """Free the request's blocks; it will recompute its prompt and emitted tokens as a prefill."""
        started = req.started  # else it is already counted waiting (it held only its cache hit)
        if self.prefix_cache is None:
            self.pool.give_back(req.kv_blocks)
        else:
            self._release_cache(req)
        if req.computed == req.prefill_tokens:
            self.decoding -= 1
        self.running.pop(req.key, None)
        self.queued_prefill_tokens -= req.prefill_tokens - req.computed
        req.prefill_tokens = req.prompt_tokens + req.emitted
        self.queued_prefill_tokens += req.prefill_tokens
        if started:
            self.waiting += 1  # it restarts from nothing
        req.computed = req.kv_tokens = req.kv_blocks = req.cached_tokens = 0
        if req.preemptions == 0:
            self.recomputing += 1
        req.preemptions += 1
        self.preemptions += 1
        # Rebuild the snapshot (rare): its prompt length changes.
        old = req.state
        req.state = RequestState(
            request_id=req.key,
            arrival_s=req.arrival_s,
            prompt_tokens=req.prefill_tokens,
            slo=old.slo,
            computed_tokens=0,
            output_tokens=req.emitted,
            first_token_s=req.first_token_s,
            max_output_tokens=old.max_output_tokens,
            kv_tokens=0,
            kv_blocks=0,
        )
        self.states[req.key] = req.state

    def _plan(self, now_s: float) -> BatchPlan:
        """The policy's plan for a step starting at ``now_s`` over the plannable requests."""
        limits = Limits(self.max_num_seqs, self.max_num_batched_tokens, self.pool.free_blocks, self.block_size,
                        self.pool.total_blocks)
        return self.policy.plan(self._plannable(now_s, limits), limits, now_s)

    def _plannable(self, now_s: float, limits: Limits) -> list[RequestState]:
        """The requests the planner may schedule this step. With ``seats_as_vllm`` (as vLLM, and
        ``node.vllm.scheduler``'s snapshot): every started request (holding KV), and waiting ones
        only into the seats they leave of ``max_num_seqs``, in the policy's ``seat_order``."""
        states = list(self.states.values())
        if not self.seats_as_vllm:
            return states
        live = self.live
        started = [st for st in states if live[st.request_id].started]
        seats = self.max_num_seqs - len(started)
        if seats >= len(states) - len(started):
            return states
        waiting = [st for st in states if not live[st.request_id].started]
        return started + self.policy.seat_order(waiting, started, limits, now_s)[:max(seats, 0)]

    def _drop_oldest_waiting(self) -> bool:
        """Last resort when nothing can be scheduled and nothing can be preempted: drop
        (and report as dropped) the oldest request holding no KV. Never seen in practice;
        every test asserts it stays at zero."""
        for req in self.live.values():
            if req.kv_blocks == req.shared_kv_blocks and not req.started:
                self._retire(req)
                req.dropped = True
                self.on_finish(req)
                return True
        return False

    # -- reports -------------------------------------------------------------------

    def _tick_prefill_rate(self, now_s: float, *, idle: bool = False) -> None:
        """The report ticks due by ``now_s``: whether prompts queued (more prompt tokens waiting than
        one step takes) as they are now, or not at all for the ticks of an idle spell (``idle``)."""
        waiting = not idle and self.queued_prefill_tokens > self.max_num_batched_tokens
        while self._next_tick_s <= now_s:
            self.prefill_rate.tick(self._next_tick_s, waiting)
            self._next_tick_s += self.report_interval_s

    def view(self, now_s: float, *, measure_pab: bool = True) -> NodeView:
        """The load counters now, and PAB measured now (or the last measured one)."""
        if self.prefill_rate is not None:
            self._tick_prefill_rate(now_s)
        if measure_pab or self.last_pab is None:
            states = list(self.states.values())
            knows = dict(
                measured_prefill_rate_tps=self.prefill_rate.rate_tps(now_s) if self.prefill_rate is not None else None,
                expected_output_tokens=self.expected_output_tokens(),
                typical_prompt_tokens=self._prompts.mean(),
                correction=self.correction,
                front_delay_s=self.front_delay.value_s(now_s) if self.front_delay is not None else 0.0,
            )
            kv_free = self.pool.free_blocks * self.block_size
            if self.pab_counts_cached:
                states = self._states_counting_cached(states)
            self.last_pab = self.estimate_pab(states, now_s, kv_free, **knows)
            if self.tier_slos:
                self.last_tier_pab = {name: self.estimate_pab(states, now_s, kv_free, budget_slo=slo, **knows).pab_tokens
                                      for name, slo in self.tier_slos.items()}
        report = self.last_pab
        queued = self.queued_prefill_tokens
        if self.pab_counts_cached:
            queued += sum(r.cached_tokens for r in self.live.values() if r.computed < r.prefill_tokens)
        return NodeView(
            node_id=self.node_id,
            pab_tokens=report.pab_tokens,
            in_flight=len(self.live),
            queued_prefill_tokens=queued,
            kv_usage=self.pool.used_fraction,
            waiting=self.waiting,
            reported_at_s=now_s,
            prefill_rate_tps=report.prefill_rate_tps,
            kv_capacity_tokens=self.pool.total_blocks * self.block_size,
            recovery_tps=report.recovery_tps,
            slots_free=report.slots_free,
            slot_wait_s=report.slot_wait_s,
            idle_pab_tokens=report.idle_pab_tokens,
            tier_pab_tokens=self.last_tier_pab,
            max_num_seqs=self.max_num_seqs,
            kv_pab_tokens=report.kv_limited_tokens,
            expected_output_tokens=report.expected_output_tokens,
            received_ids=self._take_received_ids(),
        )

    def _states_counting_cached(self, states: list[RequestState]) -> list[RequestState]:
        """The snapshots as a cache-blind budget sees them: a prefill's cache hit is still to compute."""
        live = self.live
        out = []
        for st in states:
            cached = live[st.request_id].cached_tokens
            if cached and st.is_prefill:
                st = replace(st, computed_tokens=st.computed_tokens - cached)
            out.append(st)
        return out

    def _take_received_ids(self) -> frozenset[str] | None:
        if not self.acknowledge_received:
            return None
        ids, self._received_ids = frozenset(self._received_ids), []
        return ids

    def publish_now(self, now_s: float) -> None:
        """Report to the balancer now, whatever the report interval."""
        self._maybe_publish(now_s, force=True)

    def _maybe_publish(self, now_s: float, force: bool = False) -> None:
        if not force and now_s - self._last_publish_s < self.pab_interval_s:
            return
        self._last_publish_s = now_s
        if self.feedback is not None:
            waiting = [(r.arrival_s, r.slo.ttft_s) for r in self.live.values() if r.first_token_s is None]
            self.correction = self.feedback.update(now_s, waiting=waiting)
        sample = now_s >= self._next_sample_s
        # A balancer that ignores PAB still gets it in the timeline samples, measured there only.
        view = self.view(now_s, measure_pab=self.pab_in_every_report or sample or force)
        self.publish(view)
        if sample:
            self._next_sample_s = now_s + self.timeline_interval_s
            self.timeline.append((now_s, view.pab_tokens, self.last_budget_s, view.in_flight, view.kv_usage,
                                  self.correction, self.last_pab.binding, view.queued_prefill_tokens))
