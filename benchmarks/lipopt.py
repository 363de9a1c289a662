"""Benchmark of LiPopt (LP hierarchy, HiGHS) against its Shor-SDP baseline, the naive product and a
gradient-ascent lower bound, on the l_inf Lipschitz constant.

Part 1: random ELU networks without bias as in the LiPopt paper: input width = hidden width w in
{5, 10, 20, 40}, 2 or 3 hidden layers, one output; dense, or banded (each neuron sees s consecutive
neurons of the previous layer; the output layer is dense).
Part 2: mnist-net_256x2.onnx pruned to the largest 5% of the weights of each layer (magnitude pruning),
one scalar problem per output (the l_inf constant is the max over the outputs).

    python benchmarks/lipopt.py [--quick] [--time-limit 300] [--max-columns 400000] [--band 5]
                                [--mnist-outputs 0,1,2 | all | none] [--mnist-products cliques|paths]

Timings are wall-clock on a 2-core machine shared with other jobs (inflated by the contention; the
CPU time of this process is reported too). Writes benchmarks/results/lipopt.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

import lipbound
from lipbound.network import Activation, Linear, Network

ROOT = Path(__file__).resolve().parents[1]
NETWORKS = ROOT.parent / "shared" / "networks"
RESULTS = ROOT / "benchmarks" / "results"


def random_elu_net(width: int, hidden: int, band: int | None, seed: int = 0) -> Network:
    """Bias-free ELU net width -> width (x hidden) -> 1, N(0, 1/fan-in) weights, optional band mask."""
    rng = np.random.default_rng(seed)
    ops = []
    for _ in range(hidden):
        W = rng.standard_normal((width, width))
        if band:
            i, j = np.arange(width)[:, None], np.arange(width)[None, :]
            mask = (j >= i - band // 2) & (j <= i - band // 2 + band - 1)
            W = W * mask / math.sqrt(band)
        else:
            W = W / math.sqrt(width)
        ops += [Linear(W, None), Activation("elu", 1.0)]
    ops.append(Linear(rng.standard_normal((1, width)) / math.sqrt(width), None))
    name = f"elu-{width}x{hidden}-" + (f"band{band}" if band else "dense")
    return Network.sequential((width,), ops, name=name)


def pruned_mnist(frac: float = 0.05) -> Network:
    """mnist-net_256x2 with each layer's weights below its (1 - frac) magnitude quantile set to zero
    (biases kept), as a flat 784-input chain (the Lipschitz constant does not see the reshape)."""
    net = lipbound.load(NETWORKS / "mnist-net_256x2.onnx")
    chain = net.dense_chain()
    ops = []
    for layer in chain:
        thr = np.quantile(np.abs(layer.W), 1 - frac)
        ops.append(Linear(np.where(np.abs(layer.W) >= thr, layer.W, 0.0), layer.b))
        if layer.activation is not None:
            ops.append(layer.activation)
    return Network.sequential((net.n_inputs,), ops, name=f"mnist-256x2-pruned{int(round(100 * (1 - frac)))}")


def run(net, method, time_limit, output=None, **opts):
    c0 = time.process_time()
    b = lipbound.bound(net, method, norm="inf", time_limit=time_limit, output=output, **opts)
    cpu = time.process_time() - c0
    d = {"value": b.value, "status": b.status, "kind": b.kind, "time_s": round(b.time_s, 3), "cpu_s": round(cpu, 3),
         "reason": b.reason}
    for key in ("lp_columns_max", "lp_rows_max", "lp_nonzeros_max", "max_order", "max_correction", "products"):
        if key in b.details:
            d[key] = b.details[key]
    return d


def fmt(r, width=9):
    if r is None:
        return "—".rjust(width)
    if r["status"] not in ("ok", "time_limit") or r["value"] is None:
        tag = {"unsupported": "too big" if "max_" in (r.get("reason") or "") else "n/a"}.get(r["status"], r["status"])
        return tag.rjust(width)
    star = "*" if r["status"] == "time_limit" else ""
    return f"{r['value']:.4g}{star}".rjust(width)


def fmt_t(r):
    if r is None or r["value"] is None:
        return "—"
    return f"{r['time_s']:.1f}"


def part_random(args):
    widths = [5, 10] if args.quick else [5, 10, 20, 40]
    depths = [2] if args.quick else [2, 3]
    if args.widths:
        widths = [int(x) for x in args.widths.split(",")]
    if args.depths:
        depths = [int(x) for x in args.depths.split(",")]
    rows = []
    for hidden in depths:
        for width in widths:
            for band in ((args.band,) if args.banded_only else (None, args.band)):
                if band and band >= width:
                    continue
                net = random_elu_net(width, hidden, band)
                d = hidden + 1
                row = {"network": net.name, "width": width, "hidden": hidden, "band": band}
                mc = {"max_columns": args.max_columns}
                row["lipopt-3"] = run(net, "lipopt", args.time_limit, degree=3, **mc) if d <= 3 else None
                row["lipopt-4 dense"] = run(net, "lipopt", args.time_limit, degree=4, sparse=False, **mc)
                row["lipopt-4 sparse"] = run(net, "lipopt", args.time_limit, degree=4, sparse=True, **mc)
                row["shor-sdp"] = (run(net, "shor-sdp", args.time_limit, max_order=args.max_order)
                                   if hidden <= 2 else None)
                row["naive"] = run(net, "naive", args.time_limit)
                row["lower-grad"] = run(net, "lower-grad", args.time_limit)
                rows.append(row)
                print_random_row(row, header=len(rows) == 1)
    return rows


def print_random_row(row, header=False):
    cols = ["lipopt-3", "lipopt-4 dense", "lipopt-4 sparse", "shor-sdp", "naive", "lower-grad"]
    if header:
        print(f"{'network':24s}" + "".join(f"{c:>16s}" for c in cols) + f"{'LP cols (4 sp)':>16s}{'t lp4sp (s)':>12s}"
              f"{'t shor (s)':>11s}")
    line = f"{row['network']:24s}"
    for c in cols:
        line += fmt(row[c], 16)
    sp = row["lipopt-4 sparse"]
    line += f"{sp.get('lp_columns_max', '—')!s:>16s}{fmt_t(sp):>12s}{fmt_t(row['shor-sdp']):>11s}"
    print(line, flush=True)


def part_mnist(args):
    try:
        net = pruned_mnist(0.05)
    except Exception as e:  # noqa: BLE001 - the reader may be unavailable
        print(f"MNIST part skipped: {e}")
        return None
    chain = net.dense_chain()
    nnz = [int((layer.W != 0).sum()) for layer in chain]
    print(f"\n{net.name}: non-zero weights per layer {nnz}")
    outs = list(range(net.n_outputs)) if args.mnist_outputs == "all" else \
        [int(x) for x in args.mnist_outputs.split(",") if x.strip()]
    rows = []
    print(f"{'output':>6s}{'lipopt-3':>12s}{'t (s)':>8s}{'LP cols':>10s}{'LP rows':>9s}{'shor-sdp':>12s}{'t (s)':>8s}"
          f"{'order':>7s}{'naive':>10s}{'lower':>10s}")
    wanted = set(args.mnist_methods.split(","))
    skipped = {"value": None, "status": "skipped", "time_s": 0.0}
    for j in outs:
        r = {"output": j}
        r["lipopt-3"] = run(net, "lipopt", args.time_limit, output=j, degree=3, products=args.mnist_products,
                            max_columns=args.mnist_max_columns) if "lipopt" in wanted else dict(skipped)
        r["shor-sdp"] = run(net, "shor-sdp", args.time_limit, output=j, max_order=args.mnist_max_order) \
            if "shor-sdp" in wanted else dict(skipped)
        r["naive"] = run(net, "naive", args.time_limit, output=j)
        r["lower-grad"] = run(net, "lower-grad", args.time_limit, output=j)
        lp, sd = r["lipopt-3"], r["shor-sdp"]
        print(f"{j:6d}{fmt(lp, 12)}{fmt_t(lp):>8s}{lp.get('lp_columns_max', '—')!s:>10s}{lp.get('lp_rows_max', '—')!s:>9s}"
              f"{fmt(sd, 12)}{fmt_t(sd):>8s}{sd.get('max_order', '—')!s:>7s}{fmt(r['naive'], 10)}"
              f"{fmt(r['lower-grad'], 10)}", flush=True)
        rows.append(r)
    full = None
    if outs == list(range(net.n_outputs)):
        def mx(key):
            vals = [r[key]["value"] for r in rows if r[key]["value"] is not None and r[key]["status"] in ("ok", "time_limit")]
            return max(vals) if len(vals) == len(rows) else None
        full = {k: mx(k) for k in ("lipopt-3", "shor-sdp", "naive")}
        full["lower-grad"] = max(r["lower-grad"]["value"] or 0 for r in rows)
        full["lipopt-3 time_s"] = sum(r["lipopt-3"]["time_s"] for r in rows)
        print(f"{'all':>6s} l_inf constant: lipopt-3 {full['lipopt-3']}, shor-sdp {full['shor-sdp']}, naive "
              f"{full['naive']}, lower {full['lower-grad']}; lipopt-3 total time {full['lipopt-3 time_s']:.1f} s")
    return {"network": net.name, "nonzeros": nnz, "outputs": rows, "all_outputs": full}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="widths 5, 10, two hidden layers, MNIST output 1 only")
    ap.add_argument("--time-limit", type=float, default=300.0, help="seconds per method and network")
    ap.add_argument("--max-columns", type=int, default=250_000, help="LP size guard (columns per scalar LP)")
    ap.add_argument("--max-order", type=int, default=700, help="Shor SDP size guard (PSD order)")
    ap.add_argument("--band", type=int, default=5, help="band width s of the banded networks")
    ap.add_argument("--mnist-outputs", default=None, help="comma list, 'all' or 'none' (default: 1,6,8; quick: 1)")
    ap.add_argument("--mnist-products", default="cliques", choices=("cliques", "paths"))
    ap.add_argument("--mnist-max-columns", type=int, default=3_000_000)
    ap.add_argument("--mnist-max-order", type=int, default=1500)
    ap.add_argument("--mnist-methods", default="lipopt,shor-sdp", help="which of lipopt,shor-sdp to run on MNIST")
    ap.add_argument("--mnist-key", default="mnist", help="JSON key of the MNIST part (to keep several runs)")
    ap.add_argument("--skip-random", action="store_true")
    ap.add_argument("--json", default=None, help="output file (default benchmarks/results/lipopt.json; merged)")
    ap.add_argument("--widths", default=None, help="comma list of widths (default 5,10,20,40; quick 5,10)")
    ap.add_argument("--depths", default=None, help="comma list of hidden-layer counts (default 2,3; quick 2)")
    ap.add_argument("--banded-only", action="store_true")
    ap.add_argument("--random-key", default="random", help="JSON key of the random-network part")
    args = ap.parse_args(argv)
    if args.mnist_outputs is None:
        args.mnist_outputs = "1" if args.quick else "1,6,8"
    torch.set_num_threads(1)
    out = {"config": vars(args), "machine_note": "2 shared cores; wall times inflated by other jobs"}
    if not args.skip_random:
        out[args.random_key] = part_random(args)
    if args.mnist_outputs != "none":
        out[args.mnist_key] = part_mnist(args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = Path(args.json) if args.json else RESULTS / "lipopt.json"
    # merge with an earlier run of the other part (--skip-random / --mnist-outputs none)
    if path.exists():
        try:
            old = json.loads(path.read_text())
            for key in [k for k in old if k.startswith("random") or k.startswith("mnist")]:
                if key not in out and key in old:
                    out[key] = old[key]
                    out.setdefault("config_" + key, old.get("config_" + key, old.get("config")))
        except (OSError, ValueError):
            pass
    for key in [k for k in out if k.startswith("random") or k.startswith("mnist")]:
        if "config_" + key not in out:
            out["config_" + key] = vars(args)
    path.write_text(json.dumps(out, indent=1, default=str))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    sys.exit(main())
