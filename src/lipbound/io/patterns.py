"""Sub-graphs that are one lipbound operation, shared by the ONNX and torch readers.

Exporters write some operations as several primitive ones: GELU as ``x * 0.5 * (1 + erf(x / sqrt 2))``,
SiLU as ``x * sigmoid(x)``, Softsign as ``x / (1 + |x|)``, MaxMin as a split, an elementwise max and min
and a concatenation (or a reshape and a sort over a size-2 axis). A reader that meets a primitive it
cannot map alone (Erf, a product of two tensors, a slice, a max of two tensors...) makes a *pending*
value instead of failing:

* `Expr`: an elementwise expression (scalar constants only) of network tensors;
* `Selection`: a tensor whose every entry is ``x[a]``, ``max(x[a], x[b])`` or ``min(x[a], x[b])`` for
  entries a, b of one network tensor x.

Pending values flow through the operations that extend them (arithmetic and activations for `Expr`;
slicing, reshapes, concatenation, max/min/sort for `Selection`) and are *materialised* where anything
else consumes them (or at the graph output): `materialize_expr` recognises an expression only when it is
exactly one activation of the table (its tree checked numerically on a fine grid, float32 constants
allowed), `materialize_selection` only when the selection is exactly a `MaxMin` (every axis, layout and
order tried, index by index). Anything else raises the `UnsupportedOperator` recorded where the pattern
began, so a partial match is never mistaken for the whole.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ..errors import LipboundError, UnsupportedOperator
from ..network import DTYPE, Activation, ElementwiseAffine, MaxMin, Reshape, Transpose

#: activations an elementwise expression may turn out to be (default parameters)
EXPR_CANDIDATES = ("gelu", "gelu_tanh", "silu", "mish", "softsign", "hardswish", "hardsigmoid", "sigmoid", "tanh",
                   "relu", "abs", "softplus", "elu")

#: what the messages call the recognised patterns
PATTERN_NAMES = "GELU (erf or tanh form), SiLU, Mish, Softsign, Hardswish, Hardsigmoid"

_EXPR_RTOL = 1e-6  # float32 constants (sqrt 2 = 1.4142135) change GELU by ~1e-8 relative


# --------------------------------------------------------------------------------------------------
# elementwise expressions
# --------------------------------------------------------------------------------------------------


class Expr:
    """A pending elementwise expression of network tensors (the leaves, node indices of one chain).

    ``tree`` is ``("leaf", idx)``, ``("const", value)`` or ``("fn", callable, name, *children)``;
    ``shape`` the sample shape; ``blocker`` the (message, exception class) raised when the expression is
    not recognised (recorded at the first primitive that is not an operation by itself)."""

    __slots__ = ("tree", "leaves", "shape", "blocker", "result", "label")

    def __init__(self, tree, leaves, shape, blocker):
        """See the class docstring."""
        self.tree = tree
        self.leaves = frozenset(leaves)
        self.shape = tuple(shape)
        self.blocker = blocker
        self.result = None  # node index once materialised
        self.label = None  # the reader's name of the node that produced it (names the materialised node)

    @classmethod
    def leaf(cls, idx: int, shape) -> "Expr":
        """The network tensor ``idx`` itself."""
        return cls(("leaf", int(idx)), {int(idx)}, shape, None)

    @classmethod
    def apply(cls, fn, name: str, operands, blocker=None) -> "Expr":
        """``fn(*operands)`` (torch, elementwise); operands are `Expr` or Python / size-1 constants.

        Raises `LipboundError` when the expression operands have different shapes or a constant is not a
        scalar (the expression would not be elementwise in one variable)."""
        trees, leaves, shape, block = [], set(), None, None
        for o in operands:
            if isinstance(o, Expr):
                if shape is not None and o.shape != shape:
                    raise LipboundError(f"{name} of tensors of different shapes {list(shape)} and {list(o.shape)}")
                shape = o.shape
                trees.append(o.tree)
                leaves |= o.leaves
                block = block or o.blocker
            else:
                c = np.asarray(o, dtype=np.float64)
                if c.size != 1:
                    raise LipboundError(f"{name} with a constant of shape {list(c.shape)} (not a scalar)")
                trees.append(("const", float(c.reshape(-1)[0])))
        if shape is None:
            raise LipboundError(f"{name} of constants only")
        return cls(("fn", fn, name) + tuple(trees), leaves, shape, block or blocker)

    def evaluate(self, env: dict) -> torch.Tensor:
        """The expression's value given tensors for its leaves."""
        return _eval_tree(self.tree, env)

    def op_names(self) -> list[str]:
        """The names of the operations in the expression, outermost first."""
        out = []
        _collect_names(self.tree, out)
        return out


