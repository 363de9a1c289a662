"""Certified lower bounds: the Jacobian norm at witness points.

For a function differentiable at x, ||J(x)||_{p->p} <= L (the Lipschitz constant over any open set
containing x), so the norm of the autograd Jacobian at a point where every activation input is strictly
away from every kink of its activation (``fn.kinks()``: ReLU's 0, hardtanh's ends, hardswish's +-3, ...)
and every MaxMin pair strictly away from a tie is a certified lower bound with that point as witness
(`differentiable_mask`). Points on a kink are never used as witnesses. Every activation of the table and
MaxMin are handled (the Jacobian comes from autograd).

* `lower-sample`: the largest Jacobian norm over random points of the region.
* `lower-grad`: multi-start gradient ascent on the Jacobian norm of a smoothed network (every kink
  smoothed by the table's surrogate ``fn.smooth(z, t)``, MaxMin through a smoothed ReLU, with a
  decreasing temperature), each iterate re-evaluated on the true network; Adam from `lipbound.optim`.
  On piecewise-linear networks with few inputs it first walks from piece to piece (`region_walk`): the
  gradient is constant on each activation region, so the ascent alone sees no slope there.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ...activations import make as make_activation
from ...network import DTYPE, Activation, Add, MaxMin, MaxPool2d, Network
from ...norms import operator_norm
from ...optim import Adam
from ...registry import ALL_ACTIVATIONS, ALL_OPS, MethodContext, MethodResult, Option, register_method

#: MaxMin (GroupSort-2) is handled besides the default operations: autograd differentiates it, ties are kinks
OPS = ALL_OPS | {"MaxMin"}
#: lower-grad's annealing ends by this share of the time left when the ascent starts (see `lower_grad`)
ANNEAL_SHARE = 0.95
KINK_TOL = 1e-9  # a witness must have every activation input at least this far from every kink (relative)


# --------------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------------


def _magnitude(net: Network, vals: list, i: int) -> torch.Tensor:
    """Per entry of node i, the magnitude of the terms summed into its value (|A| |x| + |c| for an affine
    producer; otherwise, per point, the largest |value| of the node): the scale of its rounding error."""
    node, z = net.nodes[i], vals[i]
    if node.op.is_affine:
        prev = vals[node.inputs[0]]
        const = node.op.constant_term(net.nodes[node.inputs[0]].shape)
        return (node.op.abs_linear(prev.abs()) + const.abs()).expand_as(z)
    return z.abs().flatten(1).amax(1).reshape((-1,) + (1,) * (z.ndim - 1)).expand_as(z)


def _local_dependence(net: Network, vals: list) -> list:
    """Per node, a bool tensor of its batch shape: False where the value is constant on a neighbourhood
    of the point (an entry none of whose inputs varies, or the output of a piecewise-linear activation
    on a flat piece strictly off its kinks); True when unsure. Cost: one pass of |A| per affine op."""
    dep = [torch.ones_like(vals[0], dtype=torch.bool)]
    for node in net.nodes[1:]:
        op, ins = node.op, [dep[j] for j in node.inputs]
        if op.is_affine:
            d = op.abs_linear(ins[0].to(DTYPE)) > 0
        elif isinstance(op, Activation):
            z, fn = vals[node.inputs[0]], op.fn
            flat = torch.zeros_like(ins[0])
            if fn.piecewise_linear:
                flat = fn.derivative(z) == 0
                for p, _, _ in fn.kinks():
                    flat &= z != p
            d = ins[0] & ~flat
        elif isinstance(op, Add):
            d = ins[0] | ins[1]
        elif isinstance(op, MaxMin):
            f = ins[0].to(DTYPE)  # max of the pair's flags at the max position, min at the min position
            d = (op.forward(f) - op.forward(-f)) > 0  # -> (or + and) > 0 at both: either partner varies
        elif isinstance(op, MaxPool2d):
            d = op.forward(ins[0].to(DTYPE)) > 0
        else:
            d = torch.ones((vals[0].shape[0],) + tuple(node.shape), dtype=torch.bool)
        dep.append(d.expand((vals[0].shape[0],) + tuple(node.shape)))
    return dep


def differentiable_mask(net: Network, x: torch.Tensor) -> torch.Tensor:
    """True for the points of the batch where the network is differentiable with the autograd Jacobian
    as its derivative: every activation input z is clearly off every kink p of its activation
    (``fn.kinks()``: |z - p| larger than KINK_TOL times the magnitude of the terms summed into z plus
    |p|, so the side of the kink is not a rounding artefact) and the two entries of every MaxMin pair are
    clearly apart (a tie a = b is a kink of max / min), unless the entries involved are constant near
    the point (`_local_dependence`). Points where the mask is False are never witnesses."""
    B = x.shape[0]
    with torch.no_grad():
        vals = net.forward_all(x)
        ok = torch.isfinite(x.reshape(B, -1)).all(1) & torch.isfinite(vals[-1].reshape(B, -1)).all(1)
        dep = None
        for node in net.nodes:
            op = node.op
            kinks = op.fn.kinks() if isinstance(op, Activation) else ()
            if not kinks and not isinstance(op, MaxMin):
                continue
            if dep is None:
                dep = _local_dependence(net, vals)
            i = node.inputs[0]
            z, scale, varies = (t.reshape(B, -1) for t in (vals[i], _magnitude(net, vals, i), dep[i]))
            if isinstance(op, MaxMin):
                hi, lo = (torch.as_tensor(t) for t in op.pairs(net.nodes[i].shape))
                near = (z[:, hi] - z[:, lo]).abs() <= KINK_TOL * (scale[:, hi] + scale[:, lo])
                ok &= ~(near & (varies[:, hi] | varies[:, lo])).any(1)
                continue
            for p, _, _ in kinks:
                near = (z - p).abs() <= KINK_TOL * (scale + abs(p))
                ok &= ~(near & varies).any(1)
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
    "lower-sample", kind="lower", norms=(1, 2, math.inf), regions=("global", "box"), ops=OPS,
    activations=ALL_ACTIVATIONS,
    description="largest Jacobian norm over random points of the region (certified lower bound, witness)",
    options={"samples": Option(int, 2000, "number of random points", min=1)}, family="lower",
)
def lower_sample(net: Network, ctx: MethodContext) -> MethodResult:
    """Certified lower bound (any norm, global or box): max of ||J(x)|| over random points x, with
    the best point as witness. Cost: samples x (number of outputs) backward passes."""
    n = ctx.option("samples")
    rng = ctx.rng()
    best_val, best_x, done, _ = _run_sampling(net, ctx, n, rng)
    status = "ok" if done >= n else "time_limit"
    return _result(best_val, best_x, ctx, {"samples": done}, status)


# --------------------------------------------------------------------------------------------------
# lower-grad
# --------------------------------------------------------------------------------------------------


#: the smooth surrogate of relu(a - b) inside a smoothed MaxMin (max = b + relu(a - b), min = a - relu(a - b))
_RELU = make_activation("relu")


def smoothed_nodes(net: Network) -> list[int]:
    """The nodes `_smooth_forward` smooths: activations with kinks (``fn.kinks()``) and MaxMin."""
    return [i for i, n in enumerate(net.nodes)
            if (isinstance(n.op, Activation) and n.op.fn.kinks()) or isinstance(n.op, MaxMin)]


def _maxmin_parts(op, x: torch.Tensor, shape):
    """(a, b, order) with a = x[hi], b = x[lo] over the pairs of ``op`` (flattened) and the permutation
    that puts cat([max, min]) back into the node's layout."""
    hi, lo = (torch.as_tensor(t) for t in op.pairs(shape))
    xf = x.reshape(x.shape[0], -1)
    return xf[:, hi], xf[:, lo], torch.argsort(torch.cat([hi, lo]))


