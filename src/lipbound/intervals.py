"""Interval bound propagation (IBP) over the network graph.

`interval_bounds(net, region)` gives, for every node, elementwise lower and upper bounds valid for all
inputs in the box. Sound for every operation of the representation. Cost: about two forward passes.
"""

from __future__ import annotations

import torch

from . import traversal
from .network import DTYPE, Activation, Add, MaxPool2d, Network


def _affine(op, node, iv):
    lo, hi = iv
    mid, rad = (hi + lo) / 2, (hi - lo) / 2
    return _mid_rad_to_box(op.forward(mid), op.abs_linear(rad))


def _mid_rad_to_box(mid, rad):
    return mid - rad, mid + rad


def _activation(op: Activation, node, iv):
    lo, hi = iv
    a, b = op.forward(lo), op.forward(hi)
    if op.name == "leaky_relu" and op.param < 0:  # not monotone: the minimum may be at 0
        z = op.forward(torch.clamp(torch.zeros_like(lo), lo, hi))
        return torch.minimum(torch.minimum(a, b), z), torch.maximum(a, b)
    return a, b  # every other activation is non-decreasing


def _maxpool(op, node, iv):
    return op.forward(iv[0]), op.forward(iv[1])  # max is monotone


def _add(op, node, x, y):
    return x[0] + y[0], x[1] + y[1]


IBP_RULES = {"affine": _affine, Activation: _activation, MaxPool2d: _maxpool, Add: _add}


def interval_bounds(net: Network, region) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(lower, upper) of every node over the box ``region`` (a `Region` or a (lower, upper) pair),
    each of shape (1, *node.shape), float64. Certified (sound up to float64 rounding)."""
    if isinstance(region, tuple):
        lo, hi = region
    else:
        lo, hi = region.lower, region.upper
    lo = torch.as_tensor(lo, dtype=DTYPE).reshape((1,) + net.input_shape)
    hi = torch.as_tensor(hi, dtype=DTYPE).reshape((1,) + net.input_shape)
    with torch.no_grad():
        return traversal.forward(net, IBP_RULES, (lo, hi), what="interval propagation")


def preactivation_intervals(net: Network, region) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Interval bounds of the input of every Activation node, flattened to (n,), in graph order."""
    ivs = interval_bounds(net, region)
    out = []
    for node in net.nodes:
        if isinstance(node.op, Activation):
            lo, hi = ivs[node.inputs[0]]
            out.append((lo.reshape(-1), hi.reshape(-1)))
    return out
