"""Local l2 Lipschitz bounds on a box: the LipSDP family with per-neuron slopes against bound
propagation on the Clarke Jacobian (crown, crown-bab) and the certified lower bound lower-grad.

Networks: the built-in digits MLP and the shared ACAS Xu 1_1, mnist-net_256x2 and sigmoid 6x200 networks.
Boxes: centre numpy.random.default_rng(1).random(n) (a digits image scaled to [0, 16] for digits), eps in
{0.01, 0.05, 0.1, 0.5} (x16 for digits). The global eclipse-family value is the reference a local bound
should beat. Each method gets --time-limit seconds (crown-bab is anytime).

    python benchmarks/local_l2.py [--quick] [--time-limit 30] [--only NAME] [--methods a,b,c]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

import lipbound
from lipbound.registry import Region

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "networks"
OUT = ROOT / "benchmarks" / "results" / "local_l2.json"
METHODS = ["lower-grad", "crown", "crown-bab", "eclipse-fast", "eclipse-family", "lipsdp-opt"]


def networks(quick: bool):
    from lipbound.examples import digits_mlp

    out = [("digits_mlp", digits_mlp(), 16.0)]
    names = ["ACASXU_run2a_1_1_batch_2000", "mnist-net_256x2"] + ([] if quick else ["ffnnSIGMOID__Point_6x200"])
    for name in names:
        path = SHARED / f"{name}.onnx"
        if path.exists():
            out.append((name, lipbound.load(path), 1.0))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--time-limit", type=float, default=30.0)
    ap.add_argument("--only", default=None)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    eps_list = (0.01, 0.1) if args.quick else (0.01, 0.05, 0.1, 0.5)
    rows = []
    t_all = time.perf_counter()
    for name, net, scale in networks(args.quick):
        if args.only and args.only not in name:
            continue
        center = np.random.default_rng(1).random(net.n_inputs).reshape(net.input_shape) * scale
        glob = lipbound.bound(net, "eclipse-family", norm=2, time_limit=args.time_limit)
        for eps in eps_list:
            region = Region.box(center, eps * scale)
            row = {"network": name, "eps": eps * scale, "global_family": glob.value, "results": {}}
            for m in methods:
                b = lipbound.bound(net, m, norm=2, region=region, time_limit=args.time_limit)
                d = b.details or {}
                row["results"][m] = {"value": b.value, "kind": b.kind, "status": b.status, "time_s": b.time_s,
                                     "reason": b.reason, "model": (d.get("local_slopes") or {}).get("model"),
                                     "unstable": (d.get("local_slopes") or {}).get("unstable_per_layer")}
                v = "—" if b.value is None else f"{b.value:.6g}"
                print(f"  {name:28s} eps {eps * scale:<6g} {m:15s} {b.kind:6s} {v:>12s} {b.time_s:7.2f}s {b.status}"
                      f"{'  ' + (b.reason or '')[:60] if b.value is None else ''}", flush=True)
            rows.append(row)
    print()
    head = f"{'network':28s} {'eps':>6s} {'global fam':>11s} " + " ".join(f"{m[:14]:>20s}" for m in methods)
    print(head)
    print("-" * len(head))
    for r in rows:
        cells = []
        for m in methods:
            x = r["results"][m]
            cells.append(f"{x['status'][:11]:>20s}" if x["value"] is None else f"{x['value']:>11.5g}/{x['time_s']:<6.1f}s".rjust(20))
        print(f"{r['network'][:28]:28s} {r['eps']:>6g} {r['global_family']:>11.5g} " + " ".join(cells))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "rows": rows, "total_s": time.perf_counter() - t_all,
                   "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()}}, f, indent=1, default=float)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
