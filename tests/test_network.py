"""The network representation: evaluation, dense chains, Jacobians, adjoints, interval bounds."""

import numpy as np

import lipbound.network
import pytest
import torch

from lipbound.errors import LipboundError, Unsupported
from lipbound.intervals import interval_bounds
from lipbound.network import (Activation, AvgPool2d, Conv2d, ElementwiseAffine, Linear, Network, Pad, Reshape,
                              Transpose)
from lipbound.registry import Region
from _nets import random_graph_net, random_mlp


def _chain_forward(chain, x):
    z = x
    for layer in chain:
        z = z @ layer.W.T + layer.b
        if layer.activation is not None:
            z = layer.activation.forward(torch.as_tensor(z)).numpy()
    return z


def test_dense_chain_reproduces_conv_network():
    rng = np.random.default_rng(1)
    ops = [ElementwiseAffine(np.full((1, 1, 1), 2.0), np.full((1, 1, 1), -0.5), "Sub/Div"),
           Conv2d(rng.standard_normal((4, 1, 3, 3)), rng.standard_normal(4), (2, 2), (1, 1)), Activation("relu"),
           Pad((1, 0, 1, 0)), AvgPool2d((2, 2), (1, 1)), Transpose((0, 2, 1)), Reshape((4 * 4 * 4,)),
           Linear(rng.standard_normal((5, 64)), rng.standard_normal(5)), Activation("tanh"),
           Linear(rng.standard_normal((3, 5)), None)]
    net = Network.sequential((1, 8, 8), ops)
    x = torch.randn(11, 1, 8, 8, dtype=torch.float64)
    chain = net.dense_chain()
    assert len(chain) == 3 and chain[-1].activation is None
    np.testing.assert_allclose(_chain_forward(chain, x.reshape(11, -1).numpy()), net(x).numpy(), atol=1e-10)


def test_dense_chain_refuses_residual_and_size():
    with pytest.raises(Unsupported, match="not a chain"):
        random_graph_net(0).dense_chain()
    with pytest.raises(Unsupported, match="entries"):
        random_mlp([50, 50, 2]).dense_chain(max_entries=100)


def test_jacobian_matches_finite_differences():
    net = random_graph_net(1)
    x = torch.rand(3, *net.input_shape, dtype=torch.float64)
    J = net.jacobian(x)
    h = 1e-6
    for b in range(3):
        for i in [0, 17, 50]:
            e = torch.zeros(net.n_inputs, dtype=torch.float64)
            e[i] = h
            xp = x[b].reshape(-1) + e
            xm = x[b].reshape(-1) - e
            fd = (net.forward_flat(xp[None]) - net.forward_flat(xm[None]))[0] / (2 * h)
            np.testing.assert_allclose(J[b, :, i].numpy(), fd.numpy(), atol=1e-5)


@pytest.mark.parametrize("op, shape", [
    (Conv2d(np.random.default_rng(0).standard_normal((3, 2, 3, 3)), None, (2, 2), (1, 1)), (2, 7, 7)),
    (Conv2d(np.random.default_rng(1).standard_normal((4, 2, 2, 2)), None, (1, 1), (0, 0), (2, 2)), (2, 6, 6)),
    (AvgPool2d((3, 3), (2, 2), (1, 1)), (2, 7, 7)),
    (Pad((1, 2, 0, 1)), (2, 5, 5)),
    (Transpose((2, 0, 1)), (2, 3, 4)),
    (ElementwiseAffine(np.random.default_rng(2).standard_normal((2, 1, 1)), np.zeros((2, 1, 1))), (2, 3, 3)),
])
def test_adjoint_identity(op, shape):
    """<A u, v> == <u, A^T v>: the adjoint every back-substitution method relies on."""
    u = torch.randn((4,) + shape, dtype=torch.float64)
    Au = op.linear(u)
    v = torch.randn_like(Au)
    lhs = (Au * v).sum()
    rhs = (u * op.linear_t(v, shape)).sum()
    assert abs(float(lhs - rhs)) < 1e-9 * max(1.0, abs(float(lhs)))
    dense = op.dense(shape)
    np.testing.assert_allclose((dense @ u.reshape(4, -1).T).T.numpy(), Au.reshape(4, -1).numpy(), atol=1e-10)
    # |A| x: the dense matrix with absolute values
    np.testing.assert_allclose((dense.abs() @ u.abs().reshape(4, -1).T).T.numpy(),
                               op.abs_linear(u.abs()).reshape(4, -1).numpy(), atol=1e-10)


