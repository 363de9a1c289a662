"""Random test networks built directly on the representation (no reader involved)."""

from __future__ import annotations

import numpy as np

from lipbound.network import (Activation, Add, AvgPool2d, Conv2d, ElementwiseAffine, GraphBuilder, Linear,
                              MaxPool2d, Network, Pad, Reshape)


def random_mlp(widths, seed=0, activation="relu", param=0.0, scale=1.0) -> Network:
    """MLP with Gaussian weights scaled by 1/sqrt(fan_in)."""
    rng = np.random.default_rng(seed)
    ops = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        ops.append(Linear(scale * rng.standard_normal((b, a)) / np.sqrt(a), 0.3 * rng.standard_normal(b)))
        if i < len(widths) - 2:
            ops.append(Activation(activation, param))
    return Network.sequential((widths[0],), ops, name=f"mlp{widths}")


def random_graph_net(seed=0) -> Network:
    """Conv + BatchNorm-like scale + residual Add + pooling + pad, a small DAG."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder((2, 6, 6))
    c1 = b.add(Conv2d(rng.standard_normal((3, 2, 3, 3)) / 3, rng.standard_normal(3) * 0.1, (1, 1), (1, 1)), [0])
    bn = b.add(ElementwiseAffine(rng.uniform(0.5, 1.5, (3, 1, 1)), rng.standard_normal((3, 1, 1)) * 0.1, "BatchNorm"), [c1])
    r1 = b.add(Activation("relu"), [bn])
    c2 = b.add(Conv2d(rng.standard_normal((3, 3, 3, 3)) / 4, None, (1, 1), (1, 1)), [r1])
    add = b.add(Add(), [c2, r1])
    r2 = b.add(Activation("relu"), [add])
    pool = b.add(MaxPool2d((2, 2), (2, 2)), [r2]) if seed % 2 == 0 else b.add(AvgPool2d((2, 2), (2, 2)), [r2])
    pad = b.add(Pad((1, 1, 0, 0)), [pool])
    flat = b.add(Reshape((3 * 3 * 5,)), [pad])
    lin = b.add(Linear(rng.standard_normal((4, 45)) / 6, rng.standard_normal(4) * 0.1), [flat])
    return b.build(name=f"graph{seed}")
