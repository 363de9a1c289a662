"""The l2 certificate of the LipSDP family: the exact sequential decomposition of the rescaled
LipSDP-Neuron LMI in float64.

Notation follows ../shared/reference/l2-sdp-family.md, section 2 (rescaled LMI, F = 1/rho,
L_k = 2 T_k / rho), on the normalised chain of `prepare.Prepared`.

Given diagonal multipliers L_1..L_{L-1} (from a policy: `closed_forms`, an SDP solver, the barrier
optimiser), `run_chain` runs the block-LDL^T recursion of the LMI: at hidden stage k the pivot
M_k = L_k - L_k K_k L_k (plus the alpha*beta term) must be positive definite, which `chol` checks by a
float64 Cholesky factorisation (`_pivot` subtracts a rounding margin first); the certified value is then
sqrt(lambda_max(W_L M_{L-1}^{-1} W_L^T)) by LAPACK, times (1 + REL_MARGIN). `full_lmi_min_eig` is an
independent check: it assembles the whole LMI (small nets) and returns its smallest eigenvalue.
`CertificateError` is raised when a pivot is not positive definite.

Any slope bounds alpha <= beta are certified, alpha < 0 included (GELU, SiLU, Mish, Hardswish, Abs, leaky ReLU
with a negative slope): the alpha*beta term is kept exactly, its pivots X_{k-1} = M_{k-1} + p W_k^T L_k W_k
are factorised with their own rounding margin (`_p_term_K`), and a policy's multipliers that make an X or an
M pivot indefinite are shrunk until both are definite. The closed-form policies drop that term when they
choose the multipliers (they are heuristics: whatever they return is certified here).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import MethodFailed
from ...opnorms import cholesky_factor
from .prepare import Prepared, _t, gram, gram_t, lam_max

# relative margin added to every certified value (absorbs rounding in the last pivot and eigenvalue)
REL_MARGIN = 1e-9
# floor of a multiplier relative to the largest one of its layer (a zero multiplier makes M_k singular)
FLOOR = 1e-12
# rounding margin of a pivot, per row, relative to the size of the terms whose difference it is (see _pivot)
PIVOT_MARGIN = 4 * np.finfo(np.float64).eps
# relative margin of a single matrix's ||W||_2 by SVD (LAPACK's singular values are backward stable)
SVD_MARGIN = 1e-12
# repair of a pivot that is not positive definite: the first shrink is to this fraction of 1/lambda_max
# (strictly inside the region where M_k = t L^1/2 (I - t L^1/2 K L^1/2) L^1/2 is definite; lambda_max is a
# Lanczos estimate, possibly a little low), later ones halve the multipliers, at most REPAIR_ATTEMPTS times
REPAIR_SAFETY = 0.999
REPAIR_HALVING = 0.5
REPAIR_ATTEMPTS = 60


class CertificateError(MethodFailed):
    """A pivot of the sequential decomposition is not positive definite in float64."""


def chol(M) -> torch.Tensor:
    """Lower Cholesky factor (float64 LAPACK potrf, lower triangle of M read: `opnorms.cholesky_factor`);
    CertificateError if M is not positive definite. The rounding margins are the caller's (`_pivot`)."""
    R = cholesky_factor(_t(M))
    if R is None:
        raise CertificateError("not positive definite")
    return R


@dataclass
class Stage:
    """What a policy sees at hidden stage k (0-based): K = m^2 W_k M_{k-1}^{-1} W_k^T (p-term dropped,
    normalised weights), the next weight W_{k+1} (W_L at the last hidden layer) UP TO A POSITIVE FACTOR
    (the network's own matrix, not copied: every policy must be invariant to that factor) and the index."""

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



