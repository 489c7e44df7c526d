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

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cluster.net import free_port  # noqa: E402


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
                    key = r.headers.get("x-fairbatching-replica") or str(r.status_code)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, required=True, help="where to write the trace")
    ap.add_argument("--png", type=Path, help="plot (default: next to --json)")
    ap.add_argument("--clients", type=int, default=12, help="closed-loop clients (each sends its next request on reply)")
    ap.add_argument("--seconds", type=float, default=25.0, help="how long the clients send")
    ap.add_argument("--every", type=float, default=0.5, help="seconds between two polls of the status")
    ap.add_argument("--router", default="pab", help="pab or serve-default")
    ap.add_argument("--node-config", default="{}", help="NodeConfig overrides, JSON (e.g. a step_log)")
    args = ap.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import httpx
    import ray

    from cluster.app import ServeConfig, deploy, use_serve_env

    use_serve_env()
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        cfg = ServeConfig(port=free_port(), router=args.router, node_config=json.loads(args.node_config))
        url = deploy(cfg)
        for _ in range(3):
            httpx.post(f"{url}/v1/completions", json={"model": cfg.served_model_name, "prompt": "w1 w2",
                                                      "max_tokens": 2}, timeout=120)
        rows: list[dict] = []
        placed: dict[str, int] = {}
        lock = threading.Lock()
        t0 = time.monotonic()
        threads = _clients(url, cfg.served_model_name, args.clients, t0 + args.seconds, placed, lock)
        while time.monotonic() < t0 + args.seconds + 2:
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
            time.sleep(args.every)
        for t in threads:
            t.join(timeout=60)
        out = {"router": args.router, "clients": args.clients, "seconds": args.seconds,
               "placed": placed, "decisions": snap.get("decisions"), "rows": rows}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
        _plot(rows, args.png or args.json.with_suffix(".png"), f"router {args.router}, {args.clients} clients")
        print(json.dumps({"placed": placed, "decisions": out["decisions"]}))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
