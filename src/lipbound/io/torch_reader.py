"""torch reader: an ``nn.Module`` into a `lipbound.network.Network`, by `torch.fx` symbolic tracing.

Supported: ``nn.Sequential`` and ordinary custom modules (residual ``x + self.block(x)``) built from
nn.Linear, nn.Conv2d, nn.ReLU / F.relu / torch.relu, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.Softplus,
nn.Flatten / torch.flatten / x.view / x.reshape, nn.BatchNorm1d / nn.BatchNorm2d (eval statistics),
nn.AvgPool2d, nn.MaxPool2d, nn.ZeroPad2d / nn.ConstantPad2d, nn.Identity, nn.Dropout, the sum or
difference of two tensors, and adding / subtracting / multiplying / dividing by constants.
Anything else raises `UnsupportedOperator` naming the module or function and the fx node.
"""

from __future__ import annotations

import math
import operator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import LipboundError, UnsupportedOperator
from ..network import (Activation, Add, AvgPool2d, Conv2d, ElementwiseAffine, GraphBuilder, Linear, MaxPool2d,
                       Network, Pad, Reshape, Transpose)

SUPPORTED_MODULES = (
    "Linear", "Conv2d", "ReLU", "LeakyReLU", "Tanh", "Sigmoid", "ELU", "Softplus", "Flatten", "BatchNorm1d",
    "BatchNorm2d", "AvgPool2d", "MaxPool2d", "ZeroPad2d", "ConstantPad2d", "Identity", "Dropout",
)


class _Batch:
    """The (symbolic) batch size, e.g. ``x.size(0)`` in ``x.view(x.size(0), -1)``."""

    def __repr__(self):
        return "batch"


BATCH = _Batch()


class _Live:
    __slots__ = ("idx",)

    def __init__(self, idx):
        self.idx = idx


def _one_line(text) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= 400 else text[:397] + "..."


def _fname(fn) -> str:
    mod = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__name__", None) or repr(fn)
    if mod in ("_operator", "operator"):
        return f"operator.{name}"
    if mod.startswith("torch.nn.functional"):
        return f"F.{name}"
    if mod.startswith("torch"):
        return f"torch.{name}"
    return f"{mod}.{name}" if mod else name


_RANDOM = {torch.rand, torch.randn, torch.randint, torch.rand_like, torch.randn_like, torch.randint_like,
           torch.normal, torch.bernoulli, torch.multinomial, torch.randperm}


