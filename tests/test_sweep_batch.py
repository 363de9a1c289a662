"""Batching in `lipbound.sweep`: the batched methods (crown / recurjac with alpha=False, ibp-jacobian) bound a
chunk of points in one call with the values of `lipbound.bound` point by point (and of the sweep's per-point
path), chunks of the configured size, bounded groups, and the options that decide what is batched."""

import json
import math

import numpy as np
import pytest
import torch

import lipbound
from lipbound.methods.jacobian import batched
from lipbound.sweep import compute

from _nets import random_graph_net, random_mlp

BATCHED = ["crown", "recurjac", "ibp-jacobian"]
NO_ALPHA = {"crown": {"alpha": False}, "recurjac": {"alpha": False}}


def close(a, b, path="") -> None:
    """Equal structures, numbers to 1e-9 relative (batched sums run in another order), timings ignored."""
    if isinstance(a, dict):
        keys = {k for k in a if not (k == "time_s" or k.endswith("_s"))}
        assert keys == {k for k in b if not (k == "time_s" or k.endswith("_s"))}, path
        for k in keys:
            close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


def per_point(monkeypatch):
    """Turn batching off (the sweep's path before batching: `compare` point by point)."""
    monkeypatch.setattr(compute, "batched_methods", lambda cfg: {})


@pytest.mark.parametrize("norm", ["inf", 2, 1])
def test_batched_records_equal_the_per_point_records(norm, monkeypatch):
    net = random_mlp([6, 10, 10, 3], seed=2)
    x = np.random.default_rng(0).standard_normal((7, 6))
    methods = ["lower-sample"] + BATCHED
    recs = lipbound.sweep(net, x, [0.1, 0.3], norm=norm, methods=methods, options={"alpha": False}, seed=5, batch=3)
    got = {(r["id"], r["eps"]): r for r in recs}
    assert len(got) == 14
    for (i, eps), rec in got.items():
        for r in rec["results"]:
            direct = lipbound.bound(net, r["method"], norm, center=x[i], eps=eps, seed=5, **NO_ALPHA.get(r["method"], {}))
            assert r["value"] == pytest.approx(direct.value, rel=1e-9) and r["status"] == direct.status
            close(r["details"], lipbound.api._jsonable(direct.details))
        assert rec["best_upper"] == min(r["value"] for r in rec["results"] if r["kind"] == "upper")
    per_point(monkeypatch)
    ref = {(r["id"], r["eps"]): r for r in lipbound.sweep(net, x, [0.1, 0.3], norm=norm, methods=methods,
                                                           options={"alpha": False}, seed=5)}
    for k, rec in got.items():
        close(rec, ref[k])


@pytest.mark.parametrize("make", [lambda: random_graph_net(seed=1), lambda: random_mlp([5, 12, 9, 7, 2], 3, "leaky_relu", 0.1),
                                  lambda: random_mlp([4, 8, 8, 3], 4, "sigmoid")], ids=["conv-residual", "leaky", "sigmoid"])
def test_bound_boxes_equals_bound_box_by_box(make):
    net = make()
    rng = np.random.default_rng(7)
    centers = rng.standard_normal((6,) + net.input_shape)
    eps = np.array([0.02, 0.1, 0.3, 0.5, 0.05, 1.0]).reshape((6,) + (1,) * len(net.input_shape))
    for mode, method in (("crown", "crown"), ("ibp", "ibp-jacobian")):
        out = batched.bound_boxes(net, centers - eps, centers + eps, math.inf, mode)
        for b in range(6):
            region = lipbound.Region.from_bounds(centers[b] - eps[b], centers[b] + eps[b])
            ref = lipbound.bound(net, method, "inf", region, **NO_ALPHA.get(method, {}))
            assert out[b]["value"] == pytest.approx(ref.value, rel=1e-9), (mode, b)
            assert out[b]["details"]["undecided_neurons"] == ref.details["undecided_neurons"]
            assert not out[b]["cut"]


