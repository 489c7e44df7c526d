"""Fitting the step-time model (``node.core.step_time``) from measured steps (DESIGN section 2).

Samples are measured steps (the engine's step log, a profiling run, the
simulator's true step times); the model is fitted by least squares, robustly
(the lower envelope of noisy samples), or online from a window of recent steps.
A sample that records its prefill chunks' causal attention pairs
(``StepSample.prefill_attention_pairs``, the sum of ``q * (p + q / 2)``) lets
the fit find the prefill-attention coefficient ``e`` of the model as well;
samples without it (older step logs) fit the linear model.

The fit lives here as plain arithmetic on lists; it is not on the per-step
path, so it may use NumPy (imported lazily to keep the planner import-light).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field, replace
from enum import Enum
from itertools import combinations

from node.core.attainment import percentile
from node.core.step_time import StepTimeModel
from node.core.validation import check_at_least, check_int, check_positive


class BatchKind(str, Enum):
    """What a measured step held; the fit's error is reported per kind."""

    DECODE_ONLY = "decode-only"
    PREFILL_ONLY = "prefill-only"
    MIXED = "mixed"


@dataclass(frozen=True, slots=True)
class StepSample:
    """One measured step: what it processed (token counts) and how long it took (seconds).

    ``context_tokens`` sums every request's context (cached plus new tokens);
    ``prefill_attention_pairs`` sums ``q * (p + q / 2)`` over the step's
    prefill chunks (``node.core.step_time.prefill_attention_pairs``; 0 when
    the step had none or its record does not say).

    Raises ``ValueError`` naming the field on a count that is not an integer
    >= 0, a step of no token, a duration that is not finite and > 0, or pairs
    that are not a finite number >= 0.
    """

    prefill_tokens: int
    decode_tokens: int
    context_tokens: int
    duration_s: float
    prefill_attention_pairs: float = 0.0

    def __post_init__(self) -> None:
        for name in ("prefill_tokens", "decode_tokens", "context_tokens"):
            check_int(name, getattr(self, name), minimum=0)
        if self.prefill_tokens + self.decode_tokens == 0:
            raise ValueError("a step sample must process at least one token")
        check_positive("duration_s", self.duration_s)
        check_at_least("prefill_attention_pairs", self.prefill_attention_pairs, 0.0)

    @property
    def new_tokens(self) -> int:
        return self.prefill_tokens + self.decode_tokens

    @property
    def kind(self) -> BatchKind:
        if self.prefill_tokens == 0:
            return BatchKind.DECODE_ONLY
        if self.decode_tokens == 0:
            return BatchKind.PREFILL_ONLY
        return BatchKind.MIXED


@dataclass(frozen=True, slots=True)
class ErrorStats:
    """Prediction error on a group of steps: mean absolute % error and P99 absolute error (fractions, seconds).

    ``p99_ape`` is the 99th percentile of the absolute relative error (a fraction, 0.05 = 5 %).
    """

    samples: int
    mape: float
    p99_abs_error_s: float
    p99_ape: float = float("nan")


@dataclass(frozen=True, slots=True)
class FitReport:
    """Prediction error of a model on a set of steps, overall and per batch kind."""

    overall: ErrorStats
    by_kind: dict[BatchKind, ErrorStats] = field(default_factory=dict)

    def to_dict(self) -> dict:
        def row(s: ErrorStats) -> dict:
            return {"samples": s.samples, "mape": s.mape, "p99_abs_error_s": s.p99_abs_error_s, "p99_ape": s.p99_ape}

        return {
            "overall": row(self.overall),
            "by_kind": {str(k.value if isinstance(k, BatchKind) else k): row(v) for k, v in self.by_kind.items()},
        }


def _forward_only(model: StepTimeModel) -> StepTimeModel:
    """``model``'s forward pass: no safety factor, no host time."""
    return replace(model, safety_factor=1.0, host_s=0.0)


def predicted_forward_s(model: StepTimeModel, sample: StepSample) -> float:
    """What ``model`` (safety factor and host time aside) predicts for the step ``sample`` measured, seconds."""
    return _forward_only(model).predict_s(sample.new_tokens, sample.context_tokens, sample.prefill_attention_pairs)


