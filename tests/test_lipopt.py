"""Soundness tests of LiPopt (LP hierarchy) and the Shor SDP baseline.

Independent references: the exact l_inf / l_1 Lipschitz constant of tiny ReLU networks by enumerating
the activation patterns whose regions are full-dimensional (LP feasibility), sampled gradient norms
(certified lower bounds), the naive product of operator norms, and the vertex maximum of the
norm-gradient polynomial (the limit of the hierarchy).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import linprog

import lipbound
from lipbound.network import Activation, Linear, Network
from lipbound.registry import Region
from lipbound.activations import ACTIVATIONS
from lipbound.methods.lipopt.chain import hidden_ranges, scalar_problems
from lipbound.methods.lipopt.core import (CoverageError, ScalarProblem, build_lp, clique_subsets, dense_subsets,
                                          gradient_polynomial, input_cliques, solve_lp)

NETWORKS = Path(__file__).resolve().parents[1].parent / "shared" / "networks"
RTOL = 1e-7


def make_net(sizes, act="relu", param=0.0, seed=0, bias=True, band=None, input_scale=None):
    rng = np.random.default_rng(seed)
    ops = []
    for i in range(len(sizes) - 1):
        W = rng.standard_normal((sizes[i + 1], sizes[i]))
        if i == 0 and input_scale is not None:
            W = W * input_scale[None, :]
        if band is not None and i < len(sizes) - 2:
            r, c = np.arange(sizes[i + 1])[:, None], np.arange(sizes[i])[None, :]
            W = W * ((c >= r - band // 2) & (c <= r - band // 2 + band - 1))
        b = rng.standard_normal(sizes[i + 1]) if bias else None
        ops.append(Linear(W, b))
        if i < len(sizes) - 2:
            ops.append(Activation(act, param))
    return Network.sequential((sizes[0],), ops)


def _realisable(chain, pattern, lo, hi):
    """An interior point of the activation pattern's region inside the box (all margins > 1e-9), or None."""
    n = chain[0].W.shape[1]
    A_ub, b_ub = [], []
    A, c = np.eye(n), np.zeros(n)  # current pre-activation = A x + c restricted to the pattern so far
    for layer, D in zip(chain[:-1], pattern):
        Z, z = layer.W @ A, layer.W @ c + layer.b
        sign = np.where(D > 0, 1.0, -1.0)
        # sign * (Z x + z) >= delta  <=>  -sign Z x + delta <= sign z
        A_ub.append(np.hstack([-(sign[:, None] * Z), np.ones((len(D), 1))]))
        b_ub.append(sign * z)
        A, c = D[:, None] * Z, D * z
    res = linprog(np.r_[np.zeros(n), -1.0], A_ub=np.vstack(A_ub), b_ub=np.concatenate(b_ub),
                  bounds=[(l_, h_) for l_, h_ in zip(lo, hi)] + [(None, 1.0)], method="highs")
    return res.x[:n] if res.status == 0 and -res.fun > 1e-9 else None


