"""Norm conventions.

``norm`` p in {1, 2, inf} means the operator norm of the Jacobian from (R^n, l_p) to (R^m, l_p):
  * p = 2:   the largest singular value;
  * p = inf: the max over outputs j of ||grad f_j||_1 (max row l1 norm);
  * p = 1:   the max over inputs i of the l1 norm of column i (max column l1 norm).
With ``output=j`` the function is the scalar f_j, whose constant is the dual norm of its gradient —
the same formulas applied to the single row j.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .errors import LipboundError

INF = math.inf
NORMS = (1, 2, INF)


def parse_norm(norm) -> float:
    """Accepts 1, 2, inf, '1', '2', 'inf', 'linf', 'l2', ... and returns 1, 2 or math.inf."""
    if isinstance(norm, str):
        key = norm.strip().lower().lstrip("l")
        table = {"1": 1, "2": 2, "inf": INF, "infty": INF, "infinity": INF, "∞": INF}
        if key not in table:
            raise LipboundError(f"unknown norm {norm!r}: use 1, 2 or inf")
        return table[key]
    try:
        value = float(norm)
    except (TypeError, ValueError):
        raise LipboundError(f"unknown norm {norm!r}: use 1, 2 or inf") from None
    if value not in (1.0, 2.0, INF):
        raise LipboundError(f"unsupported norm {norm!r}: use 1, 2 or inf")
    return INF if value == INF else int(value)


def norm_name(norm) -> str:
    """'1', '2' or 'inf' (the JSON spelling)."""
    p = parse_norm(norm)
    return "inf" if p == INF else str(int(p))


def dual(norm) -> float:
    p = parse_norm(norm)
    return {1: INF, 2: 2, INF: 1}[p]


def operator_norm(J, norm, output: int | None = None):
    """Operator norm ||J||_{p->p} of a matrix (m, n) or a batch (B, m, n), numpy or torch.

    Cost: an SVD for p = 2, a sum for p in {1, inf}. Exact (up to float rounding)."""
    p = parse_norm(norm)
    is_torch = isinstance(J, torch.Tensor)
    T = J if is_torch else torch.as_tensor(np.asarray(J, dtype=np.float64))
    batched = T.ndim == 3
    if not batched:
        T = T.unsqueeze(0)
    if output is not None:
        T = T[:, output : output + 1, :]
    if p == 2:
        if T.shape[1] == 1 or T.shape[2] == 1:
            val = T.flatten(1).norm(dim=1)
        else:
            val = torch.linalg.matrix_norm(T, ord=2)
    elif p == INF:
        val = T.abs().sum(2).amax(1)
    else:
        val = T.abs().sum(1).amax(1)
    if not batched:
        val = val[0]
    if is_torch:
        return val
    return val.numpy() if batched else float(val)


def vector_norm(v, norm) -> float:
    p = parse_norm(norm)
    return float(np.linalg.norm(np.asarray(v, dtype=np.float64).ravel(), ord=p))


def spectral_norm_upper(M) -> float:
    """Upper bound on the spectral norm of an entrywise nonnegative matrix M, tight up to ~1e-9 relative and
    certified without trusting an eigensolver: by Collatz-Wielandt, for the nonnegative B = M^T M and any
    v > 0, ||M||_2^2 = rho(B) <= max_i (B v)_i / v_i. v is the (floored, power-iterated) top right singular
    vector; the result never exceeds the Frobenius norm nor sqrt(||M||_1 ||M||_inf). Every product sums
    nonnegative terms (relative rounding <= (m + n) u): the callers' 1 + 1e-10 factor covers it.

    Any matrix J with |J| <= M entrywise has ||J||_2 <= || |J| ||_2 <= ||M||_2 (Perron-Frobenius
    monotonicity), so this bounds the spectral norm of every Jacobian an interval matrix encloses."""
    M = np.asarray(M, dtype=np.float64)
    if M.size == 0 or not np.any(M > 0):
        return 0.0
    fro = float(np.sqrt(np.sum(M * M)))
    if min(M.shape) == 1:
        return fro  # a vector: its spectral norm is its l2 norm
    best = min(fro, float(np.sqrt(M.sum(0).max() * M.sum(1).max())))
    try:
        v = np.abs(np.linalg.svd(M, full_matrices=False)[2][0])
    except np.linalg.LinAlgError:
        return best
    for _ in range(3):
        v = v + 1e-9 * v.max() + 1e-300  # strictly positive
        w = M.T @ (M @ v)
        best = min(best, float(np.sqrt(np.max(w / v))))
        v = w / w.max()
    return best


def spectral_norm_certified(J) -> float:
    """Certified upper bound on the spectral norm of a (signed) matrix J: sqrt of the largest eigenvalue of
    the smaller Gram matrix, plus a margin for forming it and for the symmetric eigensolver (both within
    (m + n) u ||J||_F^2). Cost: one Gram product and one small symmetric eigenvalue problem."""
    J = np.asarray(J, dtype=np.float64)
    if J.size == 0:
        return 0.0
    G = J @ J.T if J.shape[0] <= J.shape[1] else J.T @ J
    fro2 = float(np.sum(J * J))
    lam = float(np.linalg.eigvalsh(G)[-1])
    margin = 4.0 * (sum(J.shape) + 10) * np.finfo(np.float64).eps * fro2
    return math.sqrt(max(lam, 0.0) + margin)
