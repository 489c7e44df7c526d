"""The HTTP ingress: vLLM's OpenAI API in front of the engine deployment, plus what is ours.

The API itself is vLLM's (``node.vllm.openai_server``): the routes take vLLM's
request models (``ChatCompletionRequest``, ``CompletionRequest``), errors go
through vLLM's exception handlers, the prompt is rendered once by vLLM's
engine-less render step (chat template, tokenization, validation, default
``max_tokens``) and the engine replica answers with vLLM's
``OpenAIServingChat`` / ``OpenAIServingCompletion``. ``/v1/models``,
``/tokenize`` and ``/detokenize`` are answered here, without an engine.

What this module adds:

* SLOs: ``vllm_xargs`` in the body (``ttft_slo_s``, ``tpot_slo_s``, seconds)
  or the headers ``x-slo-ttft-ms`` / ``x-slo-tpot-ms``; the body wins over the
  headers, the headers over the deployment defaults. They travel to the engine
  in ``vllm_xargs`` (vLLM puts them in ``SamplingParams.extra_args``, where the
  FairBatching scheduler reads them), with the ingress's arrival stamp;
* the prompt's token count for admission, from the render step, passed on to
  the engine with the token ids (chat: ``kv_transfer_params["prompt_token_ids"]``,
  vLLM's tokenize-once hook; completions: the prompt replaced by its ids), so
  the engine never tokenizes again (except chat with non-text content parts,
  which vLLM renders again);
* admission and placement in this process (``balancer.serve.admission.LocalBalancer``,
  the same one the engine handle's router ``PABRequestRouter`` uses): a
  refusal is an HTTP 429 with ``Retry-After`` at once; 503 when no engine is up;
* API keys (``APIKeys``) and a request-body size limit (413).

Arrival: the handler's start, or the ``x-request-start`` stamp a front proxy set
(``arrival_stamp``). A streaming request is started and its first output
awaited before the response begins, so a failure before the first token is a
real HTTP status, not a 200 with an error inside. Every error body is vLLM's
(OpenAI's) ``{"error": {"message", "type", "param", "code"}}``.
"""

import asyncio
import hashlib
import json
import logging
import math
import secrets
import time
import uuid
from http import HTTPStatus
from dataclasses import dataclass, replace
from collections.abc import Iterator
from typing import Annotated, Any, Awaitable, Callable, Optional

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from node.core.extra_args import (
    SLOValueError, arrival_from_extra_args, positive_seconds, slo_from_extra_args, to_extra_args,
)
from node.core.request import SLO, SLO_CLASS_KEY, SLO_TPOT_KEY, SLO_TTFT_KEY
from cluster.workload.tiers import SLOClasses
from cluster.http.headers import (
    CLASS_HEADER, NODE_HEADER, REFUSAL_HEADER, REPLICA_HEADER, REQUEST_START_HEADER, TPOT_HEADER, TTFT_HEADER,
)
from node.serve.messages import CHAT, COMPLETION, EngineJob, EngineReply

logger = logging.getLogger("ray.serve")

_MAX_REQUEST_START_AGE_S = 600.0  # an older (or future) stamp is a clock problem: ignored
#: Paths that need an API key when keys are configured (vLLM guards ``/v1``; its tokenizer routes too).
GUARDED_PREFIXES = ("/v1", "/tokenize", "/detokenize")


# ----------------------------------------------------------------------------- errors


