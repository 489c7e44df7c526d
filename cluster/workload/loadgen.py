"""Replay a trace against a live OpenAI-compatible endpoint and report as the simulator does.

Each trace request becomes one streaming ``POST /v1/completions`` sent at its
(scaled) arrival time, with a prompt of exactly its prompt length (token ids),
``max_tokens`` = its output length and ``ignore_eos`` so it emits exactly that
many tokens. Every streamed token is timestamped when its chunk arrives (the
running count comes from ``continuous_usage_stats``: under load one chunk may
carry several tokens). The records are turned into the simulator's
``SimRequest`` objects and summarised by ``cluster.sim.metrics.summarize``, so
a live report has the very fields (and definitions) of ``fairbatching sim run``.

A 429 counts as rejected; any other failure (HTTP error, a stream that breaks
or ends early, a timeout) counts as dropped: a miss either way, never silent.

The client is aiohttp's, the one vLLM's own benchmark client uses: on the
2-core machine the load generator shares the CPU with the cluster it measures,
and aiohttp spends 1.8 ms of CPU on a refused request where httpx spent 4.4 ms
(``bench/refusal_cost.py``, recorded in ``bench/results/SERVE.md``).
Bodies are serialised before the clock starts.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

import aiohttp
import httpx

from cluster.http.headers import (CLASS_HEADER, REFUSAL_HEADER, REPLICA_HEADER, REQUEST_START_HEADER, TPOT_HEADER,
                                  TTFT_HEADER)
from cluster.sim.metrics import summarize
from cluster.sim.node import SimRequest
from cluster.workload.traces import Workload
from node.core.request import SLO
from node.core.attainment import percentile, tokens_on_time


@dataclass
class LiveRecord:
    """What the client saw of one request; times in seconds from the start of the replay."""

    rid: int
    arrival_s: float  # when it was due (the trace)
    prompt_tokens: int
    output_tokens: int  # requested
    sent_s: Optional[float] = None
    status: Optional[int] = None
    token_times: list[float] = field(default_factory=list)
    finish_reason: Optional[str] = None
    error: Optional[str] = None
    node: Optional[str] = None
    retry_after: Optional[str] = None
    refusal: Optional[str] = None  # a 429's reason (the server's x-fairbatching-refusal header)
    done_s: Optional[float] = None  # when the response ended (a refusal's body read, a stream's end)
    slo: Optional[SLO] = None  # the SLO it was sent with (its tier's); None: the run's

    @property
    def completed(self) -> bool:
        return self.status == 200 and self.error is None and self.finish_reason is not None


def auth_headers(api_key: Optional[str]) -> dict[str, str]:
    """``Authorization: Bearer <key>`` when a key is given (the server's ``--api-key``), else nothing."""
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def served_model(url: str, timeout_s: float = 10.0, api_key: Optional[str] = None) -> str:
    """The first model ``GET {url}/v1/models`` lists; ``ValueError`` naming the URL when it cannot be read."""
    try:
        return httpx.get(f"{url.rstrip('/')}/v1/models", timeout=timeout_s,
                         headers=auth_headers(api_key)).json()["data"][0]["id"]
    except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"cannot read the served model from {url}/v1/models: {exc}") from exc


def to_sim_request(rec: LiveRecord, slo: SLO) -> SimRequest:
    """The simulator's view of a live request, so ``summarize`` scores both alike; held to the SLO it
    was sent with, else ``slo``."""
    slo = rec.slo or slo
    req = SimRequest(rec.rid, rec.arrival_s, rec.prompt_tokens, rec.output_tokens, slo)
    req.rejected = rec.status == 429
    req.dropped = not req.rejected and not rec.completed
    times = rec.token_times
    if times:
        req.first_token_s, req.last_token_s = times[0], times[-1]
        req.emitted = len(times)
        req.on_time_arrival, req.on_time_first = tokens_on_time(rec.arrival_s, times, slo)
    if rec.completed and times:
        req.finish_s = times[-1]
    return req


