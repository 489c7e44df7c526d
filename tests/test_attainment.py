"""The one SLO test and percentile every host scores with (node/core/attainment.py)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.core.attainment import meets_slo, percentile, tokens_on_time
from node.core.request import SLO

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(st.lists(finite, min_size=1, max_size=60), st.floats(min_value=0, max_value=100),
       st.sampled_from(["linear", "lower", "higher"]))
def test_percentile_is_numpys(values, q, method):
    assert percentile(values, q, method=method) == pytest.approx(float(np.percentile(values, q, method=method)),
                                                                 rel=1e-12, abs=1e-9)


def test_percentile_of_nothing_is_none_and_bad_arguments_raise():
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    with pytest.raises(ValueError):
        percentile([1.0], 50, method="nearest")


def test_the_slo_test_and_on_time_tokens():
    slo = SLO(1.0, 0.1)
    assert meets_slo(1.0, 0.1, slo) and meets_slo(0.5, None, slo)  # at the bound; one token: TTFT only
    assert not meets_slo(None, None, slo) and not meets_slo(1.01, 0.05, slo) and not meets_slo(0.5, 0.11, slo)
    # arrival 0: token j due at 1 + 0.1 j (arrival anchor); first token at 0.5, then 0.5 + 0.1 j
    assert tokens_on_time(0.0, [0.5, 1.05, 1.25], slo) == (2, 1)  # j=2 late (1.2); j>=1 late from 0.5
