"""Exact local Lipschitz constants of ReLU / LeakyReLU networks on boxes (LipMIP, Jordan & Dimakis 2020).

* ``mip``: a mixed-integer program per output (l_inf) or per input (l_1) on HiGHS, one binary per unstable
  neuron shared by the forward and the gradient encodings; anytime sandwich (dual bound, re-evaluated
  incumbent) on a time limit.
* ``enumerate``: depth-first search over the activation patterns realisable in the box (LP-checked), the
  test oracle, for at most ~20 unstable neurons.

Maths: ../shared/reference/exact-and-lower.md.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ...errors import LipboundError, MethodFailed, Unsupported
from ...norms import INF, operator_norm
from ...registry import AFFINE_OPS, PIECEWISE_LINEAR, MethodResult, register_method
from . import mip_core as core
from .enumerate import enumerate_patterns, max_slack_point, pattern_constraints

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
                         mip_per_solve=0.5):
    """Pre-activation bounds for big-M constants. mode: 'interval', 'crown' (CROWN from lipbound.crown,
    intersected with intervals; interval alone if that module is missing), 'lp' (crown/interval then LP
    tightening, every LP bound certified by its duals), 'mip' ('lp' then MIP tightening of each unstable
    neuron with a short time limit per solve), 'auto' ('lp' for small nets, else 'crown').
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
            cb = core.crown_preact_bounds(net, region)
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
        return [("backward", np.eye(m)[j], np.arange(n), f"output {j}") for j in outs]
    sel = np.array([output]) if output is not None else np.arange(m)
    return [("forward", np.eye(n)[i], sel, f"input {i}") for i in range(n)]


def _direction_value(J, d, norm):
    """Sub-problem value at a batch of Jacobians J (B, m, n)."""
    mode, vec, sel, _ = d
    if mode == "backward":
        return np.abs(np.einsum("bmn,m->bn", J, vec)).sum(1)
    col = np.einsum("bmn,n->bm", J, vec)
    return np.abs(col[:, sel]).sum(1)


def _sample(net, lo, hi, n, rng):
    X = rng.uniform(lo, hi, size=(n, lo.size))
    X = np.vstack([(lo + hi) / 2, X])
    J = net.jacobian(torch.as_tensor(X)).numpy()
    return X, J


# --------------------------------------------------------------------------------------------------
# HiGHS solve of one sub-problem
# --------------------------------------------------------------------------------------------------


def _solve_highs(mm, time_limit, cutoff, warm, threads, verbose, gap):
    opts = {"mip_rel_gap": gap, "mip_abs_gap": 1e-10, "random_seed": 0,
            "mip_heuristic_run_rins": False, "mip_heuristic_run_rens": False}  # incumbents come from sampling
    if time_limit is not None and math.isfinite(time_limit):
        opts["time_limit"] = max(float(time_limit), 0.05)
    if threads is not None:
        opts["threads"] = int(threads)
    if verbose:
        opts["output_flag"] = True
    h, _ = mm.model.to_highs(mm.cost, maximize=True, options=opts)
    if cutoff is not None:
        cols, coef = mm.obj_rows
        h.addRow(float(cutoff), core.highspy.kHighsInf, len(cols), cols.astype(np.int32), coef.astype(np.float64))
    if warm is not None:
        sol = core.highspy.HighsSolution()
        sol.col_value = list(warm)
        sol.value_valid = True
        h.setSolution(sol)
    t0 = time.perf_counter()
    h.run()
    dt = time.perf_counter() - t0
    st = h.getModelStatus()
    info = h.getInfo()
    S = core.highspy.HighsModelStatus
    status = {S.kOptimal: "optimal", S.kTimeLimit: "time_limit", S.kInfeasible: "infeasible",
              S.kInterrupt: "interrupted"}.get(st, h.modelStatusToString(st))
    primal = None
    if info.primal_solution_status == 2:  # feasible
        primal = (float(info.objective_function_value), np.asarray(h.getSolution().col_value, dtype=np.float64))
    dual = float(info.mip_dual_bound)
    return {"status": status, "dual": dual, "primal": primal, "time": dt, "nodes": int(info.mip_node_count)}


def _scip_available():
    try:
        import pyscipopt  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------------------------------
# mip
# --------------------------------------------------------------------------------------------------


