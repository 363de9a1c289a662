"""One graph traversal for every propagation-style method, with a small rule per operation.

A *rule table* maps operation classes (or the string ``"affine"`` for any `AffineOp` without its own
entry) to functions. `forward` walks the nodes in topological order, calling
``rule(op, node, *input_values)``; `backward` walks them in reverse from the output, calling
``rule(op, node, out_value) -> tuple of values for the inputs`` and summing (with ``accumulate``) the
values that reach a node used twice (residual connections). Interval propagation (`intervals`),
AutoLip (`methods.products.autolip`) and CROWN-style back-substitution share these two walks.
"""

from __future__ import annotations

from typing import Any, Callable

from .errors import Unsupported
from .network import AffineOp, Network, Op


def find_rule(rules: dict, op: Op, what: str = "this propagation") -> Callable:
    """The rule for ``op``: by class (following the MRO), then ``"affine"`` for affine ops."""
    for cls in type(op).__mro__:
        if cls in rules:
            return rules[cls]
    if isinstance(op, AffineOp) and "affine" in rules:
        return rules["affine"]
    raise Unsupported(f"{what} has no rule for the operation {op.kind}")


def forward(net: Network, rules: dict, input_value: Any, what: str = "this propagation",
            stop: int | None = None) -> list:
    """Values of every node (list indexed like ``net.nodes``), computed by the forward rules.

    ``stop``: compute nodes up to and including this index only."""
    values = [input_value]
    last = len(net.nodes) - 1 if stop is None else stop
    for node in net.nodes[1 : last + 1]:
        rule = find_rule(rules, node.op, what)
        values.append(rule(node.op, node, *[values[j] for j in node.inputs]))
    return values


def backward(net: Network, rules: dict, output_value: Any, *, start: int | None = None,
             accumulate: Callable[[Any, Any], Any] = lambda a, b: a + b, what: str = "this propagation") -> list:
    """Reverse walk from node ``start`` (default: the output) seeded with ``output_value``.

    Returns the list of values reaching every node (None where nothing reaches); entry 0 is the
    value at the input."""
    start = len(net.nodes) - 1 if start is None else start
    vals: list = [None] * len(net.nodes)
    vals[start] = output_value
    for i in range(start, 0, -1):
        if vals[i] is None:
            continue
        node = net.nodes[i]
        rule = find_rule(rules, node.op, what)
        outs = rule(node.op, node, vals[i])
        if not isinstance(outs, tuple):
            outs = (outs,)
        for j, v in zip(node.inputs, outs):
            vals[j] = v if vals[j] is None else accumulate(vals[j], v)
    return vals
