"""The admission budget's closed loop: shrink fast on a measured breach, once per round trip, recover slowly."""

import pytest

from node.core.feedback import FeedbackConfig, FrontDelay, LatencyFeedback
from node.core.attainment import percentile


def test_a_breach_shrinks_the_factor_by_the_gradient_at_most_halving_it():
    fb = LatencyFeedback(FeedbackConfig(target_ratio=0.8, max_decrease=0.5, min_samples=4, cooldown_s=1.0))
    for i in range(4):
        fb.observe(now_s=1.0, arrival_s=0.1 * i, ratio=1.0)  # TTFT at the SLO: 1.0 > 0.8
    assert fb.update(1.0) == pytest.approx(0.8)  # 0.8 / 1.0
    for i in range(4):
        fb.observe(now_s=2.5, arrival_s=2.0 + 0.1 * i, ratio=4.0)
    assert fb.update(2.5) == pytest.approx(0.4)  # 0.8 / 4 = 0.2, but at most halved
    assert fb.decreases == 2


def test_breaches_of_requests_admitted_before_the_last_decrease_do_not_shrink_it_again():
    fb = LatencyFeedback(FeedbackConfig(min_samples=2, increase_step=0.0, increase_ratio=1.0, cooldown_s=0.0))
    for t in (0.1, 0.2):
        fb.observe(1.0, t, 2.0)
    fb.update(1.0)
    shrunk = fb.factor
    for t in (0.15, 0.18, 0.19):  # late, but admitted under the old budget
        fb.observe(2.0, t, 3.0)
    assert fb.update(2.0) == shrunk
    for t in (0.5, 0.9):  # admitted after the newest measured arrival but before the cut (t=1.0)
        fb.observe(2.5, t, 3.0)
    assert fb.update(2.5) == shrunk
    for t in (1.5, 1.6):  # admitted after the decrease, still late: shrink again
        fb.observe(3.0, t, 3.0)
    assert fb.update(3.0) < shrunk


def test_no_second_decrease_within_the_cooldown():
    fb = LatencyFeedback(FeedbackConfig(min_samples=1, cooldown_s=2.0, increase_step=0.0, increase_ratio=1.0))
    fb.observe(1.0, 0.9, 2.0)
    first = fb.update(1.0)
    fb.observe(2.0, 1.5, 2.0)  # arrived after the decrease, but its news comes within the feedback delay
    assert fb.update(2.0) == first
    assert fb.update(3.0) < first  # the same breach, past the cooldown


def test_good_latencies_recover_the_factor_up_to_its_cap():
    fb = LatencyFeedback(FeedbackConfig(increase_step=0.1, increase_ratio=1.25, interval_s=1.0, min_samples=1))
    fb.observe(0.5, 0.0, 5.0)
    fb.update(1.0)
    low = fb.factor
    assert low == pytest.approx(0.5)  # halved at most
    assert fb.update(1.5) == low  # within the interval: no change
    values = []
    for i in range(10):
        fb.observe(2.0 + i, 1.5 + i, 0.2)  # admitted after the cut, far within the target (0.8)
        values.append(fb.update(2.0 + i))
    assert values[0] == pytest.approx(low * 1.25) and values[-1] == 1.0  # sqrt(0.8 / 0.2) = 2, capped at 1.25


def test_near_the_target_the_factor_creeps():
    fb = LatencyFeedback(FeedbackConfig(target_ratio=0.8, min_samples=1, cooldown_s=0.0))
    fb.observe(0.5, 0.0, 1.6)
    cut = fb.update(1.0)
    fb.observe(1.5, 1.2, 0.72)  # 90 % of the target
    assert fb.update(2.0) == pytest.approx(cut * (0.8 / 0.72) ** 0.5)


