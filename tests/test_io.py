"""Readers: ONNX (checked against onnxruntime) and torch (checked against the module itself)."""

import numpy as np
import pytest
import torch

import lipbound
from lipbound.errors import LipboundError, UnsupportedOperator

from conftest import shared_network_paths

ort = pytest.importorskip("onnxruntime")


def ort_outputs(path_or_bytes, xs, batched=True):
    """onnxruntime outputs (float32) for a batch of inputs, one sample at a time."""
    sess = ort.InferenceSession(str(path_or_bytes) if not isinstance(path_or_bytes, bytes) else path_or_bytes,
                                providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    outs = []
    for x in xs:
        feed = (x[None] if batched else x).astype(np.float32)
        outs.append(np.asarray(sess.run(None, {name: feed})[0]).reshape(-1))
    return np.stack(outs)


def assert_matches_ort(net, model, n=8, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    xs = rng.uniform(-scale, scale, size=(n,) + tuple(net.input_shape))
    sess_in = ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                   providers=["CPUExecutionProvider"]).get_inputs()[0]
    batched = len(sess_in.shape) == len(net.input_shape) + 1
    ref = ort_outputs(model, xs, batched=batched)
    ours = net(torch.from_numpy(xs)).reshape(n, -1).numpy()
    assert ours.shape == ref.shape
    err = np.abs(ours - ref).max() / max(1.0, np.abs(ref).max())
    assert err < 1e-5, err


SHARED_PATHS = shared_network_paths()


@pytest.mark.parametrize("path", SHARED_PATHS, ids=[p.stem for p in SHARED_PATHS])
def test_shared_network_matches_onnxruntime(path):
    net = lipbound.load(path)
    assert net.name == path.stem
    # pixel-like inputs in [0, 1] and wider ones in [-1, 1]
    assert_matches_ort(net, path, scale=1.0)
    assert_matches_ort(net, path, scale=0.5, seed=1)


# --------------------------------------------------------------------------------------------------
# ACAS Xu: input handling and dense chain
# --------------------------------------------------------------------------------------------------

def test_acasxu_input_and_dense_chain(shared_dir):
    import onnx
    from onnx import numpy_helper

    path = shared_dir / "ACASXU_run2a_1_1_batch_2000.onnx"
    net = lipbound.load(path)
    assert net.input_shape == (1, 1, 5)  # ONNX input [1, 1, 1, 5] without its batch dimension
    assert net.output_shape == (5,)
    first = net.nodes[1]
    assert first.op.kind == "ElementwiseAffine" and first.op.label == "Sub"
    avg = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}["input_AvgImg"]
    assert np.allclose(first.op.shift.numpy(), -avg[0]) and np.all(first.op.scale.numpy() == 1)
    # the normalisation is part of the network: shifting the input by the constant changes nothing else
    chain = net.dense_chain()
    assert [layer.W.shape for layer in chain] == [(50, 5)] + [(50, 50)] * 5 + [(5, 50)]
    rng = np.random.default_rng(3)
    xs = rng.uniform(-1, 1, size=(16, 1, 1, 5))
    h = xs.reshape(16, -1)
    for layer in chain:
        h = h @ layer.W.T + layer.b
        if layer.activation is not None:
            h = layer.activation.forward(torch.from_numpy(h)).numpy()
    assert np.allclose(h, net(torch.from_numpy(xs)).numpy(), atol=1e-10)
    assert_matches_ort(net, path, n=16, scale=2.0, seed=4)


# --------------------------------------------------------------------------------------------------
# ONNX files built in the test
# --------------------------------------------------------------------------------------------------

