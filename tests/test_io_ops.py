"""Readers on activations, pooling and MaxMin: every module is read three ways -- `from_torch`, ONNX
(``torch.onnx.export`` at opsets 17 and 20, which write GELU differently) through `load`, and a
``torch.export`` ``.pt2`` archive through `load` -- and each reading is held against the module itself
(float64) or onnxruntime (float32), and the readings against each other."""

import math
import warnings
import zipfile

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import lipbound
from lipbound.errors import LipboundError, UnsupportedOperator

ort = pytest.importorskip("onnxruntime")


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

def export_onnx(module, input_shape, path, opset):
    """The legacy (TorchScript) exporter: the dynamo one needs onnxscript, which is not a dependency."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, torch.randn(1, *input_shape), str(path), dynamo=False, opset_version=opset,
                              input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    except Exception as e:  # pragma: no cover - exporter unavailable
        pytest.skip(f"torch.onnx.export unavailable: {e}")
    return path


def export_pt2(module, input_shape, path, batch=1):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(module, (torch.randn(batch, *input_shape),))
        torch.export.save(ep, str(path))
    return path


def reference(module, x):
    """The module's outputs in float64 (a float64 copy of it), flattened per sample."""
    import copy

    with torch.no_grad():
        return copy.deepcopy(module).double().eval()(x).reshape(x.shape[0], -1)