def evaluate(model: StepTimeModel, samples: list[StepSample]) -> FitReport:
    """MAPE, P99 absolute error and P99 absolute % error of ``model`` (without its safety factor
    and host time), over every step and per batch kind (kinds without a step left out)."""
    raw = _forward_only(model)

    def stats(group: list[StepSample]) -> ErrorStats:
        if not group:
            return ErrorStats(0, float("nan"), float("nan"))
        errors = [abs(raw.predict_s(s.new_tokens, s.context_tokens, s.prefill_attention_pairs) - s.duration_s)
                  for s in group]
        rel = [e / s.duration_s for e, s in zip(errors, group)]
        return ErrorStats(len(group), sum(rel) / len(group), percentile(errors, 99.0), percentile(rel, 99.0))

    kinds = (BatchKind.DECODE_ONLY, BatchKind.PREFILL_ONLY, BatchKind.MIXED)
    by_kind = {k: stats([s for s in samples if s.kind == k]) for k in kinds}
    return FitReport(stats(samples), {k: v for k, v in by_kind.items() if v.samples})


class Weighting(str, Enum):
    """What the least squares of ``fit`` minimises."""

    ABSOLUTE = "absolute"  # squared error in seconds: long steps weigh most
    # Squared relative error (rows weighted by 1 / duration), each batch kind given equal total
    # weight (its rows by 1 / sqrt(its count)): the profiles' fit (deploy/profiles/DERIVATION.md s. 3).
    RELATIVE = "relative"


def carries_attention_pairs(samples: list[StepSample]) -> bool:
    """True when some sample records prefill attention pairs (so ``e`` can be fitted)."""
    return any(s.prefill_attention_pairs > 0 for s in samples)


def fit(
    samples: list[StepSample], safety_factor: float = 1.0, *, prefill_attention: bool | None = None,
    weighting: Weighting | str = Weighting.ABSOLUTE,
) -> tuple[StepTimeModel, FitReport]:
    """Least-squares fit of ``a, b, c`` and ``e`` (all kept >= 0) and its error report.

    ``prefill_attention``: fit the prefill-attention coefficient ``e``
    (``StepTimeModel.attn_prefill_s_per_token_sq``) on the samples'
    ``prefill_attention_pairs``; False: the linear model (``e = 0``); None (the
    default): when the samples carry pairs (``carries_attention_pairs``).
    ``weighting``: ``Weighting`` (or its value).

    Needs at least three samples (``ValueError``). Coefficients that an
    unconstrained fit would make negative are pinned at zero (an exact
    non-negative least squares for three or four unknowns: try every subset of
    free coefficients that keeps ``b``, keep the best feasible one). Raises
    ``ValueError`` when no fit gives a positive per-token cost ``b``.
    """
    import numpy as np

    if len(samples) < 3:
        raise ValueError(f"need at least 3 step samples to fit, got {len(samples)}")
    weighting = Weighting(weighting)
    if prefill_attention is None:
        prefill_attention = carries_attention_pairs(samples)
    if prefill_attention:
        X = np.array([[1.0, s.new_tokens, s.context_tokens, s.prefill_attention_pairs] for s in samples])
    else:
        X = np.array([[1.0, s.new_tokens, s.context_tokens] for s in samples])
    y = np.array([s.duration_s for s in samples])
    if weighting is Weighting.RELATIVE:
        w = 1.0 / y
        kinds = np.array([s.kind.value for s in samples])
        for kind in set(kinds.tolist()):
            sel = kinds == kind
            w[sel] /= np.sqrt(sel.sum())
        X, y = X * w[:, None], y * w
    terms = X.shape[1]
    # Scale columns so the solver sees comparable magnitudes.
    scale = np.maximum(np.abs(X).max(axis=0), 1e-12)
    Xs = X / scale
    best: tuple[float, np.ndarray] | None = None
    for k in range(terms, 0, -1):
        for cols in combinations(range(terms), k):
            if 1 not in cols:  # the per-token term is what makes the model useful
                continue
            coef_sub, *_ = np.linalg.lstsq(Xs[:, cols], y, rcond=None)
            if np.any(coef_sub < 0):
                continue
            coef = np.zeros(terms)
            coef[list(cols)] = coef_sub
            sse = float(np.sum((Xs @ coef - y) ** 2))
            if best is None or sse < best[0]:
                best = (sse, coef)
    if best is None or best[1][1] <= 0:
        raise ValueError("step samples do not determine a positive per-token cost")
    coefs = (best[1] / scale).tolist()
    a, b, c = coefs[:3]
    model = StepTimeModel(a, b, c, safety_factor, attn_prefill_s_per_token_sq=coefs[3] if prefill_attention else 0.0)
    return model, evaluate(model, samples)


