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

from cluster.http.headers import REFUSAL_HEADER
from cluster.net import free_port

pytestmark = pytest.mark.serve

MODEL = "tiny-llama"
API_KEY = "test-key-0"  # the module's cluster requires it (ServeConfig.api_keys)
AUTH = {"authorization": f"Bearer {API_KEY}"}


def _ids(n: int, seed: int = 0) -> list[int]:
    return [3 + (seed * 7919 + i * 31) % 1000 for i in range(n)]


# A deliberately slow step-time profile with refit off: each idle engine's PAB is then a known
# ~3200 tokens (R = (0.25 - 0.05) / (0.25 * 0.0005) = 1600 tok/s over the 2 s TTFT horizon), so a
# burst of long prompts overflows it whatever this shared machine's speed is at the moment.
SLOW_PROFILE = {
    "version": 1, "name": "test-slow", "a_s": 0.05, "b_s_per_token": 0.0005, "c_s_per_context_token": 1e-6,
    "safety_factor": 1.0, "mape": 0.0, "p99_abs_error_s": 0.0, "hardware": "test", "model": "tiny", "method": "fixed",
}


TIERS = {"interactive": {"ttft_slo_s": 2.0, "tpot_slo_s": 0.25, "min_ttft_slo_s": 0.5, "min_tpot_slo_s": 0.05},
         "batch": {"ttft_slo_s": 30.0, "tpot_slo_s": 1.0}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray
    from ray import serve

    from cluster.app import SERVE_ENV, deploy, use_serve_env

    from cluster.config import ServeConfig

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
        # Two SLO classes; requests that name none are interactive (2 s / 250 ms, as the profile budgets for).
        cfg = ServeConfig(port=free_port(), slo_tiers=TIERS, default_slo_tier="interactive", profile=str(profile),
                          node_config={"refit": False}, api_keys=["another-key", API_KEY],
                          openai_server={"enable_auto_tool_choice": True, "tool_call_parser": "pythonic"},
                          max_body_bytes=1 << 20,
                          # prefix caching on, as on GPU (deploy/serve.yaml): the uncached charge is under test
                          engine_args={**ServeConfig().engine_args, "enable_prefix_caching": True})
        url = deploy(cfg)
        client = httpx.Client(base_url=url, timeout=120, headers=AUTH)
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


@pytest.mark.timeout(300)
def test_placement_follows_pab(cluster):
    """While one engine holds a long request its PAB is lower and the next request goes to the other;
    the ingress decides in its own process (its router's counters reach the registry's status)."""
    # The held decode lowers its node's budget by only tens of tokens under the slow profile, about
    # what the front delay of the last seconds' requests (node.core.feedback.FrontDelay, a 3 s window)
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


def test_engine_cores_run_below_the_replicas_priority_on_cpu(cluster):
    """On CPU engines every engine core runs 4 nicer than its replica (ServeConfig.engine_core_nice), so
    the ingress and the token streams run first on shared cores."""
    import psutil

    seen = 0
    for proc in psutil.process_iter(["cmdline"]):
        if "ServeReplica:fairbatching:engine" not in " ".join(proc.info["cmdline"] or ()):
            continue
        children = proc.children(recursive=True)
        assert children, f"engine replica {proc.pid} has no engine core"
        assert all(c.nice() == min(19, proc.nice() + 4) for c in children), [(c.pid, c.nice()) for c in children]
        seen += 1
    assert seen == 2


def _openai(cluster, api_key: str = API_KEY):
    """The official client against the cluster (no retries: a refusal must show as it is)."""
    import openai

    return openai.OpenAI(base_url=f"{str(cluster.base_url).rstrip('/')}/v1", api_key=api_key, max_retries=0,
                         timeout=120)


@pytest.mark.timeout(300)
def test_streamed_chat_with_content_parts_and_usage(cluster):
    """Content given as a list of text parts (what the SDK and agent frameworks send), usage at the end."""
    client = _openai(cluster)
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": [{"type": "text", "text": "w4 w5"},
                                                            {"type": "text", "text": "w6"}]}],
        max_tokens=6, stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage.completion_tokens == 6 and chunks[-1].usage.prompt_tokens == 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


@pytest.mark.timeout(300)
def test_a_message_with_an_empty_content_list_is_served(cluster):
    """vLLM keeps such a field as a one-shot iterator, which could not travel to the engine (a 503)."""
    client = _openai(cluster)
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": []}, {"role": "user", "content": "w1 w2"}],
        max_tokens=3, extra_body={"ignore_eos": True})
    assert chat.usage.completion_tokens == 3