def ort_outputs(path, x):
    """onnxruntime's outputs (float32), one sample at a time (some graphs fix the batch size to 1)."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = [sess.run(None, {"x": xi[None].numpy().astype(np.float32)})[0].reshape(-1) for xi in x]
    return torch.from_numpy(np.stack(outs).astype(np.float64))


def close(a, b, rel):
    return float((a - b).abs().max()) <= rel * (1 + float(b.abs().max()))


def read_three_ways(module, input_shape, tmp_path, opsets=(17, 20), scale=3.0, n=16, pt2=True):
    """{reading: network}: from_torch, each ONNX opset, .pt2; each checked against its reference and all
    against the torch reading."""
    module.eval()
    x = torch.randn((n,) + tuple(input_shape), dtype=torch.float64, generator=torch.Generator().manual_seed(7)) * scale
    ref = reference(module, x)
    nets = {"torch": lipbound.from_torch(module, input_shape)}
    assert close(nets["torch"](x).reshape(n, -1), ref, 1e-10)
    for opset in opsets:
        path = export_onnx(module, input_shape, tmp_path / f"{type(module).__name__}_{opset}.onnx", opset)
        net = nets[f"onnx{opset}"] = lipbound.load(path)
        assert close(net(x).reshape(n, -1), ort_outputs(path, x), 1e-5), opset
    if pt2:
        net = nets["pt2"] = lipbound.load(export_pt2(module, input_shape, tmp_path / f"{type(module).__name__}.pt2"))
        assert close(net(x).reshape(n, -1), ref, 1e-9)
    for key, net in nets.items():
        assert net.input_shape == tuple(input_shape), key
        assert close(net(x).reshape(n, -1), nets["torch"](x).reshape(n, -1), 1e-6), key
    return nets


def activation_names(net):
    return {n.op.name for n in net.nodes if n.op.kind == "Activation"}


def assert_one_line(exc_info, *words, cls=LipboundError):
    assert isinstance(exc_info.value, cls), type(exc_info.value)
    msg = str(exc_info.value)
    assert "\n" not in msg and len(msg) < 600, msg
    for w in words:
        assert w.lower() in msg.lower(), (w, msg)


def randomise_batchnorm(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=g) - 0.5)
    return module


# --------------------------------------------------------------------------------------------------
# activations
# --------------------------------------------------------------------------------------------------

class ActivationZoo(nn.Module):
    """One branch per activation (modules, functions, tensor methods, clamps), each through its own
    Linear, summed: every activation in one export."""

    MODULES = [nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU(), nn.Hardtanh(-0.5, 2.0), nn.ReLU6(), nn.Hardswish(),
               nn.Hardsigmoid(), nn.Softsign(), nn.Mish(), nn.LeakyReLU(0.2), nn.ELU(0.5), nn.Softplus(beta=2.0),
               nn.Tanh(), nn.Sigmoid(), nn.PReLU(init=0.3)]
    N_FUNCTIONAL = 9

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(5, 8)
        self.acts = nn.ModuleList(self.MODULES)
        self.outs = nn.ModuleList([nn.Linear(8, 3) for _ in range(len(self.MODULES) + self.N_FUNCTIONAL)])

    def forward(self, x):
        h = self.inp(x)
        branches = [a(h) for a in self.acts] + [
            torch.abs(h), torch.clamp(h, -1.0, 0.5), torch.clamp(h, min=0.25), h.clamp(max=-0.25),
            F.gelu(h, approximate="tanh"), F.silu(h), F.relu6(h), h.abs().sigmoid(), F.hardswish(h).tanh()]
        y = self.outs[0](branches[0])
        for lin, b in zip(self.outs[1:], branches[1:]):
            y = y + lin(b)
        return y


ALL_ACTIVATIONS = {"gelu", "gelu_tanh", "silu", "hardtanh", "hardswish", "hardsigmoid", "softsign", "mish", "leaky_relu",
                   "elu", "softplus", "tanh", "sigmoid", "abs", "relu"}


def test_activation_zoo_three_readers(tmp_path):
    """Every activation read by from_torch, from ONNX at opset 17 (GELU / SiLU / Mish / Softsign as
    sub-graphs) and 20 (a Gelu node), and from .pt2 (aten operators), all equal."""
    torch.manual_seed(0)
    nets = read_three_ways(ActivationZoo(), (5,), tmp_path, scale=4.0)
    for key, net in nets.items():
        assert activation_names(net) >= ALL_ACTIVATIONS, (key, ALL_ACTIVATIONS - activation_names(net))
    # the ONNX graphs at opset 17 write GELU with Erf and SiLU as Mul(x, Sigmoid(x)): recognised, not pruned away
    gelus = [n for n in nets["onnx17"].nodes if getattr(n.op, "name", None) == "gelu"]
    assert len(gelus) == 1


@pytest.mark.parametrize("module, name", [
    (nn.GELU(), "gelu"), (nn.GELU(approximate="tanh"), "gelu_tanh"), (nn.SiLU(), "silu"), (nn.Mish(), "mish"),
    (nn.Softsign(), "softsign"), (nn.Hardswish(), "hardswish"), (nn.Hardsigmoid(), "hardsigmoid"),
    (nn.ReLU6(), "hardtanh"), (nn.Hardtanh(-2.0, 0.5), "hardtanh"), (nn.SELU(), "selu")])
def test_each_activation_from_torch_and_onnx17(module, name, tmp_path):
    torch.manual_seed(1)
    mlp = nn.Sequential(nn.Linear(3, 6), module, nn.Linear(6, 2))
    x = torch.randn(32, 3, dtype=torch.float64) * 4
    net = lipbound.from_torch(mlp, (3,))
    assert activation_names(net) == {name}
    assert close(net(x), reference(mlp, x), 1e-10)
    path = export_onnx(mlp, (3,), tmp_path / "act.onnx", 17)
    onnx_net = lipbound.load(path)
    assert activation_names(onnx_net) == {name}
    assert close(onnx_net(x), ort_outputs(path, x), 1e-5)
    assert close(onnx_net(x), net(x), 1e-6)


def test_hand_written_activation_patterns_in_torch():
    """x * sigmoid(x), x / (1 + |x|), 0.5 x (1 + erf(x / sqrt 2)), x tanh(softplus x), x relu6(x + 3) / 6
    written by hand (composed) are read as the activations, exactly."""

    class ByHand(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            h = self.lin(x)
            h = h * torch.sigmoid(h)
            h = h / (1 + h.abs())
            h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
            h = h * torch.tanh(F.softplus(h))
            return h * F.relu6(h + 3) / 6

    torch.manual_seed(2)
    m = ByHand()
    net = lipbound.from_torch(m, (4,))
    assert [n.op.name for n in net.nodes if n.op.kind == "Activation"] == ["silu", "softsign", "gelu", "mish",
                                                                            "hardswish"]
    x = torch.randn(64, 4, dtype=torch.float64) * 5
    assert close(net(x), reference(m, x), 1e-12)


def make_onnx(path, nodes, in_shape, out_shape, inits, opset):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def vi(name, shape):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    tensors = [numpy_helper.from_array(np.asarray(v, dtype=np.float32) if np.asarray(v).dtype.kind == "f"
                                       else np.asarray(v), name=k) for k, v in inits.items()]
    graph = helper.make_graph(nodes, "g", [vi("x", in_shape)], [vi("y", out_shape)], tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def i64(*v):
    return np.array(v, dtype=np.int64)


HAND_BUILT = {
    # name: (nodes after h = MatMul(x, W) (shape [1, 4]), output shape, extra initializers, opset, expected describe)
    "gelu_tanh_op": ([("Gelu", ["h"], ["y"], {"approximate": "tanh"})], [1, 4], {}, 20, "gelu_tanh"),
    "mish_op": ([("Mish", ["h"], ["y"], {})], [1, 4], {}, 18, "mish"),
    "softsign_op": ([("Softsign", ["h"], ["y"], {})], [1, 4], {}, 13, "softsign"),
    "hardswish_op": ([("HardSwish", ["h"], ["y"], {})], [1, 4], {}, 14, "hardswish"),
    "hardsigmoid_other": ([("HardSigmoid", ["h"], ["y"], {"alpha": 0.3, "beta": 0.4})], [1, 4], {}, 13,
                          "hardtanh(0, 1)"),
    "hardswish_as_mul": ([("HardSigmoid", ["h"], ["s"], {"alpha": 1 / 6}), ("Mul", ["h", "s"], ["y"], {})], [1, 4], {},
                         13, "hardswish"),
    "clip_min": ([("Clip", ["h", "lo"], ["y"], {})], [1, 4], {"lo": np.float32(0.3)}, 13, "relu"),
    "clip_max": ([("Clip", ["h", "", "hi"], ["y"], {})], [1, 4], {"hi": np.float32(-0.3)}, 13, "relu"),
    "clip_both": ([("Clip", ["h", "lo", "hi"], ["y"], {})], [1, 4], {"lo": np.float32(-0.5), "hi": np.float32(0.7)},
                  13, "hardtanh(-0.5, 0.7)"),
    "prelu": ([("PRelu", ["h", "s"], ["y"], {})], [1, 4], {"s": np.array([0.25])}, 13, "leaky_relu(0.25)"),
    "gelu_erf_other_order": ([("Div", ["h", "r2"], ["d"], {}), ("Erf", ["d"], ["e"], {}), ("Add", ["one", "e"], ["a"], {}),
                              ("Mul", ["half", "h"], ["m"], {}), ("Mul", ["a", "m"], ["y"], {})], [1, 4],
                             {"r2": np.float32(math.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5)}, 13, "gelu"),
    "maxmin_slices": ([("Slice", ["h", "s0", "e0", "ax", "st"], ["p"], {}), ("Slice", ["h", "s1", "e0", "ax", "st"], ["q"], {}),
                       ("Max", ["p", "q"], ["mx"], {}), ("Min", ["q", "p"], ["mn"], {}),
                       ("Unsqueeze", ["mx", "ax2"], ["mx2"], {}), ("Unsqueeze", ["mn", "ax2"], ["mn2"], {}),
                       ("Concat", ["mx2", "mn2"], ["c"], {"axis": 2}), ("Reshape", ["c", "sh"], ["y"], {})], [1, 4],
                      {"s0": i64(0), "s1": i64(1), "e0": i64(99), "ax": i64(1), "st": i64(2), "ax2": i64(2),
                       "sh": i64(1, 4)}, 13, "MaxMin(axis=0, pairs, max_min)"),
    "maxmin_gather": ([("Gather", ["h", "i0"], ["p"], {"axis": 1}), ("Gather", ["h", "i1"], ["q"], {"axis": 1}),
                       ("Min", ["p", "q"], ["mn"], {}), ("Max", ["p", "q"], ["mx"], {}),
                       ("Concat", ["mn", "mx"], ["y"], {"axis": 1})], [1, 4], {"i0": i64(0, 1), "i1": i64(2, 3)}, 13,
                      "MaxMin(axis=0, halves, min_max)"),
    "maxmin_topk": ([("Reshape", ["h", "s"], ["r"], {}), ("TopK", ["r", "k"], ["v", "i"], {"axis": 2}),
                     ("Reshape", ["v", "s2"], ["y"], {})], [1, 4], {"s": i64(1, 2, 2), "k": i64(2), "s2": i64(1, 4)},
                    13, "MaxMin(axis=0, pairs, max_min)"),
    "maxmin_reduce18": ([("Reshape", ["h", "s"], ["r"], {}), ("ReduceMax", ["r", "a"], ["mx"], {"keepdims": 1}),
                         ("ReduceMin", ["r", "a"], ["mn"], {"keepdims": 1}), ("Concat", ["mn", "mx"], ["c"], {"axis": 2}),
                         ("Reshape", ["c", "s2"], ["y"], {})], [1, 4], {"s": i64(1, 2, 2), "a": i64(-1),
                                                                         "s2": i64(1, 4)}, 18,
                        "MaxMin(axis=0, pairs, min_max)"),
}


@pytest.mark.parametrize("case", sorted(HAND_BUILT))
def test_hand_built_onnx_operators(case, tmp_path):
    from onnx import helper

    ops, out_shape, inits, opset, expected = HAND_BUILT[case]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm")]
    nodes += [helper.make_node(op, ins, outs, name=f"{op.lower()}_{i}", **attrs) for i, (op, ins, outs, attrs)
              in enumerate(ops)]
    W = np.random.default_rng(3).normal(size=(6, 4))
    path = make_onnx(tmp_path / f"{case}.onnx", nodes, ["N", 6], ["N"] + out_shape[1:], {"W": W, **inits}, opset)
    net = lipbound.load(path)
    assert expected in [n.op.describe() for n in net.nodes], [n.op.describe() for n in net.nodes]
    x = torch.randn(32, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 3
    assert close(net(x).reshape(32, -1), ort_outputs(path, x), 1e-5)


def test_reduce_mean_and_global_pool_onnx(tmp_path):
    """ReduceMean over spatial axes (attribute at opset 13, input at 18, one axis or both) and
    GlobalAveragePool are average pools."""
    from onnx import helper

    C = np.random.default_rng(5).normal(size=(4, 2, 3, 3))
    cases = [("ReduceMean", {"axes": [2, 3], "keepdims": 0}, [], 13, ["N", 4]),
             ("ReduceMean", {"keepdims": 1}, [i64(-1, -2)], 18, ["N", 4, 1, 1]),
             ("ReduceMean", {"keepdims": 1}, [i64(2)], 18, ["N", 4, 1, 3]),
             ("ReduceMean", {"keepdims": 0}, [i64(1)], 18, ["N", 4, 3]),
             ("GlobalAveragePool", {}, [], 13, ["N", 4, 1, 1])]
    for i, (op, attrs, extra, opset, out) in enumerate(cases):
        inputs = ["h"] + (["axes"] if extra else [])
        nodes = [helper.make_node("Conv", ["x", "C"], ["h"], name="conv"),
                 helper.make_node(op, inputs, ["y"], name="reduce", **attrs)]
        inits = {"C": C, **({"axes": extra[0]} if extra else {})}
        path = make_onnx(tmp_path / f"r{i}.onnx", nodes, ["N", 2, 6, 5], out, inits, opset)
        net = lipbound.load(path)
        assert "AvgPool2d" in net.op_kinds()
        x = torch.randn(8, 2, 6, 5, dtype=torch.float64)
        assert close(net(x).reshape(8, -1), ort_outputs(path, x), 1e-5), (op, attrs, extra)


# --------------------------------------------------------------------------------------------------
# a GELU / SiLU residual network with adaptive pooling
# --------------------------------------------------------------------------------------------------

class Block(nn.Module):
    def __init__(self, c, act):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.act = act

    def forward(self, x):
        return self.act(x + self.bn2(self.conv2(self.act(self.bn1(self.conv1(x))))))


class SmoothResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.block1 = Block(4, nn.GELU())
        self.block2 = Block(4, nn.SiLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = self.block2(self.block1(self.stem(x)))
        return self.head(torch.flatten(self.pool(h), 1))


def test_gelu_silu_resnet_three_readers(tmp_path):
    torch.manual_seed(3)
    model = randomise_batchnorm(SmoothResNet(), seed=4)
    nets = read_three_ways(model, (2, 6, 6), tmp_path, scale=1.0, n=8)
    for key, net in nets.items():
        assert activation_names(net) == {"gelu", "silu"}, key
        assert sum(n.op.kind == "Add" for n in net.nodes) == 2, key
        assert any(n.op.kind == "AvgPool2d" and n.op.kernel == (6, 6) for n in net.nodes), key
        assert not net.is_chain()


# --------------------------------------------------------------------------------------------------
# pooling and means
# --------------------------------------------------------------------------------------------------

class Pools(nn.Module):
    """Adaptive pooling to sizes that do not divide the input, F.adaptive_avg_pool2d, spatial means."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.pool = nn.AdaptiveAvgPool2d((2, 3))
        self.lin = nn.Linear(4 * 2 * 3, 3)
        self.lin2 = nn.Linear(4, 3)

    def forward(self, x):
        h = self.conv(x)  # (4, 5, 7)
        a = self.lin(torch.flatten(self.pool(h), 1))
        b = self.lin2(h.mean((2, 3))) + self.lin2(torch.mean(h, dim=(-1, -2), keepdim=True).flatten(1))
        c = self.lin2(F.adaptive_avg_pool2d(h, 1).flatten(1)) + self.lin2(h.mean(-1).mean(-1))
        return a + b + c


