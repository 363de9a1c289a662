"""Certified lower bounds: the Jacobian norm at witness points.

For a function differentiable at x, ||J(x)||_{p->p} <= L (the Lipschitz constant over any open set
containing x), so the norm of the autograd Jacobian at a point where every piecewise-linear activation
is strictly away from its kink is a certified lower bound with that point as witness. Points on a kink
are never used as witnesses.

* `lower-sample`: the largest Jacobian norm over random points of the region.
* `lower-grad`: multi-start gradient ascent on the Jacobian norm of a smoothed network (ReLU ->
  softplus with a decreasing temperature), each iterate re-evaluated on the true network.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ...network import DTYPE, Activation, Network
from ...norms import operator_norm
from ...registry import ALL_ACTIVATIONS, ALL_OPS, MethodContext, MethodResult, register_method

KINK_TOL = 1e-9  # a witness must have every ReLU pre-activation at least this far from 0 (relative)


# --------------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------------


def differentiable_mask(net: Network, x: torch.Tensor) -> torch.Tensor:
    """True for the points of the batch where every ReLU/LeakyReLU pre-activation is clearly off its
    kink: |z| larger than KINK_TOL times the magnitude of the terms summed into z (so the sign of z is
    not a rounding artefact). There the autograd Jacobian is the true derivative."""
    ok = torch.ones(x.shape[0], dtype=torch.bool)
    with torch.no_grad():
        vals = net.forward_all(x)
        for node in net.nodes:
            if isinstance(node.op, Activation) and node.op.is_piecewise_linear:
                src = net.nodes[node.inputs[0]]
                z = vals[node.inputs[0]]
                if src.op.is_affine:
                    prev = vals[src.inputs[0]]
                    const = src.op.constant_term(net.nodes[src.inputs[0]].shape)
                    scale = src.op.abs_linear(prev.abs()) + const.abs()
                else:
                    scale = z.abs().flatten(1).amax(1).reshape((-1,) + (1,) * (z.ndim - 1)).expand_as(z)
                z, scale = z.reshape(x.shape[0], -1), scale.reshape(x.shape[0], -1)
                ok &= ((z.abs() > KINK_TOL * scale) | ((z == 0) & (scale == 0))).all(1)
    return ok


def jacobian_norms(net: Network, x: torch.Tensor, norm, output: int | None) -> torch.Tensor:
    """||J(x_b)||_{p->p} for every point of a batch (rows restricted to ``output`` if given);
    points on a ReLU kink get -inf, so they can never become witnesses."""
    J = net.jacobian(x)
    vals = operator_norm(J, norm, output)
    return torch.where(differentiable_mask(net, x.reshape((-1,) + net.input_shape)), vals,
                       torch.full_like(vals, -math.inf))


def sample_points(net: Network, ctx: MethodContext, n: int, rng: np.random.Generator) -> np.ndarray:
    """Random points of the region; globally, Gaussian points at several scales and uniform [0, 1]."""
    shape = net.input_shape
    if ctx.region is not None:
        pts = ctx.region.sample(n, rng)
        if ctx.region.center is not None:
            pts[0] = ctx.region.center
        return pts
    scales = np.array([0.1, 0.3, 1.0, 3.0, 10.0])
    pts = rng.standard_normal((n,) + shape) * rng.choice(scales, size=(n,) + (1,) * len(shape))
    pts[: n // 5] = rng.random((n // 5,) + shape)
    return pts


def best_of(net, x: torch.Tensor, norm, output, best_val: float, best_x):
    vals = jacobian_norms(net, x, norm, output)
    i = int(torch.argmax(vals))
    if float(vals[i]) > best_val:
        return float(vals[i]), x[i].detach().clone()
    return best_val, best_x


def _batch_size(net: Network) -> int:
    return int(max(16, min(1024, 2_000_000 // max(1, net.n_inputs * max(1, net.n_outputs)))))


def _run_sampling(net: Network, ctx: MethodContext, n_samples: int, rng, keep: int = 0):
    """Screen ``n_samples`` random points of the region in batches.

    Returns (best value, best point, number screened, the ``keep`` best points and ``keep`` random
    points as a tensor of starts for an ascent)."""
    best_val, best_x, done = -math.inf, None, 0
    bs = _batch_size(net)
    top_x = torch.empty((0,) + net.input_shape, dtype=DTYPE)
    top_v = torch.empty(0, dtype=DTYPE)
    others = []
    bar = ctx.progress(total=n_samples, desc=f"{ctx.method}: sampling")
    while done < n_samples and (done == 0 or not ctx.out_of_time()):  # at least one batch
        k = min(bs, n_samples - done)
        x = torch.as_tensor(sample_points(net, ctx, k, rng), dtype=DTYPE)
        vals = jacobian_norms(net, x, ctx.norm, ctx.output)
        i = int(torch.argmax(vals))
        if float(vals[i]) > best_val:
            best_val, best_x = float(vals[i]), x[i].clone()
        if keep:
            top_x, top_v = torch.cat([top_x, x]), torch.cat([top_v, vals])
            order = torch.argsort(top_v, descending=True)[:keep]
            top_x, top_v = top_x[order], top_v[order]
            others.append(x[: max(1, keep // 4)])
        done += k
        bar.update(k)
    bar.close()
    starts = top_x
    if keep and others:
        pool = torch.cat(others)
        starts = torch.cat([top_x, pool[torch.as_tensor(rng.permutation(pool.shape[0])[:keep])]])
    return best_val, best_x, done, starts


def _result(best_val, best_x, ctx, details, status="ok") -> MethodResult:
    if best_x is None or not math.isfinite(best_val):
        return MethodResult(None, status="failed", reason="no differentiable sample point found", details=details)
    return MethodResult(best_val, witness=best_x.numpy(), status=status, details=details)


# --------------------------------------------------------------------------------------------------
# lower-sample
# --------------------------------------------------------------------------------------------------


@register_method(
    "lower-sample", kind="lower", norms=(1, 2, math.inf), regions=("global", "box"), ops=ALL_OPS,
    activations=ALL_ACTIVATIONS,
    description="largest Jacobian norm over random points of the region (certified lower bound, witness)",
    options={"samples": "number of random points (default 2000)"}, family="lower",
)
def lower_sample(net: Network, ctx: MethodContext) -> MethodResult:
    """Certified lower bound (any norm, global or box): max of ||J(x)|| over random points x, with
    the best point as witness. Cost: samples x (number of outputs) backward passes."""
    n = ctx.option("samples", 2000, int)
    rng = ctx.rng()
    best_val, best_x, done, _ = _run_sampling(net, ctx, n, rng)
    status = "ok" if done >= n else "time_limit"
    return _result(best_val, best_x, ctx, {"samples": done}, status)


# --------------------------------------------------------------------------------------------------
# lower-grad
# --------------------------------------------------------------------------------------------------


def _smooth_forward(net: Network, x: torch.Tensor, temps: list[torch.Tensor]) -> torch.Tensor:
    """The network with each ReLU/LeakyReLU replaced by t*softplus(z/t), temperature temps[k]
    (a tensor broadcastable to the batch of pre-activations)."""
    vals = [x]
    k = 0
    for node in net.nodes[1:]:
        op = node.op
        ins = [vals[j] for j in node.inputs]
        if isinstance(op, Activation) and op.is_piecewise_linear:
            t = temps[k]
            k += 1
            z = ins[0]
            sp = t * torch.nn.functional.softplus(z / t)
            vals.append(sp if op.name == "relu" else op.param * z + (1 - op.param) * sp)
        else:
            vals.append(op.forward(*ins))
    return vals[-1]


def _norm_directions(J: torch.Tensor, norm, output: int | None):
    """Output weights c (B, m) and input directions d (B, n) with c^T J d = ||J||_{p->p} at each point.

    l2: top singular vectors; linf: the best row and the signs of its entries; l1: the signs of the best
    column and that coordinate. Rows other than ``output`` get weight 0 when it is given."""
    B, m, n = J.shape
    if output is not None:
        mask = torch.zeros(m, dtype=J.dtype)
        mask[output] = 1.0
        J = J * mask[None, :, None]
    if norm == 2:
        U, S, Vh = torch.linalg.svd(J, full_matrices=False)
        return U[:, :, 0], Vh[:, 0, :]
    if norm == math.inf:
        j = J.abs().sum(2).argmax(1)
        c = torch.nn.functional.one_hot(j, m).to(J.dtype)
        return c, torch.sign(J[torch.arange(B), j, :])
    i = J.abs().sum(1).argmax(1)
    d = torch.nn.functional.one_hot(i, n).to(J.dtype)
    return torch.sign(J[torch.arange(B), :, i]), d


def _directional_objective(net: Network, x: torch.Tensor, c: torch.Tensor, d: torch.Tensor, temps) -> torch.Tensor:
    """c^T J_smooth(x) d for every point of the batch: one backward pass with its graph kept."""
    B = x.shape[0]
    xf = x.reshape(B, -1)
    y = _smooth_forward(net, xf.reshape((B,) + net.input_shape), temps).reshape(B, -1)
    (g,) = torch.autograd.grad((y * c).sum(), xf, create_graph=True)
    return (g * d).sum(1)


@register_method(
    "lower-grad", kind="lower", norms=(1, 2, math.inf), regions=("global", "box"), ops=ALL_OPS,
    activations=ALL_ACTIVATIONS,
    description="multi-start gradient ascent on the Jacobian norm (smoothed ReLUs), certified lower bound",
    options={"restarts": "number of starting points (default 32)", "steps": "ascent steps (default 150)",
             "samples": "random points screened for starts, as in lower-sample (default 2000)"},
    family="lower",
)
def lower_grad(net: Network, ctx: MethodContext) -> MethodResult:
    """Certified lower bound (any norm, global or box): gradient ascent on ||J(x)|| from the best of
    random samples. The objective is c^T J(x) d with c, d the output weights / input direction that
    attain the operator norm at the current point (re-aimed every 5 steps), on a network whose ReLUs
    are replaced by t*softplus(z/t), t shrinking from 0.3 to 1e-3 of each point's pre-activation
    scale, so the objective has a gradient; every iterate is re-evaluated on
    the true network at differentiable points, and the best one is the witness.
    Cost: restarts x steps x (one double-backward pass) + restarts x steps/5 x (m backward passes)."""
    restarts = ctx.option("restarts", 32, int)
    steps = ctx.option("steps", 150, int)
    n_samples = ctx.option("samples", 2000, int)
    rng = ctx.rng()
    # screen random points exactly as lower-sample does (same seed, same points), so lower-grad is never
    # below lower-sample; the best half of the starts are the best samples, the rest random ones
    best_val, best_x, _, starts = _run_sampling(net, ctx, max(n_samples, restarts), rng, keep=max(1, restarts // 2))
    sample_best = best_val
    pl_nodes = [n for n in net.nodes if isinstance(n.op, Activation)]
    pl_mask = [n.op.is_piecewise_linear for n in pl_nodes]

    def temperature_scales(xb: torch.Tensor) -> list[torch.Tensor]:
        # per point and layer: the median |pre-activation|, so the smoothing follows each start's scale
        with torch.no_grad():
            pre = net.preactivations(xb)
        out = []
        for z, node, is_pl in zip(pre, pl_nodes, pl_mask):
            if is_pl:
                shape = (xb.shape[0],) + (1,) * len(net.nodes[node.inputs[0]].shape)
                out.append((z.abs().median(1).values + 1e-6).reshape(shape))
        return out

    if ctx.region is not None:
        lo = torch.as_tensor(ctx.region.lower, dtype=DTYPE)
        hi = torch.as_tensor(ctx.region.upper, dtype=DTYPE)
        point_scale = torch.full((starts.shape[0],) + (1,) * len(net.input_shape), float((hi - lo).max()) or 1e-3,
                                 dtype=DTYPE)
    else:
        lo = hi = None
        # globally the starts live at very different scales: each moves relative to its own size
        rms = starts.reshape(starts.shape[0], -1).norm(dim=1) / math.sqrt(net.n_inputs)
        point_scale = rms.clamp_min(0.05).reshape((-1,) + (1,) * len(net.input_shape))
    step_size = 0.05
    u = (starts / point_scale).clone().requires_grad_(True)
    # Adam by hand: torch.optim's first use imports torch._dynamo, which costs seconds
    adam_m, adam_v = torch.zeros_like(u), torch.zeros_like(u)
    status = "ok"
    bar = ctx.progress(total=steps, desc=f"{ctx.method}: ascent")
    history = []
    with torch.no_grad():
        scales = temperature_scales(starts)
        c, d = _norm_directions(net.jacobian(starts), ctx.norm, ctx.output)
    for it in range(steps):
        if ctx.out_of_time():
            status = "time_limit"
            break
        frac = it / max(1, steps - 1)
        rel_t = 0.3 * (1e-3 / 0.3) ** frac  # geometric annealing of the temperature
        temps = [rel_t * sc for sc in scales]
        with torch.enable_grad():
            obj = _directional_objective(net, u * point_scale, c, d, temps)
            (grad,) = torch.autograd.grad(obj.sum(), u)
        lr = step_size * (1 - 0.9 * frac)  # decay the step as the temperature shrinks
        adam_m.mul_(0.9).add_(0.1 * grad)
        adam_v.mul_(0.999).add_(0.001 * grad * grad)
        m_hat, v_hat = adam_m / (1 - 0.9 ** (it + 1)), adam_v / (1 - 0.999 ** (it + 1))
        u.data += lr * m_hat / (v_hat.sqrt() + 1e-12)  # ascent
        with torch.no_grad():
            if lo is not None:
                u.data = torch.maximum(torch.minimum(u.data * point_scale, hi), lo) / point_scale
            if it % 5 == 4 or it == steps - 1:
                x_now = (u * point_scale).detach()
                J = net.jacobian(x_now)
                vals = torch.where(differentiable_mask(net, x_now), operator_norm(J, ctx.norm, ctx.output),
                                   torch.tensor(-math.inf, dtype=DTYPE))
                i = int(torch.argmax(vals))
                if float(vals[i]) > best_val:
                    best_val, best_x = float(vals[i]), x_now[i].clone()
                history.append(best_val)
                c, d = _norm_directions(J, ctx.norm, ctx.output)  # re-aim at the current maximiser
                scales = temperature_scales(x_now)
        bar.update(1)
    bar.close()
    details = {"restarts": restarts, "steps": steps, "sample_best": sample_best, "history": history}
    return _result(best_val, best_x, ctx, details, status)
