"""One best-first branch-and-bound engine for certified Lipschitz bounds.

A *domain* is a part of the problem (a sub-box of the input region, a set of fixed activation slopes,
one output of several) with a certified upper bound on its contribution. The engine keeps the open
domains in one priority queue (largest upper bound first) and repeats one step:

  select  -- pop up to ``batch`` domains that can still be split: those with the largest bounds (``order="best"``),
             or the last pushed (``order="depth"``: a depth-first search, whose path of decisions changes
             by one at a time, so a problem can keep incremental state along it, e.g. an LP's rows);
  lower   -- the problem's lower-bound hook on them (a certified value with its witness input): the best
             lower bound of the run rises;
  drop    -- with ``combine="max"`` a domain whose upper bound is at most the best lower bound cannot
             raise the answer: it is dropped (its bound is covered by the lower bound);
  branch  -- the problem splits each popped domain into children whose union covers it;
  bound   -- the problem bounds all children in one batched call; a child's bound is capped by its parent's.

It stops when ``upper / lower <= target_gap`` (status ``target_gap``), when no domain is left (every
domain was dropped: the upper bound meets the lower bound, ``exact``), when the worst domain has nothing
left to split (``converged``: the answer is the bound of an unsplittable domain), on the deadline or at
``max_domains`` domains (``time_limit``). The upper bound is never above the root's.

How the per-domain bounds make the answer (``combine``): "max" (the answer is the largest domain bound:
l_inf, and any norm with one output), "l2" (sqrt of the sum over keys of the squared largest bound per
key: several outputs in l2) or "sum" (sum over keys: several outputs in l1). Domains are dropped only
for "max", where dropping is sound.

The parts that vary are the problem's (an object with ``bound``, ``branch``, ``splittable`` and
``lower``; see `Problem`): `methods.jacobian.bab` (crown-bab) bounds domains by CROWN on the Clarke-Jacobian
graph and splits input boxes or ReLU-like neurons, best first; `methods.exact.enumerate` (enumerate) bounds
activation-pattern prefixes by an interval Jacobian product, splits the next undecided neuron into its two
signs (each kept only when an LP finds an interior point of its region), and takes a complete pattern's
Jacobian norm as both its upper bound and a lower bound of the whole problem, depth first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import heapq
import itertools
import math
import time
from typing import Any, Callable, Protocol


@dataclasses.dataclass
class Domain:
    """An open domain: its certified upper bound, its key (the part of ``combine`` it bounds, e.g. the
    output) and the problem's data."""

    upper: float
    key: int
    data: Any


class Problem(Protocol):
    combine: str

    def bound(self, children: list[tuple[int, Any]]) -> list[tuple[float, Any]]:
        """Certified upper bounds (and the data to keep) of a batch of children (key, data)."""

    def branch(self, domains: list[Domain]) -> list[tuple[int, Any, float]]:
        """Children (key, data, parent's upper) covering each domain."""

    def splittable(self, domain: Domain) -> bool:
        """False when the domain has nothing left to split."""

    def lower(self, domains: list[Domain]) -> tuple[float, Any] | None:
        """A certified lower bound of the whole problem found near these domains, with its witness."""

    def empty(self, domain: Domain) -> bool:
        """True when no point of the problem lies in this domain (it is dropped); asked of unsplittable domains."""


@dataclasses.dataclass
class Outcome:
    upper: float
    lower: float
    witness: Any
    status: str  # target_gap, exact, converged, time_limit, max_domains
    history: list  # (seconds since start, lower, upper) after every step that moved either
    steps: int
    domains: int  # open domains at the end
    dropped: int
    open: list  # (key, upper) of every open domain at the end

    @property
    def exact(self) -> bool:
        return self.status == "exact"


@contextlib.contextmanager
def _rare_collections():
    """Python's cyclic garbage collector run less often during a search: its thousands of live domains (dicts,
    tuples, tensors, no reference cycles among them) made every full collection walk them all (ACAS Xu
    1_1 l_inf eps 0.2: 3.6 s of 60 in collections). Restored on exit."""
    old = gc.get_threshold()
    gc.set_threshold(max(old[0], GC_THRESHOLD), *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)


#: objects allocated between two young-generation collections during a search (Python's default: 700)
GC_THRESHOLD = 50_000