def test_adaptive_pooling_and_means_torch_and_pt2(tmp_path):
    """Non-divisible adaptive pooling (no ONNX form: torch.onnx refuses it) through from_torch and .pt2."""
    torch.manual_seed(5)
    nets = read_three_ways(Pools(), (2, 7, 9), tmp_path, opsets=(), scale=1.0, n=8)
    for key, net in nets.items():
        kinds = net.op_kinds()
        assert "AdaptiveAvgPool2d" in kinds and "AvgPool2d" in kinds, (key, kinds)
    # the new op: linear with a zero constant term, and its adjoint is the transpose of its matrix
    op = next(n.op for n in nets["torch"].nodes if n.op.kind == "AdaptiveAvgPool2d")
    A = op.dense((4, 5, 7))
    assert A.shape == (24, 140) and float(A.min()) >= 0 and torch.allclose(A.sum(1), torch.ones(24, dtype=A.dtype))
    y = torch.randn(3, 4, 2, 3, dtype=torch.float64)
    assert torch.allclose(op.linear_t(y, (4, 5, 7)).reshape(3, -1), y.reshape(3, -1) @ A)


def test_divisible_adaptive_pool_and_mean_three_readers(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3, padding=1)
            self.pool = nn.AdaptiveAvgPool2d((2, 3))
            self.lin = nn.Linear(3 * 2 * 3, 3)

        def forward(self, x):
            h = torch.relu(self.conv(x))  # (3, 6, 6)
            return self.lin(self.pool(h).flatten(1)) + h.mean((2, 3), keepdim=False)

    torch.manual_seed(6)
    nets = read_three_ways(Net(), (2, 6, 6), tmp_path, scale=1.0, n=8)
    for key, net in nets.items():
        pools = sorted(n.op.kernel for n in net.nodes if n.op.kind == "AvgPool2d")
        assert pools == [(3, 2), (6, 6)], (key, pools)


