"""The Shor SDP relaxation of the norm-gradient polynomial (LiPopt's baseline), with a float64
certificate check.

In +-1 variables z_j = 2 y_j - 1 (y the [0,1]-normalised variables of `core.Poly`) the
polynomial p has monomials of degree <= d with at most one variable per layer. With one hidden layer
(d = 2) p is a quadratic form in (1, z); with two (d = 3) each cubic monomial z_a z_b z_c (layers
0, 1, 2) is written z_a w_bc with the lifted product w_bc = z_b z_c (also +-1). So p = const + Z^T Q Z
on Z = (1, z, w) in {+-1}^N with the consistency constraints Z_0 Z_w = Z_b Z_c.

We solve the dual SDP   min sum(y)  s.t.  Diag(y) - Q - sum_e mu_e E_e  is PSD
(E_e = the consistency constraint matrices) with CVXPY + SCS and then certify in float64:
for every feasible +-1 vector Z, Z^T Q Z = Z^T (Q + sum mu E) Z <= sum(y) - N lambda_min(M), with
lambda_min computed by a symmetric eigen-solver and lowered by a rounding-error bound.
"""

from __future__ import annotations

import math
import time

import numpy as np
import scipy.sparse as sp

from ... import cvx
from ...intervals import U, gamma
from .core import Poly


def pm_polynomial(poly: Poly):
    """p in +-1 variables: y^mu = 2^{-|mu|} sum_{nu <= mu} z^nu. Returns dict monomial tuple -> coef,
    and a bound on the rounding error of all coefficients together."""
    out: dict[tuple, float] = {}
    absout: dict[tuple, float] = {}
    for mon, c, e in zip(poly.monos, poly.coef, poly.abs_err):
        vars_ = [int(v) for v in mon if v >= 0]
        scale = 2.0 ** -len(vars_)
        r = len(vars_)
        for mask in range(2 ** r):
            nu = tuple(vars_[i] for i in range(r) if (mask >> i) & 1)
            out[nu] = out.get(nu, 0.0) + c * scale
            absout[nu] = absout.get(nu, 0.0) + (abs(c) + e) * scale
    n_terms = 2 ** poly.monos.shape[1] + 4
    err = sum(gamma(n_terms) * v for v in absout.values()) + float(np.sum(poly.abs_err))
    return out, err


def shor_matrices(poly: Poly):
    """Q (dense symmetric N x N on Z = (1, z, w)), the constant, the lifted pairs and the consistency
    constraint list [(w index, b, c)]."""
    pm, err = pm_polynomial(poly)
    m = poly.m
    lov = poly.layer_of_var
    pairs = sorted({(nu[1], nu[2]) for nu in pm if len(nu) == 3})
    if any(len(nu) > 3 for nu in pm):
        raise ValueError("the Shor relaxation here handles at most two hidden layers")
    pair_index = {pq: 1 + m + i for i, pq in enumerate(pairs)}
    N = 1 + m + len(pairs)
    Q = np.zeros((N, N))
    const = 0.0

    def add(i, j, c):
        if i == j:
            Q[i, i] += c
        else:
            Q[i, j] += c / 2
            Q[j, i] += c / 2

    for nu, c in pm.items():
        if len(nu) == 0:
            const += c
        elif len(nu) == 1:
            add(0, 1 + nu[0], c)
        elif len(nu) == 2:
            add(1 + nu[0], 1 + nu[1], c)
        else:
            add(1 + nu[0], pair_index[(nu[1], nu[2])], c)
    cons = [(pair_index[pq], 1 + pq[0], 1 + pq[1]) for pq in pairs]
    del lov
    return Q, const, cons, err


def _cons_apply(cons, N):
    """Sparse map mu -> sum_e mu_e E_e (symmetric N x N)."""
    rows, cols, vals = [], [], []
    for e, (w, b, c) in enumerate(cons):
        for (i, j, v) in ((0, w, 0.5), (w, 0, 0.5), (b, c, -0.5), (c, b, -0.5)):
            rows.append(i * N + j)
            cols.append(e)
            vals.append(v)
    return sp.csr_matrix((vals, (rows, cols)), shape=(N * N, len(cons)))


