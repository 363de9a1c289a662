"""Interval bound propagation (IBP): the project's one interval service, sound in float64.

* `interval_bounds(net, region)`: for every node of the graph, elementwise lower and upper bounds valid
  for all inputs in the box;
* `preactivation_intervals(net, region)`: the same, for the input of every Activation node;
* `dense_chain_intervals(chain, lower, upper)`: pre-activation intervals of every hidden layer of a
  `Network.dense_chain()` (numpy), for the dense-chain methods (exact MIP, LiPopt);
* `IBP_RULES`: the rules of the one graph traversal (`traversal.forward`), reused by `crown`.

One rounding policy, rigorous in float64 (round-to-nearest, no underflow), for both entry points:

* affine steps y = A x + c in midpoint-radius form: with m = fl((l + u) / 2), r = fl((u - l) / 2),
  y_c = fl(A m + c), rho = fl(|A| r), the exact image of [l, u] lies in
  [y_c - rho - S, y_c + rho + S], S = gamma_{n+6} (|A| (|m| + r) + |c|), where n is the number of
  products summed per output (`terms`) and gamma_k = k u / (1 - k u), u = 2^-53 (Higham). Derivation:
  [l, u] is inside [m - r', m + r'] with r' = r + gamma_1 (|m| + r); the rounding of A m + c is at most
  gamma_{n+1} (|A||m| + |c|), that of |A| r at most gamma_n |A| r; the remaining 4 u of the gamma_{n+6}
  factor absorbs the two final subtractions and the rounding of S itself. Reshape, Transpose and Pad
  move values without arithmetic and are applied to both ends exactly;
* activations: ``op.fn.image`` (the table's enclosure: exact ends or offsets, outward-rounded by
  1e-12 relative for transcendental functions); the piecewise-linear ones (whose values the table takes
  as exact) are widened by 4 eps |v| (eps = 2^-52) for the one or two roundings of their formulas
  (leaky ReLU's a x, hardsigmoid's (x + 3) / 6);
* max pooling and MaxMin (max / min, monotone in each argument) are exact on the ends; Add rounds
  each end once outward (``nextafter``).

Cost: about three passes of the network (the midpoint, |A| on two vectors).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import traversal
from .activations import PIECEWISE_LINEAR_MARGIN
from .network import (Activation, AdaptiveAvgPool2d, Add, AvgPool2d, Conv2d, ElementwiseAffine, Linear, MaxMin,
                      MaxPool2d, Network, Pad, Reshape, Transpose, tensor_view)

#: unit roundoff of float64 (round to nearest)
U = 2.0 ** -53

#: relative outward widening of piecewise-linear values (4 eps = 8 u); the activation table applies it
#: to its images and offsets, products of slopes and values elsewhere use it too
PL_MARGIN = PIECEWISE_LINEAR_MARGIN

#: affine ops that only move, copy or pad values (no arithmetic): applied to both ends, no margin
EXACT_OPS = (Reshape, Transpose, Pad)


def gamma(n: int) -> float:
    """gamma_n = n u / (1 - n u): the classical bound on the relative rounding error of an n-term sum
    of products (Higham, Accuracy and Stability of Numerical Algorithms, §3.1), valid for any
    summation order."""
    nu = n * U
    if nu >= 0.5:
        raise ValueError(f"gamma_{n}: too many terms for a float64 error bound")
    return nu / (1 - nu)


def terms(op, in_shape: tuple) -> int:
    """An upper bound on the number of products summed into one output entry of the affine ``op``
    (its fan-in): Linear: columns; Conv2d: in-channels per group x kernel; ElementwiseAffine: 1;
    AvgPool2d / AdaptiveAvgPool2d: the window; any other affine op: the whole input size (safe)."""
    if isinstance(op, Linear):
        return int(op.W.shape[1])
    if isinstance(op, Conv2d):
        return int(op.weight[0].numel())
    if isinstance(op, ElementwiseAffine):
        return 1
    if isinstance(op, AvgPool2d):
        return int(np.prod(op.kernel)) + 1  # the sum and the division
    if isinstance(op, AdaptiveAvgPool2d):
        h, w = in_shape[-2], in_shape[-1]
        oh, ow = op.output_size
        return (math.ceil(h / oh) + 1) * (math.ceil(w / ow) + 1) + 1
    return int(np.prod(in_shape)) + 1


def affine_enclosure(mid_value: torch.Tensor, abs_map, const_abs, n: int, mid: torch.Tensor, rad: torch.Tensor):
    """(lo, hi) of an affine map y = A x + c over the box mid +- rad, rigorous in float64 (module doc).

    ``mid_value`` = fl(A mid + c); ``abs_map(v)`` = fl(|A| v) for a batch of vectors stacked on the
    first dimension (called once, on [rad, |mid| + rad]); ``const_abs`` = |c| (broadcastable) or 0;
    ``n``: products summed per output (`terms`)."""
    both = abs_map(torch.cat([rad, mid.abs() + rad], 0))
    k = rad.shape[0]
    rho, mag = both[:k], both[k:]
    slack = gamma(n + 6) * (mag + const_abs)
    return mid_value - rho - slack, mid_value + rho + slack


def _mid_rad(lo, hi):
    return (hi + lo) / 2, (hi - lo) / 2


def _affine(op, node, iv):
    lo, hi = iv
    if isinstance(op, EXACT_OPS):
        return op.forward(lo), op.forward(hi)
    in_shape = tuple(lo.shape[1:])
    mid, rad = _mid_rad(lo, hi)
    const = op.constant_term(in_shape)
    return affine_enclosure(op.forward(mid), op.abs_linear, const.abs(), terms(op, in_shape), mid, rad)


def activation_image(fn, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[min f, max f] over [lo, hi] elementwise for the table entry ``fn``, outward-rounded (the
    table's `image` carries the rounding margin of every activation)."""
    return fn.image(lo, hi)


