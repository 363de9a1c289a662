"""Benchmark of the LipSDP family (issue 3): values normalised by the naive bound and times.

    python benchmarks/l2_sdp_family.py --quick          # a few small nets, ~minutes
    python benchmarks/l2_sdp_family.py                  # modest default: small grid + ACAS Xu + MNIST
    python benchmarks/l2_sdp_family.py --full           # the ECLipsE grids of the issue (hours)
    python benchmarks/l2_sdp_family.py --targets        # the issue's targets (100x1000, ACAS, MNIST, 50x300)

Networks: the ECLipsE random nets (reference l2-sdp-family.md §7, both generators: "rand" = U[0,1)
entries, "randn" = Gaussian entries, spectral norms rescaled to U(0.4, 1.8)) and the shared ONNX nets.
The cvxpy methods (lipsdp-neuron, lipsdp-layer, eclipse) cannot be interrupted, so they run in a forked
child process killed at the time limit; the others get the time limit through the API (anytime).
Timings are wall-clock on a shared 2-core machine (inflated by other jobs); the CPU time of the method
(process time) is recorded too.  Writes benchmarks/results/l2_sdp_family.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "networks"
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

import lipbound  # noqa: E402
from lipbound.synthetic import eclipse_network  # noqa: E402

SOLVER_METHODS = {"lipsdp-neuron", "lipsdp-layer", "eclipse"}
DEFAULT_METHODS = ["naive-svd", "eclipse-fast", "eclipse-g1", "eclipse-g2-balance", "eclipse-g2-jacobi", "eclipse-g3",
                   "eclipse-g3-balance", "eclipse-family", "lipsdp-opt", "eclipse", "lipsdp-layer", "lipsdp-neuron"]


def naive_bound(net) -> tuple[float, str]:
    """Product of spectral norms (SVD; power iteration above 250k entries, marked 'estimate')."""
    v, how = 1.0, "svd"
    for layer in net.dense_chain():
        W = layer.W
        if W.size <= 250_000:
            s = np.linalg.norm(W, 2)
        else:
            how = "power-iteration estimate"
            x = np.random.default_rng(0).standard_normal(W.shape[1])
            for _ in range(100):
                x = W.T @ (W @ x)
                x /= np.linalg.norm(x)
            s = np.linalg.norm(W @ x)
        v *= s
        if layer.activation is not None:
            v *= max(abs(layer.activation.alpha), abs(layer.activation.beta))
    return float(v), how


def _child(net, method, options, q):
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass
    torch.set_num_threads(1)
    c0 = time.process_time()
    b = lipbound.bound(net, method, **options)
    q.put(_summary(b, time.process_time() - c0))


def _summary(b, cpu):
    d = b.details or {}
    keep = {k: d[k] for k in ("solver_value", "best_member", "start_member", "start_value", "certificate",
                              "full_lmi_min_eig", "repaired_stages", "fallback_stages", "members", "member_times",
                              "sdp_lower", "sdp_gap", "sdp_lower_note")
            if k in d}
    if "optimisation" in d:
        keep["optimisation"] = {k: v for k, v in d["optimisation"].items() if k != "Ls"}
    return {"value": b.value, "status": b.status, "time_s": b.time_s, "cpu_s": cpu, "reason": b.reason,
            "details": json.loads(json.dumps(keep, default=float))}


def run_method(net, method, time_limit, options=None):
    options = dict(options or {})
    if method in SOLVER_METHODS:
        # spawn, not fork: a child forked after torch's OpenMP pool has run (2 threads on a wide net) hangs
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        p = ctx.Process(target=_child, args=(net, method, options, q))
        t0 = time.perf_counter()
        p.start()
        p.join(time_limit)
        if p.is_alive():
            p.terminate()
            p.join()
            return {"value": None, "status": "time_limit", "time_s": time.perf_counter() - t0, "cpu_s": None,
                    "reason": f"killed after {time_limit:.0f} s (cvxpy cannot be interrupted)", "details": {}}
        try:
            return q.get(timeout=5)
        except Exception:
            return {"value": None, "status": "failed", "time_s": time.perf_counter() - t0, "cpu_s": None,
                    "reason": f"child exit code {p.exitcode}", "details": {}}
    c0 = time.process_time()
    b = lipbound.bound(net, method, time_limit=time_limit, **options)
    return _summary(b, time.process_time() - c0)


def bench_net(name, net, methods, time_limit, options, rows, naive=None):
    t0 = time.perf_counter()
    naive, how = naive_bound(net) if naive is None else (naive, "given")
    row = {"network": name, "naive": naive, "naive_how": how, "results": {}}
    for m in methods:
        if m == "naive-svd":
            continue
        r = run_method(net, m, time_limit, options.get(m))
        r["ratio"] = None if r["value"] is None else r["value"] / naive
        row["results"][m] = r
        v = "—" if r["value"] is None else f"{r['ratio']:.4g}"
        print(f"  {name:28s} {m:20s} {v:>10s} {r['time_s']:8.2f}s  {r['status']}"
              f"{'  ' + (r['reason'] or '')[:70] if r['value'] is None else ''}", flush=True)
    row["total_s"] = time.perf_counter() - t0
    rows.append(row)
    return row


def table(rows, methods):
    methods = [m for m in methods if m != "naive-svd"]
    head = f"{'network':26s} {'naive':>10s} " + " ".join(f"{m[:16]:>16s}" for m in methods)
    lines = [head, "-" * len(head)]
    for row in rows:
        cells = []
        for m in methods:
            r = row["results"].get(m)
            if r is None:
                cells.append(f"{'':>16s}")
            elif r["value"] is None:
                cells.append(f"{r['status'][:16]:>16s}")
            else:
                cells.append(f"{r['ratio']:>8.4g}/{r['time_s']:<6.1f}s".rjust(16))
        lines.append(f"{row['network'][:26]:26s} {row['naive']:>10.4g} " + " ".join(cells))
    return "\n".join(lines)


def random_nets(layers, widths, kinds):
    for kind in kinds:
        for L in layers:
            for n in widths:
                yield f"{kind}-{L}x{n}", (lambda L=L, n=n, kind=kind: eclipse_network(L, n, kind))


def shared_net(name):
    path = SHARED / name
    return lipbound.load(path) if path.exists() else None


def targets(args, rows, tl):
    """The measurements the issue asks for."""
    out = {}
    # 1. closed forms at 100 layers x 1000 neurons
    for kind in args.kinds:
        net = eclipse_network(100, 1000, kind)
        row = bench_net(f"{kind}-100x1000", net, ["eclipse-fast", "eclipse-family"], tl, args.options, rows)
        out[f"{kind}-100x1000"] = {m: (r["value"], r["time_s"], r["cpu_s"]) for m, r in row["results"].items()}
        fam = row["results"]["eclipse-family"]["details"]
        out[f"{kind}-100x1000"]["family_members"] = {
            k: (fam.get("members", {}).get(k), v.get("wall_s")) for k, v in fam.get("member_times", {}).items()}
        del net
    # 2. ACAS Xu: lipsdp-opt under 10 s vs ECLipsE-Fast
    acas = shared_net("ACASXU_run2a_1_1_batch_2000.onnx")
    if acas is not None:
        row = bench_net("ACASXU_run2a_1_1 (opt 10s)", acas, ["eclipse-fast", "eclipse-family", "lipsdp-opt"],
                        10.0, args.options, rows)
        fast, opt = row["results"]["eclipse-fast"]["value"], row["results"]["lipsdp-opt"]["value"]
        out["acas_opt_10s"] = {"fast": fast, "opt": opt, "factor": fast / opt,
                               "opt_time_s": row["results"]["lipsdp-opt"]["time_s"]}
    # 3. MNIST 256x2 under 60 s
    mn = shared_net("mnist-net_256x2.onnx")
    if mn is not None:
        row = bench_net("mnist-net_256x2 (opt 60s)", mn, ["eclipse-fast", "eclipse-family", "lipsdp-opt"], 60.0,
                        args.options, rows)
        out["mnist_opt_60s"] = {m: (r["value"], r["time_s"]) for m, r in row["results"].items()}
    # 4. 50 x 300 under 5 minutes: tighter than every closed-form member
    closed = ["eclipse-fast", "eclipse-g1", "eclipse-g2-balance", "eclipse-g2-jacobi", "eclipse-g2-gershgorin",
              "eclipse-g3", "eclipse-g3-balance", "eclipse-family"]
    for kind in args.kinds:
        net = eclipse_network(50, 300, kind)
        row = bench_net(f"{kind}-50x300 (opt 300s)", net, closed + ["lipsdp-opt"], 300.0, args.options, rows)
        best_closed = min(row["results"][m]["value"] for m in closed if row["results"][m]["value"] is not None)
        o = row["results"]["lipsdp-opt"]
        out[f"{kind}-50x300"] = {"best_closed": best_closed, "opt": o["value"], "opt_time_s": o["time_s"],
                                 "tighter": o["value"] is not None and o["value"] < best_closed}
    # 5. lipsdp-opt vs lipsdp-neuron where the SDP finishes
    for kind in args.kinds:
        for L, n in ((2, 20), (5, 20), (10, 20), (3, 50)):
            net = eclipse_network(L, n, kind)
            row = bench_net(f"{kind}-{L}x{n} (opt vs sdp)", net, ["lipsdp-neuron", "lipsdp-opt"], tl,
                            {**args.options, "lipsdp-neuron": {**args.options.get("lipsdp-neuron", {}),
                                                               "max_neurons": 10 ** 6}}, rows)
            a, b = row["results"]["lipsdp-neuron"], row["results"]["lipsdp-opt"]
            out[f"{kind}-{L}x{n}-opt-vs-sdp"] = {
                "neuron": a["value"], "neuron_solver_value": a["details"].get("solver_value"), "neuron_time_s": a["time_s"],
                "opt": b["value"], "opt_time_s": b["time_s"],
                "opt_over_neuron": None if a["value"] is None or b["value"] is None else b["value"] / a["value"]}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few small networks")
    ap.add_argument("--full", action="store_true", help="the issue's grids: standard, deep and wide")
    ap.add_argument("--targets", action="store_true", help="only the issue's target measurements")
    ap.add_argument("--time-limit", type=float, default=900.0, help="per method and network (default 900 s)")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    ap.add_argument("--kinds", default="rand,randn", help="weight generators: rand (U[0,1)), randn (Gaussian)")
    ap.add_argument("--sdp-max", type=int, default=None, help="max_neurons for lipsdp-neuron/-layer")
    ap.add_argument("--threads", type=int, default=None,
                    help="BLAS/torch threads for every method (default: the method's own choice, which for layers "
                         "of 400+ neurons is the cores other processes leave free)")
    ap.add_argument("--gap-tol", type=float, default=None,
                    help="lipsdp-opt's gap_tol (stop once value / sdp_lower - 1 <= it; default: the method's, 1e-3)")
    ap.add_argument("--only", default=None, help="only the networks whose name contains this string")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "l2_sdp_family.json"))
    args = ap.parse_args(argv)
    args.kinds = [k for k in args.kinds.split(",") if k]
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)  # small matrices on a busy 2-core machine
    except ImportError:
        pass
    methods = [m for m in args.methods.split(",") if m]
    options = {}
    if args.sdp_max is not None:
        options = {"lipsdp-neuron": {"max_neurons": args.sdp_max}, "lipsdp-layer": {"max_neurons": args.sdp_max}}
    if args.threads is not None:
        for m in methods + ["eclipse-fast", "eclipse-family", "lipsdp-opt", "lipsdp-neuron"]:
            if m != "naive-svd":
                options.setdefault(m, {})["blas_threads"] = args.threads
    if args.gap_tol is not None:
        options.setdefault("lipsdp-opt", {})["gap_tol"] = args.gap_tol
    args.options = options
    from lipbound.threads import free_cores

    machine = {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg(), "free_cores_start": free_cores(0.5)}
    rows, extra = [], {}
    t0 = time.perf_counter()
    if args.targets:
        extra["targets"] = targets(args, rows, args.time_limit)
    else:
        if args.quick:
            nets = list(random_nets((2, 5, 10), (20, 40), args.kinds))
            real = ["ACASXU_run2a_1_1_batch_2000.onnx"]
        elif args.full:
            nets = list(random_nets((2, 5, 10, 20, 30, 50, 75, 100), (20, 40, 60, 80, 100), args.kinds))
            nets += list(random_nets((100,), (80, 100, 120, 140, 160), args.kinds))
            nets += list(random_nets((50,), (150, 200, 300, 400, 500, 1000), args.kinds))
            real = ["ACASXU_run2a_1_1_batch_2000.onnx", "ACASXU_run2a_2_3_batch_2000.onnx", "mnist-net_256x2.onnx",
                    "ffnnSIGMOID__Point_6x200.onnx"]
        else:
            nets = list(random_nets((2, 5, 10, 20), (20, 60, 100), args.kinds))
            real = ["ACASXU_run2a_1_1_batch_2000.onnx", "mnist-net_256x2.onnx"]
        if args.only:
            nets = [(n, mk) for n, mk in nets if args.only in n]
            real = [n for n in real if args.only in n]
        for name, make in nets:
            bench_net(name, make(), methods, args.time_limit, options, rows)
        for name in real:
            net = shared_net(name)
            if net is not None:
                bench_net(name.replace(".onnx", ""), net, methods, args.time_limit, options, rows)
    print()
    print("value / naive and wall time per method (naive = product of spectral norms x max|slope|)")
    print(table(rows, methods if not args.targets else sorted({m for r in rows for m in r["results"]})))
    if extra:
        print()
        print(json.dumps(extra, indent=1, default=str))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"args": vars(args), "total_s": time.perf_counter() - t0, "rows": rows, **extra,
                   "machine": {**machine, "load_avg_end": os.getloadavg()}}, f, indent=1, default=str)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
