"""The HTTP headers of the API beyond OpenAI's: what a client (or a front proxy) may send, and what
every answer carries. Kept apart from the ingress so that clients import them without FastAPI."""

#: A request's SLOs in milliseconds (a body's ``vllm_xargs`` seconds win over them).
TTFT_HEADER, TPOT_HEADER = "x-slo-ttft-ms", "x-slo-tpot-ms"
#: A request's SLO class, one of the deployment's ``slo_tiers`` (a body's ``vllm_xargs.slo_class`` wins).
CLASS_HEADER = "x-slo-class"
#: When a front proxy stamped the request (nginx: ``proxy_set_header X-Request-Start "t=${msec}"``, the
#: convention of Heroku's router and APM agents), the arrival is that stamp: the time the request waited
#: in front of the ingress then counts in its TTFT, its slack and the budget's front delay.
REQUEST_START_HEADER = "x-request-start"
NODE_HEADER = "x-fairbatching-node"  # the node (host:ray node id) that served the request
REPLICA_HEADER = "x-fairbatching-replica"  # the engine replica (the registry's node key)
#: Why a 429 was given: ``too-late`` (it waited past its shedding age in front of the ingress),
#: ``shed-looser-tier`` (its class is shed after a refusal of the tightest), ``no-budget-early`` (no
#: engine had budget even for a small prompt, refused before its body was read), ``engine-backpressure``
#: (an engine refused it), or the placement's reason (PAB's ``no-budget``, ``no-budget-held`` for a looser
#: class leaving the held share, ``admission-cap``, ``in-flight-cap``: ``balancer.core.placement.Decision``).
REFUSAL_HEADER = "x-fairbatching-refusal"
