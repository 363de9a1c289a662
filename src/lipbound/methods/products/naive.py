"""The naive bound: product of operator norms along the graph.

Each node's Lipschitz constant with respect to the network input is computed by the one graph
traversal (`lipbound.traversal.forward`) with a rule per operation:

* affine op (Linear, Conv2d, ElementwiseAffine/BatchNorm, AvgPool2d, Pad, Reshape, Transpose):
  ``L_in * ||A||_p`` with ``||A||_p`` from `lipbound.opnorms` (exact in l1/l_inf, certified in l2);
* activation: ``L_in * max(|alpha|, |beta|)``;
* max pooling: ``L_in * {1, sqrt(c), c}`` in l_inf / l2 / l1 (c = windows per pixel);
* MaxMin (GroupSort-2): ``L_in`` (locally a permutation of the entries: 1-Lipschitz in every l_p);
* residual Add: ``L_a + L_b``.

With ``output=j`` the trailing run of affine ops before the output is folded into the row functional
of f_j (one adjoint pass) and bounded by its exact dual norm.

The same rule tables serve AutoLip (`lipbound.methods.autolip`).
"""

from __future__ import annotations

import math

import torch

from ... import opnorms, traversal
from ...network import DTYPE, Activation, Add, AffineOp, MaxMin, MaxPool2d, Network
from ...norms import norm_name
from ...registry import ALL_ACTIVATIONS, ALL_OPS, MethodResult, register_method


def lipschitz_rules(net: Network, norm, records: list, affine_norm=None) -> dict:
    """A rule table for `traversal.forward` whose node values are Lipschitz constants (w.r.t. the
    network input, in l_p) and which appends one record per node to ``records``.

    ``affine_norm(op, in_shape) -> NormInfo`` (default: `opnorms.op_norm` in ``norm``)."""
    affine_norm = affine_norm or (lambda op, shape: opnorms.op_norm(op, shape, norm))

    def in_shape(node):
        return net.nodes[node.inputs[0]].shape

    def affine(op, node, L):
        info = affine_norm(op, in_shape(node))
        rec = {"node": node.name, "op": op.describe(), "factor": info.value, "how": info.method}
        if info.estimate is not None:
            rec["power_method"] = info.estimate
        rec["L"] = L * info.value
        records.append(rec)
        return rec["L"]

    def activation(op, node, L):
        s = opnorms.activation_slope(op)
        records.append({"node": node.name, "op": op.describe(), "factor": s, "how": "slope bound", "L": L * s})
        return L * s

    def maxpool(op, node, L):
        f = opnorms.maxpool_factor(op, in_shape(node), norm)
        records.append({"node": node.name, "op": op.describe(), "factor": f, "how": "window overlap",
                        "overlap": opnorms.maxpool_overlap(op, in_shape(node)), "L": L * f})
        return L * f

    def add(op, node, La, Lb):
        records.append({"node": node.name, "op": "Add", "factor": None, "how": "sum of branches", "L": La + Lb})
        return La + Lb

    def maxmin(op, node, L):
        records.append({"node": node.name, "op": op.describe(), "factor": 1.0, "how": "a permutation locally", "L": L})
        return L

    return {"affine": affine, Activation: activation, MaxPool2d: maxpool, Add: add, MaxMin: maxmin}


def trailing_affine_run(net: Network) -> list[int]:
    """Indices of the maximal run of single-input affine nodes ending at the output (output first)."""
    run = []
    i = len(net.nodes) - 1
    while i > 0 and isinstance(net.nodes[i].op, AffineOp) and len(net.nodes[i].inputs) == 1:
        run.append(i)
        i = net.nodes[i].inputs[0]
    return run


def output_functional(net: Network, run: list[int], output: int) -> tuple[int, torch.Tensor]:
    """Pull the functional e_output back through the trailing affine run: returns (index of the
    run's input node, the row vector g with f_output = <g, x_that_node> + const)."""
    y = torch.zeros((1,) + net.output_shape, dtype=DTYPE)
    y.view(-1)[output] = 1.0
    with torch.no_grad():
        for i in run:
            node = net.nodes[i]
            y = node.op.linear_t(y, net.nodes[node.inputs[0]].shape)
    return net.nodes[run[-1]].inputs[0], y


def lipschitz_product(net: Network, norm, output=None, affine_norm=None) -> tuple[float, dict]:
    """The product bound for ``net`` in l_p (the value at the output node) and details."""
    records: list = []
    rules = lipschitz_rules(net, norm, records, affine_norm)
    Ls = traversal.forward(net, rules, 1.0, what="the naive product bound")
    value = float(Ls[-1])
    details = {"layers": records}
    if output is not None:
        run = trailing_affine_run(net)
        if run:
            start, g = output_functional(net, run, output)
            restricted = float(Ls[start]) * opnorms.dual_norm(g, norm)
            details["full_output_bound"] = value
            details["output_row_norm"] = opnorms.dual_norm(g, norm)
            value = min(value, restricted * (1 + 1e-12))
        else:
            details["output_restriction"] = "not applied (the output node is not affine)"
    return value, details


@register_method("naive", kind="upper", norms=(1, 2, math.inf), regions=("global", "box"), ops=ALL_OPS | {"MaxMin"},
                 activations=ALL_ACTIVATIONS,
                 description="product of the operator norms along the graph (residual: sum of branches)",
                 family="naive")
def naive(net: Network, ctx) -> MethodResult:
    """Certified upper bound on the Lipschitz constant in l1, l2 or l_inf, global (hence valid on any
    box): the product along the graph of each affine op's operator norm (exact l1/l_inf induced norms;
    certified l2 bounds: exact SVD for small dense layers, circular/polyphase or dense certificates for
    convolutions, Collatz-Wielandt for pooling), activation slope bounds and max-pool overlap factors,
    with residual branches summed. Cost: one norm computation per op (a power method plus a certificate
    in l2, one evaluation in l1/l_inf)."""
    value, details = lipschitz_product(net, ctx.norm, ctx.output)
    details["norm"] = norm_name(ctx.norm)
    if ctx.region is not None:
        details["region_note"] = "global bound (valid on every box)"
    return MethodResult(value, details=details)
