"""The readers' activation tables: which torch module, torch function, tensor method, aten operator
(torch.export programs) and ONNX operator is which activation of `lipbound.activations`, with which
parameter.

An entry is an `ActSpec`: the activation name (or a function of the arguments giving it, for GELU's
``approximate``), the arguments the parameter is read from with their defaults (module attributes and
function arguments share names: ``nn.LeakyReLU.negative_slope`` and ``F.leaky_relu(x, negative_slope)``),
and an optional check that refuses arguments outside the activation (softplus with a low threshold, ELU
with ``scale``). Operations that are not one activation by themselves (Clip / clamp with one bound,
ONNX HardSigmoid with other constants, PReLU) have handlers in the readers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..network import Activation

aten = torch.ops.aten


@dataclass(frozen=True)
class ActSpec:
    """How one torch / aten / ONNX operation maps to ``Activation(name, param)``.

    ``args``: ((name, default), ...) of the arguments after the input tensor, in positional order (for a
    module: its attributes; for ONNX: its attributes). The parameter is ``param(bound)`` when given,
    else the single argument, or the tuple of them, or none. ``check(bound)`` returns a reason to refuse
    the call, or None. Arguments named in ``ignore`` (``inplace``) are accepted and ignored."""

    name: str | Callable[[dict], str]
    args: tuple = ()
    param: Callable[[dict], object] | None = None
    check: Callable[[dict], str | None] | None = None
    ignore: tuple = ("inplace",)

    def bind_call(self, args: tuple, kwargs: dict) -> dict:
        """The arguments of a call (input tensor excluded) by name, defaults filled in; raises
        ValueError for arguments the activation does not take."""
        names = [n for n, _ in self.args] + list(self.ignore)
        if len(args) > len(names):
            raise ValueError(f"{len(args)} positional arguments after the input, expected at most {len(names)}")
        bound = dict(zip(names, args))
        for k, v in kwargs.items():
            if k not in names:
                raise ValueError(f"unexpected argument {k!r}")
            bound[k] = v
        for n, d in self.args:
            bound.setdefault(n, d)
        return bound

    def bind_module(self, mod) -> dict:
        """A module's attributes named in ``args``."""
        return {n: getattr(mod, n, d) for n, d in self.args}

    def resolve(self, bound: dict) -> tuple[str, object]:
        """(activation name, parameter or None) from the bound arguments; ValueError(reason) to refuse."""
        if self.check is not None:
            why = self.check(bound)
            if why:
                raise ValueError(why)
        name = self.name(bound) if callable(self.name) else self.name
        if self.param is not None:
            return name, self.param(bound)
        vals = [bound[n] for n, _ in self.args]
        for v in vals:
            if isinstance(v, torch.Tensor):
                raise ValueError("a tensor-valued parameter")
        if not vals:
            return name, None
        return name, (float(vals[0]) if len(vals) == 1 else tuple(float(v) for v in vals))


def make_activation(name: str, param=None) -> Activation:
    """``Activation(name)`` (its default parameters) or ``Activation(name, param)``."""
    return Activation(name) if param is None else Activation(name, param)


def _gelu_name(bound: dict) -> str:
    """gelu or gelu_tanh from GELU's ``approximate`` argument."""
    approx = bound.get("approximate", "none")
    if approx not in ("none", "tanh"):
        raise ValueError(f"GELU approximate={approx!r} (only 'none' and 'tanh')")
    return "gelu" if approx == "none" else "gelu_tanh"


def _softplus_check(bound: dict):
    """Refuse torch's softplus with a threshold below 20 (linear above it)."""
    thr = bound.get("threshold", 20.0)
    if thr is not None and float(thr) < 20:
        return (f"softplus with threshold={thr} (linear above it; only threshold >= 20 is read as the smooth "
                "softplus)")
    return None


def _elu_check(bound: dict):
    """Refuse aten.elu with a scale (SELU-like)."""
    if float(bound.get("scale", 1.0)) != 1.0 or float(bound.get("input_scale", 1.0)) != 1.0:
        return f"ELU with scale={bound.get('scale')}, input_scale={bound.get('input_scale')} (SELU-like)"
    return None


def _prelu_check(bound: dict):
    """Refuse PReLU with one slope per channel."""
    w = bound.get("weight")
    if not isinstance(w, torch.Tensor) or w.numel() != 1:
        return "PReLU with one slope per channel (only a single shared slope is read, as a leaky ReLU)"
    return None


def _prelu_param(bound: dict) -> float:
    """PReLU's single slope."""
    return float(bound["weight"].detach().reshape(-1)[0])


RELU = ActSpec("relu")
TANH = ActSpec("tanh")
SIGMOID = ActSpec("sigmoid")
LEAKY = ActSpec("leaky_relu", (("negative_slope", 0.01),))
ELU = ActSpec("elu", (("alpha", 1.0),))
SOFTPLUS = ActSpec("softplus", (("beta", 1.0), ("threshold", 20.0)), param=lambda a: float(a["beta"]),
                   check=_softplus_check)
