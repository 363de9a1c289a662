"""Local l2 bounds of the LipSDP family on a box: per-neuron slope bounds from certified pre-activation
bounds (reference §6). Checked against sampled Jacobians in the box (a certified lower bound), against
an independently assembled LipSDP matrix with per-neuron slopes, and against the same method's global
bound."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lipbound
from lipbound.methods.sdp.prepare import local_slopes
from lipbound.synthetic import eclipse_network
from lipbound.registry import Region

from _sdp_checks import lipsdp_neuron_max_eig, split_multipliers

LOCAL = ["eclipse-fast", "eclipse-g2-balance", "eclipse-g3-balance", "eclipse-family"]


def sampled_local_lower(net, region, n=4000, seed=0) -> float:
    """max over random points of the box (and its corners' neighbourhood) of ||J(x)||_2."""
    rng = np.random.default_rng(seed)
    lo, hi = region.lower.reshape(-1), region.upper.reshape(-1)
    x = rng.uniform(lo, hi, size=(n, lo.size))
    x[: n // 4] = np.where(rng.random((n // 4, lo.size)) < 0.5, lo, hi)  # vertices
    J = net.jacobian(x).numpy()
    return float(max(np.linalg.norm(j, 2) for j in J))


def full_lmi_max_eig(net, T, value, alphas, betas) -> float:
    """The LipSDP-Neuron matrix of reference §1 with PER-NEURON slopes, in the original weights, with the
    method's multipliers T and rho = value^2 (tests/_sdp_checks.py); its largest eigenvalue."""
    Ws = [l.W for l in net.dense_chain()]
    return lipsdp_neuron_max_eig(Ws, split_multipliers(Ws, T), value, alphas, betas)


CASES = [
    ("relu", dict(layers=3, width=10, kind="randn", seed=1), 0.3),
    ("relu", dict(layers=4, width=8, kind="rand", seed=2), 0.05),
    ("leaky_relu", dict(layers=3, width=10, kind="randn", seed=3, param=0.1), 0.5),
    ("tanh", dict(layers=3, width=8, kind="randn", seed=4), 0.4),
    ("sigmoid", dict(layers=3, width=8, kind="randn", seed=5), 1.0),
]


@pytest.mark.parametrize("act,kw,eps", CASES)
def test_local_bounds_sound_and_below_global(act, kw, eps):
    net = eclipse_network(activation=act, **kw)
    center = np.random.default_rng(kw["seed"]).standard_normal(net.n_inputs)
    region = Region.box(center, eps)
    low = sampled_local_lower(net, region)
    for m in LOCAL:
        loc = lipbound.bound(net, m, center=center, eps=eps)
        glob = lipbound.bound(net, m)
        assert loc.status == "ok" and loc.kind == "upper", (m, loc.status, loc.reason)
        assert low <= loc.value, (m, low, loc.value)
        assert loc.value <= glob.value * (1 + 1e-12), (m, loc.value, glob.value)
        model = loc.details["local_slopes"]["model"]
        # the certificate, re-assembled independently with the slopes of the model that won
        local = local_slopes(net, region)
        ga = [float(n.op.alpha) for n in net.nodes if n.op.kind == "Activation"]
        gb = [float(n.op.beta) for n in net.nodes if n.op.kind == "Activation"]
        if model == "global":
            al, be = ga, gb
        else:
            al, be = [np.minimum(a, g) for (a, _, _), g in zip(local, ga)], [b for _, b, _ in local]
        assert full_lmi_max_eig(net, loc.details["multipliers"], loc.value, al, be) <= 1e-8, m


@pytest.mark.parametrize("act,kw,eps", CASES)
def test_local_slopes_contain_the_secant_slopes(act, kw, eps):
    """Every pair of points of the box has, neuron by neuron, a secant slope inside [alpha_j, beta_j]."""
    net = eclipse_network(activation=act, **kw)
    center = np.random.default_rng(kw["seed"]).standard_normal(net.n_inputs)
    region = Region.box(center, eps)
    local = local_slopes(net, region)
    rng = np.random.default_rng(0)
    lo, hi = region.lower.reshape(-1), region.upper.reshape(-1)
    x = torch.from_numpy(rng.uniform(lo, hi, size=(600, lo.size)))
    y = torch.from_numpy(rng.uniform(lo, hi, size=(600, lo.size)))
    acts = [i for i, n in enumerate(net.nodes) if n.op.kind == "Activation"]
    vx, vy = net.forward_all(x), net.forward_all(y)
    for (a, b, _), i in zip(local, acts):
        j = net.nodes[i].inputs[0]
        zx, zy = vx[j].reshape(600, -1), vy[j].reshape(600, -1)
        px, py = vx[i].reshape(600, -1), vy[i].reshape(600, -1)
        dz = zx - zy
        ok = dz.abs() > 1e-9
        s = torch.where(ok, (px - py) / torch.where(ok, dz, torch.ones_like(dz)), torch.zeros_like(dz)).numpy()
        okn = ok.numpy()
        assert np.all((s >= a - 1e-9) | ~okn) and np.all((s <= b + 1e-9) | ~okn)


def test_local_beats_global_on_a_small_box():
    """Most ReLUs are stable in a small box: dead neurons drop out, and the local bound is well below the
    global one (digits MLP: about 41 against 52)."""
    from lipbound.examples import digits_mlp

    net = digits_mlp()
    x0 = np.random.default_rng(0).uniform(0, 16, size=(64,))
    loc = lipbound.bound(net, "eclipse-family", center=x0, eps=0.05)
    glob = lipbound.bound(net, "eclipse-family")
    low = lipbound.bound(net, "lower-grad", center=x0, eps=0.05)
    assert low.value <= loc.value <= 0.9 * glob.value
    assert loc.details["local_slopes"]["model"] == "relaxed"


@pytest.mark.parametrize("act,param", [("elu", 1.0), ("gelu", 0.0), ("silu", 0.0), ("abs", 0.0),
                                       ("leaky_relu", -0.5), ("hardswish", 0.0)])
def test_local_bounds_any_slopes(act, param):
    """Per-neuron slopes from the table's derivative ranges for activations with alpha < 0 or a kink off 0:
    the local bound is above the sampled local Jacobian norm, not above the global one, and its multipliers
    certify the LipSDP-Neuron matrix assembled independently with the per-neuron slopes of the model that
    won (auto: relaxed or global)."""
    net = eclipse_network(3, 8, "randn", seed=7, activation=act, param=param)
    center = np.random.default_rng(7).standard_normal(net.n_inputs)
    region = Region.box(center, 0.3)
    low = sampled_local_lower(net, region)
    for m in ("eclipse-fast", "eclipse-family"):
        loc = lipbound.bound(net, m, center=center, eps=0.3)
        glob = lipbound.bound(net, m)
        assert loc.status == "ok" and loc.kind == "upper", (m, loc.reason)
        assert low <= loc.value <= glob.value * (1 + 1e-12), (m, low, loc.value, glob.value)
        model = loc.details["local_slopes"]["model"]
        prep_slopes = local_slopes(net, region)
        op = net.activations()[0]
        if model == "relaxed":
            alphas = [np.minimum(a, op.alpha) for a, _, _ in prep_slopes]
            betas = [b for _, b, _ in prep_slopes]
        else:
            alphas, betas = [op.alpha] * len(prep_slopes), [op.beta] * len(prep_slopes)
        assert full_lmi_max_eig(net, loc.details["multipliers"], loc.value, alphas, betas) <= 1e-8, m


@pytest.mark.parametrize("act,kw,eps", [CASES[0], CASES[2], CASES[3]])
def test_lipsdp_opt_local(act, kw, eps):
    """lipsdp-opt on a box: above the sampled lower bound, not above the local closed-form family, and its
    multipliers certify the LMI assembled with the slopes of the model that won."""
    net = eclipse_network(activation=act, **kw)
    center = np.random.default_rng(kw["seed"]).standard_normal(net.n_inputs)
    region = Region.box(center, eps)
    low = sampled_local_lower(net, region)
    opt = lipbound.bound(net, "lipsdp-opt", center=center, eps=eps, budget=10.0)
    fam = lipbound.bound(net, "eclipse-family", center=center, eps=eps)
    assert opt.status == "ok", opt.reason
    assert low <= opt.value <= fam.value * (1 + 1e-9), (low, opt.value, fam.value)
    model = (opt.details.get("local_slopes") or {}).get("model", "global")
    local = local_slopes(net, region)
    ga = [float(n.op.alpha) for n in net.nodes if n.op.kind == "Activation"]
    gb = [float(n.op.beta) for n in net.nodes if n.op.kind == "Activation"]
    al, be = {"global": (ga, gb), "local": ([a for a, _, _ in local], [b for _, b, _ in local]),
              "relaxed": ([np.minimum(a, g) for (a, _, _), g in zip(local, ga)], [b for _, b, _ in local])}[model]
    assert full_lmi_max_eig(net, opt.details["multipliers"], opt.value, al, be) <= 1e-8
    assert full_lmi_max_eig(net, opt.details["multipliers"], 0.999 * opt.value, al, be) > 0


def test_local_conv_chain_slopes_line_up():
    """A conv net goes through dense_chain (flattened in C order); the per-neuron slopes of its feature maps
    must land on the right rows: the local bound stays above sampled Jacobians and below the global one."""
    from lipbound.network import Activation, Conv2d, Linear, Network, Reshape

    rng = np.random.default_rng(7)
    ops = [Conv2d(rng.standard_normal((3, 2, 3, 3)) / 3, rng.standard_normal(3) * 0.3, (1, 1), (1, 1)),
           Activation("relu"), Reshape((3 * 5 * 5,)),
           Linear(rng.standard_normal((12, 75)) / 8, rng.standard_normal(12) * 0.3), Activation("relu"),
           Linear(rng.standard_normal((3, 12)) / 3, None)]
    net = Network.sequential((2, 5, 5), ops)
    center = rng.standard_normal((2, 5, 5))
    for eps in (0.05, 0.5):
        region = Region.box(center, eps)
        low = sampled_local_lower(net, region)
        glob = lipbound.bound(net, "eclipse-family")
        for m in ("eclipse-family", "lipsdp-opt"):
            b = lipbound.bound(net, m, center=center, eps=eps, **({"budget": 5.0} if m == "lipsdp-opt" else {}))
            assert b.status in ("ok", "time_limit") and b.value is not None, b.reason
            assert low <= b.value <= glob.value * (1 + 1e-9), (m, eps, low, b.value, glob.value)
