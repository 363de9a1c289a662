"""Branch and bound for the `crown-bab` method: the project's engine (`lipbound.branch_and_bound`) with
CROWN on the Clarke-Jacobian graph as the bounding function.

A domain is (an input box, fixed slopes of some ReLU-like neurons, the output it bounds — or all outputs
at once for several outputs in l2 / l1 — and the forward pre-activation bounds valid on it). Two ways to
split it (option ``split``; "auto": the input when the network has at most ``INPUT_SPLIT_MAX_DIM``
inputs, else neurons):

* **input splitting**: halve the box along the dimension of largest score (its width times the bound
  on |df/dx_d| over the box, i.e. how much the output moves along it). The constant over the box is the
  max over the two halves: sound by construction. Refines every activation, split or not.
* **neuron splitting** (ReLU-like form max(z, 0) + a min(z, 0), ``fn.relu_like_slope`` = a): the child
  "active" is the part of the box where z_i >= 0, with slope 1; "inactive" where z_i <= 0, with slope a.
  Together they cover every point where f is differentiable (almost every point), so the larger of their
  bounds bounds the parent. The split constraint *propagates*: z_i's bounds are clipped to [max(l,0), u]
  (or [l, min(u,0)]), which makes its relaxation exact, and the forward bounds of every later layer are
  recomputed by CROWN under it (`crown.forward_bounds_batch`, batched over the children, intersected with
  the parent's bounds), so the neurons it drives become stable and the Jacobian bound falls with them.
  On dense chains, domains whose decided neurons no input realises are dropped (`PatternLP`).

Every child is bounded by CROWN on the Jacobian graph with its own forward bounds (per-domain derivative
ranges) and its decisions; a child's bound is capped by its parent's. The lower-bound hook evaluates the
certified gradient norm (`lower.jacobian_norms`: points where f is differentiable only) at the centre and
a random point of every popped domain's box, and with input splitting on a piecewise-linear network runs
now and then a few steps of lower-grad's region walk from its best points (`WALK_EVERY`); with the best
lower bound the engine drops covered domains and stops at the target gap, or with nothing left (``exact``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time

import numpy as np
import torch

from ...branch_and_bound import Domain, Engine
from ...crown import forward_bounds_batch
from ...errors import Unsupported
from ...network import tensor_view
from ...maxpool_relu import expand_maxpool
from ...registry import MethodContext, MethodResult
from ...threads import FollowFreeCores
from ..lower.methods import jacobian_norms, region_walk, walked_nodes
from .batched import RowwiseGraph
from .graph import JacobianGraph
from .methods import (FORWARD_SHARE, GRAPH_SHARE, INPUT_BATCH, NEURON_BATCH, WALK_THREAD_CHECK_S, cached_forward,
                      combine)

DEFAULT_BUDGET = 30.0
#: "auto" splits the input of networks with at most this many inputs (ACAS Xu: 5), neurons otherwise
INPUT_SPLIT_MAX_DIM = 12
#: the certified ends within this relative distance (margins and rounding of the two computations) are reported
#: as the exact value (the upper end)
EXACT_RTOL = 1e-9
#: in input splitting, a domain with at most this many undecided ReLU-like neurons splits them instead
FEW_UNDECIDED = 3
#: seconds between two readings of the free cores, whose count the search's torch threads follow: the walk's
#: (`threads.FollowFreeCores`: 1.2-1.6x more steps on ACAS Xu with the second core idle, far fewer with it busy)
THREAD_CHECK_S = WALK_THREAD_CHECK_S
#: the lower-bound hook samples TOP_POINTS random points in each of the TOP_DOMAINS worst popped domains
TOP_DOMAINS, TOP_POINTS = 8, 16
#: the lower-bound hook also probes the deepest point of the decided region of this many worst popped domains
TOP_PATTERN_POINTS = 4
#: with input splitting on a piecewise-linear network, the lower-bound hook runs lower-grad's region walk from
#: WALK_STARTS of its best points (at most WALK_STEPS steps, WALK_SECONDS s) at its WALK_EVERY-th call, then
#: after WALK_EVERY more calls when the walk found a better point, twice the last wait when it did not
WALK_EVERY, WALK_STARTS, WALK_STEPS, WALK_SECONDS = 10, 8, 4, 0.25
#: an input dimension narrower than this fraction of the region's width is not split again
MIN_WIDTH = 1e-9


def _scores(G: JacobianGraph, res, und: dict, split_acts: list) -> torch.Tensor:
    """Area scores (B, N) over the splittable neurons; 0 where decided."""
    parts = []
    for k in split_acts:
        gl, gu = res.g[k]
        coef = res.coef.get(k)
        if coef is None:
            coef = torch.zeros_like(gl)
        area = gu * gu.abs() - gl * gl.abs()
        sc = area.abs() * coef + 1.0
        parts.append(torch.where(und[k], sc, torch.zeros_like(sc)))
    return torch.cat(parts, 1)


#: feasible points of pattern LPs kept as certifying samples (`PatternLP`)
MAX_LP_POINTS = 4000


class PatternLP:
    """Infeasibility pruning for dense chains of ReLU-like activations (optional, sound).

    A domain fixes the slope of some undecided neurons. While every neuron of the layers before layer
    k is fixed (stable or decided), the pre-activations of layer k are affine in x, so the decisions
    in layer k are linear constraints z_i >= 0 / z_i <= 0 on x in the box. If that LP is infeasible
    even with a small slack, no input realises the domain and it is dropped (its set of Jacobians is
    empty). Cost: one small HiGHS LP per child whose set of checkable decisions grew."""

    def __init__(self, net, G, split_acts, offsets, region):
        self.chain = net.dense_chain()
        if len(self.chain) - 1 != len(split_acts) or len(split_acts) != len(G.acts):
            raise Unsupported("pattern LP needs every activation to be splittable")
        self.W = [tensor_view(layer.W) for layer in self.chain]
        self.b = [torch.as_tensor(layer.b) for layer in self.chain]
        self.lo = torch.as_tensor(region.lower.reshape(-1))
        self.hi = torch.as_tensor(region.upper.reshape(-1))
        self.G, self.acts, self.offsets = G, split_acts, offsets
        self.params = [net.nodes[k].op.fn.relu_like_slope for k in split_acts]
        # sampled points of the box and their pre-activations: a domain whose checkable decisions
        # agree with the sign pattern of some sample is feasible without an LP
        rng = np.random.default_rng(0)
        pts = rng.uniform(region.lower.reshape(-1), region.upper.reshape(-1), size=(2000, self.lo.shape[0]))
        pts = np.concatenate([pts, region.mid.reshape(1, -1)])
        pre = net.preactivations(torch.as_tensor(pts).reshape((-1,) + net.input_shape))
        Z = torch.cat([z.reshape(z.shape[0], -1) for z in pre], 1)  # (n_samples, N)
        # room for the LPs' feasible points (`_lp_feasible`): appended in place, not by copying the whole
        # array per LP (which cost more than the LPs themselves on mnist-net_256x2)
        n = pts.shape[0]
        self._Xb = torch.empty(n + MAX_LP_POINTS, pts.shape[1], dtype=torch.float64)
        self._Zb = torch.empty(n + MAX_LP_POINTS, Z.shape[1], dtype=torch.float64)
        self._Xb[:n], self._Zb[:n] = torch.as_tensor(pts), Z
        # the signs, neuron-major, for the agreement test of `feasible`: gathering a domain's rows of an
        # int8 table is ~10x cheaper than gathering columns of Z (n_points x N float64)
        self._Sb = torch.zeros(Z.shape[1], n + MAX_LP_POINTS, dtype=torch.int8)
        self._Sb[:, :n] = torch.sign(Z).T.to(torch.int8)
        self.n_points = n
        self.lp_calls = 0
        self.deadline = None  # a time.perf_counter() time: LPs get the time left as their HiGHS limit
        self.net = net
        self.rad = float((self.hi - self.lo).abs().max()) + 1.0
        self.und = [G.s[k][1] > G.s[k][0] for k in split_acts]
        self.sfix = [G.s[k][0] for k in split_acts]

    @property
    def X(self) -> torch.Tensor:
        """The points whose sign patterns certify feasibility (samples, then the LPs' feasible points)."""
        return self._Xb[: self.n_points]

    @property
    def Z(self) -> torch.Tensor:
        """The pre-activations of `X` (n_points, N)."""
        return self._Zb[: self.n_points]

    def checkable(self, dec: torch.Tensor) -> tuple[list, int]:
        """(per layer: (neuron indices, signs) of the checkable decisions, count)."""
        rows, n = [], 0
        for li, k in enumerate(self.acts):
            d = dec[self.offsets[li] : self.offsets[li + 1]]
            nz = d.nonzero().reshape(-1)
            rows.append((nz, d[nz].to(torch.float64)))
            n += len(nz)
            if bool((self.und[li] & (d == 0)).any()):
                break
        return rows, n

    def feasible(self, dec: torch.Tensor, use_lp: bool = True, box=None):
        """True (realisable), False (no input of the box realises the decisions), or None (undecided without
        an LP, when ``use_lp`` is false). ``box``: (lo, hi) of a sub-box of the region (default: the region)."""
        rows, n = self.checkable(dec)
        if n == 0:
            return True
        cols = torch.cat([self.offsets[li] + idx for li, (idx, _) in enumerate(rows)])
        sg = torch.cat([g for _, g in rows])
        # z_i * sign >= 0 for every decision (a zero pre-activation agrees with both signs)
        agree = ((self._Sb[cols, : self.n_points] * sg.to(torch.int8)[:, None]) >= 0).all(0)
        if box is not None:  # only samples inside the sub-box certify it
            agree &= ((self.X >= box[0]) & (self.X <= box[1])).all(1)
        if bool(agree.any()):
            return True
        A_ub, b_ub, slack = self._rows(rows, dec)
        b_ub = b_ub + slack
        A_ub, b_ub = A_ub.numpy(), b_ub.numpy()
        lo, hi = (self.lo.numpy(), self.hi.numpy()) if box is None else (box[0].numpy(), box[1].numpy())
        # a single constraint that fails on the whole box: infeasible without an LP (exact)
        row_min = np.clip(A_ub, 0, None) @ lo + np.clip(A_ub, None, 0) @ hi
        if bool((row_min > b_ub).any()):
            return False
        if not use_lp:
            return None
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            return True  # no time for the LP: keep the domain (sound: only proven-infeasible ones are dropped)
        self.lp_calls += 1
        return self._lp_feasible(A_ub, b_ub, lo, hi)

    def _rows(self, rows: list, dec: torch.Tensor):
        """(A, b, slack): the checkable decisions as rows A x <= b (z_i >= 0 or z_i <= 0 with the layers
        before fixed, so z_i is affine in x), and a small slack per row for rounding."""
        A = c = None  # h_{li-1} = A x + c (None: the input itself)
        A_ub, b_ub, slack = [], [], []
        for li, (idx, g) in enumerate(rows):
            if li == len(rows) - 1:  # the last checked layer: only its decided rows are needed
                Mi = self.W[li][idx] if A is None else self.W[li][idx] @ A
                mi = self.b[li][idx] if A is None else self.W[li][idx] @ c + self.b[li][idx]
            else:
                M = self.W[li] if A is None else self.W[li] @ A
                m = self.b[li] if A is None else self.W[li] @ c + self.b[li]
                Mi, mi = M[idx], m[idx]
            if len(idx):
                # g = +1: z_i >= 0  <=>  -M_i x <= m_i ; g = -1: M_i x <= -m_i
                A_ub.append(-g[:, None] * Mi)
                b_ub.append(g * mi)
                slack.append(1e-7 * (1.0 + mi.abs() + Mi.abs().sum(1) * self.rad))
            if li == len(rows) - 1:
                break
            d = dec[self.offsets[li] : self.offsets[li + 1]]
            slope = torch.where(self.und[li], torch.where(d > 0, torch.ones_like(self.sfix[li]),
                                                          torch.full_like(self.sfix[li], self.params[li])), self.sfix[li])
            A, c = slope[:, None] * M, slope * m
        return torch.cat(A_ub), torch.cat(b_ub), torch.cat(slack)

    def interior_point(self, dec: torch.Tensor, box) -> np.ndarray | None:
        """A point of the box deepest inside the region of the checkable decisions (max-slack LP), or None."""
        from ...highs import Status
        from ...methods.exact.enumerate import max_slack_point

        rows, n = self.checkable(dec)
        if n == 0:
            return None
        A_ub, b_ub, _ = self._rows(rows, dec)
        # A x <= b  <=>  (-A) x + b >= 0: the form of max_slack_point (G x + h >= t ||G_i||)
        t, x = max_slack_point(-A_ub.numpy(), b_ub.numpy(), box[0].numpy(), box[1].numpy())
        return x if x is not None and t > 0 else None

    def _lp_feasible(self, A_ub, b_ub, lo, hi) -> bool:
        """False only when HiGHS proves {A_ub x <= b_ub, lo <= x <= hi} empty (a solve stopped on time keeps
        the domain); a feasible point is kept as a sample whose sign pattern certifies later domains."""
        from ... import highs

        options = {}
        if self.deadline is not None:
            options["time_limit"] = max(0.01, self.deadline - time.perf_counter())
        # presolve off: on these few dense rows it doubles the time of a solve and proves nothing more
        r = highs.solve(np.zeros(A_ub.shape[1]), A_ub, None, b_ub, lo.astype(np.float64), hi.astype(np.float64),
                        presolve="off", **options)
        if r.status == highs.Status.INFEASIBLE:
            return False
        if self.n_points < self._Xb.shape[0] and r.status == highs.Status.OPTIMAL and r.primal is not None:
            x = torch.as_tensor(np.asarray(r.primal, dtype=np.float64))
            x = torch.minimum(torch.maximum(x, self.lo), self.hi)
            pre = self.net.preactivations(x.reshape((1,) + self.net.input_shape))
            self._Xb[self.n_points] = x
            self._Zb[self.n_points] = torch.cat([z.reshape(-1) for z in pre])
            self._Sb[:, self.n_points] = torch.sign(self._Zb[self.n_points]).to(torch.int8)
            self.n_points += 1
        return True


def _plan(refresh: str, batch: int, budget: float, t_root: float, n_rows: int) -> tuple[str, int]:
    """The cost model: refresh "all" when a full batch of children costs at most 20% of the budget (or
    1 s), else "input" with a batch that fits 10% of it."""
    per_elem = t_root / n_rows
    if refresh == "auto":
        refresh = "all" if per_elem * 2 * batch <= max(0.2 * budget, 1.0) else "input"
    if refresh != "all":
        batch = max(1, min(batch, int(max(0.1 * budget, 1.0) / max(per_elem, 1e-6) / 2)))
    return refresh, batch


@dataclasses.dataclass
class _Part:
    """The data of one domain: its box (flat), its fixed slopes (N,) int8 (+1 active, -1 inactive, 0 free),
    the forward bounds valid on it, the first node whose forward bounds its children must recompute, the
    split chosen for it (("input", dimension), ("neuron", flat index) or None) and the pattern-LP rows
    already checked."""

    lo: torch.Tensor
    hi: torch.Tensor
    dec: torch.Tensor
    fwd: dict
    refine_from: int
    split: tuple | None = None
    n_rows: int = 0
    check: bool = False  # a decision the pattern LP has not confirmed on this box yet
    explicit: bool = False  # some slope was fixed by a neuron split (not only implied by the bounds)


class _JacobianSearch:
    """The `branch_and_bound.Problem` of crown-bab (see the module doc). Keys are output positions in
    ``classes``, or -1 for a domain that bounds all outputs at once (l2 / l1 with several outputs)."""

    combine = "max"

    def __init__(self, net, ctx: MethodContext, G: JacobianGraph, classes: list, split_acts: list, mode: str):
        self.net, self.ctx, self.root_G, self.classes, self.mode = net, ctx, G, classes, mode
        self.norm = ctx.norm
        # one domain for all outputs (sharing forward bounds and pattern LPs) except l_inf input splitting,
        # where domains per output let the search spend its time on the worst output
        self.all_outputs = len(classes) > 1 and (ctx.norm != math.inf or mode == "neuron")
        self.split_acts = split_acts
        self.offsets = list(itertools.accumulate([0] + [net.nodes[k].size for k in split_acts]))
        self.root_width = torch.as_tensor((ctx.region.upper - ctx.region.lower).reshape(-1), dtype=torch.float64)
        self.first_act = min(G.acts) if G.acts else 0
        self.relu_like = {k: net.nodes[k].op.fn.relu_like_slope is not None for k in G.acts}
        self.lp = None
        self.lp_eager = False
        self.refresh, self.root_res = "all", None
        self.deadline = None
        self.pruned = 0
        self.rng = np.random.default_rng(ctx.seed)
        self.walk = mode == "input" and bool(walked_nodes(net))
        self.best_probe, self.lower_calls = None, 0  # the lower-bound hook's best (value, point), its calls
        self.walk_gap = self.next_walk = WALK_EVERY  # calls between walks, and the call of the next one
        self.sign_entries = ctx.option("sign_entries")  # None: the graph's default (`graph.SIGN_ENTRIES`)
        self.threads = FollowFreeCores(THREAD_CHECK_S)

    # ---- bounding ----------------------------------------------------------------------------------
    def bound(self, children: list) -> list:
        self.threads.tick()
        keys, parts = [c[0] for c in children], [c[1] for c in children]
        fwd = self._forward(parts)
        dec = self._implied(torch.stack([p.dec for p in parts]), fwd)
        res, rows, G = self._graph(keys, fwd, dec)
        values, entry_abs, scores = self._per_domain(res, rows, G, len(parts))
        lo, hi = torch.stack([p.lo for p in parts]), torch.stack([p.hi for p in parts])
        splits = self._choose(lo, hi, fwd, dec, entry_abs, scores)
        out = []
        keys_f = list(fwd)
        flat = torch.cat([fwd[k][i] for k in keys_f for i in (0, 1)], 1)
        sizes = [fwd[k][i].shape[1] for k in keys_f for i in (0, 1)]
        for b, p in enumerate(parts):
            # one copy per child: a dropped child frees its memory, not its batch's
            views = flat[b].clone().split(sizes)
            f = {k: (views[2 * j], views[2 * j + 1]) for j, k in enumerate(keys_f)}
            out.append((float(values[b]), _Part(p.lo, p.hi, dec[b].clone(), f, p.refine_from, splits[b], p.n_rows,
                                                p.check, p.explicit)))
        return out

    def _forward(self, parts: list) -> dict:
        """Forward bounds of each domain: CROWN from its first changed layer on, within its parent's."""
        lo, hi = torch.stack([p.lo for p in parts]), torch.stack([p.hi for p in parts])
        known = {k: (torch.stack([p.fwd[k][0] for p in parts]), torch.stack([p.fwd[k][1] for p in parts]))
                 for k in parts[0].fwd}
        refine = min(p.refine_from for p in parts)
        if refine > max(known):
            return known
        return forward_bounds_batch(self.net, lo, hi, known, refine, deadline=self.deadline)

    def _implied(self, dec: torch.Tensor, fwd: dict) -> torch.Tensor:
        """Decisions the domain's forward bounds imply (z >= 0 or z <= 0 proven): recorded so that the pattern
        LP can use them and the split rule skips them."""
        dec = dec.clone()
        for i, k in enumerate(self.split_acts):
            d = dec[:, self.offsets[i] : self.offsets[i + 1]]
            l, u = fwd[k]
            root_und = self.root_G.s[k][1] > self.root_G.s[k][0]  # stable at the root: no decision needed
            d[(d == 0) & (l >= 0) & root_und] = 1
            d[(d == 0) & (u <= 0) & root_und] = -1
        return dec

    def _graph(self, keys: list, fwd: dict, dec: torch.Tensor):
        """CROWN on the Jacobian graph of every (domain, output) row."""
        B = dec.shape[0]
        m = len(self.classes)
        if self.all_outputs:
            rows = torch.arange(B).repeat_interleave(m)
            cls = torch.tensor(self.classes).repeat(B)
            pos = torch.arange(m).repeat(B)
        else:
            rows = torch.arange(B)
            pos = torch.tensor(keys)
            cls = torch.tensor([self.classes[k] for k in keys])
        # rows grouped by domain (m per domain, or 1): the low-rank walk runs one adjoint pass per domain over
        # its own undecided neurons, where the base class runs m x (1 + their union over the batch)
        G = RowwiseGraph(self.net, fwd, m if self.all_outputs else 1)  # per domain: rows is B x m or B x 1
        G.deadline = self.deadline
        if self.sign_entries is not None:
            G.sign_entries = self.sign_entries
        decisions = {k: dec[rows, self.offsets[i] : self.offsets[i + 1]] for i, k in enumerate(self.split_acts)}
        g_known = v_known = None
        if self.refresh != "all":
            g_known = {k: (self.root_res.g[k][0][pos], self.root_res.g[k][1][pos]) for k in G.acts}
            v_known = (self.root_res.v[0][pos], self.root_res.v[1][pos])
        res = G.bound(cls, self.norm, mode="crown", decisions=decisions, g_known=g_known, v_known=v_known,
                      refresh=self.refresh)
        return res, rows, G

    def _per_domain(self, res, rows, G, B: int):
        """(value (B,), |df/dx| bound (B, n0), neuron split scores (B, N)) of every domain from its rows."""
        und = {k: G._und[k] for k in G.acts}
        scores = _scores(G, res, und, self.split_acts) if self.split_acts else torch.zeros(len(rows), 0)
        if not self.all_outputs:
            vals = res.entry_abs.amax(1) if self.norm == 1 else res.value
            return vals, res.entry_abs, scores
        m = len(self.classes)
        sl = [slice(b * m, (b + 1) * m) for b in range(B)]
        vals = torch.tensor([combine(res.value[r], res.entry_abs[r], self.norm, True, (res.v[0][r], res.v[1][r]))
                             for r in sl], dtype=torch.float64)
        ea = res.entry_abs.reshape(B, m, -1).amax(1)
        return vals, ea, scores.reshape(B, m, -1).sum(1)

    def _choose(self, lo, hi, fwd: dict, dec, entry_abs, scores) -> list:
        """The split of every domain (batched): in input mode, a domain with at most ``FEW_UNDECIDED``
        undecided ReLU-like neurons splits them (first layer first, so that the pattern LP can check the
        decisions on its box), else its box along the dimension of largest width x |df/dx_d| bound; in
        neuron mode the neuron of largest area score. None: nothing left to split."""
        B = lo.shape[0]
        out: list = [None] * B
        if self.mode == "input":
            width = hi - lo
            sc = torch.where(width > MIN_WIDTH * self.root_width, width * (entry_abs + 1e-12), torch.zeros_like(width))
            dim = sc.argmax(1)
            ok = (sc > 0).any(1)
            few = decided = torch.zeros(B, dtype=torch.bool)
            if self.lp is not None:
                und = torch.cat([(fwd[k][0] < 0) & (fwd[k][1] > 0) for k in self.split_acts], 1) & (dec == 0)
                n_und = und.sum(1)
                few = (n_und > 0) & (n_und <= FEW_UNDECIDED)
                # every ReLU-like neuron decided (and no other undecided): the domain's value is one
                # pattern's gradient norm; the lower-bound hook looks for a point inside its region
                decided = (n_und == 0) & ~self._other_undecided(fwd)
                first = und.to(torch.int8).argmax(1)
            for b in range(B):
                if bool(decided[b]):
                    continue
                if bool(few[b]):
                    out[b] = ("neuron", int(first[b]))
                elif bool(ok[b]):
                    out[b] = ("input", int(dim[b]))
            return out
        if scores.numel():
            if self.lp is not None:  # earliest layer first: the pattern LP can only check decided prefixes
                scores = self._first_layer_only(scores)
            best, arg = scores.max(1)
            for b in range(B):
                if float(best[b]) > 0:
                    out[b] = ("neuron", int(arg[b]))
        return out

    def _first_layer_only(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores zeroed outside each domain's first layer that has an undecided neuron."""
        out = torch.zeros_like(scores)
        left = torch.ones(scores.shape[0], dtype=torch.bool)
        for i in range(len(self.split_acts)):
            part = scores[:, self.offsets[i] : self.offsets[i + 1]]
            here = left & (part > 0).any(1)
            out[:, self.offsets[i] : self.offsets[i + 1]] = torch.where(here[:, None], part, torch.zeros_like(part))
            left &= ~here
        return out

    def _other_undecided(self, fwd: dict) -> torch.Tensor:
        """(B,) True where a neuron that cannot be split (not ReLU-like) is undecided."""
        out = torch.zeros(next(iter(fwd.values()))[0].shape[0], dtype=torch.bool)
        for k in self.root_G.acts:
            if k not in self.split_acts:
                sl, su = self.net.nodes[k].op.fn.derivative_range(*fwd[k])
                out |= (su > sl).any(1)
        return out

    # ---- branching ---------------------------------------------------------------------------------
    def splittable(self, d: Domain) -> bool:
        return d.data.split is not None

    def empty(self, d: Domain) -> bool:
        """A fully decided domain whose pattern no input of its box realises (pattern LP)."""
        return not self._realisable(d.data)

    def branch(self, domains: list) -> list:
        out = []
        for d in domains:
            if not self._realisable(d.data):
                self.pruned += 1
                continue
            kind, i = d.data.split
            kids = self._input_children(d.data, i) if kind == "input" else self._neuron_children(d.data, i)
            for c in kids:
                if self._realisable(c, use_lp=self.lp_eager):
                    out.append((d.key, c, d.upper))
                else:
                    self.pruned += 1
        return out

    def _input_children(self, p: _Part, i: int) -> list:
        mid = (p.lo[i] + p.hi[i]) / 2
        hi1, lo2 = p.hi.clone(), p.lo.clone()
        hi1[i], lo2[i] = mid, mid
        # split decisions confirmed on the parent's box must be confirmed again on each half
        check = p.check or bool(p.explicit)
        n_rows = 0 if check else p.n_rows
        return [_Part(p.lo, hi1, p.dec, p.fwd, self.first_act, None, n_rows, check, p.explicit),
                _Part(lo2, p.hi, p.dec, p.fwd, self.first_act, None, n_rows, check, p.explicit)]

    def _neuron_children(self, p: _Part, i: int) -> list:
        """Active (z_i >= 0, slope 1) and inactive (z_i <= 0, slope a) children, z_i's bounds clipped."""
        li = next(j for j in range(len(self.split_acts)) if self.offsets[j + 1] > i)
        k, j = self.split_acts[li], i - self.offsets[li]
        kids = []
        for sign in (1, -1):
            dec = p.dec.clone()
            dec[i] = sign
            l, u = p.fwd[k][0].clone(), p.fwd[k][1].clone()
            if sign > 0:
                l[j] = torch.clamp(l[j], min=0.0)
            else:
                u[j] = torch.clamp(u[j], max=0.0)
            fwd = dict(p.fwd)
            fwd[k] = (l, u)
            kids.append(_Part(p.lo, p.hi, dec, fwd, k + 1, None, p.n_rows, True, True))
        return kids

    def _realisable(self, p: _Part, use_lp: bool = True) -> bool:
        """The pattern check of a domain whose checkable decisions grew since its last check: False when no input
        of its box realises them (``use_lp`` false: only the checks that need no LP)."""
        if self.lp is None or not p.check:
            return True
        n_rows = self.lp.checkable(p.dec)[1]
        if n_rows > p.n_rows:
            ok = self.lp.feasible(p.dec, use_lp=use_lp, box=self._box(p))
            if ok is False:
                return False
            if ok:
                p.n_rows, p.check = n_rows, False
        return True

    def _box(self, p: _Part):
        return (p.lo, p.hi) if self.mode == "input" else None

    # ---- the lower-bound hook ----------------------------------------------------------------------
    def _pattern_points(self, domains: list) -> list:
        """On a dense chain, the point deepest inside the region of a domain's decided neurons (max-slack LP):
        for a fully decided domain, where the gradient is its exact value; for the worst popped ones, a point
        where their split neurons have the chosen signs (a thin region sampling rarely meets)."""
        if self.lp is None:
            return []
        pts = []
        for i, d in enumerate(domains):
            # fully decided domains, and the worst few popped ones whose split decisions route the gradient
            if d.data.split is None or (i < TOP_PATTERN_POINTS and d.data.explicit):
                x = self.lp.interior_point(d.data.dec, (d.data.lo, d.data.hi))
                if x is not None:
                    pts.append(torch.as_tensor(x, dtype=torch.float64).reshape(1, -1))
        return pts

    def lower(self, domains: list):
        """The certified gradient norm at the centre and a random point of each popped domain's box."""
        lo = torch.stack([d.data.lo for d in domains])
        hi = torch.stack([d.data.hi for d in domains])
        if self.mode == "neuron":  # every domain has the region's box: random points only
            lo, hi = lo[:1].expand(len(domains), -1), hi[:1].expand(len(domains), -1)
            X = lo + (hi - lo) * torch.as_tensor(self.rng.random(lo.shape))
        else:  # the worst domains (first popped) get more points: their bound is the one to meet
            top = min(len(domains), TOP_DOMAINS)
            lo_t, hi_t = lo[:top].repeat(TOP_POINTS, 1), hi[:top].repeat(TOP_POINTS, 1)
            X = torch.cat([(lo + hi) / 2, lo + (hi - lo) * torch.as_tensor(self.rng.random(lo.shape)),
                           lo_t + (hi_t - lo_t) * torch.as_tensor(self.rng.random(lo_t.shape))])
        X = torch.cat([X] + self._pattern_points(domains))
        X = X.reshape((-1,) + self.net.input_shape)
        vals = jacobian_norms(self.net, X, self.norm, self.ctx.output)
        b = int(torch.argmax(vals))
        v, x = float(vals[b]), X[b]
        if math.isfinite(v) and (self.best_probe is None or v > self.best_probe[0]):
            self.best_probe = (v, x.detach().clone())
        self.lower_calls += 1
        if self.walk and self.lower_calls >= self.next_walk and self.best_probe is not None:
            v, x = self._walk(X, vals)
        return (v, x.detach().numpy().reshape(-1)) if math.isfinite(v) else None

    def _walk(self, X: torch.Tensor, vals: torch.Tensor) -> tuple[float, torch.Tensor]:
        """A few steps of lower-grad's region walk (piecewise-linear networks, few inputs) from the best probe so
        far and this call's best points: the maximum sits in a small piece that random probes rarely hit
        (ACAS Xu 2_3 l_inf eps 0.2, 120 s: the probes alone reached 39.49, with the walk 44.40). Returns the
        best (value, point) of the walk and of the probe so far."""
        top = torch.argsort(vals, descending=True)[:WALK_STARTS]
        starts = torch.cat([self.best_probe[1].unsqueeze(0), X[top]])
        stop = time.perf_counter() + WALK_SECONDS
        v, x, _ = region_walk(self.net, self.ctx, starts, stop if self.deadline is None else min(stop, self.deadline),
                              WALK_STEPS)
        found = x is not None and math.isfinite(v) and v > self.best_probe[0]
        if found:
            self.best_probe = (v, x.detach().clone())
        # a walk that finds nothing doubles the wait before the next one (ACAS Xu 1_1, where the probes are
        # ahead, loses a few steps at most); one that finds a better point keeps the pace
        self.walk_gap = WALK_EVERY if found else 2 * self.walk_gap
        self.next_walk = self.lower_calls + self.walk_gap
        return self.best_probe


def _mode(net, ctx: MethodContext, split_acts: list) -> str:
    opt = ctx.option("split")
    if opt != "auto":
        return opt
    return "input" if net.n_inputs <= INPUT_SPLIT_MAX_DIM else "neuron"


def _unsplittable(net, G: JacobianGraph, split_acts: list) -> list:
    return [k for k in G.acts if k not in split_acts and bool((G.s[k][1] > G.s[k][0]).any())]


def _unsplittable_note(net, nodes: list) -> str:
    names = sorted({net.nodes[k].op.fn.describe() for k in nodes})
    return (f"undecided {', '.join(names)} neurons are not split (only the ReLU-like form max(z, 0) + a min(z, 0) "
            "is): their whole derivative range stays in every domain (sound, not refined)")


def _root_domains(search: _JacobianSearch, net, fwd: dict, root_vals: list, n_split: int) -> list:
    lo = torch.as_tensor(search.ctx.region.lower.reshape(-1), dtype=torch.float64)
    hi = torch.as_tensor(search.ctx.region.upper.reshape(-1), dtype=torch.float64)
    keys = [-1] if search.all_outputs else list(range(len(search.classes)))
    part = _Part(lo, hi, torch.zeros(n_split, dtype=torch.int8), dict(fwd), 10 ** 9)
    bounded = search.bound([(k, part) for k in keys])
    return [Domain(min(v, rv), k, p) for k, (v, p), rv in zip(keys, bounded, root_vals)]


def branch_and_bound(net, ctx: MethodContext) -> MethodResult:
    """Certified upper bound on the local Lipschitz constant over a box, in the l_inf, l2 or l1 operator norm
    (see `methods` for what each norm's per-output bounds mean); exact (kind ``exact``, with a witness) when
    the search closes the interval with its own lower bounds. Cost: up to the time limit (the option
    ``budget`` when none is given); each step bounds ``batch`` x 2 children in one batched CROWN pass."""
    if ctx.region is None:
        raise Unsupported("crown-bab bounds a box region (give center and eps, or a box over the input domain)")
    net = expand_maxpool(net)
    t_start = time.perf_counter()
    budget = ctx.time_limit if ctx.time_limit is not None else ctx.option("budget")
    deadline = ctx.start + budget
    alpha = ctx.option("alpha")
    classes = [ctx.output] if ctx.output is not None else list(range(net.n_outputs))
    # the root: crown's shares of the time (its bounds are cached on the blackboard for crown itself)
    fwd, fwd_cut = cached_forward(net, ctx, "crown", alpha, ctx.start + FORWARD_SHARE * budget)
    G = JacobianGraph(net, fwd)
    G.deadline = ctx.start + GRAPH_SHARE * budget
    G.threads = FollowFreeCores(THREAD_CHECK_S)  # a long root walk (conv nets) takes the free cores too
    t0 = time.perf_counter()
    root = G.bound(classes, ctx.norm, mode="crown")
    t_root = time.perf_counter() - t0
    multi = len(classes) > 1
    per_out = root.entry_abs.amax(1) if ctx.norm == 1 else root.value
    root_value = combine(root.value, root.entry_abs, ctx.norm, multi, root.v)
    split_acts = [k for k in G.acts if net.nodes[k].op.fn.relu_like_slope is not None]
    unsplittable = _unsplittable(net, G, split_acts)
    mode = _mode(net, ctx, split_acts)
    details = {"root": root_value, "forward": "alpha-crown" if alpha else "crown", "split": mode,
               "undecided_neurons": [int((G.s[k][1] > G.s[k][0]).sum()) for k in G.acts]}
    if fwd_cut or G.cut:  # the root bound already took the time: no search
        details.update(steps=0, domains=len(classes), converged=False, history=[(time.perf_counter() - ctx.start,
                                                                                root_value)],
                       cut="the root CROWN bound stopped at the time limit: interval bounds kept from there "
                           "(certified, looser)")
        return MethodResult(root_value, status="time_limit", details=details)
    undecided = any(bool((G.s[k][1] > G.s[k][0]).any()) for k in G.acts)
    if not undecided or (mode == "neuron" and not any(bool((G.s[k][1] > G.s[k][0]).any()) for k in split_acts)):
        details.update(steps=0, domains=len(classes), converged=not unsplittable,
                       history=[(time.perf_counter() - ctx.start, root_value)],
                       note=_unsplittable_note(net, unsplittable) if unsplittable
                       else "no undecided ReLU-like neuron: nothing to split")
        return _at_centre(net, ctx, root_value, details)

    search = _JacobianSearch(net, ctx, G, classes, split_acts, mode)
    search.deadline = deadline
    batch = ctx.option("batch") or (INPUT_BATCH if mode == "input" else NEURON_BATCH)
    search.refresh, batch = _plan(ctx.option("refresh"), batch, budget, t_root,
                                  len(classes))
    search.root_res = root
    if ctx.option("lp_prune") in ("auto", True) and net.n_inputs <= 2000:
        try:
            search.lp = PatternLP(net, G, split_acts, search.offsets, ctx.region)
            search.lp.deadline = deadline
        except Unsupported:
            search.lp = None
    search.lp_eager = ctx.option("lp_eager")
    root_vals = [root_value] if search.all_outputs else [float(v) for v in per_out]
    roots = _root_domains(search, net, fwd, root_vals, search.offsets[-1])
    outcome = _engine(search, ctx, batch, deadline).run(roots)
    return _result(search, outcome, details, unsplittable, root_value, batch, t_start)


def _at_centre(net, ctx: MethodContext, value: float, details: dict) -> MethodResult:
    """The root's result with the certified gradient norm at the box's centre as its lower bound; exact when
    they meet (no undecided neuron: one linear region)."""
    x = torch.as_tensor(ctx.region.mid.reshape((1,) + net.input_shape), dtype=torch.float64)
    low = float(jacobian_norms(net, x, ctx.norm, ctx.output)[0])
    if not (math.isfinite(low) and low > 0):
        return MethodResult(value, details=details)
    w = x.numpy().reshape(-1)
    if value <= low * (1 + EXACT_RTOL):
        return MethodResult(value, kind="exact", witness=w, details=details, lower=low, lower_witness=w)
    return MethodResult(value, details=details, lower=low, lower_witness=w)


def _engine(search: _JacobianSearch, ctx: MethodContext, batch: int, deadline: float) -> Engine:
    """The engine with what an enclosing run (`lipbound.certify`, through ``ctx.shared``) knows: its certified
    lower bound and witness, and its target gap when that is looser than this method's."""
    gap = max(ctx.option("target_gap"), ctx.shared_value("target_gap", 1.0))
    lower, witness = ctx.shared_value("best_lower", 0.0), ctx.shared_value("witness")
    if lower <= 0 and ctx.norm != math.inf:
        lower, witness = _ascent_lower(search.net, ctx, deadline)
    return Engine(search, batch=batch, deadline=deadline, target_gap=gap, max_domains=ctx.option("max_domains"),
                  lower=lower, witness=witness, start=ctx.start,
                  outside_lower=lambda: ctx.shared_value("best_lower"))


#: l1 / l2 without a lower bound from outside: gradient ascent (lower-grad) gets this share of the time left
#: before the search, at most ASCENT_MAX_S seconds (ACAS Xu 1_1 eps 0.05, l2: the search's own probes
#: stayed at 0.086 for 12 s while the maximum is 0.4325; with no lower bound no domain can be dropped)
ASCENT_SHARE, ASCENT_MAX_S = 0.15, 5.0


def _ascent_lower(net, ctx: MethodContext, deadline: float) -> tuple[float, object]:
    """(certified lower bound, witness) from a short lower-grad run on the box, or (0, None)."""
    from ...api import bound  # the registry's entry point (imported here: api imports the methods)

    limit = min(ASCENT_MAX_S, ASCENT_SHARE * max(deadline - time.perf_counter(), 0.0))
    if limit < 0.2:
        return 0.0, None
    b = bound(net, "lower-grad", ctx.norm, ctx.region, limit, output=ctx.output, seed=ctx.seed)
    if b.value is None or not b.value > 0 or b.witness is None:
        return 0.0, None
    return float(b.value), np.asarray(b.witness).reshape(net.input_shape)


def _result(search: _JacobianSearch, out, details: dict, unsplittable: list, root_value: float, batch: int,
            t_start: float) -> MethodResult:
    value = min(out.upper, root_value)
    per: dict = {}
    if not search.all_outputs:
        for key, upper in out.open:
            per[search.classes[key]] = max(per.get(search.classes[key], 0.0), upper)
    converged = out.status == "exact" or (out.status == "converged" and not (search.mode == "neuron" and unsplittable))
    details.update(history=[(t, u) for t, _, u in out.history], timeline=out.history, steps=out.steps,
                   domains=out.domains, dropped=out.dropped, per_output=per, pruned=search.pruned, converged=converged,
                   stopped=out.status, refresh=search.refresh, batch=batch, lp_prune=search.lp is not None,
                   time_bab_s=time.perf_counter() - t_start)
    if search.lp is not None:
        details["lp_calls"] = search.lp.lp_calls
    if out.status == "converged" and search.mode == "neuron" and unsplittable:
        details["stopped"] = "unsplittable"
        details["note"] = _unsplittable_note(search.net, unsplittable)
    lower = out.lower if out.lower > 0 and out.witness is not None else None
    status = "time_limit" if out.status in ("time_limit", "max_domains") else "ok"
    met = out.witness is not None and out.lower > 0 and value <= out.lower * (1 + EXACT_RTOL)
    if met:  # the ends met (to the walks' rounding margin): the search has nothing left to find
        details["converged"] = True
    if out.status == "exact" and out.witness is not None or met:
        # the certified ends meet (to rounding): the value is the exact constant, attained at the witness
        return MethodResult(value, kind="exact", status=status, witness=np.asarray(out.witness), details=details,
                            lower=out.lower, lower_witness=np.asarray(out.witness))
    return MethodResult(value, status=status, details=details, lower=lower,
                        lower_witness=None if lower is None else np.asarray(out.witness))
