"""``fairbatching serve | status | load``: run the serving cluster, look at it, put load on it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)

#: ``--api-key`` of the client commands (status, load, bench overload --url, bench vllm-client).
CLIENT_API_KEY = typer.Option(None, "--api-key", envvar="VLLM_API_KEY", show_envvar=True,
                              help="API key to send (Authorization: Bearer), when the server has keys.")


def _table_console() -> Console:
    """Tables at full width when piped (Rich assumes 80 columns without a terminal)."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def serve(
    config: Optional[Path] = typer.Option(None, "--config", help="Ray Serve config file, YAML or JSON, as `serve deploy` takes it: ServeConfig fields under the args of the cluster.app:app_builder application (deploy/serve-local.yaml)."),
    address: Optional[str] = typer.Option(None, "--address", help="Join this Ray cluster (e.g. auto, or HOST:PORT) instead of starting a local one."),
    host: Optional[str] = typer.Option(None, help="HTTP host (overrides the config)."),
    port: Optional[int] = typer.Option(None, help="HTTP port (overrides the config)."),
    router: Optional[str] = typer.Option(None, help="pab or serve-default (overrides the config)."),
    balancer: Optional[str] = typer.Option(None, help="Placement policy (overrides the config)."),
    scheduler: Optional[str] = typer.Option(None, help="fairbatching or vllm (overrides the config)."),
    api_key: Optional[list[str]] = typer.Option(
        None, "--api-key", help="Require this API key (Authorization: Bearer); repeat for several. Also the "
                                "VLLM_API_KEY environment variable and the config's api_keys."),
) -> None:
    """Start (or join) a Ray cluster, deploy the app and print its URL; Ctrl-C stops it.

    With no --config: two engines with the tiny CPU model on this machine.
    """
    from cluster.app import deploy
    from cluster.config import ConfigError, ServeConfig, config_from_dict, load_config

    try:
        cfg = load_config(config) if config else ServeConfig()
        # The environment's key is taken out of the environment, so Ray's processes never inherit it.
        env_key = os.environ.pop("VLLM_API_KEY", None)
        keys = [*cfg.api_keys, *(api_key or []), *([env_key] if env_key else [])]
        overrides = {k: v for k, v in dict(host=host, port=port, router=router, balancer=balancer,
                                           scheduler=scheduler, api_keys=keys or None).items() if v is not None}
        if overrides:
            cfg = config_from_dict({**cfg.to_dict(), **overrides}, str(config or "<default>"))
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if address is None:  # a local cluster inherits this process's environment
        from cluster.app import use_serve_env

        use_serve_env()
    import ray
    from ray import serve as rserve

    # "local" always starts a fresh instance: never join a cluster by accident.
    ray.init(address=address or "local", include_dashboard=False, log_to_driver=False)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        console.print(f"deploying {cfg.engines} engine(s) of {cfg.model!r}, router {cfg.router}, "
                      f"balancer {cfg.balancer}, scheduler {cfg.scheduler} ...")
        url = deploy(cfg)
        print(f"FairBatching is serving {cfg.served_model_name} at {url}  (OpenAI API: {url}/v1)", flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        if address is not None:  # a joined cluster keeps running: remove only our app
            try:
                rserve.delete(cfg.app_name)
            except Exception:  # noqa: BLE001 - shutting down anyway
                pass
        # For the local cluster, ray.shutdown() stops every process it started. (Ctrl-C in a
        # terminal also signals Ray's own processes, so Serve calls could hang here.)
        ray.shutdown()


def status(
    url: str = typer.Option("http://127.0.0.1:8000", help="The cluster's HTTP endpoint."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw JSON."),
    api_key: Optional[str] = CLIENT_API_KEY,
) -> None:
    """Per-node PAB, queue and SLO attainment of a running cluster."""
    import httpx

    from cluster.workload.loadgen import auth_headers

    try:
        resp = httpx.get(f"{url.rstrip('/')}/v1/fairbatching/status", timeout=10, headers=auth_headers(api_key))
    except httpx.HTTPError as exc:
        console.print(f"[red]cannot reach {url}: {exc}[/red]")
        raise typer.Exit(1) from None
    if resp.status_code != 200:
        console.print(f"[red]{url} answered {resp.status_code}: {resp.text}[/red]")
        raise typer.Exit(1)
    snap = resp.json()
    if as_json:
        print(json.dumps(snap, indent=2))
        return
    dm = snap.get("deployment_model")
    model = (f"step model a={dm['a_s'] * 1e3:.2f} ms b={dm['b_s_per_token'] * 1e6:.2f} us/token "
             f"host {dm.get('host_s', 0.0) * 1e3:.2f} ms/step (median of {dm['nodes']} node refits)"
             ) if dm else "step model: each node's own"
    routers = snap.get("routers") or {}
    debited: dict[str, dict] = {}
    for r in routers.values():  # what every router holds against each node
        for key, row in (r.get("nodes") or {}).items():
            d = debited.setdefault(key, {"in_transit": 0, "pab_tokens_debited": None})
            d["in_transit"] += row.get("in_transit", 0)
            low = row.get("pab_tokens_debited")
            if low is not None and (d["pab_tokens_debited"] is None or low < d["pab_tokens_debited"]):
                d["pab_tokens_debited"] = low
    table = Table(title=f"{url}  decisions {snap.get('decisions')}  routers {len(routers)}  "
                        f"{_view_age(routers)}\n{model}")
    for col in ("node", "replica", "live", "PAB", "PAB debited", "binds", "R tok/s", "correction",
                "front delay", "in flight", "in transit", "queued prefill", "KV use", "finished", "attainment",
                "report age"):
        table.add_column(col, justify="right")
    fmt = lambda v, f="{:.0f}": "-" if v is None else f.format(v)  # noqa: E731
    for key, n in sorted(snap["nodes"].items(), key=lambda kv: str(kv[1].get("node"))):
        d = debited.get(key, {})
        table.add_row(str(n.get("node")), key, "yes" if n.get("live") else "no", fmt(n.get("pab_tokens")),
                      fmt(d.get("pab_tokens_debited")), str(n.get("binding") or "-"), fmt(n.get("prefill_rate_tps")),
                      fmt(n.get("correction"), "{:.2f}"), fmt(n.get("front_delay_s"), "{:.3f} s"),
                      str(n.get("in_flight", "-")), str(d.get("in_transit", "-")),
                      str(n.get("queued_prefill_tokens", "-")), fmt(n.get("kv_usage"), "{:.1%}"),
                      str(n.get("finished", "-")), fmt(n.get("attainment"), "{:.1%}"),
                      fmt(n.get("report_age_s"), "{:.2f} s"))
    _table_console().print(table)
    classes = _class_rows(snap["nodes"])
    if classes:
        by_class = Table(title="by SLO class (budget: the class's own over its TTFT; the tightest class's is PAB)")
        for col in ("node", "replica", "class", "budget", "held for the tightest", "finished", "attained",
                    "attainment"):
            by_class.add_column(col, justify="right")
        for row in classes:
            by_class.add_row(row[0], row[1], row[2], fmt(row[3]), fmt(row[4]), str(row[5]), str(row[6]),
                             fmt(row[7], "{:.1%}"))
        _table_console().print(by_class)
    cache = _prefix_rows(snap["nodes"], routers)
    if cache:
        by_node = Table(title="prefix cache: prompt tokens charged by the budget against those vLLM computed "
                              "(requests past their first token)")
        for col in ("node", "charged", "computed by vLLM", "charged / computed"):
            by_node.add_column(col, justify="right")
        for row in cache:
            by_node.add_row(row[0], str(row[1]), str(row[2]), fmt(row[3], "{:.3f}"))
        _table_console().print(by_node)


def _view_age(routers: dict) -> str:
    """How old the nodes' reports were at the routers' recent decisions (``view_age_s`` of each router's
    stats): the largest P50 and P90 over the routers, or a dash before any decision."""
    ages = [r["view_age_s"] for r in routers.values() if r.get("view_age_s")]
    if not ages:
        return "view age -"
    return (f"view age P50 {max(a['p50'] for a in ages):.2f} s, P90 {max(a['p90'] for a in ages):.2f} s "
            f"(over {sum(a.get('decisions', 0) for a in ages)} recent decisions)")


def _prefix_rows(nodes: dict, routers: dict) -> list[tuple]:
    """``(node, charged, computed, ratio)`` per node that caches prefixes, then the routers' total
    (``charged`` against every prompt token they placed); empty when no node caches prefixes."""
    rows = []
    for _, n in sorted(nodes.items(), key=lambda kv: str(kv[1].get("node"))):
        if n.get("prefix_caching"):
            charged, computed = n.get("prompt_tokens_charged", 0), n.get("prompt_tokens_computed", 0)
            rows.append((str(n.get("node")), charged, computed, charged / computed if computed else None))
    if rows and routers:
        charged = sum(r.get("prompt_tokens_charged", 0) for r in routers.values())
        placed = sum(r.get("prompt_tokens_placed", 0) for r in routers.values())
        rows.append(("routers (of every prompt token placed)", charged, placed, charged / placed if placed else None))
    return rows


def _class_rows(nodes: dict) -> list[tuple]:
    """``(node, replica, class, budget, held, finished, attained, attainment)`` per engine replica and
    SLO class seen (the status of a deployment with ``slo_tiers``); empty without classes."""
    rows = []
    for key, n in sorted(nodes.items(), key=lambda kv: (str(kv[1].get("node")), kv[0])):
        tiers = n.get("tier_pab_tokens") or {}
        counts = {k: v for k, v in (n.get("by_class") or {}).items() if k}
        for name in sorted(set(tiers) | set(counts)):
            c = counts.get(name, {})
            rows.append((str(n.get("node")), key, name, tiers.get(name, n.get("pab_tokens")),
                         n.get("pab_held_tokens") if name in tiers else None,
                         c.get("finished", 0), c.get("attained", 0), c.get("attainment")))
    return rows


def load(
    url: str = typer.Option("http://127.0.0.1:8000", help="The cluster's HTTP endpoint."),
    trace: str = typer.Option("azure-conv", help="Trace name (azure-conv, azure-code, sharegpt-poisson, sharegpt-gamma) or file."),
    columns: Optional[str] = typer.Option(
        None, help="Columns of a trace file: ARRIVAL[:s|ms],PROMPT,OUTPUT, or PROMPT,OUTPUT with --arrivals."),
    start_s: float = typer.Option(0.0, help="Start of the trace window, in original trace seconds."),
    duration_s: Optional[float] = typer.Option(None, help="Length of the trace window in original trace seconds."),
    rate_scale: float = typer.Option(1.0, help="Multiply the arrival rate by this."),
    max_prompt_tokens: Optional[int] = typer.Option(None, help="Clip longer prompts to this many tokens."),
    max_output_tokens: Optional[int] = typer.Option(None, help="Clip longer outputs to this many tokens."),
    max_requests: Optional[int] = typer.Option(None, help="Send only the first N requests of the window."),
    sharegpt_rate_rps: float = typer.Option(10.0, help="Arrival rate of the synthetic ShareGPT traces."),
    num_requests: Optional[int] = typer.Option(
        None, help="Requests of the synthetic ShareGPT traces (default 2000); the first N rows of a trace file."),
    arrivals: Optional[str] = typer.Option(
        None, help="Synthetic arrivals for a trace file of lengths only (--columns PROMPT,OUTPUT): poisson or gamma:CV."),
    arrival_rate_rps: Optional[float] = typer.Option(None, help="With --arrivals: their mean rate, requests/s."),
    spread_ties: bool = typer.Option(
        False, "--spread-ties", help="Spread arrivals sharing one timestamp evenly over the trace's time resolution."),
    ttft_slo: Optional[float] = typer.Option(
        None, "--ttft-slo", help="TTFT SLO in seconds, sent as x-slo-ttft-ms (default: the embedded default's)."),
    tpot_slo: Optional[float] = typer.Option(
        None, "--tpot-slo", help="TPOT SLO in seconds, sent as x-slo-tpot-ms (default: the embedded default's)."),
    slo_tier: Optional[list[str]] = typer.Option(
        None, "--slo-tier", help="SLO tier NAME=SHARE:TTFT_S:TPOT_S, repeatable: each request gets a tier by seed "
                                 "and is sent with its SLOs; the report adds per_tier (as fairbatching sim)."),
    send_class: bool = typer.Option(
        False, "--send-class", help="With --slo-tier: also send each request's tier name as x-slo-class (a server "
                                    "with SLO classes of those names admits and holds each class by its own)."),
    model: Optional[str] = typer.Option(None, help="Model name (default: the server's first model)."),
    timeout_s: float = typer.Option(300.0, help="Per-request timeout, seconds."),
    seed: int = typer.Option(0, help="Seed of the prompt token ids (and synthetic traces)."),
    prefix_block_tokens: int = typer.Option(
        16, min=1, help="Tokens per block hash of a trace's HASHES column (--columns ...,hash_ids): requests naming "
                        "the same leading blocks get the same leading tokens."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report (and per-request records) here."),
    api_key: Optional[str] = CLIENT_API_KEY,
) -> None:
    """Replay a trace against a live endpoint; report the fields of ``fairbatching sim run``."""
    import dataclasses

    from cluster.workload.loadgen import (live_report, prompt_token_counts, prompt_token_report, records_to_json,
                                          replay, served_model)
    from cluster.config import embedded_default_slo
    from cluster.workload.traces import TraceError, load_named, prepare
    from node.core.request import SLO

    try:
        w = load_named(trace, columns=columns, rate_rps=sharegpt_rate_rps, num_requests=num_requests, seed=seed,
                       arrivals=arrivals, arrival_rate_rps=arrival_rate_rps)
        w = prepare(w, start_s=start_s, duration_s=duration_s, rate_scale=rate_scale,
                    max_prompt_tokens=max_prompt_tokens, max_output_tokens=max_output_tokens, spread=spread_ties)
    except TraceError as exc:
        raise typer.BadParameter(str(exc)) from None
    if max_requests is not None:
        w = dataclasses.replace(w, requests=w.requests[:max_requests])
    if not w.requests:
        raise typer.BadParameter("the trace window holds no requests")
    base = url.rstrip("/")
    if model is None:
        try:
            model = served_model(base, api_key=api_key)
        except ValueError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
    default = embedded_default_slo()
    ttft_slo, tpot_slo = ttft_slo or default.ttft_s, tpot_slo or default.tpot_s
    slo = SLO(ttft_slo, tpot_slo)
    slos: SLO | list[SLO] = slo
    if slo_tier:
        from cluster.workload.tiers import assign_tiers, parse_slo_tiers

        try:
            slos = [t.slo for t in assign_tiers(len(w.requests), parse_slo_tiers(slo_tier), seed)]
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    span = w.requests[-1].arrival_s - w.requests[0].arrival_s
    console.print(f"replaying {len(w)} requests over {span:.1f} s ({w.rate_rps:.2f} req/s) against {base} ...")
    counts_before = prompt_token_counts(base, api_key)
    records = asyncio.run(replay(base, w, model=model, slo=slos,
                                 timeout_s=timeout_s, seed=seed, api_key=api_key, slo_class_header=send_class,
                                 prefix_block_tokens=prefix_block_tokens))
    report = live_report(records, slo, span)
    report.update(url=base, trace=trace, rate_scale=rate_scale, transforms=list(w.transforms),
                  ttft_slo_s=ttft_slo, tpot_slo_s=tpot_slo, max_output_tokens=max_output_tokens,
                  prompt_tokens=prompt_token_report(counts_before, prompt_token_counts(base, api_key)))
    keys = ("requests", "attainment", "admitted_attainment", "rejected", "ttft_p50", "ttft_p90", "ttft_p99",
            "tpot_p50", "tpot_p99", "goodput_rps")
    table = Table(title=f"live run: {trace} x{rate_scale:g} at {base}")
    for k in keys:
        table.add_column(k, justify="right")
    table.add_row(*("-" if report[k] is None else f"{report[k]:.3g}" if isinstance(report[k], float)
                    else str(report[k]) for k in keys))
    _table_console().print(table)
    tokens = report["prompt_tokens"]
    if tokens and tokens["computed"]:
        console.print(f"prompt tokens this run: charged by the nodes' budgets {tokens['charged']}, computed by vLLM "
                      f"{tokens['computed']} (ratio {tokens['charged_over_computed']:.3f}); the routers charged "
                      f"{tokens['router_charged']} of {tokens['router_placed']} placed")
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({**report, "records": records_to_json(records)}, indent=1) + "\n")
