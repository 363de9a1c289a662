"""LiPopt (Latorre, Rolland & Cevher, ICLR 2020): linear-programming (Krivine/Handelman) hierarchy on
the norm-gradient polynomial, dense and sparse, global and local; and its Shor-SDP baseline.

Both methods bound  L_inf = max_j sup_x ||grad f_j(x)||_1  (the l_inf -> l_inf Lipschitz constant),
and `lipopt` also  L_1 = max_i sup_x sum_j |d f_j / d x_i|  through the transposed chain.
The LP is built from the weights (numpy / scipy.sparse) and solved with HiGHS; every returned value is
re-certified in float64 from the solver's primal point (residual correction). Mathematics:
../shared/reference/lipopt.md.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from ...errors import MethodFailed, Unsupported
from ...network import Activation
from ...norms import INF
from ... import cvx
from ...registry import AFFINE_OPS, ALL_ACTIVATIONS, MethodContext, MethodResult, Option, register_method
from .chain import hidden_ranges, scalar_problems
from .core import (CoverageError, build_lp, clique_subsets, count_clique_products, count_products_dense,
                   dense_subsets, gradient_polynomial, input_cliques, interval_bounds, path_subsets, solve_lp)

from ...threads import blas_threads

DENSE_CHAIN_OPS = AFFINE_OPS | {"Activation"}


DEFAULT_MAX_COLUMNS = 3_000_000


DEFAULT_MAX_TERMS = 5_000_000


def _max_path_count(chain, norm, output) -> float:
    """The largest number of input-output paths through non-zero weights, per output (norm inf) or per
    input (norm 1): an upper bound on the terms of each scalar gradient polynomial. Cost: sparse
    products of the weight patterns."""
    counts = np.ones(chain[0].W.shape[1])
    for layer in chain:
        counts = (layer.W != 0).astype(np.float64) @ counts  # paths from all inputs to each neuron
    if norm == 1:  # per input: paths from that input to all outputs
        back = np.ones(chain[-1].W.shape[0])
        for layer in reversed(chain):
            back = back @ (layer.W != 0).astype(np.float64)
        return float(back.max())
    return float(counts.max() if output is None else counts[output])


#: the gradient polynomial's expansion: seconds per sparse product (2 x depth per subset of layers, 2^depth
#: subsets) and per term (bounded by `term_bound`). Measured 2026-11-29 (one thread, loaded machine): digits
#: MLP box 0.05 s (3 layers, 7.3e3 terms, bound 3.4e4), ACAS Xu box eps 5e-4 1.5 s (7 layers, 60 terms)
SPARSE_OP_S = 1e-3
TERM_S = 2e-6


def expansion_cost(pr, terms: float) -> float:
    """Estimated seconds of `gradient_polynomial` on ``pr`` with at most ``terms`` terms."""
    return SPARSE_OP_S * 2 * pr.depth * 2 ** pr.depth + TERM_S * terms


def term_bound(pr) -> float:
    """An upper bound on the number of terms `gradient_polynomial` expands for the (pruned) scalar problem
    ``pr``: for every subset S of layers the partial rows of the state (counted with sums instead of the
    merges of equal rows), summed over S. Cost: 2^depth sparse mat-vecs of the weight patterns."""
    d = pr.depth
    var = [np.asarray(pr.w[l]) > 0 for l in range(d)]
    pats = [(abs(M) > 0).astype(np.float64).T.tocsr() for M in pr.Ms]  # layer l-1 -> l
    total = 0.0
    for S in range(2 ** d):
        if S & 1:
            c = var[0].astype(np.float64)
            rows = float(c.sum())
        else:
            c = np.ones(len(pr.a[0]))
            rows = 1.0
        for l in range(1, d):
            c = pats[l - 1] @ c
            if (S >> l) & 1:
                c = np.where(var[l], c, 0.0)
                rows = float(c.sum())
            else:
                c = np.minimum(c, rows)
        total += rows
    return total


#: seconds of HiGHS per product column of one scalar LP, with its per-LP overhead (Convnet_avgpool, global: the
#: l_inf LPs of 294,912 columns about 15 s each; the l_1 LPs of 5,120 columns 0.07-0.1 s each)
LP_COLUMN_S = 5e-5
#: the planner's probe prepares the top scalar problem only when its expansion is estimated below this, and
#: solves its LP (to count the problems that LP's value leaves to solve) only when that is estimated below it
PROBE_MAX_S = 1.0
#: ... and only when the dense chain has at most this many weights (it is built for the probe)
PROBE_MAX_WEIGHTS = 5e7


def estimate_seconds(net, norm, region, output) -> float | None:
    """Estimated seconds of lipopt with its default options: the interval bounds of the scalar problems, then
    the problem with the largest (the one lipopt solves first) pruned, its terms counted, expanded and its LP
    columns counted; when that LP is cheap it is solved, and only the problems whose interval bound is above
    its value are counted (lipopt never solves the others: `_solve_in_order`), else all of them. math.inf when
    lipopt would refuse it (terms or columns above the guards); None (unknown) when the probe itself would be
    slow (a dense chain of more than `PROBE_MAX_WEIGHTS` weights, an expansion over `PROBE_MAX_S`). The top
    problem stands for the others (same network, another output or input). Cost: an interval pass, the
    interval bounds, one problem's expansion and at most `PROBE_MAX_S` of LP."""
    widths = [net.n_inputs] + [int(n.size) for n in net.nodes if isinstance(n.op, Activation)] + [net.n_outputs]
    if sum(a * b for a, b in zip(widths[:-1], widths[1:])) > PROBE_MAX_WEIGHTS:
        return None
    chain = net.dense_chain()
    # the method's own defaults, from its option table
    st = _settings(MethodContext(norm=norm, region=region, output=output, method="lipopt"), len(chain))
    a_list, w_list, _ = hidden_ranges(chain, region)
    probs = scalar_problems(chain, a_list, w_list, norm, output)
    t0 = time.perf_counter()
    ib = problem_interval_bounds(probs)
    top = probs[int(np.argmax(ib))]
    interval_s = time.perf_counter() - t0
    pr = top.pruned()
    terms = term_bound(pr)
    expand = expansion_cost(pr, terms)
    if terms > st.max_terms:
        return math.inf
    if expand > PROBE_MAX_S:
        return None
    pr, poly, cliques, count = _prepare_lp(top, st.k, st.sparse, st.products)
    if count > st.max_columns:
        return math.inf
    per_problem = expand + LP_COLUMN_S * count
    needed = len(probs)
    if per_problem <= PROBE_MAX_S:
        t0 = time.perf_counter()
        value = solve_scalar(pr, poly, cliques, st.k, st.sparse, PROBE_MAX_S, st.solver)["value"]
        if value is not None and math.isfinite(value):
            # measured: LP_COLUMN_S prices the large LPs; on small ones (5,120 columns) it is 4x too high
            per_problem = expand + time.perf_counter() - t0
            needed = int(np.count_nonzero(ib > min(value, float(ib.max()))))
    return interval_s + max(needed, 1) * per_problem


