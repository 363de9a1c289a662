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
AFFINE_OPS = frozenset({"Linear", "Conv2d", "ElementwiseAffine", "AvgPool2d", "AdaptiveAvgPool2d", "Pad", "Reshape",
                        "Transpose"})
#: the default operation set of a method; MaxMin (GroupSort-2) is declared explicitly by the methods that handle it
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


# --------------------------------------------------------------------------------------------------
# Method options: declared once (type, default, allowed values, doc), validated before a method runs
# --------------------------------------------------------------------------------------------------

#: option types besides bool / int / float / str
FLOATS = "float or list of floats"
BOOL_OR_AUTO = "bool or auto"
OPTION_TYPES = ("bool", "int", "float", "str", FLOATS, BOOL_OR_AUTO)
_TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "str"}
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


class _Invalid(Exception):
    pass


def _num(x):
    return f"{x:g}" if isinstance(x, float) else str(x)


@dataclass(frozen=True)
class Option:
    """The declaration of one method option.

    ``type``: bool, int, float, str (Python types or their names), `FLOATS` (a float or a list of floats,
    returned as a float or a tuple) or `BOOL_OR_AUTO` (true, false or the string "auto").
    ``default``: the value when the option is not given; None means "auto": the method computes it
    (None and the string "auto" are then accepted as values too). ``choices``: the allowed values (str:
    matched case-insensitively, the declared spelling is returned). ``min``/``max``: the allowed range
    (inclusive unless ``min_exclusive``/``max_exclusive``; for `FLOATS`, of every element).
    ``doc``: one line."""

    type: Any
    default: Any = None
    doc: str = ""
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    max_exclusive: bool = False

    def __post_init__(self):
        t = _TYPE_NAMES.get(self.type, self.type)
        if t not in OPTION_TYPES:
            raise ValueError(f"option type must be one of {OPTION_TYPES}, not {self.type!r}")
        object.__setattr__(self, "type", t)
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))
        if "\n" in self.doc:
            raise ValueError("an option's doc is one line")

    @property
    def auto(self) -> bool:
        """True when the default is None (computed by the method): None / "auto" are accepted."""
        return self.default is None

    # -- description ---------------------------------------------------------------------------

    def range_text(self) -> str:
        lo, hi = self.min, self.max
        if lo is not None and hi is not None:
            return (f"in {'(' if self.min_exclusive else '['}{_num(lo)}, {_num(hi)}"
                    f"{')' if self.max_exclusive else ']'}")
        if lo is not None:
            return f"{'>' if self.min_exclusive else '>='} {_num(lo)}"
        if hi is not None:
            return f"{'<' if self.max_exclusive else '<='} {_num(hi)}"
        return ""

    def allowed(self) -> str:
        """The allowed values in words, e.g. 'an int >= 1, or auto' or 'one of ipm, simplex'."""
        if self.choices is not None:
            text = "one of " + ", ".join(self.format_value(c) for c in self.choices)
        elif self.type == "bool":
            text = "true or false"
        elif self.type == BOOL_OR_AUTO:
            text = "true, false or auto"
        else:
            rng = self.range_text()
            noun = {"int": "an int", "float": "a float", "str": "a string"}.get(self.type)
            if self.type == FLOATS:
                text = f"a float {rng} or a list of such floats" if rng else "a float or a list of floats"
            else:
                text = f"{noun} {rng}".strip()
        if self.auto and self.type != BOOL_OR_AUTO:
            text += ", or auto"
        return text

    @staticmethod
    def format_value(v) -> str:
        if v is None:
            return "auto"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (tuple, list)):
            return ",".join(Option.format_value(x) for x in v)
        if isinstance(v, float):
            return _num(v)
        return str(v)

    def describe(self) -> str:
        """One line: the doc, the allowed values and the default (the `options` entry of `lipbound
        methods --json`)."""
        doc = self.doc.rstrip(". ")
        return f"{doc} ({self.allowed()}; default {self.format_value(self.default)})" if doc else \
            f"{self.allowed()}; default {self.format_value(self.default)}"

    def to_json(self) -> dict:
        default = list(self.default) if isinstance(self.default, tuple) else self.default
        return {"type": self.type, "default": default, "choices": None if self.choices is None else list(self.choices),
                "min": self.min, "max": self.max, "min_exclusive": self.min_exclusive,
                "max_exclusive": self.max_exclusive, "auto": self.auto, "allowed": self.allowed(), "doc": self.doc}

    # -- validation ----------------------------------------------------------------------------

    def validate(self, value: Any, *, method: str = "", name: str = "") -> Any:
        """The typed value of ``value`` (strings as given on the command line are parsed), or a one-line
        `LipboundError` naming the method, the option and the allowed values."""
        try:
            return self._check(value)
        except _Invalid as e:
            who = f" of method {method}" if method else ""
            extra = f" ({e})" if str(e) else ""
            raise LipboundError(f"option {name}={self.format_given(value)}{who} is invalid{extra}: expected "
                                f"{self.allowed()} (default {self.format_value(self.default)})") from None

    @staticmethod
    def format_given(value) -> str:
        text = repr(value) if isinstance(value, str) else Option.format_value(value) \
            if isinstance(value, (bool, int, float, tuple, list, type(None))) else repr(value)
        return text if len(text) <= 60 else text[:57] + "..."

    def _check(self, value):
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, str):
            text = value.strip()
            low = text.lower()
            if self.auto and low in ("auto", "none", "null", ""):
                return None
            if self.type == "str":
                value = text
            elif self.type in ("bool", BOOL_OR_AUTO):
                if low in _TRUE:
                    return True
                if low in _FALSE:
                    return False
                if self.type == BOOL_OR_AUTO and low == "auto":
                    return "auto"
                raise _Invalid()
            else:
                value = parse_option_value(text)
                if isinstance(value, str):
                    try:
                        value = float(value)  # 'inf', '1e3'
                    except ValueError:
                        raise _Invalid() from None
        if value is None:
            if self.auto:
                return None
            raise _Invalid()
        if self.type in ("bool", BOOL_OR_AUTO):
            if isinstance(value, bool):
                return value
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise _Invalid()
        if self.type == FLOATS:
            if isinstance(value, (list, tuple, np.ndarray)):
                items = tuple(self._scalar(v, float) for v in np.asarray(value, dtype=object).ravel())
                if not items:
                    raise _Invalid("an empty list")
                return self._in_choices(items)
            return self._in_choices(self._scalar(value, float))
        if self.type == "str":
            if not isinstance(value, str):
                raise _Invalid()
            if self.choices is not None:
                for c in self.choices:
                    if isinstance(c, str) and c.lower() == value.lower():
                        return c
                raise _Invalid()
            return value
        return self._in_choices(self._scalar(value, int if self.type == "int" else float))

    def _scalar(self, v, kind):
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, str):
            try:
                v = float(v.strip())
            except ValueError:
                raise _Invalid() from None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _Invalid()
        if isinstance(v, float) and math.isnan(v):
            raise _Invalid("NaN")
        if kind is int:
            if isinstance(v, float):
                if not (math.isfinite(v) and v.is_integer()):
                    raise _Invalid("not an integer")
                v = int(v)
        else:
            v = float(v)
        lo, hi = self.min, self.max
        if lo is not None and (v < lo or (self.min_exclusive and v == lo)):
            raise _Invalid("out of range")
        if hi is not None and (v > hi or (self.max_exclusive and v == hi)):
            raise _Invalid("out of range")
        return v

    def _in_choices(self, v):
        if self.choices is not None:
            items = v if isinstance(v, tuple) else (v,)
            if any(x not in self.choices for x in items):
                raise _Invalid()
        return v


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
    #: the blackboard of a run of several methods on one problem (`lipbound.certify` fills it; empty
    #: otherwise). Keys: "best_lower" (float: the best certified lower bound so far, by any method),
    #: "best_upper" (float: the best certified upper bound so far), "witness" (the best lower bound's input,
    #: of the input shape), "target_gap" (float: the caller stops once upper / lower <= it), "cache" (see
    #: `cached`). Methods may read it to stop early or to seed a search; every value in it is certified.
    shared: dict = field(default_factory=dict)

    def shared_value(self, key: str, default=None):
        """``shared[key]`` (the blackboard, see `shared`), or ``default`` when absent or None."""
        value = self.shared.get(key)
        return default if value is None else value

    def cached(self, net: Network, what: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per (network, region, ``what``) in the blackboard's cache: a result computed
        by one method (e.g. ``what="crown"``: `crown.preactivation_bounds` with alpha=False) is reused by the
        next ones of the same run. Without a blackboard entry it is computed and stored. Only results that
        depend on nothing but the network, the region and ``what`` may be cached (not the norm, the output
        or the options: put those in ``what``). The value is shared: callers must not modify it in place
        (clone tensors before writing into them). Cost: one copy of the region's bounds as the key."""
        cache = self.shared.setdefault("cache", {})
        key = (id(net), _region_key(self.region), what)
        hit = cache.get(key)
        if hit is not None and hit[0] is net:  # the network object itself is kept: ids are never reused
            self.shared.setdefault("cache_hits", []).append(what)
            return hit[1]
        value = compute()
        cache[key] = (net, value)
        return value

    @property
    def is_global(self) -> bool:
        return self.region is None

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def time_left(self) -> float:
        return INF if self.time_limit is None else self.time_limit - self.elapsed()

    def out_of_time(self) -> bool:
        return self.time_left() <= 0

    def option(self, name: str, *legacy) -> Any:
        """The value of the declared option ``name`` of this method: the value given by the caller,
        validated and typed (`Option.validate`), else the declared default (None: computed by the
        method, "auto"). Reading an option the method does not declare is a programming error: KeyError."""
        if legacy:
            raise TypeError(f"ctx.option({name!r}) takes no default or cast: declare the option with "
                            "Option(type, default, ...) in register_method(options=...)")
        declared = self.declared_options()
        if name not in declared:
            raise KeyError(f"method {self.method or '(none)'} reads the undeclared option {name!r}; its declared "
                           f"options: {', '.join(declared) or 'none'} (declare it in register_method(options=...))")
        opt = declared[name]
        if name in self.options:
            return opt.validate(self.options[name], method=self.method, name=name)
        return opt.default

    def declared_options(self) -> dict:
        """name -> `Option` of the method this context runs (KeyError when it is not a registered method)."""
        spec = REGISTRY.get(self.method) or load_methods().get(self.method)
        if spec is None:
            raise KeyError(f"this MethodContext belongs to no registered method (method={self.method!r}): "
                           "give MethodContext(method=NAME) to read options")
        return spec.options

    def progress(self, iterable=None, total=None, desc: str | None = None):
        """A tqdm progress bar on stderr, or a silent stand-in when quiet."""
        if self.quiet:
            return _NullBar(iterable)
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc or self.method, leave=False, dynamic_ncols=True)

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)


