"""Soundness of the foundation bounds: lower-sample <= lower-grad <= exact <= naive.

On every shared network and on random networks, in every norm; the exact value of the two scalar
networks comes from an independent dense grid over the input line."""

import math

import numpy as np
import pytest
import torch

import lipbound
from conftest import shared_network_paths
from _nets import random_graph_net, random_mlp

NORMS = [1, 2, "inf"]
FAST = {"samples": 200}
FAST_GRAD = {"samples": 200, "restarts": 6, "steps": 15}
SHARED = {p.stem: p for p in shared_network_paths()}


HEAVY = {"samples": 40}
HEAVY_GRAD = {"samples": 40, "restarts": 4, "steps": 5}


def _check_sandwich(net, norm, region=None):
    heavy = net.n_inputs > 500  # image networks: fewer points, the same checks
    lo_s = lipbound.bound(net, "lower-sample", norm=norm, region=region, **(HEAVY if heavy else FAST))
    lo_g = lipbound.bound(net, "lower-grad", norm=norm, region=region, **(HEAVY_GRAD if heavy else FAST_GRAD))
    up = lipbound.bound(net, "naive", norm=norm, region=region)
    assert lo_s.ok and lo_g.ok and up.ok, (lo_s, lo_g, up)
    assert lo_s.kind == lo_g.kind == "lower" and up.kind == "upper"
    assert lo_s.value <= lo_g.value + 1e-9 * lo_g.value  # lower-grad screens the same samples first
    assert lo_g.value <= up.value * (1 + 1e-9), (lo_g.value, up.value)
    # the witnesses reproduce their values (independent recomputation of the Jacobian norm)
    for b in (lo_s, lo_g):
        J = net.jacobian(torch.as_tensor(b.witness).reshape((1,) + net.input_shape))
        assert lipbound.norms.operator_norm(J[0], norm) == pytest.approx(b.value, rel=1e-9)
    return lo_s, lo_g, up


@pytest.mark.parametrize("name", sorted(SHARED))
@pytest.mark.parametrize("norm", NORMS)
def test_sandwich_on_shared_networks(name, norm):
    net = lipbound.load(SHARED[name])
    _check_sandwich(net, norm)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("norm", NORMS)
def test_sandwich_on_random_networks(seed, norm):
    acts = [("relu", 0), ("leaky_relu", 0.2), ("tanh", 0), ("sigmoid", 0), ("elu", 1.0), ("softplus", 1.0)]
    act, param = acts[seed]
    _check_sandwich(random_mlp([5, 12, 9, 3], seed=seed, activation=act, param=param), norm)
    if seed < 4:
        _check_sandwich(random_graph_net(seed), norm)


@pytest.mark.parametrize("norm", NORMS)
def test_sandwich_on_a_box(norm):
    net = random_graph_net(2)
    rng = np.random.default_rng(0)
    region = lipbound.Region.box(rng.random(net.input_shape), 0.05)
    lo_s, lo_g, up = _check_sandwich(net, norm, region)
    for b in (lo_s, lo_g):
        assert region.contains(b.witness)


def _grid_lipschitz(net, lo=-50.0, hi=50.0, n=2_000_001):
    """Max |slope| of a scalar function on a dense grid (difference quotients: an independent value)."""
    x = torch.linspace(lo, hi, n, dtype=torch.float64).reshape(-1, 1)
    with torch.no_grad():
        y = net(x.reshape((-1,) + net.input_shape)).reshape(-1)
    return float(((y[1:] - y[:-1]).abs() / (x[1:, 0] - x[:-1, 0])).max())


@pytest.mark.parametrize("name", ["test_tiny", "test_small"])
@pytest.mark.parametrize("norm", NORMS)
def test_scalar_networks_against_a_grid(name, norm):
    if name not in SHARED:
        pytest.skip("shared networks missing")
    net = lipbound.load(SHARED[name])
    exact = _grid_lipschitz(net)
    assert exact > 0
    for method in ("lower-sample", "lower-grad"):
        b = lipbound.bound(net, method, norm=norm)
        assert exact * 0.99 <= b.value <= exact * (1 + 1e-9), (method, b.value, exact)
    up = lipbound.bound(net, "naive", norm=norm)
    assert up.value >= exact * (1 - 1e-9)


def test_lower_grad_clearly_beats_sampling_on_acas_xu():
    if "ACASXU_run2a_1_1_batch_2000" not in SHARED:
        pytest.skip("shared networks missing")
    net = lipbound.load(SHARED["ACASXU_run2a_1_1_batch_2000"])
    s = lipbound.bound(net, "lower-sample", norm="inf")
    g = lipbound.bound(net, "lower-grad", norm="inf", steps=60)
    assert g.value >= 1.3 * s.value, (g.value, s.value)


@pytest.mark.slow
@pytest.mark.parametrize("norm", NORMS)
def test_lower_grad_clearly_beats_sampling_on_mnist(norm):
    net = lipbound.load(SHARED["mnist-net_256x2"])
    s = lipbound.bound(net, "lower-sample", norm=norm)
    g = lipbound.bound(net, "lower-grad", norm=norm)
    assert g.value >= 1.3 * s.value, (g.value, s.value)


def test_lower_grad_beats_sampling_on_mnist_quick():
    net = lipbound.load(SHARED["mnist-net_256x2"])
    s = lipbound.bound(net, "lower-sample", norm=2, samples=500)
    g = lipbound.bound(net, "lower-grad", norm=2, samples=500, restarts=8, steps=30)
    assert g.value >= 1.3 * s.value, (g.value, s.value)


def test_a_kink_is_never_a_witness():
    """relu(x) - relu(-x) = x: at x = 0 autograd reports slope 0 for... the mask must drop kink points."""
    from lipbound.methods.lower import differentiable_mask

    net = random_mlp([2, 4, 1], seed=0)
    W = net.nodes[1].op.W
    b = net.nodes[1].op.b
    # a point exactly on the kink of neuron 0: W0 . x + b0 = 0
    x = torch.zeros(1, 2, dtype=torch.float64)
    x[0, 0] = -b[0] / W[0, 0]
    assert not bool(differentiable_mask(net, x)[0])
    assert bool(differentiable_mask(net, x + 0.01)[0])
