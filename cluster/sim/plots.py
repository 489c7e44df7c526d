"""PNG figures of a comparison: attainment vs rate, TTFT CDF at a common rate, per-node PAB over time.

Every figure's title names its trace, profile, SLOs and seed (DESIGN section 6).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cluster.sim.capacity import CapacityResult  # noqa: E402


def _subtitle(meta: dict) -> str:
    return (f"{meta['trace']}, {meta['profile']}, {meta['nodes']} node(s), SLO TTFT {meta['ttft_slo_s']} s / "
            f"TPOT {meta['tpot_slo_s'] * 1000:g} ms, seed {meta['seed']}")


def plot_attainment_vs_rate(results: dict[str, CapacityResult], meta: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, res in results.items():
        probes = sorted(res.probes, key=lambda p: p.rate_rps)
        ax.plot([p.rate_rps for p in probes], [p.attainment for p in probes], marker="o", ms=3, label=label)
    ax.axhline(meta["attainment_target"], color="grey", ls="--", lw=0.8)
    ax.set_xlabel("offered rate (req/s)")
    ax.set_ylabel("SLO attainment (rejections miss)")
    ax.set_ylim(0, 1.02)
    ax.set_title("Attainment vs rate\n" + _subtitle(meta), fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_ttft_cdf(ttfts: dict[str, list[float]], meta: dict, rate_rps: float, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, values in ttfts.items():
        if not values:
            continue
        xs = np.sort(np.asarray(values))
        ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=label)
    ax.axvline(meta["ttft_slo_s"], color="grey", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("TTFT (s), admitted requests")
    ax.set_ylabel("CDF")
    ax.set_title(f"TTFT CDF at {rate_rps:.1f} req/s\n" + _subtitle(meta), fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_pab_timeline(timelines: dict[int, list], meta: dict, label: str, path: Path) -> Path:
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    for node_id, rows in timelines.items():
        if not rows:
            continue
        t = [r[0] for r in rows]
        ax1.plot(t, [r[1] for r in rows], lw=0.7, label=f"node {node_id}")
        ax2.plot(t, [r[2] * 1000 if r[2] is not None else np.nan for r in rows], lw=0.7)
    ax1.set_ylabel("PAB (tokens)")
    ax1.set_yscale("symlog", linthresh=1000)
    ax2.set_ylabel("step budget (ms)")
    ax2.set_xlabel("simulated time (s)")
    ax1.set_title(f"Per-node PAB and time budget, {label}\n" + _subtitle(meta), fontsize=9)
    if len(timelines) <= 8:
        ax1.legend(fontsize=6, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
