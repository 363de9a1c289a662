"""ONNX reader: an ``.onnx`` file into a `lipbound.network.Network`, written on the `onnx` package.

One lipbound node per ONNX operator where that is reasonable, named after the ONNX node (a Conv with
asymmetric pads gets a ``<name>/pad`` node before it; a MatMul on a ``[.., n, 1]`` tensor is wrapped in
``<name>/in`` and ``<name>/out`` reshapes).  Constant operands of Add/Sub/Mul/Div become
`ElementwiseAffine` (label = the ONNX op type), BatchNormalization an `ElementwiseAffine` labelled
``BatchNorm``.  Sub-graphs that depend only on constants (initializers, Constant nodes, Shape of a
tensor of known shape) are evaluated once with the ONNX reference evaluator.

Operators are dispatched through tables: ``ONNX_ACTIVATIONS`` (`lipbound.io.tables`: Relu, Gelu,
HardSwish, Softsign, Mish, Abs...) and ``HANDLERS`` below (op_type -> handler). Sub-graphs exporters
write for one operation are recognised by `lipbound.io.patterns`: GELU as Div / Erf / Add / Mul / Mul
(``torch.onnx.export`` below opset 20) or with Pow / Tanh (tanh form), SiLU as ``Mul(x, Sigmoid(x))``,
Mish as ``Mul(x, Tanh(Softplus(x)))``, Softsign as ``Div(x, Add(Abs(x), 1))``, and MaxMin / GroupSort-2
as Split / Slice + Max + Min + Concat or Reshape + TopK / ReduceMax / ReduceMin over a size-2 axis. An
Erf or a product of two tensors that is not exactly such a pattern is an unsupported operator.

Batch dimension: an input of rank >= 2 whose first dimension is 1 or dynamic has a batch dimension,
which the network's shapes exclude (input ``[1, 1, 1, 5]`` -> ``(1, 1, 5)``); any other input (rank 1
like ``[1]``, or a first dimension above 1 like ``[784, 1]``) has none and every tensor keeps its ONNX
shape (operators that need a batch dimension, e.g. Conv, then refuse).

Anything outside this is a `LipboundError` (`UnsupportedOperator` for an operator) with a one-line
message naming the operator / node / tensor: never a wrong network.
"""

from __future__ import annotations

import math

import numpy as np

import torch

from ..errors import LipboundError, UnsupportedOperator
from ..network import (Activation, Add, AvgPool2d, Conv2d, ElementwiseAffine, GraphBuilder, Linear, MaxPool2d,
                       Network, Node, Pad, Reshape, Transpose, fold_scale_shift)
from . import builders, patterns
from .patterns import MAX, MIN, Expr, Selection
from .tables import ONNX_ACTIVATIONS, make_activation

# operators never evaluated on constants (not deterministic)
_NOT_FOLDABLE = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                 "Bernoulli"}

_FLOAT_TYPES = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16 (onnx.TensorProto)