def exact_relu(net, norm=math.inf, lo=None, hi=None, R=1e3):
    """Exact l_inf (or l_1) Lipschitz constant of a ReLU net on the box [lo, hi] (default [-R, R]^n): the
    max over full-dimensional activation regions of the Jacobian's operator norm. Depth-first over
    neurons; a branch is kept when the parent's interior witness already realises it, else by an LP."""
    from lipbound.network import DenseLayer

    chain = net.dense_chain()
    n = chain[0].W.shape[1]
    lo = np.full(n, -R) if lo is None else np.asarray(lo, float)
    hi = np.full(n, R) if hi is None else np.asarray(hi, float)
    widths = [layer.W.shape[0] for layer in chain[:-1]]
    best = [0.0]

    def jac(pattern):
        J = chain[0].W
        for layer, D in zip(chain[1:], pattern):
            J = layer.W @ (D[:, None] * J)
        return np.abs(J).sum(1).max() if norm == math.inf else np.abs(J).sum(0).max()

    def preact(x, li, i):
        h = x
        for layer in chain[:li]:
            h = np.maximum(layer.W @ h + layer.b, 0.0)
        return chain[li].W[i] @ h + chain[li].b[i]

    def rec(pattern, li, partial, witness):
        if li == len(widths):
            best[0] = max(best[0], jac(pattern))
            return
        if len(partial) == widths[li]:
            rec(pattern + [np.array(partial, float)], li + 1, [], witness)
            return
        z = preact(witness, li, len(partial))
        for bit in (1.0, 0.0):
            trial = partial + [bit]
            if abs(z) > 1e-7 and (z > 0) == (bit > 0):
                rec(pattern, li, trial, witness)
                continue
            cut = DenseLayer(chain[li].W[:len(trial)], chain[li].b[:len(trial)], chain[li].activation)
            x = _realisable(chain[:li] + [cut, chain[-1]], pattern + [np.array(trial)], lo, hi)
            if x is not None:
                rec(pattern, li, trial, x)

    rec([], 0, [], (lo + hi) / 2)
    return best[0]


def sampled_lower(net, norm=math.inf, lo=None, hi=None, n=4000, seed=0, output=None):
    rng = np.random.default_rng(seed)
    d = net.n_inputs
    lo = np.full(d, -3.0) if lo is None else lo
    hi = np.full(d, 3.0) if hi is None else hi
    x = rng.uniform(lo, hi, size=(n, d))
    J = net.jacobian(x).numpy()
    if output is not None:
        J = J[:, output:output + 1]
    return float((np.abs(J).sum(2) if norm == math.inf else np.abs(J).sum(1)).max())


def naive(net, norm=math.inf):
    chain = net.dense_chain()
    val = 1.0
    for layer in chain:
        M = np.abs(layer.W)
        val *= (M.sum(1).max() if norm == math.inf else M.sum(0).max())
        if layer.activation is not None:
            val *= max(abs(layer.activation.alpha), abs(layer.activation.beta))
    return val


def lipopt(net, **kw):
    kw.setdefault("norm", "inf")
    b = lipbound.bound(net, "lipopt", **kw)
    assert b.status == "ok", (b.status, b.reason)
    assert b.kind == "upper"
    return b.value


# --------------------------------------------------------------------------------------------------
# the polynomial and the coefficient matching
# --------------------------------------------------------------------------------------------------


def test_worked_example_coefficients():
    # reference example: W1 = [[1,2,3],[-1,0,1]], W2 = [[1,2]] -> (t1s1, t1s2, t2s1, t2s2, t3s1, t3s2) = (1,-2,2,0,3,2)
    W1 = np.array([[1.0, 2, 3], [-1, 0, 1]])
    W2 = np.array([[1.0, 2]])
    prob = ScalarProblem([sp.csr_matrix(W1.T)], [np.zeros(3), np.zeros(2)], [np.ones(3), np.ones(2)], W2[0])
    poly = gradient_polynomial(prob)
    got = {tuple(m[m >= 0]): c for m, c in zip(poly.monos, poly.coef)}
    expected = {(0, 3): 1, (0, 4): -2, (1, 3): 2, (1, 4): 0, (2, 3): 3, (2, 4): 2}
    for mono, c in expected.items():
        assert got.get(mono, 0.0) == c
    assert set(got) == {m for m, c in expected.items() if c != 0}


def _eval_monomials(keys_rows, y):
    return np.array([np.prod(y[[v for v in row if v >= 0]]) for row in keys_rows])


