"""Step-time model ``T = h + a + b * new_tokens + c * context`` (DESIGN section 2).

``new_tokens`` counts every token a step processes (prefill chunk tokens plus
one per decode); ``context`` sums, over the requests of the batch, the tokens
already in the KV cache plus the new ones. ``a``, ``b``, ``c`` are fitted by
least squares from measured forward passes of one deployment
(``node.fit.step_time_fit``). ``h`` is the host's time per step that the
forward pass does not cover (scheduling, sampling, detokenizing, output
handling): the step *cadence*, start of one step to the start of the next,
minus the forward time. A step's wall time, what a TPOT is made of, is the sum.
Predictions are multiplied by an explicit safety factor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from node.core.validation import check_at_least, check_positive


@dataclass(frozen=True, slots=True)
class StepTimeModel:
    """Linear step-time model with a multiplicative safety factor.

    ``a_s``, ``b_s_per_token`` and ``c_s_per_context_token`` describe the
    forward pass; ``host_s`` is the per-step host time on top of it (0 when not
    measured), so ``predict_s`` is a step's wall time (its cadence). Units:
    seconds, seconds per token, seconds per context token.

    Raises ``ValueError`` naming the field unless every coefficient is a
    finite number >= 0, ``b_s_per_token`` > 0 and ``safety_factor`` >= 1.
    """

    a_s: float
    b_s_per_token: float
    c_s_per_context_token: float
    safety_factor: float = 1.0
    host_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("a_s", "c_s_per_context_token", "host_s"):
            check_at_least(name, getattr(self, name), 0.0)
        check_positive("b_s_per_token", self.b_s_per_token)
        check_at_least("safety_factor", self.safety_factor, 1.0)

    @property
    def fixed_s(self) -> float:
        """Per-step cost whatever the batch: the forward pass's ``a`` plus the host's ``h``."""
        return self.a_s + self.host_s

    def predict_s(self, new_tokens: int, context_tokens: int) -> float:
        """Predicted wall time of a step with these totals, safety factor included."""
        raw = self.fixed_s + self.b_s_per_token * new_tokens + self.c_s_per_context_token * context_tokens
        return self.safety_factor * raw

    def forward_s(self, new_tokens: int, context_tokens: int) -> float:
        """Predicted forward-pass time alone (no host time), safety factor included."""
        return self.predict_s(new_tokens, context_tokens) - self.safety_factor * self.host_s

    def prefill_alone_s(self, remaining_tokens: int, computed_tokens: int, max_chunk_tokens: int) -> float:
        """Predicted time to compute a prompt's ``remaining_tokens`` alone on an idle node, seconds:
        one step for all of them at context ``computed + remaining``, plus the fixed cost of each
        further chunk of at most ``max_chunk_tokens`` (safety factor included)."""
        chunks = -(-remaining_tokens // max_chunk_tokens)
        return (self.predict_s(remaining_tokens, computed_tokens + remaining_tokens)
                + (chunks - 1) * self.safety_factor * self.fixed_s)

    def largest_prompt_alone(self, within_s: float, max_chunk_tokens: int, limit_tokens: int) -> int:
        """Longest prompt (at most ``limit_tokens``) an idle node prefills alone within ``within_s`` seconds
        (``prefill_alone_s``, which grows with the prompt); 0 when not even one token fits. Bisection."""
        if limit_tokens < 1 or self.prefill_alone_s(1, 0, max_chunk_tokens) > within_s:
            return 0
        lo, hi = 1, limit_tokens  # prefill_alone_s(lo) fits; find the last that does
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.prefill_alone_s(mid, 0, max_chunk_tokens) <= within_s:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def largest_chunk(
        self,
        budget_s: float,
        batch_new_tokens: int,
        batch_context_tokens: int,
        computed_tokens: int,
    ) -> int:
        """Largest prefill chunk ``q`` that keeps the step within ``budget_s``.

        The batch already holds ``batch_new_tokens`` new tokens and
        ``batch_context_tokens`` context; the prompt has ``computed_tokens``
        tokens in cache, so a chunk of ``q`` adds ``q`` new tokens and
        ``computed_tokens + q`` context. Closed form of
        ``predict(N + q, C + p + q) <= budget``; returns 0 when nothing fits.
        """
        b, c = self.b_s_per_token, self.c_s_per_context_token
        room = (
            budget_s / self.safety_factor
            - self.fixed_s
            - b * batch_new_tokens
            - c * (batch_context_tokens + computed_tokens)
        )
        if room <= 0:
            return 0
        q = math.floor(room / (b + c))
        # Guard the floor against rounding, with the very comparison a caller makes: the chunk
        # returned must fit by predict_s exactly, never by an ulp over.
        while q > 0 and self.predict_s(batch_new_tokens + q, batch_context_tokens + computed_tokens + q) > budget_s:
            q -= 1
        return q
