"""What a node policy returns for one step, and the greedy builder every policy uses.

A ``BatchPlan`` is plain data: which decodes run, which prefills get how many
tokens, the time budget, the predicted step time, and why each left-out
request was left out. ``BatchBuilder`` adds candidates one at a time with
O(1) feasibility checks against the hard caps (sequences, batched tokens, KV
blocks) and, when asked, the time budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, NamedTuple, Protocol, Sequence, TypeVar

from node.core.envelope import Anchor, deadline_s
from node.core.step_time import StepTimeModel, prefill_attention_pairs
from node.core.request import RequestState
from node.core.validation import check_int


class Group(str, Enum):
    """Why a policy scheduled (or meant to schedule) a request where it did.

    FairBatching takes its three groups in this order: ``URGENT``, ``PREFILL``,
    ``DECODE`` (relegated requests come last, as ``DECODE`` and ``PREFILL``).
    The decode-first baselines (``node.core.baselines``) judge no decode by its
    slack: each one is ``DECODE_FIRST``, their prompts ``PREFILL``.
    """

    URGENT = "urgent"  # FairBatching: decodes close to their envelope deadline, taken whatever the budget
    PREFILL = "prefill"  # new and partially prefilled requests
    DECODE = "decode"  # FairBatching: decodes ahead of their envelope (or relegated), within the budget
    DECODE_FIRST = "decode-first"  # a decode-first baseline's decode: every running decode, whatever its slack


class SkipReason(str, Enum):
    BUDGET = "budget"  # the step's predicted time would pass its time budget
    TOKENS = "max-tokens"  # the step's batched-token cap is reached
    SEQS = "max-seqs"  # the step's sequence cap is reached
    KV = "kv-cache"  # not enough free KV blocks
    MIN_CHUNK = "min-chunk"  # the chunk that fits is smaller than the minimum useful chunk


@dataclass(frozen=True, slots=True)
class Limits:
    """Hard limits of one step.

    ``max_num_seqs`` caps the requests scheduled in this step and
    ``max_num_batched_tokens`` the new tokens; ``kv_blocks_free`` is what the
    KV cache can still allocate, in blocks of ``block_size`` tokens, of
    ``kv_blocks_total`` (None where the engine does not say). Raises
    ``ValueError`` naming the field unless each is an integer, ``>= 0`` for
    ``kv_blocks_free`` and ``>= 1`` for the others.
    """

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    kv_blocks_free: int = 1 << 40
    block_size: int = 16
    kv_blocks_total: int | None = None  # every block of the KV cache (None: not known)

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size"):
            check_int(name, getattr(self, name), minimum=1)
        check_int("kv_blocks_free", self.kv_blocks_free, minimum=0)
        if self.kv_blocks_total is not None:
            check_int("kv_blocks_total", self.kv_blocks_total, minimum=1)
            if self.kv_blocks_free > self.kv_blocks_total:
                raise ValueError(f"kv_blocks_free ({self.kv_blocks_free}) exceeds kv_blocks_total ({self.kv_blocks_total})")


class ScheduledItem(NamedTuple):
    # NamedTuples: built once per scheduled request per step, so construction cost matters.
    request_id: str
    new_tokens: int
    is_prefill: bool
    group: Group
    slack_s: float


class Skipped(NamedTuple):
    request_id: str
    reason: SkipReason
    group: Group


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """The policy's decision for one step."""

    policy: str
    items: tuple[ScheduledItem, ...]
    skipped: tuple[Skipped, ...]
    budget_s: float | None  # None for policies that budget tokens, not time
    predicted_s: float
    new_tokens: int
    context_tokens: int
    kv_blocks: int
    urgent_decodes: int = 0
    attention_pairs: float = 0.0  # sum of q * (p + q / 2) over the prefill chunks (``prefill_attention_pairs``)

    @property
    def decode_ids(self) -> list[str]:
        return [i.request_id for i in self.items if not i.is_prefill]

    @property
    def prefill_chunks(self) -> dict[str, int]:
        return {i.request_id: i.new_tokens for i in self.items if i.is_prefill}

    @property
    def scheduled_ids(self) -> set[str]:
        return {i.request_id for i in self.items}

    @property
    def is_empty(self) -> bool:
        return not self.items

    @property
    def short_of_kv(self) -> list[str]:
        """The decodes the plan must run (FairBatching's urgent ones, a baseline's decode-first ones) but
        left out for want of KV blocks, in plan order: the engine preempts running requests to fit them."""
        return [s.request_id for s in self.skipped
                if s.reason is SkipReason.KV and s.group in (Group.URGENT, Group.DECODE_FIRST)]

    @property
    def host_order(self) -> list[str]:
        """The order the vLLM host gives the requests the plan names, so that vLLM's scan (each running
        request gets ``min(remaining, budget left)``) carries the plan out: the decodes, then the decodes
        short of KV (``short_of_kv``), then the prefill chunks, each in plan order."""
        order = [i.request_id for i in self.items if not i.is_prefill]
        order += self.short_of_kv
        order += [i.request_id for i in self.items if i.is_prefill]
        return order

    def to_dict(self) -> dict:
        return {
            "policy": self.policy,
            "budget_s": self.budget_s,
            "predicted_s": self.predicted_s,
            "new_tokens": self.new_tokens,
            "context_tokens": self.context_tokens,
            "kv_blocks": self.kv_blocks,
            "attention_pairs": self.attention_pairs,
            "urgent_decodes": self.urgent_decodes,
            "items": [
                {"id": i.request_id, "tokens": i.new_tokens, "prefill": i.is_prefill, "group": i.group.value}
                for i in self.items
            ],
            "skipped": [{"id": s.request_id, "reason": s.reason.value, "group": s.group.value} for s in self.skipped],
        }


