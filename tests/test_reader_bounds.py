"""The same network read from torch, from ONNX (opsets 17 and 20) and from a torch.export .pt2 file gets
the same bounds; a 1-Lipschitz MaxMin network is certified 1-Lipschitz in l2.

Independent checks: the readings agree with torch / onnxruntime outputs (test_io_ops.read_three_ways),
so bounds computed on them must agree too (ONNX stores float32 weights: 1e-5 relative); and the
orthogonal MaxMin MLP is 1-Lipschitz in l2 by a theorem (orthogonal layers times local permutations),
with a certified lower bound close to 1 at a sampled point."""

import numpy as np
import pytest
import torch

import lipbound
from test_io_ops import LipschitzMLP, SmoothResNet, orthogonal, randomise_batchnorm, read_three_ways


def _bounds(net, methods, norm, **kw):
    rep = lipbound.compare(net, methods, norm=norm, time_limit=20, **kw)
    out = {}
    for b in rep.results:
        assert b.status in ("ok", "time_limit"), b
        out[b.method] = b.value
    return out


def _agree(per_reading, rel):
    ref = per_reading["torch"]
    for key, vals in per_reading.items():
        for m, v in vals.items():
            assert v == pytest.approx(ref[m], rel=rel), (key, m, v, ref[m])


@pytest.fixture(scope="module")
def resnet_readings(tmp_path_factory):
    torch.manual_seed(3)
    return read_three_ways(randomise_batchnorm(SmoothResNet(), seed=4), (2, 6, 6), tmp_path_factory.mktemp("resnet"),
                           scale=1.0, n=8)


@pytest.mark.parametrize("norm", [1, 2, "inf"])
def test_gelu_silu_resnet_same_bounds_from_every_reader(resnet_readings, norm):
    nets = resnet_readings
    methods = ["naive"] + (["autolip"] if norm == 2 else [])
    center = np.random.default_rng(0).uniform(-1, 1, (2, 6, 6))
    per_reading = {k: {**_bounds(n, methods, norm), **{f"{m}@box": v for m, v in
                                                          _bounds(n, ["crown"], norm, center=center, eps=0.05,
                                                                 options={"crown": {"alpha": False}}).items()}}
                   for k, n in nets.items()}
    _agree(per_reading, 1e-5)
    for vals in per_reading.values():  # a box bound never above the global one
        assert vals["crown@box"] <= vals["naive"] * (1 + 1e-9)


def test_maxmin_network_same_bounds_and_one_lipschitz_in_l2(tmp_path):
    nets = read_three_ways(LipschitzMLP(), (8,), tmp_path, scale=2.0)
    per_reading = {k: _bounds(n, ["naive", "autolip"], 2) for k, n in nets.items()}
    _agree(per_reading, 1e-5)
    for key, vals in per_reading.items():  # float32 weights are orthogonal to ~1e-7
        assert vals["naive"] <= 1 + 1e-6 and vals["autolip"] <= 1 + 1e-6, (key, vals)
    # with exactly orthogonal float64 weights, certified 1-Lipschitz to 1e-9 (a theorem: orthogonal layers
    # times local permutations), and the certified lower bound at sampled points reaches 1
    module = LipschitzMLP().double()
    with torch.no_grad():
        for i, layer in enumerate(module.layers):
            layer.weight.copy_(orthogonal(8, i)[:layer.out_features])
    exact = lipbound.from_torch(module, (8,))
    for method in ("naive", "autolip"):
        b = lipbound.bound(exact, method, norm=2)
        assert b.ok and 1 - 1e-9 <= b.value <= 1 + 1e-9, b
    low = lipbound.bound(exact, "lower-sample", norm=2)
    assert low.ok and 1 - 1e-9 <= low.value <= 1 + 1e-9
    for norm in (1, "inf"):
        vals = {k: _bounds(n, ["naive"], norm)["naive"] for k, n in nets.items()}
        lo = lipbound.bound(nets["torch"], "lower-sample", norm=norm).value
        assert all(v >= lo * (1 - 1e-9) for v in vals.values()) and max(vals.values()) == pytest.approx(vals["torch"], rel=1e-5)
