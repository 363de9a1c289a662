"""Soundness of the foundation bounds: lower-sample <= lower-grad <= exact <= naive.

On every shared network and on random networks, in every norm; the exact value of the two scalar
networks comes from an independent dense grid over the input line."""

import math

import numpy as np
import pytest
import torch

import lipbound
from lipbound.activations import ACTIVATIONS
from lipbound.activations import make as make_activation
from lipbound.methods.lower import differentiable_mask
from lipbound.network import Activation, Add, GraphBuilder, Linear, MaxMin, Network
from conftest import shared_network_paths
from _nets import random_graph_net, random_mlp

NORMS = [1, 2, "inf"]
FAST = {"samples": 200}
FAST_GRAD = {"samples": 200, "restarts": 6, "steps": 15, "walk": 4}
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
    g = lipbound.bound(net, "lower-grad", norm="inf", steps=60, walk=0)  # the ascent alone (the walk: below)
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


# ---------------------------------------------------------------- every activation, MaxMin ---------

#: every entry of the activation table with its defaults, plus variants that change the shape
ACT_CASES = [(n, None) for n in ACTIVATIONS] + [("leaky_relu", -0.3), ("hardtanh", (0.0, 6.0)), ("elu", 0.5)]
ACT_IDS = [n if p is None else f"{n}-{p}" for n, p in ACT_CASES]


@pytest.mark.parametrize("act,param", ACT_CASES, ids=ACT_IDS)
@pytest.mark.parametrize("norm", NORMS)
def test_sandwich_for_every_activation(act, param, norm):
    net = random_mlp([5, 10, 8, 3], seed=len(act), activation=act, param=param, scale=2.0)
    _check_sandwich(net, norm)
    region = lipbound.Region.box(np.random.default_rng(1).normal(size=5), 0.5)
    for b in _check_sandwich(net, norm, region)[:2]:
        assert region.contains(b.witness, tol=0.0)
        assert bool(differentiable_mask(net, torch.as_tensor(b.witness)[None])[0])


@pytest.mark.parametrize("act,param", ACT_CASES, ids=ACT_IDS)
def test_no_witness_on_any_kink(act, param):
    """Every kink of every activation (fn.kinks(): hardtanh's ends, hardswish's +-3, ELU's 0 ...) is
    rejected by the mask, points next to it are accepted; a neuron that is constant on a kink (zero
    weights) does not matter."""
    fn = make_activation(act, param)
    rng = np.random.default_rng(0)
    W = np.vstack([[1.0, 0.0], [0.0, 0.0], rng.normal(size=(3, 2))])
    for p in [k[0] for k in fn.kinks()] or [0.0]:
        b = np.concatenate([[0.0, p], rng.normal(size=3) + 10.0])  # neuron 1: constant p; 2-4: far away
        net = Network.sequential((2,), [Linear(W, b), Activation(act, param), Linear(rng.normal(size=(2, 5)), None)])
        x = torch.tensor([[p, 0.01], [p + 1e-3, 0.01], [p - 1e-3, 0.01]], dtype=torch.float64)
        mask = differentiable_mask(net, x)
        assert bool(mask[0]) == (not fn.kinks()), (act, p)  # z_0 = p exactly
        assert bool(mask[1]) and bool(mask[2])


def _orthogonal_maxmin_net(seed, n=6, layout="pairs", order="max_min"):
    rng = np.random.default_rng(seed)
    q1, _ = np.linalg.qr(rng.normal(size=(n, n)))
    q2, _ = np.linalg.qr(rng.normal(size=(n, n)))
    b = GraphBuilder((n,))
    x = b.add(Linear(q1, rng.normal(size=n)), [0])
    x = b.add(MaxMin(layout=layout, order=order), [x])
    b.add(Linear(q2, rng.normal(size=n)), [x])
    return b.build(name="orthogonal-maxmin")


def test_maxmin_ties_are_kinks():
    rng = np.random.default_rng(0)
    b = GraphBuilder((4,))
    W = np.vstack([np.eye(4)[:2], np.zeros((2, 4))])
    x = b.add(Linear(W, np.array([0.0, 0.0, 0.5, 0.5])), [0])  # pair (2, 3) constant and tied
    x = b.add(MaxMin(), [x])
    b.add(Linear(rng.normal(size=(2, 4)), None), [x])
    net = b.build()
    pts = torch.tensor([[0.3, 0.3, 1.0, 2.0], [0.3, 0.3 + 1e-6, 1.0, 2.0], [0.3, -0.2, 5.0, 5.0]], dtype=torch.float64)
    assert differentiable_mask(net, pts).tolist() == [False, True, True]


@pytest.mark.parametrize("layout,order", [("pairs", "max_min"), ("halves", "min_max")])
def test_maxmin_between_orthogonal_layers_is_exactly_one_in_l2(layout, order):
    """Q2 MaxMin(Q1 x + b) with orthogonal Q1, Q2: the Jacobian is orthogonal wherever it exists, so the
    l2 Lipschitz constant is exactly 1 (an independent value): both lower bounds find 1 and never more."""
    net = _orthogonal_maxmin_net(3, layout=layout, order=order)
    for method, opts in (("lower-sample", FAST), ("lower-grad", FAST_GRAD)):
        b = lipbound.bound(net, method, norm=2, **opts)
        assert b.ok and b.value == pytest.approx(1.0, abs=1e-12)
    _check_sandwich(net, "inf")
    _check_sandwich(net, 1, lipbound.Region.box(np.zeros(6), 0.5))


