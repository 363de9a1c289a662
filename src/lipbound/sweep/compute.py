"""One sweep record: the bounds of one point (or VNN-LIB region) at one eps, computed in a worker.

`compute_record` runs `certify` (no methods given) or `compare` with exactly the given methods (each
method through `lipbound.bound`, every method with the same seed) and returns the record without its
settings (the driver adds them). `compute_records` does a chunk of points: the methods that are a tensor
computation over the box (`batched_methods`: ``ibp-jacobian``, and ``crown`` / ``recurjac`` with
``alpha=False``) bound all the chunk's boxes in one batched call (`methods.jacobian.batched.bound_boxes`,
the same values as `lipbound.bound` box by box, to float64 rounding), the other methods run point by
point. `sweep_chunk` is the Ray task (one chunk).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..api import Bound, _json_float, bound, compare, compare_boxes
from ..errors import LipboundError, MethodFailed, Unsupported
from ..norms import norm_name
from ..portfolio.result import certified_ends, gap_of, meets
from ..registry import Region, get_method, route_options

#: points whose boxes a batched method bounds in one call (in-process; a Ray task's chunk is at most this)
BATCH = 64


@dataclass(frozen=True)
class Config:
    """What every point is bounded with: norm (1, 2 or inf), methods (None: certify), seconds per point
    (certify) or per method (methods), input domain (lo, hi) or None, seed."""

    norm: float
    methods: tuple | None
    time_limit: float
    domain: tuple | None
    seed: int
    #: method -> its options (validated, `registry.route_options`), as `compare` takes them; None: defaults
    options: dict | None = None
    #: points per batched call of the batched methods (`compute_records`); it changes no value
    batch: int = BATCH


def batched_methods(cfg: Config) -> dict:
    """method -> `bound_boxes` mode, for the methods of ``cfg`` that `compute_records` bounds in batches:
    those whose batched values are `lipbound.bound`'s with the same options (`batched.batch_mode`:
    ``ibp-jacobian``; ``crown`` and ``recurjac`` only with ``alpha=False``: alpha-CROWN runs point by point).
    Empty for certify."""
    if cfg.methods is None:
        return {}
    from ..methods.jacobian.batched import batch_mode

    opts = route_options(list(cfg.methods), cfg.options)
    return {m: mode for m in cfg.methods if (mode := batch_mode(m, opts[m])) is not None}


def compute_record(net, item: tuple, cfg: Config, given: dict | None = None, prepared: tuple | None = None) -> dict:
    """The record of ``item`` = (id, eps, point array or list of `Region`): id, eps, norm, best_lower,
    best_upper, gap, exact, time_s, results (every method's `Bound.to_json()`), and with certify also
    lower_method, upper_method, status. A point with NaN / infinite entries, a box outside the domain or a
    problem certify cannot bound gives {id, eps, norm, skipped: reason}. ``given``: method -> `Bound`
    already computed for this point (by a batched call; its time_s, its share of the batch, counts in the
    record's time_s). Cost: that of certify (about ``time_limit``) or of the methods (each at most
    ``time_limit``). ``prepared``: `_prepare`'s result for ``item`` when the caller has it."""
    base, regions = prepared or _prepare(net, item, cfg)
    if regions is None:
        return base
    given = given or {}
    t0 = time.perf_counter()
    if cfg.methods is None:
        try:
            body = _certify_body(net, regions, cfg)
        except LipboundError as e:
            return {**base, "skipped": f"certify: {e}"}
    else:
        body = _methods_body(net, regions, cfg, given)
    lo, up = body.pop("_ends")
    elapsed = time.perf_counter() - t0 + sum(b.time_s for b in given.values())
    rec = {**base, "best_lower": _json_float(lo), "best_upper": _json_float(up), "gap": _json_float(gap_of(lo, up)),
           "exact": body.pop("_exact"), "time_s": round(elapsed, 6)}
    rec.update(body)
    return rec


def _prepare(net, item: tuple, cfg: Config) -> tuple[dict, list | None]:
    """(the record's first keys, the regions to bound), or (the skipped record, None)."""
    id_, eps, payload = item
    base = {"id": id_, "eps": eps, "norm": norm_name(cfg.norm)}
    if not isinstance(payload, np.ndarray):
        return base, list(payload)
    x = np.asarray(payload, dtype=np.float64).reshape(net.input_shape)
    if np.isnan(x).any():
        return {**base, "skipped": "NaN in the input"}, None
    if not np.isfinite(x).all():
        return {**base, "skipped": "infinite value in the input"}, None
    try:
        return base, [Region.box(x, eps, cfg.domain)]
    except LipboundError as e:
        return {**base, "skipped": str(e)}, None


def compute_records(net, items: list, cfg: Config) -> Iterator[dict]:
    """The records of a chunk of items, in order, each yielded as soon as it is complete (`compute_record`'s
    records). The batched methods (`batched_methods`) first bound the boxes of all the chunk's points in
    one call per method; a batch that fails or stops at its time share (``time_limit`` x points) leaves
    its points to the per-point path, which then gives `lipbound.bound`'s answer (status, fallback).
    VNN-LIB items and every other method run point by point. Memory: the chunk's boxes and records, and the
    batched call's own bounded memory (`batched.MAX_ENTRIES`). Cost: the batched calls, then the other
    methods point by point."""
    batched = batched_methods(cfg)
    if not batched:
        for it in items:
            yield compute_record(net, it, cfg)
        return
    prepared = [_prepare(net, it, cfg) for it in items]
    boxes = [i for i, (_, regs) in enumerate(prepared)
             if regs is not None and isinstance(items[i][2], np.ndarray)]
    given: dict = {i: {} for i in boxes}
    for m, mode in batched.items():
        for i, b in zip(boxes, _bound_batch(net, m, mode, [prepared[i][1][0] for i in boxes], cfg)):
            if b is not None:
                given[i][m] = b
    for i, it in enumerate(items):
        yield compute_record(net, it, cfg, given.get(i), prepared[i])


def _bound_batch(net, method: str, mode: str, regions: list, cfg: Config) -> list:
    """`lipbound.bound(net, method, cfg.norm, region, cfg.time_limit)` for every region, as `Bound`s from one
    `bound_boxes` call (time_s: an equal share of the call); None for the regions to bound one by one
    (the method does not support the problem, the call failed, or it stopped at its time share)."""
    from ..methods.jacobian.batched import bound_boxes

    if not regions:
        return []
    spec = get_method(method)
    regions = [r.fit(net) for r in regions]
    if spec.unsupported_reason(net, cfg.norm, regions[0]) is not None:
        return [None] * len(regions)
    t0 = time.perf_counter()
    try:
        outs = bound_boxes(net, np.stack([r.lower for r in regions]), np.stack([r.upper for r in regions]), cfg.norm,
                           mode, time_limit=cfg.time_limit)
    except (Unsupported, MethodFailed, MemoryError, ArithmeticError, RuntimeError):
        return [None] * len(regions)
    share = (time.perf_counter() - t0) / len(regions)
    return [None if o["cut"] else Bound(float(o["value"]), spec.kind, method, norm_name(cfg.norm), r.to_json(), share,
                                        "ok", details=o["details"])
            for o, r in zip(outs, regions)]


def _certify_body(net, regions: list, cfg: Config) -> dict:
    from ..certify import certify

    res = certify(net, cfg.norm, region=regions if len(regions) > 1 else regions[0], time_limit=cfg.time_limit,
                  seed=cfg.seed)
    js = res.to_json()
    return {"_ends": (res.lower, res.upper), "_exact": bool(res.exact), "lower_method": res.lower_method,
            "upper_method": res.upper_method, "status": res.status, "results": js["results"]}


def _methods_body(net, regions: list, cfg: Config, given: dict) -> dict:
    """compare with exactly cfg.methods (those in ``given`` already bounded: their `Bound`s are used as
    they are); the ends as certify reads them (`certified_ends`): per box the largest certified lower and
    smallest certified upper, over a union of boxes the max of each."""
    methods = list(cfg.methods)
    if len(regions) == 1 and given:
        per_method = route_options(methods, cfg.options)
        bounds = [given[m] if m in given else bound(net, m, cfg.norm, regions[0], cfg.time_limit, seed=cfg.seed,
                                                    **per_method[m])
                  for m in methods]
        reports = [_Results(bounds)]
        results = [b.to_json() for b in bounds]
    elif len(regions) == 1:
        reports = [compare(net, methods, cfg.norm, regions[0], cfg.time_limit, seed=cfg.seed, options=cfg.options)]
        results = reports[0].to_json()["results"]
    else:
        union = compare_boxes(net, regions, methods, cfg.norm, cfg.time_limit, seed=cfg.seed, options=cfg.options)
        reports, results = union.reports, union.to_json()["results"]
    lows, ups, proved = [], [], False
    for rep in reports:
        ends = [certified_ends(b) for b in rep.results]
        box_lows = [e[0] for e in ends if e[0] is not None]
        box_ups = [e[2] for e in ends if e[2] is not None]
        lows.append(max(box_lows) if box_lows else None)
        ups.append(min(box_ups) if box_ups else None)
        proved = proved or (len(reports) == 1 and any(b.kind == "exact" and b.status == "ok" for b in rep.results))
    known = [v for v in lows if v is not None]
    lo = max(known) if known else None
    up = max(ups) if ups and all(u is not None for u in ups) else None
    exact = up is not None and (proved or meets(lo, up))
    return {"_ends": (lo, up), "_exact": bool(exact), "results": results}


@dataclass
class _Results:
    """The ``results`` of a `Report`, for `_methods_body`'s ends."""

    results: list


def sweep_chunk(net, items: list, cfg: Config) -> list:
    """The records of a chunk of items (`compute_records`), on one torch / BLAS thread (the Ray task: ``net``
    comes from the object store). Cost: the sum of the items' costs, less what batching saves."""
    from ..threads import blas_threads

    with blas_threads(1):
        return list(compute_records(net, items, cfg))

