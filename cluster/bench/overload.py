"""Overload benchmark: goodput and admitted attainment from half the capacity to many times it, at the client.

Each *arm* is one way to run the same cluster (two tiny CPU engines by default):

* ``pab``: our router, PAB placement and admission (the product);
* ``serve-default``: Ray Serve's default router (power of two choices, no admission);
* ``inflight-cap``: our router with power-of-two placement and a static cap on
  requests in flight per engine (the simplest admission control), the cap set by
  Little's law from the capacity run (mean requests in flight per engine there).

Capacity is measured first, in the same run, on ``serve-default`` (no
admission): the highest offered rate of a ramp whose attainment is at least
``capacity_attainment``. Then every arm is swept over ``multiples`` of it with
Poisson arrivals of streamed ``/v1/completions`` requests (``cluster.workload.loadgen``:
real HTTP, TTFT and TPOT timed at the client, a 429 counted as rejected).
A run also measures the PAB path's added latency against the default router
at low load. Nothing here is simulated.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from cluster.workload.traces import TraceRequest, Workload
from cluster.config import embedded_default_slo

ARMS = ("pab", "serve-default", "inflight-cap")


@dataclass(frozen=True)
class OverloadConfig:
    """What one overload run sends and how it judges it."""

    prompt_tokens: int = 512
    output_tokens: int = 32
    ttft_slo_s: float = field(default_factory=lambda: embedded_default_slo().ttft_s)
    tpot_slo_s: float = field(default_factory=lambda: embedded_default_slo().tpot_s)
    duration_s: float = 30.0  # seconds of arrivals per offered rate
    multiples: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
    ramp_rps: tuple[float, ...] = (2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0)
    capacity_attainment: float = 0.9
    low_load_rps: float = 1.0
    settle_s: float = 5.0  # pause between rates, so one rate's tail does not load the next
    seed: int = 0
    timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.prompt_tokens < 1 or self.output_tokens < 1:
            raise ValueError("prompt_tokens and output_tokens must be >= 1")
        if self.duration_s <= 0 or not self.multiples or any(m <= 0 for m in self.multiples):
            raise ValueError("duration_s and every multiple must be > 0")
        if not 0 < self.capacity_attainment <= 1:
            raise ValueError("capacity_attainment must be in (0, 1]")


def poisson_workload(rate_rps: float, duration_s: float, prompt_tokens: int, output_tokens: int,
                     seed: int) -> Workload:
    """Poisson arrivals at ``rate_rps`` for ``duration_s`` seconds, every request of the same lengths."""
    rng = np.random.default_rng(seed)
    n = max(2, int(round(rate_rps * duration_s)))
    gaps = rng.exponential(1.0 / rate_rps, n)
    arrivals = np.cumsum(gaps) - gaps[0]
    requests = [TraceRequest(i, float(t), prompt_tokens, output_tokens) for i, t in enumerate(arrivals)]
    return Workload(requests, name=f"poisson-{rate_rps:g}rps", source=f"Poisson {rate_rps:g} req/s, seed {seed}")


def run_rate(url: str, model: str, rate_rps: float, cfg: OverloadConfig, *, seed: int,
             api_key: Optional[str] = None) -> dict[str, Any]:
    """Offer ``rate_rps`` to ``url`` for ``cfg.duration_s``; the live report plus the offered rate."""
    from cluster.workload.loadgen import live_report, replay
    from node.core.request import SLO

    slo = SLO(cfg.ttft_slo_s, cfg.tpot_slo_s)
    w = poisson_workload(rate_rps, cfg.duration_s, cfg.prompt_tokens, cfg.output_tokens, seed)
    t0 = time.perf_counter()
    records = asyncio.run(replay(url, w, model=model, slo=slo, timeout_s=cfg.timeout_s, seed=seed, api_key=api_key))
    wall = time.perf_counter() - t0
    report = live_report(records, slo, w.requests[-1].arrival_s)
    report["rate_rps"] = rate_rps
    report["wall_s"] = wall
    # Little's law: mean requests in flight = arrival rate x mean time in the system (admitted ones).
    spans = [r.done_s - r.sent_s for r in records if r.status == 200 and r.done_s is not None and r.sent_s is not None]
    report["mean_in_flight"] = (len(spans) / w.requests[-1].arrival_s) * (sum(spans) / len(spans)) if spans else 0.0
    report["lost"] = sum(1 for r in records if r.status is None)
    return report


def measure_capacity(url: str, model: str, cfg: OverloadConfig,
                     progress: Callable[[str], None] = print) -> tuple[float, list[dict]]:
    """The highest ramp rate whose attainment is >= ``cfg.capacity_attainment``.

    A rate that misses is run once more (a transient on a shared machine, such as
    a stall while a fresh cluster settles, must not end the ramp); the ramp stops
    at the first rate that misses twice. Every run is in the returned rows.
    """
    rows: list[dict] = []
    capacity = 0.0
    for rate in cfg.ramp_rps:
        for attempt in range(2):
            rep = run_rate(url, model, rate, cfg, seed=cfg.seed + attempt)
            rows.append(rep)
            attained = rep["attainment"] is not None and rep["attainment"] >= cfg.capacity_attainment
            progress(f"capacity ramp {rate:g} req/s: attainment {_fmt(rep['attainment'])}"
                     + ("" if attained or attempt else " (missed: once more)"))
            time.sleep(cfg.settle_s)
            if attained:
                break
        if not attained:
            break
        capacity = rate
    return capacity, rows


@contextlib.contextmanager
def local_cluster(overrides: dict[str, Any], *, warmup: int = 4) -> Iterator[tuple[str, Any]]:
    """A fresh local Ray cluster serving the embedded default with ``overrides``: ``(url, ServeConfig)``."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from cluster.app import deploy, use_serve_env
    from cluster.config import ServeConfig

    use_serve_env()  # as fairbatching serve runs a local cluster
    import httpx
    import ray
    from ray import serve

    from cluster.net import free_port

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        cfg = ServeConfig(port=free_port(), **overrides)
        url = deploy(cfg)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        for i in range(warmup):  # compile and warm both engines
            httpx.post(f"{url}/v1/completions", timeout=120, json={
                "model": cfg.served_model_name, "prompt": [3 + i] * 64, "max_tokens": 4, "ignore_eos": True})
        yield url, cfg
    finally:
        serve.shutdown()
        ray.shutdown()


