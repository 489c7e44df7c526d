"""The balancer's admission queue: which held request is tried first, and when a wait runs out."""

import pytest

from balancer.core.admission_queue import QUEUE_ORDERS, AdmissionQueue


def held(order: str, wait_s: float = 0.5) -> AdmissionQueue:
    q = AdmissionQueue(wait_s, order)
    q.hold("batch-early", arrival_s=0.0, ttft_slo_s=30.0)  # deadline 30 s
    q.hold("interactive", arrival_s=0.1, ttft_slo_s=1.0)  # deadline 1.1 s
    q.hold("batch-late", arrival_s=0.2, ttft_slo_s=30.0)  # deadline 30.2 s
    return q


def test_edf_tries_the_earliest_first_token_deadline_first():
    tried = []
    held("edf").retry(0.3, lambda item: tried.append(item) or False)
    assert tried == ["interactive", "batch-early", "batch-late"]


def test_arrival_and_fifo_try_in_arrival_order():
    for order in ("arrival", "fifo"):
        tried = []
        held(order).retry(0.3, lambda item: tried.append(item) or True)
        assert tried == ["batch-early", "interactive", "batch-late"]


def test_fifo_stops_at_the_first_request_that_does_not_fit_and_the_others_pass_it_over():
    fits = {"interactive", "batch-late"}  # the head of the queue does not fit
    for order, placed in (("fifo", []), ("arrival", ["interactive", "batch-late"]),
                          ("edf", ["interactive", "batch-late"])):
        q = held(order)
        done = []
        expired = q.retry(0.3, lambda item: item in fits and not done.append(item))
        assert done == placed and expired == []
        assert q.items() == [i for i in ("batch-early", "interactive", "batch-late") if i not in placed]


def test_a_request_held_past_its_wait_is_returned_for_refusal_and_not_tried():
    q = held("edf", wait_s=0.5)
    tried = []
    expired = q.retry(0.55, lambda item: tried.append(item) or False)  # batch-early arrived at 0: 0.55 s ago
    assert expired == ["batch-early"]
    assert tried == ["interactive", "batch-late"]
    assert q.items() == ["interactive", "batch-late"] and len(q) == 2
    assert q.retry(10.0, lambda item: True) == ["interactive", "batch-late"] and not q


def test_ties_on_deadline_keep_the_order_of_holding():
    q = AdmissionQueue(1.0, "edf")
    for name in "abc":
        q.hold(name, arrival_s=0.0, ttft_slo_s=1.0)
    tried = []
    q.retry(0.0, lambda item: tried.append(item) or False)
    assert tried == ["a", "b", "c"]


def test_unknown_order_and_negative_wait_are_refused():
    with pytest.raises(ValueError, match="lifo"):
        AdmissionQueue(0.1, "lifo")
    with pytest.raises(ValueError, match="wait_s"):
        AdmissionQueue(-1.0)
    assert set(QUEUE_ORDERS) == {"edf", "arrival", "fifo"}