@pytest.mark.timeout(300)
def test_n_samples_on_both_endpoints_streamed_or_not(cluster):
    client = _openai(cluster)
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "w1"}], n=2,
                                          max_completion_tokens=3, extra_body={"ignore_eos": True})
    assert [c.index for c in chat.choices] == [0, 1] and chat.usage.completion_tokens == 6
    stream = list(client.completions.create(model=MODEL, prompt="w1 w2", n=2, max_tokens=3, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    finished = {choice.index: choice.finish_reason for c in stream for choice in c.choices if choice.finish_reason}
    assert finished == {0: "length", 1: "length"} and stream[-1].usage.completion_tokens == 6


@pytest.mark.timeout(300)
def test_completion_prompt_lists_and_logprobs(cluster):
    client = _openai(cluster)
    for prompt, prompt_tokens in ((["w1 w2", "w3"], 3), ([[5, 6, 7], [8]], 4)):
        out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, logprobs=2,
                                        extra_body={"ignore_eos": True})
        assert len(out.choices) == 2 and out.usage.prompt_tokens == prompt_tokens  # usage sums the prompts
        assert out.usage.completion_tokens == 4
        assert all(len(c.logprobs.tokens) == 2 and len(c.logprobs.top_logprobs[0]) >= 2 for c in out.choices)
    echo = client.completions.create(model=MODEL, prompt="w7  w8", max_tokens=2, echo=True,
                                     extra_body={"ignore_eos": True})
    assert echo.choices[0].text.startswith("w7  w8"), echo.choices[0].text  # the client's text, not the ids decoded
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "w1"}], max_tokens=4,
                                          logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
    content = chat.choices[0].logprobs.content
    assert len(content) == 4 and all(len(t.top_logprobs) == 2 for t in content)


@pytest.mark.timeout(300)
def test_sampling_parameters_reach_the_engine(cluster):
    """logit_bias is applied (it used to be dropped): with +100 on one token, greedy output is that token."""
    out = _openai(cluster).completions.create(model=MODEL, prompt=[5, 6], max_tokens=3, temperature=0,
                                              logit_bias={"42": 100}, extra_body={"ignore_eos": True})
    assert out.choices[0].text.split() == ["w39"] * 3, out.choices[0].text  # token 42 is the word w39


@pytest.mark.timeout(300)
def test_json_schema_response_format_parses(cluster):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "tag": {"enum": ["red", "blue"]}},
              "required": ["ok", "tag"], "additionalProperties": False}
    out = _openai(cluster).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "w1"}], max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})
    answer = json.loads(out.choices[0].message.content)
    assert set(answer) == {"ok", "tag"} and isinstance(answer["ok"], bool) and answer["tag"] in ("red", "blue")