@pytest.mark.parametrize("sparse", [False, True])
def test_coefficient_matching_is_an_identity(sparse):
    """Every LP column, read as a polynomial in the row monomials, equals its product evaluated
    directly, and the right-hand side equals -p evaluated through the network's matrices, at random
    points: no monomial of p or of any product is dropped."""
    net = make_net([3, 3, 2, 1], act="elu", param=1.0, seed=3)
    chain = net.dense_chain()
    a, w, _ = hidden_ranges(chain)
    prob = scalar_problems(chain, a, w, math.inf)[0].pruned()
    poly = gradient_polynomial(prob)
    k = 3
    subsets = clique_subsets(input_cliques(prob, poly), k, poly.m) if sparse else dense_subsets(poly.m, k)
    lp = build_lp(poly, subsets, k)
    # decode the row keys back into variable sets
    base = poly.m + 1
    rows = []
    for key in lp.keys:
        vs, key = [], int(key)
        while key:
            vs.append(key % base - 1)
            key //= base
        rows.append(vs)
    rng = np.random.default_rng(0)
    layer_sizes = [len(x) for x in prob.a]
    for _ in range(5):
        y = rng.uniform(0, 1, poly.m)
        mono_vals = _eval_monomials(rows, y)
        # products directly: column j*2^|J| + A over the subsets of equal size, in build order
        col = 0
        nslots = (subsets >= 0).sum(axis=1)
        for size in np.unique(nslots):
            for J in subsets[nslots == size]:
                J = J[:size]
                for A in range(2 ** size):
                    direct = np.prod([y[J[i]] if (A >> i) & 1 else 1 - y[J[i]] for i in range(size)])
                    via_rows = lp.A_prod[:, col].toarray().ravel() @ mono_vals
                    assert abs(direct - via_rows) < 1e-12
                    col += 1
        assert col == lp.A_prod.shape[1]
        # p via the matrices: x_l = a_l + w_l y_l (constants keep a_l)
        xs, pos = [], 0
        for l in range(prob.depth):
            x = prob.a[l].copy()
            isvar = prob.w[l] > 0
            nv = int(isvar.sum())
            x[isvar] += prob.w[l][isvar] * y[pos:pos + nv]
            pos += nv
            xs.append(x)
        z = prob.v * xs[-1]
        for l in range(prob.depth - 1, 0, -1):
            z = prob.Ms[l - 1] @ z
            z = z * xs[l - 1] if l - 1 > 0 else z
        p_direct = float(xs[0] @ z)
        assert abs(-lp.b @ mono_vals - p_direct) < 1e-10 * (1 + abs(p_direct))
    assert sum(layer_sizes) >= poly.m


def test_missing_monomial_is_detected():
    net = make_net([2, 3, 2, 1], seed=1)
    chain = net.dense_chain()
    a, w, _ = hidden_ranges(chain)
    prob = scalar_problems(chain, a, w, math.inf)[0].pruned()
    poly = gradient_polynomial(prob)
    subsets = dense_subsets(poly.m, 3)
    # drop every subset containing both variable 0 and the last variable: some monomial of p is then uncovered
    top = poly.monos[(poly.monos >= 0).all(axis=1)][0]
    keep = ~np.array([set(top) <= set(s) for s in subsets])
    with pytest.raises(CoverageError):
        build_lp(poly, subsets[keep], 3)
    # degree below the depth: the API refuses instead of returning a number
    b = lipbound.bound(net, "lipopt", norm="inf", degree=2)
    assert b.status == "unsupported" and b.value is None


def test_certification_of_a_perturbed_point():
    """The residual correction makes any (lambda, c) a valid bound: perturbing the solver's point can
    only increase the certified value above the vertex maximum."""
    net = make_net([2, 3, 2, 1], seed=2)
    chain = net.dense_chain()
    a, w, _ = hidden_ranges(chain)
    prob = scalar_problems(chain, a, w, math.inf)[0].pruned()
    poly = gradient_polynomial(prob)
    lp = build_lp(poly, dense_subsets(poly.m, 3), 3)
    sol = solve_lp(lp)
    vmax = prob.vertex_max()
    assert sol.value >= vmax - 1e-12
    from lipbound.methods.lipopt.core import certify

    rng = np.random.default_rng(0)
    import highspy  # noqa: F401  (the solve above used it)

    for scale in (1e-6, 1e-3, 1e-1):
        c = rng.uniform(0, scale, lp.A_prod.shape[1])
        val, _ = certify(lp, sol.lam - 0.5, c)  # a deliberately wrong lambda
        assert val >= vmax - 1e-12


