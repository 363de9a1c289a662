"""The branch-and-bound engine (`lipbound.branch_and_bound`) and crown-bab on it: batched forward bounds with
split constraints, input and neuron splitting, lower bounds inside the search, every norm.

Soundness (lower <= exact <= upper) is checked against `enumerate` (the exact local constant by region
enumeration, written independently of the Jacobian-graph code) and against sampled gradients. A split
constraint applied with the wrong sign (clipping z_i to [l, 0] in the child whose slope is 1; checked by
mutating `bab._neuron_children`) fails `test_neuron_split_children_hold_their_half_of_the_box` (all seeds),
`test_crown_bab_equals_enumeration[neuron-inf-4]` and `[neuron-1-4]` (values below the exact constant) and
`test_bab_with_pattern_lp_reaches_the_exact_value[6]` in test_local_crown.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lipbound
from lipbound import Region
from lipbound.branch_and_bound import Domain, Engine
from lipbound.crown import forward_bounds, forward_bounds_batch
from lipbound.network import Activation
from _nets import random_graph_net, random_mlp
from test_local_crown import _maxmin_net


def _sampled(net, lo, hi, n, norm, seed=0):
    rng = np.random.default_rng(seed)
    x = torch.as_tensor(rng.uniform(lo, hi, size=(n, lo.size)))
    J = net.jacobian(x.reshape((n,) + net.input_shape)).numpy()
    if norm == math.inf:
        return float(np.abs(J).sum(2).max())
    if norm == 1:
        return float(np.abs(J).sum(1).max())
    return float(np.linalg.norm(J, 2, axis=(1, 2)).max())


# ---------------------------------------------------------------- batched forward bounds ----------


@pytest.mark.parametrize("make", [lambda: random_mlp([5, 12, 10, 8, 3], seed=0),
                                  lambda: random_mlp([4, 9, 9, 2], seed=4, activation="tanh"),
                                  lambda: random_mlp([3, 8, 8, 2], seed=2, activation="gelu"),
                                  lambda: random_graph_net(1),
                                  lambda: _maxmin_net(2, "pairs", "max_min")])
def test_forward_bounds_batch_equals_one_box_at_a_time(make):
    net = make()
    rng = np.random.default_rng(3)
    n = net.n_inputs
    c = rng.random((7, n))
    eps = rng.uniform(0.01, 0.4, size=(7, 1))
    lo, hi = c - eps, c + eps
    batch = forward_bounds_batch(net, lo, hi)
    for b in range(7):
        one = forward_bounds(net, (lo[b].reshape(net.input_shape), hi[b].reshape(net.input_shape)))
        assert set(one) == set(batch)
        for k in one:
            for i in (0, 1):
                assert torch.allclose(one[k][i], batch[k][i][b], rtol=1e-9, atol=1e-11)
        x = torch.as_tensor(rng.uniform(lo[b], hi[b], size=(3000, n))).reshape((-1,) + net.input_shape)
        vals = net.forward_all(x)
        for k in batch:
            if isinstance(net.nodes[k].op, Activation):
                z = vals[net.nodes[k].inputs[0]].reshape(3000, -1)
                assert bool((z >= batch[k][0][b] - 1e-9).all() and (z <= batch[k][1][b] + 1e-9).all())


@pytest.mark.parametrize("seed", range(4))
def test_split_constraint_bounds_hold_on_their_half(seed):
    """Clipping an unstable first-layer neuron to z >= 0 (or z <= 0) and recomputing the later layers gives
    bounds valid on the inputs where the constraint holds, tighter than the parent's."""
    net = random_mlp([4, 10, 10, 10, 2], seed=seed)
    rng = np.random.default_rng(seed)
    c = rng.random(4)
    lo, hi = (c - 0.4)[None], (c + 0.4)[None]
    root = forward_bounds_batch(net, lo, hi)
    acts = sorted(root)
    k0 = acts[0]
    unstable = ((root[k0][0] < 0) & (root[k0][1] > 0))[0].nonzero().reshape(-1)
    if len(unstable) == 0:
        pytest.skip("no unstable first-layer neuron")
    j = int(unstable[0])
    x = torch.as_tensor(rng.uniform(lo[0], hi[0], size=(20000, 4)))
    vals = net.forward_all(x)
    z0 = vals[net.nodes[k0].inputs[0]].reshape(20000, -1)[:, j]
    for sign in (1, -1):
        known = {k: (root[k][0].clone(), root[k][1].clone()) for k in acts}
        if sign > 0:
            known[k0][0][0, j] = 0.0
        else:
            known[k0][1][0, j] = 0.0
        child = forward_bounds_batch(net, lo, hi, known=known, refine_from=k0 + 1)
        half = (z0 >= 0) if sign > 0 else (z0 <= 0)
        for k in acts[1:]:
            z = vals[net.nodes[k].inputs[0]].reshape(20000, -1)[half]
            assert bool((z >= child[k][0][0] - 1e-9).all() and (z <= child[k][1][0] + 1e-9).all())
            assert bool((child[k][0] >= root[k][0] - 1e-12).all() and (child[k][1] <= root[k][1] + 1e-12).all())


