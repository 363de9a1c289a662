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

from ..network import DTYPE, Activation, Network
from ..norms import operator_norm
from ..registry import ALL_ACTIVATIONS, ALL_OPS, MethodContext, MethodResult, register_method

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


def _run_sampling(net: Network, ctx: MethodContext, n_samples: int, rng) -> tuple[float, torch.Tensor | None, int]:
    best_val, best_x, done = -math.inf, None, 0
    bs = _batch_size(net)
    bar = ctx.progress(total=n_samples, desc=f"{ctx.method}: sampling")
    while done < n_samples and not ctx.out_of_time():
        k = min(bs, n_samples - done)
        x = torch.as_tensor(sample_points(net, ctx, k, rng), dtype=DTYPE)
        best_val, best_x = best_of(net, x, ctx.norm, ctx.output, best_val, best_x)
        done += k
        bar.update(k)
    bar.close()
    return best_val, best_x, done


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
    options={"samples": "number of random points (default 2000)"},
)
def lower_sample(net: Network, ctx: MethodContext) -> MethodResult:
    """Certified lower bound (any norm, global or box): max of ||J(x)|| over random points x, with
    the best point as witness. Cost: samples x (number of outputs) backward passes."""
    n = ctx.option("samples", 2000, int)
    rng = ctx.rng()
    best_val, best_x, done = _run_sampling(net, ctx, n, rng)
    status = "ok" if done >= n else "time_limit"
    return _result(best_val, best_x, ctx, {"samples": done}, status)


# --------------------------------------------------------------------------------------------------
# lower-grad
# --------------------------------------------------------------------------------------------------


def _smooth_forward(net: Network, x: torch.Tensor, temps: list[float]) -> torch.Tensor:
    """The network with each ReLU/LeakyReLU replaced by a softplus of temperature temps[k]."""
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
            if op.name == "relu":
                vals.append(sp)
            else:  # leaky: a z + (1 - a) relu(z)
                vals.append(op.param * z + (1 - op.param) * sp)
        else:
            vals.append(op.forward(*ins))
    return vals[-1]


def _objective(net: Network, x: torch.Tensor, norm, output, temps) -> torch.Tensor:
    """Operator norm of the Jacobian of the smoothed network at each point of the batch
    (differentiable in x). Cost: m backward passes with a graph kept for the second derivative."""
    B = x.shape[0]
    xf = x.reshape(B, -1)
    y = _smooth_forward(net, xf.reshape((B,) + net.input_shape), temps).reshape(B, -1)
    rows = range(y.shape[1]) if output is None else [output]
    grads = []
    for j in rows:
        (g,) = torch.autograd.grad(y[:, j].sum(), xf, create_graph=True)
        grads.append(g)
    J = torch.stack(grads, 1)
    return operator_norm(J, norm)


@register_method(
    "lower-grad", kind="lower", norms=(1, 2, math.inf), regions=("global", "box"), ops=ALL_OPS,
    activations=ALL_ACTIVATIONS,
    description="multi-start gradient ascent on the Jacobian norm (smoothed ReLUs), certified lower bound",
    options={"restarts": "number of starting points (default 32)", "steps": "ascent steps (default 150)",
             "samples": "random points screened for starts (default 1000)"},
)
def lower_grad(net: Network, ctx: MethodContext) -> MethodResult:
    """Certified lower bound (any norm, global or box): gradient ascent on ||J(x)|| from the best of
    random samples. ReLUs are replaced by softplus(z/t)*t with t shrinking from 0.3 to 1e-3 of each
    layer's pre-activation scale, so the objective has a gradient; every iterate is re-evaluated on
    the true network at differentiable points, and the best one is the witness.
    Cost: restarts x steps x (m backward passes with double backward)."""
    restarts = ctx.option("restarts", 32, int)
    steps = ctx.option("steps", 150, int)
    n_samples = ctx.option("samples", 1000, int)
    rng = ctx.rng()
    # screen random points: the best ones are the starts (so lower-grad >= its own sampling phase)
    pool = torch.as_tensor(sample_points(net, ctx, max(n_samples, restarts), rng), dtype=DTYPE)
    best_val, best_x = -math.inf, None
    scores = []
    bs = _batch_size(net)
    for i in range(0, pool.shape[0], bs):
        v = jacobian_norms(net, pool[i : i + bs], ctx.norm, ctx.output)
        scores.append(v)
    scores = torch.cat(scores)
    i_best = int(torch.argmax(scores))
    if math.isfinite(float(scores[i_best])):
        best_val, best_x = float(scores[i_best]), pool[i_best].clone()
    sample_best = best_val
    order = torch.argsort(scores, descending=True)
    n_top = max(1, restarts // 2)
    starts = torch.cat([pool[order[:n_top]], pool[torch.as_tensor(rng.permutation(pool.shape[0])[: restarts - n_top])]])

    # per-activation pre-activation scale, for the smoothing temperatures
    with torch.no_grad():
        pre = net.preactivations(pool[: min(256, pool.shape[0])])
    pl = [n.op for n in net.nodes if isinstance(n.op, Activation)]
    scales = [float(z.abs().median()) + 1e-6 for z, op in zip(pre, pl) if op.is_piecewise_linear]

    if ctx.region is not None:
        lo = torch.as_tensor(ctx.region.lower, dtype=DTYPE)
        hi = torch.as_tensor(ctx.region.upper, dtype=DTYPE)
        step_size = float((hi - lo).max()) / 20 or 1e-3
    else:
        lo = hi = None
        step_size = float(starts.reshape(starts.shape[0], -1).norm(dim=1).median()) / (20 * math.sqrt(net.n_inputs)) + 1e-3
    x = starts.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=step_size)
    status = "ok"
    bar = ctx.progress(total=steps, desc=f"{ctx.method}: ascent")
    history = []
    for it in range(steps):
        if ctx.out_of_time():
            status = "time_limit"
            break
        frac = it / max(1, steps - 1)
        rel_t = 0.3 * (1e-3 / 0.3) ** frac  # geometric annealing of the temperature
        temps = [rel_t * s for s in scales]
        with torch.enable_grad():
            obj = _objective(net, x, ctx.norm, ctx.output, temps)
            opt.zero_grad()
            (-obj.sum()).backward()
        opt.step()
        with torch.no_grad():
            if lo is not None:
                x.data = torch.maximum(torch.minimum(x.data, hi), lo)
            if it % 5 == 4 or it == steps - 1:
                best_val, best_x = best_of(net, x.detach(), ctx.norm, ctx.output, best_val, best_x)
                history.append(best_val)
        for g in opt.param_groups:  # decay the step as the temperature shrinks
            g["lr"] = step_size * (1 - 0.9 * frac)
        bar.update(1)
    bar.close()
    details = {"restarts": restarts, "steps": steps, "sample_best": sample_best, "history": history}
    return _result(best_val, best_x, ctx, details, status)
