"""Exact local Lipschitz constants of ReLU-like networks (ReLU, LeakyReLU, Abs: max(z, 0) + s min(z, 0)) on
boxes (LipMIP, Jordan & Dimakis 2020).

* ``mip``: a mixed-integer program per output (l_inf) or per input (l_1) on HiGHS, one binary per unstable
  neuron shared by the forward and the gradient encodings; anytime sandwich (dual bound, re-evaluated
  incumbent) on a time limit.
* ``enumerate``: depth-first search over the activation patterns realisable in the box (LP-checked), the
  test oracle, for at most ~20 unstable neurons; every norm (l2: the largest spectral norm of a realisable
  pattern's Jacobian), and globally (every activation region of R^n) on small networks.

Maths: ../shared/reference/exact-and-lower.md.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ...errors import LipboundError, MethodFailed, Unsupported
from ...highs import Status
from ...intervals import affine_enclosure
from ...network import tensor_view
from ...norms import INF, operator_norm
from ...registry import AFFINE_OPS, BOOL_OR_AUTO, RELU_LIKE, MethodResult, Option, register_method
from . import mip_core as core
from .enumerate import enumerate_patterns, global_scale, max_slack_point, pattern_constraints

DENSE_OPS = AFFINE_OPS | {"Activation"}
REL_MARGIN = 1e-6  # relative margin added to a solver's dual bound (feasibility / optimality tolerances)
ABS_MARGIN = 1e-9  # ... plus this fraction of the trivial (interval) bound of the objective
EXACT_RTOL = 1e-5  # 'exact' when (upper - lower) <= EXACT_RTOL * lower (+ 1e-12)


# --------------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------------


def _box(net, ctx):
    if ctx.region is None:
        raise Unsupported("give a box region (for the whole input domain, the domain as a box)")
    lo = np.asarray(ctx.region.lower, dtype=np.float64).ravel()
    hi = np.asarray(ctx.region.upper, dtype=np.float64).ravel()
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise Unsupported("the box must be bounded")
    return lo, hi


def preactivation_bounds(net, layers, region, lo, hi, mode="auto", lp_budget_s=None, progress=None,
                         mip_per_solve=0.5, ctx=None, crown_deadline=None):
    """Pre-activation bounds for big-M constants. mode: 'interval', 'crown' (CROWN from lipbound.crown,
    intersected with intervals; interval alone if that module is missing), 'lp' (crown/interval then LP
    tightening, every LP bound certified by its duals), 'mip' ('lp' then MIP tightening of each unstable
    neuron with a short time limit per solve), 'auto' ('lp' for small nets, else 'crown').
    ``crown_deadline`` (a `time.perf_counter` time): CROWN stops there (interval bounds for the rest).
    Returns (bounds, info dict)."""
    t0 = time.perf_counter()
    bounds = core.interval_preact_bounds(layers, lo, hi)
    info = {"bounds": mode, "unstable_interval": int(sum(m.sum() for m in core.unstable_masks(bounds)))}
    if mode not in ("interval", "crown", "lp", "mip", "auto"):
        raise LipboundError(f"option bounds={mode!r}: use interval, crown, lp, mip or auto")
    used = ["interval"]
    if mode in ("crown", "lp", "mip", "auto"):
        cb = None
        try:
            cb = core.crown_preact_bounds(net, region, ctx, crown_deadline)  # ctx: the blackboard's CROWN bounds
        except Exception as e:  # a failure of the other module must not break this one
            info["crown_error"] = f"{type(e).__name__}: {e}"[:200]
        if cb is not None:
            bounds = core.repropagate(layers, lo, hi, core.intersect_bounds(bounds, cb))
            used.append("crown")
            info["unstable_crown"] = int(sum(m.sum() for m in core.unstable_masks(bounds)))
    if mode == "auto":
        n_hidden = sum(L.W.shape[0] for L in layers[:-1])
        mode = "lp" if n_hidden <= 2000 else "crown"
    if mode in ("lp", "mip"):
        deadline = None if lp_budget_s is None else time.perf_counter() + lp_budget_s
        bounds, done = core.lp_tighten(layers, lo, hi, bounds, deadline=deadline, progress=progress)
        used.append("lp" if done else "lp(partial)")
        info["unstable_lp"] = int(sum(m.sum() for m in core.unstable_masks(bounds)))
        if mode == "mip" and done:
            bounds, done = core.mip_tighten(layers, lo, hi, bounds, deadline=deadline, per_solve=mip_per_solve,
                                            progress=progress)
            used.append("mip" if done else "mip(partial)")
    info["bounds_used"] = "+".join(used)
    info["unstable"] = int(sum(m.sum() for m in core.unstable_masks(bounds)))
    info["unstable_per_layer"] = [int(m.sum()) for m in core.unstable_masks(bounds)]
    info["bounds_time_s"] = time.perf_counter() - t0
    return bounds, info


def _smooth_value(net, x, norm, output, rel_tol=1e-9):
    """‖J(x)‖ (float64 autograd) when no pre-activation is within tolerance of 0, else None."""
    xt = torch.as_tensor(np.asarray(x, dtype=np.float64).reshape((1,) + net.input_shape))
    pre = net.preactivations(xt)
    for z in pre:
        z = z.detach().numpy().ravel()
        if z.size and np.min(np.abs(z)) <= rel_tol * (1.0 + np.max(np.abs(z))):
            return None
    J = net.jacobian(xt)[0]
    return float(operator_norm(J, norm, output))


def certified_gradient_lower(net, layers, bounds, x, norm, output, lo, hi, rng, pattern=None):
    """Certified lower bound ‖J(x')‖ with its witness x' near x: x itself when f is differentiable there,
    else an interior point of the given activation pattern's region (max-slack LP), else a random small
    perturbation inside the box. Returns (value, x') or (None, None)."""
    x = np.clip(np.asarray(x, dtype=np.float64).ravel(), lo, hi)
    v = _smooth_value(net, x, norm, output)
    if v is not None:
        return v, x
    if pattern is not None:
        (G, H), _ = pattern_constraints(layers, pattern, bounds)
        t, xc = max_slack_point(G, H, lo, hi)
        if xc is not None and t > 1e-12 * (1.0 + float(np.max(hi - lo))):
            # move from x towards the interior point: stays in the pattern's closure, off the kinks
            for theta in (1e-3, 1e-1, 1.0):
                xx = np.clip(x + theta * (xc - x), lo, hi)
                v = _smooth_value(net, xx, norm, output)
                if v is not None:
                    return v, xx
    width = hi - lo
    for scale in (1e-9, 1e-7, 1e-5, 1e-3):
        for _ in range(5):
            xx = np.clip(x + scale * width * rng.uniform(-1, 1, size=x.shape), lo, hi)
            v = _smooth_value(net, xx, norm, output)
            if v is not None:
                return v, xx
    return None, None


def _directions(net, norm, output):
    """(mode, vector, selected result coordinates) per sub-problem; the constant is the max over them."""
    m, n = net.n_outputs, net.n_inputs
    if norm == INF:
        outs = [output] if output is not None else list(range(m))
        eye, cols = np.eye(m), np.arange(n)
        return [("backward", eye[j], cols, f"output {j}") for j in outs]
    sel = np.array([output]) if output is not None else np.arange(m)
    eye = np.eye(n)  # one identity: its rows (a fresh n x n per input cost 7.8 s for n = 784)
    return [("forward", eye[i], sel, f"input {i}") for i in range(n)]


def _direction_values(J, dirs) -> list:
    """Each sub-problem's value (B,) at a batch of Jacobians J (B, m, n): |c^T J|_1 for an output
    direction, |(J d)_sel|_1 for an input one; directions of one mode batched into matrix products, in
    chunks of bounded size (3072 einsums took 4.3 s on cifar_base_kw)."""
    out = [None] * len(dirs)
    B, m, n = J.shape
    for mode in ("backward", "forward"):
        idx = [i for i, d in enumerate(dirs) if d[0] == mode]
        step = max(1, (1 << 22) // max(1, B * (n if mode == "backward" else m)))
        for c0 in range(0, len(idx), step):
            part = idx[c0 : c0 + step]
            vecs = np.stack([dirs[i][1] for i in part])
            if mode == "backward":
                vals = np.abs(np.tensordot(vecs, J, axes=([1], [1]))).sum(2)  # (d, B)
            else:
                cols = np.tensordot(vecs, J, axes=([1], [2]))  # (d, B, m)
                vals = np.stack([np.abs(cols[k][:, dirs[i][2]]).sum(1) for k, i in enumerate(part)])
            for k, i in enumerate(part):
                out[i] = vals[k]
    return out


def _sample(net, lo, hi, n, rng):
    X = rng.uniform(lo, hi, size=(n, lo.size))
    X = np.vstack([(lo + hi) / 2, X])
    J = net.jacobian(torch.as_tensor(X)).numpy()
    return X, J


#: with a time limit T, the sampled incumbent stops drawing chunks of points at SAMPLE_SHARE x T and the
#: CROWN pre-activation bounds at CROWN_SHARE x T (then interval bounds: sound, looser big-M constants)
SAMPLE_SHARE = 0.1
CROWN_SHARE = 0.3
SAMPLE_CHUNK = 64


#: the MIP build model of `_MipRun.build_estimate` (seconds per weight non-zero and per neuron)
BUILD_NNZ_S = 1.5e-6
BUILD_NEURON_S = 7e-4


def _batched_affine_interval(W, l, u):
    """`core.affine_interval` (no bias) for a batch of boxes [l, u] (B, n) at once: the same enclosure."""
    Wt = tensor_view(W)
    lt, ut = torch.as_tensor(np.asarray(l, dtype=np.float64)), torch.as_tensor(np.asarray(u, dtype=np.float64))
    mid, rad = (ut + lt) / 2, (ut - lt) / 2
    absW = Wt.abs()
    zl, zh = affine_enclosure(mid @ Wt.T, lambda v: v @ absW.T, 0.0, int(W.shape[1]), mid, rad)
    return zl.numpy().copy(), zh.numpy().copy()


def _sample_within(net, lo, hi, n, rng, ctx, share: float):
    """`_sample` of ``n`` points (plus the centre) in chunks, stopping after the chunk that reaches ``share``
    of the time limit (at least the centre and one chunk)."""
    if ctx.time_limit is None or n <= SAMPLE_CHUNK:
        return _sample(net, lo, hi, n, rng)
    stop = ctx.start + share * ctx.time_limit
    X, J = _sample(net, lo, hi, SAMPLE_CHUNK, rng)
    Xs, Js, done = [X], [J], SAMPLE_CHUNK
    while done < n and time.perf_counter() < stop:
        k = min(SAMPLE_CHUNK, n - done)
        Xc = rng.uniform(lo, hi, size=(k, lo.size))
        Xs.append(Xc)
        Js.append(net.jacobian(torch.as_tensor(Xc)).numpy())
        done += k
    return np.vstack(Xs), np.concatenate(Js)


# --------------------------------------------------------------------------------------------------
# HiGHS solve of one sub-problem
# --------------------------------------------------------------------------------------------------


def _solve_highs(mm, time_limit, cutoff, warm, threads, verbose, gap):
    """One LipMIP program on HiGHS (`lipbound.highs`): status, the dual bound (an upper bound up to the
    solver's tolerances), the incumbent (objective, columns) if any, time and nodes."""
    opts = {"mip_rel_gap": gap, "mip_abs_gap": 1e-10, "random_seed": 0,
            "mip_heuristic_run_rins": False, "mip_heuristic_run_rens": False,  # incumbents come from sampling
            "threads": threads, "verbose": bool(verbose)}
    if time_limit is not None and math.isfinite(time_limit):
        opts["time_limit"] = max(float(time_limit), 0.05)
    prob, (A, lb, ub, rl, ru) = mm.model.to_highs(mm.cost, maximize=True, options=opts)
    if cutoff is not None:
        cols, coef = mm.obj_rows
        prob.add_row(float(cutoff), math.inf, cols, coef)
    if warm is not None:
        prob.set_start(warm)
    r = prob.solve()
    primal = (r.objective, r.primal) if r.primal is not None and r.primal_feasible else None
    if prob.is_mip:
        dual = r.dual_bound
    elif r.status == Status.OPTIMAL and r.row_dual is not None:
        # no binary at all (every neuron stable, every result coordinate of one sign): an LP, bounded by weak
        # duality from its row duals (the cut-off row's multiplier dropped: still valid)
        dual = core.certified_lp_max(mm.cost, A, lb, ub, rl, ru, r.row_dual[:A.shape[0]])
    else:
        dual = math.inf
    return {"status": r.status.value, "dual": dual, "primal": primal, "time": r.time, "nodes": r.nodes}


# --------------------------------------------------------------------------------------------------
# mip
# --------------------------------------------------------------------------------------------------


@register_method(
    "mip", kind="exact", norms=(1, INF), regions=("box",), ops=DENSE_OPS, activations=RELU_LIKE,
    description="exact local Lipschitz constant on a box by mixed-integer programming (LipMIP, HiGHS); "
                "anytime upper/lower sandwich on a time limit",
    options={"bounds": Option(str, "auto", "big-M bounds: auto (CROWN if available, then LP tightening on small "
                              "nets), interval, crown, lp, or mip (lp then per-neuron MIPs of mip_time s each)",
                              choices=("auto", "interval", "crown", "lp", "mip")),
             "mip_time": Option(float, 0.5, "time limit (s) of each bound-tightening MIP with bounds=mip", min=0,
                                min_exclusive=True),
             "threads": Option(int, None, "HiGHS threads (auto: HiGHS's default)", min=1),
             "samples": Option(int, 1000, "random points (besides the box centre) for the initial incumbent", min=0),
             "gap": Option(float, 1e-7, "relative MIP gap asked of the solver", min=0),
             "chain_lp": Option(BOOL_OR_AUTO, "auto", "LP-tighten the gradient-chain bounds before each MIP (auto: "
                                "when > 12 unstable neurons)"),
             "lp_time": Option(float, None, "time budget (s) of LP bound tightening, also that of bounds=mip (auto: "
                               "25% of the time limit, none without one)", min=0),
             "verbose": Option(bool, False, "HiGHS output")},
    family="exact")
def mip(net, ctx):
    """Exact Lipschitz constant (l_inf: max over outputs of ‖∇f_j‖_1; l_1: max over inputs of the column
    l1 norm, ‖∇f_j‖_inf with ``output=j``) on a box, by LipMIP mixed-integer programs on HiGHS.

    Kind ``exact`` when every sub-problem is solved and the re-evaluated incumbent (float64 autograd at
    its witness point) meets the dual bound (+ margin 1e-6 relative, 1e-9 of the interval bound) within
    a relative 1e-5; otherwise ``upper`` = the solver's dual bound with margin and ``lower`` = the
    re-evaluated incumbent with its witness. Cost: exponential in the number of unstable neurons
    (one MIP per output for l_inf, per input for l_1)."""
    run = _MipRun(net, ctx)
    run.sample_incumbent()
    if len(run.layers) == 1:  # affine network: the Jacobian is constant
        val = float(operator_norm(run.layers[0].W, ctx.norm, ctx.output))
        return MethodResult(val, kind="exact", witness=(run.lo + run.hi) / 2, details=run.details)
    run.big_m_bounds()
    # one MIP per sub-problem, best sampled first; later ones only need to beat the best lower bound
    order = np.argsort([-np.max(v) for v in run.per_dir])
    for rank, di in enumerate(order):
        if run.no_time_to_build():
            run.skip_directions(order[rank:])
            break
        run.solve_direction(di, len(order) - rank)
    return run.result()


@dataclass
class _Sandwich:
    """The anytime state of `mip`: the best certified lower bound with its witness, the largest upper bound
    of the sub-problems so far, whether every sub-problem was solved, and one record per sub-problem."""

    lower: float = -math.inf
    witness: np.ndarray | None = None
    upper: float = -math.inf
    complete: bool = True
    entries: list = field(default_factory=list)

    def offer(self, value, x) -> None:
        """A certified lower bound (a re-evaluated gradient norm) with its witness."""
        if value is not None and value > self.lower:
            self.lower, self.witness = value, x

    def add_upper(self, value: float, entry: dict) -> None:
        self.upper = max(self.upper, value)
        self.entries.append(entry)


class _MipRun:
    """The steps of `mip` on one network and box: sampled incumbent, big-M bounds, one MIP per
    sub-problem, the final sandwich."""

    def __init__(self, net, ctx):
        self.net, self.ctx = net, ctx
        self.layers = core.relu_chain(net)
        self.lo, self.hi = _box(net, ctx)
        self.norm, self.output = ctx.norm, ctx.output
        self.rng = ctx.rng()
        self.t_start = time.perf_counter()
        self.dirs = _directions(net, self.norm, self.output)
        self.bar = ctx.progress(total=len(self.dirs) + 1, desc="mip")
        self.sw = _Sandwich()
        self.bounds = None
        self.details = {"n_layers": len(self.layers), "n_subproblems": len(self.dirs), "solver": "highs"}
        self.build_s = None  # the slowest MIP build so far (s)
        self._build_model = None

    def build_estimate(self) -> float:
        """Seconds to build one sub-problem's MIP: the slowest build so far, else a model from the sizes
        (measured 2026-11-29, one thread: mnist-net_256x2 0.35 s, cifar_base_kw as a dense chain 4.9 s,
        ACAS Xu 0.03 s; on the slow side)."""
        if self.build_s is not None:
            return self.build_s
        if self._build_model is None:
            nnz = sum(int(np.count_nonzero(L.W)) for L in self.layers)
            neurons = sum(L.W.shape[0] for L in self.layers)
            self._build_model = BUILD_NNZ_S * nnz + BUILD_NEURON_S * neurons
        return self._build_model

    def no_time_to_build(self) -> bool:
        """True when a sub-problem's MIP cannot even be built in the time left."""
        tl = self.ctx.time_left()
        return math.isfinite(tl) and 1.5 * self.build_estimate() > tl

    def skip_directions(self, dis) -> None:
        """The sub-problems ``dis`` bounded without their MIPs: each by its interval bound (the `trivial_bound`
        of `core.build_mip`: sum of max |r_j| over the switched-chain intervals), all in one batched chain of
        interval mat-vecs. Input columns (l1) with fewer outputs than columns take the entries from the
        outputs' gradient rows instead (m rows instead of n columns through the chain: Convnet_avgpool's
        784 columns through a 23328-neuron layer took 7 s). Certified."""
        dirs = [self.dirs[di] for di in dis]
        sel_out = np.asarray(dirs[0][2])
        if dirs[0][0] == "forward" and len(sel_out) < len(dirs):
            lo, hi = self._chain_intervals("backward", np.eye(self.net.n_outputs)[sel_out])  # (rows, n)
            entry = np.maximum(np.abs(lo), np.abs(hi))
            bounds = [float(entry[:, int(np.argmax(d[1]))].sum()) for d in dirs]  # d[1] = e_i: column i
        else:
            lo, hi = self._chain_intervals(dirs[0][0], np.stack([d[1] for d in dirs]))
            bounds = [float(np.maximum(np.abs(lo[b, np.asarray(d[2])]), np.abs(hi[b, np.asarray(d[2])])).sum())
                      for b, d in enumerate(dirs)]
        est = self.build_estimate()
        for ub, d in zip(bounds, dirs):
            self.sw.add_upper(ub, {"direction": d[3], "status": "skipped (no time to build its MIP)", "upper": ub,
                                   "build_estimate_s": est})
            self.bar.update(1)
        self.sw.complete = False

    def _chain_intervals(self, mode: str, vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Interval bounds (B, size) of the switched chain's result for the start directions ``vecs`` (B, .)
        of one mode, the derivative of every hidden neuron in its set over the box."""
        dsets = core.derivative_sets(self.bounds, [L.slope for L in self.layers[:-1]])
        _, order, mats = core.stage_plan(self.layers, mode, vecs[0])  # the same for every direction
        vl = vh = core.stage_starts(self.layers, mode, vecs)
        for t, i in enumerate(order):
            ul, uh = core._switch_interval(vl, vh, *dsets[i])
            vl, vh = _batched_affine_interval(mats[t], ul, uh)
        return vl, vh

    def sample_incumbent(self) -> None:
        """Step 1: the Jacobians at random points of the box (sub-problem values and warm starts); the best
        five re-evaluated as certified lower bounds with witnesses."""
        net, ctx, rng, lo, hi = self.net, self.ctx, self.rng, self.lo, self.hi
        X, J = _sample_within(net, lo, hi, ctx.option("samples"), rng, ctx, SAMPLE_SHARE)
        seed = ctx.shared_value("witness")  # the best lower bound's input of an enclosing run (certify)
        if seed is not None and np.size(seed) == lo.size:
            xs = np.clip(np.asarray(seed, dtype=np.float64).ravel(), lo, hi)[None]
            X, J = np.vstack([xs, X]), np.concatenate([net.jacobian(torch.as_tensor(xs)).numpy(), J])
            self.details["seeded_witness"] = True  # re-evaluated below like any sample: certified here
        self.X = X
        self.per_dir = _direction_values(J, self.dirs)
        allv = operator_norm(torch.as_tensor(J), self.norm, self.output).numpy()
        for i in np.argsort(-allv)[:5]:
            v, xw = certified_gradient_lower(net, self.layers, None, X[i], self.norm, self.output, lo, hi, rng)
            self.sw.offer(v, xw)
        self.details["sampled_lower"] = self.sw.lower if self.sw.witness is not None else None

    def big_m_bounds(self) -> None:
        """Step 2: pre-activation bounds (the big-M constants) and the solver settings."""
        ctx = self.ctx
        tl = ctx.time_left()
        lp_time = ctx.option("lp_time")  # also the budget of bounds=mip
        if lp_time is None and math.isfinite(tl):
            lp_time = 0.25 * tl
        crown_dl = None if ctx.time_limit is None else ctx.start + CROWN_SHARE * ctx.time_limit
        self.bounds, binfo = preactivation_bounds(self.net, self.layers, ctx.region, self.lo, self.hi,
                                                  ctx.option("bounds"), lp_budget_s=lp_time,
                                                  mip_per_solve=ctx.option("mip_time"), ctx=ctx,
                                                  crown_deadline=crown_dl)
        self.details.update(binfo)
        self.bar.update(1)
        self.threads = ctx.option("threads")
        self.gap = ctx.option("gap")
        chain_lp = ctx.option("chain_lp")  # True, False or "auto"
        if chain_lp == "auto":
            chain_lp = binfo["unstable"] > 12  # below that the MIPs are easy and the LPs would dominate
        self.chain_lp = chain_lp

    def _program(self, direction, left: int):
        """The MIP of one sub-problem (after LP tightening of its gradient-chain bounds when asked) and the
        facts of that tightening."""
        mode, vec, sel, _ = direction
        chain_ivs, n_chain_lps, t_chain = None, 0, 0.0
        tl = self.ctx.time_left()
        if self.chain_lp and (not math.isfinite(tl) or 2 * self.build_estimate() <= 0.3 * tl / left):
            t0c = time.perf_counter()
            dl = None if not math.isfinite(tl) else time.perf_counter() + 0.3 * tl / left
            chain_ivs, n_chain_lps, _ = core.tighten_chain_bounds(self.layers, self.lo, self.hi, self.bounds, mode,
                                                                  vec, sel, deadline=dl)
            t_chain = time.perf_counter() - t0c
        t0b = time.perf_counter()
        mm = core.build_mip(self.layers, self.lo, self.hi, self.bounds, mode, vec, sel, chain_ivs=chain_ivs)
        self.build_s = max(self.build_s or 0.0, time.perf_counter() - t0b)
        return mm, {"chain_lps": n_chain_lps, "chain_lp_time_s": t_chain}

    def solve_direction(self, di: int, left: int) -> None:
        """Step 3, one sub-problem (``left``: sub-problems not done yet, this one included): skipped when
        out of time (its interval bound), bounded without a MIP when even its interval bound cannot beat the
        incumbent, else its MIP with a cut-off at the incumbent or a warm start at its best sample."""
        sw, label = self.sw, self.dirs[di][3]
        mm, chain = self._program(self.dirs[di], left)
        scale_margin = ABS_MARGIN * mm.trivial_bound + 1e-12
        remaining = self.ctx.time_left()
        share = remaining / left if math.isfinite(remaining) else None
        if share is not None and share <= 0.01:
            # no time left: the interval bound of this sub-problem is still a certified upper bound
            sw.add_upper(mm.trivial_bound, {"direction": label, "status": "skipped (no time)",
                                            "upper": mm.trivial_bound})
            sw.complete = False
            self.bar.update(1)
            return
        if sw.witness is not None and mm.trivial_bound <= sw.lower:
            ub_m = sw.lower + REL_MARGIN * abs(sw.lower) + scale_margin
            sw.add_upper(ub_m, {"direction": label, "status": "bounded by LP", "upper": ub_m, **chain,
                                "trivial_bound": mm.trivial_bound})
            self.bar.update(1)
            return
        own = self.per_dir[di]
        i_own = int(np.argmax(own))
        use_cutoff = sw.witness is not None and sw.lower > own[i_own] * (1 + 1e-9)
        cutoff = sw.lower * (1 + 1e-7) if use_cutoff else None
        warm = None if use_cutoff else core.full_solution(mm, self.layers, self.X[i_own], self.bounds)
        r = _solve_highs(mm, share, cutoff, warm, self.threads, self.ctx.option("verbose"), self.gap)
        entry = {"direction": label, "status": r["status"], "time_s": r["time"], "nodes": r["nodes"], **chain,
                 "binaries": mm.n_binaries, "abs_binaries": mm.n_abs_binaries,
                 "columns": mm.model.n_cols, "rows": mm.model.n_rows}
        ub = self._dual_upper(r, mm, cutoff, label)
        ub_m = ub + REL_MARGIN * abs(ub) + scale_margin
        entry["dual_bound"] = ub
        entry["upper"] = ub_m
        sw.upper = max(sw.upper, ub_m)
        if r["primal"] is not None:
            obj, colv = r["primal"]
            entry["incumbent"] = obj
            pattern = _pattern_from_solution(self.layers, self.bounds, mm, colv)
            v, xw = certified_gradient_lower(self.net, self.layers, self.bounds, colv[mm.idx["x"]], self.norm,
                                             self.output, self.lo, self.hi, self.rng, pattern)
            entry["incumbent_reevaluated"] = v
            sw.offer(v, xw)
        sw.entries.append(entry)
        self.bar.update(1)
        self.bar.set_postfix_str(f"lower {sw.lower:.6g} upper≥{sw.upper:.6g}")

    def _dual_upper(self, r: dict, mm, cutoff, label: str) -> float:
        """The sub-problem's upper bound before margins: the solver's dual bound (never above the interval
        bound; with a cut-off, never below it: a cut-off MIP only bounds what exceeds the cut-off)."""
        if r["status"] == "infeasible":
            if cutoff is None:
                raise MethodFailed(f"HiGHS found the MIP of {label} infeasible (it always has a solution)")
            return cutoff
        if r["status"] in ("optimal", "time_limit", "interrupted"):
            ub = r["dual"] if math.isfinite(r["dual"]) else mm.trivial_bound
            ub = min(ub, mm.trivial_bound) if math.isfinite(ub) else mm.trivial_bound
            if cutoff is not None:
                ub = max(ub, cutoff)
            if r["status"] != "optimal":
                self.sw.complete = False
            return ub
        self.sw.complete = False
        return mm.trivial_bound

    def result(self) -> MethodResult:
        """Step 4: exact when every sub-problem was solved and the sandwich closed, else the upper bound
        with the certified lower bound beside it."""
        self.bar.close()
        sw, details = self.sw, self.details
        details["subproblems"] = sw.entries
        details["n_binaries"] = int(max((s.get("binaries", 0) for s in sw.entries), default=0))
        details["upper"] = sw.upper
        lower = sw.lower if sw.witness is not None else None
        details["lower"] = lower
        details["total_time_s"] = time.perf_counter() - self.t_start
        details["solve_time_s"] = float(sum(s.get("time_s", 0.0) for s in sw.entries))
        if lower is not None:
            details["gap"] = sw.upper - lower
            details["rel_gap"] = (sw.upper - lower) / max(abs(lower), 1e-300)
        closed = lower is not None and sw.upper - lower <= EXACT_RTOL * abs(lower) + 1e-12
        details["exact_tolerance"] = f"upper - lower <= {EXACT_RTOL:g} * lower + 1e-12"
        if sw.complete and closed:
            return MethodResult(lower, kind="exact", witness=sw.witness, lower=lower, lower_witness=sw.witness,
                                details=details)
        status = "ok" if sw.complete else "time_limit"
        reason = None
        if sw.complete and not closed:
            reason = ("the MIP optimum is not attained by a differentiable point (degenerate network or kink): "
                      "reporting the dual bound as an upper bound")
        return MethodResult(sw.upper, kind="upper", status=status, lower=lower, lower_witness=sw.witness,
                            details=details, reason=reason)


def _pattern_from_solution(layers, bounds, mm, colv):
    pattern = []
    for k, L in enumerate(layers[:-1]):
        l, u = bounds[k]
        d = np.where(l >= 0, 1.0, L.slope)
        ui = mm.idx["unst"][k]
        if ui.size:
            a = colv[mm.idx["a"][k]] > 0.5
            d[ui] = np.where(a, 1.0, L.slope)
        pattern.append(d)
    return pattern


# --------------------------------------------------------------------------------------------------
# enumerate
# --------------------------------------------------------------------------------------------------


def region_count_log2(layers) -> float:
    """log2 of an upper bound on the number of activation regions of a ReLU-like chain in R^n (Serra,
    Tjandraatmadja & Ramalingam 2018): prod over hidden layers l of sum_{j <= d_l} C(n_l, j), d_l = min(n_0,
    n_1, ..., n_{l-1}) (the rank of the map into layer l on any region of the layers below)."""
    d, total = layers[0].W.shape[1], 0.0
    for L in layers[:-1]:
        n_l = L.W.shape[0]
        if L.slope != 1.0:
            total += math.log2(sum(math.comb(n_l, j) for j in range(min(d, n_l) + 1)))
        d = min(d, n_l)
    return total


def _global_incumbent(net, layers, norm, output, n, rng):
    """The best smooth sampled gradient norm (value, point) over normal samples at several scales around the
    origin (the arrangement's scale, `global_scale`), or None."""
    n0 = layers[0].W.shape[1]
    scale = global_scale(layers)
    X = np.vstack([np.zeros((1, n0))] + [s * scale * rng.standard_normal((max(n, 4) // 4, n0))
                                         for s in (0.1, 1.0, 10.0, 100.0)])
    J = net.jacobian(torch.as_tensor(X.reshape((-1,) + net.input_shape))).numpy().reshape(X.shape[0], -1, n0)
    vals = operator_norm(J, norm, output)
    for i in np.argsort(-vals)[:5]:
        v = _smooth_value(net, X[i], norm, output)
        if v is not None:
            return v, X[i]
    return None


def _enumerate_global(net, ctx, layers):
    """`enumerate` without a region: every activation region of R^n (max-slack LPs with x free and the slack
    capped), the largest Jacobian norm. Exact in general position (regions thinner than 1e-9 of the
    arrangement's scale are not seen, as in the box case)."""
    norm, output = ctx.norm, ctx.output
    n_hidden = int(sum(L.W.shape[0] for L in layers[:-1] if L.slope != 1.0))
    log2_regions = region_count_log2(layers)
    limit = ctx.option("max_unstable")
    if log2_regions > limit:
        raise Unsupported(f"up to 2^{log2_regions:.1f} activation regions in R^n ({n_hidden} neurons; limit "
                          f"2^max_unstable = 2^{limit}): use a box region or an upper-bound method")
    bounds = [(np.full(L.W.shape[0], -math.inf), np.full(L.W.shape[0], math.inf)) for L in layers[:-1]]
    deadline = None if not math.isfinite(ctx.time_left()) else time.perf_counter() + ctx.time_left()
    prune = ctx.option("prune")
    incumbent = _global_incumbent(net, layers, norm, output, ctx.option("samples"), ctx.rng()) if prune else None
    bar = ctx.progress(desc="enumerate")
    st = enumerate_patterns(layers, None, None, bounds, norm, output, deadline=deadline,
                            progress=lambda c: bar.update(1), prune=prune, incumbent=incumbent)
    bar.close()
    details = {"region": "global", "neurons": n_hidden, "log2_regions_bound": log2_regions,
               "patterns": st["count"], "lps": st["lps"], "pruned": st["pruned"], "prune": prune,
               "slack_scale": global_scale(layers), "sampled_incumbent": None if incumbent is None else incumbent[0]}
    return _enumerate_result(net, st, norm, output, details)


def _enumerate_result(net, st, norm, output, details) -> MethodResult:
    """exact (the search finished) with the witness re-evaluated by autograd as ``lower``; on a time limit
    the best pattern's re-evaluated value as a certified lower bound."""
    if st["x"] is None:
        if not st["complete"]:
            return MethodResult(None, kind="lower", status="time_limit", details=details)
        raise MethodFailed("no activation pattern with an interior point in the region was found")
    x = st["x"]
    check = _smooth_value(net, x, norm, output)
    details["witness_value_autograd"] = check
    if not st["complete"]:
        if check is None:
            return MethodResult(None, kind="lower", status="time_limit", details=details)
        return MethodResult(check, kind="lower", status="time_limit", witness=x, details=details)
    return MethodResult(st["best"], kind="exact", witness=x, lower=check, lower_witness=x if check is not None else None,
                        details=details)


def _outside_incumbent(ctx, incumbent):
    """The better of the sampled incumbent and an enclosing run's certified lower bound with its witness
    (`lipbound.certify`'s blackboard): a higher start prunes more of the tree, and the answer is still exact
    (a prefix is dropped only when its bound is at most a certified lower bound)."""
    outside, w = ctx.shared_value("best_lower", 0.0), ctx.shared_value("witness")
    if w is None or not outside > (incumbent[0] if incumbent is not None else 0.0):
        return incumbent
    return float(outside), np.asarray(w, dtype=np.float64).reshape(-1)


@register_method(
    "enumerate", kind="exact", norms=(1, 2, INF), regions=("global", "box"), ops=DENSE_OPS, activations=RELU_LIKE,
    description="exact Lipschitz constant (l1, l2, linf) on a box, or global on small networks, by enumerating the "
                "activation patterns realisable in it (LP-checked tree search); at most ~20 unstable neurons",
    options={"max_unstable": Option(int, 20, "refuse networks with more unstable neurons than this (global: more than "
                                    "2^max_unstable activation regions by the region-count bound)", min=0),
             "prune": Option(bool, True, "prune pattern prefixes whose interval Jacobian bound cannot beat the best "
                             "value (branch and bound, still exact; false = plain enumeration)"),
             "samples": Option(int, 500, "random points (besides the box centre) for the initial incumbent when "
                               "pruning", min=0)},
    family="exact")
def enumerate_method(net, ctx):
    """Exact Lipschitz constant (norms l_1, l_2, l_inf, optional ``output``) on a box: the max over the
    activation patterns whose region has an interior point in the box (max-slack LP, depth-first with
    pruning of infeasible prefixes) of the pattern Jacobian's norm (l_2: its largest singular value); a
    witness point is returned. Exact in general position. Cost: up to 2^(#unstable) patterns times one small
    LP, so the method refuses more than ``max_unstable`` (default 20) unstable neurons (under interval bounds;
    with ``prune``, under the CROWN/LP bounds of `mip`). On a time limit it
    returns the best pattern seen as a certified ``lower`` bound. With ``prune`` (default) it is a branch and
    bound: prefixes whose interval Jacobian bound is at most the best value found are skipped (still exact).

    Without a region: the global constant, the max over every activation region of R^n (x free in the LPs,
    the slack capped), refused when the region-count bound exceeds 2^max_unstable."""
    layers = core.relu_chain(net)
    norm, output = ctx.norm, ctx.output
    if ctx.region is None:
        if len(layers) == 1:
            return MethodResult(float(operator_norm(layers[0].W, norm, output)), kind="exact",
                                witness=np.zeros(layers[0].W.shape[1]))
        return _enumerate_global(net, ctx, layers)
    lo, hi = _box(net, ctx)
    if len(layers) == 1:
        return MethodResult(float(operator_norm(layers[0].W, norm, output)), kind="exact", witness=(lo + hi) / 2)
    prune = ctx.option("prune")
    if prune:  # branch and bound: the tightest certified bounds (CROWN, LP) shrink the tree
        # with a time limit T: CROWN until CROWN_SHARE x T, LP tightening for a quarter of what is left
        # (both keep sound looser bounds when stopped)
        limited = ctx.time_limit is not None
        bounds, _ = preactivation_bounds(net, layers, ctx.region, lo, hi, "auto", ctx=ctx,
                                         crown_deadline=ctx.start + CROWN_SHARE * ctx.time_limit if limited else None,
                                         lp_budget_s=None if not limited else max(0.0, 0.25 * ctx.time_left()))
    else:  # plain enumeration, the test oracle: interval bounds only
        bounds = core.interval_preact_bounds(layers, lo, hi)
    n_unst = int(sum(m.sum() for m in core.unstable_masks(bounds)))
    limit = ctx.option("max_unstable")
    if n_unst > limit:
        raise Unsupported(f"{n_unst} unstable neurons (limit max_unstable={limit}): "
                          f"enumeration would visit up to 2^{n_unst} patterns; use mip")
    deadline = None if not math.isfinite(ctx.time_left()) else time.perf_counter() + ctx.time_left()
    incumbent = None
    if prune:
        rng = ctx.rng()
        X, J = _sample_within(net, lo, hi, ctx.option("samples"), rng, ctx, ctx.elapsed() / ctx.time_limit + SAMPLE_SHARE
                              if ctx.time_limit else 1.0)
        vals = operator_norm(torch.as_tensor(J), norm, output).numpy()
        for i in np.argsort(-vals)[:5]:
            v = _smooth_value(net, X[i], norm, output)
            if v is not None:
                incumbent = (v, X[i])
                break
    sampled = incumbent
    if prune:
        incumbent = _outside_incumbent(ctx, incumbent)
    bar = ctx.progress(desc="enumerate")
    st = enumerate_patterns(layers, lo, hi, bounds, norm, output, deadline=deadline,
                            progress=lambda c: bar.update(1), prune=prune, incumbent=incumbent)
    bar.close()
    details = {"unstable": n_unst, "patterns": st["count"], "lps": st["lps"], "pruned": st["pruned"],
               "prune": prune, "sampled_incumbent": None if sampled is None else sampled[0],
               "seeded_witness": incumbent is not sampled}
    return _enumerate_result(net, st, norm, output, details)
