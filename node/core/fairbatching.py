"""The FairBatching batch former (DESIGN section 2).

Each step:

1. slack of every request against its envelope deadline;
2. time budget ``max(min decode slack, min decode TPOT)`` (the floor keeps a
   step from shrinking to nothing when decodes are late);
3. candidates in three groups, each in EDF order (slack ascending):
   urgent decodes, then prefills, then decodes ahead of their envelope;
4. greedy: urgent decodes enter whatever the budget (leaving one out makes it
   late anyway), everything else only while the predicted step time stays
   within the budget; a prefill gets the largest chunk that fits.

Under overload every decode becomes urgent and the policy degrades to
decode-first by itself, protecting admitted requests.

**Mixed SLO classes.** Every request is on its own envelope, so slack,
EDF order and a decode's urgency follow its own TPOT. The floor of the budget
and the ``budget + min TPOT`` urgency threshold bound the *step* (the next
token of the tightest decode must not wait longer), so they come from the
tightest TPOT among the decodes: a batch decode at 250 ms never sets them
while an interactive one at 50 ms runs, and is urgent only when its own slack
is short (tests/test_tier_policy.py). With no tight decode in the node the
step may run to the loose TPOT, which lets a waiting interactive prompt take
a large chunk.

**Relegation** (knob ``relegate``; ``none`` is the paper's policy). EDF on the
envelope is optimal while every deadline can be met; past that point it
serves the most overdue request first, which makes the next ones late in turn
(the EDF *domino effect*): under overload every request ends a little late
instead of a few very late, and per-request SLO attainment collapses. Niyama
(Sarathi-serve, branch ``niyama_asplos2026``) answers with *eager relegation*:
requests that will miss are moved to a lower-priority queue and served with
what is left. Here, with ``relegate=lost``, a request is *lost* once its
first-token deadline ``arr + ttft`` has passed without a first token (or its
first token came after it): by the paper's per-request test (TTFT and mean
TPOT within SLO) it can no longer attain, whatever the node does. Lost
requests leave the three groups and form a fourth one, taken last: after the
non-urgent decodes, lost decodes then lost prefills, each in EDF order, and
only in what is left of the step: they never make it longer than the other
requests need (or one TPOT when those need less), since a longer step would
delay the prompts arriving during it. They do not set the budget and are
never urgent. Nothing is dropped: a lost request still holds its KV, is
finished with the step time the others leave, and is served at once when the
node has slack. ``relegate=doomed`` relegates earlier, as Niyama does: also a prefill
whose remaining prompt cannot be computed before its first-token deadline
even alone on the node (predicted time of its remaining chunks, at most
``max_num_batched_tokens`` each, exceeds its slack). ``relegate=fewest-late``
relegates the doomed and, when the queued prompts together cannot all make
their first-token deadlines, the ones whose removal leaves the fewest late:
Moore's algorithm for the fewest late jobs on one machine (J. M. Moore, "An n
job, one machine sequencing algorithm for minimizing the number of late jobs",
Management Science 15(1), 1968; optimal there). The prefills are taken in EDF
order, each costing its remaining prompt at the node's prefill rate beside its
decodes (PAB's rate, ``fewest_late_split``); whenever the running sum passes a
prompt's deadline, the most expensive prompt taken so far is relegated. Under
overload this serves many short prompts in time instead of a few long ones
late; the long ones are served with what is left, and first when load falls.
Under light load no request is lost and every setting plans exactly as ``none``.

**Lending** (knob ``lend``; ``always`` is the paper's order). In the paper's
order every prefill goes before the decodes that are ahead of their envelope,
so a decode yields its slack to any prompt, even one whose deadline is far
off; paced decodes then stay live longer and hold seats and KV (Little's law),
which is what runs out under load. With ``lend=at-risk`` a decode lends its
slack only to prefills that need it: a prefill is *at risk* when its slack is
below the time to compute its remaining prompt alone on the node plus one
budget (the step it would otherwise wait). The prefills up to the last one at
risk in EDF order go before the non-urgent decodes, the others after them. With one
SLO class under load most prompts are at risk and both orders plan alike; a
batch prompt with a 30 s TTFT beside interactive decodes is not, until late.
When seats or KV run short (knobs ``seat_pressure``, ``kv_pressure``: the share
of ``max_num_seqs`` requests live, of the KV cache's blocks allocated) no decode
lends at all: every decode is served each step, decode-first, so requests
finish and give back what is short.

**TPOT guard band** (knob ``tpot_margin``, default 0). Paced decodes are
served just before their envelope deadline, so a step that runs longer than
the model predicted makes the last token late and the mean TPOT miss by a
hair. With ``tpot_margin = m`` decode deadlines are planned at
``(1 - m) * tpot`` per token (budget floor and urgency alike); the last token
of an ``n``-token output then has ``m * tpot * (n - 1)`` of the SLO to spare.
A linear step model underpredicts long-prompt prefill chunks (attention grows
with ``q * p``), which is where this matters.

**Tile alignment** (knob ``chunk_align_tokens``, default 0: off). A GPU runs a
step's GEMMs in tiles of rows, so a step a few tokens past a multiple of the
tile pays for a whole tile more: on the H100 profile's measured operators 1024
tokens take 22.3 ms and 1040 take 26.9 ms (*tile quantization*; Sarathi-Serve,
Agrawal et al., OSDI 2024, sizes its chunks to it). A smooth step model cannot
see this, and "the largest chunk that fits" lands anywhere. With
``chunk_align_tokens = g`` the one prefill chunk the budget cut short is trimmed
so the step's tokens are a multiple of ``g`` (``BatchBuilder.align_tokens``); the
tokens it gives back are prefilled next step, as the rest of that prompt is.
A prompt that fits whole is never cut.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left
from dataclasses import dataclass
from enum import Enum
from typing import Sequence

from node.core.envelope import Anchor, on_time, slacks_s
from node.core.pab import prefill_chunk_per_step
from node.core.plan import BatchBuilder, BatchPlan, ConfiguredPolicy, Group, Limits, host_running_order
from node.core.request import RequestState
from node.core.step_time import StepTimeModel, prefill_attention_pairs
from node.core.validation import check_finite


class Relegation(str, Enum):
    """Which requests are served last (see the module docstring)."""

    NONE = "none"  # the paper's policy: every request in its EDF group
    LOST = "lost"  # requests whose first-token deadline passed before their first token
    DOOMED = "doomed"  # lost, or prefills that cannot finish their prompt by that deadline even alone
    FEWEST_LATE = "fewest-late"  # doomed, or prefills Moore's algorithm drops so the fewest are late


class Lending(str, Enum):
    """Which prefills go before the decodes that are ahead of their envelope (module docstring)."""

    ALWAYS = "always"  # the paper's order: every prefill before the non-urgent decodes
    AT_RISK = "at-risk"  # only prefills whose deadline is at risk; the others after the decodes


class Urgency(str, Enum):
    """When a decode counts as urgent."""

    # A decode skipped now waits this step and the next one: urgent if its
    # slack is below budget + min TPOT. DESIGN section 2 measured the narrower
    # rule 38 % worse on bursty short requests.
    BUDGET_PLUS_TPOT = "budget+tpot"
    TPOT = "tpot"  # the narrow rule: slack below the request's own TPOT


@dataclass(frozen=True, slots=True)
class FairBatchingConfig:
    """Knobs of the FairBatching policy; defaults follow DESIGN section 2."""

    anchor: Anchor = Anchor.ARRIVAL
    urgency: Urgency = Urgency.BUDGET_PLUS_TPOT
    min_chunk_tokens: int = 16
    budget_floor: bool = True  # the max(., min TPOT) floor of the budget
    max_budget_s: float | None = None  # optional cap on a step's time budget
    # Seat pressure: once the node holds at least this fraction of max_num_seqs requests, every
    # decode is served each step (decode-first). Pacing decodes to their envelope keeps them live
    # longer; when sequence seats are what runs out, finishing them frees seats for prompts.
    seat_pressure: float | None = None
    # KV pressure: the same once at least this fraction of the node's KV cache blocks is allocated
    # (needs ``Limits.kv_blocks_total``). With SLO classes a batch decode paced to a loose TPOT holds
    # its KV for seconds, and KV, not seats, is what runs out first on a GPU with many seats.
    kv_pressure: float | None = None
    # Serve requests that can no longer attain last instead of first (EDF domino effect; module docstring).
    relegate: Relegation = Relegation.NONE
    # Plan decode deadlines at (1 - tpot_margin) x the TPOT SLO: a guard band for steps that run longer
    # than the model predicts (the last token of a paced request has tpot_margin x TPOT x (n - 1) to spare).
    tpot_margin: float = 0.0
    # Which prefills a decode ahead of its envelope yields to (module docstring, "Lending").
    lend: Lending = Lending.ALWAYS
    # Trim a chunk cut short by the budget so the step's tokens are a multiple of this (0: off;
    # module docstring, "Tile alignment").
    chunk_align_tokens: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "anchor", Anchor(self.anchor))
        object.__setattr__(self, "lend", Lending(self.lend))
        object.__setattr__(self, "urgency", Urgency(self.urgency))
        object.__setattr__(self, "relegate", Relegation(self.relegate))
        if not isinstance(self.min_chunk_tokens, int) or self.min_chunk_tokens < 1:
            raise ValueError(f"min_chunk_tokens must be an integer >= 1, got {self.min_chunk_tokens!r}")
        if self.max_budget_s is not None and not (math.isfinite(self.max_budget_s) and self.max_budget_s > 0):
            raise ValueError(f"max_budget_s must be > 0, got {self.max_budget_s!r}")
        if not (isinstance(self.tpot_margin, (int, float)) and 0 <= self.tpot_margin < 1):
            raise ValueError(f"tpot_margin must be in [0, 1), got {self.tpot_margin!r}")
        for name in ("seat_pressure", "kv_pressure"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0 < value <= 1):
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")
        if isinstance(self.chunk_align_tokens, bool) or not isinstance(self.chunk_align_tokens, int) \
                or self.chunk_align_tokens < 0:
            raise ValueError(f"chunk_align_tokens must be an integer >= 0, got {self.chunk_align_tokens!r}")


def memory_short(seat_pressure: float | None, kv_pressure: float | None, live_requests: int, max_num_seqs: int,
                 kv_used: float, kv_total: float | None) -> bool:
    """Whether seats or KV run short (knobs ``seat_pressure``, ``kv_pressure``; None: that one off): at
    least ``seat_pressure`` of ``max_num_seqs`` requests live, or ``kv_pressure`` of ``kv_total`` used
    (any one unit, blocks or tokens; ``kv_total`` None: not known). Then a FairBatching node serves
    every decode each step, since pacing decodes keeps them live, holding seats and KV, longer."""
    if seat_pressure is not None and live_requests >= seat_pressure * max_num_seqs:
        return True
    return kv_pressure is not None and kv_total is not None and kv_used >= kv_pressure * kv_total


class FairBatchingPolicy(ConfiguredPolicy[FairBatchingConfig]):
    """Slack-driven, budgeted batch formation."""

    name = "fairbatching"
    config_type = FairBatchingConfig

    def memory_short(self, live_requests: int, limits: Limits) -> bool:
        """``memory_short`` with this policy's knobs on one step's ``limits`` (KV in blocks)."""
        total = limits.kv_blocks_total
        return memory_short(self.config.seat_pressure, self.config.kv_pressure, live_requests, limits.max_num_seqs,
                            total - limits.kv_blocks_free if total is not None else 0, total)

    def time_budget_s(self, min_slack_s: float, floor_s: float) -> float:
        """The step's time budget: the most pressed slack, floored (decode TPOT) and capped."""
        budget = max(min_slack_s, floor_s)
        if self.config.max_budget_s is not None:
            budget = min(budget, self.config.max_budget_s)
        return budget

    def plan(self, requests: Sequence[RequestState], limits: Limits, now_s: float) -> BatchPlan:
        """One step's plan; raises ``ValueError`` unless ``now_s`` (seconds) is finite."""
        check_finite("now_s", now_s)
        cfg = self.config
        anchor = cfg.anchor
        decodes: list[tuple] = []  # EDF entries (slack, arrival, id, request)
        prefills: list[tuple] = []
        lost_decodes: list[tuple] = []  # relegated (cfg.relegate), served last
        lost_prefills: list[tuple] = []
        pace = 1.0 - cfg.tpot_margin  # decode deadlines are planned at this fraction of the TPOT SLO
        relegate = cfg.relegate is not Relegation.NONE
        doomed = self._relegates_doomed
        # The next token's deadline, decodes planned at ``pace`` of their TPOT SLO.
        for req, slack in zip(requests, slacks_s(requests, now_s, anchor, pace)):
            # EDF entries sort as plain tuples (ids are unique, so the request is never compared).
            entry = (slack, req.arrival_s, req.request_id, req)
            is_prefill = req.computed_tokens < req.prompt_tokens
            if relegate and self._is_relegated(req, now_s, is_prefill, limits, doomed):
                (lost_prefills if is_prefill else lost_decodes).append(entry)
            elif is_prefill:
                prefills.append(entry)
            else:
                decodes.append(entry)
        builder = BatchBuilder(self.step_model, limits)
        if not decodes and not prefills:
            if lost_decodes or lost_prefills:
                return self._plan_relegated_only(builder, lost_decodes, lost_prefills)
            return builder.finish(self.name, budget_s=None)

        decodes.sort()
        prefills.sort()
        if cfg.relegate is Relegation.FEWEST_LATE and len(prefills) > 1:
            prefills, dropped = fewest_late_split(prefills, decodes, self.step_model, limits, pace)
            lost_prefills.extend(dropped)
            if not prefills and not decodes:
                return self._plan_relegated_only(builder, lost_decodes, lost_prefills)
        if decodes:
            min_tpot = pace * min(d[-1].slo.tpot_s for d in decodes)
            budget = self.time_budget_s(decodes[0][0], min_tpot if cfg.budget_floor else 0.0)
        else:  # no decodes to protect: the most pressed prompt sets the pace
            min_tpot = pace * min(p[-1].slo.tpot_s for p in prefills)
            budget = self.time_budget_s(prefills[0][0], min_tpot)
        builder.budget_s = budget

        memory_short = self.memory_short(len(requests), limits)
        if memory_short:
            urgent, relaxed = decodes, []
        elif cfg.urgency is Urgency.BUDGET_PLUS_TPOT and decodes:
            # Decodes are sorted by slack, so the urgent ones are a prefix.
            threshold = budget + min_tpot
            split = bisect_left(decodes, threshold, key=_slack_of)
            urgent, relaxed = decodes[:split], decodes[split:]
        else:
            urgent = [d for d in decodes if d[0] < pace * d[-1].slo.tpot_s]
            relaxed = [d for d in decodes if d[0] >= pace * d[-1].slo.tpot_s]

        builder.add_decodes(urgent, Group.URGENT, within_budget=False)
        if cfg.lend is Lending.AT_RISK and relaxed:
            # Decodes ahead of their envelope lend their slack only to prefills that need it.
            # The EDF prefix up to the last prefill at risk (EDF order holds across the two runs).
            risky = [k for k, p in enumerate(prefills) if p[0] < self._alone_s(p[-1], limits) + budget]
            split = risky[-1] + 1 if risky else 0
            at_risk, later = prefills[:split], prefills[split:]
            self._add_prefills(builder, at_risk, budget)
            builder.add_decodes(relaxed, Group.DECODE, within_budget=True)
            self._add_prefills(builder, later, budget)
        else:
            self._add_prefills(builder, prefills, budget)
            builder.add_decodes(relaxed, Group.DECODE, within_budget=True)
        if lost_decodes or lost_prefills:
            # Lost work takes what is left without lengthening the step past what the others need
            # (or one TPOT): a longer step would delay the requests arriving during it.
            need = (self.step_model.predict_s(builder.new_tokens, builder.context_tokens, builder.attention_pairs)
                    if builder.items else 0.0)
            self._add_relegated(builder, min(budget, max(need, min_tpot)), lost_decodes, lost_prefills)
            builder.budget_s = budget
        builder.align_tokens(cfg.chunk_align_tokens, cfg.min_chunk_tokens)
        return builder.finish(self.name, budget_s=budget, urgent_decodes=len(urgent))

    def seat_order(self, waiting: Sequence[RequestState], started: Sequence[RequestState], limits: Limits,
                   now_s: float) -> list[RequestState]:
        """``ConfiguredPolicy.seat_order`` with relegation: the waiting requests ``plan`` would serve
        last (``relegate``: lost, doomed, or dropped by Moore's rule together with the prompts already
        started) take seats after the others, EDF within each part; without relegation, EDF."""
        edf = super().seat_order(waiting, started, limits, now_s)
        cfg = self.config
        if cfg.relegate is Relegation.NONE:
            return edf
        doomed = self._relegates_doomed
        kept: list[RequestState] = []
        last: list[RequestState] = []
        for st in edf:
            (last if self._is_relegated(st, now_s, st.is_prefill, limits, doomed) else kept).append(st)
        if cfg.relegate is Relegation.FEWEST_LATE and len(kept) > 1:
            pace = 1.0 - cfg.tpot_margin
            # Moore's rule over the started prompts still in time and the waiting ones kept, beside every
            # started decode (only its TPOT and context matter to the rate, not its slack).
            queued: list[RequestState] = []
            decodes: list[tuple] = []
            for st in started:  # one pass, RequestState.is_prefill inlined: a host step runs this
                if st.computed_tokens < st.prompt_tokens:
                    if not self._is_relegated(st, now_s, True, limits, doomed):
                        queued.append(st)
                else:
                    decodes.append((0.0, st.arrival_s, st.request_id, st))
            queued += kept
            prefills = sorted((slack, st.arrival_s, st.request_id, st)
                              for st, slack in zip(queued, slacks_s(queued, now_s, cfg.anchor, pace)))
            _, dropped = fewest_late_split(prefills, decodes, self.step_model, limits, pace)
            moved = {e[2] for e in dropped}
            last = [st for st in kept if st.request_id in moved] + last
            kept = [st for st in kept if st.request_id not in moved]
        return kept + last

    def preemption_order(self, running: Sequence[RequestState], plan: BatchPlan,
                         now_s: float) -> list[RequestState]:
        """The running list as the vLLM host orders it to carry out ``plan`` (``host_running_order``): the
        requests the plan leaves out go last, the latest next-token deadline last, so vLLM (preempting
        from the tail) takes the most relaxed first. ``now_s`` in seconds."""
        return host_running_order(running, plan, self.config.anchor)

    def _add_prefills(self, builder: BatchBuilder, prefills: list, budget: float) -> None:
        """Each prefill in EDF order, the largest chunk that keeps the step within ``budget``."""
        for slack, _, _, req in prefills:
            cap = self.step_model.largest_chunk(budget, builder.new_tokens, builder.context_tokens, req.computed_tokens,
                                                builder.attention_pairs)
            builder.add_prefill(req, slack, token_cap=cap, min_chunk=self.config.min_chunk_tokens)

    def _alone_s(self, req: RequestState, limits: Limits) -> float:
        """Predicted time to compute ``req``'s remaining prompt alone on the node, in chunks of at
        most ``max_num_batched_tokens`` (each chunk pays the fixed cost), seconds."""
        return self.step_model.prefill_alone_s(req.prompt_tokens - req.computed_tokens, req.computed_tokens,
                                               limits.max_num_batched_tokens)

    # -- relegation ------------------------------------------------------------------

    @property
    def _relegates_doomed(self) -> bool:
        """Whether the ``relegate`` setting relegates doomed prefills too (``doomed`` and ``fewest-late``)."""
        return self.config.relegate in (Relegation.DOOMED, Relegation.FEWEST_LATE)

    def _is_relegated(self, req: RequestState, now_s: float, is_prefill: bool, limits: Limits, doomed: bool) -> bool:
        """Lost: the first-token deadline passed without (or before) the first token. Doomed: see the docstring."""
        first_deadline = req.arrival_s + req.slo.ttft_s  # token 0's deadline under either anchor (deadline_s)
        if req.first_token_s is not None:
            return not on_time(req.first_token_s, first_deadline)
        if now_s > first_deadline:
            return True
        if doomed and is_prefill:
            return now_s + self._alone_s(req, limits) > first_deadline
        return False

    def _add_relegated(self, builder: BatchBuilder, budget: float, lost_decodes: list, lost_prefills: list) -> None:
        """The fourth group: lost decodes, then lost prefills, EDF within each, only within ``budget``."""
        builder.budget_s = budget
        lost_decodes.sort()
        lost_prefills.sort()
        builder.add_decodes(lost_decodes, Group.DECODE, within_budget=True)
        self._add_prefills(builder, lost_prefills, budget)

    def _plan_relegated_only(self, builder: BatchBuilder, lost_decodes: list, lost_prefills: list) -> BatchPlan:
        """Every live request is lost: serve them at the pace of the smallest TPOT (no deadline to protect)."""
        floor = (1.0 - self.config.tpot_margin) * min(e[-1].slo.tpot_s for e in lost_decodes + lost_prefills)
        budget = self.time_budget_s(floor, floor)
        builder.budget_s = budget
        # With nothing else to serve, the step must carry at least one lost request.
        lost_decodes.sort()
        builder.add_decodes(lost_decodes[:1], Group.DECODE, within_budget=False)
        self._add_relegated(builder, budget, lost_decodes[1:], lost_prefills)
        return builder.finish(self.name, budget_s=budget)




