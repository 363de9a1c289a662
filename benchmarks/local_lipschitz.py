"""Local l_inf Lipschitz bounds by bound propagation on the Clarke Jacobian (issue 6).

Networks: the paper's model zoo rebuilt on 16-d random-k-cluster data (3-layer MLPs of width
{16,32,64,128}; width-32 MLPs of depth {3,4,5,6}), the built-in 8x8 digits MLP and CNN, and the shared
ACAS Xu, MNIST and CIFAR networks. Boxes: centre 0.5 (synthetic), a digits image, or
numpy.random.default_rng(1).random(n) (shared networks); eps in {0.01, 0.05, 0.1} and a near-global
box (eps 0.5 around 0.5, i.e. [0,1]^16).

Columns: crown, crown-bab, recurjac, ibp-jacobian (this issue), naive (product of l_inf norms), lower-grad
(certified lower bound by gradient ascent), exact (mip, when it finishes within its time limit), and times.
Timings are on a shared 2-core machine (one torch thread), inflated by the other jobs running.

    python benchmarks/local_lipschitz.py [--quick] [--time-limit 60] [--mip-time 60] [--only NAME]
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

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "networks"
OUT = ROOT / "benchmarks" / "results" / "local_lipschitz.json"


def zoo(quick: bool):
    from lipbound.data import random_k_cluster, train_mlp

    n_points = 3000 if quick else 10000
    X, y = random_k_cluster(n_points=n_points, dim=16, n_leaders=80, n_classes=10, seed=0)
    n_train = int(0.7 * len(X))
    epochs = 150 if quick else 400
    nets = []
    widths = (16, 32) if quick else (16, 32, 64, 128)
    for w in widths:
        nets.append(train_mlp([16, w, w, 10], X[:n_train], y[:n_train], epochs=epochs, seed=0, name=f"mlp3_w{w}"))
    depths = (4,) if quick else (4, 5, 6)  # depth 3 at width 32 is mlp3_w32
    for d in depths:
        nets.append(train_mlp([16] + [32] * (d - 1) + [10], X[:n_train], y[:n_train], epochs=epochs, seed=0,
                              name=f"mlp_d{d}_w32"))
    for net in nets:
        acc = float((net(torch.as_tensor(X[n_train:])).argmax(1).numpy() == y[n_train:]).mean())
        net.test_accuracy = acc
    return nets


def cases(quick: bool, only: str | None, groups=("zoo", "digits", "shared")):
    eps_list = (0.05,) if quick else (0.01, 0.05, 0.1)
    out = []
    for net in (zoo(quick) if "zoo" in groups else []):
        for eps in eps_list + (0.5,):
            out.append(("zoo", net, np.full(16, 0.5), eps))
    try:
        if "digits" not in groups:
            raise RuntimeError("not asked")
        from lipbound.examples import digits_cnn, digits_mlp
        from sklearn.datasets import load_digits

        img = load_digits().data[0] / 16.0
        for net in (digits_mlp(), digits_cnn()):
            for eps in ((0.01,) if quick else (0.01, 0.05)):
                out.append(("digits", net, img.reshape(net.input_shape), eps))
    except Exception as e:  # pragma: no cover - examples missing
        print(f"(digits examples skipped: {e})")
    shared = [("ACASXU_run2a_1_1_batch_2000", 0.05), ("mnist-net_256x2", 0.01), ("cifar_base_kw", 2 / 255)]
    if not quick:
        shared.insert(1, ("ACASXU_run2a_2_3_batch_2000", 0.05))
    for name, eps in (shared if "shared" in groups else []):
        path = SHARED / f"{name}.onnx"
        if path.exists():
            net = lipbound.load(path)
            center = np.random.default_rng(1).random(net.n_inputs).reshape(net.input_shape)
            out.append(("shared", net, center, eps))
    if only:
        out = [c for c in out if only in c[1].name]
    return out


def run_one(net, region, method, time_limit=None, **opts):
    b = lipbound.bound(net, method, norm="inf", region=region, time_limit=time_limit, **opts)
    return b


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few networks, short time limits")
    ap.add_argument("--time-limit", type=float, default=None, help="crown-bab seconds (default 60, quick 10)")
    ap.add_argument("--mip-time", type=float, default=None, help="mip seconds (default 60, quick 20; 0 = skip)")
    ap.add_argument("--only", default=None, help="only networks whose name contains this")
    ap.add_argument("--groups", default="zoo,digits,shared", help="comma list of: zoo, digits, shared")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(1)
    bab_time = args.time_limit if args.time_limit is not None else (10.0 if args.quick else 60.0)
    mip_time = args.mip_time if args.mip_time is not None else (20.0 if args.quick else 60.0)
    rows = []
    header = (f"{'network':<28} {'eps':>7} {'lower':>9} {'exact':>9} {'crown-bab':>9} {'crown':>9} {'recurjac':>9} "
              f"{'ibp-jac':>10} {'naive':>10} | {'t_crown':>7} {'t_bab':>6} {'t_rj':>6} {'t_mip':>6}")
    print(header)
    print("-" * len(header))
    for group, net, center, eps in cases(args.quick, args.only, tuple(args.groups.split(","))):
        region = Region.box(center, eps)
        res = {}
        res["crown"] = run_one(net, region, "crown")
        res["recurjac"] = run_one(net, region, "recurjac")
        res["ibp-jacobian"] = run_one(net, region, "ibp-jacobian")
        res["naive"] = run_one(net, region, "naive")
        res["lower-grad"] = run_one(net, region, "lower-grad", time_limit=20)
        res["crown-bab"] = run_one(net, region, "crown-bab", time_limit=bab_time)
        exact = None
        if group == "zoo" and mip_time > 0:
            res["mip"] = run_one(net, region, "mip", time_limit=mip_time)
            # a completed MIP is the exact optimum of LipMIP's formulation (kind "exact" when a
            # differentiable witness attains it, else "upper" at a kink): both count as the exact value
            if res["mip"].ok and res["mip"].status == "ok":
                exact = res["mip"].value
        lower = max([b.value for b in res.values() if b.ok and b.kind == "lower"] +
                    [b.lower for b in res.values() if b.lower is not None] + [0.0])

        def v(name):
            b = res.get(name)
            return b.value if (b is not None and b.ok) else None

        def f(x, w=9):
            return f"{'—':>{w}}" if x is None else f"{x:>{w}.4g}"

        def t(name, w=6):
            b = res.get(name)
            return f"{'—':>{w}}" if b is None else f"{b.time_s:>{w}.1f}"

        print(f"{net.name:<28} {eps:>7.4g} {f(lower)} {f(exact)} {f(v('crown-bab'))} {f(v('crown'))} {f(v('recurjac'))} "
              f"{f(v('ibp-jacobian'), 10)} {f(v('naive'), 10)} | {t('crown', 7)} {t('crown-bab')} {t('recurjac')} {t('mip')}",
              flush=True)
        row = {"group": group, "network": net.name, "eps": eps, "n_inputs": net.n_inputs, "lower": lower,
               "exact": exact, "test_accuracy": getattr(net, "test_accuracy", None),
               "results": {k: b.to_json() for k, b in res.items()}}
        bab = res["crown-bab"]
        row["bab_history"] = bab.details.get("history") if bab.ok else None
        row["bab_within_5pct_of_exact"] = None if exact is None or not bab.ok else bool(bab.value <= 1.05 * exact + 1e-9)
        rec = v("recurjac")
        row["crown_le_recurjac"] = None if rec is None or v("crown") is None else bool(v("crown") <= rec + 1e-9)
        row["bab_lt_recurjac"] = None if rec is None or v("crown-bab") is None else bool(v("crown-bab") <= rec + 1e-9)
        rows.append(row)
    summary = {
        "crown_bab_within_5pct_of_exact": [r["network"] + f"@{r['eps']}" for r in rows if r["bab_within_5pct_of_exact"]],
        "crown_bab_not_within_5pct": [r["network"] + f"@{r['eps']}" for r in rows if r["bab_within_5pct_of_exact"] is False],
        "crown_above_recurjac": [r["network"] + f"@{r['eps']}" for r in rows if r["crown_le_recurjac"] is False],
    }
    print()
    print(json.dumps(summary, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": {"quick": args.quick, "bab_time": bab_time, "mip_time": mip_time,
                                          "torch_threads": 1}, "summary": summary, "rows": rows}, indent=1,
                              default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