def arm_overrides(arm: str, cfg: OverloadConfig, in_flight_cap: Optional[int]) -> dict[str, Any]:
    base = {"ttft_slo_s": cfg.ttft_slo_s, "tpot_slo_s": cfg.tpot_slo_s}
    if arm == "pab":
        return {**base, "router": "pab", "balancer": "pab"}
    if arm == "serve-default":
        return {**base, "router": "serve-default"}
    if arm == "inflight-cap":
        return {**base, "router": "pab", "balancer": "power-of-two", "max_in_flight": in_flight_cap,
                "shed_after_fraction": None}
    raise ValueError(f"unknown arm {arm!r}; choose among {', '.join(ARMS)}")


@dataclass
class OverloadResult:
    machine: str
    config: dict[str, Any]
    capacity_rps: float
    capacity_ramp: list[dict] = field(default_factory=list)
    in_flight_cap: Optional[int] = None
    arms: dict[str, list[dict]] = field(default_factory=dict)  # arm -> one report per offered rate
    low_load: dict[str, dict] = field(default_factory=dict)  # arm -> report at cfg.low_load_rps
    status: dict[str, Any] = field(default_factory=dict)  # arm -> the cluster's status after its sweep

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sweep(url: str, model: str, capacity_rps: float, cfg: OverloadConfig,
          progress: Callable[[str], None] = print, api_key: Optional[str] = None) -> list[dict]:
    rows = []
    for i, m in enumerate(cfg.multiples):
        if i:
            time.sleep(cfg.settle_s)
        rep = run_rate(url, model, m * capacity_rps, cfg, seed=cfg.seed + i, api_key=api_key)
        rep["multiple"] = m
        rows.append(rep)
        progress(f"  {m:g}x = {m * capacity_rps:g} req/s: admitted attainment "
                 f"{_fmt(rep['admitted_attainment'])}, goodput {rep['goodput_rps']:.2f} req/s, "
                 f"rejected {rep['rejected']}/{rep['requests']}, 429 p99 {_fmt(rep['rejection_latency_p99_s'], 's')}")
    return rows


def _fmt(v: Optional[float], unit: str = "") -> str:
    return "-" if v is None else f"{v:.2f}{unit}"


