"""Activation-pattern geometry for ReLU / LeakyReLU chains: max-slack interior points of a pattern's
region and the tree search over the patterns realisable in a box. Private module of `exact_mip`."""

from __future__ import annotations

import math
import time

import numpy as np

from ..norms import operator_norm
from ._mip_core import Model, highspy


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
    hs, _ = m.to_highs(cost, maximize=True)
    hs.run()
    if hs.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return -math.inf, None
    sol = np.asarray(hs.getSolution().col_value, dtype=np.float64)
    xs = np.clip(sol[x], lo, hi)
    # the slack actually achieved by the (clipped) float64 point
    if G.shape[0]:
        tt = float(np.min((G @ xs + h) / np.where(norms > 0, norms, 1.0)))
    else:
        tt = diam
    return tt, xs


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


def enumerate_patterns(layers, lo, hi, bounds, norm, output, deadline=None, tol=None, progress=None):
    """Depth-first search over the activation patterns of the unstable neurons (layer by layer), pruning
    a prefix as soon as its region has no interior point in the box (max-slack LP). Returns
    (best value, witness x, #patterns, complete?). The value is max over realisable patterns of the
    pattern Jacobian's operator norm: the exact Lipschitz constant on the box in general position."""
    n0 = lo.size
    if tol is None:
        tol = 1e-9 * (1.0 + float(np.max(hi - lo)))
    K = len(layers) - 1
    state = {"best": -math.inf, "x": None, "count": 0, "complete": True, "lps": 0}
    unst = [np.flatnonzero((l < 0) & (u > 0)) for l, u in bounds]

    def leaf(A, c, x):
        J = layers[-1].W @ A
        val = float(operator_norm(J, norm, output))
        state["count"] += 1
        if progress is not None:
            progress(state["count"])
        if val > state["best"]:
            state["best"], state["x"] = val, x.copy()

    def layer(k, A, c, G, H, x, t):
        """A, c: affine map of h_{k-1}; (G, H) rows so far; x, t: interior point and its slack."""
        if deadline is not None and time.perf_counter() > deadline:
            state["complete"] = False
            return
        if k == K:
            leaf(A, c, x)
            return
        L = layers[k]
        Az, cz = L.W @ A, L.W @ c + L.b
        l, u = bounds[k]
        d = np.where(l >= 0, 1.0, L.slope)
        ui = unst[k]
        if L.slope == 1.0:  # identity activation: no kink
            ui = ui[:0]
            d = np.ones_like(d)

        def neuron(pos, d, G, H, x, t):
            if deadline is not None and time.perf_counter() > deadline:
                state["complete"] = False
                return
            if pos == len(ui):
                layer(k + 1, d[:, None] * Az, d * cz, G, H, x, t)
                return
            j = ui[pos]
            g, hh = Az[j], cz[j]
            # exact range of this affine pre-activation over the box: often decides the sign without an LP
            zmid = float(g @ mid + hh)
            zrad = float(np.abs(g) @ rad) * (1 + 1e-12) + 1e-12 * (1.0 + abs(zmid))
            if zmid - zrad > 0 or zmid + zrad < 0:
                dd = d.copy()
                dd[j] = 1.0 if zmid > 0 else L.slope
                neuron(pos + 1, dd, G, H, x, t)
                return
            nrm = float(np.linalg.norm(g))
            if nrm <= 1e-13 * (1.0 + float(np.abs(Az).max())):
                # z_j is constant on the region: its sign decides, and if it is 0 the choice does not
                # change the Jacobian (its input row is 0)
                dd = d.copy()
                dd[j] = 1.0 if hh >= 0 else L.slope
                neuron(pos + 1, dd, G, H, x, t)
                return
            for sgn in (1.0, -1.0):
                G2, H2 = G + [sgn * g], H + [sgn * hh]
                s_here = sgn * (g @ x + hh) / nrm
                if s_here > tol:
                    x2, t2 = x, min(t, s_here)
                else:
                    state["lps"] += 1
                    t2, x2 = max_slack_point(np.array(G2), np.array(H2), lo, hi)
                    if x2 is None or t2 <= tol:
                        continue
                dd = d.copy()
                dd[j] = 1.0 if sgn > 0 else L.slope
                neuron(pos + 1, dd, G2, H2, x2, t2)

        neuron(0, d, G, H, x, t)

    x0 = (lo + hi) / 2
    mid, rad = (lo + hi) / 2, (hi - lo) / 2
    layer(0, np.eye(n0), np.zeros(n0), [], [], x0, math.inf)
    return state
