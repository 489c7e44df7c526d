"""The deploy/ configs pass the real validators: Ray's cluster-launcher validation,
Serve's deploy schema, promtool; the committed dashboard is the generator's output.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CLUSTER_YAMLS = ["aws.yaml", "onprem.yaml"]


def _launcher_validate(config: dict) -> dict:
    """What `ray up` does before it talks to a cloud: fill defaults, then check the schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.mark.parametrize("name", CLUSTER_YAMLS)
def test_cluster_yaml_passes_ray_up_validation(name):
    config = yaml.safe_load((DEPLOY / name).read_text())
    prepared = _launcher_validate(config)
    # every node exports metrics on the port Prometheus scrapes
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert any("--metrics-export-port=8080" in c for c in prepared[key]), key
    # the GPU build of vLLM with the serving layer, on every node
    assert any("[engine-gpu,serve]" in c for c in prepared["setup_commands"])


def test_aws_yaml_has_cpu_head_and_gpu_workers():
    config = yaml.safe_load((DEPLOY / "aws.yaml").read_text())
    types = config["available_node_types"]
    head = types[config["head_node_type"]]["node_config"]["InstanceType"]
    workers = [t["node_config"]["InstanceType"] for n, t in types.items() if n != config["head_node_type"]]
    assert head.startswith(("m", "c", "r")), head  # general-purpose CPU instance
    assert workers and all(w.startswith(("g", "p")) for w in workers), workers
    ports = {p["FromPort"] for p in config["provider"]["security_group"]["IpPermissions"]}
    assert {8000, 8080} <= ports


def test_launcher_validation_rejects_a_misspelt_key():
    config = yaml.safe_load((DEPLOY / "aws.yaml").read_text())
    config["available_node_types"]["gpu_worker"]["max_worker"] = 3  # typo of max_workers
    with pytest.raises(Exception):
        _launcher_validate(config)


def _serve_apps(doc: dict):
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.model_validate(doc).applications


@pytest.mark.parametrize("name", ["serve.yaml", "serve-local.yaml"])
def test_serve_config_passes_serve_schema_and_servecfg(name):
    from cluster.app import config_from_dict

    (app,) = _serve_apps(yaml.safe_load((DEPLOY / name).read_text()))
    cfg = config_from_dict(app.args, name)  # unknown keys or bad values raise
    assert app.name == cfg.app_name
    assert app.import_path == "cluster.app:app_builder"


def test_serve_local_yaml_is_what_fairbatching_serve_deploys():
    from cluster.app import ServeConfig, config_from_dict

    (app,) = _serve_apps(yaml.safe_load((DEPLOY / "serve-local.yaml").read_text()))
    assert config_from_dict(app.args) == ServeConfig()


def test_gpu_serve_config_puts_one_engine_per_gpu():
    from cluster.app import config_from_dict

    (app,) = _serve_apps(yaml.safe_load((DEPLOY / "serve.yaml").read_text()))
    cfg = config_from_dict(app.args)
    assert cfg.engine_num_gpus == 1 and cfg.one_engine_per_node
    assert (DEPLOY / "profiles" / f"{cfg.profile}.json").is_file()


@pytest.mark.parametrize("name", ["serve.yaml", "serve-local.yaml"])
def test_serve_import_path_builds_the_app(name):
    """``serve deploy`` imports ``import_path`` and calls it with ``args``: that must build an Application."""
    from importlib import import_module

    from ray.serve.deployment import Application

    (app,) = _serve_apps(yaml.safe_load((DEPLOY / name).read_text()))
    module, attr = app.import_path.split(":")
    assert isinstance(getattr(import_module(module), attr)(app.args), Application)


