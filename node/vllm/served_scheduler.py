"""The FairBatching scheduler as the engine replica runs it: ``node_stats()`` rides on each step's stats.

With ``AsyncLLM`` the scheduler lives in the engine-core child process; the
replica (parent) sees only what crosses the process boundary. vLLM ships a
``SchedulerStats`` with every step's outputs, and its ``kv_connector_stats``
field is a free-form dict unused without a KV connector: these subclasses put
``node_stats()`` there under ``"fairbatching"`` (``NodeStats.to_dict``). The replica disables vLLM's
default stat loggers (they would read that field as connector stats) and reads
it in its own logger (``node.serve.engine_replica``).

Load by dotted path: ``node.vllm.served_scheduler.ServedFairBatchingScheduler``
(``...ServedFairBatchingAsyncScheduler`` on GPU with async scheduling).
"""

from __future__ import annotations

from typing import Any

from node.vllm.node_stats import STATS_KEY
from node.vllm.scheduler import FairBatchingAsyncScheduler, FairBatchingScheduler



class _PublishNodeStats:
    def make_stats(self, *args: Any, **kwargs: Any):
        stats = super().make_stats(*args, **kwargs)
        if stats is not None:
            extra = dict(stats.kv_connector_stats or {})
            extra[STATS_KEY] = self.node_stats().to_dict()  # msgpack carries plain data
            stats.kv_connector_stats = extra
        return stats


class ServedFairBatchingScheduler(_PublishNodeStats, FairBatchingScheduler):
    """``FairBatchingScheduler`` that publishes ``node_stats()`` with each step's scheduler stats."""


class ServedFairBatchingAsyncScheduler(_PublishNodeStats, FairBatchingAsyncScheduler):
    """The same on the async (overlapped-step) scheduler."""
