"""Foundation benchmark: every shared network x norms {1, 2, inf} x {naive, lower-sample, lower-grad}.

    python benchmarks/foundation.py [--quick] [--networks NAME ...]

Prints a table (value, gap = naive / best lower, time) and writes benchmarks/results/foundation.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import lipbound

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "networks"
OUT = ROOT / "benchmarks" / "results" / "foundation.json"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer samples and ascent steps")
    ap.add_argument("--networks", nargs="*", default=None, help="stems of shared networks (default: all)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    paths = sorted(SHARED.glob("*.onnx"))
    if args.networks:
        paths = [p for p in paths if p.stem in args.networks]
    sample_opts = {"samples": 300} if args.quick else {}
    grad_opts = {"samples": 300, "restarts": 8, "steps": 40} if args.quick else {}
    rows = []
    header = f"{'network':32s} {'norm':>4s} {'naive':>12s} {'lower-sample':>12s} {'lower-grad':>12s} {'gap':>9s} " \
             f"{'t_naive':>8s} {'t_sample':>8s} {'t_grad':>8s}"
    print(header)
    print("-" * len(header))
    for path in paths:
        net = lipbound.load(path)
        for norm in ("1", "2", "inf"):
            res = {
                "naive": lipbound.bound(net, "naive", norm=norm),
                "lower-sample": lipbound.bound(net, "lower-sample", norm=norm, **sample_opts),
                "lower-grad": lipbound.bound(net, "lower-grad", norm=norm, **grad_opts),
            }
            lo = max(res["lower-sample"].value, res["lower-grad"].value)
            gap = res["naive"].value / lo if lo > 0 else float("inf")
            row = {"network": path.stem, "norm": norm, "gap": gap,
                   **{f"{m}": b.value for m, b in res.items()}, **{f"t_{m}": b.time_s for m, b in res.items()},
                   **{f"status_{m}": b.status for m, b in res.items()}}
            rows.append(row)
            print(f"{path.stem[:32]:32s} {norm:>4s} {res['naive'].value:12.5g} {res['lower-sample'].value:12.5g} "
                  f"{res['lower-grad'].value:12.5g} {gap:9.3g} {res['naive'].time_s:8.2f} "
                  f"{res['lower-sample'].time_s:8.2f} {res['lower-grad'].time_s:8.2f}", flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"machine": "2-core CPU", "time": time.strftime("%Y-%m-%d %H:%M"), "quick": args.quick,
                               "rows": rows}, indent=2))
    print(f"\nwritten {OUT}")


if __name__ == "__main__":
    main()
