"""Baseline node schedulers behind the same interface (DESIGN section 4).

Both are decode-first: every running decode is scheduled before any prefill,
so a decode never yields its step to a prefill however far ahead of its
deadline it is. That is exactly the rigidity FairBatching removes.

* ``VllmDefaultPolicy``: vLLM V1's default. Running requests (decodes and
  partially prefilled prompts) in admission order, then waiting prompts FCFS,
  all under one token budget ``max_num_batched_tokens`` (chunked prefill).
* ``SarathiPolicy``: Sarathi-Serve stall-free batching. Decodes first, then
  prefill chunks FCFS under a token budget chosen so the step fits the TPOT
  SLO: either a fixed ``token_budget`` or, by default, computed each step from
  the cost model (the largest chunk keeping the step within the smallest TPOT).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

from node.core.step_time import StepTimeModel
from node.core.envelope import Anchor, slack_s
from node.core.plan import BatchBuilder, BatchPlan, Group, Limits
from node.core.request import RequestState


def _fcfs_key(req: RequestState) -> tuple[float, str]:
    return (req.arrival_s, req.request_id)


@dataclass(frozen=True, slots=True)
class VllmDefaultConfig:
    token_budget: int | None = None  # None: the step's max_num_batched_tokens

    def __post_init__(self) -> None:
        if self.token_budget is not None and (not isinstance(self.token_budget, int) or self.token_budget < 1):
            raise ValueError(f"token_budget must be an integer >= 1, got {self.token_budget!r}")


class VllmDefaultPolicy:
    """Decode-first, FCFS, fixed token budget (vLLM's default scheduler)."""

    name = "vllm"

    def __init__(self, model: StepTimeModel, config: VllmDefaultConfig | None = None) -> None:
        self.model = model
        self.config = config or VllmDefaultConfig()

    def plan(self, requests: Sequence[RequestState], limits: Limits, now_s: float) -> BatchPlan:
        if not math.isfinite(now_s):
            raise ValueError(f"now_s must be finite, got {now_s!r}")
        budget = min(self.config.token_budget or limits.max_num_batched_tokens, limits.max_num_batched_tokens)
        builder = BatchBuilder(self.model, replace(limits, max_num_batched_tokens=budget))
        # vLLM keeps started requests in `running` ahead of `waiting`.
        running = sorted((r for r in requests if r.output_tokens > 0 or r.computed_tokens > 0), key=_fcfs_key)
        waiting = sorted((r for r in requests if r.output_tokens == 0 and r.computed_tokens == 0), key=_fcfs_key)
        for req in running + waiting:
            slack = slack_s(req, now_s, Anchor.ARRIVAL)
            if req.is_prefill:
                builder.add_prefill(req, slack, token_cap=budget)
            else:
                builder.add_decode(req, slack, Group.URGENT, within_budget=False)
        return builder.finish(self.name, budget_s=None)


@dataclass(frozen=True, slots=True)
class SarathiConfig:
    token_budget: int | None = None  # None: derived each step from the TPOT SLO and the cost model

    def __post_init__(self) -> None:
        if self.token_budget is not None and (not isinstance(self.token_budget, int) or self.token_budget < 1):
            raise ValueError(f"token_budget must be an integer >= 1, got {self.token_budget!r}")


class SarathiPolicy:
    """Stall-free batching: all decodes, then prefill chunks that keep the step within TPOT."""

    name = "sarathi"

    def __init__(self, model: StepTimeModel, config: SarathiConfig | None = None) -> None:
        self.model = model
        self.config = config or SarathiConfig()

    def plan(self, requests: Sequence[RequestState], limits: Limits, now_s: float) -> BatchPlan:
        if not math.isfinite(now_s):
            raise ValueError(f"now_s must be finite, got {now_s!r}")
        builder = BatchBuilder(self.model, limits)
        if not requests:
            return builder.finish(self.name, budget_s=None)
        decodes = sorted((r for r in requests if not r.is_prefill), key=_fcfs_key)
        prefills = sorted((r for r in requests if r.is_prefill), key=_fcfs_key)
        tpot_s = min(r.slo.tpot_s for r in (decodes or prefills))
        entries = [(slack_s(r, now_s, Anchor.ARRIVAL), r) for r in decodes]
        builder.add_decodes(entries, Group.URGENT, within_budget=False)  # stall-free: every decode runs
        static = self.config.token_budget
        for req in prefills:
            if static is not None:
                cap = max(static - builder.new_tokens, 0)
            else:
                cap = self.model.largest_chunk(tpot_s, builder.new_tokens, builder.context_tokens, req.computed_tokens)
            builder.add_prefill(req, slack_s(req, now_s, Anchor.ARRIVAL), token_cap=cap)
        return builder.finish(self.name, budget_s=None if static is not None else tpot_s)
