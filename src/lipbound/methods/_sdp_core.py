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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.linalg as sla
import torch

from ..errors import MethodFailed, Unsupported
from ..network import tensor_view

# relative margin added to every certified value (absorbs rounding in the last pivot)
REL_MARGIN = 1e-9
# floor of a multiplier relative to the largest one of its layer (a zero multiplier makes M_k singular)
FLOOR = 1e-12


class CertificateError(MethodFailed):
    """A pivot of the sequential decomposition is not positive definite in float64."""


class ScaledWeights(Sequence):
    """The normalised weights W_k / c_k as a lazy sequence: a matrix is divided (and cached) only when it is
    read, so the torch recursion, which folds 1/c_k into its own products, never copies the network's
    weights (a fresh 8 MB array costs ~20 ms of page faults on the sandboxed machines)."""

    def __init__(self, raw: list, scales):
        self.raw = list(raw)
        self.scales = np.asarray(scales, dtype=np.float64)
        self._cache: dict = {}

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]
        if i not in self._cache:
            self._cache[i] = self.raw[i] / self.scales[i]
        return self._cache[i]

    @property
    def shapes(self) -> list:
        return [W.shape for W in self.raw]


@dataclass
class Prepared:
    """A dense chain ready for the LipSDP family.

    Ws      -- normalised weights W_k / c_k, k = 1..L (the last possibly one row, ctx.output): a list, or
               a lazy `ScaledWeights` over the network's own matrices;
    scales  -- the c_k (> 0);
    alphas, betas -- slope bounds of the L-1 activations: per layer a float (global bounds, the same for
               every neuron) or an array with one entry per neuron (local bounds on a box region)."""

    Ws: list
    scales: np.ndarray
    alphas: list
    betas: list
    zero: bool = False  # some W_k == 0: the network is constant
    names: list = field(default_factory=list)
    unstable: list | None = None  # local: per hidden layer, the neurons whose slope interval is not a point
    slope_model: str = "global"  # global, relaxed or local (see `with_slopes`)
    slope_bounds: dict | None = None  # box region: {"global": (alphas, betas), "local": (alphas, betas)}

    def with_slopes(self, model: str) -> "Prepared":
        """The same chain with another slope model (box regions only):
        global  -- the activations' own slope bounds (valid everywhere);
        local   -- per neuron the derivative range on the box ([1, 1] for an active ReLU, [0, 0] dead);
        relaxed -- [global alpha, local beta]: alpha*beta = 0 for ReLU, so the closed forms (built for
                   [0, beta]) apply unchanged, while dead neurons and smaller local slopes still count.
        All three are valid on the box (each interval contains the neuron's secant slopes there)."""
        from dataclasses import replace

        if model == self.slope_model:
            return self
        if self.slope_bounds is None:
            raise Unsupported(f"slope model {model!r} needs a box region")
        if model in ("global", "local"):
            a, b = self.slope_bounds[model]
        elif model == "relaxed":
            (ga, _), (la, lb) = self.slope_bounds["global"], self.slope_bounds["local"]
            a, b = [np.minimum(x, g) for x, g in zip(la, ga)], lb
        else:
            raise Unsupported(f"slopes={model!r}: use auto, relaxed, local or global")
        return replace(self, alphas=a, betas=b, slope_model=model)

    @property
    def L(self) -> int:
        return len(self.Ws)

    @property
    def shapes(self) -> list:
        return self.Ws.shapes if isinstance(self.Ws, ScaledWeights) else [W.shape for W in self.Ws]

    def raw_and_inverse_scales(self) -> tuple[list, list]:
        """(matrices, factors) with W_k(normalised) = factor_k * matrix_k, without copying."""
        if isinstance(self.Ws, ScaledWeights):
            return self.Ws.raw, [1.0 / float(c) for c in self.Ws.scales]
        return list(self.Ws), [1.0] * len(self.Ws)

    @property
    def ps(self) -> list:
        """alpha * beta per layer (float or per-neuron array)."""
        return [a * b for a, b in zip(self.alphas, self.betas)]

    @property
    def ms(self) -> list:
        """(alpha + beta) / 2 per layer (float or per-neuron array)."""
        return [(a + b) / 2 for a, b in zip(self.alphas, self.betas)]

    def slope_max(self, k: int) -> float:
        """The largest |slope| of hidden layer k (a Lipschitz constant of its activations)."""
        return float(max(np.max(np.abs(self.alphas[k])), np.max(np.abs(self.betas[k]))))

    @property
    def log_scale(self) -> float:
        return float(np.sum(np.log(self.scales)))

    @property
    def widths(self) -> list:
        sh = self.shapes
        return [q[1] for q in sh] + [sh[-1][0]]

    @property
    def n_hidden(self) -> int:
        return int(sum(q[0] for q in self.shapes[:-1]))

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