class _Converter:
    def __init__(self, gm, input_shape, name):
        self.gm = gm
        self.name = name
        self.builder = GraphBuilder(input_shape, input_name="input")
        self.values = {}
        self.used = {"input"}

    # -- helpers ----------------------------------------------------------------------------------
    def err(self, msg, cls=LipboundError):
        raise cls(_one_line(msg))

    def add(self, op, inputs, name) -> _Live:
        inputs = [i.idx if isinstance(i, _Live) else i for i in inputs]
        base, k = name, 1
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        return _Live(self.builder.add(op, inputs, name=name))

    def shape(self, idx):
        return self.builder.nodes[idx].shape

    def tshape(self, idx):
        """The torch shape of a live tensor, batch dimension (size 1 here) included."""
        return (1,) + self.shape(idx)

    def resolve(self, arg):
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
    def is_live(v):
        return isinstance(v, _Live)

    def contains_live(self, v):
        if isinstance(v, _Live):
            return True
        if isinstance(v, (list, tuple)):
            return any(self.contains_live(a) for a in v)
        if isinstance(v, dict):
            return any(self.contains_live(a) for a in v.values())
        return False

    def contains_batch(self, v):
        if v is BATCH:
            return True
        if isinstance(v, (list, tuple)):
            return any(self.contains_batch(a) for a in v)
        return False

    def unsupported(self, what, label, why=""):
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
        return None if t is None else t.detach().to(torch.float64).cpu().clone()

    # -- driver -----------------------------------------------------------------------------------
    def run(self) -> Network:
        out_idx = None
        placeholders = 0
        for node in self.gm.graph.nodes:
            label = str(node.target) if node.op == "call_module" else node.name
            if node.op == "placeholder":
                placeholders += 1
                if placeholders == 1:
                    self.values[node] = _Live(0)
                elif node.args:  # an argument with a default value
                    self.values[node] = node.args[0]
                else:
                    self.err(f"the module's forward takes several tensor inputs ({node.name!r} is the "
                             f"{placeholders}th); lipbound reads networks with one input")
            elif node.op == "get_attr":
                obj = self.gm
                for part in str(node.target).split("."):
                    obj = getattr(obj, part)
                self.values[node] = obj
            elif node.op in ("call_module", "call_function", "call_method"):
                try:
                    self.values[node] = getattr(self, node.op)(node, label)
                except LipboundError as e:
                    if label in str(e):
                        raise
                    raise type(e)(_one_line(f"node {label!r}: {e}")) from None
            elif node.op == "output":
                out = self.resolve(node.args[0])
                if not isinstance(out, _Live):
                    if self.contains_live(out):
                        self.err("the module returns several tensors; lipbound reads networks with one output")
                    self.err("the module's output does not depend on its input")
                out_idx = out.idx
        if out_idx is None:
            self.err("the traced module has no output")
        from .onnx_reader import _prune

        return _prune(self.builder.nodes, out_idx, self.name, None)

    # -- shared building blocks ---------------------------------------------------------------------
    def activation(self, x, label, name, param=0.0):
        return self.add(Activation(name, param), [self.need_live(x, label)], label)

    def need_live(self, v, label, what="input"):
        if not isinstance(v, _Live):
            self.err(f"node {label!r}: the {what} must be a tensor computed from the network input")
        return v.idx

    def align_const(self, c, x, label):
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
        return self.add(ElementwiseAffine(scale, shift, label=kind), [x], label)

    def add_op(self, a, b, label, alpha=1.0, sign=1.0):
        """a + sign * alpha * b."""
        k = sign * float(alpha)
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
        if isinstance(a, _Live) and isinstance(b, _Live):
            self.err(f"node {label!r} multiplies two tensors that depend on the input (non-constant multiplier): "
                     "not an affine map, not supported", UnsupportedOperator)
        x, c = (a, b) if isinstance(a, _Live) else (b, a)
        c = self.align_const(self.constant(c, label, "multiplier"), x.idx, label)
        return self.affine(x.idx, c, np.zeros_like(c), label, "Mul")

    def div_op(self, a, b, label, rounding_mode=None):
        if rounding_mode is not None:
            self.unsupported(f"division with rounding_mode={rounding_mode!r}", label)
        if isinstance(b, _Live):
            self.err(f"node {label!r} divides by a tensor that depends on the input (non-constant divisor): "
                     "not supported", UnsupportedOperator)
        c = self.align_const(self.constant(b, label, "divisor"), a.idx, label)
        if np.any(c == 0):
            self.err(f"node {label!r} divides by a constant that contains zeros")
        return self.affine(a.idx, 1.0 / c, np.zeros_like(c), label, "Div")

    def reshape_op(self, x, shape, label):
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

    def linear_op(self, x, W, b, label):
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
        x = self.need_live(x, label)
        if len(self.shape(x)) != 3:
            self.err(f"node {label!r}: {what} needs (N, C, H, W) tensors, got a sample of shape "
                     f"{list(self.shape(x))}", UnsupportedOperator)
        return x

    def conv_op(self, x, weight, bias, stride, padding, dilation, groups, label):
        x = self.spatial(x, label, "conv2d")
        weight = self.param(weight)
        if weight.ndim != 4:
            self.unsupported("a non-2-D convolution", label)
        pair = lambda v: (int(v), int(v)) if isinstance(v, (int, np.integer)) else tuple(int(t) for t in v)
        stride, dilation = pair(stride), pair(dilation)
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
        return self.add(Conv2d(weight, self.param(bias), stride, pair(padding), dilation, int(groups)), [x], label)

    def batchnorm(self, x, mod, label):
        x = self.need_live(x, label)
        if mod.running_mean is None or mod.running_var is None:
            self.err(f"node {label!r}: {type(mod).__name__} without running statistics (track_running_stats=False)"
                     " normalises with batch statistics: not supported", UnsupportedOperator)
        s = self.shape(x)
        C = mod.num_features
        expect = {"BatchNorm1d": (1, 2), "BatchNorm2d": (3,)}[type(mod).__name__]
        if len(s) not in expect or s[0] != C:
            self.err(f"node {label!r}: {type(mod).__name__}({C}) cannot take a sample of shape {list(s)}")
        mean, var = self.param(mod.running_mean).numpy(), self.param(mod.running_var).numpy()
        gamma = self.param(mod.weight).numpy() if mod.weight is not None else np.ones(C)
        beta = self.param(mod.bias).numpy() if mod.bias is not None else np.zeros(C)
        scale = gamma / np.sqrt(var + mod.eps)
        shift = beta - mean * scale
        bshape = (C,) + (1,) * (len(s) - 1)
        return self.add(ElementwiseAffine(scale.reshape(bshape), shift.reshape(bshape), label="BatchNorm"), [x], label)

    def avgpool_op(self, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override, label):
        x = self.spatial(x, label, "avg_pool2d")
        if divisor_override is not None:
            self.unsupported("avg_pool2d with divisor_override", label)
        pair = lambda v: (int(v), int(v)) if isinstance(v, (int, np.integer)) else tuple(int(t) for t in v)
        kernel = pair(kernel)
        stride = pair(stride) if stride not in (None, []) else kernel
        return self.add(AvgPool2d(kernel, stride, pair(padding), bool(count_include_pad), bool(ceil_mode)), [x], label)

    def maxpool_op(self, x, kernel, stride, padding, dilation, ceil_mode, return_indices, label):
        x = self.spatial(x, label, "max_pool2d")
        if return_indices:
            self.unsupported("max_pool2d with return_indices=True", label)
        pair = lambda v: (int(v), int(v)) if isinstance(v, (int, np.integer)) else tuple(int(t) for t in v)
        kernel = pair(kernel)
        stride = pair(stride) if stride not in (None, []) else kernel
        return self.add(MaxPool2d(kernel, stride, pair(padding), pair(dilation), bool(ceil_mode)), [x], label)

    def pad_op(self, x, pads, value, label, mode="constant"):
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

    def softplus(self, x, beta, threshold, label):
        if threshold < 20:
            self.unsupported(f"softplus with threshold={threshold} (linear above it; only threshold >= 20 is "
                             "read as the smooth softplus)", label)
        return self.activation(x, label, "softplus", beta)

    def transpose_perm(self, x, perm, label):
        x = self.need_live(x, label)
        r = len(self.tshape(x))
        perm = [int(p) + r if int(p) < 0 else int(p) for p in perm]
        if sorted(perm) != list(range(r)):
            self.err(f"node {label!r}: {perm} is not a permutation of {r} dimensions")
        if perm[0] != 0:
            self.unsupported("a permutation that moves the batch dimension", label)
        return self.add(Transpose(tuple(p - 1 for p in perm[1:])), [x], label)

    def size_of(self, x, dim=None):
        full = (BATCH,) + self.shape(x.idx)
        if dim is None:
            return full
        return full[int(dim)]

    # -- dispatch ---------------------------------------------------------------------------------------
    def call_module(self, node, label):
        mod = self.gm.get_submodule(str(node.target))
        args = self.resolve(node.args)
        kwargs = self.resolve(node.kwargs)
        if len(args) != 1 or kwargs:
            self.unsupported(f"module {type(mod).__name__} called with {len(args)} arguments", label)
        x = args[0]
        if not isinstance(x, _Live):
            self.unsupported(f"module {type(mod).__name__} applied to a constant", label)
        t = type(mod)
        if t is nn.Linear:
            return self.linear_op(x, mod.weight, mod.bias, label)
        if t is nn.Conv2d:
            if mod.padding_mode != "zeros":
                self.unsupported(f"Conv2d with padding_mode={mod.padding_mode!r}", label)
            return self.conv_op(x, mod.weight, mod.bias, mod.stride, mod.padding, mod.dilation, mod.groups, label)
        if t is nn.ReLU:
            return self.activation(x, label, "relu")
        if t is nn.LeakyReLU:
            return self.activation(x, label, "leaky_relu", mod.negative_slope)
        if t is nn.Tanh:
            return self.activation(x, label, "tanh")
        if t is nn.Sigmoid:
            return self.activation(x, label, "sigmoid")
        if t is nn.ELU:
            return self.activation(x, label, "elu", mod.alpha)
        if t is nn.Softplus:
            return self.softplus(x, mod.beta, mod.threshold, label)
        if t is nn.Flatten:
            return self.flatten_op(x, mod.start_dim, mod.end_dim, label)
        if t in (nn.BatchNorm1d, nn.BatchNorm2d):
            return self.batchnorm(x, mod, label)
        if t is nn.AvgPool2d:
            return self.avgpool_op(x, mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode, mod.count_include_pad,
                                   mod.divisor_override, label)
        if t is nn.MaxPool2d:
            return self.maxpool_op(x, mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode,
                                   mod.return_indices, label)
        if t in (nn.ZeroPad2d, nn.ConstantPad2d):
            return self.pad_op(x, mod.padding, getattr(mod, "value", 0.0), label)
        if t in (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout):
            return x
        self.unsupported(f"module {t.__name__}", label)

    def call_function(self, node, label):
        fn = node.target
        args = self.resolve(node.args)
        kwargs = self.resolve(node.kwargs)
        live = self.contains_live(args) or self.contains_live(kwargs)
        if fn is getattr:
            obj, attr = args
            if isinstance(obj, _Live):
                if attr == "shape":
                    return self.size_of(obj)
                self.unsupported(f"tensor attribute .{attr}", label)
            return getattr(obj, attr)
        if fn is operator.getitem:
            obj, idx = args
            if isinstance(obj, _Live):
                self.unsupported("indexing / slicing a tensor", label)
            return obj[idx]
        if not live:
            if self.contains_batch(args) or self.contains_batch(kwargs):
                self.unsupported(f"{_fname(fn)} on the batch size", label)
            if fn in _RANDOM:
                self.unsupported(f"random function {_fname(fn)}", label)
            try:
                return fn(*args, **kwargs)
            except Exception as e:
                self.err(f"node {label!r}: cannot evaluate constant expression {_fname(fn)}: {e}")
        if fn in (operator.add, operator.iadd, torch.add):
            a, b = args[0], args[1] if len(args) > 1 else kwargs.get("other")
            return self.add_op(a, b, label, alpha=kwargs.get("alpha", 1.0))
        if fn in (operator.sub, operator.isub, torch.sub):
            a, b = args[0], args[1] if len(args) > 1 else kwargs.get("other")
            return self.add_op(a, b, label, alpha=kwargs.get("alpha", 1.0), sign=-1.0)
        if fn in (operator.mul, operator.imul, torch.mul):
            return self.mul_op(args[0], args[1] if len(args) > 1 else kwargs.get("other"), label)
        if fn in (operator.truediv, operator.itruediv, torch.div, torch.true_divide):
            return self.div_op(args[0], args[1] if len(args) > 1 else kwargs.get("other"), label,
                               kwargs.get("rounding_mode"))
        if fn in (operator.neg, torch.neg):
            x = self.need_live(args[0], label)
            s = self.shape(x)
            return self.affine(x, -np.ones(s), np.zeros(s), label, "Neg")
        if fn in (operator.pos,):
            return args[0]
        if fn in (torch.relu, F.relu, torch.relu_):
            return self.activation(args[0], label, "relu")
        if fn is F.leaky_relu:
            slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
            return self.activation(args[0], label, "leaky_relu", slope)
        if fn in (torch.tanh, F.tanh):
            return self.activation(args[0], label, "tanh")
        if fn in (torch.sigmoid, F.sigmoid):
            return self.activation(args[0], label, "sigmoid")
        if fn is F.elu:
            return self.activation(args[0], label, "elu", args[1] if len(args) > 1 else kwargs.get("alpha", 1.0))
        if fn is F.softplus:
            beta = args[1] if len(args) > 1 else kwargs.get("beta", 1.0)
            thr = args[2] if len(args) > 2 else kwargs.get("threshold", 20.0)
            return self.softplus(args[0], beta, thr, label)
        if fn is torch.flatten:
            start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
            end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
            return self.flatten_op(args[0], start, end, label)
        if fn is torch.reshape:
            return self.reshape_op(args[0], args[1] if len(args) > 1 else kwargs["shape"], label)
        if fn is F.linear:
            return self.linear_op(args[0], args[1] if len(args) > 1 else kwargs["weight"],
                                  args[2] if len(args) > 2 else kwargs.get("bias"), label)
        if fn is F.conv2d:
            names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
            defaults = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
            v = {**defaults, **dict(zip(names, args)), **kwargs}
            return self.conv_op(v["input"], v["weight"], v["bias"], v["stride"], v["padding"], v["dilation"],
                                v["groups"], label)
        if fn is F.avg_pool2d:
            names = ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
            defaults = {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True,
                        "divisor_override": None}
            v = {**defaults, **dict(zip(names, args)), **kwargs}
            return self.avgpool_op(v["input"], v["kernel_size"], v["stride"], v["padding"], v["ceil_mode"],
                                   v["count_include_pad"], v["divisor_override"], label)
        if fn in (F.max_pool2d, torch.max_pool2d) or getattr(fn, "__name__", "") in ("max_pool2d", "_max_pool2d"):
            names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
            defaults = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False}
            v = {**defaults, **dict(zip(names, args)), **kwargs}
            return self.maxpool_op(v["input"], v["kernel_size"], v["stride"], v["padding"], v["dilation"],
                                   v["ceil_mode"], v["return_indices"], label)
        if fn is F.pad:
            names = ("input", "pad", "mode", "value")
            v = {"mode": "constant", "value": None, **dict(zip(names, args)), **kwargs}
            return self.pad_op(v["input"], v["pad"], v["value"], label, v["mode"])
        if fn in (F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout):
            training = args[2] if len(args) > 2 else kwargs.get("training", True)
            if training:
                self.unsupported(f"{_fname(fn)} with training=True (random)", label)
            return args[0]
        if fn is torch.permute:
            return self.transpose_perm(args[0], args[1] if len(args) > 1 else kwargs["dims"], label)
        self.unsupported(f"function {_fname(fn)}", label)

    def call_method(self, node, label):
        meth = str(node.target)
        args = self.resolve(node.args)
        kwargs = self.resolve(node.kwargs)
        obj, rest = args[0], args[1:]
        if not isinstance(obj, _Live):
            if self.contains_live(rest) or self.contains_live(kwargs):
                other = rest[0] if rest else kwargs.get("other")
                if meth == "add":
                    return self.add_op(obj, other, label, alpha=kwargs.get("alpha", 1.0))
                if meth == "sub":
                    return self.add_op(obj, other, label, alpha=kwargs.get("alpha", 1.0), sign=-1.0)
                if meth == "mul":
                    return self.mul_op(obj, other, label)
                self.unsupported(f"method .{meth}() of a constant applied to the network's tensor", label)
            if self.contains_batch(args) or self.contains_batch(kwargs):
                self.unsupported(f"method .{meth}() on the batch size", label)
            try:
                return getattr(obj, meth)(*rest, **kwargs)
            except Exception as e:
                self.err(f"node {label!r}: cannot evaluate constant expression .{meth}(): {e}")
        if meth == "size":
            return self.size_of(obj, rest[0] if rest else kwargs.get("dim"))
        if meth == "dim":
            return len(self.tshape(obj.idx))
        if meth in ("view", "reshape"):
            return self.reshape_op(obj, rest if rest else kwargs.get("shape", ()), label)
        if meth == "flatten":
            start = rest[0] if rest else kwargs.get("start_dim", 0)
            end = rest[1] if len(rest) > 1 else kwargs.get("end_dim", -1)
            return self.flatten_op(obj, start, end, label)
        if meth in ("relu", "relu_"):
            return self.activation(obj, label, "relu")
        if meth in ("sigmoid", "sigmoid_"):
            return self.activation(obj, label, "sigmoid")
        if meth in ("tanh", "tanh_"):
            return self.activation(obj, label, "tanh")
        if meth in ("add", "add_"):
            return self.add_op(obj, rest[0] if rest else kwargs.get("other"), label, alpha=kwargs.get("alpha", 1.0))
        if meth in ("sub", "sub_"):
            return self.add_op(obj, rest[0] if rest else kwargs.get("other"), label, alpha=kwargs.get("alpha", 1.0),
                               sign=-1.0)
        if meth in ("mul", "mul_"):
            return self.mul_op(obj, rest[0] if rest else kwargs.get("other"), label)
        if meth in ("div", "div_"):
            return self.div_op(obj, rest[0] if rest else kwargs.get("other"), label, kwargs.get("rounding_mode"))
        if meth in ("neg",):
            s = self.shape(obj.idx)
            return self.affine(obj.idx, -np.ones(s), np.zeros(s), label, "Neg")
        if meth in ("contiguous", "clone", "detach", "float", "double"):
            return obj
        if meth == "permute":
            perm = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
            return self.transpose_perm(obj, perm, label)
        if meth in ("unsqueeze", "squeeze"):
            ts = list(self.tshape(obj.idx))
            dim = rest[0] if rest else kwargs.get("dim")
            if dim is None or isinstance(dim, (list, tuple)):
                self.unsupported(f".{meth}() without a single dim", label)
            r = len(ts) + (1 if meth == "unsqueeze" else 0)
            dim = dim + r if dim < 0 else dim
            if dim == 0:
                self.unsupported(f".{meth}(0) on the batch dimension", label)
            if meth == "unsqueeze":
                ts.insert(dim, 1)
            elif ts[dim] == 1:
                ts.pop(dim)
            return self.add(Reshape(tuple(ts[1:])), [obj.idx], label)
        self.unsupported(f"tensor method .{meth}()", label)


