"""What a run measured: SLO attainment (per request and per token), latency percentiles, goodput.

Definitions (DESIGN section 6):

* a request *attains* iff it finished, ``TTFT <= ttft SLO`` and its mean TPOT
  ``(t_last - t_first) / (n - 1)`` is ``<= tpot SLO`` (a one-token request
  needs only the TTFT). Rejected, dropped and unfinished requests miss.
* ``attainment`` is over all requests, ``admitted_attainment`` over those the
  balancer admitted.
* per-token attainment: the fraction of all requested output tokens emitted by
  their envelope deadline, under the ``arrival`` anchor
  (``arr + ttft + tpot * j``) and the ``first-token`` anchor
  (``t_first + tpot * j`` for ``j >= 1``); tokens never emitted miss.
* ``goodput_rps``: attaining requests per second of offered trace (first to
  last arrival).

Latency percentiles are over the requests that have the quantity (TTFT: a
first token; TPOT: at least two tokens and finished).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Iterable, Sequence

from cluster.sim.node import SimRequest
from node.core.attainment import mean_tpot_s, meets_slo, percentile


def shares(labels: Iterable[str]) -> dict[str, float]:
    """Each label's share of ``labels`` (fractions summing to 1), by label; ``{}`` for none."""
    counts = Counter(labels)
    total = sum(counts.values())
    return {k: v / total for k, v in sorted(counts.items())} if total else {}


def ttft_s(req: SimRequest) -> float | None:
    return None if req.first_token_s is None else req.first_token_s - req.arrival_s


def tpot_s(req: SimRequest) -> float | None:
    """Mean TPOT of a finished request with at least two tokens, else None."""
    if not req.finished:
        return None
    return mean_tpot_s(req.first_token_s, req.last_token_s, req.emitted)


def attains(req: SimRequest) -> bool:
    """The per-request SLO test of DESIGN section 6 (``node.core.attainment.meets_slo``) on a finished request."""
    return req.finished and meets_slo(ttft_s(req), tpot_s(req), req.slo)


def summarize(requests: Sequence[SimRequest], offered_span_s: float) -> dict:
    """The report of a run over ``requests`` (every request of the workload); with SLO tiers
    (``SLO.tier``), ``per_tier`` holds the same report over each tier's requests."""
    report = _summary(requests, offered_span_s)
    tiers = sorted({r.slo.tier for r in requests if r.slo.tier}, key=lambda t: next(
        r.slo.priority for r in requests if r.slo.tier == t))
    if tiers:
        report["per_tier"] = {t: _summary([r for r in requests if r.slo.tier == t], offered_span_s) for t in tiers}
    return report


def _summary(requests: Sequence[SimRequest], offered_span_s: float) -> dict:
    n = len(requests)
    rejected = sum(r.rejected for r in requests)
    dropped = sum(r.dropped for r in requests)
    finished = sum(r.finished for r in requests)
    unfinished = n - rejected - dropped - finished
    attained = sum(attains(r) for r in requests)
    admitted = n - rejected
    ttfts = [t for t in map(ttft_s, requests) if t is not None]
    tpots = [t for t in map(tpot_s, requests) if t is not None]
    tokens_all = sum(r.output_tokens for r in requests)
    tokens_admitted = sum(r.output_tokens for r in requests if not r.rejected)
    on_arr = sum(r.on_time_arrival for r in requests)
    on_first = sum(r.on_time_first for r in requests)
    span = offered_span_s if offered_span_s > 0 else math.nan
    return {
        "requests": n,
        "attainment": attained / n if n else None,
        "admitted_attainment": attained / admitted if admitted else None,
        "attained": attained,
        "rejected": rejected,
        "rejected_fraction": rejected / n if n else None,
        "dropped": dropped,
        "finished": finished,
        "unfinished": unfinished,
        "ttft_p50": percentile(ttfts, 50),
        "ttft_p90": percentile(ttfts, 90),
        "ttft_p99": percentile(ttfts, 99),
        "tpot_p50": percentile(tpots, 50),
        "tpot_p99": percentile(tpots, 99),
        "token_attainment_arrival": on_arr / tokens_all if tokens_all else None,
        "token_attainment_first_token": on_first / tokens_all if tokens_all else None,
        "admitted_token_attainment_arrival": on_arr / tokens_admitted if tokens_admitted else None,
        "admitted_token_attainment_first_token": on_first / tokens_admitted if tokens_admitted else None,
        "goodput_rps": attained / span if n else 0.0,
        "offered_rps": (n - 1) / span if n > 1 else 0.0,
        "preempted_requests": sum(r.preemptions > 0 for r in requests),
    }


def ttft_samples(requests: Iterable[SimRequest]) -> list[float]:
    return [t for t in map(ttft_s, requests) if t is not None]
