"""Summarise live two-class runs (bench/tiers_live.sh): per class, admitted attainment and refusals, and
whether any interactive request was refused while batch requests were still being admitted.

    python bench/tiers_live_summary.py RUN.json [RUN.json ...]
"""

import json
import sys
from collections import Counter


def summarise(path: str) -> dict:
    report = json.load(open(path))
    records = report["records"]
    tiers = {name: {k: t.get(k) for k in ("requests", "attainment", "admitted_attainment", "rejected", "ttft_p99",
                                          "tpot_p99")}
             for name, t in report.get("per_tier", {}).items()}
    refused = [r for r in records if r["slo"]["tier"] == "interactive" and r["status"] == 429]
    refused_i = [r["sent_s"] for r in refused]
    admitted_b = sorted(r["sent_s"] for r in records if r["slo"]["tier"] == "batch" and r["status"] == 200)
    # an interactive refusal with a batch request admitted within 1 s of it: batch was not fully shed
    overlap = sum(1 for t in refused_i if any(abs(t - b) <= 1.0 for b in admitted_b))
    # batch requests admitted within 1 s after an interactive refusal: the shedding came too late or not at all
    after = sum(1 for b in admitted_b if any(0 <= b - t <= 1.0 for t in refused_i))
    # the same, counting only batch requests sent after the interactive 429 had reached the client:
    # these were decided after that refusal for certain (by send time alone, a batch request sent just
    # after an interactive one that waited at the ingress may have been decided long before its refusal)
    answered = [r["done_s"] for r in refused if r.get("done_s") is not None]
    after_answered = sum(1 for b in admitted_b if any(0 <= b - t <= 1.0 for t in answered))
    reasons = dict(Counter(r.get("refusal") for r in refused))
    # the longest time in which no token reached the client while some stream was open (a stall of
    # every stream at once, as behind a burst of refusals at the front end)
    tokens = sorted(t for r in records for t in r["token_times"])
    spans = [(r["token_times"][0], r["token_times"][-1]) for r in records if len(r["token_times"]) > 1]
    gap = max((b - a for a, b in zip(tokens, tokens[1:]) if any(s < a and e > b for s, e in spans)), default=0.0)
    # what the engines measured (from the arrival stamp to the first token they emitted), warm-up included
    server: dict = {}
    try:
        status = json.load(open(path.removesuffix(".json") + ".status.json"))
        for node in status["nodes"].values():
            for name, c in (node.get("by_class") or {}).items():
                agg = server.setdefault(name, {"finished": 0, "attained": 0})
                agg["finished"] += c["finished"]
                agg["attained"] += c["attained"]
    except FileNotFoundError:
        pass
    return {"file": path, "offered_rps": report.get("offered_rps"), "goodput_rps": report.get("goodput_rps"),
            "admitted_attainment": report.get("admitted_attainment"), "per_tier": tiers,
            "interactive_refused": len(refused_i), "interactive_refused_while_batch_admitted_1s": overlap,
            "batch_admitted_within_1s_after_interactive_refused": after,
            "batch_admitted_within_1s_after_interactive_429_answered": after_answered,
            "interactive_refusals_by_reason": reasons, "longest_token_gap_s": gap,
            "engine_side_by_class": server}


if __name__ == "__main__":
    for p in sys.argv[1:]:
        if not p.endswith(".status.json"):  # (read beside its run)
            print(json.dumps(summarise(p), indent=1))