@pytest.mark.timeout(300)
def test_tool_calls_with_the_configured_parser(cluster):
    """The module's cluster runs vLLM's pythonic tool parser (openai_server in the config)."""
    tools = [{"type": "function", "function": {
        "name": "lookup", "parameters": {"type": "object", "properties": {"hit": {"type": "boolean"}},
                                         "required": ["hit"], "additionalProperties": False}}}]
    client = _openai(cluster)
    # The tiny model spells JSON one letter at a time: a call is ~45 tokens, and a sampled answer may
    # hold several calls; greedy decoding gives the one the seeded weights prefer, in full.
    out = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "w1"}], max_tokens=400,
                                         temperature=0, tools=tools, tool_choice="required")
    calls = out.choices[0].message.tool_calls
    assert out.choices[0].finish_reason == "tool_calls" and calls, out
    for call in calls:
        assert call.function.name == "lookup" and isinstance(json.loads(call.function.arguments)["hit"], bool)
    # "auto" needs a parser: accepted here (the tiny model answers in words, so no call is expected).
    auto = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "w1"}], max_tokens=3,
                                          tools=tools, tool_choice="auto")
    assert auto.choices[0].finish_reason in ("length", "stop", "tool_calls")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("path,body,param", [
    ("/v1/completions", {"prompt": "w1", "max_tokens": -1}, "max_tokens"),
    ("/v1/completions", {"max_tokens": 2}, "prompt"),
    ("/v1/completions", {"prompt": "w1", "max_tokens": 5000}, "max_tokens"),
    ("/v1/completions", {"prompt": list(range(3, 3003))}, None),  # over the context
    ("/v1/completions", {"prompt": "w1", "presence_penalty": 5}, None),  # out of range
    ("/v1/completions", {"prompt": "w1", "logprobs": 50}, "logprobs"),
    ("/v1/completions", {"prompt": "w1", "stream_options": {"include_usage": True}}, "stream_options"),
    ("/v1/completions", {"prompt": [5, 99999]}, None),  # a token id outside the vocabulary
    ("/v1/completions", {"prompt": "w1", "temperature": "hot"}, "temperature"),
    ("/v1/completions", {"prompt": "w1", "vllm_xargs": {"tpot_slo_s": -1}}, "vllm_xargs.tpot_slo_s"),
    ("/v1/chat/completions", {"messages": []}, None),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "w1"}], "top_logprobs": 50,
                              "logprobs": True}, "logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "w1"}], "tools": [{"type": "function"}]}, None),
    # content parts vLLM's models accept but its render step cannot read (were 500s, found by the fuzz test)
    ("/v1/chat/completions", {"messages": [{"role": "r", "content": [{"type": "audio_embeds", "audio_embeds": 1.5}]}]},
     "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "r", "content": [{"type": "audio_embeds",
                                                                        "audio_embeds": {"a": [None, False]}}]}]},
     "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "r", "content": [{"type": "image_embeds", "image_embeds": [[1]]}]}]},
     "messages"),
    # a field of the wrong type that one of vLLM's own validators calls a method on (was a 500, found by the fuzz test)
    ("/v1/completions", {"prompt": "w1", "structured_outputs": "x"}, None),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "w1"}], "structured_outputs": 7}, None),
])
def test_client_mistakes_get_400_in_the_openai_error_object(cluster, path, body, param):
    import openai

    client = _openai(cluster)
    with pytest.raises(openai.BadRequestError) as err:
        client.post(path.removeprefix("/v1"), body={"model": MODEL, **body}, cast_to=dict)
    assert err.value.status_code == 400
    detail = err.value.body
    assert set(detail) >= {"message", "type", "param", "code"} and detail["message"], detail
    if param is not None:
        assert err.value.param is not None and err.value.param.endswith(param), detail


