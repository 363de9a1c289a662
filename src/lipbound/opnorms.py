"""Operator norms of the operations of `lipbound.network`, certified and estimated.

For every affine op at its actual input shape, in the l1, l2 and l_inf operator norms (the same p on
input and output):

* ``l1`` / ``l_inf`` (`induced_norm`): exact.  l_inf is the max row l1 norm, ``max(|A| 1)``; l1 is the
  max column l1 norm, ``max(|A|^T 1)``.  Both are computed matrix-free from the op's absolute map
  (for convolutions a convolution / transposed convolution with ``|W|`` on a tensor of ones), so they
  cost one or two evaluations of the op.
* ``l2`` (`spectral_norm`): a **certified upper bound** on the largest singular value, never a bare
  power iteration:
    - Reshape / Transpose / Pad: 1 (isometries or crops); ElementwiseAffine (shift/scale/BatchNorm):
      ``max |scale|`` (a diagonal map), exact;
    - Linear: exact eigenvalue of the smaller Gram matrix in float64 plus an explicit rounding margin
      (min side <= 1500), or a Cholesky certificate that ``t I - G`` is positive definite at
      ``t`` slightly above the power-method value (min side <= 4096), else the Gram-iteration bound
      ``sigma_1 <= ||G_t||_F^(1/2^t)`` (Delattre et al. 2023);
    - Conv2d (any stride, padding, dilation, groups): the norm of a circular convolution on the padded
      input grid after a polyphase split of the stride (one small complex SVD per frequency, exact for
      the circular operator, and the real operator is a restriction of it, so the value is >= the
      norm); when that is more than ``tol`` above the power-method value and the dense matrix is small,
      the dense certificate above is used as well and the smaller certified value is kept;
    - AvgPool2d and any other op with non-negative coefficients: the Collatz-Wielandt bound
      ``lambda_max(A^T A) <= max_i (A^T A v)_i / v_i`` for a positive vector v refined by power steps
      (certified for every positive v, tight at the Perron vector).
* `power_method`: the fast **uncertified** autograd-style power method of AutoLip (underestimates).
* Non-affine ops: `activation_slope` (``max(|alpha|, |beta|)``), `maxpool_factor` (1 in l_inf,
  ``sqrt(c)`` in l2 and ``c`` in l1 where c is the exact largest number of windows containing one input
  pixel, counted on the actual grid).

Results are cached per op object (weakly), so the methods of one `compare` share them.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .errors import Unsupported
from .network import (DTYPE, Activation, AffineOp, AvgPool2d, Conv2d, ElementwiseAffine, Linear, MaxPool2d, Pad,
                      Reshape, Transpose)
from .norms import INF, parse_norm

U = float(np.finfo(np.float64).eps)  # unit round-off bound used in margins (2u, conservative)

DENSE_EIGH_MAX = 1500          # min side up to which the Gram eigenvalue is computed directly
# Cholesky certificate: relative slacks tried above the Lanczos estimate of lambda_max (smallest first), and the
# backward-error factor of a successful float64 Cholesky factorisation of an r x r matrix H: it is exact for
# some H + E with ||E||_2 <= CHOLESKY_BACKWARD (r + 1) tr(H) (Demmel 1989; Higham, Thm 10.5, with margin)
CHOLESKY_SLACKS = (1e-10, 1e-7, 1e-4)
CHOLESKY_BACKWARD = 2 * U
DENSE_CHOL_MAX = 4096          # min side up to which a dense Cholesky certificate is tried
DENSE_MAX_ENTRIES = 20_000_000  # largest dense matrix materialised for a certificate (160 MB)
CONV_FFT_TOL = 1e-3            # accept the circular bound when within this factor of the power method


@dataclass
class NormInfo:
    """A certified upper bound ``value`` on an operator norm, with how it was obtained.

    ``estimate``: the power-method value (a lower estimate of the l2 norm), when computed;
    ``method``: 'exact', 'svd', 'cholesky', 'fft', 'gram-iteration', 'collatz-wielandt', ..."""

    value: float
    method: str
    estimate: float | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = {"value": self.value, "method": self.method}
        if self.estimate is not None:
            d["power_method"] = self.estimate
        d.update(self.extra)
        return d


_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _cached(op, key, fn):
    try:
        d = _CACHE.setdefault(op, {})
    except TypeError:  # not weak-referenceable
        return fn()
    if key not in d:
        d[key] = fn()
    return d[key]


def clear_cache():
    _CACHE.clear()


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _n(shape) -> int:
    return int(np.prod(shape))


def _abs_adjoint(op: AffineOp, y: torch.Tensor, in_shape: tuple) -> torch.Tensor:
    """|A|^T y for a batch y (output-shaped)."""
    if isinstance(op, Linear):
        return y @ op.W.abs()
    if isinstance(op, Conv2d):
        tmp = Conv2d(op.weight.abs(), None, op.stride, op.padding, op.dilation, op.groups)
        return tmp.linear_t(y, in_shape)
    if isinstance(op, ElementwiseAffine):
        return y * op.scale.abs()
    if isinstance(op, (AvgPool2d, Pad, Reshape, Transpose)):
        return op.linear_t(y, in_shape)
    raise Unsupported(f"no absolute-value adjoint for the operation {op.kind}")


def _is_nonnegative(op: AffineOp) -> bool:
    return isinstance(op, (AvgPool2d, Pad, Reshape, Transpose))


def out_shape_of(op: AffineOp, in_shape: tuple) -> tuple:
    return tuple(op.output_shape(tuple(in_shape)))


# --------------------------------------------------------------------------------------------------
# l1 and l_inf: exact induced norms
# --------------------------------------------------------------------------------------------------


def induced_norm(op: AffineOp, in_shape: tuple, norm) -> NormInfo:
    """Exact ``||A||_{p->p}`` for p in {1, inf} of the linear part A of an affine op at ``in_shape``.

    l_inf: max row l1 norm = max(|A| 1); l1: max column l1 norm = max(|A|^T 1). Exact (float64
    rounding only, a relative margin of 1e-12 is added). Cost: one evaluation of the op on ones."""
    p = parse_norm(norm)
    if p == 2:
        return spectral_norm(op, in_shape)
    in_shape = tuple(in_shape)
    return _cached(op, ("induced", in_shape, p), lambda: _induced(op, in_shape, p))


def _induced(op, in_shape, p) -> NormInfo:
    if isinstance(op, (Reshape, Transpose)):
        return NormInfo(1.0, "exact")
    if isinstance(op, Pad):
        return NormInfo(1.0, "exact")
    if isinstance(op, ElementwiseAffine):
        s = torch.broadcast_to(op.scale, in_shape).abs().max().item() if _n(in_shape) else 0.0
        return NormInfo(float(s), "exact")
    with torch.no_grad():
        if p == INF:
            ones = torch.ones((1,) + in_shape, dtype=DTYPE)
            rows = op.abs_linear(ones)
            val = rows.max().item()
        else:
            oshape = out_shape_of(op, in_shape)
            ones = torch.ones((1,) + oshape, dtype=DTYPE)
            val = _abs_adjoint(op, ones, in_shape).max().item()
    return NormInfo(float(val) * (1 + 1e-12), "exact")


# --------------------------------------------------------------------------------------------------
# sparse unfolding of a convolution (exact matrix, built by index arithmetic)
# --------------------------------------------------------------------------------------------------

SPARSE_MAX_NNZ = 20_000_000


def conv_sparse_matrix(op: Conv2d, in_shape: tuple):
    """The exact matrix of the Conv2d's linear part at ``in_shape`` as a scipy CSR matrix
    (n_out x n_in, `Conv2d.sparse_matrix`), or None when it would have more than SPARSE_MAX_NNZ stored
    entries. Cost: O(O * C/groups * kh * kw * Ho * Wo)."""
    if op.sparse_entries(tuple(in_shape)) > SPARSE_MAX_NNZ:
        return None
    return op.sparse_matrix(tuple(in_shape))


def _sparse_of(op, in_shape):
    if isinstance(op, Conv2d) and len(in_shape) == 3:
        return _cached(op, ("sparse", tuple(in_shape)), lambda: conv_sparse_matrix(op, tuple(in_shape)))
    return None


# --------------------------------------------------------------------------------------------------
# power method (uncertified)
# --------------------------------------------------------------------------------------------------


def power_method(op: AffineOp, in_shape: tuple, n_iter: int = 500, tol: float = 1e-8, seed: int = 0,
                 v0: torch.Tensor | None = None):
    """AutoLip's power method on A^T A (A the linear part of ``op`` at ``in_shape``).

    Returns (sigma, u, v) with sigma = ||A v||, v unit. An **estimate**: sigma <= ||A||_2 always, and
    converges like (s2/s1)^(2t). Stops when ||v - v_prev|| < tol or after n_iter iterations (the
    reference defaults). Cost: n_iter forward+adjoint evaluations of the op."""
    in_shape = tuple(in_shape)
    S = _sparse_of(op, in_shape)
    if S is not None:  # the same iteration with the exact sparse matrix (faster than float64 convs)
        oshape = out_shape_of(op, in_shape)
        St = S.T.tocsr()
        lin = lambda x: torch.from_numpy(S @ x.reshape(-1).numpy()).reshape((1,) + oshape)  # noqa: E731
        adj = lambda y: torch.from_numpy(St @ y.reshape(-1).numpy()).reshape((1,) + in_shape)  # noqa: E731
    elif isinstance(op, Linear):
        lin = lambda x: x @ op.W.T  # noqa: E731
        adj = lambda y: y @ op.W  # noqa: E731
    else:
        lin = op.linear
        adj = lambda y: op.linear_t(y, in_shape)  # noqa: E731
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        v = torch.randn((1,) + in_shape, generator=g, dtype=DTYPE) if v0 is None else v0.reshape((1,) + in_shape).to(DTYPE)
        v = v / v.norm()
        for _ in range(n_iter):
            w = adj(lin(v))
            nw = w.norm()
            if nw == 0:
                return 0.0, None, v
            w = w / nw
            if (w - v).norm() < tol:
                v = w
                break
            v = w
        Av = lin(v)
        sigma = Av.norm().item()
        u = Av / sigma if sigma > 0 else Av
    return sigma, u, v


# --------------------------------------------------------------------------------------------------
# dense certificates
# --------------------------------------------------------------------------------------------------


def dense_spectral_bound(A, hint: float | None = None) -> NormInfo:
    """Certified upper bound on ||A||_2 of a dense matrix (numpy or torch), float64.

    min side <= DENSE_EIGH_MAX: the largest eigenvalue of the smaller Gram matrix G plus an explicit
    rounding margin (2k+r+4) u ||A||_F^2 (Gram formation and symmetric eigensolver backward errors).
    Otherwise a Cholesky factorisation of t I - G with t just above the Lanczos estimate of
    lambda_max(G) (or hint^2 if larger; ``hint`` is a power-method value) certifies
    lambda_max(G) < t (its backward error is bounded by (r+1) u tr(tI - G)); if it fails, eigenvalues
    as above; above DENSE_CHOL_MAX, the Gram iteration bound.
    Cost: O(m n min(m, n)) for the Gram matrix plus O(min(m,n)^3) (torch linear algebra)."""
    A = torch.as_tensor(np.asarray(A, dtype=np.float64)) if not isinstance(A, torch.Tensor) else A.detach().to(DTYPE)
    m, n = A.shape
    if m == 0 or n == 0:
        return NormInfo(0.0, "exact")
    if min(m, n) == 1:
        return NormInfo(float(A.norm()) * (1 + 4 * U * max(m, n)), "exact")
    k = max(m, n)
    r = min(m, n)
    if r > DENSE_CHOL_MAX:
        return gram_iteration_bound(A)
    G = A @ A.T if m <= n else A.T @ A
    G = (G + G.T) / 2
    fro2 = float((A * A).sum())
    margin = (2 * k + r + 4) * U * fro2
    if r > DENSE_EIGH_MAX:
        lam = _lanczos_top(lambda x: G @ x, r)
        if lam is not None and hint is not None:
            lam = max(lam, hint * hint)
        elif lam is None and hint is not None:
            lam = hint * hint
    if r > DENSE_EIGH_MAX and lam is not None and lam > 0:
        info = _cholesky_bound(G, lam, margin)
        if info is not None:
            return info
    lam = float(torch.linalg.eigvalsh(G)[-1])
    return NormInfo(math.sqrt(max(lam, 0.0) + margin), "svd")


def cholesky_factor(M: torch.Tensor) -> torch.Tensor | None:
    """Lower Cholesky factor of the symmetric float64 matrix M (LAPACK potrf, lower triangle read), or None
    when the factorisation fails or its diagonal is not finite and positive. Cost: r^3 / 3."""
    R, info = torch.linalg.cholesky_ex(M)
    if int(info) != 0:
        return None
    d = torch.diagonal(R)
    if not bool(torch.all(torch.isfinite(d))) or bool(torch.any(d <= 0)):
        return None
    return R


def cholesky_certificate(G: torch.Tensor, t: float) -> float | None:
    """A certified upper bound on lambda_max(G) for a symmetric float64 matrix G: when the Cholesky
    factorisation of H = t I - G succeeds, H + E is positive definite for a backward error E with
    ||E||_2 <= CHOLESKY_BACKWARD (r + 1) tr(H), hence lambda_max(G) <= t + that bound. None when it fails.
    Cost: one r x r Cholesky factorisation."""
    r = G.shape[0]
    H = t * torch.eye(r, dtype=G.dtype) - G
    if cholesky_factor(H) is None:
        return None
    return t + (r + 1) * CHOLESKY_BACKWARD * float(torch.diagonal(H).sum())


def _cholesky_bound(G: torch.Tensor, lam: float, margin: float) -> NormInfo | None:
    """sqrt of a certified bound on lambda_max of the exact Gram matrix from its float64 version G (whose
    formation error is at most ``margin``) and an estimate ``lam`` of its top eigenvalue: the Cholesky
    certificate at t = lam (1 + slack) + margin for the slacks CHOLESKY_SLACKS in turn; None if all fail."""
    for rel in CHOLESKY_SLACKS:
        ub = cholesky_certificate(G, lam * (1 + rel) + margin)
        if ub is not None:
            return NormInfo(math.sqrt(ub + margin), "cholesky", extra={"rel_slack": rel})
    return None


def sparse_spectral_bound(S) -> NormInfo:
    """Certified upper bound on ||S||_2 for a scipy sparse matrix whose smaller side is at most
    DENSE_CHOL_MAX: the smaller Gram matrix G is formed exactly (sparse product), its top eigenvalue
    estimated by Lanczos (ARPACK), and a dense Cholesky factorisation of t I - G with t just above it
    certifies lambda_max(G) < t (rounding margins as in `dense_spectral_bound`); falls back to the
    dense eigenvalue. Cost: the sparse product plus O(r^3 / 3) for the Cholesky factorisation."""
    import scipy.sparse.linalg as sla

    m, n = S.shape
    r, k = min(m, n), max(m, n)
    G = (S @ S.T if m <= n else S.T @ S).tocsr()
    if r <= 64:
        return dense_spectral_bound(torch.from_numpy(S.toarray()))
    fro2 = float(S.multiply(S).sum())
    margin = (2 * k + r + 4) * U * fro2
    try:
        lam = float(sla.eigsh(G, k=1, which="LA", tol=1e-12, return_eigenvectors=False, maxiter=20 * r)[0])
    except Exception:  # ARPACK did not converge: no hint
        lam = None
    Gd = torch.from_numpy(G.toarray())
    Gd = (Gd + Gd.T) / 2
    if lam is not None and lam > 0:
        info = _cholesky_bound(Gd, lam, margin)
        if info is not None:
            return info
    lam = float(torch.linalg.eigvalsh(Gd)[-1])
    return NormInfo(math.sqrt(max(lam, 0.0) + margin), "svd")


def _lanczos_top(matvec, r: int):
    """Top eigenvalue estimate of a symmetric PSD operator (ARPACK Lanczos); None if it fails."""
    import scipy.sparse.linalg as sla

    op = sla.LinearOperator((r, r), matvec=lambda v: matvec(torch.from_numpy(np.ascontiguousarray(v).reshape(-1))).numpy(),
                            dtype=np.float64)
    try:
        return float(sla.eigsh(op, k=1, which="LA", tol=1e-12, return_eigenvectors=False, maxiter=20 * r)[0])
    except Exception:  # noqa: BLE001 - no convergence: no hint
        return None


def gram_iteration_bound(A, n_iter: int = 14) -> NormInfo:
    """Certified upper bound on ||A||_2 by Gram iteration: sigma_1 <= ||G_t||_F^(1/2^t) with
    G_0 = A, G_{t+1} = G_t^T G_t (rescaled at each step, log-scale tracked). Non-increasing in t.
    A relative margin of 1e-9 covers float64 rounding. Cost: t products of min-side matrices."""
    G = torch.as_tensor(np.asarray(A, dtype=np.float64)) if not isinstance(A, torch.Tensor) else A.detach().to(DTYPE)
    logc = 0.0
    best = math.inf
    for t in range(n_iter + 1):
        f = float(G.norm())
        if f == 0:
            return NormInfo(0.0, "gram-iteration")
        best = min(best, math.exp((logc + math.log(f)) / 2 ** t))
        if t == n_iter:
            break
        G = G / f
        G = G @ G.T if G.shape[0] <= G.shape[1] else G.T @ G
        logc = 2 * (logc + math.log(f))
    return NormInfo(best * (1 + 1e-9), "gram-iteration", extra={"iterations": n_iter})


# --------------------------------------------------------------------------------------------------
# convolutions: circular bound after a polyphase split
# --------------------------------------------------------------------------------------------------


def conv_circular_bound(op: Conv2d, in_shape: tuple) -> NormInfo:
    """Certified upper bound on ||A||_2 of a Conv2d (stride, zero padding, dilation, groups) at
    ``in_shape`` = (C, H, W).

    The zero-padded input is embedded in a grid of Nh x Nw phases of the stride (an isometry); the
    strided correlation becomes a stride-1 correlation with C*sh*sw input channels, whose valid outputs
    never wrap around the grid, so the operator is a restriction of the circular correlation on that
    grid. The circular operator's norm is exactly max over the Nh*Nw frequencies of the spectral norm of
    the (O x C sh sw) matrix of the kernel's DFT (Sedghi et al. 2019). Cost: one FFT of the kernel and
    Nh*Nw small complex SVDs."""
    C, H, W = in_shape
    w = op.weight
    O, Cg, kh, kw = w.shape
    sh, sw = op.stride
    ph, pw = op.padding
    dh, dw = op.dilation
    g = op.groups
    kdh, kdw = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    wd = torch.zeros(O, Cg, kdh, kdw, dtype=DTYPE)
    wd[:, :, ::dh, ::dw] = w
    Hp, Wp = H + 2 * ph, W + 2 * pw
    kph, kpw = -(-kdh // sh), -(-kdw // sw)
    Nh, Nw = max(-(-Hp // sh), kph), max(-(-Wp // sw), kpw)
    wpad = torch.zeros(O, Cg, kph * sh, kpw * sw, dtype=DTYPE)
    wpad[:, :, :kdh, :kdw] = wd
    wp = wpad.reshape(O, Cg, kph, sh, kpw, sw).permute(0, 1, 3, 5, 2, 4).reshape(O, Cg * sh * sw, kph, kpw)
    K = torch.fft.fft2(wp, s=(Nh, Nw))  # (O, Cg s^2, Nh, Nw)
    K = K.permute(2, 3, 0, 1).reshape(Nh * Nw, O, Cg * sh * sw)
    Og = O // g
    best = 0.0
    for gi in range(g):
        blk = K[:, gi * Og:(gi + 1) * Og, :]
        if blk.shape[1] == 1 or blk.shape[2] == 1:
            vals = blk.abs().pow(2).sum((1, 2)).sqrt()
        else:
            vals = torch.linalg.matrix_norm(blk, ord=2)
        best = max(best, vals.max().item())
    # rounding of the FFT and SVD: relative error a few hundred ulps
    margin = 1 + 1e3 * U * math.log2(max(Nh * Nw, 2)) + 1e-12
    return NormInfo(best * margin, "fft", extra={"grid": [Nh, Nw]})


# --------------------------------------------------------------------------------------------------
# non-negative operators: Collatz-Wielandt
# --------------------------------------------------------------------------------------------------


def collatz_wielandt_bound(op: AffineOp, in_shape: tuple, n_iter: int = 100) -> NormInfo:
    """Certified upper bound on ||A||_2 for an op whose matrix is entrywise non-negative (pooling,
    padding, permutations): lambda_max(A^T A) <= max_i (A^T A v)_i / v_i for any v > 0 (A^T A is
    non-negative). v is refined by power steps from the all-ones vector (kept strictly positive).
    Cost: n_iter forward + adjoint evaluations."""
    in_shape = tuple(in_shape)
    with torch.no_grad():
        v = torch.ones((1,) + in_shape, dtype=DTYPE)
        best = math.inf
        for _ in range(n_iter):
            w = op.linear_t(op.linear(v), in_shape)
            ratio = (w / v).max().item()
            best = min(best, ratio)
            wmax = w.max().item()
            if wmax <= 0:
                return NormInfo(0.0, "collatz-wielandt")
            v_new = w / wmax + 1e-9
            if (v_new - v).abs().max().item() < 1e-13:
                break
            v = v_new
    return NormInfo(math.sqrt(max(best, 0.0)) * (1 + 1e-10), "collatz-wielandt")


# --------------------------------------------------------------------------------------------------
# l2: certified spectral norm of any affine op
# --------------------------------------------------------------------------------------------------


def _dense_feasible(op, in_shape) -> bool:
    n_in = _n(in_shape)
    n_out = _n(out_shape_of(op, in_shape))
    return n_in * n_out <= DENSE_MAX_ENTRIES and min(n_in, n_out) <= DENSE_CHOL_MAX


def spectral_norm(op: AffineOp, in_shape: tuple, *, with_estimate: bool = True) -> NormInfo:
    """Certified upper bound on ||A||_2 (A the linear part of ``op`` at ``in_shape``), see the module
    docstring for the certificate used per op. ``estimate`` holds the power-method value when computed.
    Cost: a power method (<= 500 evaluations) plus the certificate (at most a dense min-side^3)."""
    in_shape = tuple(in_shape)
    return _cached(op, ("l2", in_shape), lambda: _spectral(op, in_shape))


def _spectral(op, in_shape) -> NormInfo:
    if isinstance(op, (Reshape, Transpose)):
        return NormInfo(1.0, "exact", 1.0)
    if isinstance(op, Pad):
        return NormInfo(1.0, "exact", 1.0)
    if isinstance(op, ElementwiseAffine):
        s = float(torch.broadcast_to(op.scale, in_shape).abs().max().item()) if _n(in_shape) else 0.0
        return NormInfo(s, "exact", s)
    if isinstance(op, Linear):
        W = op.W
        est = None
        if min(W.shape) > DENSE_EIGH_MAX:
            est = power_method(op, in_shape)[0]
        info = dense_spectral_bound(W, hint=est)
        if est is None:
            est = power_method(op, in_shape)[0]
        info.estimate = est
        return info
    est = power_method(op, in_shape)[0]
    if _is_nonnegative(op):
        info = collatz_wielandt_bound(op, in_shape)
        info.estimate = est
        return info
    candidates = []
    if isinstance(op, Conv2d):
        c = conv_circular_bound(op, in_shape)
        candidates.append(c)
        if c.value <= est * (1 + CONV_FFT_TOL):
            c.estimate = est
            return c
    S = _sparse_of(op, in_shape)
    if S is not None and min(S.shape) <= DENSE_CHOL_MAX:
        candidates.append(sparse_spectral_bound(S))
    elif _dense_feasible(op, in_shape):
        with torch.no_grad():
            A = op.dense(in_shape)
        candidates.append(dense_spectral_bound(A, hint=est))
    if not candidates:
        raise Unsupported(f"no certified spectral norm for the operation {op.kind} at input shape {in_shape}")
    best = min(candidates, key=lambda c: c.value)
    best.estimate = est
    if len(candidates) > 1:
        best.extra["other_bounds"] = {c.method: c.value for c in candidates if c is not best}
    return best


def op_norm(op: AffineOp, in_shape: tuple, norm) -> NormInfo:
    """Certified upper bound on ``||A||_{p->p}`` of the linear part of an affine op (exact for
    p in {1, inf}, certified for p = 2)."""
    p = parse_norm(norm)
    return spectral_norm(op, in_shape) if p == 2 else induced_norm(op, in_shape, p)


# --------------------------------------------------------------------------------------------------
# non-affine ops
# --------------------------------------------------------------------------------------------------


def activation_slope(op: Activation) -> float:
    """sup |f'| = max(|alpha|, |beta|): the Lipschitz constant of the activation in every l_p (it is
    elementwise). Exact."""
    return max(abs(op.alpha), abs(op.beta))


def maxpool_overlap(op: MaxPool2d, in_shape: tuple) -> int:
    """The largest number of pooling windows that contain one input pixel, counted exactly on the
    actual grid (padding excluded). Never more than ``op.max_overlap()``. Cost: one convolution."""
    in_shape = tuple(in_shape)

    def count():
        H, W = in_shape[-2], in_shape[-1]
        kh, kw = op.kernel
        ph, pw = op.padding
        out_h, out_w = op.output_shape(in_shape)[-2:]
        x = torch.ones(1, 1, H, W, dtype=DTYPE, requires_grad=True)
        # one unit kernel per window; extra bottom/right zero padding so that the ceil-mode windows exist
        need_h = (out_h - 1) * op.stride[0] + op.dilation[0] * (kh - 1) + 1
        need_w = (out_w - 1) * op.stride[1] + op.dilation[1] * (kw - 1) + 1
        xp = F.pad(x, [pw, max(pw, need_w - W - pw), ph, max(ph, need_h - H - ph)])
        with torch.enable_grad():
            y = F.conv2d(xp, torch.ones(1, 1, kh, kw, dtype=DTYPE), stride=op.stride, dilation=op.dilation)
            y = y[..., :out_h, :out_w]
            (gr,) = torch.autograd.grad(y.sum(), x)
        return int(round(gr.max().item()))

    return _cached(op, ("overlap", in_shape), count)


def maxpool_factor(op: MaxPool2d, in_shape: tuple, norm) -> float:
    """Lipschitz constant of max pooling in l_p -> l_p: the Jacobian picks one input per window, so
    J^T J = diag(number of windows choosing each pixel): l_inf 1, l2 sqrt(c), l1 c, c the largest
    number of windows containing one pixel (`maxpool_overlap`). Certified."""
    p = parse_norm(norm)
    if p == INF:
        return 1.0
    c = maxpool_overlap(op, in_shape)
    return math.sqrt(c) if p == 2 else float(c)


def dual_norm(g: torch.Tensor, norm) -> float:
    """The Lipschitz constant in l_p of the scalar map x -> <g, x>: ||g||_q, 1/p + 1/q = 1."""
    p = parse_norm(norm)
    g = g.reshape(-1)
    if p == 2:
        return float(g.norm())
    if p == INF:
        return float(g.abs().sum())
    return float(g.abs().max())
