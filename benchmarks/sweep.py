"""Points per second of `lipbound sweep`: one in-process worker vs a local Ray runtime of 2 workers (issue 13).

A CPU-bound sweep: the built-in digits MLP, N points of the digits-like [0, 1]^64 cube (seeded), eps 0.05,
``-m crown-bab`` with a time limit of T seconds per point (crown-bab is anytime: each point takes about T).
Reported: the Ray runtime start-up (``ray.init``), the wall time and points/s of each run (the Ray run's
wall time includes starting its worker processes, which import torch and lipbound), the rate after the
first record (warm workers), and the speedup of 2 workers over 1 with and without the start-ups. Timings are on a shared 2-core machine (other jobs
running inflate them; `os.getloadavg()` is recorded). Writes benchmarks/results/sweep.json.

    python benchmarks/sweep.py [--points 20] [--time-limit 2] [--method crown-bab]
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=20)
    ap.add_argument("--time-limit", type=float, default=2.0)
    ap.add_argument("--method", default="crown-bab")
    args = ap.parse_args()
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
