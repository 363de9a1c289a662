"""`certify`: the tightest certified interval on a network's Lipschitz constant within a time budget.

One question -- what is the Lipschitz constant of this network, here, in this norm, as tightly as can be
said in T seconds? -- answered by a portfolio of the registered methods chosen by a planner
(`lipbound.portfolio.planner`: rules on the problem class and a cost model from the network's sizes):

1. phase 1, within about a second: a certified finite interval (the cheapest certified upper bounds
   that apply and a quick sampled lower bound);
2. phase 2: the methods that can shrink it most for this class in the time left, each with a share of
   it (anytime methods return their best certified value at their limit; a method that cannot be
   interrupted is not started when it cannot finish);
3. stop when upper / lower <= target_gap, when every planned method has run, or at the budget.

Methods run one after another in this process on one BLAS / torch thread (small kernels are many times
slower with threads on busy cores). They share a blackboard (`MethodContext.shared`): the best bounds so
far, the best witness, the target gap and cached CROWN pre-activation bounds.

Soundness: the interval is built only from certified results (upper, lower, exact; never estimates);
every end names the method that set it, and the lower end its witness input.
"""

from __future__ import annotations

import math
import time

import numpy as np

from .api import _as_network, _as_region, _jsonable
from .errors import LipboundError
from .norms import norm_name, parse_norm
from .portfolio.result import CertifyResult, gap_of, meets
from .portfolio.runner import BoxRun, stderr_log
from .registry import Region, get_method, load_methods
from .threads import blas_threads

__all__ = ["certify", "CertifyResult"]


def certify(net, norm=2, *, center=None, eps=None, domain=None, region=None, output=None, time_limit=60,
            target_gap=1.01, methods=None, exclude=None, seed=0, progress=False) -> CertifyResult:
    """The best certified interval [lower, upper] on the Lipschitz constant of ``net`` in ``norm`` (1, 2,
    inf: the operator norm of the Jacobian from l_p to l_p; with ``output=j`` the constant of f_j) found in
    ``time_limit`` seconds, globally or on a box (``center`` and ``eps``, clipped to ``domain``; ``domain``
    alone: the box [lo, hi]^n; or ``region``, a `Region`).

    ``region`` may also be a list of `Region` boxes (a VNN-LIB disjunction, `lipbound.vnnlib.read_vnnlib`):
    each box is bounded and the reported interval is [max of the boxes' lowers, max of their uppers], a
    certified interval on the largest local Lipschitz constant over the boxes -- the sup of the Clarke
    Jacobian norm over their union, i.e. the constant for pairs of points in one box. It is a lower bound
    on the Lipschitz constant of f over the union as a whole (pairs in different boxes can only raise it),
    not an upper bound on it.

    ``target_gap`` (>= 1): stop once upper / lower <= it. ``methods``: only these methods (names);
    ``exclude``: never these. ``seed``: the methods' random seed. ``progress``: one line per event on
    stderr. Returns a `CertifyResult` (lower / upper with their methods and the witness, gap, exact,
    status, time_s, timeline, every method's `Bound`, the plan).

    Bad input (everything `bound` refuses, an unknown method, time_limit < 0, target_gap < 1) and a problem
    no method can bound raise `LipboundError`. A budget below what the cheapest certified bound needs still
    returns that bound, with status 'time_limit'. Cost: ``time_limit`` seconds plus at most the phase-1
    methods' overrun (the slowest method that cannot be interrupted is never started past the budget)."""
    net = _as_network(net)
    p = parse_norm(norm)
    regions = _regions(net, region, center, eps, domain)
    output = _check_output(net, output)
    time_limit, target_gap = _check_budget(time_limit, target_gap)
    methods, exclude = _check_names(methods, "methods"), _check_names(exclude, "exclude") or []
    if methods is not None and not methods:
        raise LipboundError("methods is empty: give at least one method, or None for the planner's choice")
    registry = load_methods()  # imports the method modules once (not counted in the budget)
    t0 = time.perf_counter()
    log = stderr_log(t0) if progress else None
    with blas_threads(1):
        runs = [BoxRun(net, p, r, output, seed=int(seed), target_gap=target_gap, t0=t0,
                       label=f"box {i}: " if len(regions) > 1 else "", log=log) for i, r in enumerate(regions)]
        union = _Union(runs, target_gap, t0, log)
        for run in runs:
            run.prepare(registry, max(time_limit, 0.0) / len(runs), methods, exclude)
            _check_plan(run, p)
        _execute(runs, union, t0 + time_limit)
    return _result(net, p, regions, output, runs, union, t0, time_limit, target_gap)


