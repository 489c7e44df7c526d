"""What crosses the Ray call between the ingress and an engine replica, as plain dataclasses.

The ingress sends an ``EngineJob`` (through the engine deployment's handle, so the
request router reads it too: it is a ``PlacementRequest``); the replica answers with
an ``EngineReply`` first, then, for a stream, each further server-sent event as a string.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from balancer.core.placement import PlacementRequest

#: ``EngineJob.kind``: which of vLLM's OpenAI handlers serves the request.
CHAT = "chat"
COMPLETION = "completion"


@dataclass(frozen=True, slots=True)
class EngineJob(PlacementRequest):
    """One admitted, rendered request for an engine replica.

    ``kind`` is ``CHAT`` or ``COMPLETION``; ``request`` is vLLM's request model
    (``ChatCompletionRequest`` / ``CompletionRequest``) with its prompt as token ids
    and its ``vllm_xargs`` holding the SLOs and the arrival stamp
    (``node.core.extra_args``).
    """

    kind: str
    request: Any


@dataclass(frozen=True, slots=True)
class EngineReply:
    """The replica's first answer to an ``EngineJob``, naming the node and replica that serve it.

    Exactly one of: ``started`` (a whole response has its first token; the body follows
    as a second ``EngineReply``), ``error`` (vLLM's error object, its HTTP status in
    ``code``), ``body`` (the whole JSON response) or ``sse`` (a stream's first event;
    the rest follow as strings).
    """

    node: str
    replica: str
    started: bool = False
    error: Optional[dict[str, Any]] = None
    body: Optional[str] = None
    sse: Optional[str] = None