@pytest.mark.parametrize("act,param,seed", [("relu", 0.0, 0), ("sigmoid", 0.0, 1), ("leaky_relu", -0.5, 2),
                                            ("elu", 1.0, 3)])
def test_interval_bound_lies_between_the_vertex_maximum_and_the_naive_product(act, param, seed):
    """`ScalarProblem.interval_bound` (the order and the fall-back of lipopt's problems) is certified: above the
    exact maximum of the polynomial (vertex enumeration), globally and on a box (ranges with a != 0, slopes of
    both signs with leaky_relu -0.5), and no looser than the |W|-product; it keeps signs, so on random weights
    it is strictly below the product somewhere."""
    net = make_net([3, 4, 3, 2], act=act, param=param, seed=seed)
    chain = net.dense_chain()
    box = Region.box(np.random.default_rng(seed).uniform(-1, 1, 3), 0.7)
    strictly_below = 0
    for region in (None, box):
        a, w, _ = hidden_ranges(chain, region)
        for norm in (math.inf, 1):
            for p in scalar_problems(chain, a, w, norm):
                ib, naive_p, vmax = p.interval_bound(), p.naive_bound(), p.pruned().vertex_max()
                assert vmax <= ib * (1 + 1e-12) and ib <= naive_p * (1 + 1e-12)
                strictly_below += ib < naive_p * (1 - 1e-6)
    assert strictly_below > 0