def _region_key(region: Region | None):
    """The identity of a region for the blackboard's cache: None (global) or its shape and the bytes of its
    bounds (two equal boxes share an entry, whatever their center / eps / domain fields; bytes, not a hash
    of them, so that two different boxes can never share an entry)."""
    if region is None:
        return None
    lo = np.ascontiguousarray(region.lower, dtype=np.float64)
    hi = np.ascontiguousarray(region.upper, dtype=np.float64)
    return (lo.shape, lo.tobytes(), hi.tobytes())


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
    options: dict  # name -> Option
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

    def option_names(self) -> str:
        return ", ".join(self.options) or "none"

    def validate_options(self, options: dict | None) -> dict:
        """The typed values of ``options`` (name -> value) for this method; a one-line `LipboundError` for an
        option it does not declare or a value its declaration does not allow."""
        out = {}
        for key, value in (options or {}).items():
            if key not in self.options:
                raise LipboundError(f"method {self.name} has no option {key!r}; its options: "
                                    f"{self.option_names()} ({_owners(key)})")
            out[key] = self.options[key].validate(value, method=self.name, name=key)
        return out

    def to_json(self) -> dict:
        # "options": name -> one-line doc (the contract of `lipbound methods --json`); "option_specs": the
        # declarations (type, default, choices, range, doc)
        return {"name": self.name, "kind": self.kind, "norms": [norm_name(p) for p in self.norms],
                "regions": list(self.regions), "family": self.family, "description": self.description,
                "options": {k: o.describe() for k, o in self.options.items()},
                "option_specs": {k: o.to_json() for k, o in self.options.items()}}


