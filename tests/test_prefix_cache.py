"""Prefix caching: the balancer's per-node estimate, placement net of it, the simulator's node caches,
``--pab-tokens``, the prefix-affinity baseline and the multi-turn workload."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.core.placement import NodeView
from balancer.core.policies import PLACEMENT_NAMES, make_placement
from balancer.core.prefix import PrefixIndex, cache_hit_tokens
from cluster.sim.kv_cache import BlockPool
from cluster.sim.prefix_cache import NodePrefixCache
from cluster.workload.multiturn import MULTITURN_COLUMNS, MultiTurnModel, generate, write_csv
from cluster.workload.traces import TraceError, load_trace, parse_columns

from tests.test_sim_timeline import run

BT = 16  # tokens per block in these tests


# -- the balancer's estimate -----------------------------------------------------


class BruteIndex:
    """Per node a list of hashes, least recently used first; evict from the front past the capacity."""

    def __init__(self, capacity):
        self.capacity, self.nodes = capacity, {}

    def insert(self, node, hashes):
        held = self.nodes.setdefault(node, [])
        for h in reversed(hashes):
            if h in held:
                held.remove(h)
            held.append(h)
        while self.capacity is not None and len(held) > self.capacity:
            held.pop(0)

    def cached_blocks(self, node, hashes):
        held = set(self.nodes.get(node, ()))
        n = 0
        while n < len(hashes) and hashes[n] in held:
            n += 1
        return n


prompts = st.lists(st.integers(0, 12), min_size=0, max_size=6)
ops = st.lists(st.tuples(st.booleans(), st.integers(0, 2), prompts), max_size=40)


@settings(max_examples=200, deadline=None)
@given(ops, st.one_of(st.none(), st.integers(0, 10)))
def test_prefix_index_matches_a_brute_force_lru(operations, capacity):
    index, brute = PrefixIndex(BT, capacity_blocks=capacity), BruteIndex(capacity)
    for is_insert, node, hashes in operations:
        if is_insert:
            index.insert(node, hashes)
            brute.insert(node, hashes)
        else:
            assert index.cached_blocks(node, hashes) == brute.cached_blocks(node, hashes)
        assert index.blocks_held(node) == len(brute.nodes.get(node, ()))


def test_a_hit_is_capped_at_the_prompt_less_one_token_in_whole_blocks():
    assert cache_hit_tokens(4, 64, BT) == 48  # 64 - 1 = 63 -> 3 whole blocks
    assert cache_hit_tokens(4, 65, BT) == 64
    assert cache_hit_tokens(2, 200, BT) == 32


# -- placement net of the cache ----------------------------------------------------


def pab_with_index(**knobs):
    index = PrefixIndex(BT)
    pab = make_placement("pab", [0, 1], prefix_index=index, **knobs)
    for n in (0, 1):
        pab.update(NodeView(n, pab_tokens=10_000, prefill_rate_tps=1000.0, recovery_tps=10.0))
    return pab, index


def test_on_equal_budgets_a_request_goes_to_the_node_holding_its_prefix_and_is_charged_the_rest():
    pab, index = pab_with_index()
    index.insert(1, [11, 12, 13, 14])  # node 1 holds 64 tokens of the prompt
    decision = pab.choose("turn-2", 100, block_hashes=[11, 12, 13, 14, 15, 16])
    assert decision.node_id == 1 and decision.charged_tokens == 100 - 64
    assert pab.view(1).pab_tokens == 10_000 - 36 and pab.view(1).queued_prefill_tokens == 36
    assert index.cached_blocks(1, [11, 12, 13, 14, 15, 16]) == 6  # its blocks are recorded there
    assert pab.placements["turn-2"].prompt_tokens == 36


def test_budgets_are_compared_net_of_the_cache():
    pab, index = pab_with_index()
    pab.update(NodeView(0, pab_tokens=10_050, reported_at_s=1.0))  # node 0 has 50 tokens more budget ...
    index.insert(1, [1, 2, 3, 4, 5, 6])  # ... node 1 caches 96 tokens of the prompt
    assert pab.choose("r", 200, block_hashes=[1, 2, 3, 4, 5, 6, 7]).node_id == 1
    # A node whose budget covers only the uncached part may take the request.
    pab2, index2 = pab_with_index()
    for n, budget in ((0, 150), (1, 60)):
        pab2.update(NodeView(n, pab_tokens=budget, reported_at_s=1.0))
    index2.insert(1, list(range(10)))
    decision = pab2.choose("r", 200, block_hashes=list(range(10)))
    assert decision.node_id == 1 and decision.charged_tokens == 40


def test_the_admission_cap_uses_the_chosen_nodes_charge():
    index = PrefixIndex(BT)
    lp = make_placement("least-prefill", [0], admission_cap=50, prefix_index=index)
    index.insert(0, [1, 2, 3, 4, 5, 6])
    assert lp.choose("cached", 100, block_hashes=[1, 2, 3, 4, 5, 6]).charged_tokens == 4
    assert lp.choose("cold", 100).reason == "admission-cap"


def test_without_an_index_or_hashes_every_node_is_charged_the_whole_prompt():
    for name in PLACEMENT_NAMES:
        policy = make_placement(name, [0, 1])
        policy.update(NodeView(0, pab_tokens=1000))
        policy.update(NodeView(1, pab_tokens=900))
        decision = policy.choose("a", 100, block_hashes=[1, 2, 3])
        assert decision.node_id is not None and decision.charged_tokens == 100, name
        pab, _ = pab_with_index()
        assert pab.choose("b", 100).charged_tokens == 100


def test_a_moved_request_is_charged_again_on_its_new_node():
    pab, index = pab_with_index()
    index.insert(0, [1, 2, 3])
    assert pab.choose("r", 100, block_hashes=[1, 2, 3, 4]).node_id == 0  # charged 52
    index.insert(1, [1, 2])
    assert pab.move("r") == 1
    assert pab.placements["r"].prompt_tokens == 100 - 32
    assert pab.view(1).queued_prefill_tokens == 68
    assert index.cached_blocks(1, [1, 2, 3, 4]) == 4


# -- prefix-affinity ---------------------------------------------------------------


def test_prefix_affinity_follows_the_longest_cached_prefix_while_the_load_is_balanced():
    index = PrefixIndex(BT)
    pa = make_placement("prefix-affinity", [0, 1, 2], prefix_index=index)
    index.insert(2, [7, 8, 9, 10])
    d = pa.choose("t2", 100, block_hashes=[7, 8, 9, 10, 11])
    assert d.node_id == 2 and d.charged_tokens == 100 - 64
    # A prompt with too little of it cached (< 30 %) goes to the node caching the fewest blocks.
    index.insert(0, [20, 21, 22])
    index.insert(1, [30])
    assert pa.choose("cold", 1000, block_hashes=[20, 99]).node_id == 1


def test_prefix_affinity_goes_to_the_least_loaded_node_when_the_load_is_unbalanced():
    index = PrefixIndex(BT)
    pa = make_placement("prefix-affinity", [0, 1], prefix_index=index, balance_abs_threshold=2,
                        balance_rel_threshold=1.5)
    index.insert(0, [1, 2, 3])
    for i in range(3):  # node 0 holds the prefix: three requests pile up there
        assert pa.choose(f"r{i}", 60, block_hashes=[1, 2, 3]).node_id == 0
    assert pa.choose("r3", 60, block_hashes=[1, 2, 3]).node_id == 1  # 3 vs 0 in flight: unbalanced


# -- the simulator's node cache -----------------------------------------------------


def test_node_cache_keeps_blocks_in_the_free_kv_and_evicts_the_tail_first():
    pool = BlockPool(10 * BT, BT)
    cache = NodePrefixCache(pool, BT)
    pool.take(4)
    assert cache.register([1, 2, 3, 4]) == [1, 2, 3, 4]  # a prompt's blocks, now the node's
    pool.give_back(0)
    cache.release([1, 2, 3, 4])
    assert pool.free_blocks == 10 and cache.cached_blocks == 4
    assert cache.lookup([1, 2, 3, 4, 5]) == 4
    pool.take(8)  # running requests need the KV: two cached blocks must go, the tail first
    cache.fit()
    assert cache.lookup([1, 2, 3, 4]) == 2 and cache.evictions == 2
    cache.acquire([1])  # in use again: it leaves the free KV
    assert pool.free_blocks == 1 and cache.cached_blocks == 1
    with pytest.raises(ValueError):
        NodePrefixCache(pool, 24)


def turns(prefix_blocks=30, reply=5, question=100):
    """Two turns of one conversation, 30 s apart: the second resends the first's 480-token prompt."""
    first = 16 * prefix_blocks
    second = first + reply + question
    h1 = tuple(range(prefix_blocks))
    h2 = tuple(range(second // 16))
    return [(0.0, first, reply, h1), (30.0, second, 3, h2)]


def test_a_cached_prefix_is_not_prefilled_again():
    rows = turns()
    cached = run(rows, scheduler="fairbatching", nodes=1, balancer="pab")
    blind = run([r[:3] for r in rows], scheduler="fairbatching", nodes=1, balancer="pab")
    second, second_blind = cached.requests[1], blind.requests[1]
    # 585 tokens, of which the first turn's 480 (30 blocks) are cached: only 105 are prefilled.
    assert second_blind.first_token_s - 30.0 == pytest.approx(0.01 + 0.001 * 585)
    assert second.first_token_s - 30.0 == pytest.approx(0.01 + 0.001 * (585 - 480))
    assert cached.report["prefix_cache_hit_tokens"] == 480
    assert cached.report["prefix_cache_hit_rate"] == pytest.approx(480 / (480 + 585))
    assert cached.report["prefix_estimated_hit_rate"] == pytest.approx(480 / (480 + 585))
    assert cached.report["node_busy_fraction"][0] < blind.report["node_busy_fraction"][0]
    assert "prefix_cache_hit_rate" not in blind.report  # a trace without hashes: no cache, report unchanged


def test_pab_tokens_all_charges_every_prompt_token(monkeypatch):
    from balancer.core.placement import PlacementPolicy

    choose, update = PlacementPolicy.choose, PlacementPolicy.update

    def record(arm):
        charged, queued = [], []

        def spy_choose(self, *a, **kw):
            d = choose(self, *a, **kw)
            charged.append(d.charged_tokens)
            return d

        def spy_update(self, view):
            queued.append(view.queued_prefill_tokens)
            return update(self, view)

        monkeypatch.setattr(PlacementPolicy, "choose", spy_choose)
        monkeypatch.setattr(PlacementPolicy, "update", spy_update)
        # A third request keeps the node busy when the second turn arrives, so it queues.
        rows = turns() + [(29.95, 100, 3, ())]
        rows.sort(key=lambda r: r[0])
        res = run(rows, scheduler="fairbatching", nodes=1, balancer="pab", pab_tokens=arm)
        return charged, max(queued), res

    charged_u, queued_u, res_u = record("uncached")
    charged_a, queued_a, res_a = record("all")
    assert charged_u == [480, 100, 585 - 480] and charged_a == [480, 100, 585]
    assert queued_a > queued_u  # the node reports the cached part as work still to do
    assert res_a.report["prefix_cache_hit_tokens"] == res_u.report["prefix_cache_hit_tokens"] == 480
    assert res_a.report["prefix_estimated_hit_rate"] is None


# -- traces with block hashes and the multi-turn workload ---------------------------


def test_columns_take_a_fourth_column_of_block_hashes(tmp_path):
    assert parse_columns("t:ms,p,o,h").hashes == "h"
    assert parse_columns("t:ms,p,o").hashes is None
    path = tmp_path / "t.csv"
    path.write_text('t,p,o,h\n0,40,2,"[1,2]"\n5,60,2,"[1,2,3]"\n')
    w = load_trace(path, "t:ms,p,o,h")
    assert [r.hash_ids for r in w.requests] == [(1, 2), (1, 2, 3)]
    path.write_text('t,p,o,h\n0,40,2,"[1,x]"\n')
    with pytest.raises(TraceError, match="line 2, column 'h'"):
        load_trace(path, "t:ms,p,o,h")


def test_multiturn_prompts_grow_and_resend_their_prefix(tmp_path):
    model = MultiTurnModel(conversations=40, conversation_rate_rps=2.0, mean_turns=4.0, system_prompts=2,
                           system_prompt_tokens=100, max_context_tokens=4096, seed=3)
    rows = generate(model)
    by_conv = {}
    for t in rows:
        by_conv.setdefault(t.conversation, []).append(t)
    assert any(len(v) > 1 for v in by_conv.values())
    for conv in by_conv.values():
        conv.sort(key=lambda t: t.turn)
        for prev, nxt in zip(conv, conv[1:]):
            assert nxt.prompt_tokens > prev.prompt_tokens + prev.output_tokens  # reply and a new question
            assert nxt.hash_ids[:len(prev.hash_ids)] == prev.hash_ids  # the same prefix, the same blocks
            assert nxt.arrival_s >= prev.arrival_s + prev.output_tokens * model.reply_tpot_s
        for t in conv:
            assert t.prompt_tokens + t.output_tokens <= 4096 and len(t.hash_ids) == t.prompt_tokens // 16
    # Conversations with the same system prompt share its 6 full blocks, and only those.
    firsts = [v[0].hash_ids[:6] for v in by_conv.values()]
    assert len(set(firsts)) == 2
    assert generate(model) == rows  # deterministic
    path = tmp_path / "mt.csv"
    write_csv(rows, path)
    loaded = load_trace(path, MULTITURN_COLUMNS)
    assert [r.hash_ids for r in loaded.requests] == [t.hash_ids for t in rows]
    assert [r.prompt_tokens for r in loaded.requests] == [t.prompt_tokens for t in rows]
    assert json.loads(path.read_text().splitlines()[1].split('"')[1]) == list(rows[0].hash_ids)


def test_trace_multiturn_command_writes_a_trace_sim_reads(tmp_path):
    from typer.testing import CliRunner

    from cluster.cli.main import app

    out = tmp_path / "mt.csv"
    res = CliRunner().invoke(app, ["trace", "multiturn", "--out", str(out), "--conversations", "6", "--seed", "1"])
    assert res.exit_code == 0, res.output
    w = load_trace(out, MULTITURN_COLUMNS)
    assert len(w) >= 6 and all(r.hash_ids for r in w.requests)
    bad = CliRunner().invoke(app, ["trace", "multiturn", "--out", str(out), "--conversations", "0"])
    assert bad.exit_code == 2


def test_pab_cache_affinity_weighs_cached_tokens_beyond_the_budget_they_save():
    pab, index = pab_with_index(affinity_slack=None, fresh_share=0)  # the budget rule
    pab.update(NodeView(0, pab_tokens=10_100, reported_at_s=1.0))  # 100 tokens more budget on node 0 ...
    index.insert(1, [1, 2, 3, 4])  # ... node 1 caches 64 tokens of the prompt
    assert pab.choose("plain", 200, block_hashes=[1, 2, 3, 4, 5]).node_id == 0  # 9900 left vs 9864
    leaning, index2 = pab_with_index(cache_affinity=1.0, affinity_slack=None, fresh_share=0)
    leaning.update(NodeView(0, pab_tokens=10_100, reported_at_s=1.0))
    index2.insert(1, [1, 2, 3, 4])
    assert leaning.choose("leaning", 200, block_hashes=[1, 2, 3, 4, 5]).node_id == 1  # 10100 - 400 < 10000 - 272
    with pytest.raises(ValueError):
        make_placement("pab", [0], cache_affinity=-1.0)


def test_pab_locality_prefers_the_cached_node_with_room_over_a_larger_budget():
    pab, index = pab_with_index()  # defaults: affinity_slack=64, fresh_share=0.3
    pab.update(NodeView(0, pab_tokens=12_000, reported_at_s=1.0))  # node 0: 2000 tokens more budget ...
    index.insert(1, [1, 2, 3, 4])  # ... node 1 caches 64 of the 100 tokens
    assert pab.choose("turn-2", 100, block_hashes=[1, 2, 3, 4, 5, 6]).node_id == 1
    budget_rule, index2 = pab_with_index(affinity_slack=None, fresh_share=0)
    budget_rule.update(NodeView(0, pab_tokens=12_000, reported_at_s=1.0))
    index2.insert(1, [1, 2, 3, 4])
    assert budget_rule.choose("turn-2", 100, block_hashes=[1, 2, 3, 4, 5, 6]).node_id == 0
    # Without block hashes (or without an index) the budget rule places: no change there.
    assert pab.choose("plain", 100).node_id == 0
    no_index = make_placement("pab", [0, 1])
    for n, budget in ((0, 12_000), (1, 10_000)):
        no_index.update(NodeView(n, pab_tokens=budget, prefill_rate_tps=1000.0))
    assert no_index.choose("hashed", 100, block_hashes=[1, 2, 3, 4, 5, 6]).node_id == 0


def test_pab_locality_gives_way_when_the_cached_node_holds_more_than_the_slack_in_flight():
    pab, index = pab_with_index(affinity_slack=1)
    index.insert(1, [1, 2, 3, 4])
    for i in range(2):  # two unrelated requests of node 1's cached conversation pile on node 1
        assert pab.choose(f"r{i}", 100, block_hashes=[1, 2, 3, 4, 5 + i]).node_id == 1
    assert pab.in_flight == {0: 0, 1: 2}
    assert pab.choose("turn-3", 100, block_hashes=[1, 2, 3, 4, 9]).node_id == 0  # 2 > 0 + 1 in flight
    pab.release("r0")
    pab.release("r1")
    assert pab.choose("turn-4", 100, block_hashes=[1, 2, 3, 4, 10]).node_id == 1


def test_pab_fresh_prompt_goes_to_the_node_caching_the_fewest_blocks_and_room_still_rules():
    pab, index = pab_with_index()
    pab.update(NodeView(0, pab_tokens=12_000, reported_at_s=1.0))  # node 0 has more budget but ...
    index.insert(0, [101, 102, 103, 104, 105, 106])  # ... holds more conversations than node 1
    index.insert(1, [201])
    # Node 0 caches 16 of 160 tokens (10 % < 30 %): a fresh prompt goes where the fewest blocks live.
    assert pab.choose("new", 160, block_hashes=[101, 7, 8, 9, 10, 11, 12, 13, 14, 15]).node_id == 1
    off, index2 = pab_with_index(fresh_share=0)
    off.update(NodeView(0, pab_tokens=12_000, reported_at_s=1.0))
    index2.insert(0, [101, 102, 103, 104, 105, 106])
    index2.insert(1, [201])
    assert off.choose("new", 160, block_hashes=[101, 7, 8, 9, 10, 11, 12, 13, 14, 15]).node_id == 0
    # Admission is PAB's: a node without room is never chosen, and none with room means a refusal.
    short, index3 = pab_with_index()
    short.update(NodeView(1, pab_tokens=50, reported_at_s=1.0))
    index3.insert(1, [1, 2, 3, 4])  # node 1 caches 64 of 200 tokens but has room for 50
    assert short.choose("r", 200, block_hashes=[1, 2, 3, 4, 5]).node_id == 0
    short.update(NodeView(0, pab_tokens=50, reported_at_s=2.0))
    assert short.choose("r2", 200, block_hashes=[1, 2, 3, 4, 5]).rejected
    with pytest.raises(ValueError):
        make_placement("pab", [0], affinity_slack=-1)
    with pytest.raises(ValueError):
        make_placement("pab", [0], fresh_share=1.5)
