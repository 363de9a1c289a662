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
from lipbound.activations import ACTIVATIONS
from lipbound.methods.products.autolip import SEQLIP_ACTIVATIONS

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


def spec2(A):
    """Exact spectral norm (torch SVD: numpy's threaded BLAS is very slow on a busy machine)."""
    return torch.linalg.matrix_norm(torch.as_tensor(np.asarray(A, dtype=np.float64)), 2).item()


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
    exact = spec2(A)
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
    exact = {2: spec2(A), 1: np.abs(A).sum(0).max(), math.inf: np.abs(A).sum(1).max()}
    for p in NORMS:
        v = opnorms.op_norm(op, shape, p).value
        assert exact[p] * (1 - 1e-12) <= v <= exact[p] * (1 + 1e-6), p


def test_dense_certificates():
    # a matrix with known singular values, above the direct-eigenvalue size (Cholesky certificate)
    g = torch.Generator().manual_seed(1)
    m, n = 1560, 1510
    Q1, _ = torch.linalg.qr(torch.randn(m, n, generator=g, dtype=torch.float64))
    perm = torch.randperm(n, generator=g)
    signs = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
    s = torch.linspace(0.1, 3.0, n, dtype=torch.float64)
    A = (Q1 * s)[:, perm] * signs  # Q1 diag(s) P: singular values s exactly (up to rounding)
    exact = 3.0
    c = opnorms.dense_spectral_bound(A)
    assert c.method == "cholesky"
    assert exact * (1 - 1e-12) <= c.value <= exact * 1.001
    # a hint far too low: the certificate must not accept it (falls back to the eigenvalue)
    assert opnorms.dense_spectral_bound(A, hint=2.0).value >= exact * (1 - 1e-12)
    B = np.random.default_rng(2).normal(size=(60, 40))
    assert spec2(B) <= opnorms.gram_iteration_bound(B).value <= spec2(B) * 1.01


def test_cholesky_certificate_by_hand():
    """G = Q diag(1, 2, 3) Q^T: lambda_max = 3. The certificate at t just above 3 holds and stays within the
    backward-error term of t; below 3 it must fail (t I - G is indefinite)."""
    Q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    G = Q @ torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)) @ Q.T
    G = (G + G.T) / 2
    ub = opnorms.cholesky_certificate(G, 3.0 + 1e-8)
    assert ub is not None and 3.0 + 1e-8 <= ub <= 3.0 + 2e-8
    assert opnorms.cholesky_certificate(G, 2.999) is None
    assert opnorms.cholesky_factor(-torch.eye(2, dtype=torch.float64)) is None
    assert torch.equal(opnorms.cholesky_factor(4 * torch.eye(2, dtype=torch.float64)), 2 * torch.eye(2, dtype=torch.float64))


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


# every activation of the table with its default parameters, plus parameters that move the slope bounds
TABLE_CASES = [(n, None) for n in sorted(ACTIVATIONS)] + [("leaky_relu", -3.0), ("hardtanh", (0.0, 6.0)),
                                                          ("elu", 2.0), ("softplus", 3.0)]


def table_mlp(widths, act, param, seed=0):
    g = torch.Generator().manual_seed(seed)
    ops = []
    for i in range(len(widths) - 1):
        ops.append(Linear(torch.randn(widths[i + 1], widths[i], generator=g, dtype=torch.float64) / math.sqrt(widths[i]),
                          torch.randn(widths[i + 1], generator=g, dtype=torch.float64) * 0.5))
        if i < len(widths) - 2:
            ops.append(Activation(act, param))
    return Network.sequential((widths[0],), ops)


@pytest.mark.parametrize("act,param", TABLE_CASES, ids=[f"{a}-{p}" for a, p in TABLE_CASES])
def test_products_above_sampled_jacobians_every_activation(act, param):
    """naive (l1, l2, l_inf) and AutoLip (l2) are above the largest sampled Jacobian norm on a random MLP of
    every activation of the table (non-monotone ones included: the activation factor is max(|alpha|,
    |beta|)); exact SeqLip is declared exactly for the monotone activations and sits between the sampled
    norm and AutoLip, and refuses a non-monotone one with a reason."""
    net = table_mlp([4, 9, 8, 3], act, param, seed=len(act))
    for p in NORMS:
        b = lipbound.bound(net, "naive", norm=p)
        lo = max(sampled_lower(net, p, n=256, scale=s) for s in (0.5, 3.0))
        assert b.status == "ok" and b.value >= lo, (p, b.value, lo)
    a = lipbound.bound(net, "autolip")
    lo2 = max(sampled_lower(net, 2, n=256, scale=s) for s in (0.5, 3.0))
    assert a.status == "ok" and a.value >= lo2
    op = net.activations()[0]
    s = lipbound.bound(net, "seqlip")
    if op.fn.monotone:
        assert act in SEQLIP_ACTIVATIONS
        assert s.status == "ok" and lo2 <= s.value <= a.value * (1 + 1e-9)
    else:
        assert s.status == "unsupported" and s.value is None and s.reason
        assert act not in SEQLIP_ACTIVATIONS or "monotone" in s.reason


