"""What each node holds in its prefix cache, as the balancer estimates it from what it placed there.

A node's engine (vLLM's automatic prefix caching) keeps the KV of full blocks of
``block_tokens`` tokens, each named by a hash chained over the prompt before it:
two prompts share a cached block only when they share every token up to its end.
A new request's cache hit on a node is the longest leading run of its block
hashes the node still holds, capped, as vLLM caps it, at ``prompt_tokens - 1``
rounded down to a whole block (the last prompt token is always computed, for its
logits; ``vllm.v1.core.kv_cache_manager.KVCacheManager.get_computed_blocks``).

``PrefixIndex`` is an approximate copy of each node's cache: every prompt the
balancer places on a node is recorded there, and the node's oldest blocks are
forgotten once it holds more than ``capacity_blocks``, the tail of a prompt
before its head (vLLM frees a request's blocks tail first, so that the shared
head outlives it). The same object serves the Ray Serve router (block hashes of
the rendered prompt's token ids, ``prompt_block_hashes``) and the simulator
(a trace's ``hash_ids``, one per block). It never sees what the engine evicts
for running requests' KV, so it over-estimates a busy node's hits; the node's
own report corrects the budget, and the engine charges what it really computes.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence


def prompt_block_hashes(token_ids: Sequence[int], block_tokens: int) -> tuple[int, ...]:
    """Chained hashes of the full ``block_tokens``-token blocks of a prompt, in order.

    Hash ``i`` depends on every token of blocks ``0..i``, so equal hashes mean equal
    prefixes. A partial last block has no hash (an engine caches full blocks only).
    Deterministic across processes (ints and tuples hash without a seed).
    Raises ``ValueError`` for ``block_tokens`` < 1.
    """
    if block_tokens < 1:
        raise ValueError(f"block_tokens must be >= 1, got {block_tokens!r}")
    hashes = []
    parent = 0
    for start in range(0, len(token_ids) - block_tokens + 1, block_tokens):
        parent = hash((parent, tuple(token_ids[start:start + block_tokens])))
        hashes.append(parent)
    return tuple(hashes)


def cache_hit_tokens(cached_blocks: int, prompt_tokens: int, block_tokens: int) -> int:
    """Prompt tokens a hit of ``cached_blocks`` leading blocks saves, as vLLM counts it: whole blocks,
    at most ``prompt_tokens - 1`` (the last prompt token is recomputed for its logits)."""
    most = (max(prompt_tokens - 1, 0) // block_tokens) * block_tokens
    return min(cached_blocks * block_tokens, most)


class PrefixIndex:
    """Per node, an LRU set of the block hashes placed there (an estimate of its prefix cache).

    ``block_tokens`` is the engines' KV block size, tokens. ``capacity_blocks`` bounds
    how many blocks one node is assumed to keep (``None``: unbounded); a node's own
    capacity may be set later with ``set_capacity`` (from its KV size in its report).
    Raises ``ValueError`` for ``block_tokens`` < 1 or a negative capacity.
    """

    def __init__(self, block_tokens: int, capacity_blocks: int | None = None) -> None:
        if block_tokens < 1:
            raise ValueError(f"block_tokens must be >= 1, got {block_tokens!r}")
        if capacity_blocks is not None and capacity_blocks < 0:
            raise ValueError(f"capacity_blocks must be >= 0, got {capacity_blocks!r}")
        self.block_tokens = block_tokens
        self.capacity_blocks = capacity_blocks
        self._capacity: dict[int, int | None] = {}
        self._blocks: dict[int, OrderedDict[int, None]] = {}  # node -> hashes, least recently used first

    def set_capacity(self, node_id: int, capacity_blocks: int | None) -> None:
        """How many blocks ``node_id`` keeps (its KV cache in blocks); forgets its oldest beyond that."""
        if capacity_blocks is not None and capacity_blocks < 0:
            raise ValueError(f"capacity_blocks must be >= 0, got {capacity_blocks!r}")
        self._capacity[node_id] = capacity_blocks
        self._evict(node_id)

    def cached_blocks(self, node_id: int, block_hashes: Sequence[int]) -> int:
        """How many leading blocks of a prompt the node is estimated to hold."""
        held = self._blocks.get(node_id)
        if not held:
            return 0
        n = 0
        for h in block_hashes:
            if h not in held:
                break
            n += 1
        return n

    def cached_tokens(self, node_id: int, block_hashes: Sequence[int], prompt_tokens: int) -> int:
        """Prompt tokens of a request the node would not compute (``cache_hit_tokens`` of its leading hit)."""
        return cache_hit_tokens(self.cached_blocks(node_id, block_hashes), prompt_tokens, self.block_tokens)

    def insert(self, node_id: int, block_hashes: Sequence[int]) -> None:
        """Record a prompt placed on ``node_id``: its blocks become the node's most recent, head newest."""
        held = self._blocks.setdefault(node_id, OrderedDict())
        for h in reversed(block_hashes):  # the head last: it is forgotten last
            held[h] = None
            held.move_to_end(h)
        self._evict(node_id)

    def forget_node(self, node_id: int) -> None:
        """The node left or restarted: it holds nothing."""
        self._blocks.pop(node_id, None)

    def blocks_held(self, node_id: int) -> int:
        """How many blocks the index holds for ``node_id``."""
        return len(self._blocks.get(node_id, ()))

    def _evict(self, node_id: int) -> None:
        cap = self._capacity.get(node_id, self.capacity_blocks)
        held = self._blocks.get(node_id)
        if cap is None or held is None:
            return
        while len(held) > cap:
            held.popitem(last=False)