def _pivot(lam: torch.Tensor, KX: torch.Tensor, n_inner: int) -> torch.Tensor:
    """M_k = diag(lam) - lam K lam (elementwise) minus a diagonal rounding margin, a fresh matrix.

    Why the margin: M_k is a difference of terms that can be far larger than M_k itself (huge multipliers
    on nearly linear neurons), and a float64 Cholesky then succeeds on cancellation noise. An entry of
    lam K lam carries a rounding error up to g v_j v_l with v_j = lam_j sqrt(K_jj) and g = 4 (n_inner + n) u
    (K's entries are inner products of length ~n_inner); the diagonal r_j = g (lam_j + v_j sum_l v_l)
    dominates each row of that error (Gershgorin), so M_k - diag(r) lies below the exact M_k. Using it in
    the rest of the recursion only makes the next pivots smaller and the final value larger: a valid,
    conservative certificate, and rows with tiny multipliers get tiny margins.
    numpy on the tensors' memory (single-threaded: torch's element-wise passes with 2 OpenMP threads were
    measured 5x slower on a busy machine); the same operations in the same order. Cost: 3 passes over n^2."""
    K, lv = KX.numpy(), lam.numpy()
    Mk = K * lv[:, None]
    Mk *= lv[None, :]
    np.negative(Mk, out=Mk)
    v = np.sqrt(np.maximum(np.diagonal(K), 0.0)) * lv
    g = PIVOT_MARGIN * (n_inner + lv.shape[0])
    d = Mk.reshape(-1)[:: Mk.shape[0] + 1]  # the diagonal, a view
    d += lv - g * (lv + v * v.sum())
    return torch.from_numpy(Mk)


def _has_p(p) -> bool:
    """Whether a layer's alpha*beta (float or per-neuron array) is anywhere non-zero."""
    return bool(np.any(np.asarray(p) != 0.0))


def _mirror_upper(G: np.ndarray, b: int = 64) -> np.ndarray:
    """Copy the upper triangle of the square G onto its lower one, in place, by panels of b rows (exactly
    symmetric afterwards). numpy, single-threaded: torch's copies of transposed panels were measured 7x
    slower with 2 OpenMP threads on a busy machine. Cost: n^2 / 2 transposed copies (~1 ms at n = 1000)."""
    n = G.shape[0]
    for i in range(0, n, b):
        j = min(i + b, n)
        G[i:j, :i] = G[:i, i:j].T
        D = G[i:j, i:j]
        D[:] = np.triu(D) + np.triu(D, 1).T
    return G