def test_lower_grad_on_a_maxmin_residual_net_beats_or_matches_sampling():
    rng = np.random.default_rng(2)
    b = GraphBuilder((6,))
    x = b.add(Linear(rng.normal(size=(8, 6)), rng.normal(size=8) * 0.3), [0])
    y = b.add(MaxMin(layout="halves"), [x])
    z = b.add(Linear(rng.normal(size=(8, 8)) / 2, None), [y])
    s = b.add(Add(), [z, y])
    t = b.add(Activation("hardtanh"), [s])
    b.add(Linear(rng.normal(size=(3, 8)), rng.normal(size=3)), [t])
    net = b.build()
    for norm in NORMS:
        _check_sandwich(net, norm)


def test_lower_grad_keeps_the_starts_that_fit_its_time():
    """After one measured step of n starts, lower-grad keeps the starts whose 150 steps fit its ascent time
    (all when they fit, never below MIN_RESTARTS), half best samples and half random points."""
    from lipbound.methods.lower.methods import MIN_RESTARTS, _kept_starts, _starts_that_fit

    assert _starts_that_fit(200, 0.01, 150, 10.0) == 200          # 1.5 s of 10 s: all
    assert _starts_that_fit(200, 0.1, 150, 30.0) == 200          # 15 s of 30 s: all
    assert _starts_that_fit(200, 1.0, 150, 30.0) == 40           # 150 s for 200 in 30 s: 200 x 30 / 150
    assert _starts_that_fit(200, 10.0, 150, 30.0) == MIN_RESTARTS
    assert _starts_that_fit(200, 10.0, 150, math.inf) == 200     # no time limit: all
    idx = _kept_starts(200, 100, 40)
    assert idx.tolist() == list(range(20)) + list(range(100, 120))
    assert _kept_starts(10, 5, 3).tolist() == [0, 1, 5]
    assert _kept_starts(10, 9, 4).tolist() == [0, 1, 2, 9]        # one random start only


# ---------------------------------------------------------------- the region walk (piecewise-linear nets) ---


def test_region_walk_climbs_to_the_exact_constant_and_never_above():
    """From 4 random points of a box, the walk across kink hyperplanes never ends below its best start nor
    above the exact constant (enumerate); it ends strictly above its start in most cases (7 of 8 here) and
    on the exact constant in many (6 of 8). Would fail if a value were taken at a non-differentiable point
    (possibly above the exact value) or outside the box, or if the walk lost its best piece."""
    from lipbound.methods.lower.methods import jacobian_norms, region_walk
    from lipbound.registry import MethodContext

    climbed = reached = 0
    for seed in range(4):
        net = random_mlp([3, 8, 8, 2], seed=seed)
        region = lipbound.Region.box(np.random.default_rng(seed).normal(size=3), 0.8)
        for norm in (math.inf, 2):
            exact = lipbound.bound(net, "enumerate", norm, region)
            assert exact.kind == "exact"
            starts = torch.as_tensor(region.sample(4, np.random.default_rng(seed)))
            start_best = float(jacobian_norms(net, starts, norm, None).max())
            value, x, _ = region_walk(net, MethodContext(norm=norm, region=region), starts, None, 30)
            assert start_best <= value <= exact.value * (1 + 1e-9)
            assert region.contains(x.numpy(), tol=0.0)
            assert abs(float(jacobian_norms(net, x[None], norm, None)[0]) - value) <= 1e-12 * value
            climbed += value > start_best
            reached += value >= exact.value * (1 - 1e-9)
    assert climbed >= 5 and reached >= 4, (climbed, reached)


@pytest.mark.slow
def test_lower_grad_walks_far_above_sampling_on_acas_xu_globally():
    """ACAS Xu 1_1, global l2: the walk lifts lower-grad from about 260 (ascent on the smoothed network) to
    above 1000 (1338 with the defaults here), still below the certified upper bound of lipsdp-opt."""
    net = lipbound.load(str(SHARED["ACASXU_run2a_1_1_batch_2000"]))
    plain = lipbound.bound(net, "lower-grad", 2, walk=0)
    walked = lipbound.bound(net, "lower-grad", 2)
    assert walked.value > 3 * plain.value and walked.details["walk_best"] == walked.value
    assert walked.value <= lipbound.bound(net, "lipsdp-opt", 2).value


def test_walk_steps_land_just_across_each_hyperplane():
    """One hidden ReLU layer, z = W x + b: the walk's candidates from x are x - (z_j / |w_j|^2) w_j (1 + 1e-3),
    moved 1e-9 further along the step, one per neuron (written out here with numpy): each lands just across
    neuron j's hyperplane. Would fail with the step's sign flipped (it would move away from the hyperplane)."""
    from lipbound.methods.lower.methods import _crossings, walked_nodes

    rng = np.random.default_rng(3)
    W, b = rng.normal(size=(6, 3)), rng.normal(size=6)
    net = Network.sequential((3,), [Linear(W, b), Activation("relu"), Linear(rng.normal(size=(2, 6)), None)])
    x = rng.normal(size=3)
    cand = _crossings(net, torch.as_tensor(x)[None], walked_nodes(net), None, None).numpy()
    z = W @ x + b
    step = -(z / (W * W).sum(1))[:, None] * W
    expected = x + step * (1 + 1e-3) + np.sign(step) * 1e-9
    assert cand.shape == expected.shape
    for e in expected:
        assert np.abs(cand - e).max(1).min() <= 1e-12 * (1 + np.abs(e).max())
    assert np.all(np.sign(W @ expected.T + b[:, None]).diagonal() == -np.sign(z))  # across its own hyperplane
