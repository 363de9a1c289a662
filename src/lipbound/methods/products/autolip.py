"""AutoLip and SeqLip (Scaman & Virmaux, NeurIPS 2018), maths in shared/reference/autolip-seqlip.md.

* ``autolip`` -- the AutoLip graph recursion L_k = sum_i ||d_i g_k|| L_i, run by the one graph traversal
  (`lipbound.traversal.forward`) with the rule table of `lipbound.methods.products.naive` in l2: affine ops by a
  certified spectral norm at their real input shape, activations by their slope bound, max pooling by
  sqrt(windows per pixel), residual Add by the sum. The power-method product (the paper's AutoLip
  value, uncertified) is reported in details['power_method_product'].
* ``seqlip`` -- exact SeqLip on the dense chain: one {0,1}^n enumeration per hidden layer of
  ||S~_{i+1} V_{i+1}^T diag(s) U_i S~_i||_2 (NumPy/torch SVD returns V^T already: it is used as is,
  the transposition of the public code being its bug). Certified upper bound.
* ``seqlip-greedy`` and ``seqlip-topk`` -- the greedy (best single flip per sweep) and top-k
  singular-vector (rank-one updates, first improvement, at most 10 sweeps) variants: estimates.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ... import activations as _activations
from ... import opnorms
from ...errors import Unsupported
from ...network import DTYPE, Network, tensor_view
from ...registry import ALL_ACTIVATIONS, ALL_OPS, MethodResult, Option, register_method
from .naive import lipschitz_product

#: SeqLip's theorem needs every activation derivative in [0, beta]: the monotone activations of the table (with
#: their default parameters; a parameter making one non-monotone, leaky ReLU with a negative slope, is refused
#: when the method runs)
SEQLIP_ACTIVATIONS = frozenset(n for n in _activations.ACTIVATIONS if _activations.make(n).monotone)
CHAIN_OPS = frozenset({"Linear", "Conv2d", "ElementwiseAffine", "AvgPool2d", "Pad", "Reshape", "Transpose",
                       "Activation"})


# --------------------------------------------------------------------------------------------------
# AutoLip
# --------------------------------------------------------------------------------------------------


@register_method("autolip", kind="upper", norms=(2,), regions=("global", "box"), ops=ALL_OPS | {"MaxMin"},
                 activations=ALL_ACTIVATIONS,
                 description="AutoLip graph recursion with certified spectral norms (power-method product in details)",
                 family="autolip")
def autolip(net: Network, ctx) -> MethodResult:
    """Certified upper bound on the global l2 Lipschitz constant (hence valid on any box): the AutoLip
    recursion over the graph (sum over inputs of partial-derivative norms times their constants), with
    every affine op's spectral norm certified (exact SVD / Cholesky certificate for dense or unfolded
    ops, polyphase circular bound for large convolutions, Collatz-Wielandt for pooling).
    details['power_method_product'] is the same recursion with the uncertified power-method norms
    (the paper's AutoLip value). Cost: per affine op, <= 500 power iterations plus the certificate."""
    value, details = lipschitz_product(net, 2, ctx.output)
    est_value, est_details = lipschitz_product(
        net, 2, ctx.output,
        affine_norm=lambda op, shape: _estimate_info(opnorms.spectral_norm(op, shape)))
    details["power_method_product"] = est_value
    details["certified_over_power_method"] = value / est_value if est_value > 0 else None
    if ctx.region is not None:
        details["region_note"] = "global bound (valid on every box)"
    return MethodResult(value, details=details)


def _estimate_info(info):
    est = info.estimate if info.estimate is not None else info.value
    return opnorms.NormInfo(est, "power-method")


# --------------------------------------------------------------------------------------------------
# SeqLip: the factors
# --------------------------------------------------------------------------------------------------


def _chain(net: Network, max_entries: int = 60_000_000):
    """The weight matrices of an affine / activation chain (`Network.dense_chain`, which folds each block
    of consecutive affine ops from its smaller side) and the activations' slope bounds beta."""
    bad = sorted(k for k in net.op_kinds() if ":" not in k and k not in CHAIN_OPS)
    if bad:
        raise Unsupported(f"SeqLip needs an affine / activation chain; this network has {', '.join(bad)}")
    if not net.is_chain():
        raise Unsupported("SeqLip needs an affine / activation chain; this network has residual connections")
    for op in net.activations():
        if not op.fn.monotone:
            raise Unsupported(f"SeqLip needs activation derivatives in [0, beta] (a monotone activation); "
                              f"{op.describe()} is not monotone: its slopes lie in [{op.alpha:g}, {op.beta:g}]")
    layers = net.dense_chain(max_entries)
    Ws = [tensor_view(layer.W) for layer in layers]
    scales = [layer.activation.beta for layer in layers[:-1]]
    return Ws, scales


def seqlip_factors(Ws: list, k: int | None = None):
    """For weight matrices W_1..W_K (numpy/torch, float64) return (A_i, B_i) for each hidden layer,
    A_i = S~_{i+1} V_{i+1}^T (r x n_i), B_i = U_i S~_i (n_i x r'), S~ = S at the first and last
    layer and S^(1/2) in between; ``k`` keeps only the top-k singular triplets (the top-k variant).
    Also returns the AutoLip split value ||A_i|| ||B_i|| per factor and the singular values."""
    svds = []
    K = len(Ws)
    for i, W in enumerate(Ws):
        W = torch.as_tensor(np.asarray(W, dtype=np.float64)) if not isinstance(W, torch.Tensor) else W.to(DTYPE)
        if k is not None and k < min(W.shape) and min(W.shape) <= 3000:
            # top-k triplets from the eigenvectors of the smaller Gram matrix (accurate for the top ones)
            if W.shape[0] <= W.shape[1]:
                lam, U = torch.linalg.eigh(W @ W.T)
                lam, U = lam.flip(0)[:k].clamp_min(0), U.flip(1)[:, :k]
                s = lam.sqrt()
                Vh = (U.T @ W) / s.clamp_min(1e-300)[:, None]
            else:
                lam, V = torch.linalg.eigh(W.T @ W)
                lam, V = lam.flip(0)[:k].clamp_min(0), V.flip(1)[:, :k]
                s = lam.sqrt()
                U = (W @ V) / s.clamp_min(1e-300)[None, :]
                Vh = V.T
        elif k is not None and k < min(W.shape):
            U, s, V = torch.svd_lowrank(W, q=min(min(W.shape), k + 10), niter=6)
            U, s, Vh = U[:, :k], s[:k], V[:, :k].T
        else:
            U, s, Vh = torch.linalg.svd(W, full_matrices=False)
        st = s if i in (0, K - 1) else s.sqrt()
        svds.append((U, s, Vh, st))
    factors = []
    for i in range(K - 1):
        U, _, _, st = svds[i]
        _, _, Vh1, st1 = svds[i + 1]
        A = st1[:, None] * Vh1  # (r_{i+1} x n_i): V_{i+1}^T as returned by svd, NOT transposed again
        B = U * st[None, :]      # (n_i x r_i)
        factors.append((A, B))
    return factors, svds


def _spec(M: torch.Tensor) -> torch.Tensor:
    """Spectral norms of a batch of matrices (..., r1, r2) via the smaller Gram matrix."""
    if M.shape[-1] == 1 or M.shape[-2] == 1:
        return M.flatten(-2).norm(dim=-1)
    G = M @ M.transpose(-1, -2) if M.shape[-2] <= M.shape[-1] else M.transpose(-1, -2) @ M
    return torch.linalg.eigvalsh(G)[..., -1].clamp_min(0).sqrt()


def exact_factor(A: torch.Tensor, B: torch.Tensor, ctx=None, chunk_bits: int = 10, start=None):
    """max over s in {0,1}^n of ||A diag(s) B||_2 by enumeration (the max of a convex function over
    the cube is at a vertex). Returns (value, pattern), or (None, None) if time ran out.

    ``start`` = (value, pattern) of a known vertex (e.g. from the greedy search). Patterns whose
    upper bounds ||G||_F^(1/2) or ||G^2||_F^(1/4) (G the Gram matrix, G = M M^T) already fall below the
    best value found are skipped: they cannot hold the maximum. The others get an exact float64
    eigenvalue. Cost: 2^n Gram matrices plus the unpruned eigenvalue problems, batched."""
    n = A.shape[1]
    outer = torch.einsum("in,nj->nij", A, B)  # (n, r1, r2): a_j b_j^T
    if outer.shape[1] > outer.shape[2]:
        outer = outer.transpose(1, 2)  # the Gram matrix of the smaller side
    lo_bits = min(n, chunk_bits)
    hi_bits = n - lo_bits
    lo_pat = ((torch.arange(2 ** lo_bits)[:, None] >> torch.arange(lo_bits)[None, :]) & 1).to(DTYPE)
    M_lo = torch.einsum("pn,nij->pij", lo_pat, outer[:lo_bits])
    best, best_pat = (-1.0, None) if start is None else start
    evaluated = 0
    keep = 1 - 1e-9  # prune only with a safety factor against rounding in the bounds
    for h in range(2 ** hi_bits):
        if ctx is not None and ctx.out_of_time():
            return None, None
        hi_pat = torch.tensor([(h >> b) & 1 for b in range(hi_bits)], dtype=DTYPE)
        M = M_lo + torch.einsum("n,nij->ij", hi_pat, outer[lo_bits:]) if hi_bits else M_lo
        G = M @ M.transpose(1, 2)
        b2 = best * best if best > 0 else -1.0
        idx = torch.nonzero(torch.linalg.matrix_norm(G) * keep >= b2).flatten()
        if idx.numel() == 0:
            continue
        G = G[idx]
        G2 = G @ G
        sel = torch.linalg.matrix_norm(G2).sqrt() * keep >= b2
        idx, G = idx[sel], G[sel]
        if idx.numel() == 0:
            continue
        evaluated += idx.numel()
        vals = torch.linalg.eigvalsh(G)[:, -1].clamp_min(0).sqrt()
        j = int(torch.argmax(vals))
        if vals[j].item() > best:
            best = vals[j].item()
            pat = lo_pat[int(idx[j])]
            best_pat = torch.cat([pat, hi_pat]) if hi_bits else pat
    exact_factor.last_evaluated = evaluated
    return best, best_pat


def _top_pair(M: torch.Tensor):
    U, s, Vh = torch.linalg.svd(M, full_matrices=False)
    return s[0].item(), U[:, 0], Vh[0]


def greedy_factor(A: torch.Tensor, B: torch.Tensor, mode: str = "best", max_sweeps: int | None = None,
                  exact_candidates: int = 8, ctx=None):
    """Local search for max over s in {0,1}^n of ||A diag(s) B||_2 (an estimate: it may stop below the
    maximum). Start: s = 1, or the end point of an alternating ascent (s given the top singular pair,
    then the pair given s) if better. ``mode='best'``: per sweep, the best single flip (candidates screened by the
    lower bounds ||M' v||, ||M'^T u|| from the current top singular pair, the best few evaluated
    exactly); stop when no flip improves. ``mode='first'``: scan the coordinates and accept any flip
    whose screening lower bound already exceeds the current value (rank-one update of M), at most
    ``max_sweeps`` sweeps. Returns (value, pattern, sweeps)."""
    n = A.shape[1]
    s, M, val, u, v = _alternating_start(A, B, ctx)
    sweeps = 0
    max_sweeps = max_sweeps if max_sweeps is not None else (10 if mode == "first" else 10 * n)
    a2, b2 = (A * A).sum(0), (B * B).sum(1)
    while sweeps < max_sweeps:
        if ctx is not None and ctx.out_of_time():
            break
        sweeps += 1
        lb, sign = _screen(A, B, a2, b2, M, u, v, s)
        if mode == "best":
            order = torch.argsort(lb, descending=True)[:exact_candidates]
            cand = M[None] + sign[order, None, None] * torch.einsum("ik,kj->kij", A[:, order], B[order])
            vals = _spec(cand)
            j = int(torch.argmax(vals))
            if vals[j].item() <= val * (1 + 1e-12):
                break
            idx = int(order[j])
            M = cand[j]
            s[idx] = 1 - s[idx]
            val, u, v = _top_pair(M)
        else:
            M, val, u, v, improved = _first_improvement_sweep(A, B, a2, b2, M, s, val, u, v, lb, sign, ctx)
            if not improved:
                break
    return val, s, sweeps


def _alternating_start(A: torch.Tensor, B: torch.Tensor, ctx=None):
    """The start of `greedy_factor`: s = 1, replaced by the end point of the alternating ascent of
    u^T A diag(s) B v (the best s for fixed (u, v) is s_j = [(A^T u)_j (B v)_j > 0], the best (u, v) for
    fixed s the top singular pair) when that is better. Returns (s, M = A diag(s) B, value, u, v)."""
    s = torch.ones(A.shape[1], dtype=DTYPE)
    M = A @ B
    val, u, v = _top_pair(M)
    s2, val2, u2, v2 = s, val, u, v
    for _ in range(50):
        if ctx is not None and ctx.out_of_time():
            break
        s_new = (((A.T @ u2) * (B @ v2)) > 0).to(DTYPE)
        if torch.equal(s_new, s2):
            break
        s2 = s_new
        val2, u2, v2 = _top_pair(A @ (s2[:, None] * B))
    if val2 > val:
        s, val, u, v = s2, val2, u2, v2
        M = A @ (s[:, None] * B)
    return s, M, val, u, v


def _screen(A, B, a2, b2, M, u, v, s):
    """Lower bounds on ||M'||_2 after flipping each coordinate j (M' = M +- a_j b_j^T): the larger of
    ||M' v|| and ||M'^T u|| for the current top singular pair; and the flip signs (+1 on, -1 off)."""
    sign = 1 - 2 * s  # +1 switches a unit on, -1 off
    Mv, MTu = M @ v, M.T @ u
    bv, au = B @ v, A.T @ u  # (n,)
    # ||M v + sign_j a_j (b_j.v)||^2 and ||M^T u + sign_j b_j (a_j.u)||^2
    g1 = (Mv @ Mv) + 2 * sign * bv * (A.T @ Mv) + bv ** 2 * a2
    g2 = (MTu @ MTu) + 2 * sign * au * (B @ MTu) + au ** 2 * b2
    return torch.maximum(g1, g2).clamp_min(0).sqrt(), sign


def _first_improvement_sweep(A, B, a2, b2, M, s, val, u, v, lb, sign, ctx=None):
    """One sweep of ``mode='first'``: scan the coordinates and accept every flip whose screening lower bound
    exceeds the current value (rank-one update of M, ``s`` flipped in place, the top pair refreshed by warm
    power steps). Returns (M, value, u, v, improved)."""
    improved = False
    j = 0
    while True:
        if ctx is not None and ctx.out_of_time():
            break
        hits = torch.nonzero(lb[j:] > val * (1 + 1e-12)).flatten()
        if hits.numel() == 0:
            break
        j = j + int(hits[0])
        M = M + sign[j] * torch.outer(A[:, j], B[j])
        s[j] = 1 - s[j]
        val = lb[j].item()
        for _ in range(3):  # refresh the top pair by warm power steps (val stays a lower bound)
            v = M.T @ u
            v = v / v.norm()
            u = M @ v
            val = max(val, u.norm().item())
            u = u / u.norm()
        improved = True
        lb, sign = _screen(A, B, a2, b2, M, u, v, s)
        j += 1
    val, u, v = _top_pair(M)
    return M, val, u, v, improved


# --------------------------------------------------------------------------------------------------
# SeqLip methods
# --------------------------------------------------------------------------------------------------


#: seconds per unit of the (truncated) SVDs of `seqlip_factors`: m n min(m, n) per layer (full SVD), or
#: m n min(m, n) + min(m, n)^3 with k (Gram eigendecomposition); measured 2026-11-29 on cifar_base_kw's
#: dense chain (5.6e10 units, 6 s on one loaded thread); on the slow side
SVD_UNIT_S = 2e-10


def factor_cost(Ws: list) -> float:
    """Estimated seconds of `seqlip_factors` on the chain ``Ws``."""
    return sum(SVD_UNIT_S * (W.shape[0] * W.shape[1] * min(W.shape) + min(W.shape) ** 3) for W in Ws)


def _seqlip_common(net, ctx, variant: str):
    Ws, scales = _chain(net)
    if ctx.output is not None:
        Ws[-1] = Ws[-1][ctx.output:ctx.output + 1]
    if len(Ws) == 1:
        v = opnorms.dense_spectral_bound(Ws[0]).value
        return MethodResult(v, kind="upper", details={"layers": [], "note": "no hidden layer: exact norm"})
    if variant == "exact":  # before any factorisation: the hidden widths are the rows of all but the last matrix
        max_width = ctx.option("max_width")
        for i, W in enumerate(Ws[:-1]):
            if W.shape[0] > max_width:
                raise Unsupported(f"exact SeqLip enumerates 2^n patterns per hidden layer: hidden layer {i + 1} has "
                                  f"width {W.shape[0]} > max_width={max_width} (use seqlip-greedy / seqlip-topk, or "
                                  "raise max_width)")
    k = None
    if variant == "topk":
        k = ctx.option("k")
    elif variant == "greedy":
        gk = ctx.option("max_rank")
        if max(min(W.shape) for W in Ws) > gk:
            k = gk
    est = factor_cost(Ws)
    if est > ctx.time_left():  # the factorisations cannot be interrupted and give no value before they end
        raise Unsupported(f"estimated {est:.3g} s for this network (the singular value decompositions of its "
                          f"{len(Ws)} layers), more than the time limit {ctx.time_limit:g} s")
    factors, svds = seqlip_factors(Ws, k=k)
    records, value, status, autolip_split = [], 1.0, "ok", 1.0
    clock = _Clock(ctx, None if variant == "exact" else ctx.option("budget"))
    bar = ctx.progress(total=len(factors), desc=f"seqlip-{variant}")
    for i, (A, B) in enumerate(factors):
        split = svds[i + 1][3][0].item() * svds[i][3][0].item()
        autolip_split *= split
        rec = {"hidden_layer": i + 1, "width": int(A.shape[1]), "autolip_split": split * scales[i]}
        if variant == "exact":
            g_val, g_pat, _ = greedy_factor(A, B, mode="best", ctx=clock)
            f, pat = exact_factor(A, B, clock, start=(g_val * (1 - 1e-9), g_pat))
            if f is None:  # out of time: the split bound ||A|| ||B|| keeps the product valid
                f, status = split, "time_limit"
                rec["note"] = "time limit: AutoLip split used for this factor"
            else:
                rec["active"] = int(pat.sum().item())
        else:
            # best-flip sweeps for layers up to max_rank wide; wider ones first-improvement sweeps
            mode = "best" if variant == "greedy" and A.shape[1] <= ctx.option("max_rank") else "first"
            f, pat, sweeps = greedy_factor(A, B, mode=mode, ctx=clock, max_sweeps=ctx.option("max_sweeps"))
            rec["sweeps"], rec["active"], rec["search"] = sweeps, int(pat.sum().item()), mode
        rec["factor"] = f * scales[i]
        rec["ratio_to_autolip"] = f / split if split > 0 else None
        value *= f * scales[i]
        records.append(rec)
        bar.update(1)
    bar.close()
    if variant != "exact" and clock.out_of_time():
        status = "time_limit"  # the search stopped early: still an estimate
    details = {"layers": records, "autolip_product": autolip_split * math.prod(scales),
               "ratio_to_autolip": value / (autolip_split * math.prod(scales)) if autolip_split > 0 else None}
    if k is not None:
        details["top_k"] = k
    if variant == "exact":
        value *= 1 + 1e-9  # float64 SVD / eigenvalue rounding
    return MethodResult(value, status=status, details=details)


class _Clock:
    """The method's time limit, or ``budget`` seconds when no limit is given (None: no budget)."""

    def __init__(self, ctx, budget):
        self.ctx = ctx
        self.deadline = None if budget is None else time.perf_counter() + float(budget)

    def out_of_time(self) -> bool:
        if self.ctx.out_of_time():
            return True
        return self.deadline is not None and self.ctx.time_limit is None and time.perf_counter() > self.deadline


@register_method("seqlip", kind="upper", norms=(2,), regions=("global", "box"), ops=CHAIN_OPS,
                 activations=SEQLIP_ACTIVATIONS,
                 description="exact SeqLip: {0,1}^n enumeration per hidden layer (widths <= max_width)",
                 options={"max_width": Option(int, 20, "widest hidden layer to enumerate", min=1)},
                 family="autolip")
def seqlip(net: Network, ctx) -> MethodResult:
    """Certified upper bound on the global l2 Lipschitz constant of an affine/activation chain with
    activation derivatives in [0, beta]: the SeqLip product over hidden layers of
    max_{s in {0,1}^n} ||S~_{i+1} V_{i+1}^T diag(s) U_i S~_i||_2 (times beta), computed exactly by
    enumeration. Refuses (unsupported) hidden layers wider than max_width. Cost: 2^n small eigenvalue
    problems per hidden layer (n = 20: about a million)."""
    return _seqlip_common(net, ctx, "exact")


@register_method("seqlip-greedy", kind="estimate", norms=(2,), regions=("global", "box"), ops=CHAIN_OPS,
                 activations=SEQLIP_ACTIVATIONS,
                 description="greedy SeqLip (best single flip per sweep): an estimate",
                 options={"max_rank": Option(int, 256, "layers above this rank use their top singular vectors "
                                             "and first-improvement sweeps", min=1),
                          "max_sweeps": Option(int, None, "sweeps per hidden layer (auto: 10 x width for best-flip "
                                               "sweeps, 10 for first-improvement ones)", min=0),
                          "budget": Option(float, 60.0, "seconds when no time limit is given", min=0)},
                 family="autolip")
def seqlip_greedy(net: Network, ctx) -> MethodResult:
    """Estimate (neither an upper nor a lower bound) of the SeqLip bound, l2, global: per hidden layer a
    local search from the all-ones pattern applying the best single flip per sweep until none improves
    (hidden layers wider than max_rank: top-k singular triplets and first-improvement sweeps, as
    seqlip-topk). Cost: per sweep one screening pass O(n r) and a few small SVDs."""
    return _seqlip_common(net, ctx, "greedy")


@register_method("seqlip-topk", kind="estimate", norms=(2,), regions=("global", "box"), ops=CHAIN_OPS,
                 activations=SEQLIP_ACTIVATIONS,
                 description="top-k singular-vector greedy SeqLip for wide layers and convolutions: an estimate",
                 options={"k": Option(int, 200, "singular triplets kept per layer", min=1),
                          "max_sweeps": Option(int, 10, "sweeps of first-improvement flips per hidden layer", min=0),
                          "budget": Option(float, 60.0, "seconds when no time limit is given", min=0)},
                 family="autolip")
def seqlip_topk(net: Network, ctx) -> MethodResult:
    """Estimate of the SeqLip bound (l2, global) for wide dense layers and convolutions (via the dense
    chain): each layer truncated to its top-k singular triplets (randomised SVD), then per hidden layer
    first-improvement flips with rank-one updates of the k x k matrix, at most 10 sweeps. Cost: a
    randomised SVD per layer plus O(n k) per accepted flip."""
    return _seqlip_common(net, ctx, "topk")
