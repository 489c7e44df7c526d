"""The FairBatching scheduler's report of itself: what crosses from vLLM's engine core to the replica.

``FairBatchingMixin.node_stats()`` builds a ``NodeStats`` (O(1)); the served scheduler
(``node.vllm.served_scheduler``) ships it as a plain dict (``to_dict``) with each step's
``SchedulerStats``, because vLLM serializes that field with msgpack, and the engine
replica rebuilds it (``NodeStats.from_dict``). Times are seconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

from node.core.step_time import StepTimeModel

#: The key of ``SchedulerStats.kv_connector_stats`` under which ``NodeStats.to_dict()`` rides.
STATS_KEY = "fairbatching"


@dataclass(frozen=True)
class StepSummary:
    """The last planned step: its time budget, predictions, and what the plan held."""

    step: int = -1  # vLLM's step counter; -1 before the first
    budget_s: Optional[float] = None  # the plan's time budget
    plan_predicted_s: Optional[float] = None  # the planner's prediction of its plan
    predicted_s: Optional[float] = None  # the live model on what vLLM scheduled
    measured_s: Optional[float] = None  # filled in when the step's output comes back
    step_predicted_s: Optional[float] = None  # the prediction that measurement is compared with
    urgent: int = 0  # urgent decodes in the plan
    skipped: int = 0  # candidates the plan left out
    hidden: int = 0  # decodes hidden from vLLM this step (ahead of their envelope)
    planned_tokens: int = 0
    scheduled_tokens: int = 0


@dataclass(frozen=True)
class NodeStats:
    """A node's scheduler state for the replica, the dashboards and the benches."""

    policy: str
    plan_applied: bool
    profile: str
    steps: int  # steps planned
    running: int
    waiting: int
    kv_free_blocks: int
    block_size: int
    last_step: StepSummary
    divergent_steps: int  # steps where vLLM scheduled other than the plan
    fallback_steps: int
    divergence_by_reason: dict[str, int]
    step_model: StepTimeModel  # the planner's step-time model now (the profile, refitted online)
    refits: int
    host_samples: int
    refit_mape: Optional[float]
    measured_steps: int
    prediction_mape: Optional[float]  # the live model's error over measured steps
    plan_time_mean_s: Optional[float]
    plan_time_max_s: float
    invalid_slos: int  # requests whose extra_args held an unusable SLO (the default was used)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (nested dataclasses as dicts), for vLLM's stats channel and the step log."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeStats:
        """The inverse of ``to_dict``; raises ``TypeError`` / ``KeyError`` on a dict of another shape."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["last_step"] = StepSummary(**values["last_step"])
        values["step_model"] = StepTimeModel(**values["step_model"])
        return cls(**values)
