"""Thread control shared by the methods.

Small eigen / mat-vec / LP kernels are many times slower with several BLAS threads on a busy 2-core
machine, so solver loops run inside `blas_threads(1)` (or a count chosen from the layer widths)."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def blas_threads(n: int):
    """Limit the BLAS thread pools (OpenBLAS, MKL) to ``n`` threads inside the block."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=int(n), user_api="blas"):
        yield
