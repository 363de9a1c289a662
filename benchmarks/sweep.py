"""Points per second of `lipbound sweep` (issue 13): one in-process worker vs a local Ray runtime of 2 workers,
and (``--batching``) batched bounds on one thread vs the per-point loop.

A CPU-bound sweep: the built-in digits MLP, N points of the digits-like [0, 1]^64 cube (seeded), eps 0.05,
``-m crown-bab`` with a time limit of T seconds per point (crown-bab is anytime: each point takes about T).
Reported: the Ray runtime start-up (``ray.init``), the wall time and points/s of each run (the Ray run's
wall time includes starting its worker processes, which import torch and lipbound), the rate after the
first record (warm workers), and the speedup of 2 workers over 1 with and without the start-ups. Timings are on a shared 2-core machine (other jobs
running inflate them; `os.getloadavg()` is recorded). Writes benchmarks/results/sweep.json.

    python benchmarks/sweep.py [--points 20] [--time-limit 2] [--method crown-bab]

``--batching``: crown with plain CROWN forward bounds (alpha=False) on mnist-net_256x2 (the shared networks),
eps 0.01, N MNIST-shaped points (seeded uniform in [0, 1]), one torch thread: the per-point loop
(`lipbound.bound` per point) against `lipbound.sweep` with the batched path (chunks of ``--batch`` points),
interleaved block by block so that both see the same machine load, ``--repeat`` passes over the points (the
ratio of the totals; the cumulative ratio after each pass is printed too); also the default ``-m crown``
(alpha-CROWN, point by point) on the first block. Prints the table (points/s, ratio, the largest relative
difference of the values) and writes benchmarks/results/sweep_batching.json.

    python benchmarks/sweep.py --batching [--points 1000] [--batch 64] [--norm inf] [--block 100] [--repeat 3]

``--memory``: the peak RSS of ``lipbound sweep`` (the CLI in a child process; os.wait4's rusage) on 1000 and
N (default 10,000) MNIST-shaped points, ``-m crown --option alpha=false`` (batched) on mnist-net_256x2: what
grows with the number of points beyond the inputs array. Writes benchmarks/results/sweep_memory.json.

    python benchmarks/sweep.py --memory [--points 10000] [--method-memory crown] [--option alpha=false]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

import lipbound
from lipbound.sweep import ray_pool

OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "sweep.json"
OUT_BATCHING = OUT.with_name("sweep_batching.json")
OUT_MEMORY = OUT.with_name("sweep_memory.json")
MNIST = Path(__file__).resolve().parents[2] / "shared" / "networks" / "mnist-net_256x2.onnx"


def timed_sweep(net, x, args, workers: int, out: Path) -> dict:
    t0 = time.perf_counter()
    first = None
    n = 0
    for _ in lipbound.sweep(net, x, 0.05, methods=[args.method], time_limit=args.time_limit, out=out,
                            workers=workers, domain=(0, 1)):
        n += 1
        first = first or time.perf_counter() - t0
    wall = time.perf_counter() - t0
    steady = (n - 1) / (wall - first) if n > 1 and wall > first else None  # after the first record: warm workers
    return {"workers": workers, "points": n, "wall_s": round(wall, 2), "first_record_s": round(first, 2),
            "points_per_s": round(n / wall, 4), "steady_points_per_s": None if steady is None else round(steady, 4)}


def batching(args) -> None:
    """The batched path against the per-point loop (see the module doc)."""
    import torch

    torch.set_num_threads(1)
    net = lipbound.load(str(args.model))
    n = args.points or 1000
    x = np.random.default_rng(0).uniform(0, 1, (n,) + net.input_shape)
    eps, norm = 0.01, args.norm
    lipbound.bound(net, "crown", norm, center=x[0], eps=eps, alpha=False)  # warm-up (imports, caches)
    t_loop = t_batch = t_alpha = 0.0
    cpu_loop = cpu_batch = 0.0
    per_repeat = []
    loop_vals, batch_vals, worst, n_alpha, looser = {}, {}, 0.0, 0, []
    load_before = os.getloadavg()
    blocks = [b0 for _ in range(args.repeat) for b0 in range(0, n, args.block)]
    for j, b0 in enumerate(blocks):
        ids = range(b0, min(n, b0 + args.block))
        t0, c0 = time.perf_counter(), time.process_time()
        for i in ids:
            loop_vals[i] = lipbound.bound(net, "crown", norm, center=x[i], eps=eps, alpha=False).value
        t_loop += time.perf_counter() - t0
        cpu_loop += time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        for rec in lipbound.sweep(net, x, eps, norm=norm, methods=["crown"], options={"alpha": False},
                                  ids=f"{ids.start}:{ids.stop}", batch=args.batch, time_limit=60):
            batch_vals[rec["id"]] = rec["results"][0]["value"]
        t_batch += time.perf_counter() - t0
        cpu_batch += time.process_time() - c0
        if ids.stop == n:  # the end of one repeat: its ratio (wall time, both sides so far)
            per_repeat.append(round(t_loop / t_batch, 3))
        if j == 0:  # the default -m crown (alpha-CROWN forward bounds), point by point, on the first block
            t0 = time.perf_counter()
            for rec in lipbound.sweep(net, x, eps, norm=norm, methods=["crown"], ids=f"{ids.start}:{ids.stop}",
                                      time_limit=60):
                a = rec["results"][0]["value"]
                looser.append((batch_vals[rec["id"]] - a) / a if a else 0.0)
                n_alpha += 1
            t_alpha += time.perf_counter() - t0
        done = j * args.block + len(ids) if args.block < n else (j + 1) * n
        print(f"  points {done}/{n * args.repeat}: loop {done / t_loop:.1f} pt/s, batched {done / t_batch:.1f} pt/s",
              flush=True)
    for i in range(n):
        a, b = loop_vals[i], batch_vals[i]
        worst = max(worst, abs(a - b) / max(abs(a), 1e-300))
    total = n * args.repeat
    rows = [("run", "points", "time (s)", "points/s"),
            ("per-point loop: bound(crown, alpha=False)", total, round(t_loop, 2), round(total / t_loop, 2)),
            (f"sweep, batched (chunks of {args.batch})", total, round(t_batch, 2), round(total / t_batch, 2)),
            ("sweep -m crown (alpha-CROWN, per point)", n_alpha, round(t_alpha, 2), round(n_alpha / t_alpha, 2))]
    for r in rows:
        print(f"{r[0]:<46}{r[1]!s:>8}{r[2]!s:>10}{r[3]!s:>10}")
    ratio = t_loop / t_batch
    print(f"batched / per-point loop: {ratio:.2f}x points/s (target >= 5x; process CPU time: "
          f"{cpu_loop / cpu_batch:.2f}x; cumulative after each repeat: {per_repeat}); largest relative difference "
          f"of the values: {worst:.3g} (target ~1e-9)")
    print(f"plain CROWN (batched) vs alpha-CROWN (default crown) on the first {n_alpha} points: relative excess "
          f"max {max(looser):.3g}, mean {sum(looser) / len(looser):.3g}, equal on {sum(1 for v in looser if v == 0)}")
    print(f"load average before / after: {load_before[0]:.2f} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    OUT_BATCHING.parent.mkdir(parents=True, exist_ok=True)
    OUT_BATCHING.write_text(json.dumps({
        "model": str(args.model), "points": n, "eps": eps, "norm": str(norm), "batch": args.batch,
        "block": args.block, "threads": 1,
        "repeat": args.repeat,
        "loop": {"time_s": round(t_loop, 3), "cpu_s": round(cpu_loop, 3), "points_per_s": round(total / t_loop, 3)},
        "batched": {"time_s": round(t_batch, 3), "cpu_s": round(cpu_batch, 3),
                    "points_per_s": round(total / t_batch, 3)},
        "ratio": round(ratio, 3), "ratio_cpu": round(cpu_loop / cpu_batch, 3), "ratio_after_each_repeat": per_repeat,
        "max_relative_difference": worst,
        "alpha_crown_per_point": {"points": n_alpha, "time_s": round(t_alpha, 3),
                                  "points_per_s": round(n_alpha / t_alpha, 3),
                                  "plain_minus_alpha_relative_max": max(looser),
                                  "plain_minus_alpha_relative_mean": sum(looser) / len(looser)},
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "cpu_count": os.cpu_count()}, indent=2))
    print(f"JSON written to {OUT_BATCHING}")


def _peak_rss_mb(cmd: list) -> tuple[float, float]:
    """(peak RSS in MB, wall s) of a command run as a child process (os.wait4's rusage)."""
    import subprocess

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t0  # ru_maxrss: kB on Linux


def memory(args) -> None:
    """Peak RSS of `lipbound sweep` (the CLI, in its own process) on N and 10 N points: what grows with the
    number of points beyond the inputs array itself (the issue's 10,000-point target)."""
    net = lipbound.load(str(args.model))
    n_small, n_large = 1000, args.points or 10_000
    method = ["-m", args.method_memory] + sum((["--option", o] for o in args.option), [])
    rows, out = [], {}
    with tempfile.TemporaryDirectory() as d:
        for n in (n_small, n_large):
            x = np.random.default_rng(0).uniform(0, 1, (n,) + net.input_shape)
            xs = Path(d) / f"x{n}.npy"
            np.save(xs, x)
            mb_inputs = x.nbytes / 2 ** 20
            del x
            res = Path(d) / f"r{n}.jsonl"
            rss, wall = _peak_rss_mb(["lipbound", "sweep", str(args.model), "--inputs", str(xs), "--eps", "0.01",
                                      "--norm", args.norm, *method, "--out", str(res), "--quiet"])
            lines = sum(1 for _ in res.open())
            rows.append((n, round(mb_inputs, 1), round(rss, 1), round(wall, 1), lines))
            out[n] = {"inputs_mb": mb_inputs, "peak_rss_mb": rss, "wall_s": wall, "lines": lines}
    growth = out[n_large]["peak_rss_mb"] - out[n_small]["peak_rss_mb"]
    extra_inputs = out[n_large]["inputs_mb"] - out[n_small]["inputs_mb"]
    print(f"{'points':>8}{'inputs (MB)':>13}{'peak RSS (MB)':>15}{'wall (s)':>10}{'lines':>8}")
    for r in rows:
        print(f"{r[0]:>8}{r[1]:>13}{r[2]:>15}{r[3]:>10}{r[4]:>8}")
    print(f"peak RSS grows by {growth:.1f} MB from {n_small} to {n_large} points; the inputs array grows by "
          f"{extra_inputs:.1f} MB (memory-mapped .npy: its pages are counted once read)")
    OUT_MEMORY.write_text(json.dumps({"model": str(args.model), "method": method, "norm": args.norm, "runs": out,
                                      "rss_growth_mb": growth, "inputs_growth_mb": extra_inputs}, indent=2))
    print(f"JSON written to {OUT_MEMORY}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=None, help="default 20 (Ray), 1000 (--batching)")
    ap.add_argument("--time-limit", type=float, default=2.0)
    ap.add_argument("--method", default="crown-bab")
    ap.add_argument("--batching", action="store_true", help="batched bounds vs the per-point loop, one thread")
    ap.add_argument("--model", default=str(MNIST), help="--batching: the network (default mnist-net_256x2)")
    ap.add_argument("--batch", type=int, default=64, help="--batching: points per batched call")
    ap.add_argument("--block", type=int, default=100, help="--batching: points per interleaved block")
    ap.add_argument("--repeat", type=int, default=3,
                    help="--batching: passes over the points (the machine's speed drifts by +-20%% within minutes "
                         "here: one pass gave ratios 4.7-5.6x; the ratio of the totals over 3 passes moves less)")
    ap.add_argument("--norm", default="inf", help="--batching: 1, 2 or inf")
    ap.add_argument("--memory", action="store_true", help="peak RSS of the CLI sweep on 1000 and --points points")
    ap.add_argument("--method-memory", default="crown", help="--memory: the method (default crown, batched)")
    ap.add_argument("--option", action="append", default=None, help="--memory: method option (default alpha=false)")
    args = ap.parse_args()
    if args.memory:
        args.option = args.option if args.option is not None else ["alpha=false"]
        return memory(args)
    if args.batching:
        return batching(args)
    args.points = args.points or 20
    net = lipbound.examples.digits_mlp()
    x = np.random.default_rng(0).uniform(0, 1, (args.points, 64))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        one = timed_sweep(net, x, args, 1, Path(d) / "one.jsonl")
        t0 = time.perf_counter()
        ray, _ = ray_pool.start(2, None)  # the sweep below uses this runtime (and leaves it running)
        startup = time.perf_counter() - t0
        try:
            two = timed_sweep(net, x, args, 2, Path(d) / "two.jsonl")
        finally:
            ray.shutdown()
    speed = one["wall_s"] / two["wall_s"]
    speed_all = one["wall_s"] / (two["wall_s"] + startup)
    steady = (two["steady_points_per_s"] / one["steady_points_per_s"]
              if two["steady_points_per_s"] and one["steady_points_per_s"] else None)
    rows = [("run", "points", "wall (s)", "points/s", "first record (s)", "points/s after it")]
    for name, r in (("1 worker (in-process)", one), ("2 Ray workers", two)):
        rows.append((name, r["points"], r["wall_s"], r["points_per_s"], r["first_record_s"], r["steady_points_per_s"]))
    for r in rows:
        print(f"{r[0]:<24}{r[1]!s:>8}{r[2]!s:>10}{r[3]!s:>10}{r[4]!s:>18}{r[5]!s:>19}")
    print(f"Ray runtime start-up (ray.init): {startup:.2f} s")
    print(f"speedup of 2 workers: {speed:.2f}x in wall time without the runtime start-up, {speed_all:.2f}x with it; "
          f"{steady:.2f}x in points/s once the workers are warm (after the first record) (target >= 1.8x)"
          if steady else f"speedup of 2 workers: {speed:.2f}x without the start-up, {speed_all:.2f}x with it")
    print(f"load average before / after: {load_before[0]:.2f} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"method": args.method, "time_limit": args.time_limit, "points": args.points,
                               "one_worker": one, "two_ray_workers": two, "ray_startup_s": round(startup, 2),
                               "speedup": round(speed, 3), "speedup_with_startup": round(speed_all, 3),
                               "speedup_warm": None if steady is None else round(steady, 3),
                               "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                               "cpu_count": os.cpu_count()}, indent=2))
    print(f"JSON written to {OUT}")


if __name__ == "__main__":
    main()
