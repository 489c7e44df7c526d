"""Planning overhead benchmark: how long one ``plan()`` call takes per snapshot size.

A step on a GPU takes tens of milliseconds; the scheduler's own planning must
be a small fraction of that. Snapshots are synthetic but shaped like a loaded
node: most requests decoding at various distances from their envelope, some
prompts queued or partially prefilled.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from node.core.attainment import percentile
from node.core.step_time import StepTimeModel
from node.core.plan import Limits
from node.core.policies import POLICY_NAMES, make_policy
from node.core.request import SLO, RequestState

DEFAULT_SIZES = (64, 256, 1024, 4096)
#: Arms measured: each policy at its own defaults, and FairBatching with the serving layer's default
#: knobs (``cluster.config.ServeConfig``: first-token anchor, TPOT margin 0.2, seat pressure 0.8, fewest-late
#: relegation, which runs Moore's rule over the prefill queue and the seat order every step).
ARMS: dict[str, tuple[str, dict]] = {
    **{name: (name, {}) for name in POLICY_NAMES},
    "fairbatching-serve": ("fairbatching", {"anchor": "first-token", "tpot_margin": 0.2, "seat_pressure": 0.8,
                                            "relegate": "fewest-late"}),
    # the same relegating only doomed requests: the difference is Moore's rule
    "fairbatching-serve-doomed": ("fairbatching", {"anchor": "first-token", "tpot_margin": 0.2, "seat_pressure": 0.8,
                                                   "relegate": "doomed"}),
}
#: Arms whose ``seat_order`` is timed too (row ``<arm> seat_order``): a host calls it every step while
#: requests wait for seats or KV, over the waiting requests (every request of the snapshot that has
#: computed nothing, the others passed as started).
SEAT_ORDER_ARMS = ("fairbatching-serve", "fairbatching-serve-doomed")


@dataclass(frozen=True)
class OverheadRow:
    policy: str
    requests: int
    median_ms: float
    p99_ms: float

    def to_dict(self) -> dict:
        return {"policy": self.policy, "requests": self.requests, "median_ms": self.median_ms, "p99_ms": self.p99_ms}


def synthetic_snapshot(size: int, now_s: float, rng: random.Random, prefill_share: float = 0.1,
                       queued_age_s: float = 30.0) -> list[RequestState]:
    """``size`` requests: about ``prefill_share`` of them prefilling (arrived up to ``queued_age_s`` seconds
    ago, against a 1 s TTFT SLO: with 30 most are past their first-token deadline, with 1 none is), the
    rest decoding (arrived up to 30 s ago)."""
    slo = SLO(ttft_s=1.0, tpot_s=0.05)
    requests = []
    for i in range(size):
        arrival = now_s - rng.uniform(0.0, 30.0)
        prompt = rng.randint(16, 4096)
        if rng.random() < prefill_share:
            arrival = now_s - rng.uniform(0.0, queued_age_s)
            computed = rng.choice((0, 0, rng.randint(0, prompt - 1)))
            requests.append(RequestState(f"r{i}", arrival, prompt, slo, computed_tokens=computed))
        else:
            first = arrival + rng.uniform(0.05, 1.0)
            out = max(1, int((now_s - first) / rng.uniform(0.02, 0.06)))
            requests.append(
                RequestState(f"r{i}", arrival, prompt, slo, computed_tokens=prompt, output_tokens=out, first_token_s=first)
            )
    return requests


def measure(
    sizes: tuple[int, ...] = DEFAULT_SIZES,
    policies: tuple[str, ...] = tuple(ARMS),
    *,
    repeats: int = 200,
    seed: int = 0,
    queued_age_s: float = 30.0,
    progress=None,
) -> list[OverheadRow]:
    """Median and P99 wall time of ``plan()`` for each arm of ``ARMS`` named in ``policies`` and snapshot size."""
    model = StepTimeModel(a_s=0.0056, b_s_per_token=21e-6, c_s_per_context_token=0.05e-6)
    limits = Limits(max_num_seqs=max(sizes), max_num_batched_tokens=8192)
    rows = []
    for size in sizes:
        rng = random.Random(seed + size)
        snapshots = [synthetic_snapshot(size, 100.0, rng, queued_age_s=queued_age_s) for _ in range(8)]
        for name in policies:
            policy_name, knobs = ARMS[name]
            policy = make_policy(policy_name, model, **knobs)
            n = max(20, repeats * 256 // max(size, 256))
            times = []
            for k in range(n):
                snapshot = snapshots[k % len(snapshots)]
                start = time.perf_counter()
                policy.plan(snapshot, limits, 100.0)
                times.append((time.perf_counter() - start) * 1e3)
                if progress is not None:
                    progress()
            rows.append(OverheadRow(name, size, percentile(times, 50), percentile(times, 99, method="higher")))
            if name in SEAT_ORDER_ARMS:
                times = []
                for k in range(n):
                    snapshot = snapshots[k % len(snapshots)]
                    waiting = [r for r in snapshot if r.computed_tokens == 0]
                    started = [r for r in snapshot if r.computed_tokens > 0]
                    start = time.perf_counter()
                    policy.seat_order(waiting, started, limits, 100.0)
                    times.append((time.perf_counter() - start) * 1e3)
                rows.append(OverheadRow(f"{name} seat_order", size, percentile(times, 50),
                                        percentile(times, 99, method="higher")))
    return rows
