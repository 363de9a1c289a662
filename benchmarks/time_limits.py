"""Does every method keep its own time limit? (issue 12)

Every registered method runs with ``--time-limit T`` (default 2 s and 10 s) on networks large enough to
exceed it: mnist-net_256x2 on a box of eps 0.05 (linf and l2) and the CIFAR networks cifar_base_kw and
resnet_2b on a box of eps 2/255 (linf and l2), each box around numpy.random.default_rng(1).random(n)
clipped to [0, 1]. Each method runs in a forked child with a hard wall limit of 3 T + 30 s (a method that
ignores its limit is recorded as killed). The target is wall <= 1.1 T + 2 s; the wall time is the time of
``lipbound.bound`` in the child (the network is loaded before the fork). Methods unsupported on a request
by their declaration (norm, region, operations) are listed as such without running.

A value returned is checked against lower-sample's (200 samples) for upper bounds: an upper below a
sampled lower bound would be unsound.

    python benchmarks/time_limits.py [--limits 2 10] [--only METHOD ...] [--nets mnist cifar resnet]
                                     [--out benchmarks/results/time_limits.json]

Prints a table (method, network, norm, limit, wall, status, within target) and writes the rows as JSON.
benchmarks/results/time_limits_before.json holds the same run (T = 2 s) on the code before issue 12's fixes
(commit f70d6bf).
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
from lipbound.registry import Region, load_methods

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "networks"
OUT = ROOT / "benchmarks" / "results" / "time_limits.json"
NETS = {"mnist": ("mnist-net_256x2", 0.05), "cifar": ("cifar_base_kw", 2 / 255), "resnet": ("resnet_2b", 2 / 255)}


def region_for(net, eps: float) -> Region:
    center = np.random.default_rng(1).random(net.n_inputs).reshape(net.input_shape)
    return Region.box(center, eps, (0.0, 1.0))


def _child(conn, net, method, norm, region, limit):
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        b = lipbound.bound(net, method, norm, region, limit)
        conn.send({"value": b.value, "kind": b.kind, "status": b.status, "time_s": b.time_s,
                   "reason": (b.reason or "")[:160], "wall": time.perf_counter() - t0})
    except Exception as e:  # noqa: BLE001 - reported in the table
        conn.send({"value": None, "kind": None, "status": "error", "reason": f"{type(e).__name__}: {e}"[:160],
                   "wall": time.perf_counter() - t0})
    conn.close()


def run_one(net, method, norm, region, limit, hard):
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(child, net, method, norm, region, limit))
    t0 = time.perf_counter()
    p.start()
    child.close()
    if parent.poll(hard):
        row = parent.recv()
        p.join(5)
    else:
        row = {"value": None, "kind": None, "status": "killed", "reason": f"killed after {hard:.0f} s",
               "wall": time.perf_counter() - t0}
    if p.is_alive():
        p.kill()
        p.join()
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limits", type=float, nargs="+", default=[2.0, 10.0])
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--nets", nargs="*", default=list(NETS))
    ap.add_argument("--norms", nargs="*", default=["inf", "2"])
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    reg = load_methods()
    names = sorted(reg) if not args.only else args.only
    rows = []
    for key in args.nets:
        fname, eps = NETS[key]
        net = lipbound.load(str(SHARED / f"{fname}.onnx"))
        region = region_for(net, eps)
        for norm in args.norms:
            ref = lipbound.bound(net, "lower-sample", norm, region, 30, samples=200)
            for limit in args.limits:
                for m in names:
                    spec = reg[m]
                    why = spec.unsupported_reason(net, norm, region)
                    if why is not None:
                        continue
                    hard = 3 * limit + 30
                    r = run_one(net, m, norm, region, limit, hard)
                    sound = None
                    if r.get("value") is not None and r.get("kind") in ("upper", "exact") and ref.value is not None:
                        sound = bool(r["value"] >= ref.value * (1 - 1e-9))
                    row = {"method": m, "network": fname, "norm": norm, "eps": eps, "limit": limit, **r,
                           "target": 1.1 * limit + 2, "within": r["wall"] <= 1.1 * limit + 2,
                           "sound": sound, "lower_sample": ref.value}
                    rows.append(row)
                    print(f"{m:22s} {fname:16s} {norm:>3s} {limit:5.1f} {r['wall']:8.2f} {r['status']:12s} "
                          f"{'ok' if row['within'] else 'OVER':4s} {'' if sound is None else ('sound' if sound else 'UNSOUND')} "
                          f"{'' if r['status'] in ('ok', 'time_limit') else r.get('reason', '')[:70]}", flush=True)
                    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                    Path(args.out).write_text(json.dumps(rows, indent=1, default=float))
    over = [r for r in rows if not r["within"]]
    print(f"\n{len(rows)} runs, {len(over)} over 1.1 T + 2 s:")
    for r in over:
        print(f"  {r['method']} {r['network']} {r['norm']} T={r['limit']}: {r['wall']:.1f} s ({r['status']})")
    return rows


if __name__ == "__main__":
    main()