def _log2_bin(x: int) -> int:
    return x.bit_length()  # 0 -> 0, 1 -> 1, 2..3 -> 2, 4..7 -> 3, ...


def lower_envelope(samples: list[StepSample]) -> list[StepSample]:
    """The fastest step of each batch shape (log2 bins of prefill, decode and context tokens).

    Time taken from a step by other work on a shared host is only ever added,
    so the fastest repeat of a shape is the best estimate of the step itself.
    On a quiet GPU it biases the fit low by about the step-time jitter, which
    the safety factor covers.
    """
    best: dict[tuple[int, int, int], StepSample] = {}
    for s in samples:
        key = (_log2_bin(s.prefill_tokens), _log2_bin(s.decode_tokens), _log2_bin(s.context_tokens))
        if key not in best or s.duration_s < best[key].duration_s:
            best[key] = s
    return list(best.values())


def robust_fit(
    samples: list[StepSample], *, safety_factor: float = 1.0, outlier_mads: float = 3.0,
    prefill_attention: bool | None = None,
) -> tuple[StepTimeModel, FitReport, FitReport, int]:
    """Fit the lower envelope of the steps, trimmed of slow outliers.

    Returns (model, report on the steps kept, report on every step, steps dropped).
    Trimming is one-sided: a step slower than the fit by more than
    ``outlier_mads`` median absolute deviations was slowed by something else.
    ``prefill_attention`` as ``fit``'s (None: decided on every step given).
    """
    if prefill_attention is None:
        prefill_attention = carries_attention_pairs(samples)
    kept = lower_envelope(samples)
    if len(kept) < 3:
        kept = list(samples)
    model, report = fit(kept, safety_factor, prefill_attention=prefill_attention)
    resid = [s.duration_s - predicted_forward_s(model, s) for s in kept]
    med = statistics.median(resid)
    mad = statistics.median(abs(r - med) for r in resid) or 1e-9
    trimmed = [s for s, r in zip(kept, resid) if r - med <= outlier_mads * mad]
    if len(trimmed) >= max(3, len(kept) * 2 // 3):
        kept = trimmed
        model, report = fit(kept, safety_factor, prefill_attention=prefill_attention)
    return model, report, evaluate(model, samples), len(samples) - len(kept)


def trimmed_fit(
    samples: list[StepSample], *, safety_factor: float = 1.0, outlier_mads: float = 3.0, rounds: int = 4,
    prefill_attention: bool | None = None,
) -> tuple[StepTimeModel, FitReport]:
    """Least squares over every step, refitted after dropping steps far slower than the fit.

    Each round drops the steps whose residual exceeds the median residual by
    more than ``outlier_mads`` median absolute deviations (one-sided: other work
    on the host only ever slows a step) and refits, until nothing more is
    dropped or ``rounds`` are done. Unlike the lower envelope, what it estimates
    does not depend on how often each batch shape was seen: the fastest of ten
    repeats is faster than the fastest of two, so two identical nodes fitted by
    their lower envelopes disagree in proportion to their traffic. The report
    covers the steps kept. ``prefill_attention`` as ``fit``'s (None: decided
    on every step given).
    """
    if prefill_attention is None:
        prefill_attention = carries_attention_pairs(samples)
    model, report = fit(samples, safety_factor, prefill_attention=prefill_attention)
    kept = list(samples)
    for _ in range(rounds):
        resid = [s.duration_s - predicted_forward_s(model, s) for s in samples]
        med = statistics.median(resid)
        mad = statistics.median(abs(r - med) for r in resid) or 1e-9
        trimmed = [s for s, r in zip(samples, resid) if r - med <= outlier_mads * mad]
        if len(trimmed) == len(kept) or len(trimmed) < 3:
            break
        kept = trimmed
        model, report = fit(kept, safety_factor, prefill_attention=prefill_attention)
    return model, report


class OnlineRefit:
    """Keeps a window of recent steps and refits the model from them periodically.

    ``observe`` is O(1) except every ``refit_every`` samples, when the window
    is refitted (a few hundred rows of least squares: well under a millisecond).
    Until ``min_samples`` are seen, or when a fit fails, the prior model stays.
    The window must also hold ``min_prefill_steps`` steps with prefill tokens:
    decode steps process a few tokens each and cannot tell the per-token cost
    from the fixed cost, yet the admission budget extrapolates the per-token
    cost to whole prompts. With ``robust`` (the default) the window is fitted
    by ``trimmed_fit``, so steps slowed by other work on the host do not drag
    the model up, and a node's model does not depend on how much traffic it got
    (which would make PAB placement favour the busiest node).
    ``prefill_attention``: whether the refit fits the prefill-attention
    coefficient (``fit``'s); None (the default): when the prior has one, so a
    linear prior stays linear.
    """

    def __init__(
        self,
        prior: StepTimeModel,
        *,
        window: int = 512,
        min_samples: int = 32,
        refit_every: int = 64,
        robust: bool = True,
        min_prefill_steps: int = 16,
        host_window: int = 64,
        prefill_attention: bool | None = None,
    ) -> None:
        if host_window < 1:
            raise ValueError(f"host_window must be >= 1, got {host_window!r}")
        if window < 3 or min_samples < 3 or refit_every < 1:
            raise ValueError("window and min_samples must be >= 3, refit_every >= 1")
        if not 0 <= min_prefill_steps <= window:
            raise ValueError(f"min_prefill_steps must be in [0, window], got {min_prefill_steps!r}")
        self.step_model = prior
        self.report: FitReport | None = None
        self._samples: deque[StepSample] = deque(maxlen=window)
        self._min_samples = min_samples
        self._min_prefill = min_prefill_steps
        self._prefill_steps = 0  # steps with prefill tokens in the window
        self._refit_every = refit_every
        self._since_refit = 0
        self._robust = robust
        self._prefill_attention = (not prior.is_linear) if prefill_attention is None else prefill_attention
        self.refits = 0
        # Host time per step (cadence minus forward), a running median over the last host_window steps.
        self._host: deque[float] = deque(maxlen=host_window)
        self._host_every = max(1, host_window // 4)
        self._since_host = 0

    def observe_cadence(self, cadence_s: float, forward_s: float) -> StepTimeModel:
        """A step's cadence (start of it to the start of the next, engine busy) beside its forward time.

        ``cadence_s - forward_s`` is the step's host time; their running median
        over the last ``host_window`` steps becomes the model's ``host_s``.
        """
        if math.isfinite(cadence_s) and cadence_s > 0 and math.isfinite(forward_s):
            self._host.append(max(0.0, cadence_s - forward_s))
            self._since_host += 1
            if self._since_host >= self._host_every:
                self._since_host = 0
                host = statistics.median(self._host)
                if host != self.step_model.host_s:
                    self.step_model = replace(self.step_model, host_s=host)
        return self.step_model

    @property
    def host_samples(self) -> int:
        return len(self._host)

    def observe(self, sample: StepSample) -> StepTimeModel:
        """One measured forward pass; every ``refit_every`` of them the window is refitted."""
        if len(self._samples) == self._samples.maxlen and self._samples[0].prefill_tokens:
            self._prefill_steps -= 1
        self._samples.append(sample)
        self._prefill_steps += sample.prefill_tokens > 0
        self._since_refit += 1
        if (
            len(self._samples) >= self._min_samples
            and self._prefill_steps >= self._min_prefill
            and self._since_refit >= self._refit_every
        ):
            self._since_refit = 0
            try:
                if self._robust:
                    model, report = trimmed_fit(list(self._samples), safety_factor=self.step_model.safety_factor,
                                                prefill_attention=self._prefill_attention)
                else:
                    model, report = fit(list(self._samples), self.step_model.safety_factor,
                                        prefill_attention=self._prefill_attention)
            except ValueError:
                return self.step_model  # degenerate window (e.g. all steps alike): keep the last model
            self.step_model, self.report = replace(model, host_s=self.step_model.host_s), report
            self.refits += 1
        return self.step_model

    @property
    def samples(self) -> list[StepSample]:
        return list(self._samples)
