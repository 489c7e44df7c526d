"""Several nodes on one machine (``ray.cluster_utils.Cluster``, fake GPUs): one engine per GPU node.

The head has no GPU; two worker nodes have one (fake) GPU each. With
``engine_num_gpus=1`` and ``one_engine_per_node`` the two engines must land on
the two worker nodes, one each, and the app must serve through both. Only the
cluster this module starts is stopped.
"""

from __future__ import annotations

import os
import time

import httpx
import pytest

from cluster.net import free_port

pytestmark = pytest.mark.serve


@pytest.mark.timeout(600)
def test_one_engine_per_gpu_node():
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from cluster.app import deploy

    from cluster.config import ServeConfig

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        gpu_nodes = {cluster.add_node(num_cpus=1, num_gpus=1).node_id for _ in range(2)}
        ray.init(address=cluster.address, log_to_driver=False)
        cfg = ServeConfig(port=free_port(), engine_num_gpus=1, engine_num_cpus=0.5, one_engine_per_node=True)
        url = deploy(cfg)
        with httpx.Client(base_url=url, timeout=120) as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                snap = client.get("/v1/fairbatching/status")
                if snap.status_code == 200 and len(snap.json()["nodes"]) == 2:
                    break
                time.sleep(0.5)
            nodes = snap.json()["nodes"]
            engine_nodes = {n["node"].split(":")[-1] for n in nodes.values()}
            assert len(engine_nodes) == 2, nodes  # one engine per node
            assert engine_nodes == {nid[:8] for nid in gpu_nodes}, (engine_nodes, gpu_nodes)
            # A fresh node learns its speed from the latencies it serves (its slow start caps its budget at
            # one step's tokens until then), so it must let a first prompt longer than that in.
            first = client.post("/v1/completions", json={"model": "tiny-llama", "prompt": [3 + i % 997 for i in range(1500)],
                                                          "max_tokens": 2})
            assert first.status_code == 200, first.text
            served = set()
            for i in range(6):
                r = client.post("/v1/completions", json={"model": "tiny-llama", "prompt": f"w{i} w{i + 1}", "max_tokens": 2})
                assert r.status_code == 200, r.text
                served.add(r.headers["x-fairbatching-node"].split(":")[-1])
            assert served <= engine_nodes
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()
