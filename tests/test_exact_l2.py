"""Exact l2 Lipschitz constants of small ReLU-like networks by `enumerate` (issue 14 item 5), local on boxes
and global, held against an enumeration written here independently of lipbound's exact code:

* the oracle: a recursive enumeration of the sign patterns layer by layer and neuron by neuron, a branch
  kept when its open region {sign_j z_j(x) > 0} has an interior point (in the box, or anywhere in R^n):
  a max-slack LP max t s.t. sign_j z_j(x) >= t ||grad z_j|| solved by scipy's `linprog`, strict margin
  t > 1e-9; the value is the largest `numpy.linalg.norm(J, 2)` of the pattern Jacobians;
* dense random sampling of the gradient with a numpy forward pass (never above the value, close to it);
* the witness's numpy gradient reproduces the value.

Would fail if: the l2 pruning bound (`jacobian_bound`'s spectral-norm bound) were too small (pruned
enumerate below the oracle), a realisable region were dropped or an empty one kept (a wrong sign in
the slack LP, a global LP that is not free in x), or the leaf used a norm other than the spectral one."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy.optimize import linprog

import lipbound
from lipbound.network import Activation, Linear, Network
from lipbound.registry import Region

SLOPE = {"relu": lambda p: 0.0, "leaky_relu": lambda p: float(p), "abs": lambda p: -1.0}
MARGIN = 1e-9  # strict-interior margin of the oracle's LPs


def make_net(n, hidden, m, act, param, seed):
    """Weights drawn here (kept for the oracle) and the same network as a lipbound Network."""
    rng = np.random.default_rng(seed)
    widths = [n] + list(hidden) + [m]
    Ws = [rng.standard_normal((b, a)) / np.sqrt(a) for a, b in zip(widths[:-1], widths[1:])]
    bs = [0.5 * rng.standard_normal(b) for b in widths[1:]]
    ops = []
    for i, (W, b) in enumerate(zip(Ws, bs)):
        ops.append(Linear(W, b))
        if i < len(Ws) - 1:
            ops.append(Activation(act, param))
    net = Network.sequential((n,), ops, name=f"l2test{widths}-{act}-{seed}")
    return net, Ws, bs, SLOPE[act](param)


def spectral(J, output):
    return float(np.linalg.norm(J if output is None else J[[output]], 2))


class Oracle:
    """max over the realisable activation regions (box lo..hi, or R^n when lo is None) of ||J||_2, for the
    whole output (``best[None]``) and for each single output j (``best[j]``: the l2 norm of grad f_j).
    A branch is kept when a point of ``pool`` (random points, and every interior point found so far) is
    strictly inside it, else when its max-slack LP says so; it is dropped only by the LP."""

    def __init__(self, Ws, bs, slope, lo, hi, pool):
        self.Ws, self.bs, self.s, self.lo, self.hi = Ws, bs, slope, lo, hi
        self.n = Ws[0].shape[1]
        self.outputs = [None] + list(range(Ws[-1].shape[0]))
        self.best = {o: -math.inf for o in self.outputs}
        self.regions, self.lps = 0, 0
        self.pool = [np.asarray(pool, dtype=np.float64)]

    def from_pool(self, G, H):
        """A pool point with slack > MARGIN on every row, or None."""
        G, H = np.array(G), np.array(H)
        P = np.vstack(self.pool)
        ok = np.all(P @ G.T + H > MARGIN * np.linalg.norm(G, axis=1), axis=1)
        i = np.flatnonzero(ok)
        return P[i[0]] if i.size else None

    def feasible(self, G, H):
        """max t s.t. G x + H >= t ||G_i|| (rows), x in the box (free globally), t <= 1: (t, x)."""
        G, H = np.array(G), np.array(H)
        nr = np.linalg.norm(G, axis=1)
        c = np.zeros(self.n + 1)
        c[-1] = -1.0
        A_ub = np.hstack([-G, nr[:, None]])
        xb = [(None, None)] * self.n if self.lo is None else list(zip(self.lo, self.hi))
        self.lps += 1
        r = linprog(c, A_ub=A_ub, b_ub=H, bounds=xb + [(None, 1.0)], method="highs")
        if r.status != 0:
            return -math.inf, None
        x = r.x[:-1]
        t = float(np.min((G @ x + H) / nr))  # the slack actually reached by x
        if t > MARGIN:
            self.pool.append(x[None])
        return t, x

    def run(self):
        x0 = np.zeros(self.n) if self.lo is None else (self.lo + self.hi) / 2
        self.layer(0, np.eye(self.n), np.zeros(self.n), [], [], x0)
        return self.best

    def layer(self, k, A, c, G, H, x):
        if k == len(self.Ws) - 1:
            self.regions += 1
            for o in self.outputs:
                self.best[o] = max(self.best[o], spectral(self.Ws[-1] @ A, o))
            return
        Az, cz = self.Ws[k] @ A, self.Ws[k] @ c + self.bs[k]
        self.neuron(k, Az, cz, 0, np.zeros(Az.shape[0]), G, H, x)

    def neuron(self, k, Az, cz, j, d, G, H, x):
        if j == Az.shape[0]:
            self.layer(k + 1, d[:, None] * Az, d * cz, G, H, x)
            return
        g, h = Az[j], cz[j]
        nr = np.linalg.norm(g)
        if nr < 1e-12:  # constant pre-activation: its sign (if 0, the row is 0 and the choice is moot)
            d2 = d.copy()
            d2[j] = 1.0 if h >= 0 else self.s
            self.neuron(k, Az, cz, j + 1, d2, G, H, x)
            return
        for sgn in (1.0, -1.0):
            if self.lo is not None:  # the sign's side misses the box entirely
                mid, rad = (self.lo + self.hi) / 2, (self.hi - self.lo) / 2
                if sgn * (g @ mid + h) + np.abs(g) @ rad <= 0:
                    continue
            G2, H2 = G + [sgn * g], H + [sgn * h]
            if sgn * (g @ x + h) / nr > MARGIN:
                x2 = x  # the current interior point (slack > MARGIN on every earlier row) is on this side
            else:
                x2 = self.from_pool(G2, H2)
                if x2 is None:
                    t, x2 = self.feasible(G2, H2)
                    if x2 is None or t <= MARGIN:
                        continue
            d2 = d.copy()
            d2[j] = 1.0 if sgn > 0 else self.s
            self.neuron(k, Az, cz, j + 1, d2, G2, H2, x2)


def jacobians(Ws, bs, slope, X):
    """Batched Jacobians (N, m, n) at the points X by a numpy forward pass."""
    N, n = X.shape
    h, A = X, np.broadcast_to(np.eye(n), (N, n, n))
    for W, b in zip(Ws[:-1], bs[:-1]):
        z = h @ W.T + b
        d = np.where(z > 0, 1.0, slope)
        h = np.where(z > 0, z, slope * z)
        A = d[:, :, None] * np.einsum("ij,bjk->bik", W, A)
    return np.einsum("ij,bjk->bik", Ws[-1], A)


def sampled_max(Ws, bs, slope, X, output):
    J = jacobians(Ws, bs, slope, X)
    if output is not None:
        J = J[:, [output]]
    return float(np.max(np.linalg.norm(J, 2, axis=(1, 2))))


def check(net, Ws, bs, slope, region, samples, outputs=(), plain=True, close=0.85):
    """enumerate (l2, pruned, and plain when ``plain``) against the oracle, for the whole output and for each
    single output in ``outputs``; the witnesses against numpy gradients; sampled gradients below the value
    and within ``close`` of it."""
    lo = None if region is None else np.asarray(region.lower, dtype=np.float64).ravel()
    hi = None if region is None else np.asarray(region.upper, dtype=np.float64).ravel()
    oracle = Oracle(Ws, bs, slope, lo, hi, samples[:256])
    ref = oracle.run()
    # samples=0: the branch and bound starts from a poor incumbent (the centre), so its l2 pruning bound is
    # tested on many prefixes; the single outputs with the default sampled incumbent
    runs = [(None, True, 0)] + [(None, False, 0)] * plain + [(o, True, 500) for o in outputs]
    for output, prune, samples_ in runs:
        b = lipbound.bound(net, "enumerate", 2, region=region, output=output, prune=prune, max_unstable=40,
                           samples=samples_)
        assert b.kind == "exact" and b.status == "ok", (b.status, b.reason)
        assert b.value == pytest.approx(ref[output], rel=1e-8), (output, prune, b.value, ref[output], oracle.regions)
        # the witness (in the region) reproduces the value, by the numpy gradient
        w = np.asarray(b.witness, dtype=np.float64).ravel()
        if lo is not None:
            assert np.all(w >= lo) and np.all(w <= hi)
        assert sampled_max(Ws, bs, slope, w[None], output) == pytest.approx(b.value, rel=1e-8)
        assert b.lower == pytest.approx(b.value, rel=1e-8)
        if not prune:  # plain enumeration meets every region
            assert b.details["patterns"] == oracle.regions
    for output in {None, *outputs}:
        smax = sampled_max(Ws, bs, slope, samples, output)
        assert smax <= ref[output] * (1 + 1e-9)
        assert smax >= close * ref[output], (output, smax, ref[output])
    return oracle


LOCAL = [  # (n, hidden, m, act, param, seed, box radii, single outputs checked at the largest radius)
    (2, (12, 12), 1, "relu", 0.0, 0, (0.02, 0.15, 0.4), ()),
    (3, (10, 10, 8), 3, "leaky_relu", 0.1, 1, (0.02, 0.15, 0.3), (2,)),
    (5, (16, 16), 2, "relu", 0.0, 2, (0.02, 0.1), ()),
    (8, (20, 20), 4, "leaky_relu", 0.2, 3, (0.02, 0.08), (0,)),
    (4, (8, 8, 6), 2, "abs", 0.0, 4, (0.02, 0.15), ()),
]


def _id(c):
    return f"{c[0]}-{'x'.join(map(str, c[1]))}-{c[2]}-{c[3]}"


@pytest.mark.parametrize("case", LOCAL, ids=_id)
def test_local_l2_equals_independent_enumeration(case):
    n, hidden, m, act, param, seed, radii, outputs = case
    net, Ws, bs, slope = make_net(n, hidden, m, act, param, seed)
    rng = np.random.default_rng(100 + seed)
    center = rng.uniform(-0.5, 0.5, n)
    for eps in radii:
        region = Region.box(center, eps)
        X = np.vstack([center + eps * rng.uniform(-1, 1, (4000, n)),
                       center + eps * rng.choice([-1.0, 1.0], (500, n))])  # the corners too
        check(net, Ws, bs, slope, region, X, outputs if eps == radii[-1] else (), plain=eps == radii[-1])


GLOBAL = [  # (n, hidden, m, act, param, seed, single outputs checked): 50-120 regions each (the oracle's
    # scipy LPs cost ~3 ms: bigger networks are in the slow test below)
    (2, (6, 6), 1, "relu", 0.0, 10, ()),
    (2, (4, 4, 4), 2, "leaky_relu", 0.1, 11, ()),
    (3, (5, 4), 3, "relu", 0.0, 13, (1,)),
    (2, (6, 5), 2, "abs", 0.0, 13, ()),
]


@pytest.mark.parametrize("case", GLOBAL, ids=_id)
def test_global_l2_equals_independent_enumeration(case):
    n, hidden, m, act, param, seed, outputs = case
    net, Ws, bs, slope = make_net(n, hidden, m, act, param, seed)
    rng = np.random.default_rng(200 + seed)
    X = np.vstack([s * rng.standard_normal((3000, n)) for s in (1.0, 0.3, 3.0, 30.0, 1000.0)])
    oracle = check(net, Ws, bs, slope, None, X, outputs)
    assert oracle.regions > 10


@pytest.mark.slow
@pytest.mark.parametrize("case", [(2, (20, 20), 2, "relu", 0.0, 20, (0,)), (3, (12, 10, 8), 2, "leaky_relu", 0.1, 21, ())],
                         ids=_id)
def test_global_l2_equals_independent_enumeration_larger(case):
    """Global, 30-40 neurons (thousands of regions: 1-5 min each, mostly the scipy oracle)."""
    n, hidden, m, act, param, seed, outputs = case
    net, Ws, bs, slope = make_net(n, hidden, m, act, param, seed)
    rng = np.random.default_rng(200 + seed)
    X = np.vstack([s * rng.standard_normal((3000, n)) for s in (1.0, 0.3, 3.0, 30.0, 1000.0)])
    check(net, Ws, bs, slope, None, X, outputs, plain=False, close=0.5)


@pytest.mark.slow
def test_local_l2_equals_independent_enumeration_larger():
    """Boxes with hundreds to thousands of regions, 32 ReLUs (about 2 min)."""
    net, Ws, bs, slope = make_net(5, (16, 16), 2, "relu", 0.0, 2)
    rng = np.random.default_rng(102)
    center = rng.uniform(-0.5, 0.5, 5)
    for eps in (0.2, 0.5):
        X = center + eps * rng.uniform(-1, 1, (4000, 5))
        check(net, Ws, bs, slope, Region.box(center, eps), X, (1,), plain=False, close=0.5)


def test_l2_is_listed_and_global_refused_when_too_many_regions():
    spec = {m["name"]: m for m in lipbound.methods()}["enumerate"]
    assert "2" in spec["norms"] and "global" in spec["regions"] and "box" in spec["regions"]
    net, *_ = make_net(8, (40, 40), 2, "relu", 0.0, 5)
    t0 = time.perf_counter()
    b = lipbound.bound(net, "enumerate", 2)
    assert b.status == "unsupported" and "regions" in b.reason
    assert time.perf_counter() - t0 < 2.0


def test_l2_time_limit_gives_a_certified_lower_bound():
    """Stopped early (the full search takes ~25 s): kind 'lower', the gradient norm at its witness."""
    net, Ws, bs, slope = make_net(4, (14, 14), 3, "relu", 0.0, 6)
    got = []
    for tl in (0.05, 0.5):
        b = lipbound.bound(net, "enumerate", 2, region=Region.box(np.zeros(4), 1.0), time_limit=tl, prune=False,
                           max_unstable=28)
        assert b.status == "time_limit" and b.kind == "lower", (b.status, b.kind)
        if b.value is not None:
            w = np.asarray(b.witness, dtype=np.float64).ravel()
            assert np.all(np.abs(w) <= 1.0)
            assert sampled_max(Ws, bs, slope, w[None], None) == pytest.approx(b.value, rel=1e-8)
            got.append(b.value)
    assert got


def test_spectral_norm_upper_bounds_every_enclosed_matrix():
    """The l2 pruning bound: above ||J||_2 for every J with |J| <= M, and tight (the Perron root of M^T M)."""
    from lipbound.norms import spectral_norm_upper

    rng = np.random.default_rng(7)
    for trial in range(60):
        m, n = rng.integers(1, 7, size=2)
        M = rng.random((m, n)) * (rng.random((m, n)) < (0.3 if trial % 3 == 0 else 1.0))  # reducible too
        ub = spectral_norm_upper(M)
        exact = np.linalg.norm(M, 2) if M.size else 0.0
        assert exact <= ub * (1 + 1e-12) + 1e-300
        assert ub <= exact * (1 + 1e-6) + 1e-300
        for _ in range(5):
            J = M * rng.uniform(-1, 1, M.shape)
            assert np.linalg.norm(J, 2) <= ub * (1 + 1e-12)
    assert spectral_norm_upper(np.zeros((3, 2))) == 0.0
