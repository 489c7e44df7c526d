"""Versioned step-time profile files: one per deployment (model x GPU x parallelism x dtype).

A profile is JSON with at least ``version``, ``a_s``, ``b_s_per_token``,
``c_s_per_context_token``, ``safety_factor``, ``mape``, ``p99_abs_error_s``,
``hardware``, ``model`` and ``method``. ``host_s`` (optional, default 0) is the
per-step host time measured beside the forward pass. ``attn_prefill_s_per_token_sq``
(optional, default 0: the linear model) is the prefill-attention coefficient of
the step-time model (seconds per query-key pair, ``node.core.step_time``); a
profile that has one may keep the best *linear* fit of the same steps in
``linear_fit`` (``a_s``, ``b_s_per_token``, ``c_s_per_context_token`` and its
errors), which ``Profile.step_model_as("linear")`` gives for comparison.
Optional keys describe the deployment's
limits (``kv_cache_tokens``, ``max_num_seqs``, ``max_num_batched_tokens``,
``block_size``), a ``fit_report`` and, for the simulator, a ``ground_truth``
step-time model richer than the linear one. Unknown keys are kept as-is.

Profiles shipped with the project live in ``deploy/profiles/<name>.json`` and
are selected by name.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from node.core.request import SLO
from node.core.step_time import StepTimeModel

from node.fit.step_time_fit import FitReport

PROFILE_VERSION = 1
PROFILES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "profiles"

_REQUIRED_NUMBERS = ("a_s", "b_s_per_token", "c_s_per_context_token", "safety_factor", "mape", "p99_abs_error_s")
_REQUIRED_STRINGS = ("hardware", "model", "method")
_OPTIONAL_INTS = ("kv_cache_tokens", "max_num_seqs", "max_num_batched_tokens", "block_size")
_OPTIONAL_SECONDS = ("ttft_slo_s", "tpot_slo_s")

#: The forms of step-time model a profile gives (``Profile.step_model_as``): its own (with the
#: prefill-attention term when it has one) and the linear model of the paper.
STEP_MODEL_FORMS = ("quadratic", "linear")
#: The form a node plans with unless told otherwise (``Profile.planning_model``): the profile's own
#: model, with its prefill-attention term where it has one (bench/results/STEPTIME.md, section 3b).
DEFAULT_STEP_MODEL = "quadratic"
#: The safety factor a model with the prefill-attention term plans with unless told otherwise (at least
#: this much; a profile's own larger factor stands). That model predicts steps better than the linear fit
#: but under-predicts the full mixed steps a time budget plans, which then overrun (STEPTIME.md section
#: 3); with a 10 % margin it measured the most robust planning model over H100 and A100 x Azure code,
#: Azure conv and ShareGPT-Gamma x three seeds: at most 3.5 % behind the best form in any cell, where
#: the linear fit fell 9.2 % and the bare quadratic model 11.5 % behind (section 3b).
ATTENTION_MODEL_SAFETY_FACTOR = 1.1
_LINEAR_FIT_NUMBERS = ("a_s", "b_s_per_token", "c_s_per_context_token")

#: The SLOs a deployment is held to when neither the request, the config nor its profile names
#: one: the paper's evaluation targets for an 8B model (DESIGN section 6), 1 s TTFT and 50 ms TPOT.
REFERENCE_SLO = SLO(ttft_s=1.0, tpot_s=0.05)


class ProfileError(ValueError):
    """A profile file is missing, malformed or of an unsupported version."""


@dataclass
class Profile:
    """A fitted step-time model and what it was fitted on."""

    a_s: float
    b_s_per_token: float
    c_s_per_context_token: float
    safety_factor: float
    mape: float
    p99_abs_error_s: float
    hardware: str
    model: str
    method: str
    name: str = ""
    kv_cache_tokens: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    block_size: int | None = None
    host_s: float = 0.0  # per-step host time on top of the forward pass (cadence minus forward)
    attn_prefill_s_per_token_sq: float = 0.0  # seconds per query-key pair of prefill attention (0: linear)
    # The deployment's default SLOs on this hardware (None: REFERENCE_SLO's). Every config that runs
    # on this profile (serve, engine, simulator) defaults to them, so their defaults agree.
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def default_slo(self) -> SLO:
        """The SLO of a request that names none on this profile's deployment, seconds."""
        return SLO(self.ttft_slo_s or REFERENCE_SLO.ttft_s, self.tpot_slo_s or REFERENCE_SLO.tpot_s)

    @property
    def step_model(self) -> StepTimeModel:
        """The profile's step-time model: its coefficients, safety factor and host time."""
        return StepTimeModel(self.a_s, self.b_s_per_token, self.c_s_per_context_token, self.safety_factor,
                             self.host_s, self.attn_prefill_s_per_token_sq)

    def step_model_as(self, form: str) -> StepTimeModel:
        """The step-time model of ``form`` (``STEP_MODEL_FORMS``), safety factor and host time the profile's.

        ``quadratic``: ``step_model``, the profile's own (linear when it has no
        prefill-attention coefficient). ``linear``: the paper's linear model:
        the profile's own when it is linear, else its ``linear_fit`` (the best
        linear fit of the same steps), else its own with the coefficient zeroed.
        Raises ``ValueError`` on another form.
        """
        if form not in STEP_MODEL_FORMS:
            raise ValueError(f"unknown step model {form!r}; choose one of {', '.join(STEP_MODEL_FORMS)}")
        own = self.step_model
        if form == "quadratic" or own.is_linear:
            return own
        lin = self.extra.get("linear_fit")
        if isinstance(lin, dict):
            return StepTimeModel(*(float(lin[k]) for k in _LINEAR_FIT_NUMBERS), self.safety_factor, self.host_s)
        return replace(own, attn_prefill_s_per_token_sq=0.0)

    def planning_model(self, form: str = DEFAULT_STEP_MODEL, safety_factor: float | None = None) -> StepTimeModel:
        """The step-time model a node plans and budgets with: ``step_model_as(form)`` with ``safety_factor``.

        ``safety_factor`` ``None``: the profile's, raised to ``ATTENTION_MODEL_SAFETY_FACTOR`` when the
        model has a prefill-attention term (the margin that measured best for it); a linear model keeps
        the profile's. One rule for the simulator (``SimConfig``) and the engines (``NodeConfig``).
        Raises ``ValueError`` on an unknown form or a factor that is not a finite number >= 1.
        """
        model = self.step_model_as(form)
        if safety_factor is None:
            safety_factor = self.safety_factor if model.is_linear else max(self.safety_factor,
                                                                            ATTENTION_MODEL_SAFETY_FACTOR)
        return replace(model, safety_factor=safety_factor)  # StepTimeModel checks the factor

    @classmethod
    def from_fit(
        cls, model: StepTimeModel, report: FitReport, *, hardware: str, model_name: str, method: str, **kw: Any
    ) -> Profile:
        extra = kw.pop("extra", {})
        extra = {**extra, "fit_report": report.to_dict()}
        return cls(
            attn_prefill_s_per_token_sq=model.attn_prefill_s_per_token_sq,
            a_s=model.a_s,
            b_s_per_token=model.b_s_per_token,
            c_s_per_context_token=model.c_s_per_context_token,
            safety_factor=model.safety_factor,
            mape=report.overall.mape,
            p99_abs_error_s=report.overall.p99_abs_error_s,
            hardware=hardware,
            model=model_name,
            method=method,
            extra=extra,
            **kw,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": PROFILE_VERSION}
        if self.name:
            out["name"] = self.name
        for key in _REQUIRED_NUMBERS + _REQUIRED_STRINGS + _OPTIONAL_INTS + _OPTIONAL_SECONDS:
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.host_s:
            out["host_s"] = self.host_s
        if self.attn_prefill_s_per_token_sq:
            out["attn_prefill_s_per_token_sq"] = self.attn_prefill_s_per_token_sq
        out.update(self.extra)
        return out


def parse_profile(data: Any, source: str = "<profile>") -> Profile:
    """Validate a decoded profile document; raise ``ProfileError`` naming the bad key."""
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a profile must be a JSON object, got {type(data).__name__}")
    version = data.get("version")
    if version != PROFILE_VERSION:
        raise ProfileError(f"{source}: unsupported profile version {version!r} (expected {PROFILE_VERSION})")
    values: dict[str, Any] = {}
    for key in _REQUIRED_NUMBERS:
        if key not in data:
            raise ProfileError(f"{source}: missing required key {key!r}")
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ProfileError(f"{source}: {key!r} must be a finite number, got {value!r}")
        values[key] = float(value)
    for key in _REQUIRED_STRINGS:
        if not isinstance(data.get(key), str):
            raise ProfileError(f"{source}: missing or non-string key {key!r}")
        values[key] = data[key]
    for key in _OPTIONAL_INTS:
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ProfileError(f"{source}: {key!r} must be a positive integer, got {value!r}")
        values[key] = value
    for key in _OPTIONAL_SECONDS:
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value <= 0):
            raise ProfileError(f"{source}: {key!r} must be a number of seconds > 0, got {value!r}")
        values[key] = None if value is None else float(value)
    host = data.get("host_s", 0.0)
    if isinstance(host, bool) or not isinstance(host, (int, float)) or not math.isfinite(host) or host < 0:
        raise ProfileError(f"{source}: 'host_s' must be a finite number >= 0, got {host!r}")
    values["host_s"] = float(host)
    attn = data.get("attn_prefill_s_per_token_sq", 0.0)
    if isinstance(attn, bool) or not isinstance(attn, (int, float)) or not math.isfinite(attn) or attn < 0:
        raise ProfileError(f"{source}: 'attn_prefill_s_per_token_sq' must be a finite number >= 0, got {attn!r}")
    values["attn_prefill_s_per_token_sq"] = float(attn)
    lin = data.get("linear_fit")
    if lin is not None:
        if not isinstance(lin, dict):
            raise ProfileError(f"{source}: 'linear_fit' must be an object, got {lin!r}")
        for key in _LINEAR_FIT_NUMBERS:
            value = lin.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ProfileError(f"{source}: 'linear_fit.{key}' must be a finite number, got {value!r}")
    known = (set(_REQUIRED_NUMBERS) | set(_REQUIRED_STRINGS) | set(_OPTIONAL_INTS) | set(_OPTIONAL_SECONDS)
             | {"version", "name", "host_s", "attn_prefill_s_per_token_sq"})
    profile = Profile(name=str(data.get("name", "")), extra={k: v for k, v in data.items() if k not in known}, **values)
    try:
        profile.step_model  # noqa: B018 - validates the coefficients
        profile.step_model_as("linear")  # and those of its linear fit
    except ValueError as exc:
        raise ProfileError(f"{source}: {exc}") from None
    return profile


