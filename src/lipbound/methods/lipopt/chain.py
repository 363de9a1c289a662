"""From a network's dense chain to LiPopt scalar problems: derivative ranges (global slope bounds or
the table's derivative ranges on interval pre-activation bounds of a box) and the per-output (l_inf) /
per-input (l_1) polynomials."""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch

from ...intervals import dense_chain_intervals
from .core import ScalarProblem


def derivative_ranges(act, lo: np.ndarray | None = None, hi: np.ndarray | None = None):
    """Interval [s_lo, s_hi] containing every (Clarke) derivative of the activation op ``act`` at
    pre-activations in [lo, hi]: the global slope bounds [alpha, beta] when lo/hi are None, else the
    table's `derivative_range` (sound, outward-rounded; exact constants on the linear pieces of
    piecewise-linear activations, e.g. stable ReLU neurons)."""
    if lo is None:
        return float(act.alpha), float(act.beta)
    s_lo, s_hi = act.fn.derivative_range(torch.as_tensor(np.asarray(lo, dtype=np.float64)),
                                         torch.as_tensor(np.asarray(hi, dtype=np.float64)))
    return s_lo.numpy().astype(np.float64), s_hi.numpy().astype(np.float64)


def hidden_ranges(chain, region=None) -> tuple[list, list, dict]:
    """Per hidden layer the derivative range as (a, w) with w >= 0 (x = a + w y, y in [0,1]), and a
    summary (how many neurons are constant / stable)."""
    a_list, w_list = [], []
    info = {"stable": 0, "unstable": 0}
    bounds = None
    if region is not None:
        bounds = dense_chain_intervals(chain, region.lower, region.upper)
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
