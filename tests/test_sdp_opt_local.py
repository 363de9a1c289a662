"""lipsdp-opt's optimiser (methods.sdp.barrier) with per-neuron slope intervals [alpha_j, beta_j] (reference §6, local
bounds): hand-written gradient vs autograd, vectors of equal slopes vs layer-wide scalars, and the optimised
multipliers against an independently assembled LipSDP-Neuron LMI with per-neuron slopes."""

from __future__ import annotations

import numpy as np
import pytest

from lipbound.methods.sdp.certificate import run_chain
from lipbound.methods.sdp.prepare import Prepared, prepare
from lipbound.synthetic import eclipse_network
from lipbound.registry import MethodContext

from _sdp_checks import assert_barrier_gradient_matches_autograd, lipsdp_neuron_max_eig

# slope intervals of the kinds a local analysis produces: stable active ReLU, dead ReLU, unstable ReLU,
# unstable leaky ReLU(0.1), a smooth activation on a bounded interval
KINDS = [(1.0, 1.0), (0.0, 0.0), (0.0, 1.0), (0.1, 1.0), (0.2, 0.8)]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one BLAS / torch thread


def _base(**kw):
    net = eclipse_network(**kw)
    return prepare(net, MethodContext(method="eclipse-fast"))


def _local(prep, alphas, betas):
    """A Prepared with the same normalised weights and the given slopes (floats or per-neuron arrays)."""
    return Prepared([np.array(W) for W in prep.Ws], np.asarray(prep.scales), list(alphas), list(betas))


def _mixed_slopes(prep, seed, kinds=KINDS, layer_kinds=None):
    """Per-neuron slopes: every kind in every hidden layer (then random); ``layer_kinds`` overrides a layer's
    pool of kinds."""
    rng = np.random.default_rng(seed)
    alphas, betas = [], []
    for k, W in enumerate(prep.Ws[:-1]):
        pool = kinds if layer_kinds is None or k not in layer_kinds else layer_kinds[k]
        n = W.shape[0]
        idx = np.concatenate([np.arange(len(pool)), rng.integers(0, len(pool), max(n - len(pool), 0))])[:n]
        rng.shuffle(idx)
        alphas.append(np.array([pool[i][0] for i in idx]))
        betas.append(np.array([pool[i][1] for i in idx]))
    return alphas, betas


def _g1_start(Ws, alphas, betas, c=0.5):
    """Independent feasible start: L_k = c / lambda_max(diag(m) W_k M_{k-1}^{-1} W_k^T diag(m)) * 1 with the
    p-term dropped (valid: p >= 0 gives X >= M); M_k from the exact recursion with the p-term."""
    M = np.eye(Ws[0].shape[1])
    Ls = []
    for W, a, b in zip(Ws[:-1], alphas, betas):
        a = np.broadcast_to(np.asarray(a, dtype=float), (W.shape[0],))
        b = np.broadcast_to(np.asarray(b, dtype=float), (W.shape[0],))
        p, m = a * b, (a + b) / 2
        K = m[:, None] * (W @ np.linalg.solve(M, W.T)) * m[None, :]
        lam = np.full(W.shape[0], c / np.linalg.eigvalsh((K + K.T) / 2)[-1])
        X = M + W.T @ np.diag(p * lam) @ W
        KX = m[:, None] * (W @ np.linalg.solve(X, W.T)) * m[None, :]
        M = np.diag(lam) - lam[:, None] * KX * lam[None, :]
        M = (M + M.T) / 2
        np.linalg.cholesky(M)
        Ls.append(lam)
    return Ls


def _lmi_max_eig(Ws, alphas, betas, Ls, value):
    """Reference §1 with T_k = rho L_k / 2 and per-neuron slopes (tests/_sdp_checks.py)."""
    return lipsdp_neuron_max_eig(Ws, [value ** 2 * np.asarray(L) / 2 for L in Ls], value, alphas, betas)


