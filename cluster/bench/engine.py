"""Live A/B on one real vLLM engine: a trace replayed in real time, FairBatching against vLLM's scheduler.

Each (arm, rate) runs in a fresh child process (``python -m cluster.bench.engine``)
with its own in-process engine, so the arms share nothing but the machine.
Arms:

* ``fairbatching`` -- ``FairBatchingScheduler`` applying the FairBatching plan;
* ``vllm`` -- vLLM's own scheduling, untouched: the same scheduler class in
  observe mode (``apply_plan=False``), so the step times and the step-time
  model's error are measured by the same instrument;
* ``fairbatching-static`` -- FairBatching planning with the profile as fitted,
  no online refit (isolates what the refit does on a noisy machine);
* ``sarathi`` (optional) -- the Sarathi baseline plan applied.

All arms start from the same profile; all but ``fairbatching-static`` refit it online. The replay loop adds
each request when its (scaled) arrival time has passed, then steps the engine;
TTFT is from that moment to the first token returned by a step, TPOT is
``(t_last - t_first) / (n - 1)``. A request attains when TTFT <= its TTFT SLO
and TPOT <= its TPOT SLO. The step-time model's prediction error is computed
from the step log (predicted vs measured, per step).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import typer

from node.core.attainment import mean_tpot_s, meets_slo, percentile
from node.core.request import SLO, SLO_TPOT_KEY, SLO_TTFT_KEY

Arm = Literal["fairbatching", "fairbatching-static", "vllm", "sarathi"]
ARMS: tuple[str, ...] = get_args(Arm)


@dataclass(frozen=True)
class ArmRun:
    """One (arm, rate) of the A/B: what the child process runs."""

    arm: Arm
    rate: float
    model: str
    profile: str
    trace: str = "azure-conv"
    num_requests: int = 60
    ttft_slo_s: float = 1.0
    tpot_slo_s: float = 0.1
    max_prompt_tokens: int = 1024
    max_output_tokens: int = 128
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 512
    fb_knobs: str = "{}"  # JSON: FairBatchingConfig knobs of the fairbatching arms

    def argv(self) -> list[str]:
        """The child's command line: ``--field value`` for every field, as ``main`` reads them."""
        out = []
        for name, value in asdict(self).items():
            out += [f"--{name.replace('_', '-')}", str(value)]
        return out


@dataclass(frozen=True)
class BenchRequest:
    request_id: str
    arrival_s: float
    prompt_tokens: int
    output_tokens: int


def build_trace(
    trace: str, *, num_requests: int, rate_rps: float, max_prompt_tokens: int, max_output_tokens: int,
    start_s: float = 0.0,
) -> list[BenchRequest]:
    """The first ``num_requests`` of ``trace`` from ``start_s``, rescaled to ``rate_rps`` mean rate, lengths clipped."""
    from cluster.workload.traces import load_named, prepare

    w = load_named(trace, rate_rps=rate_rps, num_requests=num_requests)
    w = prepare(w, start_s=start_s)
    reqs = w.requests[:num_requests]
    if len(reqs) < 2:
        raise ValueError(f"trace {trace!r} has fewer than 2 requests after {start_s} s")
    t0 = reqs[0].arrival_s
    span = reqs[-1].arrival_s - t0
    scale = (len(reqs) - 1) / rate_rps / span if span > 0 else 0.0
    return [
        BenchRequest(f"r{r.request_id}", (r.arrival_s - t0) * scale,
                     min(r.prompt_tokens, max_prompt_tokens), min(r.output_tokens, max_output_tokens))
        for r in reqs
    ]


