"""Baseline node schedulers behind the same interface (DESIGN section 4).

Both are decode-first: every running decode is scheduled whatever its slack
(``Group.DECODE_FIRST``), so a decode never yields its step to a prefill
however far ahead of its deadline it is. That is exactly the rigidity
FairBatching removes. Both are chunked prefill under a token budget, one knob
(``TokenBudgetConfig``) with a default of its own in each:

* ``VllmDefaultPolicy``: vLLM V1's default. Running requests (decodes and
  partially prefilled prompts) in admission order, then waiting prompts FCFS,
  all under one token budget (default ``max_num_batched_tokens``).
* ``SarathiPolicy``: Sarathi-Serve stall-free batching. Decodes first, then
  prefill chunks FCFS under a token budget chosen so the step fits the TPOT
  SLO: either a fixed ``token_budget`` or, by default, computed each step from
  the cost model (the largest chunk keeping the step within the smallest TPOT).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from node.core.envelope import Anchor, slack_s
from node.core.plan import BatchBuilder, BatchPlan, ConfiguredPolicy, Group, Limits
from node.core.request import RequestState
from node.core.validation import check_finite, check_int


def _fcfs_key(req: RequestState) -> tuple[float, str]:
    return (req.arrival_s, req.request_id)


def _priority_key(req: RequestState) -> tuple[int, float, str]:
    return (req.slo.priority, req.arrival_s, req.request_id)


@dataclass(frozen=True, slots=True)
class TokenBudgetConfig:
    """The knob of both baselines: the most new tokens a step may carry.

    ``token_budget`` is a token count (an integer >= 1), or None for the
    policy's default: ``max_num_batched_tokens`` for vLLM, a budget derived
    each step from the TPOT SLO and the cost model for Sarathi. Raises
    ``ValueError`` on anything else.
    """

    token_budget: int | None = None

    def __post_init__(self) -> None:
        if self.token_budget is not None:
            check_int("token_budget", self.token_budget, minimum=1)


#: Each baseline's name for its config (the same knob).
VllmDefaultConfig = TokenBudgetConfig
SarathiConfig = TokenBudgetConfig


class VllmDefaultPolicy(ConfiguredPolicy[TokenBudgetConfig]):
    """Decode-first, FCFS, fixed token budget (vLLM's default scheduler)."""

    name = "vllm"
    config_type = TokenBudgetConfig
    order = staticmethod(_fcfs_key)  # the order of the running and of the waiting requests

    def plan(self, requests: Sequence[RequestState], limits: Limits, now_s: float) -> BatchPlan:
        """One step's plan; raises ``ValueError`` unless ``now_s`` (seconds) is finite."""
        check_finite("now_s", now_s)
        budget = min(self.config.token_budget or limits.max_num_batched_tokens, limits.max_num_batched_tokens)
        builder = BatchBuilder(self.step_model, replace(limits, max_num_batched_tokens=budget))
        # vLLM keeps started requests in `running` ahead of `waiting`.
        running = sorted((r for r in requests if r.output_tokens > 0 or r.computed_tokens > 0), key=self.order)
        waiting = sorted((r for r in requests if r.output_tokens == 0 and r.computed_tokens == 0), key=self.order)
        for req in running + waiting:
            slack = slack_s(req, now_s, Anchor.ARRIVAL)
            if req.is_prefill:
                builder.add_prefill(req, slack, token_cap=budget)
            else:
                builder.add_decode(req, slack, Group.DECODE_FIRST, within_budget=False)
        return builder.finish(self.name, budget_s=None)


class VllmPriorityPolicy(VllmDefaultPolicy):
    """vLLM's ``priority`` scheduling policy: as the default, with requests ordered by
    ``(priority, arrival)`` (``SLO.priority``, lower first) instead of arrival alone."""

    name = "vllm-priority"
    order = staticmethod(_priority_key)

    def preemption_order(self, running: Sequence[RequestState], plan: BatchPlan,
                         now_s: float) -> list[RequestState]:
        """Under the priority policy vLLM preempts the running request with the largest ``(priority,
        arrival)`` (``max(self.running, key=...)`` in its scheduler), whatever the order it started in."""
        return sorted(running, key=_priority_key)


class SarathiPolicy(ConfiguredPolicy[TokenBudgetConfig]):
    """Stall-free batching: all decodes, then prefill chunks that keep the step within TPOT."""

    name = "sarathi"
    config_type = TokenBudgetConfig

    def plan(self, requests: Sequence[RequestState], limits: Limits, now_s: float) -> BatchPlan:
        """One step's plan; raises ``ValueError`` unless ``now_s`` (seconds) is finite."""
        check_finite("now_s", now_s)
        builder = BatchBuilder(self.step_model, limits)
        if not requests:
            return builder.finish(self.name, budget_s=None)
        decodes = sorted((r for r in requests if not r.is_prefill), key=_fcfs_key)
        prefills = sorted((r for r in requests if r.is_prefill), key=_fcfs_key)
        tpot_s = min(r.slo.tpot_s for r in (decodes or prefills))
        entries = [(slack_s(r, now_s, Anchor.ARRIVAL), r) for r in decodes]
        builder.add_decodes(entries, Group.DECODE_FIRST, within_budget=False)  # stall-free: every decode runs
        static = self.config.token_budget
        for req in prefills:
            if static is not None:
                cap = max(static - builder.new_tokens, 0)
            else:
                cap = self.step_model.largest_chunk(tpot_s, builder.new_tokens, builder.context_tokens,
                                                    req.computed_tokens, builder.attention_pairs)
            builder.add_prefill(req, slack_s(req, now_s, Anchor.ARRIVAL), token_cap=cap)
        return builder.finish(self.name, budget_s=None if static is not None else tpot_s)
