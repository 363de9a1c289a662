"""certify against compare: the certified gap each reaches and the wall time each needs.

For every shared network (../shared/networks), every norm some certified method applies to, globally and
on a box around numpy.random.default_rng(1).random(n) (eps 0.05 for ACAS Xu, 0.01 for MNIST / CIFAR and
the others), and every budget T in --times (default 10 and 60 s):

* certify: ``lipbound.certify(net, norm, region, time_limit=T)`` in this process (the gap it reaches, its
  wall time, status, and the methods that set each end);
* compare: every applicable method (``compare``'s default selection) with T seconds each; each method
  runs in a spawned child process with a hard wall limit of 3 T + 60 s (a method that ignores its time
  limit is recorded as killed, with no value), and the interval is the best certified lower / upper of
  the methods (the `Report` rule). Its wall time is the sum of the methods' wall times.

Rows are appended to benchmarks/results/certify.jsonl as they finish (a run can be resumed with --resume)
and the whole table is written to benchmarks/results/certify.json.

    python benchmarks/certify.py [--quick] [--times 10 60] [--only NAME] [--norms 1,2,inf]
                                 [--regions global,box] [--no-compare] [--resume]

--quick: ACAS Xu 1_1 (linf on its box) and mnist-net_256x2 (l2 on its box), T = 10 s.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np

import lipbound
from lipbound.norms import norm_name
from lipbound.registry import Region, load_methods

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "networks"
OUT = ROOT / "benchmarks" / "results" / "certify.json"
QUICK = [("ACASXU_run2a_1_1_batch_2000", "inf", "box"), ("mnist-net_256x2", "2", "box")]


def eps_for(name: str) -> float:
    return 0.05 if name.startswith("ACASXU") else 0.01


def region_for(name: str, net, kind: str):
    if kind == "global":
        return None
    center = np.random.default_rng(1).random(net.n_inputs).reshape(net.input_shape)
    return Region.box(center, eps_for(name))


def applicable_norms(net, region) -> list:
    """The norms for which some certified upper-bound method applies."""
    reg = load_methods()
    out = []
    for p in ("1", "2", "inf"):
        if any(s.kind in ("upper", "exact") and s.unsupported_reason(net, p, region) is None for s in reg.values()
               if not s.name.startswith("test-")):
            out.append(p)
    return out


# --------------------------------------------------------------------------------------------------
# compare, one spawned process per method
# --------------------------------------------------------------------------------------------------


def _child(path, name, method, norm, kind, T, queue):
    import torch

    torch.set_num_threads(1)
    net = lipbound.load(path)
    b = lipbound.bound(net, method, norm=norm, region=region_for(name, net, kind), time_limit=T)
    queue.put({"method": method, "kind": b.kind, "value": b.value, "lower": b.lower, "status": b.status,
               "time_s": b.time_s, "reason": b.reason})


def compare_row(path: Path, name: str, net, norm: str, kind: str, T: float) -> dict:
    region = region_for(name, net, kind)
    reg = load_methods()
    names = [n for n in sorted(reg, key=lambda n: (reg[n].family, n))
             if reg[n].in_compare and reg[n].unsupported_reason(net, norm, region) is None]
    ctx = mp.get_context("spawn")  # a child forked after torch's OpenMP pool ran can hang
    results, wall = [], 0.0
    for m in names:
        q = ctx.Queue()
        proc = ctx.Process(target=_child, args=(str(path), name, m, norm, kind, T, q))
        t0 = time.perf_counter()
        proc.start()
        proc.join(3 * T + 60)
        if proc.is_alive():
            proc.kill()
            proc.join()
            results.append({"method": m, "status": f"killed (wall > {3 * T + 60:g} s)", "value": None,
                            "time_s": time.perf_counter() - t0})
        else:
            results.append(q.get() if not q.empty() else {"method": m, "status": "crashed", "value": None,
                                                          "time_s": time.perf_counter() - t0})
        wall += results[-1]["time_s"]
    lows = [r["value"] for r in results if r.get("status") in ("ok", "time_limit") and r.get("kind") in ("lower", "exact")
            and r["value"] is not None] + [r["lower"] for r in results if r.get("lower") is not None]
    ups = [r["value"] for r in results if r.get("status") in ("ok", "time_limit") and r.get("kind") in ("upper", "exact")
           and r["value"] is not None and math.isfinite(r["value"])]
    lo, up = (max(lows) if lows else None), (min(ups) if ups else None)
    return {"best_lower": lo, "best_upper": up, "gap": _gap(lo, up), "time_s": wall, "methods": results}


def _gap(lo, up):
    if lo is None or up is None:
        return None
    return math.inf if lo <= 0 < up else (1.0 if lo <= 0 else up / lo)


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------


def certify_row(net, name: str, norm: str, kind: str, T: float) -> dict:
    t0 = time.perf_counter()
    res = lipbound.certify(net, norm, region=region_for(name, net, kind), time_limit=T)
    return {"lower": res.lower, "upper": res.upper, "gap": res.gap, "status": res.status, "exact": res.exact,
            "time_s": time.perf_counter() - t0, "lower_method": res.lower_method, "upper_method": res.upper_method,
            "ran": [s.method for s in res.plan.steps if s.outcome == "ran"]}


_NO_CERTIFY = {"gap": None, "time_s": 0.0, "status": "—", "lower": None, "lower_method": None, "upper": None,
               "upper_method": None}


def cached_compare(args, key, path, net) -> dict:
    """compare's row for key from --compare-cache, or computed (and appended to the cache)."""
    cache = Path(args.compare_cache) if args.compare_cache else None
    if cache and cache.exists():
        for line in cache.read_text().splitlines():
            r = json.loads(line)
            if (r["network"], r["norm"], r["region"], r["T"]) == key:
                return r["compare"]
    name, p, kind, T = key
    row = compare_row(path, name, net, p, kind, T)
    if cache:
        with cache.open("a") as f:
            f.write(json.dumps({"network": name, "norm": p, "region": kind, "T": T, "compare": row},
                               default=float) + "\n")
    return row