def test_activation_factor_is_the_largest_absolute_slope():
    """f(x) = leaky_relu(x; -3): slope 1 for x > 0 and -3 for x < 0, so L = 3 (beta alone would say 1);
    f(x) = |x| has L = 1; a ReLU6 clamp has L = 1. Worked out by hand."""
    for act, param, L in (("leaky_relu", -3.0, 3.0), ("abs", None, 1.0), ("hardtanh", (0.0, 6.0), 1.0)):
        net = Network.sequential((1,), [Linear(np.eye(1), None), Activation(act, param), Linear(np.eye(1), None)])
        for p in NORMS:
            assert lipbound.bound(net, "naive", norm=p).value == pytest.approx(L, rel=1e-9)
        assert lipbound.bound(net, "autolip").value == pytest.approx(L, rel=1e-9)


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


SHARED = ["resnet_2b.onnx", "Convnet_maxpool.onnx", "cifar_base_kw.onnx", "Convnet_avgpool.onnx",
          "test_small.onnx", "ffnnSIGMOID__Point_6x200.onnx", "ACASXU_run2a_1_1_batch_2000.onnx",
          "mnist-net_256x2.onnx"]


@pytest.mark.parametrize("name", SHARED)
def test_naive_and_autolip_shared_networks(name):
    net = load_or_skip(name)
    opnorms.clear_cache()
    for p in NORMS:
        b = lipbound.bound(net, "naive", norm=p)
        assert b.status == "ok" and math.isfinite(b.value)
        assert b.value >= sampled_lower(net, p, n=16, scale=0.5)
        if p == 2:
            naive2 = b.value
    a = lipbound.bound(net, "autolip")
    assert a.status == "ok" and a.kind == "upper" and math.isfinite(a.value)
    assert a.value >= sampled_lower(net, 2, n=16, scale=0.5)
    assert a.value == pytest.approx(naive2, rel=1e-12)
    pm = a.details["power_method_product"]
    assert pm <= a.value * (1 + 1e-9)
    assert a.value <= pm * 1.01  # the target: certified within 1% of the power-method product


# --------------------------------------------------------------------------------------------------
# AutoLip and SeqLip
# --------------------------------------------------------------------------------------------------


def mlp_from(Ws, act="relu", biases=None):
    ops = []
    for i, W in enumerate(Ws):
        ops.append(Linear(W, None if biases is None else biases[i]))
        if i < len(Ws) - 1:
            ops.append(Activation(act))
    return Network.sequential((Ws[0].shape[1],), ops)


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid"])
def test_autolip_equals_naive_and_orders_seqlip_on_dense_chains(act):
    net = random_mlp([4, 10, 12, 9, 3], seed=11, act=act)
    a = lipbound.bound(net, "autolip")
    n = lipbound.bound(net, "naive", norm=2)
    assert a.value == pytest.approx(n.value, rel=1e-9)
    assert a.details["power_method_product"] == pytest.approx(a.value, rel=1e-6)
    s = lipbound.bound(net, "seqlip")
    assert s.kind == "upper" and s.status == "ok"
    lo = sampled_lower(net, 2, n=256, scale=2.0)
    assert lo <= s.value <= a.value * (1 + 1e-9)
    g = lipbound.bound(net, "seqlip-greedy")
    assert g.kind == "estimate" and g.value <= s.value * (1 + 1e-9)  # a vertex value never beats the max
    t = lipbound.bound(net, "seqlip-topk", k=20)  # k >= every rank: vertex values of the same factors
    assert t.kind == "estimate" and t.value <= s.value * (1 + 1e-9)


def test_seqlip_between_joint_max_and_autolip_brute_force():
    # 3 -> 8 -> 8 -> 2: exact SeqLip >= max over both patterns of ||W3 D2 W2 D1 W1|| (brute force)
    g = torch.Generator().manual_seed(4)
    Ws = [torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randn(8, 8, generator=g, dtype=torch.float64),
          torch.randn(2, 8, generator=g, dtype=torch.float64)]
    net = mlp_from(Ws)
    pats = ((torch.arange(256)[:, None] >> torch.arange(8)) & 1).to(torch.float64)
    left = torch.einsum("ij,pj,jk->pik", Ws[2], pats, Ws[1])          # W3 D2 W2
    right = torch.einsum("pj,jk->pjk", pats, Ws[0])                    # D1 W1
    joint = torch.linalg.matrix_norm(torch.einsum("pij,qjk->pqik", left, right), 2).max().item()
    s = lipbound.bound(net, "seqlip").value
    a = lipbound.bound(net, "autolip").value
    assert joint <= s <= a * (1 + 1e-9)


