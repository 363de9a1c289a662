"""Building blocks of the exact (MIP and enumeration) methods on piecewise-linear dense chains.

Private module of `exact.methods`. Everything here works on a dense chain of ReLU-like activations
``x -> act(W_0 x + b_0) -> ... -> W_K h + b_K`` given as a list of `ChainLayer` and a box
``lo <= x <= hi``. All arithmetic is float64 numpy; LPs and MIPs go through `lipbound.highs`.

A ReLU-like activation (`ActivationFunction.relu_like_slope`: ReLU s = 0, LeakyReLU, Abs s = -1) is
``act(z) = max(z, 0) + s min(z, 0) = s z + (1 - s) relu(z)`` (any real s), and its derivative
``s + (1 - s) a`` with the activation indicator ``a`` in {0, 1}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ... import highs
from ...errors import Unsupported
from ...highs import Status
from ...intervals import PL_MARGIN, activation_image, affine_enclosure, dense_chain_intervals
from ...network import Network, tensor_view


# --------------------------------------------------------------------------------------------------
# The chain and its pre-activation bounds
# --------------------------------------------------------------------------------------------------


@dataclass
class ChainLayer:
    W: np.ndarray  # (n_out, n_in)
    b: np.ndarray  # (n_out,)
    slope: float | None  # negative-side slope of the activation after this layer; None on the last layer
    activation: object = None  # the Activation op after this layer (its table entry: ``activation.fn``)


def relu_chain(net: Network) -> list[ChainLayer]:
    """The network as a dense chain of affine layers with ReLU-like activations max(z, 0) + s min(z, 0)
    (ReLU, LeakyReLU with any slope, Abs: the table's ``relu_like_slope``).

    Raises `Unsupported` for other activations (one kink at 0 is what the encodings split on) or graphs
    that are not chains."""
    layers = net.dense_chain()
    out = []
    for L in layers:
        act = L.activation
        if act is None:
            slope = None
        else:
            slope = act.fn.relu_like_slope
            if slope is None:
                raise Unsupported(f"the {act.describe()} activation is not of the form max(z, 0) + s min(z, 0): exact "
                                  "MIP / enumeration split on one kink at 0 (ReLU, LeakyReLU, Abs)")
            slope = float(slope)
        out.append(ChainLayer(np.asarray(L.W, dtype=np.float64), np.asarray(L.b, dtype=np.float64).ravel(), slope,
                              act))
    return out


def act_value(z, s):
    return np.where(z >= 0, z, s * z)


def act_interval(l, u, layer: ChainLayer):
    """Bounds of the layer's activation over [l, u] elementwise: the table's image, outward-rounded by the
    project's one interval policy (`intervals.activation_image`)."""
    a, b = activation_image(layer.activation.fn, tensor_view(np.asarray(l, dtype=np.float64)),
                            tensor_view(np.asarray(u, dtype=np.float64)))
    return a.numpy(), b.numpy()


def affine_interval(W, b, l, u):
    """The image of the box [l, u] under z = W x + b (``b`` may be None), rigorous in float64: the one
    interval policy of `lipbound.intervals` (midpoint-radius, gamma_{n+6} margin). Cost: two mat-vecs."""
    Wt = tensor_view(W)
    lt = tensor_view(np.asarray(l, dtype=np.float64)).reshape(1, -1)
    ut = tensor_view(np.asarray(u, dtype=np.float64)).reshape(1, -1)
    mid, rad = (ut + lt) / 2, (ut - lt) / 2
    absW = Wt.abs()
    center = mid @ Wt.T
    const_abs = 0.0
    if b is not None:
        bt = tensor_view(np.asarray(b, dtype=np.float64)).reshape(-1)
        center, const_abs = center + bt, bt.abs()
    zl, zh = affine_enclosure(center, lambda v: v @ absW.T, const_abs, int(W.shape[1]), mid, rad)
    return zl.reshape(-1).numpy().copy(), zh.reshape(-1).numpy().copy()


def interval_preact_bounds(layers, lo, hi) -> list[tuple[np.ndarray, np.ndarray]]:
    """Interval (IBP) bounds of every hidden pre-activation over the box (`intervals.dense_chain_intervals`).
    Certified, rigorous in float64. Cost: two products per layer."""
    return dense_chain_intervals(layers, lo, hi)


def crown_preact_bounds(net, region, ctx=None, deadline=None):
    """CROWN pre-activation bounds from `lipbound.crown` when that module exists, else None (through the
    blackboard's cache of ``ctx`` when given: `MethodContext.cached`, key "crown"). ``deadline``: CROWN
    stops there and keeps interval bounds for the neurons not yet refined (then not left in the cache)."""
    try:
        from ... import crown  # noqa: F401  (written by the local-Lipschitz issue)
        fn = crown.preactivation_bounds
    except (ImportError, AttributeError):
        return None
    info: dict = {}
    if ctx is not None and ctx.region is region:
        res = ctx.cached(net, "crown", lambda: fn(net, region, deadline=deadline, info=info))
        if info.get("cut"):
            from ...registry import _region_key

            ctx.shared.get("cache", {}).pop((id(net), _region_key(region), "crown"), None)
    else:
        res = fn(net, region, deadline=deadline, info=info)
    return [(np.asarray(l.detach().cpu().numpy() if hasattr(l, "detach") else l, dtype=np.float64).ravel(),
             np.asarray(u.detach().cpu().numpy() if hasattr(u, "detach") else u, dtype=np.float64).ravel())
            for l, u in res]


def intersect_bounds(a, b):
    if b is None:
        return a
    if len(a) != len(b):
        return a
    out = []
    for (l1, u1), (l2, u2) in zip(a, b):
        if l1.shape != l2.shape:
            return a
        l, u = np.maximum(l1, l2), np.minimum(u1, u2)
        bad = l > u  # numerically crossed: keep the looser of both (sound)
        l = np.where(bad, np.minimum(l1, l2), l)
        u = np.where(bad, np.maximum(u1, u2), u)
        out.append((l, u))
    return out


def repropagate(layers, lo, hi, bounds):
    """Tighten each layer's bounds with the interval image of the previous (tightened) layer."""
    out = []
    l, u = lo, hi
    for L, (bl, bu) in zip(layers[:-1], bounds):
        zl, zu = affine_interval(L.W, L.b, l, u)
        zl, zu = intersect_bounds([(zl, zu)], [(bl, bu)])[0]
        out.append((zl, zu))
        l, u = act_interval(zl, zu, L)
    return out


def unstable_masks(bounds):
    return [(l < 0) & (u > 0) for l, u in bounds]


# --------------------------------------------------------------------------------------------------
# A small sparse model builder passed to HiGHS
# --------------------------------------------------------------------------------------------------


class Model:
    """Columns with bounds / integrality and rows ``rl <= A x <= ru`` accumulated as COO triplets."""

    def __init__(self):
        self.lb, self.ub, self.integer = [], [], []
        self.r, self.c, self.v = [], [], []
        self.rl, self.ru = [], []
        self.n_rows = 0
        self.n_cols = 0

    def add_vars(self, lb, ub, integer=False) -> np.ndarray:
        lb = np.atleast_1d(np.asarray(lb, dtype=np.float64))
        ub = np.atleast_1d(np.asarray(ub, dtype=np.float64))
        n = lb.size
        idx = np.arange(self.n_cols, self.n_cols + n)
        self.lb.append(lb)
        self.ub.append(ub)
        self.integer.append(np.full(n, bool(integer)))
        self.n_cols += n
        return idx

    def add_rows(self, blocks, rl, ru):
        """Rows ``rl <= sum_k M_k x[cols_k] <= ru``; blocks = [(cols_k, M_k (n_rows, len(cols_k)))]."""
        rl = np.atleast_1d(np.asarray(rl, dtype=np.float64))
        ru = np.atleast_1d(np.asarray(ru, dtype=np.float64))
        n = rl.size
        for cols, M in blocks:
            M = np.asarray(M, dtype=np.float64).reshape(n, len(cols))
            rr, cc = np.nonzero(M)
            self.r.append(rr + self.n_rows)
            self.c.append(np.asarray(cols)[cc])
            self.v.append(M[rr, cc])
        self.rl.append(rl)
        self.ru.append(ru)
        self.n_rows += n

    def add_diag_rows(self, blocks, rl, ru):
        """Rows i: ``rl_i <= sum_k d_k[i] x[cols_k[i]] <= ru_i`` (elementwise blocks)."""
        rl = np.atleast_1d(np.asarray(rl, dtype=np.float64))
        ru = np.atleast_1d(np.asarray(ru, dtype=np.float64))
        n = rl.size
        for cols, d in blocks:
            d = np.broadcast_to(np.asarray(d, dtype=np.float64), (n,))
            keep = d != 0
            self.r.append(np.arange(n)[keep] + self.n_rows)
            self.c.append(np.asarray(cols)[keep])
            self.v.append(d[keep])
        self.rl.append(rl)
        self.ru.append(ru)
        self.n_rows += n

    def arrays(self):
        lb = np.concatenate(self.lb) if self.lb else np.zeros(0)
        ub = np.concatenate(self.ub) if self.ub else np.zeros(0)
        integ = np.concatenate(self.integer) if self.integer else np.zeros(0, bool)
        r = np.concatenate(self.r) if self.r else np.zeros(0, int)
        c = np.concatenate(self.c) if self.c else np.zeros(0, int)
        v = np.concatenate(self.v) if self.v else np.zeros(0)
        rl = np.concatenate(self.rl) if self.rl else np.zeros(0)
        ru = np.concatenate(self.ru) if self.ru else np.zeros(0)
        return lb, ub, integ, r, c, v, rl, ru

    def sparse(self):
        import scipy.sparse as sp

        lb, ub, integ, r, c, v, rl, ru = self.arrays()
        A = sp.csc_matrix((v, (r, c)), shape=(self.n_rows, self.n_cols))
        A.sum_duplicates()
        return A, lb, ub, integ, rl, ru

    def to_highs(self, cost, maximize=True, relax=False, options=None):
        """The model as a `lipbound.highs.Problem` (integrality dropped when ``relax``; ``options`` as
        `Problem.set_options` takes them) and its arrays (A, lb, ub, rl, ru) for weak-duality
        certificates (`certified_lp_max`)."""
        A, lb, ub, integ, rl, ru = self.sparse()
        prob = highs.Problem(cost, A, rl, ru, lb, ub, integrality=None if relax else integ,
                             sense="max" if maximize else "min", **(options or {}))
        return prob, (A, lb, ub, rl, ru)


def certified_lp_max(c, A, lb, ub, rl, ru, y):
    """A rigorous upper bound on max c^T x over {rl <= A x <= ru, lb <= x <= ub} (bounded x) from any row
    multipliers y (weak duality, evaluated in float64 with an outward margin). Tries y and -y (sign
    conventions) and returns the smaller bound."""
    best = math.inf
    for sgn in (1.0, -1.0):
        yy = sgn * np.asarray(y, dtype=np.float64)
        yy = np.where(~np.isfinite(rl), np.maximum(yy, 0.0), yy)  # A x <= ru only: y >= 0
        yy = np.where(~np.isfinite(ru), np.minimum(yy, 0.0), yy)  # A x >= rl only: y <= 0
        row = np.where(yy > 0, yy * np.where(np.isfinite(ru), ru, 0.0), yy * np.where(np.isfinite(rl), rl, 0.0))
        red = c - A.T @ yy
        col = np.where(red > 0, red * ub, red * lb)
        terms = np.concatenate([row, col])
        val = float(terms.sum())
        val += 1e-12 * float(np.abs(terms).sum()) + 1e-300
        best = min(best, val)
    return best


# --------------------------------------------------------------------------------------------------
# LP bound tightening (triangle relaxation, layer by layer)
# --------------------------------------------------------------------------------------------------


def _forward_encoding(m: Model, layers, lo, hi, bounds, upto: int, relax: bool):
    """Adds x, z_0..z_{upto-1} (with their activation encodings) to the model. Returns a dict of index arrays.

    Binary encoding when not relax; otherwise the triangle relaxation (a in [0, 1] projected out)."""
    idx = {"x": m.add_vars(lo, hi), "z": [], "r": [], "a": [], "unst": []}
    # h_terms: list of (cols, (pos, scale)) meaning h[pos] += scale * var[cols]
    h_terms = [(idx["x"], (np.arange(len(idx["x"])), np.ones(len(idx["x"]))))]
    for k in range(upto):
        L = layers[k]
        l, u = bounds[k]
        n = L.W.shape[0]
        z = m.add_vars(l, u)
        blocks = [(z, np.eye(n))] + [(cols, -(L.W[:, pos] * sc)) for cols, (pos, sc) in h_terms]
        m.add_rows(blocks, L.b, L.b)
        s = L.slope
        ui = np.flatnonzero((l < 0) & (u > 0))
        dz = np.where(l >= 0, 1.0, s)  # h = dz * z (+ (1-s) r on unstable neurons, where dz = s)
        h_terms = [(z, (np.arange(n), dz))]
        r = a = np.zeros(0, dtype=int)
        if ui.size:
            lu, uu = l[ui], u[ui]
            r = m.add_vars(np.zeros(ui.size), uu)
            zu = z[ui]
            m.add_diag_rows([(r, 1.0), (zu, -1.0)], np.zeros(ui.size), np.full(ui.size, np.inf))  # r >= z
            if relax:
                slope_t = uu / (uu - lu)
                m.add_diag_rows([(r, 1.0), (zu, -slope_t)], np.full(ui.size, -np.inf), -slope_t * lu)  # r <= u(z-l)/(u-l)
            else:
                a = m.add_vars(np.zeros(ui.size), np.ones(ui.size), integer=True)
                m.add_diag_rows([(r, 1.0), (a, -uu)], np.full(ui.size, -np.inf), np.zeros(ui.size))  # r <= u a
                m.add_diag_rows([(r, 1.0), (zu, -1.0), (a, -lu)], np.full(ui.size, -np.inf), -lu)  # r <= z - l(1-a)
            if s != 1.0:
                h_terms.append((r, (ui, np.full(ui.size, 1.0 - s))))
        idx["z"].append(z)
        idx["r"].append(r)
        idx["a"].append(a)
        idx["unst"].append(ui)
    idx["h_terms"] = h_terms
    return idx


def _h_objective(W_row, h_terms, n_cols):
    """Cost vector of W_row . h where h = sum over terms (cols, (pos, scale)) of scale * col -> h[pos]."""
    cost = np.zeros(n_cols)
    for cols, (pos, sc) in h_terms:
        np.add.at(cost, cols, W_row[pos] * sc)
    return cost


def _unstable_layers(layers, lo, hi, bounds, start: int, relax: bool):
    """For each hidden layer k >= max(1, start) with unstable neurons, once the bounds tightened so far are
    re-propagated (into the list ``bounds``, in place): k, its bounds (l, u) (arrays the caller tightens in
    place), its unstable neurons, and a fresh model with the encoding (index arrays) of the layers before
    k, relaxed or exact (binary)."""
    for k in range(max(1, start), len(layers) - 1):
        bounds[:] = repropagate(layers, lo, hi, bounds)
        l, u = bounds[k]
        todo = np.flatnonzero((l < 0) & (u > 0))
        if todo.size:
            m = Model()
            yield k, l, u, todo, m, _forward_encoding(m, layers, lo, hi, bounds, k, relax=relax)


def _settles(l, u, j, sense: float, bnd: float) -> bool:
    """Applies a bound ``bnd`` on sense * z_j (an upper bound on z_j when sense > 0, minus a lower bound
    otherwise); True once it settles the sign of z_j (nothing left to tighten)."""
    if sense > 0:
        u[j] = min(u[j], bnd)
        return u[j] <= 0
    l[j] = max(l[j], -bnd)
    return l[j] >= 0


def lp_tighten(layers, lo, hi, bounds, deadline=None, max_lps: int | None = None, progress=None):
    """Tightens the pre-activation bounds of unstable neurons, layer after layer, by LPs over the triangle
    relaxation of the previous layers. Every new bound is certified from the LP duals (weak duality in
    float64), so the result is sound regardless of solver tolerances. Cost: two LPs per unstable neuron."""
    import time

    bounds = [(l.copy(), u.copy()) for l, u in bounds]
    n_lps = 0
    for k, l, u, todo, m, idx in _unstable_layers(layers, lo, hi, bounds, 1, relax=True):
        W = layers[k].W
        prob, (A, clb, cub, rl, ru) = m.to_highs(np.zeros(m.n_cols), maximize=True)
        for j in todo:
            if deadline is not None and time.perf_counter() > deadline:
                return repropagate(layers, lo, hi, bounds), False
            if max_lps is not None and n_lps >= max_lps:
                return repropagate(layers, lo, hi, bounds), False
            cost = _h_objective(W[j], idx["h_terms"], m.n_cols)
            for sense in (1.0, -1.0):  # max z_j, then min z_j (= -max -z_j)
                r = prob.set_cost(sense * cost).solve()
                n_lps += 1
                if r.status != Status.OPTIMAL or r.row_dual is None:
                    continue
                bnd = certified_lp_max(sense * cost, A, clb, cub, rl, ru, r.row_dual) + sense * layers[k].b[j]
                if _settles(l, u, j, sense, bnd):
                    break
            if progress is not None:
                progress(n_lps)
    return repropagate(layers, lo, hi, bounds), True


# --------------------------------------------------------------------------------------------------
# Switched linear chains: the gradient (backward) or a Jacobian column (forward) as a MIP
# --------------------------------------------------------------------------------------------------


def stage_plan(layers, mode: str, vec: np.ndarray):
    """The switched chain: start vector (constant) at the first switched layer, the order of the
    switched hidden layers, and the matrices after each switch (the last one gives the result).

    mode 'backward': vec = c (output weights), result = grad_x <c, f(x)>.
    mode 'forward': vec = e_i (input direction), result = J e_i."""
    K = len(layers) - 1
    if mode == "backward":
        v0 = layers[K].W.T @ vec
        order = list(range(K - 1, -1, -1))
        mats = [layers[i].W.T for i in order]  # after switch at layer i: W_i^T
    else:
        v0 = layers[0].W @ vec
        order = list(range(K))
        mats = [layers[i + 1].W for i in order]
    return v0, order, mats


def stage_starts(layers, mode: str, vecs: np.ndarray) -> np.ndarray:
    """`stage_plan`'s start vectors of many directions (rows of ``vecs``, one mode) in one matrix product."""
    return vecs @ layers[-1].W if mode == "backward" else vecs @ layers[0].W.T


def derivative_sets(bounds, slopes):
    """Per hidden layer: (dmin, dmax) of the activation derivative over the box, from the bounds."""
    out = []
    for (l, u), s in zip(bounds, slopes):
        d_act = np.where(l >= 0, 1.0, np.where(u <= 0, s, np.nan))
        lo_d = np.where(np.isnan(d_act), min(s, 1.0), d_act)
        hi_d = np.where(np.isnan(d_act), max(s, 1.0), d_act)
        out.append((lo_d, hi_d))
    return out


def _switch_interval(vl, vh, dl, dh):
    """{d v : d in [dl, dh], v in [vl, vh]} elementwise, widened by `intervals.PL_MARGIN` relative for the
    rounding of the products (the interval policy of piecewise-linear activation values)."""
    cands = [dl * vl, dl * vh, dh * vl, dh * vh]
    lo, hi = np.minimum.reduce(cands), np.maximum.reduce(cands)
    return lo - PL_MARGIN * np.abs(lo), hi + PL_MARGIN * np.abs(hi)


def chain_intervals(v0, order, mats, dsets):
    """Interval bounds of the vectors entering each switch (v_t) and of the result."""
    vs = [(v0, v0)]
    vl, vh = v0, v0
    for t, i in enumerate(order):
        ul, uh = _switch_interval(vl, vh, *dsets[i])
        vl, vh = affine_interval(mats[t], None, ul, uh)
        vs.append((vl, vh))
    return vs  # vs[t] enters switch t; vs[-1] is the result


@dataclass
class MipModel:
    model: Model
    cost: np.ndarray
    idx: dict
    obj_rows: tuple  # (cols, coefs) of the objective, for a cutoff row
    n_binaries: int
    n_abs_binaries: int
    trivial_bound: float
    extra: dict = field(default_factory=dict)


def build_mip(layers, lo, hi, bounds, mode: str, vec, select, objective: str = "sum_abs", chain_ivs=None):
    """The LipMIP program for one direction: maximise sum_j |r_j| over selected coordinates of the
    switched-chain result r (the input gradient of <c, f> in backward mode, J e_i in forward mode),
    sharing the binaries of the forward encoding. Returns a `MipModel`."""
    if objective != "sum_abs":
        raise ValueError(objective)
    m = Model()
    fw = _forward_encoding(m, layers, lo, hi, bounds, len(layers) - 1, relax=False)
    slopes = [L.slope for L in layers[:-1]]
    dsets = derivative_sets(bounds, slopes)
    v0, order, mats = stage_plan(layers, mode, vec)
    ivs = chain_intervals(v0, order, mats, dsets) if chain_ivs is None else chain_ivs
    res, stage_cols = _switched_chain(m, fw, bounds, slopes, v0, order, mats, ivs, select)
    rl, rh = ivs[-1]
    sel = np.asarray(select)
    obj_cols, obj_coef, abs_cols, trivial = _sum_abs_objective(m, res, rl[sel], rh[sel])
    absb, abst, abspos = abs_cols
    cost = np.zeros(m.n_cols)
    np.add.at(cost, np.asarray(obj_cols, dtype=int), np.asarray(obj_coef))
    n_bin = int(sum(len(a) for a in fw["a"]))
    idx = dict(fw)
    idx.update(result=res, abs_b=np.asarray(absb, dtype=int), abs_t=np.asarray(abst, dtype=int))
    return MipModel(m, cost, idx, (np.asarray(obj_cols, dtype=int), np.asarray(obj_coef)), n_bin, len(absb), trivial,
                    extra={"order": order, "mats": mats, "v0": v0, "select": sel, "mode": mode,
                           "stage_cols": stage_cols, "abs_pos": abspos, "ivs": ivs})


def _switched_chain(m: Model, fw: dict, bounds, slopes, v0, order, mats, ivs, select):
    """Adds the switched chain v_{t+1} = M_t diag(d) v_t to the model: the derivative d of an unstable neuron
    is s + (1 - s) a with the forward encoding's binary a, and the product v a is linearised exactly
    (McCormick on a binary) from the chain intervals ``ivs``. Returns (result columns, per-stage columns)."""
    # current vector: either constant (np array) or variable columns
    cur_const = v0
    cur_cols = None
    stage_cols = []
    for t, i in enumerate(order):
        l, u = bounds[i]
        s = slopes[i]
        act = l >= 0
        unst = (l < 0) & (u > 0)
        d_fixed = np.where(act, 1.0, s)  # derivative on stable neurons (unstable: s + (1-s) a)
        ui = fw["unst"][i]
        a = fw["a"][i]
        M = mats[t]
        nxt_l, nxt_h = ivs[t + 1]
        if t == len(order) - 1:
            sel = np.asarray(select)
            M = M[sel]
            nxt_l, nxt_h = nxt_l[sel], nxt_h[sel]
        nxt = m.add_vars(nxt_l, nxt_h)
        stage_cols.append({"v": nxt, "w": None})
        blocks = [(nxt, np.eye(len(nxt)))]
        rhs = np.zeros(len(nxt))
        if cur_cols is None:
            # u = d_fixed * v (stable) ; unstable: s v + (1-s) v a  -> constant part and a-part
            uconst = np.where(unst, s * cur_const, d_fixed * cur_const)
            rhs = M @ uconst
            if ui.size:
                blocks.append((a, -M[:, ui] * ((1.0 - s) * cur_const[ui])))
        else:
            vl, vh = ivs[t]
            coef_v = np.where(unst, s, d_fixed)
            blocks.append((cur_cols, -M * coef_v))
            if ui.size:
                vlu, vhu = vl[ui], vh[ui]
                w = m.add_vars(np.minimum(vlu, 0.0), np.maximum(vhu, 0.0))
                stage_cols[-1]["w"] = w
                vu = cur_cols[ui]
                k_ = ui.size
                ninf, pinf, zero = np.full(k_, -np.inf), np.full(k_, np.inf), np.zeros(k_)
                m.add_diag_rows([(w, 1.0), (a, -vhu)], ninf, zero)  # w <= vh a
                m.add_diag_rows([(w, 1.0), (a, -vlu)], zero, pinf)  # w >= vl a
                m.add_diag_rows([(w, 1.0), (vu, -1.0), (a, -vlu)], ninf, -vlu)  # w <= v - vl (1-a)
                m.add_diag_rows([(w, 1.0), (vu, -1.0), (a, -vhu)], -vhu, pinf)  # w >= v - vh (1-a)
                blocks.append((w, -M[:, ui] * (1.0 - s)))
        m.add_rows(blocks, rhs, rhs)
        cur_cols = nxt
        cur_const = None
    return cur_cols, stage_cols


def _sum_abs_objective(m: Model, res, rl, rh):
    """The objective sum_j |r_j| over the result columns ``res`` with intervals [rl, rh]: r_j or -r_j when its
    sign is known, else t_j <= |r_j| with a binary b_j (big-M from the interval). Returns (objective columns,
    their coefficients, (binaries, t columns, positions) of the |.| encodings, the interval bound sum max|r_j|)."""
    obj_cols, obj_coef = [], []
    absb, abst, abspos = [], [], []
    for j in range(len(res)):
        if rl[j] >= 0:
            obj_cols.append(res[j]); obj_coef.append(1.0)
        elif rh[j] <= 0:
            obj_cols.append(res[j]); obj_coef.append(-1.0)
        else:
            M1, M2 = -rl[j], rh[j]
            tj = m.add_vars(0.0, max(M1, M2))[0]
            bj = m.add_vars(0.0, 1.0, integer=True)[0]
            # t <= g + 2|l| (1 - b) ; t <= -g + 2 h b
            m.add_rows([([tj, res[j], bj], np.array([[1.0, -1.0, 2 * M1]]))], -np.inf, 2 * M1)
            m.add_rows([([tj, res[j], bj], np.array([[1.0, 1.0, -2 * M2]]))], -np.inf, 0.0)
            obj_cols.append(tj); obj_coef.append(1.0)
            absb.append(bj); abst.append(tj); abspos.append(j)
    trivial = float(np.maximum(np.abs(rl), np.abs(rh)).sum())
    return obj_cols, obj_coef, (absb, abst, abspos), trivial


def _reinterval(ivs, t0, order, mats, dsets):
    """Re-propagate the chain intervals after stage t0 was tightened (intersecting with the old ones)."""
    ivs = list(ivs)
    for t in range(t0, len(order)):
        vl, vh = ivs[t]
        ul, uh = _switch_interval(vl, vh, *dsets[order[t]])
        nl, nh = affine_interval(mats[t], None, ul, uh)
        ol, oh = ivs[t + 1]
        ivs[t + 1] = (np.maximum(nl, ol), np.minimum(nh, oh))
    return ivs


def tighten_chain_bounds(layers, lo, hi, bounds, mode, vec, select, deadline=None):
    """LP tightening of the switched-chain (gradient / tangent) bounds, stage after stage: max and min of
    each chain variable that enters a product with an unstable neuron's binary, and of each result
    coordinate, over the LP relaxation of the full program. Certified by the LP duals (weak duality in
    float64). Returns (chain intervals, number of LPs, finished?)."""
    import time

    slopes = [L.slope for L in layers[:-1]]
    dsets = derivative_sets(bounds, slopes)
    v0, order, mats = stage_plan(layers, mode, vec)
    ivs = chain_intervals(v0, order, mats, dsets)
    sel = np.asarray(select)
    n_lps = 0
    for t in range(1, len(order) + 1):
        last = t == len(order)
        if last:
            targets = sel  # result coordinates (positions in the full result vector)
        else:
            l, u = bounds[order[t]]
            targets = np.flatnonzero((l < 0) & (u > 0))
        if targets.size == 0:
            continue
        if deadline is not None and time.perf_counter() > deadline:
            return ivs, n_lps, False
        mm = build_mip(layers, lo, hi, bounds, mode, vec, select, chain_ivs=ivs)
        cols = mm.extra["stage_cols"][t - 1]["v"]
        prob, (A, clb, cub, rl, ru) = mm.model.to_highs(np.zeros(mm.model.n_cols), maximize=True, relax=True)
        vl, vh = ivs[t][0].copy(), ivs[t][1].copy()
        for pos_k, j in enumerate(targets):
            if deadline is not None and time.perf_counter() > deadline:
                ivs[t] = (vl, vh)
                return _reinterval(ivs, t, order, mats, dsets), n_lps, False
            col = cols[pos_k] if last else cols[j]
            for sense in (1.0, -1.0):
                cost = np.zeros(mm.model.n_cols)
                cost[col] = sense
                r = prob.set_cost(cost).solve()
                n_lps += 1
                if r.status != Status.OPTIMAL or r.row_dual is None:
                    continue
                bnd = certified_lp_max(cost, A, clb, cub, rl, ru, r.row_dual)
                if sense > 0:
                    vh[j] = min(vh[j], bnd)
                else:
                    vl[j] = max(vl[j], -bnd)
            if vl[j] > vh[j]:  # numerically crossed: keep the old interval (sound)
                vl[j], vh[j] = ivs[t][0][j], ivs[t][1][j]
        ivs[t] = (vl, vh)
        ivs = _reinterval(ivs, t, order, mats, dsets)
    return ivs, n_lps, True


def full_solution(mm: MipModel, layers, x: np.ndarray, bounds) -> np.ndarray:
    """A complete MIP solution vector at the point x (its true activation pattern), for a warm start."""
    sol = np.zeros(mm.model.n_cols)
    lb, ub, *_ = mm.model.arrays()
    idx = mm.idx
    sol[idx["x"]] = x
    h = x
    pats = []
    for k, L in enumerate(layers[:-1]):
        z = L.W @ h + L.b
        l, u = bounds[k]
        sol[idx["z"][k]] = z
        ui = idx["unst"][k]
        a = (z[ui] > 0).astype(float)
        sol[idx["r"][k]] = np.maximum(z[ui], 0.0)
        sol[idx["a"][k]] = a
        d = np.where(z > 0, 1.0, L.slope)
        d = np.where(l >= 0, 1.0, np.where(u <= 0, L.slope, d))
        pats.append(d)
        h = act_value(z, L.slope)
    # now the switched chain: the columns were allocated in order nxt, (w) per stage
    order, mats, v0, sel = mm.extra["order"], mm.extra["mats"], mm.extra["v0"], mm.extra["select"]
    # recover the columns by replaying the allocation order: result columns are known only for the last
    # stage, so recompute all chain vectors and fill by matching the stored per-stage indices
    v = v0
    for t, i in enumerate(order):
        uvec = pats[i] * v
        nv = mats[t] @ uvec
        if t == len(order) - 1:
            nv = nv[sel]
        cols = mm.extra["stage_cols"][t]
        sol[cols["v"]] = nv
        if t > 0 and cols.get("w") is not None and len(cols["w"]):
            ui = idx["unst"][i]
            a = sol[idx["a"][i]]
            sol[cols["w"]] = a * v[ui]
        v = nv
    res = v
    for tj, bj, j in zip(mm.idx["abs_t"], mm.idx["abs_b"], mm.extra["abs_pos"]):
        sol[tj] = abs(res[j])
        sol[bj] = 1.0 if res[j] >= 0 else 0.0
    return np.clip(sol, lb, ub)


def mip_tighten(layers, lo, hi, bounds, deadline=None, per_solve: float = 1.0, start_layer: int = 2,
                progress=None):
    """Tightens unstable pre-activation bounds by MIPs over the exact (binary) encoding of the previous
    layers, each with a short time limit: the solver's dual bound, plus a margin of 1e-6 relative and
    1e-7 absolute for its tolerances, replaces the bound (sound up to those tolerances, like the MIP's own
    dual bound). Cost: two small MIPs per unstable neuron of layers >= start_layer."""
    import time

    bounds = [(l.copy(), u.copy()) for l, u in bounds]
    n_mips = 0
    for k, l, u, todo, m, idx in _unstable_layers(layers, lo, hi, bounds, start_layer, relax=False):
        W = layers[k].W
        opts = {"mip_rel_gap": 1e-4, "mip_abs_gap": 1e-7, "mip_heuristic_run_rins": False,
                "mip_heuristic_run_rens": False}
        prob, _ = m.to_highs(np.zeros(m.n_cols), maximize=True, options=opts)
        if not prob.is_mip:
            # no unstable neuron below layer k: the program is an LP, which lp_tighten already solved with a
            # certified (dual) bound; HiGHS's mip_dual_bound of an LP is meaningless (0.0)
            continue
        for j in todo:
            cost = _h_objective(W[j], idx["h_terms"], m.n_cols)
            for sense in (1.0, -1.0):
                if deadline is not None:
                    left = deadline - time.perf_counter()
                    if left <= 0.05:
                        return repropagate(layers, lo, hi, bounds), False
                    prob.set_options(time_limit=float(min(per_solve, left)))
                else:
                    prob.set_options(time_limit=float(per_solve))
                # only the sign matters for stability; stop as soon as the bound crosses 0
                r = prob.set_cost(sense * cost).solve()
                n_mips += 1
                dual = r.dual_bound
                if r.status == Status.INFEASIBLE or dual is None or not math.isfinite(dual):
                    continue
                bnd = dual + 1e-6 * abs(dual) + 1e-7 + sense * layers[k].b[j]
                if _settles(l, u, j, sense, bnd):
                    break
            if l[j] > u[j]:
                l[j], u[j] = min(l[j], u[j]), max(l[j], u[j])
            if progress is not None:
                progress(n_mips)
    return repropagate(layers, lo, hi, bounds), True
