"""Branch and bound for the `crown-bab` method (local Lipschitz bounds on the Clarke-Jacobian graph).

What is split: undecided forward neurons of the ReLU-like form max(z, 0) + a min(z, 0)
(``fn.relu_like_slope`` = a: ReLU, leaky ReLU, Abs; their Clarke derivative s is the interval between a
and 1); a child fixes s to one end. Sound because the relaxed problem maximises a convex function (a
norm) of a Jacobian that is affine in each s_i separately, so its maximum over s_i in [sl, su] is
attained at an end: the larger of the two children's maxima covers the parent. Neurons of any other
activation are not split: they keep their whole derivative range in every domain (sound, not refined;
the search stops when the worst domain has only such neurons left undecided). Forward bounds are
inherited (never recomputed); the Jacobian-graph bounds of each child are recomputed (``refresh``:
"all" intermediate bounds, or only the input-gradient bounds ("input"), or only the final bound
("final"); "auto" picks by the measured cost). A child's bound is min(child, parent), so the global
bound (the max over open domains, combined over outputs) never increases.

Pattern pruning (dense chains of ReLU-like activations, ``lp_prune``): while all neurons of the layers
before layer k are fixed, the decisions in layer k are linear constraints on x; a child whose constraints no x
in the box satisfies (a HiGHS LP with a small slack, skipped when a sampled point or an earlier LP
point already realises the decisions) is dropped. Without it the branch and bound converges to the
maximum over all activation patterns consistent with the forward bounds, realisable or not; with it,
to the maximum over realisable patterns, i.e. the exact local constant (as LipMIP / `enumerate`).

Loop: a single priority queue of domains over all outputs (so the time goes to the outputs whose
bound is the current maximum: outputs are processed worst first, as in the reference's sorted time
split, but adaptively); pop up to ``batch`` domains with the largest bound, split each on the
undecided neuron of largest area score (gu|gu| - gl|gl|) * |coefficient of s_i u_i in the final bound| + 1,
bound all children in one batched pass, push them back. Stops on the time budget, at ``max_domains``
domains, or when the worst domain has no undecided neuron left (then the bound is the exact maximum
over the Clarke-consistent activation patterns of the forward bounds, for refresh "all").
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
import time

import numpy as np
import torch

from ...errors import Unsupported
from ...network import tensor_view
from ...registry import MethodContext, MethodResult
from .graph import JacobianGraph
from .methods import FORWARD_SHARE, GRAPH_SHARE, cached_forward

DEFAULT_BUDGET = 30.0


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
        self.Z = torch.cat([z.reshape(z.shape[0], -1) for z in pre], 1)  # (n_samples, N)
        self.lp_calls = 0
        self.deadline = None  # a time.perf_counter() time: LPs get the time left as their HiGHS limit
        self.net = net
        self.rad = float((self.hi - self.lo).abs().max()) + 1.0
        self.und = [G.s[k][1] > G.s[k][0] for k in split_acts]
        self.sfix = [G.s[k][0] for k in split_acts]

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

    def feasible(self, dec: torch.Tensor, use_lp: bool = True):
        """True (realisable), False (no input realises the decisions), or None (undecided without an
        LP, when ``use_lp`` is false)."""
        rows, n = self.checkable(dec)
        if n == 0:
            return True
        cols = torch.cat([self.offsets[li] + idx for li, (idx, _) in enumerate(rows)])
        sg = torch.cat([g for _, g in rows])
        if bool(((self.Z[:, cols] * sg) >= 0).all(1).any()):
            return True
        A = torch.eye(self.lo.shape[0], dtype=torch.float64)
        c = torch.zeros(self.lo.shape[0], dtype=torch.float64)
        A_ub, b_ub = [], []
        for li, (idx, g) in enumerate(rows):
            M = self.W[li] @ A
            m = self.W[li] @ c + self.b[li]
            if len(idx):
                Mi, mi = M[idx], m[idx]
                slack = 1e-7 * (1.0 + mi.abs() + Mi.abs().sum(1) * self.rad)
                # g = +1: z_i >= -slack  <=>  -M_i x <= m_i + slack ; g = -1: M_i x <= -m_i + slack
                A_ub.append(-g[:, None] * Mi)
                b_ub.append(g * mi + slack)
            d = dec[self.offsets[li] : self.offsets[li + 1]]
            slope = torch.where(self.und[li], torch.where(d > 0, torch.ones_like(self.sfix[li]),
                                                          torch.full_like(self.sfix[li], self.params[li])), self.sfix[li])
            A, c = slope[:, None] * M, slope * m
        A_ub, b_ub = torch.cat(A_ub).numpy(), torch.cat(b_ub).numpy()
        lo, hi = self.lo.numpy(), self.hi.numpy()
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

    def _lp_feasible(self, A_ub, b_ub, lo, hi) -> bool:
        """False only when HiGHS proves {A_ub x <= b_ub, lo <= x <= hi} empty (a solve stopped on time keeps
        the domain); a feasible point is kept as a sample whose sign pattern certifies later domains."""
        from ... import highs

        options = {}
        if self.deadline is not None:
            options["time_limit"] = max(0.01, self.deadline - time.perf_counter())
        r = highs.solve(np.zeros(A_ub.shape[1]), A_ub, None, b_ub, lo.astype(np.float64), hi.astype(np.float64),
                        **options)
        if r.status == highs.Status.INFEASIBLE:
            return False
        if self.Z.shape[0] < 6000 and r.status == highs.Status.OPTIMAL and r.primal is not None:
            x = torch.as_tensor(np.asarray(r.primal, dtype=np.float64))
            x = torch.minimum(torch.maximum(x, self.lo), self.hi)
            pre = self.net.preactivations(x.reshape((1,) + self.net.input_shape))
            self.Z = torch.cat([self.Z, torch.cat([z.reshape(1, -1) for z in pre], 1)])
        return True


def _plan(refresh: str, batch: int, budget: float, t_root: float, n_classes: int) -> tuple[str, int]:
    """The cost model: refresh "all" when a full batch of children costs at most 20% of the budget (or
    1 s), else "input" with a batch that fits 10% of it."""
    per_elem = t_root / n_classes
    if refresh == "auto":
        refresh = "all" if per_elem * 2 * batch <= max(0.2 * budget, 1.0) else "input"
    if refresh != "all":
        batch = max(1, min(batch, int(max(0.1 * budget, 1.0) / max(per_elem, 1e-6) / 2)))
    return refresh, batch


@dataclasses.dataclass
class _Children:
    """The children of one step: decisions (C, N) int8, the split neuron, the position of the output in
    ``classes``, the parent's bound and how many decisions the pattern check has already covered."""

    dec: torch.Tensor
    idx: torch.Tensor
    cls_pos: list
    parent: torch.Tensor
    n_rows: list

    def take(self, keep: list) -> "_Children":
        k = torch.tensor(keep)
        return _Children(self.dec[k], self.idx[k], [self.cls_pos[b] for b in keep], self.parent[k],
                         [self.n_rows[b] for b in keep])


