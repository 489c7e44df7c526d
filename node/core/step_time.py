"""Step-time model ``T = h + a + b * new_tokens + c * context + e * attention_pairs`` (DESIGN section 2).

``new_tokens`` counts every token a step processes (prefill chunk tokens plus
one per decode); ``context`` sums, over the requests of the batch, the tokens
already in the KV cache plus the new ones; ``attention_pairs`` sums, over the
prefill chunks of the batch, the query-key pairs of their causal attention: a
chunk of ``q`` tokens on ``p`` already computed ones attends ``q * (p + q / 2)``
pairs (``prefill_attention_pairs``). ``a``, ``b``, ``c`` and ``e``
(``attn_prefill_s_per_token_sq``) are fitted by least squares from measured
forward passes of one deployment (``node.fit.step_time_fit``). ``h`` is the
host's time per step that the forward pass does not cover (scheduling,
sampling, detokenizing, output handling): the step *cadence*, start of one step
to the start of the next, minus the forward time. A step's wall time, what a
TPOT is made of, is the sum. Predictions are multiplied by an explicit safety
factor.

The paper (arXiv 2510.14392, DESIGN section 2) budgets with the linear model,
``e = 0``, which is what every profile without the coefficient gets, exactly.
The quadratic term is the prefill attention of the profiles' ground truth
(deploy/profiles/DERIVATION.md section 2.3: causal attention FLOPs per
query-key pair); the decode attention of the ground truth, linear in each
decode's context, is ``c``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from node.core.validation import check_at_least, check_positive


def prefill_attention_pairs(chunk_tokens: int, computed_tokens: int) -> float:
    """Query-key pairs of the causal attention of a prefill chunk: ``q * (p + q / 2)``.

    ``chunk_tokens`` (``q``) new prompt tokens attend to ``computed_tokens``
    (``p``) tokens already in the KV cache and, causally, to each other
    (DERIVATION.md section 2.3). Summed over the chunks a prompt is prefilled
    in, it is ``R * (p0 + R / 2)`` for ``R`` tokens after ``p0`` computed,
    whatever the chunking. No validation: the planner's hot path.
    """
    return chunk_tokens * (computed_tokens + 0.5 * chunk_tokens)


@dataclass(frozen=True, slots=True)
class StepTimeModel:
    """Step-time model, linear plus a prefill-attention term, with a multiplicative safety factor.

    ``a_s``, ``b_s_per_token``, ``c_s_per_context_token`` and
    ``attn_prefill_s_per_token_sq`` describe the forward pass; ``host_s`` is
    the per-step host time on top of it (0 when not measured), so
    ``predict_s`` is a step's wall time (its cadence). Units: seconds, seconds
    per token, seconds per context token, seconds per query-key pair of
    prefill attention (``prefill_attention_pairs``). With
    ``attn_prefill_s_per_token_sq`` 0 (the default) the model is the linear one
    of the paper, and every method gives exactly what the linear model gives.

    Raises ``ValueError`` naming the field unless every coefficient is a
    finite number >= 0, ``b_s_per_token`` > 0 and ``safety_factor`` >= 1.
    """

    a_s: float
    b_s_per_token: float
    c_s_per_context_token: float
    safety_factor: float = 1.0
    host_s: float = 0.0
    attn_prefill_s_per_token_sq: float = 0.0

    def __post_init__(self) -> None:
        for name in ("a_s", "c_s_per_context_token", "host_s", "attn_prefill_s_per_token_sq"):
            check_at_least(name, getattr(self, name), 0.0)
        check_positive("b_s_per_token", self.b_s_per_token)
        check_at_least("safety_factor", self.safety_factor, 1.0)

    @property
    def fixed_s(self) -> float:
        """Per-step cost whatever the batch: the forward pass's ``a`` plus the host's ``h``."""
        return self.a_s + self.host_s

    @property
    def is_linear(self) -> bool:
        """True when the prefill-attention coefficient is 0 (the paper's linear model)."""
        return self.attn_prefill_s_per_token_sq == 0.0

    def predict_s(self, new_tokens: int, context_tokens: int, attention_pairs: float = 0.0) -> float:
        """Predicted wall time of a step with these totals, seconds, safety factor included.

        ``attention_pairs`` sums ``prefill_attention_pairs`` over the step's
        prefill chunks (0 for a decode-only step, and ignored by a linear model).
        """
        raw = (self.fixed_s + self.b_s_per_token * new_tokens + self.c_s_per_context_token * context_tokens
               + self.attn_prefill_s_per_token_sq * attention_pairs)
        return self.safety_factor * raw

    def forward_s(self, new_tokens: int, context_tokens: int, attention_pairs: float = 0.0) -> float:
        """Predicted forward-pass time alone (no host time), seconds, safety factor included."""
        return self.predict_s(new_tokens, context_tokens, attention_pairs) - self.safety_factor * self.host_s

    def prefill_alone_s(self, remaining_tokens: int, computed_tokens: int, max_chunk_tokens: int) -> float:
        """Predicted time to compute a prompt's ``remaining_tokens`` alone on an idle node, seconds:
        one step for all of them at context ``computed + remaining`` and their whole causal attention
        (``remaining * (computed + remaining / 2)`` pairs, the same however the prompt is chunked),
        plus the fixed cost of each further chunk of at most ``max_chunk_tokens`` (safety factor
        included). Grows with ``remaining_tokens``."""
        chunks = -(-remaining_tokens // max_chunk_tokens)
        pairs = prefill_attention_pairs(remaining_tokens, computed_tokens)
        return (self.predict_s(remaining_tokens, computed_tokens + remaining_tokens, pairs)
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

    def chunk_for_room(self, room_s: float, computed_tokens: float) -> float:
        """The real chunk ``q >= 0`` whose own cost fills ``room_s`` seconds of raw model time (no safety
        factor): the root of ``(b + c + e * p) * q + e * q**2 / 2 = room_s`` for ``p = computed_tokens``
        (``q = room_s / (b + c)`` when ``e`` is 0); 0 when ``room_s <= 0``. Not floored.

        The quadratic's positive root is taken in the form without cancellation,
        ``2 * room / (B + sqrt(B**2 + 2 * e * room))`` with ``B = b + c + e * p``.
        """
        if room_s <= 0:
            return 0.0
        e = self.attn_prefill_s_per_token_sq
        lin = self.b_s_per_token + self.c_s_per_context_token
        if e == 0.0:
            return room_s / lin
        lin += e * computed_tokens
        return 2.0 * room_s / (lin + math.sqrt(lin * lin + 2.0 * e * room_s))

    def largest_chunk(
        self,
        budget_s: float,
        batch_new_tokens: int,
        batch_context_tokens: int,
        computed_tokens: int,
        batch_attention_pairs: float = 0.0,
    ) -> int:
        """Largest prefill chunk ``q`` that keeps the step within ``budget_s`` (finite, seconds).

        The batch already holds ``batch_new_tokens`` new tokens,
        ``batch_context_tokens`` context and ``batch_attention_pairs`` prefill
        attention pairs; the prompt has ``computed_tokens`` tokens in cache, so a
        chunk of ``q`` adds ``q`` new tokens, ``computed_tokens + q`` context and
        ``prefill_attention_pairs(q, computed_tokens)`` pairs. Closed form of
        ``predict(N + q, C + p + q, P + q * (p + q / 2)) <= budget``
        (``chunk_for_room``: linear when ``e`` is 0, the quadratic's root
        otherwise), then checked with ``predict_s`` itself; returns 0 when
        nothing fits.
        """
        b, c, e = self.b_s_per_token, self.c_s_per_context_token, self.attn_prefill_s_per_token_sq
        room = (
            budget_s / self.safety_factor
            - self.fixed_s
            - b * batch_new_tokens
            - c * (batch_context_tokens + computed_tokens)
            - e * batch_attention_pairs
        )
        if room <= 0:
            return 0
        new, ctx, pairs = batch_new_tokens, batch_context_tokens + computed_tokens, batch_attention_pairs

        def over(k: int) -> bool:  # the very comparison a caller makes
            return self.predict_s(new + k, ctx + k, pairs + prefill_attention_pairs(k, computed_tokens)) > budget_s

        q = math.floor(self.chunk_for_room(room, computed_tokens))
        if e != 0.0:
            # The root in floats may fall an ulp short of an integer that fits (the linear
            # closed form keeps its behaviour: a chunk may be one short at the boundary).
            while not over(q + 1):
                q += 1
        # Guard the floor against rounding: the chunk returned must fit by predict_s exactly,
        # never by an ulp over.
        while q > 0 and over(q):
            q -= 1
        return q
