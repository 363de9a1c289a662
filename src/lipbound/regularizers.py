"""Differentiable Lipschitz penalties for training.

`autolip(module, input_shape)` returns the AutoLip product of a ``torch.nn.Module`` as a torch scalar
whose gradient flows to the module's weights, usable as a training penalty::

    penalty = lipbound.regularizers.autolip(model, (1, 28, 28))
    loss = criterion(model(x), y) + 1e-3 * penalty
    loss.backward()

How it works: the module is traced once with torch.fx (shapes propagated on a zero input); the AutoLip
recursion runs over the traced graph -- Linear / Conv2d by their spectral norm at the real input size,
BatchNorm by max |gamma| / sqrt(running_var + eps), activations by max(|alpha|, |beta|) of the table entry
(`lipbound.activations`) that the readers' tables (`lipbound.io.tables`) map the module / function /
tensor method to, average pooling by
its norm, max pooling by sqrt(windows per pixel), residual additions by the sum, concatenation by the
root of the sum of squares. Each spectral norm is ``||A v||`` for a unit vector v kept between calls and
refined by ``n_iter`` power iterations per call (``init_iter`` on the first call), as in spectral
normalisation: the value is differentiable in the weights (v is treated as a constant).

Kind: an **estimate** (power iterations underestimate each norm; after enough iterations it equals the
power-method product of the `autolip` method). Norm: l2. Cost per call: n_iter forward + adjoint passes
of each Linear / Conv2d on one input.

Why a walker of its own beside the torch reader (`lipbound.io.torch_reader`): the reader turns the module
into a `Network` of detached float64 copies of the weights, so no gradient could reach the module's
parameters; this walker evaluates the recursion on the live parameters (the fx trace is one call, shared
nothing else). What is shared is the knowledge of which module / function is which activation.
"""

from __future__ import annotations

import math
import operator
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import activations as _activations
from .errors import LipboundError
from .io.tables import FUNCTION_ACTIVATIONS, METHOD_ACTIVATIONS, MODULE_ACTIVATIONS

_STATE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

# modules, functions and tensor methods that are the identity for the Lipschitz recursion (the activations
# come from the readers' tables, `lipbound.io.tables`)
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Flatten)
_IDENTITY_FUNCTIONS = (torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze, operator.getitem,
                       torch.flatten, F.dropout)
_SHAPE_METHODS = {"view", "reshape", "flatten", "contiguous", "permute", "transpose", "squeeze", "unsqueeze", "clone",
                  "detach_"}


def _activation_factor(spec, bound: dict, where: str) -> float:
    """max(|alpha|, |beta|) of the table activation (`lipbound.activations`) that the reader's table entry
    ``spec`` maps these arguments to: the activation's Lipschitz constant in every l_p."""
    try:
        name, param = spec.resolve(bound)
        fn = _activations.make(name, param)
    except (ValueError, TypeError, LipboundError) as e:
        raise LipboundError(f"regularizers.autolip: {where}: {e}".splitlines()[0]) from None
    return max(abs(fn.alpha), abs(fn.beta))


def _module_slope(m: nn.Module) -> float | None:
    """The activation factor of an activation module, 1 for an identity-like one, None otherwise."""
    if type(m) in _IDENTITY_MODULES:
        return 1.0
    spec = MODULE_ACTIVATIONS.get(type(m))
    if spec is None:
        return None
    return _activation_factor(spec, spec.bind_module(m), f"module {type(m).__name__}")


def _call_factor(spec, node, where: str) -> float:
    """The activation factor of a function / tensor-method call (arguments after the input tensor)."""
    try:
        bound = spec.bind_call(tuple(node.args[1:]), dict(node.kwargs))
    except ValueError as e:
        raise LipboundError(f"regularizers.autolip: {where} (node {node.name}): {e}") from None
    return _activation_factor(spec, bound, f"{where} (node {node.name})")


