"""Running chunks of a sweep on Ray: a local runtime of K CPUs or an existing cluster.

Imported only when ``workers > 1`` or an ``address`` is given (``workers=1`` never imports Ray). The
network goes into the object store once (``ray.put``); each task is a chunk of points
(`compute.sweep_chunk`, one CPU, retried up to `MAX_RETRIES` times when its worker dies); the driver keeps
at most two tasks per CPU in flight and takes results as they finish (``ray.wait``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import Iterable, Iterator

from ..errors import LipboundError

#: a task whose worker process dies is run again up to this many times
MAX_RETRIES = 3
#: seconds to wait for a TCP connection to a cluster address before giving up
CONNECT_TIMEOUT = 5.0
_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def check_address(address: str) -> None:
    """A `LipboundError` unless a TCP connection to ``host:port`` of ``address`` ('HOST:PORT' or
    'ray://HOST:PORT'; 'auto' is left to Ray) opens within `CONNECT_TIMEOUT` seconds."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise LipboundError(f"Ray address {address!r} is not HOST:PORT (or ray://HOST:PORT)")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as e:
        raise LipboundError(f"cannot reach the Ray cluster at {address}: {e}") from None


def start(workers: int, address: str | None):
    """(ray module, True if this call started or joined the runtime and must shut it down). A local
    runtime: ``workers`` CPUs, loopback only, no dashboard, Ray's logs kept off stdout. Cost: a few
    seconds (Ray starts its processes)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise LipboundError("workers > 1 or an address needs Ray: pip install 'lipbound[distributed]'") from None
    if ray.is_initialized():
        return ray, False
    common = dict(logging_level=logging.ERROR, log_to_driver=False, runtime_env={"env_vars": dict(_THREAD_ENV)})
    try:
        if address is not None:
            check_address(address)
            ray.init(address=address, **common)
        else:
            with _loopback(ray):
                ray.init(num_cpus=int(workers), include_dashboard=False, **common)
    except LipboundError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure to start or join is reported in one line
        raise LipboundError(f"cannot start Ray{' at ' + address if address else ''}: {e}".splitlines()[0]) from None
    return ray, True


@contextlib.contextmanager
def _loopback(ray):
    """A local runtime on the loopback interface only: Ray's own switch for this (what it does on macOS and
    Windows, where it runs no clusters) makes the node IP 127.0.0.1, so that every Ray server (GCS,
    raylet, workers, runtime-env agent) listens on 127.0.0.1 only; ``_node_ip_address='127.0.0.1'`` does
    not (Ray replaces it by the host's address). Restored afterwards."""
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    old = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    if old is not None:
        constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if old is not None:
            constants.ENABLE_RAY_CLUSTER = old


def run_chunks(net, chunks: Iterable[list], cfg, workers: int, address: str | None) -> Iterator[dict]:
    """The records of every chunk, in the order they finish. A chunk whose task fails for good (its code
    raised, or its worker died more than `MAX_RETRIES` times) stops the sweep: the code's `LipboundError`,
    or a `LipboundError` saying which points were lost."""
    from .compute import sweep_chunk

    ray, owned = start(workers, address)
    pending: dict = {}
    try:
        cpus = max(1, int(ray.cluster_resources().get("CPU", workers)))
        task = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(sweep_chunk)
        net_ref = ray.put(net)
        it = iter(chunks)

        def fill():
            for chunk in it:
                pending[task.remote(net_ref, chunk, cfg)] = chunk
                if len(pending) >= 2 * cpus:
                    return

        fill()
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                chunk = pending.pop(ref)
                yield from _get(ray, ref, chunk)
            fill()
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if owned:
            ray.shutdown()


def _get(ray, ref, chunk) -> list:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, LipboundError):
            raise LipboundError(str(cause)) from None
        raise LipboundError(f"a sweep task failed on ids {chunk[0][0]}..{chunk[-1][0]}: "
                            f"{type(cause).__name__ if cause else 'error'}: {cause}".splitlines()[0]) from None
    except ray.exceptions.RayError as e:
        raise LipboundError(f"Ray lost the task of ids {chunk[0][0]}..{chunk[-1][0]} after {MAX_RETRIES} retries: "
                            f"{type(e).__name__}".splitlines()[0]) from None