def test_chunks_have_the_configured_size_and_records_stream(monkeypatch):
    net = random_mlp([6, 10, 10, 3], seed=1)
    x = np.random.default_rng(2).standard_normal((8, 6))
    sizes = []
    real = batched.bound_boxes

    def spy(net_, lower, upper, *a, **k):
        sizes.append(lower.shape[0])
        return real(net_, lower, upper, *a, **k)

    monkeypatch.setattr(batched, "bound_boxes", spy)
    gen = lipbound.sweep(net, x, 0.2, norm="inf", methods=["ibp-jacobian", "crown"], options={"alpha": False}, batch=3)
    first = next(gen)
    assert sizes == [3, 3]  # one call per batched method for the first chunk only: nothing computed ahead
    rest = list(gen)
    assert sizes == [3, 3, 3, 3, 2, 2] and len(rest) == 7 and first["id"] == 0
    assert [r["id"] for r in [first, *rest]] == list(range(8))


def test_memory_bound_groups_keep_the_values(monkeypatch):
    net = random_mlp([6, 16, 16, 4], seed=3)
    x = np.random.default_rng(5).standard_normal((10, 6))
    ref = batched.bound_boxes(net, x - 0.3, x + 0.3, 2, "crown")
    calls = []
    real = batched.RowwiseGraph.bound

    def spy(self, classes, *a, **k):
        calls.append(len(classes))
        return real(self, classes, *a, **k)

    monkeypatch.setattr(batched, "MAX_ENTRIES", 1)  # every group: one box (the least a group holds)
    monkeypatch.setattr(batched.RowwiseGraph, "bound", spy)
    out = batched.bound_boxes(net, x - 0.3, x + 0.3, 2, "crown")
    assert calls == [4] * 10  # one box (4 output rows) per Jacobian-graph call
    for a, b in zip(out, ref):
        assert a["value"] == pytest.approx(b["value"], rel=1e-9)
    # the groups themselves: at most ROW_ENTRIES rows x width (here 3 boxes of 4 rows), every box once
    counts = batched._undecided(net, lipbound.crown.forward_bounds_batch(net, x - 0.3, x + 0.3), 10)
    monkeypatch.setattr(batched, "MAX_ENTRIES", 1 << 24)
    monkeypatch.setattr(batched, "ROW_ENTRIES", 3 * 4 * 16)
    groups = batched._groups(net, counts, torch.argsort(sum(counts), stable=True), 4)
    assert sorted(int(b) for g in groups for b in g) == list(range(10)) and max(len(g) for g in groups) <= 3


def test_what_is_batched_follows_the_options():
    from lipbound.sweep import _config

    def cfg(methods, options=None):
        return _config(2, methods, 1, None, 0, options)

    assert compute.batched_methods(cfg(["crown", "lower-sample"])) == {}  # crown's default: alpha-CROWN
    assert compute.batched_methods(cfg(["crown", "ibp-jacobian"], {"alpha": False})) == {"crown": "crown",
                                                                                       "ibp-jacobian": "ibp"}
    assert compute.batched_methods(cfg(["recurjac"], {"recurjac": {"alpha": False}})) == {"recurjac": "recurjac"}
    assert compute.batched_methods(cfg(None)) == {}


def test_options_are_checked_and_part_of_the_settings(tmp_path):
    net = random_mlp([3, 5, 2], seed=0)
    x = np.zeros((2, 3))
    out = tmp_path / "r.jsonl"
    with pytest.raises(lipbound.LipboundError, match="methods"):
        lipbound.sweep(net, x, 0.1, options={"alpha": False})  # certify takes no method options
    with pytest.raises(lipbound.LipboundError):
        lipbound.sweep(net, x, 0.1, methods=["lower-sample"], options={"alpha": False})  # no such option there
    with pytest.raises(lipbound.LipboundError, match="batch"):
        lipbound.sweep(net, x, 0.1, methods=["crown"], batch=0)
    recs = list(lipbound.sweep(net, x, 0.1, methods=["crown"], options={"alpha": False}, out=out))
    assert recs[0]["settings"]["options"] == {"crown": {"alpha": False}}
    assert recs[0]["results"][0]["details"]["forward"] == "crown"
    assert list(lipbound.sweep(net, x, 0.1, methods=["crown"], options={"crown": {"alpha": False}}, out=out)) == []
    with pytest.raises(lipbound.LipboundError, match="options"):  # the same file with the default options
        lipbound.sweep(net, x, 0.1, methods=["crown"], out=out)
    # without options the settings have no "options" key (files of earlier sweeps resume as before)
    plain = list(lipbound.sweep(net, x, 0.1, methods=["crown"]))
    assert "options" not in plain[0]["settings"] and plain[0]["results"][0]["details"]["forward"] == "alpha-crown"