def _eval_tree(tree, env):
    """The value of an expression tree given the leaves' tensors."""
    tag = tree[0]
    if tag == "leaf":
        return env[tree[1]]
    if tag == "const":
        return tree[1]
    fn, children = tree[1], tree[3:]
    return fn(*[_eval_tree(c, env) for c in children])


def _collect_names(tree, out):
    """The names of the functions in an expression tree (for messages)."""
    if tree[0] == "fn":
        out.append(tree[2])
        for c in tree[3:]:
            _collect_names(c, out)


def _elementwise_parent(node):
    """The input of a node that is a scalar elementwise map of it (scalar affine or activation), else None."""
    op = node.op
    if isinstance(op, Activation):
        return node.inputs[0]
    if isinstance(op, ElementwiseAffine) and op.scale.numel() == 1 and op.shift.numel() == 1:
        return node.inputs[0]
    return None


def _chain(nodes, idx):
    """idx and the nodes it is a scalar elementwise function of, nearest first."""
    out = [idx]
    while True:
        p = _elementwise_parent(nodes[out[-1]])
        if p is None:
            return out
        out.append(p)


@functools.lru_cache(maxsize=1)
def _grid() -> tuple:
    """The points on which expressions are compared with activations, and the candidates' values there
    ((name, values) for every candidate of this version's table); computed once."""
    g = torch.Generator().manual_seed(12345)
    dense = torch.linspace(-20.0, 20.0, 8001, dtype=DTYPE)
    rand = torch.rand(4000, generator=g, dtype=DTYPE) * 40 - 20
    far = torch.tensor([-1e3, -100.0, -50.0, 50.0, 100.0, 1e3], dtype=DTYPE)
    t = torch.cat([dense, rand, far])
    cands = []
    with torch.no_grad():
        for name in EXPR_CANDIDATES:
            try:
                f = Activation(name).forward(t)
            except LipboundError:
                continue  # not in this version's table
            if bool(torch.isfinite(f).all()):
                cands.append((name, f))
    return t, cands


def identify_expr(expr: Expr, nodes) -> tuple[int, str] | None:
    """(root node, activation name) when ``expr`` is exactly ``name(root)``, else None.

    The leaves must lie on one chain of scalar elementwise nodes (scalar affine maps, activations); the
    root is their nearest common ancestor. The expression is evaluated in float64 on 12,000 points of
    [-20, 20] (a 0.005 grid plus random points) and at +-50, 100, 1000, and compared with every
    candidate activation (relative tolerance 1e-6, which float32 constants meet). Cost: milliseconds."""
    chains = {leaf: _chain(nodes, leaf) for leaf in expr.leaves}
    first = chains[next(iter(expr.leaves))]
    root = next((c for c in first if all(c in ch for ch in chains.values())), None)
    if root is None or tuple(nodes[root].shape) != expr.shape:
        return None
    t, candidates = _grid()
    env = {}
    with torch.no_grad():
        for leaf, ch in chains.items():
            v = t
            for j in reversed(ch[:ch.index(root)]):
                op = nodes[j].op
                if isinstance(op, Activation):
                    v = op.forward(v)
                else:
                    v = v * float(op.scale.reshape(-1)[0]) + float(op.shift.reshape(-1)[0])
            env[leaf] = v
        try:
            g = torch.as_tensor(expr.evaluate(env), dtype=DTYPE)
        except Exception:
            return None
        if g.shape != t.shape or not bool(torch.isfinite(g).all()):
            return None
        for name, f in candidates:
            if bool(((g - f).abs() <= _EXPR_RTOL * (1 + f.abs())).all()):
                return root, name
    return None


