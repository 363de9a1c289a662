"""Forward CROWN and alpha-CROWN bounds on the pre-activations of a network over a box.

`preactivation_bounds(net, region, alpha=False)` gives, for the input of every `Activation` node (graph
order), elementwise lower and upper bounds valid for every input in the box. They are computed layer by
layer: interval propagation (from the tightest bounds known so far) picks the neurons that need work
(ReLU / leaky ReLU: those whose interval contains 0; smooth activations: all with a non-trivial
interval), then CROWN back-substitution bounds those neurons through the graph to the input box, using
the linear relaxation of every earlier activation. With ``alpha=True`` the relaxation slopes that are
free (the lower line of an unstable ReLU, both lines of sigmoid / tanh) are optimised per bounded
neuron by projected Adam (alpha-CROWN); every iterate is a valid bound, the best one is kept.

The back-substitution uses the project's one graph traversal (`traversal.backward`) with a rule per
operation (`crown_rules`): affine ops apply their adjoint ``linear_t`` and collect their constant term,
activations apply their relaxation, `Add` passes the coefficients to both inputs (coefficients that
reach a node used twice are summed). MaxPool2d is not supported (raises `Unsupported`).

Relaxations are sound for any slope: for a slope ``a`` the offsets are the exact minimum and maximum of
``f(z) - a z`` over ``[l, u]`` (evaluated at the end points and the critical points of ``f' = a``).
All computations are float64; bounds are certified up to float64 rounding.
"""

from __future__ import annotations


import numpy as np
import torch

from . import traversal
from .errors import Unsupported
from .intervals import IBP_RULES
from .network import DTYPE, Activation, Add, MaxPool2d, Network

#: activations handled by the relaxations here
SUPPORTED_ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh")

#: entries per coefficient tensor before the specifications are processed in chunks
CHUNK_ENTRIES = 1 << 22

#: alpha-CROWN optimises a chunk of specifications only when one pass touches at most this many
#: coefficients (specifications x node sizes); larger chunks keep the CROWN slopes (still sound)
ALPHA_MAX_WORK = 3e6


# --------------------------------------------------------------------------------------------------
# activation facts: derivative ranges and exact relaxation offsets
# --------------------------------------------------------------------------------------------------


def _check_activation(op: Activation):
    if op.name not in SUPPORTED_ACTIVATIONS:
        raise Unsupported(f"bound propagation here supports {', '.join(SUPPORTED_ACTIVATIONS)}, not {op.name}")


