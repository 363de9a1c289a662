"""Branch and bound that converges (issue 14): crown-bab on the issue's cases, with crown (its root) and the
figures the issue measured before, in one table; JSON to benchmarks/results/bab.json.

Cases (centre numpy.random.default_rng(1).random(n) unless a VNN-LIB box): ACAS Xu 1_1 linf eps 0.05 (60 s;
exact 0.3636 by `enumerate`), ACAS Xu 1_1 and 2_3 linf eps 0.1 / 0.2 (120 s), mnist-net_256x2 linf eps 0.01 /
0.02 and l2 eps 0.05 / 0.1 (60 s), mnist-net_256x2 linf on the MNIST image box of mnistfc_prop_0_0.03.vnnlib
(60 s), and the 3-layer width-64 MLP of the model zoo (issue 6) on its centre 0.5, linf eps 0.05 (60 s).
Columns: crown's value, crown-bab's certified upper and lower bounds (its own search's lower bound, or
lower-grad's when it has none), the gap upper / lower, the kind (exact when the search closed), steps and time.

    python benchmarks/bab.py [--only SUBSTRING] [--scale 1.0]   (time limits x scale)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import lipbound
from lipbound.registry import Region
from lipbound.vnnlib import read_vnnlib

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "networks"
OUT = ROOT / "benchmarks" / "results" / "bab.json"

#: the issue's figures before this work: (crown-bab upper, best lower)
BEFORE = {
    "acas_1_1 inf 0.05": (62.7, 0.3636), "acas_1_1 inf 0.1": (3713, 1.33), "acas_1_1 inf 0.2": (30410, 3.13),
    "mnist inf 0.01": (32.9, 0.0), "mnist 2 0.05": (4.96, 0.584), "mnist 2 0.1": (8.07, 1.19),
    "mnist inf vnnlib": (224, 52.0), "mlp3_w64 inf 0.05": (504, 128),
}


def _centre(net):
    return np.random.default_rng(1).random(net.n_inputs).reshape(net.input_shape)


def cases():
    acas = {n: lipbound.load(SHARED / f"ACASXU_run2a_{n}_batch_2000.onnx") for n in ("1_1", "2_3")}
    mnist = lipbound.load(SHARED / "mnist-net_256x2.onnx")
    out = [("acas_1_1 inf 0.05", acas["1_1"], "inf", Region.box(_centre(acas["1_1"]), 0.05), 60)]
    for name in ("1_1", "2_3"):
        for eps in (0.1, 0.2):
            out.append((f"acas_{name} inf {eps}", acas[name], "inf", Region.box(_centre(acas[name]), eps), 120))
    for eps in (0.01, 0.02):
        out.append((f"mnist inf {eps}", mnist, "inf", Region.box(_centre(mnist), eps), 60))
    for eps in (0.05, 0.1):
        out.append((f"mnist 2 {eps}", mnist, 2, Region.box(_centre(mnist), eps), 60))
    box = read_vnnlib(SHARED / "vnnlib" / "mnistfc_prop_0_0.03.vnnlib", mnist.n_inputs)[0]
    out.append(("mnist inf vnnlib", mnist, "inf", box, 60))
    return out


def zoo_case():
    from lipbound.data import random_k_cluster, train_mlp

    X, y = random_k_cluster(n_points=10000, dim=16, n_leaders=80, n_classes=10, seed=0)
    net = train_mlp([16, 64, 64, 10], X[:7000], y[:7000], epochs=400, seed=0, name="mlp3_w64")
    return ("mlp3_w64 inf 0.05", net, "inf", Region.box(np.full(16, 0.5), 0.05), 60)


def run(case, scale: float) -> dict:
    name, net, norm, region, limit = case
    T = limit * scale
    crown = lipbound.bound(net, "crown", norm=norm, region=region)
    t0 = time.perf_counter()
    bab = lipbound.bound(net, "crown-bab", norm=norm, region=region, time_limit=T)
    t_bab = time.perf_counter() - t0
    lower, lower_by = (bab.value, "crown-bab") if bab.kind == "exact" else (bab.lower, "crown-bab")
    if lower is None or lower <= 0:
        low = lipbound.bound(net, "lower-grad", norm=norm, region=region, time_limit=min(30.0, T))
        lower, lower_by = low.value, "lower-grad"
    gap = bab.value / lower if lower and lower > 0 else (1.0 if bab.value == 0 else math.inf)
    before = BEFORE.get(name)
    return {"case": name, "time_limit": T, "crown": crown.value, "upper": bab.value, "lower": lower,
            "lower_by": lower_by, "gap": gap, "kind": bab.kind, "status": bab.status, "time_s": t_bab,
            "steps": bab.details.get("steps"), "split": bab.details.get("split"),
            "dropped": bab.details.get("dropped"), "before_upper": None if before is None else before[0],
            "before_gap": None if before is None or not before[1] else before[0] / before[1]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=None, help="run the cases whose name contains this")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every time limit")
    ap.add_argument("--zoo", action="store_true", help="also the model-zoo MLP (trains it first, ~1 min)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    todo = cases() + ([zoo_case()] if args.zoo else [])
    rows = [run(c, args.scale) for c in todo if args.only is None or args.only in c[0]]
    head = f"{'case':22s} {'crown':>10s} {'upper':>10s} {'lower':>10s} {'gap':>8s} {'before':>8s} {'kind':>6s} " \
           f"{'time':>6s} {'steps':>6s}"
    print(head)
    for r in rows:
        before = "-" if r["before_gap"] is None else f"{r['before_gap']:.1f}"
        print(f"{r['case']:22s} {r['crown']:10.4g} {r['upper']:10.4g} {r['lower'] or 0:10.4g} {r['gap']:8.3g} "
              f"{before:>8s} {r['kind']:>6s} {r['time_s']:6.1f} {r['steps'] or 0:6d}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"rows": rows, "threads": 1}, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
