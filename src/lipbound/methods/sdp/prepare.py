"""The dense chain prepared for the LipSDP family, and its float64 linear algebra.

`prepare` turns a network into a `Prepared` chain: the weight matrices W_k of `Network.dense_chain()`
divided by positive numbers c_k (estimates of their spectral norms, `ScaledWeights` does it lazily) and the
slope bounds [alpha, beta] of every activation, global or, on a box region, per neuron (`local_slopes`).

Normalisation: the LipSDP LMI is exactly invariant under W_k -> W_k / c_k (congruence with the block
diagonal d_k = c_1...c_k), so a certificate for the normalised chain with value b gives the value
b * prod(c_k) for the original one, and multipliers L_k(original) = L_k(normalised) / d_k^2.

The linear algebra helpers (`gram`, `gram_t`, `lam_max`, `lanczos_max`) use torch float64: its
LAPACK/BLAS is several times faster than scipy's here. `lanczos_max` underestimates lambda_max: use it
for multiplier choices, never for a certified value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ...errors import MethodFailed, Unsupported
from ...network import tensor_view


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


def local_slopes(net, region, ctx=None) -> list:
    """Per-neuron slope bounds [alpha_j, beta_j] of every activation over a box region: the range of the
    activation's derivative on certified (CROWN) bounds of its pre-activation. For two inputs of the box
    the secant slope of each neuron lies in that range (mean value theorem), so LipSDP's quadratic
    constraints with these slopes hold on the box and the bound is a local Lipschitz constant there.
    The range is the table's `derivative_range` (sound, outward-rounded; any activation, alpha < 0 too).
    Returns a list of (alpha, beta, unstable count) per activation in graph order. Cost: one CROWN pass
    (none when ``ctx``'s blackboard already holds it: `MethodContext.cached`, key "crown")."""
    from ...crown import preactivation_bounds
    from ...network import Activation

    acts = [n.op for n in net.nodes if isinstance(n.op, Activation)]
    try:
        if ctx is not None and ctx.region is region:
            bounds = ctx.cached(net, "crown", lambda: preactivation_bounds(net, region))
        else:
            bounds = preactivation_bounds(net, region)
    except Unsupported as e:
        raise Unsupported(f"local bounds need certified pre-activation bounds: {e}") from None
    out = []
    for op, (lo, hi) in zip(acts, bounds):
        a, b = op.fn.derivative_range(lo.reshape(-1), hi.reshape(-1))
        a, b = a.numpy().astype(np.float64), b.numpy().astype(np.float64)
        out.append((a, b, int(np.sum(a != b))))
    return out


def prepare(net, ctx) -> Prepared:
    """The dense chain of ``net`` (normalised), with the output row selected when ctx.output is set; on a
    box region (ctx.region) with per-neuron slope bounds from `local_slopes`. Any slope bounds alpha <= beta
    (alpha < 0 too: GELU, SiLU, Abs, ...): the certificate keeps the alpha*beta term exactly.

    Raises Unsupported for residual / max-pool networks and for dense matrices that are too large."""
    max_entries = ctx.option("max_entries")
    try:
        chain = net.dense_chain() if max_entries is None else net.dense_chain(max_entries=max_entries)
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
        local = local_slopes(net, ctx.region, ctx)
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


def _t(a) -> torch.Tensor:
    """A float64 torch view of a numpy array (no copy when it is already float64)."""
    if isinstance(a, torch.Tensor):
        return a
    return tensor_view(a)



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
        # a diagonal block from GEMM is not bitwise symmetric on every BLAS (AMD/MKL kernels differ):
        # (x + y) / 2 is, since float addition commutes
        D = G[e[i]:e[i + 1], e[i]:e[i + 1]]
        D.copy_((D + D.T) / 2)
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
