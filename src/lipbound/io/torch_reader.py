"""torch reader: an ``nn.Module`` (by `torch.fx` symbolic tracing) or a torch.export program (aten
operators, see `lipbound.io.export_reader`) into a `lipbound.network.Network`.

Every fx node is dispatched through tables, never an if-chain:

* activations: `lipbound.io.tables` (``MODULE_ACTIVATIONS``, ``FUNCTION_ACTIVATIONS`` (torch functions
  and aten operators), ``METHOD_ACTIVATIONS``);
* everything else: ``MODULE_HANDLERS``, ``FUNCTION_HANDLERS`` and ``METHOD_HANDLERS`` below (module class,
  function / aten operator, tensor method name -> converter handler).

Supported: Linear, Conv2d, BatchNorm1d/2d (eval statistics), AvgPool2d, MaxPool2d, AdaptiveAvgPool2d
(any output size), AdaptiveMaxPool2d (divisible sizes), spatial means (``x.mean((2, 3))``), padding,
flatten / view / reshape / permute / (un)squeeze, dropout in eval mode, every activation of the tables,
clamp / clip with constant bounds, sums of tensors (residual connections), +-*/ by constants, and the
patterns of `lipbound.io.patterns`: elementwise sub-graphs that are one activation (``x * sigmoid(x)``,
``x / (1 + |x|)``, GELU written with erf) and MaxMin / GroupSort-2 written with slices, max/min,
sort and cat. Anything else raises `UnsupportedOperator` naming the module or function and the fx node.
"""

from __future__ import annotations

import math
import operator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import LipboundError, UnsupportedOperator
from ..network import (Add, AvgPool2d, Conv2d, ElementwiseAffine, GraphBuilder, Linear, MaxPool2d, Network, Pad,
                       Reshape, Transpose)
from . import builders, patterns
from .patterns import MAX, MIN, Expr, Selection
from .tables import (FUNCTION_ACTIVATIONS, METHOD_ACTIVATIONS, MODULE_ACTIVATIONS, ActSpec, _ops, _table,
                     make_activation)

aten = torch.ops.aten


class _Batch:
    """The (symbolic) batch size, e.g. ``x.size(0)`` in ``x.view(x.size(0), -1)``."""

    def __repr__(self):
        """``batch``."""
        return "batch"


BATCH = _Batch()


class _Live:
    """A tensor computed by the network: node ``idx`` of the graph being built."""

    __slots__ = ("idx",)

    def __init__(self, idx):
        """Node ``idx`` of the network being built."""
        self.idx = idx


class _Opaque:
    """A value the network cannot use (the indices of a sort or a max): an error if consumed."""

    def __init__(self, what):
        """``what`` names the value in messages."""
        self.what = what


class _Results(tuple):
    """The (values, indices) tuple of torch.sort / torch.max(x, dim) / topk."""

    @property
    def values(self):
        """The values (first element)."""
        return self[0]

    @property
    def indices(self):
        """The indices (second element)."""
        return self[1]


