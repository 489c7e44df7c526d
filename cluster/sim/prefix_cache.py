"""A node's prefix cache in the simulator: blocks of prompt KV named by hash, kept in the KV left free.

vLLM's automatic prefix caching, as the simulator models it. A prompt is a run of
full blocks of ``block_tokens`` tokens, each named by a chained hash (a trace's
``hash_ids``). A block is in one of three states on a node:

* **in use**: held by one or more live requests (``refs`` counts them); its KV is
  taken from the node's ``BlockPool`` once, however many requests share it, and it
  cannot be evicted;
* **cached**: no live request holds it, but its KV is still there, in the pool's
  free blocks; kept in LRU order (``evictable``), least recently used first;
* absent.

A request arriving at the node looks up the longest leading run of its hashes
that is in use or cached (``lookup``); the hit (capped by
``balancer.core.prefix.cache_hit_tokens`` at the prompt less one token, whole
blocks) counts as computed: it is neither prefilled nor newly allocated, and the
request holds those blocks (``acquire``) until it finishes. When its prefill
completes, the full blocks of its prompt that the node did not hold become in-use
blocks of the node (``register``: their KV moves from the request's own
allocation to the shared one), so a later turn can hit them while this one still
decodes. When it finishes (or is preempted) it lets go of them (``release``);
blocks no request holds any more become cached, the prompt's tail least recently
used (vLLM frees a request's blocks tail first, so a shared head outlives it).
Cached blocks live in the free KV: whenever running requests need more of it,
the least recently used are evicted until the cache fits again (``fit``).

Simplifications: output tokens' blocks are never cached (a trace names only the
prompt's blocks); a request that computes a block another live request has just
registered keeps its own copy (as vLLM does when both computed it); a preempted
request recomputes from nothing, without a new lookup.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

from cluster.sim.kv_cache import BlockPool


class NodePrefixCache:
    """Block hashes a node holds, in use (reference counted) or cached (LRU), over its ``BlockPool``.

    ``block_tokens`` is the tokens per hash, a multiple of the pool's block size
    (``ValueError`` otherwise). Counters: ``prompt_tokens`` and ``hit_tokens`` over
    every request looked up (``count_hit``), ``evictions`` (blocks).
    """

    def __init__(self, pool: BlockPool, block_tokens: int) -> None:
        if block_tokens < 1 or block_tokens % pool.block_size:
            raise ValueError(f"prefix block of {block_tokens} tokens must be a positive multiple of the "
                             f"KV block size ({pool.block_size} tokens)")
        self.pool = pool
        self.block_tokens = block_tokens
        self.kv_blocks_per_block = block_tokens // pool.block_size  # pool blocks one prefix block takes
        self.refs: dict[int, int] = {}  # in use: hash -> live requests holding it (> 0)
        self.evictable: OrderedDict[int, None] = OrderedDict()  # cached, least recently used first
        self.prompt_tokens = 0
        self.hit_tokens = 0
        self.evictions = 0

    def lookup(self, block_hashes: Sequence[int]) -> int:
        """How many leading blocks of a prompt the node holds (in use or cached)."""
        refs, evictable = self.refs, self.evictable
        n = 0
        for h in block_hashes:
            if h not in refs and h not in evictable:
                break
            n += 1
        return n

    def count_hit(self, prompt_tokens: int, hit_tokens: int) -> None:
        """Record one request's prompt and the tokens of it the cache saved."""
        self.prompt_tokens += prompt_tokens
        self.hit_tokens += hit_tokens

    def acquire(self, block_hashes: Sequence[int]) -> None:
        """A request holds these blocks (every one in use or cached): a cached one leaves the LRU and
        its KV is taken from the pool (it was part of the free KV)."""
        refs, evictable = self.refs, self.evictable
        for h in block_hashes:
            if h in refs:
                refs[h] += 1
            else:
                del evictable[h]
                self.pool.take(self.kv_blocks_per_block)
                refs[h] = 1

    def register(self, block_hashes: Sequence[int]) -> list[int]:
        """A request computed these blocks of its prompt: those the node does not hold become in use,
        held by it. Returns the hashes registered (their KV moves from the request's own blocks to the
        node's: the caller takes ``kv_blocks_per_block`` off the request's own count for each)."""
        refs, evictable = self.refs, self.evictable
        registered = []
        for h in block_hashes:
            if h not in refs and h not in evictable:
                refs[h] = 1
                registered.append(h)
        return registered

    def release(self, block_hashes: Sequence[int]) -> None:
        """A request lets go of blocks it held (in prompt order): one no request holds any more returns
        its KV to the pool and becomes cached, the prompt's head the most recently used."""
        refs, evictable = self.refs, self.evictable
        for h in reversed(block_hashes):
            left = refs[h] - 1
            if left:
                refs[h] = left
            else:
                del refs[h]
                self.pool.give_back(self.kv_blocks_per_block)
                evictable[h] = None
                evictable.move_to_end(h)

    def fit(self) -> None:
        """Evict the least recently used cached blocks until the cache fits in the pool's free KV."""
        evictable, k = self.evictable, self.kv_blocks_per_block
        while evictable and len(evictable) * k > self.pool.free_blocks:
            evictable.popitem(last=False)
            self.evictions += 1

    @property
    def cached_blocks(self) -> int:
        """Blocks cached (held by no live request), prefix blocks."""
        return len(self.evictable)
