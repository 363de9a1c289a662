"""Tests of the local bound-propagation methods (crown, crown-bab, recurjac, ibp-jacobian) and of
crown.preactivation_bounds. Independent references: sampled gradients (certified lower bounds), an
enumeration of all Clarke-consistent activation patterns written here in numpy, a naive product of
norms, and exact gradients at a point."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lipbound
from lipbound.activations import ACTIVATIONS
from lipbound.crown import forward_bounds, preactivation_bounds
from lipbound.intervals import interval_bounds, preactivation_intervals
from lipbound.methods.jacobian.graph import JacobianGraph, product_lines
from lipbound.network import (Activation, Add, Conv2d, ElementwiseAffine, GraphBuilder, Linear, MaxMin, MaxPool2d,
                              Network, Reshape)
from lipbound.registry import Region

from _nets import random_graph_net, random_mlp
from conftest import SHARED

INF = math.inf


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: one thread avoids the synchronisation overhead on the shared 2-core machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def sampled_norm(net, region, n=4000, seed=0, norm=INF, output=None):
    x = torch.as_tensor(region.sample(n, np.random.default_rng(seed)))
    J = net.jacobian(x).numpy()
    if output is not None:
        J = J[:, output : output + 1, :]
    if norm == INF:
        return float(np.abs(J).sum(2).max())
    if norm == 2:
        return float(np.linalg.norm(J, axis=2).max()) if J.shape[1] == 1 else float(np.linalg.norm(J, 2, axis=(1, 2)).max())
    return float(np.abs(J).sum(1).max())


def enumerate_patterns(net, pre_bounds, outputs):
    """max over activation patterns consistent with the bounds (unstable ReLUs free in {0, 1}) of
    ||grad f_j||_1, written independently of the library (numpy, dense chain)."""
    chain = net.dense_chain()
    Ws = [np.asarray(layer.W) for layer in chain]
    choices = []
    for (lo, hi), layer in zip(pre_bounds, chain[:-1]):
        lo, hi = lo.numpy(), hi.numpy()
        a = layer.activation.param if layer.activation.name == "leaky_relu" else 0.0
        choices.append([(1.0,) if l > 0 else (a,) if h < 0 else (a, 1.0) for l, h in zip(lo, hi)])
    free = [(i, j) for i, layer in enumerate(choices) for j, c in enumerate(layer) if len(c) == 2]
    assert len(free) <= 14, "too many patterns for the test"
    best = 0.0
    for bits in itertools.product((0, 1), repeat=len(free)):
        s = [np.array([c[0] for c in layer]) for layer in choices]
        for (i, j), b in zip(free, bits):
            s[i][j] = choices[i][j][b]
        J = Ws[0]
        for i in range(1, len(Ws)):
            J = Ws[i] @ (s[i - 1][:, None] * J)
        best = max(best, float(np.abs(J[outputs]).sum(1).max()))
    return best


def naive_linf(net):
    prod = 1.0
    for layer in net.dense_chain():
        prod *= float(np.abs(layer.W).sum(1).max())
    return prod


def tiny_cases():
    out = []
    for seed in range(8):
        act = "relu" if seed < 6 else "leaky_relu"
        net = random_mlp([4, 6, 5, 3], seed=seed, activation=act, param=0.1)
        region = Region.box(np.random.default_rng(seed).random(4), 0.3)
        out.append((net, region))
    return out


# ---------------------------------------------------------------- forward bounds ----------------


#: every entry of the activation table with its defaults, plus parameter variants that change the shape
#: (non-monotone leaky ReLU, concave leaky ReLU, ReLU6, ELU with a kink)
ACT_CASES = [(n, None) for n in ACTIVATIONS] + [("leaky_relu", -0.3), ("leaky_relu", 2.0), ("hardtanh", (0.0, 6.0)),
                                                ("elu", 0.5)]
ACT_IDS = [n if p is None else f"{n}-{p}" for n, p in ACT_CASES]


@pytest.mark.parametrize("act,param", ACT_CASES, ids=ACT_IDS)
@pytest.mark.parametrize("alpha", [False, True])
def test_preactivation_bounds_contain_samples_and_beat_intervals(act, param, alpha):
    net = random_mlp([5, 12, 10, 8, 3], seed=3, activation=act, param=param, scale=2.0)
    region = Region.box(np.random.default_rng(0).normal(size=5), 0.4)
    pb = preactivation_bounds(net, region, alpha=alpha)
    ib = preactivation_intervals(net, region)
    pre = net.preactivations(torch.as_tensor(region.sample(3000, np.random.default_rng(1))))
    assert len(pb) == len(pre) == 3
    for p, (lo, hi), (ilo, ihi) in zip(pre, pb, ib):
        assert lo.dtype == torch.float64 and lo.shape == (p.shape[1],)
        assert bool((p >= lo - 1e-9).all() and (p <= hi + 1e-9).all())
        assert bool((lo >= ilo - 1e-12).all() and (hi <= ihi + 1e-12).all())


def test_preactivation_bounds_graph_net():
    net = random_graph_net(1)  # conv, batch-norm, residual add, avg-pool, pad
    region = Region.box(np.random.default_rng(2).random(net.input_shape), 0.2)
    pb = preactivation_bounds(net, region, alpha=True)
    pre = net.preactivations(torch.as_tensor(region.sample(2000, np.random.default_rng(3))))
    for p, (lo, hi) in zip(pre, pb):
        assert bool((p >= lo - 1e-9).all() and (p <= hi + 1e-9).all())


def _maxmin_net(seed, layout, order):
    rng = np.random.default_rng(seed)
    b = GraphBuilder((4,))
    x = b.add(Linear(rng.normal(size=(8, 4)), rng.normal(size=8) * 0.3), [0])
    x = b.add(MaxMin(layout=layout, order=order), [x])
    y = b.add(Linear(rng.normal(size=(8, 8)) / 3, rng.normal(size=8) * 0.3), [x])
    y = b.add(Add(), [y, x])
    y = b.add(MaxMin(layout=layout, order=order), [y])
    y = b.add(Linear(rng.normal(size=(6, 8)) / 3, rng.normal(size=6) * 0.3), [y])
    y = b.add(Activation("silu"), [y])
    b.add(Linear(rng.normal(size=(2, 6)), rng.normal(size=2) * 0.3), [y])
    return b.build(name="maxmin")


@pytest.mark.parametrize("layout,order", [("pairs", "max_min"), ("halves", "min_max")])
@pytest.mark.parametrize("alpha", [False, True])
def test_forward_bounds_relax_maxmin(layout, order, alpha):
    """CROWN on MaxMin (max = b + relu(a - b), min = a - relu(a - b)): the bounds of every pair difference
    and of the later pre-activations contain sampled values and beat interval propagation."""
    net = _maxmin_net(len(layout) + len(order), layout, order)
    region = Region.box(np.random.default_rng(1).normal(size=4), 0.5)
    fwd = forward_bounds(net, region, alpha=alpha)
    vals = net.forward_all(torch.as_tensor(region.sample(5000, np.random.default_rng(2))))
    ivs = interval_bounds(net, region)
    kinds = []
    for k, (lo, hi) in fwd.items():
        node = net.nodes[k]
        x = vals[node.inputs[0]].reshape(5000, -1)
        ilo, ihi = (t.reshape(-1) for t in ivs[node.inputs[0]])
        if isinstance(node.op, MaxMin):
            h, l = (torch.as_tensor(t) for t in node.op.pairs(node.shape))
            x, ilo, ihi = x[:, h] - x[:, l], ilo[h] - ihi[l], ihi[h] - ilo[l]
        kinds.append(node.op.kind)
        assert bool((x >= lo).all() and (x <= hi).all()), k
        assert bool((lo >= ilo - 1e-12).all() and (hi <= ihi + 1e-12).all())
    assert kinds == ["MaxMin", "MaxMin", "Activation"]
    lo, hi = fwd[len(net.nodes) - 2]
    ilo, ihi = ivs[len(net.nodes) - 3]
    assert float((hi - lo).sum()) < 0.8 * float((ihi - ilo).sum())  # regression signal: CROWN is tighter


# ---------------------------------------------------------------- relaxations --------------------


def test_product_lines_are_sound_and_tight():
    rng = np.random.default_rng(0)
    n = 2000
    sl = torch.as_tensor(rng.uniform(-0.5, 1, n))
    su = sl + torch.as_tensor(rng.uniform(0, 1, n) * (rng.random(n) < 0.7))
    gl = torch.as_tensor(rng.normal(size=n))
    gu = gl + torch.as_tensor(rng.exponential(size=n))
    aL, bL, aU, bU = product_lines(sl, su, gl, gu, "crown")
    for _ in range(20):
        t, r = torch.as_tensor(rng.random(n)), torch.as_tensor(rng.random(n))
        s, u = sl + t * (su - sl), gl + r * (gu - gl)
        assert bool((s * u >= aL * u + bL - 1e-9).all() and (s * u <= aU * u + bU + 1e-9).all())
    # tight: the lines touch the set at both ends of the u interval
    for u in (gl, gu):
        lo = torch.minimum(sl * u, su * u)
        hi = torch.maximum(sl * u, su * u)
        assert torch.allclose(aL * u + bL, lo, atol=1e-9) and torch.allclose(aU * u + bU, hi, atol=1e-9)


# ---------------------------------------------------------------- the chain of inequalities -------


@pytest.mark.parametrize("case", range(8))
def test_chain_sampled_enum_bab_crown_recurjac(case):
    net, region = tiny_cases()[case]
    pre = preactivation_bounds(net, region, alpha=False)
    enum = enumerate_patterns(net, pre, [0, 1, 2])
    samp = sampled_norm(net, region, 20000)
    crown = lipbound.bound(net, "crown", norm="inf", region=region, alpha=False)
    recur = lipbound.bound(net, "recurjac", norm="inf", region=region, alpha=False)
    # neuron splitting without the pattern LP: converges to at most the maximum over the activation
    # patterns consistent with the root's forward bounds (the split constraints tighten them further)
    bab = lipbound.bound(net, "crown-bab", norm="inf", region=region, time_limit=10, alpha=False, lp_prune=False,
                         split="neuron")
    exact = lipbound.bound(net, "enumerate", norm="inf", region=region)
    ibp = lipbound.bound(net, "ibp-jacobian", norm="inf", region=region)
    tol = 1e-9
    assert samp <= enum + tol
    assert exact.kind == "exact" and samp <= exact.value + tol
    assert exact.value <= bab.value + tol
    assert bab.value <= crown.value + tol
    assert crown.value <= recur.value + tol
    # tiny nets: the branch and bound finishes and reaches the enumeration value
    assert bab.status == "ok" and bab.value <= enum * 1.01 + tol
    # regression signals (not theorems): crown below interval propagation and the naive product
    assert crown.value <= ibp.value + tol
    assert crown.value <= naive_linf(net) + tol


@pytest.mark.parametrize("case", range(8))
def test_bab_with_pattern_lp_reaches_the_exact_value(case):
    """With LP pruning of unrealisable patterns the branch and bound converges to the exact local
    constant (the `enumerate` method, written independently): exact <= bab <= 1.01 exact."""
    net, region = tiny_cases()[case]
    exact = lipbound.bound(net, "enumerate", norm="inf", region=region)
    if not (exact.ok and exact.kind == "exact"):
        pytest.skip(f"enumerate did not finish: {exact.status} {exact.reason}")
    for split in ("input", "neuron"):
        bab = lipbound.bound(net, "crown-bab", norm="inf", region=region, time_limit=10, split=split)
        assert bab.details["lp_prune"]
        assert exact.value - 1e-7 <= bab.value <= 1.01 * exact.value + 1e-9
        assert bab.value >= sampled_norm(net, region, 5000) - 1e-9
        if bab.kind == "exact" or bab.lower is not None:  # the search's own certified lower bound
            low = bab.value if bab.kind == "exact" else bab.lower
            assert low <= exact.value + 1e-9
            assert low == pytest.approx(float(np.abs(net.jacobian(torch.as_tensor(
                bab.witness if bab.kind == "exact" else bab.details["lower_witness"]).reshape(1, -1))[0].numpy()).sum(1).max()),
                rel=1e-9)
    # input splitting with the pattern LP closes every tiny case: exact, with the enumeration's value
    bab = lipbound.bound(net, "crown-bab", norm="inf", region=region, time_limit=10, split="input")
    assert bab.kind == "exact" and bab.value == pytest.approx(exact.value, rel=1e-9)


@pytest.mark.parametrize("case", range(8))
def test_crown_below_recurjac_with_the_same_intermediate_bounds(case):
    net, region = tiny_cases()[case]
    fwd_list = preactivation_bounds(net, region, alpha=True)
    acts = [i for i, n in enumerate(net.nodes) if isinstance(n.op, Activation)]
    G = JacobianGraph(net, dict(zip(acts, fwd_list)))
    c = G.bound(range(3), INF, mode="crown")
    r = G.bound(range(3), INF, mode="recurjac", g_known=c.g, v_known=c.v, refresh="final")
    assert bool((c.value <= r.value + 1e-9).all())


def test_sign_enumeration_bounds_the_exact_row_norm_and_beats_the_chord():
    """`JacobianGraph._sign_bound` (l_inf: both signs of the sign-crossing gradient entries, the chord on the
    others) against each output's exact constant from `enumerate`: never below it, never above the chord
    bound, and below it where entries cross 0. Enumerating only one sign vector, or dropping the chord's
    offsets of the entries not enumerated, falls below the exact value here."""
    gains = []
    for seed, lowrank in [(0, False), (1, True)]:
        act = "relu" if seed % 2 == 0 else "leaky_relu"
        net = random_mlp([6, 10, 8, 3], seed=seed, activation=act, param=0.1)
        region = Region.box(np.random.default_rng(seed).random(6), 0.5)
        fwd_list = preactivation_bounds(net, region)
        acts = [i for i, n in enumerate(net.nodes) if isinstance(n.op, Activation)]
        exact = [lipbound.bound(net, "enumerate", norm="inf", region=region, output=j, time_limit=60).value
                 for j in range(3)]
        values = {}
        for k in (0, 2, 6):
            G = JacobianGraph(net, dict(zip(acts, fwd_list)))
            G.lowrank, G.sign_entries = lowrank, k
            values[k] = G.bound(range(3), INF, mode="crown").value
            assert all(float(values[k][j]) >= exact[j] * (1 - 1e-9) for j in range(3)), (seed, k)
        assert bool((values[2] <= values[0] + 1e-12).all()) and bool((values[6] <= values[0] + 1e-12).all())
        gains.append(float((values[6] / values[0]).min()))
    assert min(gains) < 0.95, gains


def test_lowrank_walk_equals_direct_walk():
    for net, eps in [(random_mlp([5, 12, 10, 8, 3], seed=0), 0.3), (random_mlp([5, 9, 9, 3], seed=4, activation="tanh"), 0.2),
                     (random_graph_net(1), 0.1)]:
        region = Region.box(np.random.default_rng(1).random(net.input_shape), eps)
        fwd_list = preactivation_bounds(net, region)
        acts = [i for i, n in enumerate(net.nodes) if isinstance(n.op, Activation)]
        vals = []
        for lowrank in (False, True):
            G = JacobianGraph(net, dict(zip(acts, fwd_list)))
            G.lowrank = lowrank
            vals.append(G.bound(range(net.n_outputs), INF).value)
        assert torch.allclose(vals[0], vals[1], rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- exactness at a point --------------


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "tanh", "sigmoid"])
def test_eps_to_zero_gives_the_gradient_norm(act):
    net = random_mlp([6, 10, 8, 4], seed=5, activation=act, param=0.1)
    rng = np.random.default_rng(7)
    for _ in range(50):
        x0 = rng.normal(size=6)
        if min(float(p.abs().min()) for p in net.preactivations(torch.as_tensor(x0)[None])) > 1e-3:
            break
    region = Region.box(x0, 1e-10)
    J = net.jacobian(torch.as_tensor(x0)[None])[0].numpy()
    exact_inf = float(np.abs(J).sum(1).max())
    b = lipbound.bound(net, "crown", norm="inf", region=region)
    assert b.value == pytest.approx(exact_inf, rel=1e-6)
    b2 = lipbound.bound(net, "crown", norm=2, region=region, output=1)
    assert b2.value == pytest.approx(float(np.linalg.norm(J[1])), rel=1e-6)
    b1 = lipbound.bound(net, "crown", norm=1, region=region)
    assert b1.value == pytest.approx(float(np.abs(J).sum(0).max()), rel=1e-6)
    # several outputs, norm 2: at a point the interval Jacobian is J itself, so the spectral norm (the
    # Frobenius bound alone would give ||J||_F, larger)
    b2m = lipbound.bound(net, "crown", norm=2, region=region)
    assert b2m.value >= np.linalg.norm(J, 2) - 1e-9
    assert b2m.value == pytest.approx(float(np.linalg.norm(J, 2)), rel=1e-6)
    assert b2m.value < 0.999 * float(np.linalg.norm(J))


# ---------------------------------------------------------------- branch and bound ------------------


def test_bab_history_non_increasing_and_below_crown():
    net = random_mlp([5, 16, 16, 3], seed=11)
    region = Region.box(np.random.default_rng(3).random(5), 0.5)
    crown = lipbound.bound(net, "crown", norm="inf", region=region)
    bab = lipbound.bound(net, "crown-bab", norm="inf", region=region, time_limit=3, batch=8)
    h = bab.details["history"]
    assert len(h) >= 2
    assert all(b <= a + 1e-12 for (_, a), (_, b) in zip(h, h[1:]))
    assert all(t2 >= t1 for (t1, _), (t2, _) in zip(h, h[1:]))
    assert bab.value <= crown.value + 1e-9
    assert bab.value >= sampled_norm(net, region, 5000) - 1e-9
    for refresh in ("input", "final"):
        other = lipbound.bound(net, "crown-bab", norm="inf", region=region, time_limit=1, refresh=refresh)
        assert sampled_norm(net, region, 5000) - 1e-9 <= other.value <= crown.value + 1e-9


@pytest.mark.parametrize("act,param", [("abs", None), ("leaky_relu", -0.3), ("leaky_relu", 2.0)])
def test_bab_splits_every_relu_like_activation(act, param):
    """Abs and leaky ReLUs with a negative or > 1 slope are split too (fn.relu_like_slope): with the
    pattern LP the branch and bound reaches the exact value of the `enumerate` method."""
    net = random_mlp([4, 6, 5, 3], seed=3, activation=act, param=param)
    region = Region.box(np.random.default_rng(3).random(4), 0.3)
    exact = lipbound.bound(net, "enumerate", norm="inf", region=region)
    if not (exact.ok and exact.kind == "exact"):
        pytest.skip(f"enumerate did not finish: {exact.status} {exact.reason}")
    crown = lipbound.bound(net, "crown", norm="inf", region=region)
    bab = lipbound.bound(net, "crown-bab", norm="inf", region=region, time_limit=10)
    assert bab.status == "ok" and bab.details["converged"] and bab.details["lp_prune"]
    assert exact.value - 1e-7 <= bab.value <= 1.01 * exact.value + 1e-9
    assert bab.value <= crown.value + 1e-9


def test_bab_with_unsplittable_neurons_is_sound_and_says_so():
    """ReLU layers are split, the tanh layer is not: the bound stays between the samples and crown, and
    the result does not claim convergence to the pattern maximum."""
    rng = np.random.default_rng(4)
    ops = [Linear(rng.normal(size=(6, 4)), rng.normal(size=6)), Activation("relu"),
           Linear(rng.normal(size=(5, 6)), rng.normal(size=5)), Activation("tanh"),
           Linear(rng.normal(size=(3, 5)), rng.normal(size=3))]
    net = Network.sequential((4,), ops)
    region = Region.box(rng.random(4), 0.4)
    crown = lipbound.bound(net, "crown", norm="inf", region=region)
    bab = lipbound.bound(net, "crown-bab", norm="inf", region=region, time_limit=5, split="neuron")
    assert bab.ok
    assert sampled_norm(net, region, 5000) - 1e-9 <= bab.value <= crown.value + 1e-9
    assert not bab.details["converged"]
    assert bab.details.get("stopped") == "unsplittable" or bab.status == "time_limit"
    tanh_only = random_mlp([4, 6, 3], seed=1, activation="tanh")
    b = lipbound.bound(tanh_only, "crown-bab", norm=2, region=region, time_limit=5, split="neuron")
    assert b.ok and b.details["steps"] == 0 and not b.details["converged"] and "tanh" in b.details["note"]
    crown2 = lipbound.bound(tanh_only, "crown", norm=2, region=region).value
    assert b.value == pytest.approx(crown2, rel=1e-12)
    # splitting the input refines every activation: tanh too
    bi = lipbound.bound(tanh_only, "crown-bab", norm=2, region=region, time_limit=3, split="input")
    assert sampled_norm(tanh_only, region, 5000, norm=2) - 1e-9 <= bi.value < 0.99 * crown2


def test_bab_norm2_single_output_and_outputs():
    net, region = tiny_cases()[0]
    samp = sampled_norm(net, region, 5000, norm=2, output=2)
    b = lipbound.bound(net, "crown-bab", norm=2, region=region, output=2, time_limit=3)
    c = lipbound.bound(net, "crown", norm=2, region=region, output=2)
    assert samp - 1e-9 <= b.value <= c.value + 1e-9


# ---------------------------------------------------------------- random graph nets (seeded sweep) --


def random_conv_residual_net(seed):
    rng = np.random.default_rng(seed)
    b = GraphBuilder((1, 5, 5))
    stride = int(rng.integers(1, 3))
    pad = int(rng.integers(0, 2))
    c1 = b.add(Conv2d(rng.normal(size=(3, 1, 3, 3)) / 2, rng.normal(size=3) * 0.2, (stride, stride), (pad, pad)), [0])
    act = ["relu", "leaky_relu", "tanh", "sigmoid"][seed % 4]
    r1 = b.add(Activation(act, 0.1), [c1])
    shape = b.nodes[r1].shape
    c2 = b.add(Conv2d(rng.normal(size=(3, 3, 3, 3)) / 4, None, (1, 1), (1, 1)), [r1])
    bn = b.add(ElementwiseAffine(rng.uniform(0.5, 1.5, (3, 1, 1)), rng.normal(size=(3, 1, 1)) * 0.1), [c2])
    add = b.add(Add(), [bn, r1])
    r2 = b.add(Activation("relu"), [add])
    n = int(np.prod(shape))
    flat = b.add(Reshape((n,)), [r2])
    b.add(Linear(rng.normal(size=(3, n)) / np.sqrt(n), rng.normal(size=3) * 0.1), [flat])
    return b.build(name=f"convres{seed}")


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), eps=st.sampled_from([0.05, 0.2, 0.5]))
def test_sweep_random_nets_sampled_below_crown(seed, eps):
    net = random_conv_residual_net(seed) if seed % 2 else random_mlp([4, 7, 6, 3], seed=seed,
                                                                     activation=["relu", "tanh", "sigmoid", "leaky_relu"][seed % 4],
                                                                     param=0.1)
    region = Region.box(np.random.default_rng(seed).random(net.input_shape), eps)
    samp = sampled_norm(net, region, 1500, seed)
    crown = lipbound.bound(net, "crown", norm="inf", region=region)
    recur = lipbound.bound(net, "recurjac", norm="inf", region=region)
    ibp = lipbound.bound(net, "ibp-jacobian", norm="inf", region=region)
    assert crown.ok and recur.ok and ibp.ok
    assert samp <= crown.value + 1e-9
    assert crown.value <= recur.value + 1e-9
    assert samp <= ibp.value + 1e-9


# ---------------------------------------------------------------- every activation of the table ------


@pytest.mark.parametrize("act,param", ACT_CASES, ids=ACT_IDS)
def test_every_activation_upper_bounds_above_sampled_and_lower_grad(act, param):
    """crown, recurjac, ibp-jacobian and crown-bab (norms 2, inf) are upper bounds on random MLPs of every
    activation: above the Jacobian norms at sampled points and above lower-grad's certified lower bound,
    in norms 1, 2 and inf, on a box whose pre-activations cross the kinks / inflections."""
    rng = np.random.default_rng(len(act))
    net = random_mlp([4, 8, 6, 3], seed=int(rng.integers(1000)), activation=act, param=param, scale=2.0)
    region = Region.box(rng.normal(size=4), 0.5)
    for norm in (1, 2, INF):
        samp = sampled_norm(net, region, 3000, seed=1, norm=norm)
        low = lipbound.bound(net, "lower-grad", norm=norm, region=region, samples=300, restarts=6, steps=20)
        assert low.ok and low.kind == "lower" and samp > 0
        values = {}
        for method in ("crown", "recurjac", "ibp-jacobian") + (("crown-bab",) if norm != 1 else ()):
            extra = {"time_limit": 1.0, "batch": 8, "max_domains": 64} if method == "crown-bab" else {}
            b = lipbound.bound(net, method, norm=norm, region=region, **extra)
            # crown-bab closes some of these boxes with its own certified lower bound: exact
            kinds = ("upper", "exact") if method == "crown-bab" else ("upper",)
            assert b.ok and b.kind in kinds, (method, b.status, b.reason)
            values[method] = b.value
            assert samp <= b.value * (1 + 1e-9), (method, norm, samp, b.value)
            assert low.value <= b.value * (1 + 1e-9), (method, norm, low.value, b.value)
        assert values["crown"] <= values["recurjac"] * (1 + 1e-9)
        if norm != 1:
            assert values["crown-bab"] <= values["crown"] * (1 + 1e-9)


# ---------------------------------------------------------------- shared networks ------------------


def _shared(name):
    path = SHARED / f"{name}.onnx"
    if not path.exists():
        pytest.skip(f"{path} missing")
    return lipbound.load(path)


@pytest.mark.parametrize("name,eps", [("Convnet_avgpool", 0.002), ("cifar_base_kw", 1 / 255), ("resnet_2b", 0.5 / 255),
                                      ("ffnnSIGMOID__Point_6x200", 0.005)])
def test_shared_networks_crown_above_sampled(name, eps):
    net = _shared(name)
    center = np.random.default_rng(1).random(net.n_inputs).reshape(net.input_shape)
    region = Region.box(center, eps)
    b = lipbound.bound(net, "crown", norm="inf", region=region, alpha=False)
    assert b.ok, b.reason
    assert sampled_norm(net, region, 64) <= b.value + 1e-9


def test_unsupported_requests():
    b = GraphBuilder((2, 6, 6))  # max pooling with padding: no ReLU form (its window would pad with -inf)
    b.add(MaxPool2d((2, 2), (2, 2), padding=(1, 1)), [0])
    padded = b.build()
    res = lipbound.bound(padded, "crown", norm="inf", region=Region.box(np.zeros((2, 6, 6)), 0.1))
    assert res.status == "unsupported" and res.value is None and "padding" in res.reason
    mlp = random_mlp([3, 4, 2], seed=0)
    assert lipbound.bound(mlp, "crown-bab", norm=1).status == "unsupported"  # global: needs a box
    b = GraphBuilder((4,))
    b.add(MaxMin(), [b.add(Linear(np.eye(4), np.zeros(4)), [0])])
    maxmin = b.build()
    for method in ("crown", "recurjac", "ibp-jacobian", "crown-bab"):  # the Jacobian graph has no MaxMin rule
        assert lipbound.bound(maxmin, method, norm="inf", region=Region.box(np.zeros(4), 0.1)).status == "unsupported"


@pytest.mark.parametrize("activation,param", [("relu", 0.0), ("leaky_relu", 0.1)])
@pytest.mark.parametrize("widths", [[3, 6, 2], [2, 5, 5, 3], [4, 4, 4, 4, 1]])
def test_global_jacobian_bounds_hold_the_exact_global_constant(widths, activation, param):
    """Globally (no box) crown, recurjac and ibp-jacobian give every neuron its activation's whole slope
    range: each is >= the exact global constant (enumerate over every region of R^n, an independent
    method), >= its own bound on a box, and crown <= ibp-jacobian (the same relaxation, tightened)."""
    for seed in range(2):
        net = random_mlp(widths, seed=seed, activation=activation, param=param)
        for norm in (1, 2, "inf"):
            exact = lipbound.bound(net, "enumerate", norm=norm)
            assert exact.status == "ok", exact.reason
            vals = {m: lipbound.bound(net, m, norm=norm) for m in ("crown", "recurjac", "ibp-jacobian")}
            for m, b in vals.items():
                assert b.status == "ok" and b.details["forward"] == "global slope ranges", (m, b.reason)
                assert b.value >= exact.value * (1 - 1e-9), (m, norm, b.value, exact.value)
            assert vals["crown"].value <= vals["ibp-jacobian"].value * (1 + 1e-9)
            box = lipbound.bound(net, "crown", norm=norm, center=np.zeros(widths[0]), eps=0.5)
            assert box.value <= vals["crown"].value * (1 + 1e-9)


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "gelu"])
def test_global_crown_on_smooth_activations_is_above_sampled_gradients(activation):
    """Smooth activations (no exact method): the global crown bound is above the gradient norm at random
    points of every scale (lower-sample globally: certified gradients) and below naive."""
    net = random_mlp([3, 8, 8, 2], seed=3, activation=activation, scale=2.0)
    for norm in (1, 2, "inf"):
        up = lipbound.bound(net, "crown", norm=norm)
        low = lipbound.bound(net, "lower-sample", norm=norm, samples=3000)
        naive = lipbound.bound(net, "naive", norm=norm)
        assert up.status == "ok" and low.value > 0
        assert low.value <= up.value * (1 + 1e-9) and up.value <= naive.value * (1 + 1e-9), (norm, low.value, up.value)


@pytest.mark.parametrize("kernel,stride", [((2, 2), (2, 2)), ((3, 3), (2, 2)), ((4, 4), (4, 4)), ((3, 2), (1, 1))])
def test_max_pooling_as_relus_is_the_same_function(kernel, stride):
    """`expand_maxpool`: the same outputs as torch's max pooling on random inputs (ties included) and the
    same Jacobian where the max is unique; overlapping windows and odd window sizes included."""
    from lipbound.maxpool_relu import expand_maxpool

    b = GraphBuilder((3, 9, 8))
    b.add(MaxPool2d(kernel, stride), [0])
    net = b.build()
    ex = expand_maxpool(net)
    assert not any(isinstance(n.op, MaxPool2d) for n in ex.nodes) and expand_maxpool(net) is ex
    x = torch.randn(6, 3, 9, 8, dtype=torch.float64)
    x[0] = 0.5  # every window tied
    want = torch.nn.functional.max_pool2d(x, kernel, stride)
    assert torch.allclose(ex(x), want, rtol=0, atol=1e-14) and torch.allclose(net(x), want)
    assert torch.allclose(ex.jacobian(x[1:3]), net.jacobian(x[1:3]), atol=1e-14)


@pytest.mark.parametrize("seed", [2])
def test_max_pooling_nets_jacobian_bounds_hold_sampled_gradients(seed):
    """Nets with max pooling (conv, ReLU, pooling, residual Add): crown and ibp-jacobian (three norms) and
    crown-bab (l_inf) bound them through the ReLU form, at or above the certified gradient norms at many
    random points of the box (lower-sample on the original network); crown at or below ibp-jacobian."""
    net = random_graph_net(seed)
    assert any(isinstance(n.op, MaxPool2d) for n in net.nodes)
    rng = np.random.default_rng(seed)
    region = Region.box(rng.standard_normal(net.input_shape), 0.3)
    for norm in (1, 2, "inf"):
        low = lipbound.bound(net, "lower-sample", norm=norm, region=region, samples=3000)
        ups = {m: lipbound.bound(net, m, norm=norm, region=region) for m in ("crown", "ibp-jacobian")}
        if norm == "inf":  # a few of its (slow, neuron-splitting) steps
            ups["crown-bab"] = lipbound.bound(net, "crown-bab", norm=norm, region=region, time_limit=2)
        for m, u in ups.items():
            assert u.status in ("ok", "time_limit") and u.value is not None, (m, u.reason)
            assert low.value <= u.value * (1 + 1e-9), (m, norm, low.value, u.value)
        assert ups["crown"].value <= ups["ibp-jacobian"].value * (1 + 1e-9)


def test_sparse_activation_step_equals_the_dense_one(monkeypatch):
    """CROWN's back-substitution works on the columns its coefficients touch on a wide layer (here for the
    ReLUs of an expanded max pooling's pair differences, which touch two neurons each): the activation step
    relaxes only those columns and a convolution's adjoint multiplies only those rows of its matrix. The
    forward bounds equal those of the dense steps (forced by raising the width threshold) to rounding, the
    sparse steps are really taken, and sampled activation inputs lie inside the bounds."""
    import lipbound.crown as crown
    from lipbound.maxpool_relu import expand_maxpool

    rng = np.random.default_rng(3)
    b = GraphBuilder((1, 21, 21))
    c1 = b.add(Conv2d(rng.standard_normal((16, 1, 2, 2)), rng.standard_normal(16) * 0.1, (1, 1), (0, 0)), [0])
    r1 = b.add(Activation("relu"), [c1])  # 16 x 20 x 20 = 6400 neurons: above SPARSE_MIN_WIDTH
    pool = b.add(MaxPool2d((2, 2), (2, 2)), [r1])
    flat = b.add(Reshape((16 * 10 * 10,)), [pool])
    b.add(Linear(rng.standard_normal((3, 1600)) / 40, None), [flat])
    net = expand_maxpool(b.build(name="wide_conv_pool"))
    assert net.nodes[r1].size >= crown.SPARSE_MIN_WIDTH
    centre = rng.uniform(0, 1, (1, 21, 21))
    region = Region.box(centre, 0.05)

    taken = []
    touched = crown.touched_columns
    monkeypatch.setattr(crown, "touched_columns", lambda Af: taken.append(touched(Af)) or taken[-1])
    sparse = forward_bounds(net, region)
    assert any(t is not None for t in taken)
    monkeypatch.setattr(crown, "SPARSE_MIN_WIDTH", 10 ** 9)
    dense = forward_bounds(net, region)
    assert sparse.keys() == dense.keys()
    for k in dense:
        for s_, d_ in zip(sparse[k], dense[k]):
            np.testing.assert_allclose(s_.numpy(), d_.numpy(), rtol=1e-9, atol=1e-9)
    # independent of both: the activation inputs of sampled points lie inside the bounds
    x = torch.as_tensor(centre + rng.uniform(-0.05, 0.05, (300, 1, 21, 21)))
    with torch.no_grad():
        vals = net.forward_all(x)
    assert len(sparse) >= 3  # the conv's ReLU and the ReLUs of the pooling's pair differences
    for k, (lo, hi) in sparse.items():
        z = vals[net.nodes[k].inputs[0]].reshape(300, -1)
        assert bool((z >= lo - 1e-9).all()) and bool((z <= hi + 1e-9).all())


def test_sparse_walk_gives_the_dense_crown_value(monkeypatch):
    """The Jacobian graph's back-substitution multiplies a convolution by the few columns its coefficients
    touch (`AffineOp.linear_cols`): on a max-pooling conv net its entry bounds and per-output values equal
    the dense walk's (forced by raising the width threshold) to rounding, and lie above sampled certified
    gradient norms."""
    import lipbound.crown as crown
    from lipbound.methods.lower.methods import jacobian_norms

    rng = np.random.default_rng(5)
    b = GraphBuilder((1, 21, 21))
    c1 = b.add(Conv2d(rng.standard_normal((16, 1, 2, 2)), rng.standard_normal(16) * 0.1, (1, 1), (0, 0)), [0])
    r1 = b.add(Activation("relu"), [c1])
    pool = b.add(MaxPool2d((2, 2), (2, 2)), [r1])
    flat = b.add(Reshape((16 * 10 * 10,)), [pool])
    b.add(Linear(rng.standard_normal((2, 1600)) / 40, None), [flat])
    net = b.build(name="wide_conv_pool_walk")
    centre = rng.uniform(0, 1, (1, 21, 21))
    calls = []
    linear_cols = Conv2d.linear_cols
    monkeypatch.setattr(Conv2d, "linear_cols", lambda self, *a: calls.append(1) or linear_cols(self, *a))
    from lipbound.maxpool_relu import expand_maxpool

    wide = expand_maxpool(net)
    fwd = forward_bounds(wide, Region.box(centre, 0.02))

    def graph_bounds():  # every gradient entry's bounds (the level where a dropped product would show)
        res = JacobianGraph(wide, fwd).bound([0, 1], math.inf, mode="crown")  # and each output row's l1 bound
        return torch.cat([res.v[0], res.v[1]] + [t for k in sorted(res.g) for t in res.g[k]], 1), res.value

    sparse_entries, sparse = graph_bounds()
    assert calls
    monkeypatch.setattr(crown, "SPARSE_MIN_WIDTH", 10 ** 9)
    calls.clear()
    dense_entries, dense = graph_bounds()
    assert not calls
    np.testing.assert_allclose(sparse_entries.numpy(), dense_entries.numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(sparse.numpy(), dense.numpy(), rtol=1e-9)
    x = torch.as_tensor(centre + rng.uniform(-0.02, 0.02, (200, 1, 21, 21)))
    assert float(jacobian_norms(net, x, math.inf, None).max()) <= float(sparse.max()) * (1 + 1e-9)


def test_sparse_steps_equal_dense_steps_on_random_coefficients(monkeypatch):
    """One back-substitution step on its own: CROWN's activation step and a convolution's adjoint, on
    coefficients that touch a few columns of a 4608-wide layer, equal the dense steps (to rounding) --
    the relaxed values, the constant they add and the coefficients passed on."""
    import lipbound.crown as crown
    from lipbound.activations import make as make_activation

    rng = np.random.default_rng(11)
    b = GraphBuilder((2, 13, 13))
    conv = b.add(Conv2d(rng.standard_normal((32, 2, 2, 2)), rng.standard_normal(32), (1, 1), (0, 0)), [0])
    act = b.add(Activation("relu"), [conv])  # 32 x 12 x 12 = 4608 neurons
    b.add(Reshape((4608,)), [act])
    net = b.build(name="wide_step")
    node_c, node_a = net.nodes[conv], net.nodes[act]
    lo = torch.as_tensor(rng.uniform(-1, 0.5, 4608))
    rel = {act: crown.ActivationRelaxation(make_activation("relu"), lo, lo + torch.as_tensor(rng.uniform(0, 1.5, 4608)))}
    A = torch.zeros(6, 4608, dtype=torch.float64)
    cols = rng.choice(4608, size=40, replace=False)
    A[:, cols] = torch.as_tensor(rng.standard_normal((6, 40)))
    A = A.reshape((6,) + node_a.shape)

    def step():
        p = crown._CrownPass(net, rel)
        p.bias = torch.zeros(6, dtype=torch.float64)
        mid = p._activation(node_a.op, node_a, A)
        out = p._affine(node_c.op, node_c, mid)
        return mid, out, p.bias

    taken = []
    touched = crown.touched_columns
    monkeypatch.setattr(crown, "touched_columns", lambda Af: taken.append(touched(Af)) or taken[-1])
    sparse = step()
    assert sum(t is not None for t in taken) == 2  # both steps took the sparse path
    monkeypatch.setattr(crown, "SPARSE_MIN_WIDTH", 10 ** 9)
    dense = step()
    for s_, d_ in zip(sparse, dense):
        np.testing.assert_allclose(s_.numpy(), d_.numpy(), rtol=1e-12, atol=1e-12)
