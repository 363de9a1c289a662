"""The per-layer kernels of the closed forms (issue 15 items 1-2), each against an independent dense numpy
computation on small random data: the syrk Gram matrix of the certificate, ECLipsE-Fast's value, G3's
tridiagonal objective and its derivative, the secant search against a grid, and the Lanczos estimate.
Timings are the benchmark's (benchmarks/closed_forms_scale.py), not asserted here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lipbound
from lipbound.methods.sdp import closed_forms as cf
from lipbound.methods.sdp.certificate import full_lmi_min_eig, gram_syrk, run_chain
from lipbound.methods.sdp.prepare import prepare
from lipbound.registry import MethodContext
from lipbound.synthetic import eclipse_network, eclipse_weights

pytestmark = pytest.mark.usefixtures("one_thread")


def _spd(n, rng):
    A = rng.standard_normal((n, n))
    return A @ A.T / n + 0.1 * np.eye(n)


@pytest.mark.parametrize("n_out,n_in,order", [(1, 7, "C"), (9, 4, "F"), (300, 300, "C"), (130, 260, "F")])
def test_gram_syrk_matches_dense(n_out, n_in, order):
    rng = np.random.default_rng(n_out + n_in)
    W = np.array(rng.standard_normal((n_out, n_in)), order=order)
    M = _spd(n_in, rng)
    R = torch.linalg.cholesky(torch.from_numpy(M))
    for Rk, ref in ((None, W @ W.T), (R, W @ np.linalg.solve(M, W.T))):
        G = gram_syrk(Rk, torch.from_numpy(W), 0.3)
        assert torch.equal(G, G.T)  # exactly symmetric
        np.testing.assert_allclose(G.numpy(), 0.3 * ref, rtol=0, atol=1e-12 * np.abs(ref).max())


def _fast_dense(Ws, m=0.5):
    """ECLipsE-Fast with explicit inverses and full eigvalsh (ReLU)."""
    M = np.eye(Ws[0].shape[1])
    for W in Ws[:-1]:
        K = m * m * W @ np.linalg.inv(M) @ W.T
        ell = 1.0 / (2 * np.linalg.eigvalsh((K + K.T) / 2)[-1])
        M = ell * np.eye(W.shape[0]) - ell * ell * K
    G = Ws[-1] @ np.linalg.inv(M) @ Ws[-1].T
    return math.sqrt(np.linalg.eigvalsh((G + G.T) / 2)[-1])


@pytest.mark.parametrize("layers,width,kind", [(6, 40, "randn"), (5, 120, "rand"), (3, 300, "randn")])
def test_fast_matches_dense_reference(layers, width, kind):
    """The per-layer path (syrk Gram, Lanczos above EXACT_EIG_MAX neurons, margins) equals the dense
    recursion to 1e-7 relative and stays above it (the margins only enlarge the value)."""
    ref = _fast_dense(eclipse_weights(layers, width, kind, seed=5))
    b = lipbound.bound(eclipse_network(layers, width, kind, seed=5), "eclipse-fast")
    assert b.status == "ok"
    assert b.value == pytest.approx(ref, rel=1e-7)


def _g_dense(A, W, s):
    """lambda_max(W (s I - s^2 A)^{-1} W^T), dense."""
    Z = W @ np.linalg.solve(s * np.eye(A.shape[0]) - s * s * A, W.T)
    return float(np.linalg.eigvalsh((Z + Z.T) / 2)[-1])


@pytest.mark.parametrize("m", [3, 150])  # dense evaluation (few rows) and Lanczos
def test_g3_objective_and_derivative(m):
    rng = np.random.default_rng(m)
    n = 90
    A = _spd(n, rng)
    W = rng.standard_normal((m, n))
    A0, W0 = A.copy(), W.copy()
    d, e, B = cf._tridiagonal_reduction(A, W)
    assert np.array_equal(A, A0) and np.array_equal(W, W0)  # inputs (the network's own weights) untouched
    kmax = cf._tridiagonal_top(d, e)
    assert kmax == pytest.approx(np.linalg.eigvalsh(A)[-1], rel=1e-12)
    g = cf._G3Objective(d, e, B)
    for t in (0.2, 0.5, 0.9):
        s, h = t / kmax, 1e-6 / kmax
        val, der = g(s)
        assert val == pytest.approx(_g_dense(A, W, s), rel=1e-9)
        fd = (_g_dense(A, W, s + h) - _g_dense(A, W, s - h)) / (2 * h)
        assert der == pytest.approx(fd, rel=1e-4)


def test_g3_search_finds_the_grid_minimum():
    """The secant search on g' lands at least as low as the best of a fine grid (convex g)."""
    rng = np.random.default_rng(3)
    n, m = 60, 40
    A = _spd(n, rng)
    W = rng.standard_normal((m, n))
    d, e, B = cf._tridiagonal_reduction(A, W)
    kmax = cf._tridiagonal_top(d, e)
    t = cf._convex_search(cf._G3Objective(d, e, B), kmax, 24)
    grid = min(_g_dense(A, W, u / kmax) for u in np.linspace(0.01, 0.999, 400))
    assert _g_dense(A, W, t / kmax) <= grid * (1 + 1e-9)