@pytest.mark.parametrize("weight_shape, stride, padding, dilation, groups, in_shape", [
    ((3, 2, 3, 3), (2, 2), (1, 1), (1, 1), 1, (2, 7, 7)),
    ((4, 1, 2, 2), (1, 1), (0, 0), (2, 2), 2, (2, 6, 6)),
    ((6, 1, 4, 4), (4, 4), (0, 0), (1, 1), 3, (3, 11, 11)),  # a pooling-like selection, the edge dropped
    ((2, 2, 3, 2), (3, 1), (2, 0), (1, 1), 1, (2, 9, 5)),
])
def test_conv_sparse_matrix_and_row_adjoint(weight_shape, stride, padding, dilation, groups, in_shape):
    """Conv2d's sparse matrix (index arithmetic) equals the matrix of `linear` on basis vectors (the generic
    `AffineOp.dense`); `linear_t_rows` and `linear_cols` on a few columns equal `linear_t` and `linear` of
    the zero-padded batch."""
    from lipbound.network import AffineOp

    rng = np.random.default_rng(len(in_shape) + sum(weight_shape))
    op = Conv2d(rng.standard_normal(weight_shape), None, stride, padding, dilation, groups)
    dense = op.dense(in_shape).numpy()
    # (a tolerance, not bitwise: a convolution backend may round even on one-hot inputs)
    np.testing.assert_allclose(op.sparse_matrix(in_shape).toarray(), dense, rtol=0, atol=1e-13)
    np.testing.assert_allclose(AffineOp.sparse_matrix(op, in_shape).toarray(), dense, rtol=0, atol=1e-13)
    n_out = dense.shape[0]
    cols = torch.as_tensor(np.sort(rng.choice(n_out, size=max(1, n_out // 7), replace=False)))
    y = torch.zeros(3, n_out, dtype=torch.float64)
    y[:, cols] = torch.as_tensor(rng.standard_normal((3, len(cols))))
    out_shape = op.linear(torch.zeros((1,) + in_shape, dtype=torch.float64)).shape[1:]
    np.testing.assert_allclose(op.linear_t_rows(y[:, cols], cols, in_shape).numpy(),
                               op.linear_t(y.reshape((3,) + tuple(out_shape)), in_shape).numpy(), atol=1e-12)
    # the forward twin: `linear_cols` on a few input columns equals `linear` of the zero-padded batch
    n_in = dense.shape[1]
    cin = torch.as_tensor(np.sort(rng.choice(n_in, size=max(1, n_in // 7), replace=False)))
    x = torch.zeros(3, n_in, dtype=torch.float64)
    x[:, cin] = torch.as_tensor(rng.standard_normal((3, len(cin))))
    np.testing.assert_allclose(op.linear_cols(x[:, cin], cin, in_shape).numpy(),
                               op.linear(x.reshape((3,) + tuple(in_shape))).reshape(3, -1).numpy(), atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_interval_bounds_contain_samples(seed):
    net = random_graph_net(seed)
    rng = np.random.default_rng(seed)
    region = Region.box(rng.random(net.input_shape), 0.2)
    ivs = interval_bounds(net, region)
    x = torch.as_tensor(region.sample(500, rng))
    for v, (lo, hi) in zip(net.forward_all(x), ivs):
        assert (v >= lo - 1e-10).all() and (v <= hi + 1e-10).all()


@pytest.mark.parametrize("name,param", [("relu", 0), ("leaky_relu", 0.1), ("tanh", 0), ("sigmoid", 0), ("elu", 1.0),
                                        ("softplus", 1.0)])
def test_activation_slopes_and_derivative(name, param):
    act = Activation(name, param)
    t = torch.linspace(-6, 6, 2001, dtype=torch.float64)
    d = act.derivative(t)
    assert (d >= act.alpha - 1e-12).all() and (d <= act.beta + 1e-12).all()
    fd = (act.forward(t + 1e-6) - act.forward(t - 1e-6)) / 2e-6
    mask = t.abs() > 1e-3
    np.testing.assert_allclose(d[mask].numpy(), fd[mask].numpy(), atol=1e-5)
    # the bounds are tight where they should be: the sup of the derivative is reached or approached
    assert d.max() >= act.beta - 0.05 * act.beta


def test_nan_weights_rejected():
    with pytest.raises(LipboundError, match="non-finite"):
        Network.sequential((2,), [Linear(np.array([[np.nan, 1.0]]), None)])


def test_bad_input_shape_is_a_clear_error():
    net = random_mlp([3, 4, 2])
    with pytest.raises(LipboundError, match="does not fit"):
        net(torch.zeros(2, 5, dtype=torch.float64))


def test_fold_scale_shift_keeps_the_function_and_only_folds_per_channel_maps():
    """A per-channel scale/shift after a Linear / Conv2d folds into it (same outputs, one op fewer); a
    scale that varies over space, or an op whose output is also read elsewhere, is left alone."""
    import torch

    from lipbound.network import Conv2d, ElementwiseAffine, GraphBuilder, Linear, Node, Reshape, fold_scale_shift

    rng = np.random.default_rng(0)
    b = GraphBuilder((2, 5, 5))
    c1 = b.add(Conv2d(rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3), (1, 1), (1, 1)), [0])
    bn = b.add(ElementwiseAffine(rng.uniform(0.5, 2, (3, 1, 1)), rng.standard_normal((3, 1, 1)), "BatchNorm"), [c1])
    c2 = b.add(Conv2d(rng.standard_normal((3, 3, 3, 3)), None, (1, 1), (1, 1)), [bn])
    spatial = b.add(ElementwiseAffine(rng.uniform(0.5, 2, (3, 5, 5)), np.zeros((3, 1, 1))), [c2])  # not per channel
    flat = b.add(Reshape((75,)), [spatial])
    lin = b.add(Linear(rng.standard_normal((4, 75)), rng.standard_normal(4)), [flat])
    sc = b.add(ElementwiseAffine(np.array([2.0, -1.0, 0.5, 3.0]), np.array([1.0, 0.0, 0.0, -1.0])), [lin])
    nodes = b.nodes
    folded = fold_scale_shift(list(nodes))
    kinds = [n.op.kind for n in folded]
    assert kinds == ["Input", "Conv2d", "Conv2d", "ElementwiseAffine", "Reshape", "Linear"]
    x = torch.as_tensor(rng.standard_normal((7, 2, 5, 5)))
    before, after = Network(nodes), Network(folded)
    assert torch.allclose(before(x), after(x), rtol=1e-12, atol=1e-12)
    # an op read twice is not folded
    b2 = GraphBuilder((3,))
    l1 = b2.add(Linear(rng.standard_normal((3, 3)), None), [0])
    s1 = b2.add(ElementwiseAffine(np.array([2.0, 2.0, 2.0]), np.zeros(3)), [l1])
    b2.add(lipbound.network.Add(), [s1, l1])
    assert [n.op.kind for n in fold_scale_shift(list(b2.nodes))] == ["Input", "Linear", "ElementwiseAffine", "Add"]
