"""Activation-pattern geometry for ReLU-like chains (ReLU, LeakyReLU, Abs): max-slack interior points of a pattern's
region and the tree search over the patterns realisable in a box, or in the whole input space (``lo = hi = None``:
the global constant). Private module of `exact.methods`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...branch_and_bound import Domain, Engine
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
    """Search over the activation patterns of the unstable neurons (layer by layer, depth first on the
    branch-and-bound engine), dropping a prefix as soon as its region has no interior point in the box
    (max-slack LP). Returns a dict: "best" (the max over realisable patterns of the pattern Jacobian's
    operator norm: the exact Lipschitz constant on the box in general position, when "complete"), "x" (its
    witness), "count" (patterns), "complete", "lps", "pruned".

    ``lo = hi = None``: the whole input space (``bounds`` then (-inf, inf) for every neuron): the max over
    every activation region of R^n with an interior point, i.e. the exact global Lipschitz constant.
    ``prune``: a prefix whose interval Jacobian bound (`jacobian_bound`) is at most the best value is dropped
    (still exact). ``incumbent``: (value, witness) of a certified lower bound to start from."""
    tree = _PatternTree(layers, lo, hi, bounds, norm, output, tol, progress, prune)
    lower, witness = -math.inf, None
    if incumbent is not None:  # e.g. a sampled gradient
        lower, witness = float(incumbent[0]), np.asarray(incumbent[1], dtype=np.float64)
    # target gap 1: run until every prefix is dropped or complete (the exact value, not an interval)
    engine = Engine(tree, batch=1, deadline=deadline, target_gap=1.0, max_domains=10 ** 9, lower=lower,
                    witness=witness, order="depth")
    tree.engine = engine
    root = tree.root()
    out = engine.run([Domain(tree.bound([(0, root)])[0][0], 0, root)])
    # the dropped domains: pruned prefixes, and the complete patterns not left open or closed
    kept_leaves = len(engine.closed) + sum(1 for e in engine.heap if e[2].data.ly is None)
    pruned = engine.dropped - (tree.count - kept_leaves)
    return {"best": out.lower, "x": out.witness, "count": tree.count, "lps": tree.lps, "pruned": pruned,
            "complete": out.status in ("exact", "converged", "target_gap")}


@dataclass
class _Layer:
    """One hidden layer of a prefix: h_{k-1} = A x + c, its pre-activation Az x + cz, its unstable
    neurons ``ui`` (in order of branching)."""

    k: int
    A: np.ndarray
    c: np.ndarray
    Az: np.ndarray
    cz: np.ndarray
    ui: np.ndarray


@dataclass
class _Prefix:
    """A node of the pattern tree: the neurons of ``ly`` before ``ly.ui[pos]`` decided (derivatives ``d``) and
    the layers below fixed, on the region cut out by ``rows`` ((key, g, h): g x + h > 0 per decision); ``x`` an
    interior point with slack ``t``. ``ly`` None: a complete pattern, whose Jacobian norm is ``value``."""

    ly: _Layer | None
    pos: int
    d: np.ndarray | None
    rows: tuple
    x: np.ndarray
    t: float
    value: float = -math.inf


class _PatternTree:
    """The enumerate search as a `branch_and_bound.Problem` (depth first): a domain is a pattern prefix
    (`_Prefix`, always stopped at an undecided neuron whose sign the box does not decide, or complete); its
    upper bound is `jacobian_bound` (with ``prune``; else +inf), a complete pattern's its exact Jacobian norm,
    which is also a lower bound of the whole problem (witness: the interior point). One HiGHS max-slack LP
    follows the engine's path: rows are popped and pushed to the path of the domain being branched (a depth-first
    path changes by one decision at a time), so each solve warm-starts from the last basis."""

    combine = "max"

    def __init__(self, layers, lo, hi, bounds, norm, output, tol, progress, prune):
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
        self.norm, self.output, self.progress, self.prune = norm, output, progress, prune
        self.K = len(layers) - 1
        self.unst = [np.flatnonzero((l < 0) & (u > 0)) for l, u in bounds]
        self.lp_keys: list = []  # the keys of the rows the LP holds, in order
        self.count = self.lps = 0
        self.engine = None  # set by `enumerate_patterns`: its lower bound is the best value so far

    # ---- the tree ------------------------------------------------------------------------------------
    def root(self) -> _Prefix:
        n0 = self.lo.size
        x = np.zeros(n0) if self.is_global else (self.lo + self.hi) / 2
        return self._advance(self._layer(0, np.eye(n0), np.zeros(n0)), 0, (), x, math.inf)

    def _layer(self, k, A, c):
        """Layer k's prefix state (its derivatives where the bounds decide them) given h_{k-1} = A x + c."""
        L = self.layers[k]
        l, _ = self.bounds[k]
        ui = self.unst[k] if L.slope != 1.0 else self.unst[k][:0]  # identity activation: no kink
        d = np.where(l >= 0, 1.0, L.slope) if L.slope != 1.0 else np.ones(L.W.shape[0])
        return _Layer(k, A, c, L.W @ A, L.W @ c + L.b, ui), d

    def _advance(self, ly_d, pos, rows, x, t) -> _Prefix:
        """From neuron ``pos`` of a layer on, decide every neuron whose sign needs no choice (the exact range of
        its affine pre-activation over the box has one sign; or it is constant on the region), across layers,
        up to the next real choice or the complete pattern."""
        ly, d = ly_d
        while True:
            if pos == len(ly.ui):
                A, c = d[:, None] * ly.Az, d * ly.cz
                if ly.k + 1 == self.K:
                    return _Prefix(None, 0, None, rows, x, t, self._leaf_value(A))
                ly, d = self._layer(ly.k + 1, A, c)
                pos = 0
                continue
            forced = self._forced_derivative(ly, ly.ui[pos])
            if forced is None:
                return _Prefix(ly, pos, d, rows, x, t)
            d = d.copy()
            d[ly.ui[pos]] = forced
            pos += 1

    def _forced_derivative(self, ly: _Layer, j: int):
        """The derivative of neuron j when its sign needs no choice on the prefix's region, else None."""
        slope = self.layers[ly.k].slope
        g, hh = ly.Az[j], ly.cz[j]
        if not self.is_global:  # the exact range of this affine pre-activation over the box
            zl, zh = affine_interval(g[None, :], np.array([hh]), self.lo, self.hi)
            if zl[0] > 0 or zh[0] < 0:
                return 1.0 if zl[0] > 0 else slope
        if float(np.linalg.norm(g)) <= 1e-13 * (1.0 + float(np.abs(ly.Az).max())):
            # constant on the region: its sign decides, and if it is 0 the choice does not change the
            # Jacobian (its input row is 0)
            return 1.0 if hh >= 0 else slope
        return None

    def _leaf_value(self, A) -> float:
        self.count += 1
        if self.progress is not None:
            self.progress(self.count)
        return float(operator_norm(self.layers[-1].W @ A, self.norm, self.output))

    def _sync_lp(self, rows: tuple):
        """Make the LP hold exactly ``rows`` (pop back to the common prefix, push the rest)."""
        keep = 0
        while keep < min(len(rows), len(self.lp_keys)) and self.lp_keys[keep] == rows[keep][0]:
            keep += 1
        for _ in range(len(self.lp_keys) - keep):
            self.lp.pop()
        del self.lp_keys[keep:]
        for key, g, h in rows[keep:]:
            self.lp.push(g, h)
            self.lp_keys.append(key)

    def _child(self, p: _Prefix, sgn: float):
        """The prefix with neuron ``p.ly.ui[p.pos]`` of sign ``sgn``, advanced to its next choice; None when that
        region has no interior point (slack <= tol)."""
        ly, j = p.ly, p.ly.ui[p.pos]
        g, hh = sgn * ly.Az[j], sgn * ly.cz[j]
        rows = p.rows + (((ly.k, int(j), sgn), g, hh),)
        s_here = (g @ p.x + hh) / float(np.linalg.norm(g))
        if s_here > self.tol:  # the parent's interior point is inside: no LP
            x, t = p.x, min(p.t, s_here)
        else:
            self._sync_lp(rows)
            self.lps += 1
            t, x = self.lp.solve(np.array([r[1] for r in rows]), np.array([r[2] for r in rows]))
            if x is None or t <= self.tol:
                return None
        d = p.d.copy()
        d[j] = 1.0 if sgn > 0 else self.layers[ly.k].slope
        return self._advance((ly, d), p.pos + 1, rows, x, t)

    # ---- the engine's hooks ----------------------------------------------------------------------------
    def branch(self, domains: list) -> list:
        out = []
        for dom in domains:
            for sgn in (-1.0, 1.0):  # depth first pops the last child first: the positive side, as before
                child = self._child(dom.data, sgn)
                if child is not None:
                    out.append((0, child, dom.upper))
        return out

    def bound(self, children: list) -> list:
        out = []
        best = self.engine.lower if self.engine is not None else -math.inf
        for _, p in children:
            if p.ly is None:
                out.append((p.value, p))
                continue
            ub = math.inf
            if self.prune and best > -math.inf:  # with no value to beat the bound could drop nothing
                L = self.layers[p.ly.k]
                dmin, dmax = p.d.copy(), p.d.copy()
                rest = p.ly.ui[p.pos:]
                dmin[rest], dmax[rest] = min(L.slope, 1.0), max(L.slope, 1.0)
                box = (None, None) if self.is_global else (self.lo, self.hi)
                ub = jacobian_bound(self.layers, p.ly.k, p.ly.A, p.ly.c, (dmin, dmax), *box, self.bounds,
                                    self.norm, self.output)
            out.append((ub, p))
        return out

    def splittable(self, dom: Domain) -> bool:
        return dom.data.ly is not None

    def lower(self, domains: list):
        """A complete pattern's Jacobian norm, attained on its region (witness: its interior point)."""
        leaves = [d for d in domains if d.data.ly is None]
        if not leaves:
            return None
        best = max(leaves, key=lambda d: d.data.value)
        return best.data.value, best.data.x.copy()

    def empty(self, dom: Domain) -> bool:
        """A complete pattern no better than the best value adds nothing (asked once the engine has offered
        its value as a lower bound; the engine drops a domain at its lower bound itself only when that is
        > 0, so this drops the patterns of value 0 of a network whose best is 0, which it would keep)."""
        return dom.data.ly is None and self.engine is not None and dom.data.value <= self.engine.lower