class _State:
    def __init__(self, module, input_shape):
        from torch.fx import symbolic_trace
        from torch.fx.passes.shape_prop import ShapeProp

        try:
            self.gm = symbolic_trace(module)
        except Exception as e:  # noqa: BLE001 - report tracing failures as one line
            msg = f"regularizers.autolip: torch.fx cannot trace the module: {e}".splitlines()[0]
            raise LipboundError(msg) from None
        p = next(module.parameters(), None)
        self.dtype = p.dtype if p is not None else torch.float32
        x = torch.zeros((1,) + tuple(input_shape), dtype=self.dtype)
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                ShapeProp(self.gm).propagate(x)
        finally:
            module.train(was_training)
        self.input_shape = tuple(input_shape)
        self.vectors: dict[str, torch.Tensor] = {}
        self.constants: dict[str, float] = {}


def _in_shape(node) -> tuple:
    arg = node.args[0]
    return tuple(arg.meta["tensor_meta"].shape)


def _power_sigma(key, st: _State, lin, shape, n_iter, init_iter):
    """||lin(v)|| for the persistent unit vector v refined by power iterations (v without gradient)."""
    v = st.vectors.get(key)
    iters = n_iter
    if v is None or tuple(v.shape) != tuple(shape):
        g = torch.Generator().manual_seed(abs(hash(key)) % (2 ** 31))
        v = torch.randn(shape, generator=g, dtype=st.dtype)
        v = v / v.norm()
        iters = init_iter
    with torch.enable_grad():
        for _ in range(iters):
            x = v.detach().requires_grad_(True)
            y = lin(x, detach=True)
            (w,) = torch.autograd.grad(0.5 * (y * y).sum(), x)  # A^T A v
            nw = w.norm()
            if nw == 0:
                break
            v = (w / nw).detach()
    st.vectors[key] = v
    return lin(v, detach=False).norm()


def autolip(module: nn.Module, input_shape, n_iter: int = 1, init_iter: int = 100) -> torch.Tensor:
    """Differentiable AutoLip product of ``module`` (l2 norm, inputs of shape ``input_shape`` without
    the batch dimension): an **estimate** of the AutoLip upper bound (each spectral norm is a persistent
    power iteration, from below), returned as a 0-d tensor with gradient to the weights.

    ``n_iter`` power iterations per call refine each layer's vector (``init_iter`` on the first call).
    BatchNorm contributes max |gamma| / sqrt(running_var + eps) (its eval-mode map). Supported: Linear,
    Conv2d (zero padding), BatchNorm1d/2d, AvgPool2d, MaxPool2d, Flatten, Dropout, Identity, the usual
    activations, residual ``+``, ``torch.cat``, reshapes. Cost: n_iter (forward + adjoint) passes per
    Linear / Conv2d on a single input, plus the final forward pass that carries the gradient."""
    key = (tuple(input_shape),)
    states = _STATE.setdefault(module, {})
    if key not in states:
        states[key] = _State(module, input_shape)
    st: _State = states[key]
    modules = dict(st.gm.named_modules())
    L: dict[str, object] = {}
    out = None
    for node in st.gm.graph.nodes:
        if node.op == "placeholder":
            L[node.name] = 1.0
            continue
        if node.op == "get_attr":
            L[node.name] = 0.0
            continue
        if node.op == "output":
            arg = node.args[0]
            out = L.get(arg.name) if hasattr(arg, "name") else None
            continue
        in_L = [L[a.name] for a in node.all_input_nodes]
        nonconst = [x for x in in_L if not (isinstance(x, float) and x == 0.0)]
        if not nonconst:
            L[node.name] = 0.0
            continue
        if node.op == "call_module":
            m = modules[node.target]
            L[node.name] = _module_factor(node, m, st, n_iter, init_iter) * in_L[0]
        elif node.op == "call_function":
            L[node.name] = _function_rule(node, in_L, nonconst)
        elif node.op == "call_method":
            if node.target in _SHAPE_METHODS:
                L[node.name] = in_L[0]
            elif node.target in ("add", "__add__", "sub", "__sub__"):
                L[node.name] = sum(nonconst)
            elif node.target in METHOD_ACTIVATIONS:
                L[node.name] = _call_factor(METHOD_ACTIVATIONS[node.target], node, f"tensor method .{node.target}()") \
                    * in_L[0]
            else:
                raise LipboundError(f"regularizers.autolip: no rule for the tensor method {node.target!r} "
                                    f"(node {node.name})")
        else:
            raise LipboundError(f"regularizers.autolip: unexpected fx node {node.op} {node.target}")
    if out is None:
        raise LipboundError("regularizers.autolip: the module output is not a single tensor")
    if not isinstance(out, torch.Tensor):
        out = torch.tensor(float(out), dtype=st.dtype)
    return out


