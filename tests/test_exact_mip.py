"""Tests of the exact methods `mip` and `enumerate` (issue 7) and of lipbound.data.

Every check is against something independent: the two exact methods against each other (a MIP on
HiGHS versus an LP-checked tree search over activation patterns), sampled gradients (certified lower
bounds), the naive product of layer norms, the other methods' certified upper bounds, autograd at the
returned witnesses, and LP weak duality."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lipbound
from lipbound.data import random_k_cluster, train_mlp
from lipbound.methods.exact import mip_core as core
from lipbound.network import Activation, Linear, Network
from lipbound.norms import operator_norm
from lipbound.registry import Region


def rand_net(widths, seed, act="relu", param=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    ops = []
    for i in range(len(widths) - 1):
        W = scale * rng.normal(size=(widths[i + 1], widths[i])) / np.sqrt(widths[i])
        ops.append(Linear(W, 0.5 * rng.normal(size=widths[i + 1])))
        if i < len(widths) - 2:
            ops.append(Activation(act, param))
    return Network.sequential((widths[0],), ops, name=f"rand{widths}-{seed}")


def naive_product(net, norm):
    """Product of the layer operator norms (activation slopes <= 1): a certified upper bound."""
    val = 1.0
    for node in net.nodes:
        if isinstance(node.op, Linear):
            val *= float(operator_norm(node.op.W.numpy(), norm))
    return val


def sampled_lower(net, region, norm, output=None, n=3000, seed=0):
    X = region.sample(n, np.random.default_rng(seed))
    J = net.jacobian(torch.as_tensor(X)).numpy()
    return float(np.max(operator_norm(J, norm, output)))


def jac_norm(net, x, norm, output=None):
    return float(operator_norm(net.jacobian(np.asarray(x, dtype=np.float64).reshape(1, -1))[0], norm, output))


CASES = []
for seed in range(14):
    d = (2, 3, 2, 4)[seed % 4]
    widths = [d, 6, 5, 3] if seed % 3 else [d, 8, 2]
    act, param = ("leaky_relu", 0.1) if seed % 5 == 4 else ("relu", 0.0)
    local = seed % 2 == 1
    CASES.append((seed, widths, act, param, local))


@pytest.mark.parametrize("seed,widths,act,param,local", CASES)
def test_mip_equals_enumerate(seed, widths, act, param, local):
    net = rand_net(widths, seed, act, param)
    rng = np.random.default_rng(1000 + seed)
    d = widths[0]
    region = Region.box(rng.uniform(0, 1, d), 0.3) if local else Region.from_bounds(np.zeros(d), np.ones(d))
    output = 1 if seed % 4 == 2 else None
    for norm in ("inf", 1):
        # samples=1: the MIP itself has to find the maximiser, not the sampling
        a = lipbound.bound(net, "mip", norm, region=region, output=output, samples=1,
                           bounds=("interval", "lp", "mip")[seed % 3])
        e = lipbound.bound(net, "enumerate", norm, region=region, output=output, prune=False)
        assert e.kind == "exact" and e.status == "ok", e.reason
        ep = lipbound.bound(net, "enumerate", norm, region=region, output=output, prune=True)
        assert ep.kind == "exact" and ep.value == pytest.approx(e.value, rel=1e-9, abs=1e-12)
        assert a.kind == "exact" and a.status == "ok", (a.reason, a.details.get("rel_gap"))
        assert a.value == pytest.approx(e.value, rel=1e-5, abs=1e-9)
        # both witnesses reproduce their values by autograd, inside the box
        for b in (a, e):
            assert region.contains(b.witness)
            assert jac_norm(net, b.witness, norm, output) == pytest.approx(b.value, rel=1e-5, abs=1e-9)
        # sandwich with independent bounds
        assert sampled_lower(net, region, norm, output) <= a.value * (1 + 1e-9) + 1e-12
        assert a.value <= naive_product(net, norm) * (1 + 1e-9)
        assert a.details["upper"] >= a.value


# negative-side slope of each ReLU-like activation, written out by hand: f(z) = z (z > 0), s z (z < 0)
_SLOPE_BY_HAND = {"relu": lambda p: 0.0, "leaky_relu": lambda p: float(p), "abs": lambda p: -1.0}


def brute_force_constant(net, lo, hi, norm, output=None) -> float:
    """The exact local constant of a tiny ReLU-like chain on a box, independently of lipbound's exact methods:
    every sign pattern of the hidden neurons whose region has an interior point in the box (max-slack LP by
    scipy's linprog: max t s.t. sign_j z_j(x) >= t ||grad z_j||, x in the box), the largest operator norm of
    its Jacobian W_L D_{L-1} W_{L-1} ... D_1 W_1 (D = 1 on the positive side, s on the negative side)."""
    from scipy.optimize import linprog

    layers = net.dense_chain()
    acts = [layer.activation for layer in layers[:-1]]
    slopes = [_SLOPE_BY_HAND[a.name](a.param) for a in acts]
    widths = [layer.W.shape[0] for layer in layers[:-1]]
    n0 = layers[0].W.shape[1]
    best = -math.inf
    for bits in range(2 ** sum(widths)):
        A, c = np.eye(n0), np.zeros(n0)  # h = A x + c (the input of the current layer)
        rows, pos = [], 0
        for layer, s, n in zip(layers[:-1], slopes, widths):
            Az, cz = layer.W @ A, layer.W @ c + layer.b
            sign = np.array([1.0 if (bits >> (pos + j)) & 1 else -1.0 for j in range(n)])
            pos += n
            for j in range(n):
                rows.append((sign[j] * Az[j], sign[j] * cz[j]))
            d = np.where(sign > 0, 1.0, s)
            A, c = d[:, None] * Az, d * cz
        G = np.array([g for g, _ in rows])
        h = np.array([hh for _, hh in rows])
        norms = np.linalg.norm(G, axis=1)
        # variables (x, t): maximise t s.t. -G x + ||g|| t <= h, lo <= x <= hi, t <= 1
        res = linprog(np.r_[np.zeros(n0), -1.0], A_ub=np.c_[-G, norms], b_ub=h,
                      bounds=list(zip(lo, hi)) + [(None, 1.0)], method="highs")
        if res.status != 0 or -res.fun <= 1e-9:
            continue
        J = layers[-1].W @ A
        best = max(best, float(operator_norm(J, norm, output)))
    return best


@pytest.mark.parametrize("act,param,seed", [("abs", None, 0), ("abs", None, 1), ("leaky_relu", -0.5, 2),
                                            ("leaky_relu", 0.2, 3), ("relu", None, 4)])
def test_relu_like_equals_brute_force_patterns(act, param, seed):
    """mip and enumerate on Abs, leaky ReLU with a negative slope and ReLU nets equal the brute-force
    enumeration of realisable activation patterns (an independent LP per pattern, scipy)."""
    net = rand_net([2, 4, 3, 2], seed, act, param)
    rng = np.random.default_rng(seed)
    region = Region.box(rng.uniform(-0.5, 0.5, 2), 0.6)
    for norm in ("inf", 1):
        for output in (None, 1):
            brute = brute_force_constant(net, region.lower, region.upper, norm, output)
            for method, opts in (("mip", {"samples": 1}), ("enumerate", {"prune": False}), ("enumerate", {})):
                b = lipbound.bound(net, method, norm, region=region, output=output, **opts)
                assert b.kind == "exact" and b.status == "ok", (method, b.reason)
                assert b.value == pytest.approx(brute, rel=1e-5, abs=1e-9), (method, norm, output)


def test_programs_without_binaries():
    """Sub-programs with no binary variable are LPs, whose HiGHS 'MIP dual bound' is 0.0, not a bound.
    (1) Every neuron stable: f(x) = relu(x + 3) . (1, 2) on [-0.5, 0.5]^2 is affine there with gradient
    (1, 2): l_inf constant 3 (by hand), and the upper bound reported must not fall below it. (2) Two stable
    layers before an unstable one, bounds=mip: the bound-tightening programs of layer 3 have no binary; the
    value must equal the brute-force enumeration."""
    tiny = Network.sequential((2,), [Linear(np.eye(2), np.full(2, 3.0)), Activation("relu"),
                                     Linear(np.array([[1.0, 2.0]]), None)])
    b = lipbound.bound(tiny, "mip", "inf", region=Region.box(np.zeros(2), 0.5))
    assert b.kind == "exact" and b.value == pytest.approx(3.0, rel=1e-12)
    assert b.details["upper"] >= 3.0 and all(e["upper"] >= 3.0 for e in b.details["subproblems"])
    rng = np.random.default_rng(3)
    W1, b1 = rng.normal(size=(3, 2)), np.full(3, 5.0)
    W2 = rng.normal(size=(2, 3))
    b2 = 20.0 - W2 @ b1
    W3 = rng.normal(size=(3, 2))
    b3 = -W3 @ (W2 @ b1 + b2) + 0.1 * rng.normal(size=3)  # layer 3 unstable near the box centre
    net = Network.sequential((2,), [Linear(W1, b1), Activation("relu"), Linear(W2, b2), Activation("relu"),
                                    Linear(W3, b3), Activation("relu"), Linear(rng.normal(size=(2, 3)), None)])
    region = Region.box(np.zeros(2), 0.5)
    for norm in ("inf", 1):
        brute = brute_force_constant(net, region.lower, region.upper, norm)
        m = lipbound.bound(net, "mip", norm, region=region, bounds="mip", samples=1)
        assert m.kind == "exact" and m.status == "ok", m.reason
        assert m.value == pytest.approx(brute, rel=1e-6)


def test_non_relu_like_piecewise_linear_is_refused():
    """Hardtanh (two kinks) is piecewise linear but not max(z, 0) + s min(z, 0): refused with a reason."""
    net = rand_net([2, 4, 2], 0, "hardtanh", (0.0, 6.0))
    for method in ("mip", "enumerate"):
        b = lipbound.bound(net, method, "inf", center=np.zeros(2), eps=0.5)
        assert b.status == "unsupported" and b.value is None and "hardtanh" in b.reason


def test_more_random_nets_mip_vs_enumerate_inf():
    """A second batch, only l_inf, with default options (CROWN/LP bounds, sampled incumbent)."""
    for seed in range(20, 26):
        net = rand_net([3, 7, 6, 2], seed)
        region = Region.box(np.random.default_rng(seed).uniform(-1, 1, 3), 0.5)
        a = lipbound.bound(net, "mip", "inf", region=region)
        e = lipbound.bound(net, "enumerate", "inf", region=region, prune=False)
        assert a.kind == e.kind == "exact"
        assert a.value == pytest.approx(e.value, rel=1e-5, abs=1e-9)


def test_time_limited_sandwich_and_witness():
    net = rand_net([6, 40, 40, 40, 3], 3, scale=1.5)
    region = Region.from_bounds(-np.ones(6), np.ones(6))
    b = lipbound.bound(net, "mip", "inf", region=region, time_limit=2.0, samples=200, bounds="interval",
                       chain_lp=False)
    assert b.status in ("time_limit", "ok")
    assert b.lower is not None and b.value is not None
    assert b.lower <= b.value * (1 + 1e-9)
    x = b.details["lower_witness"]
    assert region.contains(x)
    assert jac_norm(net, x, "inf") == pytest.approx(b.lower, rel=1e-9)
    if b.status == "time_limit":
        assert b.kind == "upper"
    assert b.value <= naive_product(net, "inf") * (1 + 1e-9)
    assert sampled_lower(net, region, "inf", n=2000) <= b.value


def test_mip_below_other_certified_upper_bounds():
    net = rand_net([3, 8, 8, 3], 7)
    region = Region.box(np.array([0.2, -0.1, 0.4]), 0.4)
    for norm in ("inf", 1):
        m = lipbound.bound(net, "mip", norm, region=region)
        assert m.kind == "exact"
        reg = lipbound.api.load_methods()
        for name in ("naive", "ibp-jacobian", "recurjac", "crown-bab", "lipopt"):
            if name not in reg:
                continue
            try:  # another method's crash is its own test's business; a wrong value is ours too
                b = lipbound.bound(net, name, norm, region=region, time_limit=2)
            except Exception:
                continue
            if b.status == "ok" and b.kind == "upper":
                assert m.value <= b.value * (1 + 1e-6) + 1e-9, name
        for name in ("lower-grad", "lower-sample"):
            if name in reg:
                try:
                    b = lipbound.bound(net, name, norm, region=region, time_limit=2)
                except Exception:
                    continue
                if b.status in ("ok", "time_limit") and b.value is not None:
                    assert b.value <= m.value * (1 + 1e-6) + 1e-9, name


def test_degenerate_network_never_claims_a_wrong_exact_value():
    # f(x) = relu(w.x) - relu(w.x) == 0: the MIP may mix the binaries at w.x = 0 and report |w|_1
    w = np.array([[1.0, -2.0]])
    net = Network.sequential((2,), [Linear(np.vstack([w, w]), np.zeros(2)), Activation("relu"),
                                    Linear(np.array([[1.0, -1.0]]), np.zeros(1))])
    region = Region.from_bounds(-np.ones(2), np.ones(2))
    m = lipbound.bound(net, "mip", "inf", region=region, bounds="interval")
    if m.kind == "exact":
        assert m.value == pytest.approx(0.0, abs=1e-9)
    else:
        assert m.lower is not None and m.lower == pytest.approx(0.0, abs=1e-12)
        assert m.value >= m.lower
    e = lipbound.bound(net, "enumerate", "inf", region=region)
    assert e.kind == "exact" and e.value == pytest.approx(0.0, abs=1e-12)


def test_sigmoid_is_unsupported_with_reason():
    rng = np.random.default_rng(0)
    net = Network.sequential((2,), [Linear(rng.normal(size=(4, 2)), np.zeros(4)), Activation("sigmoid"),
                                    Linear(rng.normal(size=(1, 4)), np.zeros(1))])
    region = Region.from_bounds(np.zeros(2), np.ones(2))
    for method in ("mip", "enumerate"):
        b = lipbound.bound(net, method, "inf", region=region)
        assert b.status == "unsupported" and b.value is None
        assert "sigmoid" in b.reason


def test_unsupported_requests():
    net = rand_net([2, 30, 30, 2], 0, scale=2.0)
    region = Region.from_bounds(-np.ones(2) * 5, np.ones(2) * 5)
    b = lipbound.bound(net, "enumerate", "inf", region=region, max_unstable=5)
    assert b.status == "unsupported" and "unstable" in b.reason
    # HiGHS is the only MIP solver wired up: no solver option to advertise scip (refused before running)
    with pytest.raises(lipbound.LipboundError, match="method mip has no option 'solver'"):
        lipbound.bound(net, "mip", "inf", region=region, solver="scip")
    b = lipbound.bound(net, "mip", "inf")  # no box
    assert b.status == "unsupported"
    b = lipbound.bound(net, "mip", 2, region=region)
    assert b.status == "unsupported"


def test_affine_network_is_exact():
    W = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    net = Network.sequential((3,), [Linear(W, np.zeros(2))])
    region = Region.from_bounds(np.zeros(3), np.ones(3))
    assert lipbound.bound(net, "mip", "inf", region=region).value == pytest.approx(4.0)
    assert lipbound.bound(net, "mip", 1, region=region).value == pytest.approx(5.0)


def test_jacobian_bound_dominates_every_completion():
    from lipbound.methods.exact.enumerate import jacobian_bound

    net = rand_net([3, 9, 8, 3], 11)
    layers = core.relu_chain(net)
    lo, hi = -np.ones(3), np.ones(3)
    bounds = core.interval_preact_bounds(layers, lo, hi)
    X = np.random.default_rng(2).uniform(lo, hi, size=(4000, 3))
    for norm in (math.inf, 1):
        top = jacobian_bound(layers, 0, np.eye(3), np.zeros(3), None, lo, hi, bounds, norm, None)
        assert sampled_lower(net, Region.from_bounds(lo, hi), norm, n=4000) <= top
    # a prefix: the pattern of the first layer at one point, bound over the points sharing it
    x0 = X[0]
    pre0 = layers[0].W @ x0 + layers[0].b
    d0 = np.where(pre0 > 0, 1.0, 0.0)
    A, c = d0[:, None] * layers[0].W, d0 * layers[0].b
    bnd = jacobian_bound(layers, 1, A, c, None, lo, hi, bounds, math.inf, None)
    same = ((X @ layers[0].W.T + layers[0].b > 0) == (pre0 > 0)).all(1)
    J = net.jacobian(torch.as_tensor(X[same])).numpy()
    assert operator_norm(J, "inf").max() <= bnd


def test_lp_tightening_is_sound_and_tighter():
    net = rand_net([3, 12, 12, 12, 2], 5)
    layers = core.relu_chain(net)
    lo, hi = -np.ones(3), np.ones(3)
    ib = core.interval_preact_bounds(layers, lo, hi)
    lb, done = core.lp_tighten(layers, lo, hi, ib)
    assert done
    X = np.random.default_rng(0).uniform(lo, hi, size=(5000, 3))
    pre = net.preactivations(torch.as_tensor(X))
    for (l1, u1), (l2, u2), z in zip(ib, lb, pre):
        z = z.numpy()
        assert (l2 >= l1 - 1e-12).all() and (u2 <= u1 + 1e-12).all()
        assert (z >= l2[None] - 1e-9).all() and (z <= u2[None] + 1e-9).all()


def test_certified_lp_max_weak_duality():
    rng = np.random.default_rng(3)
    for _ in range(5):
        m = core.Model()
        x = m.add_vars(-np.ones(4), np.ones(4))
        A = rng.normal(size=(3, 4))
        m.add_rows([(x, A)], np.full(3, -np.inf), rng.uniform(0.1, 1, 3))
        c = rng.normal(size=4)
        prob, (As, lb, ub, rl, ru) = m.to_highs(c, maximize=True)
        r = prob.solve()
        opt, y = r.objective, r.row_dual
        cert = core.certified_lp_max(c, As, lb, ub, rl, ru, y)
        assert opt - 1e-9 <= cert <= opt + 1e-6
        assert core.certified_lp_max(c, As, lb, ub, rl, ru, np.zeros(3)) >= opt - 1e-12  # any y is valid


def test_random_k_cluster_and_train_mlp():
    X, y = random_k_cluster(200, 2, 6, 3, seed=4)
    X2, y2 = random_k_cluster(200, 2, 6, 3, seed=4)
    assert np.array_equal(X, X2) and np.array_equal(y, y2)
    assert X.shape == (200, 2) and ((X >= 0) & (X <= 1)).all() and set(np.unique(y)) <= {0, 1, 2}
    # labels are piecewise constant over the Voronoi cells of the leaders: each leader carries its own label
    Xr, _ = random_k_cluster(50, 3, 5, 2, seed=1, radius=0.05)
    d = np.linalg.norm(Xr[:, None] - Xr[None], axis=-1) + np.eye(len(Xr))
    assert d.min() >= 0.1 - 1e-12
    net = train_mlp([2, 8, 2], X, y % 2, epochs=30, seed=0)
    net2 = train_mlp([2, 8, 2], X, y % 2, epochs=30, seed=0)
    out, out2 = net(torch.as_tensor(X)), net2(torch.as_tensor(X))
    assert out.shape == (200, 2) and torch.equal(out, out2)
    b = lipbound.bound(net, "mip", "inf", region=Region.from_bounds(np.zeros(2), np.ones(2)))
    assert b.kind == "exact" and b.value <= naive_product(net, "inf") * (1 + 1e-9)


@pytest.mark.parametrize("norm", [1, "inf"])
@pytest.mark.parametrize("widths", [[6, 8, 3], [3, 7, 7, 9]])
def test_subproblems_without_time_to_build_keep_a_certified_bound(widths, norm, monkeypatch):
    """With no time to build any MIP every sub-problem gets its interval bound (l1 with fewer outputs than
    inputs: from the outputs' gradient rows; otherwise from its own chain): the upper stays at or above
    the exact constant (enumerate) and the result says it is not complete."""
    from lipbound.methods.exact import methods as exact_methods

    monkeypatch.setattr(exact_methods._MipRun, "build_estimate", lambda self: 1e9)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        net = Network.sequential((widths[0],), [op for a, b in zip(widths[:-1], widths[1:]) for op in
                                                (Linear(rng.standard_normal((b, a)), rng.standard_normal(b)),
                                                 Activation("relu"))][:-1])
        center = rng.standard_normal(widths[0])
        exact = lipbound.bound(net, "enumerate", norm=norm, center=center, eps=0.3)
        b = lipbound.bound(net, "mip", norm=norm, center=center, eps=0.3, time_limit=5)
        assert b.value is not None and b.value >= exact.value * (1 - 1e-9), (seed, b.value, exact.value)
        assert b.status == "time_limit"


def test_direction_values_are_each_subproblems_norm_at_each_sample():
    """The sub-problem values at sampled Jacobians (batched products) against the definition, per sample:
    |c^T J|_1 for output directions, |(J d)_sel|_1 for input directions."""
    from lipbound.methods.exact import methods as exact_methods

    rng = np.random.default_rng(0)
    J = rng.standard_normal((7, 4, 9))
    sel = np.array([0, 2, 3])
    dirs = ([("backward", rng.standard_normal(4), np.arange(9), f"b{k}") for k in range(3)]
            + [("forward", np.eye(9)[i], sel, f"f{i}") for i in range(9)] + [("forward", rng.standard_normal(9), sel, "g")])
    for (mode, vec, s, _), v in zip(dirs, exact_methods._direction_values(J, dirs)):
        want = [np.abs(vec @ Jb).sum() if mode == "backward" else np.abs((Jb @ vec)[s]).sum() for Jb in J]
        assert np.allclose(v, want, rtol=1e-12, atol=1e-12)


def test_enumerate_on_a_constant_network_is_exact_zero_with_a_witness():
    """Every pattern's Jacobian is 0 (last layer zeroed): the search (on the branch-and-bound engine, whose
    own drop rule needs a lower bound > 0) still ends exact 0 with a witness in the box, and globally."""
    from _nets import random_mlp

    net = random_mlp([3, 5, 5, 2], seed=1)
    last = [n for n in net.nodes if n.op.is_affine][-1]
    last.op.W.zero_()
    center = np.array([0.1, -0.2, 0.3])
    for prune in (True, False):
        b = lipbound.bound(net, "enumerate", "inf", center=center, eps=1.0, prune=prune)
        assert b.kind == "exact" and b.value == 0.0 and b.details["patterns"] > 3
        assert np.all(np.abs(np.asarray(b.witness).ravel() - center) <= 1.0)
    g = lipbound.bound(net, "enumerate", "inf")
    assert g.kind == "exact" and g.value == 0.0 and g.witness is not None
