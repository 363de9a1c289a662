"""The closed-form multiplier policies of the LipSDP family and the member table of eclipse-family.

A policy maps a `certificate.Stage` (K_k = m^2 W_k M_{k-1}^{-1} W_k^T and the next weight) to the
diagonal multipliers L_k; `certificate.run_chain` certifies whatever it returns, so a policy only has to
be good, never correct.
  G1 / ECLipsE-Fast  L_k = c I / lambda_max(K_k)                         (`policy_g1`, c = 1/2: Fast)
  G2                 L_k = c P / lambda_max(P^1/2 K_k P^1/2), P diagonal   (`policy_g2`: balance, jacobi,
                                                                           gershgorin scalings)
  G3                 L_k = s P, s minimising the next layer's lambda_max   (`policy_g3`: tridiagonal
                                                                           reduction, secant search)
Notation: ../shared/reference/l2-sdp-family.md, section 2.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg as sla

from .certificate import Policy, Stage
from .prepare import _t, lam_max, lanczos_max


# above this many neurons lambda_max(K_k) of G1 / G2 comes from Lanczos (relative error ~1e-9 measured on
# the ECLipsE chains) rather than LAPACK's eigenvalues (measured on one busy core: eigvalsh 5 / 23 / 79 ms
# at 200 / 300 / 500 neurons, Lanczos ~10 ms + 35-60 mat-vecs: 12 / 13 / 24 ms)
EXACT_EIG_MAX = 250


def _top_eig(A, exact: bool) -> float:
    """lambda_max of the symmetric A (a multiplier choice, not a certified value): LAPACK when ``exact``
    or A has at most EXACT_EIG_MAX rows, else torch's Lanczos (`prepare.lanczos_max`, one mat-vec per step;
    relative error ~1e-9 on the ECLipsE chains). Measured alternatives: numpy's Lanczos (`_lanczos_top`)
    is ~1.7x faster on one thread but its OpenBLAS mat-vecs with 2 threads beside a busy process were
    several times slower; a block Lanczos (4-16 vectors per step) was 2-5x slower."""
    n = A.shape[0]
    if exact or n <= EXACT_EIG_MAX:
        return lam_max(A, exact=True)
    return lanczos_max(_t(A))


def policy_g1(c: float = 0.5, exact: bool = False) -> Policy:
    """G1 / ECLipsE-Fast (c = 1/2): L_k = c / lambda_max(K_k) * I. Cost: a Lanczos estimate of
    lambda_max(K_k) (O(n^2) per step, tens of steps); the certificate is `certificate.run_chain`'s."""

    def pol(st: Stage):
        mu = _top_eig(st.K, exact)
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
    """G2 (diagonal scaling): L_k = c P / lambda_max(P^{1/2} K P^{1/2}). Cost: one scaled n x n work copy of
    K and a Lanczos estimate (`_top_eig`)."""

    def pol(st: Stage):
        P = _diag_choice(st, kind)
        sq = np.sqrt(P)
        mu = _top_eig(sq[:, None] * st.K * sq[None, :], exact)
        return c * P / mu if mu > 0 else P

    return pol


def policy_g3(kind: str | None = None, iters: int = 24) -> Policy:
    """G3 (greedy scalar): L_k = s P minimising g(s) = lambda_max(W_{k+1} M_k(s)^{-1} W_{k+1}^T) (l2: the
    next layer's Gram matrix, P = I for plain G3 or a G2 choice) over s in (0, 1/lambda_max(A)),
    A = P^{1/2} K P^{1/2}; g is convex in s. A = Q T Q^T by one tridiagonal reduction (LAPACK sytrd, no
    eigenvectors), B = W_{k+1} P^{-1/2} Q once (applied Householder reflectors), then every g(s) =
    lambda_max(B (sI - s^2 T)^{-1} B^T) and g'(s) costs tridiagonal solves and mat-vecs with B
    (warm-started Lanczos), and a safeguarded secant search on g' takes at most ``iters`` + 1 of them
    (6-10 measured on the ECLipsE chains; the golden-section search before took 26 ARPACK runs).
    Cost per layer: ~4/3 n^3 (sytrd) + 2 n_next n^2 (reflectors) + O(iters x steps x n_next n)."""

    def pol(st: Stage):
        n = st.K.shape[0]
        P = np.ones(n) if kind is None else _diag_choice(st, kind)
        sq = np.sqrt(P)
        A = st.K if kind is None else sq[:, None] * st.K * sq[None, :]
        d, e, B = _tridiagonal_reduction(A, st.W_next if kind is None else st.W_next / sq[None, :])
        del A
        kmax = _tridiagonal_top(d, e)
        if not kmax > 0:
            return P
        g = _G3Objective(d, e, B)
        t = _convex_search(g, kmax, iters)
        return (t / kmax) * P

    return pol


