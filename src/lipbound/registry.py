"""The method registry and the context every method receives.

A method is a function ``fn(net: Network, ctx: MethodContext) -> MethodResult`` registered with
`register_method`. It may raise `errors.Unsupported` (the API turns it into status ``unsupported``)
or `errors.MethodFailed` (status ``failed``). Each method module in ``lipbound/methods/`` is imported
automatically, so adding a method is adding one module.
"""

from __future__ import annotations

import ast
import importlib
import math
import pkgutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import activations as _activations
from .errors import LipboundError
from .network import Network
from .norms import INF, norm_name, parse_norm

KINDS = ("upper", "lower", "exact", "estimate")
STATUSES = ("ok", "time_limit", "failed", "unsupported")

# operation kinds as they appear in Network.op_kinds()
AFFINE_OPS = frozenset({"Linear", "Conv2d", "ElementwiseAffine", "AvgPool2d", "Pad", "Reshape", "Transpose"})
ALL_OPS = AFFINE_OPS | {"Activation", "MaxPool2d", "Add"}
# activation sets, derived from the one table (lipbound.activations)
ALL_ACTIVATIONS = frozenset(_activations.ACTIVATIONS)
PIECEWISE_LINEAR = _activations.PIECEWISE_LINEAR
#: max(z, 0) + a min(z, 0) forms (relu, leaky_relu, abs): what exact MIP / enumeration / splitting need
RELU_LIKE = frozenset(n for n, c in _activations.ACTIVATIONS.items() if _activations.make(n).relu_like_slope is not None)


@dataclass
class Region:
    """A box region of the input space: ``lower <= x <= upper`` (arrays of the input shape).

    Built by `Region.box(center, eps, domain)` (the l_inf ball clipped to an optional input domain) or
    `Region.from_bounds(lower, upper)`. ``None`` in the API means the global region (all of R^n)."""

    lower: np.ndarray
    upper: np.ndarray
    center: np.ndarray | None = None
    eps: float | None = None
    domain: tuple | None = None

    @classmethod
    def box(cls, center, eps: float, domain: tuple | None = None) -> "Region":
        center = np.asarray(center, dtype=np.float64)
        eps = float(eps)
        if not np.isfinite(center).all():
            raise LipboundError("the region center has NaN or infinite entries")
        if not (eps >= 0 and math.isfinite(eps)):
            raise LipboundError(f"eps must be a finite number >= 0, got {eps}")
        lower, upper = center - eps, center + eps
        if domain is not None:
            lo, hi = (np.broadcast_to(np.asarray(d, dtype=np.float64), center.shape) for d in domain)
            lower, upper = np.maximum(lower, lo), np.minimum(upper, hi)
            if (lower > upper).any():
                raise LipboundError("the box around the center does not meet the input domain")
        return cls(lower, upper, center, eps, domain)

    @classmethod
    def from_bounds(cls, lower, upper) -> "Region":
        lower, upper = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
        if lower.shape != upper.shape or (lower > upper).any():
            raise LipboundError("a box needs lower <= upper of the same shape")
        return cls(lower, upper, (lower + upper) / 2, None, None)

    def fit(self, net: Network) -> "Region":
        """The region with arrays reshaped to the network's input shape (error if sizes differ)."""
        if self.lower.size != net.n_inputs:
            raise LipboundError(f"the region has {self.lower.size} coordinates but the network input {net.input_shape} "
                                f"has {net.n_inputs}")
        shape = net.input_shape
        c = None if self.center is None else self.center.reshape(shape)
        return Region(self.lower.reshape(shape), self.upper.reshape(shape), c, self.eps, self.domain)

    @property
    def radius(self) -> np.ndarray:
        return (self.upper - self.lower) / 2

    @property
    def mid(self) -> np.ndarray:
        return (self.upper + self.lower) / 2

    def contains(self, x, tol: float = 1e-12) -> bool:
        x = np.asarray(x, dtype=np.float64).reshape(self.lower.shape)
        return bool(((x >= self.lower - tol) & (x <= self.upper + tol)).all())

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(self.lower, self.upper, size=(n,) + self.lower.shape)

    def to_json(self) -> dict:
        d = {"type": "box", "eps": self.eps, "size": int(self.lower.size),
             "lower_min": float(self.lower.min()), "upper_max": float(self.upper.max())}
        if self.center is not None and self.center.size <= 64:
            d["center"] = self.center.ravel().tolist()
        if self.domain is not None:
            d["domain"] = [float(np.min(self.domain[0])), float(np.max(self.domain[1]))]
        return d


@dataclass
class MethodResult:
    """What a method returns. ``kind`` defaults to the registered kind.

    ``lower``/``lower_witness``: a certified lower bound found on the way (e.g. a MIP incumbent)."""

    value: float | None
    kind: str | None = None
    status: str = "ok"
    witness: np.ndarray | None = None
    details: dict = field(default_factory=dict)
    lower: float | None = None
    lower_witness: np.ndarray | None = None
    reason: str | None = None


class _NullBar:
    def __init__(self, iterable=None, **kw):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def update(self, n=1):
        pass

    def set_postfix_str(self, s):
        pass

    def set_description(self, s):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


