"""Shared fixtures and Hypothesis strategies for the policy-core tests."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from node.core.step_time import StepTimeModel
from node.core.plan import Limits
from node.core.request import SLO, RequestState

settings.register_profile("ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")



@pytest.fixture
def pab_calls(monkeypatch) -> list[dict]:
    """The keyword arguments of every ``estimate_pab`` call the simulator makes during the test, in order."""
    import cluster.sim.simulator as simulator  # not at import: the policy-core tests run without the simulator
    from node.core.pab import estimate_pab

    seen: list[dict] = []

    def spy(*args, **kw):
        seen.append(kw)
        return estimate_pab(*args, **kw)

    monkeypatch.setattr(simulator, "estimate_pab", spy)
    return seen


# The reference linear profile of DESIGN section 6.
REF_MODEL = StepTimeModel(a_s=0.0056, b_s_per_token=21e-6, c_s_per_context_token=0.05e-6)
NOW = 100.0


@st.composite
def request_states(draw, index: int = 0) -> RequestState:
    slo = SLO(draw(st.sampled_from([0.2, 0.5, 1.0, 2.0])), draw(st.sampled_from([0.02, 0.05, 0.1])))
    arrival = NOW - draw(st.floats(0.0, 20.0))
    prompt = draw(st.integers(1, 4096))
    if draw(st.booleans()):  # prefilling
        computed = draw(st.integers(0, prompt - 1))
        return RequestState(f"r{index}", arrival, prompt, slo, computed_tokens=computed)
    first = arrival + draw(st.floats(0.01, 2.0))
    out = draw(st.integers(1, 500))
    return RequestState(f"r{index}", arrival, prompt, slo, computed_tokens=prompt, output_tokens=out, first_token_s=first)


@st.composite
def snapshots(draw, max_size: int = 40) -> list[RequestState]:
    n = draw(st.integers(0, max_size))
    return [draw(request_states(i)) for i in range(n)]


limits_strategy = st.builds(
    Limits,
    max_num_seqs=st.integers(1, 64),
    max_num_batched_tokens=st.integers(1, 8192),
    kv_blocks_free=st.integers(0, 2000),
    block_size=st.sampled_from([1, 16]),
    kv_blocks_total=st.one_of(st.none(), st.integers(2000, 4000)),
)

models = st.builds(
    StepTimeModel,
    a_s=st.floats(0.0, 0.02),
    b_s_per_token=st.floats(1e-6, 1e-4),
    c_s_per_context_token=st.floats(0.0, 1e-6),
    safety_factor=st.floats(1.0, 1.5),
)