def _prepare_lp(prob, k: int, sparse: bool, products: str = "cliques"):
    """Prune, expand the polynomial, choose the product subsets. Returns (problem, poly, cliques, count)."""
    pr = prob.pruned()
    poly = gradient_polynomial(pr)
    if poly.m == 0:
        return pr, poly, None, 0
    if sparse and products == "paths":
        return pr, poly, "paths", len(path_subsets(poly)) * 2 ** k
    if sparse:
        cliques = input_cliques(pr, poly)
        return pr, poly, cliques, count_clique_products(cliques, k, anchored=True)
    return pr, poly, None, count_products_dense(poly.m, k)


def solve_scalar(pr, poly, cliques, k: int, sparse: bool, time_limit=None, solver: str = "ipm") -> dict:
    """Certified upper bound on the maximum of one scalar problem's polynomial over its box by the
    level-k LP (dense: every k-subset of the variables; sparse: the k-subsets of the input cliques).
    Returns a dict with 'value' (None if the solve gave no usable point), 'lam', sizes and times."""
    if poly.m == 0:
        val = float(np.sum(poly.coef) + np.sum(poly.abs_err))
        return {"value": max(val, 0.0) if len(poly.coef) == 0 else val, "lam": val, "status": "constant",
                "sizes": {"rows": 1, "columns": 1, "nonzeros": 0, "products": 0}, "build_s": 0.0, "solve_s": 0.0}
    t0 = time.perf_counter()
    if isinstance(cliques, str) and cliques == "paths":
        subsets = path_subsets(poly)
    elif sparse:
        subsets = clique_subsets(cliques, k, poly.m, anchored=True, layer_of_var=poly.layer_of_var)
    else:
        subsets = dense_subsets(poly.m, k)
    lp = build_lp(poly, subsets, k)
    build = time.perf_counter() - t0
    sol = solve_lp(lp, time_limit=time_limit, solver=solver)
    return {"value": sol.value, "lam": sol.lam, "status": sol.status, "sizes": lp.sizes(), "build_s": build,
            "solve_s": sol.solve_time, "correction": sol.correction, **sol.info}


