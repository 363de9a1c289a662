"""Local Lipschitz bounds by bound propagation on the Clarke-Jacobian graph (Shi et al., NeurIPS 2022).

Methods (all ``upper``; box regions, and for crown / recurjac / ibp-jacobian also the global problem over
R^n, where no forward bounds exist and every neuron's Clarke derivative ranges over its activation's
global slope range; a "global" box over an input domain is just a box):
  * ``crown``: forward pre-activation bounds by CROWN (option ``alpha``: alpha-CROWN), then the
    backward (Clarke-Jacobian) graph bounded by CROWN with the exact chord relaxation of the product
    s*u and the chord of |v|, back-substituted to the one-hot start. All outputs in one batch.
  * ``crown-bab``: ``crown`` refined by branch and bound on the project's engine (`branch_and_bound`):
    input splitting for networks with few inputs, neuron splitting whose constraints propagate to the
    later layers' bounds otherwise, certified lower bounds inside the search; exact (with a witness) when
    the two ends meet; anytime, default 30 s when no time limit is given; see `bab`.
  * ``recurjac``: the same code with RecurJac's weaker relaxation (constant intervals for products
    whose gradient interval crosses 0).
  * ``ibp-jacobian``: interval forward bounds and interval propagation through the backward graph.

Norms: ``inf`` is the l_inf -> l_inf operator norm, max over outputs of ||grad f_j||_1 (the native
setting). ``2``: each output's ||grad f_j||_2 is bounded through the chord of v^2 (looser than the l_inf
setting: it bounds the l2 -> l_inf constant per output); with one output (``output=j`` or a one-output
net) this is the spectral norm; with several outputs the reported value is the smaller of sqrt(sum_j U_j^2),
a bound on the Frobenius norm, and the spectral norm of the interval Jacobian [vl, vu] (midpoint plus a
bound on the radius; exact when the Jacobian is decided): both bound the spectral norm of every Clarke
Jacobian. ``1``: the
l1 -> l1 norm, max over inputs i of sum_j |df_j/dx_i|, bounded by sum_j max|v_ji| over the per-entry
CROWN bounds (sound, loose; one output: max_i |v_i|).

Activations: every entry of the activation table (`lipbound.activations`), monotone or not. The Clarke
derivative s of an activation is bounded by the table's derivative range over the forward interval
(`fn.derivative_range`: ends, inflections and both one-sided slopes of every kink inside; s may be
negative) and the product s*u by the (projected) McCormick relaxation, i.e. the convex hull of {s u}
over the box, treating s as a free variable in its range (no back-substitution into the forward graph);
the forward bounds use the table's relaxations (`crown`). crown-bab splits only neurons of the ReLU-like
form max(z, 0) + a min(z, 0) (``fn.relu_like_slope``: relu, leaky_relu, abs); the others keep their
whole derivative range in every domain (sound, not refined). MaxPool2d (no padding, no dilation): first
rewritten as a tree of ReLUs, max(a, b) = b + relu(a - b) (`lipbound.maxpool_relu`). MaxMin: unsupported.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ...crown import forward_bounds
from ...maxpool_relu import expand_maxpool
from ...norms import INF, spectral_norm_certified
from ...registry import AFFINE_OPS, BOOL_OR_AUTO, MethodContext, MethodResult, Option, register_method
from ...registry import _region_key
from ...registry import ALL_ACTIVATIONS
from ...threads import FollowFreeCores, kept_torch_threads
from .graph import JacobianGraph

OPS = AFFINE_OPS | {"Activation", "Add", "MaxPool2d"}  # max pooling through `expand_maxpool`
# the family name shown by `lipbound methods` (the module's name before the methods/ sub-packages; the CLI's
# JSON output is a contract)
FAMILY = "local_crown"


class one_thread:
    """Run small bound propagations on one torch thread: their tensors are tiny and the thread
    synchronisation dominates on a busy machine (10x slower with two threads). Restores the setting."""

    def __init__(self, net, limit: int = 2_000_000):
        self.small = net.n_parameters() <= limit

    def __enter__(self):
        self.old = torch.get_num_threads()
        if self.small:
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        if self.small:
            torch.set_num_threads(self.old)
#: every activation of the table: the forward bounds need only the table's derivative ranges, default
#: slopes and line offsets, the Jacobian graph only derivative ranges (any sign: the product relaxations
#: are sign-agnostic); crown-bab splits the ReLU-like ones and bounds the others without splitting
ACTS = ALL_ACTIVATIONS
BAB_DEFAULT_TIME = 30.0
#: seconds of a Jacobian walk before (and between) readings of the free cores, whose count its torch threads
#: follow (`threads.FollowFreeCores`)
WALK_THREAD_CHECK_S = 2.0
_ALPHA = Option(bool, True, "optimise forward relaxation slopes (alpha-CROWN; false: plain CROWN)")


def _classes(net, ctx) -> list[int]:
    return [ctx.output] if ctx.output is not None else list(range(net.n_outputs))


def combine(per_class: torch.Tensor, entry_abs: torch.Tensor, norm, multi: bool, v=None) -> float:
    """The operator-norm bound from per-output bounds (see the module doc for each norm); in l2 with several
    outputs and the entry bounds ``v`` = (vl, vu) (rows: outputs), the smaller of the Frobenius bound and
    `interval_spectral_bound`."""
    if norm == 1:
        return float(entry_abs.sum(0).amax()) if multi else float(entry_abs.amax())
    if norm == 2 and multi:
        frob = float(torch.sqrt((per_class ** 2).sum()))
        return frob if v is None else min(frob, interval_spectral_bound(*v))
    return float(per_class.max())


def interval_spectral_bound(vl: torch.Tensor, vu: torch.Tensor) -> float:
    """Certified upper bound on ||J||_2 for every matrix J with vl <= J <= vu (rows: outputs): the spectral norm
    of the midpoint plus a bound on that of the radius matrix (|J - mid| <= rad entrywise, so ||J - mid||_2 <=
    ||rad||_2 <= min(||rad||_F, sqrt(||rad||_1 ||rad||_inf))). Exact when the Jacobian is decided (a box in one
    linear region), where the Frobenius bound of the per-output norms is not. Cost: one small Gram eigenproblem."""
    mid = ((vl + vu) / 2).numpy()
    rad = ((vu - vl) / 2).clamp(min=0).numpy()
    # the midpoint and radius are rounded: widen the radius by the rounding of their computation
    rad = rad + 4 * np.finfo(np.float64).eps * np.maximum(np.abs(vl.numpy()), np.abs(vu.numpy()))
    r = min(float(np.sqrt(np.sum(rad * rad))), float(np.sqrt(rad.sum(0).max() * rad.sum(1).max())))
    return (spectral_norm_certified(mid) + r) * (1 + 1e-12)


#: with a time limit T, the forward (alpha-)CROWN bounds stop at FORWARD_SHARE x T and the Jacobian-graph
#: back-substitutions at GRAPH_SHARE x T (both measured from the method's start); past them the interval
#: bounds already held are kept (sound, looser) and the status is time_limit. The rest of T covers the
#: interval passes that remain (about three network passes; at 0.8 most of that fifth went unused on conv
#: nets: cifar_base_kw global l_inf, crown at 50 s: 714 at 0.8, 706 at 0.9).
FORWARD_SHARE = 0.5
GRAPH_SHARE = 0.9

#: crown-bab's domains split per step (option ``batch``): input splitting amortises its batched passes over
#: many sub-boxes (ACAS Xu 1_1 eps 0.2 at 30 s: 55.9 with 128, 72.8 with 32); neuron splitting does better
#: splitting only the worst domains (mnist-net_256x2 l2 eps 0.05: 2.96 with 128, 2.59 with 32; the
#: VNN-LIB MNIST box: 214 with 128, 176 with 32, 175 with 8-16)
INPUT_BATCH, NEURON_BATCH = 128, 32


def share_deadline(ctx: MethodContext, share: float) -> float | None:
    """``ctx.start + share x time_limit`` (None without a time limit)."""
    return None if ctx.time_limit is None else ctx.start + share * ctx.time_limit


def cached_forward(net, ctx: MethodContext, how: str, alpha: bool, deadline: float | None):
    """(forward bounds, cut): `forward_bounds` through the blackboard's cache (`MethodContext.cached`:
    crown, crown-bab and recurjac share one computation), stopped at ``deadline`` (then ``cut`` is True:
    some neurons keep interval bounds, and the result is not left in the cache for later methods)."""
    what = f"forward:{how}" + (f":alpha={alpha}" if how == "crown" else "")
    info: dict = {}
    fwd = ctx.cached(net, what, lambda: forward_bounds(net, ctx.region, alpha=alpha, method=how, deadline=deadline,
                                                       info=info))
    cut = bool(info.get("cut"))
    if cut:
        ctx.shared.get("cache", {}).pop((id(net), _region_key(ctx.region), what), None)
    return fwd, cut


def run_propagation(net, ctx: MethodContext, mode: str):
    """Shared body of crown / recurjac / ibp-jacobian. Returns (value, details, graph, result).

    With a time limit the passes stop at their share of it (`FORWARD_SHARE`, `GRAPH_SHARE`) and keep the
    interval bounds they hold: the value stays certified and ``details["cut"]`` says where it stopped."""
    net = expand_maxpool(net)  # max pooling as ReLUs: the graph has no max-pooling rule
    t0 = time.perf_counter()
    alpha = ctx.option("alpha") if mode != "ibp" and ctx.region is not None else False
    how = "ibp" if mode == "ibp" else "crown"
    if ctx.region is None:  # global: no forward bounds, every neuron keeps its activation's global slope range
        fwd, fwd_cut = None, False
    else:
        fwd, fwd_cut = cached_forward(net, ctx, how, alpha, share_deadline(ctx, FORWARD_SHARE))
    t_fwd = time.perf_counter() - t0
    graph = JacobianGraph(net, fwd)
    graph.deadline = share_deadline(ctx, GRAPH_SHARE)
    # a walk longer than a few seconds takes the cores other processes leave free (resnet_2b global l1,
    # 36 s: 2435 on two threads where one thread reaches 3576); the callers restore the threads
    graph.threads = FollowFreeCores(WALK_THREAD_CHECK_S)
    classes = _classes(net, ctx)
    res = graph.bound(classes, ctx.norm, mode=mode)
    multi = len(classes) > 1
    value = combine(res.value, res.entry_abs, ctx.norm, multi, res.v)
    unstable = [int((graph.s[k][1] > graph.s[k][0]).sum()) for k in graph.acts]
    details = {
        "per_output": {int(j): float(v) for j, v in zip(classes, res.value)} if ctx.norm != 1 else None,
        "undecided_neurons": unstable,
        "forward": "global slope ranges" if fwd is None else
                   "interval" if mode == "ibp" else ("alpha-crown" if alpha else "crown"),
        "time_forward_s": t_fwd,
        "time_backward_s": time.perf_counter() - t0 - t_fwd,
    }
    if fwd_cut or graph.cut:
        details["cut"] = ", ".join(w for w, c in (("forward bounds", fwd_cut), ("Jacobian graph", graph.cut)) if c) \
            + " stopped at the time limit: interval bounds kept from there (certified, looser)"
    if ctx.norm in (1, 2):
        details["note"] = norm_note(ctx.norm, multi)
    return value, details, graph, res


def norm_note(norm, multi: bool) -> str:
    """What the value means in norms 2 and 1 (``details["note"]`` of crown, recurjac, ibp-jacobian)."""
    if norm == 1:
        return "norm 1: sum over outputs of per-entry bounds of |df_j/dx_i|, max over i (loose)"
    return ("norm 2: the l2 norm of each output's gradient (l2->linf per output); "
            + ("several outputs: the smaller of sqrt(sum_j U_j^2) (a Frobenius bound) and the spectral norm of "
               "the interval Jacobian (midpoint + radius)" if multi else "one output: equals the spectral norm"))


@register_method("crown", kind="upper", norms=(1, 2, INF), regions=("global", "box"), ops=OPS, activations=ACTS,
                 description="local bound: CROWN on the Clarke-Jacobian graph (Shi et al. 2022)",
                 options={"alpha": _ALPHA},
                 family=FAMILY)
def crown_method(net, ctx: MethodContext) -> MethodResult:
    """Certified upper bound on the local Lipschitz constant over a box (norm inf natively; 2 and 1
    looser, see module doc) by CROWN on the forward and on the Clarke-Jacobian graph.
    Cost: a few batched back-substitutions per activation layer (one per bounded entry, all outputs
    batched). Anytime: with a time limit the passes stop at their share of it and keep interval bounds from
    there (status time_limit, details['cut']); the value stays certified."""
    with one_thread(net), kept_torch_threads():
        value, details, _, _ = run_propagation(net, ctx, "crown")
    return MethodResult(value, details=details, status="time_limit" if "cut" in details else "ok")


@register_method("recurjac", kind="upper", norms=(1, 2, INF), regions=("global", "box"), ops=OPS, activations=ACTS,
                 description="local bound: RecurJac-style relaxation of the Jacobian graph (baseline)",
                 options={"alpha": _ALPHA},
                 family=FAMILY)
def recurjac_method(net, ctx: MethodContext) -> MethodResult:
    """Certified upper bound on the local Lipschitz constant over a box: the `crown` code with constant
    intervals for sign-crossing undecided gradient products (weaker). Cost: as `crown`."""
    with one_thread(net), kept_torch_threads():
        value, details, _, _ = run_propagation(net, ctx, "recurjac")
    return MethodResult(value, details=details, status="time_limit" if "cut" in details else "ok")


@register_method("ibp-jacobian", kind="upper", norms=(1, 2, INF), regions=("global", "box"), ops=OPS, activations=ACTS,
                 description="local bound: interval propagation on the forward and Clarke-Jacobian graphs",
                 family=FAMILY)
def ibp_jacobian_method(net, ctx: MethodContext) -> MethodResult:
    """Certified upper bound on the local Lipschitz constant over a box by interval arithmetic on the
    forward pre-activations and through the Jacobian graph. Cost: about three passes of the network."""
    with one_thread(net), kept_torch_threads():
        value, details, _, _ = run_propagation(net, ctx, "ibp")
    return MethodResult(value, details=details)


@register_method("crown-bab", kind="upper", norms=(1, 2, INF), regions=("box",), ops=OPS, activations=ACTS,
                 description="local bound: CROWN on the Jacobian graph + branch and bound (input or neuron splits; "
                             "exact when it closes)",
                 options={"alpha": Option(bool, True, "alpha-CROWN forward bounds (false: plain CROWN)"),
                          "batch": Option(int, None, f"domains split per step (auto: {INPUT_BATCH} splitting the "
                                          f"input box, {NEURON_BATCH} splitting neurons)", min=1),
                          "refresh": Option(str, "auto", "intermediate bounds recomputed per child",
                                            choices=("auto", "all", "input", "final")),
                          "max_domains": Option(int, 200_000, "stop at this many domains", min=1),
                          "lp_prune": Option(BOOL_OR_AUTO, "auto", "drop domains whose decided neurons no input "
                                             "realises (LP, dense chains, at most 2000 inputs; auto = true)"),
                          "lp_eager": Option(bool, False, "run the pattern LP on every child at once instead of "
                                             "when it is popped"),
                          "sign_entries": Option(int, None, "l_inf: the sign-crossing gradient entries whose signs a "
                                                 "domain's bound enumerates (2^k objectives; auto: 5 for networks "
                                                 "with at most 12 inputs, else 0)", min=0, max=10),
                          "budget": Option(float, BAB_DEFAULT_TIME, "seconds when no time limit is given", min=0),
                          "split": Option(str, "auto", "what a domain splits: the input box, ReLU-like neurons, or "
                                          "auto (the input when the network has at most 12 inputs)",
                                          choices=("auto", "input", "neuron")),
                          "target_gap": Option(float, 1 + 1e-6, "stop when upper <= target_gap x the best certified "
                                               "lower bound found", min=1.0)},
                 family=FAMILY)
def crown_bab_method(net, ctx: MethodContext) -> MethodResult:
    """Certified upper bound on the local Lipschitz constant over a box (norms inf, 2 and 1, per output as
    `crown`), and the exact value with a witness when the search closes: `crown` refined by branch and bound
    (`bab`), anytime. The bound only decreases; details['history'] lists (seconds, bound) after every step,
    details['timeline'] (seconds, lower, upper). Cost: up to the time limit (default 30 s when none is given)."""
    from .bab import branch_and_bound

    with one_thread(net), kept_torch_threads():  # the search follows the free cores (`threads.FollowFreeCores`)
        return branch_and_bound(net, ctx)