def configs(args) -> list:
    if args.quick:
        return [(SHARED / f"{n}.onnx", p, k) for n, p, k in QUICK]
    if args.configs:
        picked = [c.split(":") for c in args.configs]
        return [(next(SHARED.glob(f"{n}*.onnx")), norm_name(p), k) for n, p, k in picked]
    out = []
    for path in sorted(SHARED.glob("*.onnx")):
        if args.only and args.only not in path.stem:
            continue
        net = lipbound.load(path)
        for kind in args.regions:
            for p in applicable_norms(net, region_for(path.stem, net, kind)):
                if p in args.norms:
                    out.append((path, p, kind))
    return out


def fmt(v, spec=".4g"):
    return "—" if v is None else format(v, spec)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--times", type=float, nargs="+", default=None)
    ap.add_argument("--only", default=None)
    ap.add_argument("--norms", default="1,2,inf")
    ap.add_argument("--regions", default="global,box")
    ap.add_argument("--no-compare", action="store_true")
    ap.add_argument("--no-certify", action="store_true", help="only the compare side (fills --compare-cache)")
    ap.add_argument("--compare-cache", default=None,
                    help="JSON Lines of compare rows keyed by (network, norm, region, T): reused when present, "
                         "appended when computed, so the slow compare side can run once, apart from certify")
    ap.add_argument("--configs", nargs="+", default=None, metavar="NET:NORM:REGION",
                    help="run only these configurations (network name prefix, norm, global|box)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    args.norms = [norm_name(p) for p in args.norms.split(",") if p]
    args.regions = [r for r in args.regions.split(",") if r]
    times = args.times or ([10.0] if args.quick else [10.0, 60.0])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    jsonl = out.with_suffix(".jsonl")
    done = set()
    rows = []
    if args.resume and jsonl.exists():
        rows = [json.loads(l) for l in jsonl.read_text().splitlines() if l.strip()]
        done = {(r["network"], r["norm"], r["region"], r["T"]) for r in rows}
    elif jsonl.exists():
        jsonl.unlink()
    load_methods()
    print(f"{'network':28s} {'norm':>4s} {'region':>6s} {'T':>4s} | {'certify gap':>11s} {'t (s)':>6s} {'status':>10s}"
          f" | {'compare gap':>11s} {'t (s)':>7s} | ends (certify)")
    for path, p, kind in configs(args):
        net = lipbound.load(path)
        for T in times:
            key = (path.stem, p, kind, T)
            if key in done:
                continue
            row = {"network": path.stem, "norm": p, "region": kind, "T": T,
                   "eps": None if kind == "global" else eps_for(path.stem)}
            row["certify"] = None if args.no_certify else certify_row(net, path.stem, p, kind, T)
            row["compare"] = None if args.no_compare else cached_compare(args, key, path, net)
            rows.append(row)
            with jsonl.open("a") as f:
                f.write(json.dumps(row, default=float) + "\n")
            c, k = row["certify"] or _NO_CERTIFY, row["compare"] or {}
            print(f"{path.stem[:28]:28s} {p:>4s} {kind:>6s} {T:4g} | {fmt(c['gap']):>11s} {c['time_s']:6.1f} "
                  f"{c['status']:>10s} | {fmt(k.get('gap')):>11s} {fmt(k.get('time_s'), '7.1f'):>7s} | "
                  f"[{fmt(c['lower'])} {c['lower_method']}, {fmt(c['upper'])} {c['upper_method']}]", flush=True)
    out.write_text(json.dumps({"config": {"times": times, "quick": args.quick, "norms": args.norms,
                                          "regions": args.regions}, "rows": rows}, indent=1, default=float))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