@register_method(
    "lipopt", kind="upper", norms=(INF, 1), regions=("global", "box"), ops=DENSE_CHAIN_OPS,
    activations=ALL_ACTIVATIONS,
    description="LiPopt: LP (Krivine/Handelman) hierarchy on the norm-gradient polynomial, HiGHS, certified",
    options={"degree": Option(int, None, "LP level k >= the number of weight matrices (auto: the number of weight "
                              "matrices)", min=1),
             "sparse": Option(bool, True, "products only inside the reachability clique of each input, each "
                              "containing that input's variable"),
             "products": Option(str, "cliques", "sparse product family: cliques (every k-subset of an input's clique "
                                "that contains the input) or paths (only the variable sets of the polynomial's "
                                "monomials, degree = depth only; much smaller, possibly looser)",
                                choices=("cliques", "paths")),
             "solver": Option(str, "ipm", "HiGHS algorithm: ipm (no crossover) or simplex", choices=("ipm", "simplex")),
             "max_columns": Option(int, DEFAULT_MAX_COLUMNS, "size guard on the LP columns per scalar problem", min=1),
             "max_terms": Option(int, DEFAULT_MAX_TERMS, "size guard on the gradient polynomial's terms, checked "
                                 "before expanding it", min=1)},
    family="lipopt")
def lipopt(net, ctx):
    """Certified upper bound (l_inf, or l_1 through the transposed chain) by the LiPopt LP hierarchy;
    see `_lipopt`. Cost: one HiGHS LP per output (l_inf) or per input (l_1)."""
    with blas_threads(1):
        return _lipopt(net, ctx)


def _lipopt(net, ctx):
    """Certified upper bound on the l_inf (max over outputs of sup ||grad f_j||_1) or l_1 (transposed:
    max over inputs) Lipschitz constant, globally (derivatives in the slope bounds [alpha, beta]) or on
    a box (derivative ranges from interval pre-activation bounds; stable ReLUs are constants).

    One LP per output (l_inf) or per input (l_1); each LP has one column per product of k factors
    y or (1 - y) and one row per monomial: C(m, k) 2^k columns dense, about sum_v C(|clique_v|, k) 2^k
    sparse. Cost: HiGHS interior point on that LP; the value is lambda plus a residual correction
    computed in float64, so it is valid whatever the solver tolerance."""
    chain = net.dense_chain()
    st = _settings(ctx, len(chain))
    if ctx.region is None:
        # cheap guard before the expansion: input-output paths through non-zero weights bound the number
        # of terms of the gradient polynomial (a dense MNIST net has 5e7 per output)
        n_paths = _max_path_count(chain, ctx.norm, ctx.output)
        if n_paths > st.max_terms:
            raise Unsupported(f"the gradient polynomial would have up to {n_paths:,.0f} terms (> max_terms="
                              f"{st.max_terms:,}): LiPopt needs a sparse (e.g. pruned) or small network")
    a_list, w_list, range_info = hidden_ranges(chain, ctx.region)
    probs = scalar_problems(chain, a_list, w_list, ctx.norm, ctx.output)
    solved = _solve_in_order(probs, ctx, st)
    return _lipopt_result(ctx, st, len(probs), range_info, solved)


@dataclass
class _Settings:
    k: int
    sparse: bool
    products: str
    solver: str
    max_columns: int
    max_terms: int


def _settings(ctx, d: int) -> _Settings:
    """The LP level and product family, the HiGHS algorithm and the size guards (``d`` weight matrices)."""
    k = ctx.option("degree")
    if k is None:  # auto: the number of weight matrices
        k = d
    if k < d:
        raise Unsupported(f"degree {k} is below the number of weight matrices ({d}): the LP could not match the "
                          f"top-degree monomials of the gradient polynomial; use degree >= {d}")
    sparse = ctx.option("sparse")
    products = ctx.option("products")  # validated: cliques or paths
    if products == "paths" and (k != d or not sparse):
        raise Unsupported("products=paths is the sparse level-k LP with k = the number of weight matrices only")
    solver = ctx.option("solver")  # validated: ipm or simplex
    max_columns = ctx.option("max_columns")
    max_terms = ctx.option("max_terms")
    return _Settings(k, sparse, products, solver, max_columns, max_terms)