def _tridiagonal_reduction(A: np.ndarray, Wp: np.ndarray):
    """(d, e, B): A = Q T Q^T with T tridiagonal (diagonal d, off-diagonal e; LAPACK dsytrd on the lower
    triangle of A) and B = Wp Q (the Householder reflectors applied in place by torch ormqr, read from
    LAPACK's output without a copy); A and Wp are not modified. Cost: 4/3 n^3 + 2 m n^2 for Wp of shape
    (m, n); LAPACK's n x n work copy, ormqr's m x n result and B."""
    import torch
    from scipy.linalg.lapack import dsytrd

    n, m = A.shape[0], Wp.shape[0]
    if n == 1:
        return np.array([A[0, 0]], dtype=np.float64), np.zeros(0), np.array(Wp, dtype=np.float64)
    # A is symmetric and C-ordered: its transpose is the same matrix, Fortran-ordered (LAPACK's layout);
    # lwork: room for LAPACK's blocked algorithm (the minimal workspace forces the unblocked one, ~1.7x
    # slower at n = 1000)
    c, d, e, tau, info = dsytrd(np.asarray(A, dtype=np.float64).T, lower=1, lwork=64 * n)
    if info != 0:
        raise np.linalg.LinAlgError(f"dsytrd info {info}")
    B = np.empty((m, n))
    B[:, 0] = Wp[:, 0]
    if m > 0:  # Q = diag(1, Q~), Q~ = H_1 ... H_{n-1} stored as by geqrf in c[1:, :n-1]
        V = torch.from_numpy(c[1:, : n - 1])
        BQ = torch.ormqr(V, torch.from_numpy(tau[: n - 1].copy()), _t(Wp)[:, 1:].T, left=True, transpose=True)
        B[:, 1:] = BQ.T.numpy()  # (W[:, 1:] Q~)^T = Q~^T W[:, 1:]^T
    return d, e, B


def _tridiagonal_top(d: np.ndarray, e: np.ndarray) -> float:
    """The largest eigenvalue of the symmetric tridiagonal (d, e) (LAPACK bisection). Cost O(n)."""
    if d.shape[0] == 1:
        return float(d[0])
    n = d.shape[0]
    return float(sla.eigh_tridiagonal(d, e, eigvals_only=True, select="i", select_range=(n - 1, n - 1))[0])


class _G3Objective:
    """g(s) = lambda_max(Z(s)), Z(s) = B D(s) B^T, D(s) = (s I - s^2 T)^{-1} (T tridiagonal), and
    g'(s) = -x^T (I - 2 s T) x with x = D(s) B^T v, v the top unit eigenvector of Z(s).
    Few rows: Z formed (n_next tridiagonal solves) and LAPACK's eigh; else Lanczos on Z in mat-vecs (two
    with B, one tridiagonal solve), started from the previous top eigenvector."""

    DENSE_ROWS = 64

    def __init__(self, d, e, B):
        self.d, self.e, self.B = d, e, B
        self.v = None
        self.evals = 0

    def _factor(self, s: float):
        from scipy.linalg.lapack import dpttrf

        df, ef, info = dpttrf(s - s * s * self.d, -s * s * self.e)
        return None if info != 0 else (df, ef)

    def _solve(self, fac, y):
        from scipy.linalg.lapack import dpttrs

        x, info = dpttrs(fac[0], fac[1], y)
        return x

    def __call__(self, s: float) -> tuple[float, float]:
        """(g(s), g'(s)); (inf, inf) when s I - s^2 T is not definite."""
        self.evals += 1
        fac = self._factor(s)
        if fac is None:
            return math.inf, math.inf
        B, m = self.B, self.B.shape[0]
        if m <= self.DENSE_ROWS:
            X = self._solve(fac, np.ascontiguousarray(B.T))
            X = X.reshape(B.shape[1], m)
            Z = B @ X
            w, U = np.linalg.eigh((Z + Z.T) / 2)
            val, v = float(w[-1]), U[:, -1]
            x = X @ v
        else:
            # (a looser residual, 1e-4, in the first evaluations was measured to stop on a lower Ritz value)
            val, v = _lanczos_top(lambda y: B @ self._solve(fac, B.T @ y), m, self.v, rtol=1e-6)
            x = self._solve(fac, B.T @ v)
        self.v = v
        Tx = self.d * x
        Tx[1:] += self.e * x[:-1]
        Tx[:-1] += self.e * x[1:]
        return val, -float(x @ x - 2.0 * s * (x @ Tx))