class APIError(Exception):
    """An error the API answers with ``status`` and vLLM's (OpenAI's) error body."""

    def __init__(self, status: int, message: str, *, param: Optional[str] = None,
                 headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(status: int, message: str, param: Optional[str] = None) -> dict[str, Any]:
    """The OpenAI error object as vLLM writes it: ``type`` from the status (``RateLimitError``), ``code`` the status."""
    kind = "".join(w.capitalize() for w in HTTPStatus(status).phrase.split())
    kind = kind if kind.endswith("Error") else kind + "Error"  # InternalServerError, BadRequestError
    kind = {"TooManyRequestsError": "RateLimitError", "UnauthorizedError": "AuthenticationError"}.get(kind, kind)
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def invalid(param: str, message: str) -> APIError:
    return APIError(400, message, param=param)


def rejected(retry_after_s: float, reason: str) -> APIError:
    """A 429 with ``Retry-After`` (whole seconds, at least 1) and why (``REFUSAL_HEADER``)."""
    secs = max(1, math.ceil(retry_after_s))
    return APIError(429, f"No engine has budget for this request now (admission_rejected); retry after {secs} s.",
                    headers={"Retry-After": str(secs), REFUSAL_HEADER: reason})


def unavailable(message: str) -> APIError:
    return APIError(503, message)


#: What vLLM's render step raises on a request body its models accept but cannot render (a chat
#: content part of a known ``type`` whose fields are of the wrong shape, say): client input.
RENDER_INPUT_ERRORS = (AttributeError, TypeError, KeyError, IndexError, ValueError)


#: What a vLLM request model's own ``mode="before"`` validators raise on a field of the wrong type
#: (``structured_outputs: "x"``: ``'str' object has no attribute 'get'``; found by the fuzz test).
#: pydantic turns only ``ValueError`` and ``AssertionError`` into a ``ValidationError``, so these
#: would reach FastAPI as a 500 for client input.
VALIDATOR_INPUT_ERRORS = (AttributeError, TypeError, KeyError, IndexError)


def _validator_slips_are_invalid(value: Any, handler: Callable[[Any], Any]) -> Any:
    try:
        return handler(value)
    except VALIDATOR_INPUT_ERRORS as exc:
        raise ValueError(f"a field of the request body has the wrong type ({type(exc).__name__}: {exc})") from None


def request_body(model: Any) -> Any:
    """``model`` (a vLLM request model, or a union of them) as a route's body annotation whose
    validation raises only ``ValidationError``: a ``VALIDATOR_INPUT_ERRORS`` exception from the
    model's own validators becomes a ``ValueError`` there, so FastAPI answers 400 (through vLLM's
    ``RequestValidationError`` handler) instead of 500. The OpenAPI schema is the model's."""
    from pydantic import WrapValidator

    return Annotated[model, WrapValidator(_validator_slips_are_invalid)]


async def render_or_400(render: Callable[..., Awaitable[Any]], request: Any, raw_request: Any, param: str) -> Any:
    """``await render(request, raw_request)``; a ``RENDER_INPUT_ERRORS`` exception from it becomes
    ``APIError`` 400 naming ``param`` (logged with its traceback), never a 500: the render step reads
    only the request, so what it cannot render is the request's fault. Other exceptions pass."""
    try:
        return await render(request, raw_request)
    except RENDER_INPUT_ERRORS as exc:
        logger.warning("a request's %s could not be rendered", param, exc_info=True)
        raise invalid(param, f"{param} could not be rendered: {type(exc).__name__}: {exc}") from None


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


def request_class(xargs: dict, headers, classes: Optional[SLOClasses]) -> Optional[str]:
    """The SLO class a request names (``vllm_xargs.slo_class`` over ``x-slo-class``), the default
    class when it names none, None when the deployment has no classes.

    Raises ``APIError`` (400, ``param`` naming the key or header) for a class the deployment
    does not have, or one that is not a string.
    """
    param, name = f"vllm_xargs.{SLO_CLASS_KEY}", xargs.get(SLO_CLASS_KEY)
    if name is None:
        param, name = CLASS_HEADER, headers.get(CLASS_HEADER)
    if name is None:
        return classes.default if classes is not None else None
    if not isinstance(name, str):
        raise invalid(param, f"{param} must be a string naming an SLO class, got {name!r}")
    if classes is None:
        raise invalid(param, f"unknown SLO class {name!r}: this deployment has no SLO classes (slo_tiers)")
    if name not in classes.tiers:
        raise invalid(param, f"unknown SLO class {name!r}; this deployment has: {', '.join(classes.tiers)}")
    return name


def request_slo(xargs: dict, headers, default: SLO, classes: Optional[SLOClasses] = None) -> SLO:
    """The request's SLO: its class's targets (``request_class``) or ``default``, each overridden by
    the ``x-slo-*-ms`` headers, those by ``vllm_xargs``; with the class's name and priority.

    Raises ``APIError`` (400, ``param`` naming the header or key) for an unknown class, a value
    that is not a positive finite number, or a target tighter than the class allows
    (``TierConfig.min_ttft_slo_s`` / ``min_tpot_slo_s``).
    """
    name = request_class(xargs, headers, classes)
    if name is not None:
        default = classes.tiers[name]
    targets = [default.ttft_s, default.tpot_s]
    for i, header in enumerate((TTFT_HEADER, TPOT_HEADER)):
        raw = headers.get(header)
        if raw is not None:
            value = positive_seconds(raw, 1e-3)
            if value is None:
                raise invalid(header, f"header {header} must be a number of milliseconds > 0, got {raw!r}")
            targets[i] = value
    try:
        slo = slo_from_extra_args(xargs, replace(default, ttft_s=targets[0], tpot_s=targets[1]))
    except SLOValueError as exc:
        raise invalid(f"vllm_xargs.{exc.key}", f"vllm_xargs.{exc}") from None
    if name is not None:
        floor = classes.floors[name]
        for key, header, asked, low in ((SLO_TTFT_KEY, TTFT_HEADER, slo.ttft_s, floor.ttft_s),
                                        (SLO_TPOT_KEY, TPOT_HEADER, slo.tpot_s, floor.tpot_s)):
            if asked < low:
                param = f"vllm_xargs.{key}" if key in xargs else header
                raise invalid(param, f"{param} asks for {asked:g} s; SLO class {name!r} allows no less than {low:g} s")
    return slo


def listed_iterables(value: Any) -> Any:
    """``value`` with every one-shot iterator inside it (dicts and lists walked) replaced by a list.

    vLLM's chat request model types some message fields as ``Iterable`` (OpenAI's: the
    ``content`` parts of a developer, system or tool message, an assistant's ``tool_calls``);
    pydantic keeps such a field as a lazy ``ValidatorIterator``. One pass over it (the
    render step) empties it, and it cannot be pickled, so the request could not travel to
    the engine (a 503 for a valid request). Listing it first keeps it whole for both.
    Strings, bytes and pydantic models are left as they are.
    """
    if isinstance(value, dict):
        for key, item in value.items():
            value[key] = listed_iterables(item)
        return value
    if isinstance(value, list):
        for i, item in enumerate(value):
            value[i] = listed_iterables(item)
        return value
    if isinstance(value, Iterator):
        return [listed_iterables(item) for item in value]
    return value


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


def _where(first: EngineReply) -> dict[str, str]:
    return {NODE_HEADER: first.node, REPLICA_HEADER: first.replica}


# ----------------------------------------------------------------------------- the ingress


@dataclass(frozen=True)
class IngressSettings:
    """What an ingress replica needs, derived from the deployment's ``ServeConfig`` (``cluster.app``)."""

    model: str  # as the engines load it (the ingress renders with the same tokenizer and template)
    served_model_name: str
    engine_args: dict[str, Any]  # the engines' vLLM arguments (context length, tokenizer options)
    openai_server: dict[str, Any]  # vLLM's frontend options
    default_slo: SLO  # for requests that name none (the default class's with classes)
    slo_classes: Optional[SLOClasses]  # the deployment's SLO classes, None without
    first_output_timeout_s: float
    engine_deployment: str  # the Serve deployment of the engines (its PAB registry)
    balancer_settings: Optional[Any]  # BalancerSettings when the router is ours (admission here), else None
    admission_wait_s: float
    admission_wait_order: str  # balancer.core.admission_queue.QUEUE_ORDERS
    trust_request_start: bool


class Ingress:
    """Routing, SLOs and admission around vLLM's OpenAI layer (wrapped with ``serve.ingress`` by ``make_ingress``)."""

    async def __init__(self, engine, settings: IngressSettings, app: FastAPI) -> None:
        import os

        from ray import serve

        from node.vllm.tiny_model import resolve_model
        from node.vllm.openai_server import init_render_state, server_args

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.engine = engine.options(stream=True, method_name="generate")
        self.settings = settings
        # The application's name as Serve runs it (``serve deploy`` names it in its file).
        self.app_name = serve.get_replica_context().app_name
        self.default_slo = settings.default_slo
        self.slo_classes = settings.slo_classes
        self.first_output_timeout_s = settings.first_output_timeout_s
        args = server_args(resolve_model(settings.model), settings.served_model_name,
                           settings.engine_args, settings.openai_server)
        await init_render_state(app.state, args)
        self.state = app.state
        self.render = app.state.serving_render
        self._registry = None
        self.trust_request_start = settings.trust_request_start
        self.balancer = None  # our router: admit here; Serve's default router: no admission
        if settings.balancer_settings is not None:
            from balancer.serve.admission import HeldAdmissions, local_balancer

            self.balancer = local_balancer(self.app_name, settings.engine_deployment, settings.balancer_settings)
            self.held = HeldAdmissions(self.balancer, settings.admission_wait_s, settings.admission_wait_order)
        self._live_engines: tuple[float, Optional[int]] = (-math.inf, None)  # (checked at, count)

    # -- the registry (for health and status) ---------------------------------------------

    async def registry_snapshot(self) -> Optional[dict]:
        from balancer.serve.pab_registry import find_registry

        for attempt in range(2):
            if self._registry is None:
                self._registry = find_registry(self.app_name, self.settings.engine_deployment)
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

    # -- admission and the engine call -------------------------------------------------------

    async def _admit(self, job: EngineJob) -> None:
        """Admit and place ``job`` in this process, or raise 429 (Retry-After) / 503; no remote call.

        With ``admission_wait_s`` a refused request is held and asked again at each
        view refresh until that long after its arrival, the held requests in
        ``admission_wait_order`` (``balancer.serve.admission.HeldAdmissions``). Without a registry view (it is
        restarting) the router places the request from Serve's routing stats.
        """
        lb = self.balancer
        if lb is None:
            if await self.live_engines() == 0:
                raise unavailable("No engine is up.")
            return
        from balancer.serve.admission import count_rejection

        if lb.too_late(time.time() - job.arrival_s, job.ttft_slo_s):
            count_rejection(job.slo_class)
            raise rejected(1.0, "too-late")
        node, decision = await self.held.admit(job.request_id, job.prompt_tokens, job.arrival_s, job.ttft_slo_s,
                                               held_fraction=job.held_fraction, tier=job.tier,
                                               block_hashes=job.block_hashes)
        if node is not None:
            return
        if decision.reason == "no-engine":
            if lb.registry_ok:
                raise unavailable("No engine is up.")
            return  # the registry is away: the router decides from the replicas' routing stats
        count_rejection(job.slo_class)
        raise rejected(decision.retry_after_s or 1.0, decision.reason)

    def _release(self, job: EngineJob) -> None:
        if self.balancer is not None:
            self.balancer.release(job.request_id)

    async def _start(self, job: EngineJob):
        """Admit ``job``, send it to its engine and wait for its first output: ``(generator, first item)``.

        On any failure the placement is released before the error is raised.
        """
        try:
            await self._admit(job)
            return await self._send(job)
        except BaseException:
            self._release(job)
            raise

    async def _send(self, job: EngineJob):
        for attempt in range(2):
            gen = self.engine.remote(job)
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
                    raise rejected(retry, "engine-backpressure") from None
                if _is_engine_failure(exc) and attempt == 0:
                    continue  # nothing reached the client yet: one more try on a live engine
                # with its traceback: an engine failure is a defect to find (a client mistake is a 400 earlier)
                logger.exception("request %s failed before its first token: %r", job.request_id, exc)
                raise unavailable(f"The engine failed: {type(exc).__name__}.") from None
        raise AssertionError("unreachable")

    def stamp(self, request, headers) -> None:
        """Write the request's SLOs and arrival into its ``vllm_xargs`` (the client's arrival never kept).

        The arrival is taken here, before rendering, so rendering counts in the TTFT.

        Raises ``APIError`` (400) for a malformed SLO, before any rendering work.
        """
        arrival_s = arrival_stamp(headers, time.time(), self.trust_request_start)
        xargs = dict(request.vllm_xargs or {})
        slo = request_slo(xargs, headers, self.default_slo, self.slo_classes)
        request.vllm_xargs = {**xargs, **to_extra_args(slo, arrival_s)}

    async def run_rendered(self, kind: str, request, rendered, prompt_ids) -> Response:
        """``run`` on what vLLM's render step gave: its error as the response, else ``prompt_ids()``."""
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        if isinstance(rendered, ErrorResponse):
            return _error_response(rendered.model_dump())
        return await self.run(kind, request, prompt_ids())

    async def run(self, kind: str, request, prompt_ids: list[list[int]]) -> Response:
        """Admit and serve one stamped (``stamp``) and rendered request; ``prompt_ids``: its prompts' token ids.

        ``kind`` is ``CHAT`` or ``COMPLETION`` (``node.serve.messages``). The request gets our id and its
        token ids, then goes to the engine it was placed on; the answer is vLLM's
        response, streamed or whole, with the node's and replica's headers.
        """
        rid = uuid.uuid4().hex
        request.request_id = rid
        if kind == CHAT:
            kv = dict(request.kv_transfer_params or {})
            kv["prompt_token_ids"] = prompt_ids[0]
            request.kv_transfer_params = kv
        elif request.prompt_embeds is None and not request.echo and not request.suffix:
            # (echo answers with the client's own text and suffix needs it: those keep it, and the engine
            # renders it again with the same renderer, so the count is the same)
            request.prompt = prompt_ids[0] if len(prompt_ids) == 1 else prompt_ids
        # n samples of each prompt: vLLM prefills the prompt once per sample (no prefix caching assumed).
        n = int(request.n or 1)
        # (stamp() wrote both; read with the one reader)
        classes, name = self.slo_classes, request.vllm_xargs.get(SLO_CLASS_KEY)
        slo = slo_from_extra_args(request.vllm_xargs, classes.tiers[name] if classes is not None else self.default_slo)
        # One prompt, one sample: the nodes' prefix caches may hold part of it (hashed for the balancer).
        hashes = self.balancer.block_hashes(prompt_ids[0]) if self.balancer is not None and n == 1 and len(
            prompt_ids) == 1 else ()
        job = EngineJob(request_id=rid, prompt_tokens=n * sum(len(ids) for ids in prompt_ids), block_hashes=hashes,
                        arrival_s=arrival_from_extra_args(request.vllm_xargs, time.time()), ttft_slo_s=slo.ttft_s,
                        slo_class=slo.tier, tier=classes.budget_tier(slo) if classes is not None else None,
                        held_fraction=classes.held_fraction(slo) if classes is not None else 0.0,
                        kind=kind, request=request)
        gen, first = await self._start(job)
        where = _where(first)

        def close() -> None:  # the engine's work stops and the placement is released, however the request ends
            gen.cancel()
            self._release(job)

        if first.sse is None:
            try:
                if first.started:  # a whole response after its first token: as long as generation takes
                    first = await self._next(gen, rid)
            finally:
                close()
            if first.error is not None:
                return _error_response(first.error, where)
            return Response(first.body, media_type="application/json", headers=where)

        async def events():
            yield first.sse
            try:
                async for item in gen:
                    yield item
            except Exception as exc:  # noqa: BLE001 - the stream has begun: report in-band, as vLLM does
                logger.warning("stream %s failed mid-generation: %r", rid, exc)
                err = error_body(503, f"The engine failed mid-generation: {type(exc).__name__}.")
                yield f"data: {json.dumps(err)}\n\n"
                yield "data: [DONE]\n\n"

        return _ClosingStream(events(), close, media_type="text/event-stream", headers=where)

    @staticmethod
    async def _next(gen, rid: str) -> EngineReply:
        """The engine's next item; 503 when the engine failed on the way."""
        try:
            return await gen.__anext__()
        except StopAsyncIteration:
            raise unavailable("The engine ended the request without output.") from None
        except Exception as exc:  # noqa: BLE001 - the engine (or its replica) failed mid-generation
            logger.warning("request %s failed mid-generation: %r", rid, exc)
            raise unavailable(f"The engine failed mid-generation: {type(exc).__name__}.") from None


class _ClosingStream(StreamingResponse):
    """A ``StreamingResponse`` that runs ``on_close`` when it ends, also when its body never started
    (the client left before the first chunk went out: the body generator's own cleanup would not run)."""

    def __init__(self, content, on_close, **kwargs) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def _error_response(body: dict[str, Any], headers: Optional[dict[str, str]] = None) -> JSONResponse:
    """vLLM's error object (``ErrorResponse.model_dump()``) as an HTTP response with its status."""
    return JSONResponse(body, status_code=body["error"]["code"], headers=headers)


# ----------------------------------------------------------------------------- middleware


#: Routes whose requests are admitted by budget (and may be refused before their body is read).
ADMITTED_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})


