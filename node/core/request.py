"""Plain data the node policy reads: one request's SLO and its state at the start of a step.

Hosts (the vLLM scheduler, the simulator) own a ``RequestState`` per live
request; the policy only reads it (``tests/test_batch_invariants.py`` checks a
plan leaves its input unchanged). The vLLM scheduler builds a fresh one each
step; the simulator keeps one per request and updates its progress fields in
place between steps (building 10^8 snapshots would dominate a capacity search).
Every field is validated on construction so that a bad snapshot fails loudly
with the field named instead of producing a wrong plan.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.core.validation import check_finite, check_int, check_positive

#: Keys of vLLM's ``SamplingParams.extra_args`` (an OpenAI body's ``vllm_xargs``) that carry a
#: request's SLOs, seconds, and the ingress's arrival stamp, ``time.time()`` seconds (the envelope
#: starts there, so slack counts the time the request spent in front of the engine).
SLO_TTFT_KEY = "ttft_slo_s"
SLO_TPOT_KEY = "tpot_slo_s"
ARRIVAL_KEY = "arrival_s"
#: The request's SLO class (a deployment's ``slo_tiers`` name), a string.
SLO_CLASS_KEY = "slo_class"


@dataclass(frozen=True, slots=True)
class SLO:
    """Latency targets of one request: time to first token and time per output token, seconds.

    ``tier`` names the SLO class the targets come from (``""``: none named), and ``priority``
    ranks it, lower first, as vLLM's ``priority`` scheduling policy reads a request's priority
    (only the priority baseline uses it; FairBatching orders by deadline). Raises
    ``ValueError`` naming the field unless both targets are finite and > 0 and the priority
    is an integer.
    """

    ttft_s: float
    tpot_s: float
    tier: str = ""
    priority: int = 0

    def __post_init__(self) -> None:
        check_positive("ttft_s", self.ttft_s)
        check_positive("tpot_s", self.tpot_s)
        check_int("priority", self.priority, minimum=-(1 << 31))


@dataclass(slots=True, eq=False)
class RequestState:
    """One request as the policy sees it at the start of a step.

    ``prompt_tokens`` is the number of tokens to prefill before decoding can
    start, ``computed_tokens`` how many of them are already in the KV cache
    (``0 <= computed_tokens <= prompt_tokens``), and ``output_tokens`` how many
    tokens the request has emitted so far. A request is in prefill while
    ``computed_tokens < prompt_tokens`` and decoding afterwards.

    ``kv_tokens`` is the number of token slots the request holds in the KV
    cache now and ``kv_blocks`` how many blocks are allocated to it; the policy
    derives from them how many new blocks a step needs. Both default to what a
    request with no cache sharing would hold.

    Times (``arrival_s``, ``first_token_s``) are seconds on the host's clock.
    Raises ``ValueError`` naming the field on a non-finite time, a count that
    is not an integer or is below its minimum (``prompt_tokens`` and
    ``max_output_tokens`` >= 1, the others >= 0), or ``computed_tokens`` past
    ``prompt_tokens``.
    """

    request_id: str
    arrival_s: float
    prompt_tokens: int
    slo: SLO
    computed_tokens: int = 0
    output_tokens: int = 0
    first_token_s: float | None = None
    max_output_tokens: int | None = None
    kv_tokens: int | None = None
    kv_blocks: int | None = None

    def __post_init__(self) -> None:
        check_finite("arrival_s", self.arrival_s)
        check_int("prompt_tokens", self.prompt_tokens, minimum=1)
        check_int("computed_tokens", self.computed_tokens, minimum=0)
        check_int("output_tokens", self.output_tokens, minimum=0)
        if self.computed_tokens > self.prompt_tokens:
            raise ValueError(
                f"request {self.request_id!r}: computed_tokens ({self.computed_tokens}) "
                f"exceeds prompt_tokens ({self.prompt_tokens})"
            )
        if self.first_token_s is not None:
            check_finite("first_token_s", self.first_token_s)
        if self.max_output_tokens is not None:
            check_int("max_output_tokens", self.max_output_tokens, minimum=1)
        if self.kv_tokens is not None:
            check_int("kv_tokens", self.kv_tokens, minimum=0)
        if self.kv_blocks is not None:
            check_int("kv_blocks", self.kv_blocks, minimum=0)

    @property
    def is_prefill(self) -> bool:
        return self.computed_tokens < self.prompt_tokens

    @property
    def remaining_prompt_tokens(self) -> int:
        return self.prompt_tokens - self.computed_tokens

    @property
    def decode_context_tokens(self) -> int:
        """Context a decode step attends to: the prompt plus every emitted token."""
        return self.prompt_tokens + self.output_tokens

    @property
    def held_kv_tokens(self) -> int:
        if self.kv_tokens is not None:
            return self.kv_tokens
        # No prefix sharing: a decode holds its prompt and all emitted tokens but
        # the newest one, which this step writes; a prefill holds what it computed.
        if self.is_prefill:
            return self.computed_tokens
        return self.prompt_tokens + max(self.output_tokens - 1, 0)

    def kv_blocks_needed(self, new_tokens: int, block_size: int) -> int:
        """New KV blocks this request must allocate to write ``new_tokens`` more tokens."""
        held = self.held_kv_tokens
        allocated = self.kv_blocks if self.kv_blocks is not None else -(-held // block_size)
        return max(0, -(-(held + new_tokens) // block_size) - allocated)