NETS = [dict(layers=3, width=12, kind="randn", seed=4, n_out=3),
        dict(layers=4, width=10, kind="randn", seed=4, n_out=4),
        dict(layers=3, width=8, kind="rand", seed=2)]


@pytest.mark.parametrize("kw", NETS)
def test_local_barrier_gradient_matches_autograd(kw):
    """Per-neuron slopes (all kinds mixed in one layer; one layer with p = 0 everywhere but per-neuron m):
    the hand-written reverse pass equals autograd through ``__call__`` (value, log g_max, gradient)."""
    from lipbound.methods.sdp.barrier import BarrierObjective

    base = _base(**kw)
    alphas, betas = _mixed_slopes(base, 0, layer_kinds={1: [(0.0, 1.0), (0.0, 0.0), (0.0, 0.5)]})
    prep = _local(base, alphas, betas)
    Ws = [np.asarray(W) for W in base.Ws]
    obj = BarrierObjective(prep, _g1_start(Ws, alphas, betas))
    assert obj.hasp[0] and not obj.hasp[1]
    x = 0.05 * np.random.default_rng(0).standard_normal(sum(obj.sizes))
    assert_barrier_gradient_matches_autograd(obj, x)
    for t in (3.0, 1e4):
        # the gradient is that of psi_t (central difference on a few coordinates): both could share a bug
        g2 = obj.value_and_grad(x, t)[2]
        for i in (0, len(x) // 2, len(x) - 1):
            e = np.zeros_like(x)
            e[i] = 1e-5
            fd = (obj.value_and_grad(x + e, t)[0] - obj.value_and_grad(x - e, t)[0]) / 2e-5
            assert abs(fd - g2[i]) <= 1e-5 * max(1.0, np.abs(g2).max())


@pytest.mark.parametrize("slope", [(0.0, 1.0), (0.1, 1.0)])
def test_equal_vectors_match_scalars(slope, monkeypatch):
    """Per-neuron slopes all equal to the layer's scalar give the same phase-1 and phase-2 results: exactly
    (they are collapsed to the scalar); and with the collapse switched off (the per-neuron arithmetic), the
    same values and gradients at given points and the same short runs (long L-BFGS runs amplify rounding
    differences, so they are compared only within the path-following accuracy)."""
    import torch

    from lipbound.methods.sdp import barrier as so

    base = _base(layers=4, width=10, kind="randn", seed=5, n_out=2)
    n = len(base.Ws) - 1
    a, b = slope
    scal = _local(base, [a] * n, [b] * n)
    vec = _local(base, [np.full(W.shape[0], a) for W in base.Ws[:-1]],
                 [np.full(W.shape[0], b) for W in base.Ws[:-1]])
    Ls0 = _g1_start([np.asarray(W) for W in base.Ws], [a] * n, [b] * n)
    runs = ((so.polish, dict(time_budget=20.0)), (so.optimise, dict(time_budget=20.0)))
    for fn, kw in runs:
        Ls_s, h_s = fn(scal, Ls0, **kw)
        Ls_v, h_v = fn(vec, Ls0, **kw)
        assert h_s["iterations"] > 10 and h_s["best_log"] == h_v["best_log"], fn.__name__
        assert all(np.array_equal(x, y) for x, y in zip(Ls_s, Ls_v))
    monkeypatch.setattr(so, "COLLAPSE_UNIFORM", False)
    ob_s, ob_v = so.BarrierObjective(scal, Ls0), so.BarrierObjective(vec, Ls0)
    assert isinstance(ob_s.ms[0], float) and isinstance(ob_v.ms[0], torch.Tensor)
    rng = np.random.default_rng(3)
    for t in (3.0, 1e4):
        x = 0.1 * rng.standard_normal(sum(ob_s.sizes))
        f_s, l_s, g_s = ob_s.value_and_grad(x, t)
        f_v, l_v, g_v = ob_v.value_and_grad(x, t)
        assert abs(f_s - f_v) <= 1e-12 * max(1, abs(f_s)) and abs(l_s - l_v) <= 1e-12 * max(1, abs(l_s))
        assert np.abs(g_s - g_v).max() <= 1e-11 * np.abs(g_s).max()
    th, et = so.init_params(scal, Ls0)
    th_v, et_v = so.init_params(vec, Ls0)
    assert all(np.allclose(x, y, rtol=0, atol=1e-12) for x, y in zip(th, th_v)) and np.allclose(et, et_v, atol=1e-12)
    thetas = [torch.tensor(x) for x in th]
    etas = [torch.tensor(e, dtype=torch.float64) for e in et]
    l1 = so.Objective(scal).multipliers(thetas, etas)[1]
    l2 = so.Objective(vec).multipliers(thetas, etas)[1]
    assert abs(float(l1) - float(l2)) <= 1e-12 * max(1.0, abs(float(l1)))
    for fn, kw in ((so.polish, dict(time_budget=20.0, max_iter=40)), (so.optimise, dict(time_budget=20.0, max_iter=30)),
                   (so.polish, dict(time_budget=20.0))):
        _, h_s = fn(scal, Ls0, **kw)
        _, h_v = fn(vec, Ls0, **kw)
        tol = 1e-10 if "max_iter" in kw else 1e-4
        assert abs(h_s["best_log"] - h_v["best_log"]) <= tol, (fn.__name__, kw, h_s["best_log"], h_v["best_log"])


@pytest.mark.parametrize("kw", NETS[:2])
@pytest.mark.parametrize("kinds", ["mixed", "no_point_intervals"])
def test_local_optimum_certified_and_below_layer_wide(kw, kinds):
    """The barrier's multipliers with per-neuron slopes pass an independently assembled full LMI at
    rho = value^2 (and fail at a slightly smaller rho: the check is tight), the core's float64 certificate
    (run_chain with these multipliers) confirms the value, and the value is not above the optimum with the
    layer-wide slopes [min alpha, max beta] (narrower intervals: by the S-lemma, a [0,1] quadratic constraint
    dominates a multiple of an [alpha, beta] one when alpha < beta; with alpha = beta only in the limit of an
    infinite multiplier, approached by the frozen multipliers of the barrier)."""
    from lipbound.methods.sdp.barrier import optimise, polish

    base = _base(**kw)
    Ws = [np.asarray(W) for W in base.Ws]
    pool = KINDS if kinds == "mixed" else [(0.0, 1.0), (0.1, 1.0), (0.2, 0.8), (0.0, 0.3)]
    alphas, betas = _mixed_slopes(base, 1, kinds=pool)
    loc = _local(base, alphas, betas)
    wide = _local(base, [float(a.min()) for a in alphas], [float(b.max()) for b in betas])
    res = {}
    for name, prep, al, be in (("local", loc, alphas, betas), ("wide", wide, wide.alphas, wide.betas)):
        Ls0 = _g1_start(Ws, al, be)
        Ls, h = polish(prep, Ls0, time_budget=20.0)
        value = float(np.exp(h["best_log"] / 2))
        assert _lmi_max_eig(Ws, al, be, Ls, value * (1 + 1e-9)) <= 1e-9
        assert _lmi_max_eig(Ws, al, be, Ls, value * (1 - 1e-3)) > 0
        cr = run_chain(prep, None, fixed=Ls)
        assert cr.repaired == 0 and abs(cr.raw_hat / value - 1) <= 1e-7, (cr.raw_hat, value)
        L1, h1 = optimise(prep, Ls0, time_budget=20.0)
        v1 = float(np.exp(h1["best_log"] / 2))
        assert _lmi_max_eig(Ws, al, be, L1, v1 * (1 + 1e-9)) <= 1e-9
        assert value <= v1 * (1 + 1e-9)
        res[name] = value
    assert res["local"] <= res["wide"] * (1 + 1e-6), res
