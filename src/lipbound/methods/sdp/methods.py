"""Global l2 bounds of the LipSDP family: LipSDP-Neuron/-Layer (cvxpy), ECLipsE (one small SDP per
layer), ECLipsE-Fast and the closed-form family (G1, G2, G3, their minimum) and lipsdp-opt (joint
first-order optimisation of the multipliers of the exact decomposition).

Mathematics: ../shared/reference/l2-sdp-family.md.  Every method here produces diagonal multipliers
L_1..L_{L-1} of the rescaled LipSDP-Neuron LMI and certifies them with the exact sequential
decomposition in float64 (`certificate.run_chain`: a Cholesky factorisation of every pivot, the value
sqrt(lambda_max(W_L M_{L-1}^{-1} W_L^T)) by LAPACK, a relative margin of 1e-9); on small networks the
full LMI is also assembled and its smallest eigenvalue checked.  So every value returned is a certified
upper bound on the global l2 Lipschitz constant (>= the LipSDP-Neuron optimum).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ...errors import MethodFailed, Unsupported
from ... import cvx
from ...registry import AFFINE_OPS, ALL_ACTIVATIONS, FLOATS, MethodResult, Option, register_method
from .certificate import CertificateError, ChainResult, full_lmi_min_eig, run_chain, single_matrix_bound
from .closed_forms import G1_GRID, family_members, policy_g1, policy_g2, policy_g3
from .prepare import Prepared, prepare

OPS = AFFINE_OPS | {"Activation"}
# the options every method of this module reads (lipsdp-neuron/-layer: global only, no max_width check,
# so without max_width and slopes)
_CHAIN_OPTIONS = {
    "full_check_max": Option(int, 1500, "largest LMI size (n0 + hidden neurons) for the full eigenvalue check",
                             min=0),
    "blas_threads": Option(int, None, "BLAS/torch threads during the method (auto: 1 when every layer has < 400 "
                           "neurons, since small matrices are slower with threads; else the cores that other "
                           "processes leave free, measured over 0.1 s)", min=1),
    "max_entries": Option(int, None, "largest dense matrix of dense_chain() (auto: that of lipbound.network)",
                          min=1),
}
COMMON_OPTIONS = {
    **_CHAIN_OPTIONS,
    "max_width": Option(int, 5000, "refuse layers wider than this (the dense matrices are n^2 floats)", min=1),
    "slopes": Option(str, "auto", "box regions: auto (the smaller of the relaxed local and the global bound; for "
                     "lipsdp-opt of the local and the relaxed one), relaxed ([global alpha, local beta] per "
                     "neuron), local (each neuron's derivative range on the box) or global",
                     choices=("auto", "relaxed", "local", "global")),
}

# LipSDP through cvxpy: the largest LMI (n0 + hidden neurons) attempted by default. Measured on the 2-core
# machine (see benchmarks/l2_sdp_family.py): SCS 3x50 (LMI 104) ~2 s; beyond a few hundred the
# compilation and the solve take minutes to hours and cannot be interrupted.
from ...threads import blas_threads, free_cores

LIPSDP_MAX_NEURONS = 150
ECLIPSE_MAX_WIDTH = 100


def _threads(ctx, net=None):
    """The BLAS thread count: the option, else 1 for small layers and the free cores for wide ones."""
    n = ctx.option("blas_threads")
    if n is not None:
        return n
    try:
        widest = max(int(np.prod(node.shape)) for node in net.nodes)
    except Exception:
        widest = 0
    return 1 if widest < 400 else free_cores()


def _prepare(net, ctx):
    prep = prepare(net, ctx)
    max_width = ctx.option("max_width")
    widest = max(prep.widths)
    if widest > max_width:
        raise Unsupported(f"a layer of the dense chain has {widest} neurons (> max_width={max_width}); raise "
                          "the option max_width if memory allows (cost O(n^3) per layer, n^2 floats each)")
    return prep


def _refuse_if_one_pass_overruns(prep, ctx) -> None:
    """Unsupported when even one closed-form pass (`_chain_flops` at the optimistic `OPT_FLOP_RATE`) would
    end after the time limit's tolerance (10% + 1 s): a pass cannot be cut inside a layer's factorisation,
    so starting it would overrun the limit (eclipse-family on Convnet_avgpool folded to 23328-neuron
    layers ran 197 s for a 30 s limit)."""
    if ctx.time_limit is None:
        return
    est = _chain_flops(prep) / OPT_FLOP_RATE
    if est > ctx.time_left() + 0.1 * ctx.time_limit + 1.0:
        raise Unsupported(f"time limit {ctx.time_limit:g} s: one closed-form pass of this chain (widths "
                          f"{prep.widths}) needs an estimated >= {est:.3g} s ({_chain_flops(prep):.3g} "
                          f"flop), {max(ctx.time_left(), 0.0):.3g} s are left after preparing it")


def _trivial(prep):
    """Constant network or a single matrix: the exact answer (certified)."""
    if prep.zero:
        return MethodResult(0.0, details={"note": "a weight matrix is zero: the network is constant"})
    if prep.L == 1:
        v = prep.unscale(single_matrix_bound(prep))
        return MethodResult(v, details={"note": "a single matrix: ||W||_2 (SVD, relative margin 1e-12)"})
    return None


# float64 rate of the full-LMI eigenvalue check (numpy eigvalsh, ~9 N^3 flop): N = 1296 measured 0.9 s
FULL_CHECK_FLOP_RATE = 1.5e10


def _finish(prep, cr: ChainResult, ctx, details: dict, status: str = "ok") -> MethodResult:
    """Certified result: value of the original chain, multipliers, optional full-LMI eigenvalue check."""
    value = prep.unscale(cr.value_hat)
    details = dict(details)
    if prep.unstable is not None:
        details["local_slopes"] = {"source": "derivative ranges on CROWN pre-activation bounds of the box",
                                   "unstable_per_layer": list(prep.unstable), "model": prep.slope_model}
    details["value_normalised"] = cr.value_hat
    details["log_weight_scale"] = prep.log_scale
    details["certificate"] = "cholesky"
    if cr.repaired:
        details["repaired_stages"] = cr.repaired
    if cr.cut_at is not None:
        status = "time_limit"
        details["cut_after_layer"] = cr.cut_at
        details["note"] = ("time limit inside the decomposition: the remaining layers are bounded by "
                           "Frobenius norms")
    N = prep.widths[0] + prep.n_hidden
    if cr.cut_at is None:
        check_s = 9.0 * float(N) ** 3 / FULL_CHECK_FLOP_RATE
        if N <= ctx.option("full_check_max") and check_s > ctx.time_left():
            details["full_lmi_check"] = (f"skipped: the time limit (an estimated {check_s:.2g} s; the certificate "
                                         "is the Cholesky decomposition)")
        elif N <= ctx.option("full_check_max"):
            lmin = full_lmi_min_eig(prep, cr.Ls, cr.value_hat)
            details["full_lmi_min_eig"] = lmin
            if lmin < -1e-8:
                raise MethodFailed(f"the assembled LipSDP-Neuron matrix has eigenvalue {lmin:.3g} < 0 although the "
                                   "decomposition succeeded: no bound claimed")
            details["certificate"] = "cholesky+eigenvalues"
        # the LipSDP-Neuron multipliers of the original network: T_k = rho L_k / 2 with rho = value^2
        rho = value * value
        Lorig = prep.original_multipliers(cr.Ls)
        details["multipliers"] = np.concatenate([rho * l / 2 for l in Lorig]) if Lorig else np.zeros(0)
    return MethodResult(value, status=status, details=details)


def _slope_models(prep, ctx) -> list:
    """The Prepared chains to try: one for a global bound; on a box, per the ``slopes`` option, the
    relaxed local model and the global one (auto: the smaller bound wins, so a local bound is never above
    the global one of the same method), or a single model."""
    if prep.slope_bounds is None:
        return [prep]
    which = ctx.option("slopes")
    names = ["relaxed", "global"] if which == "auto" else [which]
    return [prep.with_slopes(n) for n in names]


def _run_policy(net, ctx, make_policy, details=None):
    """One closed-form policy (on a box: for each slope model, the smallest value kept)."""
    return _min_over(net, ctx, [(ctx.method or "policy", make_policy)], details, member_details=False)


# --------------------------------------------------------------------------------------------------
# Closed forms
# --------------------------------------------------------------------------------------------------

# family="sdp_family": the name `lipbound methods` has always shown (the CLI's JSON output is a contract)
_REG = dict(kind="upper", norms=(2,), regions=("global",), ops=OPS, activations=ALL_ACTIVATIONS, family="sdp_family")
# the methods that run the exact decomposition with their own multipliers also bound a box region: there
# every neuron gets the slope range of its activation on certified pre-activation bounds (local_slopes)
_REG_BOX = {**_REG, "regions": ("global", "box")}


@register_method("eclipse-fast", description="ECLipsE-Fast: closed-form LipSDP-Neuron feasible point, "
                 "L_k = I / (2 lambda_max(K_k)) (no solver)", options=dict(COMMON_OPTIONS), **_REG_BOX)
def eclipse_fast(net, ctx):
    """Certified upper bound on the global l2 Lipschitz constant (ECLipsE-Fast, Xu & Sivaranjani 2024).
    Cost: O(sum n_k^3) (one Cholesky, one triangular solve and one Gram product per layer)."""
    return _run_policy(net, ctx, lambda prep: policy_g1(0.5))


@dataclass
class _Best:
    """The outcome of `_best_closed_form`: the smallest certified result, its key and chain, every member's
    value (or failure) and time, and whether ``stop`` ended the run early."""

    cr: ChainResult | None = None
    name: str | None = None
    prep: Prepared | None = None
    values: dict = field(default_factory=dict)
    times: dict = field(default_factory=dict)
    stopped: bool = False


def _best_closed_form(candidates, ctx, *, stop=None, keep_cut: bool = False, before=None) -> _Best:
    """Run each candidate (key, Prepared chain, policy factory) through the certificate (`run_chain`) and
    keep the smallest certified value. A member whose certificate fails is recorded as failed and skipped.
    ``stop()`` is asked before each member once a value exists (True ends the run, ``stopped`` set). A
    result cut by the time limit (``cut_at``) counts only while no uncut one exists, and only with
    ``keep_cut``. ``before(key, times)`` is asked like ``stop`` with the next member's key and the times
    so far: True skips that member only (``stopped`` set; a cheaper later one may still fit). Cost: one
    `run_chain` per candidate."""
    out = _Best()
    for key, prep, make in candidates:
        if out.cr is not None and stop is not None and stop():
            out.stopped = True
            break
        if out.cr is not None and before is not None and before(key, out.times):
            out.stopped = True
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            cr = run_chain(prep, make(prep), ctx=ctx)
        except MethodFailed as e:
            out.values[key] = f"failed: {e}"
            continue
        finally:
            out.times[key] = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
        out.values[key] = prep.unscale(cr.value_hat)
        if cr.cut_at is not None and (not keep_cut or out.cr is not None):
            continue
        if out.cr is None or out.cr.cut_at is not None or cr.value_hat < out.cr.value_hat:
            out.cr, out.name, out.prep = cr, key, prep
    return out


def _min_over(net, ctx, members: list, details: dict | None = None, member_details: bool = True):
    """Run several policies (name, policy factory), on every slope model of a box region, and return the
    smallest certified value."""
    with blas_threads(_threads(ctx, net)):
        prep0 = _prepare(net, ctx)
        triv = _trivial(prep0)
        if triv is not None:
            return triv
        _refuse_if_one_pass_overruns(prep0, ctx)
        models = _slope_models(prep0, ctx)
        if callable(members):
            members = members(prep0)
        cands = [(name if len(models) == 1 else f"{name} [{prep.slope_model} slopes]", prep, make)
                 for prep in models for name, make in members]
        best = _best_closed_form(cands, ctx, stop=ctx.out_of_time, keep_cut=True)
        if best.cr is None:
            raise MethodFailed("no member of the family produced a certified value")
        d = dict(details or {})
        if member_details or len(best.values) > 1:
            d["members"] = best.values
            d["member_times"] = best.times
            d["best_member"] = best.name
        return _finish(best.prep, best.cr, ctx, d, "time_limit" if best.stopped else "ok")


@register_method("eclipse-g1", description="closed-form family G1: L_k = c I / lambda_max(K_k), min over a grid "
                 "of step sizes c (c = 1/2 is ECLipsE-Fast)",
                 options={**COMMON_OPTIONS, "c": Option(FLOATS, G1_GRID, "step size(s) c of G1: one, or a list "
                                                        "(the minimum over them)", min=0, max=1, min_exclusive=True,
                                                        max_exclusive=True)}, **_REG_BOX)
def eclipse_g1(net, ctx):
    """Certified upper bound on the global l2 Lipschitz constant: the minimum over step sizes c of the G1
    closed form (reconstruction of Syed & Hu 2025). Cost: O(sum n_k^3) per step size."""
    c = ctx.option("c")  # validated: each in (0, 1)
    grid = tuple(c) if isinstance(c, tuple) else (c,)
    return _min_over(net, ctx, [(f"c={v:g}", (lambda prep, v=float(v): policy_g1(v))) for v in grid],
                     {"grid": list(grid)})


def _g2_method(kind):
    def fn(net, ctx):
        c = ctx.option("c")  # validated: in (0, 1)
        return _run_policy(net, ctx, lambda prep: policy_g2(kind, c), {"scaling": kind, "c": c})

    fn.__name__ = f"eclipse_g2_{kind}"
    fn.__doc__ = (f"Certified upper bound on the global l2 Lipschitz constant: closed form G2 with the {kind} "
                  "diagonal scaling, L_k = c P / lambda_max(P^1/2 K_k P^1/2). Cost: O(sum n_k^3).")
    return fn


for _kind, _desc in (("balance", "p_j = sqrt(||W_{k+1}[:,j]||^2 / K_jj)"), ("jacobi", "p_j = 1 / K_jj"),
                     ("gershgorin", "p_j = 1 / sum_l |K_jl|")):
    register_method(f"eclipse-g2-{_kind}", description=f"closed-form family G2: diagonal scaling {_desc}, "
                    "L_k = c P / lambda_max(P^1/2 K P^1/2)",
                    options={**COMMON_OPTIONS, "c": Option(float, 0.5, "step size c", min=0, max=1,
                                                           min_exclusive=True, max_exclusive=True)},
                    **_REG_BOX)(_g2_method(_kind))


@register_method("eclipse-g3", description="closed-form family G3: per layer the scalar multiplier minimising the "
                 "next layer's lambda_max (safeguarded secant search on its convex objective, one tridiagonal reduction "
                 "per layer)",
                 options={**COMMON_OPTIONS, "iters": Option(int, 24, "search steps per layer (at most iters + 1 "
                                                              "evaluations)", min=0)},
                 **_REG_BOX)
def eclipse_g3(net, ctx):
    """Certified upper bound on the global l2 Lipschitz constant: greedy scalar multipliers (G3). Cost:
    O(sum n_k^3): one tridiagonal reduction per layer plus 6-10 tridiagonal solves and Lanczos runs (about 4
    certified passes of eclipse-fast)."""
    it = ctx.option("iters")
    return _run_policy(net, ctx, lambda prep: policy_g3(None, it))


@register_method("eclipse-g3-balance", description="G3 search in the balance-scaled coordinates of G2 "
                 "(L_k = s P_balance, s chosen greedily)",
                 options={**COMMON_OPTIONS, "iters": Option(int, 24, "search steps per layer (at most iters + 1 "
                                                              "evaluations)", min=0)},
                 **_REG_BOX)
def eclipse_g3_balance(net, ctx):
    """Certified upper bound on the global l2 Lipschitz constant: G3's greedy scalar search along the G2
    balance scaling. Cost: as eclipse-g3."""
    it = ctx.option("iters")
    return _run_policy(net, ctx, lambda prep: policy_g3("balance", it))


_MEMBERS_OPTION = Option(str, "auto", "closed-form members: auto (= all: every member, wide layers included; a G3 "
                         "search costs about 4 passes of eclipse-fast), all, or cheap (no G3 searches)",
                         choices=("auto", "all", "cheap"))


def _which_members(ctx, prep) -> str:
    which = ctx.option("members")  # validated: auto, all or cheap
    return "all" if which == "auto" else which


@register_method("eclipse-family", description="minimum over every closed-form member (ECLipsE-Fast, G1 grid, "
                 "G2 balance/Jacobi/Gershgorin, G3, G3-balance)",
                 options={**COMMON_OPTIONS, "members": _MEMBERS_OPTION}, **_REG_BOX)
def eclipse_family(net, ctx):
    """Certified upper bound on the global l2 Lipschitz constant: the minimum over the closed-form family.
    Never above ECLipsE-Fast (its first member). Cost: about ten closed-form passes, O(sum n_k^3) each;
    under a time limit the members not yet run are skipped (status time_limit)."""
    return _min_over(net, ctx, lambda prep: family_members(_which_members(ctx, prep)))


# --------------------------------------------------------------------------------------------------
# ECLipsE (one SDP per layer)
# --------------------------------------------------------------------------------------------------


@register_method("eclipse", description="ECLipsE: one small SDP per layer (cvxpy), certified by the exact "
                 "decomposition; layers after a time limit use the ECLipsE-Fast choice",
                 options={**COMMON_OPTIONS,
                          "solver": Option(str, "auto", "per-layer SDP solver: auto (clarabel for per-layer LMIs up to "
                                           "size 60, else scs with eps 1e-5 and 5000 iterations), scs or clarabel",
                                           choices=("auto", *cvx.BACKENDS)),
                          "max_stage_width": Option(int, ECLIPSE_MAX_WIDTH, "refuse hidden layers wider than this",
                                                    min=1),
                          "verbose": Option(bool, False, "solver output")}, **_REG_BOX)
def eclipse(net, ctx):
    """Certified upper bound on the global l2 Lipschitz constant (ECLipsE, Xu & Sivaranjani 2024).
    Cost: L-1 SDPs of size about 2 n_k with n_k + 1 variables (interior point: O(n_k^6) worst case)."""
    from .solvers import eclipse_stage_policy

    stats = {}
    with blas_threads(_threads(ctx, net)):
        prep = _slope_models(_prepare(net, ctx), ctx)[0]
        triv = _trivial(prep)
        if triv is not None:
            return triv
        mw = ctx.option("max_stage_width")
        widest = max(prep.widths[1:-1])
        if widest > mw:
            raise Unsupported(f"a hidden layer has {widest} neurons (> max_stage_width={mw}): the per-layer SDP "
                              "is too slow through cvxpy and cannot be interrupted (option max_stage_width)")
        pol = eclipse_stage_policy(ctx.option("solver"), ctx.option("verbose"), stats)
        cr = run_chain(prep, pol, ctx=ctx, fallback=policy_g1(0.5))
        status = "time_limit" if stats.get("sdp_stages", 0) < prep.L - 1 else "ok"
        if status == "time_limit":
            stats["note"] = "time limit: the layers after it used the ECLipsE-Fast multipliers"
        return _finish(prep, cr, ctx, {"solver": ctx.option("solver"), **stats}, status)


# --------------------------------------------------------------------------------------------------
# LipSDP (cvxpy)
# --------------------------------------------------------------------------------------------------


def _lipsdp(net, ctx, layer: bool):
    from .solvers import solve_lipsdp

    with blas_threads(_threads(ctx, net)):
        prep = prepare(net, ctx)
        triv = _trivial(prep)
        if triv is not None:
            return triv
        split = ctx.option("split")  # validated: None or >= 1
        solver = ctx.option("solver")
        max_neurons = ctx.option("max_neurons")
        L = prep.L
        size = 2 if split is None else split
        chunks = [(0, L)] if split is None else [(i, min(i + size, L)) for i in range(0, L, size)]
        for a, b in chunks:
            N = prep.widths[a] + sum(prep.widths[a + 1:b])
            if N > max_neurons:
                raise Unsupported(f"the LipSDP LMI would have size {N} (> max_neurons={max_neurons}): cvxpy with "
                                  f"{solver} needs minutes to hours and much memory there and cannot be "
                                  "interrupted by the time limit (option max_neurons to override, split=k to cut "
                                  "the network, or use lipsdp-opt)")
        log_total, details, raw_log = 0.0, {"solver": solver, "chunks": []}, 0.0
        full_Ls = None
        for ci, (a, b) in enumerate(chunks):
            sub = Prepared(prep.Ws[a:b], prep.scales[a:b], prep.alphas[a:b - 1], prep.betas[a:b - 1])
            if b - a == 1:
                v = single_matrix_bound(sub)
                details["chunks"].append({"layers": [a + 1, b], "value_normalised": v})
                log_total += math.log(v)
                raw_log += math.log(v)
            else:
                tl = ctx.time_left()
                Ls, rho, info = solve_lipsdp(sub, layer=layer, solver=solver, verbose=ctx.option("verbose"),
                                             time_limit=tl if math.isfinite(tl) else None)
                try:
                    cr = run_chain(sub, None, fixed=Ls)
                except CertificateError as e:
                    raise MethodFailed(f"the solver's multipliers fail the certificate check: {e}") from None
                info.update({"layers": [a + 1, b], "solver_value_normalised": math.sqrt(rho),
                             "certified_value_normalised": cr.value_hat, "repaired_stages": cr.repaired})
                details["chunks"].append(info)
                log_total += math.log(cr.value_hat) if cr.value_hat > 0 else -math.inf
                raw_log += 0.5 * math.log(rho)
                if len(chunks) == 1:
                    full_Ls = (sub, cr)
            if b < L:  # an activation on the cut: its largest |slope|
                f = prep.slope_max(b - 1)
                log_total += math.log(f) if f > 0 else -math.inf
                raw_log += math.log(f) if f > 0 else -math.inf
        details["solver_value"] = math.exp(raw_log + prep.log_scale)
        if full_Ls is not None:
            sub, cr = full_Ls
            res = _finish(prep, cr, ctx, details)
            res.details["solver_value"] = details["solver_value"]
            return res
        value = math.exp(log_total + prep.log_scale) if math.isfinite(log_total) else 0.0
        details["certificate"] = "cholesky per chunk (product of chunk bounds)"
        return MethodResult(value, details=details)


_LIPSDP_OPTIONS = {**_CHAIN_OPTIONS,
                   "solver": Option(str, "scs", "SDP solver: scs (eps 1e-6, 50000 iterations) or clarabel",
                                    choices=tuple(cvx.BACKENDS)),
                   "split": Option(int, None, "cut into chunks of k weight matrices and multiply the chunk bounds "
                                   "(auto: no split)", min=1),
                   "max_neurons": Option(int, LIPSDP_MAX_NEURONS, "refuse LMIs larger than this", min=1),
                   "verbose": Option(bool, False, "solver output")}


@register_method("lipsdp-neuron", description="LipSDP-Neuron (Fazlyab et al. 2019) through cvxpy, the solver's "
                 "multipliers re-certified in float64", options=_LIPSDP_OPTIONS, **_REG)
def lipsdp_neuron(net, ctx):
    """Certified upper bound on the global l2 Lipschitz constant: LipSDP-Neuron solved by cvxpy (SCS by
    default), then re-certified by the exact decomposition (the reported value is the certified one; the raw
    solver value is details['solver_value']). Cost: one SDP of size n0 + hidden neurons (memory O(N^2)
    to O(N^4) in the solver); refused above max_neurons."""
    return _lipsdp(net, ctx, layer=False)


@register_method("lipsdp-layer", description="LipSDP-Layer (one multiplier per layer) through cvxpy, re-certified "
                 "in float64", options=_LIPSDP_OPTIONS, **_REG)
def lipsdp_layer(net, ctx):
    """Certified upper bound on the global l2 Lipschitz constant: LipSDP-Layer (scalar multiplier per layer),
    solved by cvxpy and re-certified. Cost: one SDP of size n0 + hidden neurons with L-1 variables."""
    return _lipsdp(net, ctx, layer=True)


# --------------------------------------------------------------------------------------------------
# lipsdp-opt
# --------------------------------------------------------------------------------------------------


# lipsdp-opt: above this many hidden neurons the PD-by-construction phase runs before the barrier phase
# (measured: on small nets the barrier alone is faster; on ACAS Xu / MNIST the direct phase gets within
# ~1% in a few iterations, which matters under a time limit)
OPT_DIRECT_FIRST = 200


@register_method("lipsdp-opt", description="all LipSDP-Neuron multipliers of the exact decomposition optimised "
                 "jointly (log-det barrier path following by L-BFGS, torch float64 autograd) from the best closed "
                 "form; every iterate Cholesky-checked, the best certified",
                 options={**COMMON_OPTIONS,
                          "budget": Option(float, None, "seconds for the start and the optimisation (auto: 120 "
                                           "without a time limit, the time left with one); running out gives status "
                                           "time_limit with the best bound. Without a time limit the closed-form "
                                           "start always runs every member (the value is never above "
                                           "eclipse-family's)", min=0),
                          "max_iter": Option(int, 5000, "L-BFGS iterations in total", min=1),
                          "start": Option(str, "family", "start point: family (the best closed-form member) or "
                                          "fast (ECLipsE-Fast)", choices=("family", "fast")),
                          "members": Option(str, "auto", "closed-form members of the start (as eclipse-family)",
                                            choices=("auto", "all", "cheap")),
                          "phases": Option(str, "auto", "barrier (path following of the log-det barrier, reaches "
                                           "the LipSDP-Neuron optimum), direct (only the PD-by-construction "
                                           "parameterisation, stalls above it), both (direct until it slows down, "
                                           f"then barrier) or auto (barrier up to {OPT_DIRECT_FIRST} hidden neurons, "
                                           "else both)", choices=("auto", "barrier", "direct", "both")),
                          "rtol": Option(float, 2e-5, "target relative accuracy of the bound: the barrier path ends "
                                         "at eps = 2 rtol in log F; direct phase: stop when the bound improved by "
                                         "less than this over 10 iterations", min=0, min_exclusive=True),
                          "gap_tol": Option(float, 1e-3, "stop the barrier path once value / sdp_lower - 1 <= gap_tol, "
                                            "sdp_lower being a certified lower bound on the LipSDP-Neuron optimum "
                                            "from a float64-checked dual point (global bounds, LMI size <= "
                                            "full_check_max)", min=0, min_exclusive=True)},
                 **_REG_BOX)
def lipsdp_opt(net, ctx):
    """Certified upper bound on the l2 Lipschitz constant (global, or local on a box with per-neuron slopes):
    the multipliers of the exact LipSDP-Neuron decomposition optimised jointly, started from the best
    closed-form member, by following the central path of the log-det barrier of the (rescaled) LipSDP-Neuron
    LMI, which is convex in the multipliers (alpha*beta term included, so leaky ReLU too); its limit is the
    LipSDP-Neuron optimum (measured within ~1e-4 of Clarabel). On a box, the local slope model (each
    neuron's derivative range) and the relaxed one each get a share of the time, and the smaller certified
    value wins. Anytime: every evaluated point passes its Cholesky factorisations and the best one is kept;
    at the time limit the best so far is returned (status time_limit). The final multipliers are
    re-certified by the float64 decomposition.
    Global bounds with an LMI of size <= full_check_max also get details['sdp_lower'], a certified LOWER bound
    on the LipSDP-Neuron optimum (NOT on the Lipschitz constant; never the Bound's ``lower``) from a
    Newton-centred dual point checked in float64 (`dual`, reference §10), and sdp_gap = value / sdp_lower - 1;
    the path stops once sdp_gap <= gap_tol.
    Never above its start (details['family_value'], the best closed form of this run; details['value_from']
    names the member or phase that produced the value). Time limit: every phase checks the clock against
    the measured cost of a closed-form pass (members that would not fit are skipped and listed in
    start_members_skipped; no optimiser evaluation is started that would end after the deadline; the
    re-certification of an optimised point, which is not certified when found, is reserved in the budget;
    the optional full-LMI check is skipped when it does not fit); when not even one closed-form pass can
    end within the limit's tolerance the method refuses up front (unsupported, with the estimate).
    Cost per iteration: forward + backward through O(L) Cholesky factorisations (O(sum n_k^3)); the dual:
    dense Newton steps, O(N^3 + N^2 n_h + n_h^3) each (N = n_0 + hidden neurons, n_h hidden neurons)."""
    with blas_threads(_threads(ctx, net)):  # sets torch's threads too
        prep0 = _prepare(net, ctx)
        triv = _trivial(prep0)
        if triv is not None:
            return triv
        phases = ctx.option("phases")  # validated: auto, barrier, direct or both
        t_begin = time.perf_counter()
        _refuse_if_one_pass_overruns(prep0, ctx)
        left = ctx.time_left()
        # the budget applies when there is no time limit; with one, the time left (minus a margin for the
        # final certificate) unless a budget is also given explicitly
        budget = ctx.option("budget")
        if budget is None:
            budget = math.inf if math.isfinite(left) else 120.0
        by_time_limit = math.isfinite(left) and left - 0.05 * (ctx.time_limit or 0) - 0.5 <= budget
        if math.isfinite(left):
            budget = min(budget, left - 0.05 * (ctx.time_limit or 0) - 0.5)
        if prep0.slope_bounds is None:
            models = [prep0]
        else:
            which = ctx.option("slopes")
            models = [prep0.with_slopes(w) for w in (["local", "relaxed"] if which == "auto" else [which])]
        runs = []
        if prep0.slope_bounds is not None and ctx.option("slopes") == "auto":
            # the global closed forms as a floor: a local bound is never above the global family's
            g = prep0.with_slopes("global")
            fl = _best_closed_form([(name, g, make) for name, make in family_members(_which_members(ctx, g))], ctx)
            if fl.cr is not None:
                runs = [(g, fl.cr, {"start_member": fl.name, "note": "global closed form (no optimisation)"}, "ok")]
        floor = list(runs)
        for i, prep in enumerate(models):
            share = (budget - (time.perf_counter() - t_begin)) / (len(models) - i)
            if len(runs) > len(floor) and share <= 0:
                break
            runs.append(_opt_one(prep, ctx, phases, share, by_time_limit))
        prep, final, details, status = min(runs, key=lambda r: r[1].value_hat)
        if len(runs) > 1:
            details["slope_models"] = {("global closed form" if any(r is f for f in floor) else r[0].slope_model):
                                       r[0].unscale(r[1].value_hat) for r in runs}
            if len(runs) - len(floor) < len(models) or any(r[3] != "ok" for r in runs):
                status = "time_limit"
        return _finish(prep, final, ctx, details, status)


def _certified_better(prep, Ls, key: str, final: ChainResult, details: dict, best_log: float | None = None
                      ) -> ChainResult:
    """Re-certify an optimiser's multipliers by the float64 decomposition; the better of that and ``final``
    (the failure or the value recorded in ``details`` under ``key``; ``details['value_from']`` names the
    winner). The optimisers' points are NOT certified when found (torch Cholesky factorisations without the
    rounding margins of `certificate`), so this step is never skipped for a candidate that may win; it is
    skipped when the optimiser's own ``best_log`` (log g_max) shows no improvement on ``final`` (it then
    returned the start point). Cost: one `run_chain` with fixed multipliers."""
    if Ls is None:
        return final
    if best_log is not None and not best_log < 2 * math.log(final.raw_hat):
        details[key + "_value"] = "no improvement on the start (not re-certified)"
        return final
    try:
        cr = run_chain(prep, None, fixed=Ls)
    except (MethodFailed, CertificateError) as e:
        details[key + "_check_failed"] = str(e)
        return final
    details[key + "_value"] = prep.unscale(cr.value_hat)
    if cr.value_hat < final.value_hat:
        details["value_from"] = key
        return cr
    return final


# lipsdp-opt's clock (measured on cifar_base_kw folded to a dense chain, 3072-2048-1024-100-10, and on
# mnist-net_256x2): one evaluation of the direct phase (autograd through eigvalsh) costs ~7 closed-form
# passes (`run_chain`), one barrier evaluation ~2.7, the re-certification of a point one; `t_rc` below is
# the measured time of the first closed-form member of the run. These are only the estimates before the
# first evaluation; `barrier._lbfgs` measures the evaluations and starts none that would end after its
# deadline.
OPT_DIRECT_EVAL_PASSES = 8.0
OPT_BARRIER_EVAL_PASSES = 3.0
OPT_RECERT_PASSES = 1.5
# refuse up front (Unsupported) when even the first closed-form pass is estimated to end after the time
# limit's tolerance (10% + 1 s), at this optimistic float64 rate (flop/s; ECLipsE-Fast on cifar_base_kw ran
# at 10-18 GFLOP/s of `_chain_flops` on the 2-core machine)
OPT_FLOP_RATE = 2e10


def _chain_flops(prep) -> float:
    """Rough float64 flop count of one `run_chain` (triangular solve, Gram product, Cholesky and a
    Lanczos lambda_max per hidden layer; the final Gram matrix and its eigenvalues)."""
    w = [float(x) for x in prep.widths]
    f = 0.0
    for k in range(1, len(w) - 1):
        n_in, n = w[k - 1], w[k]
        f += (n_in * n_in * n if k > 1 else 0.0) + n_in * n * n + n ** 3 / 3 + 160 * n * n
    n_in, n = w[-2], w[-1]
    f += n_in * n_in * n + n_in * n * n + 9 * n ** 3
    return f


# a G3 member (an eigendecomposition and ~26 eigenvalue problems per layer) measured 20x ECLipsE-Fast on
# eclipse_network(30, 300); the other members cost about one pass
G3_PASSES = 4.0


def _member_estimate(key: str, times: dict) -> float:
    """Seconds the closed-form member ``key`` is expected to take, from the members' ``times`` so far
    (`_Best.times`): the slowest one of its kind (G3 search or not) x1.2, else G3_PASSES first passes."""
    is_g3 = key.startswith("eclipse-g3")
    same = [v["wall_s"] for k, v in times.items() if k.startswith("eclipse-g3") == is_g3]
    if same:
        return 1.2 * max(same)
    first = next(iter(times.values()))["wall_s"] if times else 0.0
    return first * (G3_PASSES if is_g3 else 1.5)


def _run_phases(prep, final: ChainResult, phases: str, budget: float, max_iter: int, rtol: float, details: dict,
                tracker=None, t_rc: float = 0.0):
    """lipsdp-opt's optimisation from ``final`` within ``budget`` seconds, re-certification included: the
    direct phase (PD by construction) and / or the barrier path, each result re-certified. ``tracker``
    (`dual.DualTracker`) stops the path on the certified duality gap. ``t_rc``: seconds of one closed-form
    pass (`run_chain`), from which the first evaluation of each phase and its re-certification are
    estimated: a phase that cannot fit one evaluation plus the re-certification is skipped
    (details[phase] = {"skipped": ...}). Returns (best ChainResult, whether a phase stopped on its time)."""
    from .barrier import optimise, polish

    t_opt = time.perf_counter()
    deadline = t_opt + budget
    recert = OPT_RECERT_PASSES * t_rc + 0.02
    hit_limit = False
    if phases in ("direct", "both"):
        share = budget if phases == "direct" else 0.5 * budget
        first = (OPT_DIRECT_EVAL_PASSES + 1.0) * t_rc  # init_params (about one pass) and one evaluation
        if share - recert < first:
            details["direct"] = {"skipped": f"time: one evaluation ~{first:.3g} s plus the re-certification "
                                            f"~{recert:.3g} s do not fit in {max(share, 0.0):.3g} s"}
            hit_limit = True
        else:
            try:
                Ls_opt, hist = optimise(prep, final.Ls, time_budget=share - recert, max_iter=max_iter,
                                        rtol=2 * (rtol if phases == "direct" else max(rtol, 5e-4)),
                                        eval_estimate=OPT_DIRECT_EVAL_PASSES * t_rc)
            except (RuntimeError, ValueError, np.linalg.LinAlgError) as e:  # numerical failure: keep the best
                Ls_opt, hist = None, {"failed": f"{type(e).__name__}: {e}"[:300]}
            details["direct"] = hist
            final = _certified_better(prep, Ls_opt, "direct", final, details, hist.get("best_log"))
            hit_limit = hist.get("time_s", 0) >= (share - recert) * 0.98 or bool(hist.get("time_cut"))
    if phases in ("barrier", "both"):
        remaining = deadline - time.perf_counter() - recert
        first = OPT_BARRIER_EVAL_PASSES * t_rc
        if remaining >= first and remaining > 0:
            try:
                Ls_opt, hist = polish(prep, final.Ls, time_budget=remaining, eps_final=2 * rtol, max_iter=max_iter,
                                      stage_hook=tracker, eval_estimate=first)
            except (RuntimeError, ValueError, np.linalg.LinAlgError) as e:
                Ls_opt, hist = None, {"failed": f"{type(e).__name__}: {e}"[:300]}
            details["barrier"] = hist
            final = _certified_better(prep, Ls_opt, "barrier", final, details, hist.get("best_log"))
            hit_limit = ((hist.get("time_s", 0) >= remaining * 0.98 or bool(hist.get("time_cut")))
                         and not hist.get("stopped_by_gap"))
        else:
            details["barrier"] = {"skipped": f"time: one evaluation ~{first:.3g} s plus the re-certification "
                                             f"~{recert:.3g} s do not fit in {max(remaining + recert, 0.0):.3g} s"}
            hit_limit = True
    return final, hit_limit


def _summarise_phases(details: dict, phases: str) -> None:
    """The optimisation summary under the key of earlier versions (JSON contract), the phases' histories
    inside, and the re-certification failures if any."""
    phase_hists = {k: details[k] for k in ("direct", "barrier") if k in details}
    details["optimisation"] = {
        **{k: sum(h.get(k, 0) for h in phase_hists.values())
           for k in ("iterations", "evaluations", "infeasible_evaluations")},
        "time_s": details["optimisation_time_s"], "phases": phases,
        "best_log": min([h.get("best_log", math.inf) for h in phase_hists.values()] + [math.inf]),
        **phase_hists}
    failed = [details[k] for k in ("direct_check_failed", "barrier_check_failed") if k in details]
    if failed:
        details["optimised_check_failed"] = "; ".join(failed)


def _dual_tracker(prep, ctx, deadline):
    """(the duality-gap tracker of lipsdp-opt, `dual.DualTracker`, or None; why there is none): box regions
    (per-neuron slopes) and LMIs above full_check_max (the dual is checked densely) get no dual.
    ``deadline()``: the perf_counter time at which the Newton path must stop (the re-certification of the
    centred point and the final checks follow)."""
    from .dual import DualTracker

    N = prep.widths[0] + prep.n_hidden
    if prep.slope_bounds is not None:
        return None, "no sdp_lower on box regions (the dual check covers global slopes only)"
    if N > ctx.option("full_check_max"):
        return None, (f"no sdp_lower: LMI size {N} > full_check_max={ctx.option('full_check_max')} (the dual point "
                      "is built and checked densely; a block-tridiagonal check is not implemented)")
    return DualTracker(prep, ctx.option("gap_tol"), deadline=deadline), None


def _finish_dual(prep, final: ChainResult, tracker, ctx, details: dict) -> ChainResult:
    """After the path: one more dual evaluation at the final point unless the gap is already met (t of the
    last barrier stage, else nu / gap_tol), the centred multipliers re-certified as a primal candidate,
    and sdp_lower / sdp_gap reported (see `dual.DualTracker.details`)."""
    if tracker.gap(final.value_hat) > tracker.gap_tol and time.perf_counter() < tracker.deadline():
        eps = details.get("barrier", {}).get("final_eps", tracker.gap_tol)
        tracker.evaluate(final.Ls, tracker.nu / eps)
    if tracker.best_Ls is not None and tracker.best_value_hat < final.value_hat:  # certified in `_one`
        final = _certified_better(prep, tracker.best_Ls, "newton_centred", final, details)
    details.update(tracker.details(prep.unscale(final.value_hat)))
    return final


def _opt_one(prep, ctx, phases: str, budget: float, by_time_limit: bool):
    """lipsdp-opt on one slope model within ``budget`` seconds (closed-form start, optimisation and
    re-certification included; `_finish`'s optional full-LMI check is skipped when it does not fit):
    (prep, best ChainResult, details, status).

    The value is never above the start: the start is the best closed-form member certified in this run
    (with start=family every member of eclipse-family that fits in the budget, all of them without a time
    limit) and an optimised point replaces it only when its float64 re-certification is smaller
    (details['value_from'] names the winner, details['family_value'] the start's value)."""
    if phases == "auto":  # phase 1 drops the alpha*beta term, which is all a local linear neuron offers
        phases = "barrier" if prep.n_hidden <= OPT_DIRECT_FIRST or prep.slope_model == "local" else "both"
    start = ctx.option("start")
    members = family_members(_which_members(ctx, prep)) if start == "family" else family_members()[:1]
    t0 = time.perf_counter()
    t_end = t0 + budget
    if by_time_limit:
        start_end = t_end
    elif ctx.time_limit is not None:  # an explicit budget below the time limit bounds only the optimisation
        start_end = t0 + ctx.time_left() - 0.05 * ctx.time_limit - 0.5
    else:
        start_end = math.inf

    def before(key, times):  # under a time limit the next member must end before it (with only a budget,
        # which bounds the optimisation, every member runs: the family is lipsdp-opt's floor)
        return ctx.out_of_time() or time.perf_counter() + _member_estimate(key, times) > start_end

    # keep_cut: a member cut by the time limit inside its decomposition is still a certified bound (Frobenius
    # tail; `_finish` reports it) and ends the start (`before`); nothing is optimised from it
    start_run = _best_closed_form([(name, prep, make) for name, make in members], ctx, before=before, keep_cut=True)
    best, best_name, values = start_run.cr, start_run.name, start_run.values
    if best is None:
        raise MethodFailed("no closed-form start point")
    t_start = time.perf_counter() - t0
    t_rc = start_run.times[members[0][0]]["wall_s"]  # one closed-form pass (ECLipsE-Fast) of this chain
    details = {"start_member": best_name, "start_value": prep.unscale(best.value_hat),
               "family_value": prep.unscale(best.value_hat), "value_from": best_name,
               "start_members": values, "start_time_s": t_start, "phases": phases}
    if start == "fast":
        details["start_note"] = ("start=fast: the start is ECLipsE-Fast alone, not the closed-form family, so the "
                                 "value is bounded by eclipse-fast's but not by eclipse-family's")
    elif start_run.stopped:
        skipped = [name for name, _ in members if name not in values]
        details["start_members_skipped"] = skipped
        details["start_note"] = (f"time: {len(skipped)} closed-form member(s) not run, so the value is bounded by "
                                 "the members run here, not necessarily by eclipse-family's")
    max_iter = ctx.option("max_iter")
    rtol = ctx.option("rtol")
    status = "ok"
    final = best
    t_opt = time.perf_counter()
    opt_budget = t_end - t_opt
    if start_run.stopped or opt_budget <= 0 or best.cut_at is not None:  # members skipped or no time left
        status = "time_limit"
        details["stopped_by"] = "time limit" if by_time_limit or best.cut_at is not None else "budget"
    if opt_budget > 0 and best.cut_at is None:
        recert = OPT_RECERT_PASSES * t_rc + 0.02
        tracker, why = _dual_tracker(prep, ctx, lambda: t_opt + opt_budget - recert)
        final, hit_limit = _run_phases(prep, final, phases, opt_budget, max_iter, rtol, details, tracker, t_rc)
        if tracker is not None:
            final = _finish_dual(prep, final, tracker, ctx, details)
        else:
            details["sdp_lower_note"] = why
        if hit_limit:  # stopped by the time limit or the budget before the path's end
            status = "time_limit"
            details["stopped_by"] = "time limit" if by_time_limit else "budget"
    details["optimised_value"] = prep.unscale(final.value_hat)
    details["optimisation_time_s"] = time.perf_counter() - t_opt
    _summarise_phases(details, phases)
    return prep, final, details, status
