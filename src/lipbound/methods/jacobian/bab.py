"""Branch and bound for the `crown-bab` method (local Lipschitz bounds on the Clarke-Jacobian graph).

What is split: undecided forward ReLU / leaky-ReLU neurons (their Clarke derivative s is an interval
[sl, su]); a child fixes s to one end. Sound because the relaxed problem maximises a convex function
(a norm) of a Jacobian that is affine in each s_i separately, so its maximum over s_i in [sl, su] is
attained at an end: the larger of the two children's maxima covers the parent. Forward bounds are
inherited (never recomputed); the Jacobian-graph bounds of each child are recomputed (``refresh``:
"all" intermediate bounds, or only the input-gradient bounds ("input"), or only the final bound
("final"); "auto" picks by the measured cost). A child's bound is min(child, parent), so the global
bound (the max over open domains, combined over outputs) never increases.

Pattern pruning (dense ReLU / leaky-ReLU chains, ``lp_prune``): while all neurons of the layers before
layer k are fixed, the decisions in layer k are linear constraints on x; a child whose constraints no x
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

import heapq
import itertools
import math
import time

import numpy as np
import torch

from ...crown import forward_bounds
from ...errors import Unsupported
from ...network import tensor_view
from ...registry import MethodContext, MethodResult
from .graph import JacobianGraph

DEFAULT_BUDGET = 30.0
SPLITTABLE = ("relu", "leaky_relu")


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
    """Infeasibility pruning for dense ReLU / leaky-ReLU chains (optional, sound).

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
        self.params = [0.0 if net.nodes[k].op.name == "relu" else net.nodes[k].op.param for k in split_acts]
        # sampled points of the box and their pre-activations: a domain whose checkable decisions
        # agree with the sign pattern of some sample is feasible without an LP
        rng = np.random.default_rng(0)
        pts = rng.uniform(region.lower.reshape(-1), region.upper.reshape(-1), size=(2000, self.lo.shape[0]))
        pts = np.concatenate([pts, region.mid.reshape(1, -1)])
        pre = net.preactivations(torch.as_tensor(pts).reshape((-1,) + net.input_shape))
        self.Z = torch.cat([z.reshape(z.shape[0], -1) for z in pre], 1)  # (n_samples, N)
        self.lp_calls = 0
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
        self.lp_calls += 1
        return self._lp_feasible(A_ub, b_ub, lo, hi)

    def _lp_feasible(self, A_ub, b_ub, lo, hi) -> bool:
        try:
            import highspy

            h = highspy.Highs()
            h.setOptionValue("output_flag", False)
            lp = highspy.HighsLp()
            n, m = A_ub.shape[1], A_ub.shape[0]
            lp.num_col_, lp.num_row_ = n, m
            lp.col_cost_ = np.zeros(n)
            lp.col_lower_, lp.col_upper_ = lo.astype(np.float64), hi.astype(np.float64)
            lp.row_lower_ = np.full(m, -highspy.kHighsInf)
            lp.row_upper_ = b_ub.astype(np.float64)
            lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
            lp.a_matrix_.start_ = np.arange(0, n * m + 1, n, dtype=np.int32)
            lp.a_matrix_.index_ = np.tile(np.arange(n, dtype=np.int32), m)
            lp.a_matrix_.value_ = A_ub.reshape(-1).astype(np.float64)
            h.passModel(lp)
            h.run()
            if h.getModelStatus() == highspy.HighsModelStatus.kInfeasible:
                return False
            # keep the LP's point as a sample: its sign pattern certifies later domains without an LP
            if self.Z.shape[0] < 6000 and h.getModelStatus() == highspy.HighsModelStatus.kOptimal:
                x = torch.as_tensor(np.asarray(h.getSolution().col_value, dtype=np.float64))
                x = torch.minimum(torch.maximum(x, self.lo), self.hi)
                pre = self.net.preactivations(x.reshape((1,) + self.net.input_shape))
                self.Z = torch.cat([self.Z, torch.cat([z.reshape(1, -1) for z in pre], 1)])
            return True
        except ImportError:  # pragma: no cover - scipy's HiGHS
            from scipy.optimize import linprog

            res = linprog(np.zeros(A_ub.shape[1]), A_ub=A_ub, b_ub=b_ub, bounds=list(zip(lo, hi)), method="highs")
            return res.status != 2  # 2: infeasible


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

    fwd = forward_bounds(net, ctx.region, alpha=alpha, method="crown")
    G = JacobianGraph(net, fwd)
    classes = [ctx.output] if ctx.output is not None else list(range(net.n_outputs))
    multi = len(classes) > 1
    t0 = time.perf_counter()
    root = G.bound(classes, norm, mode="crown")
    t_root = time.perf_counter() - t0

    split_acts = [k for k in G.acts if net.nodes[k].op.name in SPLITTABLE]
    sizes = [net.nodes[k].size for k in split_acts]
    offsets = list(itertools.accumulate([0] + sizes))
    N = offsets[-1]

    def combine_classes(per_class: dict) -> float:
        vals = torch.tensor(list(per_class.values()), dtype=torch.float64)
        if norm == 2 and multi:
            return float(torch.sqrt((vals ** 2).sum()))
        return float(vals.max())

    root_vals = {i: float(root.value[i]) for i in range(len(classes))}
    history = [(time.perf_counter() - ctx.start, combine_classes(root_vals))]
    details = {"history": history, "root": history[0][1], "forward": "alpha-crown" if alpha else "crown",
               "undecided_neurons": [int((G.s[k][1] > G.s[k][0]).sum()) for k in G.acts]}

    if N == 0 or not any(bool((G.s[k][1] > G.s[k][0]).any()) for k in split_acts):
        details.update(steps=0, domains=len(classes), converged=True, note="no undecided ReLU: nothing to split")
        return MethodResult(history[0][1], details=details)

    # cost model: refresh "all" when a full batch of children costs at most 20% of the budget (or 1 s)
    per_elem = t_root / len(classes)
    if refresh == "auto":
        refresh = "all" if per_elem * 2 * batch <= max(0.2 * budget, 1.0) else "input"
    if refresh != "all":
        batch = max(1, min(batch, int(max(0.1 * budget, 1.0) / max(per_elem, 1e-6) / 2)))
    details["refresh"] = refresh
    details["batch"] = batch

    lp = None
    lp_opt = ctx.option("lp_prune")  # True, False or "auto" (= True)
    if lp_opt in ("auto", True) and net.n_inputs <= 2000:
        try:
            lp = PatternLP(net, G, split_acts, offsets, ctx.region)
        except Unsupported:
            lp = None
    details["lp_prune"] = lp is not None
    lp_eager = ctx.option("lp_eager")
    pruned = 0

    und_root = {k: (G.s[k][1] > G.s[k][0]).unsqueeze(0).expand(len(classes), -1) for k in G.acts}
    scores = _scores(G, root, und_root, split_acts)
    counter = itertools.count()
    heap: list = []
    for i in range(len(classes)):
        nxt = int(scores[i].argmax()) if bool((scores[i] > 0).any()) else -1
        heapq.heappush(heap, (-root_vals[i], next(counter), i, torch.zeros(N, dtype=torch.int8), nxt, 0))

    def current_bound() -> float:
        if not (norm == 2 and multi):
            return -heap[0][0]
        per = {}
        for negb, _, ci, *_ in heap:
            per[ci] = max(per.get(ci, 0.0), -negb)
        return combine_classes(per)

    status, converged, steps = "time_limit", False, 0
    last_step = 0.0
    while True:
        now = time.perf_counter()
        if now + last_step > deadline or ctx.out_of_time():
            break
        if len(heap) >= max_domains:
            details["stopped"] = "max_domains"
            break
        if not heap:
            break
        popped, closed = [], []
        while heap and len(popped) < batch:
            item = heapq.heappop(heap)
            if lp is not None:  # lazy pattern check: only domains that reach the top are checked
                n_rows = lp.checkable(item[3])[1]
                if n_rows > item[5]:
                    if not lp.feasible(item[3]):
                        pruned += 1
                        continue
                    item = item[:5] + (n_rows,)
            if item[4] < 0:
                if not popped and not closed:
                    converged = True  # the worst remaining domain is fully decided (and realisable)
                closed.append(item)
                if converged:
                    break
                continue
            popped.append(item)
        for item in closed:
            heapq.heappush(heap, item)
        if converged:
            popped_back = popped
            for item in popped_back:
                heapq.heappush(heap, item)
            status = "ok"
            break
        if not heap and not popped:
            break  # every domain pruned (cannot happen for a sound pattern check)
        if not popped:
            continue
        # children: +1 (active slope) and -1 (inactive slope) on the chosen neuron
        dec = torch.stack([it[3] for it in popped] * 2)
        idx = torch.tensor([it[4] for it in popped] * 2)
        sign = torch.tensor([1] * len(popped) + [-1] * len(popped), dtype=torch.int8)
        dec[torch.arange(dec.shape[0]), idx] = sign
        cls_pos = [it[2] for it in popped] * 2
        parent = torch.tensor([-it[0] for it in popped] * 2, dtype=torch.float64)
        n_rows_kept = [it[5] for it in popped] * 2
        if lp is not None:  # cheap checks now (samples, single rows); the LP waits until a domain is popped
            keep = []
            for b in range(dec.shape[0]):
                n_rows = lp.checkable(dec[b])[1]
                if n_rows > n_rows_kept[b]:
                    ok = lp.feasible(dec[b], use_lp=lp_eager)
                    if ok is False:
                        pruned += 1
                        continue
                    if ok:
                        n_rows_kept[b] = n_rows
                keep.append(b)
            if len(keep) < dec.shape[0]:
                if not keep:
                    steps += 1
                    last_step = time.perf_counter() - now
                    history.append((time.perf_counter() - ctx.start, current_bound() if heap else history[-1][1]))
                    continue
                keep_t = torch.tensor(keep)
                dec, idx, parent = dec[keep_t], idx[keep_t], parent[keep_t]
                cls_pos = [cls_pos[b] for b in keep]
                n_rows_kept = [n_rows_kept[b] for b in keep]
        decisions = {k: dec[:, offsets[i] : offsets[i + 1]] for i, k in enumerate(split_acts)}
        cls = [classes[c] for c in cls_pos]
        g_known = v_known = None
        if refresh != "all":
            sel = torch.tensor(cls_pos)
            g_known = {k: (root.g[k][0][sel], root.g[k][1][sel]) for k in G.acts}
            v_known = (root.v[0][sel], root.v[1][sel])
        res = G.bound(cls, norm, mode="crown", decisions=decisions, g_known=g_known, v_known=v_known, refresh=refresh)
        vals = torch.minimum(res.value, parent)
        und = {k: G._und[k] for k in G.acts}
        sc = _scores(G, res, und, split_acts)
        for b in range(dec.shape[0]):
            nxt = int(sc[b].argmax()) if bool((sc[b] > 0).any()) else -1
            heapq.heappush(heap, (-float(vals[b]), next(counter), cls_pos[b], dec[b].clone(), nxt, n_rows_kept[b]))
        steps += 1
        last_step = time.perf_counter() - now
        history.append((time.perf_counter() - ctx.start, current_bound()))
    value = min(current_bound(), history[0][1]) if heap else history[-1][1]
    if history[-1][1] != value:
        history.append((time.perf_counter() - ctx.start, value))
    per = {}
    for negb, _, ci, *_ in heap:
        per[classes[ci]] = max(per.get(classes[ci], 0.0), -negb)
    if lp is not None:
        details["lp_calls"] = lp.lp_calls
    details.update(steps=steps, domains=len(heap), converged=converged, per_output=per, pruned=pruned,
                   time_bab_s=time.perf_counter() - t_start)
    if converged:
        if lp is not None:
            details["note"] = ("the worst domain is a fully decided activation pattern that an LP found realisable "
                               "in the box: the value is the gradient norm of that pattern")
        else:
            details["note"] = ("the worst domain is fully decided: the value is the maximum over the activation "
                               "patterns consistent with the forward bounds")
    return MethodResult(value, status=status, details=details)
