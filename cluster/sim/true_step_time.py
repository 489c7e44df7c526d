"""How long a step *really* takes on the virtual GPU (as opposed to what the policy predicts).

With a profile that carries a ``ground_truth`` section (see
deploy/profiles/DERIVATION.md):

    T = fixed_overhead_s + interp(linear_ops_ms, new_tokens) / 1000
        + attn_decode_s_per_context_token * sum over decodes of (kv_tokens + 1)
        + attn_prefill_s_per_token_sq * sum over prefill chunks of q * (p + q / 2)

(``interp`` piecewise linear, linearly extrapolated past the last point).
Without one (``ground_truth`` null) the profile's own model is the truth:
``a + b * new_tokens + c * context + e * pairs``, context counting decodes'
``kv_tokens + 1`` and prefills' ``p + q``, ``pairs`` the prefill chunks'
``q * (p + q / 2)`` (``e`` is the profile's ``attn_prefill_s_per_token_sq``, 0
on a linear profile). Optional multiplicative lognormal
noise with mean 1 models run-to-run jitter; with ``noise_ar`` it is correlated
from one step of a node to its next (a first-order autoregression of the log
noise), as a live engine's steps are: a slow step tends to follow a slow one
(bench/results/SIMULATION.md, "Correlated step noise").

**Host time.** A step's wall time is its forward pass plus the host's work
between two forward passes (scheduling, input preparation, sampling,
detokenizing, output handling): the step *cadence*. ``host_s`` (default: the
profile's ``host_s``, 0 when the profile has none) is added to every step
after the noise. The h100/a100 ground truths already hold an assumed 0.30 ms
of host time in ``fixed_overhead_s`` (DERIVATION.md section 2.4), so
``host_s`` is host time *beyond* that assumption. With ``host_s_per_request``
a step's host time grows with the requests it serves (sampling, detokenizing and
streaming each one's token: a live CPU engine's grows by about 0.2 ms a request,
bench/results/SIMULATION.md, "Host time per request"), ``host_s`` its fixed part.
``forward_s`` of the last step is kept for an online refit that fits forward
time and host time apart.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left
from dataclasses import replace
from typing import Any

from node.core.step_time import prefill_attention_pairs
from node.fit.profile import Profile


class TrueStepTime:
    """Step durations of one node; deterministic given the seed of ``rng``."""

    def __init__(
        self, profile: Profile, *, noise_sigma: float = 0.0, rng: random.Random | None = None,
        host_s: float | None = None, noise_ar: float = 0.0, host_s_per_request: float = 0.0,
    ) -> None:
        """``noise_sigma``: the log noise's standard deviation (0: none); ``noise_ar``: its lag-1
        correlation from one step to the next, in (-1, 1) (0: independent steps); ``host_s``: a step's
        fixed host time and ``host_s_per_request`` what it adds per request served, seconds (>= 0).
        Raises ``ValueError`` for values out of those ranges."""
        if not noise_sigma >= 0:
            raise ValueError(f"noise sigma must be >= 0, got {noise_sigma!r}")
        if not -1.0 < noise_ar < 1.0:
            raise ValueError(f"noise_ar (the noise's lag-1 correlation) must be in (-1, 1), got {noise_ar!r}")
        self.host_s = float(profile.host_s if host_s is None else host_s)
        if not (math.isfinite(self.host_s) and self.host_s >= 0):
            raise ValueError(f"host_s must be a finite number >= 0, got {host_s!r}")
        if not (math.isfinite(host_s_per_request) and host_s_per_request >= 0):
            raise ValueError(f"host_s_per_request must be a finite number >= 0, got {host_s_per_request!r}")
        self.host_s_per_request = float(host_s_per_request)
        self.last_forward_s = 0.0
        truth: Any = profile.extra.get("ground_truth")
        self.uses_ground_truth = isinstance(truth, dict)
        # Without ground truth the truth is the profile's own model, safety factor and host time aside.
        self._own = replace(profile.step_model, safety_factor=1.0, host_s=0.0)
        if self.uses_ground_truth:
            points = sorted((float(x), float(y) / 1000.0) for x, y in truth["linear_ops_ms"])
            if len(points) < 2:
                raise ValueError("ground_truth.linear_ops_ms needs at least two points")
            self._xs = [x for x, _ in points]
            self._ys = [y for _, y in points]
            self.fixed_s = float(truth["fixed_overhead_s"])
            self.attn_decode_s = float(truth["attn_decode_s_per_context_token"])
            self.attn_prefill_s = float(truth["attn_prefill_s_per_token_sq"])
        self.noise_sigma = noise_sigma
        self.noise_ar = noise_ar
        self._noise_z: float | None = None  # the last step's log noise, in standard deviations
        self._rng = rng or random.Random(0)

    def linear_ops_s(self, new_tokens: int) -> float:
        xs, ys = self._xs, self._ys
        i = bisect_left(xs, new_tokens)
        if i < len(xs) and xs[i] == new_tokens:
            return ys[i]
        i = min(max(i, 1), len(xs) - 1)  # extrapolate linearly at both ends
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 + (y1 - y0) * (new_tokens - x0) / (x1 - x0)

    def prefill_alone_s(self, prompt_tokens: int, max_chunk_tokens: int) -> float:
        """Noiseless time for an idle node to prefill a prompt of ``prompt_tokens`` alone, seconds: its
        chunks of at most ``max_chunk_tokens``, one step each (host time included). The floor under the
        prompt's TTFT that no schedule lowers. Raises ``ValueError`` for ``max_chunk_tokens`` < 1."""
        if max_chunk_tokens < 1:
            raise ValueError(f"max_chunk_tokens must be >= 1, got {max_chunk_tokens}")
        total, done = 0.0, 0
        while done < prompt_tokens:
            q = min(max_chunk_tokens, prompt_tokens - done)
            total += self.forward_s(q, 0, done + q, prefill_attention_pairs(q, done)) + self.host_time_s(1)
            done += q
        return total

    def host_time_s(self, requests: int) -> float:
        """Host time of a step serving ``requests`` requests, seconds: ``host_s`` plus ``host_s_per_request``
        each (no contention)."""
        return self.host_s + self.host_s_per_request * requests

    def forward_s(self, new_tokens: int, decode_context_tokens: int, prefill_context_tokens: int,
                  prefill_attention_pairs: float) -> float:
        """Noiseless forward time of a step, seconds (no host time); arguments as ``step_s``'s."""
        if self.uses_ground_truth:
            return (self.fixed_s + self.linear_ops_s(new_tokens) + self.attn_decode_s * decode_context_tokens
                    + self.attn_prefill_s * prefill_attention_pairs)
        return self._own.forward_s(new_tokens, decode_context_tokens + prefill_context_tokens, prefill_attention_pairs)

    def step_s(
        self,
        new_tokens: int,
        decode_context_tokens: int,
        prefill_context_tokens: int,
        prefill_attention_pairs: float,
        slowdown: float = 1.0,
        requests: int = 0,
    ) -> float:
        """Wall time of a step: forward pass (with noise) plus its host time (``host_s``, plus
        ``host_s_per_request`` for each of the ``requests`` it serves), both times ``slowdown`` (a
        shared host's contention, ``cluster.sim.shared_host``; 1: none).

        ``decode_context_tokens`` sums ``kv_tokens + 1`` over decodes,
        ``prefill_context_tokens`` sums ``p + q`` and ``prefill_attention_pairs``
        sums ``q * (p + q / 2)`` over prefill chunks of ``q`` tokens after ``p``
        computed ones.
        """
        t = self.forward_s(new_tokens, decode_context_tokens, prefill_context_tokens, prefill_attention_pairs)
        if self.noise_sigma:
            # z: a stationary AR(1) of unit variance, z' = ar * z + sqrt(1 - ar^2) * e; the multiplier
            # exp(sigma * z - sigma^2 / 2) has mean 1 (with ar 0 the draws are those of independent noise)
            s, z = self.noise_sigma, self._rng.gauss(0.0, 1.0)
            if self.noise_ar and self._noise_z is not None:
                z = self.noise_ar * self._noise_z + math.sqrt(1.0 - self.noise_ar ** 2) * z
            self._noise_z = z
            t *= math.exp(-0.5 * s * s + z * s)
        self.last_forward_s = t * slowdown
        return (t + self.host_time_s(requests)) * slowdown
