"""Tests of the LipSDP family (lipsdp-neuron/-layer, eclipse, eclipse-fast, the closed-form family,
lipsdp-opt) against theorems, a sampled lower bound and an independently assembled LipSDP-Neuron LMI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import lipbound
from lipbound.errors import LipboundError
from lipbound.synthetic import eclipse_network
from lipbound.network import Activation, Linear, Network
from lipbound.activations import ACTIVATIONS

from _sdp_checks import assert_barrier_gradient_matches_autograd, lipsdp_neuron_max_eig, split_multipliers

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "networks"

CLOSED = ["eclipse-fast", "eclipse-g1", "eclipse-g2-balance", "eclipse-g2-jacobi", "eclipse-g2-gershgorin",
          "eclipse-g3", "eclipse-g3-balance", "eclipse-family"]
ALL = ["lipsdp-neuron", "lipsdp-layer", "eclipse", "lipsdp-opt"] + CLOSED
# small nets: Clarabel (interior point) is accurate and fast there; SCS is tested separately
OPTIONS = {"lipsdp-neuron": {"solver": "clarabel"}, "lipsdp-layer": {"solver": "clarabel"},
           "lipsdp-opt": {"budget": 10.0}}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small matrices, one BLAS / torch thread


def _load(name):
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} missing")
    try:
        return lipbound.load(path)
    except LipboundError as e:  # the reader is written by another helper
        if "not written yet" in str(e):
            pytest.skip("lipbound.load is not written yet")
        raise


def naive_l2(net) -> float:
    """Product of spectral norms (numpy SVD) times the largest |slope| of each activation."""
    ch = net.dense_chain()
    v = 1.0
    for layer in ch:
        v *= np.linalg.norm(layer.W, 2)
        if layer.activation is not None:
            v *= max(abs(layer.activation.alpha), abs(layer.activation.beta))
    return float(v)


def sampled_lower(net, n=3000, seed=0, scale=1.0, low=None, high=None) -> float:
    """max over random points of ||J(x)||_2: a certified lower bound on the global l2 constant."""
    rng = np.random.default_rng(seed)
    if low is not None:
        x = rng.uniform(low, high, size=(n, net.n_inputs))
    else:
        x = scale * rng.standard_normal((n, net.n_inputs))
    J = net.jacobian(x).numpy()
    return float(max(np.linalg.norm(j, 2) for j in J))


def full_lmi_max_eig(net, T: np.ndarray, value: float, output=None) -> float:
    """Independent brute force: the LipSDP-Neuron matrix of reference §1 (block-tridiagonal form) in the
    ORIGINAL weights with multipliers T (concatenated diag) and rho = value^2; returns its largest
    eigenvalue after a symmetric diagonal (Jacobi) scaling, which preserves the sign pattern."""
    ch = net.dense_chain()
    Ws = [l.W for l in ch]
    if output is not None:
        Ws[-1] = Ws[-1][output:output + 1]
    acts = [l.activation for l in ch[:-1]]
    return lipsdp_neuron_max_eig(Ws, split_multipliers(Ws, T), value, [a.alpha for a in acts],
                                 [a.beta for a in acts])


def run_all(net, methods=ALL, **extra):
    out = {}
    for m in methods:
        b = lipbound.bound(net, m, **{**OPTIONS.get(m, {}), **extra.get(m, {})})
        assert b.status == "ok", (m, b.status, b.reason)
        assert b.kind == "upper"
        out[m] = b
    return out


NETS = {
    "rand-4x8": lambda: eclipse_network(4, 8, "rand"),
    "randn-4x10": lambda: eclipse_network(4, 10, "randn"),
    "randn-3x8-leaky": lambda: eclipse_network(3, 8, "randn", seed=5, activation="leaky_relu", param=0.1),
}


@pytest.fixture(scope="module", params=list(NETS))
def case(request):
    net = NETS[request.param]()
    return request.param, net, run_all(net), sampled_lower(net)


def test_ordering_theorems(case):
    name, net, r, low = case
    v = {m: b.value for m, b in r.items()}
    neuron = v["lipsdp-neuron"]
    tol = 1e-5  # Clarabel's relative accuracy; the certified neuron value sits at (or just above) the optimum
    assert low <= neuron * (1 + 1e-9), (low, neuron)
    for m in ALL:
        assert neuron <= v[m] * (1 + tol), (m, v[m], neuron)
    assert neuron <= v["lipsdp-layer"] * (1 + tol)
    assert v["eclipse-fast"] <= naive_l2(net) * (1 + 1e-9)
    for m in CLOSED:
        assert v["eclipse-family"] <= v[m] * (1 + 1e-12), m
    assert v["lipsdp-opt"] <= v["eclipse-family"] * (1 + 1e-12)
    assert v["eclipse-family"] <= v["eclipse-fast"]


def test_multipliers_satisfy_full_lmi(case):
    """For every method: its multipliers and its value make the LipSDP-Neuron matrix NSD."""
    name, net, r, low = case
    for m, b in r.items():
        T = b.details["multipliers"]
        lmax = full_lmi_max_eig(net, T, b.value)
        assert lmax <= 1e-8, (m, lmax)
        # and the value cannot be lowered by 1%: the matrix at rho = (0.99 value)^2 is not NSD
        # (each method's value is the best for its own multipliers)
        assert full_lmi_max_eig(net, T, 0.99 * b.value) > 0, m


def test_recorded_eclipse_vs_fast_and_opt_gap(case, record_property):
    """lipsdp-opt within 0.5% of lipsdp-neuron (Clarabel, an independent solver) on every net of ``case``,
    leaky ReLU included; expected but not a theorem (recorded, xfail): eclipse <= eclipse-fast."""
    name, net, r, low = case
    v = {m: b.value for m, b in r.items()}
    ratio = v["lipsdp-opt"] / v["lipsdp-neuron"]
    record_property("eclipse_over_fast", v["eclipse"] / v["eclipse-fast"])
    record_property("opt_over_neuron", ratio)
    print(f"{name}: eclipse/fast = {v['eclipse'] / v['eclipse-fast']:.6f}, opt/neuron = {ratio:.6f}, "
          f"opt time {r['lipsdp-opt'].time_s:.1f} s, neuron time {r['lipsdp-neuron'].time_s:.1f} s")
    assert ratio <= 1.005, f"lipsdp-opt is {100 * (ratio - 1):.2f}% above lipsdp-neuron"
    if v["eclipse"] > v["eclipse-fast"] * (1 + 1e-9):
        pytest.xfail(f"eclipse {v['eclipse']:.6g} > eclipse-fast {v['eclipse-fast']:.6g}")


OPT_NETS = {
    "rand-5x20": lambda: eclipse_network(5, 20, "rand"),
    "randn-5x20": lambda: eclipse_network(5, 20, "randn"),
    "randn-3x12-3out": lambda: eclipse_network(3, 12, "randn", seed=4, n_out=3),
    "randn-5x20-leaky": lambda: eclipse_network(5, 20, "randn", activation="leaky_relu", param=0.1),
}


@pytest.mark.parametrize("name", list(OPT_NETS))
def test_opt_reaches_lipsdp_neuron(name):
    """lipsdp-opt (barrier path following) against LipSDP-Neuron solved by Clarabel (independent interior
    point solver): certified, never below the optimum (up to Clarabel's accuracy) and within 0.2% of it
    (the issue asks for 0.5%); multi-output and leaky ReLU (alpha*beta > 0) nets included."""
    net = OPT_NETS[name]()
    sdp = lipbound.bound(net, "lipsdp-neuron", solver="clarabel")
    opt = lipbound.bound(net, "lipsdp-opt", budget=20.0)
    assert sdp.status == "ok" and opt.status == "ok", (sdp.reason, opt.reason)
    ratio = opt.value / sdp.value
    print(f"{name}: opt/neuron = {ratio:.6f}, opt {opt.time_s:.2f} s, neuron {sdp.time_s:.2f} s")
    assert 1 - 1e-5 <= ratio <= 1.002, ratio
    assert opt.value <= opt.details["start_value"]
    assert full_lmi_max_eig(net, opt.details["multipliers"], opt.value) <= 1e-8
    if "leaky" in name:  # the PD-by-construction phase alone stays several % above (p-term dropped)
        both = lipbound.bound(net, "lipsdp-opt", budget=20.0, phases="both")
        assert both.status == "ok" and both.value / sdp.value <= 1.002


def test_opt_budget_and_time_limit_are_anytime():
    """Stopped early by its budget or by the time limit, lipsdp-opt says so (status time_limit, stopped_by)
    and still returns a certified bound no worse than its closed-form start."""
    net = eclipse_network(10, 20, "randn")
    for kw, why in ((dict(budget=0.05), "budget"), (dict(time_limit=0.4), "time limit")):
        b = lipbound.bound(net, "lipsdp-opt", **kw)
        assert b.status == "time_limit" and b.details["stopped_by"] == why, (kw, b.status, b.details.get("stopped_by"))
        assert b.value <= b.details["start_value"] * (1 + 1e-12)
        assert full_lmi_max_eig(net, b.details["multipliers"], b.value) <= 1e-8
    done = lipbound.bound(net, "lipsdp-opt", time_limit=60)
    assert done.status == "ok" and "stopped_by" not in done.details
    assert done.value <= b.value * (1 + 1e-9)


@pytest.mark.parametrize("kw", [dict(layers=3, width=12, kind="randn", seed=4, n_out=3),
                                dict(layers=4, width=10, kind="randn", seed=4, n_out=4, activation="leaky_relu",
                                     param=0.1),
                                dict(layers=3, width=8, kind="rand", seed=2)])
def test_barrier_gradient_matches_autograd(kw):
    """The hand-written reverse pass of the barrier objective equals torch autograd through the same
    forward recursion (value, exact log lambda_max and gradient), for two path parameters."""
    from lipbound.methods.sdp.barrier import BarrierObjective
    from lipbound.methods.sdp.certificate import run_chain
    from lipbound.methods.sdp.closed_forms import policy_g1
    from lipbound.methods.sdp.prepare import prepare
    from lipbound.registry import MethodContext

    net = eclipse_network(**kw)
    prep = prepare(net, MethodContext(method="eclipse-fast"))
    start = run_chain(prep, policy_g1(0.5))
    obj = BarrierObjective(prep, start.Ls)
    x = 0.05 * np.random.default_rng(0).standard_normal(sum(obj.sizes))
    assert_barrier_gradient_matches_autograd(obj, x)


def test_scs_default_certified():
    """Default solver SCS: the certified value is at most slightly above the raw solver value and above a
    lower bound; the layer variant is not below the neuron variant."""
    net = eclipse_network(3, 8, "randn", seed=3)
    b = lipbound.bound(net, "lipsdp-neuron")
    lay = lipbound.bound(net, "lipsdp-layer")
    assert b.status == "ok" and lay.status == "ok"
    assert b.details["chunks"][0]["solver"] == "scs"
    low = sampled_lower(net)
    assert low <= b.value
    assert b.value <= b.details["solver_value"] * 1.01
    assert b.value <= lay.value * (1 + 1e-3)
    assert full_lmi_max_eig(net, b.details["multipliers"], b.value) <= 1e-8


def test_split_product():
    net = eclipse_network(5, 8, "rand", seed=2)
    full = lipbound.bound(net, "lipsdp-neuron", solver="clarabel")
    sp = lipbound.bound(net, "lipsdp-neuron", solver="clarabel", split=2)
    assert sp.status == "ok"
    assert len(sp.details["chunks"]) == 3
    assert full.value <= sp.value * (1 + 1e-6) <= naive_l2(net) * (1 + 1e-6)


def test_single_matrix_and_output():
    W = np.random.default_rng(1).standard_normal((3, 5))
    net = Network.sequential((5,), [Linear(W, None)])
    for m in ["eclipse-fast", "eclipse-family", "lipsdp-opt", "lipsdp-neuron"]:
        b = lipbound.bound(net, m)
        assert b.status == "ok"
        assert abs(b.value - np.linalg.norm(W, 2)) <= 1e-9 * b.value
    net = eclipse_network(3, 10, "randn", seed=4, n_out=3)
    for j in range(3):
        bj = lipbound.bound(net, "eclipse-family", output=j)
        full = lipbound.bound(net, "eclipse-family")
        rng = np.random.default_rng(j)
        J = net.jacobian(rng.standard_normal((500, 4))).numpy()[:, j, :]
        assert np.linalg.norm(J, axis=1).max() <= bj.value <= full.value * (1 + 1e-9)
        assert full_lmi_max_eig(net, bj.details["multipliers"], bj.value, output=j) <= 1e-8


def test_relu_rescaling_invariance():
    """LipSDP-Neuron is invariant under a positive diagonal rescaling of the hidden neurons; ECLipsE-Fast on
    the rescaled net equals G2 with P = D^2 on the original (reference §5)."""
    rng = np.random.default_rng(0)
    Ws = [rng.standard_normal((6, 3)), rng.standard_normal((6, 6)), rng.standard_normal((2, 6))]
    D = [np.exp(rng.uniform(-1, 1, 6)), np.exp(rng.uniform(-1, 1, 6))]
    Ws2 = [D[0][:, None] * Ws[0], D[1][:, None] * Ws[1] / D[0][None, :], Ws[2] / D[1][None, :]]

    def mk(ws):
        return Network.sequential((3,), [Linear(ws[0], None), Activation("relu"), Linear(ws[1], None),
                                         Activation("relu"), Linear(ws[2], None)])

    a = lipbound.bound(mk(Ws), "lipsdp-neuron", solver="clarabel").value
    b = lipbound.bound(mk(Ws2), "lipsdp-neuron", solver="clarabel").value
    assert abs(a - b) <= 1e-4 * a
    x = rng.standard_normal((20, 3))
    assert np.allclose(mk(Ws)(x).numpy(), mk(Ws2)(x).numpy())


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "elu", "softplus"])
def test_smooth_activations_above_lower(act):
    net = eclipse_network(4, 8, "randn", seed=11, activation=act, param=1.0 if act in ("elu", "softplus") else 0.0)
    low = sampled_lower(net, scale=0.5)
    r = run_all(net, ["lipsdp-neuron", "eclipse-fast", "eclipse-family", "lipsdp-opt"],
                **{"lipsdp-opt": {"budget": 3.0}})
    for m, b in r.items():
        assert b.value >= low, (m, b.value, low)
        assert full_lmi_max_eig(net, b.details["multipliers"], b.value) <= 1e-8
    assert r["lipsdp-neuron"].value <= r["lipsdp-opt"].value * (1 + 2e-4)  # Clarabel accuracy on tiny slopes
    assert r["eclipse-fast"].value <= naive_l2(net) * (1 + 1e-9)


# every activation of the table with its default parameters, plus parameters that change the slope bounds
# (leaky ReLU with a negative slope: alpha = -3; ReLU6; ELU with alpha > 1)
TABLE_CASES = [(n, None) for n in sorted(ACTIVATIONS)] + [("leaky_relu", -3.0), ("hardtanh", (0.0, 6.0)),
                                                          ("elu", 2.0)]


@pytest.mark.parametrize("act,param", TABLE_CASES, ids=[f"{a}-{p}" for a, p in TABLE_CASES])
def test_every_table_activation_sound(act, param):
    """Every activation of the table, alpha < 0 included (GELU, SiLU, Mish, Hardswish, Abs, leaky ReLU with a
    negative slope): each method's value is above the sampled l2 Jacobian norm, its multipliers make the
    independently assembled LipSDP-Neuron matrix (with the activation's [alpha, beta]) NSD, and the
    LipSDP-Neuron optimum is below every other member (any diagonal multipliers are feasible points)."""
    net = eclipse_network(3, 6, "randn", seed=13, activation=act, param=param)
    op = net.activations()[0]
    low = max(sampled_lower(net, scale=0.5), sampled_lower(net, scale=3.0, seed=1))
    r = run_all(net, ["lipsdp-neuron", "eclipse", "eclipse-fast", "eclipse-family"],
                **{"eclipse": {"solver": "clarabel"}})
    r["lipsdp-opt"] = lipbound.bound(net, "lipsdp-opt", budget=1.0)  # may stop on its budget: time_limit
    assert r["lipsdp-opt"].status in ("ok", "time_limit") and r["lipsdp-opt"].kind == "upper"
    for m, b in r.items():
        assert b.value >= low, (m, b.value, low)
        assert full_lmi_max_eig(net, b.details["multipliers"], b.value) <= 1e-8, m
        assert b.value >= r["lipsdp-neuron"].value * (1 - 1e-4), m
    assert op.alpha < 0 or r["eclipse-fast"].value <= naive_l2(net) * (1 + 1e-9)


def test_sigmoid_onnx():
    net = _load("ffnnSIGMOID__Point_6x200.onnx")
    low = sampled_lower(net, n=100, low=0.0, high=1.0)
    naive = naive_l2(net)
    fast = lipbound.bound(net, "eclipse-fast")
    fam = lipbound.bound(net, "eclipse-g2-balance")
    assert fast.status == "ok" and fam.status == "ok"
    assert low <= fam.value and low <= fast.value <= naive * (1 + 1e-9)
    guard = lipbound.bound(net, "lipsdp-neuron")
    assert guard.status == "unsupported" and "max_neurons" in guard.reason


def test_acas_xu():
    net = _load("ACASXU_run2a_1_1_batch_2000.onnx")
    low = sampled_lower(net, n=1000)
    fast = lipbound.bound(net, "eclipse-fast")
    fam = lipbound.bound(net, "eclipse-family")
    opt = lipbound.bound(net, "lipsdp-opt", time_limit=4)
    naive = naive_l2(net)
    assert abs(fast.value - 4.43e6) <= 0.01 * 4.43e6  # the value quoted in the issue
    assert low <= opt.value <= fam.value <= fast.value <= naive
    assert opt.status in ("ok", "time_limit") and opt.value < fast.value / 10
    for b in (fast, fam, opt):
        assert full_lmi_max_eig(net, b.details["multipliers"], b.value) <= 1e-8
    sdp = lipbound.bound(net, "lipsdp-neuron")
    assert sdp.status == "unsupported" and "max_neurons" in sdp.reason


def test_unsupported_networks():
    for name in ("resnet_2b.onnx", "Convnet_maxpool.onnx"):
        net = _load(name)
        for m in ("eclipse-fast", "lipsdp-opt"):
            b = lipbound.bound(net, m)
            assert b.status == "unsupported" and b.value is None and b.reason


def test_time_limit_fallbacks():
    net = eclipse_network(30, 20, "randn")
    fast = lipbound.bound(net, "eclipse-fast")
    cut = lipbound.bound(net, "eclipse-fast", time_limit=1e-9)
    assert cut.status == "time_limit" and cut.value >= fast.value
    assert cut.value <= naive_l2(net) * (1 + 1e-6) * math.sqrt(20) ** 30  # Frobenius tail, finite
    opt = lipbound.bound(net, "lipsdp-opt", time_limit=1.0)
    # under a 1 s limit the start may use only part of the family, but never less than ECLipsE-Fast
    assert opt.status in ("ok", "time_limit") and opt.value <= fast.value
