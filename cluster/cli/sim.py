"""``fairbatching sim``: run the discrete-event simulator, search capacity, compare arms.

The options of every command are the fields of ``SimConfig`` (one place
defines a knob and its flag); commands add only their own few options.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import typing
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from cluster.sim.config import CONFIG_FIELDS, SimConfig
from cluster.workload.traces import TieWarning

app = typer.Typer(
    help="Discrete-event cluster simulator: node schedulers x balancers on real traces, virtual clock.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


def _option_type(hint: Any) -> Any:
    """Typer-friendly annotation: ``X | None`` becomes ``Optional[X]``, ``tuple[X, ...]`` a repeatable ``list[X]``."""
    if typing.get_origin(hint) is tuple and typing.get_args(hint)[1:] == (Ellipsis,):
        return list[typing.get_args(hint)[0]]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args and len(args) < len(typing.get_args(hint)):
        return Optional[args[0]]
    return hint


def config_error(exc: ValueError) -> str:
    """A ``SimConfig`` error as the command line says it: the message alone (not pydantic's dump), each
    multi-word field named by its flag (``balancer_queue_s`` -> ``--balancer-queue-s``)."""
    errors = getattr(exc, "errors", None)
    text = "; ".join(e["msg"].removeprefix("Value error, ") for e in errors()) if callable(errors) else str(exc)
    for f in sorted(CONFIG_FIELDS, key=lambda f: -len(f.name)):
        if "_" in f.name:
            flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
            text = re.sub(rf"(?<![-\w]){f.name}\b", flag, text)
    return text


def config_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give ``fn(config: SimConfig, **own)`` one CLI option per ``SimConfig`` field."""
    hints = typing.get_type_hints(SimConfig)
    own = [p for p in inspect.signature(fn).parameters.values() if p.name != "config"]
    params = []
    for f in CONFIG_FIELDS:
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        decls = [f"{flag}/--no-{flag[2:]}"] if hints[f.name] is bool else [flag]
        params.append(inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, annotation=_option_type(hints[f.name]),
            default=typer.Option(list(f.default) if isinstance(f.default, tuple) else f.default, *decls,
                                 help=f.metadata["help"], rich_help_panel="Simulation"),
        ))
    names = {f.name for f in CONFIG_FIELDS}

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> Any:
        try:
            config = SimConfig(**{k: v for k, v in kwargs.items() if k in names})
        except ValueError as exc:
            raise typer.BadParameter(config_error(exc)) from None
        caught: list[warnings.WarningMessage] = []
        try:
            with warnings.catch_warnings(record=True) as caught:  # the trace's tie warning, said as one line
                warnings.simplefilter("always", TieWarning)
                return fn(config, **{k: v for k, v in kwargs.items() if k not in names})
        except ValueError as exc:  # malformed trace or profile: say so, no traceback
            console.print(f"[red]error:[/red] {config_error(exc)}")
            raise typer.Exit(2) from None
        finally:
            for text in dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, TieWarning)):
                console.print(f"[yellow]warning:[/yellow] {text}")
            for w in caught:  # any other warning as Python would have shown it
                if not issubclass(w.category, TieWarning):
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    wrapper.__signature__ = inspect.Signature(
        [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + params
    )
    return wrapper


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                    TimeElapsedColumn(), console=console, transient=True)


