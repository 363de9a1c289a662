"""Max pooling rewritten as ReLUs, for the methods whose graph rules have no max-pooling rule.

max(a, b) = b + relu(a - b), so the max over a pooling window is a tree of pairwise maxima. `expand_maxpool`
returns a network computing the same function in which every MaxPool2d node (no padding, no dilation,
floor mode) is replaced by grouped convolutions, ReLUs and additions:

* the window elements of every channel are stacked as channels by one grouped convolution with one-hot
  kernels (the pooling's kernel and stride, ``groups = C``): C x P channels, P = kh x kw;
* each level pairs the elements 2q, 2q+1 of a channel: differences by a grouped 1x1 convolution, a ReLU,
  plus the second element of the pair (another grouped 1x1 convolution); an odd element left over gets a
  zero difference (relu(0) = 0) and passes through. ceil(log2 P) levels leave C channels.

Why it is sound for the Clarke-Jacobian methods: the function is the same, and the product of the
pieces' Clarke Jacobians along the graph contains the Clarke Jacobian of the composition (at a tie the
ReLU's derivative range [0, 1] gives every convex combination of the tied elements' one-hot rows, which is
max pooling's own Clarke Jacobian there). Cost: P - 1 ReLUs per pooled output.
"""

from __future__ import annotations

import torch

from .errors import Unsupported
from .network import DTYPE, Activation, Add, Conv2d, GraphBuilder, MaxPool2d, Network


def expand_maxpool(net: Network) -> Network:
    """``net`` itself when it has no MaxPool2d node, else an equivalent network with each one replaced by
    ReLUs (module doc); computed once per network object. Raises Unsupported for a pooling with padding,
    dilation or ceil mode (its window would need -inf padding)."""
    if not any(isinstance(n.op, MaxPool2d) for n in net.nodes):
        return net
    cached = getattr(net, "_maxpool_as_relu", None)
    if cached is not None:
        return cached
    b = GraphBuilder(net.nodes[0].shape, input_name=net.nodes[0].name)
    where = {0: 0}  # old node index -> new node index
    for i, node in enumerate(net.nodes[1:], start=1):
        inputs = [where[j] for j in node.inputs]
        if isinstance(node.op, MaxPool2d):
            where[i] = _pool_tree(b, node.op, inputs[0], net.nodes[node.inputs[0]].shape, node.name)
        else:
            where[i] = b.add(node.op, inputs, name=node.name)
    out = b.build(name=f"{net.name} (max pooling as ReLUs)", source=net.source)
    net._maxpool_as_relu = out
    return out


def _pool_tree(b: GraphBuilder, op: MaxPool2d, src: int, in_shape: tuple, name: str) -> int:
    """The nodes computing ``op`` on node ``src`` (shape (C, H, W)); returns the last one."""
    if any(p != 0 for p in op.padding) or any(d != 1 for d in op.dilation) or op.ceil_mode:
        raise Unsupported(f"max pooling {name!r} with padding, dilation or ceil mode has no ReLU form here")
    C = int(in_shape[0])
    kh, kw = op.kernel
    P = kh * kw
    pick = torch.zeros(C * P, 1, kh, kw, dtype=DTYPE)
    for c in range(C):
        for p in range(P):
            pick[c * P + p, 0, p // kw, p % kw] = 1.0
    cur = b.add(Conv2d(pick, None, stride=op.stride, groups=C), [src], name=f"{name}/window")
    level = 0
    while P > 1:
        Q = (P + 1) // 2
        diff = torch.zeros(C * Q, P, 1, 1, dtype=DTYPE)
        second = torch.zeros(C * Q, P, 1, 1, dtype=DTYPE)
        for c in range(C):
            for q in range(Q):
                if 2 * q + 1 < P:
                    diff[c * Q + q, 2 * q] = 1.0
                    diff[c * Q + q, 2 * q + 1] = -1.0
                    second[c * Q + q, 2 * q + 1] = 1.0
                else:  # odd one out: no difference, passes through
                    second[c * Q + q, 2 * q] = 1.0
        d = b.add(Conv2d(diff, None, groups=C), [cur], name=f"{name}/diff{level}")
        r = b.add(Activation("relu"), [d], name=f"{name}/relu{level}")
        s = b.add(Conv2d(second, None, groups=C), [cur], name=f"{name}/second{level}")
        cur = b.add(Add(), [r, s], name=f"{name}/max{level}")
        P, level = Q, level + 1
    return cur


__all__ = ["expand_maxpool"]
