"""The cost model of the planner: seconds a method needs on a problem, estimated from sizes.

Every estimate is ``overhead + constant x work`` with the work counted from the `Problem` (multiply-adds
of a forward pass F, hidden neurons N, widths w_k, depth L, inputs n, outputs m, unstable neurons u).
The constants were measured on this project's machines (2 shared cores, one BLAS / torch thread -- as
`certify` runs the methods --, load ~2-4 from other jobs, 2026-11-29) with `bound(...)` on test-sized random MLPs, the digits MLP (64-32-32-10,
F = 3.4e3), ACAS Xu (5-6x50-5, F = 1.3e4) and mnist-net_256x2 (784-256-256-10, F = 2.7e5), boxes of
eps 0.05 / 0.01 around rng(1) points; the measured times are quoted beside each constant. They are
deliberately on the slow side (the planner would rather skip a method than overrun the budget).

For anytime methods (`ANYTIME`) the estimate is the time to a finished run; they are given a share of the
budget instead and return their best certified value at the limit. ``min_time`` is what an anytime method
needs before it has any value at all (e.g. the root CROWN bound of crown-bab).
"""

from __future__ import annotations

import math

from .problem import Problem

#: methods that return a certified value (their best so far) when their time limit ends
#: (crown: its passes stop at their shares of the limit and keep interval bounds from there, certified;
#: cut at 20 s it gave 90.0 on resnet_2b linf eps 0.01 where ibp-jacobian gives 3.4e5)
ANYTIME = frozenset({"lipsdp-opt", "crown-bab", "mip", "lower-grad", "lower-sample", "enumerate", "crown"})