# --------------------------------------------------------------------------------------------------
# MaxMin
# --------------------------------------------------------------------------------------------------

class GroupSort2(nn.Module):
    """deel-torchlip's GroupSort2: consecutive pairs, min then max (view, min / max keepdim, cat)."""

    def forward(self, x):
        s = x.shape
        r = x.view(s[:1] + (s[1] // 2, 2) + s[2:])
        a, b = torch.min(r, 2, keepdim=True)[0], torch.max(r, 2, keepdim=True)[0]
        return torch.cat([a, b], dim=2).view(s)


class SortGroupSort(nn.Module):
    """Anil et al.'s GroupSort with groups of 2: an ascending sort of consecutive pairs."""

    def forward(self, x):
        n = x.shape[1]
        return x.view(-1, n // 2, 2).sort(dim=2)[0].view(-1, n)


class HalvesMaxMin(nn.Module):
    """orthogonium / SOC MaxMin: max and min of the two halves, concatenated."""

    def forward(self, z):
        a, b = z.split(z.shape[1] // 2, 1)
        return torch.cat([torch.max(a, b), torch.min(a, b)], dim=1)


class PairsToHalvesMaxMin(nn.Module):
    """LNets' MaxMin: consecutive pairs in, (maxes, mins) out."""

    def forward(self, x):
        y = torch.reshape(x, (x.shape[0], x.shape[1] // 2, 2))
        return torch.cat((torch.max(y, 2)[0], torch.min(y, 2)[0]), dim=1)


def orthogonal(n, seed):
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


class LipschitzMLP(nn.Module):
    """A 1-Lipschitz MLP: orthogonal layers with a different MaxMin implementation between each two."""

    def __init__(self, n=8, out=3):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(n, n) for _ in range(4)] + [nn.Linear(n, out)])
        with torch.no_grad():
            for i, layer in enumerate(self.layers):
                layer.weight.copy_(orthogonal(n, i)[:layer.out_features])
        self.acts = nn.ModuleList([GroupSort2(), SortGroupSort(), HalvesMaxMin(), PairsToHalvesMaxMin()])

    def forward(self, x):
        for layer, act in zip(self.layers, self.acts):
            x = act(layer(x))
        return self.layers[-1](x)


EXPECTED_MAXMIN = ["MaxMin(axis=0, pairs, min_max)", "MaxMin(axis=0, pairs, min_max)", "MaxMin(axis=0, halves, max_min)",
                   "MaxMin(axis=0, pairs, max_min)"]


def test_maxmin_lipschitz_mlp_three_readers(tmp_path):
    """Four MaxMin layouts, read by every reader as MaxMin ops; the network's Jacobian is orthogonal
    rows almost everywhere (orthogonal layers times permutations), so its singular values are 1."""
    nets = read_three_ways(LipschitzMLP(), (8,), tmp_path, scale=2.0)
    for key, net in nets.items():
        assert [n.op.describe() for n in net.nodes if n.op.kind == "MaxMin"] == EXPECTED_MAXMIN, key
        assert "Transpose" in net.op_kinds()  # the pairs-in, halves-out layout
        J = net.jacobian(torch.randn(6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(8)))
        sv = torch.linalg.svdvals(J)
        assert torch.allclose(sv, torch.ones_like(sv), atol=1e-5), (key, sv)


def test_maxmin_on_channels_and_op_semantics():
    class ConvMaxMin(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 6, 3)

        def forward(self, x):
            h = self.conv(x)
            n, c, hh, w = h.shape
            return h.view(n, c // 2, 2, hh, w).sort(dim=2, descending=True).values.view(n, c, hh, w)

    torch.manual_seed(9)
    m = ConvMaxMin()
    net = lipbound.from_torch(m, (2, 5, 5))
    assert [n.op.describe() for n in net.nodes if n.op.kind == "MaxMin"] == ["MaxMin(axis=0, pairs, max_min)"]
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    assert close(net(x).reshape(4, -1), reference(m, x), 1e-12)
    # pairs(): y[hi] = max(x[hi], x[lo]), y[lo] = min(...) for every layout and order
    from lipbound.network import MaxMin

    x = torch.randn(3, 4, 6, dtype=torch.float64)
    for layout in ("pairs", "halves"):
        for order in ("max_min", "min_max"):
            op = MaxMin(1, layout, order)
            hi, lo = op.pairs((4, 6))
            y, xf = op.forward(x).reshape(3, -1), x.reshape(3, -1)
            assert torch.equal(y[:, hi], torch.maximum(xf[:, hi], xf[:, lo]))
            assert torch.equal(y[:, lo], torch.minimum(xf[:, hi], xf[:, lo]))
            assert sorted(np.concatenate([hi, lo]).tolist()) == list(range(24))
    with pytest.raises(LipboundError):
        lipbound.network.Network.sequential((5,), [MaxMin(0)])


def test_untraceable_group_sort_read_through_torch_export():
    """deel-torchlip's group_sort checks the group size with Python control flow: torch.fx cannot trace
    it, the reader falls back to torch.export."""

    def group_sort(x, group_size=2, dim=1):
        if x.shape[dim] % group_size != 0:
            raise ValueError("The input size must be a multiple of the group size.")
        new_shape = x.shape[:dim] + (x.shape[dim] // group_size, group_size) + x.shape[dim + 1:]
        r = x.view(new_shape)
        a, b = torch.min(r, dim + 1, keepdim=True)[0], torch.max(r, dim + 1, keepdim=True)[0]
        return torch.cat([a, b], dim=dim + 1).view(x.shape)

    class GS(nn.Module):
        def forward(self, x):
            return group_sort(x)

    class DataDependent(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    torch.manual_seed(10)
    m = nn.Sequential(nn.Conv2d(1, 4, 3), GS(), nn.Flatten(), nn.Linear(4 * 16, 2))
    net = lipbound.from_torch(m, (1, 6, 6))
    assert [n.op.describe() for n in net.nodes if n.op.kind == "MaxMin"] == ["MaxMin(axis=0, pairs, min_max)"]
    x = torch.randn(4, 1, 6, 6, dtype=torch.float64)
    assert close(net(x), reference(m, x), 1e-12)
    with pytest.raises(UnsupportedOperator) as e:
        lipbound.from_torch(nn.Sequential(nn.Linear(3, 3), DataDependent()), (3,))
    assert_one_line(e, "torch.fx", "torch.export", cls=UnsupportedOperator)


# --------------------------------------------------------------------------------------------------
# input_shape with a batch dimension
# --------------------------------------------------------------------------------------------------

def test_input_shape_with_leading_batch_of_one():
    torch.manual_seed(11)
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 36, 3))
    net = lipbound.from_torch(cnn, (1, 1, 8, 8))  # the batch dimension given by mistake: dropped
    assert net.input_shape == (1, 8, 8)
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    assert close(net(x), reference(cnn, x), 1e-12)
    # a shape the module accepts as given is kept: a one-row sample for nn.Linear
    assert lipbound.from_torch(nn.Linear(4, 3), (1, 4)).input_shape == (1, 4)
    with pytest.raises(LipboundError) as e:  # neither (2, 1, 8, 8) nor anything else fits a conv net
        lipbound.from_torch(cnn, (2, 1, 8, 8))
    assert_one_line(e, "excludes the batch dimension")


# --------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------

def test_bad_pt2_files(tmp_path):
    cases = {"junk.pt2": b"not a torch export archive\n" * 10, "empty.pt2": b""}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    with zipfile.ZipFile(tmp_path / "other_zip.pt2", "w") as z:
        z.writestr("archive/data.txt", "hello")
    (tmp_path / "folder.pt2").mkdir()
    for name in ["junk.pt2", "empty.pt2", "other_zip.pt2", "folder.pt2", "missing.pt2"]:
        with pytest.raises(LipboundError) as e:
            lipbound.load(tmp_path / name)
        assert_one_line(e, name)


def test_pt2_unsupported_operator_and_static_batch(tmp_path):
    class Sine(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            return torch.sin(self.lin(x))

    path = export_pt2(Sine().eval(), (3,), tmp_path / "sine.pt2")
    with pytest.raises(UnsupportedOperator) as e:
        lipbound.load(path)
    assert_one_line(e, "aten.sin", "'sin'", cls=UnsupportedOperator)
    path = export_pt2(nn.Linear(3, 2).eval(), (3,), tmp_path / "batch3.pt2", batch=3)
    with pytest.raises(LipboundError) as e:
        lipbound.load(path)
    assert_one_line(e, "batch", "[3, 3]")


def test_unrecognised_patterns_are_unsupported(tmp_path):
    """A lone Erf, a GELU without its 0.5, a gate x * sigmoid(y), and max / min of the wrong entries are
    unsupported operators with one-line messages naming the node -- never a wrong activation."""
    from onnx import helper

    W = np.random.default_rng(12).normal(size=(6, 4))
    consts = {"W": W, "r2": np.float32(math.sqrt(2)), "one": np.float32(1)}
    graphs = {
        "lone_erf": [helper.make_node("Erf", ["h"], ["y"], name="erf_0")],
        "gelu_without_half": [helper.make_node("Div", ["h", "r2"], ["d"], name="div"),
                              helper.make_node("Erf", ["d"], ["e"], name="the_erf"),
                              helper.make_node("Add", ["e", "one"], ["a"], name="add"),
                              helper.make_node("Mul", ["h", "a"], ["y"], name="mul")],
        "gate": [helper.make_node("MatMul", ["x", "W"], ["g"], name="mm2"),
                 helper.make_node("Relu", ["g"], ["r"], name="relu"),
                 helper.make_node("Sigmoid", ["r"], ["s"], name="sig"),
                 helper.make_node("Mul", ["h", "s"], ["y"], name="gate_mul")],
    }
    words = {"lone_erf": ["Erf", "erf_0"], "gelu_without_half": ["Erf", "the_erf"],
             "gate": ["non-constant multiplier", "gate_mul"]}
    for key, extra in graphs.items():
        nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm")] + extra
        path = make_onnx(tmp_path / f"{key}.onnx", nodes, ["N", 6], ["N", 4], consts, 13)
        with pytest.raises(UnsupportedOperator) as e:
            lipbound.load(path)
        assert_one_line(e, *words[key], cls=UnsupportedOperator)

    def rotate(b):
        return torch.cat([b[:, 1:], b[:, :1]], 1)

    bad = {"erf": lambda h: h * (1 + torch.erf(h / math.sqrt(2))),
           "sort over 3": lambda h: h.view(-1, 2, 3).sort(dim=2)[0].view(-1, 6),
           "not exactly a MaxMin": lambda h: torch.cat([torch.max(h[:, :3], h[:, 3:]), torch.min(h[:, :3], rotate(h[:, 3:]))], 1),
           "slicing": lambda h: h[:, :3] * 2.0}
    for words_, f in bad.items():
        class Bad(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(4, 6)

            def forward(self, x):
                return f(self.lin(x))

        with pytest.raises(UnsupportedOperator) as e:
            lipbound.from_torch(Bad(), (4,))
        assert_one_line(e, words_.split(" over ")[0] if "sort" in words_ else words_, cls=UnsupportedOperator)
