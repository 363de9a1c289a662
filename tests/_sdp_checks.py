"""Independent checks shared by the LipSDP-family tests: the LipSDP-Neuron matrix of reference §1 written
out block by block (per-neuron slopes allowed), and the barrier gradient against autograd."""

from __future__ import annotations

import numpy as np


def lipsdp_neuron_max_eig(Ws, Ts, value, alphas, betas) -> float:
    """Largest eigenvalue (after a symmetric Jacobi scaling, which keeps the sign pattern) of the
    LipSDP-Neuron matrix of reference §1 in block-tridiagonal form, with rho = value^2, multipliers
    T_k = diag(Ts[k]) and slope bounds alphas[k], betas[k] (floats or per-neuron arrays):
    (0,0) -= rho I; (k-1,k-1) -= 2 W_k^T diag(alpha beta t) W_k; (k,k) -= 2 diag(t);
    (k-1,k) += W_k^T diag((alpha+beta) t); last += W_L^T W_L.  <= ~0 means the certificate holds."""
    sizes = [Ws[0].shape[1]] + [W.shape[0] for W in Ws[:-1]]
    offs = np.cumsum([0] + sizes)
    Q = np.zeros((offs[-1], offs[-1]))
    Q[: sizes[0], : sizes[0]] -= value ** 2 * np.eye(sizes[0])
    for k in range(1, len(Ws)):
        W, n = Ws[k - 1], sizes[k]
        t = np.asarray(Ts[k - 1], dtype=float)
        a = np.broadcast_to(np.asarray(alphas[k - 1], dtype=float), (n,))
        b = np.broadcast_to(np.asarray(betas[k - 1], dtype=float), (n,))
        P, C = slice(offs[k - 1], offs[k]), slice(offs[k], offs[k + 1])
        Q[P, P] -= 2 * W.T @ np.diag(a * b * t) @ W
        Q[C, C] -= 2 * np.diag(t)
        Q[P, C] += W.T @ np.diag((a + b) * t)
        Q[C, P] += np.diag((a + b) * t) @ W
    last = slice(offs[-2], offs[-1])
    Q[last, last] += Ws[-1].T @ Ws[-1]
    d = 1 / np.sqrt(np.maximum(np.abs(np.diag(Q)), 1e-300))
    Q = d[:, None] * Q * d[None, :]
    return float(np.linalg.eigvalsh((Q + Q.T) / 2)[-1])


def split_multipliers(Ws, T) -> list:
    """The concatenated multipliers of details['multipliers'] cut per hidden layer."""
    out, pos = [], 0
    for W in Ws[:-1]:
        out.append(np.asarray(T[pos:pos + W.shape[0]]))
        pos += W.shape[0]
    assert pos == len(T)
    return out


def assert_barrier_gradient_matches_autograd(obj, x, ts=(3.0, 1e4)):
    """The hand-written reverse pass of a BarrierObjective equals autograd through its __call__."""
    import torch

    from lipbound.methods.sdp.barrier import DT

    for t in ts:
        xt = torch.tensor(x, dtype=DT, requires_grad=True)
        psi, lg = obj(xt, t)
        (g,) = torch.autograd.grad(psi, xt)
        psi2, lg2, g2 = obj.value_and_grad(x, t)
        assert abs(float(psi.detach()) - psi2) <= 1e-10 * max(1.0, abs(psi2))
        assert abs(lg - lg2) <= 1e-12 * max(1.0, abs(lg))
        assert np.abs(g.numpy() - g2).max() <= 1e-9 * np.abs(g2).max()