def _one_line(text) -> str:
    """The message on one line, at most 400 characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= 400 else text[:397] + "..."


def _fname(fn) -> str:
    """A readable name of an fx call_function target (``F.gelu``, ``aten.gelu.default``...)."""
    if isinstance(fn, torch._ops.OpOverload):
        return f"aten.{fn.__name__}" if fn.namespace == "aten" else str(fn)
    mod = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__name__", None) or repr(fn)
    if mod in ("_operator", "operator"):
        return f"operator.{name}"
    if mod.startswith("torch.nn.functional") or mod == "torch._C._nn":
        return f"F.{name}"
    if mod.startswith("torch"):
        return f"torch.{name}"
    return f"{mod}.{name}" if mod else name


def _method_caller(meth):
    """A function calling tensor method ``meth`` on its first argument (named ``.meth()`` in messages)."""
    def call(obj, *args, **kwargs):
        """``obj.meth(*args, **kwargs)``."""
        return getattr(obj, meth)(*args, **kwargs)

    call.__name__ = f".{meth}()"
    call.__module__ = ""
    return call


#: tensor attributes a forward may read (besides .shape): x.dtype / x.device for constants it creates
_TENSOR_FACTS = {"dtype": lambda shape: torch.float64, "device": lambda shape: torch.device("cpu"),
                 "ndim": lambda shape: len(shape)}


def _pair(v) -> tuple:
    """An int or a sequence as a pair of ints."""
    if isinstance(v, (int, np.integer)):
        return (int(v), int(v))
    v = tuple(int(t) for t in v)
    return v * 2 if len(v) == 1 else v


def _bind(args, kwargs, names, defaults=None) -> dict:
    """Positional and keyword arguments by name (``input`` / ``self`` alias the first name)."""
    v = dict(defaults or {})
    v.update(zip(names, args))
    for k, val in kwargs.items():
        v[names[0] if k in ("input", "self") else k] = val
    return v


_RANDOM = {torch.rand, torch.randn, torch.randint, torch.rand_like, torch.randn_like, torch.randint_like,
           torch.normal, torch.bernoulli, torch.multinomial, torch.randperm}

#: elementwise primitives that are never an operation alone (parts of activation patterns)
_UNARY_EXPR = {
    torch.erf: (torch.erf, "erf"), torch.special.erf: (torch.erf, "erf"), torch.exp: (torch.exp, "exp"),
    torch.log: (torch.log, "log"), torch.log1p: (torch.log1p, "log1p"), torch.sqrt: (torch.sqrt, "sqrt"),
    torch.reciprocal: (torch.reciprocal, "reciprocal"), torch.square: (torch.square, "square"),
    torch.expm1: (torch.expm1, "expm1"), torch.rsqrt: (torch.rsqrt, "rsqrt"),
    aten.erf.default: (torch.erf, "erf"), aten.exp.default: (torch.exp, "exp"), aten.log.default: (torch.log, "log"),
    aten.log1p.default: (torch.log1p, "log1p"), aten.sqrt.default: (torch.sqrt, "sqrt"),
    aten.reciprocal.default: (torch.reciprocal, "reciprocal"), aten.square.default: (torch.square, "square"),
    aten.expm1.default: (torch.expm1, "expm1"), aten.rsqrt.default: (torch.rsqrt, "rsqrt"),
    "erf": (torch.erf, "erf"), "exp": (torch.exp, "exp"), "log": (torch.log, "log"), "log1p": (torch.log1p, "log1p"),
    "sqrt": (torch.sqrt, "sqrt"), "reciprocal": (torch.reciprocal, "reciprocal"), "square": (torch.square, "square"),
    "expm1": (torch.expm1, "expm1"), "rsqrt": (torch.rsqrt, "rsqrt"),
}


class _Converter:
    """Walks an fx graph (a symbolic trace or a torch.export graph) and builds the network.

    ``placeholders`` (torch.export): placeholder name -> value (lifted parameters), with the user input
    named by ``input_name``; without it the first placeholder is the input and the others take their
    default values. ``output_position``: which element of the output tuple is the network output."""

    def __init__(self, gm, input_shape, name, placeholders=None, input_name=None, output_position=None):
        """See the class docstring."""
        self.gm = gm
        self.name = name
        self.builder = GraphBuilder(input_shape, input_name="input")
        self.values = {}
        self.used = {"input"}
        self.placeholders = placeholders
        self.input_name = input_name
        self.output_position = output_position
        self.expr_cache = {}

    # -- helpers ----------------------------------------------------------------------------------
    def err(self, msg, cls=LipboundError):
        """Raise ``cls`` with a one-line message."""
        raise cls(_one_line(msg))

    def add(self, op, inputs, name) -> _Live:
        """Add a node (inputs: `_Live` or indices) under a unique name."""
        inputs = [i.idx if isinstance(i, _Live) else i for i in inputs]
        return _Live(self.builder.add(op, inputs, name=self.unique(name)))

    def unique(self, name) -> str:
        """``name`` made unique among the network's node names."""
        return builders.unique_name(name, self.used)

    def add_idx(self, op, inputs, name) -> int:
        """`add` returning the node index (the callback of `lipbound.io.patterns`)."""
        return self.add(op, inputs, name).idx

    def shape(self, idx):
        """The sample shape (batch excluded) of node ``idx``."""
        return self.builder.nodes[idx].shape

    def tshape(self, idx):
        """The torch shape of a live tensor, batch dimension (size 1 here) included."""
        return (1,) + self.shape(idx)

    def resolve(self, arg):
        """The converter's value of an fx argument (recursively in lists, tuples, dicts, slices)."""
        if isinstance(arg, torch.fx.Node):
            return self.values[arg]
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.resolve(a) for a in arg)
        if isinstance(arg, dict):
            return {k: self.resolve(v) for k, v in arg.items()}
        if isinstance(arg, slice):
            return slice(self.resolve(arg.start), self.resolve(arg.stop), self.resolve(arg.step))
        return arg

    @staticmethod
    def _walk(v):
        """Every leaf value of a nested structure (lists, tuples, dicts, slices)."""
        if isinstance(v, (list, tuple)):
            for a in v:
                yield from _Converter._walk(a)
        elif isinstance(v, dict):
            for a in v.values():
                yield from _Converter._walk(a)
        elif isinstance(v, slice):
            yield from (v.start, v.stop, v.step)
        else:
            yield v

    def contains(self, v, types) -> bool:
        """Whether ``v`` (nested) holds a value of one of ``types``."""
        return any(isinstance(a, types) for a in self._walk(v))

    def contains_live(self, v) -> bool:
        """Whether ``v`` holds a tensor computed from the input (live, pending expression or selection)."""
        return self.contains(v, (_Live, Expr, Selection))

    def contains_batch(self, v) -> bool:
        """Whether ``v`` (nested) holds the symbolic batch size."""
        return any(a is BATCH for a in self._walk(v))

    def unsupported(self, what, label, why=""):
        """Raise `UnsupportedOperator` for ``what`` at fx node ``label``."""
        extra = f": {why}" if why else ""
        self.err(f"unsupported torch operation {what} (node {label!r}){extra}; supported modules: "
                 f"{', '.join(SUPPORTED_MODULES)} (and their functional forms), +-*/ by constants, residual +",
                 UnsupportedOperator)

    def constant(self, v, label, what="constant"):
        """A constant operand as a float64 numpy array, checked finite."""
        if isinstance(v, torch.Tensor):
            arr = v.detach().to(torch.float64).cpu().numpy().copy()
        elif isinstance(v, (int, float, bool, np.ndarray, np.number)) and v is not BATCH:
            arr = np.asarray(v, dtype=np.float64)
        else:
            self.err(f"node {label!r}: {what} of type {type(v).__name__} is not supported", UnsupportedOperator)
        if not np.all(np.isfinite(arr)):
            self.err(f"non-finite (NaN or infinite) {what} in node {label!r}")
        return arr

    @staticmethod
    def param(t):
        """A float64 copy of a parameter tensor (None stays None)."""
        return None if t is None else t.detach().to(torch.float64).cpu().clone()

    # -- pending values ---------------------------------------------------------------------------
    def materialize(self, v, label):
        """``v`` with every pending expression / selection turned into a network node (recursively)."""
        if isinstance(v, Expr):
            return _Live(patterns.materialize_expr(v, self.builder.nodes, self.add_idx, label, self.expr_cache))
        if isinstance(v, Selection):
            return _Live(patterns.materialize_selection(v, self.builder.nodes, self.add_idx, label))
        if isinstance(v, _Opaque):
            self.unsupported(f"use of {v.what}", label)
        if isinstance(v, _Results):
            return _Results(self.materialize(a, label) for a in v)
        if isinstance(v, (list, tuple)):
            return type(v)(self.materialize(a, label) for a in v)
        if isinstance(v, dict):
            return {k: self.materialize(a, label) for k, a in v.items()}
        return v

    def as_expr(self, v, label) -> Expr:
        """A live tensor or pending expression as an `Expr` (selections are materialised first)."""
        if isinstance(v, Selection):
            v = self.materialize(v, label)
        if isinstance(v, _Live):
            return Expr.leaf(v.idx, self.shape(v.idx))
        return v

    def as_selection(self, v, label) -> Selection:
        """A live tensor (or selection) as a `Selection` of the tensor it reshapes."""
        if isinstance(v, Expr):
            v = self.materialize(v, label)
        if isinstance(v, _Live):
            return Selection.of_node(v.idx, self.builder.nodes, True, label)
        return v

    def expr_apply(self, fn, name, operands, label, blocker=None):
        """Extend a pending expression; a non-scalar constant ends it (materialised) -> None."""
        try:
            return Expr.apply(fn, name, [self.as_expr(o, label) if self.contains_live(o) else o for o in operands],
                              blocker)
        except LipboundError:
            return None

    # -- driver -----------------------------------------------------------------------------------
    def run(self) -> Network:
        """Convert every fx node, then keep the ancestors of the output."""
        out_idx = None
        placeholders = 0
        for node in self.gm.graph.nodes:
            label = str(node.target) if node.op == "call_module" else node.name
            if node.op == "placeholder":
                placeholders += 1
                self.values[node] = self.placeholder(node, placeholders)
            elif node.op == "get_attr":
                obj = self.gm
                for part in str(node.target).split("."):
                    obj = getattr(obj, part)
                self.values[node] = obj
            elif node.op in ("call_module", "call_function", "call_method"):
                try:
                    self.values[node] = v = getattr(self, node.op)(node, label)
                    for p in v if isinstance(v, _Results) else (v,):
                        if isinstance(p, (Expr, Selection)) and p.label is None:
                            p.label = label
                except LipboundError as e:
                    if label in str(e):
                        raise
                    raise type(e)(_one_line(f"node {label!r}: {e}")) from None
            elif node.op == "output":
                out_idx = self.output(node)
        if out_idx is None:
            self.err("the traced module has no output")
        from .onnx_reader import _prune

        return _prune(self.builder.nodes, out_idx, self.name, None)

    def placeholder(self, node, count):
        """The value of a placeholder: the input, a lifted parameter or a default argument."""
        if self.placeholders is not None:
            if node.name == self.input_name:
                return _Live(0)
            if node.name not in self.placeholders:
                self.err(f"the program's input {node.name!r} has no value (not a parameter, buffer or constant)")
            return self.placeholders[node.name]
        if count == 1:
            return _Live(0)
        if node.args:  # an argument with a default value
            return node.args[0]
        self.err(f"the module's forward takes several tensor inputs ({node.name!r} is the {count}th); lipbound "
                 "reads networks with one input")

    def output(self, node) -> int:
        """The node index of the network output."""
        out = self.resolve(node.args[0])
        if self.output_position is not None:
            out = out[self.output_position]
        out = self.materialize(out, "output")
        if not isinstance(out, _Live):
            if self.contains_live(out):
                self.err("the module returns several tensors; lipbound reads networks with one output")
            self.err("the module's output does not depend on its input")
        return out.idx

    # -- dispatch ---------------------------------------------------------------------------------
    def call_module(self, node, label):
        """An ``nn.Module`` call: activation table, then ``MODULE_HANDLERS``."""
        mod = self.gm.get_submodule(str(node.target))
        args = self.resolve(node.args)
        kwargs = self.resolve(node.kwargs)
        if len(args) != 1 or kwargs:
            self.unsupported(f"module {type(mod).__name__} called with {len(args)} arguments", label)
        x = args[0]
        if not self.contains_live(x):
            self.unsupported(f"module {type(mod).__name__} applied to a constant", label)
        spec = MODULE_ACTIVATIONS.get(type(mod))
        if spec is not None:
            return self.activation(x, spec, spec.bind_module(mod), label, f"module {type(mod).__name__}")
        handler = MODULE_HANDLERS.get(type(mod))
        if handler is None:
            self.unsupported(f"module {type(mod).__name__}", label)
        return handler(self, self.materialize(x, label), mod, label)

    def call_function(self, node, label):
        """A function / aten operator call: getattr / getitem, constants, activation table, handlers."""
        fn = node.target
        args = self.resolve(node.args)
        kwargs = self.resolve(node.kwargs)
        if fn is getattr:
            return self.get_attribute(args[0], args[1], label)
        if fn is operator.getitem:
            return self.get_item(args[0], args[1], label)
        if not self.contains_live(args) and not self.contains_live(kwargs):
            return self.constant_call(fn, args, kwargs, label)
        return self.call_live(FUNCTION_ACTIVATIONS.get(fn), FUNCTION_HANDLERS.get(fn), fn, args, kwargs, label,
                              f"function {_fname(fn)}")

    def call_method(self, node, label):
        """A tensor method call (the tensor is the first argument)."""
        meth = str(node.target)
        args = self.resolve(node.args)
        kwargs = self.resolve(node.kwargs)
        if not self.contains_live(args[:1]):
            if self.contains_live(args[1:]) or self.contains_live(kwargs):
                return self.constant_method_on_live(meth, args, kwargs, label)
            return self.constant_call(_method_caller(meth), args, kwargs, label)
        return self.call_live(METHOD_ACTIVATIONS.get(meth), METHOD_HANDLERS.get(meth), _method_caller(meth), args,
                              kwargs, label, f"tensor method .{meth}()")

    def call_live(self, spec, handler, fn, args, kwargs, label, what):
        """A call ``fn(*args, **kwargs)`` on live values, named ``what`` in messages: the activation
        ``spec`` from a table, else the operator ``handler`` (through `dispatch`); unsupported with neither."""
        if spec is not None:
            return self.call_activation(spec, args, kwargs, label, what)
        if handler is None:
            self.unsupported(what, label)
        return self.dispatch(handler, fn, args, kwargs, label)

    def dispatch(self, handler, fn, args, kwargs, label):
        """Run a handler: index operations on selections are applied to their positions; pending values
        reach only the handlers that extend them and are materialised for every other one."""
        if handler in _INDEX_HANDLERS and self.contains(args, Selection):
            return self.selection_map(fn, args, kwargs, label)
        if handler not in _SELECTION_HANDLERS:
            args = self.materialize(args, label) if handler not in _EXPR_HANDLERS else self.materialize_selections(
                args, label)
            kwargs = self.materialize(kwargs, label)
        return handler(self, fn, args, kwargs, label)

    def materialize_selections(self, v, label):
        """Materialise the selections (not the expressions) in ``v``."""
        if isinstance(v, Selection) or isinstance(v, _Opaque):
            return self.materialize(v, label)
        if isinstance(v, (list, tuple)) and not isinstance(v, _Results):
            return type(v)(self.materialize_selections(a, label) for a in v)
        return v

    def constant_call(self, fn, args, kwargs, label, what=None):
        """Evaluate a call whose arguments do not depend on the input (shape arithmetic, constants)."""
        what = what or _fname(fn)
        if self.contains((args, kwargs), _Opaque):
            self.unsupported(f"{what} of {next(a for a in self._walk((args, kwargs)) if isinstance(a, _Opaque)).what}",
                             label)
        if self.contains_batch(args) or self.contains_batch(kwargs):
            if fn is operator.add and all(isinstance(a, (tuple, list, torch.Size)) for a in args):
                return tuple(args[0]) + tuple(args[1])  # shape tuples: x.shape[:1] + (c, 2)
            self.unsupported(f"{what} on the batch size", label)
        if fn in _RANDOM:
            self.unsupported(f"random function {what}", label)
        if fn in _IGNORED:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            self.err(f"node {label!r}: cannot evaluate constant expression {what}: {e}")

    def constant_method_on_live(self, meth, args, kwargs, label):
        """``c.add(x)`` and friends: a method of a constant applied to the network's tensor."""
        obj, rest = args[0], args[1:]
        other = rest[0] if rest else kwargs.get("other")
        if meth == "add":
            return self.add_op(obj, other, label, alpha=kwargs.get("alpha", 1.0))
        if meth == "sub":
            return self.add_op(obj, other, label, alpha=kwargs.get("alpha", 1.0), sign=-1.0)
        if meth == "mul":
            return self.mul_op(obj, other, label)
        if meth == "div":
            return self.div_op(obj, other, label)
        self.unsupported(f"method .{meth}() of a constant applied to the network's tensor", label)

    def get_attribute(self, obj, attr, label):
        """``getattr(x, attr)``: shapes of tensors, fields of (values, indices) results."""
        if isinstance(obj, (_Live, Expr, Selection)):
            if attr == "shape":
                return self.size_of(obj)
            if attr in _TENSOR_FACTS:
                return _TENSOR_FACTS[attr](self.size_of(obj))
            self.unsupported(f"tensor attribute .{attr}", label)
        return getattr(obj, attr)

    def get_item(self, obj, idx, label):
        """``obj[idx]``: tuples (constants, split results) or a slice of a tensor (a selection)."""
        if isinstance(obj, (_Live, Selection, Expr)):
            items = idx if isinstance(idx, tuple) else (idx,)
            if not all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in items) or \
                    self.contains_live(items) or self.contains_batch(items):
                self.unsupported("indexing a tensor with tensors / lists", label)
            return self.selection_map(operator.getitem, (obj, idx), {}, label)
        return obj[idx]

    def size_of(self, x, dim=None):
        """``x.shape`` / ``x.size(dim)`` with the symbolic batch size first."""
        if isinstance(x, _Live):
            sample = self.shape(x.idx)
        elif isinstance(x, Expr):
            sample = x.shape
        else:
            sample = x.sample_shape
        full = (BATCH,) + tuple(sample)
        return full if dim is None else full[int(dim)]

    # -- activations ------------------------------------------------------------------------------
    def call_activation(self, spec: ActSpec, args, kwargs, label, what):
        """An activation from a function / method table: bind its arguments, then `activation`."""
        try:
            bound = spec.bind_call(tuple(args[1:]), {k: v for k, v in kwargs.items() if k not in ("input", "self")})
        except ValueError as e:
            self.unsupported(what, label, str(e))
        x = args[0] if args else kwargs.get("input", kwargs.get("self"))
        if self.contains_live(bound):
            self.unsupported(what, label, "a parameter computed from the input")
        return self.activation(x, spec, bound, label, what)

    def activation(self, x, spec: ActSpec, bound, label, what):
        """``Activation(name, param)`` on a live tensor, or the activation appended to a pending expression."""
        try:
            name, param = spec.resolve(bound)
        except ValueError as e:
            self.unsupported(what, label, str(e))
        act = make_activation(name, param)
        if isinstance(x, Expr):
            return Expr.apply(act.forward, name, [x])
        x = self.materialize(x, label)
        return self.add(act, [self.need_live(x, label)], label)

    def need_live(self, v, label, what="input"):
        """The node index of a live tensor (anything else is an error)."""
        if not isinstance(v, _Live):
            self.err(f"node {label!r}: the {what} must be a tensor computed from the network input")
        return v.idx

    # -- elementwise arithmetic -------------------------------------------------------------------
    def align_const(self, c, x, label):
        """A constant operand broadcast against the sample shape of node ``x`` (batch dimension dropped)."""
        tshape = self.tshape(x)
        if c.ndim > len(tshape):
            self.err(f"node {label!r}: a constant of shape {list(c.shape)} has more dimensions than the tensor "
                     f"{['B', *self.shape(x)]}")
        if c.ndim == len(tshape):
            if c.shape[0] != 1:
                self.err(f"node {label!r}: a constant of shape {list(c.shape)} varies along the batch dimension")
            c = c[0]
        try:
            full = np.broadcast_shapes(self.shape(x), c.shape)
        except ValueError:
            full = None
        if full != tuple(self.shape(x)):
            self.err(f"node {label!r}: a constant of shape {list(c.shape)} does not broadcast to the tensor shape "
                     f"{list(self.shape(x))} (batch excluded)")
        return c

    def affine(self, x, scale, shift, label, kind):
        """An ElementwiseAffine node x * scale + shift labelled ``kind``."""
        return self.add(ElementwiseAffine(scale, shift, label=kind), [x], label)

    def add_op(self, a, b, label, alpha=1.0, sign=1.0):
        """a + sign * alpha * b: a residual Add, an affine shift, or an extended expression."""
        k = sign * float(alpha)
        if isinstance(a, Expr) or isinstance(b, Expr):
            e = self.expr_apply(lambda u, v: u + k * v, "add" if k > 0 else "sub", [a, b], label)
            if e is not None:
                return e
            a, b = self.materialize(a, label), self.materialize(b, label)
        if isinstance(a, _Live) and isinstance(b, _Live):
            if self.shape(a.idx) != self.shape(b.idx):
                self.err(f"node {label!r}: adding tensors of different shapes {list(self.shape(a.idx))} and "
                         f"{list(self.shape(b.idx))} (broadcasting between two network tensors) is not supported")
            y = b.idx
            if k != 1.0:
                s = self.shape(y)
                y = self.add(ElementwiseAffine(np.full(s, k), np.zeros(s), label="Neg" if k == -1 else "Mul"), [y],
                             label + "/scale")
            return self.add(Add(), [a.idx, y], label)
        if isinstance(a, _Live):
            c = self.align_const(self.constant(b, label), a.idx, label)
            return self.affine(a.idx, np.ones_like(c), k * c + 0.0, label, "Add" if k > 0 else "Sub")
        c = self.align_const(self.constant(a, label), b.idx, label)
        return self.affine(b.idx, np.full_like(c, k), c, label, "Add" if k > 0 else "Sub")

    def mul_op(self, a, b, label):
        """a * b: a scale by a constant, or a pending expression (a product of two tensors)."""
        if self.contains_live(a) and self.contains_live(b) or isinstance(a, Expr) or isinstance(b, Expr):
            blocker = (f"node {label!r} multiplies two tensors that depend on the input (non-constant multiplier): "
                       "not an affine map, not supported", UnsupportedOperator)
            e = self.expr_apply(torch.mul, "mul", [a, b], label, blocker)
            if e is not None:
                return e
            if self.contains_live(a) and self.contains_live(b):
                self.err(blocker[0], UnsupportedOperator)
            a, b = self.materialize(a, label), self.materialize(b, label)
        x, c = (a, b) if isinstance(a, _Live) else (b, a)
        c = self.align_const(self.constant(c, label, "multiplier"), x.idx, label)
        return self.affine(x.idx, c, np.zeros_like(c), label, "Mul")

    def div_op(self, a, b, label, rounding_mode=None):
        """a / b: a scale by a constant, or a pending expression (division by a tensor)."""
        if rounding_mode is not None:
            self.unsupported(f"division with rounding_mode={rounding_mode!r}", label)
        if self.contains_live(b) or isinstance(a, Expr):
            blocker = (f"node {label!r} divides by a tensor that depends on the input (non-constant divisor): "
                       "not supported", UnsupportedOperator)
            e = self.expr_apply(torch.div, "div", [a, b], label, blocker if self.contains_live(b) else None)
            if e is not None:
                return e
            if self.contains_live(b):
                self.err(blocker[0], UnsupportedOperator)
            a = self.materialize(a, label)
        c = self.align_const(self.constant(b, label, "divisor"), a.idx, label)
        if np.any(c == 0):
            self.err(f"node {label!r} divides by a constant that contains zeros")
        return self.affine(a.idx, 1.0 / c, np.zeros_like(c), label, "Div")

    def unary_expr(self, x, fn, name, label, what):
        """A primitive that is only ever part of a pattern (erf, exp, pow...): a pending expression."""
        blocker = (f"unsupported torch operation {what} (node {label!r})", UnsupportedOperator)
        return Expr.apply(fn, name, [self.as_expr(x, label)], blocker)

    # -- shapes -----------------------------------------------------------------------------------
    def reshape_op(self, x, shape, label):
        """A Reshape to ``shape`` (batch size first: batch, 1 or -1)."""
        x = self.need_live(x, label)
        if len(shape) == 1 and isinstance(shape[0], (list, tuple, torch.Size)):
            shape = tuple(shape[0])
        shape = list(shape)
        if not shape:
            self.err(f"node {label!r}: reshape to a scalar removes the batch dimension", UnsupportedOperator)
        numel = int(np.prod(self.shape(x)))
        first, rest = shape[0], shape[1:]
        if any(s is BATCH for s in rest) or any(not isinstance(s, (int, np.integer)) for s in rest):
            self.err(f"node {label!r}: reshape target {shape} is not a list of integers with the batch size first",
                     UnsupportedOperator)
        rest = [int(s) for s in rest]
        if first is BATCH or first == 1:
            if rest.count(-1) > 1:
                self.err(f"node {label!r}: more than one -1 in reshape target {shape}")
            if -1 in rest:
                known = int(np.prod([s for s in rest if s != -1]))
                if known == 0 or numel % known:
                    self.err(f"node {label!r}: cannot reshape {list(self.shape(x))} to {shape}")
                rest[rest.index(-1)] = numel // known
        elif first == -1:
            if -1 in rest:
                self.err(f"node {label!r}: reshape target {shape} leaves the batch size undetermined",
                         UnsupportedOperator)
        else:
            self.err(f"node {label!r}: reshape target {shape} does not keep the batch dimension first "
                     "(use x.view(x.size(0), ...) or -1 for the batch)", UnsupportedOperator)
        if int(np.prod(rest)) != numel:
            self.err(f"node {label!r}: cannot reshape a sample of shape {list(self.shape(x))} to {rest}")
        return self.add(Reshape(tuple(rest)), [x], label)

    def flatten_op(self, x, start_dim, end_dim, label):
        """Flatten dimensions start_dim..end_dim (never the batch dimension)."""
        x = self.need_live(x, label)
        ts = self.tshape(x)
        r = len(ts)
        s = start_dim + r if start_dim < 0 else start_dim
        e = end_dim + r if end_dim < 0 else end_dim
        if s == 0:
            self.err(f"node {label!r}: flatten with start_dim=0 merges the batch dimension (use start_dim=1)",
                     UnsupportedOperator)
        if not 0 < s <= e < r:
            self.err(f"node {label!r}: flatten dims ({start_dim}, {end_dim}) out of range for rank {r}")
        new = ts[1:s] + (int(np.prod(ts[s:e + 1])),) + ts[e + 1:]
        return self.add(Reshape(tuple(new)), [x], label)

    def transpose_perm(self, x, perm, label):
        """A permutation of the dimensions that keeps the batch dimension first."""
        x = self.need_live(x, label)
        r = len(self.tshape(x))
        perm = [int(p) + r if int(p) < 0 else int(p) for p in perm]
        if sorted(perm) != list(range(r)):
            self.err(f"node {label!r}: {perm} is not a permutation of {r} dimensions")
        if perm[0] != 0:
            self.unsupported("a permutation that moves the batch dimension", label)
        return self.add(Transpose(tuple(p - 1 for p in perm[1:])), [x], label)

    def squeeze_op(self, x, dims, label, insert):
        """(Un)squeeze the given dimensions (never the batch dimension) as a Reshape."""
        x = self.need_live(x, label)
        ts = list(self.tshape(x))
        what = "unsqueeze" if insert else "squeeze"
        if dims is None:
            if insert:
                self.unsupported(".unsqueeze() without a dim", label)
            dims = [i for i in range(1, len(ts)) if ts[i] == 1]
        dims = [dims] if isinstance(dims, (int, np.integer)) else list(dims)
        if insert:
            for d in sorted(int(d) + len(ts) + 1 if d < 0 else int(d) for d in dims):
                if d == 0:
                    self.unsupported(f".{what}(0) on the batch dimension", label)
                ts.insert(d, 1)
        else:
            drop = {int(d) + len(ts) if d < 0 else int(d) for d in dims}
            if 0 in drop:
                self.unsupported(f".{what}(0) on the batch dimension", label)
            ts = [s for i, s in enumerate(ts) if i not in drop or s != 1]
        return self.add(Reshape(tuple(ts[1:])), [x], label)

    def selection_map(self, fn, args, kwargs, label):
        """Apply an index operation (slice, split, cat, reshape...) to the positions of selections."""
        sels = [a for a in self._walk((args, kwargs)) if isinstance(a, (Selection, _Live, Expr))]
        sels = [self.as_selection(s, label) for s in sels]
        patterns.same_root(sels, _fname(fn), label)
        it = iter(sels)
        swap = {}

        def subst(v, k):
            """``v`` with selections replaced by their ``k``-th index tensor and the batch size by 1."""
            if isinstance(v, (Selection, _Live, Expr)):
                if id(v) not in swap:
                    swap[id(v)] = next(it)
                return swap[id(v)].components()[k]
            if v is BATCH:
                return 1
            if isinstance(v, (list, tuple)) and not isinstance(v, torch.Size):
                return type(v)(subst(a, k) for a in v)
            if isinstance(v, dict):
                return {kk: subst(a, k) for kk, a in v.items()}
            return v

        outs = []
        for k in range(3):
            try:
                outs.append(fn(*subst(tuple(args), k), **subst(dict(kwargs), k)))
            except Exception as e:
                self.err(f"node {label!r}: cannot apply {_fname(fn)} to the tensor: {type(e).__name__}: {e}")
        base = sels[0]
        return self._assemble(base, outs, label)

    def _assemble(self, base, outs, label):
        """A selection (or a tuple of them) from the index tensors computed for its three components."""
        if isinstance(outs[0], torch.Tensor):
            if outs[0].ndim == 0 or outs[0].shape[0] != 1:
                self.unsupported("an index operation that changes the batch dimension", label)
            return base.with_components(*outs, origin=base.origin if not base.is_plain() else label)
        if isinstance(outs[0], (list, tuple)):
            return tuple(self._assemble(base, parts, label) for parts in zip(*outs))
        self.unsupported("an index operation with a non-tensor result", label)

    # -- layers -----------------------------------------------------------------------------------
    def linear_op(self, x, W, b, label):
        """y = W x + b on the last dimension (a sample with one row)."""
        x = self.need_live(x, label)
        s = self.shape(x)
        W = self.param(W)
        k = W.shape[1]
        if not s or s[-1] != k:
            self.err(f"node {label!r}: a Linear layer with {k} inputs cannot take a sample of shape {list(s)} "
                     "(input_shape excludes the batch dimension)")
        if len(s) == 1:
            return self.add(Linear(W, self.param(b)), [x], label)
        if int(np.prod(s[:-1])) != 1:
            self.err(f"node {label!r}: a Linear layer on a sample of shape {list(s)} (several rows) is not "
                     "supported; flatten first", UnsupportedOperator)
        r = self.add(Reshape((k,)), [x], label + "/in")
        r = self.add(Linear(W, self.param(b)), [r], label)
        return self.add(Reshape(tuple(s[:-1]) + (W.shape[0],)), [r], label + "/out")

    def spatial(self, x, label, what):
        """The index of a live (C, H, W) tensor (a 4-D torch tensor with its batch dimension)."""
        x = self.need_live(x, label)
        if len(self.shape(x)) != 3:
            self.err(f"node {label!r}: {what} needs (N, C, H, W) tensors, got a sample of shape "
                     f"{list(self.shape(x))} (input_shape excludes the batch dimension)", UnsupportedOperator)
        return x

    def conv_op(self, x, weight, bias, stride, padding, dilation, groups, label):
        """A 2-D convolution (zero padding; 'same' padding with an uneven total gets a Pad node)."""
        x = self.spatial(x, label, "conv2d")
        weight = self.param(weight)
        if weight.ndim != 4:
            self.unsupported("a non-2-D convolution", label)
        stride, dilation = _pair(stride), _pair(dilation)
        kernel = tuple(weight.shape[2:])
        if isinstance(padding, str):
            if padding == "valid":
                padding = (0, 0)
            elif padding == "same":
                lo, hi = [], []
                for k, d in zip(kernel, dilation):
                    total = d * (k - 1)
                    lo.append(total // 2), hi.append(total - total // 2)
                if lo != hi:
                    p = self.add(Pad((lo[1], hi[1], lo[0], hi[0])), [x], label + "/pad")
                    return self.add(Conv2d(weight, self.param(bias), stride, (0, 0), dilation, groups), [p], label)
                padding = tuple(lo)
            else:
                self.err(f"node {label!r}: conv padding {padding!r} is not supported", UnsupportedOperator)
        return self.add(Conv2d(weight, self.param(bias), stride, _pair(padding), dilation, int(groups)), [x], label)

    def batchnorm_op(self, x, weight, bias, mean, var, eps, label, what="batch_norm"):
        """Batch normalisation with running statistics: an ElementwiseAffine labelled BatchNorm."""
        x = self.need_live(x, label)
        if mean is None or var is None:
            self.err(f"node {label!r}: {what} without running statistics (track_running_stats=False) normalises "
                     "with batch statistics: not supported", UnsupportedOperator)
        s = self.shape(x)
        mean, var = self.param(mean).numpy().reshape(-1), self.param(var).numpy().reshape(-1)
        C = mean.size
        if len(s) not in (1, 2, 3) or s[0] != C:
            self.err(f"node {label!r}: {what} over {C} channels cannot take a sample of shape {list(s)}")
        gamma = self.param(weight).numpy().reshape(-1) if weight is not None else np.ones(C)
        beta = self.param(bias).numpy().reshape(-1) if bias is not None else np.zeros(C)
        scale = gamma / np.sqrt(var + float(eps))
        shift = beta - mean * scale
        bshape = (C,) + (1,) * (len(s) - 1)
        return self.add(ElementwiseAffine(scale.reshape(bshape), shift.reshape(bshape), label="BatchNorm"), [x], label)

    def avgpool_op(self, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override, label):
        """Average pooling."""
        x = self.spatial(x, label, "avg_pool2d")
        if divisor_override is not None:
            self.unsupported("avg_pool2d with divisor_override", label)
        kernel = _pair(kernel)
        stride = _pair(stride) if stride not in (None, [], ()) else kernel
        return self.add(AvgPool2d(kernel, stride, _pair(padding), bool(count_include_pad), bool(ceil_mode)), [x], label)

    def maxpool_op(self, x, kernel, stride, padding, dilation, ceil_mode, return_indices, label):
        """Max pooling (a (values, indices) pair when asked for the indices, which must stay unused)."""
        x = self.spatial(x, label, "max_pool2d")
        kernel = _pair(kernel)
        stride = _pair(stride) if stride not in (None, [], ()) else kernel
        y = self.add(MaxPool2d(kernel, stride, _pair(padding), _pair(dilation), bool(ceil_mode)), [x], label)
        return _Results((y, _Opaque("max-pooling indices"))) if return_indices else y

    def adaptive_pool_op(self, x, output_size, label, kind="avg"):
        """Adaptive pooling: a plain pooling when the sizes divide, else `AdaptiveAvgPool2d` (average only)."""
        x = self.spatial(x, label, f"adaptive_{kind}_pool2d")
        return _Live(builders.adaptive_pool_nodes(self.add_idx, x, self.shape(x), output_size, label, self.err, kind))

    def mean_op(self, x, dims, keepdim, label):
        """The mean over adjacent non-batch dimensions: average pooling (then a reshape)."""
        x = self.need_live(x, label)
        r = len(self.shape(x)) + 1
        if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
            self.unsupported("a mean over every dimension (the batch included)", label)
        dims = [dims] if isinstance(dims, (int, np.integer)) else list(dims)
        dims = sorted({int(d) + r if int(d) < 0 else int(d) for d in dims})
        if dims[0] == 0:
            self.unsupported("a mean over the batch dimension", label)
        return _Live(builders.mean_nodes(self.add_idx, x, self.shape(x), [d - 1 for d in dims], keepdim, label,
                                         self.err))

    def pad_op(self, x, pads, value, label, mode="constant"):
        """Constant padding (F.pad order: last dimension first)."""
        x = self.need_live(x, label)
        if mode != "constant":
            self.unsupported(f"padding mode {mode!r}", label)
        pads = tuple(int(p) for p in pads)
        if len(pads) % 2 or len(pads) // 2 > len(self.shape(x)):
            self.err(f"node {label!r}: pads {list(pads)} do not fit a sample of shape {list(self.shape(x))}")
        if min(pads, default=0) < 0:
            self.unsupported("negative padding (cropping)", label)
        value = 0.0 if value is None else float(value)
        if not math.isfinite(value):
            self.err(f"node {label!r}: non-finite (NaN or infinite) pad value")
        return self.add(Pad(pads, value), [x], label)

    def clamp_op(self, x, lo, hi, label):
        """clamp(x, lo, hi) with constant bounds: hardtanh, or a ReLU between affine maps for one bound."""
        if self.contains_live(lo) or self.contains_live(hi) or isinstance(lo, torch.Tensor) and lo.numel() != 1 \
                or isinstance(hi, torch.Tensor) and hi.numel() != 1:
            self.unsupported("clamp with bounds that are tensors", label)
        lo = None if lo is None else float(lo)
        hi = None if hi is None else float(hi)
        x = self.need_live(self.materialize(x, label), label)
        return _Live(builders.clamp_nodes(self.add_idx, x, self.shape(x), lo, hi, label, self.err))

    def extremum_op(self, which, a, b, label):
        """max / min of two tensors: a MaxMin selection, or a shifted ReLU against a scalar constant."""
        if self.contains_live(a) and self.contains_live(b):
            return patterns.extremum(which, self.as_selection(a, label), self.as_selection(b, label), label)
        x, c = (a, b) if self.contains_live(a) else (b, a)
        c = self.constant(c, label)
        if c.size != 1:
            self.unsupported("max/min of a tensor and a non-scalar constant", label)
        lo, hi = (float(c), None) if which == MAX else (None, float(c))
        return self.clamp_op(x, lo, hi, label)


# --------------------------------------------------------------------------------------------------
# handlers: (converter, fn, args, kwargs, label) -> value
# --------------------------------------------------------------------------------------------------

def _first_two(args, kwargs, key="other"):
    """The tensor and the second operand (positional or keyword ``key``)."""
    return args[0], (args[1] if len(args) > 1 else kwargs.get(key))


def h_add(c, fn, args, kwargs, label):
    """a + alpha * b (operator, torch.add, aten.add, .add())."""
    a, b = _first_two(args, kwargs)
    return c.add_op(a, b, label, alpha=kwargs.get("alpha", args[2] if len(args) > 2 else 1.0))


def h_sub(c, fn, args, kwargs, label):
    """a - alpha * b."""
    a, b = _first_two(args, kwargs)
    return c.add_op(a, b, label, alpha=kwargs.get("alpha", args[2] if len(args) > 2 else 1.0), sign=-1.0)


def h_rsub(c, fn, args, kwargs, label):
    """other - alpha * x (aten.rsub)."""
    a, b = _first_two(args, kwargs)
    return c.add_op(b, a, label, alpha=kwargs.get("alpha", args[2] if len(args) > 2 else 1.0), sign=-1.0)


def h_mul(c, fn, args, kwargs, label):
    """a * b."""
    return c.mul_op(*_first_two(args, kwargs), label)


def h_div(c, fn, args, kwargs, label):
    """a / b (no rounding mode)."""
    a, b = _first_two(args, kwargs)
    return c.div_op(a, b, label, kwargs.get("rounding_mode", args[2] if len(args) > 2 else None))


def h_neg(c, fn, args, kwargs, label):
    """-x: an affine node, or a step of a pending expression."""
    x = args[0]
    if isinstance(x, Expr):
        return Expr.apply(torch.neg, "neg", [x])
    x = c.need_live(x, label)
    s = c.shape(x)
    return c.affine(x, -np.ones(s), np.zeros(s), label, "Neg")


def h_pow(c, fn, args, kwargs, label):
    """x ** c with a constant exponent: a pending expression (x ** 1 is x)."""
    x, e = _first_two(args, kwargs, "exponent")
    if c.contains_live(e):
        c.unsupported("a power with an exponent computed from the input", label)
    e = float(c.constant(e, label, "exponent"))
    if e == 1.0:
        return x
    return c.unary_expr(x, lambda t: torch.pow(t, e), f"pow{e:g}", label, f"x ** {e:g}")


def h_unary_expr(c, fn, args, kwargs, label):
    """erf, exp, log... of a tensor: a pending expression."""
    f, name = _UNARY_EXPR[fn]
    return c.unary_expr(args[0], f, name, label, _fname(fn))


def h_flatten(c, fn, args, kwargs, label):
    """torch.flatten / aten.flatten / .flatten()."""
    v = _bind(args, kwargs, ("x", "start_dim", "end_dim"), {"start_dim": 0, "end_dim": -1})
    return c.flatten_op(v["x"], v["start_dim"], v["end_dim"], label)


def h_reshape(c, fn, args, kwargs, label):
    """torch.reshape / .view() / .reshape() / aten.view."""
    shape = args[1:] if len(args) > 1 else (kwargs.get("shape", kwargs.get("size", ())),)
    return c.reshape_op(args[0], shape, label)


def h_permute(c, fn, args, kwargs, label):
    """torch.permute / .permute() / aten.permute."""
    rest = args[1:] if len(args) > 1 else (kwargs.get("dims"),)
    perm = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
    return c.transpose_perm(args[0], perm, label)


def h_transpose(c, fn, args, kwargs, label):
    """torch.transpose / .transpose() / aten.transpose (a permutation of two dimensions)."""
    v = _bind(args, kwargs, ("x", "dim0", "dim1"))
    r = len(c.tshape(c.need_live(v["x"], label)))
    perm = list(range(r))
    d0, d1 = (int(v["dim0"]) + r) % r, (int(v["dim1"]) + r) % r
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return c.transpose_perm(v["x"], perm, label)


def h_unsqueeze(c, fn, args, kwargs, label):
    """torch.unsqueeze / .unsqueeze() / aten.unsqueeze."""
    v = _bind(args, kwargs, ("x", "dim"))
    return c.squeeze_op(v["x"], v.get("dim"), label, insert=True)


def h_squeeze(c, fn, args, kwargs, label):
    """torch.squeeze / .squeeze() / aten.squeeze."""
    v = _bind(args, kwargs, ("x", "dim"), {"dim": None})
    return c.squeeze_op(v["x"], v["dim"], label, insert=False)


def h_identity(c, fn, args, kwargs, label):
    """Operations that do not change a float tensor (clone, contiguous, detach, casts to float types)."""
    dtype = kwargs.get("dtype", args[1] if len(args) > 1 and isinstance(args[1], torch.dtype) else None)
    if dtype is not None and not dtype.is_floating_point:
        c.unsupported(f"a cast of the network's tensor to {dtype}", label)
    return args[0]


def h_ignore(c, fn, args, kwargs, label):
    """Assertions of torch.export programs (no value)."""
    return None


def h_sym_size(c, fn, args, kwargs, label):
    """aten.sym_size.int: a dimension of a tensor (the batch size symbolic)."""
    return c.size_of(args[0], args[1] if len(args) > 1 else kwargs.get("dim"))


def h_size(c, fn, args, kwargs, label):
    """x.size() / x.size(dim)."""
    return c.size_of(args[0], args[1] if len(args) > 1 else kwargs.get("dim"))


def h_dim(c, fn, args, kwargs, label):
    """x.dim(): the rank with the batch dimension."""
    return len(c.size_of(args[0]))


def h_linear(c, fn, args, kwargs, label):
    """F.linear / aten.linear."""
    v = _bind(args, kwargs, ("x", "weight", "bias"), {"bias": None})
    return c.linear_op(v["x"], v["weight"], v["bias"], label)


def h_matmul(c, fn, args, kwargs, label):
    """x @ W with a constant matrix W."""
    a, b = _first_two(args, kwargs)
    if not isinstance(a, _Live) or c.contains_live(b) or not isinstance(b, torch.Tensor) or b.ndim != 2:
        c.unsupported(f"{_fname(fn)} other than (network tensor) @ (constant matrix)", label)
    return c.linear_op(a, b.T, None, label)


def h_addmm(c, fn, args, kwargs, label):
    """beta * bias + alpha * (x @ W) (aten.addmm after decompositions)."""
    v = _bind(args, kwargs, ("bias", "x", "W"), {"beta": 1.0, "alpha": 1.0})
    if not isinstance(v["x"], _Live) or c.contains_live((v["bias"], v["W"])):
        c.unsupported(f"{_fname(fn)} other than bias + (network tensor) @ (constant matrix)", label)
    W = v["W"].detach().to(torch.float64).T * float(v["alpha"])
    out = W.shape[0]
    b = (torch.broadcast_to(torch.as_tensor(v["bias"], dtype=torch.float64), (1, out)).reshape(out)
         * float(v["beta"]))
    return c.linear_op(v["x"], W, b, label)


_CONV_NAMES = ("x", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}


def h_conv2d(c, fn, args, kwargs, label):
    """F.conv2d / torch.conv2d / aten.conv2d."""
    v = _bind(args, kwargs, _CONV_NAMES, _CONV_DEFAULTS)
    return c.conv_op(v["x"], v["weight"], v["bias"], v["stride"], v["padding"], v["dilation"], v["groups"], label)


def h_convolution(c, fn, args, kwargs, label):
    """aten.convolution (after decompositions): 2-D, not transposed."""
    v = _bind(args, kwargs, ("x", "weight", "bias", "stride", "padding", "dilation", "transposed", "output_padding",
                             "groups"))
    if v["transposed"]:
        c.unsupported("a transposed convolution", label)
    return c.conv_op(v["x"], v["weight"], v["bias"], v["stride"], v["padding"], v["dilation"], v["groups"], label)


def h_avg_pool2d(c, fn, args, kwargs, label):
    """F.avg_pool2d / aten.avg_pool2d."""
    v = _bind(args, kwargs, ("x", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                             "divisor_override"),
              {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True, "divisor_override": None})
    return c.avgpool_op(v["x"], v["kernel_size"], v["stride"], v["padding"], v["ceil_mode"], v["count_include_pad"],
                        v["divisor_override"], label)


def h_max_pool2d(c, fn, args, kwargs, label):
    """F.max_pool2d / aten.max_pool2d (with_indices: the indices must stay unused)."""
    v = _bind(args, kwargs, ("x", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
              {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False})
    with_indices = v["return_indices"] or fn is aten.max_pool2d_with_indices.default
    return c.maxpool_op(v["x"], v["kernel_size"], v["stride"], v["padding"], v["dilation"], v["ceil_mode"],
                        with_indices, label)


def h_adaptive_avg_pool2d(c, fn, args, kwargs, label):
    """F.adaptive_avg_pool2d / aten.adaptive_avg_pool2d."""
    v = _bind(args, kwargs, ("x", "output_size"))
    return c.adaptive_pool_op(v["x"], v["output_size"], label, "avg")


def h_adaptive_max_pool2d(c, fn, args, kwargs, label):
    """F.adaptive_max_pool2d / aten.adaptive_max_pool2d (sizes that divide)."""
    v = _bind(args, kwargs, ("x", "output_size", "return_indices"), {"return_indices": False})
    y = c.adaptive_pool_op(v["x"], v["output_size"], label, "max")
    aten_form = fn is getattr(aten.adaptive_max_pool2d, "default", None)
    return _Results((y, _Opaque("max-pooling indices"))) if v["return_indices"] or aten_form else y


def h_mean(c, fn, args, kwargs, label):
    """torch.mean / .mean() / aten.mean.dim over adjacent non-batch dimensions."""
    v = _bind(args, kwargs, ("x", "dim", "keepdim"), {"dim": None, "keepdim": False})
    if v.get("dtype") is not None and not v["dtype"].is_floating_point:
        c.unsupported(f"a mean with dtype={v['dtype']}", label)
    return c.mean_op(v["x"], v["dim"], bool(v["keepdim"]), label)


def h_pad(c, fn, args, kwargs, label):
    """F.pad / aten.constant_pad_nd / aten.pad (constant mode)."""
    v = _bind(args, kwargs, ("x", "pad", "mode", "value"), {"mode": "constant", "value": None})
    return c.pad_op(v["x"], v["pad"], v["value"], label, v["mode"] or "constant")


def h_dropout(c, fn, args, kwargs, label):
    """Dropout in inference mode: the input itself."""
    names = ("x", "p", "train") if isinstance(fn, torch._ops.OpOverload) else ("x", "p", "training")
    v = _bind(args, kwargs, names, {names[2]: True})
    if v[names[2]]:
        c.unsupported(f"{_fname(fn)} with training=True (random)", label)
    return v["x"]


def h_batch_norm(c, fn, args, kwargs, label):
    """F.batch_norm (input, running_mean, running_var, weight, bias, training, momentum, eps)."""
    v = _bind(args, kwargs, ("x", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"),
              {"weight": None, "bias": None, "training": False, "momentum": 0.1, "eps": 1e-5})
    if v["training"]:
        c.unsupported("batch_norm with training=True (batch statistics)", label)
    return c.batchnorm_op(v["x"], v["weight"], v["bias"], v["running_mean"], v["running_var"], v["eps"], label)


def h_aten_batch_norm(c, fn, args, kwargs, label):
    """aten.batch_norm / native_batch_norm / _native_batch_norm_legit_no_training (weight before the stats)."""
    if fn is aten._native_batch_norm_legit_no_training.default:
        v = _bind(args, kwargs, ("x", "weight", "bias", "running_mean", "running_var", "momentum", "eps"))
        v["training"] = False
    else:
        v = _bind(args, kwargs, ("x", "weight", "bias", "running_mean", "running_var", "training", "momentum", "eps"))
    if v["training"]:
        c.unsupported(f"{_fname(fn)} with training=True (batch statistics)", label)
    y = c.batchnorm_op(v["x"], v["weight"], v["bias"], v["running_mean"], v["running_var"], v["eps"], label)
    if fn is aten.batch_norm.default:
        return y
    return _Results((y, _Opaque("batch-norm statistics"), _Opaque("batch-norm statistics")))


def h_clamp(c, fn, args, kwargs, label):
    """torch.clamp / clip / .clamp() / aten.clamp with constant bounds."""
    v = _bind(args, kwargs, ("x", "min", "max"), {"min": None, "max": None})
    return c.clamp_op(v["x"], v["min"], v["max"], label)


def h_clamp_min(c, fn, args, kwargs, label):
    """torch.clamp_min / .clamp_min(): a shifted ReLU."""
    v = _bind(args, kwargs, ("x", "min"))
    return c.clamp_op(v["x"], v["min"], None, label)


def h_clamp_max(c, fn, args, kwargs, label):
    """torch.clamp_max / .clamp_max(): a reflected, shifted ReLU."""
    v = _bind(args, kwargs, ("x", "max"))
    return c.clamp_op(v["x"], None, v["max"], label)


def h_select_op(c, fn, args, kwargs, label):
    """Slicing / splitting / concatenation (of one tensor's entries): a selection."""
    return c.selection_map(fn, args, kwargs, label)


def _reduction(c, which, x, dim, keepdim, label, with_indices):
    """max / min over a dimension of size 2 of a selection ((values, indices) when asked)."""
    out = patterns.reduce_pair(which, c.as_selection(x, label), int(dim), bool(keepdim), label)
    return _Results((out, _Opaque("the indices of a max / min"))) if with_indices else out


def _max_min(which):
    """The handler of torch.max (``which`` = MAX) or torch.min."""
    def handler(c, fn, args, kwargs, label):
        """torch.max / torch.min: of two tensors (elementwise), or over one dimension of size 2."""
        v = _bind(args, kwargs, ("x", "dim", "keepdim"), {"keepdim": False})
        other = v.get("other", v.get("dim"))
        if isinstance(other, (_Live, Expr, Selection, torch.Tensor)):
            return c.extremum_op(which, v["x"], other, label)
        if other is None:
            c.unsupported("a max / min over every entry", label)
        return _reduction(c, which, v["x"], other, v["keepdim"], label, with_indices=True)
    return handler


def _maximum(which):
    """The handler of torch.maximum (``which`` = MAX) or torch.minimum."""
    def handler(c, fn, args, kwargs, label):
        """torch.maximum / torch.minimum of two tensors."""
        a, b = _first_two(args, kwargs)
        return c.extremum_op(which, a, b, label)
    return handler


def _amax(which):
    """The handler of torch.amax (``which`` = MAX) or torch.amin."""
    def handler(c, fn, args, kwargs, label):
        """torch.amax / amin over one dimension of size 2."""
        v = _bind(args, kwargs, ("x", "dim", "keepdim"), {"dim": (), "keepdim": False})
        dims = [v["dim"]] if isinstance(v["dim"], int) else list(v["dim"])
        if len(dims) != 1:
            c.unsupported(f"amax / amin over dimensions {dims} (only one dimension of size 2)", label)
        return _reduction(c, which, v["x"], dims[0], v["keepdim"], label, with_indices=False)
    return handler


h_max, h_min = _max_min(MAX), _max_min(MIN)
h_maximum, h_minimum = _maximum(MAX), _maximum(MIN)
h_amax, h_amin = _amax(MAX), _amax(MIN)


def h_sort(c, fn, args, kwargs, label):
    """torch.sort over a dimension of size 2: (values, unusable indices)."""
    v = _bind(args, kwargs, ("x", "dim", "descending"), {"dim": -1, "descending": False})
    vals = patterns.sort_pair(c.as_selection(v["x"], label), int(v["dim"]), bool(v["descending"]), label)
    return _Results((vals, _Opaque("the indices of a sort")))


def h_topk(c, fn, args, kwargs, label):
    """torch.topk(x, 2, dim) over a dimension of size 2 (sorted): a sort."""
    v = _bind(args, kwargs, ("x", "k", "dim", "largest", "sorted"), {"dim": -1, "largest": True, "sorted": True})
    s = c.as_selection(v["x"], label)
    d = int(v["dim"])
    if int(v["k"]) != 2 or s.shape[d] != 2 or not v["sorted"]:
        c.unsupported(f"topk with k={v['k']} on a dimension of size {s.shape[d]} (only a sorted top-2 of 2)", label)
    vals = patterns.sort_pair(s, d, bool(v["largest"]), label)
    return _Results((vals, _Opaque("the indices of a topk")))


# module handlers: (converter, x, module, label)

def m_linear(c, x, mod, label):
    """nn.Linear."""
    return c.linear_op(x, mod.weight, mod.bias, label)


def m_conv2d(c, x, mod, label):
    """nn.Conv2d (zero padding only)."""
    if mod.padding_mode != "zeros":
        c.unsupported(f"Conv2d with padding_mode={mod.padding_mode!r}", label)
    return c.conv_op(x, mod.weight, mod.bias, mod.stride, mod.padding, mod.dilation, mod.groups, label)


def m_flatten(c, x, mod, label):
    """nn.Flatten."""
    return c.flatten_op(x, mod.start_dim, mod.end_dim, label)


def m_batchnorm(c, x, mod, label):
    """nn.BatchNorm1d / nn.BatchNorm2d with running statistics."""
    expect = {nn.BatchNorm1d: (1, 2), nn.BatchNorm2d: (3,)}[type(mod)]
    s = c.shape(c.need_live(x, label))
    if len(s) not in expect or s[0] != mod.num_features:
        c.err(f"node {label!r}: {type(mod).__name__}({mod.num_features}) cannot take a sample of shape {list(s)}")
    return c.batchnorm_op(x, mod.weight, mod.bias, mod.running_mean, mod.running_var, mod.eps, label,
                          type(mod).__name__)


def m_avgpool(c, x, mod, label):
    """nn.AvgPool2d."""
    return c.avgpool_op(x, mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode, mod.count_include_pad,
                        mod.divisor_override, label)


def m_maxpool(c, x, mod, label):
    """nn.MaxPool2d."""
    return c.maxpool_op(x, mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode, mod.return_indices,
                        label)


def m_adaptive_avg(c, x, mod, label):
    """nn.AdaptiveAvgPool2d (any output size)."""
    return c.adaptive_pool_op(x, mod.output_size, label, "avg")


def m_adaptive_max(c, x, mod, label):
    """nn.AdaptiveMaxPool2d (sizes that divide)."""
    if mod.return_indices:
        c.unsupported("AdaptiveMaxPool2d with return_indices=True", label)
    return c.adaptive_pool_op(x, mod.output_size, label, "max")


def m_pad(c, x, mod, label):
    """nn.ZeroPad2d / nn.ConstantPad2d."""
    return c.pad_op(x, mod.padding, getattr(mod, "value", 0.0), label)


def m_identity(c, x, mod, label):
    """nn.Identity and dropout modules (inference mode): the input itself."""
    return x


#: module class -> handler(converter, x, module, label) (activations: `tables.MODULE_ACTIVATIONS`)
MODULE_HANDLERS = {
    nn.Linear: m_linear, nn.Conv2d: m_conv2d, nn.Flatten: m_flatten, nn.BatchNorm1d: m_batchnorm,
    nn.BatchNorm2d: m_batchnorm, nn.AvgPool2d: m_avgpool, nn.MaxPool2d: m_maxpool,
    nn.AdaptiveAvgPool2d: m_adaptive_avg, nn.AdaptiveMaxPool2d: m_adaptive_max, nn.ZeroPad2d: m_pad,
    nn.ConstantPad2d: m_pad, nn.Identity: m_identity, nn.Dropout: m_identity, nn.Dropout1d: m_identity,
    nn.Dropout2d: m_identity, nn.AlphaDropout: m_identity,
}

SUPPORTED_MODULES = tuple(sorted({cls.__name__ for cls in (*MODULE_HANDLERS, *MODULE_ACTIVATIONS)}))


def _aten(*names):
    """aten overloads by name (absent ones skipped)."""
    return _ops(*names)


_IGNORED = set(_aten("_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size",
                     "sym_constrain_range", "_assert_async.msg"))

#: torch function or aten operator -> handler (activations: `tables.FUNCTION_ACTIVATIONS`)
FUNCTION_HANDLERS = _table(
    ([operator.add, operator.iadd, torch.add, *_aten("add.Tensor", "add.Scalar", "add_.Tensor")], h_add),
    ([operator.sub, operator.isub, torch.sub, torch.subtract, *_aten("sub.Tensor", "sub.Scalar")], h_sub),
    ([torch.rsub, *_aten("rsub.Scalar", "rsub.Tensor")], h_rsub),
    ([operator.mul, operator.imul, torch.mul, torch.multiply, *_aten("mul.Tensor", "mul.Scalar")], h_mul),
    ([operator.truediv, operator.itruediv, torch.div, torch.true_divide, torch.divide,
      *_aten("div.Tensor", "div.Scalar", "div.Tensor_mode")], h_div),
    ([operator.neg, torch.neg, torch.negative, *_aten("neg")], h_neg),
    ([operator.pos], h_identity),
    ([operator.pow, torch.pow, *_aten("pow.Tensor_Scalar")], h_pow),
    ([k for k in _UNARY_EXPR if not isinstance(k, str)], h_unary_expr),
    ([torch.flatten, *_aten("flatten.using_ints")], h_flatten),
    ([torch.reshape, *_aten("view", "reshape", "_unsafe_view")], h_reshape),
    ([torch.permute, *_aten("permute")], h_permute),
    ([torch.transpose, *_aten("transpose.int")], h_transpose),
    ([torch.unsqueeze, *_aten("unsqueeze")], h_unsqueeze),
    ([torch.squeeze, *_aten("squeeze.dim", "squeeze.dims", "squeeze")], h_squeeze),
    ([torch.clone, *_aten("clone", "alias", "detach", "_to_copy", "to.dtype", "lift_fresh_copy")], h_identity),
    ([*_IGNORED], h_ignore),
    (_aten("sym_size.int"), h_sym_size),
    ([F.linear, *_aten("linear")], h_linear),
    ([torch.matmul, operator.matmul, torch.mm, *_aten("mm", "matmul")], h_matmul),
    ([torch.addmm, *_aten("addmm")], h_addmm),
    ([F.conv2d, torch.conv2d, *_aten("conv2d")], h_conv2d),
    (_aten("convolution"), h_convolution),
    ([F.avg_pool2d, *_aten("avg_pool2d")], h_avg_pool2d),
    ([F.max_pool2d, torch.max_pool2d, *_aten("max_pool2d", "max_pool2d_with_indices")], h_max_pool2d),
    ([F.adaptive_avg_pool2d, *_aten("adaptive_avg_pool2d", "_adaptive_avg_pool2d")],
     h_adaptive_avg_pool2d),
    ([F.adaptive_max_pool2d, *_aten("adaptive_max_pool2d")], h_adaptive_max_pool2d),
    ([torch.mean, *_aten("mean.dim")], h_mean),
    ([F.pad, *_aten("constant_pad_nd", "pad")], h_pad),
    ([F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout, *_aten("dropout")], h_dropout),
    ([F.batch_norm], h_batch_norm),
    (_aten("batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm"), h_aten_batch_norm),
    ([torch.clamp, torch.clip, torch.clamp_, torch.clip_, *_aten("clamp", "clip", "clamp_")], h_clamp),
    ([torch.clamp_min, *_aten("clamp_min")], h_clamp_min),
    ([torch.clamp_max, *_aten("clamp_max")], h_clamp_max),
    ([torch.split, torch.chunk, torch.unbind, torch.narrow, torch.select, torch.cat, torch.concat, torch.concatenate,
      torch.stack, torch.unflatten, torch.movedim,
      *_aten("slice.Tensor", "select.int", "split.Tensor", "split_with_sizes", "chunk", "unbind.int", "narrow", "cat",
             "stack", "unflatten.int")], h_select_op),
    ([torch.max, *_aten("max.dim")], h_max),
    ([torch.min, *_aten("min.dim")], h_min),
    ([torch.maximum, torch.fmax, *_aten("maximum", "max.other", "fmax")], h_maximum),
    ([torch.minimum, torch.fmin, *_aten("minimum", "min.other", "fmin")], h_minimum),
    ([torch.amax, *_aten("amax")], h_amax),
    ([torch.amin, *_aten("amin")], h_amin),
    ([torch.sort, *_aten("sort", "sort.stable")], h_sort),
    ([torch.topk, *_aten("topk")], h_topk),
)


def _method_unary(name):
    """The handler of tensor method ``name`` among erf, exp, log..."""
    f, n = _UNARY_EXPR[name]

    def handler(c, fn, args, kwargs, label):
        """x.erf(), x.exp()...: a pending expression."""
        return c.unary_expr(args[0], f, n, label, f".{name}()")
    return handler


#: tensor method name -> handler (activations: `tables.METHOD_ACTIVATIONS`)
METHOD_HANDLERS = {
    **{m: h_add for m in ("add", "add_")}, **{m: h_sub for m in ("sub", "sub_")},
    **{m: h_mul for m in ("mul", "mul_")}, **{m: h_div for m in ("div", "div_")}, "neg": h_neg, "pow": h_pow,
    **{m: _method_unary(m) for m in ("erf", "exp", "log", "log1p", "sqrt", "reciprocal", "square", "expm1", "rsqrt")},
    "size": h_size, "dim": h_dim, "view": h_reshape, "reshape": h_reshape, "flatten": h_flatten,
    "permute": h_permute, "transpose": h_transpose, "unsqueeze": h_unsqueeze, "squeeze": h_squeeze,
    **{m: h_identity for m in ("contiguous", "clone", "detach", "float", "double", "to")},
    **{m: h_clamp for m in ("clamp", "clip", "clamp_", "clip_")}, "clamp_min": h_clamp_min,
    "clamp_max": h_clamp_max, "mean": h_mean, "matmul": h_matmul,
    **{m: h_select_op for m in ("split", "chunk", "unbind", "narrow", "select", "unflatten", "movedim")},
    "max": h_max, "min": h_min, "maximum": h_maximum, "minimum": h_minimum, "amax": h_amax, "amin": h_amin,
    "sort": h_sort, "topk": h_topk,
}

#: handlers that are index operations (applied to the positions of a selection argument)
_INDEX_HANDLERS = {h_flatten, h_reshape, h_permute, h_transpose, h_unsqueeze, h_squeeze, h_select_op}
#: handlers that take selections themselves
_SELECTION_HANDLERS = {h_select_op, h_sort, h_topk, h_size, h_dim, h_sym_size, h_identity, h_max, h_min, h_maximum,
                       h_minimum, h_amax, h_amin}
#: handlers that extend pending expressions
_EXPR_HANDLERS = {h_add, h_sub, h_rsub, h_mul, h_div, h_neg, h_pow, h_unary_expr, h_size, h_dim, h_sym_size, h_identity,
                  *(METHOD_HANDLERS[m] for m in ("erf", "exp", "log", "log1p", "sqrt", "reciprocal", "square", "expm1",
                                                 "rsqrt"))}


# --------------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------------

def _check_shape(input_shape) -> tuple:
    """``input_shape`` as a tuple of positive ints (an int is a 1-D shape)."""
    if isinstance(input_shape, (int, np.integer)):
        input_shape = (int(input_shape),)
    try:
        input_shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise LipboundError(f"input_shape must be a tuple of positive integers (batch excluded), got {input_shape!r}") from None
    if not input_shape or min(input_shape) <= 0:
        raise LipboundError(f"input_shape must be a tuple of positive integers (batch excluded), got {input_shape!r}")
    return input_shape


def from_torch(module, input_shape, name: str | None = None, check: bool = True) -> Network:
    """Read a torch ``nn.Module`` into a `Network` (float64 copies of its parameters) via torch.fx.

    Not a bound: an exact translation of the module in eval mode. ``input_shape`` EXCLUDES the batch
    dimension (``(784,)`` for an MLP on flattened MNIST, ``(1, 28, 28)`` for a CNN). A leading 1 is
    read as a batch dimension only when the shape as given cannot be read and the shape without it can
    (``(1, 1, 28, 28)`` for a CNN is read as ``(1, 28, 28)``; ``(1, 4)`` for ``nn.Linear(4, 3)`` stays a
    one-row sample of shape ``(1, 4)``). A module that torch.fx cannot trace (Python control flow on
    shapes, as in deel-torchlip's ``group_sort``) is exported with ``torch.export`` on a batch of one
    and read as a program (`lipbound.io.export_reader`; seconds the first time). The module is put in
    eval mode for reading and its (per-submodule) training flags are restored afterwards. With ``check``
    the network is compared with the module on random inputs (raises `LipboundError` on a mismatch).
    Raises `UnsupportedOperator` naming the module / function and the fx node for anything outside the
    supported set (see the module docstring). Cost: one trace and two forward passes."""
    if not isinstance(module, nn.Module):
        raise LipboundError(f"from_torch needs a torch.nn.Module, got {type(module).__name__}")
    input_shape = _check_shape(input_shape)
    name = name or type(module).__name__
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        try:
            gm, fx_error = torch.fx.symbolic_trace(module), None
        except Exception as e:
            gm, fx_error = None, e
        shapes = [input_shape] + ([input_shape[1:]] if len(input_shape) >= 2 and input_shape[0] == 1 else [])
        first = None
        for shape in shapes:  # as given, then without a leading batch dimension of 1 given by mistake
            try:
                net = _convert(gm, shape, name) if gm is not None else _read_via_export(module, shape, name, fx_error)
                if check:
                    _check_against_module(net, module, shape)
                return net
            except LipboundError as e:
                first = first or e
        raise first
    finally:
        for m, mode in modes:
            m.training = mode


def _read_via_export(module, input_shape, name, fx_error) -> Network:
    """Read a module that torch.fx cannot trace through ``torch.export`` (a batch of one)."""
    from .export_reader import from_exported_program, quiet_torch

    p = next(iter(module.parameters()), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    x = torch.zeros((1,) + tuple(input_shape), dtype=dtype)
    try:
        with quiet_torch():
            ep = torch.export.export(module, (x,))
    except Exception as e:
        raise UnsupportedOperator(_one_line(
            f"torch.fx cannot trace {type(module).__name__} ({type(fx_error).__name__}: {fx_error}) and torch.export "
            f"fails too on an input of shape {tuple(x.shape)} ({type(e).__name__}: {e}); avoid data-dependent "
            "control flow in forward")) from None
    return from_exported_program(ep, name=name, check=False)


def _convert(gm, input_shape, name, **kw) -> Network:
    """Run the converter; unexpected exceptions become one-line `LipboundError`."""
    try:
        return _Converter(gm, input_shape, name, **kw).run()
    except LipboundError:
        raise
    except Exception as e:
        raise LipboundError(_one_line(f"cannot read torch module {name!r}: {type(e).__name__}: {e}")) from e


def _check_against_module(net, module, input_shape):
    """Compare the network with the module on two random inputs (in the module's own dtype)."""
    p = next(iter(module.parameters()), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    device = p.device if p is not None else torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.rand((2,) + tuple(input_shape), generator=g, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        try:
            ref = module(x.to(dtype=dtype, device=device))
        except Exception as e:
            raise LipboundError(_one_line(f"the module fails on an input of shape {(2,) + input_shape}: "
                                          f"{type(e).__name__}: {e} (input_shape excludes the batch dimension)")) from None
        if not isinstance(ref, torch.Tensor):
            raise LipboundError("the module does not return a single tensor")
        ref = ref.detach().to("cpu", torch.float64).reshape(2, -1)
        ours = net(x).reshape(2, -1)
    if ref.shape != ours.shape:
        raise LipboundError(f"the traced network's output shape {tuple(ours.shape[1:])} differs from the module's "
                            f"{tuple(ref.shape[1:])}")
    tol = (1e-4 if dtype != torch.float64 else 1e-9) * (1.0 + float(ref.abs().max()))
    diff = float((ref - ours).abs().max())
    if not diff <= tol:
        raise LipboundError(f"the traced network does not reproduce the module (max difference {diff:.3g}); "
                            "the module's forward does something the reader cannot see")