def _prepare(prob, st: _Settings, ctx, first: bool):
    """(pruned, poly, cliques, columns) of one scalar problem, or None when its expansion would not fit in
    the time left (the first problem then refuses the whole method: no LP value at all in the limit);
    above the size guards, Unsupported."""
    pruned = prob.pruned()
    terms = term_bound(pruned)
    if terms > st.max_terms:
        raise Unsupported(f"the gradient polynomial of {prob.label} would have up to {terms:,.0f} terms (> max_terms="
                          f"{st.max_terms:,}): LiPopt needs a smaller, sparser network or a smaller box")
    est = expansion_cost(pruned, terms)
    if est > ctx.time_left():
        if first:
            raise Unsupported(f"estimated {est:.3g} s for this network (expanding the gradient polynomial of "
                              f"{prob.label}: up to {terms:,.0f} terms), more than the time limit "
                              f"{ctx.time_limit:g} s")
        return None
    pr, poly, cliques, count = _prepare_lp(prob, st.k, st.sparse, st.products)
    if count > st.max_columns:
        raise Unsupported(f"the degree-{st.k} {'sparse' if st.sparse else 'dense'} LP of {prob.label} would "
                          f"have {count:,} product columns (> max_columns={st.max_columns:,}); "
                          f"{poly.m} variables after pruning")
    return pr, poly, cliques, count


def problem_interval_bounds(probs) -> np.ndarray:
    """Certified interval-arithmetic upper bound of every scalar problem (`core.interval_bounds`): in one
    batched pass when they share everything but v (the problems of one chain, `scalar_problems`), else one
    by one."""
    if not probs:
        return np.zeros(0)
    p0 = probs[0]

    def same(xs, ys):
        return len(xs) == len(ys) and all(x is y or np.array_equal(x, y) for x, y in zip(xs, ys))

    if all(same(p.Ms, p0.Ms) and same(p.a, p0.a) and same(p.w, p0.w) and len(p.v) == len(p0.v) for p in probs):
        return interval_bounds(p0.Ms, p0.a, p0.w, np.stack([p.v for p in probs], axis=1))
    return np.array([p.interval_bound() for p in probs])


def _solve_in_order(probs, ctx, st: _Settings) -> dict:
    """One certified LP per scalar problem that can still raise the maximum, taken by decreasing interval
    bound: a problem whose interval bound is below the largest value held is never expanded nor solved,
    since it cannot change the maximum (on Convnet_avgpool l_1 global, 92 of 784 inputs have an interval
    bound above the LP maximum 41.0). Each problem's value is min(LP, interval bound), both certified; a
    problem left when time runs out keeps its interval bound (status time_limit), so the method is anytime.
    Returns per_problem records, values, status and counts."""
    ib = problem_interval_bounds(probs)
    order = np.argsort(-ib, kind="stable")
    out = {"per_problem": [], "values": [], "status": "ok", "lp_solved": 0, "dominated": 0, "out_of_time": 0}
    held = -math.inf
    bar = ctx.progress(total=len(probs), desc=f"lipopt-{st.k}")
    for rank, i in enumerate(order):
        prob, bound_i = probs[i], float(ib[i])
        bar.update(1)
        if bound_i <= held:  # every later problem is below `held` too
            out["dominated"] = len(order) - rank
            out["values"].append(max(float(ib[order[rank:]].max()), 0.0))
            break
        prepared = None if ctx.out_of_time() else _prepare(prob, st, ctx, first=rank == 0)
        if prepared is None:
            out["out_of_time"] = len(order) - rank
            out["status"] = "time_limit"
            out["values"].append(bound_i)
            out["per_problem"].append({"label": prob.label, "value": bound_i,
                                       "source": f"interval bound (out of time, {len(order) - rank} problems left)"})
            break
        val = _solve_one(prob, prepared, ctx, st, bound_i, out)
        held = max(held, val)
    bar.close()
    return out


