"""The linear algebra under the LipSDP family (lipbound.methods.sdp.prepare and sdp.certificate): the
torch recursion against an independent numpy implementation of ECLipsE-Fast, the Lanczos estimate against
LAPACK, the blocked Gram product, the lazy weight normalisation, and the thread helpers."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import lipbound
from lipbound.methods.sdp.certificate import full_lmi_min_eig, run_chain
from lipbound.methods.sdp.closed_forms import policy_g1
from lipbound.methods.sdp.prepare import Prepared, ScaledWeights, gram, lam_max, lanczos_max, prepare
from lipbound.synthetic import eclipse_network, eclipse_weights
from lipbound.network import Activation, Linear, Network
from lipbound.registry import MethodContext
from lipbound.threads import blas_threads, free_cores


def eclipse_fast_numpy(Ws, m=0.5):
    """ECLipsE-Fast written out from reference §4 with explicit inverses and full eigvalsh (ReLU, p = 0):
    l_k = 1 / (2 lambda_max(K_k)), K_k = m^2 W_k M_{k-1}^{-1} W_k^T, M_k = l_k I - l_k^2 K_k."""
    M = np.eye(Ws[0].shape[1])
    for W in Ws[:-1]:
        K = m * m * W @ np.linalg.inv(M) @ W.T
        K = (K + K.T) / 2
        ell = 1.0 / (2 * np.linalg.eigvalsh(K)[-1])
        M = ell * np.eye(W.shape[0]) - ell * ell * K
    G = Ws[-1] @ np.linalg.inv(M) @ Ws[-1].T
    return math.sqrt(np.linalg.eigvalsh((G + G.T) / 2)[-1])


@pytest.mark.parametrize("layers,width,kind", [(4, 30, "randn"), (3, 320, "randn"), (5, 300, "rand")])
def test_eclipse_fast_matches_numpy_reference(layers, width, kind):
    """The torch recursion (blocked Gram, Lanczos step choice above 300 neurons, lazy normalisation)
    gives ECLipsE-Fast's value; the Lanczos choice of l_k may move it by a relative ~1e-7."""
    Ws = eclipse_weights(layers, width, kind, seed=11)
    net = eclipse_network(layers, width, kind, seed=11)
    ref = eclipse_fast_numpy(Ws)
    b = lipbound.bound(net, "eclipse-fast")
    assert b.status == "ok" and b.kind == "upper"
    assert b.value == pytest.approx(ref, rel=1e-6)
    naive = math.prod(np.linalg.norm(W, 2) for W in Ws)  # ReLU slopes in [0, 1]
    assert b.value <= naive * (1 + 1e-9)


def test_lanczos_underestimates_and_converges():
    rng = np.random.default_rng(0)
    for n, clustered in ((500, False), (600, True)):
        A = rng.standard_normal((n, n)) / math.sqrt(n)
        K = A @ A.T
        if clustered:  # top eigenvalues 1e-6 apart: Lanczos still lands close from below
            w, U = np.linalg.eigh(K)
            w[-3:] = w[-1] * np.array([1 - 2e-6, 1 - 1e-6, 1.0])
            K = (U * w) @ U.T
        K = (K + K.T) / 2
        exact = np.linalg.eigvalsh(K)[-1]
        est = lanczos_max(torch.from_numpy(K))
        assert est <= exact * (1 + 1e-12)
        assert est >= exact * (1 - 1e-5)
        # lam_max(exact=True) is LAPACK's
        assert lam_max(K, exact=True) == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("n", [50, 257, 700])
def test_blocked_gram(n):
    rng = np.random.default_rng(n)
    C = torch.from_numpy(rng.standard_normal((n + 3, n)))
    G = gram(C, 0.25)
    ref = 0.25 * C.numpy().T @ C.numpy()
    assert torch.equal(G, G.T)
    assert np.max(np.abs(G.numpy() - ref)) <= 1e-12 * np.max(np.abs(ref))


def test_lazy_normalisation_and_plain_list_agree():
    """run_chain folds 1/c_k into its products and never materialises the normalised copies; a Prepared
    holding explicit normalised copies gives the same certified value."""
    net = eclipse_network(4, 40, "randn", seed=3, activation="leaky_relu", param=0.1)  # alpha*beta term too
    prep = prepare(net, MethodContext(method="eclipse-fast"))
    assert isinstance(prep.Ws, ScaledWeights)
    cr = run_chain(prep, policy_g1(0.5))
    assert prep.Ws._cache == {}  # nothing was copied
    plain = Prepared([W / s for W, s in zip(prep.Ws.raw, prep.scales)], prep.scales, prep.alphas,
                          prep.betas)
    cr2 = run_chain(plain, policy_g1(0.5))
    assert cr.value_hat == pytest.approx(cr2.value_hat, rel=1e-10)
    # the multipliers certify the independently assembled LMI
    assert full_lmi_min_eig(prep, cr.Ls, cr.value_hat) >= -1e-9
    # lazily normalised matrices are the normalised ones
    assert np.allclose(prep.Ws[1], prep.Ws.raw[1] / prep.scales[1])
    assert prep.widths == [4, 40, 40, 40, 1] and prep.n_hidden == 120


def test_dense_chain_view_is_read_only():
    W = np.arange(6.0).reshape(2, 3)
    net = Network.sequential((3,), [Linear(W, None), Activation("relu"), Linear(np.ones((1, 2)), None)])
    layer = net.dense_chain()[0]
    with pytest.raises(ValueError):
        layer.W[0, 0] = 5.0
    assert net.dense_chain()[0].W[0, 0] == 0.0


def test_blas_threads_sets_torch_threads():
    old = torch.get_num_threads()
    with blas_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == old


def test_free_cores_sees_a_busy_process():
    n = os.cpu_count() or 1
    assert 1 <= free_cores() <= n
    if n < 2 or not os.path.exists("/proc/stat"):
        pytest.skip("needs Linux and two cores")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.3)
        assert free_cores(window=0.3) <= n - 1
    finally:
        busy.kill()
        busy.wait()