@pytest.mark.timeout(120)
def test_tokenize_answers_400_for_messages_it_cannot_render(cluster):
    body = {"model": MODEL, "messages": [{"role": "r", "content": [{"type": "audio_embeds", "audio_embeds": 1.5}]}]}
    r = cluster.post("/tokenize", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages", r.text
    assert cluster.post("/tokenize", json={"model": MODEL, "prompt": "w1 w2"}).status_code == 200


@pytest.mark.timeout(120)
@pytest.mark.parametrize("raw", [
    b'{"model": "tiny-llama", "prompt": "w1 \xff\xfe"}',  # invalid UTF-8
    b'{"model": "tiny-llama", "prompt": "w1 \\ud800"}',  # an escaped lone surrogate
    b'{"model": "tiny-llama", "messages": [{"role": "user", "content": "\\udfff"}]}',
    b"{not json",
    b'["a list"]',
])
def test_undecodable_bodies_get_400_json(cluster, raw):
    path = "/v1/chat/completions" if b"messages" in raw else "/v1/completions"
    r = cluster.post(path, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert set(r.json()["error"]) >= {"message", "type", "param", "code"}


@pytest.mark.timeout(120)
def test_error_classes_of_the_openai_client(cluster):
    import openai

    client = _openai(cluster)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-9", prompt="w1", max_tokens=1)
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt="w1", max_tokens=5000)
    assert err.value.param == "max_tokens"
    # A request that already waited past half its TTFT SLO in front of the ingress is refused at once.
    stale = {"x-request-start": f"t={(time.time() - 1.5) * 1e3:.0f}", "x-slo-ttft-ms": "2000"}
    with pytest.raises(openai.RateLimitError) as err:
        client.completions.create(model=MODEL, prompt="w1", max_tokens=1, extra_headers=stale)
    assert int(err.value.response.headers["retry-after"]) >= 1
    assert err.value.response.headers["x-fairbatching-refusal"] == "too-late"
    # a stale interactive request alone says nothing of the budget: it sheds no batch request
    assert client.completions.create(model=MODEL, prompt="w1", max_tokens=1,
                                     extra_headers={"x-slo-class": "batch"}).choices[0].finish_reason
    with pytest.raises(openai.AuthenticationError) as err:
        _openai(cluster, "wrong-key").models.list()
    assert err.value.status_code == 401 and err.value.body["type"] == "AuthenticationError"
    assert err.value.response.json()["error"]["code"] == 401


@pytest.mark.timeout(120)
def test_api_keys_guard_the_api_and_not_health(cluster):
    import openai

    url = str(cluster.base_url).rstrip("/")
    assert httpx.get(f"{url}/health").status_code == 200  # open
    for path in ("/v1/models", "/v1/fairbatching/status"):
        assert httpx.get(f"{url}{path}").status_code == 401
    r = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "w1"},
                   headers={"authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "AuthenticationError"
    r = httpx.post(f"{url}/tokenize", json={"model": MODEL, "prompt": "w1 w2"})
    assert r.status_code == 401
    for key in (API_KEY, "another-key"):  # every configured key is accepted
        assert _openai(cluster, key).models.list().data[0].id == MODEL
    r = cluster.post("/tokenize", json={"model": MODEL, "prompt": "w1 w2"})
    assert r.status_code == 200 and r.json()["tokens"] == [4, 5]
    r = cluster.post("/detokenize", json={"model": MODEL, "tokens": [4, 5]})
    assert r.status_code == 200 and r.json()["prompt"].split() == ["w1", "w2"]


@pytest.mark.timeout(120)
def test_body_over_the_limit_gets_413(cluster):
    r = cluster.post("/v1/completions", content=b'{"model": "tiny-llama", "prompt": "' + b"w1 " * 400_000 + b'"}',
                     headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == 413


@pytest.mark.timeout(300)
def test_per_request_slo_and_arrival_reach_the_scheduler(cluster):
    """SLOs from vllm_xargs or headers, and the ingress's arrival stamp, through both endpoints.

    The engine's FairBatching scheduler reads them from ``SamplingParams.extra_args``; the replica
    reads the same ``extra_args`` and reports its last requests' SLOs and front delays in the status.
    """
    client = _openai(cluster)
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "w1"}], max_tokens=2,
                                          extra_body={"vllm_xargs": {"ttft_slo_s": 7.5}})
    assert chat.choices[0].finish_reason is not None
    out = client.completions.create(model=MODEL, prompt="w1", max_tokens=2,
                                    extra_headers={"x-slo-ttft-ms": "6500", "x-slo-tpot-ms": "90"})
    assert out.choices[0].finish_reason is not None
    time.sleep(0.5)  # a few reports reach the registry
    seen = [slo for n in _status(cluster)["nodes"].values() for slo in n["recent_slos"]]
    assert any(s["ttft_slo_s"] == 7.5 for s in seen), seen
    assert any(s["ttft_slo_s"] == 6.5 and s["tpot_slo_s"] == pytest.approx(0.09) for s in seen), seen
    assert all(0 <= s["front_delay_s"] < 30 for s in seen), seen  # the ingress's stamp, not the engine's


@pytest.mark.timeout(300)
def test_slo_classes_from_the_header_or_the_body_reach_the_engine_and_the_status(cluster):
    """A request picks its SLO class by header or body; an unknown class or a target tighter than its class
    allows is a 400 naming the parameter; engines report the batch class's own budget and count by class."""
    import openai
    from typer.testing import CliRunner

    from cluster.cli.main import app

    client = _openai(cluster)
    time.sleep(0.5)  # the reports include every request of the earlier tests
    batch_before = sum(n["by_class"].get("batch", {}).get("finished", 0) for n in _status(cluster)["nodes"].values())
    out = client.completions.create(model=MODEL, prompt="w1", max_tokens=2, extra_headers={"x-slo-class": "batch"})
    assert out.choices[0].finish_reason is not None
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "w1"}], max_tokens=2,
                                          extra_body={"vllm_xargs": {"slo_class": "batch", "ttft_slo_s": 45.0}})
    assert chat.choices[0].finish_reason is not None
    for kwargs, param, words in [
        (dict(extra_headers={"x-slo-class": "gold"}), "x-slo-class", "unknown SLO class 'gold'"),
        (dict(extra_body={"vllm_xargs": {"slo_class": "gold"}}), "vllm_xargs.slo_class", "interactive, batch"),
        (dict(extra_headers={"x-slo-class": "batch", "x-slo-ttft-ms": "1000"}), "x-slo-ttft-ms", "no less than 30 s"),
    ]:
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model=MODEL, prompt="w1", max_tokens=2, **kwargs)
        assert err.value.body["param"] == param and words in err.value.body["message"], err.value.body
    time.sleep(0.5)  # a few reports reach the registry
    nodes = _status(cluster)["nodes"].values()
    seen = [slo for n in nodes for slo in n["recent_slos"]]
    assert any(s["ttft_slo_s"] == 30.0 and s["tpot_slo_s"] == 1.0 for s in seen), seen
    assert any(s["ttft_slo_s"] == 45.0 for s in seen), seen
    # every engine budgets the batch class over its own 30 s TTFT (more than the interactive 2 s budget when idle)
    assert all(set(n["tier_pab_tokens"]) == {"batch"} and n["pab_held_tokens"] > 0 for n in nodes), list(nodes)
    assert sum(n["by_class"].get("batch", {}).get("finished", 0) for n in nodes) == batch_before + 2
    result = CliRunner().invoke(app, ["status", "--url", str(cluster.base_url).rstrip("/"), "--api-key", API_KEY])
    assert result.exit_code == 0 and "by SLO class" in result.output and "batch" in result.output, result.output


