"""Every metric the project exports: one list that the exporters build their instruments from
(``instrument``) and the dashboard generator and Prometheus rules read.

Each ``MetricSpec`` names a metric as its exporter records it (``ray.util.metrics``
in the engine replica, the router, or vLLM's Ray stat logger) and says how it
appears in Prometheus: Ray's export prefixes ``ray_``, turns characters other
than ``[a-zA-Z0-9_]`` into ``_`` (vLLM's ``vllm:`` names) and appends ``_total``
to a counter whose name does not already end in it (measured on Ray 2.60).
Ray adds its own labels to every series (``NodeAddress``, ``SessionName``,
``WorkerId``, ``Component``, ``Version``); our scrape config adds ``cluster``.

``source`` is the module that records the metric; the engine replica and the
router create their instruments with ``instrument(spec)``, so a name, its kind,
description and buckets are written only here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ENGINE = "node/serve/engine_replica.py"
ROUTER = "balancer/serve/admission.py"
VLLM = "vllm (RayPrometheusStatLogger)"

#: Latency bucket bounds of the engine replica's TTFT/TPOT histograms, seconds.
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)


@dataclass(frozen=True)
class MetricSpec:
    name: str  # as recorded by the exporter
    kind: str  # gauge | counter | histogram
    labels: tuple[str, ...]  # tag keys the exporter sets (Ray's own labels come on top)
    description: str
    source: str
    buckets: tuple[float, ...] = ()  # histogram bucket bounds


    @property
    def prom(self) -> str:
        """The series name in Prometheus (histograms: add ``_bucket``, ``_sum``, ``_count``)."""
        name = "ray_" + re.sub(r"[^a-zA-Z0-9_]", "_", self.name)
        if self.kind == "counter" and not name.endswith("_total"):
            name += "_total"
        return name


_NR = ("node", "replica")
_NRC = ("node", "replica", "slo_class")  # per SLO class ("" without classes)
_VLLM = ("model_name", "engine", "ReplicaId")

METRICS: tuple[MetricSpec, ...] = (
    # Prefill Admission Budget and its parts (DESIGN section 3)
    MetricSpec("fairbatching_pab_tokens", "gauge", _NR, "Prefill Admission Budget, tokens", ENGINE),
    MetricSpec("fairbatching_pab_prefill_rate_tps", "gauge", _NR, "PAB part R: prefill tokens/s left", ENGINE),
    MetricSpec("fairbatching_pab_queued_tokens", "gauge", _NR, "PAB part W: queued prompt tokens", ENGINE),
    MetricSpec("fairbatching_pab_kv_headroom_tokens", "gauge", _NR, "PAB KV headroom, tokens", ENGINE),
    MetricSpec("fairbatching_pab_tier_tokens", "gauge", ("slo_class",) + _NR,
               "PAB of a looser SLO class, over its own TTFT, tokens", ENGINE),
    MetricSpec("fairbatching_pab_held_tokens", "gauge", _NR,
               "Budget held for the tightest SLO class (tier_hold_fraction x the idle budget), tokens", ENGINE),
    # the closed loop (node.core.feedback): measured latency corrects the budget
    MetricSpec("fairbatching_pab_correction", "gauge", _NR, "Closed-loop factor on the prefill rate (1 = as modelled)", ENGINE),
    MetricSpec("fairbatching_front_delay_s", "gauge", _NR, "Time in front of the engine (P90), taken off the PAB horizon, s", ENGINE),
    MetricSpec("fairbatching_step_host_time_s", "gauge", _NR, "Per-step host time of the step-time model, s", ENGINE),
    # the step: budget, step-time model, plan
    MetricSpec("fairbatching_time_budget_s", "gauge", _NR, "Time budget of the last step, s", ENGINE),
    MetricSpec("fairbatching_step_time_predicted_s", "gauge", _NR, "Predicted time of the last step, s", ENGINE),
    MetricSpec("fairbatching_step_time_measured_s", "gauge", _NR, "Measured time of the last step, s", ENGINE),
    MetricSpec("fairbatching_urgent_decodes_total", "counter", _NR, "Urgent decodes scheduled", ENGINE),
    MetricSpec("fairbatching_skipped_decodes_total", "counter", _NR, "Decodes skipped (ahead of envelope)", ENGINE),
    MetricSpec("fairbatching_plan_divergences_total", "counter", _NR, "Steps where vLLM diverged from the plan", ENGINE),
    # prompt work charged by the budget (uncached by the node's prefix-cache estimate) and computed by vLLM
    MetricSpec("fairbatching_prompt_tokens_charged_total", "counter", _NR,
               "Prompt tokens the budget charged requests past their first token (uncached, estimated)", ENGINE),
    MetricSpec("fairbatching_prompt_tokens_computed_total", "counter", _NR,
               "Prompt tokens vLLM computed for those requests (prompt less its prefix-cache hit)", ENGINE),
    # queue and KV
    MetricSpec("fairbatching_requests_in_flight", "gauge", _NR, "Requests held by the engine", ENGINE),
    MetricSpec("fairbatching_kv_usage", "gauge", _NR, "KV cache usage fraction", ENGINE),
    # latency and SLO attainment
    MetricSpec("fairbatching_ttft_s", "histogram", _NRC, "Time to first token per request, s", ENGINE, LATENCY_BUCKETS_S),
    MetricSpec("fairbatching_tpot_s", "histogram", _NRC, "Mean time per output token per request, s", ENGINE,
               LATENCY_BUCKETS_S),
    MetricSpec("fairbatching_requests_finished_total", "counter", _NRC, "Requests finished", ENGINE),
    MetricSpec("fairbatching_requests_attained_total", "counter", _NRC, "Requests that met both SLOs", ENGINE),
    MetricSpec("fairbatching_ttft_slo_s", "gauge", ("slo_class",) + _NR, "TTFT SLO of each SLO class, s", ENGINE),
    MetricSpec("fairbatching_tpot_slo_s", "gauge", ("slo_class",) + _NR, "TPOT SLO of each SLO class, s", ENGINE),
    MetricSpec("fairbatching_slo_attainment", "gauge", _NR, "Fraction of finished requests that met both SLOs", ENGINE),
    # admission (the router fails a request with 429 when no node has PAB >= its prompt)
    MetricSpec("fairbatching_admission_rejections_total", "counter", ("slo_class",),
               "Requests rejected at admission (HTTP 429), by SLO class (empty: refused before its class was read)",
               ROUTER),
    # vLLM's own engine metrics, exported through Ray by vLLM's RayPrometheusStatLogger
    MetricSpec("vllm:num_requests_running", "gauge", _VLLM, "Requests in the engine's running batch", VLLM),
    MetricSpec("vllm:num_requests_waiting", "gauge", _VLLM, "Requests waiting in the engine", VLLM),
    MetricSpec("vllm:kv_cache_usage_perc", "gauge", _VLLM, "KV cache usage, fraction", VLLM),
    MetricSpec("vllm:prompt_tokens", "counter", _VLLM, "Prefill tokens processed", VLLM),
    MetricSpec("vllm:generation_tokens", "counter", _VLLM, "Generation tokens processed", VLLM),
    MetricSpec("vllm:num_preemptions", "counter", _VLLM, "Preemptions", VLLM),
    MetricSpec("vllm:time_to_first_token_seconds", "histogram", _VLLM, "vLLM's time to first token, s", VLLM),
)

BY_NAME = {m.name: m for m in METRICS}

#: Counters of events a healthy run may never see. A Ray counter is exported only
#: from its first increment (``inc(0)`` is refused), so on a healthy cluster these
#: series are absent rather than zero; the dashboard's queries and the recording
#: rules fall back to 0 for them (``... or 0 * <a series every engine exports>``):
#: * admission rejections (``balancer/serve/admission.py``), recorded on every HTTP 429;
#: * plan divergences (``node/serve/engine_replica.py``), zero in steady state;
#: * urgent and skipped decodes, zero on a lightly loaded node.
EVENT_ONLY = frozenset({"fairbatching_admission_rejections_total", "fairbatching_plan_divergences_total",
                        "fairbatching_urgent_decodes_total", "fairbatching_skipped_decodes_total"})


def prom(name: str) -> str:
    """Prometheus series name of the metric recorded as ``name``."""
    return BY_NAME[name].prom


def instrument(name: str, default_tags: dict[str, str] | None = None):
    """The ``ray.util.metrics`` instrument for the listed metric ``name`` (``KeyError`` if unlisted),
    with its kind, description, label keys and buckets from the list, and ``default_tags`` set."""
    from ray.util import metrics as ray_metrics

    spec = BY_NAME[name]
    kwargs = {"description": spec.description, "tag_keys": spec.labels}
    if spec.kind == "gauge":
        made = ray_metrics.Gauge(spec.name, **kwargs)
    elif spec.kind == "counter":
        made = ray_metrics.Counter(spec.name, **kwargs)
    elif spec.kind == "histogram":
        made = ray_metrics.Histogram(spec.name, boundaries=list(spec.buckets), **kwargs)
    else:
        raise ValueError(f"metric {spec.name}: unknown kind {spec.kind!r}")
    if default_tags:
        made.set_default_tags(default_tags)
    return made