@register_method(
    "mip", kind="exact", norms=(1, INF), regions=("box",), ops=DENSE_OPS, activations=PIECEWISE_LINEAR,
    description="exact local Lipschitz constant on a box by mixed-integer programming (LipMIP, HiGHS); "
                "anytime upper/lower sandwich on a time limit",
    options={"bounds": "big-M bounds: auto (default: CROWN if available, then LP tightening on small nets), "
                       "interval, crown, lp, or mip (lp then per-neuron MIPs of mip_time s each)",
             "mip_time": "time limit (s) of each bound-tightening MIP with bounds=mip (default 0.5)",
             "solver": "highs (default) or scip (needs pyscipopt)",
             "threads": "HiGHS threads", "samples": "random points for the initial incumbent (default 1000)",
             "gap": "relative MIP gap asked of the solver (default 1e-7)",
             "chain_lp": "LP-tighten the gradient-chain bounds before each MIP: true, false or auto (default: when > 12 "
                         "unstable neurons)",
             "lp_time": "time budget (s) of LP bound tightening (default: 25% of the time limit)"},
    family="exact")
def mip(net, ctx):
    """Exact Lipschitz constant (l_inf: max over outputs of ‖∇f_j‖_1; l_1: max over inputs of the column
    l1 norm, ‖∇f_j‖_inf with ``output=j``) on a box, by LipMIP mixed-integer programs on HiGHS.

    Kind ``exact`` when every sub-problem is solved and the re-evaluated incumbent (float64 autograd at
    its witness point) meets the dual bound (+ margin 1e-6 relative, 1e-9 of the interval bound) within
    a relative 1e-5; otherwise ``upper`` = the solver's dual bound with margin and ``lower`` = the
    re-evaluated incumbent with its witness. Cost: exponential in the number of unstable neurons
    (one MIP per output for l_inf, per input for l_1)."""
    solver = str(ctx.option("solver", "highs")).lower()
    if solver == "scip":
        if not _scip_available():
            raise Unsupported("solver=scip needs pyscipopt, which is not installed (use solver=highs)")
        raise Unsupported("solver=scip is not wired up in this version; use solver=highs")
    if solver != "highs":
        raise LipboundError(f"option solver={solver!r}: use highs or scip")
    if core.highspy is None:  # pragma: no cover
        raise Unsupported("highspy is not installed")
    layers = core.relu_chain(net)
    lo, hi = _box(net, ctx)
    norm, output = ctx.norm, ctx.output
    rng = ctx.rng()
    t_start = time.perf_counter()
    dirs = _directions(net, norm, output)
    bar = ctx.progress(total=len(dirs) + 1, desc="mip")

    # 1. sampled incumbent (certified lower bound with witness) per sub-problem
    X, J = _sample(net, lo, hi, int(ctx.option("samples", 1000)), rng)
    per_dir = [_direction_value(J, d, norm) for d in dirs]
    best_lower, best_x = -math.inf, None
    allv = operator_norm(torch.as_tensor(J), norm, output).numpy()
    for i in np.argsort(-allv)[:5]:
        v, xw = certified_gradient_lower(net, layers, None, X[i], norm, output, lo, hi, rng)
        if v is not None and v > best_lower:
            best_lower, best_x = v, xw

    details = {"n_layers": len(layers), "n_subproblems": len(dirs), "solver": "highs",
               "sampled_lower": best_lower if best_x is not None else None}
    if len(layers) == 1:  # affine network: the Jacobian is constant
        val = float(operator_norm(layers[0].W, norm, output))
        return MethodResult(val, kind="exact", witness=(lo + hi) / 2, details=details)

    # 2. pre-activation bounds (big-M constants)
    tl = ctx.time_left()
    lp_time = ctx.option("lp_time", None, float)  # also the budget of bounds=mip
    if lp_time is None and math.isfinite(tl):
        lp_time = 0.25 * tl
    bounds, binfo = preactivation_bounds(net, layers, ctx.region, lo, hi, str(ctx.option("bounds", "auto")),
                                         lp_budget_s=lp_time, mip_per_solve=float(ctx.option("mip_time", 0.5, float)))
    details.update(binfo)
    bar.update(1)

    # 3. one MIP per sub-problem, best sampled first; later ones only need to beat the best lower bound
    order = np.argsort([-np.max(v) for v in per_dir])
    upper = -math.inf
    sub = []
    complete = True
    threads = ctx.option("threads", None, int)
    gap = float(ctx.option("gap", 1e-7, float))
    chain_opt = ctx.option("chain_lp", "auto")
    if isinstance(chain_opt, str) and chain_opt.lower() == "auto":
        chain_lp = binfo["unstable"] > 12  # below that the MIPs are easy and the LPs would dominate
    else:
        chain_lp = bool(ctx.option("chain_lp", True, bool))
    for rank, di in enumerate(order):
        d = dirs[di]
        mode, vec, sel, label = d
        chain_ivs, n_chain_lps, t_chain = None, 0, 0.0
        if chain_lp:
            t0c = time.perf_counter()
            left = ctx.time_left()
            dl = None if not math.isfinite(left) else time.perf_counter() + 0.3 * left / (len(order) - rank)
            chain_ivs, n_chain_lps, _ = core.tighten_chain_bounds(layers, lo, hi, bounds, mode, vec, sel, deadline=dl)
            t_chain = time.perf_counter() - t0c
        mm = core.build_mip(layers, lo, hi, bounds, mode, vec, sel, chain_ivs=chain_ivs)
        scale_margin = ABS_MARGIN * mm.trivial_bound + 1e-12
        remaining = ctx.time_left()
        share = remaining / (len(order) - rank) if math.isfinite(remaining) else None
        if share is not None and share <= 0.01:
            # no time left: the interval bound of this sub-problem is still a certified upper bound
            upper = max(upper, mm.trivial_bound)
            sub.append({"direction": label, "status": "skipped (no time)", "upper": mm.trivial_bound})
            complete = False
            bar.update(1)
            continue
        if best_x is not None and mm.trivial_bound <= best_lower:
            ub_m = best_lower + REL_MARGIN * abs(best_lower) + scale_margin
            upper = max(upper, ub_m)
            sub.append({"direction": label, "status": "bounded by LP", "upper": ub_m, "chain_lps": n_chain_lps,
                        "chain_lp_time_s": t_chain, "trivial_bound": mm.trivial_bound})
            bar.update(1)
            continue
        own = per_dir[di]
        i_own = int(np.argmax(own))
        use_cutoff = best_x is not None and best_lower > own[i_own] * (1 + 1e-9)
        cutoff = best_lower * (1 + 1e-7) if use_cutoff else None
        warm = None if use_cutoff else core.full_solution(mm, layers, X[i_own], bounds)
        r = _solve_highs(mm, share, cutoff, warm, threads, ctx.option("verbose", False, bool), gap)
        entry = {"direction": label, "status": r["status"], "time_s": r["time"], "nodes": r["nodes"],
                 "chain_lps": n_chain_lps, "chain_lp_time_s": t_chain,
                 "binaries": mm.n_binaries, "abs_binaries": mm.n_abs_binaries,
                 "columns": mm.model.n_cols, "rows": mm.model.n_rows}
        if r["status"] == "infeasible":
            if cutoff is None:
                raise MethodFailed(f"HiGHS found the MIP of {label} infeasible (it always has a solution)")
            ub = cutoff
        elif r["status"] in ("optimal", "time_limit", "interrupted"):
            ub = r["dual"] if math.isfinite(r["dual"]) else mm.trivial_bound
            ub = min(ub, mm.trivial_bound) if math.isfinite(ub) else mm.trivial_bound
            if cutoff is not None:
                ub = max(ub, cutoff)
            if r["status"] != "optimal":
                complete = False
        else:
            ub = mm.trivial_bound
            complete = False
        ub_m = ub + REL_MARGIN * abs(ub) + scale_margin
        entry["dual_bound"] = ub
        entry["upper"] = ub_m
        upper = max(upper, ub_m)
        if r["primal"] is not None:
            obj, colv = r["primal"]
            entry["incumbent"] = obj
            xw = colv[mm.idx["x"]]
            pattern = _pattern_from_solution(layers, bounds, mm, colv)
            v, xw = certified_gradient_lower(net, layers, bounds, xw, norm, output, lo, hi, rng, pattern)
            entry["incumbent_reevaluated"] = v
            if v is not None and v > best_lower:
                best_lower, best_x = v, xw
        sub.append(entry)
        bar.update(1)
        bar.set_postfix_str(f"lower {best_lower:.6g} upper≥{upper:.6g}")
    bar.close()
    details["subproblems"] = sub
    details["n_binaries"] = int(max((s.get("binaries", 0) for s in sub), default=0))
    details["upper"] = upper
    details["lower"] = best_lower if best_x is not None else None
    details["total_time_s"] = time.perf_counter() - t_start
    details["solve_time_s"] = float(sum(s.get("time_s", 0.0) for s in sub))
    lower = best_lower if best_x is not None else None
    if lower is not None:
        details["gap"] = upper - lower
        details["rel_gap"] = (upper - lower) / max(abs(lower), 1e-300)
    closed = lower is not None and upper - lower <= EXACT_RTOL * abs(lower) + 1e-12
    details["exact_tolerance"] = f"upper - lower <= {EXACT_RTOL:g} * lower + 1e-12"
    if complete and closed:
        return MethodResult(lower, kind="exact", witness=best_x, lower=lower, lower_witness=best_x, details=details)
    status = "ok" if complete else "time_limit"
    reason = None
    if complete and not closed:
        reason = ("the MIP optimum is not attained by a differentiable point (degenerate network or kink): "
                  "reporting the dual bound as an upper bound")
    return MethodResult(upper, kind="upper", status=status, lower=lower, lower_witness=best_x, details=details,
                        reason=reason)


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


