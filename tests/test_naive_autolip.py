"""Tests of the naive product bound, operator norms, AutoLip, SeqLip and the AutoLip regulariser.

Every check is against something independent: dense matrices and numpy norms, sampled Jacobians
(certified lower bounds), brute-force enumeration, or a hand-built network with a known constant."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import lipbound
from lipbound import opnorms
from lipbound.network import (Activation, Add, AvgPool2d, Conv2d, ElementwiseAffine, GraphBuilder, Linear,
                              MaxPool2d, Network, Pad, Reshape, Transpose)
from lipbound.norms import operator_norm

NETS = Path(__file__).resolve().parents[1].parent / "shared" / "networks"
NORMS = (1, 2, math.inf)


@pytest.fixture(autouse=True)
def _one_thread():
    """Two cores shared by many processes: torch's spinning thread pool is much slower than one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def sampled_lower(net, norm, n=64, seed=0, output=None, scale=1.0):
    """max over random points of the Jacobian operator norm: a certified lower bound."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n,) + net.input_shape) * scale
    J = net.jacobian(x)
    return float(np.max(operator_norm(J.numpy(), norm, output=output)))


def load_or_skip(name):
    try:
        return lipbound.load(NETS / name)
    except lipbound.LipboundError as e:
        if "not written yet" in str(e):
            pytest.skip("ONNX reader not written yet")
        raise


def random_mlp(widths, seed=0, act="relu", scale=None):
    g = torch.Generator().manual_seed(seed)
    ops = []
    for i in range(len(widths) - 1):
        s = scale if scale is not None else 1 / math.sqrt(widths[i])
        ops.append(Linear(torch.randn(widths[i + 1], widths[i], generator=g, dtype=torch.float64) * s,
                          torch.randn(widths[i + 1], generator=g, dtype=torch.float64) * 0.1))
        if i < len(widths) - 2:
            ops.append(Activation(act, 0.1 if act == "leaky_relu" else (1.0 if act in ("elu", "softplus") else 0.0)))
    return Network.sequential((widths[0],), ops)


def random_graph_net(seed=0, act="relu"):
    """conv / batchnorm / residual / maxpool / avgpool / pad / transpose / reshape / linear."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    b = GraphBuilder((2, 8, 8))
    x = b.add(Conv2d(r(4, 2, 3, 3) * 0.4, r(4) * 0.1, (1, 1), (1, 1)), [0])
    x = b.add(ElementwiseAffine((r(4, 1, 1).abs() + 0.5), r(4, 1, 1) * 0.1, label="BatchNorm"), [x])
    x = b.add(Activation(act, 0.1 if act == "leaky_relu" else 1.0 if act in ("elu", "softplus") else 0.0), [x])
    y = b.add(Conv2d(r(4, 4, 3, 3) * 0.3, r(4) * 0.1, (1, 1), (1, 1)), [x])
    y = b.add(Activation("relu"), [y])
    y = b.add(Conv2d(r(4, 2, 3, 3) * 0.3, None, (1, 1), (2, 2), (2, 2), groups=2), [y])
    x = b.add(Add(), [x, y])
    x = b.add(MaxPool2d((3, 3), (2, 2), (1, 1)), [x])           # 4x4x4, overlapping windows
    x = b.add(Pad((1, 0, 0, 1)), [x])                            # 4x5x5
    x = b.add(AvgPool2d((2, 2), (1, 1)), [x])                    # 4x4x4
    x = b.add(Transpose((0, 2, 1)), [x])
    x = b.add(Reshape((64,)), [x])
    x = b.add(Linear(r(12, 64) * 0.2, r(12)), [x])
    x = b.add(Activation("tanh"), [x])
    x = b.add(Linear(r(3, 12) * 0.5, r(3)), [x])
    return b.build("random_graph")


# --------------------------------------------------------------------------------------------------
# operator norms
# --------------------------------------------------------------------------------------------------