class Engine:
    """See the module doc. ``lower`` / ``witness``: a certified lower bound known from outside (e.g. the
    `certify` portfolio's best); ``upper_cap``: a certified upper bound from outside (the answer never
    exceeds it); ``outside_lower``: a callable giving the current outside lower bound (read every step);
    ``start``: the time origin of the history; ``order``: "best" (largest upper bound first) or "depth" (last
    pushed first; children are explored in the reverse of the order ``bound`` returns them)."""

    def __init__(self, problem: Problem, *, batch: int, deadline: float | None, target_gap: float = 1 + 1e-6,
                 max_domains: int = 200_000, lower: float = 0.0, witness: Any = None, upper_cap: float = math.inf,
                 outside_lower: Callable[[], float | None] | None = None, start: float | None = None,
                 order: str = "best"):
        if order not in ("best", "depth"):
            raise ValueError(f"order={order!r}: use 'best' or 'depth'")
        self.problem, self.batch, self.deadline = problem, batch, deadline
        self.depth_first = order == "depth"
        self.target_gap, self.max_domains = target_gap, max_domains
        self.lower, self.witness, self.upper_cap = lower, witness, upper_cap
        self.outside_lower = outside_lower
        self.start = time.perf_counter() if start is None else start
        self.heap: list = []
        self.counter = itertools.count()
        self.dropped = 0
        self.steps = 0
        self.history: list = []
        self.closed: list = []  # popped domains with nothing left to split

    # ---- the answer --------------------------------------------------------------------------------
    def upper(self) -> float:
        """The certified upper bound now: the combination of the open domains' bounds; with "max", at
        least the best lower bound (the dropped domains are below it), capped by ``upper_cap``."""
        comb = self.problem.combine
        if comb == "max":  # the heap's top (depth first: every open domain) and the closed domains
            open_top = (max(-e[0] for e in self.heap) if self.depth_first else -self.heap[0][0]) if self.heap \
                else -math.inf
            top = max([open_top] + [d.upper for d in self.closed])
            value = max(top, self.lower)
        else:
            items = [d for _, _, d in self.heap] + self.closed
            per: dict = {}
            for d in items:
                per[d.key] = max(per.get(d.key, 0.0), d.upper)
            vals = list(per.values())
            value = math.sqrt(sum(v * v for v in vals)) if comb == "l2" else sum(vals)
        return min(value, self.upper_cap)

    def _record(self):
        now = time.perf_counter() - self.start
        point = (now, self.lower, self.upper())
        if not self.history or self.history[-1][1:] != point[1:]:
            self.history.append(point)

    def _offer_lower(self, found):
        if found is not None and found[0] is not None and found[0] > self.lower:
            self.lower, self.witness = float(found[0]), found[1]

    # ---- the loop ------------------------------------------------------------------------------------
    def push(self, domain: Domain):
        if self.problem.combine == "max" and self.lower > 0 and domain.upper <= self.lower:
            self.dropped += 1
            return
        entry = (-domain.upper, next(self.counter), domain)
        if self.depth_first:  # a stack: the entries keep the heap's shape so the rest reads them alike
            self.heap.append(entry)
        else:
            heapq.heappush(self.heap, entry)

    def _pop(self) -> Domain:
        return self.heap.pop()[2] if self.depth_first else heapq.heappop(self.heap)[2]

    def run(self, roots: list[Domain]) -> Outcome:
        for d in roots:
            self.push(d)
        self._record()
        with _rare_collections():
            status = self._loop()
        self._record()
        items = [d for _, _, d in self.heap] + self.closed
        return Outcome(self.upper(), self.lower, self.witness, status, self.history, self.steps, len(items),
                       self.dropped, [(d.key, d.upper) for d in items])

    def _closed_gap(self) -> bool:
        return self.lower > 0 and self.upper() <= self.target_gap * self.lower

    def _loop(self) -> str:
        last_step = 0.0
        while True:
            t0 = time.perf_counter()
            if self.outside_lower is not None:
                self._offer_lower((self.outside_lower(), None) if self.outside_lower() else None)
            if (not self.heap and not self.closed) or self.upper() <= 0:
                return "exact"  # every domain covered by the lower bound, or the function is constant
            if self._closed_gap():
                return "target_gap"
            if not self.heap:
                return "converged"
            if self.deadline is not None and t0 + last_step > self.deadline:
                return "time_limit"
            if len(self.heap) >= self.max_domains:
                return "max_domains"
            popped = self._select()
            if not popped:
                continue  # everything popped was dropped or closed: re-check the stopping rules
            self._offer_lower(self.problem.lower(popped))
            popped = [d for d in popped if not self._covered(d)]
            children = self.problem.branch(popped) if popped else []
            if children:
                parents = [c[2] for c in children]
                bounded = self.problem.bound([(c[0], c[1]) for c in children])
                for (key, _, _), (ub, data), pu in zip(children, bounded, parents):
                    self.push(Domain(min(ub, pu), key, data))
            self.steps += 1
            self._record()
            last_step = time.perf_counter() - t0

    def _covered(self, d: Domain) -> bool:
        if self.problem.combine == "max" and self.lower > 0 and d.upper <= self.lower:
            self.dropped += 1
            return True
        return False

    def _select(self) -> list[Domain]:
        """Up to ``batch`` splittable domains with the largest bounds. An unsplittable domain at the top
        is kept aside (``closed``): when it is the worst of all, the search has converged."""
        popped: list = []
        while self.heap and len(popped) < self.batch:
            d = self._pop()
            if self._covered(d):
                continue
            if not self.problem.splittable(d):
                # its bound is final: a lower bound found inside it may cover it, or it may be empty
                self._offer_lower(self.problem.lower([d]))
                if self._covered(d):
                    continue
                if self.problem.empty(d):
                    self.dropped += 1
                    continue
                self.closed.append(d)
                if not popped and d.upper >= max((c.upper for c in self.closed), default=-math.inf):
                    if self.problem.combine == "max":
                        break  # the worst domain cannot be split: nothing more to gain here
                continue
            popped.append(d)
        return popped
