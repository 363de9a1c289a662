"""One sweep record: the bounds of one point (or VNN-LIB region) at one eps, computed in a worker.

`compute_record` runs `certify` (no methods given) or `compare` with exactly the given methods (each
method through `lipbound.bound`, every method with the same seed) and returns the record without its
settings (the driver adds them). `sweep_chunk` does a chunk of points; it is the Ray task.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..api import _json_float, compare, compare_boxes
from ..errors import LipboundError
from ..norms import norm_name
from ..portfolio.result import certified_ends, gap_of, meets
from ..registry import Region


@dataclass(frozen=True)
class Config:
    """What every point is bounded with: norm (1, 2 or inf), methods (None: certify), seconds per point
    (certify) or per method (methods), input domain (lo, hi) or None, seed."""

    norm: float
    methods: tuple | None
    time_limit: float
    domain: tuple | None
    seed: int


def compute_record(net, item: tuple, cfg: Config) -> dict:
    """The record of ``item`` = (id, eps, point array or list of `Region`): id, eps, norm, best_lower,
    best_upper, gap, exact, time_s, results (every method's `Bound.to_json()`), and with certify also
    lower_method, upper_method, status. A point with NaN / infinite entries, a box outside the domain or a
    problem certify cannot bound gives {id, eps, norm, skipped: reason}. Cost: that of certify (about
    ``time_limit``) or of the methods (each at most ``time_limit``)."""
    id_, eps, payload = item
    base = {"id": id_, "eps": eps, "norm": norm_name(cfg.norm)}
    if isinstance(payload, np.ndarray):
        x = np.asarray(payload, dtype=np.float64).reshape(net.input_shape)
        if np.isnan(x).any():
            return {**base, "skipped": "NaN in the input"}
        if not np.isfinite(x).all():
            return {**base, "skipped": "infinite value in the input"}
        try:
            regions = [Region.box(x, eps, cfg.domain)]
        except LipboundError as e:
            return {**base, "skipped": str(e)}
    else:
        regions = list(payload)
    t0 = time.perf_counter()
    if cfg.methods is None:
        try:
            body = _certify_body(net, regions, cfg)
        except LipboundError as e:
            return {**base, "skipped": f"certify: {e}"}
    else:
        body = _methods_body(net, regions, cfg)
    lo, up = body.pop("_ends")
    rec = {**base, "best_lower": _json_float(lo), "best_upper": _json_float(up), "gap": _json_float(gap_of(lo, up)),
           "exact": body.pop("_exact"), "time_s": round(time.perf_counter() - t0, 6)}
    rec.update(body)
    return rec


def _certify_body(net, regions: list, cfg: Config) -> dict:
    from ..certify import certify

    res = certify(net, cfg.norm, region=regions if len(regions) > 1 else regions[0], time_limit=cfg.time_limit,
                  seed=cfg.seed)
    js = res.to_json()
    return {"_ends": (res.lower, res.upper), "_exact": bool(res.exact), "lower_method": res.lower_method,
            "upper_method": res.upper_method, "status": res.status, "results": js["results"]}


def _methods_body(net, regions: list, cfg: Config) -> dict:
    """compare with exactly cfg.methods; the ends as certify reads them (`certified_ends`): per box the
    largest certified lower and smallest certified upper, over a union of boxes the max of each."""
    methods = list(cfg.methods)
    if len(regions) == 1:
        reports = [compare(net, methods, cfg.norm, regions[0], cfg.time_limit, seed=cfg.seed)]
        results = reports[0].to_json()["results"]
    else:
        union = compare_boxes(net, regions, methods, cfg.norm, cfg.time_limit, seed=cfg.seed)
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


def sweep_chunk(net, items: list, cfg: Config) -> list:
    """The records of a chunk of items, on one torch / BLAS thread (the Ray task: ``net`` comes from the
    object store). Cost: the sum of the items' costs."""
    from ..threads import blas_threads

    with blas_threads(1):
        return [compute_record(net, it, cfg) for it in items]