def test_an_idle_node_keeps_its_factor_then_probes():
    """No growth without evidence (RFC 7661): a burst after a lull meets the budget the last load earned."""
    fb = LatencyFeedback(FeedbackConfig(increase_step=0.1, interval_s=1.0, window_s=10.0, min_samples=1))
    fb.observe(0.5, 0.0, 5.0)
    cut = fb.update(1.0)
    assert [fb.update(2.0 + i) for i in range(8)] == [cut] * 8  # the breach is still in the window
    assert fb.update(12.0) == pytest.approx(cut + 0.1)  # nothing measured for 10 s: probe


def test_a_disabled_loop_keeps_the_model_as_it_is():
    fb = LatencyFeedback(FeedbackConfig(enabled=False))
    for i in range(10):
        fb.observe(1.0, i, 10.0)
    assert fb.update(5.0) == 1.0


def test_front_delay_is_a_recent_tail_of_what_was_measured():
    fd = FrontDelay(quantile_=0.9, window_s=10.0)
    assert fd.value_s(0.0) == 0.0
    for d in range(1, 11):
        fd.observe(1.0, d / 100)
    fd.observe(1.0, -1.0)  # clock skew never counts as negative time
    assert fd.value_s(2.0) == pytest.approx(percentile([0.0] + [d / 100 for d in range(1, 11)], 90))
    assert fd.value_s(12.0) == 0.0  # a burst's delays do not shrink the idle budget forever


def test_bad_knobs_are_refused():
    for bad in (dict(quantile=0), dict(target_ratio=1.5), dict(max_decrease=1.0), dict(min_factor=0)):
        with pytest.raises(ValueError):
            FeedbackConfig(**bad)


def test_the_prefill_rate_counts_only_while_prompts_waited():
    from node.core.feedback import PrefillRate

    pr = PrefillRate(window_s=5.0, min_busy=0.8, min_prompts=4)
    for i in range(50):  # 5 s, a tick every 0.1 s, prompts always waiting; a 500-token prompt every 0.25 s
        t = i * 0.1
        pr.tick(t, waiting=True)
        if i % 5 == 0 or i % 5 == 2:
            pr.prefilled(t, 500)
    assert pr.rate_tps(4.9) == pytest.approx(20 * 500 / 4.9)
    assert pr.rate_tps(20.0) == pytest.approx(20 * 500 / 4.9)  # the last measurement stands ...
    assert pr.rate_tps(40.0) is None  # ... for memory_s
    idle = PrefillRate(window_s=5.0)
    for i in range(50):
        idle.tick(i * 0.1, waiting=i % 3 == 0)  # two thirds of the time nothing waited: demand-limited
        idle.prefilled(i * 0.1, 500)
    assert idle.rate_tps(4.9) is None


def test_the_prefill_rate_is_what_the_node_drains_while_prompts_wait():
    """A node saturated 60 % of the time prefills 5000 tokens/s then and idles otherwise: the rate is
    the 5000 it drains a queue at (PAB's R), not the 3000 it averaged over the window."""
    from node.core.feedback import PrefillRate

    def run(pr):
        for i in range(50):  # a tick every 0.1 s; saturated in the first 6 ticks of every 10
            t = i * 0.1
            busy = i % 10 < 6
            pr.tick(t, waiting=busy)
            if busy:
                pr.prefilled(t + 0.05, 500)  # 500 tokens every 0.1 s while saturated
        return pr.rate_tps(4.95)

    assert run(PrefillRate(window_s=5.0)) == pytest.approx(500 / 0.1, rel=0.05)
    assert run(PrefillRate(window_s=5.0, over_busy_time=False, min_busy=0.5)) == pytest.approx(
        0.6 * 500 / 0.1, rel=0.05)


def test_a_starved_node_probes_at_once():
    """Empty, with a budget too small for a typical request, a node gets no evidence: it must not wait."""
    fb = LatencyFeedback(FeedbackConfig(min_samples=1, increase_ratio=1.25, window_s=10.0))
    fb.observe(0.5, 0.0, 5.0)
    cut = fb.update(1.0)
    assert fb.update(2.0) == cut  # merely idle: hold (RFC 7661)
    assert fb.update(3.0, starved=True) == pytest.approx(cut * 1.25)