def run_local(arms: tuple[str, ...], cfg: OverloadConfig, *, capacity_rps: Optional[float] = None,
              in_flight_cap: Optional[int] = None, progress: Callable[[str], None] = print) -> OverloadResult:
    """Capacity on ``serve-default`` (unless given), then every arm's sweep, each on a fresh local cluster."""
    from node.vllm.engine_setup import machine_name

    result = OverloadResult(machine_name(), asdict(cfg), capacity_rps or 0.0)
    if capacity_rps is None:
        with local_cluster(arm_overrides("serve-default", cfg, None)) as (url, scfg):
            progress("measuring capacity on serve-default (no admission) ...")
            result.capacity_rps, result.capacity_ramp = measure_capacity(url, scfg.served_model_name, cfg, progress)
        if result.capacity_rps <= 0:
            raise RuntimeError(f"no ramp rate attained {cfg.capacity_attainment:.0%}; lower --ramp")
    if in_flight_cap is None:
        at_capacity = [r for r in result.capacity_ramp if r["rate_rps"] == result.capacity_rps]
        from cluster.config import ServeConfig

        mean = at_capacity[-1]["mean_in_flight"] if at_capacity else result.capacity_rps * 2.0
        in_flight_cap = max(1, math.ceil(mean / ServeConfig().engines))
    result.in_flight_cap = in_flight_cap
    for arm in arms:
        with local_cluster(arm_overrides(arm, cfg, in_flight_cap)) as (url, scfg):
            progress(f"{arm}: low load {cfg.low_load_rps:g} req/s ...")
            low = run_rate(url, scfg.served_model_name, cfg.low_load_rps, replace(cfg, duration_s=max(cfg.duration_s, 30)),
                           seed=cfg.seed + 100)
            result.low_load[arm] = low
            time.sleep(cfg.settle_s)
            progress(f"{arm}: sweep over {', '.join(f'{m:g}x' for m in cfg.multiples)} of {result.capacity_rps:g} req/s")
            result.arms[arm] = sweep(url, scfg.served_model_name, result.capacity_rps, cfg, progress)
            result.status[arm] = _status(url)
    return result


def run_url(url: str, label: str, cfg: OverloadConfig, capacity_rps: float,
            progress: Callable[[str], None] = print, api_key: Optional[str] = None) -> OverloadResult:
    """One arm against a running endpoint (its capacity must be given: a ramp would need no admission)."""
    from cluster.workload.loadgen import served_model
    from node.vllm.engine_setup import machine_name

    model = served_model(url, api_key=api_key)
    result = OverloadResult(machine_name(), asdict(cfg), capacity_rps)
    result.low_load[label] = run_rate(url, model, cfg.low_load_rps, cfg, seed=cfg.seed + 100, api_key=api_key)
    result.arms[label] = sweep(url, model, capacity_rps, cfg, progress, api_key)
    result.status[label] = _status(url, api_key)
    return result


def _status(url: str, api_key: Optional[str] = None) -> dict:
    import httpx

    from cluster.workload.loadgen import auth_headers

    try:
        return httpx.get(f"{url}/v1/fairbatching/status", timeout=10, headers=auth_headers(api_key)).json()
    except Exception as exc:  # noqa: BLE001 - status is informative only
        return {"error": repr(exc)}


def plot(result: OverloadResult, path: Path) -> Path:
    """Goodput and admitted attainment against the offered rate, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result.config
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for arm, rows in result.arms.items():
        x = [r["rate_rps"] for r in rows]
        ax1.plot(x, [r["goodput_rps"] for r in rows], marker="o", label=arm)
        ax2.plot(x, [r["admitted_attainment"] or 0.0 for r in rows], marker="o", label=arm)
    for ax in (ax1, ax2):
        ax.axvline(result.capacity_rps, color="grey", ls=":", lw=0.8)
        ax.set_xlabel("offered rate (req/s, Poisson)")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    ax1.set_ylabel("goodput (requests meeting both SLOs per s)")
    ax2.set_ylabel("admitted attainment")
    ax2.axhline(0.95, color="grey", ls="--", lw=0.8)
    ax2.set_ylim(0, 1.05)
    ax1.legend()
    fig.suptitle(f"overload at the client: {cfg['prompt_tokens']}-token prompts, {cfg['output_tokens']} output tokens, "
                 f"SLO {cfg['ttft_slo_s']:g} s / {cfg['tpot_slo_s'] * 1e3:g} ms; capacity {result.capacity_rps:g} "
                 f"req/s (dotted); {result.machine}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
