"""The deploy/ configs pass the real validators: Ray's cluster-launcher validation,
Serve's deploy schema, promtool; the committed dashboard is the generator's output.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import ipaddress
import itertools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Optional

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


# -- who may reach the Ray ports -----------------------------------------------------------

#: Ports a security group may open to the internet: Serve's HTTP (the OpenAI API, behind TLS and
#: API keys) and SSH, which `ray up` itself opens to 0.0.0.0/0 on every group it creates (the
#: launcher needs it; narrowing it means bringing your own SecurityGroupIds, see aws.yaml).
PUBLIC_OK = {8000, 22}
#: Ray's own ports: reachable only from the cluster's own security group, never from an address range.
RAY_INTERNAL = {6379, 8265, 10001, 8076}
_PRIVATE_NETS = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")]


def _rays_default_ingress(own_group: str, extended: list[dict]) -> list[dict]:
    """The rules `ray up` authorizes on a security group it creates: Ray's own two, then the config's.

    Taken from Ray's AWS provider, whose module imports boto3 (not a project dependency): its pure
    rule builders are compiled from the installed source, so the check follows the Ray in use.
    """
    spec = importlib.util.find_spec("ray.autoscaler._private.aws")
    tree = ast.parse(Path(spec.submodule_search_locations[0], "config.py").read_text())
    wanted = {"_create_default_inbound_rules", "_create_default_intracluster_inbound_rules",
              "_create_default_ssh_inbound_rules"}
    namespace: dict = {"itertools": itertools}
    found = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    exec(compile(ast.Module(body=found, type_ignores=[]), "ray/autoscaler/_private/aws/config.py", "exec"), namespace)
    assert wanted <= namespace.keys(), "Ray's AWS provider no longer builds its rules this way"
    return namespace["_create_default_inbound_rules"]({own_group}, extended)


def _ports(rule: dict) -> Optional[set[int]]:
    """The ports a rule opens; None for all of them (protocol -1 or port -1)."""
    if str(rule.get("IpProtocol")) == "-1" or rule.get("FromPort", -1) == -1:
        return None
    return set(range(int(rule["FromPort"]), int(rule["ToPort"]) + 1))


def _ranges(rule: dict) -> list:
    return [ipaddress.ip_network(r["CidrIp"], strict=False) for r in rule.get("IpRanges", [])] + \
        [ipaddress.ip_network(r["CidrIpv6"], strict=False) for r in rule.get("Ipv6Ranges", [])]


def _ingress_problems(config: dict) -> list[str]:
    """What the AWS config's security group would let in that it should not (empty: nothing)."""
    problems = []
    extended = config["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in _rays_default_ingress("sg-own", copy.deepcopy(extended)):
        ports = _ports(rule)
        for net in _ranges(rule):
            public = not any(net.version == p.version and net.subnet_of(p) for p in _PRIVATE_NETS)
            if public and (ports is None or not ports <= PUBLIC_OK):
                problems.append(f"{net} may reach {'every port' if ports is None else sorted(ports - PUBLIC_OK)}")
            if ports is None or ports & RAY_INTERNAL:
                problems.append(f"{net} may reach Ray's own ports {sorted(RAY_INTERNAL & (ports or RAY_INTERNAL))}")
    # node-to-node: every port, from the group itself only
    assert any(_ports(r) is None and r.get("UserIdGroupPairs") == [{"GroupId": "sg-own"}] and not _ranges(r)
               for r in _rays_default_ingress("sg-own", []))
    return problems


def _dashboard_hosts(commands: list[str]) -> list[str]:
    starts = [c for c in commands if re.search(r"\bray start\b.*--head\b", c, re.S)]
    assert len(starts) == 1, starts
    return re.findall(r"--dashboard-host[= ](\S+)", starts[0])


@pytest.mark.parametrize("name", CLUSTER_YAMLS)
def test_cluster_yaml_keeps_the_dashboard_on_the_heads_loopback(name):
    """`ray start --head` binds the dashboard (and `serve deploy`'s REST API) to 127.0.0.1; `ray dashboard` tunnels to it."""
    config = yaml.safe_load((DEPLOY / name).read_text())
    assert _dashboard_hosts(config["head_start_ray_commands"]) == ["127.0.0.1"]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert not any("0.0.0.0" in c for c in config[key] if "ray start" in c), key


def test_aws_security_group_opens_only_serve_and_ssh_to_the_internet():
    config = yaml.safe_load((DEPLOY / "aws.yaml").read_text())
    assert _ingress_problems(config) == []


@pytest.mark.parametrize("rule, why", [
    ({"FromPort": 6379, "ToPort": 6379, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}, "GCS"),
    ({"FromPort": 8000, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}, "a range"),
    ({"FromPort": 10001, "ToPort": 10001, "IpProtocol": "tcp", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}, "IPv6"),
    ({"FromPort": -1, "ToPort": -1, "IpProtocol": "-1", "IpRanges": [{"CidrIp": "52.0.0.0/8"}]}, "all ports"),
    ({"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}, "dashboard"),
])
def test_ingress_check_catches_an_open_ray_port(rule, why):
    config = yaml.safe_load((DEPLOY / "aws.yaml").read_text())
    config["provider"]["security_group"]["IpPermissions"].append(rule)
    assert _ingress_problems(config), why
    _launcher_validate(config)  # still a valid config: the schema does not catch it, this test does


def test_dashboard_check_catches_a_public_dashboard():
    config = yaml.safe_load((DEPLOY / "aws.yaml").read_text())
    config["head_start_ray_commands"] = [c.replace("127.0.0.1", "0.0.0.0") for c in config["head_start_ray_commands"]]
    assert _dashboard_hosts(config["head_start_ray_commands"]) == ["0.0.0.0"]


def test_kuberay_head_service_stays_inside_the_cluster():
    """KubeRay's operator needs the dashboard on the pod's interface; the head Service stays ClusterIP."""
    head = yaml.safe_load((DEPLOY / "kuberay-rayservice.yaml").read_text())["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"


def _serve_apps(doc: dict):
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.model_validate(doc).applications


@pytest.mark.parametrize("name", ["serve.yaml", "serve-local.yaml", "serve-tiers.yaml", "serve-prefix.yaml"])
def test_serve_config_passes_serve_schema_and_servecfg(name):
    from cluster.config import config_from_dict

    (app,) = _serve_apps(yaml.safe_load((DEPLOY / name).read_text()))
    cfg = config_from_dict(app.args, name)  # unknown keys or bad values raise
    assert app.name == cfg.app_name
    assert app.import_path == "cluster.app:app_builder"


def test_serve_local_yaml_is_what_fairbatching_serve_deploys():
    """The file `fairbatching serve --config` and `serve deploy` both take; no keys of its own."""
    from cluster.config import ServeConfig, load_config

    assert load_config(DEPLOY / "serve-local.yaml") == ServeConfig()


def test_every_shipped_serve_config_loads_as_fairbatching_serve_reads_it():
    from cluster.config import ServeConfig, load_config

    gpu = load_config(DEPLOY / "serve.yaml")
    assert (gpu.host, gpu.port, gpu.app_name) == ("0.0.0.0", 8000, "fairbatching")
    tiers = load_config(DEPLOY / "serve-tiers.yaml")
    assert tiers.slo.tier == "interactive" and set(tiers.tier_slos()) == {"interactive", "batch"}
    prefix = load_config(DEPLOY / "serve-prefix.yaml")  # the embedded default but for prefix caching
    assert prefix.engine_args == {**ServeConfig().engine_args, "enable_prefix_caching": True}
    assert prefix.prefix_block_tokens == 32 and gpu.prefix_block_tokens is not None


def test_gpu_serve_config_puts_one_engine_per_gpu():
    from cluster.config import config_from_dict

    (app,) = _serve_apps(yaml.safe_load((DEPLOY / "serve.yaml").read_text()))
    cfg = config_from_dict(app.args)
    assert cfg.engine_num_gpus == 1 and cfg.one_engine_per_node
    assert (DEPLOY / "profiles" / f"{cfg.profile}.json").is_file()


@pytest.mark.parametrize("name", ["serve.yaml", "serve-local.yaml", "serve-tiers.yaml", "serve-prefix.yaml"])
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

def test_engine_replica_builds_every_listed_engine_metric(monkeypatch):
    """The replica's instruments are the engine metrics of the one list: no more, no fewer."""
    import node.serve.engine_replica as replica
    from node.serve.metrics import ENGINE, METRICS

    built = []
    monkeypatch.setattr(replica, "instrument", lambda name, tags=None: built.append(name) or object())
    replica._Metrics("n", "r")
    assert sorted(built) == sorted(m.name for m in METRICS if m.source == ENGINE)


def test_instrument_takes_kind_description_and_buckets_from_the_list():
    from ray.util import metrics as ray_metrics

    from node.serve.metrics import BY_NAME, LATENCY_BUCKETS_S, instrument

    hist = instrument("fairbatching_ttft_s", {"node": "n", "replica": "r"})
    assert isinstance(hist, ray_metrics.Histogram)
    assert tuple(hist.boundaries) == LATENCY_BUCKETS_S
    assert hist.info["description"] == BY_NAME["fairbatching_ttft_s"].description
    assert isinstance(instrument("fairbatching_admission_rejections_total"), ray_metrics.Counter)
    with pytest.raises(KeyError):
        instrument("fairbatching_not_listed")


def test_counter_names_follow_rays_export():
    from node.serve.metrics import BY_NAME

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
    from node.serve.metrics import EVENT_ONLY, prom

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