def _execute(runs: list, union: "_Union", deadline: float) -> None:
    """Phase 1 on every box, then phase 2 box by box (largest upper first), each box with an equal part of
    the time left; a box stops when its upper is within the target of the union's lower."""
    for run in runs:
        run.on_result = union.update
        run.run_phase(1, deadline, lambda run=run: union.done() or union.box_done(run))
    order = sorted(runs, key=lambda r: -(r.interval.upper if r.interval.upper is not None else math.inf))
    for k, run in enumerate(order):
        if union.done():
            break
        now = time.perf_counter()
        box_deadline = now + max(deadline - now, 0.0) / (len(order) - k)
        run.run_phase(2, box_deadline, lambda run=run: union.done() or union.box_done(run))
    for _ in range(LEFTOVER_ROUNDS):  # every planned step ran and time is left: more lower-bound search
        ran = False
        for k, run in enumerate(order):
            if union.done():
                return _not_run(runs)
            now = time.perf_counter()
            if not union.box_done(run):
                ran |= run.run_leftover(now + max(deadline - now, 0.0) / (len(order) - k))
        if not ran:
            break
    _not_run(runs)


#: at most this many extra lower-grad runs per box with the time left after the plan (`BoxRun.run_leftover`)
LEFTOVER_ROUNDS = 3


def _not_run(runs: list) -> None:
    for run in runs:
        for step in run.pending():  # stopped early: what was not run
            step.outcome, step.note = "not run", "the interval reached the target first"


class _Union:
    """The interval over all boxes: lower = max of the boxes' lowers, upper = max of their uppers (once
    every box has one); its timeline."""

    def __init__(self, runs: list, target_gap: float, t0: float, log):
        self.runs, self.target_gap, self.t0, self.log = runs, target_gap, t0, log
        self.lower = self.upper = None
        self.timeline: list = []
        self.exact = False

    def update(self, run, method: str) -> None:
        lows = [r.interval.lower for r in self.runs if r.interval.lower is not None]
        ups = [r.interval.upper for r in self.runs]
        lower = max(lows) if lows else None
        upper = max(ups) if all(u is not None for u in ups) else None
        exact = self._exact(lower, upper)
        if (lower, upper, exact) != (self.lower, self.upper, self.exact):
            self.lower, self.upper, self.exact = lower, upper, exact
            label = method if len(self.runs) == 1 else f"{method} (box {self.runs.index(run)})"
            self.timeline.append({"t": round(time.perf_counter() - self.t0, 6), "lower": lower, "upper": upper,
                                  "method": label})

    def _exact(self, lower, upper) -> bool:
        if upper is None:
            return False
        if meets(lower, upper):
            return True
        top = max(self.runs, key=lambda r: r.interval.upper)
        others = [r.interval.upper for r in self.runs if r is not top]
        # the box with the largest upper end has a proved value that no other box's upper end exceeds
        return (top.interval.exact_method is not None and top.interval.lower is not None
                and all(o <= top.interval.lower for o in others))

    def done(self) -> bool:
        g = gap_of(self.lower, self.upper)
        return self.exact or (g is not None and g <= self.target_gap * (1 + 1e-12))

    def box_done(self, run) -> bool:
        iv = run.interval
        if iv.exact:
            return True
        return (len(self.runs) > 1 and iv.upper is not None and self.lower is not None and self.lower > 0
                and iv.upper <= self.target_gap * self.lower)


# --------------------------------------------------------------------------------------------------
# checks of the arguments (the same as `bound`'s where they overlap)
# --------------------------------------------------------------------------------------------------


def _regions(net, region, center, eps, domain) -> list:
    if isinstance(region, (list, tuple)):
        if center is not None or eps is not None:
            raise LipboundError("give either a list of regions or center / eps, not both")
        if not region:
            raise LipboundError("the list of regions is empty")
        out = []
        for r in region:
            if not isinstance(r, Region):
                raise LipboundError(f"a region must be a lipbound Region, not {type(r).__name__}")
            out.append(_clip(r, domain).fit(net))
        return out
    if region is None and center is None and eps is None and domain is not None:
        lo, hi = domain
        region = Region.from_bounds(np.full(net.input_shape, float(lo)), np.full(net.input_shape, float(hi)))
    elif region is not None and domain is not None:
        region = _clip(region, domain)
    return [_as_region(net, region, center, eps, domain)]


def _clip(r: Region, domain) -> Region:
    """A box intersected with the input domain (lo, hi); an error when they do not meet."""
    if domain is None:
        return r
    lo = np.maximum(r.lower, np.asarray(domain[0], dtype=np.float64))
    hi = np.minimum(r.upper, np.asarray(domain[1], dtype=np.float64))
    if (lo > hi).any():
        raise LipboundError("a box of the region does not meet the input domain")
    return Region.from_bounds(lo, hi)


def _check_output(net, output):
    if output is None:
        return None
    if not (isinstance(output, (int, np.integer)) and not isinstance(output, bool) and 0 <= int(output) < net.n_outputs):
        raise LipboundError(f"output {output} is out of range: the network has {net.n_outputs} outputs")
    return int(output)


