"""Print the prefix-caching capacity table (bench/prefix_capacity.sh's JSON files) with the ratios.

    python bench/prefix_summary.py [DIR]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ARMS = (("pab-uncached", "FairBatching + PAB, uncached tokens (PrefixIndex), locality placement (default)"),
        ("pab-uncached-budget", "FairBatching + PAB, uncached tokens (PrefixIndex), largest-budget placement"),
        ("pab-all", "FairBatching + PAB, every prompt token"),
        ("prefix-affinity-cap", "FairBatching + prefix-affinity + admission cap"))


def main(directory: str = "bench/results/prefix") -> None:
    d = Path(directory)
    seeds = sorted({int(p.stem.rsplit("seed", 1)[1]) for p in d.glob("pab-uncached-seed*.json")})
    caps: dict[str, list[float]] = {arm: [] for arm, _ in ARMS}
    print("| arm | " + " | ".join(f"seed {s} req/s (hit rate, est.)" for s in seeds) + " | mean req/s |")
    print("|---|" + "---|" * (len(seeds) + 1))
    for arm, label in ARMS:
        cells = []
        for s in seeds:
            f = d / f"{arm}-seed{s}.json"
            if not f.exists():
                cells.append("-")
                continue
            res = json.loads(f.read_text())
            cap, rep = res["capacity_rps"], res["report"] or {}
            caps[arm].append(cap or 0.0)
            est = rep.get("prefix_estimated_hit_rate")
            cells.append(f"{cap:.2f} ({rep.get('prefix_cache_hit_rate', 0):.0%}, "
                         f"{'-' if est is None else f'{est:.0%}'})" if cap else "none")
        mean = statistics.fmean(caps[arm]) if caps[arm] else float("nan")
        print(f"| {label} | " + " | ".join(cells) + f" | {mean:.2f} |")
    base = caps["pab-uncached"]
    for arm, label in ARMS[1:]:
        ratios = [u / o for u, o in zip(base, caps[arm]) if o]
        if ratios:
            print(f"uncached PAB / {arm}: per seed " + ", ".join(f"{r:.2f}x" for r in ratios)
                  + f"; mean of capacities {statistics.fmean(base) / statistics.fmean(caps[arm]):.2f}x")


if __name__ == "__main__":
    main(*sys.argv[1:])