def _one_line(text) -> str:
    """The message on one line, at most 300 characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= 300 else text[:297] + "..."


class _Const:
    __slots__ = ("value", "source")

    def __init__(self, value, source):
        """A constant tensor and the name it came from."""
        self.value = np.asarray(value)
        self.source = source  # tensor name (for messages)


class _Live:
    __slots__ = ("idx",)

    def __init__(self, idx: int):
        """Node ``idx`` of the network being built."""
        self.idx = idx


class _Reader:
    def __init__(self, model, name: str, source: str | None):
        """A reader of one ONNX model (``name``, ``source`` for the network)."""
        import onnx  # noqa: F401  (imported lazily by the module as well)

        self.model = model
        self.graph = model.graph
        self.name = name
        self.source = source
        self.opset = 1
        for imp in model.opset_import:
            if imp.domain in ("", "ai.onnx"):
                self.opset = int(imp.version)
        self.values: dict[str, object] = {}
        self.used_names: set[str] = set()
        self.builder: GraphBuilder | None = None
        self.batched = True
        self.expr_cache: dict = {}

    # -- helpers ------------------------------------------------------------------------------------
    def err(self, msg: str, cls=LipboundError):
        """Raise ``cls`` with a one-line message."""
        raise cls(_one_line(msg))

    def unique(self, name: str) -> str:
        """``name`` made unique among the network's node names."""
        return builders.unique_name(name, self.used_names)

    def add(self, op, inputs, name: str) -> int:
        """Add a node under a unique name; its index."""
        return self.builder.add(op, inputs, name=self.unique(name))

    def shape(self, idx: int) -> tuple:
        """The sample shape (batch excluded) of node ``idx``."""
        return self.builder.nodes[idx].shape

    def oshape(self, idx: int) -> tuple:
        """The ONNX shape of a live tensor (batch dimension 1 included when the graph has one)."""
        return ((1,) if self.batched else ()) + self.shape(idx)

    def get(self, tensor: str, label: str):
        """The value of a tensor (constant, live or pending); an error for an unknown tensor."""
        if tensor not in self.values:
            self.err(f"tensor {tensor!r} used by node {label!r} is not produced by any node, initializer or input")
        return self.values[tensor]

    def vshape(self, v) -> tuple:
        """The ONNX shape of a live or pending value (batch dimension included when batched)."""
        if isinstance(v, _Live):
            return self.oshape(v.idx)
        if isinstance(v, Expr):
            return ((1,) if self.batched else ()) + v.shape
        return v.shape

    def add_idx(self, op, inputs, name: str) -> int:
        """`add` for `lipbound.io.patterns` (inputs are node indices)."""
        return self.add(op, inputs, name)

    def materialize(self, v, label: str):
        """A pending value turned into a network node (`_Live`); other values unchanged."""
        if isinstance(v, Expr):
            return _Live(patterns.materialize_expr(v, self.builder.nodes, self.add_idx, label, self.expr_cache))
        if isinstance(v, Selection):
            return _Live(patterns.materialize_selection(v, self.builder.nodes, self.add_idx, label))
        return v

    def materialize_inputs(self, node, label: str):
        """Materialise the pending inputs of a node whose handler does not take them."""
        for t in node.input:
            if t and isinstance(self.values.get(t), (Expr, Selection)):
                self.values[t] = self.materialize(self.values[t], label)

    def as_expr(self, v, label: str) -> Expr:
        """A live tensor or pending expression as an `Expr` (selections are materialised first)."""
        v = self.materialize(v, label) if isinstance(v, Selection) else v
        return Expr.leaf(v.idx, self.shape(v.idx)) if isinstance(v, _Live) else v

    def as_selection(self, v, label: str) -> Selection:
        """A live tensor (or selection) as a `Selection` of the tensor it reshapes."""
        v = self.materialize(v, label) if isinstance(v, Expr) else v
        if isinstance(v, _Live):
            return Selection.of_node(v.idx, self.builder.nodes, self.batched, label)
        if not isinstance(v, Selection):
            self.err(f"node {label!r}: expected a tensor computed from the network input, got a constant",
                     UnsupportedOperator)
        return v

    def const(self, tensor: str, label: str):
        """The numpy value of a constant tensor, or None when the tensor depends on the network input."""
        v = self.get(tensor, label)
        return v.value if isinstance(v, _Const) else None

    def live(self, tensor: str, label: str, what: str = "input") -> int:
        """The node index of a tensor that depends on the input (an error for a constant)."""
        v = self.get(tensor, label)
        if not isinstance(v, _Live):
            self.err(f"node {label!r}: expected the {what} {tensor!r} to depend on the network input, got a constant")
        return v.idx

    def weight(self, tensor: str, label: str, what: str, finite: bool = True) -> np.ndarray:
        """A constant operand as float64, checked finite (NaN only when ``finite`` is False)."""
        v = self.get(tensor, label)
        if not isinstance(v, _Const):
            self.err(f"node {label!r}: the {what} {tensor!r} must be a constant (initializer or Constant node), "
                     "not a tensor computed from the network input", UnsupportedOperator)
        try:
            w = np.asarray(v.value, dtype=np.float64)
        except (TypeError, ValueError):
            self.err(f"node {label!r}: the {what} {tensor!r} is not numeric (dtype {v.value.dtype})")
        if not np.all(np.isfinite(w)) and (finite or np.any(np.isnan(w))):
            self.err(f"non-finite (NaN or infinite) weights in {what} {tensor!r} of node {label!r}")
        return w

    def ints(self, tensor: str, label: str, what: str) -> list[int]:
        """A constant integer tensor as a list."""
        v = self.get(tensor, label)
        if not isinstance(v, _Const):
            self.err(f"node {label!r}: the {what} {tensor!r} must be a constant, not computed from the network input",
                     UnsupportedOperator)
        return [int(t) for t in np.asarray(v.value).reshape(-1)]

    @staticmethod
    def attrs(node) -> dict:
        """The node's attributes as a dict (strings decoded)."""
        from onnx import helper

        out = {}
        for a in node.attribute:
            val = helper.get_attribute_value(a)
            if isinstance(val, bytes):
                val = val.decode("utf-8", "replace")
            out[a.name] = val
        return out

    def unsupported(self, node, label: str, why: str = ""):
        """Raise `UnsupportedOperator` for this node, listing the supported operators."""
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        extra = f": {why}" if why else ""
        self.err(f"unsupported ONNX operator {op} (node {label!r}){extra}; supported: {', '.join(SUPPORTED_OPS)}",
                 UnsupportedOperator)

    # -- input ------------------------------------------------------------------------------------------
    def read_input(self):
        """Check the graph's single input / output and start the network at the input."""
        g = self.graph
        init_names = {t.name for t in g.initializer}
        inputs = [i for i in g.input if i.name not in init_names]
        if len(inputs) != 1:
            names = ", ".join(repr(i.name) for i in inputs) or "none"
            self.err(f"the ONNX graph has {len(inputs)} inputs ({names}); lipbound reads networks with exactly one input")
        if len(g.output) != 1:
            names = ", ".join(repr(o.name) for o in g.output) or "none"
            self.err(f"the ONNX graph has {len(g.output)} outputs ({names}); lipbound reads networks with exactly one output")
        inp = inputs[0]
        tt = inp.type.tensor_type if inp.type.HasField("tensor_type") else None
        if tt is None:
            self.err(f"the graph input {inp.name!r} is not a tensor")
        if tt.elem_type and tt.elem_type not in _FLOAT_TYPES:
            self.err(f"the graph input {inp.name!r} has a non-floating-point element type ({tt.elem_type})")
        dims = None
        if tt.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]
        shape, batched = self.input_shape_from(inp.name, dims)
        self.batched = batched
        self.builder = GraphBuilder(shape, input_name=self.unique(inp.name or "input"))
        self.values[inp.name] = _Live(0)

    def input_shape_from(self, name: str, dims):
        """(internal input shape, batched) from the declared dimensions of the input."""
        if dims is not None and len(dims) == 0:
            self.err(f"the graph input {name!r} is a scalar; lipbound needs a tensor input")
        if dims is not None and len(dims) == 1:
            if dims[0] is None:
                inferred = self.infer_features(name)
                if inferred is None:
                    self.err(f"the graph input {name!r} has a dynamic size and it cannot be inferred")
                return (inferred,), False
            return (dims[0],), False
        if dims is not None:
            if dims[0] not in (None, 1):
                # no batch dimension: every tensor keeps its ONNX shape (ops that need a batch refuse)
                if any(d is None for d in dims):
                    self.err(f"the graph input {name!r} has shape {dims} with dynamic dimensions after the first")
                return tuple(dims), False
            if all(d is not None for d in dims[1:]):
                return tuple(dims[1:]), True
        # fall back: infer the feature size from the first Gemm / MatMul
        inferred = self.infer_features(name)
        if inferred is None or (dims is not None and len(dims) != 2):
            self.err(f"the graph input {name!r} has an unknown shape ({dims if dims is not None else 'missing'}) "
                     "that cannot be inferred; give it a static shape")
        return (inferred,), True

    def infer_features(self, name: str):
        """Feature count of a vector input, from the first Gemm / MatMul reached through shape-preserving ops."""
        consumers = {}
        for n in self.graph.node:
            for t in n.input:
                consumers.setdefault(t, []).append(n)
        inits = {t.name: t for t in self.graph.initializer}
        cur = name
        for _ in range(50):
            nodes = consumers.get(cur, [])
            if len(nodes) != 1:
                return None
            n = nodes[0]
            if n.op_type in ("Gemm", "MatMul") and len(n.input) >= 2 and n.input[0] == cur and n.input[1] in inits:
                from onnx import numpy_helper

                w = numpy_helper.to_array(inits[n.input[1]])
                if w.ndim != 2:
                    return None
                trans = self.attrs(n).get("transB", 0) if n.op_type == "Gemm" else 0
                return int(w.shape[1] if trans else w.shape[0])
            if n.op_type in _SHAPE_PRESERVING:
                cur = n.output[0]
                continue
            return None
        return None

    # -- driver -----------------------------------------------------------------------------------------
    def run(self) -> Network:
        """Convert every node in topological order, check declared shapes, keep the output's ancestors."""
        from onnx import numpy_helper

        g = self.graph
        for t in g.initializer:
            try:
                arr = numpy_helper.to_array(t)
            except Exception as e:
                self.err(f"cannot read initializer {t.name!r}: {e}")
            self.values[t.name] = _Const(arr, t.name)
        if g.sparse_initializer:
            self.err("sparse initializers are not supported")
        self.read_input()
        for i, node in enumerate(self.toposort()):
            label = node.name or f"{node.op_type}_{i}"
            self.convert(node, label)
        out_name = g.output[0].name
        out = self.materialize(self.get(out_name, "graph output"), "graph output")
        self.values[out_name] = out
        if not isinstance(out, _Live):
            self.err(f"the graph output {out_name!r} is a constant: it does not depend on the input")
        self.check_declared_shape(g.output[0], out.idx)
        for vi in g.value_info:
            v = self.values.get(vi.name)
            if isinstance(v, _Live) and v.idx < len(self.builder.nodes):
                self.check_declared_shape(vi, v.idx)
        return self.prune(out.idx)

    def check_declared_shape(self, vi, idx: int):
        """Compare the computed shape of a tensor with its declared shape (value_info / output)."""
        tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if tt is None or not tt.HasField("shape"):
            return
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]
        ours = self.oshape(idx)
        if len(dims) != len(ours) or any(d is not None and d != o for d, o in zip(dims, ours)):
            if self.batched and len(dims) == len(ours) and dims[0] is None and all(
                    d is None or d == o for d, o in zip(dims[1:], ours[1:])):
                return
            self.err(f"the reader computed shape {list(ours)} for tensor {vi.name!r} but the graph declares "
                     f"{[d if d is not None else '?' for d in dims]}")

    def toposort(self):
        """The graph's nodes in an order where every input is produced before use."""
        nodes = list(self.graph.node)
        available = set(self.values)
        done = [False] * len(nodes)
        order = []
        progress = True
        while progress:
            progress = False
            for i, n in enumerate(nodes):
                if done[i]:
                    continue
                if all(t == "" or t in available for t in n.input):
                    done[i] = True
                    order.append(n)
                    available.update(t for t in n.output if t)
                    progress = True
        if not all(done):
            n = nodes[done.index(False)]
            missing = [t for t in n.input if t and t not in available]
            label = n.name or n.op_type
            self.err(f"node {label!r} ({n.op_type}) needs tensor(s) {missing} that no node, initializer or input "
                     "produces (or the graph has a cycle)")
        return order

    def prune(self, out_idx: int) -> Network:
        """The network made of the ancestors of the output node."""
        return _prune(self.builder.nodes, out_idx, self.name, self.source)

    def set_out(self, node, idx_or_const, label):
        """Record the value of the node's first output (a node index is wrapped as `_Live`)."""
        if not node.output or not node.output[0]:
            return
        v = idx_or_const
        if isinstance(v, (Expr, Selection)) and v.label is None:
            v.label = label
        self.values[node.output[0]] = v if isinstance(v, (_Const, _Live, Expr, Selection)) else _Live(v)

    def check_extra_outputs_unused(self, node, label):
        """Refuse a node whose outputs after the first are used."""
        used = set()
        for n in self.graph.node:
            used.update(n.input)
        used.update(o.name for o in self.graph.output)
        for t in node.output[1:]:
            if t and t in used:
                self.err(f"node {label!r} ({node.op_type}): its extra output {t!r} is used; only the first output "
                         "is supported", UnsupportedOperator)

    # -- conversion of one node -------------------------------------------------------------------------
    def convert(self, node, label: str):
        """Convert one ONNX node: constants, Shape, constant folding, then the tables (``ONNX_ACTIVATIONS``,
        ``HANDLERS``); pending inputs reach only the handlers in ``PENDING_AWARE``."""
        if node.domain not in ("", "ai.onnx"):
            self.unsupported(node, label)
        op = node.op_type
        ins = [t for t in node.input]
        if op == "Constant":
            self.set_out(node, _Const(self.constant_value(node, label), node.output[0]), label)
            return
        if op == "Shape":
            v = self.get(ins[0], label)
            if not isinstance(v, _Const):
                shp = np.array(self.vshape(v), dtype=np.int64)
                a = self.attrs(node)
                start, end = a.get("start", 0), a.get("end", None)
                self.set_out(node, _Const(shp[start:end], node.output[0]), label)
                return
        present = [t for t in ins if t]
        if op not in _NOT_FOLDABLE and present and all(isinstance(self.get(t, label), _Const) for t in present):
            self.fold(node, label)
            return
        spec = ONNX_ACTIVATIONS.get(op)
        handler = HANDLERS.get(op)
        if spec is None and handler is None:
            self.unsupported(node, label)
        if op not in PENDING_AWARE:
            self.materialize_inputs(node, label)
        try:
            if spec is not None:
                self.op_activation(node, label, self.attrs(node), spec)
            else:
                handler(self, node, label, self.attrs(node))
        except LipboundError as e:
            if label in str(e):
                raise
            raise type(e)(_one_line(f"node {label!r} ({op}): {e}")) from None

    def constant_value(self, node, label):
        """The value of a Constant node."""
        from onnx import numpy_helper

        a = {x.name: x for x in node.attribute}
        if "value" in a:
            return numpy_helper.to_array(a["value"].t)
        if "value_float" in a:
            return np.array(a["value_float"].f, dtype=np.float32)
        if "value_floats" in a:
            return np.array(list(a["value_floats"].floats), dtype=np.float32)
        if "value_int" in a:
            return np.array(a["value_int"].i, dtype=np.int64)
        if "value_ints" in a:
            return np.array(list(a["value_ints"].ints), dtype=np.int64)
        self.err(f"Constant node {label!r} has no supported value attribute ({', '.join(a) or 'none'})",
                 UnsupportedOperator)

    def fold(self, node, label):
        """Evaluate a node whose inputs are all constants (reference evaluator of the onnx package)."""
        from onnx.reference import ReferenceEvaluator

        feeds = {t: self.values[t].value for t in node.input if t}
        try:
            ev = ReferenceEvaluator(node, opsets={"": self.opset})
            outs = ev.run(None, feeds)
        except Exception as e:
            self.err(f"cannot evaluate the constant sub-graph at node {label!r} ({node.op_type}): "
                     f"{type(e).__name__}: {e}")
        for t, v in zip(node.output, outs):
            if t:
                self.values[t] = _Const(np.asarray(v), t)

    # elementwise unary ------------------------------------------------------------------------------
    def op_activation(self, node, label, a, spec):
        """An operator of ``ONNX_ACTIVATIONS``: a node, or one more step of a pending expression."""
        try:
            name, param = spec.resolve(spec.bind_module(_AttrView(a)))
        except ValueError as e:
            self.unsupported(node, label, str(e))
        act = make_activation(name, param)
        v = self.get(node.input[0], label)
        if isinstance(v, Expr):
            self.set_out(node, Expr.apply(act.forward, name, [v]), label)
            return
        v = self.materialize(v, label)
        x = self.live_value(v, node.input[0], label)
        self.set_out(node, self.add(act, [x], label), label)

    def live_value(self, v, tensor: str, label: str) -> int:
        """The node index of a live value (an error for anything else)."""
        if not isinstance(v, _Live):
            self.err(f"node {label!r}: expected the input {tensor!r} to depend on the network input, got a constant")
        return v.idx

    def op_Clip(self, node, label, a):
        """Clip with constant bounds (inputs from opset 11, attributes before): hardtanh or a shifted ReLU."""
        x = self.live(node.input[0], label)
        bounds = []
        for i, key in ((1, "min"), (2, "max")):
            if len(node.input) > i and node.input[i]:
                v = self.weight(node.input[i], label, key, finite=False).reshape(-1)
                if v.size != 1:
                    self.err(f"Clip node {label!r}: the {key} bound is not a scalar", UnsupportedOperator)
                bounds.append(float(v[0]))
            else:
                bounds.append(float(a[key]) if key in a else None)
        y = builders.clamp_nodes(self.add_idx, x, self.shape(x), bounds[0], bounds[1], label, self.err)
        self.set_out(node, y, label)

    def op_HardSigmoid(self, node, label, a):
        """max(0, min(1, alpha x + beta)): torch's hardsigmoid for alpha = 1/6, beta = 1/2, else an affine
        map and hardtanh(0, 1)."""
        x = self.live(node.input[0], label)
        alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
        if math.isclose(alpha, 1 / 6, rel_tol=1e-6) and math.isclose(beta, 0.5, rel_tol=1e-6):
            self.set_out(node, self.add(Activation("hardsigmoid"), [x], label), label)
            return
        s = self.shape(x)
        y = self.add(ElementwiseAffine(np.full(s, alpha), np.full(s, beta), label="HardSigmoid"), [x], label + "/affine")
        self.set_out(node, self.add(Activation("hardtanh", (0.0, 1.0)), [y], label), label)

    def op_PRelu(self, node, label, a):
        """PRelu with one constant slope: a leaky ReLU."""
        x = self.live(node.input[0], label)
        slope = self.weight(node.input[1], label, "slope").reshape(-1)
        if slope.size != 1 and not np.all(slope == slope[0]):
            self.err(f"PRelu node {label!r}: one slope per channel is not supported (only a shared slope)",
                     UnsupportedOperator)
        self.set_out(node, self.add(Activation("leaky_relu", float(slope[0])), [x], label), label)

    def op_expr_unary(self, node, label, a):
        """Erf, Exp, Log, Sqrt, Reciprocal: never an operation alone, a pending expression."""
        fn = _UNARY_EXPR[node.op_type]
        v = self.get(node.input[0], label)
        blocker = (f"unsupported ONNX operator {node.op_type} (node {label!r})", UnsupportedOperator)
        self.set_out(node, Expr.apply(fn, node.op_type, [self.as_expr(v, label)], blocker), label)

    def op_Neg(self, node, label, a):
        """-x: an affine node, or a step of a pending expression."""
        v = self.get(node.input[0], label)
        if isinstance(v, Expr):
            self.set_out(node, Expr.apply(torch.neg, "Neg", [v]), label)
            return
        x = self.live_value(self.materialize(v, label), node.input[0], label)
        s = self.shape(x)
        self.set_out(node, self.add(ElementwiseAffine(-np.ones(s), np.zeros(s), label="Neg"), [x], label), label)

    def op_Pow(self, node, label, a):
        """x ** c with a constant scalar exponent: part of a pattern (tanh-GELU's x^3)."""
        v = self.get(node.input[0], label)
        if isinstance(self.get(node.input[1], label), (_Live, Expr, Selection)) or isinstance(v, _Const):
            self.err(f"Pow node {label!r} with an exponent computed from the input", UnsupportedOperator)
        e = self.weight(node.input[1], label, "exponent").reshape(-1)
        if e.size != 1:
            self.err(f"Pow node {label!r}: the exponent is not a scalar", UnsupportedOperator)
        e = float(e[0])
        if e == 1.0:
            self.set_out(node, v, label)
            return
        blocker = (f"unsupported ONNX operator Pow (node {label!r})", UnsupportedOperator)
        self.set_out(node, Expr.apply(lambda t: torch.pow(t, e), f"Pow{e:g}", [self.as_expr(v, label)], blocker),
                     label)

    def op_Identity(self, node, label, a):
        """The input itself (live or pending)."""
        self.set_out(node, self.pending_or_live(node.input[0], label), label)

    def pending_or_live(self, tensor: str, label: str):
        """The value of a tensor that must depend on the input (live or pending)."""
        v = self.get(tensor, label)
        if isinstance(v, _Const):
            self.err(f"node {label!r}: expected the input {tensor!r} to depend on the network input, got a constant")
        return v

    def op_Dropout(self, node, label, a):
        """The input itself (inference mode only)."""
        x = self.pending_or_live(node.input[0], label)
        if len(node.input) >= 3 and node.input[2]:
            mode = self.const(node.input[2], label)
            if mode is None or bool(np.asarray(mode).reshape(-1)[0]):
                self.err(f"Dropout node {label!r} runs in training mode (random): not supported", UnsupportedOperator)
        self.check_extra_outputs_unused(node, label)
        self.set_out(node, x, label)

    def op_Cast(self, node, label, a):
        """The input itself (casts between floating-point types only)."""
        x = self.pending_or_live(node.input[0], label)
        if a.get("to") not in _FLOAT_TYPES:
            self.err(f"Cast node {label!r} casts the network's tensor to a non-floating-point type ({a.get('to')})",
                     UnsupportedOperator)
        self.set_out(node, x, label)

    # elementwise binary -------------------------------------------------------------------------------
    def align_const(self, c: np.ndarray, x: int, label: str, op: str) -> np.ndarray:
        """A constant operand as a tensor broadcastable to the internal (batch-free) shape of x."""
        oshape = self.oshape(x)
        if c.ndim > len(oshape):
            self.err(f"{op} node {label!r}: the constant of shape {list(c.shape)} has more dimensions than the "
                     f"tensor {list(oshape)} it is combined with")
        if self.batched and c.ndim == len(oshape):
            if c.shape[0] != 1:
                self.err(f"{op} node {label!r}: the constant of shape {list(c.shape)} varies along the batch "
                         "dimension")
            c = c[0]
        internal = self.shape(x)
        try:
            full = np.broadcast_shapes(internal, c.shape)
        except ValueError:
            full = None
        if full != tuple(internal):
            self.err(f"{op} node {label!r}: the constant of shape {list(c.shape)} does not broadcast to the tensor "
                     f"shape {list(oshape)}")
        return c

    def binary(self, node, label):
        """(x, y, constant, side) of a binary operator: two live tensors, or a live tensor and a constant."""
        op = node.op_type
        if len(node.input) != 2:
            self.err(f"{op} node {label!r} must have two inputs")
        a_name, b_name = node.input
        va, vb = self.get(a_name, label), self.get(b_name, label)
        if isinstance(va, _Live) and isinstance(vb, _Live):
            return va.idx, vb.idx, None, None
        if isinstance(va, _Live):
            return va.idx, None, self.weight(b_name, label, "constant operand"), "right"
        return vb.idx, None, self.weight(a_name, label, "constant operand"), "left"

    def pending_arith(self, node, label) -> bool:
        """Add / Sub / Mul / Div that extend a pending expression or start one (a product of two tensors, a
        division by a tensor): True when handled. A non-scalar constant ends an expression (materialised,
        then the affine path)."""
        op = node.op_type
        if len(node.input) != 2:
            self.err(f"{op} node {label!r} must have two inputs")
        vals = []
        for t in node.input:
            v = self.get(t, label)
            if isinstance(v, Selection):
                v = self.values[t] = self.materialize(v, label)
            vals.append(v)
        live = [isinstance(v, (_Live, Expr)) for v in vals]
        tensor_op = (op == "Mul" and all(live)) or (op == "Div" and live[1])
        if not tensor_op and not any(isinstance(v, Expr) for v in vals):
            return False
        blocker = None
        if op == "Mul" and all(live):
            blocker = (f"Mul node {label!r} multiplies two tensors that depend on the input (non-constant "
                       "multiplier): not an affine map, not supported", UnsupportedOperator)
        elif op == "Div" and live[1]:
            blocker = (f"Div node {label!r} divides by a tensor that depends on the input (non-constant divisor): "
                       "not supported", UnsupportedOperator)
        operands = [self.as_expr(v, label) if lv else v.value for v, lv in zip(vals, live)]
        try:
            e = Expr.apply(_ARITH[op], op, operands, blocker)
        except LipboundError:
            if tensor_op:
                self.err(blocker[0], UnsupportedOperator)
            for t, v in zip(node.input, vals):
                self.values[t] = self.materialize(v, label)
            return False
        self.set_out(node, e, label)
        return True

    def arith(self, node, label, tensors, affine):
        """Add / Sub / Mul / Div: a step of a pending expression (`pending_arith`); else, of two live tensors
        x and y, the node ``tensors(x, y)``; else, of x and a constant c (aligned by `align_const`) on the
        ``side`` 'left' or 'right', an ElementwiseAffine (scale, shift) = ``affine(c, side)`` labelled with the
        ONNX op type."""
        if self.pending_arith(node, label):
            return
        x, y, c, side = self.binary(node, label)
        if y is not None:
            self.set_out(node, tensors(x, y), label)
            return
        c = self.align_const(c, x, label, node.op_type)
        scale, shift = affine(c, side)
        self.set_out(node, self.add(ElementwiseAffine(scale, shift, label=node.op_type), [x], label), label)

    def op_Add(self, node, label, a):
        """x + y: a residual Add, an affine shift, or a step of a pending expression."""
        def residual(x, y):
            if self.shape(x) != self.shape(y):
                self.err(f"Add node {label!r} adds tensors of different shapes {list(self.oshape(x))} and "
                         f"{list(self.oshape(y))} (broadcasting between two network tensors is not supported)")
            return self.add(Add(), [x, y], label)

        self.arith(node, label, residual, lambda c, side: (np.ones_like(c), c))

    def op_Sub(self, node, label, a):
        """x - y: a residual difference, an affine shift, or a step of a pending expression."""
        def difference(x, y):
            if self.shape(x) != self.shape(y):
                self.err(f"Sub node {label!r} subtracts tensors of different shapes {list(self.oshape(x))} and "
                         f"{list(self.oshape(y))}")
            neg = self.add(ElementwiseAffine(-np.ones(self.shape(y)), np.zeros(self.shape(y)), label="Neg"), [y],
                           label + "/neg")
            return self.add(Add(), [x, neg], label)

        def shift(c, side):
            return (np.ones_like(c), 0.0 - c) if side == "right" else (-np.ones_like(c), c)  # x - c, c - x

        self.arith(node, label, difference, shift)

    def op_Mul(self, node, label, a):
        """x * c: an affine scale; a product of two tensors starts a pending expression."""
        def product(x, y):
            self.err(f"Mul node {label!r} multiplies two tensors that depend on the input (non-constant multiplier):"
                     " not an affine map, not supported", UnsupportedOperator)

        self.arith(node, label, product, lambda c, side: (c, np.zeros_like(c)))

    def op_Div(self, node, label, a):
        """x / c: an affine scale; a division by a tensor starts a pending expression."""
        def by_tensor(*_):
            self.err(f"Div node {label!r} divides by a tensor that depends on the input (non-constant divisor): "
                     "not supported", UnsupportedOperator)

        def scale(c, side):
            if side == "left":
                by_tensor()
            if np.any(c == 0):
                self.err(f"Div node {label!r} divides by a constant that contains zeros")
            return 1.0 / c, np.zeros_like(c)

        self.arith(node, label, by_tensor, scale)

    # matrix products ----------------------------------------------------------------------------------
    def right_matmul(self, x: int, W: np.ndarray, b, label: str, op: str):
        """y = x @ W.T + b on the last dimension of x (W of shape (n_out, k))."""
        s = self.shape(x)
        k = W.shape[1]
        if not s or s[-1] != k:
            self.err(f"{op} node {label!r}: a tensor of shape {list(self.oshape(x))} cannot be multiplied by a "
                     f"matrix with {k} rows")
        if len(s) == 1:
            return self.add(Linear(W, b), [x], label)
        if int(np.prod(s[:-1])) != 1:
            self.err(f"{op} node {label!r}: matrix product on a tensor of shape {list(self.oshape(x))} (several rows"
                     " per sample) is not supported", UnsupportedOperator)
        r = self.add(Reshape((k,)), [x], label + "/in")
        r = self.add(Linear(W, b), [r], label)
        return self.add(Reshape(tuple(s[:-1]) + (W.shape[0],)), [r], label + "/out")

    def left_matmul(self, W: np.ndarray, x: int, label: str, op: str):
        """y = W @ x for a constant matrix W of shape (n, k) (x a vector or a [.., k, 1] tensor)."""
        s = self.shape(x)
        n, k = W.shape
        if not self.batched and len(s) == 1:
            if s[0] != k:
                self.err(f"{op} node {label!r}: a {n}x{k} matrix cannot multiply a tensor of shape {list(s)}")
            return self.add(Linear(W, None), [x], label)
        if len(s) >= 2 and s[-2] == k and s[-1] == 1 and int(np.prod(s[:-2])) == 1:
            r = self.add(Reshape((k,)), [x], label + "/in")
            r = self.add(Linear(W, None), [r], label)
            return self.add(Reshape(tuple(s[:-2]) + (n, 1)), [r], label + "/out")
        self.err(f"{op} node {label!r}: a constant {n}x{k} matrix times a tensor of shape {list(self.oshape(x))} "
                 "(the network's tensor as right operand) is supported only for a vector or a [.., k, 1] tensor",
                 UnsupportedOperator)

    def op_MatMul(self, node, label, a):
        """A product with a constant matrix (either side): a Linear node."""
        A, B = node.input[0], node.input[1]
        va, vb = self.get(A, label), self.get(B, label)
        if isinstance(va, _Live) and isinstance(vb, _Live):
            self.err(f"MatMul node {label!r} multiplies two tensors that depend on the input: not supported",
                     UnsupportedOperator)
        if isinstance(va, _Live):
            W = self.matmul_matrix(B, label, "right")
            self.set_out(node, self.right_matmul(va.idx, W.T, None, label, "MatMul"), label)
        else:
            W = self.matmul_matrix(A, label, "left")
            self.set_out(node, self.left_matmul(W, vb.idx, label, "MatMul"), label)

    def matmul_matrix(self, tensor: str, label: str, side: str) -> np.ndarray:
        """The constant ``side`` ('left' / 'right') operand of a MatMul as a matrix (leading dimensions of
        size 1 dropped); `UnsupportedOperator` for anything else."""
        W = self.weight(tensor, label, "weight")
        while W.ndim > 2 and W.shape[0] == 1:
            W = W[0]
        if W.ndim != 2:
            self.err(f"MatMul node {label!r}: a constant {side} operand of shape {list(W.shape)} is not supported "
                     "(need a matrix)", UnsupportedOperator)
        return W

    def op_Gemm(self, node, label, a):
        """alpha A B + beta C with one constant matrix: a Linear node (plus a shift)."""
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        ta, tb = int(a.get("transA", 0)), int(a.get("transB", 0))
        A, B = node.input[0], node.input[1]
        C = node.input[2] if len(node.input) > 2 and node.input[2] else None
        va, vb = self.get(A, label), self.get(B, label)
        if isinstance(va, _Live) and isinstance(vb, _Live):
            self.err(f"Gemm node {label!r} multiplies two tensors that depend on the input: not supported",
                     UnsupportedOperator)
        Cm = self.weight(C, label, "bias C") if C is not None else None
        if isinstance(va, _Live):
            if ta:
                self.err(f"Gemm node {label!r}: transA=1 on the network's tensor (it would move the batch "
                         "dimension) is not supported", UnsupportedOperator)
            Bm = self.weight(B, label, "weight B")
            if Bm.ndim != 2:
                self.err(f"Gemm node {label!r}: B must be a matrix, got shape {list(Bm.shape)}")
            Bm = Bm.T if tb else Bm  # (K, N)
            N = Bm.shape[1]
            bias = None
            if Cm is not None:
                rows = self.oshape(va.idx)[0] if len(self.oshape(va.idx)) == 2 else 1
                try:
                    bias = beta * np.broadcast_to(Cm, (rows, N))
                except ValueError:
                    self.err(f"Gemm node {label!r}: C of shape {list(Cm.shape)} does not broadcast to ({rows}, {N})")
                if not np.all(bias == bias[:1]):
                    self.err(f"Gemm node {label!r}: a bias C that differs between rows is not supported",
                             UnsupportedOperator)
                bias = bias[0]
            self.set_out(node, self.right_matmul(va.idx, alpha * Bm.T, bias, label, "Gemm"), label)
            return
        # constant A, network tensor B (only without a batch dimension)
        Am = self.weight(A, label, "weight A")
        if Am.ndim != 2:
            self.err(f"Gemm node {label!r}: A must be a matrix, got shape {list(Am.shape)}")
        if tb or self.batched:
            self.err(f"Gemm node {label!r}: the network's tensor as right operand B is supported only without a "
                     "batch dimension and with transB=0", UnsupportedOperator)
        Am = Am.T if ta else Am
        y = self.left_matmul(alpha * Am, vb.idx, label, "Gemm")
        if Cm is not None:
            shp = self.shape(y)
            try:
                shift = beta * np.broadcast_to(Cm, shp)
            except ValueError:
                self.err(f"Gemm node {label!r}: C of shape {list(Cm.shape)} does not broadcast to {list(shp)}")
            y = self.add(ElementwiseAffine(np.ones(shp), shift, label="Gemm"), [y], label + "/C")
        self.set_out(node, y, label)

    # convolution and pooling --------------------------------------------------------------------------
    def spatial_input(self, node, label) -> int:
        """The node index of a live (C, H, W) input (batched 4-D tensor)."""
        x = self.live(node.input[0], label)
        if not self.batched or len(self.shape(x)) != 3:
            self.err(f"{node.op_type} node {label!r}: only 2-D (N, C, H, W) tensors are supported, got shape "
                     f"{list(self.oshape(x))}", UnsupportedOperator)
        return x

    def pads_2d(self, a, node, label, in_hw, kernel, strides, dilations):
        """(h_begin, w_begin, h_end, w_end) from pads / auto_pad."""
        auto = a.get("auto_pad", "NOTSET") or "NOTSET"
        if auto == "NOTSET":
            pads = list(a.get("pads", [0, 0, 0, 0]))
            if len(pads) != 4:
                self.err(f"{node.op_type} node {label!r}: pads {pads} are not 2-D pads")
            if min(pads) < 0:
                self.err(f"{node.op_type} node {label!r}: negative pads {pads} are not supported", UnsupportedOperator)
            return pads
        if auto == "VALID":
            return [0, 0, 0, 0]
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            begin, end = [], []
            for n_in, k, s, d in zip(in_hw, kernel, strides, dilations):
                out = -(-n_in // s)
                total = max((out - 1) * s + (k - 1) * d + 1 - n_in, 0)
                small = total // 2
                if auto == "SAME_UPPER":
                    begin.append(small), end.append(total - small)
                else:
                    begin.append(total - small), end.append(small)
            return begin + end
        self.err(f"{node.op_type} node {label!r}: auto_pad {auto!r} is not supported", UnsupportedOperator)

    def op_Conv(self, node, label, a):
        """A 2-D convolution (a Pad node first for asymmetric pads)."""
        x = self.spatial_input(node, label)
        W = self.weight(node.input[1], label, "weight")
        if W.ndim != 4:
            self.err(f"Conv node {label!r}: only 2-D convolutions are supported (weight shape {list(W.shape)})",
                     UnsupportedOperator)
        bias = self.weight(node.input[2], label, "bias") if len(node.input) > 2 and node.input[2] else None
        groups = int(a.get("group", 1))
        strides = tuple(a.get("strides", (1, 1)))
        dil = tuple(a.get("dilations", (1, 1)))
        kernel = tuple(a.get("kernel_shape", W.shape[2:]))
        if kernel != tuple(W.shape[2:]):
            self.err(f"Conv node {label!r}: kernel_shape {list(kernel)} differs from the weight shape {list(W.shape)}")
        C, H, Wd = self.shape(x)
        if W.shape[1] * groups != C:
            self.err(f"Conv node {label!r}: weight {list(W.shape)} with group={groups} does not fit {C} input channels")
        hb, wb, he, we = self.pads_2d(a, node, label, (H, Wd), kernel, strides, dil)
        if hb == he and wb == we:
            y = self.add(Conv2d(W, bias, strides, (hb, wb), dil, groups), [x], label)
        else:
            p = self.add(Pad((wb, we, hb, he)), [x], label + "/pad")
            y = self.add(Conv2d(W, bias, strides, (0, 0), dil, groups), [p], label)
        self.set_out(node, y, label)

    def pool_args(self, node, label, a, x):
        """(kernel, strides, dilations, pads) of a 2-D pooling node."""
        kernel = tuple(int(k) for k in a.get("kernel_shape", ()))
        if len(kernel) != 2:
            self.err(f"{node.op_type} node {label!r}: only 2-D pooling is supported (kernel {list(kernel)})",
                     UnsupportedOperator)
        strides = tuple(int(s) for s in a.get("strides", (1, 1)))
        dil = tuple(int(d) for d in a.get("dilations", (1, 1)))
        _, H, Wd = self.shape(x)
        pads = self.pads_2d(a, node, label, (H, Wd), kernel, strides, dil)
        return kernel, strides, dil, pads

    def op_AveragePool(self, node, label, a):
        """Average pooling (explicit padding when the pads are asymmetric)."""
        x = self.spatial_input(node, label)
        kernel, strides, dil, (hb, wb, he, we) = self.pool_args(node, label, a, x)
        if dil != (1, 1):
            self.err(f"AveragePool node {label!r}: dilations {list(dil)} are not supported", UnsupportedOperator)
        cip = bool(a.get("count_include_pad", 0))
        ceil = bool(a.get("ceil_mode", 0))
        if (hb, wb) == (he, we) and hb <= kernel[0] // 2 and wb <= kernel[1] // 2 and not (ceil and (hb or wb)):
            y = self.add(AvgPool2d(kernel, strides, (hb, wb), cip or (hb, wb) == (0, 0), ceil), [x], label)
        elif cip and not ceil:
            p = self.add(Pad((wb, we, hb, he)), [x], label + "/pad")
            y = self.add(AvgPool2d(kernel, strides, (0, 0), True, False), [p], label)
        else:
            self.err(f"AveragePool node {label!r}: pads {[hb, wb, he, we]} with count_include_pad={int(cip)}, "
                     f"ceil_mode={int(ceil)} are not supported", UnsupportedOperator)
        self.set_out(node, y, label)

    def op_MaxPool(self, node, label, a):
        """Max pooling (symmetric pads up to half the kernel)."""
        x = self.spatial_input(node, label)
        kernel, strides, dil, (hb, wb, he, we) = self.pool_args(node, label, a, x)
        ceil = bool(a.get("ceil_mode", 0))
        self.check_extra_outputs_unused(node, label)
        if (hb, wb) != (he, we) or hb > kernel[0] // 2 or wb > kernel[1] // 2:
            self.err(f"MaxPool node {label!r}: pads {[hb, wb, he, we]} (asymmetric or above half the kernel) are not "
                     "supported", UnsupportedOperator)
        if ceil and (hb or wb):
            self.err(f"MaxPool node {label!r}: ceil_mode with padding is not supported", UnsupportedOperator)
        self.set_out(node, self.add(MaxPool2d(kernel, strides, (hb, wb), dil, ceil), [x], label), label)

    def op_GlobalAveragePool(self, node, label, a):
        """The mean over H and W: an AvgPool2d over the whole map."""
        x = self.spatial_input(node, label)
        _, H, Wd = self.shape(x)
        self.set_out(node, self.add(AvgPool2d((H, Wd), (H, Wd)), [x], label), label)

    def reduce_axes(self, node, label, a) -> list | None:
        """The axes of a Reduce* node: attribute before opset 18, second input from 18 (None: all)."""
        if len(node.input) >= 2 and node.input[1]:
            axes = self.ints(node.input[1], label, "axes")
        else:
            axes = [int(v) for v in a["axes"]] if "axes" in a else []
        if not axes:
            if int(a.get("noop_with_empty_axes", 0)):
                return []
            return None
        return axes

    def sample_axes(self, node, label, axes, rank) -> list[int]:
        """ONNX axes as sample dimensions (batch excluded; the batch axis itself is refused)."""
        axes = sorted({ax + rank if ax < 0 else ax for ax in axes})
        if any(not 0 <= ax < rank for ax in axes):
            self.err(f"{node.op_type} node {label!r}: axes {axes} out of range for rank {rank}")
        if self.batched:
            if 0 in axes:
                self.err(f"{node.op_type} node {label!r} reduces over the batch dimension", UnsupportedOperator)
            return [ax - 1 for ax in axes]
        return axes

    def op_ReduceMean(self, node, label, a):
        """The mean over adjacent non-batch axes (spatial axes: an AvgPool2d), then a reshape."""
        x = self.live(node.input[0], label)
        axes = self.reduce_axes(node, label, a)
        if axes is None:
            self.err(f"ReduceMean node {label!r} over every axis (the batch included) is not supported",
                     UnsupportedOperator)
        if not axes:
            self.set_out(node, x, label)
            return
        dims = self.sample_axes(node, label, axes, len(self.oshape(x)))
        keep = bool(int(a.get("keepdims", 1)))
        self.set_out(node, builders.mean_nodes(self.add_idx, x, self.shape(x), dims, keep, label, self.err), label)

    def op_GlobalMaxPool(self, node, label, a):
        """The max over H and W: a MaxPool2d over the whole map."""
        x = self.spatial_input(node, label)
        _, H, Wd = self.shape(x)
        self.set_out(node, self.add(MaxPool2d((H, Wd), (H, Wd)), [x], label), label)

    # MaxMin: slicing, max / min, sort -----------------------------------------------------------------
    def selection_input(self, tensor: str, label: str) -> Selection:
        """A tensor of the graph as a `Selection` (for MaxMin patterns)."""
        return self.as_selection(self.get(tensor, label), label)

    def map_selection(self, sel: Selection, fn, label: str) -> Selection:
        """``fn`` applied to each index tensor of a selection (an index operation)."""
        return sel.with_components(*(fn(c) for c in sel.components()),
                                   origin=sel.origin if not sel.is_plain() else label)

    def op_Slice(self, node, label, a):
        """Slice with constant starts / ends / axes / steps (positive steps): a selection."""
        sel = self.selection_input(node.input[0], label)
        if len(node.input) >= 3:
            starts, ends = self.ints(node.input[1], label, "starts"), self.ints(node.input[2], label, "ends")
            axes = self.ints(node.input[3], label, "axes") if len(node.input) > 3 and node.input[3] else None
            steps = self.ints(node.input[4], label, "steps") if len(node.input) > 4 and node.input[4] else None
        else:
            starts, ends, axes, steps = list(a.get("starts", [])), list(a.get("ends", [])), a.get("axes"), None
        r = len(sel.shape)
        axes = list(range(len(starts))) if axes is None else [ax + r if ax < 0 else ax for ax in axes]
        steps = steps or [1] * len(starts)
        index = [slice(None)] * r
        for ax, st, en, sp in zip(axes, starts, ends, steps):
            if sp <= 0:
                self.err(f"Slice node {label!r}: step {sp} (only positive steps)", UnsupportedOperator)
            index[ax] = slice(st, en, sp)
        out = self.map_selection(sel, lambda c: c[tuple(index)], label)
        if self.batched and out.shape[0] != 1:
            self.err(f"Slice node {label!r} slices the batch dimension", UnsupportedOperator)
        self.set_out(node, out, label)

    def op_Split(self, node, label, a):
        """Split into pieces along an axis: one selection per output."""
        sel = self.selection_input(node.input[0], label)
        r = len(sel.shape)
        axis = int(a.get("axis", 0))
        axis = axis + r if axis < 0 else axis
        n = sel.shape[axis]
        if len(node.input) > 1 and node.input[1]:
            sizes = self.ints(node.input[1], label, "split")
        elif "split" in a:
            sizes = [int(v) for v in a["split"]]
        else:
            k = int(a.get("num_outputs", len(node.output)))
            sizes = [-(-n // k)] * (k - 1)
            sizes.append(n - sum(sizes))
        if sum(sizes) != n or len(sizes) != len(node.output) or (self.batched and axis == 0):
            self.err(f"Split node {label!r}: sizes {sizes} along axis {axis} of shape {list(sel.shape)}")
        parts = [torch.split(c, sizes, axis) for c in sel.components()]
        for i, t in enumerate(node.output):
            if t:
                self.values[t] = sel.with_components(*(p[i] for p in parts), origin=label)
                self.values[t].label = label

    def op_Concat(self, node, label, a):
        """Concatenation of entries of one tensor: a selection."""
        sels = [self.selection_input(t, label) for t in node.input if t]
        patterns.same_root(sels, "Concat", label)
        r = len(sels[0].shape)
        axis = int(a.get("axis", 0))
        axis = axis + r if axis < 0 else axis
        if self.batched and axis == 0:
            self.err(f"Concat node {label!r} concatenates along the batch dimension", UnsupportedOperator)
        comps = [torch.cat([s.components()[k] for s in sels], axis) for k in range(3)]
        base = next((s for s in sels if not s.is_plain()), sels[0])
        self.set_out(node, base.with_components(*comps, origin=base.origin if not base.is_plain() else label), label)

    def op_Gather(self, node, label, a):
        """Gather with constant indices along a non-batch axis: a selection."""
        sel = self.selection_input(node.input[0], label)
        idx = np.asarray(self.ints(node.input[1], label, "indices"))
        shape_idx = np.asarray(self.get(node.input[1], label).value).shape
        r = len(sel.shape)
        axis = int(a.get("axis", 0))
        axis = axis + r if axis < 0 else axis
        if self.batched and axis == 0:
            self.err(f"Gather node {label!r} gathers along the batch dimension", UnsupportedOperator)
        n = sel.shape[axis]
        if np.any((idx < -n) | (idx >= n)):
            self.err(f"Gather node {label!r}: indices out of range for size {n}")
        flat = torch.as_tensor(idx % n, dtype=torch.long)

        def gather(c):
            """The gathered index tensor, reshaped to ONNX's output shape."""
            g = torch.index_select(c, axis, flat)
            return g.reshape(c.shape[:axis] + tuple(shape_idx) + c.shape[axis + 1:])
        self.set_out(node, self.map_selection(sel, gather, label), label)

    def op_Max(self, node, label, a):
        """Elementwise Max: a MaxMin selection, or a shifted ReLU against a scalar."""
        self.extremum(node, label, MAX)

    def op_Min(self, node, label, a):
        """Elementwise Min: a MaxMin selection, or a shifted ReLU against a scalar."""
        self.extremum(node, label, MIN)

    def extremum(self, node, label, which):
        """Max / Min of two tensors (a MaxMin selection) or of a tensor and a scalar (a shifted ReLU)."""
        ins = [t for t in node.input if t]
        if len(ins) == 1:
            self.set_out(node, self.pending_or_live(ins[0], label), label)
            return
        if len(ins) != 2:
            self.err(f"{node.op_type} node {label!r} of {len(ins)} tensors (only 2)", UnsupportedOperator)
        vals = [self.get(t, label) for t in ins]
        if all(not isinstance(v, _Const) for v in vals):
            out = patterns.extremum(which, *(self.as_selection(v, label) for v in vals), label)
            self.set_out(node, out, label)
            return
        (xv, cname) = (vals[0], ins[1]) if not isinstance(vals[0], _Const) else (vals[1], ins[0])
        c = self.weight(cname, label, "constant operand").reshape(-1)
        if c.size != 1:
            self.err(f"{node.op_type} node {label!r} of a tensor and a non-scalar constant", UnsupportedOperator)
        x = self.live_value(self.materialize(xv, label), cname, label)
        lo, hi = (float(c[0]), None) if which == MAX else (None, float(c[0]))
        self.set_out(node, builders.clamp_nodes(self.add_idx, x, self.shape(x), lo, hi, label, self.err), label)

    def op_ReduceMax(self, node, label, a):
        """ReduceMax over an axis of size 2 (MaxMin)."""
        self.reduce_pair(node, label, a, MAX)

    def op_ReduceMin(self, node, label, a):
        """ReduceMin over an axis of size 2 (MaxMin)."""
        self.reduce_pair(node, label, a, MIN)

    def reduce_pair(self, node, label, a, which):
        """ReduceMax / ReduceMin over one axis of size 2 (a MaxMin selection)."""
        sel = self.selection_input(node.input[0], label)
        axes = self.reduce_axes(node, label, a)
        if axes is None or len(axes) != 1:
            self.err(f"{node.op_type} node {label!r} over axes {axes} (only one axis of size 2)", UnsupportedOperator)
        keep = bool(int(a.get("keepdims", 1)))
        self.set_out(node, patterns.reduce_pair(which, sel, int(axes[0]), keep, label), label)

    def op_TopK(self, node, label, a):
        """TopK with K = 2 over an axis of size 2 (a sort): a MaxMin selection; the indices must stay unused."""
        sel = self.selection_input(node.input[0], label)
        k = self.ints(node.input[1], label, "K") if len(node.input) > 1 else [int(a.get("k", 0))]
        axis = int(a.get("axis", -1))
        r = len(sel.shape)
        axis = axis + r if axis < 0 else axis
        if k != [2] or sel.shape[axis] != 2 or not int(a.get("sorted", 1)):
            self.err(f"TopK node {label!r} with K={k} on an axis of size {sel.shape[axis]} (only a sorted top-2 of "
                     "2, a GroupSort-2)", UnsupportedOperator)
        self.check_extra_outputs_unused(node, label)
        self.set_out(node, patterns.sort_pair(sel, axis, bool(int(a.get("largest", 1))), label), label)

    def op_BatchNormalization(self, node, label, a):
        """Batch normalisation in inference mode: an ElementwiseAffine labelled BatchNorm."""
        x = self.live(node.input[0], label)
        if int(a.get("training_mode", 0)):
            self.err(f"BatchNormalization node {label!r} is in training mode: not supported", UnsupportedOperator)
        if "spatial" in a and not int(a["spatial"]):
            self.err(f"BatchNormalization node {label!r} with spatial=0 is not supported", UnsupportedOperator)
        self.check_extra_outputs_unused(node, label)
        if len(node.input) != 5:
            self.err(f"BatchNormalization node {label!r} needs 5 inputs (X, scale, B, mean, var)")
        gamma, beta_, mean, var = (self.weight(t, label, w) for t, w in
                                   zip(node.input[1:], ("scale", "bias", "mean", "variance")))
        eps = float(a.get("epsilon", 1e-5))
        if np.any(var + eps <= 0):
            self.err(f"BatchNormalization node {label!r}: variance + epsilon is not positive")
        os_ = self.oshape(x)
        if len(os_) < 2:
            self.err(f"BatchNormalization node {label!r}: input of shape {list(os_)} has no channel dimension")
        C = os_[1]
        if not all(p.reshape(-1).shape == (C,) for p in (gamma, beta_, mean, var)):
            self.err(f"BatchNormalization node {label!r}: parameters do not have {C} channels")
        s = gamma.reshape(-1) / np.sqrt(var.reshape(-1) + eps)
        shift = beta_.reshape(-1) - mean.reshape(-1) * s
        bshape = (C,) + (1,) * (len(os_) - 2)
        op = ElementwiseAffine(s.reshape(bshape), shift.reshape(bshape), label="BatchNorm")
        self.set_out(node, self.add(op, [x], label), label)

    # shapes ---------------------------------------------------------------------------------------------
    def shape_input(self, node, label):
        """The input of a shape operator: a live tensor or a selection (an expression is materialised)."""
        v = self.pending_or_live(node.input[0], label)
        return self.materialize(v, label) if isinstance(v, Expr) else v

    def reshape_to(self, node, label, x, onnx_target):
        """A Reshape node to the ONNX shape ``onnx_target`` (batch dimension included when batched); on a
        selection, the reshape of its index tensors."""
        onnx_target = tuple(int(d) for d in onnx_target)
        if isinstance(x, Selection):
            if int(np.prod(onnx_target)) != int(np.prod(x.shape)) or (self.batched and onnx_target[:1] != (1,)):
                self.err(f"{node.op_type} node {label!r}: cannot reshape {list(x.shape)} to {list(onnx_target)}")
            self.set_out(node, self.map_selection(x, lambda c: c.reshape(onnx_target), label), label)
            return
        x = x.idx if isinstance(x, _Live) else x
        if self.batched:
            if not onnx_target or onnx_target[0] != 1:
                self.err(f"{node.op_type} node {label!r}: the result shape {list(onnx_target)} does not keep the "
                         "batch dimension first", UnsupportedOperator)
            target = onnx_target[1:]
        else:
            target = onnx_target
        if int(np.prod(target)) != int(np.prod(self.shape(x))):
            self.err(f"{node.op_type} node {label!r}: cannot reshape {list(self.oshape(x))} to {list(onnx_target)}")
        self.set_out(node, self.add(Reshape(target), [x], label), label)

    def op_Flatten(self, node, label, a):
        """Flatten to 2-D: a Reshape (or the reshape of a selection)."""
        x = self.shape_input(node, label)
        os_ = self.vshape(x)
        axis = int(a.get("axis", 1))
        if axis < 0:
            axis += len(os_)
        if not 0 <= axis <= len(os_):
            self.err(f"Flatten node {label!r}: axis {a.get('axis')} out of range for shape {list(os_)}")
        lead, rest = int(np.prod(os_[:axis])), int(np.prod(os_[axis:]))
        if self.batched and axis == 0:
            lead, rest = 1, rest  # batch 1: (1, n), the same as axis=1
        self.reshape_to(node, label, x, (lead, rest))

    def op_Reshape(self, node, label, a):
        """Reshape to a constant target (0 and -1 resolved): a Reshape node or a selection's reshape."""
        x = self.shape_input(node, label)
        if len(node.input) >= 2:
            t = self.ints(node.input[1], label, "shape")
        elif "shape" in a:
            t = [int(v) for v in a["shape"]]
        else:
            self.err(f"Reshape node {label!r} has no target shape")
        os_ = self.vshape(x)
        allowzero = int(a.get("allowzero", 0))
        t = list(t)
        for i, d in enumerate(t):
            if d == 0 and not allowzero:
                if i >= len(os_):
                    self.err(f"Reshape node {label!r}: 0 at position {i} but the input has rank {len(os_)}")
                t[i] = os_[i]
            elif d < -1 or (d == 0 and allowzero):
                self.err(f"Reshape node {label!r}: invalid target shape {list(t)}")
        numel = int(np.prod(os_))
        if t.count(-1) > 1:
            self.err(f"Reshape node {label!r}: more than one -1 in the target shape {t}")
        if self.batched and t and t[0] == -1:
            # the batch dimension is inferred: the rest must hold exactly one sample
            if int(np.prod(t[1:])) != int(np.prod(os_[1:])):
                self.err(f"Reshape node {label!r}: target {t} would change the batch dimension of {list(os_)}",
                         UnsupportedOperator)
            t[0] = 1
        elif -1 in t:
            known = int(np.prod([d for d in t if d != -1]))
            if known == 0 or numel % known:
                self.err(f"Reshape node {label!r}: cannot reshape {list(os_)} to {t}")
            t[t.index(-1)] = numel // known
        self.reshape_to(node, label, x, t)

    def axes_of(self, node, label, a):
        """The axes of (Un)Squeeze: the second input (opset 13) or the attribute."""
        if len(node.input) >= 2 and node.input[1]:
            return self.ints(node.input[1], label, "axes")
        return [int(v) for v in a.get("axes", [])] if "axes" in a else None

    def op_Squeeze(self, node, label, a):
        """Remove axes of size 1 (never the batch axis)."""
        x = self.shape_input(node, label)
        os_ = list(self.vshape(x))
        axes = self.axes_of(node, label, a)
        if axes is None:
            axes = [i for i, d in enumerate(os_) if d == 1 and not (self.batched and i == 0)]
        axes = sorted({ax + len(os_) if ax < 0 else ax for ax in axes})
        if any(not 0 <= ax < len(os_) or os_[ax] != 1 for ax in axes):
            self.err(f"Squeeze node {label!r}: axes {axes} are not of size 1 in {os_}")
        if self.batched and 0 in axes:
            self.err(f"Squeeze node {label!r} removes the batch dimension", UnsupportedOperator)
        self.reshape_to(node, label, x, [d for i, d in enumerate(os_) if i not in axes])

    def op_Unsqueeze(self, node, label, a):
        """Insert axes of size 1 (never before the batch axis)."""
        x = self.shape_input(node, label)
        os_ = list(self.vshape(x))
        axes = self.axes_of(node, label, a) or []
        r = len(os_) + len(axes)
        axes = sorted({ax + r if ax < 0 else ax for ax in axes})
        if self.batched and 0 in axes:
            self.err(f"Unsqueeze node {label!r} inserts a dimension before the batch dimension", UnsupportedOperator)
        out, it = [], iter(os_)
        for i in range(r):
            out.append(1 if i in axes else next(it))
        self.reshape_to(node, label, x, out)

    def op_Transpose(self, node, label, a):
        """A permutation of the axes that keeps the batch axis first."""
        x = self.shape_input(node, label)
        r = len(self.vshape(x))
        perm = [int(p) for p in a.get("perm", list(range(r))[::-1])]
        if sorted(perm) != list(range(r)):
            self.err(f"Transpose node {label!r}: perm {perm} is not a permutation of {r} dimensions")
        if isinstance(x, Selection):
            if self.batched and perm[0] != 0:
                self.err(f"Transpose node {label!r}: perm {perm} moves the batch dimension", UnsupportedOperator)
            self.set_out(node, self.map_selection(x, lambda c: c.permute(*perm), label), label)
            return
        x = x.idx
        if self.batched:
            if perm[0] != 0:
                self.err(f"Transpose node {label!r}: perm {perm} moves the batch dimension", UnsupportedOperator)
            perm = [p - 1 for p in perm[1:]]
        self.set_out(node, self.add(Transpose(tuple(perm)), [x], label), label)

    def op_Pad(self, node, label, a):
        """Constant padding (inputs from opset 11, attributes before)."""
        x = self.live(node.input[0], label)
        mode = a.get("mode", "constant") or "constant"
        if mode != "constant":
            self.err(f"Pad node {label!r}: mode {mode!r} is not supported (only 'constant')", UnsupportedOperator)
        os_ = self.oshape(x)
        r = len(os_)
        if len(node.input) >= 2 and node.input[1]:
            pads = self.ints(node.input[1], label, "pads")
            value = 0.0
            if len(node.input) >= 3 and node.input[2]:
                v = self.weight(node.input[2], label, "constant_value").reshape(-1)
                value = float(v[0]) if v.size else 0.0
            if len(node.input) >= 4 and node.input[3]:
                axes = [ax + r if ax < 0 else ax for ax in self.ints(node.input[3], label, "axes")]
                full = [0] * (2 * r)
                for j, ax in enumerate(axes):
                    full[ax], full[r + ax] = pads[j], pads[len(axes) + j]
                pads = full
        else:
            pads = [int(p) for p in a.get("pads", a.get("paddings", []))]
            value = float(a.get("value", 0.0))
        if len(pads) != 2 * r:
            self.err(f"Pad node {label!r}: {len(pads)} pads for a tensor of rank {r}")
        if not math.isfinite(value):
            self.err(f"Pad node {label!r}: non-finite (NaN or infinite) pad value {value}")
        if min(pads) < 0:
            self.err(f"Pad node {label!r}: negative pads (cropping) {pads} are not supported", UnsupportedOperator)
        off = 1 if self.batched else 0
        if off and (pads[0] or pads[r]):
            self.err(f"Pad node {label!r} pads the batch dimension", UnsupportedOperator)
        tp = []
        for d in range(r - 1, off - 1, -1):
            tp += [pads[d], pads[r + d]]
        self.set_out(node, self.add(Pad(tuple(tp), value), [x], label), label)


class _AttrView:
    """An ONNX node's attributes as object attributes (for `ActSpec.bind_module`)."""

    def __init__(self, attrs: dict):
        """Wrap an attribute dict."""
        self._attrs = attrs

    def __getattr__(self, name):
        """The attribute ``name`` (AttributeError when absent, so that defaults apply)."""
        try:
            return self.__dict__["_attrs"][name]
        except KeyError:
            raise AttributeError(name) from None


_UNARY_EXPR = {"Erf": torch.erf, "Exp": torch.exp, "Log": torch.log, "Sqrt": torch.sqrt,
               "Reciprocal": torch.reciprocal}
_ARITH = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}

#: ONNX op_type -> handler(reader, node, label, attributes) (activations: `tables.ONNX_ACTIVATIONS`): the
#: method ``op_<op_type>`` of `_Reader`; the unary functions of ``_UNARY_EXPR`` share ``op_expr_unary``
HANDLERS = {
    **{op: getattr(_Reader, f"op_{op}") for op in (
        "Gemm", "MatMul", "Conv", "Add", "Sub", "Mul", "Div", "Neg", "Pow", "Clip", "HardSigmoid", "PRelu",
        "AveragePool", "MaxPool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "BatchNormalization",
        "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Pad", "Identity", "Dropout", "Cast", "Slice",
        "Split", "Concat", "Gather", "Max", "Min", "ReduceMax", "ReduceMin", "TopK")},
    **{op: _Reader.op_expr_unary for op in _UNARY_EXPR},
}

#: operators whose handlers take pending values (expressions, selections); the others get nodes
PENDING_AWARE = frozenset({"Add", "Sub", "Mul", "Div", "Neg", "Pow", *_UNARY_EXPR, *ONNX_ACTIVATIONS, "Identity",
                           "Dropout", "Cast", "Slice", "Split", "Concat", "Gather", "Max", "Min", "ReduceMax",
                           "ReduceMin", "TopK", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose"})

SUPPORTED_OPS = tuple(sorted({*HANDLERS, *ONNX_ACTIVATIONS, "Constant", "Shape"}))

#: operators that keep a vector's feature count (for inferring a dynamic input size)
_SHAPE_PRESERVING = frozenset({"Flatten", "Identity", "Dropout", "Add", "Sub", "Mul", "Div", "Cast", "Clip",
                               "HardSigmoid", "PRelu", "Neg", *ONNX_ACTIVATIONS})


def _prune(nodes, out_idx: int, name: str, source) -> Network:
    """The network made of the ancestors of node ``out_idx`` (which becomes the output node), with
    per-channel scales and shifts folded into the Linear / Conv2d before them (`fold_scale_shift`)."""
    keep = {0, out_idx}
    for i in range(out_idx, 0, -1):
        if i in keep:
            keep.update(nodes[i].inputs)
    order = sorted(keep)
    remap = {old: new for new, old in enumerate(order)}
    new_nodes = [Node(nodes[o].name, nodes[o].op, tuple(remap[j] for j in nodes[o].inputs), nodes[o].shape)
                 for o in order]
    return Network(fold_scale_shift(new_nodes), name=name, source=source)


def _read_model(path):
    """The ONNX model and its path (None for a ModelProto); `LipboundError` for a missing / unreadable file."""
    import onnx

    if isinstance(path, onnx.ModelProto):
        return path, None
    p = builders.existing_file(path, "an ONNX file")
    try:
        model = onnx.load(str(p))
    except Exception as e:
        raise LipboundError(_one_line(f"{str(p)!r} is not a readable ONNX model ({type(e).__name__}: {e})")) from None
    if not model.HasField("graph") or (not model.graph.node and not model.graph.input):
        raise LipboundError(f"{str(p)!r} is not an ONNX model (no graph)")
    return model, p


def load_onnx(path, name: str | None = None) -> Network:
    """Read an ONNX model (a path or an ``onnx.ModelProto``) into a `Network` (float64 parameters).

    Not a bound: an exact translation of the ONNX graph (same outputs as onnxruntime up to float32
    rounding). The network's input shape excludes the batch dimension. Raises `UnsupportedOperator`
    for an operator outside `SUPPORTED_OPS` and `LipboundError` for any other bad input (missing file,
    not ONNX, several inputs/outputs, NaN weights, non-constant divisor...), with a one-line message.
    Cost: one pass over the graph, linear in the number of parameters."""
    model, p = _read_model(path)
    if name is None:
        name = p.stem if p is not None else (model.graph.name or "network")
    reader = _Reader(model, name, str(p) if p is not None else None)
    try:
        return reader.run()
    except LipboundError as e:
        msg = _one_line(str(e))
        if msg != str(e):
            raise type(e)(msg) from None
        raise
    except Exception as e:  # a malformed graph the checks above did not anticipate
        raise LipboundError(_one_line(f"cannot read ONNX model {name!r}: {type(e).__name__}: {e}")) from e
