"""Small synthetic data sets and a tiny seeded trainer, for tests and benchmarks.

* `random_k_cluster`: LipMIP's "random k-cluster" data (points uniform in [0,1]^d labelled by the
  class of their nearest of k random leaders), re-implemented from its description.
* `train_mlp`: a seeded full-batch ReLU MLP trainer (torch), returning a lipbound `Network`.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import LipboundError
from .network import Activation, Linear, Network


def random_k_cluster(n_points: int = 300, dim: int = 2, n_leaders: int = 10, n_classes: int = 2, seed: int = 0,
                     radius: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n_points`` points uniform in [0,1]^dim; ``n_leaders`` of them (chosen at random) get a random
    class in 0..n_classes-1 and every point takes the class of its nearest leader (Euclidean).

    With ``radius``, points are rejection-sampled to be at least 2*radius apart (LipMIP's option;
    gives up after 100 tries per point). Returns (X float64 (n, dim), y int64 (n,)). Deterministic in
    ``seed``."""
    if n_points < 1 or dim < 1 or n_leaders < 1 or n_classes < 1:
        raise LipboundError("random_k_cluster needs positive n_points, dim, n_leaders and n_classes")
    if n_leaders > n_points:
        raise LipboundError("random_k_cluster: more leaders than points")
    rng = np.random.default_rng(seed)
    if radius is None:
        X = rng.uniform(0.0, 1.0, size=(n_points, dim))
    else:
        pts = []
        for _ in range(n_points):
            for _try in range(100):
                p = rng.uniform(0.0, 1.0, size=dim)
                if not pts or np.min(np.linalg.norm(np.asarray(pts) - p, axis=1)) >= 2 * radius:
                    pts.append(p)
                    break
        X = np.asarray(pts)
    leaders = rng.choice(X.shape[0], size=n_leaders, replace=False)
    leader_class = rng.integers(0, n_classes, size=n_leaders)
    d2 = ((X[:, None, :] - X[leaders][None, :, :]) ** 2).sum(-1)
    y = leader_class[np.argmin(d2, axis=1)].astype(np.int64)
    return X, y


def train_mlp(widths, X, y, epochs: int = 300, seed: int = 0, lr: float = 1e-2, name: str | None = None) -> Network:
    """Train a ReLU MLP with layer widths ``widths`` (input, hidden..., classes) by full-batch Adam on
    cross-entropy for ``epochs`` steps (torch, float32, seeded), and return it as a
    float64 `Network` built with `Network.sequential`. Cost: epochs x one pass over the data."""
    widths = [int(w) for w in widths]
    if len(widths) < 2:
        raise LipboundError("train_mlp needs at least input and output widths")
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    if X.ndim != 2 or X.shape[1] != widths[0]:
        raise LipboundError(f"train_mlp: data of shape {X.shape} does not fit input width {widths[0]}")
    g = torch.Generator().manual_seed(int(seed))
    mods = []
    for i in range(len(widths) - 1):
        lin = torch.nn.Linear(widths[i], widths[i + 1])
        bound = 1.0 / np.sqrt(widths[i])
        with torch.no_grad():
            lin.weight.uniform_(-bound, bound, generator=g)
            lin.bias.uniform_(-bound, bound, generator=g)
        mods.append(lin)
        if i < len(widths) - 2:
            mods.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*mods)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(int(epochs)):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(Xt), yt)
        loss.backward()
        opt.step()
    ops = []
    for m in model:
        if isinstance(m, torch.nn.Linear):
            ops.append(Linear(m.weight.detach().double(), m.bias.detach().double()))
        else:
            ops.append(Activation("relu"))
    return Network.sequential((widths[0],), ops, name=name or "mlp-" + "-".join(map(str, widths)))
