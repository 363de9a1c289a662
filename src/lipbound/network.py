"""The internal network representation that every method reads.

A `Network` is a directed acyclic graph of typed operations (`Node` objects in topological order,
node 0 the input) with known tensor shapes (batch dimension excluded) and float64 parameters stored as
torch tensors.  `net(x)` evaluates a batch ``x`` of shape ``(B, *net.input_shape)``.

Operations:
  * affine (``op.is_affine``): `Linear`, `Conv2d`, `ElementwiseAffine` (constant shift/scale,
    BatchNorm in eval mode), `AvgPool2d`, `Pad`, `Reshape` (Flatten), `Transpose`;
    each offers ``linear(x)`` (the map without its constant term), ``linear_t(y)`` (the adjoint)
    and ``forward(x)``;
  * `Activation` (elementwise, with slope bounds ``alpha <= f' <= beta`` and ``derivative``);
  * `MaxPool2d`;
  * `Add` of two nodes (residual connections).

Readers (`lipbound.io`) build networks; methods only ever read them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import activations as _activations
from .errors import LipboundError, Unsupported

DTYPE = torch.float64


def tensor_view(a: np.ndarray) -> torch.Tensor:
    """A float64 torch tensor sharing memory with ``a`` (no copy when ``a`` is float64), also for the
    read-only views that `Network.dense_chain` returns; the caller must not write into it."""
    a = np.asarray(a, dtype=np.float64)
    if a.flags.writeable:
        return torch.from_numpy(a)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-writable array": the view is only read
        return torch.from_numpy(a)


def as_tensor(a) -> torch.Tensor:
    """A float64 torch tensor (copy of numpy input, or converted tensor)."""
    if isinstance(a, torch.Tensor):
        return a.detach().to(DTYPE)
    return torch.as_tensor(np.asarray(a, dtype=np.float64)).clone()


# --------------------------------------------------------------------------------------------------
# Operations
# --------------------------------------------------------------------------------------------------


class Op:
    """Base class of an operation. ``kind`` is the name used in errors and method registries."""

    kind = "op"
    is_affine = False
    n_inputs = 1

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def output_shape(self, *in_shapes: tuple) -> tuple:
        xs = [torch.zeros((1,) + tuple(s), dtype=DTYPE) for s in in_shapes]
        return tuple(self.forward(*xs).shape[1:])

    def parameters(self) -> list[torch.Tensor]:
        return []

    def describe(self) -> str:
        return self.kind


class Input(Op):
    kind = "Input"
    n_inputs = 0


class AffineOp(Op):
    """An affine map y = linear(x) + constant. Subclasses define `linear` and `constant_term`."""

    is_affine = True

    def linear(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.constant_term(tuple(x.shape[1:]))

    def constant_term(self, in_shape: tuple) -> torch.Tensor:
        """The output of the map at x = 0 (shape of one output, broadcastable)."""
        return self.forward_zero(in_shape)

    def forward_zero(self, in_shape: tuple) -> torch.Tensor:
        return torch.zeros(1, dtype=DTYPE)

    def linear_t(self, y: torch.Tensor, in_shape: tuple) -> torch.Tensor:
        """Adjoint of `linear`: maps a batch of output-shaped tensors to input-shaped tensors."""
        x0 = torch.zeros((y.shape[0],) + tuple(in_shape), dtype=y.dtype, requires_grad=True)
        with torch.enable_grad():
            out = self.linear(x0)
            (g,) = torch.autograd.grad(out, x0, grad_outputs=y)
        return g

    def abs_linear(self, x: torch.Tensor) -> torch.Tensor:
        """The map with every coefficient replaced by its absolute value, |A| x (for interval radii).

        Default: the map itself, correct for maps with non-negative coefficients (pooling, padding,
        reshapes, permutations); ops with signed coefficients override it."""
        return self.linear(x)

    def linear_t_rows(self, y_cols: torch.Tensor, cols: torch.Tensor, in_shape: tuple) -> torch.Tensor:
        """`linear_t` of a batch y (N, n_out) that is zero outside the columns ``cols``, given as y_cols = y[:,
        cols]: a sparse product with those rows of the op's matrix (`sparse_matrix`), for coefficients that
        touch a few outputs (one neuron's receptive field) where the dense adjoint would touch all of them.
        Differentiable in y_cols. Returns (N, *in_shape)."""
        M = self.sparse_matrix(in_shape)[cols.numpy()].T
        return _sparse_times(M, y_cols).reshape((y_cols.shape[0],) + tuple(in_shape))

    def linear_cols(self, x_cols: torch.Tensor, cols: torch.Tensor, in_shape: tuple) -> torch.Tensor:
        """`linear` of a batch x (N, n_in) that is zero outside the columns ``cols``, given as x_cols = x[:,
        cols]: a sparse product with those columns of the op's matrix (`sparse_matrix`), the forward twin of
        `linear_t_rows`. Differentiable in x_cols. Returns (N, n_out)."""
        cache = self.__dict__.setdefault("_sparse_matrices", {})
        key = (tuple(in_shape), "csc")
        if key not in cache:
            cache[key] = self.sparse_matrix(in_shape).tocsc()
        return _sparse_times(cache[key][:, cols.numpy()], x_cols)

    def sparse_matrix(self, in_shape: tuple):
        """The matrix of `linear` (n_out, n_in) as a scipy CSR matrix of its non-zeros, built once per input
        shape from `linear` on chunks of basis vectors (no dense n_out x n_in array). Cost: n_in evaluations."""
        cache = self.__dict__.setdefault("_sparse_matrices", {})
        key = tuple(in_shape)
        if key not in cache:
            import scipy.sparse as sp

            parts = []
            for start, out in self._basis_images(key, 256):
                i, o = out.nonzero(as_tuple=True)
                parts.append((o.numpy(), (i + start).numpy(), out[i, o].numpy()))
            rows, cols, vals = (np.concatenate(t) for t in zip(*parts))
            cache[key] = sp.csr_matrix((vals, (rows, cols)), shape=(out.shape[1], int(np.prod(key))))
        return cache[key]

    def dense(self, in_shape: tuple, chunk: int = 4096) -> torch.Tensor:
        """The matrix of `linear` on flattened tensors, shape (n_out, n_in). Cost: n_in evaluations."""
        return torch.cat([out for _, out in self._basis_images(tuple(in_shape), chunk)], 0).T.contiguous()

    def _basis_images(self, in_shape: tuple, chunk: int):
        """(start, linear(e_start), ..., linear(e_stop-1) as rows (k, n_out)) over the input's basis, in chunks."""
        n_in = int(np.prod(in_shape))
        for start in range(0, n_in, chunk):
            stop = min(n_in, start + chunk)
            basis = torch.zeros(stop - start, n_in, dtype=DTYPE)
            basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
            with torch.no_grad():
                yield start, self.linear(basis.reshape((stop - start,) + in_shape)).reshape(stop - start, -1)


@dataclass(eq=False)
class Linear(AffineOp):
    """y = W x + b on vectors (input shape (n,))."""

    W: torch.Tensor
    b: torch.Tensor
    kind = "Linear"

    def __post_init__(self):
        self.W = as_tensor(self.W)
        self.b = as_tensor(self.b) if self.b is not None else torch.zeros(self.W.shape[0], dtype=DTYPE)

    def linear(self, x):
        return x @ self.W.T

    def forward(self, x):
        return x @ self.W.T + self.b

    def constant_term(self, in_shape):
        return self.b

    def linear_t(self, y, in_shape=None):
        return y @ self.W

    def abs_linear(self, x):
        return x @ self.W.abs().T

    def dense(self, in_shape=None, chunk=4096):
        return self.W

    def parameters(self):
        return [self.W, self.b]

    def describe(self):
        return f"Linear({self.W.shape[1]}->{self.W.shape[0]})"


@dataclass(eq=False)
class Conv2d(AffineOp):
    """2-D convolution (NCHW), symmetric zero padding ``(pad_h, pad_w)``."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    kind = "Conv2d"

    def __post_init__(self):
        self.weight = as_tensor(self.weight)
        if self.bias is None:
            self.bias = torch.zeros(self.weight.shape[0], dtype=DTYPE)
        self.bias = as_tensor(self.bias)
        self.stride, self.padding, self.dilation = (tuple(int(v) for v in t) for t in (self.stride, self.padding, self.dilation))

    def linear(self, x):
        return F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def constant_term(self, in_shape):
        return self.bias.reshape(-1, 1, 1)

    def abs_linear(self, x):
        return F.conv2d(x, self.weight.abs(), None, self.stride, self.padding, self.dilation, self.groups)

    def linear_t(self, y, in_shape):
        h_in, w_in = in_shape[-2], in_shape[-1]
        out_pad = []
        for dim, (size_in, size_out) in enumerate(((h_in, y.shape[-2]), (w_in, y.shape[-1]))):
            k = self.weight.shape[2 + dim]
            full = (size_out - 1) * self.stride[dim] - 2 * self.padding[dim] + self.dilation[dim] * (k - 1) + 1
            out_pad.append(size_in - full)
        return F.conv_transpose2d(y, self.weight, None, self.stride, self.padding, tuple(out_pad), self.groups, self.dilation)

    def sparse_entries(self, in_shape: tuple) -> int:
        """How many entries `sparse_matrix` stores at most (output positions x kernel taps)."""
        O, Cg, kh, kw = self.weight.shape
        return O * Cg * kh * kw * int(np.prod(self._out_hw(in_shape)))

    def _out_hw(self, in_shape: tuple) -> tuple:
        return tuple((size + 2 * self.padding[d] - self.dilation[d] * (self.weight.shape[2 + d] - 1) - 1)
                     // self.stride[d] + 1 for d, size in enumerate(in_shape[-2:]))

    def sparse_matrix(self, in_shape: tuple):
        """The exact matrix of the convolution's linear part (n_out, n_in) as scipy CSR, from the weights by
        index arithmetic (one entry per output position and kernel tap inside the input), kept per input
        shape. Cost: O(`sparse_entries`); callers check that count first on large layers."""
        cache = self.__dict__.setdefault("_sparse_matrices", {})
        key = tuple(in_shape)
        if key not in cache:
            import scipy.sparse as sp

            C, H, W = key[-3:]
            O, Cg, kh, kw = self.weight.shape
            Ho, Wo = self._out_hw(key)
            (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
            Og = O // self.groups
            o = np.arange(O).reshape(O, 1, 1, 1, 1, 1)
            c = (np.arange(O) // Og * Cg).reshape(O, 1, 1, 1, 1, 1) + np.arange(Cg).reshape(1, Cg, 1, 1, 1, 1)
            u = np.arange(kh).reshape(1, 1, kh, 1, 1, 1)
            v = np.arange(kw).reshape(1, 1, 1, kw, 1, 1)
            i = np.arange(Ho).reshape(1, 1, 1, 1, Ho, 1)
            j = np.arange(Wo).reshape(1, 1, 1, 1, 1, Wo)
            shape6 = (O, Cg, kh, kw, Ho, Wo)
            h = np.broadcast_to(i * sh - ph + u * dh, shape6)
            w = np.broadcast_to(j * sw - pw + v * dw, shape6)
            ok = (h >= 0) & (h < H) & (w >= 0) & (w < W)
            rows = np.broadcast_to(o * Ho * Wo + i * Wo + j, shape6)[ok]
            cols = (np.broadcast_to(c, shape6) * H * W + h * W + w)[ok]
            vals = np.broadcast_to(self.weight.detach().numpy().reshape(O, Cg, kh, kw, 1, 1), shape6)[ok]
            cache[key] = sp.csr_matrix((vals, (rows, cols)), shape=(O * Ho * Wo, C * H * W))
        return cache[key]

    def parameters(self):
        return [self.weight, self.bias]

    def describe(self):
        o, i, kh, kw = self.weight.shape
        return f"Conv2d({i * self.groups}->{o}, k={kh}x{kw}, s={self.stride}, p={self.padding})"


@dataclass(eq=False)
class ElementwiseAffine(AffineOp):
    """y = x * scale + shift with constant tensors broadcast to the input shape.

    Covers ONNX Add/Sub/Mul/Div by constants and BatchNorm in eval mode (``label`` says which)."""

    scale: torch.Tensor
    shift: torch.Tensor
    label: str = "ElementwiseAffine"
    kind = "ElementwiseAffine"

    def __post_init__(self):
        self.scale = as_tensor(self.scale)
        self.shift = as_tensor(self.shift)

    def linear(self, x):
        return x * self.scale

    def forward(self, x):
        return x * self.scale + self.shift

    def constant_term(self, in_shape):
        return self.shift

    def output_shape(self, in_shape):
        # numpy: torch.broadcast_shapes imports torch._refs on first use (~2 s of start-up)
        shape = np.broadcast_shapes(tuple(in_shape), tuple(self.scale.shape), tuple(self.shift.shape))
        if tuple(shape) != tuple(in_shape):
            raise LipboundError(f"{self.label}: constant of shape {tuple(self.scale.shape)} would broadcast the "
                                f"input {tuple(in_shape)} to a larger shape {tuple(shape)}")
        return tuple(in_shape)

    def linear_t(self, y, in_shape=None):
        return y * self.scale

    def abs_linear(self, x):
        return x * self.scale.abs()

    def parameters(self):
        return [self.scale, self.shift]

    def describe(self):
        return self.label


@dataclass(eq=False)
class AvgPool2d(AffineOp):
    kernel: tuple
    stride: tuple
    padding: tuple = (0, 0)
    count_include_pad: bool = True
    ceil_mode: bool = False
    kind = "AvgPool2d"

    def linear(self, x):
        return F.avg_pool2d(x, self.kernel, self.stride, self.padding, self.ceil_mode, self.count_include_pad)

    forward = linear

    def constant_term(self, in_shape):
        return torch.zeros(1, dtype=DTYPE)

    def describe(self):
        return f"AvgPool2d(k={self.kernel}, s={self.stride}, p={self.padding})"


@dataclass(eq=False)
class Pad(AffineOp):
    """Constant padding; ``pads`` in torch.nn.functional.pad order (last dimension first)."""

    pads: tuple
    value: float = 0.0
    kind = "Pad"

    def linear(self, x):
        return F.pad(x, list(self.pads), mode="constant", value=0.0)

    def forward(self, x):
        return F.pad(x, list(self.pads), mode="constant", value=float(self.value))

    def constant_term(self, in_shape):
        z = torch.zeros((1,) + tuple(in_shape), dtype=DTYPE)
        return self.forward(z)[0]

    def linear_t(self, y, in_shape):
        # cropping is the adjoint of zero padding
        idx = [slice(None)]
        pads = list(self.pads) + [0] * (2 * len(in_shape) - len(self.pads))
        for d in range(len(in_shape)):
            lo = pads[2 * (len(in_shape) - 1 - d)]  # padding before dimension d
            idx.append(slice(lo, lo + in_shape[d]))
        return y[tuple(idx)]


@dataclass(eq=False)
class Reshape(AffineOp):
    """Reshape (Flatten is a Reshape to one dimension). ``shape`` excludes the batch dimension."""

    shape: tuple
    kind = "Reshape"

    def linear(self, x):
        return x.reshape((x.shape[0],) + tuple(self.shape))

    forward = linear

    def constant_term(self, in_shape):
        return torch.zeros(1, dtype=DTYPE)

    def linear_t(self, y, in_shape):
        return y.reshape((y.shape[0],) + tuple(in_shape))

    def describe(self):
        return f"Reshape{tuple(self.shape)}"


@dataclass(eq=False)
class Transpose(AffineOp):
    """Permutation of the non-batch dimensions (``perm`` indexes them from 0)."""

    perm: tuple
    kind = "Transpose"

    def linear(self, x):
        return x.permute(0, *[p + 1 for p in self.perm])

    forward = linear

    def constant_term(self, in_shape):
        return torch.zeros(1, dtype=DTYPE)

    def linear_t(self, y, in_shape):
        inv = np.argsort(self.perm)
        return y.permute(0, *[int(p) + 1 for p in inv])


#: the activation names, from the one table (`lipbound.activations`)
ACTIVATION_KINDS = tuple(_activations.ACTIVATIONS)


@dataclass(eq=False)
class Activation(Op):
    """Elementwise activation: the op of the graph, whose facts live in its table entry ``fn``
    (`lipbound.activations`: forward, derivative, slope bounds ``alpha <= f' <= beta``, derivative
    ranges, relaxations, kinks...).

    ``name``: a key of `lipbound.activations.ACTIVATIONS`; ``param``: None (the defaults), a number, or
    a tuple for several parameters (``hardtanh``: (min_val, max_val)). After construction ``param`` holds
    the normalised value (0.0 for parameter-free activations)."""

    name: str
    param: float | tuple | None = None
    kind = "Activation"

    def __post_init__(self):
        self.fn = _activations.make(self.name, self.param)
        self.param = self.fn.param

    @property
    def alpha(self) -> float:
        return self.fn.alpha

    @property
    def beta(self) -> float:
        return self.fn.beta

    @property
    def is_piecewise_linear(self) -> bool:
        return self.fn.piecewise_linear

    def forward(self, x):
        return self.fn.forward(x)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        """f'(x) elementwise (at a kink, torch autograd's convention)."""
        return self.fn.derivative(x)

    def describe(self):
        return self.fn.describe()


@dataclass(eq=False)
class MaxPool2d(Op):
    kernel: tuple
    stride: tuple
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    ceil_mode: bool = False
    kind = "MaxPool2d"

    def forward(self, x):
        return F.max_pool2d(x, self.kernel, self.stride, self.padding, self.dilation, self.ceil_mode)

    def max_overlap(self) -> int:
        """How many pooling windows one input pixel can belong to (the l1/l2 Lipschitz factor)."""
        count = 1
        for k, s, d in zip(self.kernel, self.stride, self.dilation):
            # window starts lie in a range of length d(k-1)+1 with step s, and a window holds a pixel once
            count *= min(k, math.ceil((d * (k - 1) + 1) / s))
        return int(count)

    def describe(self):
        return f"MaxPool2d(k={self.kernel}, s={self.stride}, p={self.padding})"


@dataclass(eq=False)
class AdaptiveAvgPool2d(AffineOp):
    """Adaptive average pooling of (C, H, W) tensors to ``output_size`` (oh, ow) (torch's windows:
    output i averages rows floor(i H / oh) .. ceil((i + 1) H / oh) - 1, the same for columns).
    Readers use it only when H or W is not a multiple of the output size (else it is an `AvgPool2d`).
    Linear, no constant term, non-negative coefficients (so the default `abs_linear` is right)."""

    output_size: tuple
    kind = "AdaptiveAvgPool2d"

    def __post_init__(self):
        self.output_size = tuple(int(s) for s in self.output_size)

    def linear(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)

    forward = linear

    def constant_term(self, in_shape):
        return torch.zeros(1, dtype=DTYPE)

    def output_shape(self, in_shape):
        if len(in_shape) != 3 or len(self.output_size) != 2 or min(self.output_size) <= 0:
            raise LipboundError(f"AdaptiveAvgPool2d{self.output_size} needs (C, H, W) tensors and a positive "
                                f"output size, got input {tuple(in_shape)}")
        return (in_shape[0],) + self.output_size

    def describe(self):
        return f"AdaptiveAvgPool2d{self.output_size}"


MAXMIN_LAYOUTS = ("pairs", "halves")
MAXMIN_ORDERS = ("max_min", "min_max")


@dataclass(eq=False)
class MaxMin(Op):
    """MaxMin = GroupSort with groups of two, the activation of 1-Lipschitz networks.

    Along the non-batch dimension ``axis`` (0: the channels of a (C, H, W) tensor or the entries of an
    (n,) vector; its size must be even) the entries form partner pairs (p, q):

    * ``layout="pairs"``: consecutive entries (2i, 2i + 1) (GroupSort-2 of Anil et al. / deel-torchlip
      ``GroupSort2``: ``x.view(.., n/2, 2, ..)`` then sort or max/min over the size-2 axis);
    * ``layout="halves"``: (i, i + n/2) (orthogonium / SOC ``MaxMin``: split into halves a, b and
      ``cat(max(a, b), min(a, b))``).

    Each pair keeps its positions: ``order="max_min"`` puts max(x_p, x_q) at p and the min at q;
    ``order="min_max"`` (an ascending sort, as ``GroupSort2`` does) puts the min at p. `pairs` gives the
    positions. Locally a permutation of the entries: 1-Lipschitz in every l_p norm."""

    axis: int = 0
    layout: str = "pairs"
    order: str = "max_min"
    kind = "MaxMin"

    def __post_init__(self):
        self.axis = int(self.axis)
        if self.layout not in MAXMIN_LAYOUTS:
            raise LipboundError(f"MaxMin layout must be one of {MAXMIN_LAYOUTS}, got {self.layout!r}")
        if self.order not in MAXMIN_ORDERS:
            raise LipboundError(f"MaxMin order must be one of {MAXMIN_ORDERS}, got {self.order!r}")

    def _halves(self, x: torch.Tensor):
        """(first, second) partners of every pair, each of x's shape with the axis halved."""
        d = self.axis + 1
        n = x.shape[d]
        if self.layout == "pairs":
            y = x.unflatten(d, (n // 2, 2))
            return y.select(d + 1, 0), y.select(d + 1, 1)
        return x.narrow(d, 0, n // 2), x.narrow(d, n // 2, n // 2)

    def _join(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        d = self.axis + 1
        if self.layout == "pairs":
            return torch.stack((first, second), d + 1).flatten(d, d + 1)
        return torch.cat((first, second), d)

    def forward(self, x):
        a, b = self._halves(x)
        hi, lo = torch.maximum(a, b), torch.minimum(a, b)
        return self._join(hi, lo) if self.order == "max_min" else self._join(lo, hi)

    def output_shape(self, in_shape):
        in_shape = tuple(in_shape)
        if not 0 <= self.axis < len(in_shape) or in_shape[self.axis] % 2:
            raise LipboundError(f"MaxMin on axis {self.axis} needs an even dimension there, got a tensor of "
                                f"shape {in_shape} (batch excluded)")
        return in_shape

    def pairs(self, in_shape) -> tuple[np.ndarray, np.ndarray]:
        """Flat indices (hi, lo) of the partner pairs: y[hi] = max(x[hi], x[lo]), y[lo] = min(x[hi], x[lo])."""
        n = int(np.prod(in_shape))
        idx = torch.arange(n, dtype=DTYPE).reshape((1,) + tuple(in_shape))
        first, second = (t.reshape(-1).numpy().astype(np.int64) for t in self._halves(idx))
        return (first, second) if self.order == "max_min" else (second, first)

    def describe(self):
        return f"MaxMin(axis={self.axis}, {self.layout}, {self.order})"


class Add(Op):
    """Sum of two nodes of the same shape (residual connection)."""

    kind = "Add"
    n_inputs = 2

    def forward(self, a, b):
        return a + b


# --------------------------------------------------------------------------------------------------
# Graph
# --------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Node:
    name: str
    op: Op
    inputs: tuple  # indices of input nodes
    shape: tuple  # output shape, batch dimension excluded

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


@dataclass
class DenseLayer:
    """One layer of a dense chain: x_next = activation(W x + b); ``activation`` is None on the last."""

    W: np.ndarray
    b: np.ndarray
    activation: Activation | None


DENSE_CHAIN_MAX_ENTRIES = 60_000_000


class Network:
    """A DAG of operations; node 0 is the input, the last node the output."""

    def __init__(self, nodes: list[Node], name: str = "network", source: str | None = None):
        self.nodes = nodes
        self.name = name
        self.source = source
        self._check()

    # -- construction helpers ------------------------------------------------------------------
    @classmethod
    def sequential(cls, input_shape: Sequence[int], ops: Sequence[Op], name: str = "network") -> "Network":
        """A chain network from a list of single-input operations."""
        b = GraphBuilder(input_shape)
        cur = 0
        for i, op in enumerate(ops):
            cur = b.add(op, [cur], name=f"{op.kind.lower()}_{i}")
        return b.build(name=name)

    def _check(self):
        if not self.nodes or not isinstance(self.nodes[0].op, Input):
            raise LipboundError("a network must start with its input node")
        for i, node in enumerate(self.nodes):
            for j in node.inputs:
                if not 0 <= j < i:
                    raise LipboundError(f"node {node.name!r} is not in topological order")
            for p in node.op.parameters():
                if not torch.isfinite(p).all():
                    raise LipboundError(f"non-finite (NaN or infinite) parameter in node {node.name!r} ({node.op.kind})")

    # -- basic facts -----------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple:
        return self.nodes[0].shape

    @property
    def output_shape(self) -> tuple:
        return self.nodes[-1].shape

    @property
    def n_inputs(self) -> int:
        return self.nodes[0].size

    @property
    def n_outputs(self) -> int:
        return self.nodes[-1].size

    def op_kinds(self) -> set[str]:
        """The set of operation kinds used (activations as ``Activation:relu`` etc. too)."""
        kinds = set()
        for n in self.nodes[1:]:
            kinds.add(n.op.kind)
            if isinstance(n.op, Activation):
                kinds.add(f"Activation:{n.op.name}")
        return kinds

    def activations(self) -> list[Activation]:
        return [n.op for n in self.nodes if isinstance(n.op, Activation)]

    def consumers(self) -> list[list[int]]:
        out = [[] for _ in self.nodes]
        for i, n in enumerate(self.nodes):
            for j in n.inputs:
                out[j].append(i)
        return out

    def is_chain(self) -> bool:
        return all(len(n.inputs) == 1 and n.inputs[0] == i - 1 for i, n in enumerate(self.nodes) if i > 0)

    def n_parameters(self) -> int:
        seen, total = set(), 0
        for n in self.nodes:
            for p in n.op.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel()
        return total

    def summary(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
            "n_nodes": len(self.nodes) - 1,
            "n_parameters": self.n_parameters(),
            "operations": sorted(k for k in self.op_kinds() if ":" not in k),
            "activations": sorted({a.describe() for a in self.activations()}),
        }

    def __repr__(self):
        lines = [f"Network {self.name!r}: input {self.input_shape} -> output {self.output_shape}"]
        for n in self.nodes[1:]:
            lines.append(f"  {n.name}: {n.op.describe()} <- {[self.nodes[j].name for j in n.inputs]} -> {n.shape}")
        return "\n".join(lines)

    # -- evaluation ------------------------------------------------------------------------------
    def forward_all(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Values of every node for a batch x of shape (B, *input_shape)."""
        x = torch.as_tensor(x, dtype=DTYPE) if not isinstance(x, torch.Tensor) else x.to(DTYPE)
        if tuple(x.shape[1:]) != self.input_shape:
            if x.shape == self.input_shape:
                x = x.unsqueeze(0)
            elif x.numel() % self.n_inputs == 0 and x.ndim >= 1:
                x = x.reshape((-1,) + self.input_shape)
            else:
                raise LipboundError(f"input of shape {tuple(x.shape)} does not fit the network input {self.input_shape}")
        vals: list[torch.Tensor] = [x]
        for n in self.nodes[1:]:
            vals.append(n.op.forward(*[vals[j] for j in n.inputs]))
        return vals

    def __call__(self, x) -> torch.Tensor:
        return self.forward_all(x)[-1]

    def forward_flat(self, x_flat: torch.Tensor) -> torch.Tensor:
        """f on flattened inputs (B, n) -> flattened outputs (B, m)."""
        return self(x_flat.reshape((-1,) + self.input_shape)).reshape(x_flat.shape[0], -1)

    def jacobian(self, x) -> torch.Tensor:
        """Jacobians at a batch of points: (B, m, n) in float64, by reverse-mode autograd.

        At ReLU kinks this is the autograd convention (derivative 0 at 0), one element of the Clarke
        Jacobian in general position. Cost: m backward passes on the batch."""
        x = torch.as_tensor(np.asarray(x, dtype=np.float64)) if not isinstance(x, torch.Tensor) else x.detach().to(DTYPE)
        x = x.reshape(-1, self.n_inputs).clone().requires_grad_(True)
        with torch.enable_grad():
            y = self.forward_flat(x)
            rows = []
            for j in range(y.shape[1]):
                (g,) = torch.autograd.grad(y[:, j].sum(), x, retain_graph=j < y.shape[1] - 1)
                rows.append(g)
        return torch.stack(rows, 1).detach()

    def preactivations(self, x) -> list[torch.Tensor]:
        """For a batch x, the inputs of every Activation node (flattened), in graph order."""
        vals = self.forward_all(x)
        return [vals[n.inputs[0]].reshape(vals[0].shape[0], -1) for n in self.nodes if isinstance(n.op, Activation)]

    # -- dense chain -----------------------------------------------------------------------------
    def dense_chain(self, max_entries: int = DENSE_CHAIN_MAX_ENTRIES) -> list[DenseLayer]:
        """The network as a list of dense layers x -> act(W x + b), last layer without activation.

        Consecutive affine operations (Linear, Conv2d, BatchNorm/shift/scale, AvgPool, Pad, Flatten,
        Reshape, Transpose) are folded into one dense matrix (float64 numpy; a block that is a single Linear
        op returns that op's own matrix as a READ-ONLY view, so copy before modifying). Raises `Unsupported`
        for residual connections, max pooling, or a matrix above ``max_entries`` entries.
        Cost: per block of consecutive affine ops, min(n_in, n_out) forward or adjoint passes."""
        if not self.is_chain():
            raise Unsupported("the network is not a chain (residual connections): dense_chain() needs an "
                              "alternating affine / activation chain")
        for n in self.nodes[1:]:
            if isinstance(n.op, MaxPool2d):
                raise Unsupported(f"max pooling (node {n.name!r}) is not an affine/activation layer: no dense chain")
        # group the chain into blocks of consecutive affine ops separated by activations
        layers: list[DenseLayer] = []
        block: list[int] = []
        block_in = 0  # index of the node feeding the current block
        for i, node in enumerate(self.nodes[1:], start=1):
            if node.op.is_affine:
                block.append(i)
            elif isinstance(node.op, Activation):
                W, b = self._block_dense(block, block_in, max_entries)
                layers.append(DenseLayer(W, b, node.op))
                block, block_in = [], i
            else:
                raise Unsupported(f"operation {node.op.kind} (node {node.name!r}) cannot be part of a dense chain")
        W, b = self._block_dense(block, block_in, max_entries)
        layers.append(DenseLayer(W, b, None))
        return layers

    def _block_dense(self, block: list[int], block_in: int, max_entries: int, chunk: int = 2048):
        """Dense matrix and offset of the composition of the affine nodes ``block`` (a chain starting
        at node ``block_in``), built from the smaller side: forward passes of the input basis when
        there are fewer inputs, adjoint passes of the output basis otherwise."""
        in_shape = self.nodes[block_in].shape
        n_in = self.nodes[block_in].size
        if not block:
            return np.eye(n_in), np.zeros(n_in)
        out_node = self.nodes[block[-1]]
        n_out = out_node.size
        if n_out * n_in > max_entries:
            raise Unsupported(f"the dense matrix of nodes {self.nodes[block[0]].name!r}..{out_node.name!r} would have "
                              f"{n_out:,} x {n_in:,} entries, more than {max_entries:,} (raise max_entries or use a "
                              "method that works on the graph)")
        ops = [self.nodes[i].op for i in block]
        shapes = [in_shape] + [self.nodes[i].shape for i in block]
        with torch.no_grad():
            z = torch.zeros((1,) + tuple(in_shape), dtype=DTYPE)
            for op in ops:
                z = op.forward(z)
            offset = z.reshape(-1)
            if len(ops) == 1 and isinstance(ops[0], Linear):
                # the layer's own matrix, read-only: no copy (a large copy costs page faults, ~20 ms per 8 MB)
                W = ops[0].W.numpy().view()
                W.flags.writeable = False
                return W, offset.numpy().copy()
            W = torch.empty(n_out, n_in, dtype=DTYPE)
            if n_in <= n_out:
                for s in range(0, n_in, chunk):
                    e = min(n_in, s + chunk)
                    basis = torch.zeros(e - s, n_in, dtype=DTYPE)
                    basis[torch.arange(e - s), torch.arange(s, e)] = 1.0
                    y = basis.reshape((e - s,) + tuple(in_shape))
                    for op in ops:
                        y = op.linear(y)
                    W[:, s:e] = y.reshape(e - s, n_out).T
            else:
                for s in range(0, n_out, chunk):
                    e = min(n_out, s + chunk)
                    basis = torch.zeros(e - s, n_out, dtype=DTYPE)
                    basis[torch.arange(e - s), torch.arange(s, e)] = 1.0
                    y = basis.reshape((e - s,) + tuple(shapes[-1]))
                    for op, shp in zip(reversed(ops), reversed(shapes[:-1])):
                        y = op.linear_t(y, shp)
                    W[s:e, :] = y.reshape(e - s, n_in)
        return W.numpy(), offset.numpy().copy()


def _per_channel(t: torch.Tensor, shape: tuple) -> torch.Tensor | None:
    """``t`` broadcast to ``shape`` as a vector over its first dimension, or None when it varies along
    the other dimensions (then it is not a per-channel scale or shift)."""
    full = torch.broadcast_to(t, shape)
    per = full.reshape(shape[0], -1)[:, 0]
    return per if torch.equal(full, per.reshape((-1,) + (1,) * (len(shape) - 1)).expand(shape)) else None


def fold_scale_shift(nodes: list[Node]) -> list[Node]:
    """The node list with every per-channel `ElementwiseAffine` (BatchNorm in eval mode, a constant
    scale) folded into the `Linear` / `Conv2d` feeding it, when nothing else reads that op's output.

    The function is the same; the graph has one affine op where it had two, as ONNX exporters already
    write it, so that products of operator norms do not count the pair twice and every reader gives
    the same graph. Cost: one pass over the nodes, one scaled copy of each folded weight."""
    n_consumers = [0] * len(nodes)
    for node in nodes:
        for j in node.inputs:
            n_consumers[j] += 1
    out, index = [], {}  # index: old node -> new node
    for k, node in enumerate(nodes):
        op, inputs = node.op, tuple(index[j] for j in node.inputs)
        if isinstance(op, ElementwiseAffine) and n_consumers[node.inputs[0]] == 1:
            prev = out[inputs[0]]
            folded = _fold_into(prev.op, op, node.shape)
            if folded is not None:
                out[inputs[0]] = Node(prev.name, folded, prev.inputs, prev.shape)
                index[k] = inputs[0]
                continue
        index[k] = len(out)
        out.append(Node(node.name, op, inputs, node.shape))
    return out


def _fold_into(prev: Op, affine: "ElementwiseAffine", shape: tuple) -> Op | None:
    """``affine`` after ``prev`` as one op (None when ``prev`` is not a Linear / Conv2d or the scale or
    shift is not per channel)."""
    if not isinstance(prev, (Linear, Conv2d)):
        return None
    s, t = _per_channel(affine.scale, shape), _per_channel(affine.shift, shape)
    if s is None or t is None:
        return None
    if isinstance(prev, Linear):
        return Linear(prev.W * s[:, None], prev.b * s + t)
    return Conv2d(prev.weight * s.reshape(-1, 1, 1, 1), prev.bias * s + t, prev.stride, prev.padding, prev.dilation,
                  prev.groups)


class GraphBuilder:
    """Incremental construction of a `Network` with shape inference."""

    def __init__(self, input_shape: Sequence[int], input_name: str = "input"):
        self.nodes = [Node(input_name, Input(), (), tuple(int(s) for s in input_shape))]

    def add(self, op: Op, inputs: Sequence[int], name: str | None = None) -> int:
        inputs = tuple(int(i) for i in inputs)
        if len(inputs) != op.n_inputs:
            raise LipboundError(f"{op.kind} takes {op.n_inputs} inputs, got {len(inputs)}")
        shapes = [self.nodes[i].shape for i in inputs]
        if isinstance(op, Add) and shapes[0] != shapes[1]:
            raise LipboundError(f"Add of tensors of different shapes {shapes[0]} and {shapes[1]} (node {name!r})")
        try:
            shape = op.output_shape(*shapes)
        except LipboundError:
            raise
        except Exception as e:  # shape mismatch inside torch
            raise LipboundError(f"operation {op.kind} (node {name!r}) does not fit its input shape {shapes}: {e}") from None
        self.nodes.append(Node(name or f"{op.kind.lower()}_{len(self.nodes)}", op, inputs, shape))
        return len(self.nodes) - 1

    def build(self, name: str = "network", source: str | None = None) -> Network:
        return Network(self.nodes, name=name, source=source)

def _sparse_times(M, y: torch.Tensor) -> torch.Tensor:
    """(M @ y.T).T for a scipy sparse M (m, k) and y (N, k): torch's sparse product (differentiable in y)."""
    C = M.tocoo()
    Mt = torch.sparse_coo_tensor(torch.as_tensor(np.vstack([C.row, C.col]), dtype=torch.long),
                                 torch.as_tensor(C.data, dtype=y.dtype), C.shape,
                                 check_invariants=False)  # built from a valid scipy matrix
    return torch.sparse.mm(Mt, y.T).T

