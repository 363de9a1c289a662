"""Forward CROWN and alpha-CROWN bounds on the pre-activations of a network over a box.

`preactivation_bounds(net, region, alpha=False)` gives, for the input of every `Activation` node (graph
order), elementwise lower and upper bounds valid for every input in the box. They are computed layer by
layer: interval propagation (`intervals`, from the tightest bounds known so far, with its outward
rounding margins) picks the neurons that need work (piecewise-linear activations: those whose interval
meets a kink; any other activation: all with a non-trivial interval), then CROWN back-substitution bounds
those neurons through the graph to the input box, using the linear relaxation of every earlier
activation. With ``alpha=True`` the relaxation slopes that are free (``fn.free_sides()``: the lower line
of an unstable ReLU, both lines of a smooth activation) are optimised per bounded neuron by projected
Adam (alpha-CROWN, `optim.Adam`); every iterate is a valid bound, the best one is kept.

Every activation of the table (`lipbound.activations`) is handled, monotone or not: the relaxation
uses only the table's derivative ranges, default slopes and exact line offsets.

The back-substitution uses the project's one graph traversal (`traversal.backward`) with a rule per
operation (`crown_rules`): affine ops apply their adjoint ``linear_t`` and collect their constant term,
activations apply their relaxation, `Add` passes the coefficients to both inputs (coefficients that
reach a node used twice are summed), MaxMin pairs (a, b) are relaxed through max(a, b) = b + relu(a - b),
min(a, b) = a - relu(a - b) with the ReLU relaxation on the bounds of d = a - b (bounded like a
pre-activation: intervals, then CROWN on the specifications +-(e_a - e_b)). MaxPool2d is not supported
(raises `Unsupported`).

Relaxations are sound for any slope: for a slope ``a`` the offsets are the exact minimum and maximum of
``f(z) - a z`` over ``[l, u]`` (`ActivationFunction.line_offsets`, outward-rounded).
All computations are float64; bounds are certified up to float64 rounding.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from . import traversal
from .errors import Unsupported
from .intervals import IBP_RULES
from .activations import make as make_activation
from .network import DTYPE, Activation, Add, Conv2d, MaxMin, MaxPool2d, Network
from .opnorms import SPARSE_MAX_NNZ
from .optim import Adam

#: entries per coefficient tensor before the specifications are processed in chunks
CHUNK_ENTRIES = 1 << 22

#: alpha-CROWN optimises a chunk of specifications only when one pass touches at most this many
#: coefficients (specifications x node sizes); larger chunks keep the CROWN slopes (still sound)
ALPHA_MAX_WORK = 3e6

#: grid points per neuron of the approximate offsets that alpha-CROWN's search uses for activations
#: whose exact offsets need bisection (GELU, SiLU, Mish): the search is ~10x faster; the slopes it finds
#: are re-evaluated with exact offsets, so the bound stays sound
GRID_POINTS = 33

#: MaxMin pairs (a, b) = (x[hi], x[lo]) are relaxed through max = b + relu(a - b), min = a - relu(a - b)
RELU = make_activation("relu")


class OutOfTime(Exception):
    """A bound pass reached its deadline between two nodes: it has no bound (the caller falls back to a
    sound bound it already holds, e.g. interval bounds)."""


def check_deadline(deadline: float | None) -> None:
    """Raise `OutOfTime` when ``deadline`` (a `time.perf_counter` time; None: none) has passed."""
    if deadline is not None and time.perf_counter() > deadline:
        raise OutOfTime


def past(deadline: float | None) -> bool:
    return deadline is not None and time.perf_counter() > deadline


# --------------------------------------------------------------------------------------------------
# activation relaxations (every fact comes from the activation table, `lipbound.activations`)
# --------------------------------------------------------------------------------------------------


class ActivationRelaxation:
    """Linear bounds aL z + bL <= f(z) <= aU z + bU for one activation node over [lo, hi] (flat (n,)).

    Every fact comes from the activation table entry ``fn`` (monotone or not, any kinks): the default
    slopes and the range [dmin, dmax] worth optimising (``fn.default_slopes``), the sides alpha-CROWN may
    move (``fn.free_sides()``), and the offsets, exact extremes of f(z) - a z over [lo, hi]
    (``fn.line_offsets``), which make every slope sound. ``t_lower`` / ``t_upper`` (optional, shape
    (S, n) in [0, 1]) place the slopes in [dmin, dmax] for alpha-CROWN; only the free sides use them."""

    def __init__(self, fn, lo: torch.Tensor, hi: torch.Tensor):
        fn = getattr(fn, "fn", fn)  # an Activation op or its table entry
        self.fn, self.lo, self.hi = fn, lo, hi
        self.a_lo, self.a_up, self.dmin, self.dmax = fn.default_slopes(lo, hi)
        self.free_lower, self.free_upper = fn.free_sides()
        span = self.dmax - self.dmin
        safe = torch.where(span > 0, span, torch.ones_like(span))
        self.t_lower0 = torch.where(span > 0, (self.a_lo - self.dmin) / safe, torch.zeros_like(span)).clamp(0, 1)
        self.t_upper0 = torch.where(span > 0, (self.a_up - self.dmin) / safe, torch.zeros_like(span)).clamp(0, 1)
        self._b_default = [None, None]  # offsets of the default slopes (lower, upper), computed once
        #: the table has no closed form for f' = a: its exact offsets bisect (~80 evaluations per piece)
        self.bisects = fn.slope_points(lo[:1]) is None
        self._grid = None

    def _grid_offsets(self, a: torch.Tensor):
        """(min, max) of f(z) - a z over a grid of [lo, hi] (ends, kinks, GRID_POINTS points): an
        *approximation* from inside (not sound), for alpha-CROWN's search only; gradients flow to ``a``."""
        if self._grid is None:
            with torch.no_grad():
                t = torch.linspace(0, 1, GRID_POINTS, dtype=self.lo.dtype)[:, None]
                pts = [self.lo + (self.hi - self.lo) * t]
                pts += [torch.clamp(torch.full_like(self.lo, p), self.lo, self.hi)[None] for p, _, _ in self.fn.kinks()]
                z = torch.cat(pts, 0)
                self._grid = (z, self.fn.forward(z))
        z, fz = self._grid
        view = (z.shape[0],) + (1,) * (a.dim() - 1) + (z.shape[1],)
        z, fz = z.reshape(view), fz.reshape(view)
        step = max(1, (1 << 22) // max(1, a.numel()))
        lo_val = hi_val = None
        for c0 in range(0, z.shape[0], step):
            g = fz[c0 : c0 + step] - a.unsqueeze(0) * z[c0 : c0 + step]
            mn, mx = g.amin(0), g.amax(0)
            lo_val = mn if lo_val is None else torch.minimum(lo_val, mn)
            hi_val = mx if hi_val is None else torch.maximum(hi_val, mx)
        return lo_val, hi_val

    def lines(self, t_lower=None, t_upper=None, approx: bool = False):
        """(aL, bL, aU, bU), broadcastable to (S, n) when slopes are per specification. ``approx``: the
        offsets of optimised slopes of a bisecting activation come from `_grid_offsets` (fast, NOT sound:
        for alpha-CROWN's search only; its result is re-evaluated with exact offsets)."""
        grid = approx and self.bisects
        a_lo, b_lo = self._line(0, t_lower if self.free_lower else None, grid)
        a_up, b_up = self._line(1, t_upper if self.free_upper else None, grid)
        return a_lo, b_lo, a_up, b_up

    def _line(self, side: int, t, grid: bool):
        """(slope, offset) of the lower (``side`` 0, offset min f(z) - a z) or upper (1, max) line: the slope
        placed by ``t`` in [dmin, dmax], or the default slope when ``t`` is None (its offset computed once)."""
        if t is not None:
            a = self.dmin + t.clamp(0, 1) * (self.dmax - self.dmin)
            return a, (self._grid_offsets(a) if grid else self.fn.line_offsets(self.lo, self.hi, a))[side]
        a = (self.a_lo, self.a_up)[side]
        if self._b_default[side] is None:
            self._b_default[side] = self.fn.line_offsets(self.lo, self.hi, a)[side]
        return a, self._b_default[side]


# --------------------------------------------------------------------------------------------------
# CROWN back-substitution as rules of the one graph traversal
# --------------------------------------------------------------------------------------------------


def apply_lines(A: torch.Tensor, aL, bL, aU, bU) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear bound through relaxation lines aL x + bL <= f(x) <= aU x + bU (broadcastable to A): the lower
    line where a coefficient of A is positive, the upper one elsewhere. Returns (pos aL + neg aU, the sum
    over the last axis of pos bL + neg bU), computed as A aU + pos (aL - aU) and A bU + pos (bL - bU):
    fewer passes over A. Shared by CROWN's back-substitution and the Jacobian-graph walk."""
    pos = A.clamp(min=0)
    return torch.addcmul(A * aU, pos, aL - aU), (A * bU).sum(-1) + (pos * (bL - bU)).sum(-1)


class _CrownPass:
    """Holds the relaxations and the running constant of one back-substitution (lower bounds of
    A . node over the box; upper bounds are lower bounds of -A)."""

    def __init__(self, net: Network, relax: dict, alphas: dict | None = None, approx: bool = False,
                 deadline: float | None = None, row_box: torch.Tensor | None = None, paired: bool = False):
        self.net = net
        #: several boxes at once: ``row_box[r]`` is the box of row r of A, the relaxation lines and the box
        #: ends are per box, (B, n); None: one box. With ``paired``, A has 2 x len(row_box) rows, row r and
        #: row r + len(row_box) of the same box (a bound and its opposite): the per-box tensors are gathered
        #: once for both and broadcast
        self.row_box = row_box
        self.paired = paired
        self.deadline = deadline  # checked at every node (`OutOfTime`)
        self.index = {id(n): i for i, n in enumerate(net.nodes)}
        self.relax = relax  # activation node index -> ActivationRelaxation
        self.alphas = alphas or {}
        self.approx = approx  # approximate offsets for bisecting activations (alpha-CROWN's search only)
        self.bias = None
        self.rules = {"affine": self._affine, Activation: self._activation, Add: self._add, MaxPool2d: self._maxpool,
                      MaxMin: self._maxmin}

    def _add_bias(self, b):
        self.bias = b if self.bias is None else self.bias + b

    def _affine(self, op, node, A):
        check_deadline(self.deadline)
        in_shape = self.net.nodes[node.inputs[0]].shape
        const = op.constant_term(in_shape)
        c = torch.broadcast_to(const, node.shape)
        Af = A.reshape(A.shape[0], -1)
        cols = touched_columns(Af) if sparse_product_ok(op, in_shape) else None
        if cols is not None:  # a few neurons' receptive fields: the sparse adjoint (the same products)
            sub = Af[:, cols]
            if bool((c != 0).any()):
                self._add_bias((sub * c.reshape(-1)[cols]).sum(1))
            return op.linear_t_rows(sub, cols, in_shape)
        if bool((c != 0).any()):
            self._add_bias((A * c).reshape(A.shape[0], -1).sum(1))
        return op.linear_t(A, in_shape)

    def _activation(self, op, node, A):
        check_deadline(self.deadline)
        k = self.index[id(node)]
        rel = self.relax[k]
        tl, tu = self.alphas.get(k, (None, None))
        lines = rel.lines(tl, tu, approx=self.approx)
        Af = A.reshape(A.shape[0], -1)
        cols = touched_columns(Af)
        if cols is not None:  # sparse coefficients (a few neurons' receptive fields): relax only those columns
            aL, bL, aU, bU = (self._per_row(t[..., cols]) for t in lines)
            sub = self._pairs(Af[:, cols])
            pos, neg = sub.clamp(min=0), sub.clamp(max=0)
            self._add_bias((pos * bL + neg * bU).sum(-1).reshape(-1))
            out = torch.zeros_like(Af)
            out[:, cols] = (pos * aL + neg * aU).reshape(Af.shape[0], -1)
            return out.reshape(A.shape)
        out, offsets = apply_lines(self._pairs(Af), *(self._per_row(t) for t in lines))
        self._add_bias(offsets.reshape(-1))
        return out.reshape(A.shape)

    def _pairs(self, Af: torch.Tensor) -> torch.Tensor:
        """Af (rows, n), viewed (2, rows / 2, n) for paired rows (`_per_row`'s tensors broadcast over both)."""
        return Af.reshape(2, -1, Af.shape[1]) if self.paired else Af

    def _add(self, op, node, A):
        return A, A

    def _maxmin(self, op, node, A):
        """y[hi] = b + r, y[lo] = a - r with a = x[hi], b = x[lo], r = relu(a - b) relaxed on the bounds of
        a - b: A.y = A_hi.b + A_lo.a + c.r with c = A_hi - A_lo, and c.r >= c+ (aL d + bL) + c- (aU d + bU)."""
        k = self.index[id(node)]
        tl, tu = self.alphas.get(k, (None, None))
        hi, lo, order = maxmin_pairs(op, node.shape)
        Af = A.reshape(A.shape[0], -1)
        aL, bL, aU, bU = (self._per_row(t, both=True) for t in self.relax[k].lines(tl, tu, approx=self.approx))
        A_hi, A_lo = Af[:, hi], Af[:, lo]
        c = A_hi - A_lo
        pos, neg = c.clamp(min=0), c.clamp(max=0)
        self._add_bias((pos * bL + neg * bU).sum(1))
        lam = pos * aL + neg * aU
        return torch.cat([A_lo + lam, A_hi - lam], 1)[:, order].reshape(A.shape)

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
            if self.row_box is not None:
                B = lo.shape[0]
                mid, rad = (t.reshape(B, -1)[self.row_box] for t in (mid, rad))
                A0 = self._pairs(A0)
                out = out + ((A0 * mid).sum(-1) - (A0.abs() * rad).sum(-1)).reshape(-1)
            else:
                out = out + A0 @ mid.reshape(-1) - A0.abs() @ rad.reshape(-1)
        return out

    def _per_row(self, t: torch.Tensor, both: bool = False) -> torch.Tensor:
        """A per-box tensor (B, n) taken for every row's box (paired rows: once for both rows of a pair, or
        with ``both`` for each row); unchanged for one box."""
        if self.row_box is None:
            return t
        t = t[self.row_box]
        return torch.cat([t, t]) if both and self.paired else t


#: a back-substitution step works on the columns its coefficients touch when they are at most this share
#: of a layer of at least SPARSE_MIN_WIDTH neurons (`touched_columns`)
SPARSE_SHARE, SPARSE_MIN_WIDTH = 0.125, 4096

def sparse_product_ok(op, in_shape: tuple) -> bool:
    """True for the ops whose dense products cost the whole layer however few columns the coefficients
    touch and whose sparse matrix is small enough to keep (convolutions, `opnorms.SPARSE_MAX_NNZ`)."""
    return isinstance(op, Conv2d) and op.sparse_entries(tuple(in_shape)) <= SPARSE_MAX_NNZ


def touched_columns(Af: torch.Tensor) -> torch.Tensor | None:
    """The columns where some row of Af (rows, n) is non-zero, when they are few enough to be worth
    gathering (see `SPARSE_SHARE`), else None. The back-substitution of a few neurons' bounds through a
    convolution touches only their receptive fields: the other columns contribute exactly 0."""
    if Af.shape[1] < SPARSE_MIN_WIDTH:
        return None
    limit = SPARSE_SHARE * Af.shape[1]
    # the first rows alone touching too many columns settle it at a fraction of the full scan's cost
    if Af.shape[0] > 16 and int((Af[:16] != 0).any(0).sum()) > limit:
        return None
    cols = (Af != 0).any(0).nonzero().reshape(-1)
    return cols if len(cols) <= limit else None


# --------------------------------------------------------------------------------------------------
# layer-by-layer bounds
# --------------------------------------------------------------------------------------------------


def maxmin_pairs(op: MaxMin, shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hi, lo, order): flat indices of the pairs (y[hi] = max, y[lo] = min of x[hi], x[lo]) and the
    permutation that puts cat([values at hi, values at lo]) back in the node's flat layout."""
    hi, lo = (torch.as_tensor(t) for t in op.pairs(shape))
    return hi, lo, torch.argsort(torch.cat([hi, lo]))


def _outward(lo: torch.Tensor, hi: torch.Tensor):
    """One rounding step outward (for results of a single rounded addition or subtraction)."""
    return (torch.nextafter(lo, torch.tensor(-np.inf, dtype=lo.dtype)),
            torch.nextafter(hi, torch.tensor(np.inf, dtype=hi.dtype)))


def _box_tensors(net: Network, region):
    if isinstance(region, tuple):
        lo, hi = region
    else:
        lo, hi = region.lower, region.upper
    lo = torch.as_tensor(np.asarray(lo, dtype=np.float64)).reshape(net.input_shape)
    hi = torch.as_tensor(np.asarray(hi, dtype=np.float64)).reshape(net.input_shape)
    return lo, hi


def interval_pass(net: Network, box, known: dict, stop: int | None = None) -> list:
    """Interval propagation (the IBP rules) over one box or a batch of boxes ((B, *input_shape) ends, then
    ``known`` holds (B, n) bounds) where every Activation's input interval is first
    intersected with the bounds in ``known`` (activation node index -> (lo, hi) flat), and every MaxMin
    output with b + relu(d), a - relu(d) for the known bounds of its pair differences d = a - b."""
    index = {id(n): i for i, n in enumerate(net.nodes)}
    ibp_act, ibp_maxmin = IBP_RULES[Activation], IBP_RULES[MaxMin]

    def maxmin(op, node, iv):
        out_lo, out_hi = ibp_maxmin(op, node, iv)
        k = index[id(node)]
        if k not in known:
            return out_lo, out_hi
        hi, lo, order = maxmin_pairs(op, node.shape)
        dl, du = (t.clamp(min=0) for t in known[k])  # relu(d) in [relu(dl), relu(du)]
        x_lo, x_hi = iv[0].reshape(iv[0].shape[0], -1), iv[1].reshape(iv[1].shape[0], -1)
        mx = _outward(x_lo[:, lo] + dl, x_hi[:, lo] + du)  # max = b + relu(d)
        mn = _outward(x_lo[:, hi] - du, x_hi[:, hi] - dl)  # min = a - relu(d)
        t_lo = torch.cat([mx[0], mn[0]], 1)[:, order].reshape(out_lo.shape)
        t_hi = torch.cat([mx[1], mn[1]], 1)[:, order].reshape(out_hi.shape)
        return torch.maximum(out_lo, t_lo), torch.minimum(out_hi, t_hi)

    def act(op, node, iv):
        k = index[id(node)]
        if k in known:
            lo, hi = known[k]
            iv = (torch.maximum(iv[0], lo.reshape(iv[0].shape)), torch.minimum(iv[1], hi.reshape(iv[1].shape)))
        return ibp_act(op, node, iv)

    rules = dict(IBP_RULES)
    rules[Activation] = act
    rules[MaxMin] = maxmin
    lo, hi = box
    if lo.dim() == len(net.input_shape):  # one box (else a batch of boxes, (B, *input_shape))
        lo, hi = lo.unsqueeze(0), hi.unsqueeze(0)
    with torch.no_grad():
        return traversal.forward(net, rules, (lo, hi), what="interval propagation", stop=stop)


def _needs_refinement(fn, lo, hi):
    """Neurons whose relaxation depends on their bounds: for a piecewise-linear activation those whose
    interval meets a kink (elsewhere f is linear on the interval and the relaxation exact), for any
    other activation every neuron with a non-trivial interval."""
    if fn.piecewise_linear:
        need = torch.zeros_like(lo, dtype=torch.bool)
        for p, _, _ in fn.kinks():
            need |= (lo <= p) & (hi >= p)
        return need
    return (hi - lo) > 1e-9


def _crown_neurons(net, relax, start, idx, box, alpha, alpha_steps, lr, pairs=None, deadline=None,
                   alpha_deadline=None):
    """Lower and upper CROWN bounds (K,) of the entries ``idx`` of node ``start`` over one box (with ``pairs``
    = (hi, lo): of the differences x[hi[i]] - x[lo[i]] for i in ``idx``). ``deadline``: checked between
    chunks and nodes; the entries not bounded by then get (-inf, inf) (the caller keeps their interval
    bounds). ``alpha_deadline``: alpha-CROWN's optimisation stops there (plain CROWN bounds kept)."""
    width = max(node.size for node in net.nodes[: start + 1])
    chunk = max(1, CHUNK_ENTRIES // max(1, 2 * width))
    lows, highs = [], []
    for c0 in range(0, len(idx), chunk):
        sel = idx[c0 : c0 + chunk]
        K = len(sel)
        A = _specifications(net, start, sel, pairs)
        t_pass = time.perf_counter()
        try:
            with torch.no_grad():
                best = _CrownPass(net, relax, deadline=deadline).lower_bound(start, A, box)
            t_pass = time.perf_counter() - t_pass
        except OutOfTime:  # this chunk and the rest keep their interval bounds
            rest = len(idx) - c0
            lows.append(torch.full((rest,), -np.inf, dtype=DTYPE))
            highs.append(torch.full((rest,), np.inf, dtype=DTYPE))
            break
        work = 2 * K * sum(node.size for node in net.nodes[: start + 1])
        # an alpha step (a pass with gradients, then its backward) costs about 3 plain passes
        a_dl = alpha_deadline if alpha_deadline is not None else deadline
        if alpha and relax and work <= ALPHA_MAX_WORK and not past(None if a_dl is None else a_dl - 3 * t_pass):
            best = _optimise(net, relax, start, A, box, best, alpha_steps, lr, a_dl)
        lows.append(best[:K])
        highs.append(-best[K:])
    return torch.cat(lows), torch.cat(highs)


def _specifications(net, start: int, cols: torch.Tensor, pairs=None) -> torch.Tensor:
    """The 2K rows +e_i, then -e_i, for the entries ``cols`` of node ``start`` (with ``pairs``: of the pair
    differences e_hi - e_lo)."""
    K = len(cols)
    A = torch.zeros(2 * K, net.nodes[start].size, dtype=DTYPE)
    if pairs is None:
        A[torch.arange(K), cols] = 1.0
    else:
        A[torch.arange(K), pairs[0][cols]] = 1.0
        A[torch.arange(K), pairs[1][cols]] = -1.0
    A[K:] = -A[:K]
    return A.reshape((2 * K,) + net.nodes[start].shape)


def _crown_pairs(net, relax, start, idx, need, box, pairs=None, deadline=None):
    """CROWN bounds (B, K) of the entries ``idx`` of node ``start`` over B boxes, computed only for the
    (box, entry) pairs where ``need`` (B, K) is True (the rest: (-inf, inf)): every row of a pass is one
    pair, with its box's relaxation lines. Chunked over pairs; past ``deadline`` the rest keep (-inf, inf)."""
    B, K = need.shape
    lo = torch.full((B, K), -np.inf, dtype=DTYPE)
    hi = torch.full((B, K), np.inf, dtype=DTYPE)
    bi, ki = need.nonzero(as_tuple=True)
    width = max(node.size for node in net.nodes[: start + 1])
    chunk = max(1, CHUNK_ENTRIES // max(1, 2 * width))
    for c0 in range(0, len(bi), chunk):
        b, k = bi[c0 : c0 + chunk], ki[c0 : c0 + chunk]
        A = _specifications(net, start, idx[k], pairs)
        try:
            with torch.no_grad():
                best = _CrownPass(net, relax, deadline=deadline, row_box=b,
                                  paired=True).lower_bound(start, A, box)
        except OutOfTime:  # the remaining pairs keep their interval bounds
            break
        P = len(b)
        lo[b, k] = best[:P]
        hi[b, k] = -best[P:]
    return lo, hi


def _optimise(net, relax, start, A, box, best, steps, lr, deadline=None):
    """alpha-CROWN: projected Adam (`optim.Adam`) on the free slopes, one set per specification (row of
    A). Every iterate's bound is sound and the best per specification is kept; with a bisecting
    activation (``rel.bisects``) the iterates use approximate offsets instead, the slopes of each
    specification's best iterate are kept, and the bound is re-evaluated once with exact offsets.
    ``deadline``: the loop stops before a step that would end past it (predicted from the previous step;
    the passes are also checked at every node) and keeps its best certified bound: the best exact iterate,
    or ``best`` (plain CROWN) when the approximate search cannot be re-evaluated in time."""
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
    approx = any(rel.bisects for rel in relax.values())
    kept = [p.detach().clone() for p in params] if approx else None
    track = best.clone()  # best bound per specification so far (approximate in the approx mode)
    adam = Adam(params, betas=(0.9, 0.999), eps=1e-8, project=lambda p: p.clamp_(0, 1))
    step_lr = lr
    history = []
    last = 0.0  # seconds of the previous step
    for _ in range(steps):
        t_step = time.perf_counter()
        if deadline is not None and t_step + last > deadline:
            break
        try:
            lb = _CrownPass(net, relax, alphas, approx=approx, deadline=deadline).lower_bound(start, A, box)
        except OutOfTime:
            break
        with torch.no_grad():
            ok = torch.isfinite(lb)
            if approx:
                better = (ok & (lb > track)).unsqueeze(1)
                for p, q in zip(params, kept):
                    q.copy_(torch.where(better, p, q))
            track = torch.where(ok, torch.maximum(track, lb), track)
            history.append(float(track.sum()))
            if len(history) > 10 and history[-1] - history[-11] <= 1e-6 * (1 + abs(history[-1])):
                break  # converged
        loss = -lb[torch.isfinite(lb)].sum()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        adam.step(grads, step_lr)
        step_lr *= 0.98
        last = time.perf_counter() - t_step
    with torch.no_grad():
        if approx:
            for p, q in zip(params, kept):
                p.copy_(q)
        else:
            best = track
            if past(deadline):  # track is the best of the exact iterates: sound as it is
                return best.detach()
        try:  # the last iterate (exact mode) or the kept slopes re-evaluated with exact offsets (approx mode)
            lb = _CrownPass(net, relax, alphas, deadline=deadline).lower_bound(start, A, box)
        except OutOfTime:
            return best.detach()
        best = torch.where(torch.isfinite(lb), torch.maximum(best, lb), best)
    return best.detach()


def forward_bounds(net: Network, region, alpha: bool = False, alpha_steps: int = 50, lr: float = 0.5,
                   method: str = "crown", deadline: float | None = None, info: dict | None = None) -> dict:
    """{activation node index: (lower, upper)} of the activation inputs (flat (n,), float64); for a MaxMin
    node, the bounds of its pair differences x[hi] - x[lo] (`maxmin_pairs` order), which CROWN relaxes
    through max(a, b) = b + relu(a - b), min(a, b) = a - relu(a - b).

    ``method``: "crown" (CROWN / alpha-CROWN, see module doc) or "ibp" (plain interval propagation).
    Certified. Cost: for each activation layer, one back-substitution through the graph below it per
    bounded neuron (batched), times ``alpha_steps`` forward+backward passes with ``alpha``
    (stopped early when the bounds stop improving).

    ``deadline`` (a `time.perf_counter` time): checked between layers, chunks of neurons, nodes of a
    back-substitution and alpha-CROWN steps; from then on the neurons not yet bounded by CROWN keep their
    interval bounds (sound, looser) and ``info["cut"]`` is set to True (``info``: an optional dict)."""
    for node in net.nodes:
        if isinstance(node.op, MaxPool2d):
            raise Unsupported("CROWN bound propagation does not relax max pooling (MaxPool2d)")
    return _layer_by_layer(net, _box_tensors(net, region), 1, {}, 0, alpha, alpha_steps, lr, method, deadline, info)


def forward_bounds_batch(net: Network, lower, upper, known: dict | None = None, refine_from: int = 0,
                         method: str = "crown", deadline: float | None = None, info: dict | None = None) -> dict:
    """`forward_bounds` (plain CROWN, no alpha) for B boxes at once: ``lower``, ``upper`` (B, *input_shape).
    Returns {node index: (lower, upper)} of shape (B, n), certified for every input of box b.

    ``known`` {node index: (lo, hi) (B, n)}: bounds already valid on each domain (a parent's bounds, or a
    branch-and-bound split constraint such as z_i >= 0 on the domain where it holds); they are intersected
    with each layer's bounds before later layers use them, so a split's consequences propagate.
    ``refine_from``: layers before this node index keep ``known`` (must be given for them) without work.
    Cost: that of `forward_bounds` for each box, batched: the boxes share every back-substitution pass
    (chunked so that no coefficient tensor exceeds ``CHUNK_ENTRIES`` entries)."""
    lo = torch.as_tensor(np.asarray(lower, dtype=np.float64) if not torch.is_tensor(lower) else lower, dtype=DTYPE)
    hi = torch.as_tensor(np.asarray(upper, dtype=np.float64) if not torch.is_tensor(upper) else upper, dtype=DTYPE)
    B = lo.shape[0]
    lo, hi = lo.reshape((B,) + net.input_shape), hi.reshape((B,) + net.input_shape)
    known = known or {}
    relaxed = [n for n in net.nodes if isinstance(n.op, (Activation, MaxMin, MaxPool2d))]
    if any(isinstance(n.op, MaxPool2d) for n in relaxed):
        raise Unsupported("CROWN bound propagation does not relax max pooling (MaxPool2d)")
    # the passes are chunked over (box, neuron) pairs; a chunk of boxes only bounds the per-box tensors
    per_chunk = max(1, CHUNK_ENTRIES // max(1, 8 * max(node.size for node in net.nodes)))
    parts = []
    for b0 in range(0, B, per_chunk):
        sl = slice(b0, b0 + per_chunk)
        kn = {k: (v[0][sl], v[1][sl]) for k, v in known.items()}
        Bc = lo[sl].shape[0]
        parts.append(_layer_by_layer(net, (lo[sl], hi[sl]), Bc, kn, refine_from, False, 0, 0.0, method, deadline, info))
    out = {}
    for k in parts[0]:
        out[k] = tuple(torch.cat([p[k][i].reshape(-1, p[k][i].shape[-1]) for p in parts]) for i in (0, 1))
    return out


def _layer_by_layer(net, box, boxes: int, known: dict, refine_from: int, alpha, alpha_steps, lr, method, deadline,
                    info) -> dict:
    """The loop of `forward_bounds` / `forward_bounds_batch` over the relaxed nodes, for one box (flat (n,)
    bounds) or ``boxes`` > 1 boxes ((B, n) bounds)."""
    info = {} if info is None else info
    info.setdefault("cut", False)
    relaxed = [i for i, n in enumerate(net.nodes) if isinstance(n.op, (Activation, MaxMin))]
    known = dict(known)
    relax: dict = {}
    for n_done, k in enumerate(relaxed):
        node = net.nodes[k]
        fn = node.op.fn if isinstance(node.op, Activation) else RELU
        if k < refine_from:
            relax[k] = ActivationRelaxation(fn, *known[k])
            continue
        p = node.inputs[0]
        ivs = interval_pass(net, box, known, stop=p)
        lo, hi = (t.reshape(boxes, -1).clone() for t in ivs[p])
        if boxes == 1:
            lo, hi = lo[0], hi[0]
        pairs = None
        if isinstance(node.op, MaxMin):  # the relaxed quantity: the pair differences d = x[hi] - x[lo]
            pairs = maxmin_pairs(node.op, node.shape)[:2]
            lo, hi = _outward(lo[..., pairs[0]] - hi[..., pairs[1]], hi[..., pairs[0]] - lo[..., pairs[1]])
        if k in known:  # bounds valid on the domain (a parent's, a split constraint)
            lo, hi = torch.maximum(lo, known[k][0]), torch.minimum(hi, known[k][1])
        if method == "crown":
            need = _needs_refinement(fn, lo, hi)
            idx = (need if boxes == 1 else need.any(0)).nonzero().reshape(-1)
            if len(idx) and past(deadline):
                info["cut"] = True  # interval bounds only from here on
            elif len(idx):
                # alpha-CROWN may use this layer's part of the time left, so that every layer gets CROWN bounds
                a_dl = None if deadline is None else \
                    time.perf_counter() + (deadline - time.perf_counter()) / (len(relaxed) - n_done)
                if boxes == 1:
                    clo, chi = _crown_neurons(net, relax, p, idx, box, alpha, alpha_steps, lr, pairs, deadline, a_dl)
                else:  # only the (box, neuron) pairs that need it
                    clo, chi = _crown_pairs(net, relax, p, idx, need[:, idx], box, pairs, deadline)
                info["cut"] = info["cut"] or past(deadline)
                # only where refinement is needed (as for one box: the same relaxations, box by box)
                sel = need[..., idx]
                lo[..., idx] = torch.where(sel, torch.maximum(lo[..., idx], clo), lo[..., idx])
                hi[..., idx] = torch.where(sel, torch.minimum(hi[..., idx], chi), hi[..., idx])
        elif method != "ibp":
            raise ValueError(f"unknown forward bound method {method!r}")
        hi = torch.maximum(hi, lo)  # guards against crossing by rounding
        known[k] = (lo, hi)
        relax[k] = ActivationRelaxation(fn, lo, hi)
    return known


def preactivation_bounds(net: Network, region, alpha: bool = False, deadline: float | None = None,
                         info: dict | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Certified (lower, upper) bounds of the input of every Activation node, flattened to (n,), float64,
    in graph order, valid for every input in the box ``region`` (a `Region` or a (lower, upper) pair).

    CROWN back-substitution layer by layer (``alpha=True``: alpha-CROWN, optimised slopes, 20 Adam
    steps). Tighter than interval propagation (always intersected with it). Every activation of the
    table; raises `Unsupported` for max pooling. Cost: one batched back-substitution per activation
    layer over its undecided neurons (x20 with alpha). ``deadline`` / ``info``: see `forward_bounds` (past
    the deadline, interval bounds)."""
    known = forward_bounds(net, region, alpha=alpha, deadline=deadline, info=info)
    return [known[i] for i, n in enumerate(net.nodes) if isinstance(n.op, Activation)]
