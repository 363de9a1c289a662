"""Short sequences of network operations that both readers build the same way (clamp / Clip with one
or two constant bounds, means over dimensions, adaptive pooling). Each function takes the reader's
``add(op, inputs, name) -> node index`` callback and an ``err(message, cls=LipboundError)`` callback.
Also the small steps every reader takes alike: unique node names, checking the file it is given."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import LipboundError, UnsupportedOperator
from ..network import AdaptiveAvgPool2d, Activation, AvgPool2d, ElementwiseAffine, MaxPool2d, Reshape


def unique_name(name: str, used: set) -> str:
    """``name``, or ``name_2``, ``name_3``... the first not in ``used`` (a reader's node names), which is
    added to ``used``."""
    base, k = name, 1
    while name in used:
        k += 1
        name = f"{base}_{k}"
    used.add(name)
    return name


def existing_file(path, kind: str) -> Path:
    """``path`` as a Path; a one-line `LipboundError` when there is no such file or it is a directory
    (``kind`` names what it should be, e.g. "an ONNX file")."""
    p = Path(path)
    if not p.exists():
        raise LipboundError(f"no such file: {str(p)!r}")
    if p.is_dir():
        raise LipboundError(f"{str(p)!r} is a directory, not {kind}")
    return p


def clamp_nodes(add, x: int, shape, lo, hi, label: str, err) -> int:
    """clamp(x, lo, hi) with constant bounds (None: no bound): hardtanh(lo, hi) with both bounds, relu(x)
    for lo = 0 alone, lo + relu(x - lo) for another lower bound, hi - relu(hi - x) for an upper bound
    alone, x itself with neither. Returns the output node."""
    for v in (lo, hi):
        if v is not None and math.isnan(v):
            err(f"node {label!r}: NaN clamp bound")
    lo = None if lo is None or lo == -math.inf else float(lo)
    hi = None if hi is None or hi == math.inf else float(hi)
    if lo is not None and hi is not None:
        if not lo < hi:
            err(f"node {label!r}: clamp with min {lo} >= max {hi} is constant", UnsupportedOperator)
        return add(Activation("hardtanh", (lo, hi)), [x], label)
    if lo is None and hi is None:
        return x
    if lo is not None and not math.isfinite(lo) or hi is not None and not math.isfinite(hi):
        err(f"node {label!r}: a clamp bound of +-inf on the wrong side makes the output constant",
            UnsupportedOperator)
    ones = np.ones(shape)
    if lo is not None:
        if lo == 0.0:
            return add(Activation("relu"), [x], label)
        y = add(ElementwiseAffine(ones, -lo * ones, label="Sub"), [x], label + "/shift")
        y = add(Activation("relu"), [y], label)
        return add(ElementwiseAffine(ones, lo * ones, label="Add"), [y], label + "/unshift")
    y = add(ElementwiseAffine(-ones, hi * ones, label="Sub"), [x], label + "/reflect")
    y = add(Activation("relu"), [y], label)
    return add(ElementwiseAffine(-ones, hi * ones, label="Sub"), [y], label + "/unreflect")


def mean_nodes(add, x: int, shape, dims, keepdim: bool, label: str, err) -> int:
    """The mean over the sample dimensions ``dims`` (batch excluded, non-negative, adjacent) of node x of
    sample shape ``shape``: an AvgPool2d over H and / or W of a (C, H, W) tensor, else a reshape to
    (A, B, D) (B = the averaged block) and an AvgPool2d((B, 1)); then a reshape to the result shape."""
    dims = sorted(set(int(d) for d in dims))
    if not dims or dims[0] < 0 or dims[-1] >= len(shape):
        err(f"node {label!r}: a mean over dimensions {dims} of a sample of shape {list(shape)}", UnsupportedOperator)
    if dims != list(range(dims[0], dims[-1] + 1)):
        err(f"node {label!r}: a mean over non-adjacent dimensions {dims} is not supported", UnsupportedOperator)
    shape = tuple(shape)
    kept = tuple(1 if i in dims else n for i, n in enumerate(shape))
    final = kept if keepdim else tuple(n for i, n in enumerate(shape) if i not in dims)
    if not final:
        err(f"node {label!r}: a mean that leaves a scalar per sample is not supported", UnsupportedOperator)
    if len(shape) == 3 and dims[0] >= 1:
        k = (shape[1] if 1 in dims else 1, shape[2] if 2 in dims else 1)
        y = add(AvgPool2d(k, k), [x], label)
        cur = kept
    else:
        A, B = int(np.prod(shape[:dims[0]])), int(np.prod([shape[i] for i in dims]))
        D = int(np.prod(shape[dims[-1] + 1:]))
        y = add(Reshape((A, B, D)), [x], label + "/in")
        y = add(AvgPool2d((B, 1), (B, 1)), [y], label)
        cur = (A, 1, D)
    return y if cur == final else add(Reshape(final), [y], label + "/out")


def adaptive_pool_nodes(add, x: int, shape, output_size, label: str, err, kind: str = "avg") -> int:
    """Adaptive pooling of a (C, H, W) node to ``output_size`` ((oh, ow), an int, None entries keep the
    size): an AvgPool2d / MaxPool2d when H and W are multiples of the output size, otherwise (average
    only) an `AdaptiveAvgPool2d`."""
    _, H, W = shape
    out = (output_size, output_size) if output_size is None or isinstance(output_size, (int, np.integer)) \
        else tuple(output_size)
    if len(out) != 2:
        err(f"node {label!r}: adaptive pooling output size {output_size!r} is not 2-D")
    oh, ow = (H if out[0] is None else int(out[0])), (W if out[1] is None else int(out[1]))
    if H % oh == 0 and W % ow == 0:
        k = (H // oh, W // ow)
        return add(AvgPool2d(k, k) if kind == "avg" else MaxPool2d(k, k), [x], label)
    if kind != "avg":
        err(f"node {label!r}: adaptive max pooling from {H}x{W} to {oh}x{ow} (sizes that do not divide) is not "
            "supported", UnsupportedOperator)
    return add(AdaptiveAvgPool2d((oh, ow)), [x], label)