def _norm_estimate(W: np.ndarray, iters: int = 4) -> float:
    """A positive number close to ||W||_2 (exact SVD for small matrices, a few power iterations otherwise,
    which land within a small factor). Only used for normalisation: any positive number is valid."""
    if W.size <= 40_000:
        return float(np.linalg.norm(W, 2))
    Wt = tensor_view(W)
    v = torch.randn(W.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    v /= torch.linalg.vector_norm(v)
    s = 0.0
    for _ in range(iters):
        u = Wt @ v
        s = float(torch.linalg.vector_norm(u))
        w = Wt.T @ u
        nw = float(torch.linalg.vector_norm(w))
        if nw == 0:
            break
        v = w / nw
    if s == 0.0:
        s = float(np.linalg.norm(W))
    return s


def local_slopes(net, region) -> list:
    """Per-neuron slope bounds [alpha_j, beta_j] of every activation over a box region: the range of the
    activation's derivative on certified (CROWN) bounds of its pre-activation. For two inputs of the box
    the secant slope of each neuron lies in that range (mean value theorem), so LipSDP's quadratic
    constraints with these slopes hold on the box and the bound is a local Lipschitz constant there.
    Returns a list of (alpha, beta, unstable count) per activation in graph order. Cost: one CROWN pass."""
    from ..crown import derivative_range, preactivation_bounds
    from ..network import Activation

    acts = [n.op for n in net.nodes if isinstance(n.op, Activation)]
    try:
        bounds = preactivation_bounds(net, region)
    except Unsupported as e:
        raise Unsupported(f"local bounds need certified pre-activation bounds: {e}") from None
    out = []
    for op, (lo, hi) in zip(acts, bounds):
        a, b = derivative_range(op, lo.reshape(-1), hi.reshape(-1))
        a, b = a.numpy().astype(np.float64), b.numpy().astype(np.float64)
        out.append((a, b, int(np.sum(a != b))))
    return out


def prepare(net, ctx, *, check_slopes: bool = True) -> Prepared:
    """The dense chain of ``net`` (normalised), with the output row selected when ctx.output is set; on a
    box region (ctx.region) with per-neuron slope bounds from `local_slopes`.

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
    alphas, betas = np.asarray(alphas, dtype=np.float64), np.asarray(betas, dtype=np.float64)
    unstable = bounds = None
    if ctx.region is not None:
        local = local_slopes(net, ctx.region)
        if len(local) != len(alphas) or any(len(a) != W.shape[0] for (a, _, _), W in zip(local, Ws)):
            raise Unsupported("the activations of the dense chain do not match the graph's (cannot place the "
                              "local slope bounds)")
        bounds = {"global": (alphas, betas), "local": ([a for a, _, _ in local], [b for _, b, _ in local])}
        unstable = [u for _, _, u in local]
    scales, zero = [], False
    for W in Ws:
        s = _norm_estimate(W)
        if not np.isfinite(s):
            raise MethodFailed("non-finite weights")
        if s == 0.0:
            zero = True
            s = 1.0
        scales.append(s)
    prep = Prepared(ScaledWeights(Ws, scales), np.asarray(scales), alphas, betas, zero, names, unstable, "global",
                    bounds)
    return prep if bounds is None else prep.with_slopes("relaxed")


# --------------------------------------------------------------------------------------------------
# Linear algebra helpers (torch float64: its LAPACK/BLAS is several times faster than scipy's here)
# --------------------------------------------------------------------------------------------------

_DT = torch.float64


def _t(a) -> torch.Tensor:
    """A float64 torch view of a numpy array (no copy when it is already float64)."""
    if isinstance(a, torch.Tensor):
        return a
    return tensor_view(a)


def chol(M) -> torch.Tensor:
    """Lower Cholesky factor (float64 LAPACK potrf, lower triangle of M read); CertificateError if M is
    not positive definite."""
    R, info = torch.linalg.cholesky_ex(_t(M))
    if int(info) != 0:
        raise CertificateError("not positive definite")
    d = torch.diagonal(R)
    if not bool(torch.all(torch.isfinite(d))) or bool(torch.any(d <= 0)):
        raise CertificateError("not positive definite")
    return R


def gram(C: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """scale * C^T C, exactly symmetric. For wide C only the upper block triangle is multiplied (a blocked
    syrk: 5/8 of the flops of a full product) and mirrored. Cost O(m n^2) for C of shape (m, n)."""
    n = C.shape[1]
    if n < 256:
        G = C.T @ C
        return (G + G.T) * (scale / 2)
    b = 4
    e = [i * n // b for i in range(b + 1)]
    G = torch.empty((n, n), dtype=C.dtype)
    for i in range(b):
        torch.matmul(C[:, e[i]:e[i + 1]].T, C[:, e[i]:], out=G[e[i]:e[i + 1], e[i]:])
    for i in range(b - 1):
        G[e[i + 1]:, e[i]:e[i + 1]] = G[e[i]:e[i + 1], e[i + 1]:].T
    if scale != 1.0:
        G *= scale
    return G


def gram_t(R: torch.Tensor | None, W: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """scale * W M^{-1} W^T for M = R R^T (R None means M = I), symmetric. Cost O(n^2 m + n m^2)."""
    C = W.T if R is None else torch.linalg.solve_triangular(R, W.T, upper=False)
    return gram(C, scale)


def lam_max(A, exact: bool = True) -> float:
    """Largest eigenvalue of a symmetric matrix: exact (LAPACK) when ``exact`` or the matrix is small;
    otherwise a Lanczos estimate (`lanczos_max`), which may sit slightly below: use it only for
    multiplier choices, never for a certified value."""
    A = _t(A)
    n = A.shape[0]
    if n == 1:
        return float(A[0, 0])
    if exact or n <= 300:
        return float(torch.linalg.eigvalsh(A)[-1])
    return lanczos_max(A)


def lanczos_max(A: torch.Tensor, max_steps: int = 80, rtol: float = 1e-7) -> float:
    """Lanczos estimate of lambda_max of a symmetric matrix (full reorthogonalisation, deterministic start,
    stopped when the top Ritz value moves by less than ``rtol``). A Ritz value never exceeds lambda_max,
    so this is an underestimate. Cost: one mat-vec (memory-bound n^2 read) per step, at most max_steps."""
    n = A.shape[0]
    g = torch.Generator().manual_seed(12345)
    q = torch.randn(n, dtype=A.dtype, generator=g)
    q /= torch.linalg.vector_norm(q)
    Q = torch.empty((min(max_steps, n) + 1, n), dtype=A.dtype)
    Q[0] = q
    alphas, betas = [], []
    prev = None
    theta = 0.0
    for j in range(min(max_steps, n)):
        w = A @ Q[j]
        a = float(w @ Q[j])
        alphas.append(a)
        # full reorthogonalisation (twice is enough) against the basis so far
        B = Q[: j + 1]
        w -= B.T @ (B @ w)
        w -= B.T @ (B @ w)
        b = float(torch.linalg.vector_norm(w))
        if j % 5 == 4 or b <= 1e-14 * max(abs(a), 1e-300) or j == min(max_steps, n) - 1:
            T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
            theta = float(np.linalg.eigvalsh(T)[-1])
            if prev is not None and abs(theta - prev) <= rtol * abs(theta):
                break
            prev = theta
        if b <= 1e-14 * max(abs(a), 1e-300):
            break
        betas.append(b)
        Q[j + 1] = w / b
    return theta


# --------------------------------------------------------------------------------------------------
# The sequential decomposition (certificate) with a multiplier policy
# --------------------------------------------------------------------------------------------------


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


# rounding margin of a pivot, per row, relative to the size of the terms whose difference it is
PIVOT_MARGIN = 4 * np.finfo(np.float64).eps


def _pivot(lam: torch.Tensor, KX: torch.Tensor, n_inner: int) -> torch.Tensor:
    """M_k = diag(lam) - lam K lam (elementwise) minus a diagonal rounding margin, a fresh matrix.

    Why the margin: M_k is a difference of terms that can be far larger than M_k itself (huge multipliers
    on nearly linear neurons), and a float64 Cholesky then succeeds on cancellation noise. An entry of
    lam K lam carries a rounding error up to g v_j v_l with v_j = lam_j sqrt(K_jj) and g = 4 (n_inner + n) u
    (K's entries are inner products of length ~n_inner); the diagonal r_j = g (lam_j + v_j sum_l v_l)
    dominates each row of that error (Gershgorin), so M_k - diag(r) lies below the exact M_k. Using it in
    the rest of the recursion only makes the next pivots smaller and the final value larger: a valid,
    conservative certificate, and rows with tiny multipliers get tiny margins."""
    Mk = KX * lam[:, None]
    Mk *= lam[None, :]
    Mk.neg_()
    v = torch.sqrt(torch.clamp(torch.diagonal(KX), min=0.0)) * lam
    g = PIVOT_MARGIN * (n_inner + lam.shape[0])
    Mk.diagonal().add_(lam - g * (lam + v * v.sum()))
    return Mk


def _has_p(p) -> bool:
    """Whether a layer's alpha*beta (float or per-neuron array) is anywhere non-zero."""
    return bool(np.any(np.asarray(p) != 0.0))


def _scaled_gram(R, W: torch.Tensor, f: float, m) -> torch.Tensor:
    """D_m V M^{-1} V^T D_m with V = f W (m a float, or a per-neuron array: D_m = diag(m))."""
    if np.ndim(m) == 0:
        return gram_t(R, W, (float(m) * f) ** 2)
    G = gram_t(R, W, f * f)
    mt = torch.from_numpy(np.asarray(m, dtype=np.float64))
    G *= mt[:, None]
    G *= mt[None, :]
    return G


def _p_term_K(Mprev: torch.Tensor | None, W: torch.Tensor, f: float, lam: torch.Tensor, p, m) -> torch.Tensor:
    """D_m V X^{-1} V^T D_m with V = f W and X = M_{k-1} + V^T diag(p lam) V (the alpha*beta term of §2,
    reference §6 for per-neuron slopes)."""
    plam = lam * (float(p) if np.ndim(p) == 0 else torch.from_numpy(np.asarray(p, dtype=np.float64)))
    X = (f * f) * (W.T * plam[None, :]) @ W
    if Mprev is None:
        X.diagonal().add_(1.0)
    else:
        X += Mprev
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
    Cost: per layer one triangular solve, one Gram product and one Cholesky factorisation (O(n_k^3)),
    plus the policy's cost."""
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
        KX = _p_term_K(M, W, inv[k], lam, p, m) if _has_p(p) else K
        Rk = Mk = None
        for attempt in range(60):
            Mk = _pivot(lam, KX, W.shape[1])
            try:
                Rk = chol(Mk)
                break
            except CertificateError:
                if attempt == 0:
                    repaired += 1
                    sq = torch.sqrt(lam)
                    mu = lam_max(KX * sq[:, None] * sq[None, :], exact=False)
                    t = min(0.999 / mu, 0.999) if mu > 0 else 0.5
                else:
                    t = 0.5
                lam = lam * t
                if _has_p(p):  # the p-term depends on lam: recompute X
                    KX = _p_term_K(M, W, inv[k], lam, p, m)
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
