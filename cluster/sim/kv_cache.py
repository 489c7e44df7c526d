"""The KV cache of one node as a pool of fixed-size blocks (no prefix sharing)."""

from __future__ import annotations


class BlockPool:
    """``total_blocks`` blocks of ``block_size`` tokens; requests take and return whole blocks."""

    def __init__(self, capacity_tokens: int, block_size: int) -> None:
        if block_size < 1 or capacity_tokens < block_size:
            raise ValueError(f"need block_size >= 1 and capacity >= one block, got {capacity_tokens}, {block_size}")
        self.block_size = block_size
        self.total_blocks = capacity_tokens // block_size
        self.free_blocks = self.total_blocks

    def take(self, blocks: int) -> None:
        if blocks > self.free_blocks:
            raise RuntimeError(f"KV cache overcommitted: asked {blocks} blocks, {self.free_blocks} free")
        self.free_blocks -= blocks

    def give_back(self, blocks: int) -> None:
        self.free_blocks += blocks
        if self.free_blocks > self.total_blocks:
            raise RuntimeError("KV cache returned more blocks than it holds")

    @property
    def used_fraction(self) -> float:
        return 1.0 - self.free_blocks / self.total_blocks

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)
