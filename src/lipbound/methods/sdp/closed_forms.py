"""The closed-form multiplier policies of the LipSDP family and the member table of eclipse-family.

A policy maps a `certificate.Stage` (K_k = m^2 W_k M_{k-1}^{-1} W_k^T and the next weight) to the
diagonal multipliers L_k; `certificate.run_chain` certifies whatever it returns, so a policy only has to
be good, never correct.
  G1 / ECLipsE-Fast  L_k = c I / lambda_max(K_k)                         (`policy_g1`, c = 1/2: Fast)
  G2                 L_k = c P / lambda_max(P^1/2 K_k P^1/2), P diagonal   (`policy_g2`: balance, jacobi,
                                                                           gershgorin scalings)
  G3                 L_k = s P, s minimising the next layer's lambda_max   (`policy_g3`, golden section)
Notation: ../shared/reference/l2-sdp-family.md, section 2.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg as sla

from .certificate import Policy, Stage
from .prepare import lam_max


def policy_g1(c: float = 0.5, exact: bool = False) -> Policy:
    """G1 / ECLipsE-Fast (c = 1/2): L_k = c / lambda_max(K_k) * I."""

    def pol(st: Stage):
        mu = lam_max(st.K, exact=exact)
        if mu <= 0:
            return np.ones(st.K.shape[0])
        return np.full(st.K.shape[0], c / mu)

    return pol


def _diag_choice(st: Stage, kind: str) -> np.ndarray:
    d = np.diag(st.K).copy()
    dpos = np.where(d > 0, d, np.max(d) if np.max(d) > 0 else 1.0)
    if kind == "jacobi":
        P = 1.0 / dpos
    elif kind == "balance":
        col = np.sum(st.W_next ** 2, axis=0)
        col = np.where(col > 0, col, np.max(col) * 1e-6 if np.max(col) > 0 else 1.0)
        P = np.sqrt(col / dpos)
    elif kind == "gershgorin":
        rs = np.sum(np.abs(st.K), axis=1)
        # a zero row (a neuron dead on a box region: no coupling) must not take the whole scale
        P = np.where(rs > 0, 1.0 / np.where(rs > 0, rs, 1.0), (1.0 / rs[rs > 0]).max() if np.any(rs > 0) else 1.0)
    else:
        raise ValueError(kind)
    P = P / np.max(P)
    return P


def policy_g2(kind: str = "balance", c: float = 0.5, exact: bool = False) -> Policy:
    """G2 (diagonal scaling): L_k = c P / lambda_max(P^{1/2} K P^{1/2})."""

    def pol(st: Stage):
        P = _diag_choice(st, kind)
        sq = np.sqrt(P)
        mu = lam_max(sq[:, None] * st.K * sq[None, :], exact=exact)
        return c * P / mu if mu > 0 else P

    return pol


def policy_g3(kind: str | None = None, iters: int = 24) -> Policy:
    """G3 (greedy scalar): L_k = s P minimising lambda_max(W_{k+1} M_k(s)^{-1} W_{k+1}^T) over
    s in (0, 1/lambda_max(P^{1/2} K P^{1/2})) by golden-section search (the function is convex in s).
    P = I (plain G3) or a G2 choice. One eigendecomposition per layer."""

    def pol(st: Stage):
        n = st.K.shape[0]
        P = np.ones(n) if kind is None else _diag_choice(st, kind)
        sq = np.sqrt(P)
        A = sq[:, None] * st.K * sq[None, :]
        kappa, U = sla.eigh((A + A.T) / 2, check_finite=False, driver="evd")
        kappa = np.maximum(kappa, 0.0)
        kmax = float(kappa[-1])
        if kmax <= 0:
            return P
        B = (st.W_next / sq[None, :]) @ U  # W_{k+1} P^{-1/2} U
        BtB = None
        big = min(B.shape) > 400
        if B.shape[0] > B.shape[1] and not big:
            BtB = B.T @ B

        def g(t):  # s = t / kmax
            s = t / kmax
            d = 1.0 / (s * (1.0 - s * kappa))
            if big:  # matrix-free Lanczos: Z v = B (d * (B^T v)), O(n^2) per product
                from scipy.sparse.linalg import LinearOperator, eigsh

                m = B.shape[0]
                op = LinearOperator((m, m), matvec=lambda v: B @ (d * (B.T @ v)), dtype=np.float64)
                try:
                    v0 = np.random.default_rng(12345).standard_normal(m)
                    return float(eigsh(op, k=1, which="LA", tol=1e-8, return_eigenvectors=False, ncv=30, v0=v0)[0])
                except Exception:
                    Z = (B * d[None, :]) @ B.T
                    return lam_max((Z + Z.T) / 2, exact=True)
            if BtB is not None:
                sd = np.sqrt(d)
                Z = sd[:, None] * BtB * sd[None, :]
            else:
                Z = (B * d[None, :]) @ B.T
            return lam_max((Z + Z.T) / 2, exact=False)

        lo, hi = 1e-3, 1 - 1e-6
        gr = (math.sqrt(5) - 1) / 2
        a, b = lo, hi
        x1, x2 = b - gr * (b - a), a + gr * (b - a)
        f1, f2 = g(x1), g(x2)
        for _ in range(iters):
            if f1 < f2:
                b, x2, f2 = x2, x1, f1
                x1 = b - gr * (b - a)
                f1 = g(x1)
            else:
                a, x1, f1 = x1, x2, f2
                x2 = a + gr * (b - a)
                f2 = g(x2)
        t = x1 if f1 < f2 else x2
        return (t / kmax) * P

    return pol


# --------------------------------------------------------------------------------------------------
# The member table of eclipse-family (and of lipsdp-opt's start)
# --------------------------------------------------------------------------------------------------

# step sizes c of the G1 grid (c = 1/2 is ECLipsE-Fast)
G1_GRID = (0.5, 0.6, 0.7, 0.8, 0.9)


def family_members(which: str = "all") -> list:
    """(name, policy factory) of the closed-form members, cheapest and most useful first; ``which="cheap"``
    leaves out the G3 searches (an eigendecomposition and ~24 eigenvalue problems per layer)."""
    if which == "cheap":
        return [m for m in family_members("all") if not m[0].startswith("eclipse-g3")]
    members = [("eclipse-fast", lambda prep: policy_g1(0.5)),
               ("eclipse-g2-balance", lambda prep: policy_g2("balance")),
               ("eclipse-g3", lambda prep: policy_g3(None)),
               ("eclipse-g3-balance", lambda prep: policy_g3("balance")),
               ("eclipse-g2-jacobi", lambda prep: policy_g2("jacobi")),
               ("eclipse-g2-gershgorin", lambda prep: policy_g2("gershgorin"))]
    members += [(f"eclipse-g1 c={c:g}", (lambda prep, c=c: policy_g1(c))) for c in G1_GRID[1:]]
    return members
