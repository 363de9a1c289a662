"""lipsdp-opt's certified lower bound on the LipSDP-Neuron optimum (dual point, weak duality, reference §10).

Independent references: LipSDP-Neuron solved by Clarabel (another interior-point solver, re-certified), and
the weak-duality inequality itself (a dual point that claims more than the optimum must be rejected)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import lipbound
from lipbound.synthetic import eclipse_network

from _nets import random_mlp

NETS = {
    "mlp-relu-2": lambda: random_mlp([6, 12, 3], seed=1),
    "mlp-relu-3": lambda: random_mlp([5, 15, 10, 2], seed=2),
    "mlp-leaky-3": lambda: random_mlp([7, 8, 20, 1], seed=3, activation="leaky_relu", param=0.05),
    "mlp-leaky-4": lambda: random_mlp([5, 10, 12, 9, 4], seed=4, activation="leaky_relu", param=0.2),
    "ecl-randn-4x20": lambda: eclipse_network(4, 20, "randn", seed=5),
    "ecl-rand-3x12": lambda: eclipse_network(3, 12, "rand", seed=6),
    "ecl-randn-4x5-leaky": lambda: eclipse_network(4, 5, "randn", seed=7, activation="leaky_relu", param=0.1),
    # deeper: Z's diagonal spans orders of magnitude (per-row PSD margin, diagonal repair of the residuals)
    "ecl-randn-10x10": lambda: eclipse_network(10, 10, "randn", seed=9),
}


def _clarabel(net) -> float:
    b = lipbound.bound(net, "lipsdp-neuron", solver="clarabel")
    assert b.status == "ok", b.reason
    return b.value


@pytest.mark.parametrize("name", list(NETS))
def test_sdp_lower_brackets_clarabel(name):
    """sdp_lower <= LipSDP-Neuron optimum (Clarabel, certified value) <= lipsdp-opt's value, the gap as
    documented, and the dual bound never reported as a lower bound of the Lipschitz constant."""
    net = NETS[name]()
    opt = lipbound.bound(net, "lipsdp-opt", budget=20.0)
    ref = _clarabel(net)
    d = opt.details
    assert opt.status == "ok", opt.reason
    low = d["sdp_lower"]
    assert low <= ref * (1 + 1e-6) <= opt.value * (1 + 1e-6) * (1 + 1e-6), (low, ref, opt.value)
    assert d["sdp_gap"] == pytest.approx(opt.value / low - 1, rel=1e-12)
    assert d["sdp_gap"] <= 1e-3
    assert opt.lower is None and opt.kind == "upper"
    assert "NOT a lower bound on the Lipschitz constant" in d["sdp_dual"]["meaning"]


def test_gap_tol_option_and_limits():
    """A looser gap_tol stops earlier with a larger certified gap (still <= gap_tol); no sdp_lower above the
    dense limit or on a box region, with the reason."""
    net = eclipse_network(3, 12, "randn", seed=8)
    loose = lipbound.bound(net, "lipsdp-opt", budget=20.0, gap_tol=3e-2)
    tight = lipbound.bound(net, "lipsdp-opt", budget=20.0, gap_tol=1e-4)
    assert loose.status == tight.status == "ok"
    assert loose.details["sdp_gap"] <= 3e-2 and tight.details["sdp_gap"] <= 1e-4
    assert tight.details["sdp_lower"] <= loose.value * (1 + 1e-9) and loose.details["sdp_lower"] <= tight.value
    big = lipbound.bound(net, "lipsdp-opt", budget=5.0, full_check_max=10)
    assert "sdp_lower" not in big.details and "full_check_max" in big.details["sdp_lower_note"]
    box = lipbound.bound(net, "lipsdp-opt", budget=3.0, center=np.zeros(4), eps=0.1)
    assert box.ok and "sdp_lower" not in box.details and "box" in box.details["sdp_lower_note"]
    with pytest.raises(lipbound.LipboundError):
        lipbound.bound(net, "lipsdp-opt", gap_tol=0.0)


@pytest.fixture(scope="module")
def dual_case():
    """A net, its Clarabel optimum, the dual chain and a Newton-centred dual point (eps = 1e-3)."""
    from lipbound.methods.sdp import dual
    from lipbound.methods.sdp.barrier import polish
    from lipbound.methods.sdp.certificate import run_chain
    from lipbound.methods.sdp.closed_forms import policy_g1
    from lipbound.methods.sdp.prepare import prepare
    from lipbound.registry import MethodContext

    net = random_mlp([5, 15, 10, 2], seed=2, activation="leaky_relu", param=0.1)
    ctx = MethodContext(options={})
    ctx.option = lambda k: None  # prepare reads max_entries only
    prep = prepare(net, ctx)
    Ls, _ = polish(prep, run_chain(prep, policy_g1(0.5)).Ls, time_budget=20, eps_final=1e-3)
    ch, lam_f, F_f = dual.dual_chain(prep)
    nu = prep.widths[0] + prep.n_hidden + 1
    t = nu / 1e-3
    F = (t / (1 + t)) / run_chain(prep, None, fixed=Ls).raw_hat ** 2
    lam = np.concatenate([l * f for l, f in zip(Ls, lam_f)])
    Z, _, _, _ = dual.newton_dual(ch, F * F_f, lam, t)
    return dual, ch, Z, _clarabel(net)


def test_dual_check_accepts_and_is_homogeneous(dual_case):
    dual, ch, Z, ref = dual_case
    low, info = dual.check_dual(ch, Z)
    assert ref * (1 - 2e-3) <= low <= ref * (1 + 1e-6), (low, ref)
    # the bound is homogeneous in Z: 1.1 Z certifies the same number (scaling is not a corruption)
    low2, _ = dual.check_dual(ch, 1.1 * Z)
    assert low2 == pytest.approx(low, rel=1e-12)


def test_dual_check_rejects_corrupted_points(dual_case):
    """Corruptions that would claim more than the LipSDP-Neuron optimum (or break Z >= 0) are rejected."""
    dual, ch, Z, ref = dual_case
    n0, last = ch.sizes[0], slice(ch.offs[-2], ch.offs[-1])
    lmin = float(np.linalg.eigvalsh(Z)[0])
    assert lmin > 0
    # drop the PSD margin: Z - lambda_min I is singular (PSD only up to rounding), Z - 1.01 lambda_min I is not PSD
    for shift in (lmin, 1.01 * lmin):
        with pytest.raises(dual.DualCheckError, match="not positive definite"):
            dual.check_dual(ch, Z - shift * np.eye(Z.shape[0]))
    # inflate <Z, B> by 1.1 (the last diagonal block) or deflate tr Z_00 (the first): each would claim a value
    # ~5% above the optimum if it were accepted
    for blk, f in ((last, 1.1), (slice(0, n0), 0.9)):
        bad = Z.copy()
        bad[blk, blk] *= f
        try:
            low, _ = dual.check_dual(ch, bad)
        except dual.DualCheckError:
            continue
        assert low <= ref * (1 + 1e-6), (blk, f, low, ref)


def test_dual_check_sound_under_random_perturbations(dual_case):
    """Whatever the check accepts is below the optimum: random symmetric perturbations of the dual point
    (which break its equalities, so the residual correction is exercised) never give a bound above Clarabel's."""
    dual, ch, Z, ref = dual_case
    rng = np.random.default_rng(0)
    accepted = 0
    for k in range(12):
        E = rng.standard_normal(Z.shape)
        E = (E + E.T) / 2 * (10.0 ** -rng.uniform(2, 8)) * float(np.abs(Z).max())
        try:
            low, info = dual.check_dual(ch, Z + E)
        except dual.DualCheckError:
            continue
        accepted += 1
        assert low <= ref * (1 + 1e-6), (k, low, ref)
        assert info["max_residual"] > 0 or info["residual_correction"] == 0
    assert accepted >= 3  # the small perturbations pass (absorbed by the correction direction)


def test_residuals_match_independent_assembly(dual_case):
    """<Z, A_a> from the check equals the trace with the constraint matrix assembled independently from
    xi^T A_a xi = (x_j - alpha z_j)(x_j - beta z_j), up to the check's own rounding allowance."""
    dual, ch, Z, _ = dual_case
    res = dual._residual_upper(ch, Z)
    for k in range(len(ch.Ws) - 1):
        W = ch.Ws[k]
        a, b = ch.slopes(k)
        for j in range(0, W.shape[0], 3):
            u = np.zeros(ch.N)
            v = np.zeros(ch.N)
            u[ch.offs[k + 1] + j] = v[ch.offs[k + 1] + j] = 1.0
            u[ch.offs[k]:ch.offs[k + 1]] = -a[j] * W[j]
            v[ch.offs[k]:ch.offs[k + 1]] = -b[j] * W[j]
            exact = float(u @ Z @ v)
            scale = float(np.abs(u) @ np.abs(Z) @ np.abs(v))
            assert exact <= res[k][j] + 1e-12 * scale
            assert res[k][j] - exact <= 1e-10 * scale + 1e-300
    assert math.isfinite(float(np.max(np.concatenate(res))))