def _smooth_forward(net: Network, x: torch.Tensor, temps: dict) -> torch.Tensor:
    """The network with every kink smoothed: an activation with kinks by its table surrogate
    ``fn.smooth(z, t)``, a MaxMin pair by max = b + s(a - b), min = a - s(a - b) with s the smoothed ReLU;
    ``temps[i]``: the temperature of node i (a tensor broadcastable to the batch of its inputs)."""
    vals = [x]
    for i, node in enumerate(net.nodes[1:], start=1):
        op = node.op
        ins = [vals[j] for j in node.inputs]
        if i not in temps:
            vals.append(op.forward(*ins))
        elif isinstance(op, MaxMin):
            a, b, order = _maxmin_parts(op, ins[0], net.nodes[node.inputs[0]].shape)
            r = _RELU.smooth(a - b, temps[i])
            vals.append(torch.cat([b + r, a - r], 1)[:, order].reshape(ins[0].shape))
        else:
            vals.append(op.fn.smooth(ins[0], temps[i]))
    return vals[-1]


def _temperature_scales(net: Network, xb: torch.Tensor, nodes: list[int]) -> dict:
    """Per smoothed node and point, the median distance of its inputs to the nearest kink (|a - b| for
    MaxMin) plus 1e-6, so the smoothing follows each point's scale."""
    with torch.no_grad():
        vals = net.forward_all(xb)
    out = {}
    for i in nodes:
        node = net.nodes[i]
        z = vals[node.inputs[0]]
        if isinstance(node.op, MaxMin):
            a, b, _ = _maxmin_parts(node.op, z, net.nodes[node.inputs[0]].shape)
            dist = (a - b).abs()
        else:
            zf = z.reshape(z.shape[0], -1)
            dist = torch.stack([(zf - p).abs() for p, _, _ in node.op.fn.kinks()]).amin(0)
        shape = (xb.shape[0],) + (1,) * (1 if isinstance(node.op, MaxMin) else len(net.nodes[node.inputs[0]].shape))
        out[i] = (dist.median(1).values + 1e-6).reshape(shape)
    return out


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