def _write_json(path: Optional[Path], data: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    console.print(f"wrote {path}")


_HEADLINE = ("requests", "offered_rps", "attainment", "admitted_attainment", "rejected", "dropped", "unfinished",
             "ttft_p50", "ttft_p99",
             "tpot_p50", "tpot_p99", "token_attainment_arrival", "token_attainment_first_token", "goodput_rps",
             "preemptions", "prefix_cache_hit_rate", "sim_speedup")


def _headline(report: dict) -> str:
    return "  ".join(f"{k}={report[k]:.4g}" if isinstance(report[k], float) else f"{k}={report[k]}"
                     for k in _HEADLINE if k in report)


@app.command()
@config_options
def run(config: SimConfig, json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report here.")) -> None:
    """Simulate one trace once and report attainment, latencies, goodput and sim_speedup."""
    from cluster.sim.simulator import simulate

    with _progress() as progress:
        task = progress.add_task(f"{config.scheduler}/{config.balancer} x{config.rate_scale:g}", total=1.0)
        result = simulate(config, progress=lambda f: progress.update(task, completed=f))
    report = dict(result.report)
    report["pab_timeline"] = {str(k): v for k, v in result.timelines.items()}
    console.print(_headline(report))
    _write_json(json_out, report)


@app.command()
@config_options
def capacity(
    config: SimConfig,
    attainment: float = typer.Option(0.9, help="Attainment target."),
    rel_tol: float = typer.Option(0.02, help="Stop bisecting when hi/lo <= 1 + this."),
    seeds: int = typer.Option(3, min=1, help="Seeds (--seed upwards): the capacity is searched on each and "
                                             "reported as the mean with its min and max over seeds."),
    tightest_target: float = typer.Option(0.99, help="With --slo-tier: attainment target of the tightest tier alone."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write capacity_rps (mean over seeds), its spread, "
                                                                 "each seed's search and the report at capacity here."),
) -> None:
    """Highest rate with attainment >= the target, by bisection on the rate scale, on each of
    ``--seeds`` seeds (mean, min and max reported); with SLO tiers, also the highest rate at which the
    tightest tier alone meets ``--tightest-target``."""
    from cluster.sim.capacity import capacity_over_seeds

    if not 0 < attainment <= 1:
        raise typer.BadParameter(f"must be in (0, 1], got {attainment}", param_hint="--attainment")
    if not rel_tol > 0:
        raise typer.BadParameter(f"must be > 0, got {rel_tol}", param_hint="--rel-tol")
    with _progress() as progress:
        task = progress.add_task("capacity probes", total=None)

        def on_probe(p):
            progress.update(task, advance=1, description=f"x{p.rate_scale:.3g} {p.rate_rps:.2f} rps -> {p.attainment:.3f}")

        res = capacity_over_seeds(config, seeds=seeds, target=attainment, rel_tol=rel_tol, on_probe=on_probe)
        tier_res = None
        if config.slo_tier:  # also: the highest rate at which the tightest tier alone meets its target
            from cluster.workload.tiers import parse_slo_tiers

            # (with --only-tier the kept tier is the only one run)
            tightest = config.only_tier or min(parse_slo_tiers(config.slo_tier), key=lambda t: t.slo.priority).name
            tier_res = capacity_over_seeds(config, seeds=seeds, target=tightest_target, rel_tol=rel_tol,
                                           on_probe=on_probe, metric=f"per_tier.{tightest}.attainment")
    out = res.to_dict()
    console.print(f"capacity_rps={res.mean_rps}  {res.summary()}")
    for seed, one in zip(res.seeds, res.results):
        console.print(f"  seed {seed}: {one.capacity_rps} req/s (rate scale {one.capacity_rate_scale}, "
                      f"{len(one.probes)} probes)")
    for reason in dict.fromkeys(r for one in res.results for r in one.why):  # where no rate met the target
        console.print(f"[yellow]why: {reason}[/yellow]")
    if out["report"]:
        console.print(f"at capacity on seed {res.seeds[0]}: {_headline(out['report'])}")
    if tier_res is not None:
        out["tightest_tier"] = {"tier": tightest, "target": tightest_target, **tier_res.to_dict()}
        console.print(f"{tightest} alone meets {tightest_target:.0%} up to {tier_res.summary()}")
    _write_json(json_out, out)


@app.command()
@config_options
def compare(
    config: SimConfig,
    out: Path = typer.Option(Path("bench/results/sim/compare"), "--out", help="Directory for summary.json and PNGs."),
    schedulers: str = typer.Option("fairbatching,vllm,sarathi", help="Comma-separated node schedulers."),
    balancers: str = typer.Option("pab,round-robin,power-of-two,least-prefill,queue-kv", help="Comma-separated balancers."),
    caps: str = typer.Option("without", help="Admission cap arms for non-PAB balancers: without, with, or both."),
    attainment: float = typer.Option(0.9, help="Attainment target."),
    rel_tol: float = typer.Option(0.02, help="Bisection tolerance."),
    seeds: int = typer.Option(3, min=1, help="Seeds (--seed upwards): each arm's capacity is searched on each and "
                                             "reported as the mean with its min and max."),
    tune_duration_s: float = typer.Option(600.0, help="Trace window (s) on which baseline budgets are tuned, single node."),
) -> None:
    """Every scheduler x balancer arm on one trace; baselines at their best-tuned token budget."""
    from cluster.sim.compare import Arm, run_compare, tune_token_budget
    from cluster.sim.plots import plot_attainment_vs_rate, plot_pab_timeline, plot_ttft_cdf

    log = console.print
    budgets = {}
    for sched in schedulers.split(","):
        log(f"tuning {sched}")
        budgets[sched], _ = tune_token_budget(config, sched, target=attainment, tune_duration_s=tune_duration_s, log=log)
    cap_options = {"without": (False,), "with": (True,), "both": (False, True)}[caps]
    arms = []
    for sched in schedulers.split(","):
        for bal in balancers.split(","):
            for cap in (False,) if bal == "pab" else cap_options:
                arms.append(Arm(sched, bal, cap, budgets[sched]))
    summary, results, ttfts = run_compare(config, arms, target=attainment, rel_tol=rel_tol, seeds=seeds, log=log)
    summary["tuned_token_budgets"] = budgets
    out.mkdir(parents=True, exist_ok=True)
    for row in summary["arms"]:
        if row.get("report"):
            row["report"] = {k: v for k, v in row["report"].items() if k != "config"}
    _write_json(out / "summary.json", summary)
    plot_attainment_vs_rate(results, summary, out / "attainment_vs_rate.png")
    plot_ttft_cdf(ttfts, summary, summary["common_rate_rps"] or 0.0, out / "ttft_cdf.png")
    pab_arm = next((a.label for a in arms if a.balancer == "pab"), arms[0].label)
    at_cap = results[pab_arm].result_at_capacity
    if at_cap is not None:
        plot_pab_timeline(at_cap.timelines, summary, pab_arm, out / "pab_timeline.png")
    for row in summary["arms"]:
        log(f"{row['arm']:<40} capacity {row['capacity_rps']}")