def derivative_range(op: Activation, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise [min, max] of the Clarke generalized derivative of the activation over [lo, hi].

    ReLU: 1 if lo > 0, 0 if hi < 0, else [0, 1] (a closed interval touching 0 counts as unstable);
    leaky ReLU likewise with slopes {param, 1}; sigmoid/tanh: exact (the derivative is bell-shaped with
    its maximum at 0). Cost: elementwise."""
    _check_activation(op)
    n = op.name
    if n in ("relu", "leaky_relu"):
        a = 0.0 if n == "relu" else op.param
        one = torch.ones_like(lo)
        neg = torch.full_like(lo, a)
        s_lo_val = torch.where(lo > 0, one, torch.where(hi < 0, neg, torch.full_like(lo, min(a, 1.0))))
        s_hi_val = torch.where(lo > 0, one, torch.where(hi < 0, neg, torch.full_like(lo, max(a, 1.0))))
        return s_lo_val, s_hi_val
    d_lo, d_hi = op.derivative(lo), op.derivative(hi)
    peak = op.derivative(torch.clamp(torch.zeros_like(lo), lo, hi))
    return torch.minimum(d_lo, d_hi), torch.maximum(torch.maximum(d_lo, d_hi), peak)


def _critical_points(op: Activation, slope: torch.Tensor) -> list[torch.Tensor]:
    """Points where f'(z) = slope (all of them, possibly +-inf), or the kink, for the offset search."""
    n = op.name
    if n in ("relu", "leaky_relu"):
        return [torch.zeros_like(slope)]
    if n == "sigmoid":
        disc = torch.sqrt(torch.clamp(1 - 4 * slope, min=0.0))
        out = []
        for sgn in (1.0, -1.0):
            s = torch.clamp((1 + sgn * disc) / 2, 0.0, 1.0)
            out.append(torch.log(s) - torch.log1p(-s))
        return out
    # tanh: 1 - t^2 = slope
    t = torch.clamp(torch.sqrt(torch.clamp(1 - slope, min=0.0)), 0.0, 1.0)
    z = torch.atanh(t)
    return [z, -z]


def line_offsets(op: Activation, lo: torch.Tensor, hi: torch.Tensor, slope: torch.Tensor):
    """(min, max) over z in [lo, hi] of f(z) - slope * z, exactly (end points and critical points).

    ``slope`` may carry extra leading dimensions (per-specification slopes). Gradients flow to
    ``slope`` only (envelope theorem), the arg-extrema are detached."""
    with torch.no_grad():
        lo_b, hi_b = torch.broadcast_tensors(lo, slope.detach())[0], torch.broadcast_tensors(hi, slope.detach())[0]
        cands = [lo_b, hi_b] + [torch.minimum(torch.maximum(c, lo_b), hi_b) for c in _critical_points(op, slope.detach())]
    lo_val = hi_val = None
    for pt in cands:
        val = op.forward(pt) - slope * pt
        lo_val = val if lo_val is None else torch.minimum(lo_val, val)
        hi_val = val if hi_val is None else torch.maximum(hi_val, val)
    return lo_val, hi_val


def default_slopes(op: Activation, lo: torch.Tensor, hi: torch.Tensor):
    """CROWN's default slopes (lower, upper) and the range of slopes worth optimising (dmin, dmax).

    Convex pieces get the chord above and the adaptive line / mid-point tangent below, concave ones the
    reverse; intervals crossing the inflection point of sigmoid/tanh get the chord slope both sides.
    Every slope is sound because offsets come from `line_offsets`."""
    width = hi - lo
    tiny = width <= 1e-12
    mid = (lo + hi) / 2
    chord = torch.where(tiny, op.derivative(mid), (op.forward(hi) - op.forward(lo)) / torch.where(tiny, torch.ones_like(width), width))
    dmin, dmax = derivative_range(op, lo, hi)
    n = op.name
    if n in ("relu", "leaky_relu"):
        a = 0.0 if n == "relu" else op.param
        adaptive = torch.where(hi >= -lo, torch.ones_like(lo), torch.full_like(lo, a))
        adaptive = torch.clamp(adaptive, dmin, dmax)
        if a <= 1.0:  # convex
            return adaptive, chord, dmin, dmax
        return chord, adaptive, dmin, dmax
    tangent = op.derivative(mid)
    convex = hi <= 0  # sigmoid and tanh are convex on (-inf, 0] and concave on [0, inf)
    concave = lo >= 0
    lower = torch.where(convex, tangent, chord)
    upper = torch.where(concave, tangent, chord)
    return lower, upper, dmin, dmax


class ActivationRelaxation:
    """Linear bounds aL z + bL <= f(z) <= aU z + bU for one activation node over [lo, hi] (flat (n,)).

    ``t_lower`` / ``t_upper`` (optional, shape (S, n) in [0, 1]) place the slopes in [dmin, dmax] for
    alpha-CROWN; only the sides marked free in ``free_lower`` / ``free_upper`` use them."""

    def __init__(self, op: Activation, lo: torch.Tensor, hi: torch.Tensor):
        _check_activation(op)
        self.op, self.lo, self.hi = op, lo, hi
        self.a_lo, self.a_up, self.dmin, self.dmax = default_slopes(op, lo, hi)
        n = op.name
        if n in ("relu", "leaky_relu"):
            convex = (0.0 if n == "relu" else op.param) <= 1.0
            self.free_lower, self.free_upper = convex, not convex
        else:
            self.free_lower = self.free_upper = True
        span = self.dmax - self.dmin
        safe = torch.where(span > 0, span, torch.ones_like(span))
        self.t_lower0 = torch.where(span > 0, (self.a_lo - self.dmin) / safe, torch.zeros_like(span)).clamp(0, 1)
        self.t_upper0 = torch.where(span > 0, (self.a_up - self.dmin) / safe, torch.zeros_like(span)).clamp(0, 1)

    def lines(self, t_lower=None, t_upper=None):
        """(aL, bL, aU, bU), broadcastable to (S, n) when slopes are per specification."""
        a_lo = self.a_lo if (t_lower is None or not self.free_lower) else self.dmin + t_lower.clamp(0, 1) * (self.dmax - self.dmin)
        a_up = self.a_up if (t_upper is None or not self.free_upper) else self.dmin + t_upper.clamp(0, 1) * (self.dmax - self.dmin)
        b_lo, _ = line_offsets(self.op, self.lo, self.hi, a_lo)
        _, b_up = line_offsets(self.op, self.lo, self.hi, a_up)
        return a_lo, b_lo, a_up, b_up


# --------------------------------------------------------------------------------------------------
# CROWN back-substitution as rules of the one graph traversal
# --------------------------------------------------------------------------------------------------


class _CrownPass:
    """Holds the relaxations and the running constant of one back-substitution (lower bounds of
    A . node over the box; upper bounds are lower bounds of -A)."""

    def __init__(self, net: Network, relax: dict, alphas: dict | None = None):
        self.net = net
        self.index = {id(n): i for i, n in enumerate(net.nodes)}
        self.relax = relax  # activation node index -> ActivationRelaxation
        self.alphas = alphas or {}
        self.bias = None
        self.rules = {"affine": self._affine, Activation: self._activation, Add: self._add, MaxPool2d: self._maxpool}

    def _add_bias(self, b):
        self.bias = b if self.bias is None else self.bias + b

    def _affine(self, op, node, A):
        in_shape = self.net.nodes[node.inputs[0]].shape
        const = op.constant_term(in_shape)
        c = torch.broadcast_to(const, node.shape)
        if bool((c != 0).any()):
            self._add_bias((A * c).reshape(A.shape[0], -1).sum(1))
        return op.linear_t(A, in_shape)

    def _activation(self, op, node, A):
        k = self.index[id(node)]
        rel = self.relax[k]
        tl, tu = self.alphas.get(k, (None, None))
        aL, bL, aU, bU = rel.lines(tl, tu)
        Af = A.reshape(A.shape[0], -1)
        pos, neg = Af.clamp(min=0), Af.clamp(max=0)
        self._add_bias((pos * bL + neg * bU).sum(1))
        return (pos * aL + neg * aU).reshape(A.shape)

    def _add(self, op, node, A):
        return A, A

    def _maxpool(self, op, node, A):
        raise Unsupported("CROWN bound propagation does not relax max pooling (MaxPool2d)")

    def lower_bound(self, start: int, A: torch.Tensor, box) -> torch.Tensor:
        """Lower bounds of the S linear functions A (S, *shape of node start) of node ``start``."""
        self.bias = torch.zeros(A.shape[0], dtype=DTYPE)
        vals = traversal.backward(self.net, self.rules, A, start=start, what="CROWN back-substitution")
        A0 = vals[0]
        lo, hi = box
        mid, rad = (lo + hi) / 2, (hi - lo) / 2
        out = self.bias
        if A0 is not None:
            A0 = A0.reshape(A0.shape[0], -1)
            out = out + A0 @ mid.reshape(-1) - A0.abs() @ rad.reshape(-1)
        return out


# --------------------------------------------------------------------------------------------------
# layer-by-layer bounds
# --------------------------------------------------------------------------------------------------


def _box_tensors(net: Network, region):
    if isinstance(region, tuple):
        lo, hi = region
    else:
        lo, hi = region.lower, region.upper
    lo = torch.as_tensor(np.asarray(lo, dtype=np.float64)).reshape(net.input_shape)
    hi = torch.as_tensor(np.asarray(hi, dtype=np.float64)).reshape(net.input_shape)
    return lo, hi


def interval_pass(net: Network, box, known: dict, stop: int | None = None) -> list:
    """Interval propagation (the IBP rules) where every Activation's input interval is first
    intersected with the bounds in ``known`` (activation node index -> (lo, hi) flat)."""
    index = {id(n): i for i, n in enumerate(net.nodes)}
    ibp_act = IBP_RULES[Activation]

    def act(op, node, iv):
        k = index[id(node)]
        if k in known:
            lo, hi = known[k]
            iv = (torch.maximum(iv[0], lo.reshape(iv[0].shape)), torch.minimum(iv[1], hi.reshape(iv[1].shape)))
        return ibp_act(op, node, iv)

    rules = dict(IBP_RULES)
    rules[Activation] = act
    lo, hi = box
    with torch.no_grad():
        return traversal.forward(net, rules, (lo.unsqueeze(0), hi.unsqueeze(0)), what="interval propagation", stop=stop)


def _needs_refinement(op: Activation, lo, hi):
    if op.name in ("relu", "leaky_relu"):
        return (lo <= 0) & (hi >= 0)
    return (hi - lo) > 1e-9


def _crown_neurons(net, relax, start, idx, box, alpha, alpha_steps, lr):
    """Lower and upper CROWN bounds of the entries ``idx`` of node ``start``."""
    n_start = net.nodes[start].size
    width = max(node.size for node in net.nodes[: start + 1])
    chunk = max(1, CHUNK_ENTRIES // max(1, 2 * width))
    lows, highs = [], []
    for c0 in range(0, len(idx), chunk):
        sel = idx[c0 : c0 + chunk]
        K = len(sel)
        A = torch.zeros(2 * K, n_start, dtype=DTYPE)
        A[torch.arange(K), sel] = 1.0
        A[torch.arange(K, 2 * K), sel] = -1.0
        A = A.reshape((2 * K,) + net.nodes[start].shape)
        with torch.no_grad():
            best = _CrownPass(net, relax).lower_bound(start, A, box)
        work = 2 * K * sum(node.size for node in net.nodes[: start + 1])
        if alpha and relax and work <= ALPHA_MAX_WORK:
            best = _optimise(net, relax, start, A, box, best, alpha_steps, lr)
        lows.append(best[:K])
        highs.append(-best[K:])
    return torch.cat(lows), torch.cat(highs)


def _optimise(net, relax, start, A, box, best, steps, lr):
    """alpha-CROWN: projected Adam on the free slopes, one set per specification (row of A)."""
    S = A.shape[0]
    params, alphas = [], {}
    for k, rel in relax.items():
        tl = tu = None
        if rel.free_lower:
            tl = rel.t_lower0.expand(S, -1).clone().requires_grad_(True)
            params.append(tl)
        if rel.free_upper:
            tu = rel.t_upper0.expand(S, -1).clone().requires_grad_(True)
            params.append(tu)
        alphas[k] = (tl, tu)
    if not params:
        return best
    # plain Adam written out (torch.optim's first use imports torch._dynamo and sympy: seconds)
    m1 = [torch.zeros_like(p) for p in params]
    m2 = [torch.zeros_like(p) for p in params]
    beta1, beta2, step_lr = 0.9, 0.999, lr
    history = []
    for _ in range(steps):
        lb = _CrownPass(net, relax, alphas).lower_bound(start, A, box)
        with torch.no_grad():
            ok = torch.isfinite(lb)
            best = torch.where(ok, torch.maximum(best, lb), best)
            history.append(float(best.sum()))
            if len(history) > 10 and history[-1] - history[-11] <= 1e-6 * (1 + abs(history[-1])):
                break  # converged
        loss = -lb[torch.isfinite(lb)].sum()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        with torch.no_grad():
            t = len(history)
            for p, g, a, b in zip(params, grads, m1, m2):
                if g is None:
                    continue
                a.mul_(beta1).add_(g, alpha=1 - beta1)
                b.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                denom = (b / (1 - beta2 ** t)).sqrt_().add_(1e-8)
                p.addcdiv_(a, denom, value=-step_lr / (1 - beta1 ** t))
                p.clamp_(0, 1)
            step_lr *= 0.98
    with torch.no_grad():
        lb = _CrownPass(net, relax, alphas).lower_bound(start, A, box)
        best = torch.where(torch.isfinite(lb), torch.maximum(best, lb), best)
    return best.detach()


def forward_bounds(net: Network, region, alpha: bool = False, alpha_steps: int = 50, lr: float = 0.5,
                   method: str = "crown") -> dict:
    """{activation node index: (lower, upper)} of the activation inputs (flat (n,), float64).

    ``method``: "crown" (CROWN / alpha-CROWN, see module doc) or "ibp" (plain interval propagation).
    Certified. Cost: for each activation layer, one back-substitution through the graph below it per
    bounded neuron (batched), times ``alpha_steps`` forward+backward passes with ``alpha``
    (stopped early when the bounds stop improving)."""
    for node in net.nodes:
        if isinstance(node.op, MaxPool2d):
            raise Unsupported("CROWN bound propagation does not relax max pooling (MaxPool2d)")
        if isinstance(node.op, Activation):
            _check_activation(node.op)
    box = _box_tensors(net, region)
    acts = [i for i, n in enumerate(net.nodes) if isinstance(n.op, Activation)]
    known: dict = {}
    relax: dict = {}
    for k in acts:
        p = net.nodes[k].inputs[0]
        ivs = interval_pass(net, box, known, stop=p)
        lo, hi = (t.reshape(-1).clone() for t in ivs[p])
        if method == "crown":
            need = _needs_refinement(net.nodes[k].op, lo, hi)
            idx = need.nonzero().reshape(-1)
            if len(idx):
                clo, chi = _crown_neurons(net, relax, p, idx, box, alpha, alpha_steps, lr)
                lo[idx] = torch.maximum(lo[idx], clo)
                hi[idx] = torch.minimum(hi[idx], chi)
        elif method != "ibp":
            raise ValueError(f"unknown forward bound method {method!r}")
        hi = torch.maximum(hi, lo)  # guards against crossing by rounding
        known[k] = (lo, hi)
        relax[k] = ActivationRelaxation(net.nodes[k].op, lo, hi)
    return known


def preactivation_bounds(net: Network, region, alpha: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Certified (lower, upper) bounds of the input of every Activation node, flattened to (n,), float64,
    in graph order, valid for every input in the box ``region`` (a `Region` or a (lower, upper) pair).

    CROWN back-substitution layer by layer (``alpha=True``: alpha-CROWN, optimised slopes, 20 Adam
    steps). Tighter than interval propagation (always intersected with it). Raises `Unsupported` for
    max pooling and activations other than relu, leaky_relu, sigmoid, tanh. Cost: one batched
    back-substitution per activation layer over its undecided neurons (x20 with alpha)."""
    known = forward_bounds(net, region, alpha=alpha)
    return [known[i] for i, n in enumerate(net.nodes) if isinstance(n.op, Activation)]