def _leaves_of(tree, out):
    """The node indices of the leaves of an expression tree (added to ``out``)."""
    if tree[0] == "leaf":
        out.add(tree[1])
    elif tree[0] == "fn":
        for c in tree[3:]:
            _leaves_of(c, out)
    return out


def _reduce(tree, shape, nodes, add, label, cache):
    """``tree`` with every sub-tree that is exactly one activation of its root replaced by a new
    `Activation` node (largest sub-trees first; a composition such as softsign(silu(x)) reduces in
    steps), so that the result is a leaf when the whole tree is a chain of activations."""
    if tree[0] != "fn":
        return tree
    key = id(tree)
    if key in cache:
        return cache[key][1]
    sub = Expr(tree, _leaves_of(tree, set()), shape, None)
    found = identify_expr(sub, nodes)
    if found is None:
        children = tuple(_reduce(c, shape, nodes, add, label, cache) for c in tree[3:])
        if any(c is not o for c, o in zip(children, tree[3:])):
            new = tree[:3] + children
            found = identify_expr(Expr(new, _leaves_of(new, set()), shape, None), nodes)
            out = new if found is None else None
        else:
            out = tree
    if found is not None:
        root, name = found
        out = ("leaf", add(Activation(name), [root], label))
    cache[key] = (tree, out)  # the tree is kept alive so that its id is not reused
    return out


def materialize_expr(expr: Expr, nodes, add, label: str, cache: dict | None = None) -> int:
    """The node computing ``expr`` (activations added on its root, one per step of a composition), or
    the recorded blocker raised. ``add(op, inputs, name)`` adds a node and returns its index; ``cache``
    (owned by the reader) shares the nodes of sub-expressions used several times. New nodes are named
    ``expr.label`` (the node that produced the expression) when set, else ``label``."""
    if expr.result is not None:
        return expr.result
    label = expr.label or label
    out = _reduce(expr.tree, expr.shape, nodes, add, label, {} if cache is None else cache)
    if out[0] != "leaf":
        msg, cls = expr.blocker or (f"the elementwise expression {' / '.join(expr.op_names())} (node {label!r}) "
                                    "is not an activation lipbound knows", UnsupportedOperator)
        raise cls(f"{msg}; it is not part of a recognised elementwise pattern ({PATTERN_NAMES})")
    expr.result = out[1]
    return expr.result


# --------------------------------------------------------------------------------------------------
# selections (MaxMin)
# --------------------------------------------------------------------------------------------------

PLAIN, MAX, MIN = 0.0, 1.0, 2.0