def test_a_tpot_paced_to_its_plan_is_not_a_breach():
    """FairBatching paces decodes to 0.8 of the TPOT SLO (tpot_margin 0.2): that is the plan, not a breach."""
    fb = LatencyFeedback(FeedbackConfig(target_ratio=0.7, tpot_target_ratio=0.9, min_samples=4, cooldown_s=0.0))
    for i in range(8):
        fb.observe(1.0, 0.1 * i, 0.8, tpot=True)
    assert fb.update(1.0) == 1.0 and fb.decreases == 0
    for i in range(8):
        fb.observe(2.0, 1.1 + 0.1 * i, 1.2, tpot=True)  # decodes late against the SLO itself: cut
    assert fb.update(2.0) < 1.0 and fb.decreases == 1


def test_requests_still_waiting_past_the_target_shrink_the_factor_before_their_first_token():
    # A budget that starts optimistic fills the queue; no first token has come back yet, but the
    # waiting requests are already older than the target: a censored breach, acted on now.
    cfg = FeedbackConfig(target_ratio=0.7, min_samples=4, cooldown_s=0.0)
    fb = LatencyFeedback(cfg)
    # (arrival_s, TTFT SLO s): at t = 1 their ages are 0.5, 0.45, 0.4, 0.35 of the SLO
    assert fb.update(1.0, waiting=[(0.0, 2.0), (0.1, 2.0), (0.2, 2.0), (0.3, 2.0)]) == 1.0  # within target
    waiting = [(0.1 * i, 2.0) for i in range(5)]  # at t = 2: 0.8 .. 1.0 of the SLO so far
    assert fb.update(2.0, waiting=waiting) < 1.0
    assert fb.decreases == 1
    # the same requests, still waiting, admitted before the cut: no second cut for them
    cut = fb.factor
    assert fb.update(3.5, waiting=waiting) == cut  # now 1.55 .. 1.75 of the SLO


def test_a_waiting_request_past_the_target_holds_growth():
    fb = LatencyFeedback(FeedbackConfig(target_ratio=0.7, min_samples=2, max_decrease=0.5, cooldown_s=0.0))
    fb.observe(0.5, 0.0, 5.0)
    fb.observe(0.5, 0.0, 5.0)
    low = fb.update(1.0)
    for i in range(6):
        fb.observe(2.0, 1.5 + 0.01 * i, 0.2)  # measured ones came back fast
    # one waiting request among the fresh ones is late: the tail stays under the target, but no growth
    assert fb.update(2.0, waiting=[(1.6, 0.4 / 0.9)]) == low  # 0.9 of its SLO at t = 2
    assert fb.update(3.0) > low


def test_slow_start_doubles_on_good_news_halves_on_a_breach_and_ends_on_evidence():
    from node.core.feedback import SlowStart

    ss = SlowStart(400.0, interval_s=1.0)
    assert ss.update(0.0, None, 0.7) == 400.0  # no news: held
    assert ss.update(0.5, 0.3, 0.7) == 400.0  # within the interval
    assert ss.update(1.0, 0.3, 0.7) == 800.0
    assert ss.update(2.0, 0.5, 0.7) == 1600.0
    assert ss.update(3.0, 0.9, 0.7) == 800.0  # a breach
    assert ss.update(3.5, 0.7, 0.7) == 800.0  # within the interval
    assert ss.update(4.0, 0.7, 0.7) == 800.0  # at the target (the loop holds): held
    for t in range(5, 11):
        ss.update(float(t), 2.0, 0.7)
    assert ss.rate_cap_tps == 400.0  # never below where it started
    ss.end()
    assert not ss.active and ss.update(20.0, 0.1, 0.7) is None
    with pytest.raises(ValueError):
        SlowStart(0.0)