def load_profile(name_or_path: str | Path) -> Profile:
    """Load a profile by file path, or by name from ``deploy/profiles``."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = PROFILES_DIR / f"{name_or_path}.json"
    if not path.is_file():
        known = ", ".join(available_profiles()) or "none"
        raise ProfileError(f"no profile file {str(path)!r} (shipped profiles: {known})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{path}: not valid JSON: {exc}") from None
    profile = parse_profile(data, str(path))
    if not profile.name:
        profile.name = path.stem
    return profile


def save_profile(profile: Profile, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile.to_dict(), indent=2) + "\n")
    return path


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.json"))


#: The GEMM tile a profile with measured operator times (a ``ground_truth``) aligns chunks to, tokens:
#: 256 measured best of 64, 128 and 256 on the H100 and A100 profiles (bench/results/NODE-POLICY.md).
MEASURED_TILE_TOKENS = 256


def tile_tokens_of(profile: Profile) -> int:
    """The chunk alignment a FairBatching node on ``profile`` defaults to, tokens: ``MEASURED_TILE_TOKENS``
    when the profile carries measured operator times (``ground_truth``: the GPU profiles, whose step cost
    jumps past each tile), else 0 (off: a profile whose truth is its own smooth model has no tiles)."""
    return MEASURED_TILE_TOKENS if isinstance(profile.extra.get("ground_truth"), dict) else 0


@lru_cache(maxsize=64)
def profile_default_slo(name_or_path: str) -> SLO:
    """``load_profile(name_or_path).default_slo``, read once per process (every config on a profile
    asks for it; raises ``ProfileError`` as ``load_profile`` does)."""
    return load_profile(name_or_path).default_slo
