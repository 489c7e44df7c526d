"""``SimConfig``: every knob of a simulation run, as data; its fields also define the CLI options.

Each field's metadata carries the option's help (and, where the flag is not
the field name in kebab case, its flag). ``cluster.cli.sim`` turns the fields
into Typer options, so a knob is added in one place. A pydantic dataclass: field
types are checked on construction (``ValueError`` naming the field), choices and
bounds in ``__post_init__``.
"""

from __future__ import annotations

import math
from dataclasses import field, fields
from typing import Any

from pydantic.dataclasses import dataclass

from balancer.core.admission_queue import QUEUE_ORDERS
from balancer.core.policies import PLACEMENT_NAMES
from cluster.sim.shared_host import IngressDelay, SharedHost
from node.core.policies import POLICY_NAMES
from cluster.workload.tiers import parse_slo_tiers
from node.core.request import SLO
from node.core.validation import check_at_least
from node.fit.profile import DEFAULT_STEP_MODEL, STEP_MODEL_FORMS, profile_default_slo


def parse_stalls(spec: str) -> list[tuple[float, float, float]]:
    """``--ingress-stalls``'s ``RATE:STALLS_PER_S:STALL_S[,...]`` as triples (empty: none). Raises
    ``ValueError`` naming the option for a point that is not three numbers."""
    points = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        fields_ = part.split(":")
        try:
            if len(fields_) != 3:
                raise ValueError
            points.append(tuple(float(f) for f in fields_))
        except ValueError:
            raise ValueError(f"ingress_stalls: {part!r} is not RATE:STALLS_PER_S:STALL_S (three numbers)") from None
    return points


def format_stalls(points) -> str:
    """Stall points as ``--ingress-stalls`` takes them (``parse_stalls``'s inverse)."""
    return ",".join(":".join(f"{v:.6g}" for v in point) for point in points)


def _opt(default, help: str, flag: str | None = None):
    return field(default=default, metadata={"help": help, "flag": flag})


