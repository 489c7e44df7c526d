"""The FairBatching Grafana dashboard, built as code with Grafana's foundation SDK.

    python -m deploy.grafana.dashboard --out deploy/grafana/fairbatching.json

writes the dashboard JSON that ``deploy/grafana/provisioning`` loads; the
committed file must equal this generator's output (a test checks it). Series
names come from ``node.serve.metrics``; the ``fairbatching:*`` series
are the recording rules of ``deploy/prometheus/rules.yml``.

Variables: ``datasource``, ``cluster`` (the label the scrape config adds),
``node`` (the engine replica's ``node`` label), ``model`` (vLLM's
``model_name``), and the SLO lines ``ttft_slo`` / ``tpot_slo`` (seconds; set
them to the deployment's SLOs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import typer
from grafana_foundation_sdk.builders import common as gcb
from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus as gp
from grafana_foundation_sdk.builders import stat as gstat
from grafana_foundation_sdk.builders import timeseries as gts
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as gcommon
from grafana_foundation_sdk.models import dashboard as gm

from cluster.config import embedded_default_slo
from node.serve.metrics import prom

UID = "fairbatching"
TITLE = "FairBatching: per-node PAB, step budget, SLOs"
DEFAULT_OUT = Path(__file__).with_name("fairbatching.json")
DATASOURCE = gm.DataSourceRef(type_val="prometheus", uid="${datasource}")

# Label selectors; ``$__rate_interval`` is Grafana's rate window (4 scrape intervals at least).
ENG = 'cluster=~"$cluster", node=~"$node"'
CL = 'cluster=~"$cluster"'
VL = 'cluster=~"$cluster", model_name=~"$model"'
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Q:
    expr: str
    legend: str


@dataclass(frozen=True)
class PanelSpec:
    title: str
    description: str
    queries: tuple[Q, ...]
    unit: str = "short"
    kind: str = "timeseries"  # timeseries | stat
    width: int = 12
    min: float | None = None
    max: float | None = None


def _by_node(metric: str, agg: str = "max") -> str:
    return f"{agg} by (node) ({prom(metric)}{{{ENG}}})"


def _rate_by_node(metric: str) -> str:
    """Per-node rate of a counter; 0 for a node that never counted one (Ray exports a counter
    only from its first increment, so without the fallback a healthy node shows "no data")."""
    return (f"sum by (node) (rate({prom(metric)}{{{ENG}}}[{RATE}]))"
            f" or 0 * sum by (node) ({prom('fairbatching_requests_in_flight')}{{{ENG}}})")


def _per_node(*series: str | tuple[str, str], agg: str = "max", rate: bool = False) -> tuple[Q, ...]:
    """One query per metric, per node (``agg`` of a gauge, or the rate of a counter), legend ``{{node}}``;
    a ``(metric, label)`` pair names its line ``{{node}} label``."""
    out = []
    for one in series:
        metric, label = (one, "") if isinstance(one, str) else one
        out.append(Q(_rate_by_node(metric) if rate else _by_node(metric, agg), f"{{{{node}}}} {label}".rstrip()))
    return tuple(out)


def _by_class(metric: str) -> str:
    return f"max by (slo_class) ({prom(metric)}{{{ENG}}})"


def _quantiles(metric: str, sel: str, qs=(0.5, 0.9, 0.99)) -> tuple[Q, ...]:
    return tuple(
        Q(f"histogram_quantile({q}, sum by (le) (rate({prom(metric)}_bucket{{{sel}}}[{RATE}])))", f"p{round(q * 100)}")
        for q in qs
    )


ROWS: tuple[tuple[str, tuple[PanelSpec, ...]], ...] = (
    ("Prefill Admission Budget", (
        PanelSpec("PAB per node", "Prefill Admission Budget: prompt tokens a node can still accept and serve for "
                  "their whole life within the SLOs (correction * R * (H - front delay) - W, capped by KV headroom, "
                  "the new request's decode and free seats). The router sends each request to the node with the "
                  "most budget and rejects it when no node has PAB >= its prompt.",
                  _per_node("fairbatching_pab_tokens"), unit="none", width=24),
        PanelSpec("PAB part R: prefill rate left", "Prefill tokens per second left after reserving the running decodes.",
                  _per_node("fairbatching_pab_prefill_rate_tps"), unit="none"),
        PanelSpec("PAB parts W and KV headroom", "Queued prompt tokens (W) and free KV cache after what running "
                  "requests will still grow into, tokens.",
                  _per_node(("fairbatching_pab_queued_tokens", "queued W"),
                            ("fairbatching_pab_kv_headroom_tokens", "KV headroom")), unit="none"),
        PanelSpec("Closed loop: correction factor", "Factor on the modelled prefill rate, steered by the measured "
                  "TTFT and TPOT tails of admitted requests against their SLOs (shrinks fast on a breach, recovers "
                  "slowly); 1 means the model holds.",
                  _per_node("fairbatching_pab_correction", agg="min"), unit="none", min=0),
        PanelSpec("Front delay and host time", "Time requests spend in front of the engine (proxy, ingress, router; "
                  "P90, taken off the budget's horizon) and the per-step host time of the step-time model.",
                  _per_node(("fairbatching_front_delay_s", "front delay"),
                            ("fairbatching_step_host_time_s", "host time per step")), unit="s"),
    )),
    ("Step", (
        PanelSpec("Time budget per step", "max(min decode slack, min decode TPOT): the time the next step may take.",
                  _per_node("fairbatching_time_budget_s"), unit="s"),
        PanelSpec("Step time: predicted vs measured", "The step-time model's prediction against the measured step; a "
                  "growing gap means the profile is stale.",
                  _per_node(("fairbatching_step_time_predicted_s", "predicted"),
                            ("fairbatching_step_time_measured_s", "measured")), unit="s"),
        PanelSpec("Urgent and skipped decodes, plan divergences", "Per second: decodes scheduled as urgent, decodes "
                  "skipped while ahead of their envelope, steps where vLLM scheduled other than the plan.",
                  _per_node(("fairbatching_urgent_decodes_total", "urgent"),
                            ("fairbatching_skipped_decodes_total", "skipped"),
                            ("fairbatching_plan_divergences_total", "divergences"), rate=True), unit="ops",
                  width=24),
    )),
    ("Latency and SLOs", (
        PanelSpec("TTFT percentiles vs SLO", "Time to first token of finished requests.",
                  _quantiles("fairbatching_ttft_s", ENG) + (Q("vector($ttft_slo)", "TTFT SLO"),), unit="s"),
        PanelSpec("TPOT percentiles vs SLO", "Mean time per output token of finished requests.",
                  _quantiles("fairbatching_tpot_s", ENG) + (Q("vector($tpot_slo)", "TPOT SLO"),), unit="s"),
        PanelSpec("SLO attainment", "Share of requests that met both SLOs over 1 min: the cluster's counts rejected "
                  "requests as misses; per node, of admitted requests.",
                  (Q(f"fairbatching:cluster_slo_attainment:ratio1m{{{CL}}}", "{{cluster}} (rejections count as misses)"),
                   Q(f"fairbatching:slo_attainment_admitted:ratio1m{{{ENG}}}", "{{node}} admitted")),
                  unit="percentunit", min=0, max=1),
        PanelSpec("Admission rejections", "Requests rejected at admission (HTTP 429 with Retry-After) per second.",
                  (Q(f"sum by (cluster) (rate({prom('fairbatching_admission_rejections_total')}{{{CL}}}[{RATE}]))"
                     f" or 0 * sum by (cluster) ({prom('fairbatching_requests_in_flight')}{{{CL}}})",
                     "{{cluster}} rejected/s"),), unit="reqps"),
        PanelSpec("Rejected share (1 min)", "Rejected / (rejected + finished).",
                  (Q(f"fairbatching:admission_rejection:ratio1m{{{CL}}}", "{{cluster}}"),),
                  unit="percentunit", kind="stat", width=6, min=0, max=1),
        PanelSpec("Finished requests", "Requests finished per second, per node.",
                  _per_node("fairbatching_requests_finished_total", rate=True), unit="reqps", width=18),
    )),
    ("SLO classes", (
        PanelSpec("SLO attainment by class", "Share of finished requests of each SLO class that met both of its "
                  "SLOs (a deployment's slo_tiers; one unnamed class without them).",
                  (Q(f"sum by (slo_class) (rate({prom('fairbatching_requests_attained_total')}{{{ENG}}}[{RATE}]))"
                     f" / sum by (slo_class) (rate({prom('fairbatching_requests_finished_total')}{{{ENG}}}[{RATE}]))",
                     "{{slo_class}}"),), unit="percentunit", min=0, max=1),
        PanelSpec("Admission rejections by class", "Requests of each class refused at admission (429) per second; "
                  "under overload the looser classes are refused first (tier_hold_fraction). Unnamed: refused "
                  "before the body was read.",
                  (Q(f"sum by (slo_class) (rate({prom('fairbatching_admission_rejections_total')}{{{CL}}}[{RATE}]))"
                     f" or 0 * sum by (slo_class) (rate({prom('fairbatching_requests_finished_total')}{{{ENG}}}"
                     f"[{RATE}]))", "{{slo_class}}"),), unit="reqps"),
        PanelSpec("TTFT p99 by class vs its SLO", "Time to first token (p99) of each class beside the class's SLO.",
                  (Q(f"histogram_quantile(0.99, sum by (le, slo_class) "
                     f"(rate({prom('fairbatching_ttft_s')}_bucket{{{ENG}}}[{RATE}])))", "{{slo_class}} p99"),
                   Q(_by_class("fairbatching_ttft_slo_s"), "{{slo_class}} SLO")), unit="s"),
        PanelSpec("TPOT p99 by class vs its SLO", "Mean time per output token (p99) of each class beside its SLO.",
                  (Q(f"histogram_quantile(0.99, sum by (le, slo_class) "
                     f"(rate({prom('fairbatching_tpot_s')}_bucket{{{ENG}}}[{RATE}])))", "{{slo_class}} p99"),
                   Q(_by_class("fairbatching_tpot_slo_s"), "{{slo_class}} SLO")), unit="s"),
        PanelSpec("Budget per class and the share held", "Per node: PAB (the tightest class's), each looser "
                  "class's budget over its own TTFT, and the budget held for the tightest class; a looser class "
                  "is admitted while its budget covers the prompt and PAB stays above what is held.",
                  _per_node(("fairbatching_pab_tokens", "PAB (tightest)"), ("fairbatching_pab_held_tokens", "held"))
                  + (Q(f"max by (node, slo_class) ({prom('fairbatching_pab_tier_tokens')}{{{ENG}}})",
                       "{{node}} {{slo_class}}"),), unit="none", width=24),
    )),
    ("Queue and KV", (
        PanelSpec("Requests in flight per node", "Requests the engine holds (waiting, prefilling, decoding).",
                  _per_node("fairbatching_requests_in_flight"), unit="none"),
        PanelSpec("KV cache usage per node", "Fraction of the node's KV cache in use.",
                  _per_node("fairbatching_kv_usage"), unit="percentunit", min=0, max=1),
        PanelSpec("Prompt tokens: charged vs computed", "Per second, per node: the prompt tokens the budget "
                  "charged (the uncached part by the node's estimate of its prefix cache) and those vLLM computed "
                  "(the prompt less its own prefix-cache hit). Charged above computed: the estimate misses hits "
                  "and the budget is conservative; below: it counts hits vLLM no longer has.",
                  _per_node(("fairbatching_prompt_tokens_charged_total", "charged"),
                            ("fairbatching_prompt_tokens_computed_total", "computed"), rate=True), unit="none",
                  width=24),
    )),
    ("vLLM engine", (
        PanelSpec("vLLM running and waiting requests", "vLLM's own scheduler queues, per replica.",
                  (Q(f"sum by (ReplicaId) ({prom('vllm:num_requests_running')}{{{VL}}})", "{{ReplicaId}} running"),
                   Q(f"sum by (ReplicaId) ({prom('vllm:num_requests_waiting')}{{{VL}}})", "{{ReplicaId}} waiting")),
                  unit="none"),
        PanelSpec("vLLM KV cache usage", "vLLM's KV cache usage, per replica.",
                  (Q(f"max by (ReplicaId) ({prom('vllm:kv_cache_usage_perc')}{{{VL}}})", "{{ReplicaId}}"),),
                  unit="percentunit", min=0, max=1),
        PanelSpec("vLLM token throughput", "Prompt and generated tokens per second, whole cluster.",
                  (Q(f"sum (rate({prom('vllm:prompt_tokens')}{{{VL}}}[{RATE}]))", "prompt tokens/s"),
                   Q(f"sum (rate({prom('vllm:generation_tokens')}{{{VL}}}[{RATE}]))", "generated tokens/s")),
                  unit="none"),
        PanelSpec("vLLM TTFT percentiles", "vLLM's own time to first token (from the engine's view).",
                  _quantiles("vllm:time_to_first_token_seconds", VL, (0.5, 0.99)), unit="s"),
    )),
)


def _panel(spec: PanelSpec, panel_id: int):
    builder = gstat.Panel() if spec.kind == "stat" else gts.Panel().line_width(1).fill_opacity(5)
    builder = (builder.id(panel_id).title(spec.title).description(spec.description).datasource(DATASOURCE)
               .unit(spec.unit).height(8).span(spec.width))
    if spec.min is not None:
        builder = builder.min(spec.min)
    if spec.max is not None:
        builder = builder.max(spec.max)
    if spec.kind == "timeseries":
        builder = builder.legend(
            gcb.VizLegendOptions().display_mode(gcommon.LegendDisplayMode.TABLE)
            .placement(gcommon.LegendPlacement.BOTTOM).show_legend(True).calcs(["lastNotNull", "max"]))
    for i, q in enumerate(spec.queries):
        builder = builder.with_target(
            gp.Dataquery().expr(q.expr).legend_format(q.legend).ref_id(chr(ord("A") + i)).datasource(DATASOURCE))
    return builder


def _slo_variable(name: str, label: str, default_s: float):
    """A text box holding an SLO in seconds; its default is the embedded default deployment's."""
    text = f"{default_s:g}"
    return gd.TextBoxVariable(name).label(label).default_value(text).current(
        gm.VariableOption(selected=True, text=text, value=text))