def test_status_command_prints_every_node(cluster):
    from typer.testing import CliRunner

    from cluster.cli.main import app

    snap = _status(cluster)
    result = CliRunner().invoke(app, ["status", "--url", str(cluster.base_url).rstrip("/"), "--api-key", API_KEY])
    assert result.exit_code == 0, result.output
    assert all(key in result.output for key in snap["nodes"]), result.output
    assert "step model" in result.output and "view age" in result.output
    bad = CliRunner().invoke(app, ["status", "--url", "http://127.0.0.1:9"])
    assert bad.exit_code == 1 and "cannot reach" in bad.output


def test_load_command_replays_a_trace_and_reports_the_sim_fields(cluster, tmp_path):
    from typer.testing import CliRunner

    from cluster.cli.main import app

    out = tmp_path / "live.json"
    result = CliRunner().invoke(app, [
        "load", "--url", str(cluster.base_url).rstrip("/"), "--trace", "azure-code", "--max-requests", "6",
        "--max-prompt-tokens", "256", "--max-output-tokens", "8", "--rate-scale", "20", "--json", str(out),
        "--api-key", API_KEY])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    for key in ("requests", "attainment", "admitted_attainment", "rejected", "ttft_p50", "ttft_p99", "tpot_p50",
                "goodput_rps"):
        assert key in report, key
    assert report["requests"] == 6 and report["finished"] + report["rejected"] == 6


def test_overload_bench_against_a_url_writes_json_and_a_plot(cluster, tmp_path):
    from typer.testing import CliRunner

    from cluster.cli.main import app

    out = tmp_path / "overload.json"
    result = CliRunner().invoke(app, [
        "bench", "overload", "--url", str(cluster.base_url).rstrip("/"), "--capacity-rps", "2",
        "--multiples", "0.5,2", "--duration-s", "3", "--prompt-tokens", "64", "--output-tokens", "4",
        "--label", "live", "--json", str(out), "--api-key", API_KEY])
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

    from cluster.cli.main import app

    out = tmp_path / "vllm-client.json"
    result = CliRunner().invoke(app, [
        "bench", "vllm-client", "--url", str(cluster.base_url).rstrip("/"), "--num-prompts", "4",
        "--request-rate", "4", "--input-len", "64", "--output-len", "4", "--json", str(out), "--api-key", API_KEY])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["completed"] + report.get("failed", 0) == 4 and report["completed"] >= 1, report
    assert report["total_output_tokens"] == 4 * report["completed"] and report["machine"]
    assert "p99_ttft_ms" in report and "request_goodput" in report