def _activation(op: Activation, node, iv):
    return activation_image(op.fn, *iv)


def _monotone(op, node, iv):
    return op.forward(iv[0]), op.forward(iv[1])  # max / min: monotone in every argument, exact


def _add(op, node, x, y):
    return (torch.nextafter(x[0] + y[0], torch.tensor(-math.inf, dtype=x[0].dtype)),
            torch.nextafter(x[1] + y[1], torch.tensor(math.inf, dtype=x[1].dtype)))


IBP_RULES = {"affine": _affine, Activation: _activation, MaxPool2d: _monotone, MaxMin: _monotone, Add: _add}


def _box(net: Network, region):
    if isinstance(region, tuple):
        lo, hi = region
    else:
        lo, hi = region.lower, region.upper
    lo = torch.as_tensor(np.asarray(lo, dtype=np.float64)).reshape((1,) + net.input_shape)
    hi = torch.as_tensor(np.asarray(hi, dtype=np.float64)).reshape((1,) + net.input_shape)
    return lo, hi


def interval_bounds(net: Network, region) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(lower, upper) of every node over the box ``region`` (a `Region` or a (lower, upper) pair),
    each of shape (1, *node.shape), float64. Certified, rigorous in float64 (module doc).
    Raises `Unsupported` for an operation without a rule. Cost: about three forward passes."""
    with torch.no_grad():
        return traversal.forward(net, IBP_RULES, _box(net, region), what="interval propagation")


def preactivation_intervals(net: Network, region) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Interval bounds of the input of every Activation node, flattened to (n,), in graph order."""
    ivs = interval_bounds(net, region)
    out = []
    for node in net.nodes:
        if isinstance(node.op, Activation):
            lo, hi = ivs[node.inputs[0]]
            out.append((lo.reshape(-1), hi.reshape(-1)))
    return out


def dense_chain_intervals(chain, lower, upper) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pre-activation intervals (lo, hi) (float64 numpy, shape (n_k,)) of every hidden layer k of the dense
    chain ``chain`` (`Network.dense_chain()`: x -> act(W x + b), the last layer without activation) for
    inputs in the box [lower, upper] (any shape, flattened). Certified, rigorous in float64: the same
    policy as `interval_bounds` (midpoint-radius with the gamma_{n+6} margin, activations through the
    table's image). Cost: one mat-vec and one |W| mat-mat with two columns per layer (|W| is a copy)."""
    lo = torch.as_tensor(np.asarray(lower, dtype=np.float64).reshape(1, -1)).clone()
    hi = torch.as_tensor(np.asarray(upper, dtype=np.float64).reshape(1, -1)).clone()
    out = []
    with torch.no_grad():
        for layer in chain[:-1]:
            W = tensor_view(layer.W)
            b = torch.as_tensor(np.asarray(layer.b, dtype=np.float64)).reshape(-1)
            mid, rad = _mid_rad(lo, hi)
            absW = W.abs()
            zl, zh = affine_enclosure(mid @ W.T + b, lambda v: v @ absW.T, b.abs(), int(W.shape[1]), mid, rad)
            out.append((zl.reshape(-1).numpy().copy(), zh.reshape(-1).numpy().copy()))
            lo, hi = activation_image(layer.activation.fn, zl, zh)
    return out