@register_method(
    "enumerate", kind="exact", norms=(1, INF), regions=("box",), ops=DENSE_OPS, activations=PIECEWISE_LINEAR,
    description="exact local Lipschitz constant on a box by enumerating the activation patterns realisable "
                "in it (LP-checked tree search); at most ~20 unstable neurons",
    options={"max_unstable": "refuse networks with more unstable neurons than this (default 20)",
             "prune": "prune pattern prefixes whose interval Jacobian bound cannot beat the best value "
                      "(branch and bound, still exact; default true; false = plain enumeration)",
             "samples": "random points for the initial incumbent when pruning (default 500)"},
    family="exact")
def enumerate_method(net, ctx):
    """Exact Lipschitz constant (norms l_1 / l_inf, optional ``output``) on a box: the max over the
    activation patterns whose region has an interior point in the box (max-slack LP, depth-first with
    pruning of infeasible prefixes) of the pattern Jacobian's norm; a witness point is returned. Exact in
    general position. Cost: up to 2^(#unstable) patterns times one small LP, so the method refuses more
    than ``max_unstable`` (default 20) unstable neurons (under interval bounds; with ``prune``, under the
    CROWN/LP bounds of `mip`). On a time limit it
    returns the best pattern seen as a certified ``lower`` bound. With ``prune`` (default) it is a branch and
    bound: prefixes whose interval Jacobian bound is at most the best value found are skipped (still exact)."""
    layers = core.relu_chain(net)
    lo, hi = _box(net, ctx)
    norm, output = ctx.norm, ctx.output
    if len(layers) == 1:
        return MethodResult(float(operator_norm(layers[0].W, norm, output)), kind="exact", witness=(lo + hi) / 2)
    prune = bool(ctx.option("prune", True, bool))
    if prune:  # branch and bound: the tightest certified bounds (CROWN, LP) shrink the tree
        bounds, _ = preactivation_bounds(net, layers, ctx.region, lo, hi, "auto")
    else:  # plain enumeration, the test oracle: interval bounds only
        bounds = core.interval_preact_bounds(layers, lo, hi)
    n_unst = int(sum(m.sum() for m in core.unstable_masks(bounds)))
    limit = int(ctx.option("max_unstable", 20, int))
    if n_unst > limit:
        raise Unsupported(f"{n_unst} unstable neurons (limit max_unstable={limit}): "
                          "enumeration would visit up to 2^{n_unst} patterns; use mip")
    deadline = None if not math.isfinite(ctx.time_left()) else time.perf_counter() + ctx.time_left()
    incumbent = None
    if prune:
        rng = ctx.rng()
        X, J = _sample(net, lo, hi, int(ctx.option("samples", 500, int)), rng)
        vals = operator_norm(torch.as_tensor(J), norm, output).numpy()
        for i in np.argsort(-vals)[:5]:
            v = _smooth_value(net, X[i], norm, output)
            if v is not None:
                incumbent = (v, X[i])
                break
    bar = ctx.progress(desc="enumerate")
    st = enumerate_patterns(layers, lo, hi, bounds, norm, output, deadline=deadline,
                            progress=lambda c: bar.update(1), prune=prune, incumbent=incumbent)
    bar.close()
    details = {"unstable": n_unst, "patterns": st["count"], "lps": st["lps"], "pruned": st["pruned"],
               "prune": prune, "sampled_incumbent": None if incumbent is None else incumbent[0]}
    if st["x"] is None:
        if not st["complete"]:
            return MethodResult(None, kind="lower", status="time_limit", details=details)
        raise MethodFailed("no activation pattern with an interior point in the box was found")
    x = st["x"]
    rng = ctx.rng()
    check = _smooth_value(net, x, norm, output)
    details["witness_value_autograd"] = check
    if not st["complete"]:
        if check is None:
            return MethodResult(None, kind="lower", status="time_limit", details=details)
        return MethodResult(check, kind="lower", status="time_limit", witness=x, details=details)
    return MethodResult(st["best"], kind="exact", witness=x, lower=check, lower_witness=x if check is not None else None,
                        details=details)