# -- constants (seconds) -------------------------------------------------------------------------------
#: per-call overhead of a method through `api.bound` (option checks, graph walk): ~5-20 ms measured
CALL_S = 0.02
#: CROWN pre-activation bounds: per activation layer, plus per (neuron x multiply-add below it).
#: Measured: ACAS 0.053 s (sum w_k F_k = 2.0e6), digits 0.010 s, 4-8-8-3 0.010 s
CROWN_LAYER_S = 0.005
CROWN_UNIT_S = 2.5e-8
#: crown (the Jacobian graph bound): per (output x unstable neuron x layer), the relaxed products of the
#: Jacobian graph. Measured: ACAS box (5 outputs, 114 unstable, 6 layers) 2.4 s; digits (no unstable)
#: 0.058 s; mnist eps 0.01 (10 outputs, 20 unstable, 2 layers) 0.1-0.26 s; 4-8-8-3 0.019 s
CROWN_JAC_S = 0.04
CROWN_JAC_UNIT_S = 7.0e-4
#: crown globally: per output x neuron x parameter (measured 0.09 s on ACAS Xu, 1.5 s on mnist-net_256x2)
CROWN_GLOBAL_UNIT_S = 5.0e-9
#: certified operator norms (naive, autolip): l2 needs a certified spectral norm per affine op (a dense
#: min-side^3 factorisation). Measured: mnist 0.14 s (F = 2.7e5), ACAS 0.07 s, digits 0.03 s. NB: with
#: two BLAS threads beside other jobs the same mnist call took 9.5-22 s: certify runs on one thread.
NORM_L2_S = 0.03
NORM_L2_UNIT_S = 4.0e-7
#: lower-sample: per (sample x output) a graph node overhead and a per multiply-add cost (the batched
#: Jacobian: m backward passes). 200 samples: ACAS 0.021 s (14 nodes, F = 1.3e4, m = 5), digits 0.012 s,
#: mnist 0.16 s (F = 2.7e5, m = 10), 4-8-8-3 0.003 s
SAMPLE_NODE_S = 1.2e-6
SAMPLE_UNIT_S = 3.0e-10
#: ... plus the memory-bound work on the entries of the non-affine nodes (`Problem.elementwise`): per (sample
#: x entry) the forward pass and the differentiability mask, per (sample x output x entry) the backward
#: through activations and pooling. Convnet_maxpool (a 2x2 conv to 23,328 ReLUs, max pooling; F = 1.3e5):
#: 200 samples 1.6-1.8 s where the terms above alone give 0.11 s (a 2000-sample lower-sample took 12 s in
#: compare, priced 0.9 s); profile: threshold_backward and the zero fill of max pooling's backward ~6 ns an
#: entry each, forward and mask ~0.4 s
SAMPLE_ELEM_S = 9.0e-8
SAMPLE_ELEM_OUT_S = 1.3e-8
#: lower-grad: per ascent step, per graph node (torch double-backward overhead dominates on small nets),
#: plus per (restart x multiply-add). Measured at 30 steps, 32 restarts: ACAS 0.3 s (14 nodes), digits
#: 0.2-0.3 s, 4-8-8-3 0.075 s; at the default 150 steps: ACAS 0.97 s, digits 0.52 s
GRAD_STEP_NODE_S = 0.0004
GRAD_STEP_S = 0.002
GRAD_UNIT_S = 5.0e-10  # mnist (F = 2.7e5, m = 10): 0.05 s per step with 32 restarts
#: ... plus per (restart x non-affine entry): Convnet_maxpool 0.055 s per step with 32 restarts (priced 0.025)
GRAD_ELEM_S = 7.0e-8
#: closed forms of the SDP family: per layer, one factorisation per layer (~w^3, shared by the members) and
#: per member and layer a Lanczos run (~60 w^2). Measured (one thread, beside two other jobs): cifar_base_kw
#: global (widths 2048, 1024, 100) 20.7 s, eclipse-fast 3.6 s; ffnnSIGMOID 6x200 0.65 s / 0.22 s; ACAS 0.13 s /
#: 0.01 s; mnist global 0.6-1.3 s / 0.45 s. The earlier model (20 members x w^3 each) put cifar_base_kw at
#: 387 s / 19 s, and certify never ran the SDP family there (gap 7.0 where compare's lipsdp-opt gave 2.15).
FAMILY_S = 0.02
FAMILY_LAYER_S = 0.03
FAMILY_UNIT_S = 2.0e-9
FAMILY_MEMBERS, FAMILY_W2_S = 20, 5.0e-8
#: lipsdp-opt to convergence ~ N^3 (barrier path following over all multipliers): digits (N = 64) 1.1-1.3 s,
#: 4-8-8-3 0.45 s (box: 3 s, two slope models), ACAS (N = 300) > 7 s
SDP_OPT_S = 0.8
SDP_OPT_UNIT_S = 2.0e-6
#: enumerate / mip: LP bound tightening, two LPs per unstable neuron, each ~ the network's size (mnist
#: eps 0.01, 20 unstable: 2.7 s, i.e. 0.067 s per LP with 2.7e5 parameters; ACAS, 114 unstable: ~1 s),
#: then ~2^u patterns of one LP each (enumerate) or a MIP growing like 2^(u / 4) (mip: ACAS u = 16 after
#: tightening 2.9 s, 69 binaries 4.4 s)
LP_S = 0.003
LP_UNIT_S = 2.5e-7
PATTERN_S = 0.002
MIP_NODE_S = 0.02
#: LiPopt's LP grows like (n + N)^(L + 1) per output (globally; on a box the unstable neurons count):
#: 4-8-8-3 global 0.6 s, box 0.1 s; the digits MLP (n + N = 128) global > 23 s, box (no unstable) 2.2 s
LIPOPT_OUT_S = 0.2
LIPOPT_UNIT_S = 1.0e-6
#: Shor SDP: ~1 s per output at small orders (4-8-8-3: 3.4 s for 3 outputs), ~order^3 x 100 iterations
SHOR_OUT_S = 1.2
SHOR_UNIT_S = 1.0e-7
#: exact SeqLip: 2^w sign patterns per hidden layer, each w^2
SEQLIP_UNIT_S = 1.0e-7