class _Search:
    """One crown-bab run: a priority queue of domains over all outputs, heap items
    (-bound, tie-break counter, output position, decisions, next neuron to split or -1, LP rows checked);
    one step is `select` -> `split` -> `prune` -> `bound` -> `record`."""

    def __init__(self, net, G: JacobianGraph, root, classes: list, norm, split_acts: list, ctx):
        self.net, self.G, self.root, self.classes, self.norm, self.ctx = net, G, root, classes, norm, ctx
        self.multi = len(classes) > 1
        self.split_acts = split_acts
        self.offsets = list(itertools.accumulate([0] + [net.nodes[k].size for k in split_acts]))
        self.N = self.offsets[-1]
        #: undecided neurons that cannot be split (not of the ReLU-like form): every domain keeps them
        self.unsplittable = [k for k in G.acts if k not in split_acts and bool((G.s[k][1] > G.s[k][0]).any())]
        self.root_vals = {i: float(root.value[i]) for i in range(len(classes))}
        self.history = [(time.perf_counter() - ctx.start, self.combine(self.root_vals))]
        self.heap: list = []
        self.counter = itertools.count()
        self.lp, self.lp_eager, self.refresh, self.batch = None, False, "all", 1
        self.pruned = self.steps = 0

    def splittable_undecided(self) -> bool:
        return self.N > 0 and any(bool((self.G.s[k][1] > self.G.s[k][0]).any()) for k in self.split_acts)

    def combine(self, per_class: dict) -> float:
        vals = torch.tensor(list(per_class.values()), dtype=torch.float64)
        if self.norm == 2 and self.multi:
            return float(torch.sqrt((vals ** 2).sum()))
        return float(vals.max())

    def target_reached(self) -> bool:
        """True when an enclosing run (`lipbound.certify`, through ``ctx.shared``) already has a certified
        lower bound L and a target gap g with current bound <= g L: splitting further cannot change its answer."""
        lower, gap = self.ctx.shared_value("best_lower"), self.ctx.shared_value("target_gap")
        return lower is not None and gap is not None and lower > 0 and self.current_bound() <= gap * lower

    def current_bound(self) -> float:
        if not (self.norm == 2 and self.multi):
            return -self.heap[0][0]
        per = {}
        for negb, _, ci, *_ in self.heap:
            per[ci] = max(per.get(ci, 0.0), -negb)
        return self.combine(per)

    def push_roots(self):
        G = self.G
        und_root = {k: (G.s[k][1] > G.s[k][0]).unsqueeze(0).expand(len(self.classes), -1) for k in G.acts}
        scores = _scores(G, self.root, und_root, self.split_acts)
        for i in range(len(self.classes)):
            nxt = int(scores[i].argmax()) if bool((scores[i] > 0).any()) else -1
            heapq.heappush(self.heap, (-self.root_vals[i], next(self.counter), i, torch.zeros(self.N, dtype=torch.int8),
                                       nxt, 0))

    # ---- one step ---------------------------------------------------------------------------------
    def select(self) -> tuple[list, bool]:
        """Pop up to ``batch`` domains with the largest bounds (lazy pattern LP on each popped domain whose
        checkable decisions grew). Returns (popped, done): done when the worst domain has nothing left
        to split (it and everything popped go back)."""
        popped, closed, done = [], [], False
        while self.heap and len(popped) < self.batch:
            item = heapq.heappop(self.heap)
            if self.lp is not None:  # lazy pattern check: only domains that reach the top are checked
                n_rows = self.lp.checkable(item[3])[1]
                if n_rows > item[5]:
                    if not self.lp.feasible(item[3]):
                        self.pruned += 1
                        continue
                    item = item[:5] + (n_rows,)
            if item[4] < 0:
                if not popped and not closed:
                    done = True  # the worst remaining domain has no splittable undecided neuron
                closed.append(item)
                if done:
                    break
                continue
            popped.append(item)
        for item in closed:
            heapq.heappush(self.heap, item)
        if done:
            for item in popped:
                heapq.heappush(self.heap, item)
        return popped, done

    def split(self, popped: list) -> _Children:
        """Two children per domain: +1 (active slope) and -1 (inactive slope) on its chosen neuron."""
        dec = torch.stack([it[3] for it in popped] * 2)
        idx = torch.tensor([it[4] for it in popped] * 2)
        sign = torch.tensor([1] * len(popped) + [-1] * len(popped), dtype=torch.int8)
        dec[torch.arange(dec.shape[0]), idx] = sign
        return _Children(dec, idx, [it[2] for it in popped] * 2,
                         torch.tensor([-it[0] for it in popped] * 2, dtype=torch.float64), [it[5] for it in popped] * 2)

    def prune(self, ch: _Children) -> _Children | None:
        """Drop the children the cheap pattern checks (samples, single rows; the LP itself only with
        ``lp_eager``) prove unrealisable; None when none is left."""
        if self.lp is None:
            return ch
        keep = []
        for b in range(ch.dec.shape[0]):
            n_rows = self.lp.checkable(ch.dec[b])[1]
            if n_rows > ch.n_rows[b]:
                ok = self.lp.feasible(ch.dec[b], use_lp=self.lp_eager)
                if ok is False:
                    self.pruned += 1
                    continue
                if ok:
                    ch.n_rows[b] = n_rows
            keep.append(b)
        if not keep:
            return None
        return ch if len(keep) == ch.dec.shape[0] else ch.take(keep)

    def bound(self, ch: _Children) -> tuple[torch.Tensor, torch.Tensor]:
        """The children's bounds (never above the parent's) and their split scores."""
        G = self.G
        decisions = {k: ch.dec[:, self.offsets[i] : self.offsets[i + 1]] for i, k in enumerate(self.split_acts)}
        cls = [self.classes[c] for c in ch.cls_pos]
        g_known = v_known = None
        if self.refresh != "all":
            sel = torch.tensor(ch.cls_pos)
            g_known = {k: (self.root.g[k][0][sel], self.root.g[k][1][sel]) for k in G.acts}
            v_known = (self.root.v[0][sel], self.root.v[1][sel])
        res = G.bound(cls, self.norm, mode="crown", decisions=decisions, g_known=g_known, v_known=v_known,
                      refresh=self.refresh)
        vals = torch.minimum(res.value, ch.parent)
        und = {k: G._und[k] for k in G.acts}
        return vals, _scores(G, res, und, self.split_acts)

    def record(self, ch: _Children, vals: torch.Tensor, scores: torch.Tensor):
        """Push the children back with their next neuron to split (-1: nothing left)."""
        for b in range(ch.dec.shape[0]):
            nxt = int(scores[b].argmax()) if bool((scores[b] > 0).any()) else -1
            heapq.heappush(self.heap, (-float(vals[b]), next(self.counter), ch.cls_pos[b], ch.dec[b].clone(), nxt,
                                       ch.n_rows[b]))

    def run(self, deadline: float, max_domains: int, details: dict) -> tuple[str, bool]:
        """Steps until the time budget, ``max_domains`` domains, or the worst domain has nothing left to
        split. Returns (status, done)."""
        ctx, last_step = self.ctx, 0.0
        while True:
            now = time.perf_counter()
            if now + last_step > deadline or ctx.out_of_time():
                return "time_limit", False
            if len(self.heap) >= max_domains:
                details["stopped"] = "max_domains"
                return "time_limit", False
            if not self.heap:
                return "time_limit", False
            if self.target_reached():
                details["stopped"] = "target gap: upper <= target_gap x the best certified lower bound of the run"
                return "ok", False
            popped, done = self.select()
            if done:
                return "ok", True
            if not self.heap and not popped:
                return "time_limit", False  # every domain pruned (cannot happen for a sound pattern check)
            if not popped:
                continue
            ch = self.prune(self.split(popped))
            if ch is not None:
                self.record(ch, *self.bound(ch))
            self.steps += 1
            last_step = time.perf_counter() - now
            self.history.append((time.perf_counter() - ctx.start,
                                 self.current_bound() if self.heap else self.history[-1][1]))

    def result(self, status: str, done: bool, details: dict, t_start: float) -> MethodResult:
        history = self.history
        value = min(self.current_bound(), history[0][1]) if self.heap else history[-1][1]
        if history[-1][1] != value:
            history.append((time.perf_counter() - self.ctx.start, value))
        per = {}
        for negb, _, ci, *_ in self.heap:
            per[self.classes[ci]] = max(per.get(self.classes[ci], 0.0), -negb)
        if self.lp is not None:
            details["lp_calls"] = self.lp.lp_calls
        converged = done and not self.unsplittable
        details.update(steps=self.steps, domains=len(self.heap), converged=converged, per_output=per,
                       pruned=self.pruned, time_bab_s=time.perf_counter() - t_start)
        if done and self.unsplittable:
            details["stopped"] = "unsplittable"
            details["note"] = self.unsplittable_note()
        elif converged:
            if self.lp is not None:
                details["note"] = ("the worst domain is a fully decided activation pattern that an LP found realisable "
                                   "in the box: the value is the gradient norm of that pattern")
            else:
                details["note"] = ("the worst domain is fully decided: the value is the maximum over the activation "
                                   "patterns consistent with the forward bounds")
        return MethodResult(value, status=status, details=details)

    def unsplittable_note(self) -> str:
        names = sorted({self.net.nodes[k].op.fn.describe() for k in self.unsplittable})
        return (f"undecided {', '.join(names)} neurons are not split (only the ReLU-like form max(z, 0) + a min(z, 0) "
                "is): their whole derivative range stays in every domain (sound, not refined)")