def _query_variable(name: str, label: str, query: str) -> gd.QueryVariable:
    return (gd.QueryVariable(name).label(label).datasource(DATASOURCE).query(query)
            .refresh(gm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(gm.VariableSort.ALPHABETICAL_ASC)
            .multi(True).include_all(True).all_value(".*")
            .current(gm.VariableOption(selected=True, text="All", value="$__all")))


def build() -> dict:
    """The dashboard as the JSON object Grafana loads."""
    pab = prom("fairbatching_pab_tokens")
    slo = embedded_default_slo()  # the SLO lines default to what the embedded default deployment holds
    board = (
        gd.Dashboard(TITLE).uid(UID).tags(["fairbatching", "ray", "vllm"]).editable()
        .description("Per-node Prefill Admission Budget, FairBatching step budget and step-time model, TTFT/TPOT "
                     "against SLOs, attainment, admission rejections, queues and KV, and vLLM's engine metrics.")
        .refresh("10s").time("now-30m", "now").timezone("browser").tooltip(gm.DashboardCursorSync.CROSSHAIR)
        .with_variable(gd.DatasourceVariable("datasource").label("Data source").type("prometheus")
                       .current(gm.VariableOption(selected=True, text="Prometheus", value="fairbatching-prometheus")))
        .with_variable(_query_variable("cluster", "Cluster", f"label_values({pab}, cluster)"))
        .with_variable(_query_variable("node", "Node", f'label_values({pab}{{cluster=~"$cluster"}}, node)'))
        .with_variable(_query_variable("model", "Model",
                                       f'label_values({prom("vllm:num_requests_running")}{{cluster=~"$cluster"}}, model_name)'))
        .with_variable(_slo_variable("ttft_slo", "TTFT SLO (s)", slo.ttft_s))
        .with_variable(_slo_variable("tpot_slo", "TPOT SLO (s)", slo.tpot_s))
    )
    panel_id = 0
    for title, panels in ROWS:
        panel_id += 1
        board = board.with_row(gd.Row(title).id(panel_id))
        for spec in panels:
            panel_id += 1
            board = board.with_panel(_panel(spec, panel_id))
    return json.loads(JSONEncoder(sort_keys=True).encode(board.build()))


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


app = typer.Typer(add_completion=False)


@app.command(help=__doc__.splitlines()[0])
def main(out: Path = typer.Option(DEFAULT_OUT, help="Where to write the dashboard JSON.")) -> None:
    out.write_text(render())
    print(f"wrote {out}")


if __name__ == "__main__":
    app()