def from_torch(module, input_shape, name: str | None = None, check: bool = True) -> Network:
    """Read a torch ``nn.Module`` into a `Network` (float64 copies of its parameters) via torch.fx.

    Not a bound: an exact translation of the module in eval mode. ``input_shape`` EXCLUDES the batch
    dimension (``(784,)`` for an MLP on flattened MNIST, ``(1, 28, 28)`` for a CNN). The module is put in
    eval mode for tracing and its (per-submodule) training flags are restored afterwards. With ``check``
    the network is compared with the module on one random input (raises `LipboundError` on a mismatch).
    Raises `UnsupportedOperator` naming the module / function and the fx node for anything outside the
    supported set (see the module docstring). Cost: one trace and one forward pass."""
    if not isinstance(module, nn.Module):
        raise LipboundError(f"from_torch needs a torch.nn.Module, got {type(module).__name__}")
    if isinstance(input_shape, (int, np.integer)):
        input_shape = (int(input_shape),)
    try:
        input_shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise LipboundError(f"input_shape must be a tuple of positive integers (batch excluded), got {input_shape!r}") from None
    if not input_shape or min(input_shape) <= 0:
        raise LipboundError(f"input_shape must be a tuple of positive integers (batch excluded), got {input_shape!r}")
    name = name or type(module).__name__
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        try:
            gm = torch.fx.symbolic_trace(module)
        except Exception as e:
            raise UnsupportedOperator(_one_line(f"torch.fx cannot trace {type(module).__name__} ({type(e).__name__}: "
                                                f"{e}); avoid data-dependent control flow in forward")) from None
        try:
            net = _Converter(gm, input_shape, name).run()
        except LipboundError:
            raise
        except Exception as e:
            raise LipboundError(_one_line(f"cannot read torch module {name!r}: {type(e).__name__}: {e}")) from e
        if check:
            _check_against_module(net, module, input_shape)
        return net
    finally:
        for m, mode in modes:
            m.training = mode


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
