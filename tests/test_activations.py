"""The activation table (lipbound.activations), entry by entry, against dense sampling and torch.

Every entry of ACTIVATIONS is tested (with extra parameter variants below), so a new activation is
tested without writing a new test. Independent checks: torch's own functions and autograd, finite
differences, and dense grids (which can only under-estimate an extreme, so a sound enclosure must
contain them, and a tight one must be close to them)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lipbound import activations as A
from lipbound.errors import LipboundError

DT = torch.float64
#: extra parameter variants beyond each entry's defaults
VARIANTS = {"leaky_relu": [0.1, -0.3, 2.0], "elu": [0.5, 2.0], "softplus": [3.0], "hardtanh": [(0.0, 6.0), (-2.0, 0.5)]}
CASES = [(n, None) for n in A.ACTIVATIONS] + [(n, p) for n, ps in VARIANTS.items() for p in ps]
IDS = [f"{n}-{p}" if p is not None else n for n, p in CASES]

#: torch's own implementation, where it has one, for an independent check of forward
TORCH = {
    "relu": lambda f: torch.relu, "leaky_relu": lambda f: (lambda x: F.leaky_relu(x, f.params[0])),
    "tanh": lambda f: torch.tanh, "sigmoid": lambda f: torch.sigmoid, "abs": lambda f: torch.abs,
    "elu": lambda f: (lambda x: F.elu(x, f.params[0])), "softplus": lambda f: (lambda x: F.softplus(x, f.params[0], threshold=1e9)),
    "gelu": lambda f: F.gelu, "gelu_tanh": lambda f: (lambda x: F.gelu(x, approximate="tanh")), "silu": F.silu and (lambda f: F.silu),
    "mish": lambda f: F.mish, # torch's hardswish/hardsigmoid kernels hold 1/6 in float32 (derivative 0.16666667): written with relu6
    "hardswish": lambda f: (lambda x: x * F.relu6(x + 3) / 6), "hardsigmoid": lambda f: (lambda x: F.relu6(x + 3) / 6),
    "softsign": lambda f: F.softsign, "selu": lambda f: (lambda x: f.params[1] * F.elu(x, f.params[0])) if f.params != A.SELU.defaults else F.selu, "hardtanh": lambda f: (lambda x: F.hardtanh(x, *f.params)),
}

GRID = torch.linspace(-12, 12, 240_001, dtype=DT)


def _fn(name, param):
    return A.make(name, param)


def _away_from_kinks(f, x, tol=1e-6):
    ok = torch.ones_like(x, dtype=torch.bool)
    for p, _, _ in f.kinks():
        ok &= (x - p).abs() > tol
    return ok


def _random_intervals(rng, n=400):
    c = rng.uniform(-6, 6, n)
    r = rng.choice([1e-3, 0.1, 1.0, 4.0], n) * rng.uniform(0, 1, n)
    return torch.tensor(c - r, dtype=DT), torch.tensor(c + r, dtype=DT)


def _samples(lo, hi, k=401, f=None):
    """k equispaced points of every interval, plus (given f) its kinks and inflections clamped into it,
    where the extremes of f' and of f - a z on piecewise-linear pieces sit."""
    t = torch.linspace(0, 1, k, dtype=DT)
    z = lo[:, None] + (hi - lo)[:, None] * t[None, :]
    if f is not None:
        special = [p for p, _, _ in f.kinks()] + list(f.inflections())
        z = torch.cat([z] + [torch.clamp(torch.full_like(lo, c), lo, hi)[:, None] for c in special], 1)
    return z


def test_every_entry_is_tested():
    assert {n for n, _ in CASES} == set(A.ACTIVATIONS)
    assert set(TORCH) == set(A.ACTIVATIONS), "give the new activation its torch reference in TORCH"


def test_a_class_missing_a_fact_fails_when_written():
    with pytest.raises(TypeError, match="slope_bounds"):
        class Broken(A.ActivationFunction):  # noqa: F841
            name = "broken"
            piecewise_linear = True

            def forward(self, x):
                return x

            def derivative(self, x):
                return torch.ones_like(x)

            def kinks(self):
                return ()

            def inflections(self):
                return ()

            def slope_points(self, a):
                return []

            def smooth(self, x, t):
                return x