CONV_CASES = [  # C, H, W, O, k, stride, pad, dilation, groups
    (3, 9, 9, 4, 3, 1, 1, 1, 1), (3, 10, 10, 4, 3, 2, 1, 1, 1), (4, 8, 7, 6, 4, 2, 1, 1, 2),
    (2, 9, 9, 3, 3, 2, 2, 2, 1), (8, 8, 8, 16, 1, 2, 0, 1, 1), (3, 12, 12, 8, 4, 2, 1, 1, 1),
    (1, 6, 6, 2, 5, 1, 0, 1, 1),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_operator_norms_against_dense_unfolding(case):
    C, H, W, O, k, s, p, d, g = case
    gen = torch.Generator().manual_seed(sum(case))
    op = Conv2d(torch.randn(O, C // g, k, k, generator=gen, dtype=torch.float64), None, (s, s), (p, p), (d, d), g)
    shape = (C, H, W)
    opnorms.clear_cache()
    A = op.dense(shape).numpy()
    exact = np.linalg.norm(A, 2)
    cert = opnorms.spectral_norm(op, shape)
    assert exact <= cert.value <= exact * 1.01
    assert opnorms.conv_circular_bound(op, shape).value >= exact * (1 - 1e-12)
    pm = opnorms.power_method(op, shape)[0]
    assert pm <= exact * (1 + 1e-10)
    assert opnorms.induced_norm(op, shape, 1).value == pytest.approx(np.abs(A).sum(0).max(), rel=1e-10)
    assert opnorms.induced_norm(op, shape, math.inf).value == pytest.approx(np.abs(A).sum(1).max(), rel=1e-10)
    assert opnorms.induced_norm(op, shape, 1).value >= np.abs(A).sum(0).max()


@pytest.mark.parametrize("op,shape", [
    (AvgPool2d((3, 3), (2, 2), (1, 1)), (2, 9, 9)), (AvgPool2d((2, 2), (2, 2)), (1, 8, 8)),
    (AvgPool2d((3, 3), (1, 1), (1, 1), count_include_pad=False), (1, 7, 7)),
    (Pad((1, 2, 0, 1)), (2, 4, 4)), (Transpose((1, 2, 0)), (2, 3, 4)),
    (ElementwiseAffine(torch.tensor([[[2.0]], [[-3.0]]]), torch.zeros(2, 1, 1)), (2, 3, 3)),
])
def test_other_affine_norms_against_dense(op, shape):
    opnorms.clear_cache()
    A = op.dense(shape).numpy()
    exact = {2: np.linalg.norm(A, 2), 1: np.abs(A).sum(0).max(), math.inf: np.abs(A).sum(1).max()}
    for p in NORMS:
        v = opnorms.op_norm(op, shape, p).value
        assert exact[p] * (1 - 1e-12) <= v <= exact[p] * (1 + 1e-6), p


def test_dense_certificates():
    # a matrix with known singular values, above the direct-eigenvalue size (Cholesky certificate)
    g = torch.Generator().manual_seed(1)
    m, n = 1600, 1550
    Q1, _ = torch.linalg.qr(torch.randn(m, n, generator=g, dtype=torch.float64))
    Q2, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    s = torch.linspace(0.1, 3.0, n, dtype=torch.float64)
    A = Q1 @ torch.diag(s) @ Q2.T
    exact = 3.0
    hint = opnorms.power_method(Linear(A, None), (n,))[0]
    c = opnorms.dense_spectral_bound(A, hint=hint)
    assert c.method == "cholesky"
    assert exact * (1 - 1e-12) <= c.value <= exact * 1.001
    assert exact * (1 - 1e-12) <= opnorms.dense_spectral_bound(A).value <= exact * (1 + 1e-8)
    # a hint far too low: the certificate must not accept it
    assert opnorms.dense_spectral_bound(A, hint=2.0).value >= exact * (1 - 1e-12)
    B = np.random.default_rng(2).normal(size=(60, 40))
    assert np.linalg.norm(B, 2) <= opnorms.gram_iteration_bound(B).value <= np.linalg.norm(B, 2) * 1.01


@pytest.mark.parametrize("mp,shape", [
    (MaxPool2d((3, 3), (2, 2), (1, 1)), (1, 9, 9)), (MaxPool2d((2, 2), (2, 2), dilation=(3, 3)), (1, 12, 12)),
    (MaxPool2d((3, 3), (2, 2), ceil_mode=True), (1, 8, 8)), (MaxPool2d((4, 4), (4, 4)), (1, 27, 27)),
    (MaxPool2d((3, 2), (1, 1)), (1, 6, 6)),
])
def test_maxpool_overlap_against_brute_force(mp, shape):
    # brute force: the Jacobian at random points picks one input per window; the count of windows
    # containing a pixel is found by perturbing each pixel of a constant image by a large amount
    H, W = shape[1:]
    best = 0
    with torch.no_grad():
        for i in range(H):
            for j in range(W):
                x = torch.zeros((1,) + shape, dtype=torch.float64)
                x[0, 0, i, j] = 1.0
                best = max(best, int((mp.forward(x) > 0.5).sum()))
    assert opnorms.maxpool_overlap(mp, shape) == best
    assert best <= mp.max_overlap()


# --------------------------------------------------------------------------------------------------
# naive
# --------------------------------------------------------------------------------------------------


def test_naive_dense_chain_equals_product_of_numpy_norms():
    net = random_mlp([5, 7, 6, 3], seed=3)
    Ws = [n.op.W.numpy() for n in net.nodes if isinstance(n.op, Linear)]
    for p, npord in ((1, 1), (2, 2), (math.inf, np.inf)):
        expected = np.prod([np.linalg.norm(W, npord) for W in Ws])
        b = lipbound.bound(net, "naive", norm=p)
        assert b.kind == "upper" and b.status == "ok"
        assert b.value == pytest.approx(expected, rel=1e-8)
        assert b.value >= expected


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid", "leaky_relu", "elu", "softplus"])
def test_naive_above_sampled_lower_bound_random_graph(act):
    net = random_graph_net(seed=hash(act) % 1000, act=act)
    for p in NORMS:
        b = lipbound.bound(net, "naive", norm=p)
        lo = sampled_lower(net, p, n=32)
        assert b.status == "ok" and math.isfinite(b.value)
        assert b.value >= lo, (p, b.value, lo)
        for j in range(net.n_outputs):
            bj = lipbound.bound(net, "naive", norm=p, output=j)
            assert bj.value <= b.value * (1 + 1e-9)
            assert bj.value >= sampled_lower(net, p, n=32, output=j)


def test_naive_box_region_equals_global():
    net = random_graph_net(seed=5)
    c = np.zeros(net.input_shape)
    b = lipbound.bound(net, "naive", norm=2, center=c, eps=0.1)
    assert b.status == "ok" and b.value == pytest.approx(lipbound.bound(net, "naive", norm=2).value)


def test_naive_residual_sum_rule():
    # f(x) = x + W x : naive = 1 + ||W||, and the true constant ||I + W|| is below it
    W = torch.tensor([[0.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    b = GraphBuilder((2,))
    y = b.add(Linear(W, None), [0])
    b.add(Add(), [0, y])
    net = b.build()
    for p in NORMS:
        v = lipbound.bound(net, "naive", norm=p).value
        npord = {1: 1, 2: 2, math.inf: np.inf}[p]
        assert v == pytest.approx(1 + np.linalg.norm(W.numpy(), npord), rel=1e-9)
        assert v >= np.linalg.norm(np.eye(2) + W.numpy(), npord)


@pytest.mark.parametrize("name", ["resnet_2b.onnx", "Convnet_maxpool.onnx", "cifar_base_kw.onnx",
                                  "Convnet_avgpool.onnx", "test_small.onnx", "ffnnSIGMOID__Point_6x200.onnx"])
def test_naive_shared_networks(name):
    net = load_or_skip(name)
    for p in NORMS:
        b = lipbound.bound(net, "naive", norm=p)
        assert b.status == "ok" and math.isfinite(b.value)
        assert b.value >= sampled_lower(net, p, n=16, scale=0.5)