def test_batched_interval_bounds_equal_the_problems_own():
    """`problem_interval_bounds` batches the problems of one chain (they share everything but v) and takes
    any other list one by one: both give each problem's own `interval_bound`."""
    from lipbound.methods.lipopt.methods import problem_interval_bounds

    net = make_net([4, 5, 3, 3], seed=7)
    chain = net.dense_chain()
    a, w, _ = hidden_ranges(chain)
    for probs in (scalar_problems(chain, a, w, 1), scalar_problems(chain, a, w, math.inf),
                  scalar_problems(chain, a, w, 1)[:2] + scalar_problems(chain, a, w, math.inf)[:2]):
        own = [p.interval_bound() for p in probs]
        assert problem_interval_bounds(probs) == pytest.approx(own, rel=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_lipopt_solves_only_the_problems_that_can_raise_the_maximum(seed):
    """The l_1 problems (one per input) are taken by decreasing interval bound and those below the largest
    value held are never solved. The inputs are scaled 1, 1/2, 1/4, ... so that most are dominated. The value
    stays above the exact maximum of every problem, solved or not (vertex enumeration of each), and no worse
    than the largest LP value over all problems (each LP solved here)."""
    net = make_net([10, 5, 4, 3], seed=seed, input_scale=0.5 ** np.arange(10))
    b = lipbound.bound(net, "lipopt", norm=1, degree=3, sparse=False)
    assert b.status == "ok" and b.details["lp_solved"] < 10 and b.details["dominated"] > 0
    chain = net.dense_chain()
    a, w, _ = hidden_ranges(chain)
    probs = scalar_problems(chain, a, w, 1)
    assert max(p.pruned().vertex_max() for p in probs) <= b.value * (1 + RTOL)
    lps = []
    for p in probs:
        pr = p.pruned()
        poly = gradient_polynomial(pr)
        lps.append(solve_lp(build_lp(poly, dense_subsets(poly.m, 3), 3)).value if poly.m else p.naive_bound())
    assert b.value <= max(lps) * (1 + 1e-6)


# --------------------------------------------------------------------------------------------------
# global bounds against brute force
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes,seed", [([2, 4, 1], 0), ([3, 4, 3, 1], 1), ([2, 4, 3, 2], 2), ([3, 6, 2], 3)])
def test_global_relu_sandwich(sizes, seed):
    net = make_net(sizes, seed=seed)
    d = len(sizes) - 1
    exact = exact_relu(net)
    low = sampled_lower(net)
    assert low <= exact * (1 + 1e-9)
    vals = [lipopt(net, degree=k) for k in range(d, d + 2)]
    for v in vals:
        assert exact <= v * (1 + RTOL)
    for v_k, v_k1 in zip(vals, vals[1:]):
        assert v_k1 <= v_k * (1 + RTOL)
    assert vals[0] <= naive(net) * (1 + RTOL)
    # the limit of the hierarchy (vertex maximum) is below every level
    chain = net.dense_chain()
    a, w, _ = hidden_ranges(chain)
    vmax = max(p.pruned().vertex_max() for p in scalar_problems(chain, a, w, math.inf))
    assert exact <= vmax * (1 + 1e-9)
    assert vmax <= vals[-1] * (1 + RTOL)


@pytest.mark.parametrize("act,param", [("elu", 1.0), ("tanh", 0.0), ("sigmoid", 0.0), ("leaky_relu", 0.1),
                                       ("softplus", 1.0), ("elu", 2.0)])
def test_global_smooth_activations(act, param):
    net = make_net([3, 3, 3, 2], act=act, param=param, seed=4, bias=False)
    v3 = lipopt(net, degree=3)
    v4 = lipopt(net, degree=4)
    chain = net.dense_chain()
    a, w, _ = hidden_ranges(chain)
    vmax = max(p.pruned().vertex_max() for p in scalar_problems(chain, a, w, math.inf))
    low = sampled_lower(net)
    assert low <= vmax * (1 + 1e-9) <= v4 * (1 + RTOL)
    assert v4 <= v3 * (1 + RTOL)
    assert v3 <= naive(net) * (1 + RTOL)


def test_norm_one_transposed():
    net = make_net([3, 4, 3, 3], seed=5)
    exact = exact_relu(net, norm=1)
    low = sampled_lower(net, norm=1)
    v = lipopt(net, norm=1)
    assert low <= exact * (1 + 1e-9) <= v * (1 + RTOL)
    assert v <= naive(net, norm=1) * (1 + RTOL)
    # one output: the l_1 constant of f_j is max_i |df_j/dx_i|
    vj = lipopt(net, norm=1, output=1)
    assert sampled_lower(net, norm=1, output=1) <= vj * (1 + RTOL)
    assert vj <= v * (1 + RTOL)


def test_single_output_and_linear_network():
    net = make_net([3, 4, 3, 3], seed=6)
    full = lipopt(net)
    per = [lipopt(net, output=j) for j in range(3)]
    assert max(per) == pytest.approx(full, rel=1e-6)
    for j, v in enumerate(per):
        assert sampled_lower(net, output=j) <= v * (1 + RTOL)
    lin = Network.sequential((3,), [Linear(np.array([[1.0, -2, 3], [0.5, 0.5, -4]]), None)])
    assert lipopt(lin) == pytest.approx(6.0, rel=1e-9) and lipopt(lin) >= 6.0
    assert lipopt(lin, norm=1) == pytest.approx(7.0, rel=1e-9) and lipopt(lin, norm=1) >= 7.0


# --------------------------------------------------------------------------------------------------
# sparse version
# --------------------------------------------------------------------------------------------------


def test_sparse_equals_dense_on_dense_networks():
    for seed, sizes, ks in ((7, [3, 4, 3, 1], (3, 4)), (8, [2, 3, 3, 2], (3,))):
        net = make_net(sizes, seed=seed)
        for k in ks:
            ds = lipopt(net, degree=k, sparse=False)
            sv = lipopt(net, degree=k, sparse=True)
            assert sv >= ds * (1 - 1e-7)  # fewer products can only weaken the bound
            assert sv == pytest.approx(ds, rel=1e-6, abs=1e-8)


def test_sparse_banded_network():
    net = make_net([6, 6, 6, 1], seed=9, band=2)
    chain = net.dense_chain()
    a, w, _ = hidden_ranges(chain)
    # the vertex maximum of the polynomial is >= the exact constant (all patterns, realisable or not)
    exact = scalar_problems(chain, a, w, math.inf)[0].pruned().vertex_max()
    dense = lipbound.bound(net, "lipopt", norm="inf", degree=3, sparse=False)
    sparse_ = lipbound.bound(net, "lipopt", norm="inf", degree=3, sparse=True)
    assert dense.status == sparse_.status == "ok"
    assert sparse_.details["lp_columns_max"] < 0.6 * dense.details["lp_columns_max"]
    assert exact <= sparse_.value * (1 + RTOL)
    assert dense.value <= sparse_.value * (1 + RTOL)
    assert sparse_.value <= naive(net) * (1 + RTOL)
    # the cheapest family (the variable sets of the monomials only) is still a valid, weaker bound
    paths = lipbound.bound(net, "lipopt", norm="inf", degree=3, products="paths")
    assert paths.status == "ok" and paths.details["lp_columns_max"] <= sparse_.details["lp_columns_max"]
    assert sparse_.value <= paths.value * (1 + RTOL)
    assert lipbound.bound(net, "lipopt", norm="inf", degree=4, products="paths").status == "unsupported"


# --------------------------------------------------------------------------------------------------
# local version
# --------------------------------------------------------------------------------------------------


def test_local_box():
    net = make_net([2, 5, 4, 2], seed=10)
    center = np.array([0.3, -0.2])
    glob = lipopt(net)
    for eps in (0.05, 0.3, 1.0):
        loc = lipopt(net, center=center, eps=eps)
        lo, hi = center - eps, center + eps
        assert sampled_lower(net, lo=lo, hi=hi) <= loc * (1 + RTOL)
        assert exact_relu(net, lo=lo, hi=hi) <= loc * (1 + RTOL)
        assert loc <= glob * (1 + RTOL)
    # a tiny box: every neuron stable, the bound is the gradient norm at the center
    g = np.abs(net.jacobian(center[None]).numpy()[0]).sum(1).max()
    tiny = lipopt(net, center=center, eps=1e-9)
    assert g <= tiny * (1 + RTOL) and tiny == pytest.approx(g, rel=1e-6)


@pytest.mark.parametrize("act,param", [("elu", 1.0), ("tanh", 0.0), ("sigmoid", 0.0)])
def test_local_smooth(act, param):
    net = make_net([2, 4, 3, 1], act=act, param=param, seed=11)
    center = np.array([0.5, -1.0])
    glob = lipopt(net)
    loc = lipopt(net, center=center, eps=0.5)
    lo, hi = center - 0.5, center + 0.5
    assert sampled_lower(net, lo=lo, hi=hi) <= loc * (1 + RTOL)
    assert loc <= glob * (1 + RTOL)
    g = np.abs(net.jacobian(center[None]).numpy()[0]).sum(1).max()
    tiny = lipopt(net, center=center, eps=1e-7)
    assert g <= tiny * (1 + RTOL) and tiny == pytest.approx(g, rel=1e-4)


TABLE_CASES = [(n, None) for n in sorted(ACTIVATIONS)] + [("leaky_relu", -3.0), ("hardtanh", (0.0, 6.0))]


@pytest.mark.parametrize("act,param", TABLE_CASES, ids=[f"{a}-{p}" for a, p in TABLE_CASES])
def test_every_table_activation_global_and_local(act, param):
    """Every activation of the table (non-monotone ones and several kinks included): lipopt's global bound
    (derivatives in [alpha, beta]) is above the sampled l_inf and l_1 Jacobian norms and below the naive |W| product; on a box
    (the table's derivative ranges on interval bounds) above the sampled norms in the box and not above the
    global bound (the hierarchy is monotone in the derivative ranges); shor-sdp above the sampled l_inf norms
    too."""
    net = make_net([2, 3, 3, 2], act=act, param=param, seed=17)
    center = np.array([0.4, -0.7])
    for norm in ("inf", 1):
        p = math.inf if norm == "inf" else 1
        glob = lipopt(net, norm=norm)
        assert sampled_lower(net, p) <= glob * (1 + RTOL)
        assert glob <= naive(net, p) * (1 + RTOL)
        loc = lipopt(net, norm=norm, center=center, eps=0.6)
        assert sampled_lower(net, p, lo=center - 0.6, hi=center + 0.6) <= loc * (1 + RTOL)
        assert loc <= glob * (1 + RTOL)
    # the Shor SDP baseline (l_inf) on the same derivative ranges
    for kw, box in (({}, {}), ({"center": center, "eps": 0.6}, {"lo": center - 0.6, "hi": center + 0.6})):
        b = lipbound.bound(net, "shor-sdp", norm="inf", **kw)
        assert b.status == "ok" and b.kind == "upper" and sampled_lower(net, **box) <= b.value * (1 + RTOL)


def test_time_limit_falls_back_to_a_valid_bound():
    net = make_net([3, 4, 3, 3], seed=12)
    b = lipbound.bound(net, "lipopt", norm="inf", time_limit=1e-9)
    assert b.status == "time_limit" and b.value is not None
    assert b.details["out_of_time"] == 3 and b.details["lp_solved"] == 0 and "interval" in b.reason
    assert exact_relu(net) <= b.value * (1 + RTOL)
    # the interval bound of every output, no looser than the naive |W|-product
    chain = net.dense_chain()
    probs = scalar_problems(chain, *hidden_ranges(chain)[:2], math.inf)
    assert b.value <= max(p.naive_bound() for p in probs) * (1 + RTOL)


# --------------------------------------------------------------------------------------------------
# Shor SDP
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes,seed", [([3, 4, 2], 13), ([2, 3, 3, 1], 14)])
def test_shor_sdp(sizes, seed):
    net = make_net(sizes, seed=seed)
    b = lipbound.bound(net, "shor-sdp", norm="inf", sdp_solver="SCS" if seed == 13 else "CLARABEL")
    assert b.status == "ok" and b.kind == "upper"
    # the first-order eigenvalue solver gives a certified value near the interior-point one
    e = lipbound.bound(net, "shor-sdp", norm="inf", sdp_solver="EIG")
    assert e.status == "ok" and e.value == pytest.approx(b.value, rel=1e-3)
    exact = exact_relu(net)
    chain = net.dense_chain()
    a, w, _ = hidden_ranges(chain)
    vmax = max(p.pruned().vertex_max() for p in scalar_problems(chain, a, w, math.inf))
    assert exact <= vmax * (1 + 1e-9) <= b.value * (1 + RTOL)
    assert exact <= e.value * (1 + RTOL)
    assert b.value <= naive(net) * (1 + 1e-6)


def test_shor_sdp_refuses():
    deep = make_net([2, 3, 3, 3, 1], seed=15)
    assert lipbound.bound(deep, "shor-sdp", norm="inf").status == "unsupported"
    net = make_net([3, 4, 2], seed=13)
    b = lipbound.bound(net, "shor-sdp", norm="inf", max_order=3)
    assert b.status == "unsupported" and "order" in b.reason
    assert lipbound.bound(net, "shor-sdp", norm=2).status == "unsupported"


def test_onnx_small():
    try:
        net = lipbound.load(NETWORKS / "test_small.onnx")
    except Exception as e:  # the reader is written by someone else
        if "not written yet" in str(e):
            pytest.skip("ONNX reader not written yet")
        raise
    v = lipopt(net)
    assert sampled_lower(net) <= v * (1 + RTOL)
    assert exact_relu(net) <= v * (1 + RTOL)