def crown_preact_cost(prob: Problem) -> float:
    """`crown.preactivation_bounds` (alpha=False): CROWN refines only the neurons that interval bounds
    leave unstable (``unstable_per_layer`` when known, else every neuron)."""
    per = prob.unstable_per_layer if prob.unstable_per_layer is not None else prob.widths
    work = sum(w * f for w, f in zip(per, prob.flops_below))
    return CROWN_LAYER_S * prob.depth + CROWN_UNIT_S * work


def crown_jacobian_cost(prob: Problem) -> float:
    """The Jacobian-graph pass of crown (after the pre-activation bounds)."""
    if not prob.is_box:  # every neuron undecided, one low-rank walk over them all
        return CROWN_JAC_S + CROWN_GLOBAL_UNIT_S * prob.out_dims * prob.neurons * _walked_size(prob)
    u = prob.unstable if prob.unstable is not None else 0.3 * prob.neurons
    return CROWN_JAC_S + CROWN_JAC_UNIT_S * prob.out_dims * u * prob.depth


def _walked_size(prob: Problem) -> int:
    """What one relaxed product of the global walk costs: with one nonlinear layer the Jacobian is
    W_out diag(d) W_in and the walk multiplies the weights as stored (parameters); below a second one (more
    activation layers, or max pooling) it passes every layer's operator as a map (multiply-adds, which on
    conv layers are many times the parameters). Global crown measured on conv nets: Convnet_avgpool 14-19 s,
    cifar_base_kw ~50 s, Convnet_maxpool and resnet_2b cut at 54 s; priced by parameters, cifar_base_kw and
    resnet_2b came to 17 s and 35 s."""
    if prob.depth + prob.has_maxpool >= 2:
        return max(prob.flops, prob.n_params)
    return prob.n_params


def _norm_cost(prob: Problem) -> float:
    if prob.norm == 2:
        return NORM_L2_S + NORM_L2_UNIT_S * prob.flops
    return CALL_S + 1e-8 * prob.flops


def _family_cost(prob: Problem) -> float:
    work = (FAMILY_S + FAMILY_LAYER_S * prob.depth + FAMILY_UNIT_S * sum(w ** 3 for w in prob.widths)
            + FAMILY_W2_S * FAMILY_MEMBERS * sum(w * w for w in prob.widths))
    # on a box: local slopes, two slope models (measured 1.8x on ACAS, 3-5.6x on mnist: 2.5-4.5 s vs 0.81 s)
    return work * (2.5 if prob.is_box else 1.0)


def lower_grad_step_cost(prob: Problem, restarts: int) -> float:
    """One ascent step of lower-grad with ``restarts`` starting points."""
    nodes = max(prob.n_nodes, 1)
    return (GRAD_STEP_S + GRAD_STEP_NODE_S * nodes + GRAD_UNIT_S * restarts * prob.flops * max(1, prob.out_dims)
            + GRAD_ELEM_S * restarts * prob.elementwise)


def sample_cost(prob: Problem, samples: int) -> float:
    """lower-sample with ``samples`` points (one Jacobian, m backward passes, per point)."""
    nodes = max(prob.n_nodes, 1)
    return CALL_S + samples * (prob.out_dims * (SAMPLE_NODE_S * nodes + SAMPLE_UNIT_S * prob.flops
                                                + SAMPLE_ELEM_OUT_S * prob.elementwise)
                               + SAMPLE_ELEM_S * prob.elementwise)


def lp_tighten_cost(prob: Problem) -> float:
    u = prob.unstable if prob.unstable is not None else prob.neurons
    return 2 * u * (LP_S + LP_UNIT_S * prob.n_params)


