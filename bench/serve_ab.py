"""Live A/B: two CPU engines behind the PAB router vs. the same engines behind Ray Serve's default router.

Each arm starts its own local Ray cluster (``address="local"``), deploys the
app with ``router`` = ``pab`` or ``serve-default`` (Serve's power-of-two
choices on in-flight requests, no admission control), replays the same trace
window with ``cluster.workload.loadgen`` and records the report ``fairbatching sim run``
writes. Both arms run the FairBatching node scheduler; only the router differs.

    .venv/bin/python bench/serve_ab.py --json bench/results/serve-ab-cpu.json
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Optional

import typer

from cluster.net import free_port

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "serve-ab-cpu.json"


def run_arm(router: str, workload, *, ttft_slo: float, tpot_slo: float, scheduler: str, max_output_tokens: int,
            seed: int) -> dict:
    import ray
    from ray import serve

    from cluster.app import deploy, use_serve_env

    from cluster.config import ServeConfig
    from cluster.workload.loadgen import live_report, replay
    from node.core.request import SLO

    use_serve_env()
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        cfg = ServeConfig(port=free_port(), router=router, ttft_slo_s=ttft_slo, tpot_slo_s=tpot_slo,
                          scheduler=scheduler)
        t = time.perf_counter()
        url = deploy(cfg)
        started_s = time.perf_counter() - t
        import httpx

        for _ in range(3):  # warm both engines
            httpx.post(f"{url}/v1/completions", json={"model": cfg.served_model_name, "prompt": "w1 w2", "max_tokens": 2},
                       timeout=120)
        slo = SLO(ttft_slo, tpot_slo)
        records = asyncio.run(replay(url, workload, model=cfg.served_model_name, slo=slo,
                                     max_output_tokens=max_output_tokens, seed=seed))
        span = workload.requests[-1].arrival_s - workload.requests[0].arrival_s
        report = live_report(records, slo, span)
        report["deploy_s"] = started_s
        report["router"] = router
        report["status"] = httpx.get(f"{url}/v1/fairbatching/status", timeout=10).json()
        return report
    finally:
        serve.shutdown()
        ray.shutdown()


app = typer.Typer(add_completion=False)


@app.command(help=__doc__.splitlines()[0])
def main(
    trace: str = typer.Option("azure-code", help="Trace name or file (as fairbatching load)."),
    start_s: float = typer.Option(0.0, help="Start of the trace window, trace seconds."),
    duration_s: float = typer.Option(60.0, help="Length of the trace window, trace seconds."),
    rate_scale: float = typer.Option(1.5, help="Multiply the arrival rate by this."),
    max_prompt_tokens: int = typer.Option(512, help="Clip longer prompts."),
    max_output_tokens: int = typer.Option(32, help="Clip longer outputs."),
    ttft_slo: Optional[float] = typer.Option(None, help="TTFT SLO, seconds (default: the embedded default's)."),
    tpot_slo: Optional[float] = typer.Option(None, help="TPOT SLO, seconds (default: the embedded default's)."),
    scheduler: str = typer.Option("fairbatching", help="Node scheduler of both arms: fairbatching or vllm."),
    arms: str = typer.Option("pab,serve-default,serve-default,pab",
                             help="Routers in run order; the default ABBA order cancels a linear drift of machine load."),
    settle_s: float = typer.Option(15.0, help="Pause between arms (processes wind down)."),
    seed: int = typer.Option(0, help="Seed of the prompt token ids."),
    json_out: Path = typer.Option(DEFAULT_JSON, "--json", help="Where to write both arms' reports."),
) -> None:
    os.environ["RAY_AUTH_MODE"] = "disabled"

    from cluster.config import embedded_default_slo
    from cluster.workload.traces import load_named, prepare
    from node.vllm.engine_setup import machine_name

    slo = embedded_default_slo()
    ttft_slo, tpot_slo = ttft_slo or slo.ttft_s, tpot_slo or slo.tpot_s
    w = prepare(load_named(trace), start_s=start_s, duration_s=duration_s,
                rate_scale=rate_scale, max_prompt_tokens=max_prompt_tokens)
    result = {
        "machine": machine_name(),
        "what": "two CPU vLLM engines (tiny random-weight Llama, FairBatching scheduler) on one machine; "
                "PAB router with admission vs Ray Serve's default router (power of two, no admission)",
        "workload": {"trace": trace, "start_s": start_s, "duration_s": duration_s,
                     "rate_scale": rate_scale, "max_prompt_tokens": max_prompt_tokens,
                     "max_output_tokens": max_output_tokens, "requests": len(w), "offered_rps": w.rate_rps,
                     "transforms": list(w.transforms)},
        "slo": {"ttft_s": ttft_slo, "tpot_s": tpot_slo},
        "scheduler": scheduler,
        "arms": {},
    }
    keys = ("requests", "attainment", "admitted_attainment", "rejected", "dropped", "ttft_p50", "ttft_p90",
            "ttft_p99", "tpot_p50", "tpot_p99", "goodput_rps")
    for i, arm in enumerate(arms.split(",")):
        if i:
            time.sleep(settle_s)
        load_before = os.getloadavg()
        rep = run_arm(arm, w, ttft_slo=ttft_slo, tpot_slo=tpot_slo, scheduler=scheduler,
                      max_output_tokens=max_output_tokens, seed=seed)
        rep["loadavg_before"], rep["loadavg_after"] = load_before, os.getloadavg()
        result["arms"][f"{arm}#{i + 1}"] = rep
        print(f"{arm}#{i + 1}", {k: rep.get(k) for k in keys}, "load", rep["loadavg_before"], flush=True)
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=1, default=str) + "\n")


if __name__ == "__main__":
    app()
