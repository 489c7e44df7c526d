"""Trace every engine's PAB and its parts while a closed-loop load runs.

Starts a local Ray cluster with the app (``ServeConfig`` defaults: two tiny CPU
engines behind the PAB router), runs ``--clients`` closed-loop streaming
clients for ``--seconds``, and polls ``/v1/fairbatching/status`` every
``--every`` seconds. Writes one JSON (a row per node per poll: PAB, its
source, R, W, KV headroom, the step-time model the replica plans with, in
flight, placements) and a PNG of PAB and placements per node, so a
placement imbalance can be read off and explained.

    .venv/bin/python bench/pab_trace.py --json bench/results/pab-trace.json
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Optional

import typer

from cluster.http.headers import REPLICA_HEADER
from cluster.net import free_port


def _clients(url: str, model: str, n: int, stop_at: float, placed: dict, lock: threading.Lock) -> list:
    import httpx

    def client(i: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            k = 0
            while time.monotonic() < stop_at:
                words = " ".join(f"w{(i * 7 + j) % 50}" for j in range(8 + (k * 37 + i * 11) % 200))
                body = {"model": model, "prompt": words, "max_tokens": 16 + (k % 3) * 16}
                r = c.post("/v1/completions", json=body)
                with lock:
                    key = r.headers.get(REPLICA_HEADER) or str(r.status_code)
                    placed[key] = placed.get(key, 0) + 1
                k += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    return threads


def _plot(rows: list[dict], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nodes = sorted({r["replica"] for r in rows})
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for n in nodes:
        mine = [r for r in rows if r["replica"] == n]
        t = [r["t_s"] for r in mine]
        ax1.plot(t, [r["pab_tokens"] / 1e3 for r in mine], label=f"{n[:8]} PAB")
        ax2.plot(t, [r.get("in_flight") or 0 for r in mine], label=f"{n[:8]} in flight")
    ax1.set_ylabel("PAB, k tokens")
    ax2.set_ylabel("requests in flight")
    ax2.set_xlabel("s since load start")
    ax1.legend()
    ax2.legend()
    ax1.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


app = typer.Typer(add_completion=False)


@app.command(help=__doc__.split("\n\n")[0])
def main(
    json_out: Path = typer.Option(..., "--json", help="Where to write the trace."),
    png: Optional[Path] = typer.Option(None, help="Plot (default: next to --json)."),
    clients: int = typer.Option(12, help="Closed-loop clients (each sends its next request on reply)."),
    seconds: float = typer.Option(25.0, help="How long the clients send."),
    every: float = typer.Option(0.5, help="Seconds between two polls of the status."),
    router: str = typer.Option("pab", help="pab or serve-default."),
    node_config: str = typer.Option("{}", help="NodeConfig overrides, JSON (e.g. a step_log)."),
) -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import httpx
    import ray

    from cluster.app import deploy, use_serve_env

    from cluster.config import ServeConfig

    use_serve_env()
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        cfg = ServeConfig(port=free_port(), router=router, node_config=json.loads(node_config))
        url = deploy(cfg)
        for _ in range(3):
            httpx.post(f"{url}/v1/completions", json={"model": cfg.served_model_name, "prompt": "w1 w2",
                                                      "max_tokens": 2}, timeout=120)
        rows: list[dict] = []
        placed: dict[str, int] = {}
        lock = threading.Lock()
        t0 = time.monotonic()
        threads = _clients(url, cfg.served_model_name, clients, t0 + seconds, placed, lock)
        while time.monotonic() < t0 + seconds + 2:
            try:
                snap = httpx.get(f"{url}/v1/fairbatching/status", timeout=5).json()
            except httpx.HTTPError:
                snap = {"nodes": {}}
            now = time.monotonic() - t0
            for key, n in snap.get("nodes", {}).items():
                rows.append({"t_s": round(now, 2), "replica": key, "deployment_model": snap.get("deployment_model"),
                             **{k: n.get(k) for k in (
                    "pab_tokens", "pab_tokens_debited", "pab_model", "own_model", "prefill_rate_tps", "queued_tokens",
                    "kv_headroom_tokens", "kv_usage", "in_flight", "waiting", "model", "finished",
                    "scheduler_steps", "report_age_s")}})
            time.sleep(every)
        for t in threads:
            t.join(timeout=60)
        out = {"router": router, "clients": clients, "seconds": seconds,
               "placed": placed, "decisions": snap.get("decisions"), "rows": rows}
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(out, indent=1))
        _plot(rows, png or json_out.with_suffix(".png"), f"router {router}, {clients} clients")
        print(json.dumps({"placed": placed, "decisions": out["decisions"]}))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    app()