class Selection:
    """A pending tensor built from the entries of one network tensor (the root).

    Entry e is ``x[a_e]`` (kind PLAIN), ``max(x[a_e], x[b_e])`` (MAX) or ``min(x[a_e], x[b_e])`` (MIN),
    with a_e <= b_e and indices into the root's flattened sample. ``kind``, ``a``, ``b`` are float64
    tensors of the reader's tensor shape (with its leading batch dimension of 1 when ``batched``) so that
    a reader can apply its own index operation (slice, reshape, cat...) to each. ``chain`` lists the
    (node, positions) of the root and of the reshapes / transposes between it and the tensor the
    selection started from; ``origin`` names the node where the pattern began (for messages)."""

    __slots__ = ("root", "kind", "a", "b", "batched", "chain", "origin", "result", "label")

    def __init__(self, root, kind, a, b, batched, chain, origin):
        """See the class docstring."""
        self.root, self.kind, self.a, self.b = root, kind, a, b
        self.batched = batched
        self.chain = chain
        self.origin = origin
        self.result = None
        self.label = None  # the reader's name of the node that produced it (names the materialised node)

    @property
    def shape(self) -> tuple:
        """The reader's shape (batch dimension of 1 included when batched)."""
        return tuple(self.kind.shape)

    @property
    def sample_shape(self) -> tuple:
        """The shape without the batch dimension."""
        return self.shape[1:] if self.batched else self.shape

    def components(self):
        """The three index tensors (kind, a, b)."""
        return (self.kind, self.a, self.b)

    def with_components(self, kind, a, b, origin=None) -> "Selection":
        """A selection of the same root with new index tensors."""
        return Selection(self.root, kind, a, b, self.batched, self.chain, origin or self.origin)

    def is_plain(self) -> bool:
        """Whether every entry is a plain entry of the root (no max / min)."""
        return bool((self.kind == PLAIN).all())

    @classmethod
    def of_node(cls, idx: int, nodes, batched: bool, origin: str) -> "Selection":
        """Node ``idx`` as a selection of the earliest node it is a reshape / transpose of."""
        path = [idx]
        while isinstance(nodes[path[-1]].op, (Reshape, Transpose)):
            path.append(nodes[path[-1]].inputs[0])
        root = path[-1]
        shape = tuple(nodes[root].shape)
        pos = torch.arange(int(np.prod(shape)), dtype=DTYPE).reshape((1,) + shape)
        chain = [(root, pos.reshape(-1))]
        with torch.no_grad():
            for j in reversed(path[:-1]):
                pos = nodes[j].op.forward(pos)
                chain.append((j, pos.reshape(-1)))
        if not batched:
            pos = pos[0]
        return cls(root, torch.zeros_like(pos), pos, pos.clone(), batched, chain, origin)


def same_root(sels, what: str, label: str):
    """Check that selections combined by one operation come from one network tensor."""
    roots = {s.root for s in sels}
    if len(roots) > 1:
        raise UnsupportedOperator(f"{what} (node {label!r}) combines different tensors; only entries of one tensor "
                                  "combined as a MaxMin / GroupSort-2 activation are supported")


def extremum(which: float, s1: Selection, s2: Selection, label: str) -> Selection:
    """Elementwise max (``which`` = MAX) or min of two plain selections of one root."""
    same_root([s1, s2], "max/min", label)
    if s1.shape != s2.shape:
        raise UnsupportedOperator(f"max/min (node {label!r}) of tensors of shapes {list(s1.shape)} and "
                                  f"{list(s2.shape)} (broadcasting) is not supported")
    if not (s1.is_plain() and s2.is_plain()):
        raise UnsupportedOperator(f"max/min (node {label!r}) of tensors that are already maxima / minima (a GroupSort "
                                  "with groups above 2 or a max pooling written by hand) is not supported")
    a, b = torch.minimum(s1.a, s2.a), torch.maximum(s1.a, s2.a)
    return s1.with_components(torch.full_like(a, which), a, b, origin=label)


def reduce_pair(which: float, s: Selection, dim: int, keepdim: bool, label: str) -> Selection:
    """max (``which`` = MAX) or min over a dimension of size 2 of a plain selection."""
    r = len(s.shape)
    d = dim + r if dim < 0 else dim
    if not 0 <= d < r or s.shape[d] != 2:
        size = s.shape[d] if 0 <= d < r else "?"
        raise UnsupportedOperator(f"max/min/sort over a dimension of size {size} (node {label!r}) is not supported: "
                                  "only groups of 2 (MaxMin / GroupSort-2)")
    if s.batched and d == 0:
        raise UnsupportedOperator(f"max/min/sort over the batch dimension (node {label!r}) is not supported")
    parts = [s.with_components(*(c.select(d, i) for c in s.components())) for i in (0, 1)]
    out = extremum(which, parts[0], parts[1], label)
    if keepdim:
        out = out.with_components(*(c.unsqueeze(d) for c in out.components()))
    return out


def sort_pair(s: Selection, dim: int, descending: bool, label: str) -> Selection:
    """The values of a sort over a dimension of size 2 (ascending: min first)."""
    r = len(s.shape)
    d = dim + r if dim < 0 else dim
    lo = reduce_pair(MIN, s, d, True, label)
    hi = reduce_pair(MAX, s, d, True, label)
    first, second = (hi, lo) if descending else (lo, hi)
    return first.with_components(*(torch.cat([c1, c2], d) for c1, c2 in zip(first.components(), second.components())))


