"""Activation-pattern geometry for ReLU-like chains (ReLU, LeakyReLU, Abs): max-slack interior points of a pattern's
region and the tree search over the patterns realisable in a box, or in the whole input space (``lo = hi = None``:
the global constant). Private module of `exact.methods`."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from ...highs import Status
from ...norms import operator_norm, spectral_norm_upper
from .mip_core import Model, act_interval, affine_interval


def max_slack_point(G, h, lo, hi):
    """max t s.t. G_i x + h_i >= t ||G_i|| for all rows, lo <= x <= hi, t <= diam(box).

    Returns (t, x): t is the largest distance (l2) by which x clears every hyperplane, a certificate that
    the open region {G x + h > 0} meets the box when t > 0 (checked again in float64 on x)."""
    n = lo.size
    G = np.atleast_2d(np.asarray(G, dtype=np.float64)).reshape(-1, n)
    h = np.asarray(h, dtype=np.float64).ravel()
    norms = np.linalg.norm(G, axis=1)
    diam = float(np.linalg.norm(hi - lo)) + 1.0
    m = Model()
    x = m.add_vars(lo, hi)
    t = m.add_vars(-diam, diam)
    if G.shape[0]:
        m.add_rows([(x, G), (t, -norms[:, None])], -h, np.full(h.size, np.inf))
    cost = np.zeros(m.n_cols)
    cost[t] = 1.0
    # presolve off: on a few dense rows it costs more than the solve (10 ms against 3.7 ms on
    # mnist-net_256x2's pattern regions); the slack is re-checked in float64 below anyway
    prob, _ = m.to_highs(cost, maximize=True, options={"presolve": "off"})
    r = prob.solve()
    if r.status != Status.OPTIMAL or r.primal is None:
        return -math.inf, None
    xs = np.clip(r.primal[x], lo, hi)
    # the slack actually achieved by the (clipped) float64 point
    if G.shape[0]:
        tt = float(np.min((G @ xs + h) / np.where(norms > 0, norms, 1.0)))
    else:
        tt = diam
    return tt, xs


class _IncrementalSlackLP:
    """The max-slack LP of `max_slack_point` kept in one HiGHS instance along a depth-first path: rows
    are pushed going down and popped coming back, so each solve warm-starts from the last basis.

    Global (``lo``, ``hi`` = -inf, +inf): x is free and the slack t is capped at ``t_cap`` (the LP is bounded
    by the cap alone; a region has an interior point iff its optimum is > 0, the capped inradius)."""

    def __init__(self, lo, hi, t_cap=None):
        self.lo, self.hi = lo, hi
        n = lo.size
        self.n = n
        if t_cap is None:
            diam = float(np.linalg.norm(hi - lo)) + 1.0
            t_lo = -diam
        else:
            diam, t_lo = float(t_cap), -math.inf
        self.diam = diam
        m = Model()
        x = m.add_vars(lo, hi)
        t = m.add_vars(t_lo, diam)
        cost = np.zeros(m.n_cols)
        cost[t] = 1.0
        self.prob, _ = m.to_highs(cost, maximize=True, options={"presolve": "off"})
        self.idx = np.arange(n + 1, dtype=np.int32)

    def push(self, g, hh):
        nrm = float(np.linalg.norm(g))
        vals = np.concatenate([np.asarray(g, dtype=np.float64), [-nrm]])
        self.prob.add_row(float(-hh), math.inf, self.idx, vals)

    def pop(self):
        self.prob.delete_rows(1)

    def solve(self, G, H):
        r = self.prob.solve()
        if r.status != Status.OPTIMAL or r.primal is None:
            return -math.inf, None
        xs = np.clip(r.primal[: self.n], self.lo, self.hi)
        G = np.asarray(G, dtype=np.float64).reshape(-1, self.n)
        H = np.asarray(H, dtype=np.float64).ravel()
        norms = np.linalg.norm(G, axis=1)
        return float(np.min((G @ xs + H) / np.where(norms > 0, norms, 1.0))), xs


def pattern_constraints(layers, pattern, bounds):
    """For a full pattern (derivatives d_k per hidden layer), the affine maps z_k = A_k x + c_k and the
    sign rows (G, h) of its unstable neurons (G x + h > 0 on the pattern's open region). Also the
    pattern's Jacobian."""
    n0 = layers[0].W.shape[1]
    A, c = np.eye(n0), np.zeros(n0)
    G, H = [], []
    for k, L in enumerate(layers[:-1]):
        Az, cz = L.W @ A, L.W @ c + L.b
        l, u = bounds[k]
        ui = np.flatnonzero((l < 0) & (u > 0))
        d = pattern[k]
        for j in ([] if L.slope == 1.0 else ui):
            sgn = 1.0 if d[j] == 1.0 else -1.0
            G.append(sgn * Az[j])
            H.append(sgn * cz[j])
        A, c = d[:, None] * Az, d * cz
    J = layers[-1].W @ A
    n = n0
    return (np.array(G).reshape(-1, n), np.array(H)), J


def jacobian_bound(layers, k, A, c, dk, lo, hi, bounds, norm, output):
    """Certified upper bound on ‖J‖ over every completion of a pattern prefix: the layers below k are fixed
    (h_{k-1} = A x + c on the prefix's region), layer k's derivatives lie in ``dk`` = (dmin, dmax) (fixed
    where decided). Interval bounds of the layers above k are recomputed from the exact range of A x + c
    over the box; the Jacobian is bounded by an interval matrix product. Cost: O(m n^2) per layer.
    ``lo = hi = None`` (global): no box, the pre-activations above the prefix range over ``bounds`` only.
    l2: the spectral norm of the interval matrix's entrywise bound (`spectral_norm_upper`)."""
    K = len(layers) - 1
    if lo is not None:
        lh, uh = affine_interval(A, c, lo, hi)  # the exact range of A x + c over the box, outward-rounded
    dsets = {}
    for i in range(k, K):
        L = layers[i]
        if lo is not None:
            zl, zu = affine_interval(L.W, L.b, lh, uh)
        else:
            zl, zu = np.full(L.W.shape[0], -math.inf), np.full(L.W.shape[0], math.inf)
        bl, bu = bounds[i]
        zl, zu = np.maximum(zl, bl), np.minimum(zu, bu)
        zl, zu = np.minimum(zl, zu), np.maximum(zl, zu)
        s = L.slope
        if i == k and dk is not None and s != 1.0:
            decided = dk[0] == dk[1]
            # a decided neuron's z has its sign: tighten its range for the next layer
            zl = np.where(decided & (dk[0] == 1.0), np.maximum(zl, 0.0), zl)
            zu = np.where(decided & (dk[0] == s), np.minimum(zu, 0.0), zu)
            zl, zu = np.minimum(zl, zu), np.maximum(zl, zu)
        dmin = np.where(zl >= 0, 1.0, np.where(zu <= 0, s, min(s, 1.0)))
        dmax = np.where(zl >= 0, 1.0, np.where(zu <= 0, s, max(s, 1.0)))
        if i == k and dk is not None:
            decided = dk[0] == dk[1]
            dmin, dmax = np.where(decided, dk[0], dmin), np.where(decided, dk[1], dmax)
        dsets[i] = (dmin, dmax)
        if lo is not None:
            lh, uh = act_interval(zl, zu, L)
    W = layers[K].W if output is None else layers[K].W[[output]]
    Um, Ur = W.copy(), np.zeros_like(W)
    for i in range(K - 1, k - 1, -1):
        dmin, dmax = dsets[i]
        lo_u, hi_u = Um - Ur, Um + Ur
        cands = [lo_u * dmin, lo_u * dmax, hi_u * dmin, hi_u * dmax]
        pl, ph = np.minimum.reduce(cands), np.maximum.reduce(cands)
        pm, pr = (ph + pl) / 2, (ph - pl) / 2
        Wi = layers[i].W
        Um, Ur = pm @ Wi, pr @ np.abs(Wi)
    Jabs = np.abs(Um @ A) + Ur @ np.abs(A)
    if norm == math.inf:
        val = float(Jabs.sum(1).max())
    elif norm == 2:
        val = spectral_norm_upper(Jabs)
    else:
        val = float(Jabs.sum(0).max())
    return val * (1 + 1e-10) + 1e-300


def global_scale(layers) -> float:
    """A length scale of the first layer's hyperplane arrangement: 1 + the largest distance of a first-layer
    hyperplane from the origin (the slack cap of the global search; its tolerance is 1e-9 of it)."""
    W, b = layers[0].W, layers[0].b
    nr = np.linalg.norm(W, axis=1)
    dist = np.abs(b)[nr > 0] / nr[nr > 0]
    return 1.0 + (float(dist.max()) if dist.size else 0.0)


def enumerate_patterns(layers, lo, hi, bounds, norm, output, deadline=None, tol=None, progress=None,
                       prune=False, incumbent=None):
    """Depth-first search over the activation patterns of the unstable neurons (layer by layer), pruning
    a prefix as soon as its region has no interior point in the box (max-slack LP). Returns
    (best value, witness x, #patterns, complete?). The value is max over realisable patterns of the
    pattern Jacobian's operator norm: the exact Lipschitz constant on the box in general position.

    ``lo = hi = None``: the whole input space (``bounds`` then (-inf, inf) for every neuron): the max over
    every activation region of R^n with an interior point, i.e. the exact global Lipschitz constant."""
    search = _PatternSearch(layers, lo, hi, bounds, norm, output, deadline, tol, progress, prune)
    if incumbent is not None:  # (value, witness) of a certified lower bound, e.g. a sampled gradient
        search.state["best"], search.state["x"] = float(incumbent[0]), np.asarray(incumbent[1], dtype=np.float64)
    n0 = search.lo.size
    root = np.zeros(n0) if search.is_global else (search.lo + search.hi) / 2
    search.layer(0, np.eye(n0), np.zeros(n0), [], [], root, math.inf)
    return search.state


@dataclass
class _Layer:
    """One hidden layer of the current prefix: h_{k-1} = A x + c, its pre-activation Az x + cz, its unstable
    neurons ``ui`` (in order of branching)."""

    k: int
    A: np.ndarray
    c: np.ndarray
    Az: np.ndarray
    cz: np.ndarray
    ui: np.ndarray


class _PatternSearch:
    """The state and the recursion of `enumerate_patterns` (one LP instance along the depth-first path)."""

    def __init__(self, layers, lo, hi, bounds, norm, output, deadline, tol, progress, prune):
        self.is_global = lo is None
        if self.is_global:
            n0 = layers[0].W.shape[1]
            lo, hi = np.full(n0, -math.inf), np.full(n0, math.inf)
            scale = global_scale(layers)
            self.tol = 1e-9 * scale if tol is None else tol
            self.lp = _IncrementalSlackLP(lo, hi, t_cap=scale)
        else:
            self.tol = 1e-9 * (1.0 + float(np.max(hi - lo))) if tol is None else tol
            self.lp = _IncrementalSlackLP(lo, hi)
        self.layers, self.lo, self.hi, self.bounds = layers, lo, hi, bounds
        self.norm, self.output, self.deadline, self.progress, self.prune = norm, output, deadline, progress, prune
        self.K = len(layers) - 1
        self.state = {"best": -math.inf, "x": None, "count": 0, "complete": True, "lps": 0, "pruned": 0}
        self.unst = [np.flatnonzero((l < 0) & (u > 0)) for l, u in bounds]

    def _out_of_time(self) -> bool:
        if self.deadline is not None and time.perf_counter() > self.deadline:
            self.state["complete"] = False
            return True
        return False

    def leaf(self, A, x):
        """A complete pattern: its Jacobian's norm against the best so far."""
        state = self.state
        val = float(operator_norm(self.layers[-1].W @ A, self.norm, self.output))
        state["count"] += 1
        if self.progress is not None:
            self.progress(state["count"])
        if val > state["best"]:
            state["best"], state["x"] = val, x.copy()

    def layer(self, k, A, c, G, H, x, t):
        """A, c: affine map of h_{k-1}; (G, H) rows so far; x, t: interior point and its slack."""
        if self._out_of_time():
            return
        if k == self.K:
            self.leaf(A, x)
            return
        L = self.layers[k]
        l, u = self.bounds[k]
        d = np.where(l >= 0, 1.0, L.slope)
        ui = self.unst[k]
        if L.slope == 1.0:  # identity activation: no kink
            ui = ui[:0]
            d = np.ones_like(d)
        self.neuron(_Layer(k, A, c, L.W @ A, L.W @ c + L.b, ui), 0, d, G, H, x, t)

    def neuron(self, ly: _Layer, pos, d, G, H, x, t):
        """Decide the unstable neuron ``ly.ui[pos]`` of the layer (both signs when the region allows)."""
        if self._out_of_time():
            return
        L = self.layers[ly.k]
        if self.prune and self.state["x"] is not None:
            dmin, dmax = d.copy(), d.copy()
            rest = ly.ui[pos:]
            dmin[rest], dmax[rest] = min(L.slope, 1.0), max(L.slope, 1.0)
            if jacobian_bound(self.layers, ly.k, ly.A, ly.c, (dmin, dmax), None if self.is_global else self.lo,
                              None if self.is_global else self.hi, self.bounds, self.norm,
                              self.output) <= self.state["best"]:
                self.state["pruned"] += 1
                return
        if pos == len(ly.ui):
            self.layer(ly.k + 1, d[:, None] * ly.Az, d * ly.cz, G, H, x, t)
            return
        j = ly.ui[pos]
        g, hh = ly.Az[j], ly.cz[j]
        # exact range of this affine pre-activation over the box: often decides the sign without an LP
        zl, zh = (-math.inf,), (math.inf,)
        if not self.is_global:
            zl, zh = affine_interval(g[None, :], np.array([hh]), self.lo, self.hi)
        if zl[0] > 0 or zh[0] < 0:
            dd = d.copy()
            dd[j] = 1.0 if zl[0] > 0 else L.slope
            self.neuron(ly, pos + 1, dd, G, H, x, t)
            return
        nrm = float(np.linalg.norm(g))
        if nrm <= 1e-13 * (1.0 + float(np.abs(ly.Az).max())):
            # z_j is constant on the region: its sign decides, and if it is 0 the choice does not
            # change the Jacobian (its input row is 0)
            dd = d.copy()
            dd[j] = 1.0 if hh >= 0 else L.slope
            self.neuron(ly, pos + 1, dd, G, H, x, t)
            return
        for sgn in (1.0, -1.0):
            G2, H2 = G + [sgn * g], H + [sgn * hh]
            s_here = sgn * (g @ x + hh) / nrm
            self.lp.push(sgn * g, sgn * hh)
            if s_here > self.tol:
                x2, t2 = x, min(t, s_here)
            else:
                self.state["lps"] += 1
                t2, x2 = self.lp.solve(G2, H2)
                if x2 is None or t2 <= self.tol:
                    self.lp.pop()
                    continue
            dd = d.copy()
            dd[j] = 1.0 if sgn > 0 else L.slope
            self.neuron(ly, pos + 1, dd, G2, H2, x2, t2)
            self.lp.pop()
