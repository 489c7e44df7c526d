"""CPU spent per refused request, per process, with the load generator's HTTP client and httpx.

Starts the embedded default on a local Ray cluster with an admission cap of one token (every request
is refused with a 429), sends ``--requests`` streamed ``/v1/completions`` requests at ``--rate`` req/s
from a client in a child process (aiohttp, as ``cluster/workload/loadgen.py``, then httpx), and prints the
CPU seconds each process group used, divided by the number of requests. Background work (the Serve
controller, the registry, the engines' report loops) is spread over the requests too: compare the
rows between clients, not as absolute costs. Results are recorded in ``bench/results/SERVE.md``.

    .venv/bin/python bench/refusal_cost.py [--requests 600] [--rate 40]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import typer

CLIENT = r'''
import asyncio, json, os, sys
url, model, n, rate, kind = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
body = json.dumps({"model": model, "prompt": [5] * 512, "max_tokens": 32, "stream": True}).encode()
headers = {"content-type": "application/json"}
codes = {}

async def main():
    if kind == "aiohttp":
        import aiohttp
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            async def one():
                async with s.post(url + "/v1/completions", data=body, headers=headers) as r:
                    await r.read()
                    codes[r.status] = codes.get(r.status, 0) + 1
            await fire(one)
    else:
        import httpx
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=None)) as c:
            async def one():
                async with c.stream("POST", url + "/v1/completions", content=body, headers=headers) as r:
                    await r.aread()
                    codes[r.status_code] = codes.get(r.status_code, 0) + 1
            await fire(one)

async def fire(one):
    tasks = []
    for _ in range(n):
        tasks.append(asyncio.create_task(one()))
        await asyncio.sleep(1 / rate)
    await asyncio.gather(*tasks)

t0 = os.times()
asyncio.run(main())
t1 = os.times()
print(json.dumps({"codes": codes, "cpu_s": t1.user + t1.system - t0.user - t0.system}))
'''

GROUPS = (  # (name, substring of the command line), first match wins
    ("haproxy", "haproxy"),
    ("ingress replica", "ServeReplica:fairbatching:ingress"),
    ("engine replicas", "ServeReplica:fairbatching:engine"),
    ("engine cores", "VLLM::"),
    ("PAB registry", "PABRegistry"),
    ("Serve controller", "ServeController"),
    ("Serve proxy", "Prox"),
    ("other Ray processes", "ray"),
)


def cpu_by_group() -> dict[str, float]:
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        for name, needle in GROUPS:
            if needle in cmd:
                out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
                break
    return out


app = typer.Typer(add_completion=False)


@app.command(help=__doc__.splitlines()[0])
def main(
    requests: int = typer.Option(600, help="Streamed requests each client sends (every one is refused)."),
    rate: float = typer.Option(40.0, help="Send rate, req/s."),
) -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import json

    import httpx
    import ray
    from ray import serve

    from cluster.app import deploy, use_serve_env

    from cluster.config import ServeConfig
    from cluster.net import free_port
    from node.vllm.engine_setup import machine_name

    use_serve_env()
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        cfg = ServeConfig(port=free_port(), admission_cap=1)
        url = deploy(cfg)
        while httpx.get(f"{url}/health", timeout=10).json().get("engines") != cfg.engines:
            time.sleep(1.0)
        print(f"{machine_name()}: {requests} requests at {rate:g} req/s, every one refused; "
              "CPU ms per request")
        for kind in ("aiohttp", "httpx"):
            before = cpu_by_group()
            res = subprocess.run([sys.executable, "-c", CLIENT, url, cfg.served_model_name, str(requests),
                                  str(rate), kind], capture_output=True, text=True, check=True)
            after = cpu_by_group()
            client = json.loads(res.stdout)
            per = {k: (after.get(k, 0.0) - before.get(k, 0.0)) * 1e3 / requests for k in after}
            print(f"client {kind}: statuses {client['codes']}")
            print(f"  client {client['cpu_s'] * 1e3 / requests:.2f}; "
                  + "; ".join(f"{k} {v:.2f}" for k, v in sorted(per.items())))
            time.sleep(2.0)
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    app()