def make_model(path, nodes, inputs, outputs, inits, opset=13):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def vi(name, shape):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    graph = helper.make_graph(nodes, "g", [vi(n, s) for n, s in inputs], [vi(n, s) for n, s in outputs],
                              [numpy_helper.from_array(np.asarray(v, dtype=np.float32) if np.asarray(v).dtype.kind == "f"
                                                       else np.asarray(v), name=k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_built_cnn_matches_onnxruntime(tmp_path):
    """BatchNormalization, Conv with asymmetric pads, AveragePool, Transpose, Pad input, residual Add..."""
    from onnx import helper

    rng = np.random.default_rng(0)
    r = lambda *s: rng.normal(size=s) * 0.5
    inits = {
        "mean": r(1, 2, 1, 1), "w1": r(4, 2, 3, 3), "b1": r(4), "bn_s": rng.uniform(0.5, 2, 4), "bn_b": r(4),
        "bn_m": r(4), "bn_v": rng.uniform(0.5, 2, 4), "w2": r(4, 2, 3, 3), "b2": r(4),
        "pads": np.array([0, 0, 1, 0, 0, 0, 0, 1], dtype=np.int64), "w3": r(4, 4, 1, 1),
        "shape": np.array([0, -1], dtype=np.int64), "W": r(100, 6), "C": r(6), "three": np.array(3.0),
        "Wm": r(6, 5),
    }
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["s"], name="norm_sub"),
        helper.make_node("Conv", ["s", "w1", "b1"], ["c1"], name="conv_asym", pads=[0, 1, 2, 1], strides=[1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"], name="bn",
                         epsilon=1e-3),
        helper.make_node("LeakyRelu", ["bn"], ["a1"], name="lrelu", alpha=0.2),
        helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], name="conv_grouped", pads=[1, 1, 1, 1], group=2,
                         dilations=[1, 1]),
        helper.make_node("Add", ["c2", "a1"], ["res"], name="residual"),
        helper.make_node("Elu", ["res"], ["a2"], name="elu", alpha=0.7),
        helper.make_node("Pad", ["a2", "pads"], ["p"], name="pad_in", mode="constant"),
        helper.make_node("AveragePool", ["p"], ["ap"], name="avgpool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["ap", "w3"], ["c3"], name="conv_1x1"),
        helper.make_node("MaxPool", ["c3"], ["mp"], name="maxpool", kernel_shape=[3, 3], strides=[1, 1],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["mp"], ["t"], name="transpose", perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["t", "shape"], ["f"], name="reshape"),
        helper.make_node("Gemm", ["f", "W", "C"], ["g"], name="gemm", alpha=0.5, beta=2.0),
        helper.make_node("Tanh", ["g"], ["th"], name="tanh"),
        helper.make_node("Sub", ["three", "th"], ["neg"], name="three_minus"),
        helper.make_node("Softplus", ["neg"], ["sp"], name="softplus"),
        helper.make_node("MatMul", ["sp", "Wm"], ["y"], name="matmul"),
    ]
    path = make_model(tmp_path / "cnn.onnx", nodes, [("x", ["N", 2, 10, 10])], [("y", ["N", 5])], inits)
    net = lipbound.load(path)
    assert net.input_shape == (2, 10, 10) and net.output_shape == (5,)
    by_name = {n.name: n for n in net.nodes}
    assert by_name["conv_asym/pad"].op.kind == "Pad" and by_name["conv_asym"].op.padding == (0, 0)
    assert by_name["conv_grouped"].op.padding == (1, 1) and by_name["conv_grouped"].op.groups == 2
    assert "bn" not in by_name  # per-channel: folded into the convolution before it (fold_scale_shift)
    assert by_name["residual"].op.kind == "Add" and len(by_name["residual"].inputs) == 2
    assert by_name["three_minus"].op.label == "Sub" and float(by_name["three_minus"].op.scale.reshape(-1)[0]) == -1
    assert {"Transpose", "AvgPool2d", "MaxPool2d", "Pad"} <= net.op_kinds()
    assert_matches_ort(net, path, n=6)


def test_built_mlp_variants_match_onnxruntime(tmp_path):
    """Gemm with transB/alpha/beta, Div/Mul by constants (either side), Constant nodes, Flatten axis,
    Identity, Dropout, Sigmoid, Relu, Squeeze/Unsqueeze, Sub of two tensors."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(1)
    r = lambda *s: rng.normal(size=s) * 0.5
    inits = {"W1": r(8, 12), "b1": r(8), "W2": r(8, 8), "two": np.array([2.0]), "sc": rng.uniform(0.5, 2, 8),
             "ax": np.array([1], dtype=np.int64), "W3": r(3, 8)}
    std = numpy_helper.from_array(rng.uniform(0.5, 2, size=(1, 3, 4)).astype(np.float32), name="std_v")
    nodes = [
        helper.make_node("Constant", [], ["std"], name="std_const", value=std),
        helper.make_node("Div", ["x", "std"], ["d"], name="div"),
        helper.make_node("Flatten", ["d"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "W1", "b1"], ["g1"], name="gemm1", transB=1, alpha=1.5, beta=0.5),
        helper.make_node("Identity", ["g1"], ["i1"], name="identity"),
        helper.make_node("Dropout", ["i1"], ["dr"], name="dropout"),
        helper.make_node("Relu", ["dr"], ["h1"], name="relu"),
        helper.make_node("Gemm", ["h1", "W2"], ["g2"], name="gemm_no_c"),
        helper.make_node("Mul", ["sc", "g2"], ["m"], name="mul_left"),
        helper.make_node("Div", ["m", "two"], ["m2"], name="halve"),
        helper.make_node("Sigmoid", ["m2"], ["h2"], name="sigmoid"),
        helper.make_node("Sub", ["h2", "h1"], ["diff"], name="sub_two_tensors"),
        helper.make_node("Unsqueeze", ["diff", "ax"], ["u"], name="unsqueeze"),
        helper.make_node("Squeeze", ["u", "ax"], ["sq"], name="squeeze"),
        helper.make_node("Gemm", ["sq", "W3"], ["y"], name="gemm_out", transB=1),
    ]
    path = make_model(tmp_path / "mlp.onnx", nodes, [("x", [1, 3, 4])], [("y", [1, 3])], inits)
    net = lipbound.load(path)
    assert net.input_shape == (3, 4)
    labels = {n.name: getattr(n.op, "label", None) for n in net.nodes}
    # scalings right after a Linear fold into it (fold_scale_shift); the others stay
    assert labels["div"] == "Div" and "mul_left" not in labels and "halve" not in labels
    assert_matches_ort(net, path, n=6, scale=2.0)


def test_matmul_with_constant_left_operand_on_column_input(tmp_path):
    """W @ x on a [1, n, 1] input (and on a batch-free vector, as in test_small.onnx)."""
    from onnx import helper

    rng = np.random.default_rng(2)
    inits = {"W": rng.normal(size=(3, 4)), "b": rng.normal(size=(3, 1))}
    nodes = [helper.make_node("MatMul", ["W", "x"], ["m"], name="left"),
             helper.make_node("Add", ["m", "b"], ["a"], name="bias"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["y"], name="flat")]
    path = make_model(tmp_path / "left.onnx", nodes, [("x", [1, 4, 1])], [("y", [1, 3])], inits)
    net = lipbound.load(path)
    assert net.input_shape == (4, 1) and net.output_shape == (3,)
    assert_matches_ort(net, path)

    nodes = [helper.make_node("MatMul", ["W", "x"], ["y"], name="left")]
    path = make_model(tmp_path / "vec.onnx", nodes, [("x", [4])], [("y", [3])], {"W": inits["W"]})
    net = lipbound.load(path)
    assert net.input_shape == (4,) and net.output_shape == (3,)
    assert_matches_ort(net, path)

    # no batch dimension at all: a [4, 1] column
    nodes = [helper.make_node("MatMul", ["W", "x"], ["m"], name="left"),
             helper.make_node("Add", ["m", "b"], ["y"], name="bias")]
    path = make_model(tmp_path / "col.onnx", nodes, [("x", [4, 1])], [("y", [3, 1])], inits)
    net = lipbound.load(path)
    assert net.input_shape == (4, 1) and net.output_shape == (3, 1)
    assert_matches_ort(net, path)


# --------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------

def assert_one_line_error(exc_info, *words, cls=LipboundError):
    assert isinstance(exc_info.value, cls)
    msg = str(exc_info.value)
    assert "\n" not in msg
    for w in words:
        assert w.lower() in msg.lower(), (w, msg)


def test_unsupported_operator(tmp_path):
    from onnx import helper

    nodes = [helper.make_node("Gemm", ["x", "W"], ["g"], name="gemm"),
             helper.make_node("Cos", ["g"], ["y"], name="cos_0")]
    path = make_model(tmp_path / "cos.onnx", nodes, [("x", [1, 3])], [("y", [1, 2])], {"W": np.ones((3, 2))})
    with pytest.raises(UnsupportedOperator) as e:
        lipbound.load(path)
    assert_one_line_error(e, "unsupported ONNX operator Cos", "cos_0", "supported:", "Gemm")


def test_nan_weights(tmp_path):
    from onnx import helper

    W = np.ones((3, 2))
    W[1, 0] = np.nan
    path = make_model(tmp_path / "nan.onnx", [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
                      [("x", [1, 3])], [("y", [1, 2])], {"W": W})
    with pytest.raises(LipboundError) as e:
        lipbound.load(path)
    assert_one_line_error(e, "NaN", "'W'", "mm")
    W[1, 0] = np.inf
    path = make_model(tmp_path / "inf.onnx", [helper.make_node("Add", ["x", "W"], ["y"], name="add_inf")],
                      [("x", [1, 3, 2])], [("y", [1, 3, 2])], {"W": W})
    with pytest.raises(LipboundError) as e:
        lipbound.load(path)
    assert_one_line_error(e, "infinite", "add_inf")


def test_several_inputs_or_outputs(tmp_path):
    from onnx import helper

    path = make_model(tmp_path / "two_in.onnx", [helper.make_node("Add", ["x", "z"], ["y"], name="add")],
                      [("x", [1, 3]), ("z", [1, 3])], [("y", [1, 3])], {})
    with pytest.raises(LipboundError) as e:
        lipbound.load(path)
    assert_one_line_error(e, "2 inputs", "'x'", "'z'")
    path = make_model(tmp_path / "two_out.onnx", [helper.make_node("Relu", ["x"], ["y"], name="r"),
                                                  helper.make_node("Tanh", ["x"], ["z"], name="t")],
                      [("x", [1, 3])], [("y", [1, 3]), ("z", [1, 3])], {})
    with pytest.raises(LipboundError) as e:
        lipbound.load(path)
    assert_one_line_error(e, "2 outputs")


def test_non_constant_divisor_and_multiplier(tmp_path):
    from onnx import helper

    nodes = [helper.make_node("Relu", ["x"], ["r"], name="r"), helper.make_node("Div", ["x", "r"], ["y"], name="div_xr")]
    path = make_model(tmp_path / "div.onnx", nodes, [("x", [1, 3])], [("y", [1, 3])], {})
    with pytest.raises(UnsupportedOperator) as e:
        lipbound.load(path)
    assert_one_line_error(e, "non-constant divisor", "div_xr")
    nodes = [helper.make_node("Div", ["one", "x"], ["y"], name="recip")]
    path = make_model(tmp_path / "recip.onnx", nodes, [("x", [1, 3])], [("y", [1, 3])], {"one": np.ones(3)})
    with pytest.raises(UnsupportedOperator) as e:
        lipbound.load(path)
    assert_one_line_error(e, "non-constant divisor", "recip")
    nodes = [helper.make_node("Mul", ["x", "x"], ["y"], name="square")]
    path = make_model(tmp_path / "mul.onnx", nodes, [("x", [1, 3])], [("y", [1, 3])], {})
    with pytest.raises(UnsupportedOperator) as e:
        lipbound.load(path)
    assert_one_line_error(e, "non-constant multiplier", "square")


def test_missing_and_non_onnx_files(tmp_path):
    with pytest.raises(LipboundError) as e:
        lipbound.load(tmp_path / "nope.onnx")
    assert_one_line_error(e, "no such file", "nope.onnx")
    for i, content in enumerate([b"this is not a network\n" * 20, bytes(np.random.default_rng(0).integers(0, 256, 500,
                                                                                                   dtype=np.uint8)),
                                 b""]):
        p = tmp_path / f"junk{i}.onnx"
        p.write_bytes(content)
        with pytest.raises(LipboundError) as e:
            lipbound.load(p)
        assert_one_line_error(e, f"junk{i}.onnx")


def test_other_bad_graphs(tmp_path):
    from onnx import helper

    # a reshape that would move the batch dimension
    nodes = [helper.make_node("Reshape", ["x", "s"], ["y"], name="bad_reshape")]
    path = make_model(tmp_path / "r.onnx", nodes, [("x", [1, 2, 3])], [("y", [3, 2])],
                      {"s": np.array([3, 2], dtype=np.int64)})
    with pytest.raises(LipboundError) as e:
        lipbound.load(path)
    assert_one_line_error(e, "bad_reshape", "batch")
    # reflect padding
    nodes = [helper.make_node("Pad", ["x", "p"], ["y"], name="reflect", mode="reflect")]
    path = make_model(tmp_path / "p.onnx", nodes, [("x", [1, 1, 4, 4])], [("y", [1, 1, 6, 6])],
                      {"p": np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64)})
    with pytest.raises(UnsupportedOperator) as e:
        lipbound.load(path)
    assert_one_line_error(e, "reflect")
    # a non-constant weight
    nodes = [helper.make_node("MatMul", ["x", "x"], ["y"], name="mm_xx")]
    path = make_model(tmp_path / "mm.onnx", nodes, [("x", [1, 3, 3])], [("y", [1, 3, 3])], {})
    with pytest.raises(UnsupportedOperator) as e:
        lipbound.load(path)
    assert_one_line_error(e, "mm_xx")


# --------------------------------------------------------------------------------------------------
# torch reader
# --------------------------------------------------------------------------------------------------

import copy  # noqa: E402

import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def randomise_batchnorm(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return module


def assert_matches_module(net, module, input_shape, n=5):
    ref_module = copy.deepcopy(module).double().eval()
    x = torch.rand((n,) + tuple(input_shape), dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 4 - 2
    with torch.no_grad():
        ref = ref_module(x).reshape(n, -1)
    ours = net(x).reshape(n, -1)
    assert torch.allclose(ours, ref, atol=1e-10, rtol=1e-9), float((ours - ref).abs().max())


class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                                   nn.Conv2d(c, c, 3, padding="same", bias=False))

    def forward(self, x):
        return torch.relu(x + self.block(x))


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.2, -0.1]).view(1, 2, 1, 1))
        self.stem = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.res = ResBlock(4)
        self.head = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        x = (x - self.mean) / 0.25
        h = self.res(F.leaky_relu(self.stem(x), 0.05))
        h = F.avg_pool2d(h, 2)
        h = 2.0 * h.reshape(h.shape[0], -1) - 1.0
        return self.head(h)


def test_from_torch_sequential_mlp():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.BatchNorm1d(16),
                        nn.Linear(16, 8), nn.Sigmoid(), nn.Dropout(0.5), nn.Linear(8, 8), nn.ELU(0.5), nn.Linear(8, 8),
                        nn.Softplus(beta=2.0), nn.Identity(), nn.Linear(8, 4))
    randomise_batchnorm(mlp)
    mlp.train()
    net = lipbound.from_torch(mlp, (3, 4))
    assert mlp.training and all(m.training for m in mlp.modules())  # training mode restored
    assert net.input_shape == (3, 4) and net.output_shape == (4,)
    assert net.name == "Sequential"
    assert sorted(a.describe() for a in net.activations()) == ["elu(0.5)", "relu", "sigmoid", "softplus(2)", "tanh"]
    assert all(p.dtype == torch.float64 for n in net.nodes for p in n.op.parameters())
    assert_matches_module(net, mlp, (3, 4))
    # parameters are copies: changing the module afterwards does not change the network
    before = net(torch.ones(1, 3, 4))
    with torch.no_grad():
        mlp[1].weight.add_(1.0)
    assert torch.equal(before, net(torch.ones(1, 3, 4)))
    # the dense chain of the read network reproduces it too
    x = torch.rand(4, 12, dtype=torch.float64)
    h = x.numpy()
    for layer in net.dense_chain():
        h = h @ layer.W.T + layer.b
        if layer.activation is not None:
            h = layer.activation.forward(torch.from_numpy(h)).numpy()
    assert np.allclose(h, net(x.reshape(4, 3, 4)).numpy(), atol=1e-10)


def test_from_torch_cnn_with_batchnorm_and_pools():
    torch.manual_seed(1)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(4, 6, 3, stride=1, padding=1, groups=2), nn.LeakyReLU(0.1),
                        nn.AvgPool2d(2, stride=2), nn.ZeroPad2d((1, 0, 0, 1)), nn.Conv2d(6, 2, 2),
                        nn.Flatten(), nn.Linear(2 * 3 * 3, 5))
    randomise_batchnorm(cnn, seed=2)
    net = lipbound.from_torch(cnn, (1, 12, 12))
    kinds = net.op_kinds()
    assert {"Conv2d", "MaxPool2d", "AvgPool2d", "Pad", "Reshape", "Linear"} <= kinds
    assert "ElementwiseAffine" not in kinds  # the BatchNorm folded into the convolution before it
    assert_matches_module(net, cnn, (1, 12, 12))


def test_from_torch_residual_custom_module():
    torch.manual_seed(2)
    model = randomise_batchnorm(ResNet(), seed=3)
    net = lipbound.from_torch(model, (2, 8, 8), name="tiny-resnet")
    assert net.name == "tiny-resnet" and not net.is_chain()
    adds = [n for n in net.nodes if n.op.kind == "Add"]
    assert len(adds) == 1 and len(adds[0].inputs) == 2
    assert_matches_module(net, model, (2, 8, 8))


def test_from_torch_functional_forms():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1 = nn.Linear(6, 6)
            self.l2 = nn.Linear(6, 2)

        def forward(self, x):
            h = torch.flatten(x, 1)
            h = F.relu(self.l1(h)) + 0.5 * h
            h = h.view(h.size(0), -1).relu()
            h = torch.sigmoid(h) - h
            h = 3.0 - h / 2.0
            return self.l2(torch.tanh(h))

    torch.manual_seed(3)
    m = Functional()
    net = lipbound.from_torch(m, (2, 3))
    assert_matches_module(net, m, (2, 3))


def test_from_torch_unsupported():
    class Square(nn.Module):
        def forward(self, x):
            return x * x

    class Sine(nn.Module):
        def forward(self, x):
            return torch.sin(x)

    with pytest.raises(UnsupportedOperator) as e:
        lipbound.from_torch(nn.Sequential(nn.Linear(3, 3), nn.Softmax(dim=1)), (3,))
    assert_one_line_error(e, "Softmax", "'1'")
    with pytest.raises(UnsupportedOperator) as e:
        lipbound.from_torch(Square(), (3,))
    assert_one_line_error(e, "non-constant multiplier", "mul")
    with pytest.raises(UnsupportedOperator) as e:
        lipbound.from_torch(Sine(), (3,))
    assert_one_line_error(e, "sin", "node")
    with pytest.raises(LipboundError) as e:  # input_shape excludes the batch dimension
        lipbound.from_torch(nn.Sequential(nn.Linear(3, 2)), (1, 4))
    assert_one_line_error(e, "Linear")
    with pytest.raises(LipboundError):
        lipbound.from_torch(lambda x: x, (3,))
    bad = nn.Sequential(nn.Linear(3, 2))
    with torch.no_grad():
        bad[0].weight[0, 0] = float("nan")
    with pytest.raises(LipboundError) as e:
        lipbound.from_torch(bad, (3,))
    assert_one_line_error(e, "non-finite")


def test_torch_onnx_export_roundtrip(tmp_path):
    """A torch model exported by torch.onnx (Shape/Gather/Concat feeding a Reshape, BatchNormalization,
    dynamic batch) reads to the same function as from_torch and the module itself."""
    import warnings

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 3, 3, padding=1)
            self.bn = nn.BatchNorm2d(3)
            self.fc = nn.Linear(3 * 4 * 4, 4)

        def forward(self, x):
            h = torch.relu(self.bn(self.conv(x)))
            h = F.max_pool2d(h, 2) + 1.0
            h = h.view(h.size(0), -1)
            return self.fc(h) * 2.0 - F.softplus(self.fc(h))

    torch.manual_seed(4)
    model = randomise_batchnorm(Net(), seed=5).eval()
    path = tmp_path / "exported.onnx"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, torch.randn(1, 1, 8, 8), str(path), dynamo=False, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}},
                              do_constant_folding=False)
    except Exception as e:  # the legacy exporter may be unavailable
        pytest.skip(f"torch.onnx.export unavailable: {e}")
    onnx_net = lipbound.load(path)
    torch_net = lipbound.from_torch(model, (1, 8, 8))
    assert onnx_net.input_shape == torch_net.input_shape == (1, 8, 8)
    for net in (onnx_net, torch_net):  # the BatchNorm folded into the convolution in both readings
        assert not any(getattr(n.op, "label", None) == "BatchNorm" for n in net.nodes)
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    assert torch.allclose(onnx_net(x), torch_net(x), atol=1e-10)
    assert_matches_module(onnx_net, model, (1, 8, 8))
    assert_matches_ort(onnx_net, path)


def test_dynamic_feature_dimension_is_inferred(tmp_path):
    from onnx import helper

    rng = np.random.default_rng(5)
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["h"], name="gemm", transB=1),
             helper.make_node("Relu", ["h"], ["y"], name="relu")]
    path = make_model(tmp_path / "dyn.onnx", nodes, [("x", ["N", "F"])], [("y", ["N", 3])],
                      {"W": rng.normal(size=(3, 7)), "b": rng.normal(size=3)})
    net = lipbound.load(path)
    assert net.input_shape == (7,)
    assert_matches_ort(net, path)