# ---------------------------------------------------------------- the engine on a toy problem -----


class _IntervalMax:
    """max of f(x) = x (1 - x) sin(7x)^2 over [0, 1] by interval halving: the upper bound of [a, b] is
    f(c) + L (b - a) / 2 with L a Lipschitz constant of f; the lower bound is f at the centre."""

    combine = "max"
    L = 15.0

    def f(self, x):
        return x * (1 - x) * math.sin(7 * x) ** 2

    def bound(self, children):
        return [(self.f((a + b) / 2) + self.L * (b - a) / 2, (a, b)) for _, (a, b) in children]

    def branch(self, domains):
        out = []
        for d in domains:
            a, b = d.data
            m = (a + b) / 2
            out += [(0, (a, m), d.upper), (0, (m, b), d.upper)]
        return out

    def splittable(self, d):
        return d.data[1] - d.data[0] > 1e-12

    def lower(self, domains):
        best = max(domains, key=lambda d: self.f(sum(d.data) / 2))
        return self.f(sum(best.data) / 2), sum(best.data) / 2

    def empty(self, d):
        return False


def _true_max(prob) -> float:
    """The maximum of the toy function by a grid, then a bounded scalar search around the grid's best point."""
    from scipy.optimize import minimize_scalar

    xs = np.linspace(0, 1, 100001)
    i = int(np.argmax(xs * (1 - xs) * np.sin(7 * xs) ** 2))
    r = minimize_scalar(lambda x: -prob.f(x), bounds=(xs[max(i - 1, 0)], xs[min(i + 1, len(xs) - 1)]),
                        method="bounded", options={"xatol": 1e-14})
    return -float(r.fun)


def test_engine_closes_the_gap_and_keeps_the_invariant():
    prob = _IntervalMax()
    true = _true_max(prob)
    eng = Engine(prob, batch=4, deadline=None, target_gap=1 + 1e-6)
    out = eng.run([Domain(prob.bound([(0, (0.0, 1.0))])[0][0], 0, (0.0, 1.0))])
    assert out.status == "target_gap"
    assert out.lower <= true + 1e-12 <= out.upper + 2e-12
    assert out.upper <= (1 + 1e-6) * out.lower
    assert prob.f(out.witness) == out.lower
    assert out.dropped > 0  # domains below the lower bound were dropped, not split
    uppers = [u for _, _, u in out.history]
    lowers = [lo for _, lo, _ in out.history]
    assert all(b <= a + 1e-15 for a, b in zip(uppers, uppers[1:]))
    assert all(b >= a for a, b in zip(lowers, lowers[1:]))


def test_engine_uses_outside_bounds():
    """A certified lower bound from outside (as `certify` hands it over) lets the search stop at once."""
    prob = _IntervalMax()
    true = _true_max(prob)
    root = Domain(prob.bound([(0, (0.0, 1.0))])[0][0], 0, (0.0, 1.0))
    eng = Engine(prob, batch=4, deadline=None, target_gap=100.0, outside_lower=lambda: 0.9 * true)
    out = eng.run([root])
    assert out.status == "target_gap" and out.steps == 0
    eng = Engine(prob, batch=4, deadline=None, target_gap=1.0, upper_cap=true * 1.5)
    eng.deadline = 0.0  # no step: the answer is the cap
    assert eng.run([root]).upper == true * 1.5


