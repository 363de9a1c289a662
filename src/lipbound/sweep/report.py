"""The end of a sweep: a summary table of the records in the file, and the plot of the local constants."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

#: quantiles shown in the summary
QUANTILES = (0.0, 0.05, 0.5, 0.95, 1.0)


def _num(v):
    if v is None:
        return math.nan
    if isinstance(v, str):
        return math.inf if v == "inf" else -math.inf if v == "-inf" else math.nan
    return float(v)


def collect(path) -> dict:
    """{eps: {"lower", "upper", "gap", "time": float arrays, "skipped": count}} from the records of
    ``path`` (read line by line; only these numbers are kept). Cost: one pass over the file."""
    acc: dict = {}
    with open(path, "rb") as fh:
        for line in fh:
            if not line.endswith(b"\n") or not line.strip():
                continue
            rec = json.loads(line)
            a = acc.setdefault(rec.get("eps"), {"lower": [], "upper": [], "gap": [], "time": [], "skipped": 0})
            if "skipped" in rec:
                a["skipped"] += 1
                continue
            for k, f in (("lower", "best_lower"), ("upper", "best_upper"), ("gap", "gap"), ("time", "time_s")):
                a[k].append(_num(rec.get(f)))
    return {e: {k: (np.array(v) if k != "skipped" else v) for k, v in a.items()} for e, a in acc.items()}


def _q(values: np.ndarray) -> str:
    v = values[~np.isnan(values)]
    if v.size == 0:
        return "—"
    return " / ".join(f"{x:.4g}" for x in np.quantile(v, QUANTILES))


def summary(path, wall_s: float | None = None, computed: int | None = None) -> str:
    """The table: per eps the number of records and skipped points, min / 5% / median / 95% / max of the
    certified lower and upper bounds and of the gap, the total and per-point compute time; and this run's
    wall time and rate when given."""
    data = collect(path)
    rows = [("eps", "points", "skipped", "lower (min/5%/50%/95%/max)", "upper (min/5%/50%/95%/max)",
             "gap (min/5%/50%/95%/max)", "time (s)", "s/point")]
    for e in sorted(data, key=lambda x: (x is None, x if x is not None else 0)):
        a = data[e]
        n = a["time"].size
        rows.append(("—" if e is None else f"{e:g}", str(n), str(a["skipped"]), _q(a["lower"]), _q(a["upper"]),
                     _q(a["gap"]), f"{a['time'].sum():.1f}", f"{a['time'].mean():.3g}" if n else "—"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if wall_s is not None and computed is not None:
        rate = computed / wall_s if wall_s > 0 else math.inf
        lines.append(f"this run: {computed} records in {wall_s:.1f} s ({rate:.3g} points/s); file {path}")
    return "\n".join(lines)


def plot(path, png, global_upper: float | None, norm: str) -> str:
    """One panel per eps: the certified interval [lower, upper] of every point, points sorted by upper,
    and the global bound (``global_upper``, e.g. naive) as a horizontal line; log scale when positive."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = collect(path)
    keys = sorted(data, key=lambda x: (x is None, x if x is not None else 0))
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(5.5 * max(1, len(keys)), 4.2), squeeze=False)
    for ax, e in zip(axes[0], keys):
        lo, up = data[e]["lower"], data[e]["upper"]
        order = np.argsort(np.where(np.isnan(up), np.inf, up))
        x = np.arange(order.size)
        lo_s, up_s = lo[order], up[order]
        ax.vlines(x, np.where(np.isnan(lo_s), up_s, lo_s), up_s, color="tab:green", alpha=0.6, lw=2,
                  label="certified interval")
        ax.plot(x, up_s, "v", color="tab:red", ms=3, label="upper")
        ax.plot(x, lo_s, "^", color="tab:blue", ms=3, label="lower")
        if global_upper is not None and math.isfinite(global_upper):
            ax.axhline(global_upper, color="k", ls="--", lw=1, label=f"global (naive) {global_upper:.4g}")
        if np.nanmin(np.concatenate([lo_s, up_s, [np.inf]])) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("points, sorted by upper bound")
        ax.set_ylabel(f"local Lipschitz constant (norm {norm})")
        ax.set_title("VNN-LIB regions" if e is None else f"eps = {e:g}")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return str(png)