GELU = ActSpec(_gelu_name, (("approximate", "none"),), param=lambda a: None)
SILU = ActSpec("silu")
HARDTANH = ActSpec("hardtanh", (("min_val", -1.0), ("max_val", 1.0)))
RELU6 = ActSpec("hardtanh", param=lambda a: (0.0, 6.0))
HARDSWISH = ActSpec("hardswish")
HARDSIGMOID = ActSpec("hardsigmoid")
SOFTSIGN = ActSpec("softsign")
MISH = ActSpec("mish")
ABS = ActSpec("abs")
SELU = ActSpec("selu")
PRELU = ActSpec("leaky_relu", (("weight", None),), param=_prelu_param, check=_prelu_check)

#: torch module class -> activation (looked up by exact class)
MODULE_ACTIVATIONS: dict = {
    nn.ReLU: RELU, nn.LeakyReLU: LEAKY, nn.Tanh: TANH, nn.Sigmoid: SIGMOID, nn.ELU: ELU, nn.Softplus: SOFTPLUS,
    nn.GELU: GELU, nn.SiLU: SILU, nn.Hardtanh: HARDTANH, nn.ReLU6: HARDTANH,  # ReLU6: min_val=0, max_val=6
    nn.Hardswish: HARDSWISH, nn.Hardsigmoid: HARDSIGMOID, nn.Softsign: SOFTSIGN, nn.Mish: MISH, nn.PReLU: PRELU,
    nn.SELU: SELU,
}


def _ops(*names):
    """aten overloads by name (absent ones skipped: the table works across torch versions)."""
    out = []
    for n in names:
        packet, _, overload = n.partition(".")
        op = getattr(getattr(aten, packet, None), overload or "default", None)
        if op is not None:
            out.append(op)
    return out


def _table(*groups) -> dict:
    """A dict from every key of each group to the group's entry (None keys skipped)."""
    out = {}
    for keys, spec in groups:
        for k in keys:
            if k is not None:
                out[k] = spec
    return out


#: torch function or aten operator (fx ``call_function`` target) -> activation
FUNCTION_ACTIVATIONS: dict = _table(
    ([torch.relu, F.relu, torch.relu_, F.relu_, *_ops("relu", "relu_")], RELU),
    ([F.leaky_relu, getattr(F, "leaky_relu_", None), *_ops("leaky_relu", "leaky_relu_")], LEAKY),
    ([torch.tanh, F.tanh, torch.tanh_, *_ops("tanh", "tanh_")], TANH),
    ([torch.sigmoid, F.sigmoid, torch.sigmoid_, *_ops("sigmoid", "sigmoid_")], SIGMOID),
    ([F.elu, getattr(F, "elu_", None)], ELU),
    (_ops("elu", "elu_"), ActSpec("elu", (("alpha", 1.0), ("scale", 1.0), ("input_scale", 1.0)),
                                  param=lambda a: float(a["alpha"]), check=_elu_check)),
    ([F.softplus, *_ops("softplus")], SOFTPLUS),
    ([F.gelu, *_ops("gelu", "gelu_")], GELU),
    ([F.silu, *_ops("silu", "silu_")], SILU),
    ([F.hardtanh, getattr(F, "hardtanh_", None), *_ops("hardtanh", "hardtanh_")], HARDTANH),
    ([F.relu6, *_ops("relu6")], RELU6),
    ([F.hardswish, *_ops("hardswish", "hardswish_")], HARDSWISH),
    ([F.hardsigmoid, *_ops("hardsigmoid", "hardsigmoid_")], HARDSIGMOID),
    ([F.softsign], SOFTSIGN),
    ([F.mish, *_ops("mish", "mish_")], MISH),
    ([torch.abs, torch.absolute, torch.abs_, *_ops("abs", "abs_")], ABS),
    ([F.prelu, *_ops("prelu", "_prelu_kernel")], PRELU),
    ([F.selu, torch.selu, *_ops("selu", "selu_")], SELU),
)

#: tensor method (fx ``call_method`` target) -> activation
METHOD_ACTIVATIONS: dict = _table(
    (["relu", "relu_"], RELU), (["tanh", "tanh_"], TANH), (["sigmoid", "sigmoid_"], SIGMOID),
    (["abs", "abs_", "absolute", "absolute_"], ABS),
)

#: ONNX op_type -> activation (parameters from the node's attributes). Clip, HardSigmoid and PRelu have
#: handlers of their own (constant inputs; an affine map before hardtanh for other HardSigmoid constants).
ONNX_ACTIVATIONS: dict = {
    "Relu": RELU, "Sigmoid": SIGMOID, "Tanh": TANH,
    "LeakyRelu": ActSpec("leaky_relu", (("alpha", 0.01),)),
    "Elu": ActSpec("elu", (("alpha", 1.0),)),
    "Softplus": ActSpec("softplus", param=lambda a: 1.0),
    "Gelu": GELU, "HardSwish": HARDSWISH, "Softsign": SOFTSIGN, "Mish": MISH, "Abs": ABS,
    "Selu": ActSpec("selu", (("alpha", 1.67326319217681884765625), ("gamma", 1.05070102214813232421875))),
}