def test_engine_depth_first_pops_the_last_child_and_reaches_the_same_answer():
    """order="depth" (enumerate's search): a stack, so the popped intervals shrink along one path (each the
    last child of the one before) until that path ends; the answer is the toy's maximum as best first finds it."""
    prob = _IntervalMax()
    true = _true_max(prob)
    prob.splittable = lambda d: d.data[1] - d.data[0] > 1e-5  # depth first explores every path to this width
    popped = []
    branch = prob.branch
    prob.branch = lambda ds: (popped.extend(d.data for d in ds), branch(ds))[1]
    root = Domain(prob.bound([(0, (0.0, 1.0))])[0][0], 0, (0.0, 1.0))
    out = Engine(prob, batch=1, deadline=None, target_gap=1 + 1e-3, order="depth").run([root])
    assert out.lower <= true + 1e-12 <= out.upper + 2e-12 and out.upper <= (1 + 1e-3) * out.lower
    # the first steps descend into the right half (the last child pushed), halving each time
    assert popped[:3] == [(0.0, 1.0), (0.5, 1.0), (0.75, 1.0)]
    with pytest.raises(ValueError, match="order"):
        Engine(prob, batch=1, deadline=None, order="widest")


# ---------------------------------------------------------------- crown-bab against enumeration ---


def _cases():
    out = []
    for seed, (sizes, act, eps) in enumerate([([3, 8, 6, 2], "relu", 0.3), ([2, 10, 2], "relu", 1.0),
                                              ([4, 6, 6, 6, 3], "relu", 0.2), ([5, 7, 5, 2], "leaky_relu", 0.15),
                                              ([3, 8, 8, 1], "leaky_relu", 0.5), ([6, 8, 4], "relu", 0.05)]):
        net = random_mlp(sizes, seed=10 + seed, activation=act, param=0.2)
        region = Region.box(np.random.default_rng(seed).random(sizes[0]), eps)
        out.append((net, region))
    return out


@pytest.mark.parametrize("case", range(6))
@pytest.mark.parametrize("norm", ["inf", 1, 2])
@pytest.mark.parametrize("split", ["input", "neuron"])
def test_crown_bab_equals_enumeration(case, norm, split):
    net, region = _cases()[case]
    exact = lipbound.bound(net, "enumerate", norm=norm, region=region)
    assert exact.kind == "exact", exact.reason
    crown = lipbound.bound(net, "crown", norm=norm, region=region)
    bab = lipbound.bound(net, "crown-bab", norm=norm, region=region, time_limit=10, split=split)
    p = {"inf": math.inf, 1: 1, 2: 2}[norm]
    samp = _sampled(net, region.lower.ravel(), region.upper.ravel(), 3000, p)
    assert samp <= exact.value + 1e-9
    assert exact.value * (1 - 1e-9) - 1e-12 <= bab.value <= crown.value * (1 + 1e-9) + 1e-12
    if bab.lower is not None:
        assert bab.lower <= exact.value * (1 + 1e-9) + 1e-12
    if bab.kind == "exact":
        assert bab.value == pytest.approx(exact.value, rel=1e-9)
    # the search closes these small cases with its own lower bounds (a bound rounded to float32 on the way
    # would leave a gap of ~1e-8 and fail here)
    assert bab.kind == "exact", (bab.status, bab.value, bab.lower, exact.value)