def _candidates(shape):
    """(ops after the MaxMin, expected kind, a, b) for every MaxMin on a tensor of ``shape``."""
    n = int(np.prod(shape))
    for axis, size in enumerate(shape):
        if size < 2 or size % 2:
            continue
        for layout in ("pairs", "halves"):
            for order in ("max_min", "min_max"):
                op = MaxMin(axis, layout, order)
                hi, lo = op.pairs(shape)
                kind = np.zeros(n)
                a = np.zeros(n)
                b = np.zeros(n)
                kind[hi], kind[lo] = MAX, MIN
                a[hi] = a[lo] = np.minimum(hi, lo)
                b[hi] = b[lo] = np.maximum(hi, lo)
                yield [op], kind, a, b
                # the same pairs written to the other layout (e.g. pairs in, cat(maxes, mins) out)
                split = (size // 2, 2) if layout == "pairs" else (2, size // 2)
                mid = tuple(shape[:axis]) + split + tuple(shape[axis + 1:])
                perm = list(range(len(mid)))
                perm[axis], perm[axis + 1] = perm[axis + 1], perm[axis]
                post = [Reshape(mid), Transpose(tuple(perm)), Reshape(tuple(shape))]
                arrs = []
                for arr in (kind, a, b):
                    t = torch.as_tensor(arr, dtype=DTYPE).reshape((1,) + tuple(shape))
                    for p in post:
                        t = p.forward(t)
                    arrs.append(t.reshape(-1).numpy())
                yield [op] + post, *arrs


def materialize_selection(sel: Selection, nodes, add, label: str) -> int:
    """The node computing ``sel``: the root itself (or a reshape of it) when the selection is the identity,
    a `MaxMin` (plus the permutation to the written layout and a reshape) when it is exactly one, else
    `UnsupportedOperator`. Tries the root and every reshape / transpose on the way to the selection.
    Cost: a few index comparisons per candidate."""
    if sel.result is not None:
        return sel.result
    label = sel.label or label
    kind, a, b = (c.reshape(-1).numpy() for c in sel.components())
    out_shape = sel.sample_shape
    for node, pos in sel.chain:
        shape = tuple(nodes[node].shape)
        if int(np.prod(shape)) != kind.size:
            continue
        # positions relative to this node: inverse of its position map into the root
        inv = np.empty(kind.size)
        inv[pos.numpy().astype(np.int64)] = np.arange(kind.size)
        ai, bi = inv[a.astype(np.int64)], inv[b.astype(np.int64)]
        ai, bi = np.minimum(ai, bi), np.maximum(ai, bi)
        if (kind == PLAIN).all():
            if np.array_equal(ai, np.arange(kind.size)):
                idx = node if shape == out_shape else add(Reshape(out_shape), [node], label)
                sel.result = idx
                return idx
            continue
        for ops, k_exp, a_exp, b_exp in _candidates(shape):
            if np.array_equal(kind, k_exp) and np.array_equal(ai, a_exp) and np.array_equal(bi, b_exp):
                idx = node
                for i, op in enumerate(ops):
                    idx = add(op, [idx], label if i == 0 else f"{label}/layout{i}")
                if shape != out_shape:
                    idx = add(Reshape(out_shape), [idx], f"{label}/reshape")
                sel.result = idx
                return idx
    if (kind == PLAIN).all():
        raise UnsupportedOperator(f"indexing / slicing / splitting / concatenating a tensor (node {sel.origin!r}) is "
                                  "supported only as part of a MaxMin / GroupSort-2 activation")
    raise UnsupportedOperator(f"the max/min/sort of tensor entries starting at node {sel.origin!r} (used at node "
                              f"{label!r}) is not exactly a MaxMin / GroupSort-2 activation (max and min of the "
                              "pairs of one axis, consecutive or halves): not supported")