def test_ray_two_workers_give_the_records_of_one(tmp_path):
    """One local Ray runtime (started on loopback only, shut down by the sweep that started it) serves the
    per-point methods (lower-sample, equal to the in-process records) and the batched chunks (crown,
    ibp-jacobian: equal to 1e-9, the batched sums run in another order); the driver writes the file."""
    ray = pytest.importorskip("ray")
    net = random_mlp([6, 12, 12, 3], seed=4)
    x = np.random.default_rng(3).standard_normal((12, 6))
    kw = dict(norm="inf", methods=["lower-sample", "crown", "ibp-jacobian"], options={"crown": {"alpha": False}},
              seed=3, batch=4)
    one = {(r["id"], r["eps"]): r for r in lipbound.sweep(net, x, [0.1, 0.2], **kw)}
    gen = lipbound.sweep(net, x, [0.1, 0.2], workers=2, out=tmp_path / "r.jsonl", **kw)
    first = next(gen)
    assert ray.is_initialized() and ray.util.get_node_ip_address() == "127.0.0.1"  # loopback only
    two = {(r["id"], r["eps"]): r for r in [first, *gen]}
    assert not ray.is_initialized()  # the sweep shut down the runtime it started
    assert sorted(one) == sorted(two) and len(one) == 24
    written = {(r["id"], r["eps"]): r for r in map(json.loads, (tmp_path / "r.jsonl").read_text().splitlines())}
    assert sorted(written) == sorted(two)
    for k in one:
        close(one[k], two[k])
        close(written[k], two[k])
        assert one[k]["results"][0]["value"] == two[k]["results"][0]["value"]  # lower-sample: per point, bitwise


def test_a_batch_cut_by_its_time_share_falls_back_to_the_per_point_path(monkeypatch):
    net = random_mlp([5, 8, 8, 2], seed=6)
    x = np.random.default_rng(1).standard_normal((4, 5))
    real = batched.bound_boxes
    monkeypatch.setattr(batched, "bound_boxes", lambda *a, **k: [{**o, "cut": True} for o in real(*a, **k)])
    recs = list(lipbound.sweep(net, x, 0.2, norm="inf", methods=["crown"], options={"alpha": False}))
    for rec in recs:
        direct = lipbound.bound(net, "crown", "inf", center=x[rec["id"]], eps=0.2, alpha=False)
        assert rec["results"][0]["value"] == direct.value  # the per-point path itself


def test_cli_option_reaches_the_methods(tmp_path, capsys):
    """`lipbound sweep -m crown --option alpha=false`: the records carry plain CROWN's values (those of
    `bound(..., alpha=False)`); --option without -m and an unknown option are one-line errors."""
    import json

    from lipbound.cli import main

    net = lipbound.examples.load_example("digits_mlp")
    X = np.random.default_rng(0).random((3, 64))
    np.save(tmp_path / "X.npy", X)
    base = ["sweep", "example:digits_mlp", "--inputs", str(tmp_path / "X.npy"), "--eps", "0.02", "--norm", "inf",
            "--quiet"]
    assert main(base + ["-m", "crown", "--option", "alpha=false", "--out", str(tmp_path / "a.jsonl")]) == 0
    recs = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    for r in recs:
        ref = lipbound.bound(net, "crown", norm="inf", center=X[int(r["id"])], eps=0.02, alpha=False)
        assert r["best_upper"] == pytest.approx(ref.value, rel=1e-9)
    capsys.readouterr()
    assert main(base + ["--option", "alpha=false", "--out", str(tmp_path / "b.jsonl")]) == 2
    assert main(base + ["-m", "crown", "--option", "alph=false", "--out", str(tmp_path / "c.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("lipbound: error:") for line in err)
