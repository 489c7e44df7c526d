"""A request's SLO and arrival as they travel with it: one reader and one writer for every host.

The ingress writes them into the OpenAI body's ``vllm_xargs``; vLLM copies that
into ``SamplingParams.extra_args``, where the engine replica and the vLLM
scheduler read them. Keys (``node.core.request``): ``ttft_slo_s`` and
``tpot_slo_s`` (seconds, > 0), ``slo_class`` (the SLO class's name, when the
deployment has classes) and ``arrival_s`` (``time.time()`` seconds of the
ingress's arrival stamp: the envelope starts there, so slack counts the time the
request spent in front of the engine).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Mapping

from node.core.request import ARRIVAL_KEY, SLO, SLO_CLASS_KEY, SLO_TPOT_KEY, SLO_TTFT_KEY


class SLOValueError(ValueError):
    """A request's SLO value is not a positive, finite number of seconds; ``key`` names it."""

    def __init__(self, key: str, value: Any) -> None:
        super().__init__(f"{key} must be a number of seconds > 0, got {value!r}")
        self.key = key
        self.value = value


def positive_seconds(value: Any, scale: float = 1.0) -> float | None:
    """``value`` (a number, or a numeric string) times ``scale`` when that is a finite number > 0, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        seconds = float(value) * scale
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def slo_from_extra_args(extra_args: Mapping[str, Any] | None, default: SLO) -> SLO:
    """The SLO in ``extra_args``, each target it does not carry from ``default`` (and its class
    and priority: the ingress resolves a request's class before, ``cluster.http.api.request_slo``).

    Raises ``SLOValueError`` naming the key for a value that is not a number of seconds > 0
    (strings are refused: JSON bodies carry numbers).
    """
    extra = extra_args or {}
    targets = []
    for key, fallback in ((SLO_TTFT_KEY, default.ttft_s), (SLO_TPOT_KEY, default.tpot_s)):
        if key not in extra:
            targets.append(fallback)
            continue
        value = extra[key]
        seconds = None if isinstance(value, str) else positive_seconds(value)
        if seconds is None:
            raise SLOValueError(key, value)
        targets.append(seconds)
    return replace(default, ttft_s=targets[0], tpot_s=targets[1])


def slo_or_default(extra_args: Mapping[str, Any] | None, default: SLO) -> tuple[SLO, list[str]]:
    """The SLO in ``extra_args`` as an engine reads it: each target that is missing or unusable
    (not a number of seconds > 0; numeric strings are taken) from ``default``.

    The class name comes from ``slo_class`` when it is a string, else from ``default``.
    Returns the SLO and the keys that were present but unusable (for a warning). The ingress
    refuses such values with a 400 (``slo_from_extra_args``); this is for requests that reach an
    engine some other way.
    """
    extra = extra_args or {}
    targets, invalid = [], []
    for key, fallback in ((SLO_TTFT_KEY, default.ttft_s), (SLO_TPOT_KEY, default.tpot_s)):
        seconds = positive_seconds(extra[key]) if key in extra else fallback
        if seconds is None:
            invalid.append(key)
            seconds = fallback
        targets.append(seconds)
    tier = extra.get(SLO_CLASS_KEY)
    return SLO(targets[0], targets[1], tier=tier if isinstance(tier, str) else default.tier), invalid


def arrival_from_extra_args(extra_args: Mapping[str, Any] | None, default_s: float) -> float:
    """The arrival stamp in ``extra_args`` (``time.time()`` seconds), or ``default_s`` when absent or not finite."""
    stamp = (extra_args or {}).get(ARRIVAL_KEY)
    if isinstance(stamp, (int, float)) and not isinstance(stamp, bool) and math.isfinite(stamp):
        return float(stamp)
    return default_s


def to_extra_args(slo: SLO, arrival_s: float) -> dict[str, float | str]:
    """The entries that carry ``slo`` (its class when named) and ``arrival_s`` in ``vllm_xargs`` / ``extra_args``."""
    entries: dict[str, float | str] = {SLO_TTFT_KEY: slo.ttft_s, SLO_TPOT_KEY: slo.tpot_s, ARRIVAL_KEY: arrival_s}
    if slo.tier:
        entries[SLO_CLASS_KEY] = slo.tier
    return entries