@pytest.mark.parametrize("which", ["enumerated", "walk-improves"])
def test_region_walk_in_the_lower_bound_hook_keeps_the_invariant(which, monkeypatch):
    """The hook's region walk (here at every call) runs, and the search's lower bound is the l_inf Jacobian norm
    at its witness, inside the box (recomputed from net.jacobian), and below its upper bound. On a small case
    the search still closes at the enumerated value; on a larger one some walk improves on the probes."""
    from lipbound.methods.jacobian import bab as bab_mod

    if which == "enumerated":
        net, region = _cases()[0]
    else:
        net = random_mlp([5, 16, 16, 16, 3], seed=1)
        region = Region.box(np.random.default_rng(1).random(5), 0.5)
    monkeypatch.setattr(bab_mod, "WALK_EVERY", 1)
    gains = []
    real = bab_mod._JacobianSearch._walk

    def spy(self, X, vals):
        before = self.best_probe[0]
        out = real(self, X, vals)
        gains.append(out[0] > before)
        return out

    monkeypatch.setattr(bab_mod._JacobianSearch, "_walk", spy)
    bab = lipbound.bound(net, "crown-bab", norm="inf", region=region, time_limit=10, split="input")
    assert gains and (which == "enumerated" or any(gains))
    if which == "enumerated":
        exact = lipbound.bound(net, "enumerate", norm="inf", region=region)
        assert bab.kind == "exact" and bab.value == pytest.approx(exact.value, rel=1e-9)
    assert bab.lower is not None and bab.lower <= bab.value * (1 + 1e-9)
    w = np.asarray(bab.details["lower_witness"] if bab.witness is None else bab.witness, dtype=np.float64).ravel()
    assert np.all(w >= region.lower.ravel() - 1e-12) and np.all(w <= region.upper.ravel() + 1e-12)
    J = net.jacobian(torch.as_tensor(w).reshape((1,) + net.input_shape))[0].numpy()
    assert bab.lower == pytest.approx(float(np.abs(J).sum(1).max()), rel=1e-9)


def test_crown_bab_norm2_is_sound_and_closes_on_one_output():
    net = random_mlp([3, 8, 8, 1], seed=5)
    region = Region.box(np.array([0.2, 0.5, 0.1]), 0.4)
    samp = _sampled(net, region.lower.ravel(), region.upper.ravel(), 20000, 2)
    crown = lipbound.bound(net, "crown", norm=2, region=region)
    bab = lipbound.bound(net, "crown-bab", norm=2, region=region, time_limit=5)
    assert samp - 1e-9 <= bab.value <= crown.value + 1e-9
    assert bab.kind == "exact" and bab.value == pytest.approx(samp, rel=1e-3)


