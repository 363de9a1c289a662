"""The API: registry, bound/compare results, statuses, JSON, plots."""

import json
import math

import numpy as np
import pytest

import lipbound
from lipbound.errors import LipboundError, Unsupported
from lipbound.registry import MethodResult, REGISTRY, Region, register_method
from _nets import random_graph_net, random_mlp


def test_registry_lists_methods_with_their_declarations():
    rows = lipbound.methods()
    names = {r["name"] for r in rows}
    assert {"lower-sample", "lower-grad"} <= names
    for r in rows:
        assert r["kind"] in ("upper", "lower", "exact", "estimate")
        assert set(r["norms"]) <= {"1", "2", "inf"} and r["norms"]
        assert set(r["regions"]) <= {"global", "box"} and r["regions"]
        assert r["description"]


def test_bound_reports_value_kind_time_witness():
    net = random_mlp([4, 8, 3], seed=3)
    b = lipbound.bound(net, "lower-sample", norm="inf", samples=200)
    assert b.kind == "lower" and b.status == "ok" and b.time_s >= 0
    J = net.jacobian(b.witness[None])[0].numpy()
    assert b.value == pytest.approx(np.abs(J).sum(1).max(), rel=1e-12)  # the witness reproduces the value


def test_box_region_and_witness_inside():
    net = random_mlp([4, 8, 3], seed=4)
    center = np.full(4, 0.5)
    b = lipbound.bound(net, "lower-grad", norm=2, center=center, eps=0.1, steps=20, restarts=4, samples=50)
    assert b.ok and b.region["eps"] == 0.1
    assert np.all(np.abs(b.witness - center) <= 0.1 + 1e-12)


def test_bad_requests_are_clear_errors():
    net = random_mlp([4, 8, 3])
    with pytest.raises(LipboundError, match="unknown method"):
        lipbound.bound(net, "no-such-method")
    with pytest.raises(LipboundError, match="center has 3 values"):
        lipbound.bound(net, "lower-sample", center=np.zeros(3), eps=0.1)
    with pytest.raises(LipboundError, match="unknown norm"):
        lipbound.bound(net, "lower-sample", norm="3")
    with pytest.raises(LipboundError, match="out of range"):
        lipbound.bound(net, "lower-sample", output=7)
    with pytest.raises(LipboundError, match="no option"):
        lipbound.bound(net, "lower-sample", degree=3)


def _register_test_methods():
    if "test-global-only" in REGISTRY:
        return

    @register_method("test-global-only", kind="upper", norms=(2,), regions=("global",),
                     ops={"Linear", "Activation"}, activations={"relu"}, description="test", in_compare=False)
    def _g(net, ctx):
        return MethodResult(1e9)

    @register_method("test-raises", kind="upper", norms=(2,), description="test", in_compare=False)
    def _r(net, ctx):
        raise Unsupported("this network is too large for the test method")


def test_unsupported_statuses_name_the_reason():
    _register_test_methods()
    net = random_mlp([4, 8, 3])
    b = lipbound.bound(net, "test-global-only", norm="inf")
    assert b.status == "unsupported" and "norm inf" in b.reason and b.value is None
    b = lipbound.bound(net, "test-global-only", norm=2, center=np.zeros(4), eps=0.1)
    assert b.status == "unsupported" and "global-only" in b.reason
    b = lipbound.bound(random_graph_net(0), "test-global-only", norm=2)
    assert b.status == "unsupported" and "Conv2d" in b.reason and "lower-sample" in b.reason
    b = lipbound.bound(random_mlp([3, 4, 2], activation="tanh"), "test-global-only", norm=2)
    assert b.status == "unsupported" and "tanh" in b.reason
    b = lipbound.bound(net, "test-raises", norm=2)
    assert b.status == "unsupported" and "too large" in b.reason


def test_report_best_bounds_gap_and_json(tmp_path):
    _register_test_methods()
    net = random_mlp([4, 8, 3], seed=5)
    rep = lipbound.compare(net, ["lower-sample", "lower-grad", "test-global-only"], norm=2, time_limit=30)
    lo = max(rep["lower-sample"].value, rep["lower-grad"].value)
    assert rep.best_lower == lo and rep.best_upper == 1e9
    assert rep.gap == pytest.approx(1e9 / lo)
    js = json.loads(json.dumps(rep.to_json()))
    assert set(js) >= {"network", "norm", "region", "results", "best_lower", "best_upper", "gap"}
    assert js["norm"] == "2" and js["region"] is None
    for r in js["results"]:
        assert set(r) >= {"method", "kind", "value", "time_s", "status", "witness", "details"}
    assert "best lower" in rep.table()
    path = rep.plot(str(tmp_path / "cmp.png"))
    assert (tmp_path / "cmp.png").stat().st_size > 1000


def test_compare_default_runs_applicable_methods():
    net = random_mlp([3, 6, 2], seed=6)
    rep = lipbound.compare(net, norm="inf", time_limit=20)
    names = [b.method for b in rep.results]
    assert "lower-sample" in names and "lower-grad" in names
    assert all(b.status in ("ok", "time_limit", "unsupported", "failed") for b in rep.results)


def test_time_limit_returns_best_so_far():
    net = random_mlp([10, 32, 32, 4], seed=7)
    b = lipbound.bound(net, "lower-grad", norm=2, time_limit=0.0, samples=100)
    assert b.status == "time_limit" and b.ok  # the screening samples still give a certified value


def test_region_box_clipped_to_domain():
    r = Region.box(np.array([0.05, 0.5]), 0.1, domain=(0.0, 1.0))
    np.testing.assert_allclose(r.lower, [0.0, 0.4])
    np.testing.assert_allclose(r.upper, [0.15, 0.6])
    with pytest.raises(LipboundError):
        Region.box(np.array([2.0, 2.0]), 0.1, domain=(0.0, 1.0))
