"""The project invariant across every registered method:

    every certified lower bound <= exact <= every certified upper bound

checked with `compare` (all applicable methods) on seeded random tiny networks, globally and on boxes,
in every norm, and on a shared network. A method that breaks soundness anywhere fails here."""

import math

import numpy as np
import pytest

import lipbound
from conftest import shared_network_paths
from _nets import random_mlp

TOL = 1e-6


def _assert_sandwich(report):
    lowers = [(b.method, b.value) for b in report.results if b.ok and b.kind in ("lower", "exact")]
    lowers += [(b.method + "(lower)", b.lower) for b in report.results
               if b.status in ("ok", "time_limit") and b.lower is not None]
    uppers = [(b.method, b.value) for b in report.results if b.ok and b.kind in ("upper", "exact")]
    assert lowers and uppers, report.table()
    lo_name, lo = max(lowers, key=lambda t: t[1])
    up_name, up = min(uppers, key=lambda t: t[1])
    assert lo <= up * (1 + TOL) + TOL, f"{lo_name} = {lo} > {up_name} = {up}\n{report.table()}"
    for b in report.results:  # nothing crashes: failures must be honest statuses with a reason
        assert b.status in ("ok", "time_limit", "unsupported", "failed")
        if b.status in ("unsupported", "failed"):
            assert b.reason, b
    return lo, up


CASES = [([2, 5, 4, 1], "relu", 0.0), ([3, 6, 5, 2], "relu", 0.0), ([2, 6, 6, 3], "leaky_relu", 0.1),
         ([3, 5, 4, 2], "tanh", 0.0), ([2, 6, 2], "sigmoid", 0.0)]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("norm", [1, 2, "inf"])
def test_every_method_global(case, norm):
    widths, act, param = CASES[case]
    net = random_mlp(widths, seed=case, activation=act, param=param)
    rep = lipbound.compare(net, norm=norm, time_limit=10)
    _assert_sandwich(rep)


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("norm", [1, 2, "inf"])
def test_every_method_on_a_box(case, norm):
    widths, act, param = CASES[case]
    net = random_mlp(widths, seed=10 + case, activation=act, param=param)
    rng = np.random.default_rng(case)
    rep = lipbound.compare(net, norm=norm, center=rng.random(widths[0]), eps=0.3, time_limit=10)
    lo, up = _assert_sandwich(rep)
    exact = [b for b in rep.results if b.kind == "exact" and b.ok]
    if act in ("relu", "leaky_relu") and norm != 2:
        assert exact, "mip / enumerate should solve tiny piecewise-linear nets exactly"
        for b in exact:
            assert b.value == pytest.approx(exact[0].value, rel=1e-5, abs=1e-7)


def test_every_method_on_acas_xu_box():
    paths = {p.stem: p for p in shared_network_paths()}
    net = lipbound.load(paths["ACASXU_run2a_1_1_batch_2000"])
    center = np.random.default_rng(1).random(net.n_inputs)
    rep = lipbound.compare(net, ["naive", "crown", "ibp-jacobian", "recurjac", "lipopt", "lower-sample", "lower-grad"],
                           norm="inf", center=center, eps=0.005, time_limit=20)
    _assert_sandwich(rep)
