"""Interval propagation (`lipbound.intervals`), the one interval service: soundness against sampled forward
values for every activation of the table and for graph nets (Add, MaxPool2d, MaxMin), against exact
rational arithmetic where float64 rounding decides (large weights, degenerate boxes, points on the bound),
and the dense-chain entry point against the graph one.

Independent references: the network's own forward pass at sampled points (an enclosure must contain
them), Python's `fractions` (exact values of float inputs) and mpmath at 60 digits."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from lipbound.activations import ACTIVATIONS
from lipbound.intervals import dense_chain_intervals, gamma, interval_bounds, preactivation_intervals
from lipbound.network import (Activation, Add, Conv2d, GraphBuilder, Linear, MaxMin, MaxPool2d, Network,
                              Reshape)
from lipbound.registry import Region

from _nets import random_graph_net, random_mlp

#: every entry of the table with its defaults, plus variants that change the shape
ACT_CASES = [(n, None) for n in ACTIVATIONS] + [("leaky_relu", -0.3), ("leaky_relu", 2.0), ("hardtanh", (0.0, 6.0)),
                                                ("elu", 0.5), ("softplus", 3.0)]
ACT_IDS = [n if p is None else f"{n}-{p}" for n, p in ACT_CASES]


def _contains(net, ivs, pts):
    """Every node's interval contains its value at every point (exactly: no tolerance)."""
    vals = net.forward_all(torch.as_tensor(pts))
    for i, ((lo, hi), v) in enumerate(zip(ivs, vals)):
        assert lo.shape == (1,) + net.nodes[i].shape and lo.dtype == torch.float64
        assert bool((v >= lo).all() and (v <= hi).all()), (i, net.nodes[i].op.describe(),
                                                             float((lo - v).amax()), float((v - hi).amax()))