def _check_budget(time_limit, target_gap) -> tuple:
    try:
        t = float(time_limit)
        g = float(target_gap)
    except (TypeError, ValueError):
        raise LipboundError(f"time_limit and target_gap must be numbers, got {time_limit!r}, {target_gap!r}") from None
    if not (math.isfinite(t) and t >= 0):
        raise LipboundError(f"time_limit must be a finite number of seconds >= 0, got {time_limit!r}")
    if not g >= 1:  # also NaN
        raise LipboundError(f"target_gap must be >= 1 (upper / lower), got {target_gap!r}")
    return t, g


def _check_names(names, what: str):
    if names is None:
        return None
    if isinstance(names, str):
        names = [names]
    names = list(dict.fromkeys(names))
    for n in names:
        if not isinstance(n, str):
            raise LipboundError(f"{what}: method names are strings, got {n!r}")
        get_method(n)  # unknown method: LipboundError naming the known ones
    return names


def _check_plan(run: BoxRun, p) -> None:
    """An error naming why when no planned method can give a certified upper bound."""
    if any(s.role in ("upper", "exact") or get_method(s.method).kind in ("upper", "exact")
           for s in run.plan.steps):
        return
    reasons = "; ".join(f"{s['method']}: {s['reason']}" for s in run.plan.skipped[:6])
    raise LipboundError(f"no method can give a certified upper bound for {run.problem.problem_class()}"
                        f"{' (' + reasons + ')' if reasons else ''}")


# --------------------------------------------------------------------------------------------------
# the result
# --------------------------------------------------------------------------------------------------


def _status(runs: list, union: _Union, t0: float, time_limit: float) -> str:
    if union.done():
        return "target_gap"
    if time.perf_counter() - t0 > time_limit or any(r.cut for r in runs):
        return "time_limit"
    return "exhausted"


def _exact_value(runs: list, union: _Union):
    if not union.exact:
        return None
    top = max(runs, key=lambda r: r.interval.upper)
    iv = top.interval
    if iv.exact_method is not None:
        for b in top.results:
            if b.method == iv.exact_method and b.kind == "exact":
                return b.value
    return union.upper


def _box_result(run: BoxRun, net, p, output, time_s, status, time_limit, target_gap) -> CertifyResult:
    iv = run.interval
    exact = iv.exact
    value = None
    if exact:
        value = next((b.value for b in run.results if b.method == iv.exact_method and b.kind == "exact"), iv.upper)
    return CertifyResult(iv.lower, iv.upper, iv.lower_method, iv.upper_method, iv.witness, exact, value, status,
                         time_s, list(iv.timeline), list(run.results), run.plan, net.summary(), norm_name(p),
                         None if run.region is None else run.region.to_json(), output, target_gap, time_limit)


class _UnionPlan:
    """The plans of the boxes of a union."""

    def __init__(self, plans: list):
        self.plans = plans

    def to_json(self) -> dict:
        return {"boxes": [_jsonable(p.to_json()) for p in self.plans]}

    def summary(self) -> str:
        return " | ".join(f"box {i}: {p.summary()}" for i, p in enumerate(self.plans))


def _result(net, p, regions, output, runs, union, t0, time_limit, target_gap) -> CertifyResult:
    if union.upper is None:
        fails = "; ".join(f"{b.method}: {b.status}{' (' + b.reason + ')' if b.reason else ''}"
                          for r in runs for b in r.results if b.kind in ("upper", "exact") and not b.ok)
        raise LipboundError(f"no method returned a certified upper bound{': ' + fails if fails else ''}")
    time_s = time.perf_counter() - t0
    status = _status(runs, union, t0, time_limit)
    if len(runs) == 1:
        res = _box_result(runs[0], net, p, output, time_s, status, time_limit, target_gap)
        res.timeline = list(union.timeline)
        return res
    boxes = [_box_result(r, net, p, output, time_s, status, time_limit, target_gap) for r in runs]
    lo_box = max((b for b in boxes if b.lower is not None), key=lambda b: b.lower, default=None)
    up_i = max(range(len(boxes)), key=lambda i: boxes[i].upper)
    region = {"type": "union", "n_boxes": len(boxes), "boxes": [b.region for b in boxes]}
    return CertifyResult(
        union.lower, union.upper,
        None if lo_box is None else f"{lo_box.lower_method} (box {boxes.index(lo_box)})",
        f"{boxes[up_i].upper_method} (box {up_i})", None if lo_box is None else lo_box.witness,
        union.exact, _exact_value(runs, union), status, time_s, list(union.timeline),
        [b for r in runs for b in r.results], _UnionPlan([r.plan for r in runs]), net.summary(), norm_name(p),
        region, output, target_gap, time_limit, boxes=boxes)