def gram_syrk(R: torch.Tensor | None, W: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """scale * W M^{-1} W^T for M = R R^T (R None: M = I), exactly symmetric: C = R^{-1} W^T by one
    triangular solve, then scale * C^T C by one BLAS syrk (half the flops of a product; scipy's BLAS, its
    threads limited by `threads.blas_threads` like torch's) and a mirror; with several torch threads by
    torch's blocked `prepare.gram` instead. The entries carry the rounding
    of ordinary inner products of length n_in (what `_pivot`'s margin assumes).
    Cost: n_in^2 n_out (solve) + n_in n_out^2 (syrk); one n_out^2 result (plus C, n_in x n_out)."""
    from scipy.linalg.blas import dsyrk

    C = W.T if R is None else torch.linalg.solve_triangular(R, W.T, upper=False)
    if torch.get_num_threads() > 1:
        # scipy's OpenBLAS syrk with 2 threads beside a busy process was measured 2.5x slower than torch's
        # (MKL) blocked product: threaded runs keep `prepare.gram` (5/8 of a product's flops)
        return gram(C, scale)
    a = C.numpy()
    if a.flags.f_contiguous:  # C^T C = a^T a, a read in place (Fortran order)
        G = dsyrk(scale, a, trans=1, lower=1)
    else:  # a.T is Fortran-ordered: C^T C = (a.T)(a.T)^T
        G = dsyrk(scale, np.ascontiguousarray(a).T, trans=0, lower=1)
    # G is Fortran-ordered with its lower triangle set: its transpose, C-ordered, has the upper one
    return torch.from_numpy(_mirror_upper(G.T))


def _scaled_gram(R, W: torch.Tensor, f: float, m) -> torch.Tensor:
    """D_m V M^{-1} V^T D_m with V = f W (m a float, or a per-neuron array: D_m = diag(m)). `gram_syrk`."""
    if np.ndim(m) == 0:
        return gram_syrk(R, W, (float(m) * f) ** 2)
    G = gram_syrk(R, W, f * f)
    mt = torch.from_numpy(np.asarray(m, dtype=np.float64))
    G *= mt[:, None]
    G *= mt[None, :]
    return G


def _p_term_K(Mprev: torch.Tensor | None, W: torch.Tensor, f: float, lam: torch.Tensor, p, m) -> torch.Tensor:
    """D_m V X^{-1} V^T D_m with V = f W and X = M_{k-1} + V^T diag(p lam) V (the alpha*beta term of §2,
    reference §6 for per-neuron slopes), X factorised by Cholesky (CertificateError if it is not positive
    definite: X is a pivot of the decomposition).

    X is formed minus a diagonal rounding margin, like `_pivot`: with alpha*beta < 0 (GELU, SiLU, Abs, ...)
    it is a difference that can cancel. An entry of V^T diag(p lam) V carries a rounding error up to
    g v_j v_l, v_j = f sqrt(sum_i |p_i| lam_i W_ij^2) (Cauchy-Schwarz), and the sum with M_{k-1} adds
    u |X_jl|; the diagonal r_j = g (v_j sum_l v_l + sum_l |M_{k-1, jl}|), g = PIVOT_MARGIN (n + 2), n the
    length of the inner products, dominates each row of that error (Gershgorin), so the X used lies below
    the exact one: its Cholesky factorisation certifies the exact pivot, and its inverse only enlarges K
    (a smaller next pivot, a larger final value: conservative)."""
    pt = float(p) if np.ndim(p) == 0 else torch.from_numpy(np.asarray(p, dtype=np.float64))
    plam = lam * pt
    X = (f * f) * (W.T * plam[None, :]) @ W
    v = f * torch.sqrt(((W * W) * (lam * abs(pt) if np.ndim(p) == 0 else lam * pt.abs())[:, None]).sum(0))
    g = PIVOT_MARGIN * (W.shape[0] + 2)
    if Mprev is None:
        X.diagonal().add_(1.0)
        rows = torch.ones(X.shape[0], dtype=X.dtype)
    else:
        X += Mprev
        rows = Mprev.abs().sum(1)
    X.diagonal().sub_(g * (v * v.sum() + rows))
    RX = chol(X)
    return _scaled_gram(RX, W, f, m)


def run_chain(prep: Prepared, policy: Policy, *, ctx=None, fallback: Policy | None = None,
              fixed: list | None = None) -> ChainResult:
    """Run the exact block-LDL^T recursion of the rescaled LipSDP LMI in float64 (torch LAPACK).

    At each hidden stage the multipliers come from ``policy`` (or from ``fixed``); the exact M_k (with
    the alpha*beta term) is formed and factorised by Cholesky; a stage whose M_k is not positive definite
    has its multipliers shrunk (L -> t L, which makes M_k = t L^{1/2}(I - t L^{1/2} K L^{1/2}) L^{1/2}
    definite for small t).  The final value sqrt(lambda_max(W_L M_{L-1}^{-1} W_L^T)) is exact (LAPACK).

    If ``ctx`` runs out of time: with ``fallback`` the remaining stages use it; otherwise the chain is
    cut and the remaining layers are bounded by Frobenius norms (valid, looser).
    Cost: per layer one triangular solve, one syrk Gram product (`gram_syrk`) and one Cholesky
    factorisation (O(n_k^3)), whose factor is both the certificate of the pivot and the next layer's solve
    (no inverse, no eigenvalue decomposition); plus the policy's cost. Memory: the weights are read in
    place; at a time K_k, M_k, its factor and the previous one (4 n_k^2 floats) and the solve's n x n_k."""
    raw, inv = prep.raw_and_inverse_scales()
    Ws, L = [_t(W) for W in raw], prep.L  # W_k(normalised) = inv[k] * Ws[k]
    ps, ms = prep.ps, prep.ms
    R = None  # Cholesky factor of M_{k-1}; None = identity
    M = None  # M_{k-1}, kept only when an alpha*beta term needs it
    Ls, repaired = [], 0
    for k in range(L - 1):
        W = Ws[k]
        m, p = ms[k], ps[k]
        if ctx is not None and fixed is None and ctx.out_of_time():
            if fallback is not None:
                policy = fallback
            else:
                return _cut(prep, Ws, inv, R, k, Ls, repaired)
        K = _scaled_gram(R, W, inv[k], m)
        if fixed is not None:
            lam_np = np.asarray(fixed[k], dtype=np.float64).copy()
        else:
            lam_np = np.asarray(policy(Stage(k, K.numpy(), raw[k + 1], k == L - 2)), dtype=np.float64)
            if lam_np.ndim == 0:
                lam_np = np.full(W.shape[0], float(lam_np))
        if not np.all(np.isfinite(lam_np)):
            raise MethodFailed(f"non-finite multipliers at layer {k + 1}")
        top = float(np.max(lam_np)) if lam_np.size else 0.0
        if top <= 0:
            raise MethodFailed(f"all multipliers of layer {k + 1} are zero")
        lam = torch.from_numpy(np.maximum(lam_np, FLOOR * top))
        Rk = Mk = None
        for attempt in range(REPAIR_ATTEMPTS):
            KX = None
            try:
                # the p-term depends on lam (X = M_{k-1} + p W^T L W, a pivot itself: with alpha*beta < 0 it
                # can fail too, and shrinking L brings it back to M_{k-1}, which is positive definite)
                KX = _p_term_K(M, W, inv[k], lam, p, m) if _has_p(p) else K
                Mk = _pivot(lam, KX, W.shape[1])
                Rk = chol(Mk)
                break
            except CertificateError:
                if attempt == 0:
                    repaired += 1
                    sq = torch.sqrt(lam)
                    mu = lam_max((K if KX is None else KX) * sq[:, None] * sq[None, :], exact=False)
                    t = min(REPAIR_SAFETY / mu, REPAIR_SAFETY) if mu > 0 else REPAIR_HALVING
                else:
                    t = REPAIR_HALVING
                lam = lam * t
        if Rk is None:
            raise MethodFailed(f"could not make the pivot of layer {k + 1} positive definite")
        Ls.append(lam.numpy())
        R = Rk
        M = Mk if k + 1 < L - 1 and _has_p(ps[k + 1]) else None
    val = lam_max(gram_t(R, Ws[-1], inv[-1] ** 2), exact=True)
    if not (math.isfinite(val) and val >= 0):
        raise MethodFailed("non-finite final eigenvalue")
    value = math.sqrt(max(val, 0.0))
    return ChainResult(value * (1 + REL_MARGIN), Ls, value, repaired)


def _cut(prep: Prepared, Ws: list, inv: list, R, k: int, Ls: list, repaired: int) -> ChainResult:
    """Time limit at hidden stage k: bound x0 -> z^{k+1} by the decomposition so far, the rest by
    Frobenius norms (>= spectral) and the activations' largest |slope|."""
    raw = math.sqrt(max(lam_max(gram_t(R, Ws[k], inv[k] ** 2), exact=True), 0.0))
    for j in range(k, prep.L - 1):
        raw *= prep.slope_max(j) * inv[j + 1] * float(torch.linalg.matrix_norm(Ws[j + 1]))
    return ChainResult(raw * (1 + REL_MARGIN), Ls, raw, repaired, cut_at=k)


def single_matrix_bound(prep: Prepared) -> float:
    """||W||_2 of a chain with one matrix (normalised), by SVD, with the margin."""
    return float(np.linalg.norm(prep.Ws[0], 2)) * (1 + SVD_MARGIN)


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
        if _has_p(p):
            A[i0:i1, i0:i1] += (W.T * (p * lam)) @ W
        blk = -(W.T * (m * lam)[None, :])
        A[i0:i1, j0:j1] += blk
        A[j0:j1, i0:i1] += blk.T
    A[offs[L - 1]:offs[L], offs[L - 1]:offs[L]] -= F * Ws[-1].T @ Ws[-1]
    A = (A + A.T) / 2
    d = np.sqrt(np.maximum(np.abs(np.diag(A)), 1e-300))
    A = A / d[:, None] / d[None, :]
    return float(np.linalg.eigvalsh(A)[0])
