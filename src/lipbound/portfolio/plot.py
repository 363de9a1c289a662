"""The plot of `certify`: the certified interval against time."""

from __future__ import annotations

import math

from .result import region_text


def _steps(timeline: list, key: str, t_end: float):
    """(times, values, labels) of the step curve of one end: a point per change of ``key``."""
    ts, vs, labels = [], [], []
    for e in timeline:
        v = e.get(key)
        if v is None or not math.isfinite(v) or v <= 0:
            continue
        if vs and v == vs[-1]:
            continue
        ts.append(max(e["t"], 1e-3))
        vs.append(v)
        labels.append(e["method"])
    if ts:
        ts.append(max(t_end, ts[-1]))
        vs.append(vs[-1])
    return ts, vs, labels


def plot_timeline(res, path: str) -> str:
    """Lower and upper certified bounds as step curves against wall time (log-log), each step labelled by
    the method that made it; the exact value, when proved, as a horizontal line. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    t_end = max(res.time_s, 1e-3)
    for key, color, where in (("upper", "tab:red", "bottom"), ("lower", "tab:blue", "top")):
        ts, vs, labels = _steps(res.timeline, key, t_end)
        if not ts:
            continue
        ax.step(ts, vs, where="post", color=color, lw=2, label=f"certified {key} bound")
        for i, (t, v, lab) in enumerate(zip(ts, vs, labels)):
            ax.plot([t], [v], "o", color=color, ms=5)
            ax.annotate(lab, (t, v), textcoords="offset points", xytext=(4, 6 if where == "top" else -12),
                        fontsize=8, color=color, rotation=0)
    if res.exact and res.value:
        ax.axhline(res.value, color="tab:green", ls="--", lw=1, label=f"exact {res.value:.6g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel(f"Lipschitz constant bound (norm {res.norm})")
    name = res.network.get("name", "network")
    region = "global" if res.region is None else (
        f"{len(res.boxes)} boxes" if res.boxes else region_text(res.region))
    gap = res.gap
    gap_text = "—" if gap is None else f"{gap:.4g}"
    ax.set_title(f"certify {name}, norm {res.norm}, {region}: gap {gap_text}, {res.status}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
