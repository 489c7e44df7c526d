"""The registry of node schedulers, chosen by name: ``fairbatching``, ``vllm``, ``vllm-priority``, ``sarathi``."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Callable

from node.core.baselines import (
    SarathiConfig, SarathiPolicy, VllmDefaultConfig, VllmDefaultPolicy, VllmPriorityPolicy,
)
from node.core.step_time import StepTimeModel
from node.core.fairbatching import FairBatchingConfig, FairBatchingPolicy
from node.core.plan import NodePolicy

_REGISTRY: dict[str, tuple[Callable[..., NodePolicy], type]] = {
    "fairbatching": (FairBatchingPolicy, FairBatchingConfig),
    "vllm": (VllmDefaultPolicy, VllmDefaultConfig),
    "vllm-priority": (VllmPriorityPolicy, VllmDefaultConfig),
    "sarathi": (SarathiPolicy, SarathiConfig),
}

POLICY_NAMES = tuple(_REGISTRY)


def make_policy(name: str, step_model: StepTimeModel, **knobs: Any) -> NodePolicy:
    """Build the policy called ``name`` with the cost model and the given knobs.

    Knobs are the fields of that policy's config dataclass; an unknown name or
    knob raises ``ValueError`` listing what is accepted.
    """
    try:
        cls, config_cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(POLICY_NAMES)}") from None
    accepted = {f.name for f in fields(config_cls)}
    unknown = set(knobs) - accepted
    if unknown:
        raise ValueError(
            f"scheduler {name!r} has no knob(s) {', '.join(sorted(unknown))}; accepted: {', '.join(sorted(accepted))}"
        )
    return cls(step_model, config_cls(**knobs))
