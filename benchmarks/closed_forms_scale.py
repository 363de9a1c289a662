"""The closed forms of the LipSDP family on wide deep chains (issue 15, items 1 and 2): time against the
arithmetic floor and against eclipse-nn, value against an independent numpy reference, peak memory.

    python benchmarks/closed_forms_scale.py                         # 100x1000, 100x300, 50x300 (randn)
    python benchmarks/closed_forms_scale.py --sizes 30x1000 --cases floor,fast
    python benchmarks/closed_forms_scale.py --threads 1             # default: the cores free at the start
    python benchmarks/closed_forms_scale.py --src /tmp/old/src      # another source tree ("before" figures)
    python benchmarks/closed_forms_scale.py --sizes 100x1000 --cases floor,fast --repeat 3   # min of 3 runs

Every (chain, case) runs in its own child process (so each peak RSS is its own): the child builds the
ECLipsE 'randn' chain (`lipbound.synthetic.eclipse_network`, n_in = 4, n_out = 1), records its RSS, runs
the case and reports the wall time, the value and its peak RSS (ru_maxrss) and the peak above the
chain's own weights (the peak is reset after building the chain: Linux clear_refs). Cases:
  floor      -- the arithmetic any certified step needs, per layer one Cholesky factorisation (torch
                float64, of a fixed SPD work matrix), one triangular solve with the layer's weight and
                one n x n product (GEMM), summed over the layers: the floor to measure eclipse-fast by;
  floor-syrk -- the same with the product C^T C by BLAS syrk (half a GEMM's flops), as eclipse-fast does;
  fast       -- lipbound eclipse-fast;
  family     -- lipbound eclipse-family with members=all (member times in the JSON);
  eclipse-nn -- eclipse_nn.ECLipsE_Fast (the ECLipsE authors' package, if installed: general eig and an
                explicit inverse per layer, no check);
  reference  -- an independent numpy/scipy ECLipsE-Fast (exact eigvalsh, Cholesky solves), no margins.
Every case gets the same BLAS/torch thread count (--threads). Targets (issue 15): fast <= 1.3 floor and
<= 0.5 eclipse-nn, |fast / reference - 1| <= 1e-6, family <= 6 fast. Writes
benchmarks/results/closed_forms_scale.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# --src DIR (another lipbound source tree, e.g. a copy of an earlier version) must win over ROOT/src
_SRC = sys.argv[sys.argv.index("--src") + 1] if "--src" in sys.argv else str(ROOT / "src")
sys.path.insert(0, _SRC)

CASES = ("floor", "floor-syrk", "fast", "family", "eclipse-nn", "reference")


def _status_mb(key: str) -> float:
    """A /proc/self/status entry (VmRSS: resident now, VmHWM: peak resident) in MB, NaN where missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _reset_peak() -> bool:
    """Return freed heap to the OS (glibc malloc_trim) and reset the peak RSS (Linux clear_refs 5), so that
    the peak measured afterwards is the case's own, not the chain construction's."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except (OSError, AttributeError):
        return False


def _floor(Ws, torch, syrk: bool = False) -> float:
    """Per layer: Cholesky of an n x n SPD matrix, R^{-1} W^T (triangular solve), one n x n GEMM (or,
    ``syrk``, the symmetric product C^T C by BLAS syrk: half the flops, what eclipse-fast uses)."""
    from scipy.linalg.blas import dsyrk

    n = max(W.shape[0] for W in Ws[:-1])
    g = torch.Generator().manual_seed(0)
    B = torch.randn(n, n, dtype=torch.float64, generator=g)
    A = B @ B.T / n + torch.eye(n, dtype=torch.float64)
    t0 = time.perf_counter()
    for k in range(1, len(Ws)):
        W = torch.from_numpy(Ws[k])
        m = W.shape[1]
        R = torch.linalg.cholesky(A[:m, :m])
        C = torch.linalg.solve_triangular(R, W.T, upper=False)
        K = dsyrk(1.0, C.numpy().T, trans=0, lower=1) if syrk else C.T @ C
        del K, C, R
    return time.perf_counter() - t0


def _reference(Ws) -> float:
    """ECLipsE-Fast (ReLU: alpha 0, beta 1, m = 1/2) in numpy / scipy, exact eigenvalues, no margins."""
    import scipy.linalg as sla

    X = None
    for W in Ws[:-1]:
        K = W @ W.T if X is None else W @ sla.cho_solve(X, W.T)
        K = 0.25 * (K + K.T) / 2  # m^2 W X^{-1} W^T
        mu = np.linalg.eigvalsh(K)[-1]
        lam = 1.0 / (2.0 * mu)
        X = sla.cho_factor(lam * np.eye(K.shape[0]) - lam * lam * K, lower=True)
    Z = Ws[-1] @ sla.cho_solve(X, Ws[-1].T)
    return float(np.sqrt(np.linalg.eigvalsh((Z + Z.T) / 2)[-1]))


def _eclipse_nn(Ws, torch) -> float:
    from eclipse_nn import ECLipsE_Fast

    ws = [torch.from_numpy(W) for W in Ws]
    n = len(ws) - 1
    return float(ECLipsE_Fast(ws, [0.0] * n, [1.0] * n))


def child(case: str, L: int, n: int, kind: str, threads: int) -> dict:
    """One case on one chain, in this (fresh) process."""
    import scipy.linalg  # noqa: F401  (loads scipy's BLAS before the limit: a BLAS loaded later is not limited)
    import scipy.linalg.blas  # noqa: F401
    import torch
    from threadpoolctl import threadpool_limits

    import lipbound
    from lipbound.synthetic import eclipse_network

    torch.set_num_threads(threads)
    threadpool_limits(threads)
    net = eclipse_network(L, n, kind)
    Ws = [layer.W for layer in net.dense_chain()]
    if case in ("fast", "family"):  # the first call imports the method modules: not part of the time
        lipbound.bound(eclipse_network(3, 5, kind), "eclipse-fast", norm=2)
    if case == "eclipse-nn":  # its import (cvxpy) is not part of the time either
        try:
            import eclipse_nn  # noqa: F401
        except ImportError:
            pass
    reset = _reset_peak()
    base = _status_mb("VmRSS")
    out = {"case": case, "chain": f"{kind}-{L}x{n}", "threads": threads, "rss_weights_mb": base,
           "weights_mb": sum(W.nbytes for W in Ws) / 2 ** 20, "peak_reset": reset, "lipbound": lipbound.__file__}
    t0 = time.perf_counter()
    if case in ("floor", "floor-syrk"):
        out["time_s"] = _floor(Ws, torch, syrk=case == "floor-syrk")
    elif case in ("fast", "family"):
        opts = {"blas_threads": threads}
        if case == "family":
            opts["members"] = "all"
        b = lipbound.bound(net, "eclipse-fast" if case == "fast" else "eclipse-family", norm=2, **opts)
        out.update(time_s=time.perf_counter() - t0, value=b.value, status=b.status)
        d = b.details or {}
        for k in ("members", "member_times", "best_member", "repaired_stages", "certificate"):
            if k in d:
                out[k] = d[k]
    elif case == "eclipse-nn":
        try:
            out["value"] = _eclipse_nn(Ws, torch)
        except ImportError as e:
            out["skipped"] = f"eclipse-nn not installed ({e})"
        out["time_s"] = time.perf_counter() - t0
    elif case == "reference":
        out["value"] = _reference(Ws)
        out["time_s"] = time.perf_counter() - t0
    else:
        raise ValueError(case)
    # the peak since the reset (VmHWM), else the process's (ru_maxrss, which includes building the chain)
    out["peak_rss_mb"] = _status_mb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["peak_above_weights_mb"] = out["peak_rss_mb"] - base
    return out


def run_case(case: str, L: int, n: int, kind: str, threads: int, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--child", case, f"{L}x{n}", kind, str(threads), "--src", _SRC]
    env = {**os.environ, "PYTHONPATH": _SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"case": case, "chain": f"{kind}-{L}x{n}", "skipped": f"killed after {timeout:g} s"}
    if p.returncode != 0:
        return {"case": case, "chain": f"{kind}-{L}x{n}", "skipped": f"exit {p.returncode}: {p.stderr[-500:]}",
                "wall_s": time.perf_counter() - t0}
    return json.loads(p.stdout.strip().splitlines()[-1])


def summary(res: dict) -> dict:
    """The issue's ratios for one chain (None where a case is missing)."""
    def get(c, k):
        return res.get(c, {}).get(k)

    def ratio(a, b):
        return None if a is None or b is None or b == 0 else a / b

    fast, ref = get("fast", "value"), get("reference", "value")
    return {"fast_over_floor": ratio(get("fast", "time_s"), get("floor", "time_s")),
            "fast_over_floor_syrk": ratio(get("fast", "time_s"), get("floor-syrk", "time_s")),
            "fast_over_eclipse_nn": ratio(get("fast", "time_s"), get("eclipse-nn", "time_s")),
            "family_over_fast": ratio(get("family", "time_s"), get("fast", "time_s")),
            "fast_rel_diff_reference": None if fast is None or ref is None else fast / ref - 1,
            "fast_rel_diff_eclipse_nn": None if fast is None or get("eclipse-nn", "value") is None
            else fast / get("eclipse-nn", "value") - 1}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=4, metavar=("CASE", "LxN", "KIND", "THREADS"), help=argparse.SUPPRESS)
    ap.add_argument("--sizes", default="100x1000,100x300,50x300", help="chains LAYERSxWIDTH, comma separated")
    ap.add_argument("--kind", default="randn", help="weight generator of eclipse_network (randn or rand)")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--threads", type=int, default=None, help="BLAS/torch threads of every case (default: the "
                    "cores other processes leave free at the start)")
    ap.add_argument("--timeout", type=float, default=900.0, help="per case (s)")
    ap.add_argument("--repeat", type=int, default=1, help="run each case this many times (fresh processes) and "
                    "keep the fastest (a shared machine's load varies; all times are in the JSON)")
    ap.add_argument("--src", default=_SRC, help="the lipbound source tree to measure (default: this repository's "
                    "src; a copy of an earlier version gives the 'before' figures)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "closed_forms_scale.json"))
    args = ap.parse_args(argv)
    if args.child:
        case, size, kind, threads = args.child
        L, n = (int(x) for x in size.split("x"))
        print(json.dumps(child(case, L, n, kind, int(threads)), default=float))
        return
    from lipbound.threads import free_cores

    threads = args.threads or free_cores(0.5)
    cases = [c for c in args.cases.split(",") if c]
    t_start = time.perf_counter()
    import lipbound

    out = {"args": vars(args), "lipbound_from": str(Path(lipbound.__file__).parent), "threads": threads, "cpus": os.cpu_count(), "load_avg_start": os.getloadavg(),
           "chains": {}}
    head = f"{'chain':16s} {'case':11s} {'time s':>9s} {'value':>22s} {'peak MB':>8s} {'+weights MB':>11s}"
    print(head + "\n" + "-" * len(head), flush=True)
    for size in [s for s in args.sizes.split(",") if s]:
        L, n = (int(x) for x in size.split("x"))
        res = {}
        for case in cases:
            runs = [run_case(case, L, n, args.kind, threads, args.timeout) for _ in range(args.repeat)]
            timed = [x for x in runs if "time_s" in x]
            r = min(timed, key=lambda x: x["time_s"]) if timed else runs[0]
            if args.repeat > 1:
                r = {**r, "times_s": [x.get("time_s") for x in runs],
                     "peak_above_weights_mb_max": max(x.get("peak_above_weights_mb", float("nan")) for x in runs)}
            res[case] = r
            v = r.get("value")
            print(f"{r['chain']:16s} {case:11s} {r.get('time_s', float('nan')):9.2f} "
                  f"{'' if v is None else f'{v:.15g}':>22s} {r.get('peak_rss_mb', float('nan')):8.0f} "
                  f"{r.get('peak_above_weights_mb', float('nan')):11.0f}  {r.get('skipped', '')}", flush=True)
        res["summary"] = summary(res)
        print("  " + "  ".join(f"{k}={'—' if v is None else f'{v:.3g}'}" for k, v in res["summary"].items()),
              flush=True)
        out["chains"][f"{args.kind}-{size}"] = res
    out["total_s"] = time.perf_counter() - t_start
    out["load_avg_end"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1, default=str)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