def _lanczos_top(matvec, m: int, v0, steps: int = 60, rtol: float = 1e-6) -> tuple[float, np.ndarray]:
    """Top eigenpair estimate of a symmetric positive semidefinite operator on R^m (Lanczos with full
    reorthogonalisation from v0 plus a tiny fixed random part, or from the random vector alone; stopped
    when the residual of the top Ritz pair is below rtol times its value: its eigenvalue error is then of
    order rtol^2). A Ritz value is <= lambda_max: used only to choose multipliers. Cost: one mat-vec and
    O(j m) per step j."""
    v = np.random.default_rng(12345).standard_normal(m)
    if v0 is not None:  # warm start (a generic vector: it has a component along the new top eigenvector)
        v = np.asarray(v0, dtype=np.float64) + 1e-8 * v / np.linalg.norm(v)
    n = min(steps, m)
    Q = np.empty((n + 1, m))
    Q[0] = v / np.linalg.norm(v)
    T = np.zeros((n, n))
    theta, y = 0.0, np.ones(1)
    for j in range(n):
        w = matvec(Q[j])
        T[j, j] = w @ Q[j]
        B = Q[: j + 1]
        w -= B.T @ (B @ w)
        w -= B.T @ (B @ w)
        b = float(np.linalg.norm(w))
        if j % 2 == 1 or j == n - 1 or b == 0.0:
            ev, S = np.linalg.eigh(T[: j + 1, : j + 1])
            theta, y = float(ev[-1]), S[:, -1]
            if b * abs(y[-1]) <= rtol * max(abs(theta), 1e-300) or j == n - 1:
                break
        if j + 1 < n:
            T[j, j + 1] = T[j + 1, j] = b
            Q[j + 1] = w / b
    return theta, Q[: y.shape[0]].T @ y


def _convex_search(g, kmax: float, iters: int) -> float:
    """argmin over t in [1e-3, 1 - 1e-6] of the convex g(t / kmax) (``g`` returns the value and the
    derivative in s = t / kmax), from t = 1/2 (ECLipsE-Fast's choice): safeguarded secant steps on g'
    through the last two points (Brent's rule: bisection of the bracket on the sign of g' when a secant step
    leaves it or does not halve the step before last), stopped when convexity shows that no point of the
    bracket is better by more than 1e-9 relative, or after ``iters`` + 1 evaluations; the best point
    evaluated wins."""
    a, b = 1e-3, 1 - 1e-6
    t, prev, step, step2 = 0.5, None, b - a, b - a
    best = (math.inf, t)
    for _ in range(iters + 1):
        f, dt = g(t / kmax)
        best = min(best, (f, t))
        if not math.isfinite(f) or dt > 0:
            b = t
        else:
            a = t
        # convexity: g(t*) >= g(t) - |g'(t)| |t* - t| with t* in [a, b]
        if b - a <= 1e-7 or (math.isfinite(f) and abs(dt) * (b - a) / kmax <= 1e-9 * f):
            break
        nxt = 0.5 * (a + b)
        if prev is not None and math.isfinite(f) and math.isfinite(prev[1]) and dt != prev[1]:
            ts = t - dt * (t - prev[0]) / (dt - prev[1])
            if a < ts < b and abs(ts - t) < 0.5 * step2:
                nxt = ts
        prev = (t, dt) if math.isfinite(f) else prev
        step2, step = step, abs(nxt - t)
        t = nxt
    return best[1]


# --------------------------------------------------------------------------------------------------
# The member table of eclipse-family (and of lipsdp-opt's start)
# --------------------------------------------------------------------------------------------------

# step sizes c of the G1 grid (c = 1/2 is ECLipsE-Fast)
G1_GRID = (0.5, 0.6, 0.7, 0.8, 0.9)


def family_members(which: str = "all") -> list:
    """(name, policy factory) of the closed-form members, cheapest and most useful first; ``which="cheap"``
    leaves out the G3 searches (per layer a tridiagonal reduction, the reflectors applied to the next weight
    and ~8 Lanczos evaluations: about 3-4 closed-form passes on 1000-neuron layers, where each other member
    costs one)."""
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
