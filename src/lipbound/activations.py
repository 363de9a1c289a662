"""The activation table: one class per elementwise activation, owning every fact a method needs.

A class states the *primitive facts* of its function f (see docs/activations.md):

* ``forward(x)`` and ``derivative(x)`` (torch, elementwise; at a kink one element of the Clarke
  generalised derivative, torch autograd's convention);
* ``slope_bounds()``: global ``alpha <= f' <= beta`` (alpha < 0 for non-monotone activations);
* ``kinks()``: the points where f' jumps, each as ``(point, left_slope, right_slope)``;
* ``inflections()``: the points where f'' changes sign; with the kinks they cut the real line into
  pieces on which f' is monotone;
* ``slope_points(a)``: every z where f'(z) = a, in closed form, or ``None`` when it has none (then the
  root on each monotone piece is found by bisection, with a correction that keeps the result sound);
* ``smooth(x, t)``: a smooth surrogate with temperature t (-> f as t -> 0) for gradient ascent;
* ``piecewise_linear`` (class attribute).

Everything else is derived here once, soundly, from those facts: the derivative range over [l, u],
the exact extremes of f(z) - a z over [l, u] (the offsets of linear relaxations), the image of an
interval, convexity on [l, u], the default CROWN slopes. The base class has no defaults: a subclass
that misses a fact fails when it is *defined* (`__init_subclass__`), never with a silent 1.0.

Add an activation: one class here (registered by `@activation`) plus reader-table entries in
`lipbound.io`. Every list of activations in the code is derived from `ACTIVATIONS`.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F

from .errors import LipboundError

#: relative + absolute outward margin on values of transcendental functions (float64 libm/torch kernels
#: are accurate to a few ulps; 1e-12 covers that with room and is far below any bound's resolution)
TRANSCENDENTAL_MARGIN = 1e-12

#: relative outward margin for values of piecewise-linear functions and their relaxation offsets: a z,
#: (z + 3) / 6 and f(z) - a z are each a few float64 roundings (unit roundoff 2^-53)
PIECEWISE_LINEAR_MARGIN = 8 * 2.0 ** -53

#: bisection for roots of f'(z) = a on a monotone piece stops at this bracket width: the bracket
#: correction (width x max|f' - a|, about f'' width^2) keeps the offset sound whatever the width, and at
#: 1e-7 it loosens it by ~1e-14 only
BISECTION_WIDTH = 1e-7
#: at most this many steps (a bracket of width 1e17 reaches BISECTION_WIDTH)
BISECTION_STEPS = 80

_FACTS = ("forward", "derivative", "slope_bounds", "kinks", "inflections", "slope_points", "smooth")


class ActivationFunction:
    """Base class of the table. Subclasses define ``name``, ``param_names``, ``piecewise_linear`` and
    the methods in ``_FACTS``; parameters are validated by ``check_params``."""

    name: ClassVar[str]
    param_names: ClassVar[tuple] = ()
    defaults: ClassVar[tuple] = ()
    piecewise_linear: ClassVar[bool]
    #: class-level constants an intermediate class reads its facts from (each table entry states them)
    _CONSTANTS: ClassVar[tuple] = ()

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.__name__.startswith("_"):
            return  # an intermediate class sharing facts, not a table entry
        missing = [f for f in _FACTS if getattr(cls, f) is getattr(ActivationFunction, f)]
        for attr in ("name", "piecewise_linear", *cls._CONSTANTS):
            if not hasattr(cls, attr):
                missing.append(attr)
        if missing:
            raise TypeError(f"activation class {cls.__name__} does not state {', '.join(missing)}")

    def __init__(self, *params: float):
        if len(params) != len(self.param_names):
            raise LipboundError(f"activation {self.name} takes {len(self.param_names)} parameter(s) "
                                f"({', '.join(self.param_names) or 'none'}), got {len(params)}")
        self.params = tuple(float(p) for p in params)
        if not all(math.isfinite(p) for p in self.params):
            raise LipboundError(f"activation {self.name}: non-finite parameter {self.params}")
        self.check_params()

    def check_params(self) -> None:
        """Raise `LipboundError` for parameters outside the class's domain (none by default)."""

    # -- primitive facts (each subclass states them) ----------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def slope_bounds(self) -> tuple[float, float]:
        raise NotImplementedError

    def kinks(self) -> tuple:
        raise NotImplementedError

    def inflections(self) -> tuple:
        raise NotImplementedError

    def slope_points(self, a: torch.Tensor) -> list | None:
        raise NotImplementedError

    def smooth(self, x: torch.Tensor, t) -> torch.Tensor:
        raise NotImplementedError

    # -- simple derived facts -----------------------------------------------------------------------
    @property
    def param(self):
        """The parameter as the network op stores it: 0.0 (none), a float (one) or a tuple."""
        if not self.params:
            return 0.0
        return self.params[0] if len(self.params) == 1 else self.params

    @property
    def alpha(self) -> float:
        return self.slope_bounds()[0]

    @property
    def beta(self) -> float:
        return self.slope_bounds()[1]

    @property
    def monotone(self) -> bool:
        return self.alpha >= 0

    @property
    def relu_like_slope(self) -> float | None:
        """``a`` when f(z) = max(z, 0) + a min(z, 0) (ReLU a = 0, leaky ReLU, Abs a = -1): the one
        form the exact MIP, enumeration and branch and bound split on; else None."""
        k = self.kinks()
        if self.piecewise_linear and len(k) == 1 and k[0][0] == 0.0 and k[0][2] == 1.0 \
                and float(self.forward(torch.zeros(1, dtype=torch.float64))) == 0.0:
            return k[0][1]
        return None

    def describe(self) -> str:
        if not self.params:
            return self.name
        return f"{self.name}({', '.join(f'{p:g}' for p in self.params)})"

    def _margin(self, v: torch.Tensor) -> torch.Tensor:
        """Outward rounding margin for computed values of f and of f(z) - a z: TRANSCENDENTAL_MARGIN for
        smooth functions, PIECEWISE_LINEAR_MARGIN (a few roundings of a z, (z + 3) / 6...) otherwise."""
        if self.piecewise_linear:
            return PIECEWISE_LINEAR_MARGIN * v.abs()
        return TRANSCENDENTAL_MARGIN * (1 + v.abs())

    def _slope_margin(self, d: torch.Tensor) -> torch.Tensor:
        """Outward margin for computed derivative values: none for piecewise-linear functions, whose
        slopes are the exact constants of the table (stable neurons keep exact slopes)."""
        if self.piecewise_linear:
            return torch.zeros_like(d)
        return TRANSCENDENTAL_MARGIN * (1 + d.abs())

    def _breaks(self) -> list[float]:
        """Sorted points cutting the line into pieces where f' is monotone (kinks and inflections)."""
        return sorted({float(k[0]) for k in self.kinks()} | {float(c) for c in self.inflections()})

    # -- derived: derivative range ------------------------------------------------------------------
    def derivative_range(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Elementwise [dmin, dmax] containing the Clarke derivative of f at every z in [lo, hi]: the hull
        of f' at the ends, at the inflection points inside and both one-sided slopes of the kinks
        inside (a closed interval touching a kink counts as containing it). Sound, outward-rounded,
        clipped to the global slope bounds. Cost: a few elementwise evaluations."""
        dmin = torch.minimum(self.derivative(lo), self.derivative(hi))
        dmax = torch.maximum(self.derivative(lo), self.derivative(hi))
        for p, left, right in self.kinks():
            inside = (lo <= p) & (hi >= p)
            dmin = torch.where(inside, torch.clamp(dmin, max=min(left, right)), dmin)
            dmax = torch.where(inside, torch.clamp(dmax, min=max(left, right)), dmax)
        for c in self.inflections():
            inside = (lo <= c) & (hi >= c)
            dc = self.derivative(torch.full_like(lo, c))
            dmin = torch.where(inside, torch.minimum(dmin, dc), dmin)
            dmax = torch.where(inside, torch.maximum(dmax, dc), dmax)
        a, b = self.slope_bounds()
        return (dmin - self._slope_margin(dmin)).clamp(min=a), (dmax + self._slope_margin(dmax)).clamp(max=b)

    # -- derived: extremes of f(z) - a z ---------------------------------------------------------------
    def line_offsets(self, lo: torch.Tensor, hi: torch.Tensor, slope) -> tuple[torch.Tensor, torch.Tensor]:
        """(min, max) over z in [lo, hi] of f(z) - slope * z: exact up to float64 rounding, enlarged
        outward by the rounding margin (sound). Candidates: the ends, the kinks inside and the points
        where f' = slope (closed form, or bisection on every monotone piece with a bracket correction).
        ``slope`` may carry extra leading dimensions; gradients flow to ``slope`` only (envelope
        theorem). Cost: a few elementwise evaluations, or ~25-40 per piece when bisecting."""
        slope = torch.as_tensor(slope, dtype=lo.dtype)
        with torch.no_grad():
            s = slope.detach()
            lo_b, hi_b, s_b = torch.broadcast_tensors(lo, hi, s)
            cands = [lo_b, hi_b] + [torch.clamp(torch.full_like(lo_b, p), lo_b, hi_b) for p, _, _ in self.kinks()]
            closed = self.slope_points(s_b)
            slack = torch.zeros_like(lo_b)
            if closed is not None:
                cands += [torch.minimum(torch.maximum(c, lo_b), hi_b) for c in closed]
            else:
                for z, err in self._bisect_roots(lo_b, hi_b, s_b):
                    cands.append(z)
                    slack = torch.maximum(slack, err)
        lo_val = hi_val = None
        for pt in cands:
            val = self.forward(pt) - slope * pt
            lo_val = val if lo_val is None else torch.minimum(lo_val, val)
            hi_val = val if hi_val is None else torch.maximum(hi_val, val)
        with torch.no_grad():
            pad = slack + self._margin(torch.maximum(lo_val.abs(), hi_val.abs()))
        return lo_val - pad, hi_val + pad

    def _bisect_roots(self, lo, hi, a):
        """Per monotone piece of f' meeting [lo, hi]: a point z of a bracket [z1, z2] of the root of
        f'(z) = a (or a piece end when there is none), and err = (z2 - z1) * max|f' - a| on the
        bracket, which bounds how far f(z) - a z is from its extreme in the bracket."""
        edges = [-math.inf] + self._breaks() + [math.inf]
        out = []
        for left, right in zip(edges[:-1], edges[1:]):
            z1 = torch.clamp(lo, min=left) if left > -math.inf else lo.clone()
            z2 = torch.clamp(hi, max=right) if right < math.inf else hi.clone()
            valid = z1 <= z2
            z1, z2 = torch.where(valid, z1, lo), torch.where(valid, z2, lo)
            g1, g2 = self.derivative(z1) - a, self.derivative(z2) - a
            has_root = valid & (g1 * g2 <= 0)
            if not bool(has_root.any()):
                continue
            rising = g1 <= g2
            widest = float((z2 - z1)[has_root].max())
            steps = min(BISECTION_STEPS, max(1, math.ceil(math.log2(max(widest, 1e-300) / BISECTION_WIDTH))))
            for _ in range(steps):
                mid = (z1 + z2) / 2
                gm = self.derivative(mid) - a
                go_right = torch.where(rising, gm < 0, gm > 0)
                z1, z2 = torch.where(go_right, mid, z1), torch.where(go_right, z2, mid)
            err = (z2 - z1) * torch.maximum((self.derivative(z1) - a).abs(), (self.derivative(z2) - a).abs())
            out.append((torch.where(has_root, z1, lo), torch.where(has_root, err, torch.zeros_like(err))))
        return out

    def image(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Elementwise [min f, max f] over [lo, hi] (sound: outward-rounded for transcendental f).
        Monotone f: the values at the ends; otherwise the offsets of slope 0. Cost: elementwise."""
        if self.monotone:
            a, b = self.forward(lo), self.forward(hi)
            return a - self._margin(a), b + self._margin(b)
        return self.line_offsets(lo, hi, torch.zeros_like(lo))

    # -- derived: convexity and CROWN's default slopes --------------------------------------------
    def second_derivative_sign(self, x: torch.Tensor) -> torch.Tensor:
        """sign f''(x) away from kinks and inflections (by autograd of `derivative`; 0 where linear)."""
        with torch.enable_grad():
            z = x.detach().clone().requires_grad_(True)
            d = self.derivative(z)
            if not d.requires_grad:
                return torch.zeros_like(x)  # piecewise-constant derivative
            (g,) = torch.autograd.grad(d.sum(), z, allow_unused=True)
        return torch.zeros_like(x) if g is None else torch.sign(g.detach())

    def curvature(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """+1 where f is convex on [lo, hi], -1 where concave, 0 where neither; a linear piece counts
        as convex. Checks the sign of f'' inside every monotone piece of f' met by [lo, hi] and the bend
        of every kink inside. Cost: elementwise, one autograd pass per piece."""
        edges = [-math.inf] + self._breaks() + [math.inf]
        convex = torch.ones_like(lo, dtype=torch.bool)
        concave = torch.ones_like(lo, dtype=torch.bool)
        for left, right in zip(edges[:-1], edges[1:]):
            a = torch.clamp(lo, min=left) if left > -math.inf else lo
            b = torch.clamp(hi, max=right) if right < math.inf else hi
            met = a <= b
            sign = self.second_derivative_sign(torch.where(met, (a + b) / 2, lo))
            convex &= ~met | (sign >= 0)
            concave &= ~met | (sign <= 0)
        for p, left, right in self.kinks():
            inside = (lo < p) & (hi > p)
            convex &= ~inside | (right >= left)
            concave &= ~inside | (right <= left)
        one = torch.ones_like(lo)
        return torch.where(convex, one, torch.where(concave, -one, torch.zeros_like(lo)))

    def tangent_slope(self, mid: torch.Tensor) -> torch.Tensor:
        """f' at the mid-point; on a kink the right slope (CROWN's adaptive choice for ReLU)."""
        d = self.derivative(mid)
        for p, _, right in self.kinks():
            d = torch.where(mid == p, torch.full_like(d, right), d)
        return d

    def free_sides(self) -> tuple[bool, bool]:
        """Which relaxation lines alpha-CROWN may optimise (lower, upper): for piecewise-linear
        functions whose kinks all bend one way the chord side is already optimal."""
        if self.piecewise_linear:
            jumps = {math.copysign(1.0, r - l) for _, l, r in self.kinks() if r != l}
            if jumps == {1.0}:
                return True, False
            if jumps == {-1.0}:
                return False, True
        return True, True

    def default_slopes(self, lo: torch.Tensor, hi: torch.Tensor):
        """CROWN's default slopes (lower, upper) and the range worth optimising (dmin, dmax): convex on
        [lo, hi]: tangent at the mid-point below, chord above; concave: the reverse; otherwise the
        chord on both sides. Every slope is sound: offsets come from `line_offsets`."""
        width = hi - lo
        tiny = width <= 1e-12
        mid = (lo + hi) / 2
        safe = torch.where(tiny, torch.ones_like(width), width)
        chord = torch.where(tiny, self.derivative(mid), (self.forward(hi) - self.forward(lo)) / safe)
        dmin, dmax = self.derivative_range(lo, hi)
        chord = torch.clamp(chord, dmin, dmax)  # inside by the mean value theorem, up to cancellation
        tangent = torch.clamp(self.tangent_slope(mid), dmin, dmax)
        curv = self.curvature(lo, hi)
        lower = torch.where(curv > 0, tangent, chord)
        upper = torch.where(curv < 0, tangent, chord)
        return lower, upper, dmin, dmax


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------

ACTIVATIONS: dict[str, type[ActivationFunction]] = {}


def activation(cls):
    """Class decorator: enter ``cls`` in the table under ``cls.name``."""
    if cls.name in ACTIVATIONS:
        raise TypeError(f"activation {cls.name!r} defined twice")
    ACTIVATIONS[cls.name] = cls
    return cls


def make(name: str, param=None) -> ActivationFunction:
    """The table entry ``name`` with its parameters (None: the defaults; a number; or a tuple)."""
    if name not in ACTIVATIONS:
        raise LipboundError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    cls = ACTIVATIONS[name]
    if param is None or (not cls.param_names and not isinstance(param, (tuple, list))):
        params = cls.defaults  # a parameter-free activation ignores a scalar, as the op always did
    elif isinstance(param, (tuple, list)):
        params = tuple(param)
    else:
        params = (param,)
    return cls(*params)


def _softplus(x, t=1.0):
    """t * log(1 + exp(x / t)), exactly (torch's softplus switches to x above a threshold), with finite
    first and second derivatives everywhere (each branch sees only arguments where exp cannot overflow)."""
    z = x / t
    pos, neg = torch.clamp(z, min=0.0), torch.clamp(z, max=0.0)
    return t * torch.where(z > 0, pos + torch.log1p(torch.exp(-pos)), torch.log1p(torch.exp(neg)))


def _smooth_relu(x, t):
    return _softplus(x, t)


# -- piecewise linear -------------------------------------------------------------------------------

class _PiecewiseLinear(ActivationFunction):
    piecewise_linear = True

    def inflections(self):
        return ()

    def slope_points(self, a):
        return []  # f' is constant on every piece: the extremes of f - a z lie at ends and kinks


@activation
class ReLU(_PiecewiseLinear):
    name = "relu"

    def forward(self, x):
        return torch.relu(x)

    def derivative(self, x):
        return (x > 0).to(x.dtype)

    def slope_bounds(self):
        return 0.0, 1.0

    def kinks(self):
        return ((0.0, 0.0, 1.0),)

    def smooth(self, x, t):
        return _smooth_relu(x, t)


@activation
class LeakyReLU(_PiecewiseLinear):
    name = "leaky_relu"
    param_names = ("negative_slope",)
    defaults = (0.01,)

    def forward(self, x):
        return F.leaky_relu(x, self.params[0])

    def derivative(self, x):
        return torch.where(x > 0, torch.ones_like(x), torch.full_like(x, self.params[0]))

    def slope_bounds(self):
        a = self.params[0]
        return min(a, 1.0), max(a, 1.0)

    def kinks(self):
        return ((0.0, self.params[0], 1.0),)

    def smooth(self, x, t):
        a = self.params[0]
        return a * x + (1 - a) * _smooth_relu(x, t)


@activation
class Abs(_PiecewiseLinear):
    name = "abs"

    def forward(self, x):
        return x.abs()

    def derivative(self, x):
        return torch.sign(x)

    def slope_bounds(self):
        return -1.0, 1.0

    def kinks(self):
        return ((0.0, -1.0, 1.0),)

    def smooth(self, x, t):
        return -x + 2 * _smooth_relu(x, t)


@activation
class Hardtanh(_PiecewiseLinear):
    """clamp(x, min_val, max_val); ReLU6 is hardtanh(0, 6), ONNX Clip with constant bounds too."""

    name = "hardtanh"
    param_names = ("min_val", "max_val")
    defaults = (-1.0, 1.0)

    def check_params(self):
        if not self.params[0] < self.params[1]:
            raise LipboundError(f"hardtanh needs min_val < max_val, got {self.params}")

    def forward(self, x):
        return torch.clamp(x, self.params[0], self.params[1])

    def derivative(self, x):
        return ((x > self.params[0]) & (x < self.params[1])).to(x.dtype)

    def slope_bounds(self):
        return 0.0, 1.0

    def kinks(self):
        return ((self.params[0], 0.0, 1.0), (self.params[1], 1.0, 0.0))

    def smooth(self, x, t):
        lo, hi = self.params
        return lo + _smooth_relu(x - lo, t) - _smooth_relu(x - hi, t)

    def describe(self):
        if self.params == (0.0, 6.0):
            return "relu6"
        return super().describe()


@activation
class Hardsigmoid(_PiecewiseLinear):
    """relu6(x + 3) / 6 (torch's Hardsigmoid)."""

    name = "hardsigmoid"

    def forward(self, x):
        return torch.clamp(x + 3, 0.0, 6.0) / 6

    def derivative(self, x):
        return ((x > -3) & (x < 3)).to(x.dtype) / 6

    def slope_bounds(self):
        return 0.0, 1 / 6

    def kinks(self):
        return ((-3.0, 0.0, 1 / 6), (3.0, 1 / 6, 0.0))

    def smooth(self, x, t):
        return (_smooth_relu(x + 3, t) - _smooth_relu(x - 3, t)) / 6


# -- smooth (or piecewise smooth) -------------------------------------------------------------------

class _Smooth(ActivationFunction):
    piecewise_linear = False

    def kinks(self):
        return ()

    def smooth(self, x, t):
        return self.forward(x)  # already differentiable everywhere


def _bell_inverse(a, peak, inverse):
    """Roots ±z of f'(z) = a for a derivative that is even, maximal (= peak) at 0 and decreasing in |z|;
    ``inverse(a)`` gives z >= 0. Slopes outside (0, peak] give no root (clamped to the ends)."""
    z = inverse(torch.clamp(a, min=1e-300, max=peak))
    return [z, -z]


@activation
class Tanh(_Smooth):
    name = "tanh"

    def forward(self, x):
        return torch.tanh(x)

    def derivative(self, x):
        return 1 - torch.tanh(x) ** 2

    def slope_bounds(self):
        return 0.0, 1.0

    def inflections(self):
        return (0.0,)

    def slope_points(self, a):
        return _bell_inverse(a, 1.0, lambda s: torch.atanh(torch.clamp(torch.sqrt(1 - s), 0.0, 1.0)))


@activation
class Sigmoid(_Smooth):
    name = "sigmoid"

    def forward(self, x):
        return torch.sigmoid(x)

    def derivative(self, x):
        s = torch.sigmoid(x)
        return s * (1 - s)

    def slope_bounds(self):
        return 0.0, 0.25

    def inflections(self):
        return (0.0,)

    def slope_points(self, a):
        def inverse(s):
            p = torch.clamp((1 + torch.sqrt(torch.clamp(1 - 4 * s, min=0.0))) / 2, 0.0, 1.0)
            return torch.log(p) - torch.log1p(-p)

        return _bell_inverse(a, 0.25, inverse)


@activation
class Softsign(_Smooth):
    """x / (1 + |x|): f' = 1 / (1 + |x|)^2, convex for x < 0, concave for x > 0."""

    name = "softsign"

    def forward(self, x):
        return x / (1 + x.abs())

    def derivative(self, x):
        return 1 / (1 + x.abs()) ** 2

    def slope_bounds(self):
        return 0.0, 1.0

    def inflections(self):
        return (0.0,)

    def slope_points(self, a):
        return _bell_inverse(a, 1.0, lambda s: torch.clamp(1 / torch.sqrt(s) - 1, min=0.0))


@activation
class Softplus(_Smooth):
    """log(1 + exp(beta x)) / beta (exactly: torch's threshold switch is not part of the maths)."""

    name = "softplus"
    param_names = ("beta",)
    defaults = (1.0,)

    def check_params(self):
        if self.params[0] <= 0:
            raise LipboundError(f"softplus needs beta > 0, got {self.params[0]}")

    def forward(self, x):
        b = self.params[0]
        return _softplus(b * x) / b

    def derivative(self, x):
        return torch.sigmoid(self.params[0] * x)

    def slope_bounds(self):
        return 0.0, 1.0

    def inflections(self):
        return ()

    def slope_points(self, a):
        p = torch.clamp(a, 1e-300, 1 - 1e-16)
        return [(torch.log(p) - torch.log1p(-p)) / self.params[0]]


@activation
class ELU(ActivationFunction):
    """x for x > 0, alpha (e^x - 1) otherwise (alpha >= 0); a kink at 0 unless alpha = 1."""

    name = "elu"
    param_names = ("alpha",)
    defaults = (1.0,)
    piecewise_linear = False

    def check_params(self):
        if self.params[0] < 0:
            raise LipboundError("ELU with a negative alpha is not slope-restricted the usual way")

    def forward(self, x):
        return F.elu(x, self.params[0])

    def derivative(self, x):
        a = self.params[0]
        return torch.where(x > 0, torch.ones_like(x), a * torch.exp(torch.clamp(x, max=0)))

    def slope_bounds(self):
        return 0.0, max(1.0, self.params[0])

    def kinks(self):
        a = self.params[0]
        return () if a == 1.0 else ((0.0, a, 1.0),)

    def inflections(self):
        return ()

    def slope_points(self, a):
        alpha = self.params[0]
        if alpha == 0:
            return []
        return [torch.clamp(torch.log(torch.clamp(a, min=1e-300) / alpha), max=0.0)]

    def smooth(self, x, t):
        return self.forward(x)


@activation
class SELU(ActivationFunction):
    """scale * ELU(x, alpha) (torch's SELU: alpha 1.6732632423543772, scale 1.0507009873554805; ONNX Selu's
    alpha and gamma); a kink at 0 with slopes scale * alpha (left) and scale (right)."""

    name = "selu"
    param_names = ("alpha", "scale")
    defaults = (1.6732632423543772, 1.0507009873554805)
    piecewise_linear = False

    def check_params(self):
        if self.params[0] < 0 or self.params[1] <= 0:
            raise LipboundError(f"SELU needs alpha >= 0 and scale > 0, got {self.params}")

    def forward(self, x):
        alpha, scale = self.params
        return scale * F.elu(x, alpha)

    def derivative(self, x):
        alpha, scale = self.params
        return scale * torch.where(x > 0, torch.ones_like(x), alpha * torch.exp(torch.clamp(x, max=0)))

    def slope_bounds(self):
        alpha, scale = self.params
        return 0.0, scale * max(1.0, alpha)

    def kinks(self):
        alpha, scale = self.params
        return () if alpha == 1.0 else ((0.0, scale * alpha, scale),)

    def inflections(self):
        return ()

    def slope_points(self, a):
        alpha, scale = self.params
        if alpha == 0:
            return []
        return [torch.clamp(torch.log(torch.clamp(a, min=1e-300) / (scale * alpha)), max=0.0)]

    def smooth(self, x, t):
        return self.forward(x)


def _phi(x):
    return torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _Phi(x):
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


class _NumericSmooth(_Smooth):
    """A smooth activation whose f' = a has no closed form (its roots are found by bisection): a subclass
    states ``forward``, ``derivative`` and the constants ``SLOPE_BOUNDS`` (alpha, beta) and
    ``INFLECTIONS``."""

    SLOPE_BOUNDS: ClassVar[tuple[float, float]]
    INFLECTIONS: ClassVar[tuple]
    _CONSTANTS = ("SLOPE_BOUNDS", "INFLECTIONS")

    def slope_bounds(self):
        return self.SLOPE_BOUNDS

    def inflections(self):
        return self.INFLECTIONS

    def slope_points(self, a):
        return None


@activation
class GELU(_NumericSmooth):
    """x Phi(x) (exact erf form): f' = Phi + x phi, f'' = phi (2 - x^2)."""

    name = "gelu"
    SLOPE_BOUNDS = (-0.12890414518516, 1.12890414518516)  # f'(-sqrt 2), f'(sqrt 2), rounded outward
    INFLECTIONS = (-math.sqrt(2.0), math.sqrt(2.0))

    def forward(self, x):
        return x * _Phi(x)

    def derivative(self, x):
        return _Phi(x) + x * _phi(x)


_GELU_C = math.sqrt(2 / math.pi)
_GELU_K = 0.044715


@activation
class GELUTanh(_NumericSmooth):
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), GELU's tanh approximation."""

    name = "gelu_tanh"
    SLOPE_BOUNDS = (-0.12899306865878, 1.12899306865878)
    INFLECTIONS = (-1.41850400879083, 1.41850400879083)

    def forward(self, x):
        return 0.5 * x * (1 + torch.tanh(_GELU_C * (x + _GELU_K * x ** 3)))

    def derivative(self, x):
        t = torch.tanh(_GELU_C * (x + _GELU_K * x ** 3))
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _GELU_C * (1 + 3 * _GELU_K * x * x)


@activation
class SiLU(_NumericSmooth):
    """x sigmoid(x) (Swish): f' = s (1 + x (1 - s))."""

    name = "silu"
    SLOPE_BOUNDS = (-0.09983932012887, 1.09983932012887)
    INFLECTIONS = (-2.39935728051547, 2.39935728051547)

    def forward(self, x):
        return x * torch.sigmoid(x)

    def derivative(self, x):
        s = torch.sigmoid(x)
        return s * (1 + x * (1 - s))


@activation
class Mish(_NumericSmooth):
    """x tanh(softplus(x))."""

    name = "mish"
    SLOPE_BOUNDS = (-0.11252612238947, 1.08849816125174)
    INFLECTIONS = (-2.25637639636079, 1.49057117948543)

    def forward(self, x):
        return x * torch.tanh(_softplus(x))

    def derivative(self, x):
        t = torch.tanh(_softplus(x))
        return t + x * (1 - t * t) * torch.sigmoid(x)


@activation
class Hardswish(ActivationFunction):
    """x relu6(x + 3) / 6: 0 below -3, x (x + 3) / 6 on [-3, 3] (f' = (2x + 3)/6), x above 3."""

    name = "hardswish"
    piecewise_linear = False

    def forward(self, x):
        return x * torch.clamp(x + 3, 0.0, 6.0) / 6

    def derivative(self, x):
        return torch.where(x <= -3, torch.zeros_like(x), torch.where(x >= 3, torch.ones_like(x), (2 * x + 3) / 6))

    def slope_bounds(self):
        return -0.5, 1.5

    def kinks(self):
        return ((-3.0, 0.0, -0.5), (3.0, 1.5, 1.0))

    def inflections(self):
        return ()

    def slope_points(self, a):
        return [torch.clamp(3 * a - 1.5, -3.0, 3.0)]

    def smooth(self, x, t):
        return x * (_smooth_relu(x + 3, t) - _smooth_relu(x - 3, t)) / 6


#: names of the activations whose every piece is linear (exact MIP / enumeration candidates)
PIECEWISE_LINEAR = frozenset(n for n, c in ACTIVATIONS.items() if c.piecewise_linear)
