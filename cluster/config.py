"""The one deployment config: ``ServeConfig``, validated with pydantic, read from a Ray Serve config file.

Every knob of a deployment is a field here; the engine replicas' ``EngineSpec``, the
routers' ``BalancerSettings`` and the engine core's ``NodeConfig`` are derived from it
(``ServeConfig.engine_spec``, ``ServeConfig.balancer_settings``), so their values never
disagree. The SLO defaults come from the step-time profile
(``node.fit.profile.Profile.default_slo``): the simulator, the engine and the serving
layer running on one profile default to the same targets.

One file format serves both ways of deploying: a Ray Serve config (what ``serve deploy``
takes), whose application with ``import_path: cluster.app:app_builder`` holds the
``ServeConfig`` fields in ``args``::

    http_options: {host: 127.0.0.1, port: 8000}
    applications:
      - name: fairbatching
        route_prefix: /
        import_path: cluster.app:app_builder
        args: {engines: 2, profile: cpu-tiny-llama}

``fairbatching serve --config FILE`` reads the same file (``load_config``): ``args``,
with ``http_options.host`` / ``port`` and the application's ``name`` as ``host``,
``port`` and ``app_name``. Errors name the key and the file (``ConfigError``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from node.core.request import SLO
from node.vllm.names import SERVED_ASYNC_SCHEDULER, SERVED_SCHEDULER, TINY_MODEL

#: ``import_path`` of the application ``cluster.app:app_builder`` builds.
APP_IMPORT_PATH = "cluster.app:app_builder"
ROUTERS = ("pab", "serve-default")
#: ``scheduler`` -> the engine's ``scheduler_cls``; ``fairbatching-async`` is the same policy on
#: vLLM's AsyncScheduler (GPU default: overlapped steps); ``vllm`` is stock vLLM.
SCHEDULERS = {
    "fairbatching": SERVED_SCHEDULER,
    "fairbatching-async": SERVED_ASYNC_SCHEDULER,
    "vllm": None,
}


class ConfigError(ValueError):
    """A serve config is malformed; the message names the key (and file)."""


def _tiny_cpu_engine_args() -> dict[str, Any]:
    return {
        "load_format": "dummy",
        "dtype": "float32",
        "enforce_eager": True,
        "max_model_len": 2048,
        "max_num_seqs": 64,
        "max_num_batched_tokens": 512,
        "block_size": 32,
        "enable_prefix_caching": False,
        "seed": 0,
    }


_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


class TierConfig(BaseModel):
    """One SLO class of a deployment (``ServeConfig.slo_tiers``): its targets, seconds, and how
    much tighter a request of the class may ask to be held (``min_*``; None: not tighter than
    the class's own targets). A request may always ask for looser targets."""

    model_config = ConfigDict(extra="forbid", strict=True)

    ttft_slo_s: float = Field(gt=0, allow_inf_nan=False)
    tpot_slo_s: float = Field(gt=0, allow_inf_nan=False)
    min_ttft_slo_s: Optional[float] = Field(None, gt=0, allow_inf_nan=False)
    min_tpot_slo_s: Optional[float] = Field(None, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _bounds_below_targets(self) -> "TierConfig":
        for key in ("ttft", "tpot"):
            low, target = getattr(self, f"min_{key}_slo_s"), getattr(self, f"{key}_slo_s")
            if low is not None and low > target:
                raise ValueError(f"min_{key}_slo_s ({low}) is above {key}_slo_s ({target})")
        return self

    @property
    def floor(self) -> SLO:
        """The tightest targets a request of this class may ask for, seconds."""
        return SLO(self.min_ttft_slo_s or self.ttft_slo_s, self.min_tpot_slo_s or self.tpot_slo_s)


class ServeConfig(BaseModel):
    """Every knob of a deployment. The defaults are the embedded default: two engines of the tiny
    CPU Llama on this machine, the PAB router, FairBatching on every engine."""

    model_config = ConfigDict(extra="forbid", strict=True)

    # model and engines
    model: str = TINY_MODEL  # HF id or path; "tiny" = the random-weight tiny Llama written locally
    served_model_name: str = "tiny-llama"
    engines: int = Field(2, ge=1)  # engine replicas (one per GPU node on a GPU cluster)
    engine_num_cpus: float = Field(0.4, ge=0)
    engine_num_gpus: float = Field(0.0, ge=0)
    one_engine_per_node: bool = False  # max_replicas_per_node = 1
    engine_args: dict[str, Any] = Field(default_factory=_tiny_cpu_engine_args)  # vLLM AsyncEngineArgs
    engine_env: dict[str, Any] = Field(default_factory=lambda: {"VLLM_CPU_KVCACHE_SPACE": "1"})  # str() of each
    # Niceness added to each engine's child processes (vLLM's engine core: the forward passes) over the
    # replica's. None: 4 on CPU engines, 0 on GPU. On shared cores the ingress and the replicas' token
    # streams (Ray's worker niceness) then run before the next forward pass: at the same niceness a
    # burst of refusals at the ingress stalled every admitted stream 2-4 s (bench/results/TIERS.md).
    engine_core_nice: Optional[int] = Field(None, ge=0, le=19)
    scheduler: Literal["fairbatching", "fairbatching-async", "vllm"] = "fairbatching"
    # NodeConfig overrides for the scheduler. The TPOT guard band: FairBatching paces a decode to its
    # deadline, so its mean TPOT lands just under the SLO and the way back to the client tips it
    # over; planning at 0.8 x the TPOT leaves that way 20 % (bench/results/SERVE.md). Seat pressure and
    # fewest-late relegation: the knobs that measured best on the engine at saturation (ENGINE.md).
    node_config: dict[str, Any] = Field(default_factory=lambda: {
        "knobs": {"tpot_margin": 0.2, "seat_pressure": 0.8, "relegate": "fewest-late"}})
    profile: str = "cpu-tiny-llama"  # step-time profile: a name in deploy/profiles or a path
    # Deployment default SLOs, seconds (requests may name their own); None: the profile's.
    ttft_slo_s: Optional[float] = Field(None, gt=0, allow_inf_nan=False)
    tpot_slo_s: Optional[float] = Field(None, gt=0, allow_inf_nan=False)
    # SLO classes (docs/tiers.md): {name: {ttft_slo_s, tpot_slo_s, min_ttft_slo_s?, min_tpot_slo_s?}}. A request
    # names one with the x-slo-class header or vllm_xargs.slo_class; default_slo_tier's when it names none.
    # With classes, ttft_slo_s and tpot_slo_s stay unset: the default class holds the deployment's default.
    slo_tiers: dict[str, TierConfig] = Field(default_factory=dict)
    default_slo_tier: Optional[str] = None
    # Share of each engine's idle budget and seats that requests of every class but the tightest must
    # leave free: under overload they are refused (429) while the tightest class is still admitted.
    tier_hold_fraction: float = Field(0.1, ge=0, lt=1, allow_inf_nan=False)
    # After a request of the tightest class is refused, requests of every other class are refused for this
    # long, seconds (None: the tightest class's TTFT SLO; 0: never): batch is shed before interactive misses.
    tier_shed_s: Optional[float] = Field(None, ge=0, allow_inf_nan=False)
    anchor: Literal["arrival", "first-token"] = "first-token"  # decode deadlines from the first token (DESIGN 2)
    report_interval_s: float = Field(0.1, gt=0, allow_inf_nan=False)  # replicas report, routers poll (DESIGN 3)
    max_ongoing_requests: int = Field(256, ge=1)  # per engine; admission is PAB's job
    # balancing
    router: Literal["pab", "serve-default"] = "pab"  # our router (any balancer) | Ray Serve's power of two
    balancer: str = "pab"  # placement policy: pab, round-robin, power-of-two, least-prefill, queue-kv
    balancer_knobs: dict[str, Any] = Field(default_factory=dict)
    admission_cap: Optional[int] = Field(None, ge=0)  # naive cap: queued prompt tokens per engine
    max_in_flight: Optional[int] = Field(None, ge=1)  # static cap: requests per engine (the in-flight-cap baseline)
    admission_wait_s: float = Field(0.0, ge=0, allow_inf_nan=False)  # bounded wait at the ingress before a 429
    # the order held requests are retried in: earliest first-token deadline first (a tighter class goes
    # ahead), arrival order, or arrival order stopping at the first that does not fit (balancer.core.admission_queue)
    admission_wait_order: str = "edf"
    # refuse a request that waited this share of its TTFT before admission (None: never)
    shed_after_fraction: Optional[float] = Field(0.5, gt=0, le=1)
    registry_timeout_s: float = Field(0.5, gt=0, allow_inf_nan=False)  # one poll of the registry gives up after this
    feedback: dict[str, Any] = Field(default_factory=dict)  # closed loop knobs (node.core.feedback.FeedbackConfig)
    # PAB's horizon as a share of the TTFT SLO: the rest is for the way back to the client and the
    # tail (the closed loop steers the measured P90 to feedback.target_ratio, 0.7 by default).
    pab_horizon_fraction: float = Field(0.6, gt=0, le=1)
    # Honour a front proxy's X-Request-Start stamp as the arrival (the budget and the loop then see the
    # time spent in front). A proxy that sets the header overwrites the client's; set false when clients
    # reach Serve directly, or a client could backdate its requests.
    trust_request_start: bool = True
    routing_stats_period_s: float = Field(1.0, gt=0, allow_inf_nan=False)  # Serve's fallback view (registry away)
    # HTTP
    host: str = "127.0.0.1"
    port: int = Field(8000, gt=0, lt=65536)
    ingress_replicas: int = Field(1, ge=1)
    ingress_num_cpus: float = Field(0.1, ge=0)
    first_output_timeout_s: float = Field(120.0, gt=0, allow_inf_nan=False)
    app_name: str = "fairbatching"
    # vLLM's OpenAI frontend options (its BaseFrontendArgs fields, as `vllm serve` takes them):
    # enable_auto_tool_choice, tool_call_parser, chat_template, response_role, ...
    openai_server: dict[str, Any] = Field(default_factory=dict)
    # API keys (clients send `Authorization: Bearer <key>`); also `fairbatching serve --api-key` and the
    # VLLM_API_KEY environment variable. Only their sha256 digests reach the ingress.
    api_keys: list[str] = Field(default_factory=list)
    # The same keys given as sha256 hex digests (`printf %s KEY | sha256sum`): for a config file that Ray
    # keeps (`serve deploy`, KubeRay), so no key is stored in plain text.
    api_key_sha256: list[str] = Field(default_factory=list)
    max_body_bytes: int = Field(16 << 20, ge=1024)  # a larger request body gets 413

    def __init__(self, **data: Any) -> None:
        """Raises ``ConfigError`` naming each key at fault (unknown, wrong type, out of bounds)."""
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None

    @model_validator(mode="after")
    def _tiers_consistent(self) -> "ServeConfig":
        if not self.slo_tiers:
            if self.default_slo_tier is not None:
                raise ValueError(f"default_slo_tier: {self.default_slo_tier!r} names no class; slo_tiers is empty")
            return self
        bad = [n for n in self.slo_tiers if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", n)]
        if bad:
            raise ValueError(f"slo_tiers: class names are 1-64 letters, digits, '_', '.' or '-', got {bad}")
        if self.default_slo_tier is None:
            raise ValueError(f"default_slo_tier: set it to one of {', '.join(self.slo_tiers)} (the class of a "
                             f"request that names none)")
        if self.default_slo_tier not in self.slo_tiers:
            raise ValueError(f"default_slo_tier: {self.default_slo_tier!r} is not one of {', '.join(self.slo_tiers)}")
        if self.ttft_slo_s is not None or self.tpot_slo_s is not None:
            raise ValueError("ttft_slo_s/tpot_slo_s: with slo_tiers, the default class's targets are the "
                             "deployment's default; leave these unset")
        return self

    @field_validator("balancer", "admission_wait_order")
    @classmethod
    def _known_name(cls, value: str, info) -> str:
        from balancer.core.admission_queue import QUEUE_ORDERS
        from balancer.core.policies import PLACEMENT_NAMES

        names = {"balancer": PLACEMENT_NAMES, "admission_wait_order": QUEUE_ORDERS}[info.field_name]
        if value not in names:
            raise ValueError(f"must be one of {', '.join(names)}, got {value!r}")
        return value

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        from node.fit.profile import profile_default_slo

        profile_default_slo(value)  # ProfileError (a ValueError) names the file and the shipped profiles
        return value

    @field_validator("openai_server")
    @classmethod
    def _known_frontend_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value:
            from node.vllm.openai_server import unknown_frontend_options

            unknown = unknown_frontend_options(value)
            if unknown:
                raise ValueError(f"unknown vLLM frontend option(s) {', '.join(unknown)}")
        return value

    @field_validator("api_keys")
    @classmethod
    def _non_empty_keys(cls, value: list[str]) -> list[str]:
        if not all(value):
            raise ValueError("must be a list of non-empty strings")
        return value

    @field_validator("api_key_sha256")
    @classmethod
    def _hex_digests(cls, value: list[str]) -> list[str]:
        if not all(_SHA256.match(h) for h in value):
            raise ValueError("must be a list of sha256 hex digests (64 hex digits each)")
        return value

    # -- derived -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def tier_slos(self) -> dict[str, SLO]:
        """Each SLO class's targets as an ``SLO`` with its ``tier`` name and ``priority`` rank (0 the
        tightest: by TTFT, then TPOT), in the config's order; empty without classes."""
        from cluster.workload.tiers import ranked_slos

        return ranked_slos({name: SLO(t.ttft_slo_s, t.tpot_slo_s) for name, t in self.slo_tiers.items()})

    @property
    def tightest_slo(self) -> SLO:
        """The tightest SLO a request gets by default: the tightest class's, else the default SLO.
        PAB's horizon and reference step (every engine budgets for it)."""
        classes = self.slo_classes()
        return classes.tightest if classes is not None else self.slo

    @property
    def slo(self) -> SLO:
        """The deployment's default SLO: the default class's, else the config's targets, else the
        profile's (``Profile.default_slo``)."""
        if self.slo_tiers:
            return self.tier_slos()[self.default_slo_tier]
        if self.ttft_slo_s is not None and self.tpot_slo_s is not None:
            return SLO(self.ttft_slo_s, self.tpot_slo_s)
        from node.fit.profile import profile_default_slo

        default = profile_default_slo(self.profile)
        return SLO(self.ttft_slo_s or default.ttft_s, self.tpot_slo_s or default.tpot_s)

    def node_config_for_engines(self):
        """The engines' ``NodeConfig`` (None with stock vLLM): ``node_config`` over the deployment's
        profile, SLOs and anchor. Raises ``ValueError`` for an unknown or malformed key."""
        if SCHEDULERS[self.scheduler] is None:
            return None
        from node.vllm.node_config import NodeConfig

        overrides = dict(self.node_config)
        clash = sorted(set(overrides) & {"profile", "ttft_slo_s", "tpot_slo_s"})
        if clash:
            raise ValueError(f"sets {', '.join(clash)}: set them at the top level of the config, "
                             f"so the ingress and the engines agree")
        slo = self.slo
        if overrides.get("policy", "fairbatching") == "fairbatching":  # the anchor joins the policy's knobs
            overrides["knobs"] = {"anchor": self.anchor, **overrides.get("knobs", {})}
        config = NodeConfig.from_dict(
            {"profile": self.profile, "ttft_slo_s": slo.ttft_s, "tpot_slo_s": slo.tpot_s, **overrides})
        from node.core.policies import make_policy
        from node.core.step_time import StepTimeModel

        make_policy(config.policy, StepTimeModel(0.0, 1.0, 0.0), **config.knobs)  # the knobs are the policy's
        return config

    def feedback_config(self):
        """The closed loop's ``FeedbackConfig``: ``feedback`` over a cool-down of one TTFT SLO."""
        from node.core.feedback import FeedbackConfig

        return FeedbackConfig(**{"cooldown_s": self.tightest_slo.ttft_s, **self.feedback})

    @model_validator(mode="after")
    def _derived_configs_build(self) -> "ServeConfig":
        """The engines', the loop's and the balancer's configs are built here, at the edge, so a bad
        knob is refused when the file is read, not when every replica starts."""
        for key, build in (("node_config", self.node_config_for_engines), ("feedback", self.feedback_config),
                           ("balancer_knobs", lambda: self.balancer_settings().make_policy([0]))):
            try:
                build()
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{key}: {exc}") from None
        if self.admission_wait_s > 0 and self.router != "pab":
            raise ValueError("admission_wait_s: the wait is the ingress's admission, which needs router: pab "
                             f"(with router: {self.router} no request is refused, so none waits)")
        return self

    def engine_spec(self):
        """The engine replicas' ``EngineSpec``."""
        from node.serve.engine_replica import EngineSpec

        slo = self.slo
        return EngineSpec(
            model=self.model,
            served_model_name=self.served_model_name,
            engine_args=dict(self.engine_args),
            scheduler_cls=SCHEDULERS[self.scheduler],
            node_config=self.node_config_for_engines(),
            profile=self.profile,
            ttft_slo_s=slo.ttft_s,
            tpot_slo_s=slo.tpot_s,
            anchor=self.anchor,
            report_interval_s=self.report_interval_s,
            feedback=self.feedback_config(),
            pab_horizon_fraction=self.pab_horizon_fraction,
            slo_tiers=self.tier_slos(),
            tier_hold_fraction=self.tier_hold_fraction,
            openai_server=dict(self.openai_server),
            engine_core_nice=self.engine_core_nice,
        )

    @property
    def prefix_block_tokens(self) -> Optional[int]:
        """The engines' KV block size, tokens, when they cache prefixes (None when ``engine_args`` turns
        ``enable_prefix_caching`` off; vLLM turns it on by default). The ingress hashes prompts in blocks
        of this size to estimate each node's cache hits (``balancer.core.prefix``). Without an explicit
        ``block_size`` it is vLLM 0.32's default: 16 (``CacheConfig.DEFAULT_BLOCK_SIZE``) on GPU engines,
        128 on CPU engines (``vllm.platforms.cpu``); each engine replica checks its own at start-up."""
        if self.engine_args.get("enable_prefix_caching") is False:
            return None
        size = self.engine_args.get("block_size")
        if size is not None:
            return int(size)
        return 16 if self.engine_num_gpus > 0 else 128

    def balancer_settings(self):
        """The router's and the ingress's ``BalancerSettings`` (one per deployment, same in both)."""
        from balancer.serve.admission import BalancerSettings

        return BalancerSettings(
            self.balancer, dict(self.balancer_knobs), admission_cap=self.admission_cap,
            max_in_flight=self.max_in_flight, refresh_interval_s=self.report_interval_s,
            registry_timeout_s=self.registry_timeout_s, shed_after_fraction=self.shed_after_fraction,
            default_ttft_slo_s=self.slo.ttft_s,
            class_ttft_slo_s={name: t.ttft_slo_s for name, t in self.slo_tiers.items()},
            prefix_block_tokens=self.prefix_block_tokens,
            tier_shed_s=self.resolved_tier_shed_s,
            tightest_class=self.slo_classes().tightest.tier if self.slo_tiers else None,
            default_class=self.default_slo_tier,
        )

    @property
    def resolved_tier_shed_s(self) -> Optional[float]:
        """``tier_shed_s``, its default resolved: the tightest class's TTFT SLO (None without classes)."""
        if not self.slo_tiers:
            return None
        if self.tier_shed_s is not None:
            return self.tier_shed_s or None
        return self.slo_classes().tightest.ttft_s

    def slo_classes(self):
        """The ingress's ``SLOClasses`` (None without classes)."""
        if not self.slo_tiers:
            return None
        from cluster.workload.tiers import SLOClasses

        return SLOClasses(tiers=self.tier_slos(), floors={n: t.floor for n, t in self.slo_tiers.items()},
                          default=self.default_slo_tier, hold_fraction=self.tier_hold_fraction)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def serve_config(self) -> dict[str, Any]:
        """This config as a Ray Serve config document (what ``serve deploy`` and ``load_config`` read)."""
        args = self.model_dump(exclude={"host", "port", "app_name"}, exclude_defaults=True)
        return {
            "http_options": {"host": self.host, "port": self.port},
            "applications": [{"name": self.app_name, "route_prefix": "/", "import_path": APP_IMPORT_PATH,
                              "args": args}],
        }


def embedded_default_slo() -> SLO:
    """The SLO ``fairbatching serve`` holds requests to with no config (its profile's, seconds): the
    default of the client commands (``load``, ``bench overload``, ``bench vllm-client``)."""
    return ServeConfig().slo


def _describe(exc: ValidationError) -> str:
    """Pydantic's errors as ``key: message`` lines (the first names the key at fault)."""
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key {key}; accepted: {', '.join(ServeConfig.model_fields)}")
        else:
            got = "" if err["type"] == "value_error" else f" (got {err.get('input')!r})"
            parts.append(f"{key + ': ' if key else ''}{err['msg'].removeprefix('Value error, ')}{got}")
    return "; ".join(parts)


def config_from_dict(data: Any, source: str = "<config>") -> ServeConfig:
    """A ``ServeConfig`` from its fields (a Serve application's ``args``); ``ConfigError`` naming the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a serve config must be a mapping, got {type(data).__name__}")
    try:
        return ServeConfig(**data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def config_from_serve_document(doc: Any, source: str = "<config>") -> ServeConfig:
    """The ``ServeConfig`` of the application built by ``cluster.app:app_builder`` in a Serve config."""
    if not isinstance(doc, dict) or not isinstance(doc.get("applications"), list):
        raise ConfigError(
            f"{source}: not a Ray Serve config (no 'applications' list). The deployment's keys go under "
            f"applications[].args of an application with import_path {APP_IMPORT_PATH} "
            f"(see deploy/serve-local.yaml)")
    ours = [a for a in doc["applications"] if isinstance(a, dict) and a.get("import_path") == APP_IMPORT_PATH]
    if len(ours) != 1:
        raise ConfigError(f"{source}: needs exactly one application with import_path {APP_IMPORT_PATH}, "
                          f"found {len(ours)}")
    (app,) = ours
    args = app.get("args") or {}
    if not isinstance(args, dict):
        raise ConfigError(f"{source}: applications[].args must be a mapping, got {type(args).__name__}")
    http = doc.get("http_options") or {}
    placed = {"host": http.get("host"), "port": http.get("port"), "app_name": app.get("name")}
    for key, value in placed.items():
        if value is None:
            continue
        if key in args and args[key] != value:
            raise ConfigError(f"{source}: args.{key} ({args[key]!r}) disagrees with the Serve config's "
                              f"{'http_options.' + key if key != 'app_name' else 'application name'} ({value!r})")
        args = {**args, key: value}
    return config_from_dict(args, source)


def load_config(path: str | Path) -> ServeConfig:
    """The ``ServeConfig`` in a Ray Serve config file, YAML (``.yaml``/``.yml``) or JSON.

    Raises ``ConfigError`` naming the file and the key: no such file, not parseable, not a
    Serve config, or a field missing its type or bounds.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            doc = yaml.safe_load(text)
        else:
            doc = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - yaml and json raise different types
        raise ConfigError(f"{path}: cannot parse: {exc}") from None
    return config_from_serve_document(doc, str(path))