def estimate(method: str, prob: Problem, options: dict | None = None) -> float:
    """Estimated seconds of a complete run of ``method`` on ``prob`` (with ``options``); math.inf when the
    model says it is hopeless (e.g. enumerating 2^60 patterns). See the module doc for the constants."""
    options = options or {}
    preact = 0.0 if prob.preact_time_s is not None else crown_preact_cost(prob)  # cached once computed
    u = prob.unstable if prob.unstable is not None else prob.neurons
    if method in ("naive", "autolip"):
        return _norm_cost(prob)
    if method == "eclipse-fast":
        return (FAMILY_S + FAMILY_LAYER_S * prob.depth + FAMILY_UNIT_S / 4 * sum(w ** 3 for w in prob.widths)
                + FAMILY_W2_S * sum(w * w for w in prob.widths) + (preact if prob.is_box else 0.0))
    if method == "eclipse-family":
        return _family_cost(prob) + (preact if prob.is_box else 0.0)
    if method == "lipsdp-opt":
        return SDP_OPT_S + SDP_OPT_UNIT_S * prob.neurons ** 3 + _family_cost(prob) + (preact if prob.is_box else 0.0)
    if method in ("crown", "crown-bab"):  # crown-bab: its root bound (the search is anytime)
        return CALL_S + (preact if prob.is_box else 0.0) + crown_jacobian_cost(prob)
    if method == "ibp-jacobian":  # about three interval passes (forward on a box, backward with two ends)
        return CALL_S + 4e-9 * prob.out_dims * prob.flops
    if method == "lower-sample":
        return sample_cost(prob, int(options.get("samples", 2000)))
    if method == "lower-grad":
        restarts, steps = int(options.get("restarts", 32)), int(options.get("steps", 150))
        return sample_cost(prob, int(options.get("samples", 2000))) + steps * lower_grad_step_cost(prob, restarts)
    if method == "enumerate":
        return CALL_S + preact + lp_tighten_cost(prob) + PATTERN_S * 2.0 ** min(u, 60)
    if method == "mip":
        return CALL_S + preact + lp_tighten_cost(prob) + MIP_NODE_S * prob.out_dims * 2.0 ** min(u / 4, 60)
    if method == "lipopt" and prob.lipopt_s is not None:
        return CALL_S + prob.lipopt_s
    if method == "lipopt":
        k = prob.depth + 1
        active = u if prob.is_box else prob.neurons
        return CALL_S + prob.out_dims * (LIPOPT_OUT_S + LIPOPT_UNIT_S * float(prob.n_inputs + active) ** k)
    if method == "shor-sdp":
        order = prob.n_inputs + prob.neurons
        return CALL_S + prob.out_dims * (SHOR_OUT_S + SHOR_UNIT_S * 100 * order ** 3)
    if method == "seqlip":
        return CALL_S + SEQLIP_UNIT_S * sum(2.0 ** min(w, 60) * w * w for w in prob.widths)
    return math.inf


def min_time(method: str, prob: Problem) -> float:
    """Seconds an anytime method needs before it holds any certified value (0 for the others)."""
    if method == "crown-bab":
        return estimate("crown-bab", prob)
    if method == "lipsdp-opt":  # the start point is the best closed form
        return _family_cost(prob) + (0.0 if prob.preact_time_s is not None or not prob.is_box
                                     else crown_preact_cost(prob))
    if method == "mip":
        return CALL_S + sample_cost(prob, 1000) + crown_preact_cost(prob) * (prob.preact_time_s is None)
    if method == "lower-grad":
        return sample_cost(prob, int(500)) + 5 * lower_grad_step_cost(prob, 32)
    if method == "enumerate":  # its LP bound tightening cannot be interrupted
        return CALL_S + sample_cost(prob, 500) + lp_tighten_cost(prob) + crown_preact_cost(prob) * (
            prob.preact_time_s is None)
    if method == "lower-sample":
        return sample_cost(prob, 50)
    return 0.0


__all__ = ["ANYTIME", "estimate", "min_time", "crown_preact_cost", "lower_grad_step_cost", "sample_cost"]
