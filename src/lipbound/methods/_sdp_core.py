"""Shared mathematics of the LipSDP family (private): preparation of the dense chain, the exact
sequential decomposition of the LipSDP-Neuron LMI (the certificate), the closed-form multiplier rules
(ECLipsE-Fast and the reconstructed family G1/G2/G3) and the independent full-LMI check.

Notation follows ../shared/reference/l2-sdp-family.md, section 2 (rescaled LMI, F = 1/rho,
L_k = 2 T_k / rho).  Everything is float64 numpy.

Normalisation: every weight matrix W_k is divided by a positive number c_k (an estimate of its
spectral norm).  The LipSDP LMI is exactly invariant under this (congruence with the block diagonal
d_k = c_1...c_k), so a certificate for the normalised chain with value b gives the value
b * prod(c_k) for the original one, and multipliers L_k(original) = L_k(normalised) / d_k^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.linalg as sla

from ..errors import MethodFailed, Unsupported

# relative margin added to every certified value (absorbs rounding in the last pivot)
REL_MARGIN = 1e-9
# floor of a multiplier relative to the largest one of its layer (a zero multiplier makes M_k singular)
FLOOR = 1e-12


class CertificateError(MethodFailed):
    """A pivot of the sequential decomposition is not positive definite in float64."""


@dataclass
class Prepared:
    """A dense chain ready for the LipSDP family.

    Ws      -- normalised weights W_k / c_k, k = 1..L (the last possibly one row, ctx.output);
    scales  -- the c_k (> 0);
    alphas, betas -- slope bounds of the L-1 activations."""

    Ws: list
    scales: np.ndarray
    alphas: np.ndarray
    betas: np.ndarray
    zero: bool = False  # some W_k == 0: the network is constant
    names: list = field(default_factory=list)

    @property
    def L(self) -> int:
        return len(self.Ws)

    @property
    def ps(self) -> np.ndarray:
        return self.alphas * self.betas

    @property
    def ms(self) -> np.ndarray:
        return (self.alphas + self.betas) / 2

    @property
    def log_scale(self) -> float:
        return float(np.sum(np.log(self.scales)))

    @property
    def widths(self) -> list:
        return [W.shape[1] for W in self.Ws] + [self.Ws[-1].shape[0]]

    @property
    def n_hidden(self) -> int:
        return int(sum(W.shape[0] for W in self.Ws[:-1]))

    def unscale(self, value_hat: float) -> float:
        """The bound of the original chain from the bound of the normalised chain."""
        if value_hat == 0.0:
            return 0.0
        return float(math.exp(math.log(value_hat) + self.log_scale))

    def original_multipliers(self, Ls: list) -> list:
        """L_k of the original (un-normalised) chain from the normalised ones."""
        out, logd = [], 0.0
        for k, Lk in enumerate(Ls):
            logd += math.log(self.scales[k])
            out.append(np.asarray(Lk, dtype=np.float64) * math.exp(-2 * logd))
        return out


def _norm_estimate(W: np.ndarray, iters: int = 8) -> float:
    """A positive number close to ||W||_2 (exact SVD for small matrices, power iteration otherwise).
    Only used for normalisation: any positive number is valid."""
    if W.size <= 40_000:
        return float(np.linalg.norm(W, 2))
    rng = np.random.default_rng(0)
    v = rng.standard_normal(W.shape[1])
    v /= np.linalg.norm(v)
    s = 0.0
    for _ in range(iters):
        u = W @ v
        s = float(np.linalg.norm(u))
        w = W.T @ u
        nw = np.linalg.norm(w)
        if nw == 0:
            break
        v = w / nw
    if s == 0.0:
        s = float(np.linalg.norm(W))
    return s


def prepare(net, ctx, *, check_slopes: bool = True) -> Prepared:
    """The dense chain of ``net`` (normalised), with the output row selected when ctx.output is set.

    Raises Unsupported for residual / max-pool networks and for dense matrices that are too large."""
    max_entries = ctx.option("max_entries", None)
    try:
        chain = net.dense_chain() if max_entries is None else net.dense_chain(max_entries=int(max_entries))
    except Unsupported:
        raise
    except MemoryError as e:  # pragma: no cover - depends on the machine
        raise Unsupported(f"the dense chain does not fit in memory ({e})") from None
    Ws, alphas, betas, names = [], [], [], []
    for i, layer in enumerate(chain):
        W = np.asarray(layer.W, dtype=np.float64)
        if i < len(chain) - 1:
            act = layer.activation
            a, b = float(act.alpha), float(act.beta)
            if check_slopes and a * b < 0:
                raise Unsupported(f"activation {act.describe()} has slopes [{a}, {b}] with alpha*beta < 0: the "
                                  "closed forms of the LipSDP family need alpha*beta >= 0 (use lipsdp-neuron)")
            alphas.append(a)
            betas.append(b)
            names.append(act.describe())
        Ws.append(W)
    if ctx.output is not None:
        j = int(ctx.output)
        Ws[-1] = Ws[-1][j:j + 1, :]
    scales, zero = [], False
    for i, W in enumerate(Ws):
        s = _norm_estimate(W)
        if not np.isfinite(s):
            raise MethodFailed("non-finite weights")
        if s == 0.0:
            zero = True
            s = 1.0
        scales.append(s)
        Ws[i] = W / s  # a fresh normalised copy
    return Prepared(Ws, np.asarray(scales), np.asarray(alphas, dtype=np.float64),
                    np.asarray(betas, dtype=np.float64), zero, names)


# --------------------------------------------------------------------------------------------------
# Linear algebra helpers
# --------------------------------------------------------------------------------------------------


def chol(M: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of a symmetric matrix, CertificateError if not positive definite."""
    try:
        R = sla.cholesky(M, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        raise CertificateError("not positive definite") from None
    d = np.diag(R)
    if not np.all(np.isfinite(d)) or np.any(d <= 0):
        raise CertificateError("not positive definite")
    return R


def ctc(C: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """scale * C^T C, symmetric, by BLAS syrk (half the flops of a general product)."""
    if C.shape[1] < 64:
        G = C.T @ C
        return (G + G.T) * (scale / 2)
    U = sla.blas.dsyrk(scale, np.asfortranarray(C), trans=1, lower=0)
    iu = np.tril_indices(U.shape[0], -1)
    U[iu] = U.T[iu]
    return U


def gram_t(R: np.ndarray | None, W: np.ndarray) -> np.ndarray:
    """W M^{-1} W^T for M = R R^T (R None means M = I), symmetrised. Cost O(n^2 m + n m^2)."""
    C = W.T if R is None else sla.solve_triangular(R, W.T, lower=True, check_finite=False)
    return ctc(C)


def lam_max(A: np.ndarray, exact: bool = True) -> float:
    """Largest eigenvalue of a symmetric matrix (exact LAPACK; Lanczos when ``exact`` is False and the
    matrix is large, which may underestimate slightly: use only for multiplier choices)."""
    n = A.shape[0]
    if n == 1:
        return float(A[0, 0])
    if exact or n <= 400:
        return float(sla.eigh(A, eigvals_only=True, subset_by_index=[n - 1, n - 1], check_finite=False,
                              driver="evr")[0])
    from scipy.sparse.linalg import eigsh

    try:
        v0 = np.random.default_rng(12345).standard_normal(n)  # deterministic start: reproducible values
        return float(eigsh(A, k=1, which="LA", tol=1e-10, return_eigenvectors=False, ncv=min(n, 40), v0=v0)[0])
    except Exception:  # pragma: no cover - ARPACK failure
        return float(sla.eigh(A, eigvals_only=True, subset_by_index=[n - 1, n - 1], check_finite=False)[0])


# --------------------------------------------------------------------------------------------------
# The sequential decomposition (certificate) with a multiplier policy
# --------------------------------------------------------------------------------------------------


@dataclass
class Stage:
    """What a policy sees at hidden stage k (0-based): K = m^2 W_k M_{k-1}^{-1} W_k^T (p-term dropped),
    the next weight W_{k+1} (W_L at the last hidden layer) and the index."""

    k: int
    K: np.ndarray
    W_next: np.ndarray
    last: bool


Policy = Callable[[Stage], np.ndarray]


@dataclass
class ChainResult:
    value_hat: float          # certified bound of the normalised chain (with REL_MARGIN)
    Ls: list                  # normalised multipliers (vectors)
    raw_hat: float            # without the margin
    repaired: int = 0         # stages whose multipliers had to be shrunk
    cut_at: int | None = None  # time limit: decomposition stopped after this stage


def run_chain(prep: Prepared, policy: Policy, *, ctx=None, fallback: Policy | None = None,
              fixed: list | None = None) -> ChainResult:
    """Run the exact block-LDL^T recursion of the rescaled LipSDP LMI in float64.

    At each hidden stage the multipliers come from ``policy`` (or from ``fixed``); the exact M_k (with
    the alpha*beta term) is formed and factorised by Cholesky; a stage whose M_k is not positive definite
    has its multipliers shrunk (L -> t L, which makes M_k = t L^{1/2}(I - t L^{1/2} K L^{1/2}) L^{1/2}
    definite for small t).  The final value sqrt(lambda_max(W_L M_{L-1}^{-1} W_L^T)) is exact (LAPACK).

    If ``ctx`` runs out of time: with ``fallback`` the remaining stages use it; otherwise the chain is
    cut and the remaining layers are bounded by Frobenius norms (valid, looser).
    Cost: O(sum n_k^3) plus the policy's cost."""
    Ws, L = prep.Ws, prep.L
    ps, ms = prep.ps, prep.ms
    R = None  # Cholesky factor of M_{k-1}; None = identity
    M = None
    Ls, repaired = [], 0
    for k in range(L - 1):
        W = Ws[k]
        m, p = ms[k], ps[k]
        if ctx is not None and fixed is None and ctx.out_of_time():
            if fallback is not None:
                policy = fallback
            else:
                return _cut(prep, R, k, Ls, repaired)
        C = W.T if R is None else sla.solve_triangular(R, W.T, lower=True, check_finite=False)
        K = ctc(C, m * m)
        if fixed is not None:
            lam = np.asarray(fixed[k], dtype=np.float64).copy()
        else:
            lam = np.asarray(policy(Stage(k, K, Ws[k + 1], k == L - 2)), dtype=np.float64)
            if lam.ndim == 0:
                lam = np.full(W.shape[0], float(lam))
        if not np.all(np.isfinite(lam)):
            raise MethodFailed(f"non-finite multipliers at layer {k + 1}")
        top = float(np.max(lam)) if lam.size else 0.0
        if top <= 0:
            raise MethodFailed(f"all multipliers of layer {k + 1} are zero")
        lam = np.maximum(lam, FLOOR * top)
        if p != 0.0:
            Mprev = np.eye(W.shape[1]) if M is None else M
            X = Mprev + p * (W.T * lam) @ W
            RX = chol((X + X.T) / 2)
            CX = sla.solve_triangular(RX, W.T, lower=True, check_finite=False)
            KX = CX.T @ CX
            KX = (KX + KX.T) * (m * m / 2)
        else:
            KX = K
        Rk = None
        for attempt in range(60):
            Mk = np.diag(lam) - (lam[:, None] * KX) * lam[None, :]
            Mk = (Mk + Mk.T) / 2
            try:
                Rk = chol(Mk)
                break
            except CertificateError:
                if attempt == 0:
                    repaired += 1
                    sq = np.sqrt(lam)
                    mu = lam_max(sq[:, None] * KX * sq[None, :])
                    t = min(0.999 / mu, 0.999) if mu > 0 else 0.5
                else:
                    t = 0.5
                lam = lam * t
                if p != 0.0:  # the p-term depends on lam: recompute X
                    X = Mprev + p * (W.T * lam) @ W
                    RX = chol((X + X.T) / 2)
                    CX = sla.solve_triangular(RX, W.T, lower=True, check_finite=False)
                    KX = CX.T @ CX
                    KX = (KX + KX.T) * (m * m / 2)
        if Rk is None:
            raise MethodFailed(f"could not make the pivot of layer {k + 1} positive definite")
        Ls.append(lam)
        M, R = Mk, Rk
    G = gram_t(R, Ws[-1])
    val = lam_max(G, exact=True)
    if not (np.isfinite(val) and val >= 0):
        raise MethodFailed("non-finite final eigenvalue")
    raw = math.sqrt(max(val, 0.0))
    return ChainResult(raw * (1 + REL_MARGIN), Ls, raw, repaired)


def _cut(prep: Prepared, R, k: int, Ls: list, repaired: int) -> ChainResult:
    """Time limit at hidden stage k: bound x0 -> z^{k+1} by the decomposition so far, the rest by
    Frobenius norms (>= spectral) and the activations' largest |slope|."""
    G = gram_t(R, prep.Ws[k])
    raw = math.sqrt(max(lam_max(G, exact=True), 0.0))
    for j in range(k, prep.L - 1):
        raw *= max(abs(prep.alphas[j]), abs(prep.betas[j])) * float(np.linalg.norm(prep.Ws[j + 1]))
    return ChainResult(raw * (1 + REL_MARGIN), Ls, raw, repaired, cut_at=k)


def single_matrix_bound(prep: Prepared) -> float:
    """||W||_2 of a chain with one matrix (normalised), by SVD, with the margin."""
    return float(np.linalg.norm(prep.Ws[0], 2)) * (1 + 1e-12)


# --------------------------------------------------------------------------------------------------
# Closed-form policies
# --------------------------------------------------------------------------------------------------


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
        P = 1.0 / np.maximum(np.sum(np.abs(st.K), axis=1), 1e-300)
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
# Full LMI check (small nets)
# --------------------------------------------------------------------------------------------------


def full_lmi_min_eig(prep: Prepared, Ls: list, value_hat: float) -> float:
    """lambda_min of the Jacobi-scaled rescaled LipSDP-Neuron matrix (reference §2) at F = 1/value^2
    for the normalised chain. >= -tol means the certificate holds. Cost O(N^3), N = n_0 + hidden."""
    Ws, L = prep.Ws, prep.L
    sizes = [Ws[0].shape[1]] + [W.shape[0] for W in Ws[:-1]]
    offs = np.concatenate([[0], np.cumsum(sizes)])
    N = int(offs[-1])
    A = np.zeros((N, N))
    F = 1.0 / value_hat ** 2
    A[offs[0]:offs[1], offs[0]:offs[1]] += np.eye(sizes[0])
    for k in range(1, L):
        W, lam = Ws[k - 1], Ls[k - 1]
        p, m = prep.ps[k - 1], prep.ms[k - 1]
        i0, i1, j0, j1 = offs[k - 1], offs[k], offs[k], offs[k + 1]
        A[j0:j1, j0:j1] += np.diag(lam)
        if p != 0:
            A[i0:i1, i0:i1] += p * (W.T * lam) @ W
        blk = -m * (W.T * lam[None, :])
        A[i0:i1, j0:j1] += blk
        A[j0:j1, i0:i1] += blk.T
    A[offs[L - 1]:offs[L], offs[L - 1]:offs[L]] -= F * Ws[-1].T @ Ws[-1]
    A = (A + A.T) / 2
    d = np.sqrt(np.maximum(np.abs(np.diag(A)), 1e-300))
    A = A / d[:, None] / d[None, :]
    return float(np.linalg.eigvalsh(A)[0])