def _module_factor(node, m: nn.Module, st: _State, n_iter, init_iter):
    name = node.target
    s = _module_slope(m)
    if s is not None:
        return s
    shape = (1,) + _in_shape(node)[1:]
    if isinstance(m, nn.Linear):
        W = m.weight

        def lin(x, detach):
            w = W.detach() if detach else W
            return x @ w.T

        return _power_sigma(name, st, lin, (1, W.shape[1]), n_iter, init_iter)
    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            if isinstance(m.padding, str) and m.padding_mode == "zeros":
                pad = m._reversed_padding_repeated_twice
            else:
                raise LipboundError(f"regularizers.autolip: Conv2d {name} with padding_mode={m.padding_mode!r}")
        else:
            pad = None

        def lin(x, detach):
            w = m.weight.detach() if detach else m.weight
            if pad is not None:
                x = F.pad(x, pad)
                return F.conv2d(x, w, None, m.stride, 0, m.dilation, m.groups)
            return F.conv2d(x, w, None, m.stride, m.padding, m.dilation, m.groups)

        return _power_sigma(name, st, lin, shape, n_iter, init_iter)
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        scale = 1.0 / torch.sqrt(m.running_var + m.eps)
        if m.weight is not None:
            scale = m.weight * scale
        return scale.abs().max()
    if isinstance(m, nn.AvgPool2d):
        return _constant(name, st, lambda: _pool_norm(m, _in_shape(node)[1:]))
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return _constant(name, st, lambda: _adaptive_pool_norm(m, _in_shape(node)[1:]))
    if isinstance(m, nn.MaxPool2d):
        return _constant(name, st, lambda: _maxpool_norm(m, _in_shape(node)[1:]))
    raise LipboundError(f"regularizers.autolip: no rule for the module {type(m).__name__} ({name})")


def _constant(name, st, fn):
    if name not in st.constants:
        st.constants[name] = float(fn())
    return st.constants[name]


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _pool_norm(m: nn.AvgPool2d, shape):
    from . import opnorms
    from .network import AvgPool2d

    op = AvgPool2d(_pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding), m.count_include_pad,
                   m.ceil_mode)
    if m.divisor_override is not None:
        raise LipboundError("regularizers.autolip: AvgPool2d with divisor_override")
    return opnorms.spectral_norm(op, tuple(shape)).value


def _adaptive_pool_norm(m, shape):
    from . import opnorms
    from .network import AffineOp

    class _Adaptive(AffineOp):
        kind = "AvgPool2d"

        def linear(self, x):
            return F.adaptive_avg_pool2d(x, m.output_size)

        forward = linear

    return opnorms.collatz_wielandt_bound(_Adaptive(), tuple(shape)).value


def _maxpool_norm(m: nn.MaxPool2d, shape):
    from . import opnorms
    from .network import MaxPool2d

    op = MaxPool2d(_pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding), _pair(m.dilation),
                   m.ceil_mode)
    return math.sqrt(opnorms.maxpool_overlap(op, tuple(shape)))


def _function_rule(node, in_L, nonconst):
    t = node.target
    if t in (operator.add, torch.add, operator.sub, torch.sub, operator.iadd):
        return sum(nonconst)
    if t in (operator.mul, torch.mul, operator.truediv, torch.div):
        consts = [a for a in node.args if isinstance(a, (int, float))]
        if len(nonconst) == 1 and consts:
            c = float(consts[0])
            return nonconst[0] * (abs(c) if t in (operator.mul, torch.mul) else 1.0 / abs(c))
        raise LipboundError(f"regularizers.autolip: product of two input-dependent tensors (node {node.name})")
    if t in (torch.cat, torch.concat):
        return sum(x * x for x in nonconst) ** 0.5
    if t in FUNCTION_ACTIVATIONS:
        return _call_factor(FUNCTION_ACTIVATIONS[t], node, f"function {getattr(t, '__name__', t)}") * in_L[0]
    if t in _IDENTITY_FUNCTIONS:
        return in_L[0]
    raise LipboundError(f"regularizers.autolip: no rule for the function {getattr(t, '__name__', t)} "
                        f"(node {node.name})")