def test_bad_names_and_parameters():
    with pytest.raises(LipboundError, match="unknown activation"):
        A.make("swoosh")
    with pytest.raises(LipboundError):
        A.make("hardtanh", (1.0, -1.0))
    with pytest.raises(LipboundError):
        A.make("softplus", -1.0)
    with pytest.raises(LipboundError):
        A.make("relu", (1.0, 2.0))


@pytest.mark.parametrize("name,param", CASES, ids=IDS)
def test_forward_matches_torch(name, param):
    f = _fn(name, param)
    x = torch.linspace(-8, 8, 2001, dtype=DT)
    assert torch.allclose(f.forward(x), TORCH[name](f)(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,param", CASES, ids=IDS)
def test_derivative_is_autograd_of_forward(name, param):
    f = _fn(name, param)
    x = torch.linspace(-8, 8, 4001, dtype=DT)
    x = x[_away_from_kinks(f, x)].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(TORCH[name](f)(x).sum(), x)
    assert torch.allclose(f.derivative(x.detach()), g, rtol=1e-7, atol=1e-12)  # torch kernels may hold float32 constants


@pytest.mark.parametrize("name,param", CASES, ids=IDS)
def test_global_slope_bounds_are_tight(name, param):
    f = _fn(name, param)
    a, b = f.slope_bounds()
    d = f.derivative(GRID)
    assert float(d.min()) >= a - 1e-13 and float(d.max()) <= b + 1e-13
    # tight: approached on the grid, or as t -> -inf / +inf (ELU, softplus: infimum 0 not attained)
    far = f.derivative(torch.tensor([-1e7, 1e7], dtype=DT))
    assert min(float(d.min()), float(far.min())) <= a + 1e-6
    assert max(float(d.max()), float(far.max())) >= b - 1e-6


@pytest.mark.parametrize("name,param", CASES, ids=IDS)
def test_kinks_and_inflections(name, param):
    f = _fn(name, param)
    for p, left, right in f.kinks():
        h = 1e-7
        assert float(f.derivative(torch.tensor(p - h, dtype=DT))) == pytest.approx(left, abs=1e-6)
        assert float(f.derivative(torch.tensor(p + h, dtype=DT))) == pytest.approx(right, abs=1e-6)
    # f' is monotone between consecutive break points (kinks and inflections): finite differences
    x = torch.linspace(-12, 12, 48_001, dtype=DT)
    d = f.derivative(x)
    breaks = [-math.inf] + f._breaks() + [math.inf]
    for lo, hi in zip(breaks[:-1], breaks[1:]):
        m = (x > lo + 1e-6) & (x < hi - 1e-6)
        dd = torch.diff(d[m])
        assert bool((dd >= -1e-12).all()) or bool((dd <= 1e-12).all()), f"f' not monotone on ({lo}, {hi})"
    # and every inflection is a real change of monotonicity (not a spurious break)
    for c in f.inflections():
        left = torch.diff(f.derivative(torch.linspace(c - 0.05, c, 51, dtype=DT)))
        right = torch.diff(f.derivative(torch.linspace(c, c + 0.05, 51, dtype=DT)))
        assert float(left.sum()) * float(right.sum()) < 0


@pytest.mark.parametrize("name,param", CASES, ids=IDS)
def test_derivative_range_contains_and_is_tight(name, param):
    f = _fn(name, param)
    lo, hi = _random_intervals(np.random.default_rng(0))
    dmin, dmax = f.derivative_range(lo, hi)
    d = f.derivative(_samples(lo, hi, f=f))
    # Clarke derivative at a kink inside: both one-sided slopes
    for p, left, right in f.kinks():
        inside = ((lo <= p) & (hi >= p))[:, None]
        d = torch.cat([d, torch.where(inside, torch.full_like(d[:, :1], left), d[:, :1]),
                       torch.where(inside, torch.full_like(d[:, :1], right), d[:, :1])], 1)
    assert bool((dmin[:, None] <= d + 1e-15).all() and (dmax[:, None] >= d - 1e-15).all())
    assert float((d.min(1).values - dmin).max()) < 1e-4 and float((dmax - d.max(1).values).max()) < 1e-4


@pytest.mark.parametrize("name,param", CASES, ids=IDS)
def test_line_offsets_and_image_are_exact_enclosures(name, param):
    f = _fn(name, param)
    rng = np.random.default_rng(1)
    lo, hi = _random_intervals(rng)
    a0, b0 = f.slope_bounds()
    slope = torch.tensor(rng.uniform(a0 - 0.3, b0 + 0.3, lo.shape[0]), dtype=DT)
    z = _samples(lo, hi, 2001, f=f)
    g = f.forward(z) - slope[:, None] * z
    omin, omax = f.line_offsets(lo, hi, slope)
    assert bool((omin <= g.min(1).values + 1e-12).all() and (omax >= g.max(1).values - 1e-12).all())
    width = (hi - lo)
    assert bool(((g.min(1).values - omin) <= 1e-9 + 1e-6 * width).all())
    assert bool(((omax - g.max(1).values) <= 1e-9 + 1e-6 * width).all())
    ilo, ihi = f.image(lo, hi)
    y = f.forward(z)
    assert bool((ilo <= y.min(1).values + 1e-12).all() and (ihi >= y.max(1).values - 1e-12).all())
    assert float((y.min(1).values - ilo).max()) < 1e-6 and float((ihi - y.max(1).values).max()) < 1e-6


@pytest.mark.parametrize("name,param", CASES, ids=IDS)
def test_default_slopes_give_sound_lines(name, param):
    f = _fn(name, param)
    lo, hi = _random_intervals(np.random.default_rng(2))
    a_lo, a_up, dmin, dmax = f.default_slopes(lo, hi)
    assert bool((a_lo >= dmin - 1e-12).all() and (a_lo <= dmax + 1e-12).all())
    b_lo, _ = f.line_offsets(lo, hi, a_lo)
    _, b_up = f.line_offsets(lo, hi, a_up)
    z = _samples(lo, hi)
    y = f.forward(z)
    assert bool((a_lo[:, None] * z + b_lo[:, None] <= y + 1e-12).all())
    assert bool((a_up[:, None] * z + b_up[:, None] >= y - 1e-12).all())


@pytest.mark.parametrize("name,param", CASES, ids=IDS)
def test_curvature_claims_hold(name, param):
    f = _fn(name, param)
    lo, hi = _random_intervals(np.random.default_rng(3))
    curv = f.curvature(lo, hi)
    z = _samples(lo, hi, 201)
    y = f.forward(z)
    chord = y[:, :1] + (y[:, -1:] - y[:, :1]) * torch.linspace(0, 1, 201, dtype=DT)[None, :]
    gap = chord - y  # >= 0 on convex intervals, <= 0 on concave ones
    tol = 1e-12 * (1 + y.abs())
    assert bool((gap[curv > 0] >= -tol[curv > 0]).all())
    assert bool((gap[curv < 0] <= tol[curv < 0]).all())


@pytest.mark.parametrize("name,param", CASES, ids=IDS)
def test_smooth_surrogate_tends_to_f(name, param):
    f = _fn(name, param)
    x = torch.linspace(-6, 6, 1001, dtype=DT)
    assert float((f.smooth(x, 1e-4) - f.forward(x)).abs().max()) < 1e-3
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f.smooth(xg, 0.5).sum(), xg)
    assert bool(torch.isfinite(g).all())


def test_relu_like_forms():
    assert A.make("relu").relu_like_slope == 0.0
    assert A.make("leaky_relu", 0.2).relu_like_slope == 0.2
    assert A.make("abs").relu_like_slope == -1.0
    assert A.make("hardtanh", (0.0, 6.0)).relu_like_slope is None
    assert A.make("gelu").relu_like_slope is None