@dataclass(frozen=True)
class SimConfig:
    # workload (flags shared with cluster.workload.traces)
    trace: str = _opt("azure-conv", "Trace name (azure-conv, azure-code, sharegpt-poisson, sharegpt-gamma, long-context) or file.")
    columns: str | None = _opt(None, "Columns of a trace file: ARRIVAL[:s|ms],PROMPT,OUTPUT[,HASHES] (HASHES: a JSON list of the prompt's block hashes per row, which turns the nodes' prefix caches on), or PROMPT,OUTPUT with --arrivals.")
    start_s: float = _opt(0.0, "Start of the trace window, in original trace seconds.")
    duration_s: float | None = _opt(None, "Length of the trace window in original trace seconds (default: to the end).")
    rate_scale: float = _opt(1.0, "Multiply the arrival rate by this (inter-arrival times divided by it).")
    max_prompt_tokens: int | None = _opt(None, "Clip longer prompts to this many tokens.")
    max_output_tokens: int | None = _opt(None, "Clip longer outputs to this many tokens (a client's max_tokens, as fairbatching load --max-output-tokens).")
    sharegpt_rate_rps: float = _opt(10.0, "Arrival rate of the synthetic ShareGPT traces, before --rate-scale.")
    num_requests: int | None = _opt(None, "Requests of the synthetic ShareGPT traces (default 2000); the first N rows of a trace file.")
    arrivals: str | None = _opt(None, "Synthetic arrivals for a trace file of lengths only (--columns PROMPT,OUTPUT): poisson or gamma:CV.")
    arrival_rate_rps: float | None = _opt(None, "With --arrivals: their mean rate, requests per second (before --rate-scale).")
    spread_ties: bool = _opt(False, "Spread each group of arrivals that share one timestamp evenly over the trace's time resolution (traces with coarse timestamps).")
    # deployment
    profile: str = _opt("h100-llama3-8b", "Cost profile name (deploy/profiles) or file.")
    nodes: int = _opt(1, "Number of nodes.")
    kv_cache_tokens: int | None = _opt(None, "KV cache per node in tokens (default: the profile's).")
    max_num_seqs: int | None = _opt(None, "Sequence seats per node, vLLM's max_num_seqs (default: the profile's; vLLM 0.32 ships 1024 on H100/H200 and 256 on A100).")
    noise: float = _opt(0.0, "Sigma of multiplicative lognormal noise on true step times (0: none).")
    noise_ar: float = _opt(0.0, "Lag-1 correlation of --noise from one step of a node to its next, in (-1, 1) (0: independent; a live CPU engine's steps measured 0.29-0.61, bench/results/SIMULATION.md \"Correlated step noise\").")
    host_s: float | None = _opt(None, "Per-step host time (scheduling, sampling, output handling) added to every true step, seconds (default: the profile's host_s, 0 when it has none).")
    host_s_per_request: float = _opt(0.0, "Host time a true step adds per request it serves (sampling, detokenizing, streaming each one's token), seconds, on top of --host-fixed-s; the nodes still plan with --host-s until their online refit measures the cadence (0: a fixed host time a step; a live CPU engine measured about 0.2 ms a request, bench/results/SIMULATION.md \"Host time per request\").")
    host_fixed_s: float | None = _opt(None, "With --host-s-per-request: the true steps' fixed host time, seconds (default: --host-s).")
    client_path_s: float = _opt(0.0, "Latency outside the engines that a client sees on its first token (HTTP, the ingress's rendering, the hops to the engine and back), seconds: every served request's token times are shifted by it before the SLO test and the latency percentiles (token-level attainment stays the engines'). 0: none; fairbatching bench sim-vs-live measures it on a live run.")
    host_cpu_s_per_request: float = _opt(0.0, "The engines share the host's cores with the serving path (proxy, ingress, stream, client; the embedded default's CPU engines): each arriving request costs this many CPU seconds (one refused at once: --host-cpu-s-per-refusal), and every step is slowed by the share of --host-cores that takes over the last second (cluster.sim.shared_host; 0: a host of its own, as a GPU node).")
    host_cpu_s_per_refusal: float | None = _opt(None, "With --host-cpu-s-per-request: what a request refused at once costs instead (a 429 is parsed and answered, nothing is streamed; default: as much as a served one).")
    host_reference_refused_share: float = _opt(0.0, "With --host-cpu-s-per-request: the share of requests refused at the load the profile was measured at.")
    host_cores: float = _opt(2.0, "With --host-cpu-s-per-request: the cores the engines and the serving path share.")
    host_reference_rps: float = _opt(0.0, "With --host-cpu-s-per-request: the arrival rate at which the profile was measured (its step times already hold that load's slowdown).")
    host_background_cores: float = _opt(0.0, "With --host-cpu-s-per-request: the serving path's CPU with no request at all, cores (counted in its share of the host).")
    host_max_share: float = _opt(0.9, "With --host-cpu-s-per-request: the most of the host the serving path can take from the engines, in (0, 1) (past it the host is saturated and more demand waits; fairbatching bench sim-vs-live: 0.5, measured).")
    ingress_delay_s: float = _opt(0.0, "The serving path's time in front of the engines with no load (proxy, ingress, router, the hops to the engine), seconds: a request reaches the balancer and its node this much after it arrives, plus --ingress-delay-s-per-rps times the arrival rate over the last second (cluster.sim.shared_host.IngressDelay; the nodes take it off PAB's horizon as the engines' front delay). 0 and 0: none, as a GPU node's fast front end; fairbatching bench sim-vs-live measures both.")
    ingress_delay_s_per_rps: float = _opt(0.0, "With --ingress-delay-s: how much the time in front of the engines grows per request a second of arrivals, seconds.")
    ingress_stalls: str = _opt("", "Stalls of the serving path in front of the engines, at measured loads: RATE:STALLS_PER_S:STALL_S[,...] (arrival rate, req/s; spells a second; their length, seconds), interpolated in the arrival rate over the last second; a request arriving in a stall waits for its end (cluster.sim.shared_host.IngressDelay). Empty: none; fairbatching bench sim-vs-live fits them from the engines' front-delay logs.")
    host_in_model: bool = _opt(True, "The nodes' planning model (and PAB) includes the host time (off: they plan with the forward time only, as a model fitted on forward passes).")
    step_model: str = _opt(DEFAULT_STEP_MODEL, "Step-time model the nodes plan and budget with: quadratic (the profile's own, with its prefill-attention term e * q * (p + q / 2) when it has one, as the h100/a100 profiles do; with the default safety factor, measured the most robust: bench/results/STEPTIME.md 3b) or linear (the paper's a + b * new + c * context: the profile's best linear fit; the simulator's default until 2026-12-04). A profile without the term gives the same model both ways. The simulated truth does not change.")
    safety_factor: float | None = _opt(None, "Safety factor of the planning model (its predictions are multiplied by it, >= 1). Default: 1.1 for a model with the prefill-attention term (it under-predicts the full mixed steps a budget plans; bench/results/STEPTIME.md 3b), the profile's (1.0 on the shipped profiles) for a linear one. The truth does not change.")
    prefix_block_tokens: int = _opt(16, "Tokens per block hash of the trace's HASHES column (the prefix cache's block; a multiple of the profile's KV block size). Used only by traces with block hashes.")
    pab_tokens: str = _opt("uncached", "With a prefix cache (a trace with block hashes): what PAB's queued work and the balancer's debit count of a prompt: uncached (the tokens the node must compute; the balancer estimates each node's cache with a PrefixIndex) or all (every prompt token, cache-blind, for comparison).")
    seats_as_vllm: bool = _opt(True, "Count sequence seats as vLLM does: a waiting request starts only into a free seat, every running request (paced decodes included) holding one. Off: only the plan's per-step cap, a favour to a scheduler that skips decodes (the results recorded before 2026-12-01).")
    # node scheduler
    scheduler: str = _opt("fairbatching", "Node scheduler: fairbatching, vllm, sarathi.")
    anchor: str = _opt("first-token", "FairBatching envelope anchor: first-token (measured best: bench/results/NODE-POLICY.md) or arrival (the paper's; also used by PAB).")
    urgency: str = _opt("budget+tpot", "FairBatching urgency rule: budget+tpot or tpot.")
    budget_floor: bool = _opt(True, "FairBatching: floor the time budget at the minimum TPOT.")
    min_chunk_tokens: int = _opt(16, "FairBatching: smallest useful prefill chunk.")
    seat_pressure: float | None = _opt(0.8, "FairBatching: serve every decode each step once the node holds this fraction of max_num_seqs requests (0: off; 0.8: the serving layer's default; measured no worse than off on one node, better with SLO tiers and on the real CPU engine: bench/results/SIMULATION.md \"Seat pressure\", TIERS.md, ENGINE.md).")
    kv_pressure: float | None = _opt(None, "FairBatching: serve every decode each step once this fraction of the node's KV cache blocks is allocated (0 or unset: off).")
    tpot_margin: float = _opt(0.2, "FairBatching: plan decode deadlines at (1 - this) x the TPOT SLO, a guard band against steps longer than predicted (0.2: the serving layer's default, measured best with relegation and alignment, bench/results/NODE-POLICY.md).")
    chunk_align_tokens: int | None = _opt(None, "FairBatching: trim a prefill chunk the budget cut short so the step's tokens are a multiple of this (GEMM tile quantization; 0: off). Default: 256 on a profile with measured operator times (the GPU profiles; measured best, bench/results/NODE-POLICY.md), 0 on one whose truth is its own smooth model.")
    lend: str = _opt("always", "FairBatching: which prefills a decode ahead of its envelope yields to: always (every prefill, the paper's order) or at-risk (only prefills whose deadline is at risk).")
    relegate: str = _opt("fewest-late", "FairBatching: serve requests that can no longer attain last: fewest-late (also, when the queued prompts cannot all make their first-token deadlines, the costliest ones, by Moore's algorithm, so the fewest are late; measured best, bench/results/NODE-POLICY.md, at a cost to the longest prompts), doomed (also prefills that cannot make it even alone), lost (first-token deadline passed) or none (the paper's EDF).")
    refit: bool = _opt(False, "Nodes refit their planning model online from the true step times (OnlineRefit).")
    token_budget: int | None = _opt(None, "vllm, vllm-priority and sarathi: token budget per step (sarathi default: from the TPOT SLO); the node's PAB plans with it, as a live vLLM host reports it as max_num_batched_tokens.")
    # SLOs
    ttft_slo_s: float | None = _opt(None, "TTFT SLO in seconds (default: the profile's, 1 s on the shipped GPU profiles).", "--ttft-slo")
    slo_tier: tuple[str, ...] = _opt((), "SLO tier NAME=SHARE:TTFT_S:TPOT_S, repeatable (e.g. --slo-tier interactive=0.5:1:0.05 --slo-tier batch=0.5:30:0.25): each request gets a tier by seed and is held to its SLOs; the report adds per_tier.")
    only_tier: str | None = _opt(None, "With --slo-tier: after every request is given its tier, simulate only the requests of this tier, as the only class (the others dropped, as if fully shed before they arrived): the bound the tier has on its own at the same arrivals. Rates reported are that tier's own.")
    tier_hold_fraction: float = _opt(0.0, "With --slo-tier: requests of every tier but the tightest must leave this share of a node's idle budget untouched (held for the tightest tier; PAB balancer only).")
    tier_shed_s: float | None = _opt(None, "With --slo-tier: after a request of the tightest tier is refused, refuse every request of the other tiers for this long, seconds (default: the tightest tier's TTFT SLO, as the serving layer; 0: off).")
    tpot_slo_s: float | None = _opt(None, "TPOT SLO in seconds (default: the profile's, 50 ms on the shipped GPU profiles).", "--tpot-slo")
    # balancer
    balancer: str = _opt("pab", "Placement policy: pab, round-robin, power-of-two, least-prefill, queue-kv, prefix-affinity (longest estimated cached prefix unless the load is unbalanced).")
    admission_cap: bool = _opt(False, "Reject when the chosen node's queued prefill passes what an idle node prefills within the TTFT SLO.")
    admission_cap_tokens: int | None = _opt(None, "With --admission-cap: the cap in prompt tokens (default: what an idle node prefills within the TTFT SLO by the planning model without its safety factor, (ttft - a) / b, or with the prefill-attention term the root of a + b * L + e * L^2 / 2 = ttft: 28,203 tokens on the h100 profile, 44,349 by its linear fit; the size that serves most depends on the trace, bench/cap_sweep.sh).")
    pab_variant: str = _opt("closed", "PAB estimate: closed (whole-life closed form), edf (EDF queue stepped forward) or prefill-only (the closed form before issue 10: running decodes' current load, no caps, no output lengths).")
    pab_horizon_fraction: float = _opt(1.0, "PAB's horizon as a share of the TTFT SLO (the serving layer's pab_horizon_fraction, 0.6 there: the rest is the way back and the tail; 1: the whole SLO, the recorded simulator results).")
    pab_lent_slack: bool = _opt(False, "FairBatching nodes: PAB's time limit takes off the slack decodes lend to prefills (a decode whose next token is due in s seconds, on the envelope the node paces to, reserves its steps only for the part of the prefill window after s; none while seat or KV pressure has the node serve every decode; node.core.pab, lent_decode_slack). Closed-form PAB only; no effect on other schedulers. Off: measured +1-2 % behind PAB without classes, a little worse for the interactive class with them (bench/results/NODE-POLICY.md).")
    pab_fit: str = _opt("largest", "PAB placement: largest budget, or best fit.")
    pab_reject: bool = _opt(True, "PAB placement rejects when no node has budget for the request.")
    pab_cache_affinity: float = _opt(0.0, "PAB placement: among nodes with room, rank by PAB - (1 + this) x the request's uncached tokens there (0: the largest budget left; larger: prefer the node caching more of the prompt).")
    pab_affinity_slack: int = _opt(64, "PAB placement, requests with block hashes: among nodes with room, those with at most this many more requests in flight than the least loaded of them; of these, the node computing the least of the prompt (then fewer in flight, larger budget). Negative: off (rank by budget, --pab-cache-affinity).")
    pab_fresh_share: float = _opt(0.3, "PAB placement, requests with block hashes: a prompt of which no node with room is estimated to cache at least this share (a new conversation) goes to the node with room whose estimated cache holds the fewest blocks (0: off).")
    pab_delay_s: float = _opt(0.0, "Delay from a node's report to the balancer, seconds (staleness).")
    report_acks: bool = _opt(True, "Reports carry the ids of the requests the node received, so the balancer keeps debits a stale report has not seen (off: a report replaces the view).")
    pab_interval_s: float = _opt(0.0, "Minimum time between two reports of a node (0: after every step).")
    balancer_queue_s: float = _opt(0.0, "Hold a request the balancer cannot place for up to this long (retried on each report, in --balancer-queue-order) before rejecting it.")
    balancer_queue_order: str = _opt("edf", "Order in which held requests are retried: edf (earliest first-token deadline first, arrival + TTFT SLO, so a tighter tier goes ahead; one that does not fit is passed over), arrival (arrival order, passing over one that does not fit) or fifo (arrival order, stopping at the first that does not fit: head-of-line blocking; the simulator's only order before this option, so the recorded runs with a queue).")
    oracle_output_lengths: bool = _opt(False, "Let nodes know output lengths (PAB KV headroom and EDF departures).")
    expected_output_tokens: float | None = _opt(None, "A node's expected output length before any request finished on it (default: none, 0); afterwards the mean output of the last 512 requests it finished.")
    measured_prefill_rate: bool = _opt(False, "Nodes cap PAB's modelled prefill rate by the prompt tokens per second they delivered while prompts queued (node.core.feedback.PrefillRate, ticked every 0.1 s), as the serving layer's engines do (off: the recorded simulator results).")
    feedback: bool = _opt(False, "Closed loop: each node corrects its PAB prefill rate by the measured TTFT and mean TPOT of its admitted requests against their SLOs (node.core.feedback.LatencyFeedback).")
    feedback_max_factor: float = _opt(1.0, "With --feedback: the most the closed loop may scale a node's modelled prefill rate by (1: it only corrects the model down, the serving layer's default; above 1 it may also raise the budget past the model while the measured latency tail stays under its target).")
    # run
    seed: int = _opt(0, "Seed of every random choice (noise, power-of-two, synthetic traces).")
    drain_s: float = _opt(300.0, "Simulated seconds after the last arrival before unfinished requests are cut off.")
    timeline_interval_s: float = _opt(0.5, "Sampling interval of the per-node PAB/budget timeline, simulated seconds.")

    def _check_shared_host(self) -> None:
        """The shared host's options and the ingress delay's (``cluster.sim.shared_host``), each by name."""
        costs = {"host_cpu_s_per_request": self.host_cpu_s_per_request, "host_reference_rps": self.host_reference_rps,
                 "ingress_delay_s": self.ingress_delay_s, "ingress_delay_s_per_rps": self.ingress_delay_s_per_rps}
        if self.host_cpu_s_per_refusal is not None:
            costs["host_cpu_s_per_refusal"] = self.host_cpu_s_per_refusal
        for name, value in costs.items():
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not (math.isfinite(self.host_cores) and self.host_cores > 0):
            raise ValueError(f"host_cores must be a finite number > 0, got {self.host_cores}")
        if not (math.isfinite(self.host_background_cores) and self.host_background_cores >= 0):
            raise ValueError(f"host_background_cores must be a finite number >= 0, got {self.host_background_cores}")
        if not 0 < self.host_max_share < 1:
            raise ValueError(f"host_max_share must be in (0, 1), got {self.host_max_share}")
        if not 0 <= self.host_reference_refused_share <= 1:
            raise ValueError(f"host_reference_refused_share must be in [0, 1], got {self.host_reference_refused_share}")
        self.ingress_delay()  # the stall points, each by name

    def ingress_delay(self) -> IngressDelay | None:
        """The serving path's time in front of the engines (None: ``ingress_delay_s``, its slope and
        ``ingress_stalls`` all none). Raises ``ValueError`` naming ``ingress_stalls`` for a malformed point."""
        stalls = parse_stalls(self.ingress_stalls)
        if self.ingress_delay_s <= 0 and self.ingress_delay_s_per_rps <= 0 and not stalls:
            return None
        try:
            return IngressDelay(self.ingress_delay_s, self.ingress_delay_s_per_rps, stalls=stalls, seed=self.seed)
        except ValueError as exc:
            raise ValueError(f"ingress_stalls: {exc}") from None

    def shared_host(self) -> SharedHost | None:
        """The simulated host the nodes share with the serving path (None: ``host_cpu_s_per_request`` 0)."""
        if self.host_cpu_s_per_request <= 0:
            return None
        return SharedHost(self.host_cpu_s_per_request, cpu_s_per_refusal=self.host_cpu_s_per_refusal,
                          cores=self.host_cores, reference_rps=self.host_reference_rps,
                          reference_refused_share=self.host_reference_refused_share,
                          background_cores=self.host_background_cores, max_share=self.host_max_share)

    def __post_init__(self) -> None:
        for name in ("seat_pressure", "kv_pressure"):  # 0: off, as unset
            if getattr(self, name) == 0:
                object.__setattr__(self, name, None)
        if self.scheduler not in POLICY_NAMES:
            raise ValueError(f"unknown scheduler {self.scheduler!r}; choose one of {', '.join(POLICY_NAMES)}")
        if self.balancer not in PLACEMENT_NAMES:
            raise ValueError(f"unknown balancer {self.balancer!r}; choose one of {', '.join(PLACEMENT_NAMES)}")
        if self.anchor not in ("arrival", "first-token") or self.urgency not in ("budget+tpot", "tpot"):
            raise ValueError("anchor must be arrival|first-token and urgency budget+tpot|tpot")
        if self.balancer_queue_order not in QUEUE_ORDERS:
            raise ValueError(f"balancer_queue_order must be one of {', '.join(QUEUE_ORDERS)}, got {self.balancer_queue_order!r}")
        if not self.feedback_max_factor >= 0.1:
            raise ValueError(f"feedback_max_factor must be >= 0.1 (the loop's smallest factor), got {self.feedback_max_factor}")
        if not (math.isfinite(self.balancer_queue_s) and self.balancer_queue_s >= 0):
            raise ValueError(f"balancer_queue_s must be a finite number of seconds >= 0, got {self.balancer_queue_s}")
        self._check_shared_host()
        if self.pab_fit not in ("largest", "best"):
            raise ValueError(f"pab_fit must be largest or best, got {self.pab_fit!r}")
        if self.nodes < 1:
            raise ValueError(f"nodes must be >= 1, got {self.nodes}")
        if self.pab_lent_slack and self.pab_variant != "closed":
            raise ValueError(f"pab_lent_slack needs --pab-variant closed (the {self.pab_variant} variant has no lent slack)")
        if self.max_num_seqs is not None and self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if (self.ttft_slo_s is not None and not self.ttft_slo_s > 0) or (
                self.tpot_slo_s is not None and not self.tpot_slo_s > 0):
            raise ValueError("SLOs must be > 0")
        if self.slo_tier:
            names = [t.name for t in parse_slo_tiers(self.slo_tier)]  # ValueError naming a malformed tier
            if self.only_tier is not None and self.only_tier not in names:
                raise ValueError(f"only_tier {self.only_tier!r} is not a tier; the tiers are {', '.join(names)}")
        elif self.only_tier is not None:
            raise ValueError("only_tier needs --slo-tier")
        if not 0 <= self.tier_hold_fraction < 1:
            raise ValueError(f"tier_hold_fraction must be in [0, 1), got {self.tier_hold_fraction}")
        if self.tier_shed_s is not None and not self.tier_shed_s >= 0:
            raise ValueError(f"tier_shed_s must be >= 0, got {self.tier_shed_s}")
        if self.rate_scale <= 0:
            raise ValueError(f"rate_scale must be > 0, got {self.rate_scale}")
        if self.pab_delay_s < 0 or self.pab_interval_s < 0:
            raise ValueError("pab_delay_s and pab_interval_s must be >= 0")
        if self.pab_variant not in ("closed", "edf", "prefill-only"):
            raise ValueError(f"pab_variant must be closed, edf or prefill-only, got {self.pab_variant!r}")
        if not 0.0 <= self.pab_fresh_share <= 1.0:
            raise ValueError(f"pab_fresh_share must be in [0, 1], got {self.pab_fresh_share!r}")
        if not self.pab_cache_affinity >= 0:
            raise ValueError(f"pab_cache_affinity must be >= 0, got {self.pab_cache_affinity!r}")
        if self.pab_tokens not in ("uncached", "all"):
            raise ValueError(f"pab_tokens must be uncached or all, got {self.pab_tokens!r}")
        if self.prefix_block_tokens < 1:
            raise ValueError(f"prefix_block_tokens must be >= 1, got {self.prefix_block_tokens}")
        if self.kv_cache_tokens is not None and self.kv_cache_tokens < 1:
            raise ValueError(f"kv_cache_tokens must be >= 1 (none given: the profile's), got {self.kv_cache_tokens}")
        if self.safety_factor is not None:
            check_at_least("safety_factor", self.safety_factor, 1.0)
        if self.step_model not in STEP_MODEL_FORMS:
            raise ValueError(f"step_model must be one of {', '.join(STEP_MODEL_FORMS)}, got {self.step_model!r}")
        if self.lend not in ("always", "at-risk"):
            raise ValueError(f"lend must be always or at-risk, got {self.lend!r}")
        if self.relegate not in ("none", "lost", "doomed", "fewest-late"):
            raise ValueError(f"relegate must be none, lost, doomed or fewest-late, got {self.relegate!r}")
        if not self.noise >= 0 or not -1 < self.noise_ar < 1:
            raise ValueError(f"noise must be >= 0 and noise_ar in (-1, 1), got {self.noise!r} and {self.noise_ar!r}")
        if self.host_s is not None and not self.host_s >= 0:
            raise ValueError(f"host_s must be >= 0, got {self.host_s!r}")
        for name in ("host_s_per_request", "host_fixed_s"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not 0 < self.pab_horizon_fraction <= 1:
            raise ValueError(f"pab_horizon_fraction must be in (0, 1], got {self.pab_horizon_fraction!r}")
        if not (self.client_path_s >= 0 and math.isfinite(self.client_path_s)):
            raise ValueError(f"client_path_s must be a finite number >= 0, got {self.client_path_s!r}")
        for name in ("max_prompt_tokens", "max_output_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.expected_output_tokens is not None and not self.expected_output_tokens >= 0:
            raise ValueError(f"expected_output_tokens must be >= 0, got {self.expected_output_tokens!r}")
        if self.drain_s < 0 or self.timeline_interval_s <= 0:
            raise ValueError("drain_s must be >= 0 and timeline_interval_s > 0")

    @property
    def slo(self) -> SLO:
        """Every request's SLO: the config's targets, else its profile's (``Profile.default_slo``)."""
        return self.slo_on(profile_default_slo(self.profile))

    def planning_model(self, profile: Any) -> Any:
        """The ``StepTimeModel`` the nodes plan with on ``profile`` (a ``Profile``), host time aside: the
        profile's model of ``step_model`` form with ``safety_factor`` (``Profile.planning_model``)."""
        return profile.planning_model(self.step_model, self.safety_factor)

    def slo_on(self, profile_slo: SLO) -> SLO:
        """The config's targets, each one it leaves unset from ``profile_slo`` (a profile given as an object)."""
        return SLO(self.ttft_slo_s or profile_slo.ttft_s, self.tpot_slo_s or profile_slo.tpot_s)

    def scheduler_knobs(self, tile_tokens: int) -> dict:
        """The knobs of ``make_policy`` that apply to the chosen scheduler. ``tile_tokens``: the chunk
        alignment when ``chunk_align_tokens`` is unset (the simulated profile's, ``tile_tokens_of``)."""
        if self.scheduler == "fairbatching":
            return {
                "anchor": self.anchor,
                "urgency": self.urgency,
                "budget_floor": self.budget_floor,
                "min_chunk_tokens": self.min_chunk_tokens,
                "seat_pressure": self.seat_pressure,
                "kv_pressure": self.kv_pressure,
                "relegate": self.relegate,
                "tpot_margin": self.tpot_margin,
                "lend": self.lend,
                "chunk_align_tokens": self.chunk_align_tokens if self.chunk_align_tokens is not None else tile_tokens,
            }
        return {"token_budget": self.token_budget}

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


CONFIG_FIELDS = tuple(fields(SimConfig))
