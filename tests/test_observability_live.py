"""A real Prometheus scrapes a running FairBatching app, and every dashboard query returns data.

The test starts a local Ray cluster on loopback: a CPU head and two fake-GPU worker nodes
(``ray.cluster_utils.Cluster``), each with its own metrics export port, dashboard
on so Ray writes its Prometheus service discovery file; deploys the real app
(``cluster.app.deploy``: one tiny CPU engine per GPU node, PAB router), starts the
Debian ``prometheus`` binary on a free loopback port with
``deploy/prometheus/prometheus.yml`` (only the discovery file's path and the
intervals changed) and ``rules.yml``, and runs a load through the OpenAI API.
Then every query of the committed dashboard, with Grafana's variables set to
"All", must return data, and the variables' label queries must list the
cluster and both nodes. (Counters of events a healthy run may never see,
``EVENT_ONLY``, are absent until their first event; the dashboard's queries show 0
for them then, so they return data too.) The per-node PAB
series of the run are plotted to a PNG (``FAIRBATCHING_SAVE_RESULTS=1``
writes it to bench/results/observability/).
Only the Ray cluster and the prometheus process this test starts are stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from cluster.net import free_ports

pytestmark = [pytest.mark.serve, pytest.mark.skipif(shutil.which("prometheus") is None,
                                                    reason="prometheus missing (make prometheus)")]

ROOT = Path(__file__).resolve().parents[1]
RATE_WINDOW = "20s"  # stands in for Grafana's $__rate_interval at a 1 s scrape interval
LOAD_S = 25.0


def _get(url: str, **params) -> dict:
    import httpx

    r = httpx.get(url, params=params, timeout=10)
    r.raise_for_status()
    return r.json()


def _grafana_to_promql(expr: str, variables: dict[str, str]) -> str:
    expr = expr.replace("$__rate_interval", RATE_WINDOW)
    for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    assert "$" not in expr, expr
    return expr


def _load(url: str, stop_at: float, model: str, stats: dict, served: dict) -> None:
    """Closed-loop clients with mixed prompt lengths, enough to queue on both engines.

    Counts responses by status in ``stats`` and by the node that served them in ``served``.
    """
    import httpx

    def client(i: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            k = 0
            while time.monotonic() < stop_at:
                words = " ".join(f"w{(i * 7 + j) % 50}" for j in range(8 + (k * 37 + i * 11) % 200))
                r = c.post("/v1/completions", json={"model": model, "prompt": words, "max_tokens": 16 + (k % 3) * 16})
                stats[r.status_code] = stats.get(r.status_code, 0) + 1
                node = r.headers.get("x-fairbatching-node")
                if node:
                    served[node] = served.get(node, 0) + 1
                k += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _plot_pab(series: list[dict], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    t0 = min(float(s["values"][0][0]) for s in series)
    for i, s in enumerate(series):  # dashed after the first: equal budgets would hide each other
        ax.plot([float(t) - t0 for t, _ in s["values"]], [float(v) for _, v in s["values"]],
                linestyle="-" if i == 0 else (0, (4, 3)), linewidth=2.5 if i == 0 else 1.5,
                label=f"node {s['metric'].get('node', '?')}")
    ax.set_xlabel("time since first sample, s")
    ax.set_ylabel("PAB, prompt tokens")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


_CHILD = "FAIRBATCHING_OBSERVABILITY_CHILD"


@pytest.mark.timeout(420)
def test_prometheus_scrapes_the_app_and_every_panel_has_data(tmp_path):
    """Runs the scenario below in a fresh interpreter.

    Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` (what keeps every node on
    loopback) when it is first imported, and earlier tests in the same pytest
    process import it; so the scenario gets a process of its own.
    """
    if os.environ.get(_CHILD) == "1":
        _scenario(tmp_path)
        return
    env = {**os.environ, _CHILD: "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
    node_id = f"{Path(__file__).relative_to(ROOT)}::test_prometheus_scrapes_the_app_and_every_panel_has_data"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:warnings", node_id],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400,
    )
    # Every error line of the child's output first (a Ray start-up failure is otherwise cut off), then its tails.
    errors = [ln for ln in (result.stdout + result.stderr).splitlines() if "Error" in ln or "error:" in ln][:30]
    assert result.returncode == 0, "\n".join(errors) + "\n---\n" + result.stdout[-6000:] + result.stderr[-3000:]


def _scenario(tmp_path: Path) -> None:
    from node.serve.metrics import prom

    saved_env = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
                                                "RAY_metrics_report_interval_ms")}
    os.environ.update({
        "RAY_AUTH_MODE": "disabled",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray then binds loopback instead of the machine's address
        "RAY_metrics_report_interval_ms": "1000",
    })
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from cluster.app import deploy

    from cluster.config import ServeConfig

    ray_tmp = tempfile.mkdtemp(prefix="fbobs-", dir="/tmp")  # short: Ray's socket paths live under it
    # ray.cluster_utils.Cluster writes the head's address into the *default* temp dir
    # (/tmp/ray/ray_current_cluster) whatever temp_dir the head gets: on a fresh machine, where no
    # Ray has run yet, that folder does not exist and starting the cluster fails (seen in CI).
    from ray._common.utils import get_default_ray_temp_dir, reset_ray_address

    os.makedirs(get_default_ray_temp_dir(), exist_ok=True)
    prom_proc = None
    cluster = None
    try:
        # A CPU head and two (fake) GPU worker nodes, each with its own metrics export port.
        # Every listener's port in one draw: distinct, and outside the range the kernel gives outgoing
        # connections, which the starting cluster opens by the hundred (cluster.net.free_ports).
        *ports, dashboard_port, serve_port, prom_port = free_ports(6)
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 2, "include_dashboard": True, "dashboard_host": "127.0.0.1",
            "dashboard_port": dashboard_port, "metrics_export_port": ports[0], "temp_dir": ray_tmp})
        for port in ports[1:]:
            cluster.add_node(num_cpus=1, num_gpus=1, metrics_export_port=port)
        ray.init(address=cluster.address, log_to_driver=False)
        # With two SLO classes (the dashboard's by-class panels; the load sends the default class).
        cfg = ServeConfig(port=serve_port, engine_num_gpus=1, engine_num_cpus=0.5, one_engine_per_node=True,
                          slo_tiers={"interactive": {"ttft_slo_s": 2.0, "tpot_slo_s": 0.25},
                                     "batch": {"ttft_slo_s": 30.0, "tpot_slo_s": 1.0}},
                          default_slo_tier="interactive")
        url = deploy(cfg)

        # Ray's discovery file lists every node's metrics export address.
        sd_file = Path(ray_tmp) / "prom_metrics_service_discovery.json"
        wanted = {f"127.0.0.1:{p}" for p in ports}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if sd_file.is_file() and wanted <= set(json.loads(sd_file.read_text() or "[{}]")[0].get("targets", [])):
                break
            time.sleep(0.5)
        assert wanted <= set(json.loads(sd_file.read_text())[0]["targets"]), sd_file.read_text()

        # The shipped scrape config and rules; only the file path and intervals change.
        prom_cfg = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
        prom_cfg["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        prom_cfg["rule_files"] = [str(ROOT / "deploy" / "prometheus" / "rules.yml")]
        (job,) = prom_cfg["scrape_configs"]
        job["file_sd_configs"][0]["files"] = [str(sd_file)]
        job["file_sd_configs"][0]["refresh_interval"] = "1s"
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prom_cfg))
        prom_url = f"http://127.0.0.1:{prom_port}"
        prom_proc = subprocess.Popen(
            ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
            stdout=open(tmp_path / "prometheus.log", "w"), stderr=subprocess.STDOUT)

        # A load run through the OpenAI API.
        load_start = time.time()
        stats: dict[int, int] = {}
        served: dict[str, int] = {}
        _load(url, time.monotonic() + LOAD_S, cfg.served_model_name, stats, served)
        assert stats.get(200, 0) > 20, stats
        # PAB placement spreads a sustained load over identical engines (it herded onto one
        # while each engine budgeted with its own refit; now they share the deployment's model).
        assert len(served) == cfg.engines and min(served.values()) >= 0.25 * sum(served.values()), served

        # Every node's export the discovery file named is scraped and up.
        targets = _get(f"{prom_url}/api/v1/targets")["data"]["activeTargets"]
        up = {t["labels"]["instance"] for t in targets if t["health"] == "up"}
        assert wanted <= up, targets

        board = json.loads((ROOT / "deploy" / "grafana" / "fairbatching.json").read_text())
        variables = {"cluster": ".*", "node": ".*", "model": ".*", "datasource": "x", "ttft_slo": str(cfg.slo.ttft_s),
                     "tpot_slo": str(cfg.slo.tpot_s)}
        queries = [(p["title"], t["expr"]) for p in board["panels"] if p["type"] != "row" for t in p["targets"]]

        def result(expr: str) -> list:
            return _get(f"{prom_url}/api/v1/query", query=_grafana_to_promql(expr, variables))["data"]["result"]

        missing: list = []
        deadline = time.monotonic() + 30  # rules and rates need a few evaluations after the load
        while True:
            missing = [(title, expr) for title, expr in queries if not result(expr)]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert not missing, f"dashboard queries with no data: {missing}"

        # The variables' label queries find the cluster and both engines' nodes.
        pab = prom("fairbatching_pab_tokens")
        clusters = _get(f"{prom_url}/api/v1/label/cluster/values", **{"match[]": pab})["data"]
        nodes = _get(f"{prom_url}/api/v1/label/node/values", **{"match[]": f'{pab}{{cluster=~".*"}}'})["data"]
        assert clusters == ["fairbatching"], clusters
        assert len(nodes) == cfg.engines, nodes

        # Per-node PAB during the load run, from Prometheus, as a PNG.
        series = _get(f"{prom_url}/api/v1/query_range", query=f"max by (node) ({pab})",
                      start=load_start - 2, end=time.time(), step="1")["data"]["result"]
        assert len(series) == cfg.engines and all(len(s["values"]) >= LOAD_S / 2 for s in series)
        title = (f"Per-node PAB from Prometheus during a {LOAD_S:.0f} s closed-loop load (12 clients), "
                 f"{cfg.engines} tiny CPU engines, TTFT SLO {cfg.slo.ttft_s} s, TPOT SLO {cfg.slo.tpot_s} s")
        out = tmp_path / "pab_per_node.png"
        _plot_pab(series, out, title)
        assert out.stat().st_size > 10_000
        if os.environ.get("FAIRBATCHING_SAVE_RESULTS"):
            dest = ROOT / "bench" / "results" / "observability"
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(out, dest / "pab_per_node.png")
            (dest / "pab_per_node.json").write_text(json.dumps(
                {"title": title, "requests": stats, "served_by_node": served, "query": f"max by (node) ({pab})", "series": series}, indent=1))
    finally:
        if prom_proc is not None:
            prom_proc.terminate()
            try:
                prom_proc.wait(10)
            except subprocess.TimeoutExpired:
                prom_proc.kill()
        try:
            serve.shutdown()
        except Exception:  # noqa: BLE001 - shutting down anyway
            pass
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
            reset_ray_address()  # leave no pointer to this (gone) cluster for a later ray.init()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if not os.environ.get("FAIRBATCHING_KEEP_RAY_TMP"):
            shutil.rmtree(ray_tmp, ignore_errors=True)
