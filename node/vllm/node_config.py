"""How one node's FairBatching scheduler is configured, and how that reaches vLLM's engine core.

vLLM builds the scheduler itself (``scheduler_cls`` by dotted path), and with
``AsyncLLM`` it does so in a child process, so the node's settings cannot be
passed as constructor arguments. They travel in one environment variable,
``FAIRBATCHING_NODE_CONFIG``, holding the JSON of a ``NodeConfig``; the child
inherits the parent's environment. Set it before the engine starts::

    os.environ.update(NodeConfig(policy="fairbatching", profile="cpu-tiny-llama").to_env())

Fields (all optional in the JSON; missing ones take the defaults below):

* ``policy`` -- ``fairbatching`` | ``vllm`` | ``vllm-priority`` | ``sarathi`` (``node.core.policies``);
* ``knobs`` -- keyword arguments of that policy's config dataclass, e.g.
  ``{"anchor": "first-token", "relegate": "lost", "tpot_margin": 0.1}`` for
  FairBatching (``node.core.fairbatching.FairBatchingConfig``); none given: that
  dataclass's defaults, for FairBatching the paper's policy, the reference every
  ablation starts from. What a deployment runs is set one level up: the serve
  config's ``node_config`` (``cluster.config.ServeConfig``), which ``bench engine``
  and the simulator's defaults follow, names the knobs that measured best;
* ``profile`` -- step-time profile, a name in ``deploy/profiles`` or a path;
* ``step_model`` / ``safety_factor`` -- which of the profile's models the scheduler plans with, and
  the factor on its predictions (``node.fit.profile.Profile.planning_model``);
* ``ttft_slo_s`` / ``tpot_slo_s`` -- deployment defaults for requests whose
  ``SamplingParams.extra_args`` carry no ``ttft_slo_s`` / ``tpot_slo_s``
  (``None``: the profile's, ``node.fit.profile.Profile.default_slo``);
* ``apply_plan`` -- ``False`` leaves vLLM's own scheduling untouched and only
  observes (plans, times steps, refits, computes PAB): the stock baseline of
  an A/B run, measured by the same instrument;
* ``token_grants`` -- cap every planned request at its planned tokens (default);
  ``False`` sets only the step's total, so a prefill in progress can take a
  later one's tokens (kept for the ablation, ``node.vllm.scheduler``);
* ``refit`` / ``refit_window`` / ``refit_every`` / ``refit_min_samples`` /
  ``refit_min_prefill_steps`` --
  online refit of the step-time model (``node.fit.step_time_fit.OnlineRefit``);
* ``step_log`` -- a path; when set, one JSON line per step is appended. A
  ``{pid}`` in it becomes the engine process id (one file per engine when
  several engines share a machine). Beside it the engine replica appends one
  line per request it receives, with its time in front of the engine
  (``front_log_path``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, field, fields
from pathlib import Path
from typing import Any

from pydantic import StrictFloat
from pydantic.dataclasses import dataclass

from node.core.validation import check_at_least
from node.fit.profile import DEFAULT_STEP_MODEL, STEP_MODEL_FORMS

ENV_VAR = "FAIRBATCHING_NODE_CONFIG"


@dataclass(frozen=True)
class NodeConfig:
    """One node's scheduler settings (module docstring). A pydantic dataclass: a field of the wrong
    type raises ``ValueError`` naming it; bounds are checked in ``__post_init__``."""

    policy: str = "fairbatching"
    knobs: dict[str, Any] = field(default_factory=dict)
    profile: str = "cpu-tiny-llama"
    # The profile's model the scheduler plans with (Profile.planning_model): "quadratic" (its own, with the
    # prefill-attention term where it has one) or "linear" (its best linear fit); and the factor on its
    # predictions (None: 1.1 with the attention term, else the profile's). The defaults measured best
    # (bench/results/STEPTIME.md 3b); a profile without the term (cpu-tiny-llama) plans the same either way.
    step_model: str = DEFAULT_STEP_MODEL
    safety_factor: StrictFloat | None = None  # strict: a boolean or a string is refused, not read as 1.0
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None
    apply_plan: bool = True
    token_grants: bool = True
    refit: bool = True
    refit_window: int = 512
    refit_every: int = 64
    refit_min_samples: int = 32
    refit_min_prefill_steps: int = 16
    step_log: str | None = None

    def __post_init__(self) -> None:
        for name in ("ttft_slo_s", "tpot_slo_s"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"NodeConfig.{name} must be a number of seconds > 0 or null, got {value!r}")
        if self.safety_factor is not None:
            check_at_least("NodeConfig.safety_factor", self.safety_factor, 1.0)
        if self.step_model not in STEP_MODEL_FORMS:
            raise ValueError(f"NodeConfig.step_model must be one of {', '.join(STEP_MODEL_FORMS)}, got {self.step_model!r}")
        if not isinstance(self.knobs, dict):
            raise ValueError(f"NodeConfig.knobs must be an object, got {self.knobs!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def to_env(self) -> dict[str, str]:
        """The environment entry that carries this config into the engine core."""
        return {ENV_VAR: self.to_json()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{ENV_VAR}: unknown key(s) {', '.join(sorted(unknown))}; accepted: {', '.join(sorted(known))}")
        return cls(**data)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> NodeConfig:
        """The config in ``FAIRBATCHING_NODE_CONFIG``, or the defaults when it is unset or empty."""
        raw = (environ if environ is not None else os.environ).get(ENV_VAR, "").strip()
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{ENV_VAR} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{ENV_VAR} must hold a JSON object, got {type(data).__name__}")
        return cls.from_dict(data)


#: File-name prefix of an engine replica's front-delay log, beside the engine's step log.
FRONT_LOG_PREFIX = "front-"


def front_log_path(step_log: str, pid: int) -> str:
    """Where an engine replica of process ``pid`` logs each request's time in front of it, beside the
    engine's ``step_log``: the same folder, the file name prefixed ``front-``, ``{pid}`` replaced. Each
    line is ``{"t": received (time.time()), "front_delay_s": received - the request's arrival stamp}``."""
    path = Path(step_log)
    return str(path.with_name(FRONT_LOG_PREFIX + path.name)).replace("{pid}", str(pid))