def replay(llm, requests: list[BenchRequest], *, ttft_slo_s: float, tpot_slo_s: float, vocab: int) -> dict[str, Any]:
    """Replay ``requests`` in real time through the in-process engine; per-request latencies."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    engine = llm.llm_engine
    pending = sorted(requests, key=lambda r: r.arrival_s)
    arrived: dict[str, float] = {}
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    ntok: dict[str, int] = {}
    idx = 0
    span = max(vocab - 3, 1)
    seeds = {r.request_id: k for k, r in enumerate(pending)}  # same prompt ids in every arm
    t0 = time.time()
    while idx < len(pending) or engine.has_unfinished_requests():
        now = time.time()
        while idx < len(pending) and pending[idx].arrival_s <= now - t0:
            r = pending[idx]
            k = seeds[r.request_id]
            ids = [3 + (k * 7919 + i * 104729) % span for i in range(r.prompt_tokens)]
            engine.add_request(
                r.request_id, TokensPrompt(prompt_token_ids=ids),
                SamplingParams(temperature=0.0, max_tokens=r.output_tokens, ignore_eos=True,
                               extra_args={SLO_TTFT_KEY: ttft_slo_s, SLO_TPOT_KEY: tpot_slo_s}),
            )
            arrived[r.request_id] = time.time()
            idx += 1
        if not engine.has_unfinished_requests():
            time.sleep(max(0.0, min(0.005, pending[idx].arrival_s - (time.time() - t0))))
            continue
        outs = engine.step()
        t = time.time()
        for o in outs:
            n = len(o.outputs[0].token_ids) if o.outputs else 0
            if n and o.request_id not in first:
                first[o.request_id] = t
            if n:
                last[o.request_id] = t
                ntok[o.request_id] = n
    wall = time.time() - t0
    ttft, tpot, ok = [], [], 0
    slo = SLO(ttft_slo_s, tpot_slo_s)
    for r in requests:
        rid = r.request_id
        tt = first[rid] - arrived[rid]
        tp = mean_tpot_s(first[rid], last[rid], ntok[rid])
        ttft.append(tt)
        if tp is not None:
            tpot.append(tp)
        ok += meets_slo(tt, tp, slo)
    return {
        "requests": len(requests),
        "wall_s": wall,
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p90_s": percentile(ttft, 90),
        "ttft_p99_s": percentile(ttft, 99),
        "tpot_p50_s": percentile(tpot, 50),
        "tpot_p99_s": percentile(tpot, 99),
        "attainment": ok / len(requests),
        "output_tokens": sum(ntok.values()),
    }


def step_log_errors(path: Path, skip: int = 5) -> dict[str, Any]:
    """Prediction error of the (online-refitted) step-time model over the run's steps."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][skip:]
    rows = [r for r in rows if r.get("measured_s")]
    if not rows:
        return {"steps": 0}
    rel = [abs(r["predicted_s"] - r["measured_s"]) / r["measured_s"] for r in rows]
    signed = [(r["predicted_s"] - r["measured_s"]) / r["measured_s"] for r in rows]
    absd = [abs(r["predicted_s"] - r["measured_s"]) for r in rows]
    meas = [r["measured_s"] for r in rows]
    return {
        "steps": len(rows),
        "mape": sum(rel) / len(rel),
        "median_ape": percentile(rel, 50),
        "median_signed_rel_error": percentile(signed, 50),
        "p99_abs_error_s": percentile(absd, 99),
        "step_s_p50": percentile(meas, 50),
        "step_s_p99": percentile(meas, 99),
        "steps_with_decodes_left_out": sum(1 for r in rows if r["hidden"]),
        "preempted": sum(len(r["preempted"]) for r in rows),
    }


def run_arm(run: ArmRun) -> dict[str, Any]:
    """Child-process body: one engine, one arm, one rate."""
    from node.vllm.engine_setup import engine_scheduler, make_llm
    from node.vllm.node_config import NodeConfig

    requests = build_trace(run.trace, num_requests=run.num_requests, rate_rps=run.rate,
                           max_prompt_tokens=run.max_prompt_tokens, max_output_tokens=run.max_output_tokens)
    with tempfile.TemporaryDirectory(prefix="fb-bench-") as tmp:
        log = Path(tmp) / "steps.jsonl"
        policy = run.arm.removesuffix("-static")
        knobs = json.loads(run.fb_knobs) if policy == "fairbatching" else {}
        cfg = NodeConfig(policy=policy, apply_plan=run.arm != "vllm", refit=not run.arm.endswith("-static"),
                         profile=run.profile, knobs=knobs,
                         ttft_slo_s=run.ttft_slo_s, tpot_slo_s=run.tpot_slo_s, step_log=str(log))
        llm = make_llm(run.model, cfg, max_num_seqs=run.max_num_seqs,
                       max_num_batched_tokens=run.max_num_batched_tokens, max_model_len=2048)
        vocab = llm.llm_engine.model_config.get_vocab_size()
        from vllm import SamplingParams

        llm.generate([{"prompt_token_ids": list(range(3, 67))}] * 2,
                     SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)  # warm-up
        result = replay(llm, requests, ttft_slo_s=run.ttft_slo_s, tpot_slo_s=run.tpot_slo_s, vocab=vocab)
        stats = engine_scheduler(llm).node_stats()
        result["step_model"] = step_log_errors(log)
    # (the keys the recorded ENGINE.md tables were written with)
    result.update(arm=run.arm, rate_rps=run.rate,
                  divergence={"steps": stats.divergent_steps, "fallback_steps": stats.fallback_steps,
                              "by_reason": stats.divergence_by_reason},
                  model_after={**asdict(stats.step_model), "refits": stats.refits,
                               "host_samples": stats.host_samples, "refit_mape": stats.refit_mape},
                  plan_time_s={"mean": stats.plan_time_mean_s, "max": stats.plan_time_max_s})
    return result