def test_kuberay_rayservice_carries_the_serve_config():
    docs = yaml.safe_load((DEPLOY / "kuberay-rayservice.yaml").read_text())
    assert docs["apiVersion"] == "ray.io/v1" and docs["kind"] == "RayService"
    embedded = yaml.safe_load(docs["spec"]["serveConfigV2"])
    _serve_apps(embedded)
    assert embedded == yaml.safe_load((DEPLOY / "serve.yaml").read_text())
    cluster = docs["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == "2.60.0"
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    assert all(g["rayStartParams"]["metrics-export-port"] == "8080" for g in groups)
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"


# -- Prometheus ----------------------------------------------------------------------------

promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing (make prometheus)")


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True, timeout=60)


@promtool
def test_promtool_check_config():
    r = _promtool("check", "config", "prometheus.yml")
    assert r.returncode == 0, r.stdout + r.stderr


@promtool
def test_promtool_check_rules():
    r = _promtool("check", "rules", "rules.yml")
    assert r.returncode == 0, r.stdout + r.stderr


@promtool
def test_promtool_rule_unit_tests():
    """Attainment counts rejections as misses; nothing rejected means a 0 rate, not a gap."""
    r = _promtool("test", "rules", "rules_test.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_scrape_config_reads_rays_service_discovery_file():
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = cfg["scrape_configs"]
    assert job["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
    assert any(r.get("target_label") == "cluster" for r in job["relabel_configs"])


# -- metric names and the dashboard ---------------------------------------------------------

def test_engine_replica_exports_the_listed_names():
    """Every engine metric the dashboard reads is one the engine replica records, with its kind."""
    from deploy.observability.metrics import ENGINE, METRICS

    src = (ROOT / "node" / "engine_replica.py").read_text()
    exported = dict((name, kind) for kind, name in re.findall(r'\b(gauge|counter|hist)\(\s*"([a-z0-9_:]+)"', src))
    for m in METRICS:
        if m.source == ENGINE:
            assert m.name in exported, f"{m.name} is not recorded by node/engine_replica.py"
            assert exported[m.name] == {"histogram": "hist"}.get(m.kind, m.kind), m.name


def test_counter_names_follow_rays_export():
    from deploy.observability.metrics import BY_NAME

    assert BY_NAME["fairbatching_urgent_decodes_total"].prom == "ray_fairbatching_urgent_decodes_total"
    assert BY_NAME["vllm:generation_tokens"].prom == "ray_vllm_generation_tokens_total"
    assert BY_NAME["fairbatching_pab_tokens"].prom == "ray_fairbatching_pab_tokens"


def test_committed_dashboard_is_current():
    from deploy.grafana.dashboard import DEFAULT_OUT, render

    assert DEFAULT_OUT.read_text() == render(), "regenerate: python -m deploy.grafana.dashboard"


def test_dashboard_panels_and_variables():
    import json

    from deploy.grafana.dashboard import DEFAULT_OUT

    board = json.loads(DEFAULT_OUT.read_text())
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"cluster", "node", "model"} <= variables
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    titles = " | ".join(p["title"] for p in panels)
    for needed in ("PAB per node", "Time budget", "predicted vs measured", "TTFT", "TPOT", "attainment",
                   "rejections", "in flight", "KV cache", "vLLM"):
        assert needed in titles, needed
    assert all(p["targets"] and all(t["expr"] for t in p["targets"]) for p in panels)



def test_event_counters_read_as_zero_before_their_first_event():
    import json

    from deploy.grafana.dashboard import DEFAULT_OUT
    from deploy.observability.metrics import EVENT_ONLY, prom

    exprs = [t["expr"] for p in json.loads(DEFAULT_OUT.read_text())["panels"] if p["type"] != "row"
             for t in p.get("targets", [])]
    for name in EVENT_ONLY:
        using = [e for e in exprs if prom(name) in e]
        assert using, name
        assert all(" or 0 * " in e for e in using), using


def test_provisioning_points_at_the_dashboard_datasource():
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    import json

    board = json.loads((DEPLOY / "grafana" / "fairbatching.json").read_text())
    (dsvar,) = [v for v in board["templating"]["list"] if v["name"] == "datasource"]
    assert ds["datasources"][0]["uid"] == dsvar["current"]["value"]
    prov = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "fairbatching.yaml").read_text())
    assert prov["providers"][0]["type"] == "file"
