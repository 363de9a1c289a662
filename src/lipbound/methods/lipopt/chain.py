"""From a network's dense chain to LiPopt scalar problems: derivative ranges (global slope bounds or
interval pre-activation bounds on a box) and the per-output (l_inf) / per-input (l_1) polynomials."""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from ...errors import Unsupported
from .core import ScalarProblem, gamma

_MARGIN = 1e-12  # relative outward margin on transcendental function values


def _act_value(act, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return act.forward(torch.as_tensor(x, dtype=torch.float64)).numpy()


def _act_deriv(act, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return act.derivative(torch.as_tensor(x, dtype=torch.float64)).numpy()


def _outward(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return lo - _MARGIN * (1 + np.abs(lo)), hi + _MARGIN * (1 + np.abs(hi))


def interval_bounds(chain, lower: np.ndarray, upper: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pre-activation intervals [l, u] of every hidden layer for inputs in the box [lower, upper]
    (interval arithmetic, midpoint-radius form, enlarged by a float64 rounding-error bound).
    Cost: two mat-vecs per layer."""
    xl, xu = np.asarray(lower, dtype=np.float64).ravel(), np.asarray(upper, dtype=np.float64).ravel()
    out = []
    for layer in chain[:-1]:
        W, b = layer.W, layer.b
        mid, rad = (xl + xu) / 2, (xu - xl) / 2
        absW = np.abs(W)
        zc = W @ mid + b
        zr = absW @ rad
        slack = gamma(W.shape[1] + 4) * (absW @ np.abs(mid) + np.abs(b) + zr) + gamma(4) * (np.abs(zc) + zr)
        lo, hi = zc - zr - slack, zc + zr + slack
        out.append((lo, hi))
        act = layer.activation
        # each supported activation is monotone on (-inf, 0] and on [0, inf): the image of [lo, hi] is
        # the hull of the images of lo, hi and (when inside) 0
        vl, vh = _act_value(act, lo), _act_value(act, hi)
        v0 = _act_value(act, np.zeros(1))[0]
        inside = (lo <= 0) & (hi >= 0)
        nl = np.minimum(vl, vh)
        nh = np.maximum(vl, vh)
        nl = np.where(inside, np.minimum(nl, v0), nl)
        nh = np.where(inside, np.maximum(nh, v0), nh)
        xl, xu = _outward(nl, nh)
    return out


def derivative_ranges(act, lo: np.ndarray | None = None, hi: np.ndarray | None = None):
    """Interval [s_lo, s_hi] containing every (Clarke) derivative of ``act`` at pre-activations in
    [lo, hi] (the global slope bounds [alpha, beta] when lo/hi are None). Stable ReLU/leaky neurons get
    exact constants."""
    ga, gb = float(act.alpha), float(act.beta)
    if act.name == "elu":
        ga = min(0.0, float(act.param))
    if lo is None:
        return ga, gb
    n = len(lo)
    name, prm = act.name, float(act.param)
    if name in ("relu", "leaky_relu"):
        neg = 0.0 if name == "relu" else prm
        s_lo = np.full(n, min(neg, 1.0))
        s_hi = np.full(n, max(neg, 1.0))
        pos_side, neg_side = lo > 0, hi < 0
        s_lo[pos_side], s_hi[pos_side] = 1.0, 1.0
        s_lo[neg_side], s_hi[neg_side] = neg, neg
        return s_lo, s_hi
    dl, dh = _act_deriv(act, lo), _act_deriv(act, hi)
    if name in ("tanh", "sigmoid"):
        # the derivative is even and decreasing in |x|, maximal at 0
        d0 = 1.0 if name == "tanh" else 0.25
        s_lo = np.minimum(dl, dh)
        s_hi = np.where((lo <= 0) & (hi >= 0), d0, np.maximum(dl, dh))
    elif name == "softplus":
        if prm <= 0:
            raise Unsupported("softplus with a non-positive beta")
        s_lo, s_hi = dl, dh  # sigmoid(beta x): increasing
    elif name == "elu":
        # alpha e^x on x < 0 (increasing), 1 on x > 0; both one-sided values at 0 when 0 is inside
        a = prm
        left_lo = a * np.exp(np.minimum(lo, 0.0))
        left_hi = a * np.exp(np.minimum(hi, 0.0))
        s_lo = np.where(hi < 0, left_lo, np.where(lo > 0, 1.0, np.minimum(left_lo, 1.0)))
        s_hi = np.where(hi < 0, left_hi, np.where(lo > 0, 1.0, np.maximum(a, 1.0)))
    else:  # pragma: no cover
        raise Unsupported(f"activation {name}")
    s_lo, s_hi = _outward(np.asarray(s_lo, dtype=np.float64), np.asarray(s_hi, dtype=np.float64))
    exact_one = (name == "elu") & (lo > 0)
    s_lo = np.where(exact_one, 1.0, np.maximum(s_lo, ga))
    s_hi = np.where(exact_one, 1.0, np.minimum(s_hi, gb))
    return s_lo, s_hi


def hidden_ranges(chain, region=None) -> tuple[list, list, dict]:
    """Per hidden layer the derivative range as (a, w) with w >= 0 (x = a + w y, y in [0,1]), and a
    summary (how many neurons are constant / stable)."""
    a_list, w_list = [], []
    info = {"stable": 0, "unstable": 0}
    bounds = None
    if region is not None:
        bounds = interval_bounds(chain, region.lower, region.upper)
    for li, layer in enumerate(chain[:-1]):
        n = layer.W.shape[0]
        if bounds is None:
            lo, hi = derivative_ranges(layer.activation)
            lo, hi = np.full(n, lo), np.full(n, hi)
        else:
            lo, hi = derivative_ranges(layer.activation, *bounds[li])
        w = hi - lo
        # round w up so that [a, a + w] contains [lo, hi] in exact arithmetic
        w = np.where(w > 0, np.nextafter(w + 2 * U_eps(hi), np.inf), 0.0)
        a_list.append(lo.astype(np.float64))
        w_list.append(w)
        const = w == 0
        info["stable"] += int(const.sum())
        info["unstable"] += int((~const).sum())
    return a_list, w_list, info


def U_eps(x):
    return np.spacing(np.abs(x))


def scalar_problems(chain, a_list, w_list, norm, output=None):
    """The list of scalar problems whose maxima bound the l_inf (norm=inf: one per output, max of
    ||grad f_j||_1) or l_1 (norm=1: one per input, the transposed chain) Lipschitz constant.
    Returns (problems, labels)."""
    d = len(chain)
    Ws = [layer.W for layer in chain]
    probs = []
    if norm == math.inf:
        outs = range(Ws[-1].shape[0]) if output is None else [output]
        Ms = [sp.csr_matrix(Ws[l].T) for l in range(d - 1)]
        for j in outs:
            n0 = Ws[0].shape[1]
            probs.append(ScalarProblem(Ms, [-np.ones(n0)] + list(a_list), [np.full(n0, 2.0)] + list(w_list),
                                       np.asarray(Ws[-1][j], dtype=np.float64), label=f"output {j}"))
    elif d == 1:
        rows = slice(None) if output is None else slice(output, output + 1)
        W = np.asarray(Ws[0][rows], dtype=np.float64)
        for i in range(W.shape[1]):
            probs.append(ScalarProblem([], [-np.ones(W.shape[0])], [np.full(W.shape[0], 2.0)], W[:, i],
                                       label=f"input {i}"))
    else:
        rows = slice(None) if output is None else slice(output, output + 1)
        first = sp.csr_matrix(Ws[-1][rows])
        Ms = [first] + [sp.csr_matrix(Ws[l]) for l in range(d - 2, 0, -1)]
        n0 = first.shape[0]
        ar, wr = list(reversed(a_list)), list(reversed(w_list))
        for i in range(Ws[0].shape[1]):
            probs.append(ScalarProblem(Ms, [-np.ones(n0)] + ar, [np.full(n0, 2.0)] + wr,
                                       np.asarray(Ws[0][:, i], dtype=np.float64), label=f"input {i}"))
    return probs