def run_matrix(
    *, model: Path, profile: str, trace: str, rates: list[float], arms: list[str], num_requests: int,
    ttft_slo_s: float, tpot_slo_s: float, max_prompt_tokens: int, max_output_tokens: int,
    max_num_seqs: int, max_num_batched_tokens: int, fb_knobs: str = "{}", progress=None,
) -> list[dict[str, Any]]:
    """Every (rate, arm), each in a fresh child process; arms alternate within a rate. ``fb_knobs`` is the
    JSON of the fairbatching arms' ``FairBatchingConfig`` knobs."""
    import subprocess

    rows = []
    repo = Path(__file__).resolve().parents[2]
    for rate in rates:
        for arm in arms:
            if progress:
                progress(f"{arm} at {rate:g} req/s")
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
                out = Path(fh.name)
            run = ArmRun(arm=arm, rate=rate, model=str(model), profile=profile, trace=trace, num_requests=num_requests,
                         ttft_slo_s=ttft_slo_s, tpot_slo_s=tpot_slo_s, max_prompt_tokens=max_prompt_tokens,
                         max_output_tokens=max_output_tokens, max_num_seqs=max_num_seqs,
                         max_num_batched_tokens=max_num_batched_tokens, fb_knobs=fb_knobs)
            cmd = [sys.executable, "-m", "cluster.bench.engine", *run.argv(), "--out", str(out)]
            t0 = time.time()
            proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{arm} at {rate} req/s failed:\n{proc.stderr[-4000:]}")
            row = json.loads(out.read_text())
            out.unlink()
            row["load_avg_1m_after"] = os.getloadavg()[0]
            row["child_wall_s"] = time.time() - t0
            rows.append(row)
    return rows


app = typer.Typer(add_completion=False)


@app.command(help="One arm of the live engine A/B (child process of run_matrix).")
def main(
    arm: Arm = typer.Option(..., help="Which scheduler arm runs."),
    rate: float = typer.Option(..., help="Mean request rate (req/s) the trace is rescaled to."),
    model: str = typer.Option(..., help="Model directory."),
    profile: str = typer.Option(..., help="Step-time profile (name or path) the arm starts from."),
    trace: str = typer.Option(ArmRun.trace, help="Trace name or file (cluster.workload.traces)."),
    num_requests: int = typer.Option(ArmRun.num_requests, help="Requests replayed."),
    ttft_slo_s: float = typer.Option(ArmRun.ttft_slo_s, help="TTFT SLO of every request (s)."),
    tpot_slo_s: float = typer.Option(ArmRun.tpot_slo_s, help="TPOT SLO of every request (s)."),
    max_prompt_tokens: int = typer.Option(ArmRun.max_prompt_tokens, help="Prompts are clipped to this length."),
    max_output_tokens: int = typer.Option(ArmRun.max_output_tokens, help="Outputs are clipped to this length."),
    max_num_seqs: int = typer.Option(ArmRun.max_num_seqs, help="The engine's max_num_seqs."),
    max_num_batched_tokens: int = typer.Option(ArmRun.max_num_batched_tokens,
                                               help="The engine's max_num_batched_tokens."),
    fb_knobs: str = typer.Option(ArmRun.fb_knobs, help="JSON of the fairbatching arms' FairBatchingConfig knobs."),
    out: Path = typer.Option(..., help="Where to write the arm's result JSON."),
) -> None:
    run = ArmRun(arm=arm, rate=rate, model=model, profile=profile, trace=trace, num_requests=num_requests,
                 ttft_slo_s=ttft_slo_s, tpot_slo_s=tpot_slo_s, max_prompt_tokens=max_prompt_tokens,
                 max_output_tokens=max_output_tokens, max_num_seqs=max_num_seqs,
                 max_num_batched_tokens=max_num_batched_tokens, fb_knobs=fb_knobs)
    out.write_text(json.dumps(run_arm(run)))


if __name__ == "__main__":
    app()