def test_lanczos_top_underestimates_and_converges():
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((200, 200)))
    ev = np.concatenate([np.linspace(0, 1, 195), [1.5, 1.9, 1.95, 1.99, 2.0]])
    A = (Q * ev) @ Q.T
    theta, v = cf._lanczos_top(lambda y: A @ y, 200, None, steps=200, rtol=1e-8)
    assert theta <= 2.0 * (1 + 1e-12) and theta == pytest.approx(2.0, rel=1e-10)
    assert abs(v @ Q[:, -1]) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("method", ["eclipse-g3", "eclipse-g3-balance"])
def test_g3_multipliers_pass_the_assembled_lmi(method):
    """G3's multipliers, re-certified by the decomposition, make the independently assembled LMI
    semidefinite at the value and not at 0.999 x the value."""
    net = eclipse_network(5, 30, "randn", seed=2)
    prep = prepare(net, MethodContext(norm=2, method=method))
    pol = cf.policy_g3(None if method == "eclipse-g3" else "balance")
    cr = run_chain(prep, pol)
    assert full_lmi_min_eig(prep, cr.Ls, cr.value_hat) >= -1e-9
    assert full_lmi_min_eig(prep, cr.Ls, 0.999 * cr.value_hat) < 0
    b = lipbound.bound(net, method)
    assert b.value == pytest.approx(prep.unscale(cr.value_hat), rel=1e-12)


def test_family_all_members_on_a_wide_layer():
    """members=all runs every member (G3 searches included) on a layer wider than 500 neurons."""
    net = eclipse_network(3, 520, "randn", seed=1)
    b = lipbound.bound(net, "eclipse-family", members="all")
    keys = set(b.details["members"])
    assert {"eclipse-g3", "eclipse-g3-balance", "eclipse-fast"} <= keys
    assert all(isinstance(v, float) for v in b.details["members"].values())
    assert b.value <= lipbound.bound(net, "eclipse-fast").value


def test_gram_syrk_threaded_path_matches_dense():
    """With several torch threads gram_syrk takes torch's blocked product: same value, exactly symmetric."""
    from lipbound.threads import blas_threads

    rng = np.random.default_rng(7)
    W = rng.standard_normal((270, 260))
    M = _spd(260, rng)
    R = torch.linalg.cholesky(torch.from_numpy(M))
    with blas_threads(2):
        G = gram_syrk(R, torch.from_numpy(W), 0.3)
    ref = 0.3 * W @ np.linalg.solve(M, W.T)
    assert torch.equal(G, G.T)
    np.testing.assert_allclose(G.numpy(), ref, rtol=0, atol=1e-12 * np.abs(ref).max())