def _solve_one(prob, prepared, ctx, st: _Settings, bound_i: float, out: dict) -> float:
    """The certified value of one prepared problem: min(its LP's, its interval bound); recorded in ``out``."""
    pr, poly, cliques, count = prepared
    try:
        res = solve_scalar(pr, poly, cliques, st.k, st.sparse, ctx.time_left(), st.solver)
    except CoverageError as e:  # a bug in the product set: never return a number
        raise MethodFailed(f"coefficient matching: {e}") from None
    except MemoryError:
        raise MethodFailed(f"out of memory building the LP of {prob.label} ({count:,} columns)") from None
    val = res["value"]
    timed_out = "time" in str(res.get("status", "")).lower()
    if val is None or not math.isfinite(val):
        if not (ctx.out_of_time() or timed_out):
            raise MethodFailed(f"HiGHS returned no usable point for {prob.label} (status {res.get('status')})")
        val, source = bound_i, "interval bound (LP timed out)"
    else:
        out["lp_solved"] += 1
        source = "lp" if val <= bound_i else "interval bound (below the LP's)"
        val = min(val, bound_i)
    if timed_out:
        out["status"] = "time_limit"
    out["values"].append(val)
    out["per_problem"].append({"label": prob.label, **res, "value": val, "source": source})
    return val


def _lipopt_result(ctx, st: _Settings, n_problems: int, range_info, solved) -> MethodResult:
    """The maximum over the scalar problems, with sizes, times and per-problem records."""
    per_problem, values = solved["per_problem"], solved["values"]
    value = max(values) if values else 0.0
    sizes = [p["sizes"] for p in per_problem if "sizes" in p]
    details = {
        "degree": st.k, "sparse": st.sparse, "products": st.products if st.sparse else "all k-subsets",
        "solver": f"HiGHS {st.solver}", "n_problems": n_problems,
        "scalar": "per output (l_inf)" if ctx.norm == INF else "per input (l_1, transposed chain)",
        "derivative_ranges": "global slope bounds" if ctx.region is None else "interval bounds on the box",
        "neurons_constant": range_info["stable"], "neurons_variable": range_info["unstable"],
        "lp_solved": solved["lp_solved"],
        "dominated": solved["dominated"],
        "lp_columns_max": max((s["columns"] for s in sizes), default=0),
        "lp_rows_max": max((s["rows"] for s in sizes), default=0),
        "lp_nonzeros_max": max((s["nonzeros"] for s in sizes), default=0),
        "lp_columns_total": sum(s["columns"] for s in sizes),
        "build_s": sum(p.get("build_s", 0.0) for p in per_problem),
        "solve_s": sum(p.get("solve_s", 0.0) for p in per_problem),
        "max_correction": max((p.get("correction", 0.0) for p in per_problem), default=0.0),
        "argmax": max(per_problem, key=lambda p: p["value"])["label"] if per_problem else None,
    }
    if len(per_problem) <= 64:
        details["problems"] = [{kk: vv for kk, vv in p.items() if kk in
                                ("label", "value", "lam", "source", "status", "sizes", "build_s", "solve_s",
                                 "correction", "highs_status")} for p in per_problem]
    reason = None
    if solved["out_of_time"]:
        details["out_of_time"] = solved["out_of_time"]
        reason = (f"out of time: {solved['out_of_time']} of {n_problems} scalar problems bounded by interval "
                  "arithmetic instead of the LP")
    return MethodResult(value, status=solved["status"], details=details, reason=reason)


# --------------------------------------------------------------------------------------------------
# Shor SDP
# --------------------------------------------------------------------------------------------------

DEFAULT_MAX_ORDER = 700


@register_method(
    "shor-sdp", kind="upper", norms=(INF,), regions=("global", "box"), ops=DENSE_CHAIN_OPS,
    activations=ALL_ACTIVATIONS,
    description="Shor SDP relaxation of the norm-gradient polynomial (1-2 hidden layers), SCS, certified",
    options={"max_order": Option(int, DEFAULT_MAX_ORDER, "size guard on the PSD matrix order per output", min=1),
             "tol": Option(float, 1e-6, "SCS tolerance eps_abs = eps_rel", min=0, min_exclusive=True),
             "sdp_solver": Option(str, "auto", "auto (clarabel up to order 200, else eig), scs, clarabel, or eig "
                                  "(L-BFGS eigenvalue optimisation of the dual; any iterate is certified)",
                                  choices=("auto", *cvx.BACKENDS, "eig"))},
    family="lipopt")
def shor_sdp(net, ctx):
    """Certified upper bound on the l_inf Lipschitz constant from the Shor SDP (one or two hidden
    layers); see `_shor_sdp`. Cost: one SDP of order ~ 1 + #variables (+ lifted pairs) per output."""
    with blas_threads(1):
        return _shor_sdp(net, ctx)


