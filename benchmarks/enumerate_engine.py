"""`enumerate` on the branch-and-bound engine (issue 14, item 4): values, LPs, patterns and times on ACAS Xu
boxes (centre numpy.random.default_rng(1).random(5)), with and without pruning, one thread, 120 s limit each.

The search's tree is the same as before the port, so the LP count is the check that it is the same search;
the time is the cost of running it on the engine. To compare with an older commit, run the script twice:

    python benchmarks/enumerate_engine.py --out benchmarks/results/enumerate_engine.json
    git worktree add /tmp/old <rev> && PYTHONPATH=/tmp/old/src python benchmarks/enumerate_engine.py \
        --out benchmarks/results/enumerate_engine_before.json

Prints one JSON line per run and writes them as a list.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import lipbound
from lipbound.registry import Region

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "networks"
OUT = ROOT / "benchmarks" / "results" / "enumerate_engine.json"
# (network, norm, eps, also without pruning)
CASES = [("ACASXU_run2a_1_1_batch_2000", "inf", 0.05, False), ("ACASXU_run2a_1_1_batch_2000", "2", 0.02, True),
         ("ACASXU_run2a_2_3_batch_2000", "inf", 0.02, True), ("ACASXU_run2a_2_3_batch_2000", "2", 0.03, True),
         ("ACASXU_run2a_1_1_batch_2000", "1", 0.03, False)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--time-limit", type=float, default=120.0)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name, norm, eps, plain in CASES:
        net = lipbound.load(str(SHARED / f"{name}.onnx"))
        centre = np.random.default_rng(1).random(net.n_inputs).reshape(net.input_shape)
        for prune in (True, False) if plain else (True,):
            t0 = time.perf_counter()
            b = lipbound.bound(net, "enumerate", norm if norm == "inf" else int(norm), Region.box(centre, eps),
                               args.time_limit, prune=prune, max_unstable=300)
            d = b.details
            row = {"case": f"{name}:{norm}:{eps}", "prune": prune, "value": b.value, "kind": b.kind,
                   "status": b.status, "time_s": round(time.perf_counter() - t0, 2), "lps": d.get("lps"),
                   "patterns": d.get("patterns"), "pruned": d.get("pruned"), "unstable": d.get("unstable")}
            print(json.dumps(row), flush=True)
            rows.append(row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(f"JSON written to {args.out}")


if __name__ == "__main__":
    main()
