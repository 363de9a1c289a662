"""Random networks of the ECLipsE benchmarks (reference l2-sdp-family.md §7), for tests and benchmarks.

dims = [n_in] + [width] * (layers - 1) + [n_out]; each matrix has U[0,1) ("rand", the paper generator)
or Gaussian ("randn", the current repository generator) entries and is rescaled to a spectral norm
drawn from U(0.4, 1.8).  Statistically, not bitwise, comparable with the reference code.
"""

from __future__ import annotations

import numpy as np


def eclipse_weights(layers: int, width: int, kind: str = "rand", seed: int | None = None, n_in: int = 4,
                    n_out: int = 1) -> list:
    """The weight matrices (list of float64 arrays, W_k of shape (n_k, n_{k-1}))."""
    if seed is None:
        seed = width * 7 + layers * 13
    rng = np.random.default_rng(seed)
    dims = [n_in] + [width] * (layers - 1) + [n_out]
    Ws = []
    for i in range(layers):
        shape = (dims[i + 1], dims[i])
        W = rng.random(shape) if kind == "rand" else rng.standard_normal(shape)
        target = rng.uniform(0.4, 1.8)
        if W.size <= 250_000:
            s = np.linalg.norm(W, 2)
        else:  # power iteration is enough for a rescaling
            v = rng.standard_normal(W.shape[1])
            for _ in range(50):
                v = W.T @ (W @ v)
                v /= np.linalg.norm(v)
            s = np.linalg.norm(W @ v)
        Ws.append(W * (target / s))
    return Ws


def eclipse_network(layers: int, width: int, kind: str = "rand", seed: int | None = None, activation: str = "relu",
                    n_in: int = 4, n_out: int = 1, param: float = 0.0):
    """A lipbound Network of the ECLipsE random family (zero biases)."""
    from .network import Activation, Linear, Network

    Ws = eclipse_weights(layers, width, kind, seed, n_in, n_out)
    ops = []
    for i, W in enumerate(Ws):
        ops.append(Linear(W, None))
        if i < len(Ws) - 1:
            ops.append(Activation(activation, param))
    return Network.sequential((n_in,), ops, name=f"{kind}-{layers}x{width}")