class NodePolicy(Protocol):
    """A node's batch scheduler: a snapshot of requests in, a plan out. Pure."""

    name: str
    step_model: StepTimeModel

    def plan(self, requests: Sequence[RequestState], limits: Limits, now_s: float) -> BatchPlan: ...

    def seat_order(self, waiting: Sequence[RequestState], started: Sequence[RequestState], limits: Limits,
                   now_s: float) -> list[RequestState]: ...

    def preemption_order(self, running: Sequence[RequestState], plan: BatchPlan,
                         now_s: float) -> list[RequestState]: ...


ConfigT = TypeVar("ConfigT")


class ConfiguredPolicy(Generic[ConfigT]):
    """What every node policy here shares: its step-time model and its knobs.

    A subclass names its config dataclass in ``config_type``; a policy built
    without a config gets that dataclass's defaults. ``step_model`` may be
    replaced between steps (an online refit).
    """

    name: str
    config_type: type[ConfigT]

    def __init__(self, step_model: StepTimeModel, config: ConfigT | None = None) -> None:
        self.step_model = step_model
        self.config: ConfigT = config if config is not None else self.config_type()

    def seat_order(self, waiting: Sequence[RequestState], started: Sequence[RequestState], limits: Limits,
                   now_s: float) -> list[RequestState]:
        """The order in which ``waiting`` requests (holding no seat or KV yet) take the free sequence
        seats, when there are fewer seats than waiting requests: as vLLM counts seats, every started
        request holds one (``started``: the live requests that hold KV), so a host offers the planner
        only the first waiting requests of this order that fit. Here: earliest next-token deadline
        first (``envelope.deadline_s``, the arrival anchor). A policy that serves some requests last
        (FairBatching's relegation) puts them last here too, or they would take the seats first.
        ``now_s`` in seconds; ``started`` and ``limits`` are for such policies."""
        return sorted(waiting, key=lambda st: deadline_s(st, st.output_tokens))

    def preemption_order(self, running: Sequence[RequestState], plan: BatchPlan,
                         now_s: float) -> list[RequestState]:
        """vLLM's running list as this policy's host holds it when vLLM must preempt for KV blocks (for the
        decodes of ``plan.short_of_kv``): vLLM takes its victims from the tail
        (``vllm/v1/core/sched/scheduler.py``: ``self.running[-1]`` under FCFS). ``running``: the started
        requests (holding KV) in the order they last started, which is that list under FCFS (a preempted
        request goes back to the waiting queue and rejoins the tail when it starts again); returned as is.
        A host that reorders the list says so here, so the simulator preempts the request the real engine
        would. ``now_s`` in seconds."""
        return list(running)