REGISTRY: dict[str, MethodSpec] = {}
#: the keyword arguments of `api.bound`, which cannot be method options
RESERVED_OPTION_NAMES = frozenset({"net", "method", "norm", "region", "time_limit", "output", "center", "eps",
                                   "domain", "quiet", "seed", "options", "methods", "shared"})


def register_method(name: str, *, kind: str, norms=(1, 2, INF), regions=("global", "box"),
                    ops=ALL_OPS, activations=ALL_ACTIVATIONS, description: str, options: dict | None = None,
                    family: str | None = None, in_compare: bool = True):
    """Decorator registering ``fn(net, ctx) -> MethodResult`` under ``name``. ``options`` maps each option
    name to its `Option` declaration; the method reads them with ``ctx.option(name)``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    norms = tuple(parse_norm(p) for p in norms)
    options = dict(options or {})
    for key, opt in options.items():
        if not isinstance(opt, Option):
            raise TypeError(f"method {name}: option {key!r} must be declared as Option(type, default, doc, ...), "
                            f"not {type(opt).__name__}")
        if not key.isidentifier() or key in RESERVED_OPTION_NAMES:
            raise ValueError(f"method {name}: {key!r} cannot be an option name (an identifier other than "
                             f"{', '.join(sorted(RESERVED_OPTION_NAMES))})")
        try:
            opt.validate(opt.default, method=name, name=key)
        except LipboundError as e:
            raise ValueError(f"method {name}: the default of option {key!r} fails its own declaration: {e}") from None

    def deco(fn):
        if name in REGISTRY and REGISTRY[name].func is not fn:
            raise ValueError(f"method {name!r} registered twice")
        REGISTRY[name] = MethodSpec(name, fn, kind, norms, tuple(regions), frozenset(ops), frozenset(activations),
                                    description, options, family or fn.__module__.rsplit(".", 1)[-1],
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


def _owners(key: str) -> str:
    owners = [s.name for s in REGISTRY.values() if key in s.options]
    if not owners:
        return "no method has it"
    return f"it is an option of {', '.join(owners[:6])}{' ...' if len(owners) > 6 else ''}"


def route_options(names: list[str], options: dict | None = None) -> dict[str, dict]:
    """The options of several methods run together (`api.compare`, ``lipbound bound -m A -m B``), validated.

    ``options`` maps a method name to that method's option dict, or an option name to a value given to every
    method of ``names`` that declares it (``"METHOD.KEY"``: to that method only). Returns method -> typed
    options. A `LipboundError` (one line) for an option no method of ``names`` declares, options of a method
    not among ``names``, or a value an option's declaration does not allow."""
    reg = load_methods()
    items = []
    for key, value in (options or {}).items():
        if key in reg:
            if not isinstance(value, dict):
                raise LipboundError(f"the options of method {key} should be a dict (option name -> value), "
                                    f"not {type(value).__name__}")
            items += [(key, k, v) for k, v in value.items()]
        else:
            items.append((None, key, value))
    return route_option_items(names, items)


def route_option_items(names: list[str], items) -> dict[str, dict]:
    """As `route_options`, from (method or None, key, value) triples applied in order (the command line's
    ``--option KEY=VALUE`` / ``--option METHOD.KEY=VALUE``)."""
    reg = load_methods()
    per: dict[str, dict] = {n: {} for n in names}
    for method, key, value in items:
        if method is None and "." in key and key.split(".", 1)[0] in reg:
            method, key = key.split(".", 1)
        if method is not None:
            spec = get_method(method)
            if method not in per:
                raise LipboundError(f"option {method}.{key}: method {method} is not among the methods run "
                                    f"({', '.join(names) or 'none'})")
            per[method].update(spec.validate_options({key: value}))
            continue
        targets = [n for n in names if key in reg[n].options]
        if not targets:
            raise LipboundError(f"no selected method has the option {key!r} (selected: {', '.join(names) or 'none'}; "
                                f"{_owners(key)}; see `lipbound methods`)")
        for n in targets:
            per[n][key] = reg[n].options[key].validate(value, method=n, name=key)
    return per


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