def fewest_late_split(prefills: list, decodes: list, model: StepTimeModel, limits: Limits,
                      pace: float) -> tuple[list, list]:
    """Moore's algorithm on the EDF prefill queue: ``(kept, relegated)``, both EDF-ordered lists of
    the planner's entries ``(slack_s, arrival_s, request_id, request)``.

    ``prefills`` must be in EDF order (slack ascending; for a prompt its slack is its first-token
    deadline less now). A prompt costs ``remaining / R`` seconds plus its own causal attention, ``R``
    the node's prefill rate (``prefill_rate_tps``). Taking the prompts in EDF order, whenever the
    running sum of costs passes the slack of the prompt just taken, the costliest prompt taken so far
    is relegated (``fewest_late``): what is kept then finishes in time by the same sum, and no other
    choice keeps more prompts in time on one machine. With no prefill rate left (the decodes fill
    the step) nothing is relegated here.
    """
    per_token_s = prefill_s_per_token(decodes, model, limits, pace)
    if per_token_s is None:
        return prefills, []
    attention = model.safety_factor * model.attn_prefill_s_per_token_sq
    costs = []
    for entry in prefills:
        req = entry[-1]
        remaining = req.remaining_prompt_tokens
        costs.append(per_token_s * remaining + attention * prefill_attention_pairs(remaining, req.computed_tokens))
    dropped = fewest_late(costs, [e[0] for e in prefills])
    if not dropped:
        return prefills, []
    return ([e for k, e in enumerate(prefills) if k not in dropped],
            [e for k, e in enumerate(prefills) if k in dropped])