@dataclass
class MethodContext:
    """Everything a method is asked: norm, region, output, options, time limit, progress display."""

    norm: float = 2
    region: Region | None = None
    output: int | None = None
    time_limit: float | None = None
    options: dict = field(default_factory=dict)
    quiet: bool = True
    seed: int = 0
    start: float = field(default_factory=time.perf_counter)
    method: str = ""

    @property
    def is_global(self) -> bool:
        return self.region is None

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def time_left(self) -> float:
        return INF if self.time_limit is None else self.time_limit - self.elapsed()

    def out_of_time(self) -> bool:
        return self.time_left() <= 0

    def option(self, name: str, default: Any = None, cast: Callable | None = None) -> Any:
        """A method option, cast to the type of ``default`` (or ``cast``) when given as a string."""
        if name not in self.options:
            return default
        value = self.options[name]
        cast = cast or (type(default) if default is not None else None)
        if cast is None or isinstance(value, cast):
            return value
        try:
            if cast is bool:
                if isinstance(value, str):
                    low = value.lower()
                    if low in ("1", "true", "yes", "on"):
                        return True
                    if low in ("0", "false", "no", "off"):
                        return False
                    raise ValueError(value)
                return bool(value)
            return cast(value)
        except (TypeError, ValueError):
            raise LipboundError(f"option {name}={value!r} of method {self.method} should be of type {cast.__name__}") from None

    def progress(self, iterable=None, total=None, desc: str | None = None):
        """A tqdm progress bar on stderr, or a silent stand-in when quiet."""
        if self.quiet:
            return _NullBar(iterable)
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc or self.method, leave=False, dynamic_ncols=True)

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)


@dataclass
class MethodSpec:
    name: str
    func: Callable[[Network, MethodContext], MethodResult]
    kind: str
    norms: tuple
    regions: tuple  # subset of ("global", "box")
    ops: frozenset
    activations: frozenset
    description: str
    options: dict
    family: str
    in_compare: bool = True

    def unsupported_reason(self, net: Network, norm, region: Region | None) -> str | None:
        """None when the method can run on this request, else a one-line reason."""
        p = parse_norm(norm)
        if p not in self.norms:
            return (f"method {self.name} does not support norm {norm_name(p)} "
                    f"(it supports {', '.join(norm_name(q) for q in self.norms)})")
        region_kind = "global" if region is None else "box"
        if region_kind not in self.regions:
            if region_kind == "global":
                return f"method {self.name} is local: give a box region (center and eps)"
            return f"method {self.name} is global-only: it does not bound a box region"
        missing = self.missing_operations(net)
        if missing:
            others = [s.name for s in REGISTRY.values() if s.name != self.name and not s.missing_operations(net)]
            return (f"method {self.name} does not support {', '.join(missing)} in this network; methods that do: "
                    f"{', '.join(others) or 'none'}")
        return None

    def missing_operations(self, net: Network) -> list[str]:
        """The network's operation kinds (and activations) this method cannot handle."""
        missing = []
        for kind in sorted(net.op_kinds()):
            if kind.startswith("Activation:"):
                act = kind.split(":", 1)[1]
                if act not in self.activations:
                    missing.append(f"the {act} activation")
            elif kind != "Activation" and kind not in self.ops:
                missing.append(f"the operation {kind}")
        return missing

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "norms": [norm_name(p) for p in self.norms],
                "regions": list(self.regions), "family": self.family, "description": self.description,
                "options": self.options}


REGISTRY: dict[str, MethodSpec] = {}


def register_method(name: str, *, kind: str, norms=(1, 2, INF), regions=("global", "box"),
                    ops=ALL_OPS, activations=ALL_ACTIVATIONS, description: str, options: dict | None = None,
                    family: str | None = None, in_compare: bool = True):
    """Decorator registering ``fn(net, ctx) -> MethodResult`` under ``name``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    norms = tuple(parse_norm(p) for p in norms)

    def deco(fn):
        if name in REGISTRY and REGISTRY[name].func is not fn:
            raise ValueError(f"method {name!r} registered twice")
        REGISTRY[name] = MethodSpec(name, fn, kind, norms, tuple(regions), frozenset(ops), frozenset(activations),
                                    description, dict(options or {}), family or fn.__module__.rsplit(".", 1)[-1],
                                    in_compare)
        return fn

    return deco


_LOADED = False


def load_methods() -> dict[str, MethodSpec]:
    """Import every sub-package (method family) of lipbound.methods, whose ``__init__`` imports the modules
    that register its methods, and return the registry."""
    global _LOADED
    if not _LOADED:
        pkg = importlib.import_module(f"{__package__}.methods")

        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
            if info.ispkg and not info.name.startswith("_"):
                importlib.import_module(f"{pkg.__name__}.{info.name}")
        _LOADED = True
    return REGISTRY


def get_method(name: str) -> MethodSpec:
    reg = load_methods()
    if name not in reg:
        raise LipboundError(f"unknown method {name!r}; known methods: {', '.join(sorted(reg))}")
    return reg[name]


def parse_option_value(text: str) -> Any:
    """'4' -> 4, '0.5' -> 0.5, 'true' -> True, 'clarabel' -> 'clarabel'."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