def _shor_sdp(net, ctx):
    """Certified upper bound on the l_inf Lipschitz constant (max over outputs of sup ||grad f_j||_1) of a
    network with one or two hidden layers, from the Shor SDP relaxation of the norm-gradient polynomial
    in +-1 variables (two hidden layers: products of hidden derivatives lifted, with consistency
    constraints). The dual SDP is solved (Clarabel for small orders, an L-BFGS eigenvalue optimisation
    for large ones, or SCS on request) and re-certified by an eigenvalue check in float64.
    Cost: one SDP of order 1 + #variables (+ #non-zero hidden-hidden weights) per output."""
    from .shor import shor_bound

    chain = net.dense_chain()
    d = len(chain)
    if d > 3:
        raise Unsupported(f"shor-sdp handles one or two hidden layers; this network has {d - 1}")
    max_order = ctx.option("max_order")
    eps = ctx.option("tol")
    sdp_solver = ctx.option("sdp_solver").upper()  # validated: auto, scs, clarabel or eig (any case)
    if ctx.region is None and _max_path_count(chain, INF, ctx.output) > DEFAULT_MAX_TERMS:
        raise Unsupported(f"the gradient polynomial would have more than {DEFAULT_MAX_TERMS:,} terms: the Shor SDP "
                          "of this network is far beyond max_order")
    a_list, w_list, _ = hidden_ranges(chain, ctx.region)
    probs = scalar_problems(chain, a_list, w_list, INF, ctx.output)
    prepared = []
    for prob in probs:
        pr = prob.pruned()
        poly = gradient_polynomial(pr)
        n_pairs = 0
        if d == 3:
            var1 = poly.var_ids[1] >= 0 if len(poly.var_ids) > 1 else np.zeros(0, bool)
            var2 = poly.var_ids[2] >= 0 if len(poly.var_ids) > 2 else np.zeros(0, bool)
            M2 = pr.Ms[1]
            if M2.shape[0] and M2.shape[1]:
                n_pairs = int(M2[np.flatnonzero(var1)][:, np.flatnonzero(var2)].nnz)
        order = 1 + poly.m + n_pairs
        if order > max_order:
            raise Unsupported(f"the Shor SDP of {prob.label} has a PSD matrix of order {order:,} "
                              f"(> max_order={max_order:,})")
        prepared.append((prob, poly, order))
    values, per, fallback, early, status = [], [], [], [], "ok"
    bar = ctx.progress(total=len(prepared), desc="shor-sdp")
    for prob, poly, order in prepared:
        if ctx.out_of_time():
            v = prob.naive_bound()
            values.append(v)
            fallback.append(prob.label)
            status = "time_limit"
            bar.update(1)
            continue
        solver_j = sdp_solver if sdp_solver != "AUTO" else ("CLARABEL" if order <= 200 else "EIG")
        val, info = shor_bound(poly, time_limit=ctx.time_left(), eps=eps, solver=solver_j)
        if (val is None or not math.isfinite(val)) and ctx.out_of_time():  # stopped on time without a certificate
            values.append(prob.naive_bound())
            fallback.append(prob.label)
            status = "time_limit"
            bar.update(1)
            continue
        if val is None or not math.isfinite(val):
            raise MethodFailed(f"{solver_j} gave no usable certificate for {prob.label} ({info.get('solver_status')})")
        if info.get("stopped_on_time") or "inaccurate" in str(info.get("solver_status", "")):
            status = "time_limit" if info.get("stopped_on_time") else status
            early.append(prob.label)
        values.append(val)
        per.append({"label": prob.label, "value": val, **info})
        bar.update(1)
    bar.close()
    details = {"max_order": max((o for _, _, o in prepared), default=0), "solver": "dual SDP + float64 eigenvalue check",
               "solvers": sorted({p.get("solver", "") for p in per}),
               "max_correction": max((p.get("correction", 0.0) for p in per), default=0.0)}
    if len(per) <= 64:
        details["problems"] = per
    reason = None
    notes = []
    if fallback:
        details["fallback_naive"] = fallback
        notes.append(f"out of time: {len(fallback)} outputs bounded by the naive |W|-product")
    if early:
        details["stopped_early"] = early
        notes.append(f"the SDP solver stopped early on {len(early)} outputs (certified, but above the SDP optimum)")
    if notes:
        reason = "; ".join(notes)
    return MethodResult(max(values) if values else 0.0, status=status, details=details, reason=reason)