def prefill_s_per_token(decodes: list, model: StepTimeModel, limits: Limits, pace: float) -> float | None:
    """Seconds a prompt token takes on the node beside its running ``decodes`` (planner entries), its own
    attention aside; None when the decodes leave no room for prompt tokens.

    Without decodes the planner runs prompts in steps of ``max_num_batched_tokens`` (their budget is
    the first prompt's slack), so a token costs ``T(N) / N`` of such a step. With decodes, PAB's rate
    (``node.core.pab.prefill_chunk_per_step``): a step of the tightest TPOT at ``pace`` (``tau``)
    carries every decode paced to its own TPOT (a decode at TPOT ``t`` takes ``tau / (pace * t)`` of
    a decode per step, as PAB's ``paced_decodes``) and a prompt chunk ``q`` in what is left;
    ``step / q`` a token.
    """
    attention = model.safety_factor * model.attn_prefill_s_per_token_sq
    if not decodes:
        n = limits.max_num_batched_tokens
        return (model.predict_s(n, n, prefill_attention_pairs(n, 0)) - attention * 0.5 * n * n) / n
    min_tpot = min(e[-1].slo.tpot_s for e in decodes)
    tau = pace * min_tpot
    # sum over decodes of w (decodes per step) and of w x context, w = tau / (pace * tpot) = min_tpot / tpot
    paced = paced_context = 0.0
    for e in decodes:
        req = e[-1]
        w = min_tpot / req.slo.tpot_s
        paced += w
        paced_context += w * (req.prompt_tokens + req.output_tokens)  # req.decode_context_tokens, inlined
    reservation = model.safety_factor * (model.b_s_per_token * paced + model.c_s_per_context_token * paced_context)
    q, step_s = prefill_chunk_per_step(model, tau, reservation, math.ceil(paced), limits.max_num_batched_tokens)
    if q <= 0:
        return None
    return (step_s - attention * 0.5 * q * q) / q  # the step's own chunk attention is counted per prompt


def fewest_late(costs_s: Sequence[float], due_s: Sequence[float]) -> set[int]:
    """Moore's algorithm (Management Science 15(1), 1968): the indices of the jobs to drop so that the
    most of the others finish by their due times, run back to back from time 0 in the given order.

    ``costs_s[k]`` (>= 0) is job ``k``'s run time and ``due_s[k]`` its due time, seconds from now;
    the jobs must be in due-time order (EDF). Whenever the running sum passes the due time of the job
    just added, the costliest job added so far is dropped (the lowest index among equal costs). The
    kept jobs all finish in time, and no subset keeps more (optimal for one machine); O(n log n).
    """
    taken: list[tuple[float, int]] = []  # max-heap of (-cost, index)
    dropped: set[int] = set()
    total_s = 0.0
    for k, (cost, due) in enumerate(zip(costs_s, due_s)):
        total_s += cost
        heapq.heappush(taken, (-cost, k))
        if total_s > due:
            worst, index = heapq.heappop(taken)
            total_s += worst
            dropped.add(index)
    return dropped


def _slack_of(entry: tuple) -> float:
    return entry[0]
