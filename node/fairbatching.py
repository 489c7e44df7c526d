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
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass
from enum import Enum
from typing import Sequence

from node.cost_model import StepTimeModel
from node.envelope import Anchor
from node.plan import BatchBuilder, BatchPlan, Group, Limits
from node.request import RequestState


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "anchor", Anchor(self.anchor))
        object.__setattr__(self, "urgency", Urgency(self.urgency))
        if not isinstance(self.min_chunk_tokens, int) or self.min_chunk_tokens < 1:
            raise ValueError(f"min_chunk_tokens must be an integer >= 1, got {self.min_chunk_tokens!r}")
        if self.max_budget_s is not None and not (math.isfinite(self.max_budget_s) and self.max_budget_s > 0):
            raise ValueError(f"max_budget_s must be > 0, got {self.max_budget_s!r}")
        if self.seat_pressure is not None and not (0 < self.seat_pressure <= 1):
            raise ValueError(f"seat_pressure must be in (0, 1], got {self.seat_pressure!r}")


class FairBatchingPolicy:
    """Slack-driven, budgeted batch formation."""

    name = "fairbatching"

    def __init__(self, model: StepTimeModel, config: FairBatchingConfig | None = None) -> None:
        self.model = model
        self.config = config or FairBatchingConfig()

    def time_budget_s(self, min_slack_s: float, floor_s: float) -> float:
        """The step's time budget: the most pressed slack, floored (decode TPOT) and capped."""
        budget = max(min_slack_s, floor_s)
        if self.config.max_budget_s is not None:
            budget = min(budget, self.config.max_budget_s)
        return budget

    def plan(self, requests: Sequence[RequestState], limits: Limits, now_s: float) -> BatchPlan:
        if not math.isfinite(now_s):
            raise ValueError(f"now_s must be finite, got {now_s!r}")
        cfg = self.config
        anchor = cfg.anchor
        decodes: list[tuple] = []  # EDF entries (slack, arrival, id, request)
        prefills: list[tuple] = []
        arrival_anchor = anchor is Anchor.ARRIVAL
        for req in requests:  # envelope.slack_s() inlined: this loop runs once per request per step
            slo = req.slo
            k = req.output_tokens
            if k == 0 or arrival_anchor or req.first_token_s is None:
                slack = req.arrival_s + slo.ttft_s + slo.tpot_s * k - now_s
            else:
                slack = req.first_token_s + slo.tpot_s * k - now_s
            # EDF entries sort as plain tuples (ids are unique, so the request is never compared).
            if req.computed_tokens < req.prompt_tokens:
                prefills.append((slack, req.arrival_s, req.request_id, req))
            else:
                decodes.append((slack, req.arrival_s, req.request_id, req))
        builder = BatchBuilder(self.model, limits)
        if not decodes and not prefills:
            return builder.finish(self.name, budget_s=None)

        decodes.sort()
        prefills.sort()
        if decodes:
            min_tpot = min(d[-1].slo.tpot_s for d in decodes)
            budget = self.time_budget_s(decodes[0][0], min_tpot if cfg.budget_floor else 0.0)
        else:  # no decodes to protect: the most pressed prompt sets the pace
            budget = self.time_budget_s(prefills[0][0], min(p[-1].slo.tpot_s for p in prefills))
        builder.budget_s = budget

        seats_short = cfg.seat_pressure is not None and len(requests) >= cfg.seat_pressure * limits.max_num_seqs
        if seats_short:
            urgent, relaxed = decodes, []
        elif cfg.urgency is Urgency.BUDGET_PLUS_TPOT and decodes:
            # Decodes are sorted by slack, so the urgent ones are a prefix.
            threshold = budget + min_tpot
            split = bisect_left(decodes, threshold, key=_slack_of)
            urgent, relaxed = decodes[:split], decodes[split:]
        else:
            urgent = [d for d in decodes if d[0] < d[-1].slo.tpot_s]
            relaxed = [d for d in decodes if d[0] >= d[-1].slo.tpot_s]

        builder.add_decodes(urgent, Group.URGENT, within_budget=False)
        for slack, _, _, req in prefills:
            cap = self.model.largest_chunk(budget, builder.new_tokens, builder.context_tokens, req.computed_tokens)
            builder.add_prefill(req, slack, token_cap=cap, min_chunk=cfg.min_chunk_tokens)
        builder.add_decodes(relaxed, Group.DECODE, within_budget=True)
        return builder.finish(self.name, budget_s=budget, urgent_decodes=len(urgent))


def _slack_of(entry: tuple) -> float:
    return entry[0]