def eig_dual(Q: np.ndarray, cons, time_limit: float | None = None, max_iter: int = 400):
    """First-order solution of the dual SDP as an eigenvalue optimisation: minimise the convex function
    F(y, mu) = sum(y) - N lambda_min(Diag(y) - Q - sum mu_e E_e)  (every (y, mu) gives a valid bound)
    through its soft-min smoothing  sum(y) + N tau log sum_i exp(-lambda_i / tau)  >= F, with L-BFGS and
    a decreasing tau. Returns (y, mu, iterations). Cost: one symmetric eigendecomposition per step."""
    from scipy.optimize import minimize

    N = Q.shape[0]
    T = _cons_apply(cons, N) if cons else None
    ne = len(cons)
    t0 = time.perf_counter()
    scale = max(1e-12, float(np.abs(Q).sum(1).max()))

    def matrix(x):
        M = np.diag(x[:N]) - Q
        if ne:
            M = M - (T @ x[N:]).reshape(N, N)
        return M

    def true_F(x):
        return float(np.sum(x[:N]) - N * np.linalg.eigvalsh(matrix(x))[0])

    class Stop(Exception):
        pass

    def smoothed(x, tau):
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            raise Stop
        lam, V = np.linalg.eigh(matrix(x))
        z = -(lam - lam[0]) / tau
        w = np.exp(z)
        S = w.sum()
        p = w / S
        val = float(np.sum(x[:N]) - N * lam[0] + N * tau * math.log(S))
        # d/dM [tau log sum exp(-lambda/tau)] = -sum p_k v_k v_k^T
        G = -(V * p) @ V.T
        grad_y = 1.0 + N * np.diag(G)
        grad = [grad_y]
        if ne:
            grad.append(-N * (T.T @ G.ravel()))
        return val, np.concatenate(grad)

    x = np.concatenate([np.abs(Q).sum(1) + np.abs(np.diag(Q)), np.zeros(ne)])
    best_x, best = x.copy(), true_F(x)
    iters = 0
    eig_dual.stopped = False
    for tau in (1e-2 * scale, 1e-3 * scale, 1e-4 * scale, 1e-5 * scale):
        try:
            res = minimize(smoothed, x, args=(tau,), jac=True, method="L-BFGS-B",
                           options={"maxiter": max_iter, "maxcor": 20})
            x = res.x
            iters += int(res.nit)
        except Stop:
            eig_dual.stopped = True
            break
        f = true_F(x)
        if f < best:
            best, best_x = f, x.copy()
    return best_x[:N], best_x[N:], iters


def shor_bound(poly: Poly, time_limit: float | None = None, eps: float = 1e-6, max_iters: int = 50_000,
               solver: str = "SCS"):
    """Certified upper bound on max p (over the box of the polynomial) from the Shor SDP.
    Returns (value, info). Cost: SCS on an N x N PSD cone, N = 1 + #variables + #lifted pairs."""
    import cvxpy as cp

    t0 = time.perf_counter()
    Q, const, cons, err = shor_matrices(poly)
    N = Q.shape[0]
    info = {"order": N, "lifted_pairs": len(cons)}
    if N == 1:
        return const + err, info
    if solver == "EIG":
        yv, mv, iters = eig_dual(Q, cons, time_limit)
        info["solver"] = "eigenvalue optimisation (L-BFGS on the smoothed dual)"
        info["iterations"] = iters
        info["stopped_on_time"] = bool(getattr(eig_dual, "stopped", False))
        info["solve_time"] = time.perf_counter() - t0
        return _certify(Q, const, cons, err, yv, mv, info)
    y = cp.Variable(N)
    expr = cp.diag(y) - Q
    mu = None
    if cons:
        # E_e = sym(e_0 e_w^T) - sym(e_b e_c^T) is symmetric: its row-major vec is its column-major vec
        T = _cons_apply(cons, N)
        mu = cp.Variable(len(cons))
        expr = expr - cp.reshape(T @ mu, (N, N), order="F")
    prob = cp.Problem(cp.Minimize(cp.sum(y)), [expr >> 0])
    options = {"eps_abs": eps, "eps_rel": eps, "max_iters": max_iters} if solver == "SCS" else {}
    info["solver"] = solver
    error = cvx.solve(prob, solver, options=options, time_limit=time_limit, min_time=0.1)
    if error is not None:
        info["solver_error"] = error
        return None, info
    info["solver_status"] = prob.status
    info["sdp_value"] = None if prob.value is None else float(prob.value) + const
    info["solve_time"] = time.perf_counter() - t0
    if y.value is None:
        return None, info
    yv = np.asarray(y.value, dtype=np.float64)
    mv = np.asarray(mu.value, dtype=np.float64) if mu is not None and mu.value is not None else np.zeros(len(cons))
    return _certify(Q, const, cons, err, yv, mv, info)


def _certify(Q, const, cons, err, yv, mv, info):
    """sum(y) + const - N lambda_min(M) with lambda_min lowered by a rounding-error bound (valid for
    every y, mu)."""
    N = Q.shape[0]
    M = np.diag(yv) - Q
    if len(cons):
        for e, (w, b, c) in enumerate(cons):
            M[0, w] -= 0.5 * mv[e]
            M[w, 0] -= 0.5 * mv[e]
            M[b, c] += 0.5 * mv[e]
            M[c, b] += 0.5 * mv[e]
    if not np.isfinite(M).all():
        return None, info
    lam_min = float(np.linalg.eigvalsh(M)[0])
    # eigvalsh is backward stable: computed eigenvalues are exact for M + E, ||E||_2 <= c N u ||M||_F;
    # the entries of M carry their own rounding (a few ulps each)
    fro = float(np.linalg.norm(M, "fro"))
    delta = (10 * N + 10) * U * fro + gamma(8) * fro
    lam_cert = lam_min - delta
    total = float(np.sum(yv)) + const - N * lam_cert
    total += gamma(N + 8) * (float(np.sum(np.abs(yv))) + abs(const) + N * abs(lam_cert)) + err
    info["lambda_min"] = lam_min
    info["correction"] = total - (float(np.sum(yv)) + const)
    return float(total), info