def host_running_order(running: Sequence[RequestState], plan: BatchPlan, anchor: Anchor) -> list[RequestState]:
    """The order the vLLM host gives vLLM's running list for a step so that vLLM's scan carries out
    ``plan`` (``node.vllm.scheduler``, step 2): ``plan.host_order`` (decodes, decodes short of KV
    blocks, prefill chunks); then the running requests the plan leaves out, the latest next-token
    deadline (``deadline_s`` on ``anchor``) last. vLLM preempts from the tail: the least pressed request
    goes first, never a planned one while a left-out one remains. ``running``: the snapshots of vLLM's
    running requests, any order."""
    rank = {rid: k for k, rid in enumerate(plan.host_order)}
    ranked = sorted((st for st in running if st.request_id in rank), key=lambda st: rank[st.request_id])
    rest = sorted((st for st in running if st.request_id not in rank),
                  key=lambda st: (deadline_s(st, st.output_tokens, anchor), st.request_id))
    return ranked + rest


@dataclass
class BatchBuilder:
    """Greedy batch under construction; every check is O(1).

    ``new_tokens``, ``context_tokens`` and ``attention_pairs`` are the totals
    the step-time model takes (``StepTimeModel.predict_s``) of what was added.
    """

    step_model: StepTimeModel
    limits: Limits
    budget_s: float = math.inf
    items: list[ScheduledItem] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    new_tokens: int = 0
    context_tokens: int = 0
    kv_blocks: int = 0
    attention_pairs: float = 0.0
    # The last prefill whose chunk a bound cut short of its remaining prompt: (index in items, request).
    truncated: tuple[int, RequestState] | None = None

    def add_decode(self, req: RequestState, slack: float, group: Group, *, within_budget: bool) -> bool:
        """Add one decode token of ``req`` if the caps (and the budget, if asked) allow."""
        return self.add_decodes(((slack, req),), group, within_budget=within_budget) == 1

    def add_decodes(
        self, entries: Sequence[tuple], group: Group, *, within_budget: bool
    ) -> int:
        """Add one decode token for each ``(slack, ..., request)`` entry, in order, where it fits.

        Each entry's first element is its slack and its last the request. The
        loop keeps limits and model coefficients in locals: it runs once per
        decoding request per step, the hottest path of the scheduler.
        """
        limits, model = self.limits, self.step_model
        max_seqs, max_tokens = limits.max_num_seqs, limits.max_num_batched_tokens
        kv_free, block_size = limits.kv_blocks_free, limits.block_size
        sf, a, b, c = model.safety_factor, model.fixed_s, model.b_s_per_token, model.c_s_per_context_token
        # A decode adds no prefill attention: the batch's pairs cost e * P whatever decodes join
        # (a + 0.0 is a exactly when e is 0, so a linear model checks as before).
        a += model.attn_prefill_s_per_token_sq * self.attention_pairs
        # predict(N + 1, C + ctx, P) <= budget  <=>  c * ctx <= budget / sf - a - e * P - b * (N + 1) - c * C
        budget_raw = self.budget_s / sf if within_budget else math.inf
        items, skipped = self.items, self.skipped
        new_tokens, context_tokens, kv_blocks = self.new_tokens, self.context_tokens, self.kv_blocks
        added = 0
        for entry in entries:
            slack, req = entry[0], entry[-1]
            context = req.prompt_tokens + req.output_tokens  # req.decode_context_tokens, inlined
            if req.kv_tokens is None and req.kv_blocks is None:
                # Fast path of req.kv_blocks_needed(1): a new block exactly when the held ones are full.
                held = context - 1 if req.output_tokens else context
                blocks = 1 if held % block_size == 0 else 0
            else:
                blocks = req.kv_blocks_needed(1, block_size)
            if len(items) >= max_seqs:
                reason = SkipReason.SEQS
            elif new_tokens >= max_tokens:
                reason = SkipReason.TOKENS
            elif kv_blocks + blocks > kv_free:
                reason = SkipReason.KV
            elif a + b * (new_tokens + 1) + c * (context_tokens + context) > budget_raw:
                reason = SkipReason.BUDGET
            else:
                items.append(ScheduledItem(req.request_id, 1, False, group, slack))
                new_tokens += 1
                context_tokens += context
                kv_blocks += blocks
                added += 1
                continue
            skipped.append(Skipped(req.request_id, reason, group))
        self.new_tokens, self.context_tokens, self.kv_blocks = new_tokens, context_tokens, kv_blocks
        return added

    def add_prefill(self, req: RequestState, slack: float, *, token_cap: int, min_chunk: int = 1) -> int:
        """Add the largest chunk of ``req``'s remaining prompt that fits; return its size.

        ``token_cap`` bounds the chunk beyond the step's hard caps (a policy's
        time budget turned into tokens, or a token budget). A chunk smaller than
        ``min_chunk`` is refused unless it finishes the prompt.
        """
        limits = self.limits
        remaining = req.remaining_prompt_tokens
        if len(self.items) >= limits.max_num_seqs:
            return self._skip_prefill(req, SkipReason.SEQS)
        tokens_left = limits.max_num_batched_tokens - self.new_tokens
        if tokens_left <= 0:
            return self._skip_prefill(req, SkipReason.TOKENS)
        held = req.held_kv_tokens
        allocated = req.kv_blocks if req.kv_blocks is not None else -(-held // limits.block_size)
        kv_room = (limits.kv_blocks_free - self.kv_blocks + allocated) * limits.block_size - held
        chunk = min(remaining, tokens_left, token_cap, kv_room)
        if chunk <= 0 or chunk < min(min_chunk, remaining):
            # Name the tightest bound; a budget that leaves a sliver is a min-chunk refusal.
            bounds = ((tokens_left, SkipReason.TOKENS), (kv_room, SkipReason.KV), (token_cap, SkipReason.BUDGET))
            reason = min(bounds, key=lambda bound: bound[0])[1]
            if reason is SkipReason.BUDGET and chunk > 0:
                reason = SkipReason.MIN_CHUNK
            return self._skip_prefill(req, reason)
        blocks = req.kv_blocks_needed(chunk, limits.block_size)
        if chunk < remaining:
            self.truncated = (len(self.items), req)
        self.items.append(ScheduledItem(req.request_id, chunk, True, Group.PREFILL, slack))
        self.new_tokens += chunk
        self.context_tokens += req.computed_tokens + chunk
        self.attention_pairs += prefill_attention_pairs(chunk, req.computed_tokens)
        self.kv_blocks += blocks
        return chunk

    def align_tokens(self, align: int, min_chunk: int = 1) -> int:
        """Trim the truncated prefill chunk so the step's tokens are a multiple of ``align``; return
        the tokens trimmed (0 when there is no truncated chunk, the total is aligned already, or the
        chunk would fall below ``min_chunk``).

        A GEMM runs its rows in tiles, so a step a few tokens past a multiple of the tile costs a
        whole tile more (*tile quantization*, Sarathi-Serve, Agrawal et al., OSDI 2024, section 4.3,
        which sizes chunks to it): on the H100 profile's measured linear operators 1024 tokens take
        22.3 ms and 1040 take 26.9 ms (``deploy/profiles/h100-llama3-8b.json``, ``ground_truth``).
        Only a chunk that a bound cut short is trimmed: the tokens it gives back wait one step, as
        its remaining prompt does anyway. ``align`` and ``min_chunk`` are tokens; ``align <= 1`` is off.
        """
        if align <= 1 or self.truncated is None:
            return 0
        excess = self.new_tokens % align
        index, req = self.truncated
        item = self.items[index]
        chunk = item.new_tokens - excess
        if excess == 0 or chunk < max(1, min_chunk):
            return 0
        block_size = self.limits.block_size
        self.items[index] = item._replace(new_tokens=chunk)
        self.new_tokens -= excess
        self.context_tokens -= excess
        self.attention_pairs += (prefill_attention_pairs(chunk, req.computed_tokens)
                                 - prefill_attention_pairs(item.new_tokens, req.computed_tokens))
        self.kv_blocks += req.kv_blocks_needed(chunk, block_size) - req.kv_blocks_needed(item.new_tokens, block_size)
        return excess

    def _skip_prefill(self, req: RequestState, reason: SkipReason) -> int:
        self.skipped.append(Skipped(req.request_id, reason, Group.PREFILL))
        return 0

    def finish(self, policy: str, *, budget_s: float | None, urgent_decodes: int = 0) -> BatchPlan:
        predicted = (self.step_model.predict_s(self.new_tokens, self.context_tokens, self.attention_pairs)
                     if self.items else 0.0)
        return BatchPlan(
            policy=policy,
            items=tuple(self.items),
            skipped=tuple(self.skipped),
            budget_s=budget_s,
            predicted_s=predicted,
            new_tokens=self.new_tokens,
            context_tokens=self.context_tokens,
            kv_blocks=self.kv_blocks,
            urgent_decodes=urgent_decodes,
            attention_pairs=self.attention_pairs,
        )