# --------------------------------------------------------------------------------------------------
# the region walk (lower-grad on piecewise-linear networks with few inputs)
# --------------------------------------------------------------------------------------------------

#: the walk runs on networks with at most this many inputs (its step differentiates every kinked neuron's
#: input along every input axis: n forward passes per point)
WALK_MAX_INPUTS = 64
#: points kept from one step of the walk to the next (distinct values), and candidates bounded per step
WALK_BEAM, WALK_CANDIDATES = 32, 4096
#: share of lower-grad's time left that the walk may take, when there is a time limit
WALK_SHARE = 0.5
#: without a time limit, the walk stops after this many rounds in a row found nothing better
WALK_PATIENCE = 3
#: a step crosses the neuron's hyperplane by this share of the distance to it (and 1e-9 absolute)
WALK_OVERSHOOT = 1e-3


def walked_nodes(net: Network) -> list[int]:
    """The piecewise-linear activations with kinks, whose hyperplanes the walk crosses; empty (no walk) when
    the network has more than `WALK_MAX_INPUTS` inputs."""
    if net.n_inputs > WALK_MAX_INPUTS:
        return []
    return [i for i, n in enumerate(net.nodes)
            if isinstance(n.op, Activation) and n.op.fn.piecewise_linear and n.op.fn.kinks()]