def _box_points(region, n, rng):
    """Random points of the box plus its corners' worth of extreme points (each coordinate at an end)."""
    pts = region.sample(n, rng)
    ends = rng.integers(0, 2, size=(n // 4,) + region.lower.shape).astype(bool)
    return np.concatenate([pts, np.where(ends, region.upper, region.lower)])


@pytest.mark.parametrize("act,param", ACT_CASES, ids=ACT_IDS)
def test_intervals_contain_sampled_values_for_every_activation(act, param):
    rng = np.random.default_rng(len(act))
    net = random_mlp([5, 16, 12, 4], seed=int(rng.integers(1000)), activation=act, param=param, scale=2.5)
    for eps in (0.05, 1.0):
        region = Region.box(rng.normal(size=5) * 2, eps)
        ivs = interval_bounds(net, region)
        _contains(net, ivs, _box_points(region, 3000, rng))
        # the dense-chain entry point: the same policy, hence the same intervals on an MLP
        dense = dense_chain_intervals(net.dense_chain(), region.lower, region.upper)
        graph = preactivation_intervals(net, region)
        assert len(dense) == len(graph) == 2
        for (dl, dh), (gl, gh) in zip(dense, graph):
            assert isinstance(dl, np.ndarray) and dl.dtype == np.float64
            # not bitwise: the two entry points may reach different BLAS kernels (machines differ)
            scale = 1e-12 * max(1.0, float(np.abs(dl).max()), float(np.abs(dh).max()))
            np.testing.assert_allclose(dl, gl.numpy(), rtol=1e-12, atol=scale)
            np.testing.assert_allclose(dh, gh.numpy(), rtol=1e-12, atol=scale)


def _maxmin_net(seed, layout="pairs", order="max_min"):
    rng = np.random.default_rng(seed)
    b = GraphBuilder((6,))
    x = b.add(Linear(rng.normal(size=(8, 6)), rng.normal(size=8) * 0.3), [0])
    y = b.add(MaxMin(layout=layout, order=order), [x])
    z = b.add(Linear(rng.normal(size=(8, 8)) / 2, None), [y])
    s = b.add(Add(), [z, y])
    t = b.add(Activation("gelu"), [s])
    u = b.add(MaxMin(layout=layout, order=order), [t])
    b.add(Linear(rng.normal(size=(3, 8)), rng.normal(size=3)), [u])
    return b.build(name=f"maxmin{seed}")


@pytest.mark.parametrize("seed", range(4))
def test_intervals_contain_sampled_values_on_graph_nets(seed):
    """Conv, batch-norm, residual Add, MaxPool / AvgPool, Pad, Reshape (random_graph_net) and MaxMin with
    both layouts and orders inside a residual block."""
    rng = np.random.default_rng(seed)
    net = random_graph_net(seed)
    assert any(isinstance(n.op, Add) for n in net.nodes)
    region = Region.box(rng.random(net.input_shape), 0.3)
    _contains(net, interval_bounds(net, region), _box_points(region, 2000, rng))
    layout, order = [("pairs", "max_min"), ("halves", "min_max"), ("pairs", "min_max"), ("halves", "max_min")][seed]
    mm = _maxmin_net(seed, layout, order)
    region = Region.box(rng.normal(size=6), 0.7)
    _contains(mm, interval_bounds(mm, region), _box_points(region, 4000, rng))


def test_maxmin_and_maxpool_rules_are_exact_on_a_point():
    """max / min are monotone in each argument: on a degenerate box the interval is the value itself."""
    rng = np.random.default_rng(0)
    for net in (_maxmin_net(1), random_graph_net(0)):
        assert any(isinstance(n.op, (MaxMin, MaxPool2d)) for n in net.nodes)
        x = rng.normal(size=net.input_shape)
        ivs = interval_bounds(net, (x, x))
        vals = net.forward_all(torch.as_tensor(x)[None])
        for i, ((lo, hi), v) in enumerate(zip(ivs, vals)):
            if isinstance(net.nodes[i].op, (MaxMin, MaxPool2d)):
                src_lo, src_hi = ivs[net.nodes[i].inputs[0]]
                op = net.nodes[i].op
                assert torch.equal(lo, op.forward(src_lo)) and torch.equal(hi, op.forward(src_hi))
            assert bool((v >= lo).all() and (v <= hi).all())


# ---------------------------------------------------------------- rounding ---------------------------


def _exact_chain(layers, x):
    """Exact rational pre-activations of a chain of (W, b, act) with piecewise-linear act, at the float
    point x: list of lists of Fractions."""
    v = [Fraction(float(t)) for t in x]
    out = []
    for W, b, act in layers:
        z = [sum((Fraction(float(w)) * xi for w, xi in zip(row, v)), Fraction(float(bi))) for row, bi in zip(W, b)]
        out.append(z)
        if act is None:
            break
        name, a = act
        if name == "relu":
            v = [max(t, Fraction(0)) for t in z]
        elif name == "leaky_relu":
            v = [t if t > 0 else Fraction(a) * t for t in z]
        else:  # abs
            v = [abs(t) for t in z]
    return out


def _rounding_chain(seed):
    """Large, mixed-magnitude weights: float64 rounding of W x + b is far above one ulp of the result."""
    rng = np.random.default_rng(seed)
    sizes = [30, 40, 25, 6]
    acts = [("relu", None), ("leaky_relu", 0.1), ("abs", None)]
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        W = rng.normal(size=(n_out, n_in)) * 10.0 ** rng.integers(-3, 8, size=(n_out, n_in))
        b = rng.normal(size=n_out) * 1e7
        layers.append((W, b, acts[i] if i < len(sizes) - 2 else None))
    ops = []
    for W, b, act in layers:
        ops.append(Linear(W, b))
        if act is not None:
            ops.append(Activation(act[0], act[1]))
    return Network.sequential((sizes[0],), ops), layers, rng


@pytest.mark.parametrize("seed", range(3))
def test_rounding_degenerate_box_contains_the_exact_values(seed):
    """On a box of zero width the enclosure must still contain the exact (rational) pre-activations:
    without the rounding margin the interval is [fl(z), fl(z)], which misses z almost always."""
    net, layers, rng = _rounding_chain(seed)
    x = rng.normal(size=30) * 10.0 ** rng.integers(-2, 4, size=30)
    exact = _exact_chain(layers, x)
    graph = preactivation_intervals(net, (x, x))
    dense = dense_chain_intervals(net.dense_chain(), x, x)
    misses_without_margin = 0
    for z, (gl, gh), (dl, dh) in zip(exact, graph, dense):
        for j, zj in enumerate(z):
            for lo, hi in ((float(gl[j]), float(gh[j])), (float(dl[j]), float(dh[j]))):
                assert Fraction(lo) <= zj <= Fraction(hi), (j, lo, float(zj), hi)
    # the margins matter here: the float forward pass itself is off the exact values
    vals = net.preactivations(torch.as_tensor(x)[None])
    for z, v in zip(exact, vals):
        misses_without_margin += sum(Fraction(float(vj)) != zj for vj, zj in zip(v[0], z))
    assert misses_without_margin > 0
    # ... and the enclosure stays tight: the width is a tiny multiple of the rounding scale
    first = graph[0]
    W, b, _ = layers[0]
    scale = np.abs(W) @ np.abs(x) + np.abs(b)
    assert np.all((first[1] - first[0]).numpy() <= 4 * gamma(36) * scale)


def test_rounding_box_extremes_on_the_bound():
    """A box whose exact extreme of the first layer sits at a vertex: the enclosure contains the exact
    extreme (a point sitting exactly on the bound), also with cancellation (mid ~ 1e8, radius ~ 1)."""
    net, layers, rng = _rounding_chain(7)
    center = rng.normal(size=30) * 1e8
    lo_box, hi_box = center - rng.random(30), center + rng.random(30)
    (gl, gh) = preactivation_intervals(net, (lo_box, hi_box))[0]
    (dl, dh) = dense_chain_intervals(net.dense_chain(), lo_box, hi_box)[0]
    W, b, _ = layers[0]
    for i in range(W.shape[0]):
        top = Fraction(float(b[i])) + sum(Fraction(float(w)) * Fraction(float(hi_box[j] if w > 0 else lo_box[j]))
                                          for j, w in enumerate(W[i]))
        bottom = Fraction(float(b[i])) + sum(Fraction(float(w)) * Fraction(float(lo_box[j] if w > 0 else hi_box[j]))
                                             for j, w in enumerate(W[i]))
        assert Fraction(float(gl[i])) <= bottom and top <= Fraction(float(gh[i]))
        assert Fraction(float(dl[i])) <= bottom and top <= Fraction(float(dh[i]))


def test_transcendental_activation_against_mpmath():
    """tanh layer on a degenerate box: the enclosure contains tanh of the exact pre-activation (60 digits)."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 60
    rng = np.random.default_rng(3)
    W1, b1 = rng.normal(size=(50, 20)) / 4, rng.normal(size=50) / 4  # pre-activations of order 1
    net = Network.sequential((20,), [Linear(W1, b1), Activation("tanh"), Linear(np.eye(50), None)])
    x = rng.normal(size=20)
    ivs = interval_bounds(net, (x, x))
    lo, hi = ivs[2]
    for i in range(50):
        z = mp.mpf(float(b1[i])) + mp.fsum(mp.mpf(float(w)) * mp.mpf(float(xj)) for w, xj in zip(W1[i], x))
        t = mp.tanh(z)
        assert mp.mpf(float(lo[0, i])) <= t <= mp.mpf(float(hi[0, i]))


def test_dense_chain_intervals_on_a_conv_chain():
    """Folded conv + linear blocks (a read-only single-Linear view and dense conv matrices)."""
    rng = np.random.default_rng(5)
    b = GraphBuilder((2, 5, 5))
    c = b.add(Conv2d(rng.normal(size=(3, 2, 3, 3)), rng.normal(size=3), (1, 1), (1, 1)), [0])
    r = b.add(Activation("hardswish"), [c])
    f = b.add(Reshape((75,)), [r])
    h = b.add(Linear(rng.normal(size=(10, 75)) / 5, rng.normal(size=10)), [f])
    a = b.add(Activation("abs"), [h])
    b.add(Linear(rng.normal(size=(2, 10)), None), [a])
    net = b.build()
    region = Region.box(rng.normal(size=net.input_shape), 0.2)
    dense = dense_chain_intervals(net.dense_chain(), region.lower, region.upper)
    pre = net.preactivations(torch.as_tensor(_box_points(region, 3000, rng)))
    assert len(dense) == len(pre) == 2
    for (lo, hi), p in zip(dense, pre):
        p = p.numpy()
        assert lo.shape == hi.shape == (p.shape[1],)
        assert np.all(p >= lo) and np.all(p <= hi)