def live_report(records: list[LiveRecord], slo: SLO, offered_span_s: float) -> dict[str, Any]:
    """``summarize`` over the records, plus what only a live run has (status codes, nodes)."""
    report = summarize([to_sim_request(r, slo) for r in records], offered_span_s)
    report["status_codes"] = dict(Counter(str(r.status) for r in records))
    report["errors"] = dict(Counter(r.error.split(":")[0] for r in records if r.error))
    report["requests_per_node"] = dict(Counter(r.node for r in records if r.node))
    refused = [r for r in records if r.status == 429]
    waits = [r.done_s - r.sent_s for r in refused if r.done_s is not None and r.sent_s is not None]
    report["rejection_latency_p50_s"] = percentile(waits, 50)
    report["rejection_latency_p99_s"] = percentile(waits, 99)
    report["rejections_without_retry_after"] = sum(1 for r in refused if not r.retry_after)
    report["rejections_by_reason"] = dict(Counter(r.refusal or "unknown" for r in refused))
    return report


def _prompt_ids(rng: random.Random, n: int, lo: int, hi: int) -> list[int]:
    return [rng.randrange(lo, hi) for _ in range(n)]


def prompt_from_blocks(hash_ids: Sequence[int], prompt_tokens: int, block_tokens: int, rng: random.Random,
                       lo: int, hi: int, salt: int = 0) -> list[int]:
    """Token ids of a prompt whose leading full blocks are named by a trace's ``hash_ids``.

    Block ``h`` is ``block_tokens`` ids drawn from a generator seeded by ``(salt, h)``, so
    prompts that share leading hash ids share those tokens (and an engine's prefix cache
    hits them); the tokens past the named blocks come from ``rng``. Hash ids past the prompt
    (a clipped prompt) are ignored. Ids are in ``[lo, hi)``.
    """
    ids: list[int] = []
    for h in hash_ids[: prompt_tokens // block_tokens]:
        block = random.Random(f"{salt}:{h}")
        ids.extend(block.randrange(lo, hi) for _ in range(block_tokens))
    ids.extend(rng.randrange(lo, hi) for _ in range(prompt_tokens - len(ids)))
    return ids


async def _one(client: aiohttp.ClientSession, endpoint: str, rec: LiveRecord, body: bytes, headers: dict,
               t0: float, timeout_s: float, stamp: bool) -> None:
    rec.sent_s = time.perf_counter() - t0
    if stamp:  # as a front proxy would: the server counts its own queueing in the request's time
        headers = {**headers, REQUEST_START_HEADER: f"t={time.time() * 1e3:.3f}"}
    try:
        async with client.post(endpoint, data=body, headers=headers,
                               timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            rec.status = resp.status
            rec.node = resp.headers.get(REPLICA_HEADER)
            if resp.status != 200:
                rec.retry_after = resp.headers.get("retry-after")
                rec.refusal = resp.headers.get(REFUSAL_HEADER)
                text = (await resp.read()).decode(errors="replace")
                rec.done_s = time.perf_counter() - t0
                rec.error = None if resp.status == 429 else f"http {resp.status}: {text[:200]}"
                return
            async for raw in resp.content:  # one SSE line at a time
                line = raw.decode().rstrip("\r\n")
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                msg = json.loads(data)
                if "error" in msg:
                    rec.error = f"stream error: {msg['error'].get('message')}"
                    return
                n = (msg.get("usage") or {}).get("completion_tokens")
                if n is not None and msg.get("choices"):  # a chunk may carry several tokens
                    now = time.perf_counter() - t0
                    rec.token_times.extend([now] * (n - len(rec.token_times)))
                for choice in msg.get("choices", ()):
                    if choice.get("finish_reason"):
                        rec.finish_reason = choice["finish_reason"]
            rec.done_s = time.perf_counter() - t0
            if rec.finish_reason is None:
                rec.error = "stream ended without a finish reason"
            elif len(rec.token_times) != rec.output_tokens:
                rec.error = f"short output: {len(rec.token_times)} of {rec.output_tokens} tokens"
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, none is silent
        rec.error = f"{type(exc).__name__}: {exc}"


async def replay(
    url: str,
    workload: Workload,
    *,
    model: str,
    slo: SLO | Sequence[SLO],
    slo_headers: bool = True,
    slo_class_header: bool = False,
    token_id_range: tuple[int, int] = (3, 1000),
    max_output_tokens: Optional[int] = None,
    timeout_s: float = 300.0,
    seed: int = 0,
    progress=None,
    request_start_header: bool = True,
    api_key: Optional[str] = None,
    prefix_block_tokens: int = 16,
) -> list[LiveRecord]:
    """Send every request of ``workload`` at its arrival time; return one record per request.

    ``slo`` is every request's SLO, or one per request (SLO tiers); with ``slo_headers`` each
    request carries its own in the ``x-slo-*`` headers, and with ``slo_class_header`` its tier's
    name in ``x-slo-class`` (the server's SLO class of that name). With ``request_start_header`` each request
    carries ``x-request-start`` (its send time, in ms), as a front proxy would set it, so the
    server's arrival stamp is the client's. A request with block hashes (``TraceRequest.hash_ids``,
    one per ``prefix_block_tokens`` tokens) gets a prompt that shares its named blocks' tokens with
    every other request naming them (``prompt_from_blocks``), so the server's prefix caches see the
    trace's sharing; the rest of every prompt is random ids, seeded by ``seed``.
    """
    rng = random.Random(seed)
    slos = [slo] * len(workload.requests) if isinstance(slo, SLO) else list(slo)
    if len(slos) != len(workload.requests):
        raise ValueError(f"{len(slos)} SLOs for {len(workload.requests)} requests")
    base = {"content-type": "application/json", **auth_headers(api_key)}
    records, bodies, headers = [], [], []
    for r, s in zip(workload.requests, slos):
        out = min(r.output_tokens, max_output_tokens) if max_output_tokens else r.output_tokens
        records.append(LiveRecord(r.request_id, r.arrival_s, r.prompt_tokens, out, slo=s))
        h = {**base, TTFT_HEADER: str(s.ttft_s * 1e3), TPOT_HEADER: str(s.tpot_s * 1e3)} if slo_headers else dict(base)
        if slo_class_header and s.tier:
            h[CLASS_HEADER] = s.tier
        headers.append(h)
        bodies.append(json.dumps({
            "model": model,
            "prompt": (prompt_from_blocks(r.hash_ids, r.prompt_tokens, prefix_block_tokens, rng, *token_id_range,
                                          salt=seed) if r.hash_ids else _prompt_ids(rng, r.prompt_tokens, *token_id_range)),
            "max_tokens": out,
            "ignore_eos": True,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        }).encode())
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)  # no pool cap: arrivals are never held back
    endpoint = f"{url.rstrip('/')}/v1/completions"
    async with aiohttp.ClientSession(connector=connector) as client:
        t0 = time.perf_counter()
        tasks = []
        for rec, body, hdrs in zip(records, bodies, headers):
            delay = t0 + rec.arrival_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(_one(client, endpoint, rec, body, hdrs, t0, timeout_s, request_start_header))
            if progress is not None:
                task.add_done_callback(lambda _: progress())
            tasks.append(task)
        await asyncio.gather(*tasks)
    return records


def prompt_token_counts(url: str, api_key: Optional[str] = None, timeout_s: float = 10.0) -> Optional[dict[str, int]]:
    """The server's prompt-token counters, summed over its nodes and routers (``None`` when its status
    cannot be read): ``charged`` (by the nodes' budgets), ``computed`` (by vLLM), ``router_charged`` and
    ``router_placed`` (every prompt token the routers placed); each since the server started."""
    try:
        snap = httpx.get(f"{url.rstrip('/')}/v1/fairbatching/status", timeout=timeout_s,
                         headers=auth_headers(api_key)).json()
        nodes, routers = snap["nodes"].values(), (snap.get("routers") or {}).values()
        return {"charged": sum(n.get("prompt_tokens_charged", 0) for n in nodes),
                "computed": sum(n.get("prompt_tokens_computed", 0) for n in nodes),
                "router_charged": sum(r.get("prompt_tokens_charged", 0) for r in routers),
                "router_placed": sum(r.get("prompt_tokens_placed", 0) for r in routers)}
    except (httpx.HTTPError, KeyError, TypeError, ValueError, AttributeError):
        return None


def prompt_token_report(before: Optional[dict[str, int]], after: Optional[dict[str, int]]) -> Optional[dict]:
    """What a run added to ``prompt_token_counts``, with ``charged / computed`` (None when either is unknown).

    Counts every request the server finished prefilling in between, this run's and any other client's."""
    if before is None or after is None:
        return None
    delta = {k: after[k] - before.get(k, 0) for k in after}
    delta["charged_over_computed"] = delta["charged"] / delta["computed"] if delta["computed"] else None
    return delta


def records_to_json(records: list[LiveRecord]) -> list[dict]:
    return [asdict(r) for r in records]
