"""The project invariant across every registered method:

    every certified lower bound <= exact <= every certified upper bound

checked with `compare` (all applicable methods) on seeded random tiny networks, globally and on boxes,
in every norm, and on a shared network. A method that breaks soundness anywhere fails here."""

import math

import numpy as np
import pytest

import lipbound
from conftest import shared_network_paths
from _nets import random_mlp

TOL = 1e-6


def _assert_sandwich(report):
    lowers = [(b.method, b.value) for b in report.results if b.ok and b.kind in ("lower", "exact")]
    lowers += [(b.method + "(lower)", b.lower) for b in report.results
               if b.status in ("ok", "time_limit") and b.lower is not None]
    uppers = [(b.method, b.value) for b in report.results if b.ok and b.kind in ("upper", "exact")]
    assert lowers and uppers, report.table()
    lo_name, lo = max(lowers, key=lambda t: t[1])
    up_name, up = min(uppers, key=lambda t: t[1])
    assert lo <= up * (1 + TOL) + TOL, f"{lo_name} = {lo} > {up_name} = {up}\n{report.table()}"
    for b in report.results:  # nothing crashes: failures must be honest statuses with a reason
        assert b.status in ("ok", "time_limit", "unsupported", "failed")
        if b.status in ("unsupported", "failed"):
            assert b.reason, b
    return lo, up


CASES = [([2, 5, 4, 1], "relu", 0.0), ([3, 6, 5, 2], "relu", 0.0), ([2, 6, 6, 3], "leaky_relu", 0.1),
         ([3, 5, 4, 2], "tanh", 0.0), ([2, 6, 2], "sigmoid", 0.0)]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("norm", [1, 2, "inf"])
def test_every_method_global(case, norm):
    widths, act, param = CASES[case]
    net = random_mlp(widths, seed=case, activation=act, param=param)
    rep = lipbound.compare(net, norm=norm, time_limit=10)
    _assert_sandwich(rep)


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("norm", [1, 2, "inf"])
def test_every_method_on_a_box(case, norm):
    widths, act, param = CASES[case]
    net = random_mlp(widths, seed=10 + case, activation=act, param=param)
    rng = np.random.default_rng(case)
    # crown-bab's search is capped in domains (it closes these tiny nets well within the cap when it can;
    # otherwise it would use its whole time limit: the sandwich is what is tested here)
    rep = lipbound.compare(net, norm=norm, center=rng.random(widths[0]), eps=0.3, time_limit=10,
                           options={"crown-bab": {"max_domains": 3000}})
    lo, up = _assert_sandwich(rep)
    exact = [b for b in rep.results if b.kind == "exact" and b.ok]
    if act in ("relu", "leaky_relu") and norm != 2:
        assert exact, "mip / enumerate should solve tiny piecewise-linear nets exactly"
        for b in exact:
            assert b.value == pytest.approx(exact[0].value, rel=1e-5, abs=1e-7)


def test_every_method_on_acas_xu_box():
    paths = {p.stem: p for p in shared_network_paths()}
    net = lipbound.load(paths["ACASXU_run2a_1_1_batch_2000"])
    center = np.random.default_rng(1).random(net.n_inputs)
    rep = lipbound.compare(net, ["naive", "crown", "ibp-jacobian", "recurjac", "lipopt", "lower-sample", "lower-grad"],
                           norm="inf", center=center, eps=0.005, time_limit=20)
    _assert_sandwich(rep)


# --------------------------------------------------------------------------------------------------
# every activation of the table (a new activation is tested here without writing a new test)
# --------------------------------------------------------------------------------------------------

from lipbound.activations import ACTIVATIONS  # noqa: E402
from test_activations import TORCH  # noqa: E402  (torch's own functions: independent of lipbound)


def _sampled_jacobian_norm(net, norm, points):
    """max over ``points`` of the Jacobian operator norm, by autograd through torch's OWN activation
    functions and the network's weights (nothing of lipbound's forward pass): an independent lower
    bound of the true constant that every certified upper bound must reach."""
    import torch

    from lipbound.network import Activation, Linear

    x = torch.as_tensor(points, dtype=torch.float64).requires_grad_(True)
    h = x
    for node in net.nodes[1:]:
        op = node.op
        h = h @ op.W.T + op.b if isinstance(op, Linear) else TORCH[op.name](op.fn)(h)
        assert isinstance(op, (Linear, Activation))
    J = torch.stack([torch.autograd.grad(h[:, j].sum(), x, retain_graph=True)[0] for j in range(h.shape[1])], 1)
    p = {1: 1, 2: 2, "inf": math.inf}[norm]
    if p == 2:
        vals = torch.linalg.matrix_norm(J, ord=2)
    elif p == 1:
        vals = J.abs().sum(1).max(1).values
    else:
        vals = J.abs().sum(2).max(1).values
    return float(vals.max())


@pytest.mark.parametrize("norm", [1, 2, "inf"])
@pytest.mark.parametrize("region", ["global", "box"])
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_every_activation_every_method(act, region, norm):
    """Every registered method that accepts the activation, on a random MLP: certified lowers <= certified
    uppers, and every certified upper >= the Jacobian norm sampled through torch's own functions."""
    seed = sorted(ACTIVATIONS).index(act)
    net = random_mlp([3, 6, 5, 2], seed=seed, activation=act, param=None, scale=2.0)
    rng = np.random.default_rng(seed)
    kw = {}
    if region == "box":
        center = rng.uniform(-1, 1, 3)
        kw = dict(center=center, eps=0.5)
        points = center + rng.uniform(-0.5, 0.5, (4000, 3))
    else:
        points = rng.uniform(-4, 4, (4000, 3))
    names = [n for n in lipbound.registry.load_methods() if n != "lower-grad"]  # lower-sample is the lower end
    rep = lipbound.compare(net, [n for n in names if lipbound.registry.get_method(n).in_compare
                                 and lipbound.registry.get_method(n).unsupported_reason(net, norm, None if region == "global" else lipbound.registry.Region.box(kw["center"], kw["eps"])) is None],
                           norm=norm, time_limit=2, options={"lower-sample": {"samples": 300},
                                                             **({} if region == "global" else
                                                                {"crown-bab": {"max_domains": 40}})}, **kw)
    lo, up = _assert_sandwich(rep)
    sampled = _sampled_jacobian_norm(net, norm, points)
    for b in rep.results:
        if b.ok and b.kind in ("upper", "exact"):
            assert b.value >= sampled * (1 - 1e-9) - 1e-12, f"{b.method} = {b.value} < sampled {sampled}\n{rep.table()}"
    # the cheap certified bounds accept every activation
    ran = {b.method for b in rep.results if b.ok}
    assert "naive" in ran and "lower-sample" in ran, rep.table()