def test_seqlip_one_hidden_layer_equals_brute_force():
    g = torch.Generator().manual_seed(5)
    W1, W2 = torch.randn(9, 4, generator=g, dtype=torch.float64), torch.randn(3, 9, generator=g, dtype=torch.float64)
    pats = ((torch.arange(512)[:, None] >> torch.arange(9)) & 1).to(torch.float64)
    brute = torch.linalg.matrix_norm(torch.einsum("ij,pj,jk->pik", W2, pats, W1), 2).max().item()
    assert lipbound.bound(mlp_from([W1, W2]), "seqlip").value == pytest.approx(brute, rel=1e-8)


def test_seqlip_all_positive_network_attained_with_every_relu_active():
    # the case of avirmaux/lipEstimation#3: 2I, 2I has constant 4
    I = torch.eye(3, dtype=torch.float64)
    assert lipbound.bound(mlp_from([2 * I, 2 * I]), "seqlip").value == pytest.approx(4.0, rel=1e-8)
    # non-symmetric positive weights and positive biases: for x > 0 every ReLU is active, the Jacobian
    # is W2 W1 there, and no pattern can do better (entrywise monotonicity of non-negative matrices)
    g = torch.Generator().manual_seed(6)
    W1 = torch.rand(6, 4, generator=g, dtype=torch.float64) * torch.tensor([3.0, 0.2, 1.0, 0.5], dtype=torch.float64)
    W2 = torch.rand(2, 6, generator=g, dtype=torch.float64) * torch.linspace(0.1, 4, 6, dtype=torch.float64)
    net = mlp_from([W1, W2], biases=[torch.ones(6, dtype=torch.float64), None])
    L = spec2(W2 @ W1)
    J = net.jacobian(np.ones((1, 4)))[0].numpy()
    assert spec2(J) == pytest.approx(L, rel=1e-12)
    s = lipbound.bound(net, "seqlip").value
    assert s == pytest.approx(L, rel=1e-8) and s >= L
    assert lipbound.bound(net, "autolip").value > 1.2 * L  # AutoLip is loose on this net


def test_seqlip_refuses_wide_layers_and_non_chains():
    b = lipbound.bound(random_mlp([3, 30, 2]), "seqlip")
    assert b.status == "unsupported" and "max_width" in b.reason
    b = lipbound.bound(random_graph_net(), "seqlip")
    assert b.status == "unsupported"
    assert lipbound.bound(random_mlp([3, 30, 2]), "seqlip-greedy").status == "ok"


def test_seqlip_one_over_pi_effect():
    """Ideal case of the paper (Haar U, V; singular values 1, eps, ..., eps), width 16: each hidden
    layer's SeqLip/AutoLip ratio lies between max_s |<s.v_{k+1}, u_k>| (first singular directions, a
    lower bound) and the theorem's bound, and the mean is near 1/pi."""
    g = torch.Generator().manual_seed(0)
    n, eps = 16, 0.01

    def haar():
        Q, R = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
        return Q * torch.sign(torch.diagonal(R))

    s = torch.full((n,), eps, dtype=torch.float64)
    s[0] = 1.0
    ratios = []
    for _ in range(4):
        Ws = [haar() @ torch.diag(s) @ haar().T for _ in range(4)]
        b = lipbound.bound(mlp_from(Ws), "seqlip")
        for k, rec in enumerate(b.details["layers"]):
            r = rec["ratio_to_autolip"]
            U1, s1, Vh1 = torch.linalg.svd(Ws[k])
            U2, s2, Vh2 = torch.linalg.svd(Ws[k + 1])
            p = Vh2[0] * U1[:, 0]
            m = max(p.clamp_min(0).sum().item(), (-p).clamp_min(0).sum().item())
            rk, rk1 = (s1[1] / s1[0]).item(), (s2[1] / s2[0]).item()
            thm = math.sqrt((1 - rk - rk1) * m * m + rk + rk1 + rk * rk1)
            assert m * (1 - 1e-9) <= r <= thm * (1 + 1e-9)
            ratios.append(r)
    assert 0.25 <= float(np.mean(ratios)) <= 0.45


# --------------------------------------------------------------------------------------------------
# regulariser
# --------------------------------------------------------------------------------------------------