class EarlyRefusal:
    """ASGI middleware: under overload, refuse a generation request before reading its body.

    When no engine can take a small request (``LocalBalancer.refusal_before_parsing``: the
    ``early_refusal_quantile`` of recent prompts), its ``x-slo-class`` is being shed after a
    refusal of the tightest class (``LocalBalancer.shed_before_parsing``), or the request already waited in front of
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
            from balancer.serve.admission import count_rejection, local_balancers

            balancers = local_balancers()
            if balancers:
                now = time.time()
                headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
                waited = now - arrival_stamp(headers, now, self.trust_request_start)
                ttft = positive_seconds(headers.get(TTFT_HEADER, ""), 1e-3)
                slo_class = headers.get(CLASS_HEADER, "")
                for lb in balancers:
                    if lb.too_late(waited, ttft or lb.settings.class_ttft_slo_s.get(slo_class)):
                        # (a stale request alone says nothing of the budget: nothing is shed)
                        wait, reason = 1.0, "too-late"
                    else:
                        wait, reason = lb.shed_before_parsing(slo_class), "shed-looser-tier"
                        if wait is None:
                            wait, reason = lb.refusal_before_parsing(), "no-budget-early"
                            if wait is not None:  # no budget even for a small prompt: as a refusal at admission
                                lb.refused_early(slo_class)
                    if wait is not None:
                        count_rejection(slo_class if slo_class in lb.settings.class_ttft_slo_s else "")
                        await rejected(wait, reason).response()(scope, receive, send)
                        return
        await self.app(scope, receive, send)


def key_digests(keys: list[str]) -> list[str]:
    """The sha256 hex digests of API keys: all that leaves the process that read the keys."""
    return [hashlib.sha256(k.encode("utf-8")).hexdigest() for k in keys]


class APIKeys:
    """ASGI middleware: ``Authorization: Bearer <key>`` on ``GUARDED_PREFIXES``, as vLLM's ``--api-key`` does.

    Holds only the keys' sha256 digests and compares in constant time
    (``secrets.compare_digest``), like vLLM's ``AuthenticationMiddleware``; unlike it,
    the 401 is the OpenAI error object. ``/health`` and other paths stay open;
    ``OPTIONS`` (CORS preflight) passes. Outermost, so an unauthenticated request
    gets 401 before any admission decision.
    """

    def __init__(self, app, sha256_hex: list[str]) -> None:
        self.app = app
        self.digests = [bytes.fromhex(h) for h in sha256_hex]

    def _ok(self, scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name.lower() == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() != "bearer":
                    return False
                digest = hashlib.sha256(token.strip().encode("latin-1")).digest()
                match = False
                for d in self.digests:
                    match |= secrets.compare_digest(digest, d)
                return match
        return False

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] != "OPTIONS" and \
                scope["path"].startswith(GUARDED_PREFIXES) and not self._ok(scope):
            resp = JSONResponse(error_body(401, "Missing or invalid API key: send `Authorization: Bearer <key>`."),
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
            await resp(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyTooLarge(HTTPException):
    """A request body over ``BodyLimit``'s limit (an ``HTTPException``: FastAPI lets it out of its body reading)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"The request body is over the limit of {max_bytes} bytes.")


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413 in the OpenAI error object.

    Declared too large (``Content-Length``): refused unread. Sent in chunks: refused when the
    count passes the limit, by raising ``BodyTooLarge`` from ``receive`` (any other exception
    there would become FastAPI's 400).
    """

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name.lower() == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await _too_large(BodyTooLarge(self.max_bytes))(scope, receive, send)
                return
        seen = 0

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counted_receive, send)


def _too_large(exc: BodyTooLarge) -> JSONResponse:
    return APIError(413, str(exc.detail)).response()


def make_fastapi_app(early_refusal: bool = True, trust_request_start: bool = True,
                     api_key_sha256: Optional[list[str]] = None, max_body_bytes: int = 16 << 20) -> FastAPI:
    """The FastAPI app with vLLM's exception handlers; routes reach the ``Ingress`` through Serve.

    Middleware, outermost first: ``APIKeys`` (when keys are given), ``BodyLimit``,
    ``EarlyRefusal`` (when ``early_refusal``).
    """
    from vllm.entrypoints.serve.exception_handling.register import init_exception_handler

    app = FastAPI(title="FairBatching", docs_url=None, redoc_url=None)
    init_exception_handler(app)
    if early_refusal:
        app.add_middleware(EarlyRefusal, trust_request_start=trust_request_start)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    if api_key_sha256:
        app.add_middleware(APIKeys, sha256_hex=list(api_key_sha256))

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(BodyTooLarge)
    async def _body_too_large(request: Request, exc: BodyTooLarge):
        return _too_large(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        # FastAPI raises Starlette's HTTPException for a body it cannot decode (invalid UTF-8), which
        # vLLM's handler (registered for FastAPI's subclass) does not catch.
        return APIError(exc.status_code, str(exc.detail), headers=dict(exc.headers or {})).response()

    return app


def make_ingress(serve_deployment_options: dict[str, Any], *, early_refusal: bool = True,
                 trust_request_start: bool = True, api_key_sha256: Optional[list[str]] = None,
                 max_body_bytes: int = 16 << 20):
    """The Serve deployment class of the ingress (FastAPI routes bound to an ``Ingress``)."""
    from ray import serve
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse
    from vllm.entrypoints.serve.tokenize.protocol import DetokenizeRequest, TokenizeRequest
    from vllm.entrypoints.serve.utils.api_utils import validate_json_request

    app = make_fastapi_app(early_refusal, trust_request_start, api_key_sha256, max_body_bytes)
    json_only = [Depends(validate_json_request)]

    @serve.deployment(**serve_deployment_options)
    @serve.ingress(app)
    class OpenAIIngress(Ingress):
        async def __init__(self, engine, settings: IngressSettings) -> None:
            await super().__init__(engine, settings, app)

        @app.get("/health")
        async def health(self):
            n = await self.live_engines()
            if n == 0:
                return unavailable("No engine is up.").response()
            return {"status": "ok", "engines": n}

        @app.get("/v1/models")
        async def models(self):
            return JSONResponse((await self.state.openai_serving_models.show_available_models()).model_dump())

        @app.get("/v1/fairbatching/status")
        async def status(self):
            snap = await self.registry_snapshot()
            if snap is None:
                return unavailable("The PAB registry is not reachable.").response()
            return snap

        @app.post("/tokenize", dependencies=json_only)
        async def tokenize(self, request: request_body(TokenizeRequest), raw_request: Request):
            out = await render_or_400(self.state.serving_tokenization.create_tokenize, request, raw_request,
                                      "messages" if hasattr(request, "messages") else "prompt")
            return _error_response(out.model_dump()) if isinstance(out, ErrorResponse) else JSONResponse(out.model_dump())

        @app.post("/detokenize", dependencies=json_only)
        async def detokenize(self, request: request_body(DetokenizeRequest), raw_request: Request):
            out = await self.state.serving_tokenization.create_detokenize(request, raw_request)
            return _error_response(out.model_dump()) if isinstance(out, ErrorResponse) else JSONResponse(out.model_dump())

        @app.post("/v1/completions", dependencies=json_only)
        async def v1_completions(self, request: request_body(CompletionRequest), raw_request: Request):
            self.stamp(request, raw_request.headers)
            rendered = await render_or_400(self.render.render_completion_request, request, raw_request, "prompt")
            return await self.run_rendered(COMPLETION, request, rendered, lambda: [r.token_ids for r in rendered])

        @app.post("/v1/chat/completions", dependencies=json_only)
        async def v1_chat(self, request: request_body(ChatCompletionRequest), raw_request: Request):
            listed_iterables(request.messages)  # before the render step reads them (one pass only)
            self.stamp(request, raw_request.headers)
            rendered = await render_or_400(self.render.render_chat_request, request, raw_request, "messages")
            return await self.run_rendered(CHAT, request, rendered, lambda: [rendered.token_ids])

    return OpenAIIngress
