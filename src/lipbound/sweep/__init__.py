"""`sweep`: local Lipschitz constants over a dataset (one box per point and eps), on one process or Ray.

Layout: `inputs` (the points: a memory-mapped .npy, an .npz member, an array, or VNN-LIB files; ids;
hashes), `compute` (one record: certify or the given methods on one point; a chunk of points, the
batched methods in one call per chunk), `store` (the JSON Lines file:
append-only, one fsync'd line per record, resuming), `ray_pool` (chunks of points on Ray; imported only
when workers > 1 or an address is given), `report` (the summary table and the plot).

Record (one JSON line per (id, eps), written as it completes): id, eps, norm, best_lower, best_upper, gap,
exact, time_s, results (every method's `Bound.to_json()`), with certify also lower_method, upper_method,
status; a point that cannot be bounded (NaN / infinite input, a box outside the domain) is
{id, eps, norm, skipped: reason}. Every record carries the sweep's settings under "settings".
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

from ..errors import LipboundError
from ..norms import norm_name, parse_norm
from ..registry import get_method
from . import inputs as _inputs
from .compute import BATCH, Config, batched_methods, compute_records
from .store import Writer, record_key, scan

__all__ = ["sweep"]

#: points per Ray task at most when no method is batched (a killed task loses at most this many points of
#: work); with a batched method, chunks go up to the config's batch size (`compute.BATCH`)
MAX_CHUNK = 16
#: chunks per CPU at least (while chunks stay under MAX_CHUNK points): the last round stays short
CHUNKS_PER_CPU = 8


def sweep(net, inputs, eps=None, norm=2, methods=None, time_limit=10, out=None, workers=1, address=None,
          ids=None, domain=None, seed=0, progress=False, *, key=None, model=None, options=None,
          batch=BATCH) -> Iterator[dict]:
    """Bound the local Lipschitz constant of ``net`` on the box of radius eps (l_inf, clipped to ``domain``)
    around each point of ``inputs``, for each eps; yields one record (dict) per (point, eps) as it
    completes (in completion order), after writing it to ``out`` when given.

    ``inputs``: an array (N, *input shape) (or (N, 1, *input shape)), a path to an .npy (memory-mapped) or
    .npz file (``key``: its array), or VNN-LIB file path(s) (one region each, id = file name; ``eps`` must
    then be None). ``ids``: 'A:B', a range or a slice of rows (default: all). ``methods``: None runs
    `certify` with ``time_limit`` seconds per (point, eps); a list runs exactly those methods, each with
    ``time_limit`` seconds (`compare`). Every point uses the same ``seed``. ``options``: the methods' options
    as `compare` takes them (method -> {option: value}, or option -> value for every method declaring it);
    recorded in the settings when given.

    Batching: the methods that are a tensor computation over the box (`compute.batched_methods`:
    ``ibp-jacobian``; ``crown`` and ``recurjac`` with ``options={"alpha": False}``) bound the boxes of
    ``batch`` points in one call (in-process; a Ray task's chunk of points), with the values of
    `lipbound.bound` point by point (to float64 rounding); the records are written as each point
    completes. ``crown`` with its default alpha-CROWN forward bounds runs point by point.
    ``out``: the JSON Lines file; pairs already in it are not recomputed (resume), a final line cut by a
    crash is dropped; a file written with other settings is refused. ``workers`` > 1: a local Ray runtime
    of that many CPUs; ``address``: an existing Ray cluster. ``model``: the model's name in the settings.

    Checks everything (inputs, ids, eps, methods, the out file, the Ray address) before returning the
    generator and raises `LipboundError` on bad input, before anything is written. Memory: the inputs
    array (memory-mapped for .npy) and the set of (id, eps) keys already done; records are streamed.
    Cost: the per-point cost (about ``time_limit``) times the pairs to do, divided by the workers."""
    plan = _plan(net, inputs, eps, norm, methods, time_limit, out, workers, address, ids, domain, seed, key, model,
                 options, batch)
    return _run(plan, progress)


def _plan(net, inputs, eps, norm, methods, time_limit, out, workers, address, ids, domain, seed, key, model,
          options=None, batch=BATCH) -> dict:
    """Every check of `sweep`, and what `_run` needs: the network, the items, the settings, the config."""
    from ..api import _as_network

    model = model or (str(net) if isinstance(net, (str, Path)) else None)
    net = _as_network(net)
    cfg = _config(norm, methods, time_limit, domain, seed, options, batch)
    workers = _check_workers(workers)
    if _inputs.is_vnnlib(inputs):
        if eps is not None:
            raise LipboundError("a VNN-LIB file gives the region: eps is not allowed with it")
        if ids is not None or key is not None:
            raise LipboundError("ids / key select rows of an array, not VNN-LIB files")
        regions = _inputs.vnnlib_items(inputs, net, cfg.domain)
        pairs = [(name, None) for name, _ in regions]
        source = {"inputs": "vnnlib", "inputs_sha256": None, "key": None}
        arr, by_name = None, dict(regions)
    else:
        if eps is None:
            raise LipboundError("eps is needed: the radius of the box around each point")
        arr, name = _inputs.load_points(inputs, net, key)
        rows = _inputs.parse_ids(ids, arr.shape[0])
        pairs = [(i, e) for i in rows for e in _inputs.parse_eps(eps)]
        source = {"inputs": name, "inputs_sha256": _inputs.content_hash(arr), "key": key}
        by_name = None
    settings = {"model": model or net.name, "model_sha256": _inputs.network_hash(net), "norm": norm_name(cfg.norm),
                "methods": None if cfg.methods is None else list(cfg.methods), "time_limit": cfg.time_limit,
                "domain": None if cfg.domain is None else list(cfg.domain), "seed": cfg.seed, **source}
    if cfg.options:  # only when given: files of sweeps without options resume as before
        settings["options"] = cfg.options
    if out is not None:
        scan(out, settings)  # refuses a file of other settings now, before anything is written
    if address is not None:
        from .ray_pool import check_address

        check_address(address)
    return {"net": net, "cfg": cfg, "settings": settings, "pairs": pairs, "arr": arr, "regions": by_name,
            "out": out, "workers": workers, "address": address}


def _config(norm, methods, time_limit, domain, seed, options=None, batch=BATCH) -> Config:
    p = parse_norm(norm)
    if methods is not None:
        methods = [methods] if isinstance(methods, str) else list(dict.fromkeys(methods))
        if not methods:
            raise LipboundError("methods is empty: give at least one method, or None for certify")
        for m in methods:
            get_method(m)  # an unknown method: LipboundError naming the known ones
        methods = tuple(methods)
    try:
        t = float(time_limit)
    except (TypeError, ValueError):
        raise LipboundError(f"time_limit must be a number of seconds, got {time_limit!r}") from None
    if not (t >= 0 and t < float("inf")):
        raise LipboundError(f"time_limit must be a finite number of seconds >= 0, got {time_limit!r}")
    if domain is not None:
        try:
            lo, hi = (float(d) for d in domain)
        except (TypeError, ValueError):
            raise LipboundError(f"domain must be two numbers (lo, hi), got {domain!r}") from None
        if not lo <= hi:
            raise LipboundError(f"domain lo must be <= hi, got {lo}, {hi}")
        domain = (lo, hi)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise LipboundError(f"seed must be an integer, got {seed!r}")
    if options:
        if methods is None:
            raise LipboundError("options are the methods' options: give the methods too (certify chooses its own)")
        from ..registry import route_options

        routed = route_options(list(methods), options)  # a bad option or value: LipboundError
        options = {m: o for m, o in routed.items() if o} or None
    else:
        options = None
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise LipboundError(f"batch must be an integer >= 1, got {batch!r}")
    return Config(p, methods, t, domain, int(seed), options, batch)


def _check_workers(workers) -> int:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise LipboundError(f"workers must be an integer >= 1, got {workers!r}")
    return workers


def _items(plan: dict, done: set) -> Iterator[tuple]:
    """(id, eps, point or regions) for each pair not in ``done``, reading each point when it is needed."""
    for id_, e in plan["pairs"]:
        if (id_, e) in done:
            continue
        if plan["arr"] is not None:
            yield id_, e, plan["arr"][id_].copy()
        else:
            yield id_, e, plan["regions"][id_]


def _chunks(items: Iterator[tuple], size: int) -> Iterator[list]:
    chunk = []
    for it in items:
        chunk.append(it)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _run(plan: dict, progress: bool) -> Iterator[dict]:
    """The generator: open and lock the file, drop a cut final line, compute the missing pairs and write
    each record (one line, fsync) before yielding it."""
    writer = None
    done: set = set()
    try:
        if plan["out"] is not None:
            writer = Writer(plan["out"])
            done, good, _ = scan(plan["out"], plan["settings"])  # again, under the lock
            writer.cut(good)
        todo = sum(1 for p in plan["pairs"] if p not in done)
        bar = _bar(todo, progress, plan)
        for rec in _records(plan, done, todo):
            key = record_key(rec)
            if key in done:  # a retried task's duplicate: never written twice
                continue
            rec["settings"] = plan["settings"]
            if writer is not None:
                writer.write(rec)
            done.add(key)
            if bar is not None:
                bar.update(1)
            yield rec
        if bar is not None:
            bar.close()
    finally:
        if writer is not None:
            writer.close()


def _records(plan: dict, done: set, todo: int) -> Iterator[dict]:
    items = _items(plan, done)
    cfg = plan["cfg"]
    batched = bool(batched_methods(cfg))
    if plan["workers"] == 1 and plan["address"] is None:
        from ..threads import blas_threads

        with blas_threads(1):  # chunks of cfg.batch points when a method is batched (records still one by one)
            for chunk in _chunks(items, cfg.batch if batched else 1):
                yield from compute_records(plan["net"], chunk, cfg)
        return
    from .ray_pool import run_chunks

    # batched methods are fast per point: chunks up to cfg.batch points (a lost task costs little)
    size = max(1, min(cfg.batch if batched else MAX_CHUNK, todo // (CHUNKS_PER_CPU * plan["workers"])))
    yield from run_chunks(plan["net"], _chunks(items, size), plan["cfg"], plan["workers"], plan["address"])


def _bar(total: int, progress: bool, plan: dict):
    if not progress or total == 0:
        return None
    from tqdm.auto import tqdm

    where = "in-process" if plan["workers"] == 1 and plan["address"] is None else (
        f"Ray {plan['address'] or str(plan['workers']) + ' CPUs'}")
    return tqdm(total=total, desc=f"sweep ({where})", unit="pt", dynamic_ncols=True, smoothing=0.1,
                mininterval=0.5, file=sys.stderr)