def branch_and_bound(net, ctx: MethodContext) -> MethodResult:
    """See the module doc. Returns a certified upper bound (kind upper)."""
    if ctx.region is None:
        raise Unsupported("crown-bab bounds a box region (give center and eps, or a box over the input domain)")
    t_start = time.perf_counter()
    budget = ctx.time_limit if ctx.time_limit is not None else ctx.option("budget")
    deadline = ctx.start + budget
    batch = ctx.option("batch")
    max_domains = ctx.option("max_domains")
    refresh = ctx.option("refresh")  # validated: auto, all, input or final
    alpha = ctx.option("alpha")
    norm = ctx.norm
    if norm not in (2, math.inf):
        raise Unsupported("crown-bab supports norms inf and 2")

    # shared with crown through the blackboard; with a time limit the root bound keeps `crown`'s shares of
    # it (its passes stop there and keep interval bounds: certified); the search then runs to the deadline
    fwd, fwd_cut = cached_forward(net, ctx, "crown", alpha, ctx.start + FORWARD_SHARE * budget)
    G = JacobianGraph(net, fwd)
    G.deadline = ctx.start + GRAPH_SHARE * budget
    classes = [ctx.output] if ctx.output is not None else list(range(net.n_outputs))
    t0 = time.perf_counter()
    root = G.bound(classes, norm, mode="crown")
    t_root = time.perf_counter() - t0
    root_cut = fwd_cut or G.cut
    G.deadline = deadline  # the children's bounds: cut at the deadline (a cut child keeps min(child, parent))
    split_acts = [k for k in G.acts if net.nodes[k].op.fn.relu_like_slope is not None]
    search = _Search(net, G, root, classes, norm, split_acts, ctx)
    history = search.history
    details = {"history": history, "root": history[0][1], "forward": "alpha-crown" if alpha else "crown",
               "undecided_neurons": [int((G.s[k][1] > G.s[k][0]).sum()) for k in G.acts]}
    if root_cut:  # the root bound already took the time: no search
        details.update(steps=0, domains=len(classes), converged=False,
                       cut="the root CROWN bound stopped at the time limit: interval bounds kept from there "
                           "(certified, looser)")
        return MethodResult(history[0][1], status="time_limit", details=details)
    if not search.splittable_undecided():
        details.update(steps=0, domains=len(classes), converged=not search.unsplittable,
                       note=search.unsplittable_note() if search.unsplittable
                       else "no undecided ReLU-like neuron: nothing to split")
        return MethodResult(history[0][1], details=details)

    search.refresh, search.batch = _plan(refresh, batch, budget, t_root, len(classes))
    details["refresh"] = search.refresh
    details["batch"] = search.batch
    lp_opt = ctx.option("lp_prune")  # True, False or "auto" (= True)
    if lp_opt in ("auto", True) and net.n_inputs <= 2000:
        try:
            search.lp = PatternLP(net, G, split_acts, search.offsets, ctx.region)
            search.lp.deadline = deadline
        except Unsupported:
            search.lp = None
    details["lp_prune"] = search.lp is not None
    search.lp_eager = ctx.option("lp_eager")

    search.push_roots()
    status, done = search.run(deadline, max_domains, details)
    return search.result(status, done, details, t_start)
