"""Discrete-event cluster simulator: N nodes running a node policy behind a balancer, on a virtual clock.

Layout (one idea per module): ``events`` (clock and event loop), ``kv_cache``
(block pool), ``step_time`` (the *true* step time the virtual GPU takes),
``node`` (one serving node), ``simulator`` (wiring: trace -> balancer ->
nodes), ``metrics`` (attainment, percentiles, goodput), ``capacity``
(bisection over the request rate), ``config`` (``SimConfig``, which also
defines the command line options).
"""