def _kink_offsets(net: Network, x: torch.Tensor, nodes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(d, G): for every point of the batch x (B, n) and every (neuron, kink p) of the activations ``nodes``,
    d = z - p (B, K) with z the neuron's input, and its gradient with respect to x (B, K, n), by forward-mode
    differentiation along the n input axes (B n rows). Exact where the point is off every kink."""
    import torch.autograd.forward_ad as fwad

    B, n = x.shape
    rows = x.repeat_interleave(n, dim=0)  # a copy: make_dual refuses overlapping memory (an expanded view)
    tangents = torch.eye(n, dtype=DTYPE).repeat(B, 1)
    ds, gs = [], []
    with fwad.dual_level():
        vals = [fwad.make_dual(rows.reshape((-1,) + net.input_shape), tangents.reshape((-1,) + net.input_shape))]
        for node in net.nodes[1:]:
            vals.append(node.op.forward(*[vals[j] for j in node.inputs]))
        for i in nodes:
            z, t = fwad.unpack_dual(vals[net.nodes[i].inputs[0]])
            z, t = z.reshape(B, n, -1)[:, 0, :], t.reshape(B, n, -1).transpose(1, 2)
            for p, _, _ in net.nodes[i].op.fn.kinks():
                ds.append(z - p)
                gs.append(t)
    return torch.cat(ds, 1), torch.cat(gs, 1)


def _crossings(net, x, nodes, lo, hi) -> torch.Tensor:
    """For each point, the points just across the nearest kink hyperplanes (at most `WALK_CANDIDATES` in all):
    x - (d / |g|^2) g (1 + WALK_OVERSHOOT), moved 1e-9 further, clipped to the box [lo, hi] if given."""
    d, G = _kink_offsets(net, x, nodes)
    g2 = (G * G).sum(2)
    dist = torch.where(g2 > 0, d.abs() / g2.clamp_min(1e-300).sqrt(), torch.full_like(d, math.inf))
    k = max(1, min(d.shape[1], WALK_CANDIDATES // max(1, x.shape[0])))
    near = torch.topk(dist, k, dim=1, largest=False).indices
    d, G, g2 = d.gather(1, near), G.gather(1, near.unsqueeze(2).expand(-1, -1, G.shape[2])), g2.gather(1, near)
    step = -(d / g2.clamp_min(1e-300)).unsqueeze(2) * G
    cand = x.unsqueeze(1) + step * (1 + WALK_OVERSHOOT) + torch.sign(step) * 1e-9
    cand = cand[torch.isfinite(dist.gather(1, near))]
    if lo is not None:
        cand = torch.maximum(torch.minimum(cand, hi), lo)
    return cand


def _distinct_best(x: torch.Tensor, vals: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best points of distinct values (a piece's points share its value: one per piece)."""
    order = torch.argsort(vals, descending=True)
    keep, seen = [], set()
    for i in order.tolist():
        v = float(vals[i])
        if not math.isfinite(v):
            break
        key = round(v, 12)
        if key not in seen:
            seen.add(key)
            keep.append(i)
            if len(keep) == k:
                break
    idx = torch.as_tensor(keep, dtype=torch.long)
    return x[idx], vals[idx]


def region_walk(net: Network, ctx: MethodContext, starts: torch.Tensor, deadline: float | None, steps: int):
    """Certified lower bound on a piecewise-linear network (the gradient is constant on each activation region,
    so an ascent finds no slope inside a piece): from the starts, step across the nearest kink hyperplanes
    of each point into the neighbouring pieces, keep the `WALK_BEAM` best pieces, repeat until a step finds
    nothing better (or ``steps`` steps, or the deadline). Returns (value, point, steps taken); value -inf if
    no differentiable point was found. Cost per step: beam x n forward-mode rows, and beam x min(K, 4096/beam)
    Jacobians (K: kinked neurons), each point checked as in `jacobian_norms`."""
    nodes = walked_nodes(net)
    lo = hi = None
    if ctx.region is not None:
        lo = torch.as_tensor(ctx.region.lower, dtype=DTYPE).reshape(-1)
        hi = torch.as_tensor(ctx.region.upper, dtype=DTYPE).reshape(-1)
    x = starts.reshape(starts.shape[0], -1)
    vals = jacobian_norms(net, x.reshape((-1,) + net.input_shape), ctx.norm, ctx.output)
    x, vals = _distinct_best(x, vals, WALK_BEAM)
    best = float(vals[0]) if len(vals) else -math.inf
    taken = 0
    while taken < steps and len(vals) and not (deadline is not None and time.perf_counter() > deadline):
        cand = _crossings(net, x, nodes, lo, hi)
        cv = torch.cat([jacobian_norms(net, c.reshape((-1,) + net.input_shape), ctx.norm, ctx.output)
                        for c in torch.split(cand, _batch_size(net))]) if len(cand) else cand[:, 0]
        x, vals = _distinct_best(torch.cat([x, cand]), torch.cat([vals, cv]), WALK_BEAM)
        taken += 1
        if not float(vals[0]) > best:
            break  # no piece better than the best one within one crossing of the beam
        best = float(vals[0])
    return best, (x[0].reshape(net.input_shape) if len(vals) else None), taken


def _walk_rounds(net: Network, ctx: MethodContext, starts: torch.Tensor, rng) -> tuple[float, object, dict]:
    """`region_walk` from lower-grad's starts, then from the best of fresh random samples (`WALK_BEAM` x 8 per
    round) each time a walk stalls, until ``walk`` steps in all, `WALK_SHARE` of the time left, or (without
    a time limit) `WALK_PATIENCE` rounds in a row without a better value. Returns (value, point, details)."""
    left = ctx.time_left()
    deadline = time.perf_counter() + WALK_SHARE * left if math.isfinite(left) else None
    budget, best, best_x, rounds, idle = ctx.option("walk"), -math.inf, None, 0, 0
    # with a time limit the walk is anytime (it restarts while its share lasts); without one, it stops when
    # restarts stop paying
    while budget > 0 and (idle < WALK_PATIENCE or deadline is not None) and \
            not (deadline is not None and time.perf_counter() > deadline):
        if rounds:
            starts = torch.as_tensor(sample_points(net, ctx, 8 * WALK_BEAM, rng), dtype=DTYPE)
        val, x, taken = region_walk(net, ctx, starts, deadline, budget)
        budget -= max(1, taken)
        rounds += 1
        idle = 0 if val > best else idle + 1
        if val > best:
            best, best_x = val, x
    return best, best_x, {"walk_best": best if math.isfinite(best) else None, "walk_rounds": rounds,
                          "walk_steps": ctx.option("walk") - max(0, budget)}


#: lower-grad keeps at least this many starts when it drops some to finish its steps in time
MIN_RESTARTS = 8


def _starts_that_fit(n: int, step_s: float, steps: int, ascent_s: float) -> int:
    """How many of ``n`` starts can take ``steps`` ascent steps in ``ascent_s`` seconds, one step of all n
    having taken ``step_s`` (cost ~ linear in the starts): n when they all fit, else at least
    `MIN_RESTARTS`. The planner's restarts come from a cost model that can be off by 7x on convolutional
    networks (Convnet_avgpool: 204 restarts planned for 58 s, where 32 take 37 s)."""
    if not math.isfinite(ascent_s) or step_s * steps <= ascent_s:
        return n
    return max(MIN_RESTARTS, min(n, int(n * ascent_s / (step_s * steps))))


def _kept_starts(n: int, n_best: int, keep: int) -> torch.Tensor:
    """Indices of ``keep`` of the ``n`` starts (the first ``n_best`` are the best samples, best first; the
    rest random points): half from each part."""
    kb = min(n_best, (keep + 1) // 2)
    kr = min(n - n_best, keep - kb)
    kb = min(n_best, keep - kr)
    return torch.cat([torch.arange(kb), n_best + torch.arange(kr)])


@register_method(
    "lower-grad", kind="lower", norms=(1, 2, math.inf), regions=("global", "box"), ops=OPS,
    activations=ALL_ACTIVATIONS,
    description="multi-start gradient ascent on the Jacobian norm (smoothed ReLUs), certified lower bound",
    options={"restarts": Option(int, 32, "number of starting points", min=1),
             "steps": Option(int, 150, "ascent steps", min=0),
             "samples": Option(int, 2000, "random points screened for starts, as in lower-sample (at least "
                               "restarts)", min=0),
             "walk": Option(int, 20, "on piecewise-linear networks with at most 64 inputs: steps of the region "
                            "walk (restarted from fresh samples when it stalls) before the ascent (0: none)",
                            min=0)},
    family="lower",
)
def lower_grad(net: Network, ctx: MethodContext) -> MethodResult:
    """Certified lower bound (any norm, global or box): gradient ascent on ||J(x)|| from the best of
    random samples. The objective is c^T J(x) d with c, d the output weights / input direction that
    attain the operator norm at the current point (re-aimed every 5 steps), on a network whose kinks
    are smoothed (`_smooth_forward`: ReLU -> t*softplus(z/t), ...), t shrinking from 0.3 to 1e-3 of each
    point's distance to the kinks, so the objective has a gradient; every iterate is re-evaluated on
    the true network at differentiable points, and the best one is the witness. Before the ascent, on
    piecewise-linear networks with at most `WALK_MAX_INPUTS` inputs, `region_walk` from the same starts,
    then from fresh samples (`_walk_rounds`: up to ``walk`` steps, at most `WALK_SHARE` of the time left).
    Cost: restarts x steps x (one double-backward pass) + restarts x steps/5 x (m backward passes), plus
    the walk's steps (see `region_walk`)."""
    restarts = ctx.option("restarts")
    steps = ctx.option("steps")
    n_samples = ctx.option("samples")
    rng = ctx.rng()
    # screen random points exactly as lower-sample does (same seed, same points), so lower-grad is never
    # below lower-sample; the best half of the starts are the best samples, the rest random ones
    best_val, best_x, _, starts = _run_sampling(net, ctx, max(n_samples, restarts), rng, keep=max(1, restarts // 2))
    sample_best = best_val
    walk = {}
    if ctx.option("walk") and walked_nodes(net) and starts.shape[0]:
        w_val, w_x, walk = _walk_rounds(net, ctx, starts, rng)
        if w_val > best_val:
            best_val, best_x = w_val, w_x.clone()
    smooth = smoothed_nodes(net)

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

    def project(v):  # back into the box (in the scaled coordinates)
        if lo is not None:
            v.copy_(torch.maximum(torch.minimum(v * point_scale, hi), lo) / point_scale)

    adam = Adam([u], eps=1e-12, maximize=True, project=project)
    status = "ok"
    bar = ctx.progress(total=steps, desc=f"{ctx.method}: ascent")
    history = []
    with torch.no_grad():
        scales = _temperature_scales(net, starts, smooth)
        c, d = _norm_directions(net.jacobian(starts), ctx.norm, ctx.output)
    t_ascent, ascent_s = time.perf_counter(), ANNEAL_SHARE * ctx.time_left()
    for it in range(steps):
        if ctx.out_of_time():
            status = "time_limit"
            break
        # the annealing follows the steps, or the clock when the time limit comes first: a run cut by its
        # limit still ends at a low temperature, where the iterates sit on the true network's pieces
        # (Convnet_avgpool global l2: a 52 s run cut mid-schedule reached 48.9, a whole 37 s one 55.0)
        frac = min(1.0, max(it / max(1, steps - 1), (time.perf_counter() - t_ascent) / ascent_s))
        last = it == steps - 1 or frac >= 1.0
        rel_t = 0.3 * (1e-3 / 0.3) ** frac  # geometric annealing of the temperature
        temps = {i: rel_t * sc for i, sc in scales.items()}
        with torch.enable_grad():
            obj = _directional_objective(net, u * point_scale, c, d, temps)
            (grad,) = torch.autograd.grad(obj.sum(), u)
        # a surrogate's second derivative can come out NaN where it underflows (logaddexp's double
        # backward far below a kink): its true value there is ~0, and a NaN would poison the iterate
        grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        adam.step([grad], step_size * (1 - 0.9 * frac))  # ascent; the step decays as the temperature shrinks
        with torch.no_grad():
            if it % 5 == 4 or last:
                x_now = (u * point_scale).detach()
                if lo is not None:  # the rescaling may round a coordinate just outside the box
                    x_now = torch.maximum(torch.minimum(x_now, hi), lo)
                J = net.jacobian(x_now)
                vals = torch.where(differentiable_mask(net, x_now), operator_norm(J, ctx.norm, ctx.output),
                                   torch.tensor(-math.inf, dtype=DTYPE))
                i = int(torch.argmax(vals))
                if float(vals[i]) > best_val:
                    best_val, best_x = float(vals[i]), x_now[i].clone()
                history.append(best_val)
                c, d = _norm_directions(J, ctx.norm, ctx.output)  # re-aim at the current maximiser
                scales = _temperature_scales(net, x_now, smooth)
        bar.update(1)
        if last:
            status = "ok" if it == steps - 1 else "time_limit"
            break
        if it == 0:
            t_first = time.perf_counter()
        elif it == 1 and u.shape[0] > MIN_RESTARTS:  # measured (the second step: the first has set-up costs):
            # fewer starts when all of them cannot finish
            now = time.perf_counter()
            keep = _starts_that_fit(u.shape[0], now - t_first, steps - 2, ascent_s - (now - t_ascent))
            if keep < u.shape[0]:
                idx = _kept_starts(u.shape[0], max(1, restarts // 2), keep)
                u = u.detach()[idx].clone().requires_grad_(True)
                point_scale, c, d = point_scale[idx], c[idx], d[idx]
                scales = {i: t[idx] for i, t in scales.items()}
                adam = Adam([u], eps=1e-12, maximize=True, project=project)
    bar.close()
    details = {"restarts": restarts, "restarts_run": int(u.shape[0]), "steps": steps, "sample_best": sample_best,
               "history": history, **walk}
    return _result(best_val, best_x, ctx, details, status)
