"""The serving cluster with real parts: a local Ray cluster, two CPU vLLM engines, the PAB router, HTTP.

One Ray cluster for the whole module (starting two engines on two shared cores
takes one to two minutes); it is started with ``address="local"`` so the tests
never join someone else's cluster, and only it is stopped at the end. The test
that kills an engine runs last.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import httpx
import pytest

from cluster.net import free_port

pytestmark = pytest.mark.serve

MODEL = "tiny-llama"


def _ids(n: int, seed: int = 0) -> list[int]:
    return [3 + (seed * 7919 + i * 31) % 1000 for i in range(n)]


# A deliberately slow step-time profile with refit off: each idle engine's PAB is then a known
# ~3200 tokens (R = (0.25 - 0.05) / (0.25 * 0.0005) = 1600 tok/s over the 2 s TTFT horizon), so a
# burst of long prompts overflows it whatever this shared machine's speed is at the moment.
SLOW_PROFILE = {
    "version": 1, "name": "test-slow", "a_s": 0.05, "b_s_per_token": 0.0005, "c_s_per_context_token": 1e-6,
    "safety_factor": 1.0, "mape": 0.0, "p99_abs_error_s": 0.0, "hardware": "test", "model": "tiny", "method": "fixed",
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray
    from ray import serve

    from cluster.app import SERVE_ENV, ServeConfig, deploy, use_serve_env

    saved = {k: os.environ.get(k) for k in SERVE_ENV}
    use_serve_env()  # the mode fairbatching serve runs: HAProxy in front of the ingress
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    for k, v in saved.items():  # only this cluster: the next module's nodes share one host
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        profile = tmp_path_factory.mktemp("profile") / "test-slow.json"
        profile.write_text(json.dumps(SLOW_PROFILE))
        cfg = ServeConfig(port=free_port(), ttft_slo_s=2.0, tpot_slo_s=0.25, profile=str(profile),
                          node_config={"refit": False})
        url = deploy(cfg)
        client = httpx.Client(base_url=url, timeout=120)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = client.get("/health")
            if r.status_code == 200 and r.json()["engines"] == 2:
                break
            time.sleep(0.5)
        yield client
        client.close()
    finally:
        serve.shutdown()
        ray.shutdown()


def _status(client) -> dict:
    r = client.get("/v1/fairbatching/status")
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.timeout(400)
def test_streaming_and_plain_responses_on_both_endpoints(cluster):
    r = cluster.post("/v1/completions", json={"model": MODEL, "prompt": "w1 w2 w3", "max_tokens": 5, "ignore_eos": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"]["completion_tokens"] == 5 and body["choices"][0]["finish_reason"] == "length"
    assert r.headers["x-fairbatching-replica"]

    for path, payload in (
        ("/v1/completions", {"prompt": _ids(20)}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "w4 w5 w6"}]}),
    ):
        req = {"model": MODEL, "max_tokens": 6, "ignore_eos": True, "stream": True,
               "stream_options": {"include_usage": True, "continuous_usage_stats": True}, **payload}
        with cluster.stream("POST", path, json=req) as s:
            assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
            lines = [ln[6:] for ln in s.iter_lines() if ln.startswith("data: ")]
        assert lines[-1] == "[DONE]"

        chunks = [json.loads(x) for x in lines[:-1]]
        def text(c):
            choice = c["choices"][0]
            return choice["delta"].get("content") if "delta" in choice else choice["text"]

        content = [c for c in chunks if c["choices"] and text(c)]
        assert len(content) >= 1 and content[-1]["choices"][0]["finish_reason"] == "length"
        counts = [c["usage"]["completion_tokens"] for c in chunks]
        assert counts == sorted(counts) and counts[-1] == 6, chunks  # running usage; the last chunk: all 6

    r = cluster.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "w9"}],
                                                    "max_completion_tokens": 3, "ignore_eos": True})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"
    assert cluster.get("/v1/models").json()["data"][0]["id"] == MODEL


@pytest.mark.timeout(120)
@pytest.mark.parametrize("body,headers,param", [
    ({"model": MODEL, "prompt": "w1", "max_tokens": -1}, {}, "max_tokens"),
    ({"model": MODEL, "max_tokens": 2}, {}, "prompt"),
    ({"model": MODEL, "messages": []}, {}, "messages"),
    ({"model": MODEL, "prompt": "w1", "temperature": "hot"}, {}, "temperature"),
    ({"model": MODEL, "prompt": list(range(3, 3003))}, {}, "prompt"),
    ({"model": MODEL, "prompt": "w1", "max_tokens": 5000}, {}, "max_tokens"),
    ({"model": MODEL, "prompt": [5, 99999]}, {}, "prompt"),
    ({"model": MODEL, "prompt": "w1"}, {"x-slo-ttft-ms": "soon"}, "x-slo-ttft-ms"),
    ({"model": MODEL, "prompt": "w1", "vllm_xargs": {"tpot_slo_s": -1}}, {}, "vllm_xargs.tpot_slo_s"),
])
def test_bad_requests_get_400_naming_the_field(cluster, body, headers, param):
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    r = cluster.post(path, json=body, headers=headers)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]


@pytest.mark.timeout(60)
def test_unknown_model_and_broken_json_are_refused(cluster):
    r = cluster.post("/v1/completions", json={"model": "gpt-9", "prompt": "w1"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    r = cluster.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.timeout(300)
def test_placement_follows_pab(cluster):
    """While one engine holds a long request its PAB is lower and the next request goes to the other;
    the ingress decides in its own process (its router's counters reach the registry's status)."""
    # The held decode lowers its node's budget by only tens of tokens under the slow profile, about
    # what the front delay of the last seconds' requests (node.feedback.FrontDelay, a 3 s window)
    # moves it: let the earlier tests' delays age out so only this test's requests count.
    time.sleep(3.5)
    hold = {"model": MODEL, "prompt": _ids(400, 1), "max_tokens": 400, "ignore_eos": True, "stream": True}
    with cluster.stream("POST", "/v1/completions", json=hold) as s:
        assert s.status_code == 200
        busy = s.headers["x-fairbatching-replica"]
        lines = s.iter_lines()
        next(lines)
        time.sleep(0.5)  # a few reports (every 50 ms) reach the registry
        nodes = _status(cluster)["nodes"]
        assert set(nodes) >= {busy} and len(nodes) == 2
        idle = next(k for k in nodes if k != busy)
        assert nodes[busy]["pab_tokens"] < nodes[idle]["pab_tokens"], nodes
        assert nodes[busy]["in_flight"] >= 1
        r = cluster.post("/v1/completions", json={"model": MODEL, "prompt": _ids(50, 0), "max_tokens": 2})
        assert r.status_code == 200 and r.headers["x-fairbatching-replica"] == idle
        for i in range(1, 5):
            assert cluster.post("/v1/completions", json={"model": MODEL, "prompt": _ids(50, i), "max_tokens": 2}).status_code == 200
    time.sleep(0.5)
    snap = _status(cluster)
    assert snap["decisions"]["placed"] >= 6, snap["decisions"]
    (router,) = snap["routers"].values()
    assert set(router["nodes"]) == set(snap["nodes"])
    assert all(n["in_flight"] == 0 and n["in_transit"] == 0 for n in router["nodes"].values()), router


def test_status_command_prints_every_node(cluster):
    from typer.testing import CliRunner

    from cluster.cli import app

    snap = _status(cluster)
    result = CliRunner().invoke(app, ["status", "--url", str(cluster.base_url).rstrip("/")])
    assert result.exit_code == 0, result.output
    assert all(key in result.output for key in snap["nodes"]), result.output
    assert "step model" in result.output
    bad = CliRunner().invoke(app, ["status", "--url", "http://127.0.0.1:9"])
    assert bad.exit_code == 1 and "cannot reach" in bad.output


def test_load_command_replays_a_trace_and_reports_the_sim_fields(cluster, tmp_path):
    from typer.testing import CliRunner

    from cluster.cli import app

    out = tmp_path / "live.json"
    result = CliRunner().invoke(app, [
        "load", "--url", str(cluster.base_url).rstrip("/"), "--trace", "azure-code", "--max-requests", "6",
        "--max-prompt-tokens", "256", "--max-output-tokens", "8", "--rate-scale", "20", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    for key in ("requests", "attainment", "admitted_attainment", "rejected", "ttft_p50", "ttft_p99", "tpot_p50",
                "goodput_rps"):
        assert key in report, key
    assert report["requests"] == 6 and report["finished"] + report["rejected"] == 6


def test_overload_bench_against_a_url_writes_json_and_a_plot(cluster, tmp_path):
    from typer.testing import CliRunner

    from cluster.cli import app

    out = tmp_path / "overload.json"
    result = CliRunner().invoke(app, [
        "bench", "overload", "--url", str(cluster.base_url).rstrip("/"), "--capacity-rps", "2",
        "--multiples", "0.5,2", "--duration-s", "3", "--prompt-tokens", "64", "--output-tokens", "4",
        "--label", "live", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    rows = report["arms"]["live"]
    assert [r["multiple"] for r in rows] == [0.5, 2.0] and report["capacity_rps"] == 2
    for r in rows:  # every request ends with its output or a 429 at the client; none is lost
        assert r["requests"] >= 2 and r["lost"] == 0 and r["finished"] + r["rejected"] == r["requests"], r
    assert report["low_load"]["live"]["requests"] >= 2
    assert out.with_suffix(".png").stat().st_size > 1000
    bad = CliRunner().invoke(app, ["bench", "overload", "--url", str(cluster.base_url)])
    assert bad.exit_code != 0 and "--capacity-rps" in bad.output


def test_vllm_benchmark_client_runs_against_the_endpoint(cluster, tmp_path):
    """vLLM's own client (vllm.benchmarks.serve, backend openai) streams from the cluster and counts every request."""
    from typer.testing import CliRunner

    from cluster.cli import app

    out = tmp_path / "vllm-client.json"
    result = CliRunner().invoke(app, [
        "bench", "vllm-client", "--url", str(cluster.base_url).rstrip("/"), "--num-prompts", "4",
        "--request-rate", "4", "--input-len", "64", "--output-len", "4", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["completed"] + report.get("failed", 0) == 4 and report["completed"] >= 1, report
    assert report["total_output_tokens"] == 4 * report["completed"] and report["machine"]
    assert "p99_ttft_ms" in report and "request_goodput" in report


async def _post(client: httpx.AsyncClient, body: dict) -> httpx.Response:
    return await client.post("/v1/completions", json=body)


@pytest.mark.timeout(400)
def test_saturated_cluster_answers_429_with_retry_after_and_recovers(cluster):
    """A burst of long prompts larger than the engines' summed PAB overflows it."""
    url = str(cluster.base_url)
    prompt = 900
    deadline = time.monotonic() + 90  # earlier tests may have left the budgets low: wait for one prompt's worth
    while True:
        budgets = [n["pab_tokens"] for n in _status(cluster)["nodes"].values()]
        if max(budgets) >= prompt or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert max(budgets) >= prompt, budgets
    burst_size = min(int(sum(max(b, 0) for b in budgets) // prompt) + 4, 24)

    async def stream(client: httpx.AsyncClient, k: int) -> tuple[int, str | None, str]:
        req = {"model": MODEL, "prompt": _ids(prompt, 99 + k), "max_tokens": 4, "stream": True}
        async with client.stream("POST", "/v1/completions", json=req) as s:
            return s.status_code, s.headers.get("retry-after"), (await s.aread()).decode()

    async def go():
        # Streams go out together with the burst, so some of them meet an exhausted budget
        # however fast this machine prefills the admitted prompts.
        async with httpx.AsyncClient(base_url=url, timeout=300) as client:
            burst = [asyncio.create_task(_post(client, {"model": MODEL, "prompt": _ids(prompt, i), "max_tokens": 4}))
                     for i in range(burst_size)]
            streams = [asyncio.create_task(stream(client, k)) for k in range(4)]
            return await asyncio.gather(*burst), await asyncio.gather(*streams)

    results, streams = asyncio.run(go())
    codes = [r.status_code for r in results]
    assert set(codes) <= {200, 429} and codes.count(200) >= 1 and codes.count(429) >= 1, codes
    for r in results:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] == "admission_rejected"
    # A rejected stream gets a real 429 (not a 200 with an error inside); an admitted one streams.
    assert any(st == 429 for st, _, _ in streams), [st for st, _, _ in streams]
    for st, retry, body in streams:
        if st == 429:
            assert int(retry) >= 1 and "admission_rejected" in body
        else:
            assert st == 200 and "data:" in body, (st, body[:300])
    # Budget returns once the admitted prompts are prefilled.
    deadline = time.monotonic() + 60
    while True:
        r = cluster.post("/v1/completions", json={"model": MODEL, "prompt": _ids(prompt, 7), "max_tokens": 2})
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(float(r.headers.get("retry-after", 1)))
    assert r.status_code == 200, r.text


@pytest.mark.timeout(300)
def test_registry_restart_is_survived(cluster):
    import ray

    from balancer.pab_registry import find_registry

    registry = find_registry("fairbatching", "engine")
    assert registry is not None
    ray.kill(registry, no_restart=True)
    # Meanwhile the ingress decides on its last view, then the router on the replicas' routing
    # stats: no request meets a 503 while the registry is away.
    codes = []
    until = time.monotonic() + 8.0
    while time.monotonic() < until:
        r = cluster.post("/v1/completions", json={"model": MODEL, "prompt": _ids(30, len(codes)), "max_tokens": 2})
        codes.append(r.status_code)
        time.sleep(0.2)
    assert set(codes) == {200}, codes
    # Serve recreates the registry; replicas find it and report again.
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        r = cluster.get("/v1/fairbatching/status")
        if r.status_code == 200 and sum(n["live"] for n in r.json()["nodes"].values()) == 2:
            break
        time.sleep(1.0)
    assert r.status_code == 200 and sum(n["live"] for n in r.json()["nodes"].values()) == 2, r.text
    placed_before = r.json()["decisions"]["placed"]
    deadline = time.monotonic() + 30  # routers retry the registry a couple of seconds after a failure
    while time.monotonic() < deadline:
        assert cluster.post("/v1/completions", json={"model": MODEL, "prompt": "w1 w2", "max_tokens": 2}).status_code == 200
        if _status(cluster)["decisions"]["placed"] > placed_before:
            break
        time.sleep(1.0)
    assert _status(cluster)["decisions"]["placed"] > placed_before


@pytest.mark.timeout(400)
def test_killing_an_engine_mid_load_loses_no_request_silently(cluster):
    import ray

    url = str(cluster.base_url)

    async def one(client, i):
        req = {"model": MODEL, "prompt": _ids(32, i), "max_tokens": 60, "ignore_eos": True, "stream": True,
               "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
        tokens, finish, error = 0, None, None
        try:
            async with client.stream("POST", "/v1/completions", json=req) as s:
                if s.status_code != 200:
                    return ("http", s.status_code)
                async for line in s.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    msg = json.loads(line[6:])
                    if "error" in msg:
                        error = msg["error"]["code"]
                    tokens = (msg.get("usage") or {}).get("completion_tokens", tokens)
                    for c in msg.get("choices", ()):
                        finish = c.get("finish_reason") or finish
        except httpx.HTTPError as exc:
            return ("transport", type(exc).__name__)
        if error:
            return ("stream-error", error)
        return ("ok", tokens) if finish == "length" else ("silent", tokens)

    async def go():
        async with httpx.AsyncClient(base_url=url, timeout=300) as client:
            tasks = [asyncio.create_task(one(client, i)) for i in range(8)]
            await asyncio.sleep(3.0)
            victims = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                       if a["name"].startswith("SERVE_REPLICA::fairbatching#engine#")]
            assert len(victims) == 2
            ray.kill(ray.get_actor(victims[0], namespace="serve"), no_restart=True)
            return await asyncio.gather(*tasks)

    outcomes = asyncio.run(go())
    assert not [o for o in outcomes if o[0] == "silent"], outcomes
    assert all(o == ("ok", 60) or o[0] in ("http", "stream-error") for o in outcomes), outcomes
    assert any(o[0] == "ok" for o in outcomes), outcomes
    # The cluster keeps serving on the surviving engine.
    for i in range(3):
        r = cluster.post("/v1/completions", json={"model": MODEL, "prompt": _ids(16, i), "max_tokens": 2})
        assert r.status_code == 200, r.text