def test_closed_interval_costs_one_step():
    """A box where crown is already exact (one linear region): the first popped domain is covered by its
    own centre's gradient and the search ends."""
    net = random_mlp([4, 10, 8, 3], seed=2)
    rng = np.random.default_rng(0)
    for _ in range(100):
        x0 = rng.normal(size=4)
        if min(float(z.abs().min()) for z in net.preactivations(torch.as_tensor(x0)[None])) > 1e-2:
            break
    region = Region.box(x0, 1e-6)
    bab = lipbound.bound(net, "crown-bab", norm="inf", region=region, time_limit=30)
    assert bab.kind == "exact" and bab.details["steps"] <= 1
    J = net.jacobian(torch.as_tensor(x0)[None])[0].numpy()
    assert bab.value == pytest.approx(float(np.abs(J).sum(1).max()), rel=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_neuron_split_children_hold_their_half_of_the_box(seed):
    """crown-bab's own split: the active child (slope 1) must bound every input of the box where z_i >= 0, the
    inactive one every input where z_i <= 0, with forward bounds re-derived under the split constraint."""
    from lipbound.methods.jacobian.bab import _JacobianSearch, _Part
    from lipbound.methods.jacobian.graph import JacobianGraph
    from lipbound.registry import MethodContext

    net = random_mlp([4, 10, 10, 10, 2], seed=seed)
    rng = np.random.default_rng(seed)
    region = Region.box(rng.random(4), 0.5)
    fwd = forward_bounds(net, region)
    G = JacobianGraph(net, fwd)
    ctx = MethodContext(norm=math.inf, region=region, method="crown-bab")
    search = _JacobianSearch(net, ctx, G, [0, 1], list(G.acts), "neuron")
    lo, hi = (torch.as_tensor(t.reshape(-1)) for t in (region.lower, region.upper))
    root = _Part(lo, hi, torch.zeros(search.offsets[-1], dtype=torch.int8), dict(fwd), 10 ** 9)
    (_, part), = search.bound([(-1, root)])
    x = torch.as_tensor(rng.uniform(lo, hi, size=(20000, 4)))
    vals = net.forward_all(x)
    z = {k: vals[net.nodes[k].inputs[0]].reshape(20000, -1) for k in G.acts}
    tried = 0
    for li, k in enumerate(G.acts):
        # undecided neurons that the samples see on both sides (so both halves can be checked)
        both = (part.fwd[k][0] < 0) & (part.fwd[k][1] > 0) & (z[k] > 0).any(0) & (z[k] < 0).any(0)
        for j in both.nonzero().reshape(-1)[:2].tolist():
            i = search.offsets[li] + j
            kids = search._neuron_children(part, i)
            for sign, (_, child) in zip((1, -1), search.bound([(-1, c) for c in kids])):
                half = z[k][:, j] >= 0 if sign > 0 else z[k][:, j] <= 0
                assert int(child.dec[i]) == sign
                for k2 in G.acts:
                    zz = z[k2][half]
                    assert bool((zz >= child.fwd[k2][0] - 1e-9).all() and (zz <= child.fwd[k2][1] + 1e-9).all()), \
                        (sign, k, j, k2)
            tried += 1
    assert tried >= 2


def test_pattern_lp_rows_are_the_pre_activations_of_the_decided_neurons():
    """`PatternLP._rows`: with every undecided neuron decided as at a sample point x of the box, the rows
    A x - b are exactly -sign * z_i(x) for the decided neurons of every layer (z from the network's own
    forward pass, an independent computation), so x satisfies them and `feasible` keeps the domain; the
    opposite decision on one neuron makes x violate its row."""
    import itertools as it

    from lipbound.crown import forward_bounds
    from lipbound.methods.jacobian.bab import PatternLP
    from lipbound.methods.jacobian.graph import JacobianGraph

    net = random_mlp([6, 12, 10, 8, 3], seed=4)
    region = Region.box(np.full(6, 0.3), 0.4)
    G = JacobianGraph(net, forward_bounds(net, region))
    acts = list(G.acts)
    offsets = list(it.accumulate([0] + [net.nodes[k].size for k in acts]))
    lp = PatternLP(net, G, acts, offsets, region)
    und = torch.cat([G.s[k][1] > G.s[k][0] for k in acts])
    assert int(und.sum()) >= 5
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = torch.as_tensor(rng.uniform(region.lower, region.upper))
        z = torch.cat([t.reshape(-1) for t in net.preactivations(x.reshape((1,) + net.input_shape))])
        dec = torch.where(und, torch.where(z > 0, 1, -1), 0).to(torch.int8)
        rows, n = lp.checkable(dec)
        assert n == int(und.sum())  # every layer checkable: all undecided neurons are decided
        A, b, slack = lp._rows(rows, dec)
        cols = torch.cat([offsets[li] + idx for li, (idx, _) in enumerate(rows)])
        sg = torch.cat([g for _, g in rows])
        assert torch.allclose(A @ x - b, -sg * z[cols], rtol=1e-9, atol=1e-9)
        assert lp.feasible(dec) is True
        flip = dec.clone()
        flip[cols[0]] = -flip[cols[0]]
        A2, b2, _ = lp._rows(lp.checkable(flip)[0], flip)
        assert float((A2 @ x - b2)[0]) > 0 > float((A @ x - b)[0]) or abs(float(z[cols[0]])) < 1e-12


@pytest.mark.slow
@pytest.mark.parametrize("eps", [0.01, 0.02])
def test_crown_bab_closes_mnist_net_linf_boxes_at_the_enumerated_value(eps):
    """mnist-net_256x2 (shared networks), l_inf box around rng(1): crown-bab ends exact (upper = its own
    certified lower bound) at the value of `enumerate` (pattern LPs, an independent computation; its
    neuron limit raised for eps 0.02, 40 undecided neurons). ~1 min."""
    from conftest import SHARED

    net = lipbound.load(SHARED / "mnist-net_256x2.onnx")
    region = Region.box(np.random.default_rng(1).random(net.n_inputs).reshape(net.input_shape), eps)
    bab = lipbound.bound(net, "crown-bab", "inf", region, time_limit=60)
    assert bab.kind == "exact" and bab.lower == pytest.approx(bab.value, rel=1e-9)
    ref = lipbound.bound(net, "enumerate", "inf", region, time_limit=300, max_unstable=48)
    assert ref.kind == "exact"
    assert bab.value == pytest.approx(ref.value, rel=1e-6)


# ---------------------------------------------------------------- threads ------------------------


def test_core_watch_counts_the_cores_other_processes_keep_busy(monkeypatch):
    """`CoreWatch.free` over a window of /proc/stat readings (busy, total jiffies of the whole machine) and
    this process's CPU time: the cores minus what the others used, rounded, at least 1."""
    from lipbound import threads

    hz = threads.os.sysconf("SC_CLK_TCK")
    stat = iter([(0, 0), (2 * hz, 2 * hz), (2 * hz, 2 * hz), (2 * hz + hz // 2, 4 * hz)])
    cpu = iter([0.0, 1.0, 1.0, 1.5])  # own CPU seconds: 1 s of the first window, 0.5 s of the second
    monkeypatch.setattr(threads, "_busy_and_total", lambda: next(stat))
    monkeypatch.setattr(threads.time, "process_time", lambda: next(cpu))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    watch = threads.CoreWatch()
    assert watch.free() == 1  # 1 s on 2 cores both busy, 1 core-second ours: another process held a core
    assert watch.free() == 2  # 1 s, half a core busy, all of it ours


@pytest.fixture
def thread_count(monkeypatch):
    """torch's thread count as the code sets and reads it, recorded instead of applied (the computation
    stays on the real single thread, so a loaded machine cannot slow the test down): a one-item list."""
    count = [torch.get_num_threads()]
    monkeypatch.setattr(torch, "set_num_threads", lambda n: count.__setitem__(0, int(n)))
    monkeypatch.setattr(torch, "get_num_threads", lambda: count[0])
    return count


def test_crown_bab_follows_the_free_cores_and_restores_its_threads(monkeypatch, thread_count):
    """crown-bab sets torch's threads to the free cores it reads (every `THREAD_CHECK_S`) and restores the
    caller's count at the end, also where `one_thread` does not (networks above its size)."""
    import contextlib

    from lipbound.methods.jacobian import bab
    from lipbound.methods.jacobian import methods as jacobian_methods
    from lipbound.threads import CoreWatch

    net = random_mlp([5, 16, 16, 3], seed=1)
    region = Region.box(np.full(5, 0.3), 0.2)  # closes in ~12 steps
    seen = []
    real_bound = bab._JacobianSearch.bound

    def bound(self, children):
        out = real_bound(self, children)
        seen.append(thread_count[0])
        return out

    monkeypatch.setattr(bab._JacobianSearch, "bound", bound)
    monkeypatch.setattr(bab, "THREAD_CHECK_S", 0.0)
    before = thread_count[0]
    values = {}
    for free in (1, 2):
        seen.clear()
        monkeypatch.setattr(CoreWatch, "free", lambda self, free=free: free)
        res = lipbound.bound(net, "crown-bab", "inf", region, 30)
        assert seen and set(seen) == {free} and thread_count[0] == before
        values[free] = res.value
        monkeypatch.setattr(jacobian_methods, "one_thread", lambda net: contextlib.nullcontext())
    assert values[1] == values[2]


def test_crown_walk_follows_the_free_cores_and_restores_its_threads(monkeypatch, thread_count):
    """crown's Jacobian walk ticks `FollowFreeCores` between its chunks of entries (every
    `WALK_THREAD_CHECK_S`): torch's threads become the free cores read (at most `MAX_FOLLOW_THREADS`), and the
    caller's count is back after."""
    import contextlib

    from lipbound.methods.jacobian import graph as jacobian_graph
    from lipbound.methods.jacobian import methods as jacobian_methods
    from lipbound.threads import MAX_FOLLOW_THREADS, CoreWatch

    net = random_mlp([5, 16, 16, 3], seed=1)
    region = Region.box(np.full(5, 0.3), 0.5)
    seen = []
    real = jacobian_graph.JacobianGraph._bound_entries

    def bound_entries(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        seen.append(thread_count[0])
        return out

    monkeypatch.setattr(jacobian_graph.JacobianGraph, "_bound_entries", bound_entries)
    monkeypatch.setattr(jacobian_methods, "WALK_THREAD_CHECK_S", 0.0)
    monkeypatch.setattr(jacobian_methods, "one_thread", lambda net: contextlib.nullcontext())
    before = thread_count[0]
    for free in (1, 2, 16):
        seen.clear()
        monkeypatch.setattr(CoreWatch, "free", lambda self, free=free: free)
        lipbound.bound(net, "crown", "inf", region)
        assert seen and seen[-1] == min(free, MAX_FOLLOW_THREADS) and thread_count[0] == before
