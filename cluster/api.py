"""The HTTP API: an OpenAI-compatible FastAPI ingress in front of the engine deployment.

Routes: ``POST /v1/completions`` and ``POST /v1/chat/completions`` (streaming
over SSE or not), ``GET /v1/models``, ``GET /health``, and
``GET /v1/fairbatching/status`` (the PAB registry's view of every node).

The ingress stamps each request's arrival, tokenizes the prompt (placement
needs its length) and admits it with the balancer that lives in this process
(``balancer.admission.LocalBalancer``, the same one the engine handle's router
``PABRequestRouter`` uses): a refusal is an HTTP 429 at once, with no remote
call on the way. An admitted request goes to the engine deployment's
``generate`` through the handle, whose router sends it to the replica it was
placed on; its placement is released when it ends, however it ends
(completion, error, cancel, client disconnect). A streaming request is started
and its first output awaited *before* the response begins, so a failure before
the first token is a real HTTP status, not a 200 with an error inside.

Arrival: the handler's start, or the ``x-request-start`` stamp a front proxy set
(``arrival_stamp``).

Per-request SLOs: ``vllm_xargs`` in the body (``ttft_slo_s``, ``tpot_slo_s``,
seconds; the keys the FairBatching scheduler reads) or the headers
``x-slo-ttft-ms`` / ``x-slo-tpot-ms``; the body wins over the headers, the
headers over the deployment defaults.

Errors are OpenAI-shaped ``{"error": {"message", "type", "param", "code"}}``:
400 for invalid requests (``param`` names the field), 404 for an unknown model,
429 for admission rejection (with ``Retry-After``), 503 when no engine is up or
the engine failed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from typing import Any, Literal, Optional, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger("ray.serve")

TTFT_HEADER, TPOT_HEADER = "x-slo-ttft-ms", "x-slo-tpot-ms"
#: When a front proxy stamped the request (nginx: ``proxy_set_header X-Request-Start "t=${msec}"``, the
#: convention of Heroku's router and APM agents), the arrival is that stamp: the time the request waited
#: in front of the ingress then counts in its TTFT, its slack and the budget's front delay.
REQUEST_START_HEADER = "x-request-start"
_MAX_REQUEST_START_AGE_S = 600.0  # an older (or future) stamp is a clock problem: ignored
NODE_HEADER = "x-fairbatching-node"  # the node (host:ray node id) that served the request
REPLICA_HEADER = "x-fairbatching-replica"  # the engine replica (the registry's node key)


# ----------------------------------------------------------------------------- schemas


class StreamOptions(BaseModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM extension: usage in every chunk (a chunk may hold several tokens)


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    stop: Optional[Union[str, list[str]]] = None
    seed: Optional[int] = None
    ignore_eos: bool = False  # vLLM extension
    vllm_xargs: Optional[dict[str, Union[str, int, float, list]]] = None  # vLLM extension


class CompletionRequest(_Common):
    prompt: Union[str, list[int]]


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)


# ----------------------------------------------------------------------------- errors


class APIError(Exception):
    """An error the API answers with ``status`` and an OpenAI-style body."""

    def __init__(self, status: int, message: str, *, type_: str, param: Optional[str] = None,
                 code: Optional[str] = None, headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def invalid(param: str, message: str) -> APIError:
    return APIError(400, message, type_="invalid_request_error", param=param)


def rejected(retry_after_s: float) -> APIError:
    secs = max(1, math.ceil(retry_after_s))
    return APIError(429, f"No engine has budget for this request now; retry after {secs} s.",
                    type_="rate_limit_error", code="admission_rejected", headers={"Retry-After": str(secs)})


def unavailable(message: str) -> APIError:
    return APIError(503, message, type_="service_unavailable", code="no_engine")


def arrival_stamp(headers, now_s: float, trusted: bool = True) -> float:
    """The request's arrival, ``time.time()`` seconds: the ``x-request-start`` stamp when plausible, else now.

    Accepts ``t=<number>`` or a bare number in seconds, milliseconds or microseconds since the
    epoch (the forms proxies and APM agents use). A stamp in the future or more than 10 minutes
    old is ignored, and so is every stamp when ``trusted`` is false (clients reach the ingress
    directly: a client could backdate its request to an earlier deadline).
    """
    raw = headers.get(REQUEST_START_HEADER) if trusted else None
    if not raw:
        return now_s
    try:
        value = float(raw.strip().removeprefix("t="))
    except ValueError:
        return now_s
    for scale in (1.0, 1e-3, 1e-6):  # s, ms, us
        stamp = value * scale
        if 0 <= now_s - stamp <= _MAX_REQUEST_START_AGE_S:
            return stamp
    return now_s


def _validation_error(exc: RequestValidationError) -> APIError:
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    param = ".".join(loc) or "body"
    return invalid(param, f"{param}: {err.get('msg', 'invalid value')}")


# ----------------------------------------------------------------------------- the ingress


def _is_backpressure(exc: BaseException) -> Optional[float]:
    """``retry_after_s`` when ``exc`` is (or wraps) a Serve 429 ``BackPressureError``, else None."""
    from ray.serve.exceptions import BackPressureError

    for e in (exc, getattr(exc, "cause", None), exc.__cause__):
        if isinstance(e, BackPressureError) and e.status_code == 429:
            return e.retry_after_s or 1.0
    return None


def _is_engine_failure(exc: BaseException) -> bool:
    import ray

    return isinstance(exc, (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError))


def _usage(req: dict, chunk: dict) -> dict[str, int]:
    return {"prompt_tokens": req["prompt_tokens"], "completion_tokens": chunk["completion_tokens"],
            "total_tokens": req["prompt_tokens"] + chunk["completion_tokens"]}


def _where(chunk: dict) -> dict[str, str]:
    return {NODE_HEADER: chunk["node"], REPLICA_HEADER: chunk["replica"]}


class Ingress:
    """The OpenAI-compatible front door (wrapped with ``serve.ingress`` by ``make_ingress``)."""

    def __init__(self, engine, settings: dict[str, Any]) -> None:
        import os

        from transformers import AutoTokenizer

        from node.engine_replica import resolve_model

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.engine = engine.options(stream=True, method_name="generate")
        self.settings = settings
        self.model_name = settings["served_model_name"]
        self.max_model_len = int(settings.get("max_model_len", 2048))
        self.ttft_slo_s = float(settings["ttft_slo_s"])
        self.tpot_slo_s = float(settings["tpot_slo_s"])
        self.first_output_timeout_s = float(settings.get("first_output_timeout_s", 120.0))
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(settings["model"]))
        self.vocab_size = len(self.tokenizer)
        self.created = int(time.time())
        self._registry = None
        self.admission_wait_s = float(settings.get("admission_wait_s") or 0.0)
        self.trust_request_start = bool(settings.get("trust_request_start", True))
        self.balancer = None  # our router: admit here; Serve's default router: no admission
        if settings.get("balancer_settings") is not None:
            from balancer.admission import local_balancer

            self.balancer = local_balancer(settings["app_name"], settings["engine_deployment"],
                                           settings["balancer_settings"])
        self._live_engines: tuple[float, Optional[int]] = (-math.inf, None)  # (checked at, count)

    # -- the registry (for health and status) ---------------------------------------------

    async def registry_snapshot(self) -> Optional[dict]:
        from balancer.pab_registry import find_registry

        for attempt in range(2):
            if self._registry is None:
                self._registry = find_registry(self.settings["app_name"], self.settings["engine_deployment"])
            if self._registry is None:
                return None
            try:
                return await asyncio.wait_for(self._registry.snapshot.remote(), 2.0)
            except Exception:  # noqa: BLE001 - restarting or gone: look it up again
                self._registry = None
        return None

    async def live_engines(self) -> Optional[int]:
        """Engines reporting now: from this process's balancer view, else (Serve's router) the registry, cached 1 s."""
        if self.balancer is not None and self.balancer.registry_ok:
            return len(self.balancer.live_keys())
        checked_at, count = self._live_engines
        if time.monotonic() - checked_at > 1.0:
            snap = await self.registry_snapshot()
            count = None if snap is None else sum(1 for n in snap["nodes"].values() if n.get("live"))
            self._live_engines = (time.monotonic(), count)
        return count

    # -- request preparation ----------------------------------------------------------------

    def _slo(self, xargs: dict, headers) -> tuple[float, float]:
        ttft, tpot = self.ttft_slo_s, self.tpot_slo_s
        for header, which in ((TTFT_HEADER, 0), (TPOT_HEADER, 1)):
            raw = headers.get(header)
            if raw is not None:
                try:
                    value = float(raw) / 1e3
                except ValueError:
                    raise invalid(header, f"header {header} must be a number of milliseconds, got {raw!r}") from None
                if not (math.isfinite(value) and value > 0):
                    raise invalid(header, f"header {header} must be > 0, got {raw!r}")
                ttft, tpot = (value, tpot) if which == 0 else (ttft, value)
        for key in ("ttft_slo_s", "tpot_slo_s"):
            if key in xargs:
                value = xargs[key]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
                    raise invalid(f"vllm_xargs.{key}", f"vllm_xargs.{key} must be a number of seconds > 0, got {value!r}")
                ttft, tpot = (float(value), tpot) if key == "ttft_slo_s" else (ttft, float(value))
        return ttft, tpot

    def _prepare(self, body: _Common, ids: list[int], headers, max_tokens: Optional[int],
                 arrival_s: float) -> dict[str, Any]:
        if body.model != self.model_name:
            raise APIError(404, f"The model `{body.model}` does not exist; this server serves `{self.model_name}`.",
                           type_="invalid_request_error", param="model", code="model_not_found")
        if not ids:
            raise invalid("prompt", "the prompt is empty")
        if any(t < 0 or t >= self.vocab_size for t in ids):
            raise invalid("prompt", f"prompt token ids must be in [0, {self.vocab_size})")
        room = self.max_model_len - len(ids)
        if room < 1:
            raise invalid("prompt", f"the prompt has {len(ids)} tokens; this model's context is {self.max_model_len}")
        if max_tokens is None:
            max_tokens = min(16, room)
        elif max_tokens > room:
            raise invalid("max_tokens", f"max_tokens ({max_tokens}) plus the prompt ({len(ids)} tokens) exceeds "
                                        f"the context of {self.max_model_len} tokens")
        xargs = dict(body.vllm_xargs or {})
        ttft, tpot = self._slo(xargs, headers)
        xargs.update(ttft_slo_s=ttft, tpot_slo_s=tpot)
        return {
            "request_id": uuid.uuid4().hex,
            "prompt_token_ids": ids,
            "prompt_tokens": len(ids),
            "max_tokens": max_tokens,
            "temperature": body.temperature,
            "top_p": body.top_p,
            "seed": body.seed,
            "stop": body.stop,
            "ignore_eos": body.ignore_eos,
            "ttft_slo_s": ttft,
            "tpot_slo_s": tpot,
            "extra_args": xargs,
            "arrival_s": arrival_s,
        }

    # -- running a request -------------------------------------------------------------------

    async def _admit(self, req: dict[str, Any]) -> None:
        """Admit and place ``req`` in this process, or raise 429 (Retry-After) / 503; no remote call.

        With ``admission_wait_s`` a refused request is asked again at each view
        refresh until that long has passed. Without a registry view (it is
        restarting) the router places the request from Serve's routing stats.
        """
        lb = self.balancer
        if lb is None:
            if await self.live_engines() == 0:
                raise unavailable("No engine is up.")
            return
        from balancer.admission import count_rejection

        if lb.too_late(time.time() - req["arrival_s"], req["ttft_slo_s"]):
            count_rejection()
            raise rejected(1.0)
        deadline = time.monotonic() + self.admission_wait_s
        first_try = True
        while True:
            node, decision = lb.admit(req["request_id"], req["prompt_tokens"], record=first_try)
            first_try = False
            if node is not None:
                return
            if decision.reason == "no-engine":
                if lb.registry_ok:
                    raise unavailable("No engine is up.")
                return  # the registry is away: the router decides from the replicas' routing stats
            if time.monotonic() >= deadline:
                count_rejection()
                raise rejected(decision.retry_after_s or 1.0)
            await asyncio.sleep(lb.settings.refresh_interval_s)

    def _release(self, req: dict[str, Any]) -> None:
        if self.balancer is not None:
            self.balancer.release(req["request_id"])

    async def _start(self, req: dict[str, Any]):
        """Admit ``req``, send it to its engine and wait for its first output: ``(generator, first chunk)``.

        On any failure the placement is released before the error is raised.
        """
        try:
            await self._admit(req)
            return await self._send(req)
        except BaseException:
            self._release(req)
            raise

    async def _send(self, req: dict[str, Any]):
        for attempt in range(2):
            gen = self.engine.remote(req)
            try:
                first = await asyncio.wait_for(gen.__anext__(), self.first_output_timeout_s)
                return gen, first
            except StopAsyncIteration:
                raise unavailable("The engine ended the request without output.") from None
            except asyncio.TimeoutError:
                gen.cancel()
                raise unavailable(f"No engine answered within {self.first_output_timeout_s:g} s.") from None
            except asyncio.CancelledError:  # the client left before the first token: stop the engine's work
                gen.cancel()
                raise
            except Exception as exc:  # noqa: BLE001 - sorted below
                retry = _is_backpressure(exc)
                if retry is not None:
                    raise rejected(retry) from None
                if _is_engine_failure(exc) and attempt == 0:
                    continue  # nothing reached the client yet: one more try on a live engine
                logger.warning("request %s failed before its first token: %r", req["request_id"], exc)
                raise unavailable(f"The engine failed: {type(exc).__name__}.") from None
        raise AssertionError("unreachable")

    async def _collect(self, req: dict[str, Any]) -> tuple[str, Optional[str], dict, str]:
        gen, first = await self._start(req)
        parts, finish, last = [first["text"]], first["finish_reason"], first
        try:
            async for chunk in gen:
                parts.append(chunk["text"])
                finish, last = chunk["finish_reason"] or finish, chunk
        except Exception as exc:  # noqa: BLE001
            logger.warning("request %s failed mid-generation: %r", req["request_id"], exc)
            raise unavailable(f"The engine failed mid-generation: {type(exc).__name__}.") from None
        finally:  # also when the client left and Serve cancelled this handler
            gen.cancel()
            self._release(req)
        return "".join(parts), finish, _usage(req, last), _where(first)

    def _sse(self, req: dict[str, Any], gen, first: dict, make_chunk, include_usage: bool, continuous: bool = False):
        async def events():
            chunk, last = first, first
            try:
                while chunk is not None:
                    for payload in make_chunk(chunk):
                        if continuous:
                            payload["usage"] = _usage(req, chunk)
                        yield f"data: {json.dumps(payload)}\n\n"
                    last = chunk
                    chunk = await gen.__anext__() if chunk["finish_reason"] is None else None
            except StopAsyncIteration:
                pass
            except Exception as exc:  # noqa: BLE001 - the stream has begun: report in-band
                logger.warning("stream %s failed mid-generation: %r", req["request_id"], exc)
                err = {"error": {"message": f"The engine failed mid-generation: {type(exc).__name__}.",
                                 "type": "service_unavailable", "param": None, "code": "engine_failed"}}
                yield f"data: {json.dumps(err)}\n\n"
            finally:  # the stream ended, failed, or the client left
                gen.cancel()
                self._release(req)
            if include_usage:
                yield f"data: {json.dumps(make_chunk(None, usage=_usage(req, last))[0])}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers=_where(first))

    # -- endpoints ----------------------------------------------------------------------------

    async def completions(self, body: CompletionRequest, headers):
        arrival_s = arrival_stamp(headers, time.time(), self.trust_request_start)
        if isinstance(body.prompt, str):
            ids = self.tokenizer.encode(body.prompt)
        else:
            ids = list(body.prompt)
        req = self._prepare(body, ids, headers, body.max_tokens, arrival_s)
        cid, created = f"cmpl-{req['request_id']}", int(time.time())

        def chunk(c, usage=None):
            base = {"id": cid, "object": "text_completion", "created": created, "model": self.model_name}
            if c is None:
                return [{**base, "choices": [], "usage": usage}]
            return [{**base, "choices": [{"index": 0, "text": c["text"], "logprobs": None,
                                          "finish_reason": c["finish_reason"]}]}]

        return await self._reply(body, req, chunk, lambda text, finish, usage: {
            "id": cid, "object": "text_completion", "created": created, "model": self.model_name,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
            "usage": usage,
        })

    async def chat(self, body: ChatCompletionRequest, headers):
        arrival_s = arrival_stamp(headers, time.time(), self.trust_request_start)
        msgs = [m.model_dump() for m in body.messages]
        enc = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        ids = list(enc["input_ids"] if hasattr(enc, "keys") else enc)
        req = self._prepare(body, ids, headers, body.max_completion_tokens or body.max_tokens, arrival_s)
        cid, created = f"chatcmpl-{req['request_id']}", int(time.time())
        sent_role = [False]

        def chunk(c, usage=None):
            base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": self.model_name}
            if c is None:
                return [{**base, "choices": [], "usage": usage}]
            out = []
            if not sent_role[0]:
                sent_role[0] = True
                out.append({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                  "finish_reason": None}]})
            out.append({**base, "choices": [{"index": 0, "delta": {"content": c["text"]},
                                              "finish_reason": c["finish_reason"]}]})
            return out

        return await self._reply(body, req, chunk, lambda text, finish, usage: {
            "id": cid, "object": "chat.completion", "created": created, "model": self.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": usage,
        })

    async def _reply(self, body, req: dict, chunk, whole):
        """Stream ``chunk``-shaped SSE events, or collect the output into one ``whole`` JSON body."""
        if body.stream:
            gen, first = await self._start(req)
            opts = body.stream_options or StreamOptions()
            return self._sse(req, gen, first, chunk, opts.include_usage, opts.continuous_usage_stats)
        text, finish, usage, node = await self._collect(req)
        return JSONResponse(whole(text, finish, usage), headers=node)


#: Routes whose requests are admitted by budget (and may be refused before their body is read).
ADMITTED_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})


class EarlyRefusal:
    """ASGI middleware: under overload, refuse a generation request before reading its body.

    When no engine can take a small request (``LocalBalancer.refusal_before_parsing``: the
    ``early_refusal_quantile`` of recent prompts), or the request already waited in front of
    admission for more than ``shed_after_fraction`` of its TTFT SLO (``LocalBalancer.too_late``;
    its age from ``X-Request-Start``), parsing and
    validating the body would only spend the CPU the engines and the admitted requests need: the
    answer is a 429 with Retry-After straight away. Otherwise the request goes on to the route,
    which admits it by its real prompt length (and checks its age again).
    """

    def __init__(self, app, trust_request_start: bool = True) -> None:
        self.app = app
        self.trust_request_start = trust_request_start

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in ADMITTED_PATHS:
            from balancer.admission import count_rejection, local_balancers

            balancers = local_balancers()
            if balancers:
                now = time.time()
                headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
                waited = now - arrival_stamp(headers, now, self.trust_request_start)
                ttft = _header_seconds(headers, TTFT_HEADER)
                for lb in balancers:
                    wait = 1.0 if lb.too_late(waited, ttft) else lb.refusal_before_parsing()
                    if wait is not None:
                        count_rejection()
                        await rejected(wait).response()(scope, receive, send)
                        return
        await self.app(scope, receive, send)


def _header_seconds(headers, name: str) -> Optional[float]:
    """A positive number of milliseconds in header ``name`` as seconds, else None (validated later)."""
    try:
        value = float(headers.get(name, "")) / 1e3
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def make_fastapi_app(early_refusal: bool = True, trust_request_start: bool = True) -> FastAPI:
    """The FastAPI app; routes reach the ``Ingress`` instance through ``request.state`` set by Serve."""
    app = FastAPI(title="FairBatching", docs_url=None, redoc_url=None)
    if early_refusal:
        app.add_middleware(EarlyRefusal, trust_request_start=trust_request_start)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return _validation_error(exc).response()

    return app


def make_ingress(serve_deployment_options: dict[str, Any], *, early_refusal: bool = True,
                 trust_request_start: bool = True):
    """The Serve deployment class of the ingress (FastAPI routes bound to an ``Ingress``)."""
    from ray import serve

    app = make_fastapi_app(early_refusal, trust_request_start)

    @serve.deployment(**serve_deployment_options)
    @serve.ingress(app)
    class OpenAIIngress(Ingress):
        @app.get("/health")
        async def health(self):
            n = await self.live_engines()
            if n == 0:
                return unavailable("No engine is up.").response()
            return {"status": "ok", "engines": n}

        @app.get("/v1/models")
        async def models(self):
            return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": self.created,
                                                 "owned_by": "fairbatching", "max_model_len": self.max_model_len}]}

        @app.get("/v1/fairbatching/status")
        async def status(self):
            snap = await self.registry_snapshot()
            if snap is None:
                return unavailable("The PAB registry is not reachable.").response()
            return snap

        @app.post("/v1/completions")
        async def v1_completions(self, body: CompletionRequest, request: Request):
            return await self.completions(body, request.headers)

        @app.post("/v1/chat/completions")
        async def v1_chat(self, body: ChatCompletionRequest, request: Request):
            return await self.chat(body, request.headers)

    return OpenAIIngress