@pytest.mark.timeout(300)
def test_multi_turn_conversation_is_charged_its_uncached_tokens_and_stays_on_its_node(cluster):
    """Prefix caching on (as on GPU): each turn resends the conversation so far (the previous prompt, its
    reply, a new question). The engine that holds it is charged only the tokens it has not cached, within
    5 % of vLLM's own count, the router sends every turn back to it, and charges it less than every token."""
    def counts() -> tuple[dict, dict]:
        snap = _status(cluster)
        (router,) = snap["routers"].values()
        return {k: (n["prompt_tokens_charged"], n["prompt_tokens_computed"]) for k, n in snap["nodes"].items()}, router

    time.sleep(0.5)
    nodes_before, router_before = counts()
    assert all(n["prefix_caching"] for n in _status(cluster)["nodes"].values())
    prompt, served, sent = _ids(300, 11), set(), 0
    for turn in range(5):
        r = cluster.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 40,
                                                   "ignore_eos": True, "return_token_ids": True})
        assert r.status_code == 200, r.text
        served.add(r.headers["x-fairbatching-replica"])
        sent += len(prompt)
        prompt = prompt + r.json()["choices"][0]["token_ids"] + _ids(60, 20 + turn)  # the reply, the next question
    time.sleep(0.5)  # a few reports reach the registry
    nodes_after, router_after = counts()
    assert len(served) == 1, served  # the router follows the cache (both nodes idle: budgets tie but for it)
    (node,) = served
    charged = nodes_after[node][0] - nodes_before[node][0]
    computed = nodes_after[node][1] - nodes_before[node][1]
    assert computed < 0.6 * sent, (computed, sent)  # most of each turn was a cache hit in vLLM
    assert abs(charged - computed) <= 0.05 * computed, (charged, computed)
    router_charged = router_after["prompt_tokens_charged"] - router_before["prompt_tokens_charged"]
    assert router_after["prompt_tokens_placed"] - router_before["prompt_tokens_placed"] == sent
    assert router_charged < 0.8 * sent, (router_charged, sent)  # the router's own estimate (prompts only)


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
        async with httpx.AsyncClient(base_url=url, timeout=300, headers=AUTH) as client:
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
            assert r.json()["error"]["type"] == "RateLimitError" and r.json()["error"]["code"] == 429
            assert r.headers["x-fairbatching-refusal"] in {"no-budget", "no-budget-early"}, r.headers
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

    from balancer.serve.pab_registry import find_registry

    # Start idle: the saturation test before leaves the engines prefilling its burst, and their budgets
    # (which the ingress keeps deciding on while the registry is away) low enough to refuse these requests.
    deadline = time.monotonic() + 90
    while True:
        nodes = list(_status(cluster)["nodes"].values())
        idle = len(nodes) == 2 and all(n["in_flight"] == 0 and n["queued_prefill_tokens"] == 0
                                       and n["pab_tokens"] >= 1500 for n in nodes)
        if idle or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert idle, nodes
    registry = find_registry("fairbatching", "engine")
    assert registry is not None
    ray.kill(registry, no_restart=True)
    # Meanwhile the ingress decides on its last view, then the router on the replicas' routing
    # stats: no request meets a 503 while the registry is away.
    codes = []
    killed = time.monotonic()
    until = killed + 8.0
    while time.monotonic() < until:
        r = cluster.post("/v1/completions", json={"model": MODEL, "prompt": _ids(30, len(codes)), "max_tokens": 2})
        # (status, why a 429 was given, seconds since the registry was killed): what a failure needs to be read
        codes.append((r.status_code, r.headers.get(REFUSAL_HEADER), round(time.monotonic() - killed, 2)))
        time.sleep(0.2)
    assert {c for c, _, _ in codes} == {200}, [c for c in codes if c[0] != 200] + [f"of {len(codes)}"]
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


_FUZZ_CAPS = {"max_tokens": 4, "max_completion_tokens": 4, "n": 2, "best_of": 2, "min_tokens": 2,
              "logprobs": 2, "top_logprobs": 2, "prompt_logprobs": 2}


def _bounded(body):
    """Keep a generated valid request cheap: small generation lengths and sample counts (an int over a cap is capped).

    Streams stay: their first event is read by our code (a failure before it must be a real status)."""
    if isinstance(body, dict):
        for key, cap in _FUZZ_CAPS.items():
            if isinstance(body.get(key), int) and not isinstance(body.get(key), bool) and body[key] > cap:
                body[key] = cap
    return body


@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"])
def test_fuzzed_requests_from_the_openapi_schema_never_get_a_500(cluster, path):
    """schemathesis draws bodies from the app's own OpenAPI schema (vLLM's request models), valid and invalid;
    no answer may be a 5xx. Bounded: 25 valid and 25 invalid bodies per route, generation capped at 4 tokens."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    base = str(cluster.base_url).rstrip("/")
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    op = schema[path]["POST"]
    failures = []
    for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
        @settings(max_examples=25, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy(generation_mode=mode))
        def run(case):
            body = _bounded(case.body) if not isinstance(case.body, type(schemathesis.core.NOT_SET)) else None
            try:
                raw = json.dumps(body).encode() if body is not None else b""
            except (TypeError, ValueError):
                return
            r = cluster.post(path, content=raw, headers={"content-type": "application/json"})
            if r.status_code >= 500:
                failures.append((mode.value, r.status_code, raw, r.text[:300]))  # the whole body, to replay it

        run()
    assert not failures, failures


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
        async with httpx.AsyncClient(base_url=url, timeout=300, headers=AUTH) as client:
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
