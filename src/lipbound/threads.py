"""Thread control shared by the methods.

Small eigen / mat-vec / LP kernels are many times slower with several BLAS threads on a busy 2-core
machine, so solver loops run inside `blas_threads(1)` (or a count chosen from the layer widths)."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def blas_threads(n: int):
    """Limit the BLAS thread pools (OpenBLAS, MKL) and torch's intra-op threads to ``n`` inside the block."""
    import torch
    from threadpoolctl import threadpool_limits

    old = torch.get_num_threads()
    if old != int(n):
        torch.set_num_threads(int(n))
    try:
        with threadpool_limits(limits=int(n), user_api="blas"):
            yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


def _busy_and_total() -> tuple[int, int] | None:
    """(busy, total) CPU jiffies of the whole machine from /proc/stat (Linux), None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - idle, total


def free_cores(window: float = 0.1) -> int:
    """The number of cores not kept busy by OTHER processes, measured over ``window`` seconds (Linux
    /proc/stat minus this process's own CPU time); ``os.cpu_count()`` where that is not available.

    Why: with torch/MKL (OpenMP) or OpenBLAS using every core while another process holds one of them,
    each parallel region waits for a descheduled thread; a 100-layer x 1000 chain measured 8 s on one
    thread and 124 s on two threads beside one busy process."""
    import os
    import time

    n = os.cpu_count() or 1
    if n == 1:
        return 1
    a = _busy_and_total()
    if a is None:
        return n
    c0 = time.process_time()
    time.sleep(window)
    b = _busy_and_total()
    own = time.process_time() - c0
    if b is None or b[1] <= a[1]:
        return n
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy_cores = (b[0] - a[0]) / (b[1] - a[1]) * n  # whole-machine busy cores over the window
    own_cores = own * hz / ((b[1] - a[1]) / n)  # this process's share, in cores
    others = max(0.0, busy_cores - own_cores)
    return max(1, min(n, n - int(others + 0.5)))
