"""Live A/B: two CPU engines behind the PAB router vs. the same engines behind Ray Serve's default router.

Each arm starts its own local Ray cluster (``address="local"``), deploys the
app with ``router`` = ``pab`` or ``serve-default`` (Serve's power-of-two
choices on in-flight requests, no admission control), replays the same trace
window with ``cluster.workload.loadgen`` and records the report ``fairbatching sim run``
writes. Both arms run the FairBatching node scheduler; only the router differs.

    .venv/bin/python bench/serve_ab.py --json bench/results/serve-ab-cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cluster.net import free_port  # noqa: E402


def run_arm(router: str, workload, args) -> dict:
    import ray
    from ray import serve

    from cluster.app import ServeConfig, deploy, use_serve_env
    from cluster.workload.loadgen import live_report, replay
    from node.core.request import SLO

    use_serve_env()
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        cfg = ServeConfig(port=free_port(), router=router, ttft_slo_s=args.ttft_slo, tpot_slo_s=args.tpot_slo,
                          scheduler=args.scheduler)
        t = time.perf_counter()
        url = deploy(cfg)
        started_s = time.perf_counter() - t
        import httpx

        for _ in range(3):  # warm both engines
            httpx.post(f"{url}/v1/completions", json={"model": cfg.served_model_name, "prompt": "w1 w2", "max_tokens": 2},
                       timeout=120)
        slo = SLO(args.ttft_slo, args.tpot_slo)
        records = asyncio.run(replay(url, workload, model=cfg.served_model_name, slo=slo,
                                     max_output_tokens=args.max_output_tokens, seed=args.seed))
        span = workload.requests[-1].arrival_s - workload.requests[0].arrival_s
        report = live_report(records, slo, span)
        report["deploy_s"] = started_s
        report["router"] = router
        report["status"] = httpx.get(f"{url}/v1/fairbatching/status", timeout=10).json()
        return report
    finally:
        serve.shutdown()
        ray.shutdown()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", default="azure-code", help="trace name or file (as fairbatching load)")
    ap.add_argument("--start-s", type=float, default=0.0, help="start of the trace window, trace seconds")
    ap.add_argument("--duration-s", type=float, default=60.0, help="length of the trace window, trace seconds")
    ap.add_argument("--rate-scale", type=float, default=1.5, help="multiply the arrival rate by this")
    ap.add_argument("--max-prompt-tokens", type=int, default=512, help="clip longer prompts")
    ap.add_argument("--max-output-tokens", type=int, default=32, help="clip longer outputs")
    ap.add_argument("--ttft-slo", type=float, default=2.0, help="TTFT SLO, seconds")
    ap.add_argument("--tpot-slo", type=float, default=0.25, help="TPOT SLO, seconds")
    ap.add_argument("--scheduler", default="fairbatching", help="node scheduler of both arms: fairbatching or vllm")
    ap.add_argument("--arms", default="pab,serve-default,serve-default,pab",
                    help="Routers in run order; the default ABBA order cancels a linear drift of machine load.")
    ap.add_argument("--settle-s", type=float, default=15.0, help="Pause between arms (processes wind down).")
    ap.add_argument("--seed", type=int, default=0, help="seed of the prompt token ids")
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "serve-ab-cpu.json",
                    help="where to write both arms' reports")
    args = ap.parse_args(argv)
    os.environ["RAY_AUTH_MODE"] = "disabled"

    from cluster.workload.traces import load_named, prepare
    from node.vllm.engine_setup import machine_name

    w = prepare(load_named(args.trace), start_s=args.start_s, duration_s=args.duration_s,
                rate_scale=args.rate_scale, max_prompt_tokens=args.max_prompt_tokens)
    result = {
        "machine": machine_name(),
        "what": "two CPU vLLM engines (tiny random-weight Llama, FairBatching scheduler) on one machine; "
                "PAB router with admission vs Ray Serve's default router (power of two, no admission)",
        "workload": {"trace": args.trace, "start_s": args.start_s, "duration_s": args.duration_s,
                     "rate_scale": args.rate_scale, "max_prompt_tokens": args.max_prompt_tokens,
                     "max_output_tokens": args.max_output_tokens, "requests": len(w), "offered_rps": w.rate_rps,
                     "transforms": list(w.transforms)},
        "slo": {"ttft_s": args.ttft_slo, "tpot_s": args.tpot_slo},
        "scheduler": args.scheduler,
        "arms": {},
    }
    keys = ("requests", "attainment", "admitted_attainment", "rejected", "dropped", "ttft_p50", "ttft_p90",
            "ttft_p99", "tpot_p50", "tpot_p99", "goodput_rps")
    for i, arm in enumerate(args.arms.split(",")):
        if i:
            time.sleep(args.settle_s)
        load_before = os.getloadavg()
        rep = run_arm(arm, w, args)
        rep["loadavg_before"], rep["loadavg_after"] = load_before, os.getloadavg()
        result["arms"][f"{arm}#{i + 1}"] = rep
        print(f"{arm}#{i + 1}", {k: rep.get(k) for k in keys}, "load", rep["loadavg_before"], flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
