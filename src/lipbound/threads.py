"""Thread control shared by the methods.

Small eigen / mat-vec / LP kernels are many times slower with several BLAS threads on a busy 2-core
machine, so solver loops run inside `blas_threads(1)` (or a count chosen from the layer widths)."""

from __future__ import annotations

import os
import time
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


@contextmanager
def kept_torch_threads():
    """Restores torch's intra-op thread count on exit, whatever the block set it to."""
    import torch

    old = torch.get_num_threads()
    try:
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
    watch = CoreWatch()
    if watch.cores == 1:
        return 1
    time.sleep(window)
    return watch.free()


class CoreWatch:
    """The cores not kept busy by other processes, measured between successive `free` calls (no sleep:
    the window is the time since the previous call). Linux /proc/stat; elsewhere every core counts as free.

    Why: a long search on small tensors (crown-bab on ACAS Xu) runs 1.2-1.6x more steps on two torch threads
    than on one when the second core is idle (2_3 l_inf eps 0.2, 30 s, three pairs one after the other:
    76 / 105 / 87 steps against 47 / 72 / 73), but many times slower when another process holds it
    (`free_cores`); the machine can change during a two-minute search, so it is watched, not measured once."""

    def __init__(self):
        self.cores = os.cpu_count() or 1
        self._last = (_busy_and_total(), time.process_time())
        self.measurable = self._last[0] is not None  # False off Linux: `free` then says every core

    def free(self) -> int:
        """Free cores (at least 1) over the window since the previous call (or since construction)."""
        a, c0 = self._last
        b, c1 = _busy_and_total(), time.process_time()
        self._last = (b, c1)
        if self.cores == 1 or a is None or b is None or b[1] <= a[1]:
            return self.cores
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        busy_cores = (b[0] - a[0]) / (b[1] - a[1]) * self.cores
        own_cores = (c1 - c0) * hz / ((b[1] - a[1]) / self.cores)
        others = max(0.0, busy_cores - own_cores)
        return max(1, min(self.cores, self.cores - int(others + 0.5)))


#: `FollowFreeCores` sets at most this many threads: the gain was measured with two (a 2-core machine); on
#: tensors as small as ACAS Xu's, many threads would spend more in synchronisation than they save
MAX_FOLLOW_THREADS = 4


class FollowFreeCores:
    """Sets torch's intra-op threads to the cores other processes leave free (`CoreWatch`; at most
    `MAX_FOLLOW_THREADS`), read at most every ``every`` seconds and first after that long, so that short
    computations stay on the caller's threads; where the load cannot be read (no /proc/stat) it changes
    nothing. Call `tick` between the pieces of a long computation; restore with `kept_torch_threads`."""

    def __init__(self, every: float):
        self.watch, self.every = CoreWatch(), every
        self.next = time.perf_counter() + every

    def tick(self) -> None:
        now = time.perf_counter()
        if now >= self.next and self.watch.measurable:  # unmeasured: the caller's threads stay
            import torch

            self.next = now + self.every
            n = min(self.watch.free(), MAX_FOLLOW_THREADS)
            if n != torch.get_num_threads():
                torch.set_num_threads(n)