class _ResNetish(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(2, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.c2 = torch.nn.Conv2d(4, 4, 3, padding=1, stride=1)
        self.pool = torch.nn.MaxPool2d(3, 2, 1)
        self.fc = torch.nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        y = torch.relu(self.bn(self.c1(x)))
        y = y + self.c2(y)
        y = self.pool(y)
        return self.fc(torch.flatten(y, 1))


def test_regularizer_gradient_and_value():
    from lipbound import regularizers

    torch.manual_seed(0)
    m = _ResNetish().double().eval()
    with torch.no_grad():
        m.bn.running_var.uniform_(0.5, 2.0)
        m.bn.weight.uniform_(0.5, 1.5)
    r = regularizers.autolip(m, (2, 8, 8), init_iter=500)
    r.backward()
    for p in (m.c1.weight, m.c2.weight, m.fc.weight, m.bn.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # the same recursion written out with lipbound's operator norms: power-method estimates (the regulariser's
    # kind of value) and certified ones (an upper bound on it). (The torch reader folds BatchNorm into the
    # convolution, a smaller product: not the regulariser's graph.)
    wt = lambda t: t.detach().numpy()  # noqa: E731
    c1 = Conv2d(wt(m.c1.weight), wt(m.c1.bias), (1, 1), (1, 1))
    c2 = Conv2d(wt(m.c2.weight), wt(m.c2.bias), (1, 1), (1, 1))
    fc = Linear(wt(m.fc.weight), wt(m.fc.bias))
    opnorms.clear_cache()
    n1, n2, nf = opnorms.spectral_norm(c1, (2, 8, 8)), opnorms.spectral_norm(c2, (4, 8, 8)), opnorms.spectral_norm(fc, (64,))
    bn = float((m.bn.weight.detach() / torch.sqrt(m.bn.running_var + m.bn.eps)).abs().max())
    pool = math.sqrt(opnorms.maxpool_overlap(MaxPool2d((3, 3), (2, 2), (1, 1)), (4, 8, 8)))
    assert r.item() == pytest.approx(n1.estimate * bn * (1 + n2.estimate) * pool * nf.estimate, rel=1e-5)
    assert r.item() <= n1.value * bn * (1 + n2.value) * pool * nf.value * (1 + 1e-9)
    # a gradient step on the penalty alone lowers it
    opt = torch.optim.SGD(m.parameters(), lr=1e-2)
    before = regularizers.autolip(m, (2, 8, 8), n_iter=20).item()
    for _ in range(5):
        opt.zero_grad()
        regularizers.autolip(m, (2, 8, 8), n_iter=5).backward()
        opt.step()
    assert regularizers.autolip(m, (2, 8, 8), n_iter=50).item() < before


class _TwoLayer(torch.nn.Module):
    def __init__(self, act):
        super().__init__()
        self.l1 = torch.nn.Linear(3, 6).double()
        self.act = act
        self.l2 = torch.nn.Linear(6, 2).double()

    def forward(self, x):
        return self.l2(self.act(self.l1(x)))


def _sup_abs_derivative(f) -> float:
    """max |f'| over a fine grid of [-8, 8] by autograd of the torch function itself (from below)."""
    x = torch.linspace(-8, 8, 200_001, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(f(x).sum(), x)
    return float(g.abs().max())


@pytest.mark.parametrize("make", [
    lambda: torch.nn.GELU(), lambda: torch.nn.GELU(approximate="tanh"), lambda: torch.nn.SiLU(),
    lambda: torch.nn.Mish(), lambda: torch.nn.Hardswish(), lambda: torch.nn.LeakyReLU(-3.0),
    lambda: torch.nn.ELU(2.0), lambda: torch.nn.ReLU6(), lambda: torch.nn.Softsign(), lambda: torch.nn.Hardsigmoid(),
    lambda: torch.nn.functional.silu, lambda: torch.abs, lambda: (lambda x: x.abs()),
    lambda: (lambda x: torch.nn.functional.leaky_relu(x, -2.0)),
], ids=["gelu", "gelu_tanh", "silu", "mish", "hardswish", "leaky-3", "elu2", "relu6", "softsign", "hardsigmoid",
        "F.silu", "torch.abs", "tensor.abs", "F.leaky_relu-2"])
def test_regularizer_activation_factor_every_activation(make):
    """The regulariser's factor of an activation module / function / tensor method is its largest |slope|:
    the penalty of Linear -> act -> Linear equals ||W1|| ||W2|| times sup |f'| (the latter sampled by
    autograd on a fine grid, from below; the table's exact value may exceed it by the grid's resolution)."""
    from lipbound import regularizers

    torch.manual_seed(1)
    act = make()
    m = _TwoLayer(act)
    r = regularizers.autolip(m, (3,), init_iter=500).item()
    norms = spec2(m.l1.weight.detach()) * spec2(m.l2.weight.detach())
    sup = _sup_abs_derivative(act)
    assert norms * sup * (1 - 1e-6) <= r <= norms * (sup + 1e-4) * (1 + 1e-6), (r / norms, sup)
